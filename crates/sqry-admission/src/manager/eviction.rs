//! Eviction: planning (least recently used first, only victims that evicting frees now, nothing
//! at all if they would not suffice, down to the low watermark) and evicting one key.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc as StdArc;
use std::sync::atomic::Ordering;

use crate::HeapSize;
use crate::entry::Cancelled;
use crate::entry::{EntryState, SLOT_REFS};
use crate::ledger::{LedgerSnapshot, RetireCause};
use crate::sync::Arc;

use super::AdmissionManager;

/// What [`AdmissionManager::set_limit`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitReport {
    /// Entries evicted to get under the new limit.
    pub evicted: usize,
    /// Bytes their eviction freed at once.
    pub freed: u64,
    /// Bytes still committed above the new limit: versions readers hold, pinned entries,
    /// reservations in flight. New admissions wait until they are released.
    pub still_over: u64,
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

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    /// Evicts, for a request of `bytes` that does not fit in `snapshot`, the victims the plan
    /// picks — only if they suffice. Returns how many were evicted.
    pub(super) fn evict_for(
        &self,
        bytes: u64,
        snapshot: &LedgerSnapshot,
        exclude: Option<&K>,
    ) -> usize {
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
    pub(super) fn needs(&self, bytes: u64, snapshot: &LedgerSnapshot) -> (u64, u64) {
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
    /// Entries with a load or rebuild in flight come after all the others: evicting one
    /// throws its build away as well.
    pub(super) fn plan(&self, hard: u64, soft: u64, exclude: Option<&K>) -> EvictionPlan<K> {
        let map = self.shared.entries.read();
        // (build in flight, last access, registration order, bytes, key)
        let mut candidates: Vec<(bool, u64, u64, u64, &K)> = Vec::with_capacity(map.len());
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
                matches!(entry.state(), EntryState::Loading | EntryState::Rebuilding),
                entry.last_access.load(Ordering::Relaxed),
                entry.seq,
                version.bytes(),
                key,
            ));
        }
        candidates.sort_unstable_by_key(|&(building, at, seq, _, _)| (building, at, seq));
        let mut victims = Vec::new();
        let mut freeable = 0u64;
        for (_, _, _, bytes, key) in candidates {
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
    pub(super) fn evict_key(&self, key: &K, cause: RetireCause, admission: bool) -> Option<u64> {
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
        // Wakes joiners, and tells a build in flight why it should stop.
        entry.signal_cancel(match cause {
            RetireCause::Explicit => Cancelled::Unloaded,
            _ => Cancelled::Evicted,
        });
        if let Some(hook) = self.hook() {
            hook.on_evict(&entry.key, cause);
        }
        Some(bytes)
    }

    /// Changes the budget. Lowering it below what is committed evicts — least recently used
    /// first, only versions no reader holds, pinned entries never — until the total fits the
    /// new limit or nothing more can be freed; the report says what could not be. Raising it
    /// admits queued requests that now fit.
    ///
    /// ```
    /// use sqry_admission::{AdmissionConfig, AdmissionManager, ReserveRequest};
    ///
    /// let m = AdmissionManager::<&str, Vec<u8>>::new(AdmissionConfig::new(1000).audit_interval(None));
    /// for k in ["a", "b"] {
    ///     m.register(k);
    ///     let r = m.reserve(&k, ReserveRequest::new(400)).unwrap();
    ///     drop(m.publish(r, vec![0; 400]).unwrap());
    /// }
    /// let reader = m.get(&"b").unwrap(); // "b" cannot be freed while this is held
    /// let report = m.set_limit(300);
    /// assert_eq!((report.evicted, report.freed, report.still_over), (1, 400, 100));
    /// drop(reader);
    /// assert_eq!(m.set_limit(300).still_over, 0);
    /// ```
    pub fn set_limit(&self, limit: u64) -> LimitReport {
        let ledger = &self.shared.ledger;
        ledger.set_limit(limit);
        let mut report = LimitReport::default();
        let snapshot = ledger.snapshot();
        let over = snapshot.total().saturating_sub(snapshot.effective_limit);
        if over > 0 {
            let plan = self.plan(over, over, None);
            for (key, _) in &plan.victims {
                if let Some(bytes) = self.evict_key(key, RetireCause::Admission, true) {
                    report.evicted += 1;
                    report.freed += bytes;
                }
            }
        }
        let snapshot = ledger.snapshot();
        report.still_over = snapshot.total().saturating_sub(snapshot.effective_limit);
        report
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
}
