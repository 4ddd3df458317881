//! Linux-only calls: `SOCK_CLOEXEC` sockets, `SO_PEERCRED`/`SO_PEERPIDFD`, `SO_PASSCRED`/
//! `SO_PASSPIDFD` with their control records, `recvmmsg`, `/proc` thread counting and
//! `CLOCK_BOOTTIME`.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

use super::unix::{BatchBuffers, ControlSink, getsockopt, take_control};
use crate::creds::Credentials;

/// `SCM_PIDFD` from `include/linux/socket.h` (Linux 6.5); the `libc` crate does not define it.
const SCM_PIDFD: libc::c_int = 4;

pub(crate) const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
pub(crate) const RECV_CLOEXEC: libc::c_int = libc::MSG_CMSG_CLOEXEC;
pub(crate) const MAP_NORESERVE: libc::c_int = libc::MAP_NORESERVE;
/// Flags for a mapping of 2 MiB hugetlb pages, reserved from the pool when it is made.
pub(crate) const MAP_HUGE_2MIB: Option<libc::c_int> = Some(libc::MAP_HUGETLB | libc::MAP_HUGE_2MB);
pub(crate) const CLOCK_MONOTONIC: libc::clockid_t = libc::CLOCK_MONOTONIC;
pub(crate) const CLOCK_BOOTTIME: Option<libc::clockid_t> = Some(libc::CLOCK_BOOTTIME);
/// Control-buffer room a credentials-and-pidfd datagram needs besides its `SCM_RIGHTS` record.
pub(crate) const CREDENTIALS_CONTROL_SPACE: usize =
    // Written out because `cmsg_space` is not const: CMSG_SPACE(12) + CMSG_SPACE(4) = 32 + 24.
    56;

const _: () = assert!(size_of::<libc::ucred>() == 12);
const _: () = assert!(size_of::<libc::cmsghdr>() == 16);

