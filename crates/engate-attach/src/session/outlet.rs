//! One client's output, written by the pump while the client keeps up and by the client's
//! writer thread otherwise (see [`super::handoff`]).

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::handoff::Handoff;
use super::wire;
use crate::attach::{Attach, Event, Live};
use crate::sys;

/// The most encoded output one non-blocking round gathers before it writes.
const ROUND_BYTES: usize = 256 << 10;
/// The room a client keeps between bursts for its encoded output.
const KEEP_BYTES: usize = 16 << 10;

/// A client's subscription and the output taken from it but not yet written.
#[derive(Debug)]
pub(super) struct Drive {
    /// The subscription; `None` once the writer has left (so that it detaches at once, even
    /// while the pump still holds the outlet: an authority must not hold the stream back
    /// after its client is gone).
    live: Option<Attach<Live>>,
    /// Encoded output; `buf[sent..]` is not written yet.
    buf: Vec<u8>,
    sent: usize,
    /// An event a non-blocking round took and left to the writer: anything but an item.
    held: Option<Event>,
}

impl Drive {
    /// The subscription, until the writer has left.
    pub(super) fn live(&mut self) -> Option<&mut Attach<Live>> {
        self.live.as_mut()
    }

    /// What the writer must write before anything else: output a non-blocking round could
    /// not (written into `out`; `true` if there was some), then the event it left. Empties
    /// both.
    pub(super) fn take_left(
        &mut self,
        out: &mut impl io::Write,
    ) -> io::Result<(bool, Option<Event>)> {
        let unsent = self.sent < self.buf.len();
        if unsent {
            let rest = &self.buf[self.sent..];
            self.sent = self.buf.len();
            out.write_all(rest)?;
        }
        Ok((unsent, self.held.take()))
    }

    /// Writes what is new without blocking; `false` if the writer must take over (the socket
    /// is full or failed, or an event needs more than a write).
    fn write_now(&mut self, stream: &UnixStream) -> bool {
        let Some(live) = self.live.as_mut() else {
            // The writer has left: nothing more is sent.
            return true;
        };
        loop {
            self.buf.clear();
            self.sent = 0;
            let mut caught_up = false;
            while self.buf.len() < ROUND_BYTES {
                match live.try_next() {
                    Event::Empty => {
                        caught_up = true;
                        break;
                    }
                    Event::Item(item) => {
                        wire::encode_item_header(&item, &mut self.buf);
                        self.buf.extend_from_slice(&item.bytes);
                    }
                    other => {
                        self.held = Some(other);
                        break;
                    }
                }
            }
            while self.sent < self.buf.len() {
                match sys::unix::send_now(stream.as_fd(), &self.buf[self.sent..]) {
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Full, or failed: the writer's blocking write waits, or finds out.
                    Err(_) => return false,
                }
            }
            if self.held.is_some() {
                return false;
            }
            if caught_up {
                if self.buf.capacity() > KEEP_BYTES {
                    // A burst is over: its room is given back.
                    self.buf = Vec::new();
                }
                return true;
            }
        }
    }
}

/// One client's output and who writes it.
#[derive(Debug)]
pub(super) struct Outlet {
    handoff: Handoff,
    drive: Mutex<Drive>,
    stream: Arc<UnixStream>,
    /// The writer thread waits here for the client to be handed over.
    parked: Mutex<()>,
    handed_over: Condvar,
}

impl Outlet {
    /// A client that has just gone live, owned by its writer thread until it has caught up.
    pub(super) fn new(live: Attach<Live>, stream: Arc<UnixStream>) -> Self {
        Self {
            handoff: Handoff::owned(),
            drive: Mutex::new(Drive {
                live: Some(live),
                buf: Vec::new(),
                sent: 0,
                held: None,
            }),
            stream,
            parked: Mutex::new(()),
            handed_over: Condvar::new(),
        }
    }

    /// The pump's side, after each emit (and once after the stream closes): writes what is
    /// new if nobody else is, without blocking; hands the client to its writer if it cannot.
    pub(super) fn offer(&self) {
        if !self.handoff.offer() {
            return;
        }
        loop {
            if !self.drive.lock().write_now(&self.stream) {
                self.handoff.hand_over();
                self.wake();
                return;
            }
            if !self.handoff.release() {
                return;
            }
        }
    }

    /// The writer thread's side: whether it owns the client, after waiting for a hand-over
    /// if it does not. Does not wait if `leaving` says the writer has something else to do;
    /// whoever makes `leaving` true calls [`wake`](Self::wake) after, so it is not missed.
    pub(super) fn wait_owned(&self, leaving: impl Fn() -> bool) -> bool {
        let mut parked = self.parked.lock();
        if !self.handoff.is_owned() && !leaving() {
            self.handed_over.wait(&mut parked);
        }
        self.handoff.is_owned()
    }

    /// Wakes the writer thread if it waits for a hand-over: something else changed (its
    /// client's input ended, the server stops). Callers set what changed before they wake.
    pub(super) fn wake(&self) {
        drop(self.parked.lock());
        self.handed_over.notify_all();
    }

    /// The subscription and what is left to write; only for the owner.
    pub(super) fn drive(&self) -> MutexGuard<'_, Drive> {
        debug_assert!(self.handoff.is_owned());
        self.drive.lock()
    }

    /// The owner is caught up: the pump writes from now on. Keeps the client owned if output
    /// came meanwhile.
    pub(super) fn release(&self) {
        if self.handoff.release() {
            self.handoff.hand_over();
        }
    }

    /// The writer thread keeps the client for good (it is leaving).
    pub(super) fn take(&self) {
        self.handoff.take();
    }

    /// The writer thread has left: the subscription ends now, whoever still holds the outlet.
    pub(super) fn close(&self) {
        self.take();
        let live = self.drive.lock().live.take();
        drop(live);
    }
}
