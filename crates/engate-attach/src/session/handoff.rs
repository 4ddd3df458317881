//! Who writes a client's output next: whoever emitted it, without blocking, or the client's
//! own writer thread.
//!
//! The session server's pty reader (the pump) writes a caught-up client's output straight to
//! its socket, as dtach's single loop does, instead of waking the client's writer thread for
//! every chunk: one thread hand-off less per keystroke echo. A client whose socket is full, or
//! who needs more than a plain write (a resync, the end of the stream), is handed to its writer
//! thread, which may block; once caught up, the writer gives the client back.
//!
//! [`Handoff`] is that protocol, on two atomics:
//!
//! - `state`: `IDLE` (caught up, nobody writing), `DRIVING` (one thread drains what is new
//!   without blocking) or `OWNED` (the writer thread has it and waits on the hub itself);
//! - `dirty`: set by the emitter after each emit, taken (swapped to false) by a driver before it
//!   drains.
//!
//! The emitter sets `dirty`, then tries `IDLE → DRIVING`. A driver that finds nothing more
//! stores `IDLE` and then reads `dirty`: if an emitter came meanwhile and failed to claim, the
//! driver sees its flag and drains again. Each side stores, then loads the other's word, with a
//! sequentially consistent fence between (a store-buffering pattern: without the fences both
//! loads may read the old values), so of "the emitter's claim fails" and "the releasing driver
//! reads a clear flag" at most one happens: no output is left behind while everybody sleeps. The swap that takes the flag reads
//! the emitter's store, so what the emitter appended before it is visible to the drain. The
//! loom suite (`handoff_*` in `tests/loom.rs`) checks this, with negative controls.

use crate::sync::{AtomicUsize, Ordering::SeqCst, fence};

const IDLE: usize = 0;
const DRIVING: usize = 1;
const OWNED: usize = 2;

/// Deliberate protocol bugs for the loom suite's negative controls.
#[cfg(feature = "loom")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffFault {
    /// A releasing driver does not look whether output came meanwhile.
    ReleaseWithoutRecheck,
    /// A driver clears the flag after it has drained instead of before.
    ClearAfterDrain,
    /// Neither side fences between its store and its load.
    NoFence,
}

/// Which thread drains a client's output next (see the module documentation).
#[derive(Debug)]
#[doc(hidden)]
pub struct Handoff {
    state: AtomicUsize,
    dirty: AtomicUsize,
    #[cfg(feature = "loom")]
    fault: Option<HandoffFault>,
}

impl Handoff {
    /// A handoff owned by the blocking writer, which drains first and then releases it.
    pub fn owned() -> Self {
        Self {
            state: AtomicUsize::new(OWNED),
            dirty: AtomicUsize::new(0),
            #[cfg(feature = "loom")]
            fault: None,
        }
    }

    /// Like [`owned`](Self::owned), with a deliberate bug.
    #[cfg(feature = "loom")]
    pub fn owned_with_fault(fault: HandoffFault) -> Self {
        Self {
            fault: Some(fault),
            ..Self::owned()
        }
    }

    /// The emitter's side, after each emit: says output is there, and tries to become its
    /// driver. `true`: the caller drains without blocking, then calls [`release`](Self::release)
    /// (or [`hand_over`](Self::hand_over)).
    pub fn offer(&self) -> bool {
        self.dirty.store(1, SeqCst);
        // Store, then load another location: only a fence orders the two (a store-buffering
        // pattern with `release`, which has the mirror image).
        self.fence();
        self.try_claim()
    }

    fn try_claim(&self) -> bool {
        if self
            .state
            .compare_exchange(IDLE, DRIVING, SeqCst, SeqCst)
            .is_err()
        {
            return false;
        }
        #[cfg(feature = "loom")]
        if self.fault == Some(HandoffFault::ClearAfterDrain) {
            return true;
        }
        self.dirty.swap(0, SeqCst);
        true
    }

    /// The driver (or the owner) is caught up and gives the client up. `true`: output came
    /// meanwhile and the caller is its driver again; it drains once more.
    pub fn release(&self) -> bool {
        #[cfg(feature = "loom")]
        if self.fault == Some(HandoffFault::ClearAfterDrain) {
            self.dirty.swap(0, SeqCst);
        }
        self.state.store(IDLE, SeqCst);
        #[cfg(feature = "loom")]
        if self.fault == Some(HandoffFault::ReleaseWithoutRecheck) {
            return false;
        }
        self.fence();
        self.dirty.load(SeqCst) != 0 && self.try_claim()
    }

    fn fence(&self) {
        #[cfg(feature = "loom")]
        if self.fault == Some(HandoffFault::NoFence) {
            return;
        }
        fence(SeqCst);
    }

    /// The driver cannot go on without blocking: the writer thread owns the client until it
    /// releases it.
    pub fn hand_over(&self) {
        self.state.store(OWNED, SeqCst);
    }

    /// Whether the writer thread owns the client.
    pub fn is_owned(&self) -> bool {
        self.state.load(SeqCst) == OWNED
    }

    /// The writer thread takes the client for good (it is leaving): waits out a driver
    /// (which never blocks), then no other thread touches the client again.
    pub fn take(&self) {
        loop {
            match self.state.compare_exchange(IDLE, OWNED, SeqCst, SeqCst) {
                Ok(_) | Err(OWNED) => return,
                Err(_) => crate::sync::yield_now(),
            }
        }
    }
}
