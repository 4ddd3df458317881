//! `engate`: terminal sessions you detach from and come back to exactly where you were.
//!
//! A dtach/abduco-like program on engate-attach's session server. `engate new NAME PROGRAM`
//! starts a program in a pseudo-terminal owned by a background server; `engate attach NAME`
//! puts the real terminal in raw mode and connects it; the detach key (Ctrl-\ unless `-e`
//! says otherwise) leaves the program running. Coming back replays exactly the bytes this
//! terminal missed while the server still holds them, and otherwise redraws the screen.
//! `list`, `kill` and `tail` do what their names say. The program's exit status becomes
//! `attach`'s.
//!
//! Built with the `cli` feature; it needs no dependency beyond the library's (the few
//! options are parsed by hand).

#![deny(unsafe_code)]

mod client;
mod daemon;
mod store;
mod sys;
mod term;

use std::ffi::OsString;
use std::fmt;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use engate_attach::pty::PtySize;
use platform_primitives::process;

use crate::store::{Probe, Sessions};

/// Ctrl-\, dtach's detach key.
pub(crate) const DEFAULT_DETACH_KEY: u8 = 0x1c;

/// What went wrong, said for a person: the session, the path, and what to do.
#[derive(Debug)]
pub(crate) struct Failure(String);

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// `message`, then what the OS said.
    pub(crate) fn from_io(message: impl Into<String>, e: &std::io::Error) -> Self {
        Self(format!("{}: {e}", message.into()))
    }

    /// `message`, then the error and its sources.
    pub(crate) fn from_error(message: impl Into<String>, e: &dyn std::error::Error) -> Self {
        Self(format!(
            "{}: {}",
            message.into(),
            platform_primitives::error::chain(e)
        ))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage() -> String {
    format!(
        "\
usage: engate new NAME [--] PROGRAM [ARGS...]     start PROGRAM in the background
       engate attach [OPTIONS] NAME [[--] PROGRAM [ARGS...]]
                                                 connect this terminal to session NAME
           -A, --create     start NAME with PROGRAM (default $SHELL) if it does not exist
           -e KEY           detach key: ^X for control-X, or one character (default {})
           -r, --read-only  show the session, send it no keys and no window size
           --redraw         redraw the screen instead of replaying the missed output
       engate list                               sessions: name, pid, program, clients, age,
                                                 bytes written, running or exit status
       engate kill NAME                          end session NAME (the program is hung up)
       engate tail NAME                          print NAME's output as it comes, resuming
                                                 where the previous tail stopped
       engate serve NAME [--] PROGRAM [ARGS...]  run the server in the foreground

Sessions live in $XDG_RUNTIME_DIR/engate/ (or /tmp/engate-$UID/).",
        client::default_key_name()
    )
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(failure) => {
            eprintln!("engate: {failure}");
            ExitCode::from(1)
        }
    }
}

/// Splits `NAME [--] PROGRAM ARGS...` after the options.
fn name_and_program(
    rest: &mut std::vec::IntoIter<OsString>,
    command: &str,
) -> Result<(String, Vec<OsString>), Failure> {
    let name = rest
        .next()
        .ok_or_else(|| Failure::new(format!("{command}: a session NAME is needed\n{}", usage())))?;
    let name = name
        .into_string()
        .map_err(|n| Failure::new(format!("invalid session name {n:?}: not UTF-8")))?;
    let mut program: Vec<OsString> = rest.collect();
    if program.first().is_some_and(|a| a == "--") {
        program.remove(0);
    }
    Ok((name, program))
}

/// The options of a command, up to the first word that is not one.
fn options(rest: &mut std::vec::IntoIter<OsString>) -> Vec<OsString> {
    let mut options = Vec::new();
    while let Some(a) = rest.as_slice().first() {
        let s = a.to_string_lossy();
        if s == "--" || !s.starts_with('-') || s == "-" {
            break;
        }
        let takes_value = s == "-e" || s == "--size";
        options.extend(rest.next());
        if takes_value {
            options.extend(rest.next());
        }
    }
    options
}

