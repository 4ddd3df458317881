//! A memory budget that holds while loads, rebuilds, evictions and slow readers overlap.
//!
//! Daemons that keep many large indexes in memory (code search, language servers, vector-index
//! hosts) run out of memory "despite a cache limit" because caches count neither loads in flight nor
//! evicted values that readers still hold. `sqry-admission` counts both.
//!
//! ## Planned design
//!
//! - One ledger, `loaded + reserved + retained ≤ limit`, true at every instant under one innermost
//!   mutex.
//! - Two-phase admission: plan LRU victims under the lock, evict without it, re-check
//!   authoritatively; an RAII reservation that refunds on drop or panic, grows, shrinks and is
//!   trued up at publish.
//! - Publish-and-retain: an old version stays counted until its last reader drops it, credited back
//!   by drop notification.
//! - Single-flight loading, a FIFO admission queue with deadlines, lock-free read recency, and
//!   metrics for every tier.
//!
//! ## Status
//!
//! This crate is a skeleton: it has no public API yet, and nothing in it pretends to work.
//! The design above is what its tracking issue ("sqry-admission memory budget") asks for.
