//! Exec hooks: a command run (through `/bin/sh -c`) when an agent stalls, exits or turns
//! critical — bounded, timed and quiet.
//!
//! A hook sees a minimal environment: `PATH` (the daemon's, or a standard one), `HOME` and
//! `LANG` when the daemon has them, and the `VARTA_*` variables — `VARTA_EVENT`, `VARTA_PID`,
//! `VARTA_SILENT_MS`, and whatever labels the caller adds (`VARTA_SERVICE`, `VARTA_UNIT`,
//! `VARTA_COMM`). Nothing else of the daemon's environment reaches it. For a live agent
//! (stalled, critical) it also inherits the agent's pidfd as descriptor 3 (`VARTA_PIDFD=3`):
//! `pidfd_send_signal` through it (or `kill --pidfd` where available) cannot hit a recycled
//! pid, which a plain `kill $VARTA_PID` can.
//!
//! What a hook prints (stdout and stderr, one pipe) is logged through `tracing` line by line,
//! never written to the daemon's stdout, which carries the JSON event stream.
//!
//! Hooks are bounded the way a supervisor's own children must be:
//!
//! - **Concurrency.** At most [`HookConfig::concurrency`] run at once; later ones wait in a
//!   queue of [`HookConfig::queue`], and past that they are dropped, counted
//!   ([`HookCounters::dropped`]) and warned about (once a minute).
//! - **Timeout.** Each hook runs in its own process group; past [`HookConfig::timeout`] the
//!   group gets `SIGTERM`, and [`HookConfig::kill_grace`] later `SIGKILL`.
//! - **Debounce.** The same event of the same agent runs its hook at most once per
//!   [`HookConfig::debounce`]: an agent flapping between stalled and recovered does not start a
//!   hook per flap.
//!
//! The runner never blocks: [`HookRunner::tick`] reaps, times out and starts hooks, and the
//! daemon calls it on every turn of its loop.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::Event;

/// The descriptor number a hook finds the agent's pidfd at.
pub const HOOK_PIDFD: i32 = 3;

/// `PATH` for hooks when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// At most one queue-overflow warning per this interval.
const OVERFLOW_WARNING_INTERVAL: Duration = Duration::from_secs(60);

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

impl Hooks {
    /// The command configured for `event`, if any.
    pub fn for_event(&self, event: &Event) -> Option<&str> {
        match event {
            Event::Stalled { .. } => self.on_stall.as_deref(),
            Event::Exited { .. } => self.on_exit.as_deref(),
            Event::Critical { .. } => self.on_critical.as_deref(),
            _ => None,
        }
    }
}

/// How hooks run.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// Hooks running at once, at most (at least 1).
    pub concurrency: usize,
    /// Hooks waiting for a slot, at most; more are dropped and counted.
    pub queue: usize,
    /// How long a hook may run before its process group gets `SIGTERM`.
    pub timeout: Duration,
    /// How long after `SIGTERM` the group gets `SIGKILL`.
    pub kill_grace: Duration,
    /// The same event of the same agent starts its hook at most once per this window
    /// (zero: every event runs it).
    pub debounce: Duration,
    /// Bytes of a hook's output logged at most; the rest is read and discarded.
    pub output_limit: usize,
}

impl Default for HookConfig {
    /// 4 at once, 256 queued, a 30 s timeout with 5 s of grace, a 1 s debounce, 64 KiB of
    /// output logged per hook.
    fn default() -> Self {
        Self {
            concurrency: 4,
            queue: 256,
            timeout: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            debounce: Duration::from_secs(1),
            output_limit: 64 * 1024,
        }
    }
}

/// What the runner did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookCounters {
    /// Hooks started.
    pub started: u64,
    /// Hooks that could not be started (no `/bin/sh`, no processes left, …).
    pub failed: u64,
    /// Hooks that exited unsuccessfully (non-zero status or a signal).
    pub unsuccessful: u64,
    /// Hooks stopped at the timeout.
    pub timed_out: u64,
    /// Hooks dropped because the queue was full.
    pub dropped: u64,
    /// Hooks not run because the same event of the same agent ran its hook within the
    /// debounce window.
    pub debounced: u64,
}

