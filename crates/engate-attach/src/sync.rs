//! The synchronisation primitives of the hub, in one place so loom can replace them.
//!
//! The hub's protocol is two mutexes (the fence and the ring), two condition variables (data
//! for subscribers, space for a producer held back by an authority subscriber) and one atomic
//! (how many subscribers may hold the producer back). Those, and the `Arc` that shares them, go
//! through this module: with the `loom` feature they are loom's types, otherwise
//! `parking_lot`'s mutex and condition variable and `std`'s `Arc` and atomics. Statistics
//! counters are plain `std` atomics everywhere: they order nothing, and modelling them would only
//! multiply loom's schedules.
//!
//! The API is `parking_lot`'s shape (a `lock` that cannot fail, waits on a `&mut` guard, a fair
//! unlock that hands the lock to a waiter). Loom's condition variable never times out, so the
//! models never wait on a deadline; a fair unlock is an ordinary unlock under loom.

#[cfg(not(feature = "loom"))]
mod imp {
    use std::time::Instant;

    pub(crate) use parking_lot::{Mutex, MutexGuard};
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};

    /// Releases `guard`, handing the lock straight to a parked waiter if there is one, so a
    /// producer that re-locks in a tight loop cannot starve an attach.
    pub(crate) fn unlock_fair<T>(guard: MutexGuard<'_, T>) {
        MutexGuard::unlock_fair(guard);
    }

    /// A condition variable with `parking_lot`'s API.
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(parking_lot::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(parking_lot::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            self.0.wait(guard);
        }

        /// Waits until notified or until `deadline`; true if the deadline passed.
        pub(crate) fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            deadline: Instant,
        ) -> bool {
            self.0.wait_until(guard, deadline).timed_out()
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

#[cfg(feature = "loom")]
mod imp {
    use std::ops::{Deref, DerefMut};
    use std::time::Instant;

    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};

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

    /// Under loom a fair unlock is an ordinary one: loom explores every hand-over anyway.
    pub(crate) fn unlock_fair<T>(guard: MutexGuard<'_, T>) {
        drop(guard);
    }

    /// Loom's condition variable behind `parking_lot`'s API; deadlines are not modelled.
    #[derive(Debug)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("guard present before a wait");
            guard.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
        }

        /// Loom never times out: this is [`wait`](Self::wait), and reports no timeout.
        pub(crate) fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            _deadline: Instant,
        ) -> bool {
            self.wait(guard);
            false
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

pub(crate) use imp::*;
