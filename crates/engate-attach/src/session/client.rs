//! The client side of a session: connect, attach or resume, read messages, send input (from
//! one thread, or from a writing half while a reading half reads on another), learn how the
//! program ended, and rebuild the program's output exactly once.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::wire::{self, ClientMsg, Keys, ProgramExit, ServerMsg, WireError};
use crate::attach::CloseReason;
use crate::config::Policy;
use crate::dedup::{Accepted, Dedup};
use crate::pty::PtySize;
use crate::snapshot::{Position, SnapshotKind};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the session at {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the connection failed (or a read timed out).
    #[error("session connection failed while {op}")]
    Io {
        /// What the client was doing.
        op: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The server sent bytes that are not a valid frame.
    #[error("the session server sent an invalid frame")]
    Protocol(#[from] WireError),
    /// The server closed the connection without a `Closed` message.
    #[error("the session server closed the connection")]
    Disconnected,
}

/// A connection to a session server.
///
/// It reads messages ([`next_message`](Self::next_message)) and sends input, resizes and a
/// detach. An interactive client that reads the program's output while it sends keys splits
/// it with [`into_split`](Self::into_split) into a [`SessionReader`] and a [`SessionWriter`]
/// and uses them from two threads.
#[derive(Debug)]
pub struct SessionClient {
    reader: SessionReader,
    writer: SessionWriter,
}

impl SessionClient {
    /// Connects to the session at `path` and attaches with `policy`, resuming at `resume` if
    /// given (the position from [`Transcript::position`] of an earlier connection).
    pub fn connect(
        path: impl AsRef<Path>,
        policy: Policy,
        resume: Option<Position>,
    ) -> Result<Self, ClientError> {
        Self::open(path.as_ref(), policy, resume, None)
    }

    /// Connects like [`connect`](Self::connect) and hands `terminal` (the client's terminal,
    /// in raw mode) to the server, which writes the program's output to it itself, with no
    /// byte passing through the client (terminal mode, see [`wire`](super::wire)); with
    /// [`Keys::Read`] it reads the keys from it too. The messages that come are
    /// [`ServerMsg::Shown`] once the attach is on the terminal; then, when the stream ends
    /// for this client, [`ServerMsg::Shown`] (where to resume) followed by
    /// [`ServerMsg::Detached`] (the detach key) or [`ServerMsg::Exited`] and
    /// [`ServerMsg::Closed`]. A [`Follower`] records the position from them. A server that
    /// cannot use `terminal` (or predates terminal mode) answers with [`ServerMsg::Refused`]
    /// before anything else: connect again with [`connect`](Self::connect).
    ///
    /// The server opens the terminal anew (its own file description, non-blocking), so the
    /// client's descriptor keeps its modes; the server stops writing (and reading) before it
    /// sends the last [`ServerMsg::Shown`]. While the server reads the keys, the client must
    /// not read the terminal.
    pub fn connect_terminal(
        path: impl AsRef<Path>,
        policy: Policy,
        resume: Option<Position>,
        terminal: BorrowedFd<'_>,
        keys: Keys,
    ) -> Result<Self, ClientError> {
        Self::open(path.as_ref(), policy, resume, Some((terminal, keys)))
    }

    fn open(
        path: &Path,
        policy: Policy,
        resume: Option<Position>,
        terminal: Option<(BorrowedFd<'_>, Keys)>,
    ) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mut hello = Vec::with_capacity(32);
        let msg = ClientMsg::Hello {
            policy,
            resume,
            terminal: terminal.map(|(_, keys)| keys),
        };
        wire::encode_client(&msg, &mut hello);
        let sent = match terminal {
            // One message: the descriptor travels with the hello's bytes (a hello is far
            // smaller than any socket buffer, so it goes whole).
            Some((fd, _)) => platform_primitives::fdpass::send_with_fds(&stream, &hello, &[fd])
                .and_then(|n| match n == hello.len() {
                    true => Ok(()),
                    false => Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the hello was cut short",
                    )),
                }),
            None => (&stream).write_all(&hello),
        };
        sent.map_err(|source| ClientError::Io {
            op: "sending the hello",
            source,
        })?;
        let stream = Arc::new(stream);
        Ok(Self {
            reader: SessionReader {
                stream: Arc::clone(&stream),
                buf: vec![0; READ_SIZE],
                start: 0,
                end: 0,
                exit: None,
                read_timeout: AtomicU64::new(u64::MAX),
            },
            writer: SessionWriter { stream },
        })
    }

    /// Splits the connection into its reading half and its writing half, each usable from
    /// its own thread. The connection closes once both are dropped.
    pub fn into_split(self) -> (SessionReader, SessionWriter) {
        (self.reader, self.writer)
    }

    /// Limits how long [`next_message`](Self::next_message) waits (`None`: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.reader.set_read_timeout(timeout)
    }

    /// The next message from the server, waiting for it.
    pub fn next_message(&mut self) -> Result<ServerMsg, ClientError> {
        self.reader.next_message()
    }

    /// How the program ended, once a [`ServerMsg::Exited`] has been read (it comes right
    /// before [`ServerMsg::Closed`]; `None` before, and from a server that predates it).
    pub fn exit_status(&self) -> Option<ProgramExit> {
        self.reader.exit_status()
    }

    /// Sends keystrokes to the program (as several frames if longer than
    /// [`MAX_INPUT`](super::wire::MAX_INPUT)).
    pub fn send_input(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer.send_input(bytes)
    }

    /// Tells the server this client's terminal now has `size` cells: the program's terminal
    /// is resized (the program gets `SIGWINCH` and usually redraws) and so is the screen a
    /// screen-mode server snapshots for later attaches. Each side must be 1 to
    /// [`MAX_TERMINAL_SIDE`](super::wire::MAX_TERMINAL_SIDE).
    pub fn send_resize(&mut self, size: PtySize) -> Result<(), ClientError> {
        self.writer.send_resize(size)
    }

    /// Leaves politely (the server also notices a connection that simply closes).
    pub fn detach(self) {
        self.writer.send_detach();
        let _ = self.reader.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// How much a [`SessionReader`] reads at most in one go, unless a frame needs more.
const READ_SIZE: usize = 64 << 10;

/// The reading half of a [`SessionClient`] (from [`SessionClient::into_split`]).
#[derive(Debug)]
pub struct SessionReader {
    stream: Arc<UnixStream>,
    /// What has been read and not yet decoded is `buf[start..end]`; the rest is room for the
    /// next read (zeroed once, not before every read).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    exit: Option<ProgramExit>,
    /// As set by [`set_read_timeout`](Self::set_read_timeout), in nanoseconds; `u64::MAX`:
    /// none.
    read_timeout: AtomicU64,
}

/// The connection's descriptor, so that a client can wait for output together with other
/// descriptors (its terminal, say) and then call [`SessionReader::next_message`].
impl AsFd for SessionReader {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl SessionReader {
    /// Limits how long [`next_message`](Self::next_message) waits (`None`: forever); a zero
    /// duration is refused, as for a socket.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        // The reader never blocks in a read (it waits in poll), so the limit is its own.
        if timeout == Some(Duration::ZERO) {
            return Err(ClientError::Io {
                op: "setting the read timeout",
                source: io::Error::new(io::ErrorKind::InvalidInput, "a zero read timeout"),
            });
        }
        let nanos = timeout.map_or(u64::MAX, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX - 1)
        });
        self.read_timeout.store(nanos, Ordering::Relaxed);
        Ok(())
    }

    /// The next message from the server, waiting for it.
    pub fn next_message(&mut self) -> Result<ServerMsg, ClientError> {
        loop {
            if let Some(msg) = self.next_buffered()? {
                return Ok(msg);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                // A frame larger than the room: more room, up to the largest frame.
                self.buf.resize(self.buf.len() + READ_SIZE, 0);
            }
            // What has arrived is taken without waiting; only if nothing has, the reader waits,
            // in poll rather than in a blocking read: a read blocked on the socket is also
            // woken each time the server takes this client's input (the socket's space frees
            // up), a context switch for nothing on every keystroke; poll wakes for input only.
            match crate::sys::unix::recv_now(self.stream.as_fd(), &mut self.buf[self.end..]) {
                Ok(0) => return Err(ClientError::Disconnected),
                Ok(n) => {
                    self.end += n;
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(source) => {
                    return Err(ClientError::Io {
                        op: "reading a message",
                        source,
                    });
                }
            }
            let timeout = match self.read_timeout.load(Ordering::Relaxed) {
                u64::MAX => None,
                nanos => Some(Duration::from_nanos(nanos)),
            };
            let ready = crate::sys::unix::wait_readable([self.stream.as_fd()], timeout);
            if let Ok([false]) = ready {
                return Err(ClientError::Io {
                    op: "reading a message",
                    source: io::ErrorKind::WouldBlock.into(),
                });
            }
        }
    }

    /// The next message if it has already arrived whole, without waiting: a client that
    /// writes output to a terminal takes what is there and writes it in one go.
    pub fn next_buffered(&mut self) -> Result<Option<ServerMsg>, ClientError> {
        let Some((msg, used)) = wire::decode_server(&self.buf[self.start..self.end])? else {
            return Ok(None);
        };
        self.start += used;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_SIZE {
                // The room a large frame needed is given back.
                self.buf.truncate(READ_SIZE);
                self.buf.shrink_to_fit();
            }
        }
        if let ServerMsg::Exited(exit) = msg {
            self.exit = Some(exit);
        }
        Ok(Some(msg))
    }

    /// How the program ended, once a [`ServerMsg::Exited`] has been read.
    pub fn exit_status(&self) -> Option<ProgramExit> {
        self.exit
    }
}

