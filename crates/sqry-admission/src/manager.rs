//! The admission manager: keyed entries, their lifecycles, eviction and serving, on top of the
//! [`Ledger`].
//!
//! Each key (a workspace, a repository, an index shard) has an entry holding at most one
//! published version. Memory reaches the budget in two steps — a [`Reservation`] before the
//! work, trued up to the measured size at publish — and leaves it when the last handle to a
//! version drops. In between, the manager decides who gets memory:
//!
//! - **Reserve** checks the ledger; if the request does not fit, it joins the FIFO admission
//!   queue, and the request at the head plans least-recently-used victims under the map's read
//!   lock, counting only victims that evicting would free *now* (no reader holds them), and
//!   evicting nothing if they would not be enough. Victims are evicted with no lock held across
//!   the loop; each eviction moves bytes loaded → retained and the version's drop credits them
//!   back at once. The ledger then grants the head authoritatively, in one critical section.
//!   The request either fails fast with the whole ledger in its error or waits, with a
//!   deadline, synchronously or as a future.
//! - **Publish** measures the value, grows the reservation if the measurement is larger (the
//!   check counts every tier, the old version included), swaps the slot and commits the ledger
//!   under a rollback guard, and drops the old version outside every lock: it stays counted,
//!   as retained, until its last reader lets go.
//! - **Load** (`get_or_load`, `rebuild`) takes a lifecycle gate (one loader wins; others join
//!   its result or are refused, by choice), reserves, builds with no lock held, and publishes
//!   only if the entry was not evicted meanwhile. A loading guard turns a builder panic into
//!   `Failed` with the error recorded and the retry count raised.
//! - **Serve** reads (`get`) take no lock: the key's shard of a copy of the map and the slot's
//!   published version are `arc-swap` loads, kept in step by the writers under their locks;
//!   then reference-count increments and a relaxed timestamp store. No writer can make a read
//!   wait. `classify_for_serve` adds the stale policy (fresh, stale up to a
//!   maximum age, not ready, typed errors); it reads state, slot and history together under
//!   the map and slot read locks (never the ledger's mutex).
//!
//! Hooks run after every lock is released, so a hook may call back into the manager (even
//! `unload` of the key it was told about).
//!
//! # Lock order
//!
//! Code that holds more than one lock takes them in this order, and never the other way:
//!
//! 1. the entries map (`RwLock`; adding or removing a key also replaces one shard of the serve
//!    path's copy);
//! 2. one entry's slot (`RwLock`; its write guard publishes the serve path's copy) — never two
//!    slots at once;
//! 3. the ledger's mutex, innermost.
//!
//! An entry's history and single-flight mutexes, the estimate classes' mutex and the hook's
//! `RwLock` are leaves: nothing is acquired while one is held, and hooks are called with no lock
//! held at all. A version's destructor takes the ledger's mutex, so no version is ever dropped
//! while that mutex is held — the ledger keeps no strong reference to any version, and every
//! version taken out of a slot is dropped after the locks are released.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc as StdArc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};

use crate::HeapSize;
use crate::config::AdmissionConfig;
use crate::entry::{Entry, SLOT_REFS, SlotTxn};
use crate::error::{
    BuildError, LoadError, PublishError, ReserveError, ServeError, chain, key_text,
};
use crate::failpoint;
use crate::housekeeper::Housekeeper;
use crate::ledger::{
    AuditReport, Grant, Handle, Ledger, LedgerSnapshot, Metrics, Rejection, RetireCause, TicketPoll,
};
use crate::probe::ProbeError;
use crate::sync::Arc;

pub use crate::entry::EntryState;

/// A queued request re-plans its evictions at least this often while it waits, even without an
/// event (a reader's drop can race with the request being queued and miss its poke).
pub(crate) const REPLAN_INTERVAL: Duration = Duration::from_millis(20);

/// What to do when a request does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Fail at once with [`ReserveError::BudgetExceeded`] (after evicting, if that suffices).
    FailFast,
    /// Wait in the FIFO admission queue until `deadline`.
    Wait {
        /// When to give up with [`ReserveError::Timeout`].
        deadline: Instant,
    },
}

/// A request for memory: an estimate, an optional estimate class and what to do on overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Estimated bytes of the value to build.
    pub estimate: u64,
    /// A class whose learned multiplier scales the estimate (e.g. `"tree-index"`).
    pub class: Option<&'static str>,
    /// What to do if it does not fit.
    pub overflow: Overflow,
}

impl ReserveRequest {
    /// A fail-fast request for `estimate` bytes with no class.
    #[must_use]
    pub fn new(estimate: u64) -> Self {
        Self {
            estimate,
            class: None,
            overflow: Overflow::FailFast,
        }
    }

    /// Scales the estimate by `class`'s learned multiplier.
    #[must_use]
    pub fn class(mut self, class: &'static str) -> Self {
        self.class = Some(class);
        self
    }

    /// Waits in the admission queue for up to `timeout`.
    #[must_use]
    pub fn wait_for(self, timeout: Duration) -> Self {
        self.wait_until(Instant::now() + timeout)
    }

    /// Waits in the admission queue until `deadline`.
    #[must_use]
    pub fn wait_until(mut self, deadline: Instant) -> Self {
        self.overflow = Overflow::Wait { deadline };
        self
    }
}

/// What a load does when another caller is already loading the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SingleFlight {
    /// Wait for that load and return its result (single flight).
    #[default]
    Join,
    /// Return [`LoadError::InProgress`] at once.
    Refuse,
}

/// Options of [`AdmissionManager::get_or_load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The reservation to make before building.
    pub request: ReserveRequest,
    /// What to do if a load is already in flight.
    pub single_flight: SingleFlight,
}

impl LoadOptions {
    /// A fail-fast load reserving `estimate` bytes that joins a load in flight.
    #[must_use]
    pub fn new(estimate: u64) -> Self {
        Self {
            request: ReserveRequest::new(estimate),
            single_flight: SingleFlight::Join,
        }
    }

    /// Uses `request` for the reservation.
    #[must_use]
    pub fn request(mut self, request: ReserveRequest) -> Self {
        self.request = request;
        self
    }

    /// Sets what to do if a load is already in flight.
    #[must_use]
    pub fn single_flight(mut self, single_flight: SingleFlight) -> Self {
        self.single_flight = single_flight;
        self
    }
}

/// What a caller may serve for a key (see [`AdmissionManager::classify_for_serve`]).
#[derive(Debug, Clone)]
pub enum ServeVerdict<V> {
    /// Loaded (or loaded with a rebuild in flight): serve `value`.
    Fresh {
        /// The version to serve.
        value: Handle<V>,
        /// `Loaded` or `Rebuilding`.
        state: EntryState,
    },
    /// The last rebuild failed; the last good version is younger than the cap: serve it marked
    /// stale.
    Stale {
        /// The last good version.
        value: Handle<V>,
        /// Its age.
        age: Duration,
        /// When it was built.
        last_good_at: SystemTime,
        /// The error of the failed build.
        last_error: Option<String>,
    },
    /// Registered but not yet loaded (`Unloaded` or `Loading`): retry later.
    NotReady {
        /// `Unloaded` or `Loading`.
        state: EntryState,
    },
}

/// Called by the manager after every lock is released.
pub trait PublishHook<K, V>: Send + Sync {
    /// A new version of `key` was published.
    fn on_publish(&self, key: &K, value: &Handle<V>) {
        let _ = (key, value);
    }

    /// `key` was evicted.
    fn on_evict(&self, key: &K, cause: RetireCause) {
        let _ = (key, cause);
    }
}

/// A dry-run eviction plan (see [`AdmissionManager::plan_eviction`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionPlan<K> {
    /// Victims in eviction order (least recently used first) with their bytes.
    pub victims: Vec<(K, u64)>,
    /// Bytes the victims would free now.
    pub freeable: u64,
    /// Bytes that must be freed for the request to fit.
    pub need: u64,
    /// Whether the victims free at least `need` (if not, an admission evicts nothing).
    pub sufficient: bool,
}

/// A learned estimate multiplier for one class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassEstimate {
    /// The class.
    pub class: &'static str,
    /// Measured / estimated bytes, smoothed; applied to later estimates of the class.
    pub multiplier: f64,
    /// Publishes it learned from.
    pub samples: u64,
    /// Mean of |measured − reserved| / measured over those publishes.
    pub mean_abs_error: f64,
}

