//! Clients' input, forwarded by the pump's loop.
//!
//! The pump waits on the program's terminal and on every client's socket in one `poll`, as
//! dtach's single loop does: a keystroke is read and written to the program by the same thread
//! that then reads the echo and writes it back, with no hand-off between server threads. A
//! client's input never blocks the loop: sockets are read without waiting, and input the
//! program's terminal cannot take yet waits in the client's `pending` (the socket is then not
//! read until it has gone, so each client holds at most one input frame and one read).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::outlet::Outlet;
use super::wire::{self, ClientMsg, WireError};
use crate::hub::Hub;
use crate::pty::resize_terminal;
use crate::sys;

/// The largest read of a client's input.
pub(super) const INPUT_READ: usize = 16 << 10;

/// How a client's input ended, as the pump tells the client's writer thread.
#[derive(Debug, Default)]
pub(super) struct InputEnd {
    /// The client left, or must be disconnected.
    pub(super) gone: AtomicBool,
    /// Why the client is disconnected, to send it before closing.
    pub(super) refusal: std::sync::Mutex<Option<String>>,
    /// The client's detach key was read from its terminal: it is told so before closing.
    pub(super) detached: AtomicBool,
    /// The client is leaving while keystrokes it sent still wait for the program: its output
    /// ends now (its writer leaves), the pump delivers the keystrokes, then ends its input.
    pub(super) output_done: AtomicBool,
}

/// The most keystrokes read from a client's terminal that may wait for the program's
/// terminal: the server goes on reading the terminal while they wait (so that the detach key
/// is seen behind a paste the program does not read), up to this.
pub(super) const KEYS_WAITING: usize = 256 << 10;

/// The keys of a terminal the server reads itself (terminal mode with
/// [`Keys::Read`](super::wire::Keys::Read)).
#[derive(Debug)]
pub(super) struct TerminalKeys {
    /// The terminal (non-blocking; the same open file the client's output is written to).
    pub(super) tty: Arc<File>,
    pub(super) detach: u8,
    pub(super) read_only: bool,
}

/// What the pump should do with a client's terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeysWait {
    /// Wait for keys on this descriptor.
    Read(std::os::fd::RawFd),
    /// Do not read it now (keystrokes wait, as many as may), or at all.
    No,
}

/// One client's input side.
#[derive(Debug)]
pub(super) struct InputConn {
    pub(super) id: u64,
    pub(super) stream: Arc<UnixStream>,
    pub(super) end: Arc<InputEnd>,
    /// Woken when the input ends, so a writer waiting for its client notices.
    pub(super) outlet: Arc<Outlet>,
    state: Mutex<InputState>,
    /// Not served yet: what came with the hello waits in `buf`.
    fresh: AtomicBool,
    /// The client hung up while its keystrokes waited: they are still delivered.
    hung_up: AtomicBool,
    /// The detach key and read-only setting, if the server reads the keys from the
    /// terminal.
    keys: Option<(u8, bool)>,
}

/// What a client sent that has not reached the program yet.
#[derive(Debug, Default)]
struct InputState {
    /// Received, not yet decoded: less than one frame whenever the socket is read.
    buf: Vec<u8>,
    /// Decoded keystrokes the program's terminal has not taken yet.
    pending: Vec<u8>,
    /// The terminal the keys are read from, until the client leaves (only the pump drops
    /// it).
    tty: Option<Arc<File>>,
    /// The keys come from the terminal, so the socket carries only control frames: it is
    /// read on while keystrokes wait (a detach or a resize must not wait behind a paste).
    keys_from_terminal: bool,
    /// The client is leaving (a detach, its key, a hang-up) while keystrokes wait: nothing
    /// more is read from it, and once they are delivered its input ends so.
    closing: Option<End>,
    /// Its writer has been told to leave.
    let_go: bool,
}

/// What the pump should do with a client after serving it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Served {
    /// Wait for more input (or, with input pending, for the program's terminal).
    Again,
    /// The client is done.
    Done(End),
}

/// How a client's input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    /// It left (it hung up, or sent a detach).
    Left,
    /// Its detach key was read from its terminal.
    Detached,
    /// It is refused: why.
    Refused(String),
}

