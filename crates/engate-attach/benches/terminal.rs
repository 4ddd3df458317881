//! The `engate` program against dtach and tmux, through an attached client on a real terminal,
//! all in one run.
//!
//! Each tool runs the same programs in its own session, and one client of each tool is
//! attached on a pseudo-terminal this bench opened (`posix_openpt`): the bench is the person at
//! the terminal, writing keys to the pty's master side and reading what the client draws.
//!
//! - **Throughput**: the session runs `while read x; do cat FILE; printf ENDMARK$n.; done`
//!   (the marker is split in the script, so only the program's output forms it, and numbered,
//!   so tmux redrawing an earlier round's line cannot end this one).
//!   One round writes `Enter` to the client's terminal and times until the marker comes out of
//!   the master: the keystroke travels in, 64 MiB of text lines go through the session's pty,
//!   the session server and the attached client, out to this terminal. Throughput is the
//!   file's bytes per second of wall-clock time. Each round runs every tool once, back to back
//!   (in a rotating order), so they see the same machine load; a ratio is the median of the
//!   rounds' ratios. Targets: engate ≥ 1.0× dtach and ≥ 3× tmux.
//! - **Keystroke to echo**: the session runs `stty raw -echo; cat`; one sample writes one byte
//!   to the client's terminal and times until it comes back. 200 samples per tool after a
//!   warm-up, in alternating blocks of 10. Target: engate's median ≤ 1.0× dtach's.
//!
//! - **The ceiling**: the same two programs run straight on a terminal of the bench, with no
//!   session tool between (`direct`): one terminal hop instead of two and no relay. No tool
//!   can beat it; its figures say how far the targets are from what this machine allows (the
//!   ≥ 3× tmux target is above it here: a program writing straight to a terminal is about
//!   2× tmux).
//!
//! dtach and tmux run in their normal configuration (tmux with no configuration file, its own
//! server via `-L`). Where one is missing its comparison prints `skip: … why` and no verdict;
//! `cargo xtask bench engate-attach` installs dtach first when it can.
//!
//! Not a criterion bench: one sample is a whole round through three processes and two
//! terminals (seconds for the throughput), so the rounds are driven and counted here; the
//! verdict lines are the shared ones.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use workspace_tests::bench::{Target, median, verdict};
use workspace_tests::support::{TempDir, which};

const ENGATE: &str = env!("CARGO_BIN_EXE_engate");
const FILE_BYTES: usize = 64 << 20;
const THROUGHPUT_ROUNDS: usize = 5;
const ECHO_WARMUP: usize = 20;
const ECHO_SAMPLES: usize = 200;
const ECHO_BLOCK: usize = 10;
/// How long one round may take before it counts as failed.
const ROUND_LIMIT: Duration = Duration::from_secs(120);
const ROWS: u16 = 24;
const COLS: u16 = 80;

/// The master side of a pseudo-terminal; the slave side is handed to a client.
struct Pty {
    master: File,
    slave: OwnedFd,
}

impl Pty {
    /// Opens a pair with the window size `ROWS` × `COLS`.
    fn open() -> io::Result<Self> {
        // SAFETY: posix_openpt has no memory preconditions; the result is checked.
        let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let master = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let m = master.as_raw_fd();
        // SAFETY: `m` is an open pty master for the duration of these calls.
        if unsafe { libc::grantpt(m) } != 0 || unsafe { libc::unlockpt(m) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: `name` is writable for its full length, which is passed.
        if unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated path.
        let path = unsafe { CStr::from_ptr(name.as_ptr()) };
        // SAFETY: `path` is a valid C string; the result is checked.
        let sfd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if sfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `sfd` was just opened and is owned by nobody else.
        let slave = unsafe { OwnedFd::from_raw_fd(sfd) };
        let size = libc::winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: `size` is a valid winsize read by the ioctl; `m` is open.
        if unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { master, slave })
    }

    /// Runs `cmd` with this terminal as its controlling terminal and standard streams.
    fn spawn(&self, mut cmd: Command) -> io::Result<Child> {
        cmd.stdin(Stdio::from(self.slave.try_clone()?))
            .stdout(Stdio::from(self.slave.try_clone()?))
            .stderr(Stdio::from(self.slave.try_clone()?));
        let controlling_terminal = || {
            // SAFETY: setsid has no memory preconditions and is async-signal-safe.
            let session = unsafe { libc::setsid() };
            // SAFETY: fd 0 is the pty slave (set above); TIOCSCTTY takes an integer argument.
            if session < 0 || unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook runs between fork and exec and makes only async-signal-safe calls
        // (setsid, ioctl); it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(controlling_terminal);
        }
        cmd.spawn()
    }

