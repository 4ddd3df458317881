//! The client side of a session: connect, attach or resume, read messages, send input, and
//! rebuild the program's output exactly once.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::wire::{self, ClientMsg, ServerMsg, WireError};
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
#[derive(Debug)]
pub struct SessionClient {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
}

impl SessionClient {
    /// Connects to the session at `path` and attaches with `policy`, resuming at `resume` if
    /// given (the position from [`Transcript::position`] of an earlier connection).
    pub fn connect(
        path: impl AsRef<Path>,
        policy: Policy,
        resume: Option<Position>,
    ) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mut hello = Vec::with_capacity(32);
        wire::encode_client(&ClientMsg::Hello { policy, resume }, &mut hello);
        stream.write_all(&hello).map_err(|source| ClientError::Io {
            op: "sending the hello",
            source,
        })?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(64 << 10),
            start: 0,
        })
    }

    /// Limits how long [`next_message`](Self::next_message) waits (`None`: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(|source| ClientError::Io {
                op: "setting the read timeout",
                source,
            })
    }

    /// The next message from the server, waiting for it.
    pub fn next_message(&mut self) -> Result<ServerMsg, ClientError> {
        loop {
            if let Some((msg, used)) = wire::decode_server(&self.buf[self.start..])? {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(msg);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let len = self.buf.len();
            self.buf.resize(len + (64 << 10), 0);
            let n = self.stream.read(&mut self.buf[len..]);
            self.buf.truncate(len + *n.as_ref().unwrap_or(&0));
            match n {
                Ok(0) => return Err(ClientError::Disconnected),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ClientError::Io {
                        op: "reading a message",
                        source,
                    });
                }
            }
        }
    }

    /// Sends keystrokes to the program.
    pub fn send_input(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut frame = Vec::with_capacity(bytes.len() + 8);
        wire::encode_client(&ClientMsg::Input(Bytes::copy_from_slice(bytes)), &mut frame);
        self.stream
            .write_all(&frame)
            .map_err(|source| ClientError::Io {
                op: "sending input",
                source,
            })
    }

    /// Tells the server this client's terminal now has `size` cells: the program's terminal
    /// is resized (the program gets `SIGWINCH` and usually redraws) and so is the screen a
    /// screen-mode server snapshots for later attaches. Each side must be 1 to
    /// [`MAX_TERMINAL_SIDE`](super::wire::MAX_TERMINAL_SIDE).
    pub fn send_resize(&mut self, size: PtySize) -> Result<(), ClientError> {
        let mut frame = Vec::with_capacity(5);
        wire::encode_client(&ClientMsg::Resize(size), &mut frame);
        self.stream
            .write_all(&frame)
            .map_err(|source| ClientError::Io {
                op: "sending a resize",
                source,
            })
    }

    /// Leaves politely (the server also notices a connection that simply closes).
    pub fn detach(mut self) {
        let mut frame = Vec::new();
        wire::encode_client(&ClientMsg::Detach, &mut frame);
        let _ = self.stream.write_all(&frame);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
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
            ServerMsg::Closed(reason) => Applied::Closed(*reason),
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

    /// Resumes that continued exactly where the previous connection stopped.
    pub fn exact_resumes(&self) -> u64 {
        self.resumed
    }
}
