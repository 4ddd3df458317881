//! The Linux backend: userfaultfd.
//!
//! Memory registered with a userfaultfd in *missing* mode raises an event on the descriptor at
//! the first touch of each page, and the touching thread sleeps until a page is installed with
//! `UFFDIO_COPY` (bytes) or `UFFDIO_ZEROPAGE` (the shared zero page). This module has:
//!
//! - [`Uffd`]: a safe handle to a userfaultfd (create, register, install, read events);
//! - [`LazyMapping`]: anonymous memory of this process registered with the pager's uffd, filled
//!   on first touch ([`Pager::map_lazy`]);
//! - the fault server (`server`), which the platform [`spawn_server`](crate::spawn_server)
//!   runs for `LazyMapping`s and [`firecracker`] runs for a VMM's uffd;
//! - [`firecracker`]: Firecracker's snapshot-restore handler handshake.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use platform_primitives::mem::AnonMapping;

use crate::pager::{Pager, PagerError, ServeError, Shared};
use crate::region::{HUGE_PAGE_SIZE, Region, host_page_size};
use crate::stats::Stats;
use crate::sys::linux as sys;

pub mod firecracker;
pub(crate) mod server;

pub use server::FailTarget;

/// Features this crate asks for when it creates a userfaultfd.
const WANTED_FEATURES: u64 = sys::UFFD_FEATURE_EVENT_REMOVE
    | sys::UFFD_FEATURE_EVENT_UNMAP
    | sys::UFFD_FEATURE_THREAD_ID
    | sys::UFFD_FEATURE_MISSING_HUGETLBFS
    | sys::UFFD_FEATURE_POISON;

