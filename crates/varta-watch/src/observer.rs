//! The observer: one datagram socket, kernel-attested senders, a tracker, and an event loop.
//!
//! [`Observer::poll`] waits (epoll) for datagrams, agent exits and the next stall deadline,
//! whichever comes first. Datagrams are received in batches (`recvmmsg`) with each sender's
//! credentials and pidfd; every passed descriptor is closed on receipt. The first pidfd of each
//! agent is kept and watched: it becomes readable the moment the agent's process exits, so a
//! dead agent is reported as `Exited` at once and never confused with a hung one, and no signal
//! can ever reach a recycled pid through it.
//!
//! When no pidfd can be had — the descriptor table is full, so the kernel reports `EMFILE`
//! instead of installing one — the agent is still tracked and checked for exit every 200 ms
//! by `kill(pid, 0)` and its `/proc` start time (so a recycled pid is not taken for it); see
//! [`ObserverCounters::no_pidfd`] and [`Observer::polled_agents`]. A notify message's
//! `MAINPID=` moves it to that process when the sender may speak for it (root, or that
//! process's own uid); other claims are refused as an `AuthFailure`.
//!
//! ```no_run
//! use varta_watch::{Observer, ObserverConfig};
//! use std::time::Duration;
//!
//! let mut observer = Observer::bind(ObserverConfig::new("/run/varta/observer.sock"))?;
//! let mut events = Vec::new();
//! loop {
//!     observer.poll(Duration::from_millis(100), &mut events)?;
//!     for event in events.drain(..) {
//!         println!("{}", event.to_json(0));
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use platform_primitives::clock::{ClockError, ClockSource};
use platform_primitives::creds::{
    BatchConfig, Credentials, DatagramBatch, Wait, enable_datagram_credentials,
};
use platform_primitives::uds::{BindError, SocketPath, UdsBinder};

use crate::event::{AuthFailure, Event};
use crate::notify::{Notification, Watchdog};
use crate::sys::{self, Epoll};
use crate::tracker::{RateLimit, Sender, Tracker, TrackerConfig};
use crate::vlp::{Frame, Status, looks_like_frame};

const SOCKET_TOKEN: u64 = u64::MAX;
/// Batches drained per readiness notification before deadlines get a turn.
const BATCHES_PER_WAKE: usize = 64;
/// Boottime running ahead of monotonic by more than this between two polls means a suspend.
const SUSPEND_THRESHOLD: Duration = Duration::from_secs(1);
/// How often agents without a pidfd are checked for exit.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// At most one warning per this interval that pidfds cannot be had.
const PIDFD_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// How to run an observer.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    /// Where the datagram socket is bound.
    pub socket: PathBuf,
    /// The socket's permission bits (set before any sender can reach it).
    pub socket_mode: u32,
    /// Stall policy, capacity and per-agent limits.
    pub tracker: TrackerConfig,
    /// The clock deadlines are measured with.
    pub clock: ClockSource,
    /// Only these uids may report (`None`: anyone who can write to the socket).
    pub allow_uids: Option<Vec<u32>>,
    /// Global rate limit over all senders (Critical and terminal datagrams pass regardless).
    pub global_limit: Option<RateLimit>,
    /// Receive batch sizes.
    pub batch: BatchConfig,
    /// How many `Decode` events may be reported (a sender flooding garbage must not flood the
    /// event stream); the rest are counted and announced in the next report's `suppressed`.
    /// `None`: report every one.
    pub decode_reports: Option<RateLimit>,
}

impl ObserverConfig {
    /// Defaults: mode 0o600, the tracker defaults, monotonic clock, no uid allow-list, no
    /// global limit, batches of 64 datagrams of up to 4 KiB, 5 decode reports a second (bursts
    /// of 10).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            socket_mode: 0o600,
            tracker: TrackerConfig::default(),
            clock: ClockSource::Monotonic,
            allow_uids: None,
            global_limit: None,
            batch: BatchConfig {
                capacity: 64,
                max_datagram: 4096,
                max_fds: 4,
            },
            decode_reports: Some(RateLimit {
                rate: 5.0,
                burst: 10.0,
            }),
        }
    }
}

