//! The ledger: every byte the budget covers, in three tiers, under one innermost mutex.
//!
//! A daemon's memory for its indexes is in one of three places at any instant:
//!
//! - **loaded** — a published version the daemon serves from;
//! - **reserved** — headroom promised to a load or rebuild that is still building (a
//!   [`Grant`]), or handed to a queued request that has not collected it yet;
//! - **retained** — a version that was replaced or evicted but that some reader still holds.
//!
//! The ledger keeps `loaded + reserved + retained ≤ limit` true at every instant: each change
//! of the three counters happens inside one critical section of one mutex, and a change that
//! would break the inequality is refused in that same critical section. The high-water mark is
//! updated in the same sections, so `high_water ≤ limit` is the whole history of the invariant.
//!
//! Published versions are reached through [`Handle`]s. A version's bytes move from loaded to
//! retained when it is replaced or evicted, and leave the ledger when its last handle drops —
//! the drop itself credits them back (drop notification), with no polling. The ledger never
//! holds a strong reference to a version, so a version's destructor can never run while the
//! ledger's mutex is held; [`Ledger::audit`] is a slow safety-net scan that reconciles the
//! counters with the per-version records.
//!
//! Requests that do not fit can queue: the queue is strict FIFO, and every credit grants as many
//! queued requests from the front as now fit, so bytes freed by one request's evictions go to
//! the request at the head rather than to whoever asks next.
//!
//! The manager ([`crate::AdmissionManager`]) builds eviction, lifecycles and serving on top of
//! this type; it is public so the accounting can be used, and model-checked, on its own.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Deref;
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::sync::{
    Arc, AtomicU64, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering, Probe, probe_alive, probe_of,
};

/// A point-in-time copy of the whole ledger: every tier, the limit, the high-water mark, the
/// retained set and the queue.
///
/// Errors that refuse memory carry one, so a refusal always says where the budget went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LedgerSnapshot {
    /// The configured budget in bytes: `loaded + reserved + retained` never exceeds it.
    pub limit: u64,
    /// The budget new admissions are checked against: `limit` less the headroom a memory probe
    /// took away (equal to `limit` without a probe).
    pub effective_limit: u64,
    /// Bytes of published versions being served.
    pub loaded: u64,
    /// Bytes promised to loads and rebuilds in flight (and to granted queue requests).
    pub reserved: u64,
    /// Bytes of replaced or evicted versions that readers still hold.
    pub retained: u64,
    /// The largest `loaded + reserved + retained` ever recorded.
    pub high_water: u64,
    /// Published versions counted as loaded.
    pub loaded_count: usize,
    /// Versions counted as retained.
    pub retained_count: usize,
    /// How long the oldest retained version has been retained.
    pub oldest_retained: Option<Duration>,
    /// Requests waiting in the admission queue (not yet granted).
    pub queue_depth: usize,
}

impl LedgerSnapshot {
    /// `loaded + reserved + retained`.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.loaded + self.reserved + self.retained
    }

    /// Bytes a new admission could take now: `effective_limit - total`, or zero.
    #[must_use]
    pub fn headroom(&self) -> u64 {
        self.effective_limit.saturating_sub(self.total())
    }
}

impl fmt::Display for LedgerSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "limit {} (effective {}), loaded {} in {} versions, reserved {}, retained {} in {} \
             versions, high-water {}, {} queued",
            self.limit,
            self.effective_limit,
            self.loaded,
            self.loaded_count,
            self.reserved,
            self.retained,
            self.retained_count,
            self.high_water,
            self.queue_depth
        )
    }
}

/// Why a version left the loaded tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum RetireCause {
    /// A newer version of the same key was published.
    Replaced,
    /// Evicted to admit a reservation.
    Admission,
    /// Evicted by an explicit `unload`.
    Explicit,
    /// Evicted by an explicit least-recently-used pass (`evict_lru`).
    Lru,
}

/// Eviction counts by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct EvictionCounts {
    /// Evicted to admit a reservation.
    pub admission: u64,
    /// Evicted by `unload`.
    pub explicit: u64,
    /// Evicted by `evict_lru`.
    pub lru: u64,
    /// Bytes moved out of the loaded tier by all evictions.
    pub bytes: u64,
}

