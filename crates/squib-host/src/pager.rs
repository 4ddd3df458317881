//! The portable pager: regions, the source, the fetch policy, counters and shutdown.
//!
//! A [`Pager`] knows *what* to serve (registered [`Region`]s over a [`PageSource`]) and *how to
//! fetch it safely* (single-flight, bounded retries, exact lengths, fail-closed bookkeeping);
//! the platform servers decide *when*: the Linux userfaultfd server ([`spawn_server`] there) reads
//! faults from the kernel and installs pages with `UFFDIO_COPY`, the macOS one receives Mach
//! exceptions. [`Pager::serve_fault`] is the same fetch path for hosts that learn of faults some
//! other way; it is safe to call from many threads and counts every call in
//! [`PagerStatsSnapshot::faults`].
//!
//! A `Pager` is a cheap handle (`Clone` shares the same pager); a server spawned from it keeps
//! it alive until [`Pager::request_shutdown`] makes the server return, which it does within one
//! poll interval.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::inflight::SingleFlight;
use crate::prewarm::PrewarmList;
use crate::region::{Region, RegionError, RegionSet};
use crate::source::{PageRequest, PageSource, PageSourceError};
use crate::stats::{PagerStatsSnapshot, Stats};

/// How a pager fetches, retries and populates. Build it with struct update syntax over
/// [`PagerConfig::default`].
#[derive(Debug, Clone)]
pub struct PagerConfig {
    /// How often an idle server wakes to check for shutdown and drift (macOS). A server joins
    /// within a few poll intervals of [`Pager::request_shutdown`]. Default 1 s.
    pub poll_interval: Duration,
    /// Snapshot offsets installed eagerly, in order, right after the server starts.
    pub prewarm: PrewarmList,
    /// Retries after a failed fetch before the fault fails closed. Default 3.
    pub fetch_retries: u32,
    /// Wait before the first retry; doubled for each further one. Default 2 ms.
    pub retry_backoff: Duration,
    /// How long a fetch on a worker thread may take before the fault fails closed (sources
    /// that are not [`is_local`](PageSource::is_local)). Default 5 s.
    pub fetch_timeout: Duration,
    /// Worker threads fetching from non-local sources. Default 4.
    pub fetch_workers: usize,
    /// Most fetch threads at once. A fetch that times out may hold its thread for good (a
    /// fetch cannot be cancelled); the server then starts a replacement, so faults on healthy
    /// pages keep being served, up to this many threads. A replacement retires once the stuck
    /// fetch returns. Default 64.
    pub max_fetch_threads: usize,
    /// Populate untouched pages in the background. Default true.
    pub background: bool,
    /// First background chunk in bytes; each next chunk doubles. Default 64 KiB.
    pub background_min_chunk: usize,
    /// Largest background chunk in bytes. Default 4 MiB.
    pub background_max_chunk: usize,
    /// Largest readahead window in bytes for sequential faults; 0 disables readahead.
    /// Default 1 MiB.
    pub readahead_max: usize,
    /// Record the snapshot offsets of demand-faulted pages in first-touch order (see
    /// [`Pager::working_set`]). Default true.
    pub record_working_set: bool,
    /// After serving faults, how long the Linux server keeps checking for the next one before
    /// it sleeps in `poll`. Faults come in bursts (a guest walking its memory); catching the
    /// next one while still awake saves a scheduler wake-up per fault, at the cost of at most
    /// this much CPU time per burst. `Duration::ZERO` disables it. Default 50 µs.
    pub spin_after_fault: Duration,
}

impl Default for PagerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            prewarm: PrewarmList::default(),
            fetch_retries: 3,
            retry_backoff: Duration::from_millis(2),
            fetch_timeout: Duration::from_secs(5),
            fetch_workers: 4,
            max_fetch_threads: 64,
            background: true,
            background_min_chunk: 64 << 10,
            background_max_chunk: 4 << 20,
            readahead_max: 1 << 20,
            record_working_set: true,
            spin_after_fault: Duration::from_micros(50),
        }
    }
}

