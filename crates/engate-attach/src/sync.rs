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
//! The mutex and condition variable are `platform_primitives::sync` (`parking_lot`'s shape,
//! loom's types when its `loom` feature is on, which this crate's `loom` feature turns on).

pub(crate) use platform_primitives::sync::{Condvar, Mutex, MutexGuard, unlock_fair};

#[cfg(feature = "loom")]
pub(crate) use loom::thread::yield_now;
#[cfg(not(feature = "loom"))]
pub(crate) use std::thread::yield_now;

#[cfg(feature = "loom")]
pub(crate) use loom::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering, fence},
};
#[cfg(not(feature = "loom"))]
pub(crate) use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering, fence},
};
