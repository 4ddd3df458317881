//! What the observer reports, and its JSON-lines form.
//!
//! Every event names the agent by its kernel-attested pid. `silent_for` is how long the agent
//! had been silent when the event was decided.

use std::fmt::Write as _;
use std::time::Duration;

use crate::vlp::Status;

/// How an agent talks to the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// VLP frames.
    Vlp,
    /// sd_notify text.
    Notify,
}

impl Protocol {
    /// The lowercase name used in events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vlp => "vlp",
            Self::Notify => "notify",
        }
    }
}

/// Why an agent is critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriticalReason {
    /// `WATCHDOG=trigger`.
    WatchdogTrigger,
    /// A terminal VLP frame (the sender's panic hook).
    TerminalFrame,
    /// A VLP frame with status Critical.
    Status,
}

impl CriticalReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::WatchdogTrigger => "watchdog_trigger",
            Self::TerminalFrame => "terminal_frame",
            Self::Status => "status_critical",
        }
    }
}

/// Why a datagram was refused as unauthenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The frame's pid is not the pid the kernel attests for the sender.
    PidMismatch {
        /// The pid in the frame.
        claimed: u32,
    },
    /// The sender's uid is not on the allow-list.
    UidNotAllowed,
    /// No credentials were attached (the socket was not set up to receive them).
    NoCredentials,
    /// A notify message named another process (`MAINPID=`) that the sender may not speak for:
    /// the sender is neither root nor of the same uid as that process, or it does not exist.
    MainPidNotPermitted {
        /// The pid in `MAINPID=`.
        claimed: u32,
    },
}

/// One observation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// First datagram from a new agent.
    Registered {
        /// The agent.
        pid: u32,
        /// Its uid.
        uid: u32,
        /// How it talks.
        protocol: Protocol,
    },
    /// A heartbeat (VLP frame or `WATCHDOG=1`).
    Beat {
        /// The agent.
        pid: u32,
        /// The reported health (notify pings report Ok).
        status: Status,
    },
    /// `READY=1`.
    Ready {
        /// The agent.
        pid: u32,
    },
    /// The agent has been silent past its deadline.
    Stalled {
        /// The agent.
        pid: u32,
        /// Silence when the stall was decided.
        silent_for: Duration,
    },
    /// A stalled agent spoke again.
    Recovered {
        /// The agent.
        pid: u32,
        /// How long it had been silent.
        silent_for: Duration,
    },
    /// The agent's process exited (its pidfd became readable).
    Exited {
        /// The agent.
        pid: u32,
        /// Whether it had announced `STOPPING=1` first.
        expected: bool,
        /// Silence at exit.
        silent_for: Duration,
    },
    /// The agent declared itself failed.
    Critical {
        /// The agent.
        pid: u32,
        /// How.
        reason: CriticalReason,
    },
    /// A datagram whose sender could not be trusted; it was dropped.
    AuthFailure {
        /// The kernel-attested sender pid (0 if unknown).
        pid: u32,
        /// The sender's uid.
        uid: u32,
        /// What failed.
        reason: AuthFailure,
    },
    /// A datagram that is neither a valid VLP frame nor valid notify text; it was dropped.
    ///
    /// Reports are rate-limited (a sender flooding garbage must not flood the event stream):
    /// `suppressed` says how many decode errors went unreported since the previous report.
    Decode {
        /// The kernel-attested sender pid (0 if unknown).
        pid: u32,
        /// What was wrong.
        error: String,
        /// Decode errors not reported since the previous `Decode` event.
        suppressed: u64,
    },
    /// A stalled agent was dropped to make room for a new one.
    Evicted {
        /// The agent dropped.
        pid: u32,
    },
    /// A new agent could not be tracked: the table is full of agents that may not be evicted.
    Rejected {
        /// The agent refused.
        pid: u32,
    },
    /// The machine was suspended; deadlines were restarted so the resume does not fire them.
    Resumed {
        /// How long the machine was suspended.
        suspended_for: Duration,
    },
}

