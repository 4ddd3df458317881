//! One key's entry: its lifecycle state, the slot holding its published version, its recency
//! and its history of successes and failures.
//!
//! The lifecycle is a small state machine on one atomic byte:
//!
//! ```text
//!   Unloaded ──► Loading ──► Loaded ◄──► Rebuilding
//!       ▲           │           │             │
//!       │           ▼           ▼             ▼
//!       └──────── Failed ◄──────┴─────────────┘      (any) ──► Evicted (removed from the map)
//! ```
//!
//! `Loading` and `Rebuilding` are gates: a compare-and-swap into them picks exactly one loader.
//! The slot is a `parking_lot` read-write lock around the current version (writers' view) plus
//! a lock-free published copy for the serve path; the lock's readers hold it for
//! a reference-count increment, writers for a pointer swap. Recency is an atomic timestamp that
//! reads update without any lock.

use std::error::Error;
use std::fmt;
use std::sync::Arc as StdArc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use std::ops::{Deref, DerefMut};

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::flight::Gate;

use crate::ledger::Version;
use crate::sync::{Arc, Published};

/// Where an entry is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[repr(u8)]
pub enum EntryState {
    /// Registered, never loaded (or reset).
    Unloaded = 0,
    /// One caller is building its first version.
    Loading = 1,
    /// Serving a published version.
    Loaded = 2,
    /// Serving a published version while one caller builds its successor.
    Rebuilding = 3,
    /// The last load or rebuild failed; a previous good version, if any, may be served stale.
    Failed = 4,
    /// Evicted; the entry has left the map (seen only by holders of the old entry).
    Evicted = 5,
}

impl EntryState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 6] = [
        Self::Unloaded,
        Self::Loading,
        Self::Loaded,
        Self::Rebuilding,
        Self::Failed,
        Self::Evicted,
    ];

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Unloaded,
            1 => Self::Loading,
            2 => Self::Loaded,
            3 => Self::Rebuilding,
            4 => Self::Failed,
            _ => Self::Evicted,
        }
    }
}

impl fmt::Display for EntryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unloaded => "unloaded",
            Self::Loading => "loading",
            Self::Loaded => "loaded",
            Self::Rebuilding => "rebuilding",
            Self::Failed => "failed",
            Self::Evicted => "evicted",
        })
    }
}

/// Why a build was told to stop (see `BuildContext`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Cancelled {
    /// Admission evicted the entry to make room (or it was evicted as least recently used).
    Evicted = 1,
    /// The entry was unloaded explicitly.
    Unloaded = 2,
    /// The manager is shutting down.
    ShuttingDown = 3,
}

impl Cancelled {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Evicted),
            2 => Some(Self::Unloaded),
            3 => Some(Self::ShuttingDown),
            _ => None,
        }
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Evicted => "evicted",
            Self::Unloaded => "unloaded",
            Self::ShuttingDown => "the manager is shutting down",
        })
    }
}

/// Successes and failures, for status and stale serving.
#[derive(Debug, Default)]
pub(crate) struct History {
    pub(crate) last_good_at: Option<SystemTime>,
    pub(crate) last_error: Option<StdArc<dyn Error + Send + Sync>>,
    pub(crate) last_failure_at: Option<Instant>,
    /// Whether the last failure was the builder's own (an error or a panic): only those open a
    /// backoff window. A refusal by the budget does not — memory may be freed any moment.
    pub(crate) builder_failed: bool,
}

/// One key's entry in the manager's map.
#[derive(Debug)]
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    /// Registration order, to break recency ties.
    pub(crate) seq: u64,
    pub(crate) pinned: AtomicBool,
    /// The lifecycle state and the callers waiting on a load in flight.
    pub(crate) gate: Gate,
    /// Set when the entry is evicted; a load or rebuild in flight sees it and publishes nothing.
    pub(crate) cancelled: AtomicBool,
    /// Why a load in flight should stop: 0 while it should not, else a [`Cancelled`] code.
    cancel_reason: AtomicU8,
    pub(crate) slot: Slot<V>,
    /// Bytes of the version in the slot (0 if none).
    pub(crate) bytes: AtomicU64,
    pub(crate) peak_bytes: AtomicU64,
    /// Nanoseconds since the manager's epoch of the last read.
    pub(crate) last_access: AtomicU64,
    pub(crate) retry_count: AtomicU32,
    pub(crate) history: Mutex<History>,
}