/// Counters kept under the ledger's mutex, so they are consistent with each other and with the
/// tiers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Metrics {
    /// Reservations granted (immediately or after waiting).
    pub admitted: u64,
    /// Of those, granted after waiting in the queue (not counting requests the queue granted
    /// at once, after their own evictions).
    pub admitted_after_wait: u64,
    /// Requests refused because the budget was exhausted and they chose to fail fast.
    pub rejected_budget: u64,
    /// Requests that waited until their deadline without being admitted.
    pub rejected_timeout: u64,
    /// Requests larger than the whole effective limit (never admissible).
    pub rejected_exceeds_limit: u64,
    /// Publishes whose measured size did not fit (the oversize check at publish).
    pub rejected_at_publish: u64,
    /// Evictions by cause.
    pub evictions: EvictionCounts,
    /// Versions published (committed to the loaded tier).
    pub published: u64,
    /// Requests granted past a queued request that did not fit (overtaking policy).
    pub overtakes: u64,
    /// Versions replaced by a newer publish (moved to retained).
    pub replaced: u64,
    /// Retained versions credited back by their last handle's drop.
    pub retained_released: u64,
    /// Versions whose bytes the audit scan reclaimed because no handle existed and no drop
    /// notification had credited them (should stay zero).
    pub audit_reclaimed: u64,
    /// Retained versions the audit scan reported as held past the drain warning age.
    pub drain_warnings: u64,
    /// Requests that had to wait in the queue (granted or not).
    pub queue_waits: u64,
    /// Total time spent waiting in the queue.
    pub queue_wait_total: Duration,
    /// Longest single wait in the queue.
    pub queue_wait_max: Duration,
    /// Times the ledger's mutex was taken (reads never take it; this makes that checkable).
    pub lock_acquisitions: u64,
}

/// What an audit scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditReport {
    /// Version records examined.
    pub checked: usize,
    /// Records whose versions had no handle left for two consecutive scans, reclaimed now.
    pub reclaimed: usize,
    /// Bytes those records held.
    pub reclaimed_bytes: u64,
    /// Retained versions still held past the drain warning age, reported once each.
    pub newly_past_drain: Vec<(u64, Duration)>,
    /// Whether the per-version records add up to the tier counters.
    pub consistent: bool,
}

/// One version known to the ledger: how many bytes it counts and where.
#[derive(Debug)]
struct Record {
    bytes: u64,
    retired_at: Option<Instant>,
    warned: bool,
    /// When a scan first found no handle left (a drop in progress, or a lost notification).
    orphan_since: Option<Instant>,
    probe: Probe,
}

/// A record must be seen without a holder by scans at least this far apart before the audit
/// reclaims it: a version whose last handle is dropping right now (its count is zero, its
/// release has not run yet) is never mistaken for a lost notification.
const ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// A request in the admission queue.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    bytes: u64,
    granted: bool,
    /// Whether the requester had to wait (slept, or returned `Pending`) at least once.
    slept: bool,
    enqueued_at: Instant,
    waker: Option<Waker>,
    /// Growth of a reservation whose work is finished (a publish), queued at the front: not a
    /// new admission, so it is not counted as one, and never overtaken.
    growth: bool,
    /// Later requests granted while this one waited (see [`Ledger::set_overtaking`]).
    overtaken: u32,
}

#[derive(Debug)]
struct State {
    limit: u64,
    reduction: u64,
    loaded: u64,
    reserved: u64,
    retained: u64,
    high_water: u64,
    loaded_records: HashMap<u64, Record>,
    retained_records: HashMap<u64, Record>,
    queue: VecDeque<Waiter>,
    next_ticket: u64,
    /// Bumped by every credit, grant, cancellation and poke; sleepers re-check when it moves.
    events: u64,
    sync_sleepers: usize,
    /// Wakers to call once the mutex is released.
    pending_wakes: Vec<Waker>,
    notify: bool,
    metrics: Metrics,
    /// How many later requests may be granted past one blocked request (`None`: strict FIFO).
    overtaking: Option<u32>,
}

impl State {
    fn total(&self) -> u64 {
        self.loaded + self.reserved + self.retained
    }

    fn effective_limit(&self) -> u64 {
        self.limit.saturating_sub(self.reduction)
    }

    fn fits(&self, extra: u64) -> bool {
        self.total()
            .checked_add(extra)
            .is_some_and(|t| t <= self.effective_limit())
    }

    fn ungranted(&self) -> usize {
        self.queue.iter().filter(|w| !w.granted).count()
    }

    fn bump_high_water(&mut self) {
        let total = self.total();
        if total > self.high_water {
            self.high_water = total;
        }
    }

    fn snapshot(&self) -> LedgerSnapshot {
        let now = Instant::now();
        LedgerSnapshot {
            limit: self.limit,
            effective_limit: self.effective_limit(),
            loaded: self.loaded,
            reserved: self.reserved,
            retained: self.retained,
            high_water: self.high_water,
            loaded_count: self.loaded_records.len(),
            retained_count: self.retained_records.len(),
            oldest_retained: self
                .retained_records
                .values()
                .filter_map(|r| r.retired_at)
                .min()
                .map(|t| now.saturating_duration_since(t)),
            queue_depth: self.ungranted(),
        }
    }