/// A new `AF_UNIX` socket of type `ty`, close-on-exec, optionally non-blocking.
pub(crate) fn socket_cloexec(ty: libc::c_int, nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty | flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Descriptors arrive close-on-exec through `MSG_CMSG_CLOEXEC`: nothing left to do.
pub(crate) fn after_receive(_sink: &mut ControlSink) -> io::Result<()> {
    Ok(())
}

/// Handles the Linux-only control records: credentials and the sender's pidfd.
///
/// # Safety
/// `data` must point to `len` readable bytes of the record `hdr` describes, written by the kernel
/// in this receive; a descriptor in it must be owned by nobody else.
pub(crate) unsafe fn take_os_cmsg(
    hdr: &libc::cmsghdr,
    data: *const u8,
    len: usize,
    sink: &mut ControlSink,
) {
    if hdr.cmsg_level != libc::SOL_SOCKET {
        return;
    }
    match hdr.cmsg_type {
        libc::SCM_CREDENTIALS if len >= size_of::<libc::ucred>() => {
            // SAFETY: the record holds at least one ucred; read_unaligned tolerates alignment.
            let cred = unsafe { ptr::read_unaligned(data.cast::<libc::ucred>()) };
            sink.creds = Some(Credentials {
                pid: cred.pid as u32,
                uid: cred.uid,
                gid: cred.gid,
            });
        }
        SCM_PIDFD if len >= size_of::<libc::c_int>() => {
            // SAFETY: the record holds one descriptor number.
            let raw = unsafe { ptr::read_unaligned(data.cast::<libc::c_int>()) };
            if raw < 0 {
                // The kernel could not install a pidfd (-EMFILE with a full descriptor table,
                // -ESRCH for a sender already reaped) and wrote the negated errno instead.
                sink.pidfd_errno = Some(raw.saturating_neg());
            } else {
                // SAFETY: the kernel installed this non-negative pidfd for us during this
                // receive; nobody else owns it.
                sink.pidfd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        _ => {}
    }
}

fn setsockopt_int(fd: BorrowedFd<'_>, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The credentials the kernel recorded for a connected stream peer (`SO_PEERCRED`).
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<Credentials> {
    let cred: libc::ucred = getsockopt(fd, libc::SO_PEERCRED)?;
    Ok(Credentials {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// A pidfd for a connected stream peer (`SO_PEERPIDFD`, Linux 6.5).
pub(crate) fn peer_pidfd(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let raw: libc::c_int = getsockopt(fd, libc::SO_PEERPIDFD)?;
    // SAFETY: on success the kernel installed a new pidfd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Asks for credentials (and, where the kernel has it, a pidfd) on every received datagram.
/// Returns whether pidfds will arrive.
pub(crate) fn enable_credentials(fd: BorrowedFd<'_>) -> io::Result<bool> {
    setsockopt_int(fd, libc::SO_PASSCRED, 1)?;
    match setsockopt_int(fd, libc::SO_PASSPIDFD, 1) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOPROTOOPT | libc::EINVAL)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends `data` on a connected socket with explicit `SCM_CREDENTIALS`.
pub(crate) fn send_with_credentials(
    fd: BorrowedFd<'_>,
    data: &[u8],
    creds: Credentials,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let ucred = libc::ucred {
        pid: creds.pid as libc::pid_t,
        uid: creds.uid,
        gid: creds.gid,
    };
    let mut control =
        super::unix::ControlBuf::new(0, super::unix::cmsg_space(size_of::<libc::ucred>()));
    let bytes = control.bytes_mut();
    // SAFETY: cmsghdr is plain old data; all-zero is a valid value to fill in.
    let mut hdr: libc::cmsghdr = unsafe { zeroed() };
    hdr.cmsg_level = libc::SOL_SOCKET;
    hdr.cmsg_type = libc::SCM_CREDENTIALS;
    // SAFETY: CMSG_LEN is pure arithmetic.
    hdr.cmsg_len = unsafe { libc::CMSG_LEN(size_of::<libc::ucred>() as u32) } as usize;
    // SAFETY: the buffer is u64-aligned and holds CMSG_SPACE(sizeof ucred) bytes, so the header
    // fits at its start.
    unsafe { ptr::write(bytes.as_mut_ptr().cast::<libc::cmsghdr>(), hdr) };
    // The payload (struct ucred: pid, uid, gid as native-endian 32-bit words) follows the
    // header.
    let header = size_of::<libc::cmsghdr>();
    let words = [ucred.pid as u32, ucred.uid, ucred.gid];
    for (i, word) in words.iter().enumerate() {
        bytes[header + 4 * i..header + 4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    // SAFETY: msghdr is plain old data; all-zero is an empty message.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr();
    msg.msg_controllen = super::unix::cmsg_space(size_of::<libc::ucred>());
    // SAFETY: `msg` points to a live iovec and control buffer for the duration of the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo`; `None` once the process has exited.
pub(crate) fn pidfd_pid(fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let pid = info
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a pidfd"))?
        .trim();
    Ok(pid.parse::<u32>().ok())
}

/// How many threads this process has, from `/proc/self/task`.
pub(crate) fn thread_count() -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// The `mmsghdr`/`iovec` arrays `recvmmsg` fills, kept between receives.
#[derive(Debug)]
pub(crate) struct BatchScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers inside point only into the `BatchBuffers` this scratch is paired
// with, are rewritten before every `recvmmsg`, and are never dereferenced in between, so moving
// the scratch to another thread together with its buffers is sound.
unsafe impl Send for BatchScratch {}

impl BatchScratch {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            // SAFETY: mmsghdr and iovec are plain old data; all-zero values are valid.
            hdrs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            // SAFETY: as above.
            iovs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
        }
    }
}

/// Receives up to one batch of datagrams with one `recvmmsg(2)`.
///
/// Blocking waits for the first datagram (`MSG_WAITFORONE`) and then takes whatever else is
/// queued; non-blocking returns `WouldBlock` when nothing is. `MSG_TRUNC` makes the kernel report
/// each datagram's real length.
pub(crate) fn recv_batch(
    bufs: &mut BatchBuffers,
    scratch: &mut BatchScratch,
    fd: BorrowedFd<'_>,
    wait: bool,
) -> io::Result<usize> {
    bufs.reset();
    let cap = bufs.slots.len();
    let data = bufs.data.as_mut_ptr();
    for i in 0..cap {
        scratch.iovs[i] = libc::iovec {
            // SAFETY: slot `i` starts `i * max_datagram` bytes into a buffer of
            // `cap * max_datagram` bytes.
            iov_base: unsafe { data.add(i * bufs.max_datagram) }.cast(),
            iov_len: bufs.max_datagram,
        };
        let hdr = &mut scratch.hdrs[i];
        hdr.msg_len = 0;
        hdr.msg_hdr.msg_name = ptr::null_mut();
        hdr.msg_hdr.msg_namelen = 0;
        hdr.msg_hdr.msg_iov = &raw mut scratch.iovs[i];
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_control = bufs.controls[i].as_mut_ptr();
        hdr.msg_hdr.msg_controllen = bufs.controls[i].len();
        hdr.msg_hdr.msg_flags = 0;
    }
    let flags = libc::MSG_CMSG_CLOEXEC
        | libc::MSG_TRUNC
        | if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
    // SAFETY: every header points to a live iovec and control buffer of the stated lengths,
    // all owned by `bufs`/`scratch` and untouched until the call returns.
    let n = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            scratch.hdrs.as_mut_ptr(),
            cap as libc::c_uint,
            flags,
            ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for i in 0..n {
        let hdr = &scratch.hdrs[i];
        let slot = &mut bufs.slots[i];
        slot.len = hdr.msg_len as usize;
        slot.flags = hdr.msg_hdr.msg_flags;
        // SAFETY: recvmmsg filled message `i`, including `msg_controllen` bytes of records
        // whose descriptors now belong to this process alone.
        unsafe { take_control(&hdr.msg_hdr, &mut slot.control) };
    }
    bufs.filled = n;
    Ok(n)
}

/// `pidfd_send_signal(pidfd, signal, NULL, 0)` (Linux 5.1).
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo is allowed (the kernel fills in SI_USER); flags must be 0; the
    // descriptor is open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes one signal of `set`, waiting at most `timeout` (`sigtimedwait`); `None` if none came.
pub(crate) fn sigtimedwait(
    set: &libc::sigset_t,
    timeout: std::time::Duration,
) -> io::Result<Option<libc::c_int>> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` and `ts` are valid for the call; no siginfo is asked for.
    let signal = unsafe { libc::sigtimedwait(set, ptr::null_mut(), &raw const ts) };
    if signal >= 0 {
        return Ok(Some(signal));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // The deadline passed, or a signal outside the set interrupted the wait (the caller
        // keeps its own deadline).
        Some(libc::EAGAIN | libc::EINTR) => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::unix::cmsg_space;

    #[test]
    fn credentials_control_space_matches_cmsg_space() {
        assert_eq!(
            CREDENTIALS_CONTROL_SPACE,
            cmsg_space(size_of::<libc::ucred>()) + cmsg_space(size_of::<libc::c_int>())
        );
    }
}
