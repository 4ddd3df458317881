//! What production meets: a full descriptor table, unprivileged `systemd-notify --pid`, idle
//! clients on the servers, bad flags, an events file that cannot be written, floods of garbage,
//! and a socket directory that does not exist yet.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    Activation, BIN, Children, Daemon, TempDir, beacon, field, free_loopback_addr, is_root,
    limit_fds, output_within, register_and_kill, scrape, skip, status, which,
};

const WAIT: Duration = Duration::from_secs(10);

// ---- 1. descriptor exhaustion ------------------------------------------------------------

/// 120 agents against a daemon whose hard descriptor limit is 64: pidfds run out, and the
/// daemon watches the rest by polling. Every exit is reported, the (debug) daemon never
/// aborts, and the shortage is a metric and one warning.
#[test]
fn every_exit_is_reported_when_pidfds_run_out() {
    const AGENTS: usize = 120;
    let dir = TempDir::new("nofile");
    let control = dir.join("control.sock");
    let stderr_path = dir.join("stderr.log");
    let socket = dir.join("observer.sock");
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket")
        .arg(&socket)
        .args(["--threshold", "60s", "--capacity", "1024", "--control"])
        .arg(&control)
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    limit_fds(&mut cmd, 64, 64);
    let mut d = Daemon::spawn(cmd, socket);

    register_and_kill(&mut d, AGENTS, "100ms");
    assert!(
        d.child.try_wait().expect("try_wait").is_none(),
        "the daemon died"
    );
    assert!(
        !d.seen.iter().any(|l| l.contains("\"event\":\"stalled\"")),
        "an exit is not a stall"
    );
    let text = status(&control);
    let no_pidfd = field(&text, "no_pidfd").expect("no_pidfd counter");
    assert!(no_pidfd > 0, "the shortage is counted: {text}");
    d.signal(libc::SIGTERM);
    let code = d.child.wait().expect("daemon");
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(code.success(), "{code}: {log}");
    let pidfd_warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("pidfd"))
        .count();
    assert!(
        (1..=3).contains(&pidfd_warnings),
        "one rate-limited warning: {log}"
    );
}

/// The daemon raises its soft descriptor limit to the hard limit at start.
#[test]
fn soft_descriptor_limit_is_raised_to_the_hard_limit() {
    let dir = TempDir::new("rlimit");
    let socket = dir.join("observer.sock");
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket").arg(&socket);
    limit_fds(&mut cmd, 64, 4096);
    let d = Daemon::spawn(cmd, socket);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[3..5], ["4096", "4096"], "{line}");
}

// ---- 2. MAINPID from unprivileged senders --------------------------------------------------

/// `systemd-notify --pid=$$` from a shell of an unprivileged user: the shell is the agent, the
/// short-lived helper is never registered, and a claim on another user's process is refused.
#[test]
fn unprivileged_systemd_notify_pid_tracks_the_shell() {
    let (Some(notify), Some(setpriv)) = (which("systemd-notify"), which("setpriv")) else {
        return skip("MAINPID", "systemd-notify or setpriv is not installed");
    };
    if !is_root() {
        return skip("MAINPID", "switching to uid 65534 needs root");
    }
    let dir = TempDir::new("mainpid");
    std::fs::set_permissions(dir.join("."), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut d = Daemon::start(
        &dir,
        &["--socket-mode", "666", "--threshold", "60s", "--log-beats"],
    );
    let script = format!(
        "{n} --pid=$$ READY=1 && {n} --pid=$$ WATCHDOG=1 && {n} --pid=$$ WATCHDOG=1 \
         && {n} --pid=1 STATUS=not-mine; echo done; exec sleep 30",
        n = notify.display()
    );
    let shell = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(&script)
        .env("NOTIFY_SOCKET", &d.socket)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("setpriv sh");
    let mut shell = Children(vec![shell]);
    let shell_pid = shell.0[0].id();
    let registered = d.expect_event("registered", shell_pid, WAIT);
    assert_eq!(field(&registered, "uid"), Some(65534), "{registered}");
    d.expect_event("ready", shell_pid, WAIT);
    let beats = d.expect("two beats", WAIT, {
        let tag = format!("\"pid\":{shell_pid}");
        let seen = std::cell::Cell::new(0);
        move |l| {
            if l.contains("\"event\":\"beat\"") && l.contains(&tag) {
                seen.set(seen.get() + 1);
            }
            seen.get() == 2
        }
    });
    assert!(beats.contains("\"event\":\"beat\""), "{beats}");
    // The claim on pid 1 (root's) is refused.
    let refused = d.expect("refused MAINPID=1", WAIT, |l| {
        l.contains("\"event\":\"auth_failure\"") && l.contains("main_pid_not_permitted")
    });
    assert_eq!(field(&refused, "claimed_pid"), Some(1), "{refused}");
    let mut out = [0u8; 5];
    shell.0[0]
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut out)
        .expect("script finished");
    shell.0[0].kill().expect("kill shell");
    shell.0[0].wait().expect("reap shell");
    d.expect_event("exited", shell_pid, WAIT);
    let strangers: Vec<&String> = d
        .seen
        .iter()
        .filter(|l| {
            (l.contains("\"event\":\"registered\"") || l.contains("\"event\":\"exited\""))
                && field(l, "pid") != Some(u64::from(shell_pid))
        })
        .collect();
    assert!(
        strangers.is_empty(),
        "helpers were tracked: {strangers:?}\nall: {:?}",
        d.seen
    );
}

