//! Agents that die: a real process whose panic hook sends the terminal Critical frame, and a
//! sender that exits before the observer reads its datagram. This binary runs without the
//! libtest harness because it re-executes itself as the agent (`VARTA_TEST_ROLE`), and prints a
//! libtest-style summary so `cargo xtask ci` counts its checks.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    match std::env::var("VARTA_TEST_ROLE").as_deref() {
        Ok("panicking-agent") => panicking_agent(),
        Ok("one-beat") => one_beat(),
        _ => run_checks(),
    }
}

/// Agent role: install the panic hook, beat twice, then panic.
fn panicking_agent() -> ExitCode {
    let path = std::env::var("VARTA_TEST_SOCKET").expect("socket path");
    varta_watch::beacon::install_panic_hook(&path).expect("panic hook");
    let mut beacon = varta_watch::beacon::Beacon::connect(&path).expect("beacon");
    beacon.beat().expect("beat");
    beacon.beat().expect("beat");
    panic!("the agent fails on purpose");
}

/// Agent role: one beat, then exit at once.
fn one_beat() -> ExitCode {
    let path = std::env::var("VARTA_TEST_SOCKET").expect("socket path");
    let mut beacon = varta_watch::beacon::Beacon::connect(&path).expect("beacon");
    beacon.beat().expect("beat");
    ExitCode::SUCCESS
}

#[cfg(not(target_os = "linux"))]
fn run_checks() -> ExitCode {
    workspace_tests::support::skip("panic_agent", "the observer is Linux-only");
    workspace_tests::harness::report(&[])
}

#[cfg(target_os = "linux")]
use workspace_tests::harness::Check;

#[cfg(target_os = "linux")]
fn run_checks() -> ExitCode {
    let checks: [Check; 2] = [
        (
            "panic_hook_sends_the_terminal_frame",
            checks::panic_hook_sends_the_terminal_frame,
        ),
        (
            "sender_that_exited_before_the_read_is_reported",
            checks::sender_that_exited_before_the_read,
        ),
    ];
    workspace_tests::harness::run(&checks)
}

#[cfg(target_os = "linux")]
mod checks {
    use super::*;
    use varta_watch::event::CriticalReason;
    use varta_watch::{Event, Observer, ObserverConfig};
    use workspace_tests::support::TempDir;

    /// An observer bound in `dir`, and its socket's path.
    fn observer(dir: &TempDir) -> Result<(Observer, std::path::PathBuf), String> {
        let path = dir.join("observer.sock");
        let obs = Observer::bind(ObserverConfig::new(&path)).map_err(|e| e.to_string())?;
        Ok((obs, path))
    }

    fn agent(role: &str, path: &std::path::Path) -> Result<std::process::Child, String> {
        Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .env("VARTA_TEST_ROLE", role)
            .env("VARTA_TEST_SOCKET", path)
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())
    }

    /// Polls until `want` has matched, or fails with everything seen.
    fn until(obs: &mut Observer, want: impl Fn(&[Event]) -> bool) -> Result<Vec<Event>, String> {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !want(&all) {
            if Instant::now() > deadline {
                return Err(format!("timed out; events: {all:?}"));
            }
            obs.poll(Duration::from_millis(50), &mut all)
                .map_err(|e| e.to_string())?;
        }
        Ok(all)
    }

    pub(crate) fn panic_hook_sends_the_terminal_frame() -> Result<(), String> {
        let dir = TempDir::new("vw-agents-panic");
        let (mut obs, path) = observer(&dir)?;
        let mut child = agent("panicking-agent", &path)?;
        let pid = child.id();
        let events = until(&mut obs, |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Exited { pid: p, .. } if *p == pid))
        })?;
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            return Err("the agent was supposed to panic".into());
        }
        let critical = events.iter().position(|e| {
            matches!(e, Event::Critical { pid: p, reason: CriticalReason::TerminalFrame } if *p == pid)
        });
        let exited = events
            .iter()
            .position(|e| matches!(e, Event::Exited { pid: p, .. } if *p == pid));
        match (critical, exited) {
            (Some(c), Some(x)) if c < x => Ok(()),
            _ => Err(format!(
                "expected Critical(terminal) before Exited: {events:?}"
            )),
        }
    }

    pub(crate) fn sender_that_exited_before_the_read() -> Result<(), String> {
        let dir = TempDir::new("vw-agents-gone");
        let (mut obs, path) = observer(&dir)?;
        let mut child = agent("one-beat", &path)?;
        let pid = child.id();
        // The datagram waits in the queue while its sender exits and is reaped.
        child.wait().map_err(|e| e.to_string())?;
        let events = until(&mut obs, |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Exited { pid: p, .. } if *p == pid))
        })?;
        let registered = events
            .iter()
            .any(|e| matches!(e, Event::Registered { pid: p, .. } if *p == pid));
        if !registered {
            return Err(format!("its beat must still count: {events:?}"));
        }
        if obs.tracker().agent(pid).is_some() {
            return Err("an exited sender must not stay tracked".into());
        }
        Ok(())
    }
}