/// Why a userfaultfd could not be created or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UffdError {
    /// Neither the `userfaultfd` system call nor `/dev/userfaultfd` gave a descriptor.
    #[error(
        "userfaultfd is not available to this process: run as root (or with CAP_SYS_PTRACE), \
         set `sysctl vm.unprivileged_userfaultfd=1`, or give this user read-write access to \
         /dev/userfaultfd"
    )]
    Unavailable {
        /// What the system call said.
        #[source]
        source: io::Error,
    },
    /// The `UFFDIO_API` handshake failed.
    #[error("UFFDIO_API handshake failed (features {features:#x})")]
    Api {
        /// Features requested.
        features: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `UFFDIO_REGISTER` refused a range.
    #[error("cannot register [{base:#x}, +{len:#x}) with userfaultfd")]
    Register {
        /// Start of the range.
        base: u64,
        /// Its length.
        len: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// An install or wake ioctl failed.
    #[error("{op} at {addr:#x} (+{len:#x}) failed")]
    Install {
        /// `UFFDIO_COPY`, `UFFDIO_ZEROPAGE`, `UFFDIO_WAKE` or `UFFDIO_POISON`.
        op: &'static str,
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Reading events or another descriptor operation failed.
    #[error("userfaultfd: cannot {op}")]
    Io {
        /// The operation.
        op: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// One event read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UffdEvent {
    /// A thread touched a missing page and sleeps until it is installed.
    PageFault {
        /// The faulting address (page-aligned).
        addr: u64,
        /// It was a write.
        write: bool,
        /// The faulting thread's id (0 without the thread-id feature).
        tid: u32,
    },
    /// `[start, end)` was dropped (`madvise(MADV_DONTNEED)`, balloon): later touches fault again.
    Remove {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// `[start, end)` was unmapped.
    Unmap {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Memory was moved with `mremap`.
    Remap {
        /// Old address.
        from: u64,
        /// New address.
        to: u64,
        /// Length.
        len: u64,
    },
    /// An event this crate does not interpret (the raw event code).
    Other(u8),
}

/// What [`Uffd::copy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Copied {
    /// Every byte was installed.
    All,
    /// The page was already present (`EEXIST`); waiters were woken.
    AlreadyPresent,
    /// The kernel deferred the copy (`EAGAIN`: an event is queued and unread). `copied`
    /// bytes were installed; read the events, then copy the rest.
    Deferred {
        /// Bytes installed before the deferral.
        copied: u64,
    },
}

/// A userfaultfd: a descriptor that reports first touches of registered memory.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    features: u64,
}

impl Uffd {
    /// Creates a non-blocking userfaultfd for this process and negotiates the features this
    /// crate uses (remove and unmap events, thread ids, hugetlbfs, poison) as far as the
    /// kernel offers them.
    pub fn open() -> Result<Self, UffdError> {
        let available = {
            let probe = raw_open()?;
            sys::uffd_api(probe.as_fd(), 0)
                .map_err(|source| UffdError::Api {
                    features: 0,
                    source,
                })?
                .0
        };
        Self::open_with_features(WANTED_FEATURES & available)
    }

    /// Creates a non-blocking userfaultfd requesting exactly `features` (`UFFD_FEATURE_*`
    /// bits); the kernel refuses features it lacks.
    pub fn open_with_features(features: u64) -> Result<Self, UffdError> {
        let fd = raw_open()?;
        let (granted, _) = sys::uffd_api(fd.as_fd(), features)
            .map_err(|source| UffdError::Api { features, source })?;
        Ok(Self {
            fd,
            features: granted,
        })
    }

    /// Wraps a userfaultfd made elsewhere (a VMM's, received over a socket), on which the
    /// `UFFDIO_API` handshake was already done. Its features are unknown, so none is assumed;
    /// the descriptor is switched to non-blocking mode.
    pub fn from_owned_fd(fd: OwnedFd) -> Result<Self, UffdError> {
        sys_set_nonblocking(fd.as_fd()).map_err(|source| UffdError::Io {
            op: "make the descriptor non-blocking",
            source,
        })?;
        Ok(Self { fd, features: 0 })
    }

    /// Declares features known to be enabled on a descriptor from [`from_owned_fd`]
    /// (`UFFD_FEATURE_*` bits), such as the ones Firecracker requests.
    ///
    /// [`from_owned_fd`]: Self::from_owned_fd
    pub fn assume_features(mut self, features: u64) -> Self {
        self.features = features;
        self
    }

    /// The negotiated `UFFD_FEATURE_*` bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Switches between non-blocking reads (the default: [`read_events`](Self::read_events)
    /// returns 0 when nothing is queued) and blocking ones (it waits for the first event).
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), UffdError> {
        platform_primitives::fd::set_nonblocking(self.fd.as_fd(), nonblocking).map_err(|source| {
            UffdError::Io {
                op: "change O_NONBLOCK",
                source,
            }
        })
    }

    /// Whether `UFFDIO_POISON` may be used (Linux 6.6).
    pub fn can_poison(&self) -> bool {
        self.features & sys::UFFD_FEATURE_POISON != 0
    }

    /// Whether faults carry the faulting thread's id.
    pub fn has_thread_ids(&self) -> bool {
        self.features & sys::UFFD_FEATURE_THREAD_ID != 0
    }

    /// Registers an anonymous mapping of this process in missing mode: from now on each of its
    /// missing pages is filled by whoever serves this descriptor, on first touch.
    ///
    /// Pages already touched keep their contents. A thread touching a missing page waits
    /// until a server installs it, so start one (or hand the descriptor to one) first.
    pub fn register_mapping(&self, map: &mut AnonMapping) -> Result<(), UffdError> {
        let (base, len) = (map.as_ptr() as u64, map.len() as u64);
        sys::uffd_register(self.fd.as_fd(), base, len)
            .map(drop)
            .map_err(|source| UffdError::Register { base, len, source })
    }

    /// Unregisters `[base, base + len)`: later first touches are ordinary zero-fill faults.
    pub fn unregister(&self, base: u64, len: u64) -> Result<(), UffdError> {
        sys::uffd_unregister(self.fd.as_fd(), base, len).map_err(|source| UffdError::Io {
            op: "unregister a range",
            source,
        })
    }

    /// Installs `src` at `dst` (`UFFDIO_COPY`), waking waiters unless `wake` is false.
    ///
    /// Never waits: when the kernel defers the copy because an event is queued and unread
    /// (`EAGAIN`, typically a `REMOVE` from `madvise`), it returns [`Copied::Deferred`] with
    /// the bytes done so far; the caller reads its events and then copies the rest. `EEXIST`
    /// (the page is already there) is answered with a wake-up.
    pub fn copy(&self, dst: u64, src: &[u8], wake: bool) -> Result<Copied, UffdError> {
        let mut done = 0u64;
        let len = src.len() as u64;
        while done < len {
            let r = sys::uffd_copy(self.fd.as_fd(), dst + done, &src[done as usize..], !wake);
            done += r.bytes;
            match r.error {
                None => {}
                Some(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Ok(Copied::Deferred { copied: done });
                }
                Some(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    self.wake(dst, len)?;
                    return Ok(Copied::AlreadyPresent);
                }
                Some(source) => {
                    return Err(UffdError::Install {
                        op: "UFFDIO_COPY",
                        addr: dst + done,
                        len: len - done,
                        source,
                    });
                }
            }
        }
        Ok(Copied::All)
    }

    /// Maps the zero page over `[start, start + len)` (`UFFDIO_ZEROPAGE`).
    pub fn zeropage(&self, start: u64, len: u64, wake: bool) -> Result<(), UffdError> {
        let r = sys::uffd_zeropage(self.fd.as_fd(), start, len, !wake);
        match r.error {
            None => Ok(()),
            Some(e) if e.raw_os_error() == Some(libc::EEXIST) => self.wake(start, len),
            Some(source) => Err(UffdError::Install {
                op: "UFFDIO_ZEROPAGE",
                addr: start + r.bytes,
                len: len - r.bytes,
                source,
            }),
        }
    }

    /// Wakes threads waiting on faults in `[start, start + len)` (`UFFDIO_WAKE`).
    pub fn wake(&self, start: u64, len: u64) -> Result<(), UffdError> {
        sys::uffd_wake(self.fd.as_fd(), start, len).map_err(|source| UffdError::Install {
            op: "UFFDIO_WAKE",
            addr: start,
            len,
            source,
        })
    }

    /// Reads every queued event into `out` (appending); returns how many were read. Returns 0
    /// at once if none is queued (non-blocking descriptor).
    pub fn read_events(&self, out: &mut Vec<UffdEvent>) -> Result<usize, UffdError> {
        let mut buf = [sys::UffdMsg::default(); 32];
        let mut total = 0;
        loop {
            let n = sys::uffd_read(self.fd.as_fd(), &mut buf).map_err(|source| UffdError::Io {
                op: "read events",
                source,
            })?;
            out.extend(buf[..n].iter().map(sys::UffdMsg::decode));
            total += n;
            if n < buf.len() {
                return Ok(total);
            }
        }
    }

    /// Waits until an event is queued or `timeout` passes; returns whether one is queued.
    pub fn wait(&self, timeout: Option<std::time::Duration>) -> Result<bool, UffdError> {
        sys::poll_readable(&[self.fd.as_fd()], timeout)
            .map(|mask| mask & 1 != 0)
            .map_err(|source| UffdError::Io { op: "poll", source })
    }

    pub(crate) fn raw(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn raw_open() -> Result<OwnedFd, UffdError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    match sys::userfaultfd_syscall(flags) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let dev = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/userfaultfd");
            match dev {
                Ok(dev) => sys::userfaultfd_device(dev.as_fd(), flags)
                    .map_err(|source| UffdError::Unavailable { source }),
                Err(_) => Err(UffdError::Unavailable { source: first }),
            }
        }
    }
}

fn sys_set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    platform_primitives::fd::set_nonblocking(fd, true)
}

