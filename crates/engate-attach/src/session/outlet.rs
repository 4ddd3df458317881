//! One client's output, written by the pump while the client keeps up and by the client's
//! writer thread otherwise (see [`super::handoff`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::client::Follower;
use super::handoff::Handoff;
use super::wire::{self, ServerMsg};
use crate::attach::{Attach, Event, Live};
use crate::snapshot::{Position, SnapshotKind};
use crate::sys;

/// The most output one round gathers before it writes.
const ROUND_BYTES: usize = 256 << 10;
/// The room a client keeps between bursts for its output.
const KEEP_BYTES: usize = 16 << 10;
/// How long a blocked write waits at a time before it looks whether to give up.
const WRITE_SLICE: Duration = Duration::from_millis(20);

/// Where a client's output goes.
#[derive(Debug)]
pub(super) enum Sink {
    /// Frames on the client's socket.
    Frames,
    /// The client's own terminal (terminal mode, see [`wire`]): what the client's follower
    /// would write there, written by the server.
    Terminal(Box<TerminalOut>),
}

/// A client's terminal, written by the server.
#[derive(Debug)]
pub(super) struct TerminalOut {
    /// The terminal, opened anew by the server (non-blocking; shared with the pump when it
    /// reads the keys too).
    tty: Arc<File>,
    /// Turns messages into what the terminal shows, exactly once.
    follower: Follower,
    /// Where the terminal stands before the first byte of the buffer.
    base: Option<Position>,
    /// Where each message applied to the buffer ends, to tell how far a partly written buffer
    /// got.
    marks: VecDeque<Mark>,
}

/// Where one message's terminal bytes end in the buffer.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// The buffer's length after the message.
    end: usize,
    /// The terminal's position once the message is shown.
    at: Position,
    /// The message's bytes are the stream's bytes that end at `at`, one to one (live output;
    /// a part of them shown is a position too). A redraw is not: shown in part, it counts
    /// for nothing.
    linear: bool,
}

impl TerminalOut {
    /// A terminal handed over by a client, that shows the stream up to `resume` if given.
    pub(super) fn new(tty: Arc<File>, resume: Option<Position>) -> Self {
        Self {
            tty,
            follower: resume.map_or_else(Follower::new, Follower::resume_at),
            base: resume,
            marks: VecDeque::new(),
        }
    }

    /// Where the terminal stands once `sent` bytes of the buffer are written.
    fn shown(&self, sent: usize) -> Option<Position> {
        let mut at = self.base;
        let mut start = 0;
        for mark in &self.marks {
            if mark.end <= sent {
                at = Some(mark.at);
                start = mark.end;
                continue;
            }
            if mark.linear && sent > start {
                let unsent = (mark.end - sent) as u64;
                at = Some(Position {
                    epoch: mark.at.epoch,
                    next: mark.at.next - unsent,
                });
            }
            break;
        }
        at
    }
}

/// A client's subscription, where its output goes, and the output taken from the
/// subscription but not yet written.
#[derive(Debug)]
pub(super) struct Drive {
    /// The subscription; `None` before it is live and once the writer has left (so that it
    /// detaches at once, even while the pump still holds the outlet: an authority must not
    /// hold the stream back after its client is gone).
    live: Option<Attach<Live>>,
    sink: Sink,
    /// Output to write (frames, or terminal bytes); `buf[sent..]` is not written yet.
    buf: Vec<u8>,
    sent: usize,
    /// An event a round took and left for the writer: anything but an item.
    held: Option<Event>,
}

impl Drive {
    /// Nothing to write yet, to `sink`.
    pub(super) fn new(sink: Sink) -> Self {
        Self {
            live: None,
            sink,
            buf: Vec::new(),
            sent: 0,
            held: None,
        }
    }

    /// Whether the output goes to the client's terminal.
    pub(super) fn is_terminal(&self) -> bool {
        matches!(self.sink, Sink::Terminal(_))
    }

    /// Where the client's terminal stands, for what is written of the output (terminal mode).
    pub(super) fn shown(&self) -> Option<Position> {
        match &self.sink {
            Sink::Terminal(t) => t.shown(self.sent),
            Sink::Frames => None,
        }
    }

    /// Adds a message to the output.
    pub(super) fn put(&mut self, msg: &ServerMsg) {
        self.forget_sent();
        match &mut self.sink {
            Sink::Frames => match msg {
                // The header, then the shared chunk: no frame is built for it.
                ServerMsg::Item(item) => {
                    wire::encode_item_header(item, &mut self.buf);
                    self.buf.extend_from_slice(&item.bytes);
                }
                other => wire::encode_server(other, &mut self.buf),
            },
            Sink::Terminal(t) => {
                // Writing to a vector cannot fail.
                let _ = t.follower.apply(msg, &mut self.buf);
                // A suffix snapshot writes stream bytes too; a redraw does not.
                let redraw =
                    matches!(msg, ServerMsg::Snapshot(s) if s.kind() == SnapshotKind::State);
                if let Some(at) = t.follower.position() {
                    t.marks.push_back(Mark {
                        end: self.buf.len(),
                        at,
                        linear: !redraw,
                    });
                }
            }
        }
    }

