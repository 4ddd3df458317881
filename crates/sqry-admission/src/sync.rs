//! The synchronisation primitives of the accounting core, in one place so loom can replace them.
//!
//! The ledger (its mutex, its condition variable, its counters) and the version handles whose
//! last drop credits bytes back (their reference count) are what the loom models exercise, so
//! those — and only those — go through this module. With the `loom` feature they are loom's
//! types; otherwise `parking_lot`'s mutex and condition variable and `std`'s `Arc` and atomics.
//! The manager's own maps and per-entry locks stay on `parking_lot` directly: the models drive
//! the ledger, not the maps. [`Published`] is the serve path's lock-free view of a slot
//! (`arc-swap`; a plain lock under loom, which the models do not exercise).
//!
//! The mutex and condition variable are `platform_primitives::sync` (`parking_lot`'s shape;
//! loom's types when this crate's `loom` feature turns on platform-primitives' own). Loom's
//! condition variable never times out, so the models never wait on a deadline.

#[cfg(not(feature = "loom"))]
mod imp {
    use std::any::Any;

    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

    /// A liveness probe for a version: lets the audit scan see whether any handle still exists
    /// without keeping the value alive (dropping a `Weak` never runs the value's destructor).
    pub(crate) type Probe = std::sync::Weak<dyn Any + Send + Sync>;

    pub(crate) fn probe_of<T: Any + Send + Sync>(arc: &Arc<T>) -> Probe {
        let weak: std::sync::Weak<dyn Any + Send + Sync> = Arc::downgrade(arc) as _;
        weak
    }

    /// `Some(true)` while a holder exists, `Some(false)` once the last one is gone.
    pub(crate) fn probe_alive(probe: &Probe) -> Option<bool> {
        Some(probe.strong_count() > 0)
    }

    /// The serve path's view of a slot: loaded without any lock (`arc-swap`).
    #[derive(Debug)]
    pub(crate) struct Published<T>(arc_swap::ArcSwapOption<T>);

    impl<T> Published<T> {
        pub(crate) fn empty() -> Self {
            Self(arc_swap::ArcSwapOption::empty())
        }

        pub(crate) fn load(&self) -> Option<Arc<T>> {
            self.0.load_full()
        }

        pub(crate) fn store(&self, value: Option<Arc<T>>) {
            self.0.store(value);
        }
    }
}

#[cfg(feature = "loom")]
mod imp {

    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

    /// Loom has no `Weak`: the audit scan cannot see liveness under loom and never reclaims.
    #[derive(Debug)]
    pub(crate) struct Probe;

    pub(crate) fn probe_of<T>(_arc: &Arc<T>) -> Probe {
        Probe
    }

    pub(crate) fn probe_alive(_probe: &Probe) -> Option<bool> {
        None
    }

    /// Under loom the published view is a plain lock (`arc-swap` holds only `std`'s `Arc`);
    /// the models drive the ledger, not the serve path.
    #[derive(Debug)]
    pub(crate) struct Published<T>(parking_lot::RwLock<Option<Arc<T>>>);

    impl<T> Published<T> {
        pub(crate) fn empty() -> Self {
            Self(parking_lot::RwLock::new(None))
        }

        pub(crate) fn load(&self) -> Option<Arc<T>> {
            self.0.read().clone()
        }

        pub(crate) fn store(&self, value: Option<Arc<T>>) {
            *self.0.write() = value;
        }
    }
}

pub(crate) use imp::*;

pub(crate) use platform_primitives::sync::{Condvar, Mutex, MutexGuard};