#[derive(Debug, Clone, Copy)]
struct ClassStats {
    multiplier: f64,
    samples: u64,
    abs_error_sum: f64,
}

/// One entry in [`Status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EntryStatus<K> {
    /// The key.
    pub key: K,
    /// Its lifecycle state.
    pub state: EntryState,
    /// Whether admission may evict it.
    pub pinned: bool,
    /// Bytes of its current version.
    pub bytes: u64,
    /// The largest version it published.
    pub peak_bytes: u64,
    /// Readers' handles to its current version (the manager's own reference not counted).
    pub readers: usize,
    /// Time since its last read.
    pub idle: Duration,
    /// When its last good version was built.
    pub last_good_at: Option<SystemTime>,
    /// Its last error.
    pub last_error: Option<String>,
    /// Consecutive failed loads.
    pub retry_count: u32,
    /// Remaining backoff before a retry is advisable, after a failure.
    pub retry_after: Option<Duration>,
}

/// A point-in-time report of the manager.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status<K> {
    /// This crate's version.
    pub version: &'static str,
    /// Time since the manager was created.
    pub uptime: Duration,
    /// Every tier, the limits and the high-water mark.
    pub ledger: LedgerSnapshot,
    /// Counters.
    pub metrics: Metrics,
    /// Learned estimate multipliers.
    pub estimates: Vec<ClassEstimate>,
    /// Every entry, sorted by key.
    pub entries: Vec<EntryStatus<K>>,
}

type EntryMap<K, V> = HashMap<K, StdArc<Entry<K, V>>>;

/// Shards of the serve path's copy of the key map.
const SERVE_SHARDS: usize = 256;

/// The key → entry map.
///
/// Writers coordinate through the lock, exactly as a plain `RwLock<HashMap>`. The serve path
/// reads a copy instead, split into shards of `arc-swap`ped maps: adding or removing a key
/// (under the write lock) replaces one shard, which costs a 1/256th copy of the map, and a read
/// is an atomic load of that shard — no lock, so no writer can make it wait.
struct Entries<K, V> {
    map: RwLock<EntryMap<K, V>>,
    serve: Box<[ArcSwap<EntryMap<K, V>>]>,
}

/// A cheap multiplicative hash for picking a shard (the shard's own map hashes the key again
/// with its DoS-resistant hasher, so this one only needs to spread keys).
#[derive(Default)]
struct ShardHasher(u64);

impl std::hash::Hasher for ShardHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl<K: Clone + Eq + Hash, V> Entries<K, V> {
    fn new() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            serve: (0..SERVE_SHARDS)
                .map(|_| ArcSwap::from_pointee(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, key: &K) -> &ArcSwap<EntryMap<K, V>> {
        use std::hash::Hasher;
        let mut h = ShardHasher::default();
        key.hash(&mut h);
        // The high bits mix best after the multiply.
        &self.serve[(h.finish() >> 56) as usize % SERVE_SHARDS]
    }

    /// The writers' view.
    fn read(&self) -> parking_lot::RwLockReadGuard<'_, EntryMap<K, V>> {
        self.map.read()
    }

    /// Exclusive access; keys are added and removed through the guard, which keeps the serve
    /// path's copy in step.
    fn write(&self) -> EntriesWriteGuard<'_, K, V> {
        EntriesWriteGuard {
            map: self.map.write(),
            entries: self,
        }
    }

    /// The serve path's shard holding `key`, loaded without any lock.
    fn serve_shard(&self, key: &K) -> arc_swap::Guard<StdArc<EntryMap<K, V>>> {
        self.shard(key).load()
    }
}

/// Write access to [`Entries`].
struct EntriesWriteGuard<'a, K: Clone + Eq + Hash, V> {
    map: parking_lot::RwLockWriteGuard<'a, EntryMap<K, V>>,
    entries: &'a Entries<K, V>,
}

impl<K: Clone + Eq + Hash, V> EntriesWriteGuard<'_, K, V> {
    fn insert(&mut self, key: K, entry: StdArc<Entry<K, V>>) {
        let shard = self.entries.shard(&key);
        // Serialised by the write lock: load, copy, store cannot race another writer.
        let mut copy = EntryMap::clone(&shard.load());
        copy.insert(key.clone(), StdArc::clone(&entry));
        shard.store(StdArc::new(copy));
        self.map.insert(key, entry);
    }

    fn remove(&mut self, key: &K) {
        let shard = self.entries.shard(key);
        let mut copy = EntryMap::clone(&shard.load());
        copy.remove(key);
        shard.store(StdArc::new(copy));
        self.map.remove(key);
    }
}

impl<K: Clone + Eq + Hash, V> std::ops::Deref for EntriesWriteGuard<'_, K, V> {
    type Target = EntryMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

/// The state shared by a manager, its clones, its reservations and its timer thread.
pub(crate) struct Shared<K, V> {
    config: AdmissionConfig,
    ledger: Ledger,
    entries: Entries<K, V>,
    hook: RwLock<Option<StdArc<dyn PublishHook<K, V>>>>,
    classes: Mutex<HashMap<&'static str, ClassStats>>,
    epoch: Instant,
    next_seq: AtomicU64,
    probe_last_ns: AtomicU64,
    housekeeper: Housekeeper,
}

impl<K, V> Drop for Shared<K, V> {
    fn drop(&mut self) {
        self.housekeeper.stop();
    }
}

/// Admission control for keyed, versioned, memory-hungry values.
///
/// Cloning is cheap; clones share everything. See the [module docs](crate::manager) for the protocol and
/// the lock order.
///
/// ```
/// use sqry_admission::{AdmissionConfig, AdmissionManager, HeapSize, LoadOptions};
///
/// struct Index(Vec<u64>);
/// impl HeapSize for Index {
///     fn heap_bytes(&self) -> usize {
///         self.0.capacity() * 8
///     }
/// }
///
/// let manager = AdmissionManager::<String, Index>::new(AdmissionConfig::new(1 << 20));
/// let key = "repo-a".to_string();
/// let index = manager
///     .get_or_load(&key, LoadOptions::new(80_000), |_| Ok(Index(vec![7; 10_000])))
///     .expect("fits the budget");
/// assert_eq!(index.0.len(), 10_000);
/// assert_eq!(manager.ledger().snapshot().loaded, 80_000);
/// ```
pub struct AdmissionManager<K, V> {
    shared: StdArc<Shared<K, V>>,
}

impl<K, V> Clone for AdmissionManager<K, V> {
    fn clone(&self) -> Self {
        Self {
            shared: StdArc::clone(&self.shared),
        }
    }
}

impl<K, V> fmt::Debug for AdmissionManager<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionManager")
            .field("config", &self.shared.config)
            .field("ledger", &self.shared.ledger.snapshot())
            .finish_non_exhaustive()
    }
}

/// A manager reference that does not keep it alive (for hooks, which the manager owns).
pub struct WeakManager<K, V> {
    shared: Weak<Shared<K, V>>,
}

impl<K, V> WeakManager<K, V> {
    /// The manager, if it still exists.
    #[must_use]
    pub fn upgrade(&self) -> Option<AdmissionManager<K, V>> {
        self.shared
            .upgrade()
            .map(|shared| AdmissionManager { shared })
    }
}

impl<K, V> Clone for WeakManager<K, V> {
    fn clone(&self) -> Self {
        Self {
            shared: Weak::clone(&self.shared),
        }
    }
}

impl<K, V> fmt::Debug for WeakManager<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakManager")
    }
}

/// Reserved headroom for one key's next version, refunded when dropped unless published.
///
/// Obtained from [`AdmissionManager::reserve`]; consumed by [`AdmissionManager::publish`].
#[must_use = "a reservation holds budget until it is published or dropped"]
pub struct Reservation<K, V> {
    grant: Grant,
    entry: StdArc<Entry<K, V>>,
    manager: Weak<Shared<K, V>>,
    estimate: u64,
    class: Option<&'static str>,
    initial: u64,
}

impl<K, V> fmt::Debug for Reservation<K, V>
where
    K: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.entry.key)
            .field("bytes", &self.grant.bytes())
            .field("estimate", &self.estimate)
            .field("class", &self.class)
            .finish()
    }
}

