//! A running `varta-watch` daemon under test, and helpers to read its event stream.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_varta-watch");

pub(crate) use workspace_tests::support::{TempDir, is_root, skip, which};

/// The daemon as a child process, its stdout events delivered line by line.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
    lines: mpsc::Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Daemon {
    /// Starts `varta-watch --socket <dir>/observer.sock <extra...>` and waits for the socket.
    pub(crate) fn start(dir: &TempDir, extra: &[&str]) -> Daemon {
        let socket = dir.join("observer.sock");
        let mut cmd = Command::new(BIN);
        cmd.arg("--socket").arg(&socket).args(extra);
        let daemon = Self::spawn(cmd, socket);
        // The control socket is bound after the observer socket: wait for it too.
        if let Some(i) = extra.iter().position(|a| *a == "--control") {
            let control = Path::new(extra[i + 1]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !control.exists() {
                assert!(
                    Instant::now() < deadline,
                    "no control socket {}",
                    control.display()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        daemon
    }

    pub(crate) fn spawn(mut cmd: Command, socket: PathBuf) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn varta-watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "varta-watch did not bind {}",
                socket.display()
            );
            if let Ok(Some(status)) = child.try_wait() {
                panic!("varta-watch exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Daemon {
            child,
            socket,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for an event line for which `pred` holds; panics with everything seen on timeout.
    pub(crate) fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {timeout:?}; events seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for event `name` about `pid`.
    pub(crate) fn expect_event(&mut self, name: &str, pid: u32, timeout: Duration) -> String {
        let tag = format!("\"event\":\"{name}\"");
        self.expect(&format!("{name} for pid {pid}"), timeout, |l| {
            l.contains(&tag) && field(l, "pid") == Some(u64::from(pid))
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig);
    }

    /// Descriptors the daemon process has open.
    pub(crate) fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("daemon fd dir")
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unsigned integer value of `"key":N` in a flat JSON line.
pub(crate) fn field(line: &str, key: &str) -> Option<u64> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Sends `sig` to `pid` (a child of this test, not yet reaped), failing the test if it cannot.
pub(crate) fn send_signal(pid: u32, sig: i32) {
    if let Err(e) = platform_primitives::process::signal(pid, sig) {
        panic!("kill({pid}, {sig}) failed: {e}");
    }
}

/// A `varta-watch beacon` agent process.
pub(crate) fn beacon(socket: &Path, extra: &[&str]) -> Child {
    Command::new(BIN)
        .arg("beacon")
        .arg("--socket")
        .arg(socket)
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn beacon")
}

impl Daemon {
    /// Every event line that arrives within `window` (nothing is waited for beyond it).
    pub(crate) fn collect_for(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    got.push(line);
                }
                Err(_) => break,
            }
        }
        got
    }
}

/// Runs `cmd` to completion with piped output, killing it (and failing) after `limit`.
pub(crate) fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(_status) = child.try_wait().expect("try_wait") {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `varta-watch status` JSON of the daemon at `control` (5 s deadline).
pub(crate) fn status(control: &Path) -> String {
    let out = output_within(
        Command::new(BIN)
            .arg("status")
            .arg("--control")
            .arg(control),
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback port, as `127.0.0.1:PORT`.
pub(crate) fn free_loopback_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("probe port")
        .local_addr()
        .expect("addr")
        .port();
    format!("127.0.0.1:{port}")
}

/// Sets the child's descriptor limits (soft, hard) before it execs.
pub(crate) fn limit_fds(cmd: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    let action = move || {
        // SAFETY: setrlimit is async-signal-safe and reads the copied, valid `limit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the closure runs between fork and exec and calls only setrlimit (and reads
    // errno), allocating nothing.
    unsafe { cmd.pre_exec(action) };
}

/// Child processes killed and reaped on drop, so a failing test leaves none behind.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (up to `limit`) until `path` exists.
pub(crate) fn wait_for_file(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no {} within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `n` beacons beating every `interval`, waits until the daemon registered each, kills
/// them all and waits until it reported each one's exit; returns their pids.
pub(crate) fn register_and_kill(
    d: &mut Daemon,
    n: usize,
    interval: &str,
) -> std::collections::HashSet<u32> {
    use std::collections::HashSet;
    const WAIT: Duration = Duration::from_secs(10);
    let mut agents = Children(
        (0..n)
            .map(|_| beacon(&d.socket, &["--interval", interval]))
            .collect(),
    );
    let pids: HashSet<u32> = agents.0.iter().map(Child::id).collect();
    let mut registered = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while registered.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} registered",
            registered.len()
        );
        let line = d.expect("registered", WAIT, |l| {
            l.contains("\"event\":\"registered\"")
        });
        let pid = field(&line, "pid").expect("pid") as u32;
        if pids.contains(&pid) {
            registered.insert(pid);
        }
    }
    for agent in &mut agents.0 {
        agent.kill().expect("kill agent");
    }
    for agent in &mut agents.0 {
        agent.wait().expect("reap agent");
    }
    let mut exited = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while exited != pids {
        assert!(
            Instant::now() < deadline,
            "{} of {n} exits reported",
            exited.len()
        );
        let line = d.expect("exited", WAIT, |l| l.contains("\"event\":\"exited\""));
        let pid = field(&line, "pid").expect("pid") as u32;
        if pids.contains(&pid) {
            exited.insert(pid);
        }
    }
    pids
}

/// One Prometheus scrape of the daemon's metrics at `addr` (a 10 s read deadline): the whole
/// HTTP response, head and body.
pub(crate) fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

/// A socket-activation test's set-up: the real `systemd-socket-activate`, a fresh directory,
/// the socket it listens on (`activated.sock`) and the one the daemon is told to bind but must
/// not (`unused.sock`).
pub(crate) struct Activation {
    pub(crate) dir: TempDir,
    /// The activated socket, bound by systemd-socket-activate.
    pub(crate) path: PathBuf,
    activate: PathBuf,
}

impl Activation {
    /// The set-up in `<tmp>/<label>-…`, or `None` after printing why `test` skips (no
    /// systemd-socket-activate).
    pub(crate) fn prepare(test: &str, label: &str) -> Option<Self> {
        let Some(activate) = which("systemd-socket-activate") else {
            skip(test, "systemd-socket-activate is not installed");
            return None;
        };
        let dir = TempDir::new(label);
        let path = dir.join("activated.sock");
        Some(Self {
            dir,
            path,
            activate,
        })
    }

    /// The socket path the daemon is given with `--socket`, which an activated daemon leaves
    /// alone.
    pub(crate) fn unused(&self) -> PathBuf {
        self.dir.join("unused.sock")
    }

    /// `systemd-socket-activate --datagram --listen <path> varta-watch --socket <unused>`: the
    /// daemon, started on the first datagram, serves the socket passed by activation while
    /// its own socket flag points where nothing listens; its standard error goes to `stderr`.
    pub(crate) fn command(&self, stderr: Stdio) -> Command {
        let mut cmd = Command::new(&self.activate);
        cmd.arg("--datagram")
            .arg("--listen")
            .arg(&self.path)
            .arg(BIN)
            .arg("--socket")
            .arg(self.unused())
            .stderr(stderr);
        cmd
    }
}
