//! Clients' input, forwarded by the pump's loop.
//!
//! The pump waits on the program's terminal and on every client's socket in one `poll`, as
//! dtach's single loop does: a keystroke is read and written to the program by the same thread
//! that then reads the echo and writes it back, with no hand-off between server threads. A
//! client's input never blocks the loop: sockets are read without waiting, and input the
//! program's terminal cannot take yet waits in the client's `pending` (the socket is then not
//! read until it has gone, so each client holds at most one input frame and one read).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
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
}

/// What a client sent that has not reached the program yet.
#[derive(Debug, Default)]
struct InputState {
    /// Received, not yet decoded: less than one frame whenever the socket is read.
    buf: Vec<u8>,
    /// Decoded keystrokes the program's terminal has not taken yet.
    pending: Vec<u8>,
}

/// What the pump should do with a client after serving it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Served {
    /// Wait for more input (or, with input pending, for the program's terminal).
    Again,
    /// The client is done: it left (`None`) or is refused (why).
    Done(Option<String>),
}

impl InputConn {
    /// A client whose hello was followed by `rest`.
    pub(super) fn new(
        id: u64,
        stream: Arc<UnixStream>,
        outlet: Arc<Outlet>,
        rest: Vec<u8>,
    ) -> Self {
        Self {
            id,
            stream,
            end: Arc::new(InputEnd::default()),
            outlet,
            state: Mutex::new(InputState {
                buf: rest,
                pending: Vec::new(),
            }),
            fresh: AtomicBool::new(true),
            hung_up: AtomicBool::new(false),
        }
    }

    /// Whether the client hung up while its keystrokes waited.
    pub(super) fn hung_up(&self) -> bool {
        self.hung_up.load(Ordering::Relaxed)
    }

    /// The client hung up while its keystrokes waited: the pump delivers them, then reads
    /// what is left in the socket, instead of polling it.
    pub(super) fn set_hung_up(&self) {
        self.hung_up.store(true, Ordering::Relaxed);
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
        let mut read = !readable;
        loop {
            match state.forward(program, hub) {
                Ok(true) => {}
                Ok(false) => return Served::Again,
                Err(done) => return done,
            }
            if read {
                return Served::Again;
            }
            read = true;
            // `buf` holds less than one frame (all whole ones were forwarded) whose length
            // was checked on its header: it stays within one frame and one read.
            match sys::unix::recv_now(self.stream.as_fd(), scratch) {
                Ok(0) => return Served::Done(None),
                Ok(n) => state.buf.extend_from_slice(&scratch[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    return Served::Again;
                }
                Err(_) => return Served::Done(None),
            }
        }
    }

    /// Ends the client's input: says why to its writer thread (which sends a refusal before
    /// closing) and wakes it.
    pub(super) fn finish(&self, refusal: Option<String>) {
        if let Some(why) = &refusal {
            tracing::warn!(
                client = self.id,
                reason = why.as_str(),
                "refused a session client"
            );
        }
        *self.end.refusal.lock().unwrap_or_else(|e| e.into_inner()) = refusal;
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
            if !self.write_pending(program)? {
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
                Ok(Some((ClientMsg::Detach, _))) => return Err(Served::Done(None)),
                Ok(Some((ClientMsg::Hello { .. }, _))) => {
                    return Err(Served::Done(Some(
                        "a second hello on one connection".into(),
                    )));
                }
                Err(e) => return Err(Served::Done(Some(invalid_frame(&e)))),
                Ok(None) => return Ok(true),
            }
        }
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
                Err(_) => return Err(Served::Done(None)),
            }
        }
        Ok(true)
    }
}

pub(super) fn invalid_frame(e: &WireError) -> String {
    format!("invalid frame: {e}")
}