    /// Something changed that a waiter may care about: wake every waiter after unlocking.
    fn event(&mut self) {
        self.events = self.events.wrapping_add(1);
        if self.sync_sleepers > 0 {
            self.notify = true;
        }
        for w in &mut self.queue {
            if let Some(waker) = w.waker.take() {
                self.pending_wakes.push(waker);
            }
        }
    }

    /// Grants queued requests from the front, in order, while they fit. With overtaking, a
    /// request that fits is granted past blocked ones ahead of it, each of which counts it;
    /// a blocked request that has been overtaken its share of times (or a publish's growth)
    /// stops everything behind it.
    fn pump(&mut self) {
        let mut granted = false;
        let effective = self.effective_limit();
        let mut total = self.total();
        let bound = self.overtaking;
        let mut blocked = 0usize;
        for i in 0..self.queue.len() {
            let w = &self.queue[i];
            if w.granted {
                continue;
            }
            match total.checked_add(w.bytes) {
                Some(t) if t <= effective => {
                    total = t;
                    self.reserved += w.bytes;
                    self.queue[i].granted = true;
                    granted = true;
                    if blocked > 0 {
                        self.metrics.overtakes += 1;
                        for ahead in self.queue.iter_mut().take(i) {
                            if !ahead.granted {
                                ahead.overtaken += 1;
                            }
                        }
                    }
                }
                _ => match bound {
                    Some(max) if !w.growth && w.overtaken < max => blocked += 1,
                    _ => break,
                },
            }
        }
        if granted {
            self.bump_high_water();
            self.event();
        }
    }

    /// Whether a new request may be granted past every ungranted queued one.
    fn may_overtake(&self) -> bool {
        self.overtaking.is_some_and(|max| {
            self.queue
                .iter()
                .filter(|w| !w.granted)
                .all(|w| !w.growth && w.overtaken < max)
        })
    }

    /// Bytes came back: hand them to the queue and tell waiters.
    fn credited(&mut self) {
        self.pump();
        self.event();
    }

    fn retire(&mut self, id: u64, cause: RetireCause) -> Option<u64> {
        // Capacity first, so the insert below cannot allocate once a counter has moved.
        self.retained_records.reserve(1);
        let mut record = self.loaded_records.remove(&id)?;
        record.retired_at = Some(Instant::now());
        let bytes = record.bytes;
        self.retained_records.insert(id, record);
        self.loaded -= bytes;
        self.retained += bytes;
        match cause {
            RetireCause::Replaced => self.metrics.replaced += 1,
            RetireCause::Admission => self.metrics.evictions.admission += 1,
            RetireCause::Explicit => self.metrics.evictions.explicit += 1,
            RetireCause::Lru => self.metrics.evictions.lru += 1,
        }
        if cause != RetireCause::Replaced {
            self.metrics.evictions.bytes += bytes;
        }
        Some(bytes)
    }

    /// Counts a request leaving the queue: a grant, and a wait if it had to wait.
    fn leave_queue(&mut self, w: &Waiter) {
        if w.growth {
            return;
        }
        if w.granted {
            self.metrics.admitted += 1;
            if w.slept {
                self.metrics.admitted_after_wait += 1;
            }
        }
        if !w.slept {
            return;
        }
        let waited = w.enqueued_at.elapsed();
        self.metrics.queue_waits += 1;
        self.metrics.queue_wait_total += waited;
        self.metrics.queue_wait_max = self.metrics.queue_wait_max.max(waited);
    }
}

/// The shared core behind a [`Ledger`], its [`Grant`]s and its [`Handle`]s.
#[derive(Debug)]
pub(crate) struct Core {
    state: Mutex<State>,
    cond: Condvar,
    /// Ungranted queued requests, readable without the mutex (handle drops consult it).
    waiting: AtomicUsize,
    next_id: AtomicU64,
}

/// A state guard that, on release, wakes whoever the critical section decided to wake.
struct Locked<'a> {
    core: &'a Core,
    guard: Option<MutexGuard<'a, State>>,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_deref().expect("guard held until drop")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_deref_mut().expect("guard held until drop")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        let ungranted = guard.ungranted();
        self.core.waiting.store(ungranted, Ordering::Relaxed);
        let wakes = std::mem::take(&mut guard.pending_wakes);
        let notify = std::mem::replace(&mut guard.notify, false);
        drop(guard);
        if notify {
            self.core.cond.notify_all();
        }
        for waker in wakes {
            waker.wake();
        }
    }
}

impl Core {
    fn lock(&self) -> Locked<'_> {
        let mut guard = self.state.lock();
        guard.metrics.lock_acquisitions += 1;
        Locked {
            core: self,
            guard: Some(guard),
        }
    }

    /// The last handle of version `id` dropped: take its bytes out of whichever tier holds them.
    fn release(&self, id: u64) {
        let mut st = self.lock();
        if let Some(record) = st.retained_records.remove(&id) {
            st.retained -= record.bytes;
            st.metrics.retained_released += 1;
        } else if let Some(record) = st.loaded_records.remove(&id) {
            st.loaded -= record.bytes;
        } else {
            // Already reclaimed by an audit, or never committed (a publish that unwound).
            return;
        }
        st.credited();
    }

    fn refund(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut st = self.lock();
        st.reserved -= bytes;
        st.credited();
    }

    /// A reader let go of a version while requests are queued: the head may now find a victim
    /// it can free.
    fn poke(&self) {
        let mut st = self.lock();
        st.event();
    }
}

