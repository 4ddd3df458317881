//! The manager's timer thread: the slow audit scan, memory-probe refreshes, and the deadlines
//! of async waiters — queued admissions and joins of a load in flight.
//!
//! Crediting retained bytes does not depend on this thread (a version's last drop does it).
//! The thread exists for what has no event of its own: the periodic audit (a safety net that
//! reconciles the ledger with its records and reports versions held past the drain warning),
//! refreshing the probe when nothing is being admitted, and waking async waiters when a
//! deadline passes — so [`ReserveFuture`](crate::ReserveFuture) and an async join work on any
//! executor. Queued admissions are woken through the ledger; a join registers its own waker as a
//! timer, and takes it back when it stops waiting, so timers do not pile up. It is
//! started with the manager when an audit interval is configured, otherwise on the first async
//! wait, holds only a weak reference to the manager, and exits when the manager drops.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::manager::admission::REPLAN_INTERVAL;

/// What a tick should do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tick {
    pub(crate) audit_due: bool,
    pub(crate) wake_waiters: bool,
}

#[derive(Debug, Default)]
struct State {
    stop: bool,
    /// When to wake the ledger's async waiters.
    deadlines: BinaryHeap<Reverse<Instant>>,
    /// Wakers to wake at a time, by (time, registration number).
    timers: BTreeMap<Timer, Waker>,
    next_timer: u64,
}

/// A waker registered with [`Housekeeper::wake_at`], to take back with [`Housekeeper::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer(Instant, u64);

#[derive(Debug, Default)]
struct Control {
    state: Mutex<State>,
    wake: Condvar,
}

/// Handle to the timer thread (started at most once).
#[derive(Debug, Default)]
pub(crate) struct Housekeeper {
    control: Arc<Control>,
    started: AtomicBool,
}

impl Housekeeper {
    /// Starts the thread unless it runs already. `tick` returns `None` once the manager is
    /// gone (the thread exits), otherwise whether requests are queued.
    pub(crate) fn start<F>(&self, audit: Option<Duration>, tick: F)
    where
        F: FnMut(Tick) -> Option<bool> + Send + 'static,
    {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let control = Arc::clone(&self.control);
        let spawned = std::thread::Builder::new()
            .name("sqry-admission".into())
            .spawn(move || run(&control, audit, tick));
        if spawned.is_err() {
            // Without the thread, async deadlines are checked only when a waiter is polled;
            // the next async wait tries again.
            self.started.store(false, Ordering::Release);
        }
    }

    /// Wakes the async waiters at `deadline`.
    pub(crate) fn watch(&self, deadline: Instant) {
        self.control.state.lock().deadlines.push(Reverse(deadline));
        self.control.wake.notify_all();
    }

    /// Wakes `waker` at `at` (once), unless [`Self::cancel`]led first.
    pub(crate) fn wake_at(&self, at: Instant, waker: &Waker) -> Timer {
        let mut state = self.control.state.lock();
        let timer = Timer(at, state.next_timer);
        state.next_timer += 1;
        state.timers.insert(timer, waker.clone());
        let earliest = state
            .timers
            .first_key_value()
            .is_some_and(|(t, _)| *t == timer);
        drop(state);
        if earliest {
            self.control.wake.notify_all();
        }
        timer
    }

    /// Takes back a timer that has not fired (a timer that fired is gone already).
    pub(crate) fn cancel(&self, timer: Timer) {
        self.control.state.lock().timers.remove(&timer);
    }

    /// Timers registered and not yet fired or cancelled.
    #[cfg(test)]
    pub(crate) fn timers_pending(&self) -> usize {
        self.control.state.lock().timers.len()
    }

    /// Asks the thread to exit.
    pub(crate) fn stop(&self) {
        self.control.state.lock().stop = true;
        self.control.wake.notify_all();
    }
}

fn run<F>(control: &Control, audit: Option<Duration>, mut tick: F)
where
    F: FnMut(Tick) -> Option<bool>,
{
    let mut next_audit = audit.map(|a| Instant::now() + a);
    let mut waiters = false;
    let mut state = control.state.lock();
    loop {
        if state.stop {
            return;
        }
        let now = Instant::now();
        let wake_at = [
            next_audit,
            state.deadlines.peek().map(|d| d.0),
            state.timers.first_key_value().map(|(t, _)| t.0),
            waiters.then(|| now + REPLAN_INTERVAL),
        ]
        .into_iter()
        .flatten()
        .min();
        match wake_at {
            Some(at) => {
                let _ = control.wake.wait_until(&mut state, at);
            }
            None => control.wake.wait(&mut state),
        }
        if state.stop {
            return;
        }
        let now = Instant::now();
        let audit_due = next_audit.is_some_and(|t| now >= t);
        if audit_due {
            next_audit = audit.map(|a| now + a);
        }
        let mut deadline_passed = false;
        while state.deadlines.peek().is_some_and(|d| d.0 <= now) {
            state.deadlines.pop();
            deadline_passed = true;
        }
        let mut due = Vec::new();
        while let Some(timer) = state.timers.first_entry()
            && timer.key().0 <= now
        {
            due.push(timer.remove());
        }
        drop(state);
        // Outside the lock: a waker may run its task right here, and that task may register
        // or cancel a timer.
        for waker in due {
            waker.wake();
        }
        match tick(Tick {
            audit_due,
            wake_waiters: deadline_passed || waiters,
        }) {
            None => return,
            Some(queued) => waiters = queued,
        }
        state = control.state.lock();
    }
}