fn run(args: Vec<OsString>) -> Result<i32, Failure> {
    let mut args = args.into_iter();
    let Some(command) = args.next() else {
        return Err(Failure::new(usage()));
    };
    let command = command.to_string_lossy().into_owned();
    match command.as_str() {
        "-h" | "--help" | "help" => {
            println!("{}", usage());
            Ok(0)
        }
        "-V" | "--version" => {
            println!("engate {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        "new" => {
            let opts = options(&mut args);
            if let Some(o) = opts.first() {
                return Err(Failure::new(format!("new: unknown option {o:?}")));
            }
            let (name, program) = name_and_program(&mut args, "new")?;
            if program.is_empty() {
                return Err(Failure::new(format!(
                    "new: a PROGRAM to run is needed\n{}",
                    usage()
                )));
            }
            let sessions = Sessions::open()?;
            let session = sessions.session(&name)?;
            daemon::start(&session, &program, term::size().unwrap_or_default())?;
            Ok(0)
        }
        "attach" | "a" => {
            let mut create = false;
            let mut options_ = client::AttachOptions {
                create: None,
                detach_key: DEFAULT_DETACH_KEY,
                read_only: false,
                redraw: false,
            };
            let mut opts = options(&mut args).into_iter();
            while let Some(o) = opts.next() {
                match o.to_string_lossy().as_ref() {
                    "-A" | "--create" => create = true,
                    "-r" | "--read-only" => options_.read_only = true,
                    "--redraw" => options_.redraw = true,
                    "-e" => {
                        let key = opts.next().unwrap_or_default();
                        let key = key.to_string_lossy();
                        options_.detach_key = client::parse_key(&key).ok_or_else(|| {
                            Failure::new(format!(
                                "attach: invalid detach key {key:?}: use ^X for control-X or one character"
                            ))
                        })?;
                    }
                    other => return Err(Failure::new(format!("attach: unknown option {other:?}"))),
                }
            }
            let (name, mut program) = name_and_program(&mut args, "attach")?;
            if create {
                if program.is_empty() {
                    program.push(std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into()));
                }
                options_.create = Some(program);
            } else if !program.is_empty() {
                return Err(Failure::new(
                    "attach: a PROGRAM is only taken with -A (--create)",
                ));
            }
            let sessions = Sessions::open()?;
            client::attach(&sessions.session(&name)?, &options_)
        }
        "list" | "ls" => list(&Sessions::open()?),
        "kill" => {
            let (name, rest) = name_and_program(&mut args, "kill")?;
            if !rest.is_empty() {
                return Err(Failure::new("kill: takes only a session NAME"));
            }
            kill(&Sessions::open()?, &name)
        }
        "tail" => {
            let (name, rest) = name_and_program(&mut args, "tail")?;
            if !rest.is_empty() {
                return Err(Failure::new("tail: takes only a session NAME"));
            }
            let sessions = Sessions::open()?;
            let session = sessions.session(&name)?;
            if session.probe() != Probe::Live {
                return Err(Failure::new(format!(
                    "no running session {name} (socket {})",
                    session.socket.display()
                )));
            }
            client::tail(&session)
        }
        "serve" => {
            let mut stage = daemon::Stage::Foreground;
            let mut size = PtySize::default();
            let mut opts = options(&mut args).into_iter();
            while let Some(o) = opts.next() {
                match o.to_string_lossy().as_ref() {
                    "--daemon" => stage = daemon::Stage::Daemon,
                    "--daemonized" => stage = daemon::Stage::Daemonized,
                    "--size" => {
                        let v = opts.next().unwrap_or_default();
                        size = parse_size(&v.to_string_lossy()).ok_or_else(|| {
                            Failure::new(format!("serve: invalid --size {v:?}: use ROWSxCOLS"))
                        })?;
                    }
                    other => return Err(Failure::new(format!("serve: unknown option {other:?}"))),
                }
            }
            let (name, program) = name_and_program(&mut args, "serve")?;
            if program.is_empty() {
                return Err(Failure::new(format!(
                    "serve: a PROGRAM to run is needed\n{}",
                    usage()
                )));
            }
            let sessions = Sessions::open()?;
            daemon::serve(&sessions.session(&name)?, &program, size, stage)
        }
        other => Err(Failure::new(format!(
            "unknown command {other:?}\n{}",
            usage()
        ))),
    }
}

