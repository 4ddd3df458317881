//! Peer identity from the kernel, never from the bytes a peer sends.
//!
//! - For a connected stream peer, [`peer_credentials`] reads what the kernel recorded at
//!   `connect` time (Linux `SO_PEERCRED`; macOS `getpeereid` + `LOCAL_PEERPID`), and
//!   [`peer_pidfd`] gives a pidfd of the peer on Linux ≥ 6.5.
//! - For datagrams, [`enable_datagram_credentials`] asks the kernel to attach the sender's
//!   credentials (`SCM_CREDENTIALS`) and a pidfd of the sender (`SCM_PIDFD`, Linux ≥ 6.5) to every
//!   datagram, and a [`DatagramBatch`] receives many datagrams per system call (`recvmmsg`)
//!   together with that identity.
//!
//! A datagram socket is an open door: anyone allowed to write to it may attach descriptors to
//! what they send (`systemd-notify` attaches one to every `BARRIER=1`). The batch receives
//! with `MSG_CMSG_CLOEXEC` and closes every `SCM_RIGHTS` descriptor before returning, so the
//! receiver's descriptor table cannot grow; a pidfd the kernel could not install (a full
//! descriptor table) arrives as a typed [`NoPidfd`], never as a negative descriptor; and it
//! reports truncation honestly: `MSG_TRUNC`
//! (the data did not fit) and `MSG_CTRUNC` (the control data did not fit) are told apart.
//!
//! macOS attaches no credentials to datagrams: there, [`enable_datagram_credentials`] reports
//! an `Unsupported` error and every [`Datagram::credentials`] is `None`.
//!
//! ```
//! use std::os::unix::net::UnixDatagram;
//! use platform_primitives::creds::{DatagramBatch, BatchConfig, Wait};
//!
//! let (rx, tx) = UnixDatagram::pair()?;
//! # #[cfg(target_os = "linux")]
//! platform_primitives::creds::enable_datagram_credentials(&rx)?;
//! tx.send(b"READY=1")?;
//!
//! let mut batch = DatagramBatch::new(BatchConfig::default());
//! assert_eq!(batch.recv(&rx, Wait::Block)?, 1);
//! for dgram in batch.drain() {
//!     assert_eq!(dgram.data, b"READY=1");
//!     # #[cfg(target_os = "linux")]
//!     assert_eq!(dgram.credentials.unwrap().pid, std::process::id());
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys::unix::{BatchBuffers, Slot};
use crate::sys::{os, unix};

/// Process identity as the kernel attests it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The sender's pid, as seen from the receiver's pid namespace (0 if it is not visible there).
    pub pid: u32,
    /// The sender's user id.
    pub uid: u32,
    /// The sender's group id.
    pub gid: u32,
}

impl Credentials {
    /// The calling process's own credentials (real uid and gid).
    pub fn current() -> Self {
        Self {
            pid: std::process::id(),
            uid: unix::getuid(),
            gid: unix::getgid(),
        }
    }
}

/// The kernel-recorded credentials of the peer of a connected stream socket.
pub fn peer_credentials(sock: &impl AsFd) -> io::Result<Credentials> {
    os::peer_credentials(sock.as_fd())
}

/// A pidfd of the peer of a connected stream socket (Linux ≥ 6.5; `Unsupported` elsewhere).
///
/// Unlike a pid, a pidfd cannot come to name another process after the peer exits: it polls
/// readable when the peer exits, and signals sent through it cannot hit a recycled pid.
pub fn peer_pidfd(sock: &impl AsFd) -> io::Result<OwnedFd> {
    os::peer_pidfd(sock.as_fd())
}

/// The pid a pidfd refers to, or `None` once that process has exited (Linux; `Unsupported`
/// elsewhere).
pub fn pidfd_pid(pidfd: &impl AsFd) -> io::Result<Option<u32>> {
    os::pidfd_pid(pidfd.as_fd())
}

/// Sends `data` on a connected socket with explicit credentials (Linux).
///
/// An unprivileged sender may only state its own pid, uid and gid (which the kernel attaches
/// anyway). A privileged one may vouch for another live process: `CAP_SYS_ADMIN` for its pid,
/// `CAP_SETUID`/`CAP_SETGID` for its ids — what `systemd-notify` does on behalf of a service.
/// The kernel refuses a pid that does not exist (`ESRCH`) and an unauthorized claim (`EPERM`).
#[cfg(target_os = "linux")]
pub fn send_with_credentials(
    sock: &impl AsFd,
    data: &[u8],
    credentials: Credentials,
) -> io::Result<usize> {
    os::send_with_credentials(sock.as_fd(), data, credentials)
}

/// What [`enable_datagram_credentials`] switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialSupport {
    /// Every datagram carries a pidfd of its sender.
    pub pidfd: bool,
}

/// Asks the kernel to attach the sender's credentials, and a pidfd where available, to every
/// datagram received on `sock`.
///
/// Set it before peers send: datagrams queued earlier carry no credentials.
pub fn enable_datagram_credentials(sock: &impl AsFd) -> io::Result<CredentialSupport> {
    os::enable_credentials(sock.as_fd()).map(|pidfd| CredentialSupport { pidfd })
}

/// The kernel was asked for a pidfd of a datagram's sender and could not give one.
///
/// Linux writes the negated errno into the `SCM_PIDFD` record when it cannot install the pidfd
/// in the receiver: `EMFILE` when the receiver's descriptor table is full, `ESRCH` when the
/// sender was already reaped. That number is never treated as a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("no pidfd: {}", io::Error::from_raw_os_error(*.errno))]
pub struct NoPidfd {
    errno: i32,
}

