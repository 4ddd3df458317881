//! One observer for the liveness of many local processes.
//!
//! systemd watches one unit with one watchdog; most supervisors notice only when a process
//! dies, not when it hangs. varta-watch is a daemon that many processes report to over one Unix
//! datagram socket — with 32-byte VLP heartbeat frames ([`vlp`]) or systemd's `sd_notify` text
//! ([`notify`]) — and that notices a stall, an exit or a self-reported critical state.
//!
//! - **Identity from the kernel.** Every datagram carries the sender's credentials and a pidfd
//!   (`SCM_CREDENTIALS`, `SCM_PIDFD`); a VLP frame claiming another pid is an
//!   [`AuthFailure`](event::Event::AuthFailure), not a beat. A uid allow-list narrows who may
//!   report. Every descriptor a sender attaches is closed on receipt, so `systemd-notify`'s
//!   `BARRIER=1` never waits.
//! - **Deadlines, not scans.** Each datagram costs O(1); stalls come from a lazily corrected
//!   deadline heap ([`tracker`]), never from walking every agent per poll.
//! - **Dead and hung told apart.** The agent's pidfd becomes readable when it exits:
//!   [`Exited`](event::Event::Exited) at once, [`Stalled`](event::Event::Stalled) only for the
//!   living.
//! - **Suspend-aware.** Deadlines run on a monotonic clock of your choice; a detected suspend
//!   restarts them instead of firing every agent on resume.
//!
//! The [`Observer`] is Linux-only (macOS attaches no credentials to datagrams and has no
//! pidfds); the wire formats and the tracker are portable.
//!
//! ## Status
//!
//! Works today: the VLP v0.2 codec, the sd_notify parser, the tracker (per-agent timeouts,
//! startup grace, missed-beat rule, eviction policies, rate limits, suspend handling) and the
//! observer with kernel-attested senders and pidfd exit detection, the agent-side [`beacon`],
//! services by name ([`service`]: unit, cgroup and command labels, per-service thresholds and
//! a stall signal through the pidfd with flap control), and the `varta-watch` daemon
//! (JSON-lines events, bounded exec hooks with the agent's pidfd, Prometheus metrics, a status
//! control socket, socket activation, its own sd_notify, systemd unit files).

#![deny(unsafe_code)]

pub mod beacon;
pub mod event;
pub mod notify;
#[cfg(target_os = "linux")]
pub mod service;
pub mod tracker;
pub mod vlp;

#[cfg(target_os = "linux")]
pub mod daemon;
#[cfg(target_os = "linux")]
pub mod hook;
#[cfg(target_os = "linux")]
pub mod report;

mod crc32c;
#[cfg(target_os = "linux")]
mod observer;
mod pid_index;
mod sys;

pub use event::Event;
#[cfg(target_os = "linux")]
pub use observer::{Observer, ObserverConfig, ObserverCounters, ObserverError};
