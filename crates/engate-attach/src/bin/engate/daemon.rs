//! The session server as a background process: `engate new` starts it, detached from the
//! terminal, and returns once its socket accepts connections.
//!
//! `new` runs `engate serve --daemon …` as a child in a new session (`setsid`), with standard
//! input on `/dev/null` and standard output and error on pipes. That child starts the real
//! server, `engate serve --daemonized …`, and exits at once: the server is then an orphan
//! (adopted by init) that is not a session leader, so it can never acquire a controlling
//! terminal — the double fork of classic daemons. Once its socket is bound and the program
//! runs, the server prints `ready` on the pipe and points its standard streams at
//! `/dev/null`; if it cannot start, it prints why on the other pipe and exits, and `new`
//! reports that. The server owns the pseudo-terminal; nothing of the starting terminal is
//! left in it.
//!
//! The server keeps the status file up to date, shuts down on `SIGTERM`, `SIGINT` or
//! `SIGHUP` (hanging up the program), and, once the program has ended, stays until the clients
//! that saw it end have left — or, if none was attached, until one has attached and learned the
//! exit status.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engate_attach::pty::PtySize;
use engate_attach::session::{SessionConfig, SessionServer, SnapshotMode};

use crate::store::{Info, Probe, Session};
use crate::{Failure, sys};

/// How long `engate new` waits for the server to say it is ready.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How often the server refreshes its status file and looks whether it should end.
const STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// What the server prints on its standard output once it serves.
const READY: &str = "ready";

/// How the `serve` command was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// In the foreground, by a person or a service manager.
    Foreground,
    /// By `engate new`: start the server as an orphan and exit.
    Daemon,
    /// The orphaned server: report readiness, then let go of the standard streams.
    Daemonized,
}

/// Starts `program` as session `session` in the background and waits until it serves.
pub(crate) fn start(session: &Session, program: &[OsString], size: PtySize) -> Result<(), Failure> {
    if session.probe() == Probe::Live {
        return Err(Failure::new(format!(
            "session {} already exists (socket {}); attach with `engate attach {}`",
            session.name,
            session.socket.display(),
            session.name
        )));
    }
    let mut cmd = serve_command("--daemon", session, program, size)?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    sys::new_session_in_child(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        Failure::from_io(
            format!("cannot start the server of session {}", session.name),
            &e,
        )
    })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    // The intermediate process exits as soon as it has started the server.
    let _ = child.wait();
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = stdout {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(Ok(line));
        });
    }
    if let Some(mut stderr) = stderr {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = tx.send(Err(text));
        });
    }
    let deadline = std::time::Instant::now() + START_LIMIT;
    let mut ready_line_seen = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(line)) if line.trim() == READY => return Ok(()),
            // End of output without `ready`: the reason comes on the other pipe.
            Ok(Ok(_)) => ready_line_seen = true,
            Ok(Err(text)) if !text.trim().is_empty() || ready_line_seen => {
                let text = text.trim().trim_start_matches("engate: ");
                return Err(Failure::new(format!(
                    "session {} did not start: {}",
                    session.name,
                    if text.is_empty() {
                        "its server exited"
                    } else {
                        text
                    }
                )));
            }
            Ok(Err(_)) => {}
            Err(_) => {
                return Err(Failure::new(format!(
                    "session {} did not start within {START_LIMIT:?} (socket {})",
                    session.name,
                    session.socket.display()
                )));
            }
        }
    }
}

/// The `serve` command: runs the session server until the program has ended and its clients
/// are gone, or until a signal says stop.
pub(crate) fn serve(
    session: &Session,
    program: &[OsString],
    size: PtySize,
    stage: Stage,
) -> Result<i32, Failure> {
    if stage == Stage::Daemon {
        return orphan_server(session, program, size);
    }
    let [name, args @ ..] = program else {
        return Err(Failure::new("serve: no program given"));
    };
    // Blocked before the server starts its threads, so only `wait` below takes them.
    let signals = sys::Signals::block(
        &sys::single_threaded()?,
        &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP],
    )
    .map_err(|e| Failure::from_io("cannot block signals", &e))?;
    let mut config = SessionConfig::new(&session.socket, name)
        .args(args)
        .size(size)
        .snapshot(SnapshotMode::Screen)
        .env("ENGATE", &session.socket)
        .env("ENGATE_SESSION", &session.name);
    if let Some(term) = std::env::var_os("TERM").filter(|t| !t.is_empty()) {
        config = config.env("TERM", term);
    }
    let server = SessionServer::start(config).map_err(|e| {
        Failure::from_error(
            format!(
                "cannot start session {} at {}",
                session.name,
                session.socket.display()
            ),
            &e,
        )
    })?;
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let command = program
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut info = Info {
        pid: std::process::id(),
        program_pid: server.program_pid(),
        command,
        started,
        clients: 0,
        bytes: 0,
        exit: None,
    };
    let _ = session.write_info(&info);
    if stage == Stage::Daemonized {
        println!("{READY}");
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| Failure::from_io("cannot open /dev/null", &e))?;
        sys::redirect_stdio(null.as_fd())
            .map_err(|e| Failure::from_io("cannot detach from the starting terminal", &e))?;
    }

    let (tx, stop) = mpsc::channel();
    std::thread::Builder::new()
        .name("engate-signals".into())
        .spawn(move || {
            while let Ok(signal) = signals.wait() {
                if tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Failure::from_io("cannot start the signal thread", &e))?;

    // Whether a client was attached when the program ended (it saw the exit), judged from the
    // last look before the end: clients attached then, or attaches since.
    let (mut clients_before, mut attaches_before) = (0, 0);
    let mut exit_seen = false;
    loop {
        if stop.recv_timeout(STATUS_INTERVAL).is_ok() {
            break;
        }
        let m = server.hub().metrics();
        let exit = server.program_exit();
        let now = Info {
            clients: m.subscribers,
            bytes: m.head,
            exit,
            ..info.clone()
        };
        if now != info {
            info = now;
            let _ = session.write_info(&info);
        }
        match exit {
            None => (clients_before, attaches_before) = (m.subscribers, m.attaches),
            Some(_) => {
                exit_seen |= clients_before > 0 || m.attaches > attaches_before;
                if exit_seen && m.subscribers == 0 {
                    break;
                }
            }
        }
    }
    server.shutdown();
    session.remove_state();
    Ok(info.exit.map_or(0, |e| e.shell_status()))
}

/// The intermediate process of the double fork: starts the server and exits.
fn orphan_server(session: &Session, program: &[OsString], size: PtySize) -> Result<i32, Failure> {
    serve_command("--daemonized", session, program, size)?
        .spawn()
        .map_err(|e| {
            Failure::from_io(
                format!("cannot start the server of session {}", session.name),
                &e,
            )
        })?;
    Ok(0)
}

/// `engate serve <stage> --size RxC NAME -- PROGRAM…` with no standard input: this program
/// started again as a session server, at one stage of going into the background.
fn serve_command(
    stage: &str,
    session: &Session,
    program: &[OsString],
    size: PtySize,
) -> Result<Command, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::from_io("cannot find the engate program to start a server", &e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg(stage)
        .arg("--size")
        .arg(format!("{}x{}", size.rows, size.cols))
        .arg(&session.name)
        .arg("--")
        .args(program)
        .stdin(Stdio::null());
    Ok(cmd)
}
