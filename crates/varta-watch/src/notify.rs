//! systemd's notify protocol (`sd_notify(3)`): newline-separated `KEY=VALUE` assignments in one
//! datagram.
//!
//! Any program that calls `sd_notify` is watched by pointing `NOTIFY_SOCKET` at varta-watch.
//! The parser accepts what systemd accepts — unknown keys are counted and ignored, a trailing
//! newline is optional — and rejects what systemd rejects: NUL bytes, invalid UTF-8, and
//! malformed values of the keys it understands.
//!
//! ```
//! use varta_watch::notify::{Notification, Watchdog};
//!
//! let n = Notification::parse(b"READY=1\nSTATUS=serving 3 clients\nWATCHDOG=1\n")?;
//! assert!(n.ready);
//! assert_eq!(n.status.as_deref(), Some("serving 3 clients"));
//! assert_eq!(n.watchdog, Some(Watchdog::Ping));
//! # Ok::<(), varta_watch::notify::NotifyError>(())
//! ```

use std::time::Duration;

/// What a `WATCHDOG=` assignment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watchdog {
    /// `WATCHDOG=1`: a keep-alive ping.
    Ping,
    /// `WATCHDOG=trigger`: the sender declares itself failed, now.
    Trigger,
}

/// The assignments of one notify datagram that this observer acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notification {
    /// `READY=1`: start-up finished.
    pub ready: bool,
    /// `RELOADING=1`: reloading its configuration.
    pub reloading: bool,
    /// `STOPPING=1`: shutting down (an exit that follows is expected).
    pub stopping: bool,
    /// `STATUS=`: free-form status text.
    pub status: Option<String>,
    /// `WATCHDOG=1` or `WATCHDOG=trigger`.
    pub watchdog: Option<Watchdog>,
    /// `WATCHDOG_USEC=`: this sender's watchdog timeout from now on.
    pub watchdog_timeout: Option<Duration>,
    /// `EXTEND_TIMEOUT_USEC=`: allow this much more time for the current phase.
    pub extend_timeout: Option<Duration>,
    /// `MAINPID=`: the service's main process, if not the sender.
    pub main_pid: Option<u32>,
    /// `BARRIER=1`: a synchronisation request (its descriptor is closed on receipt).
    pub barrier: bool,
    /// Assignments with keys this observer does not act on.
    pub ignored: usize,
}

/// Why a datagram is not a valid notify message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// Nothing but whitespace.
    #[error("empty notify message")]
    Empty,
    /// NUL bytes are not allowed anywhere.
    #[error("NUL byte at offset {offset}")]
    Nul {
        /// Where the first NUL is.
        offset: usize,
    },
    /// The text must be UTF-8.
    #[error("invalid UTF-8 at offset {offset}")]
    Utf8 {
        /// Where the first invalid sequence starts.
        offset: usize,
    },
    /// A known key with a value it cannot take.
    #[error("bad value for {key}: {value:?}")]
    Value {
        /// The key.
        key: &'static str,
        /// The offending value (at most 64 bytes of it).
        value: String,
    },
}

impl Notification {
    /// Parses one datagram. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<Notification, NotifyError> {
        if let Some(offset) = bytes.iter().position(|&b| b == 0) {
            return Err(NotifyError::Nul { offset });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| NotifyError::Utf8 {
            offset: e.valid_up_to(),
        })?;
        if text.trim().is_empty() {
            return Err(NotifyError::Empty);
        }
        let mut n = Notification::default();
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let Some((key, value)) = line.split_once('=') else {
                n.ignored += 1;
                continue;
            };
            match key {
                "READY" => n.ready = flag("READY", value)?,
                "RELOADING" => n.reloading = flag("RELOADING", value)?,
                "STOPPING" => n.stopping = flag("STOPPING", value)?,
                "BARRIER" => n.barrier = flag("BARRIER", value)?,
                "STATUS" => n.status = Some(value.to_owned()),
                "WATCHDOG" => {
                    n.watchdog = Some(match value {
                        "1" => Watchdog::Ping,
                        "trigger" => Watchdog::Trigger,
                        _ => return Err(bad("WATCHDOG", value)),
                    })
                }
                "WATCHDOG_USEC" => n.watchdog_timeout = Some(micros("WATCHDOG_USEC", value)?),
                "EXTEND_TIMEOUT_USEC" => {
                    n.extend_timeout = Some(micros("EXTEND_TIMEOUT_USEC", value)?)
                }
                "MAINPID" => {
                    n.main_pid = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|&p| p > 0)
                            .ok_or_else(|| bad("MAINPID", value))?,
                    )
                }
                _ => n.ignored += 1,
            }
        }
        Ok(n)
    }
}

impl Notification {
    /// Whether the message carried no assignment this observer acts on (only unknown keys).
    pub fn is_empty(&self) -> bool {
        !self.ready
            && !self.reloading
            && !self.stopping
            && !self.barrier
            && self.status.is_none()
            && self.watchdog.is_none()
            && self.watchdog_timeout.is_none()
            && self.extend_timeout.is_none()
            && self.main_pid.is_none()
    }

    /// Whether the message is only a `BARRIER=1` synchronisation request.
    pub fn is_barrier_only(&self) -> bool {
        self.barrier
            && Notification {
                barrier: false,
                ignored: 0,
                ..self.clone()
            }
            .is_empty()
    }
}

fn bad(key: &'static str, value: &str) -> NotifyError {
    let mut end = value.len().min(64);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    NotifyError::Value {
        key,
        value: value[..end].to_owned(),
    }
}

fn flag(key: &'static str, value: &str) -> Result<bool, NotifyError> {
    match value {
        "1" => Ok(true),
        _ => Err(bad(key, value)),
    }
}

fn micros(key: &'static str, value: &str) -> Result<Duration, NotifyError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|&us| us > 0)
        .map(Duration::from_micros)
        .ok_or_else(|| bad(key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_observer_uses() {
        let n = Notification::parse(
            b"READY=1\nRELOADING=1\nSTOPPING=1\nSTATUS=a=b\nWATCHDOG=trigger\nWATCHDOG_USEC=2500000\nEXTEND_TIMEOUT_USEC=10\nMAINPID=42\nBARRIER=1\nX_CUSTOM=1\nnoequals",
        )
        .expect("valid");
        assert!(n.ready && n.reloading && n.stopping && n.barrier);
        assert_eq!(n.status.as_deref(), Some("a=b"));
        assert_eq!(n.watchdog, Some(Watchdog::Trigger));
        assert_eq!(n.watchdog_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(n.extend_timeout, Some(Duration::from_micros(10)));
        assert_eq!(n.main_pid, Some(42));
        assert_eq!(n.ignored, 2);
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        assert_eq!(Notification::parse(b""), Err(NotifyError::Empty));
        assert_eq!(Notification::parse(b"\n\n "), Err(NotifyError::Empty));
        assert_eq!(
            Notification::parse(b"READY=1\0"),
            Err(NotifyError::Nul { offset: 7 })
        );
        assert_eq!(
            Notification::parse(b"STATUS=\xff"),
            Err(NotifyError::Utf8 { offset: 7 })
        );
        assert!(matches!(
            Notification::parse(b"WATCHDOG_USEC=soon"),
            Err(NotifyError::Value {
                key: "WATCHDOG_USEC",
                ..
            })
        ));
        assert!(matches!(
            Notification::parse(b"MAINPID=0"),
            Err(NotifyError::Value { key: "MAINPID", .. })
        ));
        assert!(matches!(
            Notification::parse(b"READY=yes"),
            Err(NotifyError::Value { key: "READY", .. })
        ));
    }
}
