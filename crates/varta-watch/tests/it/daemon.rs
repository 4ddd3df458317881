//! The real daemon against real senders and real signals.

use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use platform_primitives::fdpass::send_with_fds;
use varta_watch::vlp::{Frame, Status};

use crate::support::{
    Activation, BIN, Daemon, TempDir, beacon, field, is_root, scrape, send_signal, skip, which,
};

const WAIT: Duration = Duration::from_secs(10);

/// A frozen agent is Stalled (not Exited), thawed it Recovers, killed it Exits — dead and hung
/// told apart through the agent's pidfd.
#[test]
fn frozen_agent_stalls_recovers_and_exits() {
    let dir = TempDir::new("freeze");
    let mut d = Daemon::start(&dir, &["--threshold", "300ms"]);
    let mut agent = beacon(&d.socket, &["--interval", "50ms"]);
    let pid = agent.id();
    d.expect_event("registered", pid, WAIT);

    let frozen = Instant::now();
    send_signal(pid, libc::SIGSTOP);
    let stalled = d.expect_event("stalled", pid, WAIT);
    let latency = frozen.elapsed();
    let silent = field(&stalled, "silent_ms").expect("silent_ms");
    assert!(silent >= 300, "{stalled}");
    assert!(
        latency < Duration::from_millis(1500),
        "detected after {latency:?}"
    );

    send_signal(pid, libc::SIGCONT);
    let recovered = d.expect_event("recovered", pid, WAIT);
    assert!(field(&recovered, "silent_ms").expect("silent_ms") >= silent);

    agent.kill().expect("kill agent");
    agent.wait().expect("reap agent");
    let exited = d.expect_event("exited", pid, WAIT);
    assert!(exited.contains("\"expected\":false"), "{exited}");
    let stalls = d
        .seen
        .iter()
        .filter(|l| l.contains("\"event\":\"stalled\"") && field(l, "pid") == Some(u64::from(pid)))
        .count();
    assert_eq!(
        stalls, 1,
        "only the freeze is a stall; the kill is an exit: {:?}",
        d.seen
    );
}

/// The real systemd-notify: READY and STATUS arrive, and its BARRIER=1 descriptor is closed at
/// once, so it exits 0 without its 5 s wait.
#[test]
fn real_systemd_notify_is_watched_and_never_waits() {
    let Some(program) = which("systemd-notify") else {
        return skip("systemd-notify", "systemd-notify is not installed");
    };
    let dir = TempDir::new("notify");
    let mut d = Daemon::start(
        &dir,
        &[
            "--control",
            dir.join("control.sock").to_str().expect("utf8"),
        ],
    );
    let started = Instant::now();
    let status = Command::new(program)
        .args(["READY=1", "STATUS=warming caches"])
        .env("NOTIFY_SOCKET", &d.socket)
        .status()
        .expect("run systemd-notify");
    let took = started.elapsed();
    assert!(status.success(), "systemd-notify: {status}");
    assert!(
        took < Duration::from_secs(3),
        "systemd-notify waited {took:?} for its barrier"
    );
    let ready = d.expect("ready event", WAIT, |l| l.contains("\"event\":\"ready\""));
    let agent = field(&ready, "pid").expect("pid");

    let out = Command::new(BIN)
        .args(["status", "--control"])
        .arg(dir.join("control.sock"))
        .output()
        .expect("varta-watch status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("\"pid\":{agent}")), "{text}");
    assert!(text.contains("\"status\":\"warming caches\""), "{text}");
    assert!(text.contains("\"phase\":\"ready\""), "{text}");
    assert!(
        text.contains("\"fds_closed\":1"),
        "the barrier fd was counted and closed: {text}"
    );
}

/// A sender who claims another pid in its frame is an AuthFailure, not a beat.
#[test]
fn frame_with_a_foreign_pid_is_an_auth_failure() {
    let dir = TempDir::new("auth");
    let mut d = Daemon::start(&dir, &[]);
    let frame = Frame {
        status: Status::Ok,
        pid: 4_000_000,
        timestamp: 1,
        nonce: 1,
        payload: 0,
    };
    UnixDatagram::unbound()
        .expect("socket")
        .send_to(&frame.encode(), &d.socket)
        .expect("send");
    let line = d.expect_event("auth_failure", std::process::id(), WAIT);
    assert!(line.contains("\"reason\":\"pid_mismatch\""), "{line}");
    assert_eq!(field(&line, "claimed_pid"), Some(4_000_000));
}

