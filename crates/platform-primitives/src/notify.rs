//! The service side of sd_notify: a client of the supervisor's `NOTIFY_SOCKET`.
//!
//! A daemon started by systemd with `Type=notify` tells it when it is ready (`READY=1`), what
//! it is doing (`STATUS=…`), that it is stopping (`STOPPING=1`), and that it is alive
//! (`WATCHDOG=1`, at least once per `WatchdogSec`). [`SelfNotify`] sends those datagrams;
//! outside systemd (`NOTIFY_SOCKET` unset) there is nothing to send to.
//!
//! ```no_run
//! use platform_primitives::notify::SelfNotify;
//!
//! let mut notify = SelfNotify::from_env().transpose()?;
//! if let Some(n) = &notify {
//!     n.send("READY=1\nSTATUS=serving")?;
//! }
//! loop {
//!     if let Some(n) = &mut notify {
//!         n.ping_if_due()?;
//!     }
//!     # break;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
#[cfg(target_os = "linux")]
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
                #[cfg(target_os = "linux")]
                Some(name) => SocketAddr::from_abstract_name(name)?,
                #[cfg(not(target_os = "linux"))]
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "abstract NOTIFY_SOCKET addresses are Linux-only",
                    ));
                }
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

    /// Sends one message with descriptors attached (`SCM_RIGHTS`), as `sd_pid_notify_with_fds`
    /// does: `FDSTORE=1\nFDNAME=name` hands them to systemd's file-descriptor store, which
    /// keeps them across a restart of the service and passes them back in `LISTEN_FDS` (see
    /// [`take_listen_fds`]).
    ///
    /// # Errors
    ///
    /// The socket cannot be reached or the message is refused (`EMSGSIZE`, `ETOOMANYREFS`).
    pub fn send_with_fds(&self, message: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        socket.connect_addr(&self.addr)?;
        crate::fdpass::send_with_fds(&socket, message.as_bytes(), fds).map(drop)
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

/// Whether [`take_listen_fds`] has run in this process.
static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// The descriptors the service manager passed to this process at start (`LISTEN_FDS`
/// descriptors from 3 on, meant for this process if `LISTEN_PID` is its pid), each with its
/// name from `LISTEN_FDNAMES` (`"unknown"` where none was given). systemd passes this way the
/// sockets of socket activation and the contents of the service's file-descriptor store. Each
/// is marked close-on-exec.
///
/// Only the first call takes them (later calls return nothing), so no descriptor is owned
/// twice. Take them before opening any other descriptor. The variables stay in the
/// environment: remove them from the environment of any child you start.
///
/// # Errors
///
/// `LISTEN_FDS` is not a number, or a descriptor it announces is not open.
pub fn take_listen_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let Some(count) = std::env::var("LISTEN_FDS").ok().filter(|_| for_us) else {
        return Ok(Vec::new());
    };
    if LISTEN_FDS_TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let count: i32 = count.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("LISTEN_FDS={count:?} is not a number of descriptors"),
        )
    })?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    let mut fds = Vec::new();
    for raw in 3..3_i32.saturating_add(count.max(0)) {
        let fd = crate::sys::unix::take_inherited(raw).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("LISTEN_FDS announces descriptor {raw}, which is not open: {e}"),
            )
        })?;
        let name = names.next().filter(|n| !n.is_empty()).unwrap_or("unknown");
        fds.push((name.to_owned(), fd));
    }
    Ok(fds)
}