/// Why an observer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObserverError {
    /// The socket could not be bound (the message names the path).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Credentials could not be enabled on the socket.
    #[error("cannot enable sender credentials on {}", path.display())]
    Credentials {
        /// The socket.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The chosen clock is not available.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// The event loop could not be set up.
    #[error("cannot set up the event loop")]
    EventLoop(#[source] io::Error),
}

impl ObserverError {
    /// The `io::ErrorKind` this maps to (`AddrInUse` when another instance runs).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Bind(e) => e.kind(),
            Self::Credentials { source, .. } | Self::EventLoop(source) => source.kind(),
            Self::Clock(_) => io::ErrorKind::Unsupported,
        }
    }
}

/// Counters of everything the observer received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObserverCounters {
    /// Datagrams received.
    pub datagrams: u64,
    /// `recvmmsg` calls that returned data.
    pub batches: u64,
    /// Valid VLP frames.
    pub frames: u64,
    /// Valid notify messages.
    pub notifications: u64,
    /// Datagrams that decoded as neither.
    pub decode_errors: u64,
    /// Datagrams refused for their sender's identity.
    pub auth_failures: u64,
    /// Datagrams longer than the receive buffer (`MSG_TRUNC`).
    pub truncated: u64,
    /// Datagrams whose control data did not fit (`MSG_CTRUNC`).
    pub control_truncated: u64,
    /// Descriptors that arrived attached to datagrams (all closed).
    pub fds_closed: u64,
    /// Datagrams dropped by the global rate limit.
    pub global_rate_limited: u64,
    /// Suspends detected.
    pub suspends: u64,
    /// Datagrams (or `MAINPID=` targets) for which no pidfd could be had — usually `EMFILE`, a
    /// full descriptor table. Agents registered that way are watched by polling instead.
    pub no_pidfd: u64,
    /// Exits noticed by polling (agents without a pidfd).
    pub polled_exits: u64,
    /// Decode errors left out of the event stream by the decode report limit.
    pub decode_reports_suppressed: u64,
}

/// A liveness observer bound to a socket: it receives datagrams with their senders' kernel
/// credentials and pidfds, feeds the [`Tracker`], and reports [`Event`]s from [`Observer::poll`].
#[derive(Debug)]
pub struct Observer {
    socket: UnixDatagram,
    path: Option<SocketPath>,
    batch: DatagramBatch,
    epoll: Epoll,
    tracker: Tracker,
    clock: ClockSource,
    allow_uids: Option<Vec<u32>>,
    global_limit: Option<RateLimit>,
    global_tokens: f64,
    global_at: Duration,
    last_clocks: (Duration, Duration),
    counters: ObserverCounters,
    unwatched: Unwatched,
    decode_reports: DecodeReports,
}

/// Agents whose exit no pidfd reports (none could be had: a full descriptor table, or an
/// epoll set that refused it). They are checked every [`EXIT_POLL_INTERVAL`] with `kill(pid, 0)`
/// and, where it was readable at registration, their start time, so a recycled pid is noticed.
#[derive(Debug, Default)]
struct Unwatched {
    /// pid → start time at registration (`None` if `/proc` could not be read then).
    agents: HashMap<u32, Option<u64>>,
    next_check: Duration,
    warned_at: Option<Duration>,
}

/// The token bucket for `Decode` events.
#[derive(Debug)]
struct DecodeReports {
    limit: Option<RateLimit>,
    tokens: f64,
    at: Duration,
    suppressed: u64,
}

impl DecodeReports {
    /// Reports a decode error unless the limit says no, in which case it is counted.
    fn report(
        &mut self,
        now: Duration,
        pid: u32,
        error: impl FnOnce() -> String,
        counters: &mut ObserverCounters,
        events: &mut Vec<Event>,
    ) {
        if take_token(self.limit, &mut self.tokens, &mut self.at, now, false) {
            events.push(Event::Decode {
                pid,
                error: error(),
                suppressed: std::mem::take(&mut self.suppressed),
            });
        } else {
            self.suppressed += 1;
            counters.decode_reports_suppressed += 1;
        }
    }
}

impl Observer {
    /// Binds the socket at `config.socket` with the daemon bind contracts of
    /// `platform_primitives::uds` ("another varta-watch is already running at …" when a live
    /// observer holds the path) and starts observing.
    pub fn bind(config: ObserverConfig) -> Result<Self, ObserverError> {
        // Credentials must be on before the path is reachable: a datagram sent earlier would
        // arrive with none (pid 0, the overflow uid) and be refused.
        let bound = UdsBinder::new("varta-watch")
            .mode(config.socket_mode)
            .bind_with(&config.socket, |socket: &UnixDatagram| {
                enable_datagram_credentials(socket).map(drop)
            })?;
        let (socket, path) = bound.into_parts();
        Self::start(socket, Some(path), config)
    }

