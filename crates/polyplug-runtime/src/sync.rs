//! The registry's synchronisation primitives, in one place so loom can replace them.
//!
//! The registry's protocols are what the loom models exercise: slots read without locks while a
//! writer swaps them, the revision counter that cached callers poll, the writer mutex, and the
//! per-bundle reload gate (a mutex and a condition variable). Without the `loom` feature they
//! are `arc-swap` (a slot is an [`ArcCell`]), `std`'s atomics and `parking_lot`'s mutex and
//! condition variable; with it, loom's types behind the same API. Loom has no `ArcSwap`: under
//! loom an [`ArcCell`] is a mutex around an `Arc`, which is linearizable like `ArcSwap`, so the
//! models check the registry's protocol on top of it (not `arc-swap`'s internals, which its own
//! tests cover).

#[cfg(not(feature = "loom"))]
mod imp {
    use std::sync::Arc;

    pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
    pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

    /// What [`ArcCell::load`] returns: derefs to the `Arc` without touching its count in the
    /// common case.
    pub(crate) type CellGuard<T> = arc_swap::Guard<Arc<T>>;

    /// An atomically replaceable `Arc`, read without locks.
    pub(crate) struct ArcCell<T>(arc_swap::ArcSwap<T>);

    impl<T> ArcCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(arc_swap::ArcSwap::new(value))
        }

        #[inline]
        pub(crate) fn load(&self) -> CellGuard<T> {
            self.0.load()
        }

        pub(crate) fn load_full(&self) -> Arc<T> {
            self.0.load_full()
        }

        /// Replaces the value; readers that still hold the old one keep it alive (their
        /// references are counted by the time this returns).
        pub(crate) fn swap(&self, value: Arc<T>) -> Arc<T> {
            self.0.swap(value)
        }
    }

    /// Waits on `cv` (the `parking_lot` way: the guard is re-locked in place).
    pub(crate) fn wait<T>(cv: &Condvar, guard: &mut MutexGuard<'_, T>) {
        cv.wait(guard);
    }
}

#[cfg(feature = "loom")]
mod imp {
    use std::ops::{Deref, DerefMut};
    use std::sync::Arc;

    pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

    /// Loom's mutex behind `parking_lot`'s API.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // Poisoned only by a panicking model thread, which fails the model anyway.
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

    /// Loom's condition variable.
    #[derive(Debug)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    pub(crate) fn wait<T>(cv: &Condvar, guard: &mut MutexGuard<'_, T>) {
        let inner = guard.0.take().expect("guard present before a wait");
        guard.0 = Some(cv.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
    }

    /// Under loom, a load hands out a clone of the `Arc`.
    pub(crate) struct CellGuard<T>(Arc<T>);

    impl<T> Deref for CellGuard<T> {
        type Target = Arc<T>;
        fn deref(&self) -> &Arc<T> {
            &self.0
        }
    }

    /// A mutex around an `Arc`: linearizable loads and swaps, like `ArcSwap`.
    pub(crate) struct ArcCell<T>(loom::sync::Mutex<Arc<T>>);

    impl<T> ArcCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn load(&self) -> CellGuard<T> {
            CellGuard(self.load_full())
        }

        pub(crate) fn load_full(&self) -> Arc<T> {
            Arc::clone(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
        }

        pub(crate) fn swap(&self, value: Arc<T>) -> Arc<T> {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *slot, value)
        }
    }
}

pub(crate) use imp::*;
