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
#[cfg(target_os = "linux")]
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
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