/// The accounting core: tiers, reservations, the admission queue and version records.
///
/// Cloning a `Ledger` is cheap and shares the same accounts.
///
/// ```
/// use sqry_admission::Ledger;
///
/// let ledger = Ledger::new(1_000);
/// let grant = ledger.try_reserve(600).expect("fits");
/// assert!(ledger.try_reserve(600).is_err(), "600 + 600 > 1000");
/// let v1 = ledger.publish(grant, vec![0u8; 4], 500, None).expect("500 <= 600");
/// assert_eq!(ledger.snapshot().loaded, 500);
///
/// let grant = ledger.try_reserve(400).expect("fits beside v1");
/// let reader = v1.clone(); // a slow reader keeps the old version
/// let v2 = ledger.publish(grant, vec![1u8; 4], 400, Some(&v1)).expect("fits");
/// drop(v1);
/// assert_eq!(ledger.snapshot().retained, 500, "still held by the reader");
/// drop(reader); // the last handle drops: its bytes are credited back at once
/// assert_eq!(ledger.snapshot().retained, 0);
/// assert_eq!(ledger.snapshot().loaded, 400);
/// # drop(v2);
/// ```
#[derive(Debug, Clone)]
pub struct Ledger {
    core: Arc<Core>,
}

impl Ledger {
    /// A ledger with a budget of `limit` bytes.
    #[must_use]
    pub fn new(limit: u64) -> Self {
        Self {
            core: Arc::new(Core {
                state: Mutex::new(State {
                    limit,
                    reduction: 0,
                    loaded: 0,
                    reserved: 0,
                    retained: 0,
                    high_water: 0,
                    loaded_records: HashMap::new(),
                    retained_records: HashMap::new(),
                    queue: VecDeque::new(),
                    next_ticket: 1,
                    events: 0,
                    sync_sleepers: 0,
                    pending_wakes: Vec::new(),
                    notify: false,
                    metrics: Metrics::default(),
                    overtaking: None,
                }),
                cond: Condvar::new(),
                waiting: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// A copy of every tier, the limits, the high-water mark and the queue, taken in one
    /// critical section.
    #[must_use]
    pub fn snapshot(&self) -> LedgerSnapshot {
        self.core.lock().snapshot()
    }

    /// The counters, taken in one critical section.
    #[must_use]
    pub fn metrics(&self) -> Metrics {
        self.core.lock().metrics.clone()
    }

    /// Changes the budget. Lowering it below what is committed evicts nothing by itself (the
    /// ledger holds no entries; `AdmissionManager::set_limit` evicts): new admissions are
    /// refused until the total falls under the new limit.
    pub fn set_limit(&self, limit: u64) {
        let mut st = self.core.lock();
        st.limit = limit;
        st.credited();
    }

    /// Lets a request that fits be granted past queued requests that do not, at most
    /// `max_overtakes` times per queued request (after which it is served first, so a large
    /// request cannot starve); `None` is strict FIFO.
    pub fn set_overtaking(&self, max_overtakes: Option<u32>) {
        let mut st = self.core.lock();
        st.overtaking = max_overtakes;
        st.credited();
    }

    /// Sets how many bytes a memory probe takes away from the budget for new admissions.
    pub(crate) fn set_reduction(&self, reduction: u64) {
        let mut st = self.core.lock();
        let lowered = reduction < st.reduction;
        st.reduction = reduction;
        if lowered {
            st.credited();
        }
    }

    /// `(total, limit)` now, for a probe computing its reduction.
    pub(crate) fn total_and_limit(&self) -> (u64, u64) {
        let st = self.core.lock();
        (st.total(), st.limit)
    }

    /// Reserves `bytes` if they fit now and nobody is queued ahead (or, with overtaking, every
    /// queued request may still be passed); one critical section checks and commits.
    ///
    /// # Errors
    ///
    /// The ledger as it was when the request was refused.
    pub fn try_reserve(&self, bytes: u64) -> Result<Grant, LedgerSnapshot> {
        let mut st = self.core.lock();
        let queued = st.ungranted() > 0;
        if st.fits(bytes) && (!queued || st.may_overtake()) {
            if queued {
                st.metrics.overtakes += 1;
                for w in st.queue.iter_mut().filter(|w| !w.granted) {
                    w.overtaken += 1;
                }
            }
            st.reserved += bytes;
            st.metrics.admitted += 1;
            st.bump_high_water();
            drop(st);
            Ok(Grant {
                core: Arc::clone(&self.core),
                bytes,
            })
        } else {
            Err(st.snapshot())
        }
    }

    /// Reserves `bytes` with no budget check: a deliberately broken primitive for the loom
    /// suite's negative control, which checks in one critical section and commits in another.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn reserve_unchecked(&self, bytes: u64) -> Grant {
        let mut st = self.core.lock();
        st.reserved += bytes;
        st.bump_high_water();
        drop(st);
        Grant {
            core: Arc::clone(&self.core),
            bytes,
        }
    }

    /// Retires a version and credits its bytes at once, whoever still holds it: the "evicted
    /// values are no longer counted" bug of best-effort caches, kept for the loom suite's
    /// negative control.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn retire_forgetting_readers<V>(&self, handle: &Handle<V>) {
        let mut st = self.core.lock();
        if let Some(record) = st.loaded_records.remove(&handle.version().id()) {
            st.loaded -= record.bytes;
            st.credited();
        }
    }

    /// Publishes `value`, measured at `bytes`, under `grant`: the grant is trued up to `bytes`
    /// (growing it if the measurement is larger and the budget allows), its bytes move to the
    /// loaded tier, and `replaces` — the previous version, if any — moves from loaded to
    /// retained, where it stays counted until its last handle drops.
    ///
    /// # Errors
    ///
    /// [`Refused`] with the value and the grant given back when `bytes` exceeds the grant by
    /// more than the budget has room for (everything counted: retained versions, the version
    /// being replaced and other reservations), or when the grant belongs to another ledger.
    pub fn publish<V: Send + Sync + 'static>(
        &self,
        mut grant: Grant,
        value: V,
        bytes: u64,
        replaces: Option<&Handle<V>>,
    ) -> Result<Handle<V>, Refused<V>> {
        let version = self.stage(value, bytes);
        let old = replaces.filter(|h| self.owns(h)).map(|h| h.version().id());
        match self.commit(&mut grant, &version, old) {
            Ok(()) => Ok(Handle::from_arc(version)),
            Err(ledger) => match Arc::try_unwrap(version) {
                Ok(version) => Err(Refused {
                    value: version.into_value(),
                    grant,
                    ledger,
                }),
                Err(_) => unreachable!("a staged version has no other handle"),
            },
        }
    }

    /// Moves a published version from loaded to retained (an eviction); its bytes stay counted
    /// until its last handle drops. Returns whether it was loaded.
    pub fn retire<V>(&self, handle: &Handle<V>) -> bool {
        self.owns(handle)
            && self
                .retire_id(handle.version().id(), RetireCause::Explicit)
                .is_some()
    }

    /// Scans every version record: reconciles the tiers with the records, reclaims records
    /// whose versions had no handle left in scans at least a second apart (a drop notification
    /// that never landed — this should not happen; the scan is a safety net), and reports
    /// retained versions held longer than `drain_warn_after`.
    #[must_use]
    pub fn audit(&self, drain_warn_after: Duration) -> AuditReport {
        let now = Instant::now();
        let mut report = AuditReport::default();
        let mut st = self.core.lock();
        let st = &mut *st;
        for (tier, records) in [
            (&mut st.loaded, &mut st.loaded_records),
            (&mut st.retained, &mut st.retained_records),
        ] {
            records.retain(|&id, record| {
                report.checked += 1;
                match (probe_alive(&record.probe), record.orphan_since) {
                    (Some(false), Some(since))
                        if now.saturating_duration_since(since) >= ORPHAN_GRACE =>
                    {
                        *tier -= record.bytes;
                        report.reclaimed += 1;
                        report.reclaimed_bytes += record.bytes;
                        return false;
                    }
                    (Some(false), Some(_)) => {}
                    (Some(false), None) => record.orphan_since = Some(now),
                    _ => record.orphan_since = None,
                }
                if let Some(at) = record.retired_at {
                    let age = now.saturating_duration_since(at);
                    if age > drain_warn_after && !record.warned {
                        record.warned = true;
                        report.newly_past_drain.push((id, age));
                    }
                }
                true
            });
        }
        st.metrics.audit_reclaimed += report.reclaimed as u64;
        st.metrics.drain_warnings += report.newly_past_drain.len() as u64;
        let loaded: u64 = st.loaded_records.values().map(|r| r.bytes).sum();
        let retained: u64 = st.retained_records.values().map(|r| r.bytes).sum();
        let granted: u64 = st.queue.iter().filter(|w| w.granted).map(|w| w.bytes).sum();
        report.consistent =
            loaded == st.loaded && retained == st.retained && granted <= st.reserved;
        if report.reclaimed > 0 {
            st.credited();
        }
        report
    }

    // ----- crate-internal steps the manager composes -----

    /// Wraps a value as a version that is not yet counted anywhere.
    pub(crate) fn stage<V>(&self, value: V, bytes: u64) -> Arc<Version<V>> {
        Arc::new(Version {
            value,
            release: Release {
                core: Arc::clone(&self.core),
                id: self.core.next_id.fetch_add(1, Ordering::Relaxed),
                bytes,
            },
            published_at: Instant::now(),
        })
    }

    /// The commit step of a publish, in one critical section. The fallible steps (making room
    /// in the record maps, inserting the new record) come first; once a counter moves, nothing
    /// can unwind.
    pub(crate) fn commit<V: Send + Sync + 'static>(
        &self,
        grant: &mut Grant,
        version: &Arc<Version<V>>,
        replaces: Option<u64>,
    ) -> Result<(), LedgerSnapshot> {
        let bytes = version.bytes();
        let probe = probe_of(version);
        if !Arc::ptr_eq(&grant.core, &self.core) || !Arc::ptr_eq(&version.release.core, &self.core)
        {
            // A grant or version of another ledger: refuse rather than corrupt either account.
            return Err(self.snapshot());
        }
        let mut st = self.core.lock();
        let extra = bytes.saturating_sub(grant.bytes);
        if extra > 0 && !st.fits(extra) {
            st.metrics.rejected_at_publish += 1;
            return Err(st.snapshot());
        }
        st.loaded_records.reserve(1);
        st.retained_records.reserve(1);
        crate::failpoint::hit("ledger.commit.insert");
        st.loaded_records.insert(
            version.id(),
            Record {
                bytes,
                retired_at: None,
                warned: false,
                orphan_since: None,
                probe,
            },
        );
        let reserved = std::mem::take(&mut grant.bytes);
        st.reserved -= reserved;
        st.loaded += bytes;
        st.metrics.published += 1;
        if let Some(old) = replaces {
            st.retire(old, RetireCause::Replaced);
        }
        st.bump_high_water();
        if reserved > bytes {
            st.credited();
        }
        Ok(())
    }