    /// Observes an already-bound socket (socket activation: `LISTEN_FDS`). The socket's path,
    /// if any, is left alone on drop.
    pub fn from_socket(
        socket: UnixDatagram,
        config: ObserverConfig,
    ) -> Result<Self, ObserverError> {
        Self::start(socket, None, config)
    }

    fn start(
        socket: UnixDatagram,
        path: Option<SocketPath>,
        config: ObserverConfig,
    ) -> Result<Self, ObserverError> {
        enable_datagram_credentials(&socket).map_err(|source| ObserverError::Credentials {
            path: config.socket.clone(),
            source,
        })?;
        socket
            .set_nonblocking(true)
            .map_err(ObserverError::EventLoop)?;
        let epoll = Epoll::new().map_err(ObserverError::EventLoop)?;
        epoll
            .add(socket.as_fd(), SOCKET_TOKEN)
            .map_err(ObserverError::EventLoop)?;
        let now = config.clock.now()?.as_duration();
        let mono = ClockSource::Monotonic.now()?.as_duration();
        let boot = ClockSource::Boottime.now()?.as_duration();
        Ok(Self {
            socket,
            path,
            batch: DatagramBatch::new(config.batch),
            epoll,
            tracker: Tracker::new(config.tracker),
            clock: config.clock,
            allow_uids: config.allow_uids,
            global_tokens: config.global_limit.map_or(0.0, |l| l.burst),
            global_limit: config.global_limit,
            global_at: now,
            last_clocks: (mono, boot),
            counters: ObserverCounters::default(),
            unwatched: Unwatched::default(),
            decode_reports: DecodeReports {
                limit: config.decode_reports,
                tokens: config.decode_reports.map_or(0.0, |l| l.burst),
                at: now,
                suppressed: 0,
            },
        })
    }

    /// The socket datagrams arrive on.
    pub fn socket(&self) -> &UnixDatagram {
        &self.socket
    }

    /// The agent table.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Receive-side counters.
    pub fn counters(&self) -> &ObserverCounters {
        &self.counters
    }

    /// The observer's clock, read now.
    pub fn now(&self) -> Duration {
        self.clock
            .now()
            .map(|s| s.as_duration())
            .unwrap_or(self.global_at)
    }

    /// Agents watched for exit by polling because no pidfd could be had for them.
    pub fn polled_agents(&self) -> usize {
        self.unwatched.agents.len()
    }

    /// The pidfd kept for an agent (to hand to a hook), if any.
    pub fn pidfd(&self, pid: u32) -> Option<&OwnedFd> {
        self.tracker.pidfd(pid)
    }

    /// Gives agent `pid` its own silence limit (a per-service threshold); see
    /// [`Tracker::set_limit`].
    pub fn set_agent_limit(&mut self, pid: u32, limit: Duration) {
        self.tracker.set_limit(pid, limit);
    }

