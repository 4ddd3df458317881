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