impl NoPidfd {
    /// The errno the kernel reported (`libc::EMFILE`, …).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The errno as an [`io::Error`].
    pub fn to_io_error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

/// Sizes of a [`DatagramBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Datagrams received per system call at most.
    pub capacity: usize,
    /// Bytes kept of each datagram; longer ones are reported truncated.
    pub max_datagram: usize,
    /// `SCM_RIGHTS` descriptors per datagram that fit in the control buffer (and are then
    /// closed). More than this sets [`Datagram::control_truncated`]; the kernel closes the rest.
    pub max_fds: usize,
}

impl Default for BatchConfig {
    /// 32 datagrams of up to 4 KiB, room for 8 passed descriptors each.
    fn default() -> Self {
        Self {
            capacity: 32,
            max_datagram: 4096,
            max_fds: 8,
        }
    }
}

/// Whether [`DatagramBatch::recv`] may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Wait for the first datagram, then take whatever else is queued.
    Block,
    /// Return `WouldBlock` if nothing is queued.
    NonBlock,
}

/// Reusable buffers for receiving datagrams in batches, with their kernel-attested senders.
///
/// The steady state allocates nothing: buffers are sized once by [`BatchConfig`].
#[derive(Debug)]
pub struct DatagramBatch {
    bufs: BatchBuffers,
    scratch: os::BatchScratch,
}

impl DatagramBatch {
    /// Allocates buffers for `config` (each field at least 1).
    pub fn new(config: BatchConfig) -> Self {
        let capacity = config.capacity.max(1);
        Self {
            bufs: BatchBuffers::new(
                capacity,
                config.max_datagram.max(1),
                config.max_fds.max(1),
                os::CREDENTIALS_CONTROL_SPACE,
            ),
            scratch: os::BatchScratch::new(capacity),
        }
    }

    /// Receives up to `capacity` datagrams from `sock` and returns how many arrived.
    ///
    /// Datagrams from the previous call that were not drained are discarded first (their
    /// pidfds closed). Every passed descriptor is already closed when this returns.
    pub fn recv(&mut self, sock: &impl AsFd, wait: Wait) -> io::Result<usize> {
        let n = os::recv_batch(
            &mut self.bufs,
            &mut self.scratch,
            sock.as_fd(),
            wait == Wait::Block,
        )?;
        for slot in &mut self.bufs.slots[..n] {
            // Nobody asked for these descriptors: count them and close them now.
            slot.closed_fds = slot.control.fds.len();
            slot.control.fds.clear();
        }
        Ok(n)
    }

    /// The datagrams of the last [`recv`](Self::recv), in arrival order.
    pub fn drain(&mut self) -> Drain<'_> {
        let BatchBuffers {
            data,
            max_datagram,
            slots,
            filled,
            ..
        } = &mut self.bufs;
        Drain {
            slots: slots[..*filled].iter_mut(),
            data: data.chunks(*max_datagram),
        }
    }
}

/// Iterator over the datagrams of one batch. See [`DatagramBatch::drain`].
#[derive(Debug)]
pub struct Drain<'a> {
    slots: std::slice::IterMut<'a, Slot>,
    data: std::slice::Chunks<'a, u8>,
}

impl<'a> Iterator for Drain<'a> {
    type Item = Datagram<'a>;

    fn next(&mut self) -> Option<Datagram<'a>> {
        let slot = self.slots.next()?;
        let area = self.data.next()?;
        let data = &area[..slot.len.min(area.len())];
        Some(Datagram {
            data,
            original_len: slot.len.max(data.len()),
            truncated: slot.flags & libc::MSG_TRUNC != 0 || slot.len > data.len(),
            control_truncated: slot.flags & libc::MSG_CTRUNC != 0,
            credentials: slot.control.creds.take(),
            pidfd: slot.control.pidfd.take(),
            no_pidfd: slot
                .control
                .pidfd_errno
                .take()
                .map(|errno| NoPidfd { errno }),
            closed_fds: slot.closed_fds,
        })
    }
}

/// One received datagram.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// Its bytes (at most [`BatchConfig::max_datagram`]).
    pub data: &'a [u8],
    /// Its real length where the OS reports it (Linux), else `data.len()`.
    pub original_len: usize,
    /// The data did not fit (`MSG_TRUNC`): the datagram was longer than `data`.
    pub truncated: bool,
    /// The control data did not fit (`MSG_CTRUNC`): credentials or descriptors were lost (the
    /// kernel closed any descriptor that did not fit).
    pub control_truncated: bool,
    /// The sender as the kernel attests it; `None` if credentials were not enabled or the
    /// platform does not attach them.
    pub credentials: Option<Credentials>,
    /// A pidfd of the sender (Linux ≥ 6.5). Dropping it closes it.
    pub pidfd: Option<OwnedFd>,
    /// Why [`pidfd`](Self::pidfd) is `None` although the kernel was asked for one: it could
    /// not install a pidfd in the receiver (`EMFILE`: the receiver's descriptor table is full).
    /// `None` when a pidfd arrived or none was asked for.
    pub no_pidfd: Option<NoPidfd>,
    /// How many `SCM_RIGHTS` descriptors came with the datagram (all already closed).
    pub closed_fds: usize,
}
