//! What the `varta-watch` daemon needs beyond the observer: stop signals, socket activation,
//! and its own sd_notify client (so systemd can supervise the supervisor).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

pub use crate::hook::{HookConfig, HookRunner, Hooks};

/// Makes SIGTERM and SIGINT request a clean stop (see [`stop_requested`]) instead of killing
/// the process; a blocking [`Observer::poll`](crate::Observer::poll) returns at once.
pub fn install_stop_signals() -> io::Result<()> {
    crate::sys::install_stop_signals()
}

/// Whether SIGTERM or SIGINT has arrived.
pub fn stop_requested() -> bool {
    crate::sys::stop_requested()
}

/// Raises the soft descriptor limit (`RLIMIT_NOFILE`) to the hard limit and returns the old and
/// new soft limits.
///
/// Every agent watched through a pidfd holds one descriptor, and systemd starts services with a
/// soft limit of 1024; the hard limit is the administrator's real ceiling.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    crate::sys::raise_fd_limit()
}

/// The datagram socket systemd passed by socket activation, if this process was activated.
///
/// Call it at start-up, before spawning threads (it reads the environment).
pub fn take_activated_socket() -> io::Result<Option<UnixDatagram>> {
    crate::sys::take_listen_socket()
}

/// Whether `SO_PASSCRED` is on for a socket (a socket passed by activation has it only with
/// `PassCredentials=yes`; datagrams queued without it carry no sender credentials).
pub fn passes_credentials(socket: &UnixDatagram) -> io::Result<bool> {
    crate::sys::passcred_enabled(std::os::fd::AsFd::as_fd(socket))
}

/// A client of the supervisor's `NOTIFY_SOCKET`: `READY=1`, `STATUS=`, `STOPPING=1`, and
/// `WATCHDOG=1` at half the supervisor's `WATCHDOG_USEC`.
#[derive(Debug)]
pub struct SelfNotify {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
    last_ping: Instant,
}

impl SelfNotify {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket); `None` if unset.
    pub fn from_env() -> Option<io::Result<Self>> {
        let target = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog_for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|us| us.parse::<u64>().ok())
            .filter(|&us| us > 0 && watchdog_for_us)
            .map(Duration::from_micros);
        Some((|| {
            let bytes = target.as_encoded_bytes();
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => SocketAddr::from_abstract_name(name)?,
                None => SocketAddr::from_pathname(std::path::Path::new(&target))?,
            };
            Ok(Self {
                socket: UnixDatagram::unbound()?,
                addr,
                watchdog,
                last_ping: Instant::now(),
            })
        })())
    }

    /// Sends one message.
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(drop)
    }

    /// Sends `WATCHDOG=1` if half the supervisor's watchdog interval has passed.
    pub fn ping_if_due(&mut self) -> io::Result<()> {
        if let Some(interval) = self.watchdog
            && self.last_ping.elapsed() >= interval / 2
        {
            self.last_ping = Instant::now();
            self.send("WATCHDOG=1")?;
        }
        Ok(())
    }
}
