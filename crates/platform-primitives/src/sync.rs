//! A mutex and a condition variable with `parking_lot`'s API that loom can model.
//!
//! Crates whose protocols are model-checked route their locks through a private `sync` shim
//! so that `loom` can replace them. The shims all need the same thing: `parking_lot`'s shape
//! (a `lock` that cannot fail, waits on a `&mut` guard, a fair unlock) in normal builds, and
//! the same shape over `loom`'s types in model builds. This module is that one copy. With the
//! `loom` feature it wraps `loom::sync::{Mutex, Condvar}`; otherwise it is `parking_lot`.
//!
//! Loom's condition variable never times out, so under loom [`Condvar::wait_until`] is a
//! plain wait that reports no timeout, and [`unlock_fair`] is an ordinary unlock (loom explores
//! every hand-over anyway). Only model builds enable the feature.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use platform_primitives::sync::{Condvar, Mutex};
//!
//! let ready = Mutex::new(false);
//! let cond = Condvar::new();
//! let mut guard = ready.lock();
//! let timed_out = cond.wait_until(&mut guard, Instant::now() + Duration::from_millis(1));
//! assert!(timed_out && !*guard);
//! ```

#[cfg(not(feature = "loom"))]
mod imp {
    use std::time::Instant;

    pub use parking_lot::{Mutex, MutexGuard};

    /// Releases `guard`, handing the lock straight to a parked waiter if there is one, so a
    /// thread that re-locks in a tight loop cannot starve the others.
    pub fn unlock_fair<T>(guard: MutexGuard<'_, T>) {
        MutexGuard::unlock_fair(guard);
    }

    /// A condition variable (`parking_lot`'s).
    #[derive(Debug, Default)]
    pub struct Condvar(parking_lot::Condvar);

    impl Condvar {
        /// A condition variable nobody waits on.
        pub fn new() -> Self {
            Self(parking_lot::Condvar::new())
        }

        /// Releases the lock and waits for a notification; holds the lock again on return.
        pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            self.0.wait(guard);
        }

        /// Like [`wait`](Self::wait), but gives up at `deadline`; true if it did.
        pub fn wait_until<T>(&self, guard: &mut MutexGuard<'_, T>, deadline: Instant) -> bool {
            self.0.wait_until(guard, deadline).timed_out()
        }

        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }

        /// Wakes one waiter.
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
    }
}

#[cfg(feature = "loom")]
mod imp {
    use std::ops::{Deref, DerefMut};
    use std::time::Instant;

    /// Loom's mutex behind `parking_lot`'s API.
    #[derive(Debug)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        /// A mutex holding `value`.
        pub fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        /// Locks; never fails.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            // Poisoned only by a panicking model thread, which fails the model anyway.
            MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
        }
    }

    /// A guard that can be handed to loom's by-value `Condvar::wait` and put back.
    #[derive(Debug)]
    pub struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

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

    /// Under loom a fair unlock is an ordinary one.
    pub fn unlock_fair<T>(guard: MutexGuard<'_, T>) {
        drop(guard);
    }

    /// Loom's condition variable behind `parking_lot`'s API; deadlines are not modelled.
    #[derive(Debug)]
    pub struct Condvar(loom::sync::Condvar);

    impl Default for Condvar {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Condvar {
        /// A condition variable nobody waits on.
        pub fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }

        /// Releases the lock and waits for a notification; holds the lock again on return.
        pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("guard present before a wait");
            guard.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
        }

        /// Loom never times out: this is [`wait`](Self::wait), and reports no timeout.
        pub fn wait_until<T>(&self, guard: &mut MutexGuard<'_, T>, _deadline: Instant) -> bool {
            self.wait(guard);
            false
        }

        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }

        /// Wakes one waiter.
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
    }
}

pub use imp::*;
