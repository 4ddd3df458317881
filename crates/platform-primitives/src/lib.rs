//! The operating-system parts that the workspace's host crates share.
//!
//! Daemons that serve local clients over Unix sockets keep rediscovering the same hard edges:
//! a socket path left behind by a crashed predecessor, a permission window between `bind` and
//! `chmod`, a peer whose identity must come from the kernel rather than from the bytes it sent,
//! descriptors that arrive unasked in ancillary data and leak, and clocks that stop or jump when
//! the machine suspends. This crate handles each of them once:
//!
//! - [`uds`] binds Unix sockets at a path with the mode in place before any peer can reach them,
//!   recovers stale sockets, refuses to touch anything that is not a socket, and unlinks only
//!   its own inode on drop;
//! - [`threads`] attests that the process is still single-threaded (for set-up steps that must
//!   run before any thread exists);
//! - [`clock`] reads a monotonic clock that either stops or keeps counting across suspend;
//! - [`creds`] reports kernel-attested peer credentials for stream peers and, in batches, for
//!   every received datagram, with a pidfd of the sender where the kernel offers one;
//! - [`error`] writes an error and its causes as one line;
//! - [`fd`] sets and clears `O_NONBLOCK` and `FD_CLOEXEC`;
//! - [`process`] signals processes by pidfd, by pid (refusing ids that name groups) and by
//!   group, and says whether a pid exists;
//! - [`fdpass`] sends and receives descriptors with `SCM_RIGHTS` as [`OwnedFd`]s;
//! - [`mem`] gives the host page size and RAII anonymous mappings with any alignment;
//! - [`notify`] sends sd_notify messages (`READY=1`, `STATUS=`, `WATCHDOG=1`) to the service
//!   manager named by `NOTIFY_SOCKET`;
//! - [`prom`] writes Prometheus text exposition, so every daemon's metrics are escaped and
//!   formatted alike;
//! - [`sync`] is a `parking_lot`-shaped mutex and condition variable that loom can model, for
//!   the crates whose protocols are model-checked.
//!
//! All `unsafe` code lives in the private `sys` module, one file per operating system; what is
//! public here is safe. Linux and macOS are supported.
//!
//! ```
//! use platform_primitives::uds::UdsBinder;
//!
//! let dir = std::env::temp_dir().join(format!("pp-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("daemon.sock");
//! let bound = UdsBinder::new("my-daemon").mode(0o600).bind_datagram(&path)?;
//! assert!(path.exists());
//! drop(bound); // unlinks the path: it still names our socket
//! assert!(!path.exists());
//! # std::fs::remove_dir(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`OwnedFd`]: std::os::fd::OwnedFd

#![deny(unsafe_code)]

pub mod clock;
pub mod creds;
pub mod error;
pub mod fd;
pub mod fdpass;
pub mod mem;
pub mod notify;
pub mod process;
pub mod prom;
pub mod sync;
pub mod threads;
pub mod uds;

mod sys;