/// Why a fault could not be served, or a server not started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PagerError {
    /// The address (or the end of the range) lies outside every registered region.
    #[error("address {addr:#x} (+{len} bytes) is outside every registered region")]
    OutOfRegion {
        /// The faulting address.
        addr: u64,
        /// The length asked for.
        len: usize,
    },
    /// The source failed on every attempt; the fault failed closed.
    #[error("page source failed for address {addr:#x} after {attempts} attempts")]
    Source {
        /// The faulting address.
        addr: u64,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: PageSourceError,
    },
    /// A fetch on a worker thread gave no answer in time; the fault failed closed.
    #[error("page fetch for address {addr:#x} gave no answer within {timeout:?}")]
    FetchTimeout {
        /// The faulting address.
        addr: u64,
        /// The configured [`PagerConfig::fetch_timeout`].
        timeout: Duration,
    },
    /// The kernel refused to install a page; the fault failed closed.
    #[error("cannot install the page at {addr:#x}")]
    Install {
        /// The page's address.
        addr: u64,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// A region was refused.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The platform server could not be started.
    #[error("cannot start the {what}")]
    Spawn {
        /// What was being started.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Linux: the userfaultfd could not be set up.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Uffd(#[from] crate::linux::UffdError),
    /// macOS: a Mach call failed.
    #[error("Mach call {call} failed with kern_return {code}")]
    Mach {
        /// The call.
        call: &'static str,
        /// Its `kern_return_t`.
        code: i32,
    },
}

/// Why a running server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Reading events or installing pages failed at the OS level.
    #[error("fault server: cannot {op}")]
    Io {
        /// The step that failed.
        op: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A fault could not be served and the peer was killed (handler mode): the server stops,
    /// since nothing it could install would be right.
    #[error("fault at {addr:#x} failed closed; the peer (pid {pid}) was killed")]
    PeerKilled {
        /// The address that could not be served.
        addr: u64,
        /// The peer's pid.
        pid: u32,
    },
    /// macOS: a Mach call failed.
    #[error("Mach call {call} failed with kern_return {code}")]
    Mach {
        /// The call.
        call: &'static str,
        /// Its `kern_return_t`.
        code: i32,
    },
}

/// A fault that failed closed, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultFailure {
    /// The faulting address.
    pub addr: u64,
    /// The snapshot offset that could not be fetched.
    pub offset: u64,
    /// The source error, rendered.
    pub error: String,
}

/// Whether a fetch has a thread waiting for it (demand, readahead) or not (background
/// population, prewarm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Demand,
    // Only the userfaultfd server populates in the background; the Mach server serves faults.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Background,
}

/// The shared state behind a [`Pager`] handle.
pub(crate) struct Shared {
    pub(crate) source: Box<dyn PageSource>,
    pub(crate) config: PagerConfig,
    pub(crate) regions: RwLock<RegionSet>,
    /// Bumped on every region change so servers refresh their page tables.
    pub(crate) region_generation: AtomicU64,
    pub(crate) stats: Stats,
    pub(crate) shutdown: AtomicBool,
    /// Bumped by [`Pager::populate`]: servers start a population pass when it changes.
    pub(crate) populate_requests: AtomicU64,
    /// Set by a server once no page of its regions is left to fetch.
    pub(crate) populated: AtomicBool,
    inflight: SingleFlight<Bytes>,
    working_set: Mutex<Vec<u64>>,
    failures: Mutex<VecDeque<FaultFailure>>,
    #[cfg(target_os = "linux")]
    pub(crate) linux: crate::linux::Backend,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pager")
            .field("source", &self.source)
            .field("config", &self.config)
            .field("regions", &self.regions)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

const MAX_LOGGED_FAILURES: usize = 64;

impl Shared {
    /// Fetches `len` bytes at snapshot `offset` for `addr`: single-flight, exact length,
    /// bounded retries with backoff. Every failed attempt is counted.
    pub(crate) fn fetch(
        &self,
        addr: u64,
        offset: u64,
        len: usize,
        page_size: usize,
    ) -> Result<Bytes, PagerError> {
        self.fetch_in(Lane::Demand, addr, offset, len, page_size)
    }