#[test]
fn uid_allow_list_refuses_other_uids() {
    let dir = TempDir::new("allow");
    let mut d = Daemon::start(&dir, &["--allow-uid", "4242"]);
    let mut agent = beacon(&d.socket, &["--interval", "50ms", "--count", "1"]);
    let pid = agent.id();
    let line = d.expect_event("auth_failure", pid, WAIT);
    assert!(line.contains("uid_not_allowed"), "{line}");
    agent.wait().expect("beacon");
}

/// A panicking agent's terminal frame is reported as Critical at once.
#[test]
fn terminal_frame_is_critical() {
    let dir = TempDir::new("terminal");
    let mut d = Daemon::start(&dir, &["--threshold", "10s"]);
    let mut agent = beacon(
        &d.socket,
        &["--interval", "10ms", "--count", "3", "--terminal"],
    );
    let pid = agent.id();
    let line = d.expect_event("critical", pid, WAIT);
    assert!(line.contains("terminal_frame"), "{line}");
    agent.wait().expect("beacon");
    d.expect_event("exited", pid, WAIT);
}

/// Garbage of every kind: the daemon survives, counts each datagram in the right counter,
/// tracks nobody new, and its descriptor table does not grow.
#[test]
fn bad_input_is_counted_and_leaks_nothing() {
    let dir = TempDir::new("bad");
    let control = dir.join("control.sock");
    let d = Daemon::start(
        &dir,
        &[
            "--control",
            control.to_str().expect("utf8"),
            "--rate-limit",
            "0",
        ],
    );
    let status = || {
        let out = Command::new(BIN)
            .arg("status")
            .arg("--control")
            .arg(&control)
            .output()
            .expect("status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let _ = status();
    let fds_before = d.open_fds();

    let tx = UnixDatagram::unbound().expect("socket");
    tx.connect(&d.socket).expect("connect");
    tx.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut sent = 0u64;
    let mut send = |bytes: &[u8]| {
        // The daemon drains fast, but the queue is short: retry on a full queue.
        loop {
            match tx.send(bytes) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        sent += 1;
    };
    // Every length up to 600 bytes, then a stride up to the 64 KiB datagram limit, of a byte
    // pattern that is neither a frame nor text; past 4 KiB they are also truncated.
    let lengths: Vec<usize> = (0..=600)
        .chain((601..=65_535).step_by(997))
        .chain([65_535])
        .collect();
    let oversized = lengths.iter().filter(|&&l| l > 4096).count() as u64;
    let pattern = vec![0xFFu8; 65_535];
    for &len in &lengths {
        send(&pattern[..len]);
    }
    // Frames with each defect, text with NUL, invalid UTF-8, bad values, and a datagram larger
    // than the receive buffer (4 KiB).
    let good = Frame {
        status: Status::Ok,
        pid: std::process::id(),
        timestamp: 1,
        nonce: 1,
        payload: 0,
    }
    .encode();
    let mut bad_crc = good;
    bad_crc[20] ^= 0x40;
    let mut v1 = good;
    v1[2] = 1;
    for bytes in [
        &bad_crc[..],
        &v1[..],
        &good[..31],
        b"READY=1\0",
        b"STATUS=\xff\xfe",
        b"WATCHDOG_USEC=never",
        &[b'A'; 5000][..],
    ] {
        // (The 5000-byte text is truncated too.)
        send(bytes);
    }
    let decode_errors_sent = sent;
    // Descriptors attached to a text datagram with no known key: closed, nobody tracked.
    let (r, w) = std::io::pipe().expect("pipe");
    for _ in 0..20 {
        send_with_fds(&tx, b"X_UNKNOWN=1", &[r.as_fd(), w.as_fd()]).expect("send fds");
    }
    drop((r, w));

    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        last = status();
        if field(&last, "datagrams") == Some(sent + 20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(field(&last, "datagrams"), Some(sent + 20), "{last}");
    assert_eq!(
        field(&last, "decode_errors"),
        Some(decode_errors_sent),
        "{last}"
    );
    assert_eq!(field(&last, "fds_closed"), Some(40), "{last}");
    assert_eq!(field(&last, "truncated"), Some(oversized + 1), "{last}");
    assert!(
        last.starts_with("{\"agents\":[]"),
        "nobody is tracked: {last}"
    );
    assert_eq!(
        d.open_fds(),
        fds_before,
        "the daemon's descriptor table grew"
    );
}

/// Prometheus metrics over loopback HTTP reflect a live agent.
#[test]
fn metrics_are_served_over_loopback_http() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("probe port")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let dir = TempDir::new("metrics");
    let mut d = Daemon::start(&dir, &["--metrics-addr", &addr]);
    let mut agent = beacon(&d.socket, &["--interval", "20ms"]);
    let pid = agent.id();
    d.expect_event("registered", pid, WAIT);
    std::thread::sleep(Duration::from_millis(200));
    let body = scrape(&addr);
    agent.kill().expect("kill");
    agent.wait().expect("reap");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("# TYPE varta_frames_total counter"), "{body}");
    assert!(
        body.contains(&format!(
            "varta_agent_stalled{{service=\"varta-watch\",pid=\"{pid}\"}} 0"
        )),
        "{body}"
    );
    let beats = body
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "varta_agent_beats_total{{service=\"varta-watch\",pid=\"{pid}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("per-agent beats line");
    assert!(beats >= 3, "{beats} beats in 200 ms at 20 ms intervals");
}

/// SIGTERM: exit 0, observer and control sockets removed.
#[test]
fn sigterm_stops_cleanly_and_removes_the_sockets() {
    let dir = TempDir::new("term");
    let control = dir.join("control.sock");
    let mut d = Daemon::start(&dir, &["--control", control.to_str().expect("utf8")]);
    assert!(control.exists());
    d.signal(libc::SIGTERM);
    let status = d.child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "observer socket left behind");
    assert!(!control.exists(), "control socket left behind");
}

/// The daemon tells its own supervisor READY=1 and keeps its watchdog fed.
#[test]
fn daemon_notifies_its_own_supervisor() {
    let dir = TempDir::new("selfnotify");
    let supervisor_path = dir.join("supervisor.sock");
    let supervisor = UnixDatagram::bind(&supervisor_path).expect("supervisor socket");
    supervisor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket")
        .arg(dir.join("observer.sock"))
        .env("NOTIFY_SOCKET", &supervisor_path)
        .env("WATCHDOG_USEC", "200000");
    let _d = Daemon::spawn(cmd, dir.join("observer.sock"));
    let mut buf = [0u8; 256];
    let n = supervisor.recv(&mut buf).expect("READY from the daemon");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    let n = supervisor.recv(&mut buf).expect("WATCHDOG from the daemon");
    assert_eq!(&buf[..n], b"WATCHDOG=1");
}

/// Socket activation with the real systemd-socket-activate: the daemon serves the socket it
/// was handed and leaves its path to the activator.
#[test]
fn socket_activation_serves_the_passed_socket() {
    let Some(act) = Activation::prepare("socket_activation_serves_the_passed_socket", "activate")
    else {
        return;
    };
    let mut d = Daemon::spawn(act.command(Stdio::null()), act.path.clone());
    // systemd-socket-activate starts the daemon on the first datagram.
    let mut agent = beacon(&act.path, &["--interval", "20ms"]);
    let pid = agent.id();
    d.expect_event("registered", pid, WAIT);
    agent.kill().expect("kill");
    agent.wait().expect("reap");
    assert!(
        !act.unused().exists(),
        "an activated daemon binds nothing itself"
    );
}

/// An on-stall hook gets the agent's identity and its pidfd as descriptor 3.
#[test]
fn stall_hook_receives_the_agents_pidfd() {
    let dir = TempDir::new("hook");
    let out = dir.join("hook.out");
    let hook = format!(
        "echo \"$VARTA_EVENT $VARTA_PID $VARTA_SILENT_MS $VARTA_PIDFD $(grep '^Pid:' /proc/self/fdinfo/3 | tr -d '\\t ')\" > {}",
        out.display()
    );
    let mut d = Daemon::start(&dir, &["--threshold", "200ms", "--on-stall", &hook]);
    let mut agent = beacon(&d.socket, &["--interval", "20ms"]);
    let pid = agent.id();
    d.expect_event("registered", pid, WAIT);
    send_signal(pid, libc::SIGSTOP);
    d.expect_event("stalled", pid, WAIT);
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.ends_with('\n') || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    send_signal(pid, libc::SIGKILL);
    agent.wait().expect("reap");
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"stalled"), "{text:?}");
    assert_eq!(words.get(1), Some(&pid.to_string().as_str()), "{text:?}");
    assert_eq!(words.get(3), Some(&"3"), "{text:?}");
    assert_eq!(
        words.get(4),
        Some(&format!("Pid:{pid}").as_str()),
        "pidfd names the agent: {text:?}"
    );
}

