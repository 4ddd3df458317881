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
//! The API is `parking_lot`'s shape (a `lock` that cannot fail, `wait_until` on a `&mut`
//! guard); the loom side adapts to it. Loom's condition variable never times out, so the
//! models never wait on a deadline.

#[cfg(not(feature = "loom"))]
mod imp {
    use std::any::Any;

    pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
    use std::ops::{Deref, DerefMut};
    use std::time::Instant;

    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

    /// Loom's mutex behind `parking_lot`'s API.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // Loom mutexes are poisoned only by a panicking model thread, which fails the
            // model anyway.
            MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
        }
    }

    /// A guard that can be handed to loom's by-value `Condvar::wait` and put back.
    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_deref().expect("guard present outside a wait")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_deref_mut().expect("guard present outside a wait")
        }
    }

    /// What `wait_until` reports (`parking_lot` reports whether it timed out; loom never does).
    pub(crate) struct WaitTimeoutResult;

    /// Loom's condition variable behind `parking_lot`'s API; deadlines are not modelled.
    #[derive(Debug)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }

        pub(crate) fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            _deadline: Instant,
        ) -> WaitTimeoutResult {
            let inner = guard.0.take().expect("guard present before a wait");
            guard.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
            WaitTimeoutResult
        }

        pub(crate) fn notify_all(&self) -> usize {
            self.0.notify_all();
            0
        }
    }
}

pub(crate) use imp::*;