/// The writing half of a [`SessionClient`] (from [`SessionClient::into_split`]).
#[derive(Debug)]
pub struct SessionWriter {
    stream: Arc<UnixStream>,
}

impl SessionWriter {
    /// Limits how long a send waits for the server to take it (`None`: forever); a send that
    /// times out fails with a `WouldBlock` or `TimedOut` I/O error.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream
            .set_write_timeout(timeout)
            .map_err(|source| ClientError::Io {
                op: "setting the write timeout",
                source,
            })
    }

    /// Sends keystrokes to the program (as several frames if longer than
    /// [`MAX_INPUT`](super::wire::MAX_INPUT)).
    pub fn send_input(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut frame = Vec::with_capacity(bytes.len().min(wire::MAX_INPUT) + 8);
        for piece in bytes.chunks(wire::MAX_INPUT) {
            frame.clear();
            wire::encode_client(&ClientMsg::Input(Bytes::copy_from_slice(piece)), &mut frame);
            self.send(&frame, "sending input")?;
        }
        Ok(())
    }

    /// Sends this client's terminal size (see [`SessionClient::send_resize`]).
    pub fn send_resize(&mut self, size: PtySize) -> Result<(), ClientError> {
        let mut frame = Vec::with_capacity(5);
        wire::encode_client(&ClientMsg::Resize(size), &mut frame);
        self.send(&frame, "sending a resize")
    }

    /// Leaves politely: the server ends the stream, and the reading half then sees the
    /// connection close.
    pub fn detach(self) {
        self.send_detach();
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    fn send_detach(&self) {
        let mut frame = Vec::new();
        wire::encode_client(&ClientMsg::Detach, &mut frame);
        let _ = (&*self.stream).write_all(&frame);
    }

    fn send(&self, frame: &[u8], op: &'static str) -> Result<(), ClientError> {
        (&*self.stream)
            .write_all(frame)
            .map_err(|source| ClientError::Io { op, source })
    }
}