/// Reads closer together than this do not rewrite the timestamp (keeps hot entries' cache line
/// from bouncing between cores on every read).
const TOUCH_GRANULARITY_NS: u64 = 20_000;

impl<K, V> Entry<K, V> {
    pub(crate) fn new(key: K, seq: u64, pinned: bool, now_ns: u64) -> Self {
        Self {
            key,
            seq,
            pinned: AtomicBool::new(pinned),
            gate: Gate::new(),
            cancelled: AtomicBool::new(false),
            cancel_reason: AtomicU8::new(0),
            slot: Slot::new(),
            bytes: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
            last_access: AtomicU64::new(now_ns),
            retry_count: AtomicU32::new(0),
            history: Mutex::new(History::default()),
        }
    }

    pub(crate) fn state(&self) -> EntryState {
        self.gate.state()
    }

    pub(crate) fn set_state(&self, state: EntryState) {
        self.gate.set_state(state);
    }

    /// Tells a load in flight to stop (the first reason wins) and wakes its build context.
    pub(crate) fn signal_cancel(&self, reason: Cancelled) {
        let _ = self.cancel_reason.compare_exchange(
            0,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.gate.finish();
    }

    /// Why a load in flight should stop, if it should.
    pub(crate) fn cancel_reason(&self) -> Option<Cancelled> {
        Cancelled::from_u8(self.cancel_reason.load(Ordering::Acquire))
    }

    /// How long a retry must still wait after the latest consecutive failure under `schedule`
    /// (the n-th consecutive failure waits the n-th step; the last step repeats), if at all.
    pub(crate) fn backoff_remaining(&self, schedule: &[Duration]) -> Option<Duration> {
        let failures = self.retry_count.load(Ordering::Acquire);
        if failures == 0 || schedule.is_empty() {
            return None;
        }
        let history = self.history.lock();
        if !history.builder_failed {
            return None;
        }
        let at = history.last_failure_at?;
        drop(history);
        let step = schedule[(failures as usize - 1).min(schedule.len() - 1)];
        step.checked_sub(at.elapsed()).filter(|d| !d.is_zero())
    }

    /// Records a read: a relaxed store, no lock.
    pub(crate) fn touch(&self, now_ns: u64) {
        let last = self.last_access.load(Ordering::Relaxed);
        if now_ns > last + TOUCH_GRANULARITY_NS {
            self.last_access.store(now_ns, Ordering::Relaxed);
        }
    }

    /// The current version, if any: lock-free (one atomic load, one reference-count
    /// increment).
    pub(crate) fn current(&self) -> Option<Arc<Version<V>>> {
        self.slot.load()
    }

    /// Records a failure: error text, failure time, one more consecutive failure.
    pub(crate) fn record_failure(&self, error: StdArc<dyn Error + Send + Sync>, builder: bool) {
        let mut h = self.history.lock();
        h.last_error = Some(error);
        h.builder_failed = builder;
        h.last_failure_at = Some(Instant::now());
        drop(h);
        self.retry_count.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn record_success(&self) {
        let mut h = self.history.lock();
        h.last_good_at = Some(SystemTime::now());
        drop(h);
        self.retry_count.store(0, Ordering::Release);
    }

    /// Wakes every caller that joined the load in flight (and every build context waiting
    /// for a cancellation). The state has already moved out of the gate.
    pub(crate) fn finish_flight(&self) {
        self.gate.finish();
    }
}

/// Strong references a slot itself holds to its current version: the value and the published
/// copy for the serve path. More than this means readers hold it.
pub(crate) const SLOT_REFS: usize = 2;

/// Where an entry's current version lives.
///
/// Writers (publish, eviction, unload) serialise on the lock and see each other's changes in
/// order; every write guard, as it is released, publishes the slot's value for the serve path,
/// which loads it without taking any lock.
#[derive(Debug)]
pub(crate) struct Slot<V> {
    value: RwLock<Option<Arc<Version<V>>>>,
    published: Published<Version<V>>,
}

impl<V> Slot<V> {
    fn new() -> Self {
        Self {
            value: RwLock::new(None),
            published: Published::empty(),
        }
    }

    /// The writers' view, for decisions that must not race a write.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Option<Arc<Version<V>>>> {
        self.value.read()
    }

    /// Exclusive access; the value is published when the guard is released.
    pub(crate) fn write(&self) -> SlotWriteGuard<'_, V> {
        SlotWriteGuard {
            guard: self.value.write(),
            published: &self.published,
        }
    }

