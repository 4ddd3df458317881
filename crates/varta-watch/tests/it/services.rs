//! Services by name: agents labelled by command name (and unit/cgroup, where systemd put
//! them), a config file with per-service thresholds, hooks and a stall signal sent through the
//! pidfd, with flap control.
//!
//! Agents in a cgroup of their own need systemd as PID 1, which this machine does not have; so
//! these tests match services by command name: the agents are `varta-watch beacon` started
//! through a symlink with a distinctive name, which becomes their `comm`. Matching by unit and
//! cgroup is unit-tested on real-format `/proc/<pid>/cgroup` samples (`service::tests`).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    BIN, Children, Daemon, TempDir, field, free_loopback_addr, output_within, scrape, wait_for_file,
};

const WAIT: Duration = Duration::from_secs(10);

/// `varta-watch` under another name (its `comm`), via a symlink in `dir`.
fn renamed_binary(dir: &TempDir, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(BIN, &link).expect("symlink");
    link
}

fn agent(program: &Path, socket: &Path, interval: &str) -> Child {
    Command::new(program)
        .arg("beacon")
        .arg("--socket")
        .arg(socket)
        .args(["--interval", interval])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn agent")
}

/// Three agents of one service stall past the service's own threshold (the global one is a
/// minute): the first two get SIGUSR1 through their pidfds and die of it; flap control
/// (`signal_limit = 2` per minute) spares the third, which stays alive. Another command's
/// agent is untouched. Events, metrics and the service's hook carry the service's name.
#[test]
fn stalled_agents_get_their_services_signal_within_the_flap_limit() {
    let dir = TempDir::new("svcsignal");
    let program = renamed_binary(&dir, "vw-usr1-agent");
    let hook_out = dir.join("hook.out");
    let config = dir.join("varta-watch.toml");
    std::fs::write(
        &config,
        format!(
            r#"
# Agents started as vw-usr1-agent.
[[service]]
name = "usr1-agents"
command = "vw-usr1-agent"
threshold = "300ms"
signal = "SIGUSR1"
signal_limit = 2
signal_window = "1m"
on_stall = "echo $VARTA_SERVICE $VARTA_COMM >> {}"
"#,
            hook_out.display()
        ),
    )
    .expect("config");
    let addr = free_loopback_addr();
    let mut d = Daemon::start(
        &dir,
        &[
            "--threshold",
            "60s",
            "--config",
            config.to_str().expect("utf8"),
            "--metrics-addr",
            &addr,
        ],
    );
    let mut agents = Children((0..3).map(|_| agent(&program, &d.socket, "1h")).collect());
    let mut others = Children(vec![agent(Path::new(BIN), &d.socket, "1h")]);
    let other = others.0[0].id();
    let mut registered = std::collections::HashMap::new();
    while registered.len() < 4 {
        let line = d.expect("registered", WAIT, |l| {
            l.contains("\"event\":\"registered\"")
        });
        registered.insert(field(&line, "pid").expect("pid") as u32, line);
    }
    for a in &agents.0 {
        let line = &registered[&a.id()];
        assert!(line.contains("\"service\":\"usr1-agents\""), "{line}");
        assert!(line.contains("\"comm\":\"vw-usr1-agent\""), "{line}");
    }
    let line = &registered[&other];
    assert!(line.contains("\"comm\":\"varta-watch\""), "{line}");
    assert!(line.contains("\"service\":\"varta-watch\""), "{line}");

    let mut results = Vec::new();
    while results.len() < 3 {
        let line = d.expect("a signal action", WAIT, |l| {
            l.contains("\"event\":\"signal\"")
        });
        assert!(line.contains("\"signal\":\"SIGUSR1\""), "{line}");
        assert!(line.contains("\"service\":\"usr1-agents\""), "{line}");
        let pid = field(&line, "pid").expect("pid") as u32;
        let sent = line.contains("\"result\":\"sent\"");
        assert!(
            sent || line.contains("\"result\":\"flap_limited\""),
            "{line}"
        );
        results.push((pid, sent));
    }
    assert_eq!(
        results.iter().filter(|(_, sent)| *sent).count(),
        2,
        "{results:?}"
    );
    for agent in &mut agents.0 {
        let pid = agent.id();
        let sent = results.iter().any(|&(p, sent)| p == pid && sent);
        if sent {
            let deadline = Instant::now() + WAIT;
            let status = loop {
                if let Some(status) = agent.try_wait().expect("try_wait") {
                    break status;
                }
                assert!(Instant::now() < deadline, "{pid} outlived its SIGUSR1");
                std::thread::sleep(Duration::from_millis(10));
            };
            assert_eq!(status.signal(), Some(libc::SIGUSR1), "{pid}: {status}");
        } else {
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                agent.try_wait().expect("try_wait").is_none(),
                "flap control should have spared {pid}"
            );
        }
    }
    assert!(
        others.0[0].try_wait().expect("try_wait").is_none(),
        "another service's agent was touched"
    );
    let metrics = scrape(&addr);
    assert!(
        metrics.contains("varta_service_signals_total{service=\"usr1-agents\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("varta_service_signals_limited_total{service=\"usr1-agents\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "varta_agent_stalled{{service=\"varta-watch\",pid=\"{other}\"}} 0"
        )),
        "unmatched agents are labelled by command: {metrics}"
    );
    wait_for_file(&hook_out, WAIT);
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&hook_out).unwrap_or_default();
        if text.lines().count() == 3 {
            assert!(
                text.lines().all(|l| l == "usr1-agents vw-usr1-agent"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "service hook runs: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config file that cannot work is refused at start (exit 2), naming the file and the key.
#[test]
fn config_errors_name_the_file_and_the_key() {
    let dir = TempDir::new("svcconfig");
    let socket = dir.join("observer.sock");
    let cases: &[(&str, &str)] = &[
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nthresold = \"1s\"\n",
            "thresold",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nsignal = \"SIGBOGUS\"\n",
            "signal",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nthreshold = \"0s\"\n",
            "threshold",
        ),
        ("[[service]]\nname = \"a\"\n", "unit, cgroup or command"),
        ("[[service]]\ncommand = \"x\"\n", "name"),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\n[[service]]\nname = \"a\"\ncommand = \"y\"\n",
            "name",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"this-is-longer-than-comm\"\n",
            "command",
        ),
        ("[service\n", "line 1"),
        ("frobnicate = 1\n", "frobnicate"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let config = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&config, text).expect("config");
        let out = output_within(
            Command::new(BIN)
                .arg("--socket")
                .arg(&socket)
                .arg("--config")
                .arg(&config),
            Duration::from_secs(5),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(
            err.contains(&config.display().to_string()),
            "{text:?}: names the file: {err}"
        );
        assert!(err.contains(key), "{text:?}: names {key}: {err}");
        assert!(!socket.exists(), "{text:?} bound the socket");
    }
    let missing = dir.join("missing.toml");
    let out = output_within(
        Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&missing),
        Duration::from_secs(5),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("No such file"), "the OS cause: {err}");
}
