//! varta-watch end to end: the real daemon watches 50 real agents (40 `varta-watch beacon`
//! processes sending VLP frames, 10 shell loops calling the real `systemd-notify`); one agent
//! is frozen with SIGSTOP (Stalled, with its detection latency), thawed (Recovered), another is
//! killed (Exited at once, through its pidfd); then /metrics is scraped.
//!
//! Run with `cargo xtask demo` (which builds the daemon first), or after
//! `cargo build --release -p varta-watch`: `cargo run --release -p varta-watch --example demo`.

use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BEACONS: usize = 40;
const NOTIFY_LOOPS: usize = 10;
const THRESHOLD_MS: u64 = 500;

/// Child processes killed (and reaped) on drop, so the demo leaves nothing behind.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let bin = daemon_binary()?;
    let dir = std::env::temp_dir().join(format!("varta-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&bin, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The `varta-watch` binary built next to this example (target/<profile>/varta-watch).
fn daemon_binary() -> Result<PathBuf, Box<dyn Error>> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("varta-watch"))
        .ok_or("cannot locate the target directory")?;
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build it first with `cargo build --release -p varta-watch`",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

fn run(bin: &Path, dir: &Path) -> Result<(), Box<dyn Error>> {
    let socket = dir.join("observer.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let mut daemon = Command::new(bin)
        .arg("--socket")
        .arg(&socket)
        .args(["--threshold", &format!("{THRESHOLD_MS}ms")])
        .args(["--metrics-addr", &metrics])
        .args(["--capacity", "128"])
        .stdout(Stdio::piped())
        .spawn()?;
    let (tx, events) = mpsc::channel::<String>();
    let stdout = daemon.stdout.take().ok_or("no daemon stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let _daemon_guard = Procs(Vec::new());
    wait_for(|| socket.exists(), "the observer socket")?;
    println!("daemon pid {} watching {}", daemon.id(), socket.display());

    let mut agents = Procs(Vec::new());
    for _ in 0..BEACONS {
        agents.0.push(
            Command::new(bin)
                .args(["beacon", "--interval", "100ms", "--socket"])
                .arg(&socket)
                .spawn()?,
        );
    }
    let notify = which("systemd-notify");
    if notify.is_some() {
        for i in 0..NOTIFY_LOOPS {
            let script = format!(
                "systemd-notify READY=1; while :; do systemd-notify WATCHDOG=1 'STATUS=loop {i} alive'; sleep 0.1; done"
            );
            agents.0.push(
                Command::new("/bin/sh")
                    .args(["-c", &script])
                    .env("NOTIFY_SOCKET", &socket)
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
    } else {
        println!("skip: systemd-notify is not installed; running {BEACONS} beacons only");
    }
    let expected = agents.0.len();
    let mut registered = std::collections::HashSet::new();
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while registered.len() < expected {
        let line = events.recv_timeout(deadline.saturating_duration_since(Instant::now()))?;
        if line.contains("\"event\":\"registered\"") {
            registered.insert(field(&line, "pid").unwrap_or(0));
        }
        log.push(line);
    }
    println!(
        "{} agents registered ({BEACONS} VLP beacons, {} systemd-notify loops)",
        registered.len(),
        expected - BEACONS
    );

    // Freeze one beacon: it is hung, not dead.
    let frozen = agents.0[0].id();
    let t = Instant::now();
    signal(frozen, "STOP")?;
    let line = expect(&events, &mut log, "stalled", frozen)?;
    let detected = t.elapsed();
    println!(
        "SIGSTOP {frozen} -> Stalled after {:.1} ms (threshold {THRESHOLD_MS} ms; the agent's last beat came up to 100 ms before the freeze): {line}",
        detected.as_secs_f64() * 1e3
    );
    signal(frozen, "CONT")?;
    let line = expect(&events, &mut log, "recovered", frozen)?;
    println!("SIGCONT {frozen} -> {line}");

    // Kill another: dead is reported at once, not after the threshold.
    let victim = agents.0[1].id();
    let t = Instant::now();
    agents.0[1].kill()?;
    let line = expect(&events, &mut log, "exited", victim)?;
    println!(
        "SIGKILL {victim} -> Exited after {:.1} ms (pidfd, no timeout): {line}",
        t.elapsed().as_secs_f64() * 1e3
    );

    std::thread::sleep(Duration::from_millis(200));
    let scrape = http_get(&metrics, "/metrics")?;
    println!("\n/metrics (totals, and the two agents above):");
    for l in scrape.lines().filter(|l| !l.starts_with('#')) {
        let about_touched =
            l.contains(&format!("pid=\"{frozen}\"")) || l.contains(&format!("pid=\"{victim}\""));
        if !l.contains("pid=") || about_touched {
            println!("  {l}");
        }
    }

    drop(agents);
    signal(daemon.id(), "TERM")?;
    let status = daemon.wait()?;
    println!(
        "\nSIGTERM -> daemon exited {status}; socket removed: {}",
        !socket.exists()
    );
    Ok(())
}

fn expect(
    events: &mpsc::Receiver<String>,
    log: &mut Vec<String>,
    name: &str,
    pid: u32,
) -> Result<String, Box<dyn Error>> {
    let tag = format!("\"event\":\"{name}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| format!("no {name} event for {pid}"))?;
        log.push(line.clone());
        if line.contains(&tag) && field(&line, "pid") == Some(u64::from(pid)) {
            return Ok(line);
        }
    }
}

fn field(line: &str, key: &str) -> Option<u64> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

fn signal(pid: u32, sig: &str) -> Result<(), Box<dyn Error>> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{sig} {pid} failed").into())
    }
}

fn wait_for(cond: impl Fn() -> bool, what: &str) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn http_get(addr: &str, path: &str) -> Result<String, Box<dyn Error>> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(response))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