    /// The serve path: the last published value, without any lock.
    pub(crate) fn load(&self) -> Option<Arc<Version<V>>> {
        self.published.load()
    }
}

/// Write access to a [`Slot`]; publishes the final value for the serve path on release.
pub(crate) struct SlotWriteGuard<'a, V> {
    guard: RwLockWriteGuard<'a, Option<Arc<Version<V>>>>,
    published: &'a Published<Version<V>>,
}

impl<V> Deref for SlotWriteGuard<'_, V> {
    type Target = Option<Arc<Version<V>>>;
    fn deref(&self) -> &Self::Target {
        &self.guard
    }
}

impl<V> DerefMut for SlotWriteGuard<'_, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.guard
    }
}

impl<V> Drop for SlotWriteGuard<'_, V> {
    fn drop(&mut self) {
        // Still under the lock: readers see the writes in the order the writers made them.
        self.published.store(self.guard.clone());
    }
}

/// A publish's change to a slot, undone on unwind.
///
/// It owns the slot's write guard for the whole publish. [`SlotTxn::swap_in`] puts the new
/// version in and keeps the previous one; if anything unwinds before [`SlotTxn::commit`], the
/// drop puts the previous version and its byte count back, so the entry serves what it served
/// before — and the ledger, whose commit either did not start or did not finish its fallible
/// part, was never changed.
pub(crate) struct SlotTxn<'a, V> {
    slot: SlotWriteGuard<'a, V>,
    bytes: &'a AtomicU64,
    prior: Option<Arc<Version<V>>>,
    prior_bytes: u64,
    armed: bool,
}

impl<'a, V> SlotTxn<'a, V> {
    pub(crate) fn begin(slot: SlotWriteGuard<'a, V>, bytes: &'a AtomicU64) -> Self {
        let prior_bytes = bytes.load(Ordering::Acquire);
        Self {
            slot,
            bytes,
            prior: None,
            prior_bytes,
            armed: true,
        }
    }

    /// Swaps `next` (measured at `next_bytes`) into the slot; returns the previous version's id.
    pub(crate) fn swap_in(&mut self, next: Arc<Version<V>>, next_bytes: u64) -> Option<u64> {
        self.prior = self.slot.replace(next);
        self.bytes.store(next_bytes, Ordering::Release);
        self.prior.as_ref().map(|v| v.id())
    }

    /// Keeps the change; returns the previous version, to be dropped once every lock is
    /// released (its drop may credit the ledger).
    pub(crate) fn commit(mut self) -> Option<Arc<Version<V>>> {
        self.armed = false;
        self.prior.take()
    }
}

impl<V> Drop for SlotTxn<'_, V> {
    fn drop(&mut self) {
        if self.armed {
            // The version that was swapped in goes back out (it was never committed: its
            // release finds no record) and the previous one comes back.
            let _unwanted = std::mem::replace(&mut *self.slot, self.prior.take());
            self.bytes.store(self.prior_bytes, Ordering::Release);
        }
    }
}

impl<V> fmt::Debug for SlotTxn<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotTxn")
            .field("prior_bytes", &self.prior_bytes)
            .field("armed", &self.armed)
            .finish()
    }
}