    /// [`fetch`](Self::fetch) on a lane: background fetches use
    /// [`PageSource::fetch_background`].
    pub(crate) fn fetch_in(
        &self,
        lane: Lane,
        addr: u64,
        offset: u64,
        len: usize,
        page_size: usize,
    ) -> Result<Bytes, PagerError> {
        let req = PageRequest {
            addr,
            offset,
            len,
            page_size,
        };
        let attempts = self.config.fetch_retries.saturating_add(1);
        let mut backoff = self.config.retry_backoff;
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                std::thread::sleep(backoff);
                backoff = backoff.saturating_mul(2);
            }
            match self.inflight.run(offset, || self.fetch_once(&req, lane)) {
                Ok((bytes, _)) if bytes.len() == len => return Ok(bytes),
                Ok((_, _)) => {
                    // A concurrent fetch of a different length at the same offset: fetch our own.
                    match self.fetch_once(&req, lane) {
                        Ok(bytes) => return Ok(bytes),
                        Err(e) => last = Some(e),
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        let source = last.unwrap_or(PageSourceError::Other {
            offset,
            reason: "no attempt was made".into(),
        });
        Err(PagerError::Source {
            addr,
            attempts,
            source,
        })
    }

    /// One attempt: the source's answer, checked for length.
    pub(crate) fn fetch_once(
        &self,
        req: &PageRequest,
        lane: Lane,
    ) -> Result<Bytes, PageSourceError> {
        Stats::add(&self.stats.fetches, 1);
        let fetched = match lane {
            Lane::Demand => self.source.fetch(req),
            Lane::Background => self.source.fetch_background(req),
        };
        let result = fetched.and_then(|bytes| {
            if bytes.len() == req.len {
                Ok(bytes)
            } else {
                Err(PageSourceError::Short {
                    offset: req.offset,
                    wanted: req.len,
                    got: bytes.len(),
                })
            }
        });
        if result.is_err() {
            Stats::add(&self.stats.source_errors, 1);
        }
        result
    }

    /// Records a page's first demand touch for the working set.
    pub(crate) fn record_touch(&self, offset: u64) {
        if self.config.record_working_set {
            crate::sync::lock_std(&self.working_set).push(offset);
        }
    }

    /// Counts and logs a fault that failed closed.
    pub(crate) fn log_failure(&self, addr: u64, offset: u64, error: &dyn std::error::Error) {
        Stats::add(&self.stats.failed_closed, 1);
        let text = platform_primitives::error::chain(error);
        tracing::error!(
            addr = format_args!("{addr:#x}"),
            offset = format_args!("{offset:#x}"),
            error = %text,
            "fault failed closed"
        );
        let mut log = crate::sync::lock_std(&self.failures);
        if log.len() == MAX_LOGGED_FAILURES {
            log.pop_front();
        }
        log.push_back(FaultFailure {
            addr,
            offset,
            error: text,
        });
    }

    /// The region containing `addr`.
    pub(crate) fn region_of(&self, addr: u64) -> Option<Region> {
        self.regions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .find(addr)
            .copied()
    }

    pub(crate) fn insert_region(&self, region: Region) -> Result<(), RegionError> {
        let len = self.source.len_hint();
        self.regions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(region, len)?;
        self.region_generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Forgets the region at `base` (a Linux lazy mapping being dropped).
    #[cfg(target_os = "linux")]
    pub(crate) fn remove_region(&self, base: u64) {
        self.regions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(base);
        self.region_generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn regions_snapshot(&self) -> Vec<Region> {
        self.regions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    pub(crate) fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// A userspace pager: registered regions over a [`PageSource`], the fetch policy
/// (single-flight per page, bounded retries, exact lengths, fail closed) and the counters.
///
/// A `Pager` is a cheap handle: clones share the same pager. The platform servers
/// ([`spawn_server`]) decide when to fetch; [`serve_fault`](Self::serve_fault) is the same fetch
/// path for hosts that learn of faults another way. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct Pager {
    pub(crate) shared: Arc<Shared>,
}

impl Pager {
    /// A pager serving regions from `source`.
    pub fn new(source: impl PageSource + 'static, config: PagerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                source: Box::new(source),
                config,
                regions: RwLock::new(RegionSet::new()),
                region_generation: AtomicU64::new(0),
                stats: Stats::default(),
                shutdown: AtomicBool::new(false),
                populate_requests: AtomicU64::new(0),
                populated: AtomicBool::new(false),
                inflight: SingleFlight::new(),
                working_set: Mutex::new(Vec::new()),
                failures: Mutex::new(VecDeque::new()),
                #[cfg(target_os = "linux")]
                linux: crate::linux::Backend::default(),
            }),
        }
    }

    /// Registers `[base, base + len)` at snapshot offset 0 with host-sized pages.
    ///
    /// This records the range only; it does not make the kernel report faults in it (on Linux,
    /// [`map_lazy`](Self::map_lazy) maps and registers memory, and handler mode serves a
    /// uffd the VMM registered).
    pub fn register_region(&self, base: u64, len: u64) -> Result<(), RegionError> {
        self.register(Region::new(base, len))
    }

    /// Registers a region (checked for alignment, overlap and the source's length).
    pub fn register(&self, region: Region) -> Result<(), RegionError> {
        self.shared.insert_region(region)
    }

    /// Whether `addr` lies in a registered region.
    pub fn contains(&self, addr: u64) -> bool {
        self.shared.region_of(addr).is_some()
    }

    /// The registered regions in base order.
    pub fn regions(&self) -> Vec<Region> {
        self.shared.regions_snapshot()
    }

    /// Serves a fault on `[addr, addr + len)` (rounded out to whole pages of its region):
    /// fetches the bytes once even if other threads ask for the same page at the same time,
    /// retries a failing source a bounded number of times, and returns the bytes. On Linux, if
    /// the range lies in memory from [`map_lazy`](Self::map_lazy), the bytes are installed
    /// there too. Counts one fault per call.
    ///
    /// A source that keeps failing yields [`PagerError::Source`], counted and logged; the bytes
    /// are never replaced by zeros.
    pub fn serve_fault(&self, addr: u64, len: usize) -> Result<Bytes, PagerError> {
        let shared = &self.shared;
        let region = shared
            .region_of(addr)
            .ok_or(PagerError::OutOfRegion { addr, len })?;
        let ps = region.page_size as u64;
        let start = addr - addr % ps;
        let end = addr
            .checked_add(len.max(1) as u64)
            .map(|e| e.next_multiple_of(ps))
            .filter(|&e| e <= region.end())
            .ok_or(PagerError::OutOfRegion { addr, len })?;
        let run = (end - start) as usize;
        Stats::add(&shared.stats.faults, 1);
        let t0 = std::time::Instant::now();
        let offset = region.offset_of(start);
        let bytes = match shared.fetch(start, offset, run, region.page_size) {
            Ok(bytes) => bytes,
            Err(e) => {
                shared.log_failure(addr, offset, &e);
                return Err(e);
            }
        };
        #[cfg(target_os = "linux")]
        crate::linux::install_from_caller(shared, &region, start, &bytes);
        shared.record_touch(offset);
        Stats::add(&shared.stats.bytes_served, run as u64);
        shared.stats.record_latency(t0.elapsed());
        Ok(bytes)
    }

    /// Fetches every page of the configured prewarm list, in order, without a server (for
    /// hosts that install pages themselves); returns how many pages were fetched. Servers
    /// install the prewarm list on their own right after they start.
    pub fn prewarm(&self) -> Result<usize, PagerError> {
        let mut n = 0;
        for &off in self.shared.config.prewarm.offsets() {
            let Some(region) = self
                .regions()
                .into_iter()
                .find(|r| off >= r.offset && off < r.offset + r.len)
            else {
                continue;
            };
            let ps = region.page_size as u64;
            let page_off = off - (off - region.offset) % ps;
            let addr = region.base + (page_off - region.offset);
            self.shared
                .fetch(addr, page_off, region.page_size, region.page_size)?;
            Stats::add(&self.shared.stats.prewarmed, 1);
            n += 1;
        }
        Ok(n)
    }

    /// The counters.
    pub fn stats(&self) -> PagerStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// The snapshot offsets of demand-faulted pages so far, in first-touch order: save it with
    /// [`PrewarmList::save`] and use it as the next restore's prewarm list.
    pub fn working_set(&self) -> PrewarmList {
        PrewarmList::new(
            crate::sync::lock_std(&self.shared.working_set)
                .iter()
                .copied(),
        )
    }

    /// The most recent faults that failed closed (up to 64).
    pub fn failures(&self) -> Vec<FaultFailure> {
        crate::sync::lock_std(&self.shared.failures)
            .iter()
            .cloned()
            .collect()
    }

    /// The configuration.
    pub fn config(&self) -> &PagerConfig {
        &self.shared.config
    }

    /// Asks the server to install every page not yet installed, in the background, whatever
    /// [`PagerConfig::background`] says: after this, once [`is_populated`](Self::is_populated)
    /// is true, the guest's memory no longer depends on the source (a restore "drained" of its
    /// snapshot). Faults keep their priority over the population; pages whose fetch fails are
    /// tried again on later passes, one per [`PagerConfig::poll_interval`] at most.
    ///
    /// Only the Linux userfaultfd server populates; elsewhere this does nothing.
    ///
    /// ```no_run
    /// # fn f(pager: &squib_host::Pager) {
    /// pager.populate();
    /// while !pager.is_populated() {
    ///     std::thread::sleep(std::time::Duration::from_millis(50));
    /// }
    /// # }
    /// ```
    pub fn populate(&self) {
        self.shared.populate_requests.fetch_add(1, Ordering::AcqRel);
        #[cfg(target_os = "linux")]
        self.shared.linux.wake();
    }

    /// Whether the server has installed every page of its regions (pages the guest dropped
    /// with `madvise` or unmapped count as done: they need nothing from the source). Becomes
    /// true after a population pass, the one [`PagerConfig::background`] runs or the one
    /// [`populate`](Self::populate) asks for; false again if a region is added.
    pub fn is_populated(&self) -> bool {
        self.shared.populated.load(Ordering::Acquire)
    }

    /// Asks every server spawned from this pager to stop; they return within one poll
    /// interval (Linux servers are woken at once).
    pub fn request_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        #[cfg(target_os = "linux")]
        self.shared.linux.wake();
    }

    /// Whether [`request_shutdown`](Self::request_shutdown) was called.
    pub fn is_shutdown_requested(&self) -> bool {
        self.shared.shutdown_requested()
    }
}

/// Spawns the platform's fault server for `pager` on a new thread.
///
/// - Linux: a userfaultfd server for memory from [`Pager::map_lazy`] (created on first use),
///   installing the prewarm list, then serving demand faults first and populating the rest in
///   the background.
/// - macOS: a Mach exception-port server that serves `EXC_BAD_ACCESS` in registered regions,
///   forwards other exceptions to the handler it replaced (a debugger or the default one), and
///   re-installs itself every poll interval if another handler took its place.
///
/// The thread returns after [`Pager::request_shutdown`].
pub fn spawn_server(pager: &Pager) -> Result<JoinHandle<Result<(), ServeError>>, PagerError> {
    #[cfg(target_os = "linux")]
    {
        crate::linux::spawn_in_process(pager)
    }
    #[cfg(target_os = "macos")]
    {
        crate::mach::spawn_mach_server(pager)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemorySource;

    #[derive(Debug)]
    struct Flaky {
        fail_first: AtomicU64,
        inner: MemorySource,
    }

    impl PageSource for Flaky {
        fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
            if self
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(PageSourceError::Other {
                    offset: req.offset,
                    reason: "transient".into(),
                });
            }
            self.inner.fetch(req)
        }
    }