/// Per-pager Linux state: the in-process uffd (made on first use) and the shutdown eventfd.
#[derive(Debug, Default)]
pub(crate) struct Backend {
    uffd: Mutex<Option<Arc<Uffd>>>,
    wake: OnceLock<OwnedFd>,
    /// Bases of regions that are `LazyMapping`s of this process (registered with `uffd`).
    lazy: Mutex<Vec<u64>>,
}

impl Backend {
    /// Wakes servers blocked in poll.
    pub(crate) fn wake(&self) {
        if let Some(fd) = self.wake.get() {
            let _ = sys::eventfd_signal(fd.as_fd());
        }
    }

    /// The eventfd servers poll for shutdown, made on first use.
    pub(crate) fn wake_fd(&self) -> io::Result<BorrowedFd<'_>> {
        if self.wake.get().is_none() {
            let fd = sys::eventfd()?;
            let _ = self.wake.set(fd);
        }
        Ok(self.wake.get().map(AsFd::as_fd).expect("set above"))
    }

    fn in_process_uffd(&self) -> Result<Arc<Uffd>, UffdError> {
        let mut slot = crate::sync::lock_std(&self.uffd);
        if let Some(u) = slot.as_ref() {
            return Ok(Arc::clone(u));
        }
        let u = Arc::new(Uffd::open()?);
        *slot = Some(Arc::clone(&u));
        Ok(u)
    }

    pub(crate) fn is_lazy(&self, base: u64) -> bool {
        crate::sync::lock_std(&self.lazy).contains(&base)
    }
}