impl InputConn {
    /// A client whose hello was followed by `rest`, with the terminal the server reads its
    /// keys from, if it does.
    pub(super) fn new(
        id: u64,
        stream: Arc<UnixStream>,
        outlet: Arc<Outlet>,
        rest: Vec<u8>,
        keys: Option<TerminalKeys>,
    ) -> Self {
        Self {
            id,
            stream,
            end: Arc::new(InputEnd::default()),
            outlet,
            state: Mutex::new(InputState {
                buf: rest,
                pending: Vec::new(),
                tty: keys.as_ref().map(|k| Arc::clone(&k.tty)),
                keys_from_terminal: keys.is_some(),
                closing: None,
                let_go: false,
            }),
            fresh: AtomicBool::new(true),
            hung_up: AtomicBool::new(false),
            keys: keys.map(|k| (k.detach, k.read_only)),
        }
    }

    /// Whether the pump waits for keys on the client's terminal: while the server reads it,
    /// and fewer than [`KEYS_WAITING`] keystrokes wait.
    pub(super) fn keys_wait(&self) -> KeysWait {
        let state = self.state.lock();
        match &state.tty {
            Some(tty) if state.pending.len() < KEYS_WAITING => KeysWait::Read(tty.as_raw_fd()),
            _ => KeysWait::No,
        }
    }

    /// Whether the pump reads the client's socket now: unless keystrokes wait (then only a
    /// client whose keys come from its terminal, while fewer than [`KEYS_WAITING`] wait), and
    /// not once it is leaving.
    pub(super) fn reads_socket(&self) -> bool {
        let state = self.state.lock();
        state.closing.is_none()
            && (state.pending.is_empty()
                || (state.keys_from_terminal && state.pending.len() < KEYS_WAITING))
    }

    /// The client hung up while its keystrokes wait: its output ends now; they are still
    /// delivered, then what is left in its socket, instead of polling it.
    pub(super) fn hang_up_waiting(&self) {
        self.hung_up.store(true, Ordering::Relaxed);
        // Its terminal is not read any more: the keys typed there now are the shell's.
        self.state.lock().tty = None;
        self.let_output_go();
    }

    /// The client's writer leaves now (its input goes on).
    fn let_output_go(&self) {
        self.end.output_done.store(true, Ordering::SeqCst);
        self.outlet.wake();
    }

    /// Tells the writer to leave once the client is leaving with keystrokes still waiting,
    /// and stops reading its terminal.
    fn settle(&self, state: &mut InputState) {
        let Some(how) = &state.closing else {
            return;
        };
        if state.let_go {
            return;
        }
        state.let_go = true;
        state.tty = None;
        if *how == End::Detached {
            self.end.detached.store(true, Ordering::SeqCst);
        }
        self.let_output_go();
    }

