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
//! - **Load** (`get_or_load`, `rebuild`, and their async forms) takes a lifecycle gate (one
//!   loader wins; others join its result — blocking, or as futures — or are refused, by
//!   choice), reserves, builds with no lock held, and publishes only if the entry was not
//!   evicted meanwhile. A loading guard turns a builder panic into `Failed` with the error
//!   recorded and the retry count raised, and a dropped async leader back into the state it
//!   took the gate from, so a joiner takes over.
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
//! An entry's history mutex and its gate's waiter mutex, the estimate classes' mutex and the hook's
//! `RwLock` are leaves: nothing is acquired while one is held, and hooks are called with no lock
//! held at all. A version's destructor takes the ledger's mutex, so no version is ever dropped
//! while that mutex is held — the ledger keeps no strong reference to any version, and every
//! version taken out of a slot is dropped after the locks are released.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc as StdArc, Weak};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::HeapSize;
use crate::config::{AdmissionConfig, QueuePolicy};
use crate::entry::Entry;
use crate::housekeeper::Housekeeper;
use crate::ledger::{AuditReport, Handle, Ledger, RetireCause};
use crate::probe::ProbeError;

use entries::Entries;
use estimates::ClassStats;

pub(crate) mod admission;
mod context;
mod entries;
mod estimates;
mod eviction;
mod load;
mod publish;
mod serve;
mod status;
#[cfg(test)]
mod tests;

pub use crate::entry::Cancelled;
pub use crate::entry::EntryState;
pub use admission::{Overflow, Reservation, ReserveFuture, ReserveRequest};
pub use context::{BuildContext, Cancellation};
pub use estimates::ClassEstimate;
pub use eviction::{EvictionPlan, LimitReport};
pub use load::{LoadOptions, SingleFlight};
pub use serve::ServeVerdict;
pub use status::{EntryStatus, Status};

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
    /// Set by [`AdmissionManager::shutdown`]: no new load starts.
    shutting_down: AtomicBool,
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

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    /// A manager with `config`. Starts the audit thread if `config.audit_interval` is set.
    #[must_use]
    pub fn new(config: AdmissionConfig) -> Self {
        let ledger = Ledger::new(config.limit_bytes);
        if let QueuePolicy::Overtake { max_overtakes } = config.queue_policy {
            ledger.set_overtaking(Some(max_overtakes));
        }
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
                shutting_down: AtomicBool::new(false),
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

    /// Registers `key`, unloaded; admission may evict it once it is loaded. Returns `false`
    /// (and changes nothing) if it was already registered.
    ///
    /// ```
    /// use sqry_admission::{AdmissionConfig, AdmissionManager};
    ///
    /// let m = AdmissionManager::<&str, Vec<u8>>::new(AdmissionConfig::new(1 << 20));
    /// assert!(m.register("cache"));
    /// assert!(m.register_pinned("always-needed"));
    /// assert!(!m.register("cache"), "already registered");
    /// assert!(m.status().entries.iter().any(|e| e.key == "always-needed" && e.pinned));
    /// ```
    pub fn register(&self, key: K) -> bool {
        self.register_entry(key, false)
    }

    /// Registers `key`, unloaded and pinned: admission never evicts it (an explicit `unload`
    /// still does; [`Self::set_pinned`] changes it later). Returns `false` (and changes
    /// nothing) if it was already registered.
    pub fn register_pinned(&self, key: K) -> bool {
        self.register_entry(key, true)
    }

    fn register_entry(&self, key: K, pinned: bool) -> bool {
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

    /// Begins shutting down: every build in flight is told to stop
    /// ([`BuildContext::cancelled`] returns [`Cancelled::ShuttingDown`]) and no new load or
    /// rebuild starts ([`LoadError::ShuttingDown`](crate::LoadError::ShuttingDown)). Serving,
    /// reservations and publishes go on, so work that finishes anyway is not lost.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        let entries: Vec<StdArc<Entry<K, V>>> =
            self.shared.entries.read().values().cloned().collect();
        for entry in entries {
            entry.signal_cancel(Cancelled::ShuttingDown);
        }
    }

    /// Whether [`Self::shutdown`] was called.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Acquire)
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
        let mut reduction = config.reduction(sample.current, sample.max, total, limit);
        if let Some(threshold) = config.pressure_threshold
            && let Some(pressure) = config.probe.pressure()
            && pressure?.some_avg10 >= threshold
        {
            // Under memory pressure: no growth beyond what is committed now.
            reduction = reduction.max(limit.saturating_sub(total));
        }
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
