//! The userfaultfd fault server: one thread that reads events and installs pages.
//!
//! Each turn of the loop:
//! 1. reads **every** queued event before acting on any, then applies the state changes
//!    (`REMOVE`, `UNMAP`) before serving the faults of the same batch, so a page dropped by
//!    `madvise` is never refilled with stale snapshot bytes;
//! 2. serves each fault: a missing page is fetched (with readahead if the faults walk forward)
//!    and installed with `UFFDIO_COPY`, or with `UFFDIO_ZEROPAGE` if it is known to be zero
//!    (a hole, an all-zero page, or a removed range; hugetlb has no zero-page call, so a zero
//!    huge page is copied from zeros); a fault on a page already installed is answered with a
//!    zero install that the kernel refuses with `EEXIST`, then `UFFDIO_WAKE`;
//!
//!    A removed page is installed only for a thread that faulted on it, never by readahead,
//!    prewarm or background runs: the kernel lets installs through as soon as the `REMOVE`
//!    event is read, but `madvise` zaps the range only afterwards, so a proactive install
//!    could be thrown away while the server believes the page present. For the same reason a
//!    fault on a page the server installed gets zeros if the page is really gone (the
//!    zero install succeeds) rather than a bare wake-up, which would fault again forever;
//! 3. retries installs the kernel deferred (`EAGAIN` while an event is unread, or a short
//!    count), after reading the pending events;
//! 4. only when no fault is waiting, does one unit of proactive work: a prewarm run, or a
//!    background chunk (64 KiB doubling to 4 MiB, installed `DONTWAKE`);
//! 5. sleeps in `poll` on the uffd, the shutdown eventfd and the fetch workers' eventfd.
//!
//! Only this thread installs pages (besides [`Pager::serve_fault`](crate::Pager::serve_fault)
//! callers), so page states need no locks. Fetches from local sources run inline; fetches from
//! other sources run on worker threads, so one slow fetch never holds up faults on other pages,
//! and a page being fetched is marked in flight so it is never fetched twice at once.
//!
//! A fetch that still fails after the retries *fails closed*: the fault is never answered with
//! wrong or zero bytes. In-process, the faulting thread gets `SIGBUS` (`UFFDIO_POISON` where the
//! kernel has it, else a signal to the thread id the fault carried); in handler mode the peer
//! is killed and the server stops.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use platform_primitives::mem::AnonMapping;

use super::{Uffd, UffdError, UffdEvent};
use crate::pager::{Lane, Pager, PagerError, ServeError, Shared};
use crate::region::{Region, host_page_size};
use crate::source::is_zero;
use crate::stats::Stats;
use crate::sys::linux as sys;

