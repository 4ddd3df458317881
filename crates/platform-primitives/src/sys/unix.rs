//! POSIX calls that Linux and macOS share: socket addresses, non-blocking connect probes,
//! `sendmsg`/`recvmsg` with ancillary data, `mmap`, `fsync` and `clock_gettime`.
//!
//! Everything here returns owned, typed values: a received descriptor becomes an [`OwnedFd`]
//! the moment it is seen, so no path through this module can leak one.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::time::Duration;

use crate::creds::Credentials;

/// A `SOL_SOCKET` option of the socket `fd`, of type `T` (a plain-old-data option type:
/// `c_int`, `ucred`).
pub(crate) fn getsockopt<T>(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<T> {
    // SAFETY: the option types used here (ucred, c_int) are plain old data.
    let mut value: T = unsafe { zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes; the kernel writes at most that many.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// What a connect attempt says about the socket bound at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Something accepted (or queued) the connection: a process is serving the path.
    Live,
    /// The inode is a socket nobody is bound to any more.
    Stale,
    /// The path vanished between the caller's look and the probe.
    Gone,
}

/// The longest path `sockaddr_un` can hold, excluding the terminating NUL.
pub(crate) fn max_socket_path_len() -> usize {
    // SAFETY: sockaddr_un is plain old data; the all-zero value is valid and is only measured.
    let addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_path.len() - 1
}

/// Builds a filesystem `sockaddr_un`; the caller has checked the length.
fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > max_socket_path_len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: sockaddr_un is plain old data and all-zero is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Connects a fresh non-blocking socket of the given type to `path` and classifies the answer.
///
/// Non-blocking, so a live listener whose backlog is full answers `EAGAIN` at once instead of
/// hanging the caller; that, like a socket of the other type (`EPROTOTYPE`), counts as live.
pub(crate) fn probe_socket(path: &Path, stream: bool) -> io::Result<Probe> {
    let ty = if stream {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    let fd = super::os::socket_cloexec(ty, true)?;
    let (addr, len) = sockaddr_un(path)?;
    // SAFETY: `fd` is a valid socket we own; `addr` is an initialized sockaddr_un of `len` bytes
    // that lives across the call.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc == 0 {
        return Ok(Probe::Live);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => Ok(Probe::Stale),
        Some(libc::ENOENT) => Ok(Probe::Gone),
        Some(libc::EAGAIN | libc::EINPROGRESS | libc::EPROTOTYPE) => Ok(Probe::Live),
        _ => Err(err),
    }
}

/// `fsync(2)` on any descriptor (used for directories, which `File::sync_all` does not cover
/// portably: on macOS it issues `F_FULLFSYNC`, which directories reject).
pub(crate) fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fsync only reads the descriptor number, which `fd` keeps open for the call.
    let rc = unsafe { libc::fsync(fd.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes (`exclusive`) or releases an advisory `flock` on a descriptor, waiting if needed.
pub(crate) fn flock(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<()> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_UN
    };
    loop {
        // SAFETY: flock only reads the descriptor number, kept open by `fd` for the call.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Aligned storage for `cmsghdr` records. Backed by `u64` words, which satisfies the header
/// alignment of both Linux (`size_t`) and macOS (`u32`).
#[derive(Debug, Default)]
pub(crate) struct ControlBuf {
    words: Vec<u64>,
}

impl ControlBuf {
    /// Room for `fds` descriptors in one `SCM_RIGHTS` record plus `extra` bytes of other records.
    pub(crate) fn new(fds: usize, extra: usize) -> Self {
        let bytes = cmsg_space(fds * size_of::<RawFd>()) + extra;
        Self {
            words: vec![0; bytes.div_ceil(size_of::<u64>())],
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.words.len() * size_of::<u64>()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.words.as_mut_ptr().cast()
    }

    /// The buffer as bytes.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: the words are initialized, any byte pattern is a valid u8, and the slice
        // covers exactly the vector's storage, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// `CMSG_SPACE` for a payload of `payload` bytes.
pub(crate) fn cmsg_space(payload: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(payload as libc::c_uint) as usize }
}

/// What the ancillary data of one message carried, every descriptor already owned.
#[derive(Debug, Default)]
pub(crate) struct ControlSink {
    /// Kernel-attested sender credentials (`SCM_CREDENTIALS`).
    pub(crate) creds: Option<Credentials>,
    /// A pidfd of the sender (`SCM_PIDFD`).
    pub(crate) pidfd: Option<OwnedFd>,
    /// The errno the kernel put in the `SCM_PIDFD` record instead of a descriptor.
    pub(crate) pidfd_errno: Option<i32>,
    /// Descriptors passed with `SCM_RIGHTS`, in order.
    pub(crate) fds: Vec<OwnedFd>,
}

impl ControlSink {
    /// Drops (and so closes) everything a previous message left here, keeping the capacity.
    pub(crate) fn clear(&mut self) {
        self.creds = None;
        self.pidfd = None;
        self.pidfd_errno = None;
        self.fds.clear();
    }
}

/// Walks the control records of a received `msghdr` and moves their contents into `sink`.
///
/// # Safety
/// `msg` must describe a message just filled in by `recvmsg`/`recvmmsg`: `msg_control` points to
/// at least `msg_controllen` initialized bytes that hold kernel-written `cmsghdr` records, and
/// every descriptor in them is open and owned by nobody else.
pub(crate) unsafe fn take_control(msg: &libc::msghdr, sink: &mut ControlSink) {
    // SAFETY: the caller guarantees `msg` describes a kernel-filled control buffer.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null records returned by CMSG_FIRSTHDR/CMSG_NXTHDR lie inside the buffer.
        let hdr = unsafe { ptr::read_unaligned(cmsg) };
        let payload_len = (hdr.cmsg_len as usize).saturating_sub(cmsg_len(0));
        // SAFETY: CMSG_DATA of an in-bounds record points just past its header.
        let data = unsafe { libc::CMSG_DATA(cmsg) }.cast_const();
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: the record holds `payload_len` kernel-written bytes starting at `data`.
            let payload = unsafe { std::slice::from_raw_parts(data, payload_len) };
            for raw in payload.chunks_exact(size_of::<RawFd>()) {
                let raw = RawFd::from_ne_bytes(raw.try_into().expect("chunk of fd size"));
                // A negative number is never a descriptor (the kernel stops at the first one it
                // cannot install and sets MSG_CTRUNC; this guards against any that write an errno).
                if raw < 0 {
                    continue;
                }
                // SAFETY: the kernel installed this non-negative descriptor for us; nobody else
                // owns it.
                sink.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        } else {
            // SAFETY: `data` points to `payload_len` kernel-written bytes of this record, and any
            // descriptor in it is ours, as the caller guarantees.
            unsafe { super::os::take_os_cmsg(&hdr, data, payload_len, sink) };
        }
        // SAFETY: `cmsg` is a valid record of `msg`; NXTHDR returns the next one or null.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}

/// `CMSG_LEN` for a payload of `payload` bytes.
fn cmsg_len(payload: usize) -> usize {
    // SAFETY: CMSG_LEN is pure arithmetic on its argument.
    unsafe { libc::CMSG_LEN(payload as libc::c_uint) as usize }
}

/// Sends `data` with `fds` attached as one `SCM_RIGHTS` record on a connected socket.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let payload = std::mem::size_of_val(fds);
    let mut control = ControlBuf::new(fds.len(), 0);
    // SAFETY: msghdr is plain old data; all-zero is an empty message.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        // SAFETY: cmsghdr is plain old data; all-zero is a valid value to fill in.
        let mut hdr: libc::cmsghdr = unsafe { zeroed() };
        hdr.cmsg_level = libc::SOL_SOCKET;
        hdr.cmsg_type = libc::SCM_RIGHTS;
        hdr.cmsg_len = cmsg_len(payload) as _;
        let bytes = control.bytes_mut();
        let header = cmsg_len(0);
        // SAFETY: the buffer is u64-aligned (enough for cmsghdr) and at least CMSG_SPACE(payload)
        // bytes long, so the header fits at its start.
        unsafe { ptr::write(bytes.as_mut_ptr().cast::<libc::cmsghdr>(), hdr) };
        for (slot, fd) in bytes[header..header + payload]
            .chunks_exact_mut(size_of::<RawFd>())
            .zip(fds)
        {
            slot.copy_from_slice(&fd.as_raw_fd().to_ne_bytes());
        }
        msg.msg_control = control.as_mut_ptr();
        msg.msg_controllen = cmsg_space(payload) as _;
    }
    // SAFETY: `msg` points to live iovec and control buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const msg, super::os::SEND_FLAGS) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `recvmsg(2)` into `buf`, with ancillary data moved into `sink`.
///
/// Returns the byte count the kernel reported and the message flags (`MSG_TRUNC`,
/// `MSG_CTRUNC`). Received descriptors are close-on-exec.
pub(crate) fn recv_msg(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut ControlBuf,
    flags: libc::c_int,
    sink: &mut ControlSink,
) -> io::Result<(usize, libc::c_int)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is an empty message.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr();
    msg.msg_controllen = control.len() as _;
    let flags = flags | super::os::RECV_CLOEXEC;
    // SAFETY: `msg` points to `buf` and `control`, both live and writable for their lengths.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: recvmsg succeeded, so the kernel wrote `msg_controllen` bytes of records whose
    // descriptors now belong to this process and to nobody else.
    unsafe { take_control(&msg, sink) };
    super::os::after_receive(sink)?;
    Ok((n as usize, msg.msg_flags))
}

/// A private anonymous read-write mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value: `&Mapping` hands out only `&[u8]`
// and `&mut [u8]` needs `&mut Mapping`, so Rust's aliasing rules carry across threads.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes (a multiple of the page size) at a kernel-chosen address.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        Self::with_flags(len, super::os::MAP_NORESERVE)
    }

    /// Maps `len` bytes with `MAP_PRIVATE | MAP_ANONYMOUS | extra` at a kernel-chosen address.
    pub(crate) fn with_flags(len: usize, extra: libc::c_int) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address aliases nothing.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(addr.cast())
            .ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))?;
        Ok(Self { ptr, len })
    }

    /// Keeps `len` bytes starting `head` bytes in and unmaps the rest. Both must be multiples
    /// of the page size and lie within the mapping.
    pub(crate) fn trim(self, head: usize, len: usize) -> Self {
        assert!(head + len <= self.len, "trim outside the mapping");
        let this = std::mem::ManuallyDrop::new(self);
        let (base, total) = (this.ptr.as_ptr(), this.len);
        let tail = total - head - len;
        if head > 0 {
            // SAFETY: `base..base+head` is a page-aligned head of the mapping owned by `this`,
            // which is consumed here and has handed out no reference.
            unsafe { libc::munmap(base.cast(), head) };
        }
        if tail > 0 {
            let tail_start = base.wrapping_add(head + len);
            // SAFETY: as above, for the page-aligned tail `tail_start..tail_start+tail`.
            unsafe { libc::munmap(tail_start.cast(), tail) };
        }
        Self {
            ptr: NonNull::new(base.wrapping_add(head)).expect("inside a non-null mapping"),
            len,
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a live read-write mapping owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range is the mapping this value owns; no reference outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The host page size in bytes.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Reads clock `id` as a duration since that clock's epoch.
pub(crate) fn clock_gettime(id: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(id, &raw mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The calling process's real user id.
pub(crate) fn getuid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The calling process's real group id.
pub(crate) fn getgid() -> u32 {
    // SAFETY: getgid cannot fail and touches no memory.
    unsafe { libc::getgid() }
}

/// One received datagram's bookkeeping inside a batch.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The length the kernel reported: the datagram's real length where the OS can tell it
    /// (Linux, via `MSG_TRUNC`), else the bytes copied.
    pub(crate) len: usize,
    /// `msg_flags` of the message (`MSG_TRUNC`, `MSG_CTRUNC`).
    pub(crate) flags: libc::c_int,
    /// Its ancillary data.
    pub(crate) control: ControlSink,
    /// How many `SCM_RIGHTS` descriptors it carried (closed by the receiver).
    pub(crate) closed_fds: usize,
}

/// The buffers of a datagram batch: one data area and one control area per slot, reused by
/// every receive so the steady state allocates nothing.
#[derive(Debug)]
pub(crate) struct BatchBuffers {
    pub(crate) data: Vec<u8>,
    pub(crate) max_datagram: usize,
    pub(crate) controls: Vec<ControlBuf>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) filled: usize,
}

impl BatchBuffers {
    pub(crate) fn new(capacity: usize, max_datagram: usize, fds: usize, extra: usize) -> Self {
        Self {
            data: vec![0; capacity * max_datagram],
            max_datagram,
            controls: (0..capacity).map(|_| ControlBuf::new(fds, extra)).collect(),
            slots: (0..capacity)
                .map(|_| Slot {
                    control: ControlSink {
                        fds: Vec::with_capacity(fds),
                        ..ControlSink::default()
                    },
                    ..Slot::default()
                })
                .collect(),
            filled: 0,
        }
    }

    /// Closes whatever the previous batch left unclaimed and marks every slot empty.
    pub(crate) fn reset(&mut self) {
        for slot in &mut self.slots[..self.filled] {
            slot.control.clear();
            slot.closed_fds = 0;
        }
        self.filled = 0;
    }
}

// ---- processes and descriptor flags -----------------------------------------------------------

/// `kill(pid, signal)`; `pid` is a plain positive process id (the caller has refused 0 and
/// anything that would name a group).
pub(crate) fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory.
    if unsafe { libc::kill(pid, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets (`on`) or clears `flag` in the descriptor flags (`F_GETFD`/`F_SETFD`) or the status
/// flags (`F_GETFL`/`F_SETFL`) of `fd`.
pub(crate) fn update_fd_flag(
    fd: BorrowedFd<'_>,
    get: libc::c_int,
    set: libc::c_int,
    flag: libc::c_int,
    on: bool,
) -> io::Result<()> {
    // SAFETY: `fd` is open for the call; F_GETFD/F_GETFL take no argument.
    let old = unsafe { libc::fcntl(fd.as_raw_fd(), get) };
    if old < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on { old | flag } else { old & !flag };
    if new == old {
        return Ok(());
    }
    // SAFETY: as above; F_SETFD/F_SETFL take the flags as an integer.
    if unsafe { libc::fcntl(fd.as_raw_fd(), set, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of descriptor `raw`, inherited at exec (`LISTEN_FDS`), marking it
/// close-on-exec. Fails if it is not open.
///
/// The caller guarantees that nothing else in the process owns `raw` (the service manager's
/// descriptors are taken once, before anything else is opened).
pub(crate) fn take_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD takes no argument; it only reports whether `raw` is open.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is open, and by the caller's guarantee owned by nobody else in this
    // process: it was passed at exec and is taken once.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    update_fd_flag(
        std::os::fd::AsFd::as_fd(&fd),
        libc::F_GETFD,
        libc::F_SETFD,
        libc::FD_CLOEXEC,
        true,
    )?;
    Ok(fd)
}

// ---- signal sets ----------------------------------------------------------------------------

/// A signal set holding `signals`.
pub(crate) fn sigset(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes the set it is given.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigemptyset succeeded, so the set is initialized.
    let mut set = unsafe { set.assume_init() };
    for &signal in signals {
        // SAFETY: `set` is an initialized signal set.
        if unsafe { libc::sigaddset(&raw mut set, signal) } < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{signal} is not a signal number"),
            ));
        }
    }
    Ok(set)
}

/// Adds `set` to the calling thread's blocked signals.
pub(crate) fn block_signals(set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `set` is initialized; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Takes one signal of `set`, waiting until one is pending.
pub(crate) fn sigwait(set: &libc::sigset_t) -> io::Result<libc::c_int> {
    let mut signal = 0;
    // SAFETY: the set is initialized and `signal` is a writable integer.
    let rc = unsafe { libc::sigwait(set, &raw mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(signal)
}

/// Whether one of `signals` is pending for the process or this thread (where there is no
/// `sigtimedwait`).
#[cfg(not(target_os = "linux"))]
pub(crate) fn any_pending(signals: &[libc::c_int]) -> io::Result<bool> {
    let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given.
    if unsafe { libc::sigpending(pending.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigpending succeeded, so the set is initialized.
    let pending = unsafe { pending.assume_init() };
    Ok(signals
        .iter()
        // SAFETY: `pending` is an initialized set; sigismember only reads it.
        .any(|&s| unsafe { libc::sigismember(&raw const pending, s) } == 1))
}