/// Installs bytes a [`Pager::serve_fault`] caller fetched, if the range is a [`LazyMapping`].
pub(crate) fn install_from_caller(shared: &Shared, region: &Region, start: u64, bytes: &[u8]) {
    if !shared.linux.is_lazy(region.base) {
        return;
    }
    let Some(uffd) = crate::sync::lock_std(&shared.linux.uffd).clone() else {
        return;
    };
    match uffd.copy(start, bytes, true) {
        Ok(Copied::All) => Stats::add(
            &shared.stats.pages_copied,
            (bytes.len() / region.page_size) as u64,
        ),
        Ok(Copied::AlreadyPresent) => Stats::add(&shared.stats.eexist, 1),
        // The rest stays missing; the fault server serves it when it is touched.
        Ok(Copied::Deferred { .. }) | Err(_) => {}
    }
}

/// Memory of this process that the pager fills on first touch.
///
/// Reading it from any thread is safe: a missing page blocks the reader until the server
/// installs it (so a server must be running — [`spawn_server`](crate::spawn_server)). Dropping
/// it unregisters the region and unmaps the memory.
///
/// # fork
///
/// The mapping is `MADV_DONTFORK`: a child made by `fork()` does not have it, and touching
/// its addresses there raises `SIGSEGV`. (A child that inherited it would not inherit the
/// userfaultfd registration, so its missing pages would silently read as zeros.) `exec`
/// after `fork`, as `std::process::Command` does, is unaffected.
#[derive(Debug)]
pub struct LazyMapping {
    map: AnonMapping,
    /// The region's page size: the host's, or 2 MiB for [`Pager::map_lazy_huge`].
    page_size: usize,
    shared: Arc<Shared>,
}

impl LazyMapping {
    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The page size faults are served in: the host's, or 2 MiB for huge mappings.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The memory. Touching a missing page waits for the server to install it.
    pub fn as_slice(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// The memory, writable (a write to a missing page also waits for its snapshot bytes).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.map.as_mut_slice()
    }

    /// Drops `[offset, offset + len)` with `madvise(MADV_DONTNEED)`, as a balloon does: the
    /// pager receives a `REMOVE` event, and later touches read zeros (the snapshot bytes are
    /// not brought back). The range is rounded out to whole pages (2 MiB ones in a huge
    /// mapping).
    ///
    /// The kernel holds `madvise` until a server has read the event, so a server must be
    /// running.
    pub fn discard(&mut self, offset: usize, len: usize) -> io::Result<()> {
        let (start, end) = self.page_range(offset, len)?;
        sys::madvise_dontneed(&mut self.map.as_mut_slice()[start..end])
    }

    /// [`discard`](Self::discard) through a shared reference, for a balloon thread that runs
    /// beside readers of other parts of the mapping.
    ///
    /// # Safety
    ///
    /// While the call runs, no reference into `[offset, offset + len)` (rounded out to whole
    /// pages) may be live: no slice from [`as_slice`](Self::as_slice) or
    /// [`as_mut_slice`](Self::as_mut_slice) covering it, in any thread. Its contents change
    /// to zeros under the call, which a live reference must never observe. Access through raw
    /// pointers ([`as_ptr`](Self::as_ptr)) is fine.
    #[allow(unsafe_code)] // A public unsafe API: the caller's promise above is the argument.
    pub unsafe fn discard_shared(&self, offset: usize, len: usize) -> io::Result<()> {
        let (start, end) = self.page_range(offset, len)?;
        // SAFETY: `[start, end)` lies inside this mapping (checked by `page_range`), and the
        // caller promises no reference into it is live during the call.
        unsafe { sys::madvise_dontneed_raw(self.map.as_ptr().wrapping_add(start), end - start) }
    }

