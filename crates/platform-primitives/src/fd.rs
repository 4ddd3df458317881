//! Descriptor flags: non-blocking mode and close-on-exec, set or cleared in one call each; and
//! a socket's integer options, read.
//!
//! `O_NONBLOCK` belongs to the open file description, so it is shared by every duplicate of
//! the descriptor (including one held by another process); `FD_CLOEXEC` belongs to the
//! descriptor alone. Both are read and written back (`F_GETFL`/`F_SETFL`, `F_GETFD`/`F_SETFD`)
//! so no other flag is disturbed, and nothing is written when the flag already has the value.
//!
//! ```
//! use std::os::fd::AsFd;
//! use platform_primitives::fd;
//!
//! let (reader, _writer) = std::io::pipe()?;
//! fd::set_nonblocking(reader.as_fd(), true)?;
//! let mut byte = [0u8; 1];
//! let err = std::io::Read::read(&mut &reader, &mut byte).expect_err("nothing to read");
//! assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys;

/// Sets (`true`) or clears `O_NONBLOCK` on the open file description behind `fd`.
///
/// # Errors
///
/// What `fcntl(2)` reports (`EBADF` for a descriptor that is not open).
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    sys::unix::update_fd_flag(fd, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK, on)
}

/// Sets (`true`) or clears `FD_CLOEXEC` on `fd`.
///
/// # Errors
///
/// What `fcntl(2)` reports.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    sys::unix::update_fd_flag(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC, on)
}

/// An integer `SOL_SOCKET` option of the socket `fd` (`SO_TYPE`, `SO_PASSCRED`, and on Linux
/// `SO_DOMAIN`): what a descriptor handed over by another process (socket activation, say) is.
///
/// ```
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixDatagram;
/// use platform_primitives::fd;
///
/// let (a, _b) = UnixDatagram::pair()?;
/// assert_eq!(fd::socket_option(a.as_fd(), libc::SO_TYPE)?, libc::SOCK_DGRAM);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// What `getsockopt(2)` reports (`ENOTSOCK` for a descriptor that is no socket).
pub fn socket_option(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<libc::c_int> {
    sys::unix::getsockopt(fd, name)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use super::*;

    /// The `flags:` of `/proc/self/fdinfo/<fd>`: the status flags, with `O_CLOEXEC` standing
    /// for `FD_CLOEXEC`.
    fn flags(fd: BorrowedFd<'_>) -> libc::c_int {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
            .expect("fdinfo");
        let octal = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .expect("a flags line")
            .trim();
        libc::c_int::from_str_radix(octal, 8).expect("octal flags")
    }

    #[test]
    fn flags_are_set_and_cleared_without_touching_others() {
        let (r, _w) = std::io::pipe().expect("pipe");
        let before = flags(r.as_fd());
        set_nonblocking(r.as_fd(), true).expect("set");
        assert_eq!(flags(r.as_fd()), before | libc::O_NONBLOCK);
        set_nonblocking(r.as_fd(), false).expect("clear");
        assert_eq!(flags(r.as_fd()), before & !libc::O_NONBLOCK);

        set_cloexec(r.as_fd(), false).expect("clear");
        assert_eq!(flags(r.as_fd()) & libc::O_CLOEXEC, 0);
        set_cloexec(r.as_fd(), true).expect("set");
        assert_ne!(flags(r.as_fd()) & libc::O_CLOEXEC, 0);
    }
}