impl Event {
    /// The event's name in the JSON stream and in hooks' `VARTA_EVENT`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "registered",
            Self::Beat { .. } => "beat",
            Self::Ready { .. } => "ready",
            Self::Stalled { .. } => "stalled",
            Self::Recovered { .. } => "recovered",
            Self::Exited { .. } => "exited",
            Self::Critical { .. } => "critical",
            Self::AuthFailure { .. } => "auth_failure",
            Self::Decode { .. } => "decode",
            Self::Evicted { .. } => "evicted",
            Self::Rejected { .. } => "rejected",
            Self::Resumed { .. } => "resumed",
        }
    }

    /// The agent the event is about, if any.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Registered { pid, .. }
            | Self::Beat { pid, .. }
            | Self::Ready { pid }
            | Self::Stalled { pid, .. }
            | Self::Recovered { pid, .. }
            | Self::Exited { pid, .. }
            | Self::Critical { pid, .. }
            | Self::AuthFailure { pid, .. }
            | Self::Decode { pid, .. }
            | Self::Evicted { pid }
            | Self::Rejected { pid } => Some(*pid),
            Self::Resumed { .. } => None,
        }
    }

    /// The silence the event reports, if any.
    pub fn silent_for(&self) -> Option<Duration> {
        match self {
            Self::Stalled { silent_for, .. }
            | Self::Recovered { silent_for, .. }
            | Self::Exited { silent_for, .. } => Some(*silent_for),
            _ => None,
        }
    }

    /// One JSON object (no trailing newline), with `ts_ms` the wall-clock time in milliseconds.
    pub fn to_json(&self, ts_ms: u128) -> String {
        let mut s = format!("{{\"ts_ms\":{ts_ms},\"event\":\"{}\"", self.name());
        if let Some(pid) = self.pid() {
            let _ = write!(s, ",\"pid\":{pid}");
        }
        if let Some(d) = self.silent_for() {
            let _ = write!(s, ",\"silent_ms\":{}", d.as_millis());
        }
        match self {
            Self::Registered { uid, protocol, .. } => {
                let _ = write!(s, ",\"uid\":{uid},\"protocol\":\"{}\"", protocol.as_str());
            }
            Self::Beat { status, .. } => {
                let _ = write!(s, ",\"status\":\"{}\"", status.as_str());
            }
            Self::Exited { expected, .. } => {
                let _ = write!(s, ",\"expected\":{expected}");
            }
            Self::Critical { reason, .. } => {
                let _ = write!(s, ",\"reason\":\"{}\"", reason.as_str());
            }
            Self::AuthFailure { uid, reason, .. } => {
                let _ = write!(s, ",\"uid\":{uid}");
                match reason {
                    AuthFailure::PidMismatch { claimed } => {
                        let _ = write!(s, ",\"reason\":\"pid_mismatch\",\"claimed_pid\":{claimed}");
                    }
                    AuthFailure::UidNotAllowed => s.push_str(",\"reason\":\"uid_not_allowed\""),
                    AuthFailure::NoCredentials => s.push_str(",\"reason\":\"no_credentials\""),
                    AuthFailure::MainPidNotPermitted { claimed } => {
                        let _ = write!(
                            s,
                            ",\"reason\":\"main_pid_not_permitted\",\"claimed_pid\":{claimed}"
                        );
                    }
                }
            }
            Self::Decode {
                error, suppressed, ..
            } => {
                s.push_str(",\"error\":");
                json_string(&mut s, error);
                let _ = write!(s, ",\"suppressed\":{suppressed}");
            }
            Self::Resumed { suspended_for } => {
                let _ = write!(s, ",\"suspended_ms\":{}", suspended_for.as_millis());
            }
            _ => {}
        }
        s.push('}');
        s
    }
}

/// Appends `text` as a JSON string literal (quotes, backslashes and control characters
/// escaped).
pub fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_flat_objects() {
        let e = Event::Stalled {
            pid: 42,
            silent_for: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_json(7),
            r#"{"ts_ms":7,"event":"stalled","pid":42,"silent_ms":1500}"#
        );
        let e = Event::Decode {
            pid: 9,
            error: "bad \"magic\"\n".into(),
            suppressed: 3,
        };
        assert_eq!(
            e.to_json(1),
            r#"{"ts_ms":1,"event":"decode","pid":9,"error":"bad \"magic\"\n","suppressed":3}"#
        );
    }
}