/// One hook to run.
#[derive(Debug)]
struct Job {
    command: Arc<str>,
    event: &'static str,
    pid: u32,
    silent_ms: u128,
    pidfd: Option<OwnedFd>,
    labels: Vec<(String, String)>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    event: &'static str,
    pid: u32,
    started: Instant,
    term_sent: bool,
    kill_sent: bool,
}

/// Runs hooks: queues them, starts them within the concurrency cap, reaps them, and stops
/// those past their timeout. See the [module docs](self).
#[derive(Debug)]
pub struct HookRunner {
    hooks: Hooks,
    config: HookConfig,
    base_env: Vec<(String, String)>,
    queue: VecDeque<Job>,
    running: Vec<Running>,
    last_run: HashMap<(u32, &'static str), Instant>,
    last_sweep: Instant,
    overflow_warned_at: Option<Instant>,
    counters: HookCounters,
}

impl HookRunner {
    /// A runner for `hooks` with the default [`HookConfig`].
    pub fn new(hooks: Hooks) -> Self {
        Self::with_config(hooks, HookConfig::default())
    }

    /// A runner for `hooks` with `config`. The hooks' base environment (`PATH`, `HOME`,
    /// `LANG`) is taken from this process's environment now.
    pub fn with_config(hooks: Hooks, mut config: HookConfig) -> Self {
        config.concurrency = config.concurrency.max(1);
        let mut base_env = vec![(
            "PATH".to_owned(),
            std::env::var("PATH")
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_PATH.to_owned()),
        )];
        for name in ["HOME", "LANG"] {
            if let Ok(value) = std::env::var(name) {
                base_env.push((name.to_owned(), value));
            }
        }
        Self {
            hooks,
            config,
            base_env,
            queue: VecDeque::new(),
            running: Vec::new(),
            last_run: HashMap::new(),
            last_sweep: Instant::now(),
            overflow_warned_at: None,
            counters: HookCounters::default(),
        }
    }

    /// The configured commands.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Runs the hook configured for `event`, if any (see [`HookRunner::submit`]).
    pub fn run(&mut self, event: &Event, pidfd: Option<&OwnedFd>) {
        if let Some(command) = self.hooks.for_event(event).map(Arc::<str>::from) {
            self.submit(event, &command, pidfd, &[]);
        }
    }