    /// Reads the client's terminal once (it is ready: keys, or a hang-up) and forwards what
    /// can go now. At the detach key the server stops reading the terminal (what follows the
    /// key in the same read is dropped) and the client is told at once; keystrokes typed
    /// before it that still wait are delivered after (as a client's that hangs up).
    pub(super) fn serve_keys(&self, program: &File, hub: &Hub, scratch: &mut [u8]) -> Served {
        let (Some((detach, read_only)), mut state) = (self.keys, self.state.lock()) else {
            return Served::Again;
        };
        let Some(tty) = state.tty.clone() else {
            return Served::Again;
        };
        let room = KEYS_WAITING
            .saturating_sub(state.pending.len())
            .clamp(1, scratch.len());
        match (&*tty).read(&mut scratch[..room]) {
            // A terminal in raw mode reads 0 only once it is hung up.
            Ok(0) => state.closing = Some(End::Left),
            Ok(n) => {
                let typed = &scratch[..n];
                let (send, detached) = match typed.iter().position(|&b| b == detach) {
                    Some(at) => (&typed[..at], true),
                    None => (typed, false),
                };
                if !read_only {
                    state.pending.extend_from_slice(send);
                }
                if detached {
                    state.closing = Some(End::Detached);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // The terminal is gone (EIO once hung up).
            Err(_) => state.closing = Some(End::Left),
        }
        let served = match state.forward(program, hub) {
            Ok(_) => Served::Again,
            Err(done) => done,
        };
        if served == Served::Again {
            self.settle(&mut state);
        }
        served
    }

    /// Whether the client hung up while its keystrokes waited.
    pub(super) fn hung_up(&self) -> bool {
        self.hung_up.load(Ordering::Relaxed)
    }

    /// Whether the client is new to the pump (true once).
    pub(super) fn take_fresh(&self) -> bool {
        self.fresh.swap(false, Ordering::Relaxed)
    }

    /// Whether keystrokes wait for the program's terminal (the pump then waits for it to be
    /// writable, and does not read this client).
    pub(super) fn has_pending(&self) -> bool {
        !self.state.lock().pending.is_empty()
    }

    /// Forwards what can go now without waiting: pending keystrokes, frames already received,
    /// then (if `readable`) one read and its frames. `scratch` is the pump's read buffer.
    pub(super) fn serve(
        &self,
        program: &File,
        hub: &Hub,
        readable: bool,
        scratch: &mut [u8],
    ) -> Served {
        let mut state = self.state.lock();
        let served = self.serve_socket(&mut state, program, hub, readable, scratch);
        if served == Served::Again {
            self.settle(&mut state);
        }
        served
    }

    fn serve_socket(
        &self,
        state: &mut InputState,
        program: &File,
        hub: &Hub,
        readable: bool,
        scratch: &mut [u8],
    ) -> Served {
        let mut read = !readable;
        loop {
            match state.forward(program, hub) {
                Ok(true) => {}
                Ok(false) if !state.reads_on() => return Served::Again,
                Ok(false) => {}
                Err(done) => return done,
            }
            if read {
                return Served::Again;
            }
            read = true;
            // `buf` holds less than one frame (all whole ones were forwarded, unless
            // keystrokes wait: then the keys come from the terminal and the frames are small)
            // whose length was checked on its header: it stays within one frame and one read.
            let gone = match sys::unix::recv_now(self.stream.as_fd(), scratch) {
                Ok(0) => true,
                Ok(n) => {
                    state.buf.extend_from_slice(&scratch[..n]);
                    false
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    return Served::Again;
                }
                Err(_) => true,
            };
            if gone {
                if state.pending.is_empty() {
                    return Served::Done(End::Left);
                }
                // Read on while keystrokes wait: they are still delivered.
                state.closing = Some(End::Left);
                return Served::Again;
            }
        }
    }

    /// Ends the client's input: says why to its writer thread (which sends a refusal, or the
    /// news of the detach key, before closing) and wakes it.
    pub(super) fn finish(&self, end: End) {
        match end {
            End::Left => {}
            End::Detached => self.end.detached.store(true, Ordering::SeqCst),
            End::Refused(why) => {
                tracing::warn!(
                    client = self.id,
                    reason = why.as_str(),
                    "refused a session client"
                );
                *self.end.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            }
        }
        self.end.gone.store(true, Ordering::SeqCst);
        self.outlet.wake();
    }
}

impl InputState {
    /// Writes pending keystrokes, then forwards whole frames from `buf` while the program's
    /// terminal takes them. `Ok(true)`: everything went; `Ok(false)`: keystrokes wait for the
    /// terminal; `Err`: the client is done.
    fn forward(&mut self, program: &File, hub: &Hub) -> Result<bool, Served> {
        loop {
            let delivered = self.write_pending(program)?;
            if let Some(how) = &self.closing {
                if delivered {
                    return Err(Served::Done(how.clone()));
                }
                return Ok(false);
            }
            if !delivered && !self.reads_on() {
                return Ok(false);
            }
            match wire::decode_client(&self.buf) {
                Ok(Some((ClientMsg::Input(bytes), used))) => {
                    self.buf.drain(..used);
                    self.pending.extend_from_slice(&bytes);
                }
                Ok(Some((ClientMsg::Resize(size), used))) => {
                    self.buf.drain(..used);
                    // The provider first: the program redraws only once it learns the size.
                    hub.resize_provider(size.rows, size.cols);
                    // It fails only once the program has closed its terminal, when the size
                    // no longer matters.
                    let _ = resize_terminal(program.as_fd(), size);
                }
                Ok(Some((ClientMsg::Detach, used))) => {
                    self.buf.drain(..used);
                    // Keystrokes that wait are still delivered; the client goes now.
                    self.closing = Some(End::Left);
                }
                Ok(Some((ClientMsg::Hello { .. }, _))) => {
                    return Err(Served::Done(End::Refused(
                        "a second hello on one connection".into(),
                    )));
                }
                Err(e) => return Err(Served::Done(End::Refused(invalid_frame(&e)))),
                Ok(None) => return Ok(delivered),
            }
        }
    }

    /// Whether the client is read on while its keystrokes wait (see `keys_from_terminal`).
    fn reads_on(&self) -> bool {
        self.closing.is_none() && self.keys_from_terminal && self.pending.len() < KEYS_WAITING
    }

    /// Writes what the program's terminal takes of the pending keystrokes; `Ok(true)` once
    /// none is left, `Err` if the terminal is gone (the program closed it).
    fn write_pending(&mut self, mut program: &File) -> Result<bool, Served> {
        while !self.pending.is_empty() {
            match program.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => return Err(Served::Done(End::Left)),
            }
        }
        Ok(true)
    }
}

pub(super) fn invalid_frame(e: &WireError) -> String {
    format!("invalid frame: {e}")
}