/// What [`Transcript::apply`] made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The transcript took it; more will follow.
    Continue,
    /// The stream ended.
    Closed(CloseReason),
    /// The server refused the attach.
    Refused,
    /// The client's detach key, read by the server (terminal mode with
    /// [`Keys::Read`]), ended the attach.
    Detached,
}

/// A client's copy of the program's raw output, rebuilt from session messages exactly once.
///
/// It holds the stream bytes `base..base + len` of one epoch. Suffix snapshots extend it (their
/// overlap with what it holds is trimmed and counted as `snapshot_overlap_bytes`), items are
/// de-duplicated by offset ([`Dedup`]): an item byte it already held is counted in
/// [`duplicates_delivered`](Self::duplicates_delivered), which the fenced server keeps at 0.
/// A state snapshot (screen mode) resets it, since the bytes are not stream bytes.
#[derive(Debug, Default)]
pub struct Transcript {
    bytes: Vec<u8>,
    base: u64,
    dedup: Dedup,
    snapshot_overlap_bytes: u64,
    gaps: Vec<(u64, u64)>,
    snapshots: u64,
    resumed: u64,
    exit: Option<ProgramExit>,
}

impl Transcript {
    /// An empty transcript.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty transcript that already stands at `position` (a client that kept its
    /// position from an earlier run and resumes from it).
    pub fn resume_at(position: Position) -> Self {
        let mut t = Self {
            base: position.next,
            ..Self::default()
        };
        t.dedup.resume_at(position);
        t
    }

