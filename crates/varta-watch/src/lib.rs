//! One observer for the liveness of many local processes.
//!
//! systemd watches one unit with one watchdog; most supervisors notice only when a process dies,
//! not when it hangs. `varta-watch` is a daemon that many processes report to, over one Unix
//! datagram socket, with either VLP heartbeat frames or systemd's `sd_notify` text: it notices a
//! stall, an exit or a self-reported critical state, and acts on it.
//!
//! ## Planned design
//!
//! - The socket is bound with `platform-primitives`' `uds` (live instance refused, stale socket
//!   replaced, non-socket file preserved, mode set before any peer connects, only its own inode
//!   unlinked on exit).
//! - Sender identity from the kernel (`SCM_CREDENTIALS`, `SCM_PIDFD`), received in batches; every
//!   passed descriptor closed at once (so `systemd-notify`'s `BARRIER=1` never waits).
//! - Deadline-based stall detection (no scan of all agents per poll), per-agent timeouts, suspend
//!   detection, `Stalled`/`Recovered`/`Exited`/`Critical` events, a JSON event stream, Prometheus
//!   metrics and exec hooks that receive the agent's pidfd.
//!
//! ## Status
//!
//! This crate is a skeleton: it has no public API yet, and nothing in it pretends to work.
//! The design above is what its tracking issue ("varta-watch observer") asks for.