    fn owns<V>(&self, handle: &Handle<V>) -> bool {
        Arc::ptr_eq(&handle.version().release.core, &self.core)
    }

    pub(crate) fn retire_id(&self, id: u64, cause: RetireCause) -> Option<u64> {
        let mut st = self.core.lock();
        st.retire(id, cause)
    }

    /// Grows a grant by `extra` if it fits now, ignoring the queue (an in-flight load finishing
    /// its work is not a new request).
    pub(crate) fn try_grow(&self, grant: &mut Grant, extra: u64) -> Result<(), LedgerSnapshot> {
        let mut st = self.core.lock();
        if st.fits(extra) {
            st.reserved += extra;
            grant.bytes += extra;
            st.bump_high_water();
            Ok(())
        } else {
            Err(st.snapshot())
        }
    }

    pub(crate) fn count_rejection(&self, kind: Rejection) {
        let mut st = self.core.lock();
        match kind {
            Rejection::Budget => st.metrics.rejected_budget += 1,
            Rejection::Timeout => st.metrics.rejected_timeout += 1,
            Rejection::ExceedsLimit => st.metrics.rejected_exceeds_limit += 1,
            Rejection::AtPublish => st.metrics.rejected_at_publish += 1,
        }
    }

    /// Queues a request for `bytes` at the back of the FIFO and returns its ticket. If it fits
    /// at once (nobody ahead), it is granted in the same critical section.
    pub(crate) fn enqueue(&self, bytes: u64) -> u64 {
        let mut st = self.core.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(Waiter {
            ticket,
            bytes,
            granted: false,
            slept: false,
            enqueued_at: Instant::now(),
            waker: None,
            growth: false,
            overtaken: 0,
        });
        st.pump();
        drop(st);
        ticket
    }

