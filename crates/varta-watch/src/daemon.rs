//! What the `varta-watch` daemon needs beyond the observer: stop signals, socket activation,
//! and its own sd_notify client (so systemd can supervise the supervisor).

use std::io;
use std::os::unix::net::UnixDatagram;

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

pub use platform_primitives::notify::SelfNotify;

/// Whether `SO_PASSCRED` is on for a socket (a socket passed by activation has it only with
/// `PassCredentials=yes`; datagrams queued without it carry no sender credentials).
pub fn passes_credentials(socket: &UnixDatagram) -> io::Result<bool> {
    crate::sys::passcred_enabled(std::os::fd::AsFd::as_fd(socket))
}