    /// `[offset, offset + len)` rounded out to whole pages; an error past the end.
    fn page_range(&self, offset: usize, len: usize) -> io::Result<(usize, usize)> {
        let ps = self.page_size;
        let start = offset - offset % ps;
        let end = offset
            .checked_add(len)
            .map(|e| e.next_multiple_of(ps))
            .filter(|&e| e <= self.len())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "range beyond the mapping")
            })?;
        Ok((start, end))
    }
}

impl Drop for LazyMapping {
    fn drop(&mut self) {
        let base = self.map.as_ptr() as u64;
        crate::sync::lock_std(&self.shared.linux.lazy).retain(|&b| b != base);
        self.shared.remove_region(base);
        // Unregister before the AnonMapping unmaps the memory: `munmap` of registered memory
        // queues an UNMAP event and waits until a server reads it, which would hang forever
        // once the server has stopped.
        if let Some(uffd) = crate::sync::lock_std(&self.shared.linux.uffd).clone() {
            let _ = uffd.unregister(base, self.map.len() as u64);
        }
    }
}

impl Pager {
    /// Maps `len` bytes (rounded up to whole pages) of anonymous memory in this process,
    /// registers it with the pager's userfaultfd, and serves it from snapshot `offset` onward.
    pub fn map_lazy(&self, len: usize, offset: u64) -> Result<LazyMapping, PagerError> {
        let map = AnonMapping::new(len).map_err(|source| PagerError::Spawn {
            what: "lazy mapping (mmap)",
            source,
        })?;
        self.lazy(map, host_page_size(), offset)
    }

    /// Like [`map_lazy`](Self::map_lazy), with 2 MiB hugetlb pages: `len` is rounded up to
    /// whole huge pages, each fault installs a whole 2 MiB page, and `offset` must be a
    /// multiple of 2 MiB. The pages come from the hugetlb pool
    /// (`/proc/sys/vm/nr_hugepages`); a pool too small fails here, not at a fault.
    pub fn map_lazy_huge(&self, len: usize, offset: u64) -> Result<LazyMapping, PagerError> {
        let map = AnonMapping::huge(len).map_err(|source| PagerError::Spawn {
            what: "lazy huge-page mapping (mmap MAP_HUGETLB)",
            source,
        })?;
        self.lazy(map, HUGE_PAGE_SIZE, offset)
    }

    fn lazy(
        &self,
        mut map: AnonMapping,
        page_size: usize,
        offset: u64,
    ) -> Result<LazyMapping, PagerError> {
        let uffd = self.shared.linux.in_process_uffd()?;
        let base = map.as_ptr() as u64;
        let region = Region::new(base, map.len() as u64)
            .offset(offset)
            .page_size(page_size);
        region.validate(self.shared.source.len_hint())?;
        // A child made by fork() would inherit the mapping without the registration: its
        // missing pages would read as zeros, silently wrong. It gets no mapping instead.
        sys::madvise_dontfork(map.as_mut_slice()).map_err(|source| PagerError::Spawn {
            what: "lazy mapping (madvise MADV_DONTFORK)",
            source,
        })?;
        // Register before the region becomes visible to a running server: an install into
        // memory the uffd does not cover fails, and would be taken for unmapped memory.
        uffd.register_mapping(&mut map)?;
        crate::sync::lock_std(&self.shared.linux.lazy).push(base);
        if let Err(e) = self.shared.insert_region(region) {
            crate::sync::lock_std(&self.shared.linux.lazy).retain(|&b| b != base);
            let _ = uffd.unregister(base, map.len() as u64);
            return Err(e.into());
        }
        Ok(LazyMapping {
            map,
            page_size,
            shared: Arc::clone(&self.shared),
        })
    }
}

/// Spawns the in-process server (the Linux [`spawn_server`](crate::spawn_server)).
pub(crate) fn spawn_in_process(
    pager: &Pager,
) -> Result<JoinHandle<Result<(), ServeError>>, PagerError> {
    let uffd = pager.shared.linux.in_process_uffd()?;
    server::spawn(pager, uffd, FailTarget::InProcess)
}

/// Spawns a fault server for a userfaultfd made elsewhere (a VMM's), with the given
/// fail-closed target. The pager's regions must describe the memory registered with it.
pub fn spawn_server_for(
    pager: &Pager,
    uffd: Uffd,
    fail: FailTarget,
) -> Result<JoinHandle<Result<(), ServeError>>, PagerError> {
    server::spawn(pager, Arc::new(uffd), fail)
}