impl<K, V> Reservation<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    /// Bytes reserved.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.grant.bytes()
    }

    /// The key the reservation is for.
    #[must_use]
    pub fn key(&self) -> &K {
        &self.entry.key
    }

    /// Grows the reservation by `extra` bytes, as a new admission request (it queues, evicts
    /// and fails like one, but never evicts its own key). Waiting for growth while holding a
    /// reservation can wait on requests that are themselves waiting for this one's bytes: give
    /// it a deadline.
    ///
    /// # Errors
    ///
    /// As [`AdmissionManager::reserve`]; the reservation keeps what it had.
    pub fn grow(&mut self, extra: u64, overflow: Overflow) -> Result<(), ReserveError> {
        let Some(shared) = self.manager.upgrade() else {
            return Err(ReserveError::ManagerGone {
                key: key_text(&self.entry.key),
            });
        };
        let manager = AdmissionManager { shared };
        let more = manager.admit(&self.entry.key, extra, overflow)?;
        self.grant.absorb(more);
        Ok(())
    }

    /// Shrinks the reservation to `bytes`, crediting the rest at once.
    pub fn shrink_to(&mut self, bytes: u64) {
        self.grant.shrink_to(bytes);
    }
}

/// Where an admission step left a queued request.
enum Step {
    Granted(Grant),
    Pending {
        ahead: usize,
        snapshot: LedgerSnapshot,
        events: u64,
    },
    Gone,
}

/// Leaves the queue if the waiting caller unwinds or gives up.
struct TicketGuard<'a> {
    ledger: &'a Ledger,
    ticket: Option<u64>,
}

impl TicketGuard<'_> {
    fn cancel(&mut self) -> Option<Grant> {
        self.ticket
            .take()
            .and_then(|t| self.ledger.cancel_ticket(t))
    }

    fn disarm(&mut self) {
        self.ticket = None;
    }
}

impl Drop for TicketGuard<'_> {
    fn drop(&mut self) {
        drop(self.cancel());
    }
}

/// The reason stored when a load unwinds.
#[derive(Debug, thiserror::Error)]
#[error("the load of {key} panicked or was abandoned before it finished")]
struct LoadAborted {
    key: String,
}

/// Turns every non-success exit of a load — error, early return or panic — into `Failed`, with
/// the error recorded, one more retry counted and joiners woken.
struct LoadingGuard<'a, K: fmt::Debug, V> {
    entry: &'a Entry<K, V>,
    armed: bool,
}

impl<K: fmt::Debug, V> LoadingGuard<'_, K, V> {
    fn fail(&mut self, error: LoadError) -> LoadError {
        self.armed = false;
        self.entry.record_failure(StdArc::new(error.clone()));
        self.entry.set_state(EntryState::Failed);
        self.entry.finish_flight();
        error
    }

    fn succeed(&mut self) {
        self.armed = false;
        self.entry.finish_flight();
    }
}