    /// Waits up to `limit` for the master to be readable.
    fn readable(&self, limit: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = limit.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is one valid pollfd, as the count says.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n > 0 && pfd.revents != 0
    }

    /// Reads whatever is there (after waiting up to `limit`); 0 bytes means nothing came.
    fn read_some(&mut self, buf: &mut [u8], limit: Duration) -> usize {
        if !self.readable(limit) {
            return 0;
        }
        self.master.read(buf).unwrap_or(0)
    }

    /// Reads until nothing has come for `quiet`, or `limit` has passed.
    fn drain(&mut self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 1 << 16];
        while Instant::now() < deadline && self.read_some(&mut buf, quiet) > 0 {}
    }
}

/// One tool's sessions and the clients attached to them.
struct Tool {
    name: &'static str,
    /// Attached to the `cat` loop.
    cat: Pty,
    cat_client: Child,
    /// Attached to the raw echo program.
    echo: Pty,
    echo_client: Child,
    /// Ends the sessions.
    stop: Box<dyn FnMut()>,
    /// Throughput rounds so far (the number in the next marker, less one).
    rounds: usize,
    /// How long the clients may take to leave once the sessions are stopped (the `direct`
    /// programs never leave by themselves: they are killed at once).
    linger: Duration,
}

impl Tool {
    /// One throughput round: Enter, then read until the marker; bytes of the file per second.
    fn throughput(&mut self) -> Option<f64> {
        let mut buf = vec![0u8; 1 << 16];
        let mut tail: Vec<u8> = Vec::new();
        self.rounds += 1;
        let marker = format!("ENDMARK{}.", self.rounds).into_bytes();
        let start = Instant::now();
        self.cat.master.write_all(b"\r").ok()?;
        loop {
            let left = ROUND_LIMIT.checked_sub(start.elapsed())?;
            let n = self.cat.read_some(&mut buf, left);
            if n == 0 {
                continue;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(marker.len()).any(|w| w == marker) {
                let elapsed = start.elapsed();
                // Whatever follows the marker (tmux's cursor moves) is not the next round's.
                self.cat
                    .drain(Duration::from_millis(50), Duration::from_secs(2));
                return Some(FILE_BYTES as f64 / elapsed.as_secs_f64());
            }
            let keep = tail.len().saturating_sub(marker.len());
            tail.drain(..keep);
        }
    }

    /// One keystroke: a byte in, time until it comes back out (nanoseconds).
    fn echo(&mut self, key: u8) -> Option<f64> {
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        self.echo.master.write_all(&[key]).ok()?;
        loop {
            let left = Duration::from_secs(5).checked_sub(start.elapsed())?;
            let n = self.echo.read_some(&mut buf, left);
            if buf[..n].contains(&key) {
                let elapsed = start.elapsed();
                self.echo
                    .drain(Duration::from_millis(3), Duration::from_millis(200));
                return Some(elapsed.as_nanos() as f64);
            }
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        (self.stop)();
        for child in [&mut self.cat_client, &mut self.echo_client] {
            let deadline = Instant::now() + self.linger;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                // Keep draining: a client blocked on a full terminal never exits.
                let _ = self.cat.read_some(&mut [0u8; 4096], Duration::ZERO);
                let _ = self.echo.read_some(&mut [0u8; 4096], Duration::ZERO);
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The throughput program, as a shell script.
fn cat_script(file: &Path) -> String {
    format!(
        "n=0; while read x; do cat '{}'; n=$((n+1)); printf 'END%s%d.\\n' MARK $n; done",
        file.display()
    )
}

const ECHO_SCRIPT: &str = "stty raw -echo; exec cat";

fn quiet(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Attaches one client per session, each on its own terminal, and lets the first screen
/// settle.
fn attach_both(
    name: &'static str,
    client: impl Fn(&str) -> Command,
    stop: Box<dyn FnMut()>,
) -> io::Result<Tool> {
    let (mut cat, mut echo) = (Pty::open()?, Pty::open()?);
    let cat_client = cat.spawn(client("cat"))?;
    let echo_client = echo.spawn(client("echo"))?;
    let tool = Tool {
        name,
        cat_client,
        echo_client,
        stop,
        rounds: 0,
        linger: Duration::from_secs(5),
        cat: {
            cat.drain(Duration::from_millis(300), Duration::from_secs(5));
            cat
        },
        echo: {
            echo.drain(Duration::from_millis(300), Duration::from_secs(5));
            echo
        },
    };
    Ok(tool)
}

fn engate(dir: &Path, file: &Path) -> io::Result<Tool> {
    let runtime = dir.join("engate-runtime");
    std::fs::create_dir_all(&runtime)?;
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700))?;
    let command = {
        let runtime = runtime.clone();
        move || {
            let mut cmd = Command::new(ENGATE);
            cmd.env("XDG_RUNTIME_DIR", &runtime)
                .env_remove("ENGATE")
                .env("TERM", "xterm-256color");
            cmd
        }
    };
    let script = cat_script(file);
    quiet(command().args(["new", "cat", "--", "sh", "-c", &script]))?;
    quiet(command().args(["new", "echo", "--", "sh", "-c", ECHO_SCRIPT]))?;
    let stop = {
        let command = command.clone();
        Box::new(move || {
            for s in ["cat", "echo"] {
                let _ = quiet(command().args(["kill", s]));
            }
        })
    };
    attach_both(
        "engate",
        |s| {
            let mut cmd = command();
            cmd.args(["attach", s]);
            cmd
        },
        stop,
    )
}

/// The programs straight on the bench's terminals: the ceiling no relay can beat.
fn direct(file: &Path) -> io::Result<Tool> {
    let script = cat_script(file);
    let mut tool = attach_both(
        "direct",
        move |s| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", if s == "cat" { &script } else { ECHO_SCRIPT }])
                .env("TERM", "xterm-256color");
            cmd
        },
        Box::new(|| {}),
    )?;
    tool.linger = Duration::ZERO;
    Ok(tool)
}

fn dtach(dir: &Path, file: &Path) -> io::Result<Tool> {
    let sock = |s: &str| dir.join(format!("dtach-{s}.sock"));
    let script = cat_script(file);
    // `-N`: the session's master stays in the foreground, a child this bench can end.
    let mut masters = Vec::new();
    for (s, script) in [("cat", script.as_str()), ("echo", ECHO_SCRIPT)] {
        masters.push(
            Command::new("dtach")
                .arg("-N")
                .arg(sock(s))
                .args(["sh", "-c", script])
                .env("TERM", "xterm-256color")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sock(s).exists() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "no dtach socket {}",
                    sock(s).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let stop = Box::new(move || {
        for mut master in masters.drain(..) {
            let _ = master.kill();
            let _ = master.wait();
        }
    });
    attach_both(
        "dtach",
        |s| {
            let mut cmd = Command::new("dtach");
            cmd.arg("-a").arg(sock(s)).env("TERM", "xterm-256color");
            cmd
        },
        stop,
    )
}

fn tmux(file: &Path) -> io::Result<Tool> {
    let server = format!("engate-bench-{}", std::process::id());
    let command = {
        let server = server.clone();
        move || {
            let mut cmd = Command::new("tmux");
            cmd.args(["-L", &server, "-f", "/dev/null"])
                .env_remove("TMUX")
                .env("TERM", "xterm-256color");
            cmd
        }
    };
    let script = cat_script(file);
    let (rows, cols) = (ROWS.to_string(), COLS.to_string());
    for (s, script) in [("cat", script.as_str()), ("echo", ECHO_SCRIPT)] {
        quiet(command().args([
            "new-session",
            "-d",
            "-s",
            s,
            "-x",
            &cols,
            "-y",
            &rows,
            "sh",
            "-c",
            script,
        ]))?;
    }
    let stop = {
        let command = command.clone();
        Box::new(move || {
            let _ = quiet(command().arg("kill-server"));
        })
    };
    attach_both(
        "tmux",
        |s| {
            let mut cmd = command();
            cmd.args(["attach-session", "-t", s]);
            cmd
        },
        stop,
    )
}

/// 64 MiB of numbered 80-column text lines.
fn write_file(path: &Path) -> io::Result<()> {
    let mut out = io::BufWriter::new(File::create(path)?);
    let mut written = 0;
    let mut i = 0u64;
    while written < FILE_BYTES {
        // 79 columns and a newline: no line wraps on an 80-column terminal.
        let line = format!(
            "{i:010} {:<68}\n",
            "the quick brown fox jumps over the lazy dog 0123456789"
        );
        let line = &line.as_bytes()[..line.len().min(FILE_BYTES - written)];
        out.write_all(line)?;
        written += line.len();
        i += 1;
    }
    out.flush()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that names another bench skips this one.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "terminal".contains(f.as_str())) {
        return;
    }
    let dir = TempDir::new("engate-bench");
    let file = dir.path().join("cat-64MiB.txt");
    write_file(&file).expect("write the 64 MiB file");

    let mut tools: Vec<Tool> = Vec::new();
    tools.push(engate(dir.path(), &file).expect("engate sessions"));
    let mut skipped = Vec::new();
    match which("dtach") {
        Some(_) => match dtach(dir.path(), &file) {
            Ok(t) => tools.push(t),
            Err(e) => skipped.push(("dtach", format!("dtach sessions failed: {e}"))),
        },
        None => skipped.push((
            "dtach",
            "dtach is not installed (`apt-get install dtach`; `cargo xtask bench` tries)".into(),
        )),
    }
    match which("tmux") {
        Some(_) => match tmux(&file) {
            Ok(t) => tools.push(t),
            Err(e) => skipped.push(("tmux", format!("tmux sessions failed: {e}"))),
        },
        None => skipped.push(("tmux", "tmux is not installed".into())),
    }
    match direct(&file) {
        Ok(t) => tools.push(t),
        Err(e) => skipped.push(("direct", format!("the programs could not start: {e}"))),
    }

    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut echoes: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    // Warm-up: one round each, not counted (page cache, first screens).
    for t in &mut tools {
        let _ = t.throughput();
    }
    for round in 0..THROUGHPUT_ROUNDS {
        for k in 0..tools.len() {
            // Rotate the order so no tool always goes first.
            let i = (k + round) % tools.len();
            rates[i].push(tools[i].throughput().unwrap_or(f64::NAN));
        }
    }
    for t in &mut tools {
        for _ in 0..ECHO_WARMUP {
            let _ = t.echo(b'x');
        }
    }
    for block in 0..ECHO_SAMPLES / ECHO_BLOCK {
        for k in 0..tools.len() {
            let i = (k + block) % tools.len();
            for _ in 0..ECHO_BLOCK {
                echoes[i].push(tools[i].echo(b'x').unwrap_or(f64::NAN));
            }
        }
    }

    // Throughput ratios are medians of per-round ratios: the tools of one round ran back to
    // back, so a round's ratio sees one machine state (rates drift by ±20% between rounds
    // here).
    let paired = |a: usize, b: usize| {
        let mut ratios: Vec<f64> = rates[a].iter().zip(&rates[b]).map(|(x, y)| x / y).collect();
        median(&mut ratios)
    };
    let rate_of: Vec<f64> = rates.clone().iter_mut().map(|r| median(r)).collect();
    let echo_of: Vec<f64> = echoes.iter_mut().map(|e| median(e)).collect();
    for (i, t) in tools.iter().enumerate() {
        let path = if t.name == "direct" {
            "straight on the terminal, no relay"
        } else {
            "through an attached client"
        };
        let each: Vec<String> = rates[i]
            .iter()
            .map(|r| format!("{:.1}", r / (1 << 20) as f64))
            .collect();
        println!(
            "info: engate-attach/terminal: {}: cat of 64 MiB {path} {:.1} MiB/s (median of {THROUGHPUT_ROUNDS}: {}), keystroke to echo median {:.1} us ({ECHO_SAMPLES} samples)",
            t.name,
            rate_of[i] / (1 << 20) as f64,
            each.join(" "),
            echo_of[i] / 1000.0,
        );
    }
    let find = |name: &str| tools.iter().position(|t| t.name == name);
    for (name, why) in &skipped {
        println!("skip: engate-attach/terminal vs {name}: {why}");
    }
    if let Some(d) = find("dtach") {
        verdict(
            "engate-attach",
            "cat_64MiB_throughput_vs_dtach",
            paired(0, d),
            "x",
            Target::AtLeast(1.0),
        );
        verdict(
            "engate-attach",
            "keystroke_echo_median_vs_dtach",
            echo_of[0] / echo_of[d],
            "x",
            Target::AtMost(1.0),
        );
    }
    if let (Some(d), Some(t)) = (find("direct"), find("tmux")) {
        println!(
            "info: engate-attach/terminal: the ceiling (the programs straight on a terminal, no relay): {:.2}x tmux's throughput; engate reaches {:.0}% of it, dtach {}",
            paired(d, t),
            100.0 * paired(0, d),
            find("dtach").map_or("-".into(), |x| format!("{:.0}%", 100.0 * paired(x, d))),
        );
    }
    if let Some(t) = find("tmux") {
        verdict(
            "engate-attach",
            "cat_64MiB_throughput_vs_tmux",
            paired(0, t),
            "x",
            Target::AtLeast(3.0),
        );
    }
    let _ = io::stdout().flush();
    drop(tools);
}