    /// Applies one server message.
    pub fn apply(&mut self, msg: &ServerMsg) -> Applied {
        match msg {
            ServerMsg::Snapshot(s) => {
                self.snapshots += 1;
                let same_epoch = self.dedup.position().is_some_and(|p| p.epoch == s.epoch());
                match (s.kind(), s.suffix_from()) {
                    (SnapshotKind::Resume, _) if same_epoch => {
                        self.resumed += 1;
                        self.dedup.snapshot(s);
                    }
                    (SnapshotKind::Suffix | SnapshotKind::Resume, Some(from)) => {
                        let end = self.base + self.bytes.len() as u64;
                        if same_epoch && from <= end {
                            let skip = (end - from) as usize;
                            let new = s.bytes().get(skip..).unwrap_or_default();
                            self.snapshot_overlap_bytes +=
                                (skip as u64).min(s.bytes().len() as u64);
                            self.bytes.extend_from_slice(new);
                        } else {
                            if same_epoch {
                                self.gaps.push((end, from));
                            }
                            self.base = from;
                            self.bytes = s.bytes().to_vec();
                        }
                        let at = self.base + self.bytes.len() as u64;
                        self.dedup.resume_at(Position {
                            epoch: s.epoch(),
                            next: at,
                        });
                    }
                    _ => {
                        self.base = s.at();
                        self.bytes.clear();
                        self.dedup.snapshot(s);
                    }
                }
                Applied::Continue
            }
            ServerMsg::Item(item) => {
                match self.dedup.accept(item.epoch, item.offset, &item.bytes) {
                    Accepted::New(b) => self.bytes.extend_from_slice(b),
                    Accepted::Duplicate | Accepted::WrongEpoch { .. } | Accepted::Unanchored => {}
                    Accepted::Gap { from, to, bytes } => {
                        self.gaps.push((from, to));
                        self.base = to;
                        self.bytes = bytes.to_vec();
                    }
                }
                Applied::Continue
            }
            ServerMsg::Gap { from, to, .. } => {
                self.gaps.push((*from, *to));
                Applied::Continue
            }
            ServerMsg::Exited(exit) => {
                self.exit = Some(*exit);
                Applied::Continue
            }
            ServerMsg::Shown(p) => {
                // Terminal mode: what comes before `p` went to the client's terminal.
                self.base = p.next;
                self.bytes.clear();
                self.dedup.resume_at(*p);
                Applied::Continue
            }
            ServerMsg::Closed(reason) => Applied::Closed(*reason),
            ServerMsg::Detached => Applied::Detached,
            ServerMsg::Refused(_) => Applied::Refused,
        }
    }

    /// The rebuilt bytes (stream offsets `base()..base() + len`).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The stream offset of the first byte held.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Where to resume from after a detach.
    pub fn position(&self) -> Option<Position> {
        self.dedup.position()
    }

