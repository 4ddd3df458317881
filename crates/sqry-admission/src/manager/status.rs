//! The status report: every tier, the counters, the learned estimates and every entry.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use platform_primitives::error::chain;

use crate::HeapSize;
use crate::entry::{EntryState, SLOT_REFS};
use crate::ledger::{LedgerSnapshot, Metrics};
use crate::sync::Arc;

use super::AdmissionManager;
use super::estimates::ClassEstimate;

/// One entry in [`Status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
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
                    let retry_after = e.backoff_remaining(backoff);
                    let history = e.history.lock();
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
}