// ---- 4. concurrent servers ---------------------------------------------------------------

/// Idle clients on the metrics and control servers do not delay anyone else.
#[test]
fn idle_clients_never_delay_a_scrape_or_a_status() {
    let addr = free_loopback_addr();
    let dir = TempDir::new("idle");
    let control = dir.join("control.sock");
    let _d = Daemon::start(
        &dir,
        &[
            "--metrics-addr",
            &addr,
            "--control",
            control.to_str().expect("utf8"),
        ],
    );
    let idle_tcp: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(&addr).expect("idle metrics client"))
        .collect();
    let idle_unix: Vec<_> = (0..3)
        .map(|_| UnixStream::connect(&control).expect("idle control client"))
        .collect();
    std::thread::sleep(Duration::from_millis(100));

    let started = Instant::now();
    let body = scrape(&addr);
    let took = started.elapsed();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(took < Duration::from_millis(500), "scrape took {took:?}");

    let started = Instant::now();
    let mut stream = UnixStream::connect(&control).expect("connect control");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(b"status\n").expect("request");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let took = started.elapsed();
    assert!(reply.starts_with("{\"agents\":"), "{reply}");
    assert!(took < Duration::from_millis(500), "status took {took:?}");
    drop((idle_tcp, idle_unix));
}

// ---- 5. flags ----------------------------------------------------------------------------

/// Values that cannot work are refused at start, naming the flag, with exit status 2.
#[test]
fn impossible_flag_values_are_refused_by_name() {
    let dir = TempDir::new("flags");
    let socket = dir.join("observer.sock");
    let cases: &[(&[&str], &str)] = &[
        (&["--threshold", "0s"], "--threshold"),
        (&["--threshold", "0ms"], "--threshold"),
        (&["--capacity", "0"], "--capacity"),
        (&["--rate-limit=-1"], "--rate-limit"),
        (&["--rate-limit", "-1"], "--rate-limit"),
        (&["--global-rate-limit=-0.5"], "--global-rate-limit"),
        (&["--global-rate-limit", "NaN"], "--global-rate-limit"),
        (&["--rate-limit", "inf"], "--rate-limit"),
        (&["--startup-grace=-1s"], "--startup-grace"),
        (&["--missed-beats", "0"], "--missed-beats"),
    ];
    for (args, flag) in cases {
        let out = output_within(
            Command::new(BIN).arg("--socket").arg(&socket).args(*args),
            Duration::from_secs(5),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} must name {flag}: {err}");
        assert!(!socket.exists(), "{args:?} bound the socket");
    }
}

/// A global rate below one datagram a second still lets datagrams through (one every 1/rate
/// seconds), as a per-agent rate does; 0 means unlimited for both.
#[test]
fn rates_below_one_per_second_still_admit() {
    for flags in [
        ["--global-rate-limit", "0.5"],
        ["--rate-limit", "0.5"],
        ["--global-rate-limit", "0"],
    ] {
        let dir = TempDir::new("slowrate");
        let mut d = Daemon::start(&dir, &flags);
        let mut agent = beacon(&d.socket, &["--interval", "10ms", "--count", "1"]);
        let pid = agent.id();
        d.expect_event("registered", pid, WAIT);
        agent.wait().expect("beacon");
    }
}

/// `--version` is the crate's version.
#[test]
fn version_is_the_crate_version() {
    let out = output_within(Command::new(BIN).arg("--version"), Duration::from_secs(5));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("varta-watch {}\n", env!("CARGO_PKG_VERSION"))
    );
}

// ---- 6. events file, decode floods, socket directory -------------------------------------

/// An events file that cannot be written (a full disk: /dev/full) is named in a warning,
/// counted, and does not stop the daemon.
#[test]
fn events_file_write_errors_are_counted_not_fatal() {
    let dir = TempDir::new("devfull");
    let control = dir.join("control.sock");
    let socket = dir.join("observer.sock");
    let stderr_path = dir.join("stderr.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket")
        .arg(&socket)
        .args(["--events", "/dev/full", "--control"])
        .arg(&control)
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let mut d = Daemon::spawn(cmd, socket);
    let deadline = Instant::now() + WAIT;
    while !control.exists() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut agents = Children(
        (0..3)
            .map(|_| beacon(&d.socket, &["--interval", "20ms"]))
            .collect(),
    );
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = status(&control);
        if field(&text, "event_write_errors").is_some_and(|n| n >= 3)
            && agents
                .0
                .iter()
                .all(|a| text.contains(&format!("\"pid\":{}", a.id())))
        {
            break text;
        }
        assert!(
            d.child.try_wait().expect("try_wait").is_none(),
            "the daemon died: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "status: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains("\"agents\":[{"), "{text}");
    for agent in &mut agents.0 {
        agent.kill().expect("kill");
        agent.wait().expect("reap");
    }
    d.signal(libc::SIGTERM);
    let code = d.child.wait().expect("daemon");
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(code.success(), "{code}: {log}");
    assert!(log.contains("/dev/full"), "the file is named: {log}");
    let warnings = log.lines().filter(|l| l.contains("/dev/full")).count();
    assert!(warnings <= 3, "warnings are rate-limited: {log}");
}