    /// Grows `grant` by `extra` for work that is already done (a publish whose measured value
    /// is larger than its reservation), ahead of every queued newcomer: the growth is queued
    /// at the *front*, `make_room` runs (it evicts what can be freed now), and the credits
    /// those evictions bring go to the growth first. A finished build is not thrown away for
    /// a request that has not started.
    ///
    /// # Errors
    ///
    /// The ledger when even after `make_room` the growth does not fit; the grant is unchanged.
    pub fn grow_ahead_of_queue(
        &self,
        grant: &mut Grant,
        extra: u64,
        make_room: impl FnOnce(),
    ) -> Result<(), LedgerSnapshot> {
        self.grow_queued(grant, extra, make_room, true)
    }

    /// [`Self::grow_ahead_of_queue`] queued at the back instead, behind newcomers: the bug the
    /// loom suite's negative control must catch.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn grow_behind_queue(
        &self,
        grant: &mut Grant,
        extra: u64,
        make_room: impl FnOnce(),
    ) -> Result<(), LedgerSnapshot> {
        self.grow_queued(grant, extra, make_room, false)
    }

    fn grow_queued(
        &self,
        grant: &mut Grant,
        extra: u64,
        make_room: impl FnOnce(),
        front: bool,
    ) -> Result<(), LedgerSnapshot> {
        if self.try_grow(grant, extra).is_ok() {
            return Ok(());
        }
        let ticket = {
            let mut st = self.core.lock();
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            let waiter = Waiter {
                ticket,
                bytes: extra,
                granted: false,
                slept: false,
                enqueued_at: Instant::now(),
                waker: None,
                growth: true,
                overtaken: 0,
            };
            if front {
                st.queue.push_front(waiter);
            } else {
                st.queue.push_back(waiter);
            }
            st.pump();
            ticket
        };
        make_room();
        match self.cancel_ticket(ticket) {
            Some(more) => {
                grant.absorb(more);
                Ok(())
            }
            None => Err(self.snapshot()),
        }
    }

    /// Queues a request for `bytes` at the back of the admission queue (granted at once if it
    /// fits and nobody is ahead); the loom suite's newcomer.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn enqueue_request(&self, bytes: u64) -> u64 {
        self.enqueue(bytes)
    }

    /// Leaves the queue, returning the grant if the request was granted meanwhile; the loom
    /// suite's newcomer.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn leave_queue(&self, ticket: u64) -> Option<Grant> {
        self.cancel_ticket(ticket)
    }

    /// Where a ticket stands. Registers `waker` (async waiters) to be woken by the next event.
    pub(crate) fn poll_ticket(&self, ticket: u64, waker: Option<&Waker>) -> TicketPoll {
        let mut st = self.core.lock();
        let events = st.events;
        let Some(pos) = st.queue.iter().position(|w| w.ticket == ticket) else {
            return TicketPoll::Gone;
        };
        if st.queue[pos].granted {
            let Some(w) = st.queue.remove(pos) else {
                return TicketPoll::Gone;
            };
            st.leave_queue(&w);
            drop(st);
            return TicketPoll::Granted(Grant {
                core: Arc::clone(&self.core),
                bytes: w.bytes,
            });
        }
        if let Some(waker) = waker {
            st.queue[pos].waker = Some(waker.clone());
            st.queue[pos].slept = true;
        }
        let ahead = st.queue.iter().take(pos).filter(|w| !w.granted).count();
        let snapshot = st.snapshot();
        let bytes = st.queue[pos].bytes;
        TicketPoll::Pending {
            ahead,
            bytes,
            snapshot,
            events,
        }
    }

    /// Sleeps until an event newer than `events_seen`, or `deadline`. Returns at once if an
    /// event already happened.
    pub(crate) fn sleep(&self, ticket: u64, events_seen: u64, deadline: Instant) {
        let mut st = self.core.state.lock();
        if st.events != events_seen {
            return;
        }
        if let Some(w) = st.queue.iter_mut().find(|w| w.ticket == ticket) {
            w.slept = true;
        }
        st.sync_sleepers += 1;
        let _ = self.core.cond.wait_until(&mut st, deadline);
        st.sync_sleepers -= 1;
    }

    /// Leaves the queue. A request that was granted in the meantime returns its grant (the
    /// caller may keep it); otherwise its place is given up and the queue re-pumped.
    pub(crate) fn cancel_ticket(&self, ticket: u64) -> Option<Grant> {
        let mut st = self.core.lock();
        let pos = st.queue.iter().position(|w| w.ticket == ticket)?;
        let w = st.queue.remove(pos)?;
        st.leave_queue(&w);
        if w.granted {
            drop(st);
            return Some(Grant {
                core: Arc::clone(&self.core),
                bytes: w.bytes,
            });
        }
        // A request behind it may fit now.
        st.credited();
        None
    }

    /// Wakes async waiters (their futures re-check their deadlines when polled).
    pub(crate) fn wake_all(&self) {
        let mut st = self.core.lock();
        st.event();
    }

    /// Whether any request is queued and not yet granted (no lock).
    pub(crate) fn has_waiters(&self) -> bool {
        self.core.waiting.load(Ordering::Relaxed) > 0
    }
}

