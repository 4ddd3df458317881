//! Linux calls: the userfaultfd ABI, eventfd, poll, `SEEK_DATA`/`SEEK_HOLE`, signals aimed at
//! one thread or at a pidfd, and `madvise`.
//!
//! The userfaultfd structures and ioctl numbers are written out here from
//! `include/uapi/linux/userfaultfd.h` rather than generated (bindgen needs libclang, which a
//! fresh build machine lacks). Each structure is pinned with a compile-time size assert, and
//! each ioctl number is built with the same `_IOC` encoding the header uses, so a typo fails
//! the build instead of issuing the wrong request.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::linux::UffdEvent;

// ---- userfaultfd ABI -------------------------------------------------------------------------

/// `UFFD_API`: the only API version.
pub(crate) const UFFD_API: u64 = 0xAA;

pub(crate) const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub(crate) const UFFD_EVENT_REMAP: u8 = 0x14;
pub(crate) const UFFD_EVENT_REMOVE: u8 = 0x15;
pub(crate) const UFFD_EVENT_UNMAP: u8 = 0x16;

pub(crate) const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;

pub(crate) const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub(crate) const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
pub(crate) const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub(crate) const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// Linux 6.6: `UFFDIO_POISON`, which makes later accesses to a range raise `SIGBUS`.
pub(crate) const UFFD_FEATURE_POISON: u64 = 1 << 14;

