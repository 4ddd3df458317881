//! The manager's timer thread: the slow audit scan, memory-probe refreshes, and the deadlines
//! of async waiters.
//!
//! Crediting retained bytes does not depend on this thread (a version's last drop does it).
//! The thread exists for what has no event of its own: the periodic audit (a safety net that
//! reconciles the ledger with its records and reports versions held past the drain warning),
//! refreshing the probe when nothing is being admitted, and waking async waiters when a
//! deadline passes — so [`ReserveFuture`](crate::ReserveFuture) works on any executor. It is
//! started with the manager when an audit interval is configured, otherwise on the first async
//! wait, holds only a weak reference to the manager, and exits when the manager drops.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    deadlines: BinaryHeap<Reverse<Instant>>,
}

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
        drop(state);
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