    /// Adds an event from the subscription to the output: anything but the end of the
    /// stream (the writer ends the client on that).
    pub(super) fn put_event(&mut self, event: Event) {
        match event {
            Event::Empty | Event::Closed(_) => {}
            Event::Item(item) => self.put(&ServerMsg::Item(item)),
            Event::Gap { from, to } => {
                let epoch = self.live.as_ref().map_or(0, |l| l.position().epoch);
                self.put(&ServerMsg::Gap { epoch, from, to });
            }
            Event::Resync(history) => {
                history.replay(|s| self.put(&ServerMsg::Snapshot(s.clone())));
            }
        }
    }

    /// The next event: the one a round left, else the subscription's next (waiting up to
    /// `wait` for it); `None` once the writer has left.
    pub(super) fn next_event(&mut self, wait: Duration) -> Option<Event> {
        if let Some(held) = self.held.take() {
            return Some(held);
        }
        self.live.as_mut().map(|live| live.next_timeout(wait))
    }

    /// Takes the items that are ready, up to a round's worth; `true` if it caught up (an
    /// event that is not an item is held for the writer).
    pub(super) fn fill(&mut self) -> bool {
        while self.buf.len() - self.sent < ROUND_BYTES && self.held.is_none() {
            let Some(live) = self.live.as_mut() else {
                return true;
            };
            match live.try_next() {
                Event::Empty => return true,
                Event::Item(item) => self.put(&ServerMsg::Item(item)),
                other => self.held = Some(other),
            }
        }
        false
    }

    /// Drops what was written from the buffer, so that it only grows by what is pending.
    fn forget_sent(&mut self) {
        if self.sent == 0 {
            return;
        }
        if let Sink::Terminal(t) = &mut self.sink {
            t.base = t.shown(self.sent);
            t.marks.retain_mut(|m| {
                let keep = m.end > self.sent;
                m.end = m.end.saturating_sub(self.sent);
                keep
            });
        }
        self.buf.drain(..self.sent);
        self.sent = 0;
    }

    /// One write of what is pending, without waiting: bytes written, `WouldBlock` if none.
    fn write_once(&mut self, stream: &UnixStream) -> io::Result<usize> {
        let pending = &self.buf[self.sent..];
        let n = match &self.sink {
            Sink::Frames => sys::unix::send_now(stream.as_fd(), pending)?,
            Sink::Terminal(t) => (&*t.tty).write(pending)?,
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.sent += n;
        if self.sent == self.buf.len() {
            self.forget_sent();
            if self.buf.capacity() > KEEP_BYTES {
                // A burst is over: its room is given back.
                self.buf = Vec::new();
            }
        }
        Ok(n)
    }

    /// Writes what is pending, waiting as long as the client's socket (or terminal) takes,
    /// unless `give_up` says to stop waiting (looked at after each [`WRITE_SLICE`] blocked):
    /// `Ok(true)` once all is written, `Ok(false)` if it gave up.
    pub(super) fn flush(
        &mut self,
        stream: &UnixStream,
        give_up: &dyn Fn() -> bool,
    ) -> io::Result<bool> {
        // Looked at once blocked for a slice, then every slice: a full socket or terminal
        // that drains in time costs no more than the writes (`give_up` may make a system
        // call).
        let mut look_at = Instant::now() + WRITE_SLICE;
        while self.sent < self.buf.len() {
            match self.write_once(stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now >= look_at {
                        if give_up() {
                            return Ok(false);
                        }
                        look_at = now + WRITE_SLICE;
                    }
                    let fd = match &self.sink {
                        Sink::Frames => stream.as_raw_fd(),
                        Sink::Terminal(t) => t.tty.as_raw_fd(),
                    };
                    let mut entry = [libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    }];
                    match sys::unix::poll(&mut entry, Some(WRITE_SLICE)) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes what is new without blocking; `false` if the writer must take over (the socket
    /// or terminal is full or failed, or an event needs more than a write).
    fn write_now(&mut self, stream: &UnixStream) -> bool {
        if self.live.is_none() {
            // The writer has left: nothing more is sent.
            return true;
        }
        loop {
            let caught_up = self.fill();
            while self.sent < self.buf.len() {
                match self.write_once(stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Full, or failed: the writer's blocking write waits, or finds out.
                    Err(_) => return false,
                }
            }
            if self.held.is_some() {
                return false;
            }
            if caught_up {
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
    /// A client that has just gone live, owned by its writer thread until it has caught up;
    /// `drive` holds what its attach wrote.
    pub(super) fn new(live: Attach<Live>, mut drive: Drive, stream: Arc<UnixStream>) -> Self {
        drive.live = Some(live);
        Self {
            handoff: Handoff::owned(),
            drive: Mutex::new(drive),
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

    /// The subscription and what is left to write, for what does not change hands (whether
    /// the output goes to a terminal).
    pub(super) fn drive_any(&self) -> MutexGuard<'_, Drive> {
        self.drive.lock()
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

    /// The writer thread has left: the subscription ends now, and the client's terminal is
    /// closed, whoever still holds the outlet (the pump, while keystrokes wait).
    pub(super) fn close(&self) {
        self.take();
        let mut drive = self.drive.lock();
        let live = drive.live.take();
        let sink = std::mem::replace(&mut drive.sink, Sink::Frames);
        drive.buf = Vec::new();
        drive.sent = 0;
        drop(drive);
        drop((live, sink));
    }
}