    /// Queues `command` for `event`, passing a duplicate of `pidfd` as descriptor 3 and
    /// `labels` as extra environment variables; starts it at once if a slot is free.
    ///
    /// Debounced and overflowing hooks are counted, not run.
    pub fn submit(
        &mut self,
        event: &Event,
        command: &str,
        pidfd: Option<&OwnedFd>,
        labels: &[(&str, &str)],
    ) {
        let pid = event.pid().unwrap_or(0);
        let name = event.name();
        let now = Instant::now();
        if !self.config.debounce.is_zero() {
            if let Some(at) = self.last_run.get(&(pid, name))
                && now.duration_since(*at) < self.config.debounce
            {
                self.counters.debounced += 1;
                tracing::debug!(pid, event = name, "hook debounced");
                return;
            }
            self.last_run.insert((pid, name), now);
        }
        if self.running.len() >= self.config.concurrency && self.queue.len() >= self.config.queue {
            self.counters.dropped += 1;
            if self
                .overflow_warned_at
                .is_none_or(|at| at.elapsed() >= OVERFLOW_WARNING_INTERVAL)
            {
                self.overflow_warned_at = Some(now);
                tracing::warn!(
                    pid,
                    event = name,
                    dropped = self.counters.dropped,
                    "the hook queue is full ({} running, {} waiting); dropping hooks. Raise \
                     --hook-concurrency or --hook-queue, or make the hooks faster",
                    self.running.len(),
                    self.queue.len()
                );
            }
            return;
        }
        // The agent's own descriptor may be closed (the agent exits) before the hook starts:
        // the job keeps its own duplicate. Without a descriptor to spare it runs without one.
        let pidfd = pidfd.and_then(|fd| fd.try_clone().ok());
        self.queue.push_back(Job {
            command: Arc::from(command),
            event: name,
            pid,
            silent_ms: event.silent_for().unwrap_or_default().as_millis(),
            pidfd,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        self.start_queued();
    }

    /// Reaps finished hooks, stops those past their timeout and starts queued ones.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let config = &self.config;
        let counters = &mut self.counters;
        self.running.retain_mut(|hook| {
            match hook.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        counters.unsuccessful += 1;
                        if !hook.term_sent {
                            tracing::warn!(
                                pid = hook.pid,
                                event = hook.event,
                                "hook failed: {status}"
                            );
                        }
                    }
                    return false;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(
                        pid = hook.pid,
                        event = hook.event,
                        "cannot reap a hook: {e}"
                    );
                    return false;
                }
            }
            // Still unreaped, so its pid (the group's id) cannot have been recycled.
            let ran = now.duration_since(hook.started);
            if !hook.term_sent && ran >= config.timeout {
                hook.term_sent = true;
                counters.timed_out += 1;
                tracing::warn!(
                    pid = hook.pid,
                    event = hook.event,
                    hook_pid = hook.child.id(),
                    "hook still running after {:?} (--hook-timeout); stopping its process group",
                    config.timeout
                );
                let _ = platform_primitives::process::signal_group(hook.child.id(), libc::SIGTERM);
            } else if hook.term_sent && !hook.kill_sent && ran >= config.timeout + config.kill_grace
            {
                hook.kill_sent = true;
                let _ = platform_primitives::process::signal_group(hook.child.id(), libc::SIGKILL);
            }
            true
        });
        if now.duration_since(self.last_sweep) >= self.config.debounce.max(Duration::from_secs(1)) {
            self.last_sweep = now;
            let window = self.config.debounce;
            self.last_run
                .retain(|_, at| now.duration_since(*at) < window);
        }
        self.start_queued();
    }

    /// Alias of [`HookRunner::tick`].
    pub fn reap(&mut self) {
        self.tick();
    }

    fn start_queued(&mut self) {
        while self.running.len() < self.config.concurrency {
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            match self.spawn(&job) {
                Ok(child) => {
                    self.counters.started += 1;
                    self.running.push(Running {
                        child,
                        event: job.event,
                        pid: job.pid,
                        started: Instant::now(),
                        term_sent: false,
                        kill_sent: false,
                    });
                }
                Err(e) => {
                    self.counters.failed += 1;
                    tracing::warn!(pid = job.pid, event = job.event, "cannot start a hook: {e}");
                }
            }
        }
    }

    fn spawn(&self, job: &Job) -> io::Result<Child> {
        let (reader, writer) = io::pipe()?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&*job.command)
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .env("VARTA_EVENT", job.event)
            .env("VARTA_PID", job.pid.to_string())
            .env("VARTA_SILENT_MS", job.silent_ms.to_string())
            .envs(job.labels.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            // Its own process group, so a timeout stops whatever it started too.
            .process_group(0);
        if let Some(pidfd) = &job.pidfd {
            cmd.env("VARTA_PIDFD", HOOK_PIDFD.to_string());
            crate::sys::pass_fd_as(&mut cmd, pidfd.as_raw_fd(), HOOK_PIDFD);
        }
        let child = cmd.spawn()?;
        // The parent's copy of the write end closes with `cmd`, so the reader sees the end
        // of the output when the hook (and whatever it started) is done.
        drop(cmd);
        let (event, pid, hook_pid, limit) =
            (job.event, job.pid, child.id(), self.config.output_limit);
        let logged = std::thread::Builder::new()
            .name("varta-hook-output".into())
            .spawn(move || log_output(reader, event, pid, hook_pid, limit));
        if let Err(e) = logged {
            // The reader is gone with the closure: the hook's writes fail (EPIPE), it runs on.
            tracing::warn!(pid, event, "cannot read a hook's output: {e}");
        }
        Ok(child)
    }

    /// Hooks running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Hooks waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// What the runner did so far.
    pub fn counters(&self) -> &HookCounters {
        &self.counters
    }
}

/// Logs a hook's output line by line (at most `limit` bytes; the rest is drained unlogged).
fn log_output(reader: io::PipeReader, event: &str, pid: u32, hook_pid: u32, limit: usize) {
    let mut reader = BufReader::new(reader);
    let mut logged = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(4096).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if logged < limit {
                    logged += n;
                    let text = String::from_utf8_lossy(&line);
                    tracing::info!(pid, event, hook_pid, "hook output: {}", text.trim_end());
                    if logged >= limit {
                        tracing::warn!(
                            pid,
                            event,
                            hook_pid,
                            "hook output past {limit} bytes is not logged"
                        );
                    }
                }
            }
        }
    }
}
