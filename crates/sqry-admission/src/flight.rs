//! The single-flight gate of one entry: its lifecycle state, and the callers waiting for the one
//! loader that holds the gate to finish.
//!
//! The state is one atomic byte; `Loading` and `Rebuilding` are gates, and a compare-and-swap
//! into one picks exactly one loader. Everyone else waits for that loader — threads on a
//! condition variable, tasks by waker — until the state leaves the gate or the gate's
//! generation moves (bumped, under the waiters' mutex, each time a loader finishes or gives
//! up). The loader changes the state *before* it bumps the generation, and a waiter checks both
//! under the same mutex, so no finish can slip between a waiter's check and its sleep.
//!
//! A loader that gives up without a result (its future was dropped) puts the state back to
//! where it was and finishes the flight; a waiter then finds the gate open and takes it. The
//! primitives come from the crate's `sync` shim, so the loom suite checks exactly this code.

// Public only so the loom suite can drive it (under the `loom` feature); a crate-private
// module otherwise.
#![cfg_attr(not(feature = "loom"), allow(unreachable_pub))]

use std::task::{Poll, Waker};
use std::time::Instant;

use crate::entry::EntryState;
use crate::sync::{AtomicU8, Condvar, Mutex, Ordering};

/// One entry's lifecycle state and the callers waiting on its load in flight.
#[derive(Debug)]
pub struct Gate {
    state: AtomicU8,
    waiters: Mutex<Waiters>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct Waiters {
    /// Bumped each time a flight finishes (or is abandoned, or its entry evicted).
    generation: u64,
    next_id: u64,
    /// Tasks waiting for the flight, by waiter id.
    wakers: Vec<(u64, Waker)>,
}

/// An async waiter's place in a [`Gate`]: the generation it waits to see move, and the id its
/// waker is registered under.
#[derive(Debug)]
pub struct Ticket {
    start: u64,
    id: Option<u64>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A gate in the `Unloaded` state.
    pub fn new() -> Self {
        Self {
            state: AtomicU8::new(EntryState::Unloaded as u8),
            waiters: Mutex::new(Waiters::default()),
            done: Condvar::new(),
        }
    }

    /// The state now.
    pub fn state(&self) -> EntryState {
        EntryState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the state (the caller holds the gate, or is evicting).
    pub fn set_state(&self, state: EntryState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Takes the gate: moves from one of `from` to `to` and returns the state it moved from.
    /// Exactly one caller wins; the others learn the state that stopped them.
    ///
    /// # Errors
    ///
    /// The state, if it is none of `from`.
    pub fn try_transition(
        &self,
        from: &[EntryState],
        to: EntryState,
    ) -> Result<EntryState, EntryState> {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if !from.iter().any(|s| *s as u8 == current) {
                return Err(EntryState::from_u8(current));
            }
            match self.state.compare_exchange(
                current,
                to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(EntryState::from_u8(current)),
                Err(seen) => current = seen,
            }
        }
    }

    /// Moves the state from `from` back to `to` if it is still `from` (a loader giving up
    /// without a result); returns whether it did. An eviction that happened meanwhile wins.
    pub fn restore(&self, from: EntryState, to: EntryState) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Wakes every caller waiting on the flight. The state has already moved out of the gate.
    pub fn finish(&self) {
        let mut w = self.waiters.lock();
        w.generation = w.generation.wrapping_add(1);
        let wakers = std::mem::take(&mut w.wakers);
        drop(w);
        self.done.notify_all();
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// A deliberately broken finish for the loom suite's negative control: it wakes the
    /// waiters without moving the generation under their mutex, so a waiter that checked the
    /// state just before can sleep through it.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn finish_without_generation(&self) {
        self.done.notify_all();
        let wakers = std::mem::take(&mut self.waiters.lock().wakers);
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Blocks until the flight in `gate` finishes or `deadline` passes; true if it finished.
    pub fn wait(&self, gate: EntryState, deadline: Option<Instant>) -> bool {
        let mut w = self.waiters.lock();
        let start = w.generation;
        while self.state() == gate && w.generation == start {
            match deadline {
                None => self.done.wait(&mut w),
                Some(deadline) => {
                    if self.done.wait_until(&mut w, deadline)
                        && self.state() == gate
                        && w.generation == start
                    {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Starts an async wait on the flight in progress now.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            start: self.waiters.lock().generation,
            id: None,
        }
    }

    /// Polls an async wait on the flight in `gate`: ready once the state has left it or the
    /// flight finished; otherwise `waker` is registered (replacing this ticket's previous one).
    pub fn poll_wait(&self, gate: EntryState, ticket: &mut Ticket, waker: &Waker) -> Poll<()> {
        let mut w = self.waiters.lock();
        if self.state() != gate || w.generation != ticket.start {
            let id = ticket.id.take();
            if let Some(id) = id {
                w.wakers.retain(|(i, _)| *i != id);
            }
            return Poll::Ready(());
        }
        match ticket.id {
            Some(id) => {
                if let Some(slot) = w.wakers.iter_mut().find(|(i, _)| *i == id) {
                    slot.1.clone_from(waker);
                } else {
                    w.wakers.push((id, waker.clone()));
                }
            }
            None => {
                let id = w.next_id;
                w.next_id += 1;
                ticket.id = Some(id);
                w.wakers.push((id, waker.clone()));
            }
        }
        Poll::Pending
    }

    /// Forgets an async waiter that stops waiting (its future was dropped).
    pub fn forget(&self, ticket: &mut Ticket) {
        if let Some(id) = ticket.id.take() {
            self.waiters.lock().wakers.retain(|(i, _)| *i != id);
        }
    }
}
