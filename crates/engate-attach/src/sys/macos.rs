//! Opening a pseudo-terminal pair on macOS.
//!
//! macOS has no atomic close-on-exec open for the slave side, so `openpty(3)` is followed by
//! `FD_CLOEXEC` on both ends; a program spawned by another thread in between could inherit
//! them (the window is a few instructions long).

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::ptr;

/// Opens a pty pair: `(master, slave)`, both close-on-exec.
pub(crate) fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: `master` and `slave` are valid out-pointers for the call; the name, termios and
    // winsize arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &raw mut master,
            &raw mut slave,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded: `master` is a new descriptor owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: likewise for `slave`.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    platform_primitives::fd::set_cloexec(master.as_fd(), true)?;
    platform_primitives::fd::set_cloexec(slave.as_fd(), true)?;
    Ok((master, slave))
}

/// Lowers the calling thread's priority: not done on macOS, which has no per-thread nice
/// value (a QoS class would be its way); the thread keeps the default priority.
pub(crate) fn lower_thread_priority(_steps: i32) -> std::io::Result<()> {
    Ok(())
}
