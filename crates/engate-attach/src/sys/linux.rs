//! Opening a pseudo-terminal pair on Linux with both ends close-on-exec from the start.
//!
//! `openpty(3)` returns descriptors without `O_CLOEXEC`, so a program spawned by another thread
//! between the open and a later `fcntl` would inherit the slave, and the master would then not
//! see end-of-file when our own program exits. Linux opens both ends atomically close-on-exec:
//! `posix_openpt(O_CLOEXEC)` for the master and `TIOCGPTPEER` for the slave.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Opens a pty pair: `(master, slave)`, both close-on-exec.
pub(crate) fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: posix_openpt takes flags only; a non-negative result is a new descriptor.
    let fd = unsafe { libc::posix_openpt(flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by posix_openpt and is owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `master` is an open ptmx descriptor for the duration of the call.
    if unsafe { libc::grantpt(master.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `master` is an open, unlocked ptmx descriptor; TIOCGPTPEER takes open flags as an
    // integer and returns a new descriptor for the slave side.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the ioctl and is owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((master, slave))
}

/// Lowers the calling thread's priority by `steps` nice levels (to at most 19): Linux keeps a
/// nice value per thread, so the rest of the process keeps its own.
pub(crate) fn lower_thread_priority(steps: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    let id = libc::id_t::try_from(tid).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // getpriority may return -1 as a value: errno tells an error apart.
    // SAFETY: __errno_location takes no arguments; it returns this thread's errno.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: `errno` points at this thread's errno, valid while the thread lives; clearing
    // it is how getpriority's caller tells an error from a value of -1.
    unsafe { *errno = 0 };
    // SAFETY: PRIO_PROCESS with a thread id queries that thread's nice value.
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, id) };
    if now == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(0) {
            return Err(e);
        }
    }
    // SAFETY: as above; raising one's own nice value needs no privilege.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, id, (now + steps).min(19)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