/// A sender flooding garbage gets a few decode events, each later one carrying how many were
/// suppressed; the counter still counts every datagram.
#[test]
fn decode_error_events_are_rate_limited_with_counts() {
    const SENT: u64 = 3000;
    let dir = TempDir::new("decodeflood");
    let control = dir.join("control.sock");
    let mut d = Daemon::start(
        &dir,
        &[
            "--control",
            control.to_str().expect("utf8"),
            "--rate-limit",
            "0",
        ],
    );
    let tx = UnixDatagram::unbound().expect("socket");
    tx.connect(&d.socket).expect("connect");
    tx.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for _ in 0..SENT {
        tx.send(b"\xff\xfe garbage").expect("send");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let text = status(&control);
        if field(&text, "decode_errors") == Some(SENT) {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = d.collect_for(Duration::from_millis(300));
    let reported = first
        .iter()
        .filter(|l| l.contains("\"event\":\"decode\""))
        .count();
    assert!(
        (1..=50).contains(&reported),
        "{reported} decode events for {SENT} datagrams"
    );
    // A while later the next one reports how many were left out.
    std::thread::sleep(Duration::from_millis(1200));
    tx.send(b"\xff\xfe garbage").expect("send");
    let line = d.expect("a later decode event", WAIT, |l| {
        l.contains("\"event\":\"decode\"")
    });
    let suppressed = field(&line, "suppressed").expect("suppressed count");
    assert_eq!(
        suppressed + reported as u64,
        SENT,
        "every datagram is reported or counted: {line}"
    );
}

/// A socket directory that does not exist is created: 0700 for an owner-only socket, 0755
/// when others may connect.
#[test]
fn missing_socket_directory_is_created_with_a_safe_mode() {
    for (mode, dir_mode) in [("600", 0o700), ("666", 0o755)] {
        let dir = TempDir::new("mkdir");
        let socket = dir.join("run/varta-watch/observer.sock");
        let mut cmd = Command::new(BIN);
        cmd.arg("--socket")
            .arg(&socket)
            .args(["--socket-mode", mode]);
        let _d = Daemon::spawn(cmd, socket.clone());
        for created in [dir.join("run/varta-watch"), dir.join("run")] {
            let got = std::fs::metadata(&created)
                .expect("created")
                .permissions()
                .mode()
                & 0o7777;
            assert_eq!(
                got,
                dir_mode,
                "{} for socket mode {mode}",
                created.display()
            );
        }
    }
}

/// A socket directory that cannot be created is a clear error naming it, with the OS cause.
#[test]
fn uncreatable_socket_directory_is_a_clear_error() {
    let dir = TempDir::new("nodir");
    std::fs::write(dir.join("file"), b"not a directory").expect("file");
    let socket = dir.join("file/sub/observer.sock");
    let out = output_within(
        Command::new(BIN).arg("--socket").arg(&socket),
        Duration::from_secs(5),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&dir.join("file/sub").display().to_string()),
        "names the directory: {err}"
    );
    assert!(err.contains("Not a directory"), "gives the OS cause: {err}");
}

/// An activated socket without `SO_PASSCRED` (systemd-socket-activate sets none; a `.socket`
/// unit without `PassCredentials=yes` neither): the datagrams queued before the daemon started
/// carry no credentials and are dropped. The daemon says so at start, naming the fix, and
/// turns the option on so later datagrams are attributed.
#[test]
fn activated_socket_without_passcred_is_warned_about() {
    let Some(act) = Activation::prepare(
        "activated_socket_without_passcred_is_warned_about",
        "passcred",
    ) else {
        return;
    };
    let log = act.dir.join("stderr.log");
    let stderr = std::fs::File::create(&log).expect("stderr file");
    let mut d = Daemon::spawn(act.command(stderr.into()), act.path.clone());
    let mut agent = Children(vec![beacon(&act.path, &["--interval", "20ms"])]);
    let pid = agent.0[0].id();
    // The datagram that woke the activator was queued before credentials were on.
    d.expect("the unattributable first datagram", WAIT, |l| {
        l.contains("\"event\":\"auth_failure\"") && l.contains("no_credentials")
    });
    d.expect_event("registered", pid, WAIT);
    agent.0[0].kill().expect("kill");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let warning = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("SO_PASSCRED"))
        .unwrap_or_else(|| panic!("no SO_PASSCRED warning: {text}"));
    assert!(warning.contains("PassCredentials=yes"), "{warning}");
    assert!(warning.contains("dropped"), "says what happened: {warning}");
}