    /// Sends `signal` to agent `pid` through its pidfd, so a recycled pid is never hit.
    ///
    /// Fails with `NotFound` for an agent not tracked or watched without a pidfd (it is then
    /// not signalled at all: a plain pid could have been recycled).
    pub fn signal_agent(&self, pid: u32, signal: i32) -> io::Result<()> {
        let pidfd = self.tracker.pidfd(pid).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no pidfd is held for this agent (not tracked, or watched by polling)",
            )
        })?;
        platform_primitives::process::pidfd_signal(pidfd.as_fd(), signal)
    }

    /// Waits up to `timeout` for something to happen and appends what happened to `events`.
    ///
    /// Returns early, with whatever was observed, when a signal interrupts the wait.
    pub fn poll(&mut self, timeout: Duration, events: &mut Vec<Event>) -> io::Result<()> {
        self.check_suspend(events);
        let now = self.now();
        let mut wait = match self.tracker.next_deadline() {
            Some(at) => timeout.min(at.saturating_sub(now)),
            None => timeout,
        };
        if !self.unwatched.agents.is_empty() {
            wait = wait.min(self.unwatched.next_check.saturating_sub(now));
        }
        let mut socket_ready = false;
        let mut exited = Vec::new();
        for token in self.epoll.wait(wait)? {
            if token == SOCKET_TOKEN {
                socket_ready = true;
            } else {
                exited.push(token as u32);
            }
        }
        if socket_ready {
            self.drain(events)?;
        }
        let now = self.now();
        for pid in exited {
            // Dropping the agent closes its pidfd, which also leaves the epoll set.
            self.tracker.on_exit(now, pid, events);
        }
        self.check_unwatched(now, events);
        self.tracker.expire(now, events);
        Ok(())
    }

    /// Reports the exit of agents watched without a pidfd, at most every
    /// [`EXIT_POLL_INTERVAL`].
    fn check_unwatched(&mut self, now: Duration, events: &mut Vec<Event>) {
        if self.unwatched.agents.is_empty() || now < self.unwatched.next_check {
            return;
        }
        self.unwatched.next_check = now + EXIT_POLL_INTERVAL;
        let tracker = &self.tracker;
        let mut gone = Vec::new();
        for (&pid, &start) in &self.unwatched.agents {
            if tracker.agent(pid).is_none() {
                gone.push((pid, false)); // evicted or already reported
            } else if !still_running(pid, start) {
                gone.push((pid, true));
            }
        }
        for (pid, exited) in gone {
            self.unwatched.agents.remove(&pid);
            if exited {
                self.counters.polled_exits += 1;
                self.tracker.on_exit(now, pid, events);
            }
        }
    }

    /// Receives and handles every queued datagram (up to a bound per call).
    fn drain(&mut self, events: &mut Vec<Event>) -> io::Result<()> {
        for _ in 0..BATCHES_PER_WAKE {
            match self.batch.recv(&self.socket, Wait::NonBlock) {
                Ok(_) => self.counters.batches += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                Err(e) => return Err(e),
            }
            let now = self.now();
            // Split borrows: the batch hands out datagrams while the rest of `self` is updated.
            let Self {
                batch,
                tracker,
                epoll,
                counters,
                allow_uids,
                global_limit,
                global_tokens,
                global_at,
                unwatched,
                decode_reports,
                ..
            } = self;
            for dgram in batch.drain() {
                counters.datagrams += 1;
                counters.fds_closed += dgram.closed_fds as u64;
                if dgram.no_pidfd.is_some() {
                    counters.no_pidfd += 1;
                }
                if dgram.control_truncated {
                    counters.control_truncated += 1;
                }
                // pid 0: sent before credentials were enabled (an activated socket), or by a
                // process outside this pid namespace. Either way it cannot be attributed.
                let Some(creds) = dgram.credentials.filter(|c| c.pid != 0) else {
                    tracing::debug!("dropped a datagram without attributable credentials");
                    counters.auth_failures += 1;
                    events.push(Event::AuthFailure {
                        pid: 0,
                        uid: u32::MAX,
                        reason: AuthFailure::NoCredentials,
                    });
                    continue;
                };
                if dgram.truncated {
                    tracing::debug!(
                        pid = creds.pid,
                        len = dgram.original_len,
                        "dropped an oversized datagram"
                    );
                    counters.truncated += 1;
                    counters.decode_errors += 1;
                    let (len, limit) = (dgram.original_len, dgram.data.len());
                    decode_reports.report(
                        now,
                        creds.pid,
                        || format!("datagram of {len} bytes exceeds the {limit}-byte limit"),
                        counters,
                        events,
                    );
                    continue;
                }
                if let Some(allowed) = allow_uids.as_deref()
                    && !allowed.contains(&creds.uid)
                {
                    tracing::debug!(
                        pid = creds.pid,
                        uid = creds.uid,
                        "dropped a datagram from a uid not on the allow-list"
                    );
                    counters.auth_failures += 1;
                    events.push(Event::AuthFailure {
                        pid: creds.pid,
                        uid: creds.uid,
                        reason: AuthFailure::UidNotAllowed,
                    });
                    continue;
                }
                let mut sender = Sender {
                    pid: creds.pid,
                    uid: creds.uid,
                };
                // The sender's pidfd, or why there is none.
                let mut pidfd = match (dgram.pidfd, dgram.no_pidfd) {
                    (Some(fd), _) => Ok(fd),
                    (None, why) => Err(why.map(|w| w.to_io_error())),
                };
                let registered = if looks_like_frame(dgram.data) {
                    let frame = match Frame::decode(dgram.data) {
                        Ok(frame) => frame,
                        Err(e) => {
                            tracing::debug!(pid = creds.pid, error = %e, "dropped an invalid VLP frame");
                            counters.decode_errors += 1;
                            decode_reports.report(
                                now,
                                creds.pid,
                                || e.to_string(),
                                counters,
                                events,
                            );
                            continue;
                        }
                    };
                    if frame.pid != creds.pid {
                        tracing::debug!(
                            pid = creds.pid,
                            claimed = frame.pid,
                            "dropped a frame claiming another pid"
                        );
                        counters.auth_failures += 1;
                        events.push(Event::AuthFailure {
                            pid: creds.pid,
                            uid: creds.uid,
                            reason: AuthFailure::PidMismatch { claimed: frame.pid },
                        });
                        continue;
                    }
                    counters.frames += 1;
                    let urgent = frame.status == Status::Critical;
                    if !take_token(*global_limit, global_tokens, global_at, now, urgent) {
                        counters.global_rate_limited += 1;
                        continue;
                    }
                    tracker.on_frame(now, sender, &frame, events)
                } else {
                    let n = match Notification::parse(dgram.data) {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::debug!(pid = creds.pid, error = %e, "dropped an invalid notify message");
                            counters.decode_errors += 1;
                            decode_reports.report(
                                now,
                                creds.pid,
                                || e.to_string(),
                                counters,
                                events,
                            );
                            continue;
                        }
                    };
                    counters.notifications += 1;
                    if (n.is_empty() || n.is_barrier_only()) && tracker.agent(creds.pid).is_none() {
                        // Nothing to act on (only unknown keys), or a synchronisation request
                        // from a helper process (systemd-notify's BARRIER=1, whose descriptor
                        // is already closed): nobody new to track.
                        continue;
                    }
                    if let Some(main) = n.main_pid.filter(|&p| p != creds.pid) {
                        // MAINPID=: the message speaks for another process (systemd-notify
                        // --pid=$$ from a shell). Honoured only if the sender may speak for it.
                        match speak_for(creds, main) {
                            Some((uid, main_pidfd)) => {
                                sender = Sender { pid: main, uid };
                                if main_pidfd.is_err() {
                                    counters.no_pidfd += 1;
                                }
                                pidfd = main_pidfd.map_err(Some);
                            }
                            None => {
                                tracing::debug!(
                                    pid = creds.pid,
                                    uid = creds.uid,
                                    main_pid = main,
                                    "dropped a notify message for a MAINPID the sender may not speak for"
                                );
                                counters.auth_failures += 1;
                                events.push(Event::AuthFailure {
                                    pid: creds.pid,
                                    uid: creds.uid,
                                    reason: AuthFailure::MainPidNotPermitted { claimed: main },
                                });
                                continue;
                            }
                        }
                    }
                    let urgent = n.watchdog == Some(Watchdog::Trigger);
                    if !take_token(*global_limit, global_tokens, global_at, now, urgent) {
                        counters.global_rate_limited += 1;
                        continue;
                    }
                    tracker.on_notify(now, sender, &n, events)
                };
                if registered {
                    watch_exit(tracker, epoll, unwatched, now, sender.pid, pidfd);
                } else if let Ok(fd) = pidfd
                    && unwatched.agents.contains_key(&sender.pid)
                {
                    // Descriptors are available again: watch a polled agent by pidfd.
                    if epoll.add(fd.as_fd(), u64::from(sender.pid)).is_ok() {
                        tracker.attach_pidfd(sender.pid, fd);
                        unwatched.agents.remove(&sender.pid);
                    }
                }
            }
        }
        Ok(())
    }

    /// Detects a suspend (boottime ran ahead of monotonic) and restarts deadlines after it.
    fn check_suspend(&mut self, events: &mut Vec<Event>) {
        let (Ok(mono), Ok(boot)) = (ClockSource::Monotonic.now(), ClockSource::Boottime.now())
        else {
            return;
        };
        let (mono, boot) = (mono.as_duration(), boot.as_duration());
        let (last_mono, last_boot) = self.last_clocks;
        self.last_clocks = (mono, boot);
        let suspended = boot
            .saturating_sub(last_boot)
            .saturating_sub(mono.saturating_sub(last_mono));
        if suspended > SUSPEND_THRESHOLD {
            tracing::info!(
                ?suspended,
                "machine resumed from suspend; restarting every deadline"
            );
            self.counters.suspends += 1;
            let now = self.now();
            self.tracker.forgive_suspend(now, suspended, events);
        }
    }

    /// Whether this observer will unlink its socket path on drop.
    pub fn owns_path(&self) -> bool {
        self.path.is_some()
    }
}