/// Who pays when a fault cannot be served correctly.
#[derive(Debug)]
pub enum FailTarget {
    /// The faults come from this process: the faulting thread gets `SIGBUS`.
    InProcess,
    /// The faults come from a peer (a VMM): it is killed with `SIGKILL`, through its pidfd when
    /// one is known, and the server stops.
    Peer {
        /// The peer's pid (from `SO_PEERCRED`).
        pid: u32,
        /// A pidfd of the peer, so the signal cannot hit a recycled pid.
        pidfd: Option<OwnedFd>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Missing,
    InFlight,
    Present,
    /// Dropped by `madvise`: served as zeros from now on.
    Removed,
    /// Failed closed.
    Poisoned,
    /// Unmapped.
    Gone,
}

#[derive(Debug)]
struct RegionPages {
    region: Region,
    pages: Vec<Page>,
    /// The address right after the last demand run, for sequential detection.
    next_seq: u64,
    /// The current readahead window in pages.
    window: usize,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Starts at the faulting page; any further pages are readahead.
    Demand {
        t0: Instant,
        tid: u32,
        addr: u64,
    },
    /// Readahead pages of a demand run that were split off it (a hole or data boundary).
    Readahead,
    Prewarm,
    Background,
}

impl Kind {
    /// Demand and readahead fetches have a thread waiting; the others go on the background
    /// lane of sources that have one.
    fn lane(self) -> Lane {
        match self {
            Self::Demand { .. } | Self::Readahead => Lane::Demand,
            Self::Prewarm | Self::Background => Lane::Background,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Run {
    region: usize,
    first: usize,
    count: usize,
    kind: Kind,
}

#[derive(Debug)]
struct Deferred {
    run: Run,
    /// The bytes of the whole run; `None` when it is known zero.
    bytes: Option<Bytes>,
}

#[derive(Debug)]
struct Job {
    id: u64,
    lane: Lane,
    addr: u64,
    offset: u64,
    len: usize,
    page_size: usize,
}

#[derive(Debug)]
struct Done {
    id: u64,
    result: Result<Bytes, PagerError>,
}

#[derive(Debug)]
struct Pool {
    jobs: Option<mpsc::Sender<Job>>,
    /// What a new worker needs: the job queue, the completions, the pager.
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    done: Arc<Mutex<Vec<Done>>>,
    efd: Arc<OwnedFd>,
    shared: Arc<Shared>,
    /// Worker threads running (including ones stuck in a fetch that timed out).
    threads: Arc<AtomicUsize>,
    /// Jobs whose fetch timed out and whose worker was replaced: that worker exits when the
    /// fetch finally returns, so the pool shrinks back to its size.
    abandoned: Arc<Mutex<HashSet<u64>>>,
    pending: HashMap<u64, (Run, Instant)>,
    next_id: u64,
    proactive: usize,
}

impl Pool {
    fn start(shared: &Arc<Shared>) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let pool = Self {
            jobs: Some(tx),
            rx: Arc::new(Mutex::new(rx)),
            done: Arc::new(Mutex::new(Vec::new())),
            efd: Arc::new(sys::eventfd()?),
            shared: Arc::clone(shared),
            threads: Arc::new(AtomicUsize::new(0)),
            abandoned: Arc::new(Mutex::new(HashSet::new())),
            pending: HashMap::new(),
            next_id: 0,
            proactive: 0,
        };
        // Local sources fetch demand pages inline; one worker then suffices to read the next
        // background chunk while the server installs the previous one.
        let workers = if shared.source.is_local() {
            1
        } else {
            shared.config.fetch_workers.max(1)
        };
        for _ in 0..workers {
            pool.add_worker()?;
        }
        Ok(pool)
    }

    fn add_worker(&self) -> io::Result<()> {
        let (rx, done, efd, shared) = (
            self.rx.clone(),
            self.done.clone(),
            self.efd.clone(),
            self.shared.clone(),
        );
        let (threads, abandoned) = (self.threads.clone(), self.abandoned.clone());
        let n = threads.fetch_add(1, AtomicOrdering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name(format!("squib-fetch-{n}"))
            .spawn(move || {
                loop {
                    let job = crate::sync::lock_std(&rx).recv();
                    let Ok(job) = job else { break };
                    let result =
                        shared.fetch_in(job.lane, job.addr, job.offset, job.len, job.page_size);
                    crate::sync::lock_std(&done).push(Done { id: job.id, result });
                    let _ = sys::eventfd_signal(efd.as_fd());
                    if crate::sync::lock_std(&abandoned).remove(&job.id) {
                        // A replacement took this worker's place while the fetch hung.
                        break;
                    }
                }
                threads.fetch_sub(1, AtomicOrdering::AcqRel);
            });
        spawned.map(drop).inspect_err(|_| {
            self.threads.fetch_sub(1, AtomicOrdering::AcqRel);
        })
    }

    /// A fetch timed out and its worker may be stuck in it for good: starts a replacement, so
    /// healthy pages keep being served, up to [`PagerConfig::max_fetch_threads`] threads.
    ///
    /// [`PagerConfig::max_fetch_threads`]: crate::PagerConfig::max_fetch_threads
    fn replace_hung_worker(&self, id: u64) {
        let cap = self
            .shared
            .config
            .max_fetch_threads
            .max(self.shared.config.fetch_workers);
        if self.threads.load(AtomicOrdering::Acquire) >= cap {
            tracing::warn!(
                threads = cap,
                "every fetch thread is held by a fetch that timed out; faults on other pages \
                 wait for the fetch timeout"
            );
            return;
        }
        crate::sync::lock_std(&self.abandoned).insert(id);
        if self.add_worker().is_ok() {
            Stats::add(&self.shared.stats.fetch_threads_replaced, 1);
        } else {
            crate::sync::lock_std(&self.abandoned).remove(&id);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Workers exit when the channel closes; a worker stuck in a hung fetch exits when the
        // fetch returns (a fetch cannot be cancelled from outside).
        self.jobs.take();
    }
}

pub(crate) fn spawn(
    pager: &Pager,
    uffd: Arc<Uffd>,
    fail: FailTarget,
) -> Result<JoinHandle<Result<(), ServeError>>, PagerError> {
    let shared = Arc::clone(&pager.shared);
    shared.linux.wake_fd().map_err(|source| PagerError::Spawn {
        what: "shutdown eventfd",
        source,
    })?;
    let pool = Some(Pool::start(&shared).map_err(|source| PagerError::Spawn {
        what: "fetch workers",
        source,
    })?);
    std::thread::Builder::new()
        .name("squib-uffd".into())
        .spawn(move || Server::new(shared, uffd, fail, pool).run())
        .map_err(|source| PagerError::Spawn {
            what: "fault server thread",
            source,
        })
}

struct Server {
    shared: Arc<Shared>,
    uffd: Arc<Uffd>,
    fail: FailTarget,
    pool: Option<Pool>,
    regions: Vec<RegionPages>,
    generation: u64,
    deferred: VecDeque<Deferred>,
    prewarm: VecDeque<u64>,
    bg_region: usize,
    bg_page: usize,
    bg_chunk: usize,
    bg_done: bool,
    /// The last [`Pager::populate`](crate::Pager::populate) request seen.
    populate_seen: u64,
    /// Whether the pages were checked after the last pass (and when to pass again over what
    /// it left missing, if population was asked for).
    bg_checked: bool,
    bg_retry_at: Option<Instant>,
    events: Vec<UffdEvent>,
    peer_gone: bool,
    /// Faults on pages that were in flight for a proactive run: (address, thread id).
    waiting: Vec<(u64, u32)>,
    /// Source of zero huge pages: hugetlb memory has no `UFFDIO_ZEROPAGE`, so known-zero huge
    /// pages are copied from this never-touched mapping (read as the zero page, no memory
    /// used). Made on first need.
    huge_zeros: Option<AnonMapping>,
}

fn io_err(op: &'static str) -> impl FnOnce(UffdError) -> ServeError {
    move |e| ServeError::Io {
        op,
        source: io::Error::other(e),
    }
}

impl Server {
    fn new(shared: Arc<Shared>, uffd: Arc<Uffd>, fail: FailTarget, pool: Option<Pool>) -> Self {
        let prewarm = shared.config.prewarm.offsets().iter().copied().collect();
        let bg_chunk = shared.config.background_min_chunk.max(1);
        let mut s = Self {
            shared,
            uffd,
            fail,
            pool,
            regions: Vec::new(),
            generation: u64::MAX,
            deferred: VecDeque::new(),
            prewarm,
            bg_region: 0,
            bg_page: 0,
            bg_chunk,
            bg_done: false,
            populate_seen: 0,
            bg_checked: false,
            bg_retry_at: None,
            events: Vec::with_capacity(64),
            peer_gone: false,
            waiting: Vec::new(),
            huge_zeros: None,
        };
        s.refresh();
        s
    }

    fn run(mut self) -> Result<(), ServeError> {
        let mut spin_until: Option<Instant> = None;
        loop {
            if self.shared.shutdown_requested() || self.peer_gone {
                return Ok(());
            }
            self.refresh();
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            self.uffd
                .read_events(&mut events)
                .map_err(io_err("read userfaultfd events"))?;
            for ev in &events {
                match *ev {
                    UffdEvent::Remove { start, end } => self.on_remove(start, end),
                    UffdEvent::Unmap { start, end } => self.unmapped(start, end),
                    UffdEvent::Remap { from, len, .. } => {
                        self.unmapped(from, from.saturating_add(len))
                    }
                    _ => {}
                }
            }
            for ev in &events {
                if let UffdEvent::PageFault { addr, tid, .. } = *ev {
                    self.on_fault(addr, tid)?;
                }
            }
            let had_events = !events.is_empty();
            self.events = events;
            self.retry_deferred()?;
            self.collect_fetches()?;
            self.settle_waiters()?;
            // After a batch of faults, poll rather than read again: poll returns at once if
            // more events came, and saves a read that finds the queue empty.
            if had_events {
                spin_until = Some(Instant::now() + self.shared.config.spin_after_fault);
            }
            let busy = !self.deferred.is_empty() || self.proactive_step()?;
            if !busy {
                if spin_until.is_some_and(|t| Instant::now() < t) {
                    std::hint::spin_loop();
                    continue;
                }
                spin_until = None;
                self.sleep()?;
            } else if !had_events && !self.deferred.is_empty() {
                std::thread::yield_now();
            }
        }
    }

    fn sleep(&mut self) -> Result<(), ServeError> {
        let mut timeout = self.shared.config.poll_interval;
        if let Some(pool) = &self.pool
            && let Some(deadline) = pool.pending.values().map(|(_, d)| *d).min()
        {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        let wake = self
            .shared
            .linux
            .wake_fd()
            .map_err(|source| ServeError::Io {
                op: "create the shutdown eventfd",
                source,
            })?;
        // Slots: 0 the uffd, 1 the shutdown eventfd, then the workers' eventfd and the peer's
        // pidfd when there are any.
        let mut fds = [self.uffd.raw(); 4];
        fds[1] = wake;
        let mut n = 2;
        let pool_slot = self.pool.as_ref().map(|p| {
            fds[n] = p.efd.as_fd();
            n += 1;
            n - 1
        });
        let peer_slot = match &self.fail {
            FailTarget::Peer {
                pidfd: Some(pidfd), ..
            } => {
                fds[n] = pidfd.as_fd();
                n += 1;
                Some(n - 1)
            }
            _ => None,
        };
        let ready = sys::poll_readable(&fds[..n], Some(timeout))
            .map_err(|source| ServeError::Io { op: "poll", source })?;
        let is = |slot: Option<usize>| slot.is_some_and(|i| ready & (1 << i) != 0);
        if is(Some(1)) {
            sys::eventfd_drain(wake);
        }
        if is(pool_slot)
            && let Some(pool) = &self.pool
        {
            // Completions are collected on the next turn of the loop.
            sys::eventfd_drain(pool.efd.as_fd());
        }
        if is(peer_slot) {
            // The peer exited: nothing is left to serve.
            self.peer_gone = true;
        }
        Ok(())
    }

    /// Rebuilds the page tables if regions were added or removed, keeping known states.
    fn refresh(&mut self) {
        let generation = self
            .shared
            .region_generation
            .load(std::sync::atomic::Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let old: Vec<RegionPages> = std::mem::take(&mut self.regions);
        let mut old: Vec<Option<RegionPages>> = old.into_iter().map(Some).collect();
        // Where each old region index went (None: the region is gone).
        let mut remap: Vec<Option<usize>> = vec![None; old.len()];
        // In-process, only `LazyMapping`s are registered with this uffd; other registered
        // regions (addresses some other mechanism serves) are not this server's to populate.
        let in_process = matches!(self.fail, FailTarget::InProcess);
        for region in self.shared.regions_snapshot() {
            if in_process && !self.shared.linux.is_lazy(region.base) {
                continue;
            }
            let kept = old
                .iter()
                .position(|r| r.as_ref().is_some_and(|r| r.region == region));
            let pages = match kept {
                Some(i) => {
                    remap[i] = Some(self.regions.len());
                    old[i].take()
                }
                None => None,
            };
            self.regions.push(pages.unwrap_or_else(|| RegionPages {
                region,
                pages: vec![Page::Missing; region.pages()],
                next_seq: u64::MAX,
                window: 1,
            }));
        }
        // Runs still queued refer to regions by index: move them, or drop those of regions
        // that are gone (nothing is left to install them into).
        let moved = |run: &mut Run| match remap.get(run.region).copied().flatten() {
            Some(i) => {
                run.region = i;
                true
            }
            None => false,
        };
        self.deferred.retain_mut(|d| moved(&mut d.run));
        if let Some(pool) = &mut self.pool {
            let mut dropped_proactive = 0;
            pool.pending.retain(|_, (run, _)| {
                let keep = moved(run);
                if !keep && !matches!(run.kind, Kind::Demand { .. } | Kind::Readahead) {
                    dropped_proactive += 1;
                }
                keep
            });
            pool.proactive = pool.proactive.saturating_sub(dropped_proactive);
        }
        self.restart_population();
        self.shared.populated.store(false, AtomicOrdering::Release);
    }

    /// Starts the background pass over from the first page.
    fn restart_population(&mut self) {
        self.bg_region = 0;
        self.bg_page = 0;
        self.bg_done = false;
        self.bg_checked = false;
        self.bg_retry_at = None;
    }

    /// After a pass, once its fetches have landed: whether any page is still to fetch. If none
    /// is, the pager is populated; if some are (their fetch failed) and population was asked
    /// for, another pass goes over them one poll interval later.
    fn check_population(&mut self) {
        let proactive_in_flight = self.pool.as_ref().is_some_and(|p| p.proactive > 0);
        if self.bg_checked || proactive_in_flight || !self.deferred.is_empty() {
            return;
        }
        let (mut in_flight, mut missing) = (false, false);
        for page in self.regions.iter().flat_map(|rp| &rp.pages) {
            in_flight |= *page == Page::InFlight;
            missing |= *page == Page::Missing;
        }
        if in_flight {
            // A demand fetch is still out: look again once it has landed.
            return;
        }
        self.bg_checked = true;
        if !missing {
            self.shared.populated.store(true, AtomicOrdering::Release);
        } else if self.populate_seen != 0 {
            self.bg_retry_at = Some(Instant::now() + self.shared.config.poll_interval);
        }
    }

    fn locate(&self, addr: u64) -> Option<(usize, usize)> {
        let i = self.regions.partition_point(|r| r.region.base <= addr);
        let ri = i.checked_sub(1)?;
        let r = &self.regions[ri].region;
        r.contains(addr)
            .then(|| (ri, ((addr - r.base) / r.page_size as u64) as usize))
    }

    fn page_addr(&self, ri: usize, pi: usize) -> u64 {
        let r = &self.regions[ri].region;
        r.base + (pi * r.page_size) as u64
    }

    fn on_remove(&mut self, start: u64, end: u64) {
        Stats::add(&self.shared.stats.removes, 1);
        self.mark_range(start, end, Page::Removed);
    }

    /// The peer unmapped (or moved away) `start..end`. Its pages are gone, and every thread
    /// blocked on one of them (the owner of a fetch in flight, a waiter) is woken to find that
    /// out from the kernel (SIGSEGV, as without a pager): none is left frozen on a page that
    /// will never be installed, and none is failed closed for it.
    fn unmapped(&mut self, start: u64, end: u64) {
        self.mark_range(start, end, Page::Gone);
        for rp in &self.regions {
            let (lo, hi) = (start.max(rp.region.base), end.min(rp.region.end()));
            if lo < hi {
                let ps = rp.region.page_size as u64;
                let lo = lo - lo % ps;
                let _ = self.uffd.wake(lo, hi.div_ceil(ps) * ps - lo);
            }
        }
        self.waiting
            .retain(|&(addr, _)| !(start..end).contains(&addr));
    }

    fn mark_range(&mut self, start: u64, end: u64, to: Page) {
        for rp in &mut self.regions {
            let r = rp.region;
            let lo = start.max(r.base);
            let hi = end.min(r.end());
            if lo >= hi {
                continue;
            }
            let ps = r.page_size as u64;
            let first = ((lo - r.base) / ps) as usize;
            let last = ((hi - r.base).div_ceil(ps) as usize).min(rp.pages.len());
            for p in &mut rp.pages[first..last] {
                if *p != Page::Gone {
                    *p = to;
                }
            }
        }
    }

    fn on_fault(&mut self, addr: u64, tid: u32) -> Result<(), ServeError> {
        Stats::add(&self.shared.stats.faults, 1);
        self.serve(addr, tid, Instant::now())
    }

    /// Wakes threads whose page a proactive run installed; serves again those whose page went
    /// back to missing (a failed background fetch) or was removed meanwhile.
    fn settle_waiters(&mut self) -> Result<(), ServeError> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        for (addr, tid) in std::mem::take(&mut self.waiting) {
            match self.locate(addr).map(|(ri, pi)| self.regions[ri].pages[pi]) {
                Some(Page::InFlight) => self.waiting.push((addr, tid)),
                _ => self.serve(addr, tid, Instant::now())?,
            }
        }
        Ok(())
    }

    fn serve(&mut self, addr: u64, tid: u32, t0: Instant) -> Result<(), ServeError> {
        let loc = match self.locate(addr) {
            Some(loc) => Some(loc),
            None => {
                self.generation = u64::MAX;
                self.refresh();
                self.locate(addr)
            }
        };
        let Some((ri, pi)) = loc else {
            let err = PagerError::OutOfRegion { addr, len: 1 };
            return self.fail_closed(None, addr, 0, tid, &err);
        };
        let ps = self.regions[ri].region.page_size;
        let page_addr = self.page_addr(ri, pi);
        match self.regions[ri].pages[pi] {
            Page::Present => return self.refault(page_addr, ps, addr, tid, t0),
            Page::InFlight => self.waiting.push((addr, tid)),
            Page::Poisoned | Page::Gone => {
                let offset = self.regions[ri].region.offset_of(page_addr);
                let err = PagerError::OutOfRegion { addr, len: ps };
                return self.fail_closed(Some((ri, pi)), addr, offset, tid, &err);
            }
            Page::Removed => {
                let run = Run {
                    region: ri,
                    first: pi,
                    count: 1,
                    kind: Kind::Demand { t0, tid, addr },
                };
                return self.place(run, None);
            }
            Page::Missing => {
                let offset = self.regions[ri].region.offset_of(page_addr);
                self.shared.record_touch(offset);
                let max_pages = (self.shared.config.readahead_max / ps).max(1);
                let rp = &mut self.regions[ri];
                if self.shared.config.readahead_max > 0 && page_addr == rp.next_seq {
                    Stats::add(&self.shared.stats.readahead_hits, 1);
                    rp.window = (rp.window * 2).min(max_pages);
                } else {
                    rp.window = 1;
                }
                let mut count = 1;
                while count < rp.window
                    && pi + count < rp.pages.len()
                    && rp.pages[pi + count] == Page::Missing
                {
                    count += 1;
                }
                rp.next_seq = page_addr + (count * ps) as u64;
                let run = Run {
                    region: ri,
                    first: pi,
                    count,
                    kind: Kind::Demand { t0, tid, addr },
                };
                return self.submit(run);
            }
        }
        Ok(())
    }

    /// Marks a run in flight, then installs its known-zero stretches (holes) at once without
    /// reading them, and fetches the rest.
    fn submit(&mut self, run: Run) -> Result<(), ServeError> {
        let rp = &mut self.regions[run.region];
        for p in &mut rp.pages[run.first..run.first + run.count] {
            *p = Page::InFlight;
        }
        let r = rp.region;
        let ps = r.page_size;
        let offset = r.offset_of(r.base + (run.first * ps) as u64);
        if self.shared.source.known_zero(offset, run.count * ps) {
            return self.place(run, None);
        }
        // Split at hole boundaries.
        let zero_at = |k: usize| self.shared.source.known_zero(offset + (k * ps) as u64, ps);
        let mut parts = Vec::new();
        let mut i = 0;
        while i < run.count {
            let zero = zero_at(i);
            let mut n = 1;
            while i + n < run.count && zero_at(i + n) == zero {
                n += 1;
            }
            let kind = match run.kind {
                Kind::Demand { .. } if i > 0 => Kind::Readahead,
                k => k,
            };
            parts.push((
                Run {
                    first: run.first + i,
                    count: n,
                    kind,
                    ..run
                },
                zero,
            ));
            i += n;
        }
        for (part, zero) in parts {
            if zero {
                self.place(part, None)?;
            } else {
                self.fetch_run(part)?;
            }
        }
        Ok(())
    }

    /// Fetches a run's bytes: demand runs of local sources inline, everything else on a
    /// worker (so slow fetches never block the loop, and background reads overlap installs).
    fn fetch_run(&mut self, run: Run) -> Result<(), ServeError> {
        let r = self.regions[run.region].region;
        let addr = r.base + (run.first * r.page_size) as u64;
        let offset = r.offset_of(addr);
        let len = run.count * r.page_size;
        // Prewarm pages are wanted next, so a local source serves them inline too.
        let inline = self.shared.source.is_local()
            && matches!(
                run.kind,
                Kind::Demand { .. } | Kind::Readahead | Kind::Prewarm
            );
        if let Some(pool) = self.pool.as_mut().filter(|_| !inline) {
            let id = pool.next_id;
            pool.next_id += 1;
            let deadline = Instant::now() + self.shared.config.fetch_timeout;
            pool.pending.insert(id, (run, deadline));
            if !matches!(run.kind, Kind::Demand { .. } | Kind::Readahead) {
                pool.proactive += 1;
            }
            let job = Job {
                id,
                lane: run.kind.lane(),
                addr,
                offset,
                len,
                page_size: r.page_size,
            };
            if let Some(tx) = &pool.jobs {
                let _ = tx.send(job);
            }
            return Ok(());
        }
        match self
            .shared
            .fetch_in(run.kind.lane(), addr, offset, len, r.page_size)
        {
            Ok(bytes) => self.place(run, Some(bytes)),
            Err(e) => self.fetch_failed(run, &e),
        }
    }

    fn fetch_failed(&mut self, run: Run, err: &PagerError) -> Result<(), ServeError> {
        let r = self.regions[run.region].region;
        match run.kind {
            Kind::Demand { tid, addr, .. } => {
                let rp = &mut self.regions[run.region];
                for p in &mut rp.pages[run.first + 1..run.first + run.count] {
                    if *p == Page::InFlight {
                        *p = Page::Missing;
                    }
                }
                if run.count > 1 {
                    // The readahead may be what failed (a bad page further on, a source that
                    // ends early, a slow large read): ask for the demanded page alone, and
                    // start the window over.
                    Stats::add(&self.shared.stats.readahead_retries, 1);
                    rp.window = 1;
                    rp.next_seq = u64::MAX;
                    return self.fetch_run(Run { count: 1, ..run });
                }
                let offset = r.offset_of(addr - addr % r.page_size as u64);
                self.fail_closed(Some((run.region, run.first)), addr, offset, tid, err)
            }
            Kind::Readahead | Kind::Prewarm | Kind::Background => {
                // Nobody waits for these pages: leave them missing; a touch will retry them.
                for p in &mut self.regions[run.region].pages[run.first..run.first + run.count] {
                    if *p == Page::InFlight {
                        *p = Page::Missing;
                    }
                }
                Ok(())
            }
        }
    }

    /// Installs a fetched run (`None`: all zeros), page states permitting.
    fn place(&mut self, run: Run, bytes: Option<Bytes>) -> Result<(), ServeError> {
        let r = self.regions[run.region].region;
        let ps = r.page_size;
        // Proactive runs are installed without waking anyone (DONTWAKE); a thread that faulted
        // on one of their pages meanwhile is in `waiting` and woken by `settle_waiters`.
        let wake = matches!(run.kind, Kind::Demand { .. } | Kind::Readahead);
        // A removed page is installed (as zeros) only for the thread that faulted on it. Any
        // other install could land after the REMOVE event was read but before `madvise`
        // zapped the page, and be thrown away; the page then faults later and gets its zeros.
        let demanded = match run.kind {
            Kind::Demand { addr, .. } => self.locate(addr).map(|(_, pi)| pi),
            _ => None,
        };
        let skip = |pi: usize, state: Page| match state {
            Page::Present | Page::Gone | Page::Poisoned => true,
            Page::Removed => Some(pi) != demanded,
            Page::Missing | Page::InFlight => false,
        };
        let mut i = 0;
        while i < run.count {
            let pi = run.first + i;
            let state = self.regions[run.region].pages[pi];
            if skip(pi, state) {
                i += 1;
                continue;
            }
            let page_zero = |k: usize| match &bytes {
                None => true,
                Some(b) => {
                    let st = self.regions[run.region].pages[run.first + k];
                    st == Page::Removed || is_zero(&b[k * ps..(k + 1) * ps])
                }
            };
            let zero = page_zero(i);
            // Extend the segment over pages of the same kind that still need installing.
            let mut n = 1;
            while i + n < run.count {
                let st = self.regions[run.region].pages[run.first + i + n];
                if skip(run.first + i + n, st) || page_zero(i + n) != zero {
                    break;
                }
                n += 1;
            }
            let addr = r.base + (pi * ps) as u64;
            let len = (n * ps) as u64;
            let result = if zero {
                self.install_zeros(addr, len, ps, wake)
            } else {
                let b = bytes.as_ref().expect("non-zero pages have bytes");
                sys::uffd_copy(self.uffd.raw(), addr, &b[i * ps..(i + n) * ps], !wake)
            };
            let done_pages = (result.bytes / ps as u64) as usize;
            self.installed(run, i, done_pages, zero);
            i += done_pages;
            let Some(err) = result.error else {
                continue;
            };
            match err.raw_os_error() {
                Some(libc::EAGAIN) => {
                    Stats::add(&self.shared.stats.eagain_retries, 1);
                    let rest = Run {
                        first: run.first + i,
                        count: run.count - i,
                        ..run
                    };
                    let bytes = bytes.as_ref().map(|b| b.slice(i * ps..));
                    self.deferred.push_back(Deferred { run: rest, bytes });
                    return Ok(());
                }
                Some(libc::EEXIST) => {
                    Stats::add(&self.shared.stats.eexist, 1);
                    let at = r.base + ((run.first + i) * ps) as u64;
                    self.regions[run.region].pages[run.first + i] = Page::Present;
                    let _ = self.uffd.wake(at, ps as u64);
                    i += 1;
                }
                Some(libc::ENOENT | libc::EFAULT | libc::ESRCH) => {
                    // The memory is gone (unmapped, or the process exited).
                    for p in
                        &mut self.regions[run.region].pages[run.first + i..run.first + run.count]
                    {
                        *p = Page::Gone;
                    }
                    return Ok(());
                }
                _ => {
                    let at = r.base + ((run.first + i) * ps) as u64;
                    let e = PagerError::Install {
                        addr: at,
                        source: err,
                    };
                    let tid = match run.kind {
                        Kind::Demand { tid, .. } => tid,
                        _ => 0,
                    };
                    return self.fail_closed(
                        Some((run.region, run.first + i)),
                        at,
                        r.offset_of(at),
                        tid,
                        &e,
                    );
                }
            }
        }
        if let Kind::Demand { t0, .. } = run.kind {
            self.shared.stats.record_latency(t0.elapsed());
        }
        if let Some(b) = bytes {
            self.shared.source.recycle(b);
        }
        Ok(())
    }

    /// Installs zeros from `addr` over up to `len` bytes of pages of `ps` bytes. Base pages
    /// map the shared zero page (`UFFDIO_ZEROPAGE`); hugetlb has no such call, so a huge page
    /// is copied from zeros, one per call (the caller carries on from the bytes done).
    fn install_zeros(&mut self, addr: u64, len: u64, ps: usize, wake: bool) -> sys::Installed {
        if ps == host_page_size() {
            return sys::uffd_zeropage(self.uffd.raw(), addr, len, !wake);
        }
        let uffd = Arc::clone(&self.uffd);
        match self.huge_zeros(ps) {
            Ok(zeros) => sys::uffd_copy(uffd.raw(), addr, &zeros[..ps], !wake),
            Err(e) => sys::Installed {
                bytes: 0,
                error: Some(e),
            },
        }
    }

    /// A fault on a page already installed. Usually it raced the install and the page is
    /// there: installing zeros is refused with EEXIST, and the thread is woken. But a page
    /// installed after its REMOVE event was read and before `madvise` zapped it faults again
    /// with nothing behind it; it was removed, so it gets zeros.
    fn refault(
        &mut self,
        page_addr: u64,
        ps: usize,
        addr: u64,
        tid: u32,
        t0: Instant,
    ) -> Result<(), ServeError> {
        let result = self.install_zeros(page_addr, ps as u64, ps, true);
        let stats = &self.shared.stats;
        match result.error.as_ref().and_then(io::Error::raw_os_error) {
            None => {
                Stats::add(&stats.zero_pages, 1);
                Stats::add(&stats.bytes_served, ps as u64);
            }
            Some(libc::EEXIST) => {
                Stats::add(&stats.eexist, 1);
                let _ = self.uffd.wake(page_addr, ps as u64);
            }
            // A remove is pending: serve this thread again on the next turn.
            Some(libc::EAGAIN) => {
                Stats::add(&stats.eagain_retries, 1);
                self.waiting.push((addr, tid));
                return Ok(());
            }
            // The memory is going away; wake the thread to find out.
            Some(_) => {
                let _ = self.uffd.wake(page_addr, ps as u64);
            }
        }
        stats.record_latency(t0.elapsed());
        Ok(())
    }

    /// `len` zero bytes to copy huge pages from (the mapping is made once).
    fn huge_zeros(&mut self, len: usize) -> io::Result<&[u8]> {
        if self.huge_zeros.as_ref().is_none_or(|m| m.len() < len) {
            self.huge_zeros = Some(AnonMapping::new(len)?);
        }
        Ok(self
            .huge_zeros
            .as_ref()
            .map(AnonMapping::as_slice)
            .unwrap_or_default())
    }

    /// Books `n` pages of `run` starting at its page `i` as installed.
    fn installed(&mut self, run: Run, i: usize, n: usize, zero: bool) {
        if n == 0 {
            return;
        }
        let ps = self.regions[run.region].region.page_size;
        for p in &mut self.regions[run.region].pages[run.first + i..run.first + i + n] {
            *p = Page::Present;
        }
        let stats = &self.shared.stats;
        Stats::add(&stats.bytes_served, (n * ps) as u64);
        Stats::add(
            if zero {
                &stats.zero_pages
            } else {
                &stats.pages_copied
            },
            n as u64,
        );
        match run.kind {
            Kind::Demand { .. } => {
                // The run's first page is the demanded one; the rest came by readahead.
                let extra = if i == 0 { n - 1 } else { n };
                Stats::add(&stats.readahead_pages, extra as u64);
            }
            Kind::Readahead => Stats::add(&stats.readahead_pages, n as u64),
            Kind::Prewarm => Stats::add(&stats.prewarmed, n as u64),
            Kind::Background => Stats::add(&stats.background_pages, n as u64),
        }
    }

    fn retry_deferred(&mut self) -> Result<(), ServeError> {
        for _ in 0..self.deferred.len() {
            let Some(d) = self.deferred.pop_front() else {
                break;
            };
            self.place(d.run, d.bytes)?;
        }
        Ok(())
    }

    fn collect_fetches(&mut self) -> Result<(), ServeError> {
        let Some(pool) = &mut self.pool else {
            return Ok(());
        };
        let done = std::mem::take(&mut *crate::sync::lock_std(&pool.done));
        let now = Instant::now();
        let mut ready = Vec::new();
        for d in done {
            if let Some((run, _)) = pool.pending.remove(&d.id) {
                ready.push((run, d.result));
            }
            // Else: a late answer to a fetch that already timed out; dropped.
        }
        let expired: Vec<u64> = pool
            .pending
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((run, _)) = pool.pending.remove(&id) {
                pool.replace_hung_worker(id);
                let r = self.regions[run.region].region;
                ready.push((
                    run,
                    Err(PagerError::FetchTimeout {
                        addr: r.base + (run.first * r.page_size) as u64,
                        timeout: self.shared.config.fetch_timeout,
                    }),
                ));
            }
        }
        for (run, result) in ready {
            if let Some(pool) = &mut self.pool
                && !matches!(run.kind, Kind::Demand { .. } | Kind::Readahead)
            {
                pool.proactive = pool.proactive.saturating_sub(1);
            }
            match result {
                Ok(bytes) => self.place(run, Some(bytes))?,
                Err(e) => self.fetch_failed(run, &e)?,
            }
        }
        Ok(())
    }

    /// One prewarm run or background chunk; returns whether there was work.
    fn proactive_step(&mut self) -> Result<bool, ServeError> {
        // Two proactive fetches in flight: one being read while the other is installed.
        if let Some(pool) = &self.pool
            && pool.proactive >= 2
        {
            return Ok(false);
        }
        if let Some(run) = self.next_prewarm_run() {
            self.submit(run)?;
            // Local sources: a few more runs before looking at the event queue again (a
            // prewarm run costs a few microseconds, a demand fault round trip several times
            // that, so this keeps the list ahead of the guest without delaying its faults much).
            if self.shared.source.is_local() {
                for _ in 0..15 {
                    let Some(run) = self.next_prewarm_run() else {
                        break;
                    };
                    self.submit(run)?;
                }
            }
            return Ok(true);
        }
        let requests = self.shared.populate_requests.load(AtomicOrdering::Acquire);
        if requests != self.populate_seen {
            self.populate_seen = requests;
            self.restart_population();
        }
        if !self.shared.config.background && self.populate_seen == 0 {
            return Ok(false);
        }
        if self.bg_done {
            if self.bg_retry_at.is_some_and(|t| Instant::now() >= t) {
                self.restart_population();
            } else {
                self.check_population();
                return Ok(false);
            }
        }
        while self.bg_region < self.regions.len() {
            let rp = &self.regions[self.bg_region];
            let ps = rp.region.page_size;
            let Some(start) = rp.pages[self.bg_page..]
                .iter()
                .position(|p| *p == Page::Missing)
                .map(|k| k + self.bg_page)
            else {
                self.bg_region += 1;
                self.bg_page = 0;
                continue;
            };
            let max = (self.bg_chunk / ps).max(1);
            let mut count = 1;
            while count < max
                && start + count < rp.pages.len()
                && rp.pages[start + count] == Page::Missing
            {
                count += 1;
            }
            self.bg_page = start + count;
            self.bg_chunk =
                (self.bg_chunk * 2).min(self.shared.config.background_max_chunk.max(ps));
            let run = Run {
                region: self.bg_region,
                first: start,
                count,
                kind: Kind::Background,
            };
            self.submit(run)?;
            return Ok(true);
        }
        self.bg_done = true;
        Ok(false)
    }

    /// The next prewarm run: consecutive list entries that are consecutive missing pages of one
    /// region, up to 256 KiB.
    fn next_prewarm_run(&mut self) -> Option<Run> {
        while let Some(off) = self.prewarm.pop_front() {
            let Some((ri, pi)) = self.locate_offset(off) else {
                continue;
            };
            if self.regions[ri].pages[pi] != Page::Missing {
                continue;
            }
            let ps = self.regions[ri].region.page_size;
            let max = ((256 << 10) / ps).max(1);
            let mut count = 1;
            while count < max {
                let Some(&next) = self.prewarm.front() else {
                    break;
                };
                if self.locate_offset(next) != Some((ri, pi + count))
                    || self.regions[ri].pages[pi + count] != Page::Missing
                {
                    break;
                }
                self.prewarm.pop_front();
                count += 1;
            }
            return Some(Run {
                region: ri,
                first: pi,
                count,
                kind: Kind::Prewarm,
            });
        }
        None
    }

    fn locate_offset(&self, off: u64) -> Option<(usize, usize)> {
        self.regions.iter().enumerate().find_map(|(ri, rp)| {
            let r = &rp.region;
            (off >= r.offset && off < r.offset + r.len)
                .then(|| (ri, ((off - r.offset) / r.page_size as u64) as usize))
        })
    }

    /// Fails a fault closed: logged and counted; the faulting thread gets SIGBUS, or the peer is
    /// killed (and the server stops).
    fn fail_closed(
        &mut self,
        page: Option<(usize, usize)>,
        addr: u64,
        offset: u64,
        tid: u32,
        err: &dyn std::error::Error,
    ) -> Result<(), ServeError> {
        self.shared.log_failure(addr, offset, err);
        let ps = crate::region::host_page_size() as u64;
        let (start, len) = match page {
            Some((ri, pi)) => {
                self.regions[ri].pages[pi] = Page::Poisoned;
                (
                    self.page_addr(ri, pi),
                    self.regions[ri].region.page_size as u64,
                )
            }
            None => (addr - addr % ps, ps),
        };
        match &self.fail {
            FailTarget::InProcess => {
                if self.uffd.can_poison()
                    && sys::uffd_poison(self.uffd.raw(), start, len)
                        .error
                        .is_none()
                {
                    return Ok(());
                }
                if tid != 0 && sys::signal_thread(tid, libc::SIGBUS).is_ok() {
                    return Ok(());
                }
                tracing::error!(
                    addr = format_args!("{addr:#x}"),
                    "cannot deliver SIGBUS for a fault that failed closed; aborting rather than \
                     leaving the thread waiting or serving wrong bytes"
                );
                std::process::abort();
            }
            FailTarget::Peer { pid, pidfd } => {
                let killed = match pidfd {
                    Some(fd) => {
                        platform_primitives::process::pidfd_signal(fd.as_fd(), libc::SIGKILL)
                    }
                    None => platform_primitives::process::signal(*pid, libc::SIGKILL),
                };
                if let Err(e) = killed {
                    tracing::error!(pid, error = %e, "cannot kill the peer of a failed fault");
                }
                Err(ServeError::PeerKilled { addr, pid: *pid })
            }
        }
    }
}
