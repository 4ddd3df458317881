//! macOS-only calls: sockets made close-on-exec with `fcntl`, `getpeereid` + `LOCAL_PEERPID`,
//! `proc_pidinfo` thread counting, and the clock ids that do and do not count sleep.
//!
//! macOS attaches no credentials to Unix datagrams and has no pidfds: the datagram receiver
//! reports `None` for both, and callers that need identity use stream sockets there.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::unix::{BatchBuffers, ControlSink, recv_msg};
use crate::creds::Credentials;

/// SIGPIPE is suppressed per socket with `SO_NOSIGPIPE`, not per call.
pub(crate) const SEND_FLAGS: libc::c_int = 0;
/// No `MSG_CMSG_CLOEXEC`: [`after_receive`] sets the flag right after the receive.
pub(crate) const RECV_CLOEXEC: libc::c_int = 0;
pub(crate) const MAP_NORESERVE: libc::c_int = 0;
/// macOS has no hugetlb pool to map from.
pub(crate) const MAP_HUGE_2MIB: Option<libc::c_int> = None;
/// `CLOCK_UPTIME_RAW` stops while the machine sleeps, like Linux's `CLOCK_MONOTONIC`.
pub(crate) const CLOCK_MONOTONIC: libc::clockid_t = libc::CLOCK_UPTIME_RAW;
/// macOS's `CLOCK_MONOTONIC` keeps counting through sleep, like Linux's `CLOCK_BOOTTIME`.
pub(crate) const CLOCK_BOOTTIME: Option<libc::clockid_t> = Some(libc::CLOCK_MONOTONIC);
pub(crate) const CREDENTIALS_CONTROL_SPACE: usize = 0;

fn set_fd_flag(
    fd: libc::c_int,
    get: libc::c_int,
    set: libc::c_int,
    flag: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is open for the call (the callers own it); the borrow ends with the call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    super::unix::update_fd_flag(fd, get, set, flag, true)
}

/// A new `AF_UNIX` socket of type `ty`, close-on-exec, optionally non-blocking.
pub(crate) fn socket_cloexec(ty: libc::c_int, nonblocking: bool) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; a non-negative result is a new descriptor we own.
    let raw = unsafe { libc::socket(libc::AF_UNIX, ty, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by socket and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_fd_flag(raw, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)?;
    if nonblocking {
        set_fd_flag(raw, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)?;
    }
    Ok(fd)
}

/// Marks every received descriptor close-on-exec (macOS has no `MSG_CMSG_CLOEXEC`).
pub(crate) fn after_receive(sink: &mut ControlSink) -> io::Result<()> {
    for fd in &sink.fds {
        set_fd_flag(
            fd.as_raw_fd(),
            libc::F_GETFD,
            libc::F_SETFD,
            libc::FD_CLOEXEC,
        )?;
    }
    Ok(())
}

/// macOS has no other control records this crate understands.
///
/// # Safety
/// Nothing is read; the signature matches the Linux variant's contract.
pub(crate) unsafe fn take_os_cmsg(
    _hdr: &libc::cmsghdr,
    _data: *const u8,
    _len: usize,
    _sink: &mut ControlSink,
) {
}

/// The peer's effective uid/gid (`getpeereid`) and pid (`LOCAL_PEERPID`).
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<Credentials> {
    let (mut uid, mut gid) = (0, 0);
    // SAFETY: both out-pointers are valid and writable.
    if unsafe { libc::getpeereid(fd.as_raw_fd(), &raw mut uid, &raw mut gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pid: libc::pid_t = 0;
    let mut len = size_of::<libc::pid_t>() as libc::socklen_t;
    // SAFETY: `pid` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            0, // SOL_LOCAL
            libc::LOCAL_PEERPID,
            (&raw mut pid).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Credentials {
        pid: pid as u32,
        uid,
        gid,
    })
}

/// macOS has no pidfds.
pub(crate) fn peer_pidfd(_fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// macOS attaches no per-datagram credentials.
pub(crate) fn enable_credentials(_fd: BorrowedFd<'_>) -> io::Result<bool> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// macOS has no pidfds.
pub(crate) fn pidfd_pid(_fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// How many threads this process has (`proc_pidinfo(PROC_PIDTASKINFO)`).
pub(crate) fn thread_count() -> io::Result<usize> {
    // SAFETY: proc_taskinfo is plain old data.
    let mut info: libc::proc_taskinfo = unsafe { zeroed() };
    let size = size_of::<libc::proc_taskinfo>() as libc::c_int;
    let pid = std::process::id() as libc::c_int;
    // SAFETY: `info` is writable for `size` bytes.
    let n =
        unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDTASKINFO, 0, (&raw mut info).cast(), size) };
    if n != size {
        return Err(io::Error::last_os_error());
    }
    Ok(info.pti_threadnum.max(0) as usize)
}

/// No per-call scratch on macOS: datagrams are received one `recvmsg` at a time.
#[derive(Debug)]
pub(crate) struct BatchScratch;

impl BatchScratch {
    pub(crate) fn new(_capacity: usize) -> Self {
        Self
    }
}

/// Receives up to one batch of datagrams, one `recvmsg(2)` each: the first may block, the
/// rest never do.
pub(crate) fn recv_batch(
    bufs: &mut BatchBuffers,
    _scratch: &mut BatchScratch,
    fd: BorrowedFd<'_>,
    wait: bool,
) -> io::Result<usize> {
    bufs.reset();
    let mut n = 0;
    while n < bufs.slots.len() {
        let flags = if wait && n == 0 {
            0
        } else {
            libc::MSG_DONTWAIT
        };
        let mut sink = std::mem::take(&mut bufs.slots[n].control);
        let mut control = std::mem::take(&mut bufs.controls[n]);
        let start = n * bufs.max_datagram;
        let buf = &mut bufs.data[start..start + bufs.max_datagram];
        let result = recv_msg(fd, buf, &mut control, flags, &mut sink);
        bufs.controls[n] = control;
        bufs.slots[n].control = sink;
        match result {
            Ok((len, msg_flags)) => {
                bufs.slots[n].len = len;
                bufs.slots[n].flags = msg_flags;
                n += 1;
                bufs.filled = n;
            }
            Err(e) if n > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