/// Kinds of refusal counted in [`Metrics`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rejection {
    Budget,
    Timeout,
    ExceedsLimit,
    AtPublish,
}

/// Where a queued request stands.
#[derive(Debug)]
pub(crate) enum TicketPoll {
    /// Granted: the bytes are reserved for the caller.
    Granted(Grant),
    /// Still queued, `ahead` ungranted requests in front of it.
    Pending {
        ahead: usize,
        bytes: u64,
        snapshot: LedgerSnapshot,
        events: u64,
    },
    /// Not in the queue (cancelled).
    Gone,
}

/// A publish the ledger refused: the value and the grant come back with the ledger at refusal.
#[derive(Debug)]
#[non_exhaustive]
pub struct Refused<V> {
    /// The value that was to be published.
    pub value: V,
    /// The grant, unchanged; dropping it refunds its bytes.
    pub grant: Grant,
    /// The ledger at the moment of refusal.
    pub ledger: LedgerSnapshot,
}

/// Reserved bytes: headroom promised to work in flight, refunded when dropped — on success
/// paths that never published, on error paths and on panics alike.
#[must_use = "a grant reserves bytes until it is published or dropped"]
#[derive(Debug)]
pub struct Grant {
    core: Arc<Core>,
    bytes: u64,
}

impl Grant {
    /// Bytes this grant holds.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the grant by `extra` bytes if they fit now.
    ///
    /// # Errors
    ///
    /// The ledger at refusal; the grant is unchanged.
    pub fn try_grow(&mut self, extra: u64) -> Result<(), LedgerSnapshot> {
        let ledger = Ledger {
            core: Arc::clone(&self.core),
        };
        ledger.try_grow(self, extra)
    }

