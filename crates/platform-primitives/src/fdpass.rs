//! Passing file descriptors between processes with `SCM_RIGHTS`.
//!
//! Descriptors cross a Unix socket as ancillary data attached to at least one byte of payload.
//! What arrives is returned as [`OwnedFd`]s, close-on-exec, so dropping the result closes them;
//! descriptors beyond the receiver's `max_fds` are closed by the kernel and reported through
//! [`ReceivedFds::control_truncated`].
//!
//! ```
//! use std::os::fd::AsFd;
//! use std::os::unix::net::UnixStream;
//! use platform_primitives::fdpass::{recv_with_fds, send_with_fds};
//!
//! let (a, b) = UnixStream::pair()?;
//! let file = std::fs::File::open("/dev/null")?;
//! send_with_fds(&a, b"here", &[file.as_fd()])?;
//!
//! let mut buf = [0u8; 16];
//! let got = recv_with_fds(&b, &mut buf, 4)?;
//! assert_eq!(&buf[..got.len], b"here");
//! assert_eq!(got.fds.len(), 1);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::unix::{self, ControlBuf, ControlSink};

/// The most descriptors one message may carry (Linux's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// Sends `data` with `fds` attached on a connected socket; returns the bytes sent.
///
/// `data` must not be empty when `fds` is not: descriptors travel with payload bytes.
pub fn send_with_fds(sock: &impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if !fds.is_empty() && data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors need at least one byte of payload to travel with",
        ));
    }
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message; the limit is {MAX_FDS_PER_MESSAGE}",
                fds.len()
            ),
        ));
    }
    unix::send_with_fds(sock.as_fd(), data, fds)
}

/// What [`recv_with_fds`] received.
#[derive(Debug)]
pub struct ReceivedFds {
    /// Bytes written to the buffer (0 on a stream means the peer closed).
    pub len: usize,
    /// Descriptors that came with the message, in order, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The message was longer than the buffer (datagram sockets; `MSG_TRUNC`).
    pub truncated: bool,
    /// More descriptors arrived than `max_fds`; the kernel closed the excess (`MSG_CTRUNC`).
    pub control_truncated: bool,
}

/// Receives one message into `buf` together with up to `max_fds` descriptors.
pub fn recv_with_fds(sock: &impl AsFd, buf: &mut [u8], max_fds: usize) -> io::Result<ReceivedFds> {
    let max_fds = max_fds.clamp(1, MAX_FDS_PER_MESSAGE);
    let mut control = ControlBuf::new(max_fds, 0);
    let mut sink = ControlSink {
        fds: Vec::with_capacity(max_fds),
        ..ControlSink::default()
    };
    let (len, flags) = unix::recv_msg(sock.as_fd(), buf, &mut control, 0, &mut sink)?;
    Ok(ReceivedFds {
        len: len.min(buf.len()),
        fds: sink.fds,
        truncated: flags & libc::MSG_TRUNC != 0,
        control_truncated: flags & libc::MSG_CTRUNC != 0,
    })
}