/// systemd-notify as root attributes READY to its parent (here, this test process); other
/// callers report their own pid. Either way the agent is the attested pid.
#[test]
fn notify_agents_are_the_kernel_attested_pid() {
    let Some(program) = which("systemd-notify") else {
        return skip("notify attribution", "systemd-notify is not installed");
    };
    let dir = TempDir::new("attrib");
    let mut d = Daemon::start(&dir, &[]);
    let child = Command::new(program)
        .arg("READY=1")
        .env("NOTIFY_SOCKET", &d.socket)
        .spawn()
        .expect("systemd-notify");
    let expected = if is_root() {
        std::process::id()
    } else {
        child.id()
    };
    let mut child = child;
    child.wait().expect("wait");
    d.expect_event("ready", expected, WAIT);
}

/// The global limit drops a flood but never a Critical frame.
#[test]
fn global_rate_limit_drops_floods_but_not_critical_frames() {
    let dir = TempDir::new("global");
    let control = dir.join("control.sock");
    let mut d = Daemon::start(
        &dir,
        &[
            "--control",
            control.to_str().expect("utf8"),
            "--rate-limit",
            "0",
            "--global-rate-limit",
            "5",
        ],
    );
    let mut flood = beacon(&d.socket, &["--interval", "1ms", "--count", "300"]);
    flood.wait().expect("flood");
    let mut critical = beacon(
        &d.socket,
        &["--interval", "1ms", "--count", "1", "--status", "critical"],
    );
    let pid = critical.id();
    critical.wait().expect("critical beacon");
    d.expect_event("critical", pid, WAIT);
    let out = Command::new(BIN)
        .arg("status")
        .arg("--control")
        .arg(&control)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    let dropped = field(&text, "global_rate_limited").expect("counter");
    assert!(
        dropped >= 250,
        "a 300-frame burst against 5/s must mostly drop: {text}"
    );
}