/// Watches a newly registered agent for exit: through its pidfd where there is one (the tracker
/// owns it from here: an agent that leaves the table closes it, which also removes it from the
/// epoll set), else by polling, with a rate-limited warning when pidfds ran short.
fn watch_exit(
    tracker: &mut Tracker,
    epoll: &Epoll,
    unwatched: &mut Unwatched,
    now: Duration,
    pid: u32,
    pidfd: Result<OwnedFd, Option<io::Error>>,
) {
    let why = match pidfd {
        Ok(fd) => match epoll.add(fd.as_fd(), u64::from(pid)) {
            Ok(()) => {
                tracker.attach_pidfd(pid, fd);
                return;
            }
            Err(e) => Some(e),
        },
        Err(why) => why,
    };
    let start = sys::process_start(pid).ok().map(|(start, _)| start);
    unwatched.agents.insert(pid, start);
    // No pidfd was asked for (a kernel before 6.5): polling is the exit check there, and not a
    // shortage worth a warning.
    let Some(why) = why else {
        return;
    };
    if unwatched
        .warned_at
        .is_none_or(|at| now.saturating_sub(at) >= PIDFD_WARNING_INTERVAL)
    {
        unwatched.warned_at = Some(now);
        tracing::warn!(
            pid,
            polled = unwatched.agents.len(),
            "cannot watch new agents through a pidfd ({why}); checking them for exit every \
             {EXIT_POLL_INTERVAL:?} instead. Raise the descriptor limit (LimitNOFILE=) if this \
             persists"
        );
    }
}