impl<K: fmt::Debug, V> Drop for LoadingGuard<'_, K, V> {
    fn drop(&mut self) {
        if self.armed {
            self.entry.record_failure(StdArc::new(LoadAborted {
                key: key_text(&self.entry.key),
            }));
            self.entry.set_state(EntryState::Failed);
            self.entry.finish_flight();
        }
    }
}

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    /// A manager with `config`. Starts the audit thread if `config.audit_interval` is set.
    #[must_use]
    pub fn new(config: AdmissionConfig) -> Self {
        let ledger = Ledger::new(config.limit_bytes);
        let start_thread = config.audit_interval.is_some();
        let manager = Self {
            shared: StdArc::new(Shared {
                ledger,
                entries: Entries::new(),
                hook: RwLock::new(None),
                classes: Mutex::new(HashMap::new()),
                epoch: Instant::now(),
                next_seq: AtomicU64::new(0),
                probe_last_ns: AtomicU64::new(0),
                housekeeper: Housekeeper::default(),
                config,
            }),
        };
        if manager.shared.config.probe.is_some() {
            let _ = manager.refresh_probe();
        }
        if start_thread {
            manager.start_housekeeper();
        }
        manager
    }

    fn start_housekeeper(&self) {
        let weak = StdArc::downgrade(&self.shared);
        let audit = self.shared.config.audit_interval;
        self.shared.housekeeper.start(audit, move |tick| {
            let shared = weak.upgrade()?;
            let manager = AdmissionManager { shared };
            if tick.audit_due {
                let _ = manager.audit();
                if manager.shared.config.probe.is_some() {
                    let _ = manager.refresh_probe();
                }
            }
            if tick.wake_waiters {
                manager.shared.ledger.wake_all();
            }
            Some(manager.shared.ledger.has_waiters())
        });
    }

    /// A reference that does not keep the manager alive.
    #[must_use]
    pub fn downgrade(&self) -> WeakManager<K, V> {
        WeakManager {
            shared: StdArc::downgrade(&self.shared),
        }
    }

    /// The ledger (snapshots, metrics).
    #[must_use]
    pub fn ledger(&self) -> &Ledger {
        &self.shared.ledger
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &AdmissionConfig {
        &self.shared.config
    }

    fn now_ns(&self) -> u64 {
        self.shared.epoch.elapsed().as_nanos() as u64
    }

    // ----- entries -----

    /// Registers `key` (unloaded). Returns `false` if it was already registered.
    pub fn register(&self, key: K, pinned: bool) -> bool {
        let mut map = self.shared.entries.write();
        if map.contains_key(&key) {
            return false;
        }
        let entry = self.new_entry(key.clone(), pinned);
        map.insert(key, entry);
        true
    }

    fn new_entry(&self, key: K, pinned: bool) -> StdArc<Entry<K, V>> {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        StdArc::new(Entry::new(key, seq, pinned, self.now_ns()))
    }

    fn entry_or_insert(&self, key: &K) -> StdArc<Entry<K, V>> {
        if let Some(e) = self.shared.entries.read().get(key) {
            return StdArc::clone(e);
        }
        let mut map = self.shared.entries.write();
        if let Some(e) = map.get(key) {
            return StdArc::clone(e);
        }
        let entry = self.new_entry(key.clone(), false);
        map.insert(key.clone(), StdArc::clone(&entry));
        entry
    }

    fn entry(&self, key: &K) -> Option<StdArc<Entry<K, V>>> {
        self.shared.entries.read().get(key).cloned()
    }

    /// Pins or unpins `key`: admission never evicts a pinned entry. Returns whether the key
    /// is registered.
    pub fn set_pinned(&self, key: &K, pinned: bool) -> bool {
        match self.entry(key) {
            Some(e) => {
                e.pinned.store(pinned, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// `key`'s lifecycle state, if registered.
    #[must_use]
    pub fn state(&self, key: &K) -> Option<EntryState> {
        self.entry(key).map(|e| e.state())
    }

    /// Whether `key` is registered.
    #[must_use]
    pub fn contains(&self, key: &K) -> bool {
        self.shared.entries.read().contains_key(key)
    }

    /// Registered keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.entries.read().len()
    }

    /// Whether no key is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The serve path: the current version of `key`, whatever its state, and a recency touch.
    /// Lock-free: an atomic load of the key's shard of the map and one of the slot's published
    /// version (both `arc-swap`), reference-count increments and a relaxed atomic store. No
    /// writer — publish, eviction, registration — can make it wait, and it never touches the
    /// ledger.
    #[must_use]
    pub fn get(&self, key: &K) -> Option<Handle<V>> {
        let shard = self.shared.entries.serve_shard(key);
        let entry = shard.get(key)?;
        let version = entry.slot.load()?;
        entry.touch(self.now_ns());
        Some(Handle::from_arc(version))
    }

    /// Installs the hook (replacing any previous one).
    pub fn set_hook(&self, hook: StdArc<dyn PublishHook<K, V>>) {
        *self.shared.hook.write() = Some(hook);
    }

    /// Removes the hook.
    pub fn clear_hook(&self) {
        *self.shared.hook.write() = None;
    }

    fn hook(&self) -> Option<StdArc<dyn PublishHook<K, V>>> {
        self.shared.hook.read().clone()
    }

    // ----- admission -----

    fn admissible_entry(&self, key: &K) -> Result<StdArc<Entry<K, V>>, ReserveError> {
        let entry = self
            .entry(key)
            .ok_or_else(|| ReserveError::NotRegistered { key: key_text(key) })?;
        if entry.cancelled.load(Ordering::Acquire) {
            return Err(ReserveError::Evicted { key: key_text(key) });
        }
        Ok(entry)
    }

    fn scaled(&self, request: &ReserveRequest) -> u64 {
        let Some(class) = request.class.filter(|_| self.shared.config.learn_estimates) else {
            return request.estimate;
        };
        let multiplier = self
            .shared
            .classes
            .lock()
            .get(class)
            .map_or(1.0, |c| c.multiplier);
        let scaled = (request.estimate as f64 * multiplier).ceil();
        if scaled >= u64::MAX as f64 {
            u64::MAX
        } else {
            scaled as u64
        }
    }

    fn learn(&self, class: Option<&'static str>, estimate: u64, reserved: u64, measured: u64) {
        let Some(class) = class.filter(|_| self.shared.config.learn_estimates) else {
            return;
        };
        if estimate == 0 {
            return;
        }
        let ratio = (measured as f64 / estimate as f64).clamp(1.0 / 64.0, 64.0);
        let error = (measured as f64 - reserved as f64).abs() / (measured.max(1) as f64);
        let mut classes = self.shared.classes.lock();
        let stats = classes.entry(class).or_insert(ClassStats {
            multiplier: ratio,
            samples: 0,
            abs_error_sum: 0.0,
        });
        if stats.samples > 0 {
            stats.multiplier = 0.75 * stats.multiplier + 0.25 * ratio;
        }
        stats.samples += 1;
        stats.abs_error_sum += error;
    }

    /// Reserves headroom for `key`'s next version.
    ///
    /// If the request does not fit, the least recently used unpinned entries that can be freed
    /// now are evicted — down to the low watermark if possible, and none at all if they would
    /// not be enough — and the request is then granted or refused authoritatively in one
    /// critical section of the ledger. With [`Overflow::Wait`] it waits in the FIFO admission
    /// queue (blocking this thread) until granted or the deadline passes.
    ///
    /// # Errors
    ///
    /// [`ReserveError`]: the key is not registered or was evicted, the request is larger than
    /// the whole budget, the budget is exhausted (fail fast), or the deadline passed. On error
    /// the ledger holds nothing for this request.
    pub fn reserve(
        &self,
        key: &K,
        request: ReserveRequest,
    ) -> Result<Reservation<K, V>, ReserveError> {
        let entry = self.admissible_entry(key)?;
        let bytes = self.scaled(&request);
        let grant = self.admit(key, bytes, request.overflow)?;
        Ok(self.reservation(grant, entry, &request, bytes))
    }

    /// [`Self::reserve`] as a future: waits in the same FIFO queue without blocking a thread.
    /// Dropping the future leaves the queue (refunding anything granted meanwhile). Works on
    /// any executor: deadlines are kept by the manager's timer thread.
    pub fn reserve_async(&self, key: &K, request: ReserveRequest) -> ReserveFuture<K, V> {
        ReserveFuture {
            manager: self.clone(),
            key: key.clone(),
            request,
            state: FutureState::Start,
        }
    }

    fn reservation(
        &self,
        grant: Grant,
        entry: StdArc<Entry<K, V>>,
        request: &ReserveRequest,
        bytes: u64,
    ) -> Reservation<K, V> {
        Reservation {
            grant,
            entry,
            manager: StdArc::downgrade(&self.shared),
            estimate: request.estimate,
            class: request.class,
            initial: bytes,
        }
    }

    /// The part of admission before any waiting: an immediate grant, or a refusal that no
    /// amount of waiting changes. `Ok(None)` means the request should queue.
    fn admit_now(
        &self,
        key: &K,
        bytes: u64,
        overflow: Overflow,
    ) -> Result<Option<Grant>, ReserveError> {
        self.maybe_refresh_probe();
        let ledger = &self.shared.ledger;
        match ledger.try_reserve(bytes) {
            Ok(grant) => Ok(Some(grant)),
            Err(snapshot) if bytes > snapshot.effective_limit => {
                ledger.count_rejection(Rejection::ExceedsLimit);
                Err(ReserveError::ExceedsLimit {
                    key: key_text(key),
                    requested: bytes,
                    ledger: Box::new(snapshot),
                })
            }
            Err(snapshot) if overflow == Overflow::FailFast && snapshot.queue_depth > 0 => {
                ledger.count_rejection(Rejection::Budget);
                Err(ReserveError::BudgetExceeded {
                    key: key_text(key),
                    requested: bytes,
                    queued_ahead: snapshot.queue_depth,
                    ledger: Box::new(snapshot),
                })
            }
            Err(_) => Ok(None),
        }
    }

    /// Admission of `bytes` for `key` (synchronous; waits if `overflow` says so).
    fn admit(&self, key: &K, bytes: u64, overflow: Overflow) -> Result<Grant, ReserveError> {
        if let Some(grant) = self.admit_now(key, bytes, overflow)? {
            return Ok(grant);
        }
        let ledger = &self.shared.ledger;
        let started = Instant::now();
        let mut ticket = TicketGuard {
            ledger,
            ticket: Some(ledger.enqueue(bytes)),
        };
        let id = ticket.ticket.unwrap_or_default();
        let mut planned = None;
        loop {
            match self.step(key, id, &mut planned, None) {
                Step::Granted(grant) => {
                    ticket.disarm();
                    return Ok(grant);
                }
                Step::Gone => {
                    ticket.disarm();
                    ledger.count_rejection(Rejection::Budget);
                    return Err(self.budget_exceeded(key, bytes, 0));
                }
                Step::Pending {
                    ahead,
                    snapshot,
                    events,
                } => match overflow {
                    Overflow::FailFast => {
                        if let Some(grant) = ticket.cancel() {
                            return Ok(grant);
                        }
                        ledger.count_rejection(Rejection::Budget);
                        return Err(ReserveError::BudgetExceeded {
                            key: key_text(key),
                            requested: bytes,
                            queued_ahead: ahead,
                            ledger: Box::new(snapshot),
                        });
                    }
                    Overflow::Wait { deadline } => {
                        let now = Instant::now();
                        if now >= deadline {
                            if let Some(grant) = ticket.cancel() {
                                return Ok(grant);
                            }
                            ledger.count_rejection(Rejection::Timeout);
                            return Err(ReserveError::Timeout {
                                key: key_text(key),
                                requested: bytes,
                                waited: started.elapsed(),
                                ledger: Box::new(ledger.snapshot()),
                            });
                        }
                        ledger.sleep(id, events, deadline.min(now + REPLAN_INTERVAL));
                    }
                },
            }
        }
    }

    fn budget_exceeded(&self, key: &K, bytes: u64, ahead: usize) -> ReserveError {
        ReserveError::BudgetExceeded {
            key: key_text(key),
            requested: bytes,
            queued_ahead: ahead,
            ledger: Box::new(self.shared.ledger.snapshot()),
        }
    }

    /// One round for a queued request: collect a grant, or — at the head of the queue, after
    /// a new event or a replan interval — evict what can be freed now and look again.
    fn step(
        &self,
        key: &K,
        ticket: u64,
        planned: &mut Option<(u64, Instant)>,
        waker: Option<&std::task::Waker>,
    ) -> Step {
        loop {
            match self.shared.ledger.poll_ticket(ticket, waker) {
                TicketPoll::Granted(grant) => return Step::Granted(grant),
                TicketPoll::Gone => return Step::Gone,
                TicketPoll::Pending {
                    ahead,
                    bytes,
                    snapshot,
                    events,
                } => {
                    let due = match *planned {
                        None => true,
                        Some((seen, at)) => seen != events || at.elapsed() >= REPLAN_INTERVAL,
                    };
                    if ahead == 0 && due {
                        *planned = Some((events, Instant::now()));
                        if self.evict_for(bytes, &snapshot, Some(key)) > 0 {
                            continue;
                        }
                    }
                    return Step::Pending {
                        ahead,
                        snapshot,
                        events,
                    };
                }
            }
        }
    }

    /// Evicts, for a request of `bytes` that does not fit in `snapshot`, the victims the plan
    /// picks — only if they suffice. Returns how many were evicted.
    fn evict_for(&self, bytes: u64, snapshot: &LedgerSnapshot, exclude: Option<&K>) -> usize {
        let (hard, soft) = self.needs(bytes, snapshot);
        if hard == 0 {
            return 0;
        }
        let plan = self.plan(hard, soft, exclude);
        if !plan.sufficient {
            return 0;
        }
        plan.victims
            .iter()
            .filter(|(key, _)| self.evict_key(key, RetireCause::Admission, true).is_some())
            .count()
    }

    /// (bytes that must be freed, bytes to free for the low watermark).
    fn needs(&self, bytes: u64, snapshot: &LedgerSnapshot) -> (u64, u64) {
        let wanted = snapshot.total().saturating_add(bytes);
        let hard = wanted.saturating_sub(snapshot.effective_limit);
        let pct = u64::from(self.shared.config.low_watermark_percent.clamp(1, 100));
        let low = (u128::from(snapshot.effective_limit) * u128::from(pct) / 100) as u64;
        let soft = wanted.saturating_sub(low).max(hard);
        (hard, soft)
    }

    /// What admitting `bytes` now would evict (a dry run; nothing changes). `exclude` is the
    /// requesting key, which a request never evicts.
    #[must_use]
    pub fn plan_eviction(&self, bytes: u64, exclude: Option<&K>) -> EvictionPlan<K> {
        let snapshot = self.shared.ledger.snapshot();
        let (hard, soft) = self.needs(bytes, &snapshot);
        if hard == 0 {
            return EvictionPlan {
                victims: Vec::new(),
                freeable: 0,
                need: 0,
                sufficient: true,
            };
        }
        self.plan(hard, soft, exclude)
    }

    /// Least recently used first, among unpinned entries whose version no reader holds (so
    /// evicting frees its bytes at once), until `soft` is reached or candidates run out.
    fn plan(&self, hard: u64, soft: u64, exclude: Option<&K>) -> EvictionPlan<K> {
        let map = self.shared.entries.read();
        let mut candidates: Vec<(u64, u64, u64, &K)> = Vec::with_capacity(map.len());
        for (key, entry) in map.iter() {
            if exclude == Some(key) || entry.pinned.load(Ordering::Acquire) {
                continue;
            }
            let slot = entry.slot.read();
            let Some(version) = slot.as_ref() else {
                continue;
            };
            if Arc::strong_count(version) != SLOT_REFS || version.bytes() == 0 {
                continue;
            }
            candidates.push((
                entry.last_access.load(Ordering::Relaxed),
                entry.seq,
                version.bytes(),
                key,
            ));
        }
        candidates.sort_unstable_by_key(|&(at, seq, _, _)| (at, seq));
        let mut victims = Vec::new();
        let mut freeable = 0u64;
        for (_, _, bytes, key) in candidates {
            if freeable >= soft {
                break;
            }
            freeable += bytes;
            victims.push((key.clone(), bytes));
        }
        EvictionPlan {
            victims,
            freeable,
            need: hard,
            sufficient: freeable >= hard,
        }
    }

    /// Evicts `key`: removes it from the map, cancels any load in flight, and moves its
    /// version's bytes loaded → retained; the version is dropped after every lock is released,
    /// which credits its bytes at once unless a reader still holds it. With `admission`, pinned
    /// entries and versions a reader holds are left alone.
    fn evict_key(&self, key: &K, cause: RetireCause, admission: bool) -> Option<u64> {
        let (entry, taken) = {
            let mut map = self.shared.entries.write();
            let entry = StdArc::clone(map.get(key)?);
            let mut slot = entry.slot.write();
            if admission {
                if entry.pinned.load(Ordering::Acquire) {
                    return None;
                }
                match slot.as_ref() {
                    Some(v) if Arc::strong_count(v) == SLOT_REFS => {}
                    _ => return None,
                }
            }
            map.remove(key);
            entry.cancelled.store(true, Ordering::Release);
            entry.set_state(EntryState::Evicted);
            let taken = slot.take();
            entry.bytes.store(0, Ordering::Release);
            if let Some(version) = &taken {
                self.shared.ledger.retire_id(version.id(), cause);
            }
            drop(slot);
            drop(map);
            (entry, taken)
        };
        let bytes = taken.as_ref().map_or(0, |v| v.bytes());
        drop(taken);
        entry.finish_flight();
        if let Some(hook) = self.hook() {
            hook.on_evict(&entry.key, cause);
        }
        Some(bytes)
    }

    /// Evicts `key` whatever its state (pinned included). Returns whether it was registered.
    /// Its version stays counted, as retained, until its last reader drops it.
    pub fn unload(&self, key: &K) -> bool {
        self.evict_key(key, RetireCause::Explicit, false).is_some()
    }

    /// Evicts the least recently used unpinned entry that is loading, loaded, rebuilding or
    /// failed. Returns its key.
    pub fn evict_lru(&self) -> Option<K> {
        let candidate = {
            let map = self.shared.entries.read();
            map.values()
                .filter(|e| {
                    !e.pinned.load(Ordering::Acquire)
                        && !matches!(e.state(), EntryState::Evicted | EntryState::Unloaded)
                })
                .min_by_key(|e| (e.last_access.load(Ordering::Relaxed), e.seq))
                .map(|e| e.key.clone())
        };
        let key = candidate?;
        self.evict_key(&key, RetireCause::Lru, false).map(|_| key)
    }

    // ----- publishing -----

    /// Publishes `value` under `reservation` as the key's current version.
    ///
    /// The value is measured ([`HeapSize`]); if it is larger than reserved, the reservation
    /// grows first (evicting what can be freed if needed), counting every tier — the version
    /// being replaced included. Then, with the map read-locked and the slot write-locked, the
    /// entry is checked (still registered, not evicted), the slot swapped under a rollback
    /// guard and the ledger committed; the previous version moves to retained and is dropped
    /// after the locks are released, which credits it at once if no reader holds it. The hook
    /// runs last, with no lock held.
    ///
    /// # Errors
    ///
    /// [`PublishError::Evicted`] if the entry was evicted meanwhile (nothing published),
    /// [`PublishError::Oversize`] if the measured value does not fit. The reservation is
    /// refunded either way and the entry keeps its previous version.
    pub fn publish(
        &self,
        reservation: Reservation<K, V>,
        value: V,
    ) -> Result<Handle<V>, PublishError> {
        let key = reservation.entry.key.clone();
        if !std::ptr::eq(reservation.manager.as_ptr(), StdArc::as_ptr(&self.shared)) {
            return Err(PublishError::ForeignReservation {
                key: key_text(&key),
            });
        }
        let handle = self.publish_inner(reservation, value)?;
        if let Some(hook) = self.hook() {
            hook.on_publish(&key, &handle);
        }
        Ok(handle)
    }

    fn publish_inner(
        &self,
        reservation: Reservation<K, V>,
        value: V,
    ) -> Result<Handle<V>, PublishError> {
        let Reservation {
            mut grant,
            entry,
            estimate,
            class,
            initial,
            ..
        } = reservation;
        let ledger = &self.shared.ledger;
        if entry.cancelled.load(Ordering::Acquire) {
            // Evicted while building: do not evict others to make room for it.
            return Err(PublishError::Evicted {
                key: key_text(&entry.key),
            });
        }
        let measured = value.heap_bytes() as u64;
        if measured > grant.bytes() {
            let extra = measured - grant.bytes();
            if ledger.try_grow(&mut grant, extra).is_err() {
                let snapshot = ledger.snapshot();
                self.evict_for(extra, &snapshot, Some(&entry.key));
                if let Err(snapshot) = ledger.try_grow(&mut grant, extra) {
                    ledger.count_rejection(Rejection::AtPublish);
                    return Err(PublishError::Oversize {
                        key: key_text(&entry.key),
                        measured,
                        reserved: grant.bytes(),
                        ledger: Box::new(snapshot),
                    });
                }
            }
        }
        self.learn(class, estimate, initial, measured);
        let version = ledger.stage(value, measured);
        let handle = Handle::from_arc(Arc::clone(&version));
        let previous = {
            let map = self.shared.entries.read();
            let member = map
                .get(&entry.key)
                .is_some_and(|e| StdArc::ptr_eq(e, &entry));
            let slot = entry.slot.write();
            if !member || entry.cancelled.load(Ordering::Acquire) {
                return Err(PublishError::Evicted {
                    key: key_text(&entry.key),
                });
            }
            let mut txn = SlotTxn::begin(slot, &entry.bytes);
            let previous_id = txn.swap_in(version, measured);
            failpoint::hit("publish.after_swap");
            if let Err(snapshot) = ledger.commit(&mut grant, handle.arc(), previous_id) {
                // Unreachable in practice (the grant was grown to the measured size above);
                // the transaction rolls the slot back as it drops.
                return Err(PublishError::Oversize {
                    key: key_text(&entry.key),
                    measured,
                    reserved: grant.bytes(),
                    ledger: Box::new(snapshot),
                });
            }
            entry.set_state(EntryState::Loaded);
            entry.peak_bytes.fetch_max(measured, Ordering::AcqRel);
            let previous = txn.commit();
            drop(map);
            previous
        };
        drop(previous);
        entry.record_success();
        entry.touch(self.now_ns());
        Ok(handle)
    }

    // ----- loading -----

    /// The value of `key`, loading it with `build` if it is not loaded.
    ///
    /// A loaded (or rebuilding) entry is returned at once. Otherwise one caller takes the
    /// lifecycle gate (`Unloaded`/`Failed` → `Loading`), reserves `options.request`, runs
    /// `build` with no lock held and publishes — unless the entry was evicted meanwhile, in
    /// which case nothing is published and the reservation is refunded. Concurrent callers
    /// join that load and receive its result ([`SingleFlight::Join`]) or are refused
    /// ([`SingleFlight::Refuse`]). Any failure — including a panic in `build` — leaves the
    /// entry `Failed` with its error recorded and its retry count raised. The hook runs after
    /// the publish, with no lock held.
    ///
    /// # Errors
    ///
    /// [`LoadError`]: admission refused, the builder failed, the value did not fit, the entry
    /// was evicted mid-load, or the joined load failed.
    pub fn get_or_load<F>(
        &self,
        key: &K,
        options: LoadOptions,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(&K) -> Result<V, BuildError>,
    {
        if let Some(entry) = self.entry(key)
            && entry.state() == EntryState::Loaded
            && let Some(version) = entry.current()
        {
            entry.touch(self.now_ns());
            return Ok(Handle::from_arc(version));
        }
        let entry = self.entry_or_insert(key);
        loop {
            match entry.try_transition(
                &[EntryState::Unloaded, EntryState::Failed],
                EntryState::Loading,
            ) {
                Ok(()) => break,
                Err(state) => {
                    if matches!(state, EntryState::Loaded | EntryState::Rebuilding)
                        && let Some(version) = entry.current()
                    {
                        entry.touch(self.now_ns());
                        return Ok(Handle::from_arc(version));
                    }
                    if state == EntryState::Evicted {
                        return Err(LoadError::EvictedMidLoad { key: key_text(key) });
                    }
                    if options.single_flight == SingleFlight::Refuse {
                        return Err(LoadError::InProgress {
                            key: key_text(key),
                            state,
                        });
                    }
                    entry.join_flight(state);
                    match entry.state() {
                        EntryState::Failed => {
                            let source = entry.history.lock().last_error.clone();
                            return Err(match source {
                                Some(source) => LoadError::JoinedFailed {
                                    key: key_text(key),
                                    source,
                                },
                                None => LoadError::EvictedMidLoad { key: key_text(key) },
                            });
                        }
                        EntryState::Evicted => {
                            return Err(LoadError::EvictedMidLoad { key: key_text(key) });
                        }
                        _ => continue,
                    }
                }
            }
        }
        self.run_load(&entry, options.request, build)
    }

    /// Rebuilds `key`: takes the gate (`Loaded`/`Failed` → `Rebuilding`), reserves, builds
    /// with no lock held and publishes; the previous version keeps serving until then and stays
    /// counted, as retained, until its readers drop it. A failed rebuild leaves the entry
    /// `Failed`, still serving its last good version as stale.
    ///
    /// # Errors
    ///
    /// [`LoadError::InProgress`] if a load or rebuild is already running, otherwise as
    /// [`Self::get_or_load`].
    pub fn rebuild<F>(
        &self,
        key: &K,
        request: ReserveRequest,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(&K) -> Result<V, BuildError>,
    {
        let entry = self
            .entry(key)
            .ok_or_else(|| ReserveError::NotRegistered { key: key_text(key) })?;
        entry
            .try_transition(
                &[EntryState::Loaded, EntryState::Failed],
                EntryState::Rebuilding,
            )
            .map_err(|state| LoadError::InProgress {
                key: key_text(key),
                state,
            })?;
        self.run_load(&entry, request, build)
    }

    fn run_load<F>(
        &self,
        entry: &StdArc<Entry<K, V>>,
        request: ReserveRequest,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(&K) -> Result<V, BuildError>,
    {
        let key = &entry.key;
        let mut guard = LoadingGuard { entry, armed: true };
        // An eviction that ran before the gate was taken left its cancellation behind: honour
        // it (and keep it) rather than publish into an evicted entry.
        if entry.cancelled.swap(false, Ordering::AcqRel) {
            entry.cancelled.store(true, Ordering::Release);
            return Err(guard.fail(LoadError::EvictedMidLoad { key: key_text(key) }));
        }
        let bytes = self.scaled(&request);
        let grant = match self.admit(key, bytes, request.overflow) {
            Ok(grant) => grant,
            Err(e) => return Err(guard.fail(LoadError::Admission(e))),
        };
        let reservation = self.reservation(grant, StdArc::clone(entry), &request, bytes);
        let value = match build(key) {
            Ok(value) => value,
            Err(e) => {
                drop(reservation);
                let source: StdArc<dyn Error + Send + Sync> = StdArc::from(e);
                return Err(guard.fail(LoadError::Build {
                    key: key_text(key),
                    source,
                }));
            }
        };
        match self.publish_inner(reservation, value) {
            Ok(handle) => {
                guard.succeed();
                drop(guard);
                if let Some(hook) = self.hook() {
                    hook.on_publish(key, &handle);
                }
                Ok(handle)
            }
            Err(e) => Err(guard.fail(LoadError::Publish(e))),
        }
    }

    // ----- serving and reporting -----

    /// What may be served for `key` at `now` (wall-clock, for stale ages).
    ///
    /// | state | result |
    /// |---|---|
    /// | `Loaded`, `Rebuilding` | `Fresh` |
    /// | `Failed`, last good younger than the cap (or no cap) | `Stale` |
    /// | `Failed`, last good at or past the cap | `Err(StaleExpired)` |
    /// | `Failed`, no good version | `Err(BuildFailed)` |
    /// | `Unloaded`, `Loading` | `NotReady` |
    /// | evicted or not registered | `Err(Evicted)` |
    ///
    /// State and version are read together under the map's read lock, so an eviction can never
    /// make an emptied entry look fresh. The ledger's mutex is not taken.
    ///
    /// # Errors
    ///
    /// [`ServeError`] as in the table.
    pub fn classify_for_serve(
        &self,
        key: &K,
        now: SystemTime,
    ) -> Result<ServeVerdict<V>, ServeError> {
        let (state, version, last_good, last_error) = {
            let map = self.shared.entries.read();
            let Some(entry) = map.get(key) else {
                return Err(ServeError::Evicted { key: key_text(key) });
            };
            let slot = entry.slot.read();
            let state = entry.state();
            let version = slot.clone();
            let history = entry.history.lock();
            let last_good = history.last_good_at;
            let last_error = history.last_error.as_deref().map(|e| chain(e));
            drop(history);
            drop(slot);
            if version.is_some() && state != EntryState::Evicted {
                entry.touch(self.now_ns());
            }
            (state, version, last_good, last_error)
        };
        match state {
            EntryState::Loaded | EntryState::Rebuilding => match version {
                Some(v) => Ok(ServeVerdict::Fresh {
                    value: Handle::from_arc(v),
                    state,
                }),
                None => Ok(ServeVerdict::NotReady { state }),
            },
            EntryState::Failed => {
                let (Some(good_at), Some(version)) = (last_good, version) else {
                    return Err(ServeError::BuildFailed {
                        key: key_text(key),
                        reason: last_error
                            .unwrap_or_else(|| "no prior successful build".to_string()),
                    });
                };
                let age = now.duration_since(good_at).unwrap_or_default();
                match self.shared.config.stale_serve_max_age {
                    Some(cap) if age >= cap => Err(ServeError::StaleExpired {
                        key: key_text(key),
                        age,
                        cap,
                        last_good_at: Some(good_at),
                        last_error,
                    }),
                    _ => Ok(ServeVerdict::Stale {
                        value: Handle::from_arc(version),
                        age,
                        last_good_at: good_at,
                        last_error,
                    }),
                }
            }
            EntryState::Unloaded | EntryState::Loading => Ok(ServeVerdict::NotReady { state }),
            EntryState::Evicted => Err(ServeError::Evicted { key: key_text(key) }),
        }
    }

    /// Counters, with the learned estimate classes.
    #[must_use]
    pub fn estimates(&self) -> Vec<ClassEstimate> {
        let mut out: Vec<ClassEstimate> = self
            .shared
            .classes
            .lock()
            .iter()
            .map(|(class, s)| ClassEstimate {
                class,
                multiplier: s.multiplier,
                samples: s.samples,
                mean_abs_error: if s.samples == 0 {
                    0.0
                } else {
                    s.abs_error_sum / s.samples as f64
                },
            })
            .collect();
        out.sort_by(|a, b| a.class.cmp(b.class));
        out
    }

    /// A report of the ledger, the counters, the estimate classes and every entry.
    #[must_use]
    pub fn status(&self) -> Status<K>
    where
        K: Ord,
    {
        let now_ns = self.now_ns();
        let backoff = &self.shared.config.failure_backoff;
        let mut entries: Vec<EntryStatus<K>> = {
            let map = self.shared.entries.read();
            map.values()
                .map(|e| {
                    let readers = e
                        .slot
                        .read()
                        .as_ref()
                        .map_or(0, |v| Arc::strong_count(v).saturating_sub(SLOT_REFS));
                    let retry_count = e.retry_count.load(Ordering::Acquire);
                    let history = e.history.lock();
                    let retry_after = match (retry_count, history.last_failure_at) {
                        (n, Some(at)) if n > 0 && !backoff.is_empty() => {
                            let step = backoff[(n as usize - 1).min(backoff.len() - 1)];
                            step.checked_sub(at.elapsed())
                        }
                        _ => None,
                    };
                    EntryStatus {
                        key: e.key.clone(),
                        state: e.state(),
                        pinned: e.pinned.load(Ordering::Acquire),
                        bytes: e.bytes.load(Ordering::Acquire),
                        peak_bytes: e.peak_bytes.load(Ordering::Acquire),
                        readers,
                        idle: Duration::from_nanos(
                            now_ns.saturating_sub(e.last_access.load(Ordering::Relaxed)),
                        ),
                        last_good_at: history.last_good_at,
                        last_error: history.last_error.as_deref().map(|e| chain(e)),
                        retry_count,
                        retry_after,
                    }
                })
                .collect()
        };
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime: self.shared.epoch.elapsed(),
            ledger: self.shared.ledger.snapshot(),
            metrics: self.shared.ledger.metrics(),
            estimates: self.estimates(),
            entries,
        }
    }

    /// Runs the audit scan now (the timer thread runs it every `audit_interval`).
    #[must_use]
    pub fn audit(&self) -> AuditReport {
        self.shared
            .ledger
            .audit(self.shared.config.drain_warn_after)
    }

    /// Reads the memory probe now and applies its reduction. Returns the reduction in bytes
    /// (0 without a probe).
    ///
    /// # Errors
    ///
    /// The probe's error; the previous reduction stays.
    pub fn refresh_probe(&self) -> Result<u64, ProbeError> {
        let Some(config) = &self.shared.config.probe else {
            return Ok(0);
        };
        let sample = config.probe.sample()?;
        let (total, limit) = self.shared.ledger.total_and_limit();
        let reduction = config.reduction(sample.current, sample.max, total, limit);
        self.shared.ledger.set_reduction(reduction);
        Ok(reduction)
    }

    fn maybe_refresh_probe(&self) {
        let Some(config) = &self.shared.config.probe else {
            return;
        };
        let now = self.now_ns();
        let last = self.shared.probe_last_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= config.refresh_every.as_nanos() as u64
            && self
                .shared
                .probe_last_ns
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.refresh_probe();
        }
    }
}

/// The future of [`AdmissionManager::reserve_async`].
#[must_use = "futures do nothing unless polled"]
pub struct ReserveFuture<K, V> {
    manager: AdmissionManager<K, V>,
    key: K,
    request: ReserveRequest,
    state: FutureState<K, V>,
}

enum FutureState<K, V> {
    Start,
    Queued {
        entry: StdArc<Entry<K, V>>,
        ticket: u64,
        bytes: u64,
        deadline: Instant,
        started: Instant,
        planned: Option<(u64, Instant)>,
    },
    Done,
}

impl<K: fmt::Debug, V> fmt::Debug for ReserveFuture<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReserveFuture")
            .field("key", &self.key)
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl<K, V> Future for ReserveFuture<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + Unpin + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    type Output = Result<Reservation<K, V>, ReserveError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let manager = this.manager.clone();
        loop {
            match &mut this.state {
                FutureState::Done => {
                    return Poll::Ready(Err(ReserveError::ManagerGone {
                        key: key_text(&this.key),
                    }));
                }
                FutureState::Start => {
                    let outcome = (|| {
                        let entry = manager.admissible_entry(&this.key)?;
                        let bytes = manager.scaled(&this.request);
                        let deadline = match this.request.overflow {
                            Overflow::FailFast => {
                                let grant = manager.admit(&this.key, bytes, Overflow::FailFast)?;
                                return Ok(Err(manager.reservation(
                                    grant,
                                    entry,
                                    &this.request,
                                    bytes,
                                )));
                            }
                            Overflow::Wait { deadline } => deadline,
                        };
                        if let Some(grant) =
                            manager.admit_now(&this.key, bytes, this.request.overflow)?
                        {
                            return Ok(Err(manager.reservation(
                                grant,
                                entry,
                                &this.request,
                                bytes,
                            )));
                        }
                        let ticket = manager.shared.ledger.enqueue(bytes);
                        manager.start_housekeeper();
                        manager.shared.housekeeper.watch(deadline);
                        Ok(Ok(FutureState::Queued {
                            entry,
                            ticket,
                            bytes,
                            deadline,
                            started: Instant::now(),
                            planned: None,
                        }))
                    })();
                    match outcome {
                        Err(e) => {
                            this.state = FutureState::Done;
                            return Poll::Ready(Err(e));
                        }
                        Ok(Err(reservation)) => {
                            this.state = FutureState::Done;
                            return Poll::Ready(Ok(reservation));
                        }
                        Ok(Ok(queued)) => this.state = queued,
                    }
                }
                FutureState::Queued {
                    entry,
                    ticket,
                    bytes,
                    deadline,
                    started,
                    planned,
                } => {
                    let ledger = &manager.shared.ledger;
                    match manager.step(&this.key, *ticket, planned, Some(cx.waker())) {
                        Step::Granted(grant) => {
                            let reservation = manager.reservation(
                                grant,
                                StdArc::clone(entry),
                                &this.request,
                                *bytes,
                            );
                            this.state = FutureState::Done;
                            return Poll::Ready(Ok(reservation));
                        }
                        Step::Gone => {
                            let e = manager.budget_exceeded(&this.key, *bytes, 0);
                            this.state = FutureState::Done;
                            return Poll::Ready(Err(e));
                        }
                        Step::Pending { .. } => {
                            if Instant::now() < *deadline {
                                return Poll::Pending;
                            }
                            let grant = ledger.cancel_ticket(*ticket);
                            let result = match grant {
                                Some(grant) => Ok(manager.reservation(
                                    grant,
                                    StdArc::clone(entry),
                                    &this.request,
                                    *bytes,
                                )),
                                None => {
                                    ledger.count_rejection(Rejection::Timeout);
                                    Err(ReserveError::Timeout {
                                        key: key_text(&this.key),
                                        requested: *bytes,
                                        waited: started.elapsed(),
                                        ledger: Box::new(ledger.snapshot()),
                                    })
                                }
                            };
                            this.state = FutureState::Done;
                            return Poll::Ready(result);
                        }
                    }
                }
            }
        }
    }
}

impl<K, V> Drop for ReserveFuture<K, V> {
    fn drop(&mut self) {
        if let FutureState::Queued { ticket, .. } = self.state {
            // Leaving the queue; a grant that arrived meanwhile is refunded as it drops.
            drop(self.manager.shared.ledger.cancel_ticket(ticket));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Contracts that need the manager's internals: cancellation flags, lifecycle states set by
    //! hand, the slot transaction, and panics injected between the steps of a publish.

    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;

    type Manager = AdmissionManager<String, Vec<u8>>;

    const MIB: u64 = 1 << 20;

    fn manager() -> Manager {
        AdmissionManager::new(AdmissionConfig::new(MIB).audit_interval(None))
    }

    fn key(path: &str) -> String {
        path.to_string()
    }

    /// Publishes a value of exactly `bytes` heap bytes for `k` (registered first).
    fn load(m: &Manager, k: &str, bytes: usize) -> Handle<Vec<u8>> {
        m.register(key(k), false);
        let r = m
            .reserve(&key(k), ReserveRequest::new(bytes as u64))
            .expect("fits");
        m.publish(r, vec![7u8; bytes]).expect("publish")
    }

    /// The serve path never waits for a writer: with the map write-locked (as when a key is
    /// added or removed) and the entry's slot write-locked (as through a publish's ledger
    /// commit), `get` still returns the published version at once.
    #[test]
    fn serve_reads_do_not_wait_for_writers() {
        let m = manager();
        let held = load(&m, "/repos/busy", 1000);
        let entry = m.entry(&key("/repos/busy")).expect("registered");
        let map_guard = m.shared.entries.write();
        let slot_guard = entry.slot.write();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = m.clone();
        let t = std::thread::spawn(move || {
            let got = reader.get(&key("/repos/busy")).map(|h| h.version_id());
            let _ = tx.send(got);
        });
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a read blocked behind writers");
        assert_eq!(got, Some(held.version_id()));
        drop(slot_guard);
        drop(map_guard);
        t.join().expect("reader");
    }

    /// seed: reserve_rebuild_rejects_cancelled_workspace
    #[test]
    fn reserve_rejects_cancelled_entry() {
        let m = manager();
        let k = key("/repos/cancelled");
        m.register(k.clone(), false);
        m.entry(&k)
            .expect("registered")
            .cancelled
            .store(true, Ordering::Release);
        let err = m.reserve(&k, ReserveRequest::new(100_000)).unwrap_err();
        assert!(
            matches!(&err, ReserveError::Evicted { key } if key.contains("/repos/cancelled")),
            "{err:?}"
        );
        assert_eq!(m.ledger().snapshot().reserved, 0);
    }

    /// seed: rollback_guard_restores_workspace_on_panic_path
    #[test]
    fn slot_txn_restores_previous_version_and_bytes_when_dropped_armed() {
        let m = manager();
        let old = load(&m, "/repos/example", 10_000);
        let entry = m.entry(&key("/repos/example")).expect("registered");
        {
            let mut txn = SlotTxn::begin(entry.slot.write(), &entry.bytes);
            let stomped = m.ledger().stage(vec![1u8; 99_999], 99_999);
            let previous = txn.swap_in(stomped, 99_999);
            assert_eq!(previous, Some(old.version_id()));
            assert_eq!(entry.bytes.load(Ordering::Acquire), 99_999);
            // Dropped armed, as on the unwind path.
        }
        let restored = entry.current().expect("a version");
        assert!(Arc::ptr_eq(&restored, old.arc()), "previous version back");
        assert_eq!(entry.bytes.load(Ordering::Acquire), 10_000);
        assert_eq!(m.ledger().snapshot().loaded, 10_000, "ledger untouched");
    }

    /// seed: rollback_guard_disarmed_is_noop
    #[test]
    fn slot_txn_committed_keeps_the_new_version() {
        let m = manager();
        let old = load(&m, "/repos/example", 10_000);
        let entry = m.entry(&key("/repos/example")).expect("registered");
        let stomped = m.ledger().stage(vec![1u8; 99_999], 99_999);
        let previous = {
            let mut txn = SlotTxn::begin(entry.slot.write(), &entry.bytes);
            txn.swap_in(Arc::clone(&stomped), 99_999);
            txn.commit()
        };
        assert!(Arc::ptr_eq(previous.as_ref().expect("previous"), old.arc()));
        assert_eq!(entry.bytes.load(Ordering::Acquire), 99_999);
        assert!(Arc::ptr_eq(&entry.current().expect("a version"), &stomped));
    }

    /// seed: unwind_after_swap_before_admission_commit_restores_full_state — a panic between the
    /// slot swap and the ledger commit (or inside the commit's fallible insert) leaves
    /// everything exactly as before the publish.
    #[test]
    fn unwind_after_swap_before_ledger_commit_restores_full_state() {
        for point in ["publish.after_swap", "ledger.commit.insert"] {
            let m = manager();
            let prior = load(&m, "/repos/example", 50_000);
            let k = key("/repos/example");
            let r = m.reserve(&k, ReserveRequest::new(100_000)).expect("fits");
            assert_eq!(m.ledger().snapshot().reserved, 100_000);

            crate::failpoint::arm(point);
            let outcome = catch_unwind(AssertUnwindSafe(|| m.publish(r, vec![9u8; 60_000])));
            assert!(outcome.is_err(), "{point}: the injected panic propagates");

            let entry = m.entry(&k).expect("still registered");
            let current = entry.current().expect("a version");
            assert!(
                Arc::ptr_eq(&current, prior.arc()),
                "{point}: slot rolled back"
            );
            assert_eq!(entry.bytes.load(Ordering::Acquire), 50_000, "{point}");
            let s = m.ledger().snapshot();
            assert_eq!(s.reserved, 0, "{point}: reservation refunded");
            assert_eq!(s.loaded, 50_000, "{point}: loaded untouched");
            assert_eq!((s.retained, s.retained_count), (0, 0), "{point}");
            assert_eq!(s.loaded_count, 1, "{point}: no record of the new version");
            assert!(m.audit().consistent, "{point}");
        }
    }

    /// seed: get_or_load_state_cas_rejects_concurrent_load (with `SingleFlight::Refuse`; the
    /// default joins instead — see the integration test `concurrent_loads_run_one_build…`)
    #[test]
    fn get_or_load_refuses_concurrent_load_when_asked_to() {
        let m = manager();
        let k = key("/repos/example");
        let entry = m.entry_or_insert(&k);
        entry.set_state(EntryState::Loading);
        let opts = LoadOptions::new(1_000).single_flight(SingleFlight::Refuse);
        let err = m.get_or_load(&k, opts, |_| Ok(Vec::new())).unwrap_err();
        assert!(
            matches!(
                &err,
                LoadError::InProgress {
                    state: EntryState::Loading,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("already in progress"), "{err}");
        assert_eq!(m.ledger().snapshot().reserved, 0);
    }

    /// seed: get_or_load_detects_cancellation_between_cas_and_publish
    #[test]
    fn get_or_load_honours_cancellation_left_before_the_gate() {
        let m = manager();
        let k = key("/repos/example");
        let entry = m.entry_or_insert(&k);
        entry.cancelled.store(true, Ordering::Release);
        entry.set_state(EntryState::Unloaded);
        let mut built = false;
        let err = m
            .get_or_load(&k, LoadOptions::new(1_000), |_| {
                built = true;
                Ok(Vec::new())
            })
            .unwrap_err();
        assert!(matches!(err, LoadError::EvictedMidLoad { .. }), "{err:?}");
        assert!(err.to_string().contains("evicted mid-load"));
        assert!(!built, "nothing is built for an evicted entry");
        assert!(entry.cancelled.load(Ordering::Acquire), "cancellation kept");
        assert_eq!(entry.state(), EntryState::Failed);
        assert_eq!(m.ledger().snapshot().reserved, 0);
    }

    #[test]
    fn classify_reports_not_ready_for_unloaded_and_loading() {
        let m = manager();
        let k = key("/repos/example");
        m.register(k.clone(), false);
        let now = SystemTime::now();
        assert!(matches!(
            m.classify_for_serve(&k, now),
            Ok(ServeVerdict::NotReady {
                state: EntryState::Unloaded
            })
        ));
        m.entry(&k)
            .expect("registered")
            .set_state(EntryState::Loading);
        assert!(matches!(
            m.classify_for_serve(&k, now),
            Ok(ServeVerdict::NotReady {
                state: EntryState::Loading
            })
        ));
        // The transient window of an eviction: still in the map, already Evicted.
        m.entry(&k)
            .expect("registered")
            .set_state(EntryState::Evicted);
        let err = m.classify_for_serve(&k, now).unwrap_err();
        assert_eq!(err.code(), crate::CODE_EVICTED);
    }
}