/// Diagnostics go to stderr through tracing, at the chosen level; events stay on stdout.
#[test]
fn diagnostics_are_logged_at_the_chosen_level() {
    let dir = TempDir::new("logs");
    let socket = dir.join("observer.sock");
    let child = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .args(["--log-level", "debug"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    let deadline = Instant::now() + WAIT;
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut bad = Frame {
        status: Status::Ok,
        pid: std::process::id(),
        timestamp: 1,
        nonce: 1,
        payload: 0,
    }
    .encode();
    bad[9] ^= 0xFF;
    UnixDatagram::unbound()
        .expect("socket")
        .send_to(&bad, &socket)
        .expect("send");
    std::thread::sleep(Duration::from_millis(200));
    send_signal(child.id(), libc::SIGTERM);
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("INFO") && log.contains("observing"), "{log}");
    assert!(
        log.contains("DEBUG") && log.contains("dropped an invalid VLP frame"),
        "{log}"
    );
    assert!(
        log.contains("CRC-32C mismatch"),
        "the reason is logged: {log}"
    );
    assert!(log.contains("stopping on signal"), "{log}");
}

/// Events can go to a file; the socket mode and the boottime clock are honoured.
#[test]
fn events_file_socket_mode_and_boottime_clock() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("eventsfile");
    let events = dir.join("events.jsonl");
    let d = Daemon::start(
        &dir,
        &[
            "--events",
            events.to_str().expect("utf8"),
            "--socket-mode",
            "660",
            "--clock",
            "boottime",
            "--threshold",
            "200ms",
        ],
    );
    let mode = std::fs::metadata(&d.socket)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let mut agent = beacon(&d.socket, &["--interval", "20ms", "--count", "3"]);
    let pid = agent.id();
    agent.wait().expect("beacon");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        let has = |name: &str| {
            text.lines().any(|l| {
                l.contains(&format!("\"event\":\"{name}\""))
                    && field(l, "pid") == Some(u64::from(pid))
            })
        };
        if has("registered") && has("exited") {
            break;
        }
        assert!(Instant::now() < deadline, "events file: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An agent outlives an observer restart: the beacon reconnects to the new socket.
#[test]
fn beacon_survives_an_observer_restart() {
    let dir = TempDir::new("restart");
    let mut first = Daemon::start(&dir, &[]);
    let mut agent = beacon(&first.socket, &["--interval", "20ms"]);
    let pid = agent.id();
    first.expect_event("registered", pid, WAIT);
    first.signal(libc::SIGTERM);
    assert!(first.child.wait().expect("first daemon").success());
    let mut second = Daemon::start(&dir, &[]);
    // Registered with the new observer: the same process found the new socket.
    second.expect_event("registered", pid, WAIT);
    agent.kill().expect("kill");
    agent.wait().expect("reap");
}
