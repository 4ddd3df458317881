//! The registry's synchronisation primitives, in one place so loom can replace them.
//!
//! The registry's protocols are what the loom models exercise: slots read without locks while a
//! writer swaps them, the revision counter that cached callers poll, the writer mutex, and the
//! per-bundle reload gate (a mutex and a condition variable, from `platform_primitives::sync`,
//! which this crate's `loom` feature switches to loom too). Without the `loom` feature a slot
//! is an [`ArcCell`] read through hazard pointers (`sys::hazard`) and the rest are `std`'s
//! atomics; with it, loom's types behind the same API. Under loom an [`ArcCell`] is a mutex
//! around an `Arc`, which is linearizable like the hazard cell, so the registry's models check
//! the registry's protocol on top of it; the hazard protocol has loom models of its own.

#[cfg(not(feature = "loom"))]
mod imp {
    use std::sync::Arc;

    pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

    use crate::sys::hazard::{self, HazardCell, HazardGuard};

    /// What [`ArcCell::load`] returns: derefs to the `Arc`, protected by a hazard slot (no
    /// reference-count traffic) and released with one plain store; it borrows the cell.
    pub(crate) type CellGuard<'a, T> = HazardGuard<'a, T>;

    /// An atomically replaceable `Arc`, read without locks or read-modify-writes (see
    /// `sys::hazard`).
    pub(crate) struct ArcCell<T: Send + Sync + 'static>(HazardCell<T>);

    impl<T: Send + Sync + 'static> ArcCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            // The domain (and its barrier mode) exists before any cell a reader could see.
            hazard::domain();
            Self(HazardCell::new(value))
        }

        #[inline]
        pub(crate) fn load(&self) -> CellGuard<'_, T> {
            hazard::with_record(|record| self.0.load_in(record))
        }

        pub(crate) fn load_full(&self) -> Arc<T> {
            Arc::clone(&self.load())
        }

        /// Replaces the value and returns the old one. The cell's own count of the old value
        /// waits for [`reclaim`]: no destructor runs here, so writers swap under their locks
        /// and reclaim after releasing them.
        pub(crate) fn swap(&self, value: Arc<T>) -> Arc<T> {
            self.0.swap_in(hazard::domain(), value)
        }
    }

    /// Drops replaced values whose readers have all let go; returns how many still wait.
    pub(crate) fn reclaim() -> usize {
        hazard::domain().reclaim()
    }
}

#[cfg(feature = "loom")]
mod imp {
    use std::marker::PhantomData;
    use std::ops::Deref;
    use std::sync::Arc;

    pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

    /// Under loom, a load hands out a clone of the `Arc`.
    pub(crate) struct CellGuard<'a, T>(Arc<T>, PhantomData<&'a ()>);

    impl<T> Deref for CellGuard<'_, T> {
        type Target = Arc<T>;
        fn deref(&self) -> &Arc<T> {
            &self.0
        }
    }

    /// A mutex around an `Arc`: linearizable loads and swaps, like the hazard cell.
    pub(crate) struct ArcCell<T>(loom::sync::Mutex<Arc<T>>);

    impl<T> ArcCell<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn load(&self) -> CellGuard<'_, T> {
            CellGuard(self.load_full(), PhantomData)
        }

        pub(crate) fn load_full(&self) -> Arc<T> {
            Arc::clone(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
        }

        pub(crate) fn swap(&self, value: Arc<T>) -> Arc<T> {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *slot, value)
        }
    }

    /// Under loom replaced values are counted references: nothing waits.
    pub(crate) fn reclaim() -> usize {
        0
    }
}

pub(crate) use imp::*;

pub(crate) use platform_primitives::sync::{Condvar, Mutex};
