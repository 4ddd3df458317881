//! The registry's synchronisation primitives, in one place so loom can replace them.
//!
//! The registry's protocols are what the loom models exercise: slots read without locks while a
//! writer swaps them, the revision counter that cached callers poll, the writer mutex, and the
//! per-bundle reload gate (a mutex and a condition variable, from `platform_primitives::sync`,
//! which this crate's `loom` feature switches to loom too). Without the `loom` feature the rest
//! are `arc-swap` (a slot is an [`ArcCell`]) and `std`'s atomics; with it, loom's types behind
//! the same API. Loom has no `ArcSwap`: under
//! loom an [`ArcCell`] is a mutex around an `Arc`, which is linearizable like `ArcSwap`, so the
//! models check the registry's protocol on top of it (not `arc-swap`'s internals, which its own
//! tests cover).

#[cfg(not(feature = "loom"))]
mod imp {
    use std::sync::Arc;

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
}

#[cfg(feature = "loom")]
mod imp {
    use std::ops::Deref;
    use std::sync::Arc;

    pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

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

pub(crate) use platform_primitives::sync::{Condvar, Mutex};
