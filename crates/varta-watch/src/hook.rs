//! Exec hooks: a command run (through `/bin/sh -c`) when an agent stalls, exits or turns
//! critical.
//!
//! The hook sees `VARTA_EVENT`, `VARTA_PID` and `VARTA_SILENT_MS` in its environment. For a
//! live agent (stalled, critical) it also inherits the agent's pidfd as descriptor 3
//! (`VARTA_PIDFD=3`): `pidfd_send_signal` through it (or `kill --pidfd` where available)
//! cannot hit a recycled pid, which a plain `kill $VARTA_PID` can. Hooks run asynchronously;
//! the observer reaps them and never waits.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};

use crate::event::Event;

/// The descriptor number a hook finds the agent's pidfd at.
pub const HOOK_PIDFD: i32 = 3;

/// Which command runs for which event.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Run on `Stalled`.
    pub on_stall: Option<String>,
    /// Run on `Exited`.
    pub on_exit: Option<String>,
    /// Run on `Critical`.
    pub on_critical: Option<String>,
}

/// Runs hooks and reaps them.
#[derive(Debug, Default)]
pub struct HookRunner {
    hooks: Hooks,
    running: Vec<Child>,
    /// Hooks started.
    pub started: u64,
    /// Hooks that could not be started.
    pub failed: u64,
}

impl HookRunner {
    /// A runner for `hooks`.
    pub fn new(hooks: Hooks) -> Self {
        Self {
            hooks,
            ..Self::default()
        }
    }

    /// Starts the hook configured for `event`, if any, passing `pidfd` as descriptor 3.
    pub fn run(&mut self, event: &Event, pidfd: Option<&OwnedFd>) -> io::Result<()> {
        self.reap();
        let command = match event {
            Event::Stalled { .. } => &self.hooks.on_stall,
            Event::Exited { .. } => &self.hooks.on_exit,
            Event::Critical { .. } => &self.hooks.on_critical,
            _ => &None,
        };
        let Some(command) = command else {
            return Ok(());
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .env("VARTA_EVENT", event.name())
            .env("VARTA_PID", event.pid().unwrap_or(0).to_string())
            .env(
                "VARTA_SILENT_MS",
                event
                    .silent_for()
                    .unwrap_or_default()
                    .as_millis()
                    .to_string(),
            );
        if let Some(pidfd) = pidfd {
            cmd.env("VARTA_PIDFD", HOOK_PIDFD.to_string());
            crate::sys::pass_fd_as(&mut cmd, pidfd.as_raw_fd(), HOOK_PIDFD);
        }
        match cmd.spawn() {
            Ok(child) => {
                self.started += 1;
                self.running.push(child);
                Ok(())
            }
            Err(e) => {
                self.failed += 1;
                Err(e)
            }
        }
    }

    /// Collects hooks that have finished, so none is left a zombie.
    pub fn reap(&mut self) {
        self.running
            .retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_)) | Err(_)));
    }

    /// Hooks still running.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}
