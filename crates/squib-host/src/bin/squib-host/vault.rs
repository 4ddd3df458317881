//! The channel between the keeper and the pager process: JSON datagrams, with descriptors
//! attached where a message carries them.
//!
//! The keeper starts the pager with one end of a datagram socket pair as its standard input.
//! At start it sends `{"op":"api"}` with the API listener, one `{"op":"adopt",…}` per kept
//! session with its uffd, pidfd and connection, then `{"op":"end"}`. The pager sends
//! `{"op":"keep",…}` with those three descriptors for each new session, `{"op":"forget",…}`
//! when one ends, and `{"op":"upgrade"}` before it exits to make way for a new binary.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use platform_primitives::fdpass::{recv_with_fds, send_with_fds};
use serde_json::Value;

/// Largest message.
const MAX_MESSAGE: usize = 64 << 10;

/// One message and the descriptors that came with it.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) body: Value,
    pub(crate) fds: Vec<OwnedFd>,
}

pub(crate) fn send(sock: &UnixDatagram, body: &Value, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    send_with_fds(sock, body.to_string().as_bytes(), fds).map(drop)
}

/// A buffer for [`recv`], made once per receiver.
pub(crate) fn buffer() -> Vec<u8> {
    vec![0u8; MAX_MESSAGE]
}

/// Receives one message into `buf` (from [`buffer`]), waiting at most `timeout` (`None`:
/// forever). `Ok(None)` on timeout.
pub(crate) fn recv(
    sock: &UnixDatagram,
    buf: &mut [u8],
    timeout: Option<Duration>,
) -> io::Result<Option<Message>> {
    sock.set_read_timeout(timeout)?;
    let got = match recv_with_fds(sock, buf, 4) {
        Ok(got) => got,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if got.len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other end of the vault closed",
        ));
    }
    let body = serde_json::from_slice(&buf[..got.len])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some(Message { body, fds: got.fds }))
}

/// Borrows every descriptor of a list.
pub(crate) fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}