    /// Item bytes that arrived although they were already held (0 with a fenced server).
    pub fn duplicates_delivered(&self) -> u64 {
        self.dedup.duplicate_bytes()
    }

    /// Bytes a resync snapshot repeated from what was held (trimmed, not applied twice).
    pub fn snapshot_overlap_bytes(&self) -> u64 {
        self.snapshot_overlap_bytes
    }

    /// Ranges reported or found missing.
    pub fn gaps(&self) -> &[(u64, u64)] {
        &self.gaps
    }

    /// Snapshots applied (the first one, resyncs and resumes).
    pub fn snapshots(&self) -> u64 {
        self.snapshots
    }

    /// How the program ended, once the server said so.
    pub fn exit_status(&self) -> Option<ProgramExit> {
        self.exit
    }

    /// Resumes that continued exactly where the previous connection stopped.
    pub fn exact_resumes(&self) -> u64 {
        self.resumed
    }
}

/// Follows a session's output for a non-interactive consumer (a tail): each message's new
/// bytes are written out once, in order, and forgotten, so memory stays at one message
/// whatever the history.
///
/// When the client fell behind and the server resynced it (a snapshot that does not continue
/// what was written), the follower writes the snapshot's bytes and records the skipped
/// stream range in [`skipped`](Self::skipped). A screen snapshot (a redraw) is written as is.
#[derive(Debug, Default)]
pub struct Follower {
    transcript: Transcript,
    /// The stream offset just past the last byte written.
    written: u64,
    /// The epoch written in, once known.
    epoch: Option<u64>,
    skipped: Vec<(u64, u64)>,
    resyncs: u64,
}

impl Follower {
    /// A follower that has written nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A follower that already wrote the stream up to `position` (an earlier run's).
    pub fn resume_at(position: Position) -> Self {
        Self {
            transcript: Transcript::resume_at(position),
            written: position.next,
            epoch: Some(position.epoch),
            ..Self::default()
        }
    }

    /// Applies one server message and writes what it adds to `out`.
    pub fn apply(&mut self, msg: &ServerMsg, out: &mut impl Write) -> io::Result<Applied> {
        let applied = self.transcript.apply(msg);
        if let ServerMsg::Shown(p) = msg {
            // Terminal mode: the server wrote the stream up to `p` to the terminal itself.
            self.written = p.next;
            self.epoch = Some(p.epoch);
            return Ok(applied);
        }
        if let ServerMsg::Snapshot(s) = msg
            && s.kind() == SnapshotKind::State
        {
            out.write_all(s.bytes())?;
        }
        let t = &mut self.transcript;
        let end = t.base + t.bytes.len() as u64;
        let epoch = t.position().map(|p| p.epoch);
        // The transcript holds only what this message added (what was written is forgotten),
        // so it continues exactly at `written` unless the message jumped: a resync past what
        // was written, or another epoch.
        if epoch != self.epoch {
            // The first snapshot, or another epoch: offsets start over.
            if self.epoch.is_some() {
                self.resyncs += 1;
            }
            self.skipped.clear();
            if t.base > 0 {
                self.skipped.push((0, t.base));
            }
        } else if t.base != self.written {
            self.resyncs += 1;
            if t.base > self.written {
                self.skipped.push((self.written, t.base));
            }
        }
        out.write_all(&t.bytes)?;
        self.written = end;
        self.epoch = epoch;
        // Written: forget it (the transcript only needs where it ends).
        t.base = end;
        t.bytes.clear();
        Ok(applied)
    }

    /// Where to resume from after the connection ends.
    pub fn position(&self) -> Option<Position> {
        self.transcript.position()
    }

    /// Stream ranges of the current epoch that were never written: the history before the
    /// first snapshot, what resyncs after falling behind and gaps jumped over.
    pub fn skipped(&self) -> &[(u64, u64)] {
        &self.skipped
    }

    /// Snapshots that did not continue what was written (resyncs, a new epoch).
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// How the program ended, once the server said so.
    pub fn exit_status(&self) -> Option<ProgramExit> {
        self.transcript.exit_status()
    }
}