pub(crate) const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub(crate) const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub(crate) const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffdio_poison` (Linux 6.6).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioPoison {
    range: UffdioRange,
    mode: u64,
    updated: i64,
}

/// `struct uffd_msg`: an event byte, seven reserved bytes, then a 24-byte union. The union is
/// kept as three words and decoded by [`UffdMsg::decode`]; the header packs the struct, but
/// every member already sits at its natural alignment, so `repr(C)` gives the same layout.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    arg: [u64; 3],
}

const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRange>() == 16);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioZeropage>() == 32);
const _: () = assert!(size_of::<UffdioPoison>() == 32);
const _: () = assert!(size_of::<UffdMsg>() == 32);

/// `_IOC(dir, type, nr, size)` as `include/uapi/asm-generic/ioctl.h` encodes it on x86_64 and
/// arm64: nr in bits 0–7, type in 8–15, size in 16–29, direction in 30–31.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const UFFDIO: u64 = 0xAA;

const USERFAULTFD_IOC_NEW: u64 = ioc(IOC_NONE, UFFDIO, 0x00, 0);
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x00,
    size_of::<UffdioRegister>(),
);
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, UFFDIO, 0x01, size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, UFFDIO, 0x02, size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x03, size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x04,
    size_of::<UffdioZeropage>(),
);
const UFFDIO_POISON: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x08,
    size_of::<UffdioPoison>(),
);
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x3F, size_of::<UffdioApi>());

// Spot checks against the values the C header produces.
const _: () = assert!(UFFDIO_API == 0xC018_AA3F);
const _: () = assert!(UFFDIO_REGISTER == 0xC020_AA00);
const _: () = assert!(UFFDIO_COPY == 0xC028_AA03);
const _: () = assert!(UFFDIO_WAKE == 0x8010_AA02);
const _: () = assert!(USERFAULTFD_IOC_NEW == 0xAA00);

impl UffdMsg {
    /// The event this message reports.
    pub(crate) fn decode(&self) -> UffdEvent {
        let [a, b, c] = self.arg;
        match self.event {
            UFFD_EVENT_PAGEFAULT => UffdEvent::PageFault {
                addr: b,
                write: a & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                tid: c as u32,
            },
            UFFD_EVENT_REMOVE => UffdEvent::Remove { start: a, end: b },
            UFFD_EVENT_UNMAP => UffdEvent::Unmap { start: a, end: b },
            UFFD_EVENT_REMAP => UffdEvent::Remap {
                from: a,
                to: b,
                len: c,
            },
            other => UffdEvent::Other(other),
        }
    }

    /// Encodes a page-fault message (for unit tests of the decoder).
    #[cfg(test)]
    pub(crate) fn page_fault(address: u64, tid: u32) -> Self {
        Self {
            event: UFFD_EVENT_PAGEFAULT,
            arg: [0, address, u64::from(tid)],
            ..Self::default()
        }
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a userfaultfd with the `userfaultfd(2)` system call.
pub(crate) fn userfaultfd_syscall(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: the userfaultfd system call takes one integer argument and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens a userfaultfd through `/dev/userfaultfd` (`USERFAULTFD_IOC_NEW`, Linux 6.1), which
/// the device's file mode governs instead of `vm.unprivileged_userfaultfd`.
pub(crate) fn userfaultfd_device(dev: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: USERFAULTFD_IOC_NEW takes an integer argument (the flags) and returns a new fd.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
    let fd = cvt(fd)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `UFFDIO_API`: requests `features`; returns (features granted, ioctls available).
pub(crate) fn uffd_api(uffd: BorrowedFd<'_>, features: u64) -> io::Result<(u64, u64)> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `api` is a valid uffdio_api the kernel reads and writes during the call.
    cvt(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API as _, &raw mut api) })?;
    Ok((api.features, api.ioctls))
}

/// `UFFDIO_REGISTER` in missing mode; returns the range ioctls available.
pub(crate) fn uffd_register(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<u64> {
    let mut reg = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `reg` is a valid uffdio_register the kernel reads and writes during the call; the
    // call changes how faults in the range are resolved, never memory the caller holds.
    cvt(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER as _, &raw mut reg) })?;
    Ok(reg.ioctls)
}

/// `UFFDIO_UNREGISTER`.
pub(crate) fn uffd_unregister(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut range = UffdioRange { start, len };
    // SAFETY: `range` is a valid uffdio_range the kernel reads during the call.
    cvt(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_UNREGISTER as _, &raw mut range) })?;
    Ok(())
}

/// `UFFDIO_WAKE`: wakes threads waiting on faults in the range.
pub(crate) fn uffd_wake(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut range = UffdioRange { start, len };
    // SAFETY: `range` is a valid uffdio_range the kernel reads during the call.
    cvt(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WAKE as _, &raw mut range) })?;
    Ok(())
}

/// The outcome of a `UFFDIO_COPY`/`UFFDIO_ZEROPAGE`: how many bytes were installed and the
/// error that stopped it, if any.
#[derive(Debug)]
pub(crate) struct Installed {
    /// Bytes installed from the start of the range (0 if none).
    pub(crate) bytes: u64,
    /// Why it stopped short (`EAGAIN`, `EEXIST`, ...), or `None` if the whole range was done.
    pub(crate) error: Option<io::Error>,
}

fn installed(rc: libc::c_int, reported: i64, len: u64) -> Installed {
    if rc == 0 {
        let bytes = if reported > 0 { reported as u64 } else { len };
        return if bytes >= len {
            Installed {
                bytes: len,
                error: None,
            }
        } else {
            Installed {
                bytes,
                error: Some(io::Error::from_raw_os_error(libc::EAGAIN)),
            }
        };
    }
    let errno = io::Error::last_os_error();
    // The count field holds the bytes done so far, or -errno if nothing was done.
    let bytes = if reported > 0 { reported as u64 } else { 0 };
    let error = if reported < 0 {
        io::Error::from_raw_os_error((-reported) as i32)
    } else {
        errno
    };
    Installed {
        bytes: bytes.min(len),
        error: Some(error),
    }
}

/// `UFFDIO_COPY` of `src` to `dst` (in the address space the uffd belongs to).
pub(crate) fn uffd_copy(uffd: BorrowedFd<'_>, dst: u64, src: &[u8], dontwake: bool) -> Installed {
    let mut copy = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: if dontwake {
            UFFDIO_COPY_MODE_DONTWAKE
        } else {
            0
        },
        copy: 0,
    };
    // SAFETY: `copy` is a valid uffdio_copy; `src` is readable for `len` bytes for the whole call
    // (the kernel copies from it); `dst` lies in the uffd's address space, where the kernel only
    // fills pages that are missing and rejects anything else.
    let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY as _, &raw mut copy) };
    installed(rc, copy.copy, src.len() as u64)
}

/// `UFFDIO_ZEROPAGE` over `[start, start + len)`.
pub(crate) fn uffd_zeropage(
    uffd: BorrowedFd<'_>,
    start: u64,
    len: u64,
    dontwake: bool,
) -> Installed {
    let mut zero = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: if dontwake {
            UFFDIO_ZEROPAGE_MODE_DONTWAKE
        } else {
            0
        },
        zeropage: 0,
    };
    // SAFETY: `zero` is a valid uffdio_zeropage the kernel reads and writes during the call; it
    // maps the zero page only where pages are missing.
    let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_ZEROPAGE as _, &raw mut zero) };
    installed(rc, zero.zeropage, len)
}

/// `UFFDIO_POISON` over `[start, start + len)`: later accesses raise `SIGBUS` (waiters wake).
pub(crate) fn uffd_poison(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Installed {
    let mut poison = UffdioPoison {
        range: UffdioRange { start, len },
        mode: 0,
        updated: 0,
    };
    // SAFETY: `poison` is a valid uffdio_poison the kernel reads and writes during the call.
    let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_POISON as _, &raw mut poison) };
    installed(rc, poison.updated, len)
}

/// Reads as many messages as are queued (non-blocking descriptor) into `buf`; returns the count
/// (0 when nothing is queued).
pub(crate) fn uffd_read(uffd: BorrowedFd<'_>, buf: &mut [UffdMsg]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for `size_of_val(buf)` bytes; UffdMsg is plain old data, so any
    // bytes the kernel writes form valid values.
    let n = unsafe {
        libc::read(
            uffd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(buf),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN) => Ok(0),
            _ => Err(err),
        };
    }
    Ok(n as usize / size_of::<UffdMsg>())
}

// ---- eventfd, poll ---------------------------------------------------------------------------

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes two integers and returns a new descriptor.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, waking its pollers.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 readable bytes from `one` to a descriptor we borrow.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
    if n < 0 {
        let err = io::Error::last_os_error();
        // A saturated counter still wakes pollers.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
    Ok(())
}

/// Resets an eventfd's counter.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into `v`; failure (EAGAIN: already zero) is harmless.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
}

/// Polls up to 8 descriptors for readability; returns a bit mask (bit `i`: `fds[i]` is
/// readable, hung up or in error). 0 on timeout or when a signal interrupted the wait.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<u32> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 8];
    let n = fds.len().min(pfds.len());
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd.as_raw_fd();
        p.events = libc::POLLIN;
    }
    let ms = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: `pfds` holds at least `n` valid pollfd structures the kernel reads and writes.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    let mut mask = 0;
    for (i, p) in pfds[..n].iter().enumerate() {
        if p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            mask |= 1 << i;
        }
    }
    Ok(mask)
}

// ---- files -----------------------------------------------------------------------------------

/// `lseek(fd, from, whence)` for `SEEK_DATA`/`SEEK_HOLE`; `None` on `ENXIO` (no more data).
fn seek(fd: BorrowedFd<'_>, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek takes integers only and does not touch memory.
    let off = unsafe { libc::lseek(fd.as_raw_fd(), from as libc::off_t, whence) };
    if off < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(off as u64))
}

/// The data extents of a file as `(start, end)` pairs, found with `SEEK_DATA`/`SEEK_HOLE`.
/// File systems without hole support report one extent covering the file.
pub(crate) fn data_extents(fd: BorrowedFd<'_>, file_len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut pos = 0;
    while pos < file_len {
        let Some(start) = seek(fd, pos, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(fd, start, libc::SEEK_HOLE)?.unwrap_or(file_len);
        let end = end.min(file_len);
        if end <= start {
            break;
        }
        extents.push((start, end));
        pos = end;
    }
    Ok(extents)
}

// ---- threads, signals, memory ----------------------------------------------------------------

/// Sends `sig` to thread `tid` of this process.
pub(crate) fn signal_thread(tid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: tgkill takes integers only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            std::process::id() as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `madvise(MADV_DONTNEED)` over a page-aligned range: its pages read as freshly faulted
/// afterwards (zero-filled, or — in memory registered with a userfaultfd — whatever the server
/// installs). The exclusive borrow proves nothing else reads the range meanwhile.
pub(crate) fn madvise_dontneed(range: &mut [u8]) -> io::Result<()> {
    // SAFETY: the range is memory this process owns exclusively (a `&mut` slice); discarding
    // its contents is the same as overwriting them, which the exclusive borrow allows.
    cvt(unsafe { libc::madvise(range.as_mut_ptr().cast(), range.len(), libc::MADV_DONTNEED) })?;
    Ok(())
}

/// `madvise(MADV_DONTNEED)` over `len` bytes at `start`, page-aligned.
///
/// # Safety
///
/// `[start, start + len)` must be memory of this process that no live reference covers.
pub(crate) unsafe fn madvise_dontneed_raw(start: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: the caller promises the range is ours and unreferenced, so discarding its
    // contents is an unobserved overwrite.
    cvt(unsafe { libc::madvise(start.cast(), len, libc::MADV_DONTNEED) })?;
    Ok(())
}

/// `madvise(MADV_DONTFORK)` over a page-aligned range: a child made by `fork` does not get
/// the range at all (touching it there faults with `SIGSEGV`).
pub(crate) fn madvise_dontfork(range: &mut [u8]) -> io::Result<()> {
    // SAFETY: the range is memory this process owns (a `&mut` slice); MADV_DONTFORK changes
    // only what a future child inherits, never the contents here.
    cvt(unsafe { libc::madvise(range.as_mut_ptr().cast(), range.len(), libc::MADV_DONTFORK) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode() {
        let m = UffdMsg::page_fault(0x7000_1000, 42);
        assert_eq!(
            m.decode(),
            UffdEvent::PageFault {
                addr: 0x7000_1000,
                write: false,
                tid: 42
            }
        );
        let r = UffdMsg {
            event: UFFD_EVENT_REMOVE,
            arg: [0x1000, 0x3000, 0],
            ..UffdMsg::default()
        };
        assert_eq!(
            r.decode(),
            UffdEvent::Remove {
                start: 0x1000,
                end: 0x3000
            }
        );
        assert_eq!(
            UffdMsg {
                event: 0x7f,
                ..UffdMsg::default()
            }
            .decode(),
            UffdEvent::Other(0x7f)
        );
    }

    #[test]
    fn install_results_treat_short_counts_as_not_done() {
        let full = installed(0, 8192, 8192);
        assert_eq!(full.bytes, 8192);
        assert!(full.error.is_none());
        let short = installed(0, 4096, 8192);
        assert_eq!(short.bytes, 4096);
        assert_eq!(
            short.error.and_then(|e| e.raw_os_error()),
            Some(libc::EAGAIN)
        );
    }
}
