//! Hooks as production meets them: their output stays out of the event stream, at most
//! `--hook-concurrency` run at once with a bounded queue behind them, a hook that hangs is
//! killed with its process group, repeated events of one agent run a hook once per
//! `--hook-debounce`, and a hook sees only a minimal environment plus the `VARTA_*` variables.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    BIN, Children, Daemon, TempDir, beacon, field, register_and_kill, send_signal, status,
    wait_for_file,
};

const WAIT: Duration = Duration::from_secs(10);

/// Starts a daemon whose stderr (the log) goes to `<dir>/stderr.log`.
fn daemon_with_log(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let socket = dir.join("observer.sock");
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket")
        .arg(&socket)
        .args(args)
        .envs(env.iter().copied())
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr file"));
    let d = Daemon::spawn(cmd, socket);
    if let Some(i) = args.iter().position(|a| *a == "--control") {
        wait_for_file(Path::new(args[i + 1]), WAIT);
    }
    d
}

/// Reads `path` until `done` holds for its text (deadline `limit`); returns the text.
fn read_until(path: &Path, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never satisfied the test within {limit:?}: {text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A hook's stdout and stderr land in the daemon's log, never in the JSON event stream on the
/// daemon's stdout.
#[test]
fn hook_output_goes_to_the_log_not_the_event_stream() {
    let dir = TempDir::new("hookout");
    let hook = "echo HOOK-STDOUT-$VARTA_PID; echo HOOK-STDERR-$VARTA_PID >&2";
    let mut d = daemon_with_log(&dir, &["--on-exit", hook], &[]);
    let pids = register_and_kill(&mut d, 1, "200ms");
    let pid = *pids.iter().next().expect("one agent");
    let log = dir.join("stderr.log");
    let text = read_until(&log, WAIT, |t| {
        t.contains(&format!("HOOK-STDOUT-{pid}")) && t.contains(&format!("HOOK-STDERR-{pid}"))
    });
    assert!(text.contains("hook"), "{text}");
    d.collect_for(Duration::from_millis(300));
    for line in &d.seen {
        assert!(
            line.starts_with('{') && line.ends_with('}') && !line.contains("HOOK-"),
            "not an event line: {line:?}"
        );
    }
}

/// 150 exits never run more than `--hook-concurrency` hooks at once: each hook records its
/// start and stop times, and at no moment are more than 4 between the two. All 150 run (the
/// queue holds the rest).
#[test]
fn hooks_never_exceed_the_concurrency_cap() {
    const AGENTS: usize = 150;
    const CAP: usize = 4;
    let dir = TempDir::new("hookcap");
    let record = dir.join("record");
    let hook = format!(
        "echo \"start $(date +%s%N)\" >> {r}; sleep 0.05; echo \"stop $(date +%s%N)\" >> {r}",
        r = record.display()
    );
    let control = dir.join("control.sock");
    let mut d = daemon_with_log(
        &dir,
        &[
            "--hook-concurrency",
            "4",
            "--on-exit",
            &hook,
            "--control",
            control.to_str().expect("utf8"),
        ],
        &[],
    );
    register_and_kill(&mut d, AGENTS, "200ms");
    let text = read_until(&record, Duration::from_secs(60), |t| {
        t.lines().filter(|l| l.starts_with("stop ")).count() == AGENTS
    });
    let mut edges: Vec<(u128, i32)> = text
        .lines()
        .map(|l| {
            let (what, at) = l.split_once(' ').expect("record line");
            let at: u128 = at.parse().expect("timestamp");
            (at, if what == "start" { 1 } else { -1 })
        })
        .collect();
    // At equal times a stop comes first: the slot was freed before the next hook started.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    assert!(most as usize <= CAP, "{most} hooks ran at once (cap {CAP})");
    assert!(
        most >= 2,
        "hooks ran one at a time ({most}): the cap is not used"
    );
    let snapshot = status(&control);
    assert_eq!(
        field(&snapshot, "hooks_started"),
        Some(AGENTS as u64),
        "{snapshot}"
    );
    assert_eq!(field(&snapshot, "hooks_dropped"), Some(0), "{snapshot}");
}

/// More exits than the running slots and the queue hold: the excess is dropped, counted and
/// warned about; what was queued still runs.
#[test]
fn hook_queue_overflow_is_counted_and_warned() {
    const AGENTS: usize = 8;
    let dir = TempDir::new("hookqueue");
    let control = dir.join("control.sock");
    let mut d = daemon_with_log(
        &dir,
        &[
            "--hook-concurrency",
            "1",
            "--hook-queue",
            "2",
            "--on-exit",
            "sleep 1",
            "--control",
            control.to_str().expect("utf8"),
        ],
        &[],
    );
    register_and_kill(&mut d, AGENTS, "200ms");
    let deadline = Instant::now() + Duration::from_secs(20);
    let snapshot = loop {
        let s = status(&control);
        let started = field(&s, "hooks_started").unwrap_or(0);
        let dropped = field(&s, "hooks_dropped").unwrap_or(0);
        if started + dropped == AGENTS as u64 && field(&s, "hooks_running") == Some(0) {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let dropped = field(&snapshot, "hooks_dropped").expect("hooks_dropped");
    assert!(dropped >= 3, "1 running + 2 queued of {AGENTS}: {snapshot}");
    let log = std::fs::read_to_string(dir.join("stderr.log")).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("hook queue")),
        "{log}"
    );
}

/// A hook that never ends is stopped at `--hook-timeout`, with everything it started (its
/// process group), and the timeout is counted.
#[test]
fn hook_past_its_timeout_is_killed_with_its_process_group() {
    let dir = TempDir::new("hooktimeout");
    let pidfile = dir.join("sleeper.pid");
    let control = dir.join("control.sock");
    let hook = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
    let mut d = daemon_with_log(
        &dir,
        &[
            "--hook-timeout",
            "500ms",
            "--on-exit",
            &hook,
            "--control",
            control.to_str().expect("utf8"),
        ],
        &[],
    );
    register_and_kill(&mut d, 1, "200ms");
    let text = read_until(&pidfile, WAIT, |t| t.ends_with('\n'));
    let sleeper: u32 = text.trim().parse().expect("sleeper pid");
    let started = Instant::now();
    let deadline = started + WAIT;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).ok();
        // Gone, or a zombie waiting for whoever inherited it.
        let dead = state.as_deref().is_none_or(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        });
        if dead {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hook's sleep still runs: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let snapshot = status(&control);
    assert_eq!(field(&snapshot, "hooks_timed_out"), Some(1), "{snapshot}");
    assert_eq!(field(&snapshot, "hooks_running"), Some(0), "{snapshot}");
    let log = std::fs::read_to_string(dir.join("stderr.log")).expect("log");
    assert!(
        log.contains("--hook-timeout"),
        "the warning names the flag: {log}"
    );
}

/// A hook's environment: PATH, HOME, LANG and the VARTA_* variables; nothing else of the
/// daemon's (no secrets, no LISTEN_FDS or NOTIFY_SOCKET meant for the daemon).
#[test]
fn hook_environment_is_minimal() {
    let dir = TempDir::new("hookenv");
    let out = dir.join("env.out");
    let hook = format!("env > {out}.tmp && mv {out}.tmp {out}", out = out.display());
    let mut d = daemon_with_log(
        &dir,
        &["--on-exit", &hook],
        &[
            ("SECRET_TOKEN", "hunter2"),
            ("LANG", "C.UTF-8"),
            ("HOME", "/root"),
            ("LD_PRELOAD", ""),
            ("WATCHDOG_USEC", "0"),
        ],
    );
    let pids = register_and_kill(&mut d, 1, "200ms");
    let pid = *pids.iter().next().expect("one agent");
    let text = read_until(&out, WAIT, |t| !t.is_empty());
    // What the shell itself adds (dash and bash set these when they start).
    let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    let mut names = Vec::new();
    for line in text.lines() {
        let (name, value) = line.split_once('=').expect("NAME=value");
        names.push(name.to_owned());
        assert!(
            matches!(name, "PATH" | "HOME" | "LANG")
                || name.starts_with("VARTA_")
                || shell_own.contains(&name),
            "{name}={value} leaked into the hook's environment:\n{text}"
        );
    }
    assert!(text.contains("LANG=C.UTF-8\n"), "{text}");
    assert!(text.contains("HOME=/root\n"), "{text}");
    assert!(text.contains("VARTA_EVENT=exited\n"), "{text}");
    assert!(text.contains(&format!("VARTA_PID={pid}\n")), "{text}");
    assert!(names.iter().any(|n| n == "PATH"), "{text}");
}

/// Repeated stalls of one agent within `--hook-debounce` run the hook once; after the window
/// the next stall runs it again.
#[test]
fn repeated_events_of_one_agent_are_debounced() {
    let dir = TempDir::new("hookdebounce");
    let out = dir.join("runs");
    let control = dir.join("control.sock");
    let hook = format!("echo $VARTA_PID >> {}", out.display());
    let mut d = daemon_with_log(
        &dir,
        &[
            "--threshold",
            "150ms",
            "--hook-debounce",
            "3s",
            "--on-stall",
            &hook,
            "--control",
            control.to_str().expect("utf8"),
        ],
        &[],
    );
    let mut agent = Children(vec![beacon(&d.socket, &["--interval", "20ms"])]);
    let pid = agent.0[0].id();
    d.expect_event("registered", pid, WAIT);
    let first = Instant::now();
    for _ in 0..2 {
        send_signal(pid, libc::SIGSTOP);
        d.expect_event("stalled", pid, WAIT);
        send_signal(pid, libc::SIGCONT);
        d.expect_event("recovered", pid, WAIT);
    }
    read_until(&out, WAIT, |t| t.lines().count() == 1);
    std::thread::sleep(Duration::from_millis(300));
    let runs = std::fs::read_to_string(&out).expect("runs");
    assert_eq!(runs.lines().count(), 1, "two stalls in the window: {runs}");
    assert!(
        first.elapsed() < Duration::from_secs(3),
        "the stalls took longer than the window; the test proves nothing"
    );
    let snapshot = status(&control);
    assert_eq!(field(&snapshot, "hooks_debounced"), Some(1), "{snapshot}");
    // After the window, the next stall runs the hook again.
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(first.elapsed()));
    send_signal(pid, libc::SIGSTOP);
    d.expect_event("stalled", pid, WAIT);
    read_until(&out, WAIT, |t| t.lines().count() == 2);
    send_signal(pid, libc::SIGCONT);
    agent.0[0].kill().expect("kill");
}