    /// Shrinks the grant to `bytes` (no-op if it holds no more than that), crediting the rest.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            let excess = self.bytes - bytes;
            self.bytes = bytes;
            self.core.refund(excess);
        }
    }

    /// Moves `other`'s bytes into this grant.
    pub(crate) fn absorb(&mut self, mut other: Grant) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        self.core.refund(bytes);
    }
}

/// One published version of a value, with the accounting its last drop settles.
///
/// Fields drop in declaration order: the value's memory is freed first, then `release` credits
/// its bytes, so the ledger never under-counts memory that still exists.
#[derive(Debug)]
pub(crate) struct Version<V> {
    value: V,
    release: Release,
    pub(crate) published_at: Instant,
}

impl<V> Version<V> {
    pub(crate) fn value(&self) -> &V {
        &self.value
    }

    pub(crate) fn id(&self) -> u64 {
        self.release.id
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.release.bytes
    }

    /// Takes the value out of a version that was never committed: no record exists, so the
    /// release finds nothing to credit.
    fn into_value(self) -> V {
        let Version { value, .. } = self;
        value
    }
}

/// The drop notification of a version: credits its bytes back to the ledger.
#[derive(Debug)]
struct Release {
    core: Arc<Core>,
    id: u64,
    bytes: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.core.release(self.id);
    }
}

/// A reader's handle to a published version: dereferences to the value, clones cheaply, and
/// keeps the version's bytes counted (loaded, or retained once replaced or evicted) until the
/// last handle drops.
#[derive(Debug)]
pub struct Handle<V> {
    // `Option` only so `Drop` can let go of the reference before deciding whether to poke the
    // queue; it is `Some` at every other time.
    version: Option<Arc<Version<V>>>,
}

impl<V> Handle<V> {
    pub(crate) fn from_arc(version: Arc<Version<V>>) -> Self {
        Self {
            version: Some(version),
        }
    }

    pub(crate) fn arc(&self) -> &Arc<Version<V>> {
        self.version()
    }

    fn version(&self) -> &Arc<Version<V>> {
        match &self.version {
            Some(v) => v,
            None => unreachable!("a handle holds its version until it drops"),
        }
    }

    /// Bytes this version counts in the ledger.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.version().bytes()
    }

    /// The version's identity in the ledger (unique per ledger, increasing with publish order).
    #[must_use]
    pub fn version_id(&self) -> u64 {
        self.version().id()
    }

    /// When this version was published.
    #[must_use]
    pub fn published_at(&self) -> Instant {
        self.version().published_at
    }

    /// Whether two handles refer to the same version.
    #[must_use]
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(a.version(), b.version())
    }

    /// Strong references to this version: every handle, plus two while the manager's slot
    /// still holds it (its value and the copy published for lock-free reads).
    #[must_use]
    pub fn holders(this: &Self) -> usize {
        Arc::strong_count(this.version())
    }
}

impl<V> Clone for Handle<V> {
    fn clone(&self) -> Self {
        Self {
            version: self.version.clone(),
        }
    }
}

impl<V> Deref for Handle<V> {
    type Target = V;
    fn deref(&self) -> &V {
        self.version().value()
    }
}

impl<V> Drop for Handle<V> {
    fn drop(&mut self) {
        let Some(version) = self.version.take() else {
            return;
        };
        // Only when requests are queued does a reader's drop matter beyond the reference count:
        // it may make a loaded version freeable for the request at the head. Reading the flag
        // through the version costs no shared write; the core is cloned only in that case.
        // A drop that races with a request being queued may miss the poke: waiters also
        // re-plan at a bounded interval (`REPLAN_INTERVAL`).
        if version.release.core.waiting.load(Ordering::Relaxed) > 0 {
            let core = Arc::clone(&version.release.core);
            drop(version);
            core.poke();
        }
    }
}