fn parse_size(s: &str) -> Option<PtySize> {
    let (rows, cols) = s.split_once('x')?;
    let size = PtySize {
        rows: rows.parse().ok()?,
        cols: cols.parse().ok()?,
    };
    (size.rows > 0 && size.cols > 0).then_some(size)
}

/// `engate list`: one line per session; stale sockets of dead servers are removed.
fn list(sessions: &Sessions) -> Result<i32, Failure> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut rows = Vec::new();
    for name in sessions.names()? {
        let Ok(session) = sessions.session(&name) else {
            continue;
        };
        let info = session.read_info();
        let server_alive = info.as_ref().is_some_and(|i| process::exists(i.pid));
        match session.probe() {
            Probe::Live => {}
            Probe::Stale | Probe::Absent if !server_alive => {
                eprintln!(
                    "engate: removed session {name}: its server is gone (stale socket {})",
                    session.socket.display()
                );
                session.remove_files();
                continue;
            }
            // A server that is starting or ending: listed as it is.
            Probe::Stale | Probe::Absent => {}
        }
        let row = match info {
            Some(i) => [
                name,
                i.pid.to_string(),
                i.command,
                i.clients.to_string(),
                age(now.saturating_sub(i.started)),
                bytes(i.bytes),
                match i.exit {
                    None => "running".into(),
                    Some(e) => e.to_string(),
                },
            ],
            None => [
                name,
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "starting".into(),
            ],
        };
        rows.push(row);
    }
    let header = [
        "NAME", "PID", "PROGRAM", "CLIENTS", "AGE", "BYTES", "STATUS",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count().min(40));
        }
    }
    if rows.is_empty() {
        eprintln!("no sessions");
        return Ok(0);
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            let cell: String = cell.chars().take(40).collect();
            if i + 1 == row.len() {
                line.push_str(&cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
    Ok(0)
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `engate kill NAME`: asks the server to stop (`SIGTERM`), forcing it after 5 s.
fn kill(sessions: &Sessions, name: &str) -> Result<i32, Failure> {
    let session = sessions.session(name)?;
    let probe = session.probe();
    let Some(info) = session.read_info() else {
        if probe == Probe::Stale {
            session.remove_files();
            return Err(Failure::new(format!(
                "session {name} was not running (removed its stale socket {})",
                session.socket.display()
            )));
        }
        return Err(Failure::new(format!(
            "no session {name} (no status file {})",
            session.info.display()
        )));
    };
    if !process::exists(info.pid) {
        session.remove_files();
        return Err(Failure::new(format!(
            "session {name} was not running (its server {} is gone); removed its files",
            info.pid
        )));
    }
    process::signal(info.pid, libc::SIGTERM).map_err(|e| {
        Failure::from_io(
            format!("cannot stop session {name} (server pid {})", info.pid),
            &e,
        )
    })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // A server adopted by an init that does not reap stays a zombie that looks alive: its
    // files going away says it is done too.
    while process::exists(info.pid) && (session.socket.exists() || session.info.exists()) {
        if std::time::Instant::now() >= deadline {
            let _ = process::signal(info.pid, libc::SIGKILL);
            session.remove_files();
            eprintln!("engate: session {name} did not stop within 5 s; killed its server");
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ages_and_byte_counts_read_well() {
        assert_eq!(
            parse_size("30x100"),
            Some(PtySize {
                rows: 30,
                cols: 100
            })
        );
        assert_eq!(parse_size("0x100"), None);
        assert_eq!(parse_size("30"), None);
        assert_eq!(age(59), "59s");
        assert_eq!(age(61), "1m01s");
        assert_eq!(age(7322), "2h02m");
        assert_eq!(age(90000), "1d01h");
        assert_eq!(bytes(1000), "1000B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(3 << 20), "3.0MiB");
    }
}