    fn config() -> PagerConfig {
        PagerConfig {
            retry_backoff: Duration::from_micros(10),
            ..PagerConfig::default()
        }
    }

    #[test]
    fn transient_errors_are_retried_and_persistent_ones_fail_with_the_address() {
        let ps = crate::region::host_page_size();
        let data: Vec<u8> = (0..8 * ps).map(|i| (i / ps) as u8 + 1).collect();
        let pager = Pager::new(
            Flaky {
                fail_first: AtomicU64::new(2),
                inner: MemorySource::new(data),
            },
            config(),
        );
        pager.register_region(0x1000_0000, 4 * ps as u64).unwrap();
        let got = pager.serve_fault(0x1000_0000 + ps as u64 + 5, 1).unwrap();
        assert_eq!(got.len(), ps);
        assert!(got.iter().all(|&b| b == 2));
        let s = pager.stats();
        assert_eq!((s.faults, s.source_errors, s.failed_closed), (1, 2, 0));

        let failing = Pager::new(
            Flaky {
                fail_first: AtomicU64::new(u64::MAX),
                inner: MemorySource::new(vec![0u8; ps]),
            },
            config(),
        );
        failing.register_region(0x2000_0000, ps as u64).unwrap();
        let err = failing.serve_fault(0x2000_0000, 8).unwrap_err();
        assert!(
            matches!(err, PagerError::Source { attempts: 4, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("0x20000000"));
        let s = failing.stats();
        assert_eq!((s.source_errors, s.failed_closed), (4, 1));
        assert_eq!(failing.failures()[0].addr, 0x2000_0000);
        assert!(failing.failures()[0].error.contains("transient"));
    }

    #[test]
    fn out_of_region_faults_are_typed_errors() {
        let ps = crate::region::host_page_size() as u64;
        let pager = Pager::new(MemorySource::new(vec![1u8; 4 * ps as usize]), config());
        pager.register_region(0x1000_0000, 2 * ps).unwrap();
        assert!(matches!(
            pager.serve_fault(0x3000_0000, 1),
            Err(PagerError::OutOfRegion { .. })
        ));
        assert!(matches!(
            pager.serve_fault(0x1000_0000 + ps, 2 * ps as usize),
            Err(PagerError::OutOfRegion { .. })
        ));
        assert_eq!(pager.stats().faults, 0);
        assert!(pager.contains(0x1000_0000 + ps));
        assert!(!pager.contains(0x1000_0000 + 2 * ps));
    }
}
