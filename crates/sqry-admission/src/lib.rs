//! A memory budget that holds while loads, rebuilds, evictions and slow readers overlap.
//!
//! Daemons that keep many large indexes in memory — code search, language servers, vector-index
//! hosts — run out of memory "despite a cache limit" because caches bound memory best-effort:
//! they count neither loads still being built nor evicted values that readers still hold.
//! `sqry-admission` counts both, and refuses or queues what does not fit.
//!
//! # The ledger
//!
//! Every byte is in one of three tiers — **loaded** (published versions being served),
//! **reserved** (headroom promised to loads and rebuilds in flight) and **retained** (replaced or
//! evicted versions a reader still holds) — and `loaded + reserved + retained ≤ limit` holds at
//! every instant, checked and changed in one critical section of one innermost mutex
//! ([`Ledger`]). A retained version's bytes are credited back by the drop of its last
//! [`Handle`], not by polling.
//!
//! # The manager
//!
//! [`AdmissionManager`] keys versions of values (anything with [`HeapSize`]) and decides who
//! gets memory:
//!
//! - [`reserve`](AdmissionManager::reserve) returns a [`Reservation`] that refunds itself on
//!   drop or panic; when the budget is short it evicts least-recently-used entries that can be
//!   freed now (to a low watermark; nothing if that would not suffice), then fails fast with the
//!   whole ledger in the error or waits in a FIFO queue until a deadline (also as a future);
//! - [`publish`](AdmissionManager::publish) trues the reservation up to the measured size,
//!   swaps the version in under a rollback guard and keeps the old one counted until its last
//!   reader drops it;
//! - [`get_or_load`](AdmissionManager::get_or_load) and [`rebuild`](AdmissionManager::rebuild)
//!   — and their futures [`get_or_load_async`](AdmissionManager::get_or_load_async) and
//!   [`rebuild_async`](AdmissionManager::rebuild_async), which take an async builder and need
//!   no runtime — run one loader per key (others join its result), never publish into an
//!   evicted entry, tell the builder through its [`BuildContext`] when it should stop, back off
//!   after builder failures, and turn builder panics into a `Failed` state with the error
//!   recorded;
//! - [`get`](AdmissionManager::get) and [`classify_for_serve`](AdmissionManager::classify_for_serve)
//!   serve without touching the ledger's mutex (`get` takes no lock at all), with fresh /
//!   stale / not-ready verdicts;
//! - [`status`](AdmissionManager::status) reports every tier, high-water marks, the queue,
//!   evictions by cause, rejections, learned estimate multipliers and every entry — as
//!   Prometheus text ([`Status::prometheus`]) or, with the `serde` feature, anything serde
//!   writes.
//!
//! An optional [memory probe](probe) (cgroup `memory.current`/`memory.max`, or RSS) takes
//! headroom away when memory the ledger does not count grows.
//!
//! ```
//! use std::time::Duration;
//! use sqry_admission::{AdmissionConfig, AdmissionManager, HeapSize, ReserveError, ReserveRequest};
//!
//! struct Index(Vec<u8>);
//! impl HeapSize for Index {
//!     fn heap_bytes(&self) -> usize {
//!         self.0.capacity()
//!     }
//! }
//!
//! let manager = AdmissionManager::<&str, Index>::new(AdmissionConfig::new(1000).audit_interval(None));
//! manager.register("a");
//! manager.register("b");
//!
//! // Reserve, build, publish: the reservation is trued up to the measured 600 bytes.
//! let r = manager.reserve(&"a", ReserveRequest::new(700))?;
//! let a = manager.publish(r, Index(vec![0; 600]))?;
//! assert_eq!(manager.ledger().snapshot().loaded, 600);
//!
//! // `a` is held by a reader, so evicting it would free nothing now: "b" is refused, and the
//! // refusal carries the whole ledger.
//! let err = manager.reserve(&"b", ReserveRequest::new(500)).unwrap_err();
//! assert!(matches!(err, ReserveError::BudgetExceeded { .. }));
//! assert_eq!(err.ledger().unwrap().loaded, 600);
//!
//! // Once the reader lets go, admission evicts "a" and admits "b".
//! drop(a);
//! let r = manager.reserve(&"b", ReserveRequest::new(500).wait_for(Duration::from_secs(1)))?;
//! assert!(!manager.contains(&"a"));
//! assert!(manager.ledger().snapshot().high_water <= 1000);
//! # drop(r);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod config;
mod entry;
mod error;
mod export;
mod failpoint;
#[cfg(not(feature = "loom"))]
mod flight;
/// The single-flight gate, public only for the loom suite.
#[cfg(feature = "loom")]
#[doc(hidden)]
pub mod flight;
mod housekeeper;
pub mod ledger;
pub mod manager;
pub mod probe;
mod sync;

pub use config::{AdmissionConfig, ProbeConfig, QueuePolicy};
pub use error::{
    BuildError, CODE_BUDGET_EXCEEDED, CODE_BUILD_FAILED, CODE_EVICTED, CODE_STALE_EXPIRED,
    LoadError, PublishError, ReserveError, ServeError,
};
pub use ledger::{
    AuditReport, EvictionCounts, Grant, Handle, Ledger, LedgerSnapshot, Metrics, Refused,
    RetireCause,
};
pub use manager::{
    AdmissionManager, BuildContext, Cancellation, Cancelled, ClassEstimate, EntryState,
    EntryStatus, EvictionPlan, LimitReport, LoadOptions, Overflow, PublishHook, Reservation,
    ReserveFuture, ReserveRequest, ServeVerdict, SingleFlight, Status, WeakManager,
};

/// The heap memory a value owns, as the budget counts it.
///
/// Implement it for the index type: the sum of its buffers' capacities is the usual answer
/// (the value's inline size is small and fixed). Publishing measures it once; it is not
/// re-measured while the version lives.
pub trait HeapSize {
    /// Bytes of heap memory owned by the value.
    fn heap_bytes(&self) -> usize;
}

impl HeapSize for Vec<u8> {
    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

impl HeapSize for String {
    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

impl HeapSize for Box<[u8]> {
    fn heap_bytes(&self) -> usize {
        self.len()
    }
}
