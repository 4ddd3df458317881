//! Single-flight fetching: one page is never fetched twice at the same time.
//!
//! When several threads need the same page at once (several vCPUs touching it, or a demand
//! fault racing the prewarm pass), the first becomes the *leader* and fetches; the others wait
//! for its result and share it. Fetches of different pages never wait for each other: the table
//! lock is held only to look up or insert a slot, never across a fetch.
//!
//! If the leader's fetch fails, followers do not inherit the error: each retries, and one of
//! them becomes the next leader, so a transient failure is retried under the caller's own
//! retry policy and the error reported is always the caller's own.

// The types are `pub` so the loom model (tests/loom.rs) can reach them through the hidden
// `model` module; without the `loom` feature they are crate-private in effect.
#![cfg_attr(not(feature = "loom"), allow(unreachable_pub))]

use std::collections::HashMap;

use crate::sync::{Arc, Condvar, Mutex, lock};

/// The table of fetches in flight, keyed by page (snapshot offset of the run's first page).
#[derive(Debug)]
pub struct SingleFlight<V> {
    slots: Mutex<HashMap<u64, Arc<Slot<V>>>>,
}

#[derive(Debug)]
struct Slot<V> {
    /// `None` while the leader fetches; then `Some(Some(v))` or `Some(None)` if it failed.
    outcome: Mutex<Option<Option<V>>>,
    done: Condvar,
}

impl<V: Clone> Default for SingleFlight<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone> SingleFlight<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `fetch` for `key` unless a fetch of `key` is already in flight, in which case this
    /// waits for it and returns its value. Returns the value and whether this call fetched it.
    pub fn run<E>(
        &self,
        key: u64,
        mut fetch: impl FnMut() -> Result<V, E>,
    ) -> Result<(V, bool), E> {
        loop {
            let (slot, leader) = {
                let mut slots = lock(&self.slots);
                match slots.get(&key) {
                    Some(slot) => (Arc::clone(slot), false),
                    None => {
                        let slot = Arc::new(Slot {
                            outcome: Mutex::new(None),
                            done: Condvar::new(),
                        });
                        slots.insert(key, Arc::clone(&slot));
                        (slot, true)
                    }
                }
            };
            if leader {
                let result = fetch();
                // Unlist the slot before publishing the outcome: a follower that sees a failed
                // outcome and retries must not find this finished slot again (it would spin).
                lock(&self.slots).remove(&key);
                *lock(&slot.outcome) = Some(result.as_ref().ok().cloned());
                slot.done.notify_all();
                return result.map(|v| (v, true));
            }
            let mut outcome = lock(&slot.outcome);
            while outcome.is_none() {
                outcome = slot.done.wait(outcome).unwrap_or_else(|p| p.into_inner());
            }
            if let Some(Some(v)) = outcome.as_ref() {
                return Ok((v.clone(), false));
            }
            // The leader failed: try again, possibly as the next leader.
        }
    }

    /// Fetches in flight right now.
    #[cfg(any(test, feature = "loom"))]
    pub fn in_flight(&self) -> usize {
        lock(&self.slots).len()
    }
}

/// A deliberately wrong single-flight table for the loom negative control: it checks for an
/// in-flight fetch and registers its own in two separate critical sections, so two callers can
/// both see "none in flight" and fetch the same page at once.
#[cfg(feature = "loom")]
#[derive(Debug)]
pub struct RacySingleFlight<V> {
    slots: Mutex<HashMap<u64, Arc<Slot<V>>>>,
}

#[cfg(feature = "loom")]
impl<V: Clone> Default for RacySingleFlight<V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "loom")]
impl<V: Clone> RacySingleFlight<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Like [`SingleFlight::run`], with the check-then-insert race.
    pub fn run<E>(
        &self,
        key: u64,
        mut fetch: impl FnMut() -> Result<V, E>,
    ) -> Result<(V, bool), E> {
        let existing = lock(&self.slots).get(&key).cloned();
        if let Some(slot) = existing {
            let mut outcome = lock(&slot.outcome);
            while outcome.is_none() {
                outcome = slot.done.wait(outcome).unwrap_or_else(|p| p.into_inner());
            }
            if let Some(Some(v)) = outcome.as_ref() {
                return Ok((v.clone(), false));
            }
        }
        let slot = Arc::new(Slot {
            outcome: Mutex::new(None),
            done: Condvar::new(),
        });
        lock(&self.slots).insert(key, Arc::clone(&slot));
        let result = fetch();
        *lock(&slot.outcome) = Some(result.as_ref().ok().cloned());
        lock(&self.slots).remove(&key);
        slot.done.notify_all();
        result.map(|v| (v, true))
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn concurrent_callers_share_one_fetch_and_failures_are_retried() {
        let table = std::sync::Arc::new(SingleFlight::<u32>::new());
        let fetches = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (table, fetches) = (table.clone(), fetches.clone());
                std::thread::spawn(move || {
                    table
                        .run(7, || {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(300));
                            Ok::<_, ()>(42)
                        })
                        .unwrap()
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results.iter().all(|(v, _)| *v == 42));
        let leaders = results.iter().filter(|(_, leader)| *leader).count();
        assert_eq!(leaders, fetches.load(Ordering::SeqCst));
        assert!(leaders < 4, "four callers, {leaders} fetches");
        assert_eq!(table.in_flight(), 0);

        let mut attempts = 0;
        let err = table.run(8, || {
            attempts += 1;
            Err::<u32, _>("down")
        });
        assert_eq!(err.unwrap_err(), "down");
        assert_eq!(attempts, 1);
    }
}