/// Whether the process registered as `pid` (with `start` as its start time, where known)
/// still runs: it exists, is not a zombie, and its pid was not recycled.
fn still_running(pid: u32, start: Option<u64>) -> bool {
    if !platform_primitives::process::exists(pid) {
        return false;
    }
    match sys::process_start(pid) {
        Ok((_, b'Z' | b'X')) => false,
        Ok((now, _)) => start.is_none_or(|s| s == now),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        // Cannot read /proc (a full descriptor table): kill(pid, 0) has the last word.
        Err(_) => true,
    }
}

/// Whether a notify message from `creds` may speak for process `main` (`MAINPID=`): the sender
/// is root, or every uid of `main` is the sender's uid. Checked through a pidfd of `main`, so a
/// pid recycled during the check is not mistaken for the process it was opened for.
///
/// Returns `main`'s uid and its pidfd (or why none could be had), or `None` if the claim is
/// refused.
fn speak_for(creds: Credentials, main: u32) -> Option<(u32, io::Result<OwnedFd>)> {
    let pidfd = sys::pidfd_open(main);
    if let Err(e) = &pidfd
        && e.raw_os_error() == Some(libc::ESRCH)
    {
        return None;
    }
    let uids = sys::process_uids(main).ok();
    if let Ok(fd) = &pidfd
        && !platform_primitives::process::pidfd_alive(fd.as_fd())
    {
        return None; // exited (the uids read may be a newcomer's)
    }
    let permitted = creds.uid == 0 || uids.is_some_and(|u| u.iter().all(|&uid| uid == creds.uid));
    if !permitted {
        return None;
    }
    Some((uids.map_or(creds.uid, |u| u[0]), pidfd))
}

/// Takes one token from the global bucket; urgent datagrams always pass.
fn take_token(
    limit: Option<RateLimit>,
    tokens: &mut f64,
    at: &mut Duration,
    now: Duration,
    urgent: bool,
) -> bool {
    let Some(limit) = limit else {
        return true;
    };
    if urgent {
        return true;
    }
    *tokens = (*tokens + now.saturating_sub(*at).as_secs_f64() * limit.rate).min(limit.burst);
    *at = now;
    if *tokens < 1.0 {
        return false;
    }
    *tokens -= 1.0;
    true
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// The polling exit check: a live process runs; one whose start time differs (a recycled
    /// pid) does not; a zombie does not; a reaped one does not.
    #[test]
    fn still_running_tells_live_recycled_zombie_and_gone_apart() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        let (start, _) = sys::process_start(pid).expect("stat");
        assert!(still_running(pid, Some(start)));
        assert!(still_running(pid, None));
        assert!(!still_running(pid, Some(start + 1)), "recycled pid");
        child.kill().expect("kill");
        // Not yet reaped: a zombie, which kill(pid, 0) alone would call alive.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sys::process_start(pid).ok().map(|(_, state)| state) != Some(b'Z') {
            assert!(std::time::Instant::now() < deadline, "no zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(platform_primitives::process::exists(pid));
        assert!(!still_running(pid, Some(start)), "zombie");
        child.wait().expect("reap");
        assert!(!still_running(pid, Some(start)), "reaped");
    }
}
