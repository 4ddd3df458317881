//! The session protocol: little-endian frames over a Unix stream socket.
//!
//! A client opens with [`ClientMsg::Hello`] (its policy and, to resume, its last position),
//! then may send [`ClientMsg::Input`] (keystrokes for the program), [`ClientMsg::Resize`]
//! (its terminal changed size) and [`ClientMsg::Detach`]. The server answers with one
//! [`ServerMsg::Snapshot`] and then live [`ServerMsg::Item`]s, [`ServerMsg::Gap`]s, further
//! snapshots (resyncs), [`ServerMsg::Exited`] once the program has ended and finally
//! [`ServerMsg::Closed`]; or with [`ServerMsg::Refused`] if it will not serve the client: the
//! attach was refused, or the client sent a bad hello or a bad frame (the text says which; the
//! server then closes the connection).
//!
//! **Terminal mode.** A client on a terminal may hand the terminal itself to the server: its
//! hello has the tag `'T'` and carries the terminal's descriptor (`SCM_RIGHTS`). The server
//! opens the terminal anew and writes the program's output (the snapshot's redraw, the live
//! bytes, resyncs) to it itself, as tmux's server does, so no byte passes through the client.
//! With [`Keys::Read`] it also reads the keys from the terminal and forwards them to the
//! program up to the detach key, so keystrokes do not pass through the client either. The
//! socket then carries only [`ServerMsg::Shown`] (once the attach is written, and again when
//! the stream ends for the client, detach included: where to resume), [`ServerMsg::Detached`]
//! (the detach key was read), [`ServerMsg::Exited`], [`ServerMsg::Closed`] and refusals; the
//! client still sends [`ClientMsg::Resize`] and may send [`ClientMsg::Detach`]; a client that
//! shuts its socket down (or closes it) has left, and the server stops writing to its
//! terminal at once, keystrokes typed before still reaching the program. A server that
//! cannot use the descriptor (not a terminal, a name like `/dev/tty` that stands for another
//! terminal, the server's own controlling terminal, cannot be opened) refuses the hello, as a
//! server that predates terminal mode does; the client then connects again with a plain hello.
//!
//! | frame | layout |
//! |---|---|
//! | Hello | `'H'` policy:u8 has_resume:u8 epoch:u64 next:u64 |
//! | Terminal hello | `'T'` policy:u8 has_resume:u8 epoch:u64 next:u64 keys:u8 (0 sent by the client, 1 read by the server, 2 read, only for the detach key) detach:u8; the terminal's descriptor travels with it |
//! | Input | `'i'` len:u32 bytes (len at most [`MAX_INPUT`]) |
//! | Resize | `'W'` rows:u16 cols:u16 (each 1..=[`MAX_TERMINAL_SIDE`]) |
//! | Detach | `'D'` |
//! | Snapshot | `'S'` kind:u8 epoch:u64 at:u64 len:u32 bytes |
//! | Item | `'I'` epoch:u64 offset:u64 len:u32 bytes |
//! | Gap | `'G'` epoch:u64 from:u64 to:u64 |
//! | Exited | `'X'` how:u8 (0 exit code, 1 signal) value:i32 |
//! | Shown | `'P'` epoch:u64 next:u64 |
//! | Detached | `'D'` |
//! | Closed | `'C'` reason:u8 at:u64 tail:u64 |
//! | Refused | `'E'` len:u16 utf-8 |
//!
//! `Exited` is the newest frame: it comes once, right before `Closed` with reason "finished",
//! to every client that is still attached when the program ends or attaches after it ended.
//! The other frames are unchanged, so a newer client reads an older server (it just never
//! learns the exit status); a client that predates `Exited` meets an unknown tag at the end of
//! the stream, after all of the program's output.
//!
//! Decoding never panics, whatever the bytes: every length is bounded ([`MAX_INPUT`] for a
//! client's input, [`MAX_PAYLOAD`] for the server's frames) and checked as soon as its header
//! is in, before any payload is awaited, and every offset relation (`from <= to`, a suffix no
//! longer than its end offset) is checked.

use bytes::Bytes;

use crate::attach::{CloseReason, Item};
use crate::config::Policy;
use crate::pty::PtySize;
use crate::snapshot::{Position, Snapshot, SnapshotKind};

/// The largest payload a server frame may carry (64 MiB).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// The largest payload of a client's [`ClientMsg::Input`] frame (64 KiB): keystrokes and
/// pastes, so a server buffers at most one small frame per connection. Larger input is sent
/// as several frames ([`SessionClient::send_input`](super::SessionClient::send_input) does).
pub const MAX_INPUT: usize = 64 << 10;

/// The most rows, and the most columns, a [`ClientMsg::Resize`] may ask for. A screen
/// provider keeps a cell per position, so the size a client may ask for is bounded (a
/// million cells at most); real terminals stay far below.
pub const MAX_TERMINAL_SIDE: u16 = 1000;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// The first message: how to attach.
    Hello {
        /// The client's policy for falling behind.
        policy: Policy,
        /// The position to resume from, if any.
        resume: Option<Position>,
        /// The client hands its terminal to the server (terminal mode; the descriptor travels
        /// with this frame), and who reads the keys.
        terminal: Option<Keys>,
    },
    /// Bytes to write to the program's terminal.
    Input(Bytes),
    /// The client's terminal now has this size: the program's terminal follows (it gets
    /// `SIGWINCH`), and so does a screen snapshot provider.
    Resize(PtySize),
    /// The client is leaving.
    Detach,
}

/// Who reads the keys of a terminal handed to the server (terminal mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// The client reads them and sends them ([`ClientMsg::Input`]).
    Sent,
    /// The server reads them from the terminal and forwards them to the program (none if
    /// `read_only`) up to the `detach` byte, which ends the attach: the server stops reading
    /// there and sends [`ServerMsg::Shown`], then [`ServerMsg::Detached`].
    Read {
        /// The byte that detaches.
        detach: u8,
        /// Keys other than the detach key are dropped.
        read_only: bool,
    },
}

/// How the session's program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProgramExit {
    /// It exited with this status code.
    Code(i32),
    /// This signal ended it.
    Signal(i32),
}

impl ProgramExit {
    /// Whether it exited with status 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }

    /// The status a shell reports for it: the exit code, or 128 plus the signal's number.
    pub fn shell_status(self) -> i32 {
        match self {
            Self::Code(code) => code,
            Self::Signal(signal) => 128 + signal,
        }
    }
}

impl From<std::process::ExitStatus> for ProgramExit {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            // Only a stopped or continued status has neither, and `wait` returns neither.
            (None, None) => Self::Code(status.into_raw()),
        }
    }
}

impl std::fmt::Display for ProgramExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit status {code}"),
            Self::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// A snapshot to apply (the first message, and every resync).
    Snapshot(Snapshot),
    /// Live bytes.
    Item(Item),
    /// Bytes `from..to` of `epoch` were lost (policy Gap).
    Gap {
        /// The epoch.
        epoch: u64,
        /// First lost offset.
        from: u64,
        /// First offset that follows.
        to: u64,
    },
    /// The program ended so (sent once, before [`ServerMsg::Closed`]).
    Exited(ProgramExit),
    /// Terminal mode only: the client's terminal shows the stream up to this position (sent
    /// once the attach is written, and when the stream ends for the client).
    Shown(Position),
    /// Terminal mode with [`Keys::Read`]: the detach key was read; the server has stopped
    /// reading and writing the terminal and closes the connection.
    Detached,
    /// The stream ended for this client.
    Closed(CloseReason),
    /// The server will not serve this client (the attach was refused, or the client sent a bad
    /// hello or frame); the text says why, and the server closes the connection.
    Refused(String),
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The first byte names no frame type.
    #[error("unknown frame tag {tag:#04x}")]
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },
    /// A length field exceeds its limit ([`MAX_INPUT`] or [`MAX_PAYLOAD`]).
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field holds a value outside its range.
    #[error("frame field `{field}` holds invalid value {value}")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// A refusal text is not UTF-8.
    #[error("refusal text is not UTF-8")]
    BadText,
}

/// Reads fixed-size fields from the front of a buffer; `None` means "need more bytes".
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|s| u16::from_le_bytes(s.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }

    /// A `u32` length, checked against `max` before any payload is awaited.
    fn len(&mut self, max: usize) -> Result<Option<usize>, WireError> {
        let Some(len) = self.u32() else {
            return Ok(None);
        };
        let len = len as usize;
        if len > max {
            return Err(WireError::TooLarge { len, max });
        }
        Ok(Some(len))
    }
}

/// Unwraps a field or returns `Ok(None)` ("need more bytes") from the decoder.
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

fn policy_code(p: Policy) -> u8 {
    match p {
        Policy::Resync => 0,
        Policy::Gap => 1,
        Policy::Disconnect => 2,
        Policy::Block => 3,
    }
}

fn policy_from(code: u8) -> Result<Policy, WireError> {
    Ok(match code {
        0 => Policy::Resync,
        1 => Policy::Gap,
        2 => Policy::Disconnect,
        3 => Policy::Block,
        v => {
            return Err(WireError::BadField {
                field: "policy",
                value: v.into(),
            });
        }
    })
}

fn kind_code(k: SnapshotKind) -> u8 {
    match k {
        SnapshotKind::Suffix => 0,
        SnapshotKind::State => 1,
        SnapshotKind::Resume => 2,
    }
}

/// Appends the encoding of `msg` to `out`.
pub fn encode_client(msg: &ClientMsg, out: &mut Vec<u8>) {
    match msg {
        ClientMsg::Hello {
            policy,
            resume,
            terminal,
        } => {
            out.push(if terminal.is_some() { b'T' } else { b'H' });
            out.push(policy_code(*policy));
            out.push(u8::from(resume.is_some()));
            let p = resume.unwrap_or(Position { epoch: 0, next: 0 });
            out.extend_from_slice(&p.epoch.to_le_bytes());
            out.extend_from_slice(&p.next.to_le_bytes());
            match terminal {
                None => {}
                Some(Keys::Sent) => out.extend_from_slice(&[0, 0]),
                Some(Keys::Read { detach, read_only }) => {
                    out.extend_from_slice(&[1 + u8::from(*read_only), *detach]);
                }
            }
        }
        ClientMsg::Input(bytes) => {
            // A longer input is not a valid frame: the server refuses it.
            out.push(b'i');
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        ClientMsg::Resize(size) => {
            out.push(b'W');
            out.extend_from_slice(&size.rows.to_le_bytes());
            out.extend_from_slice(&size.cols.to_le_bytes());
        }
        ClientMsg::Detach => out.push(b'D'),
    }
}

/// Decodes one client message from the front of `buf`: the message and the bytes it used,
/// `Ok(None)` if `buf` holds only part of one.
pub fn decode_client(buf: &[u8]) -> Result<Option<(ClientMsg, usize)>, WireError> {
    let mut c = Cursor::new(buf);
    let msg = match need!(c.u8()) {
        tag @ (b'H' | b'T') => {
            let policy = policy_from(need!(c.u8()))?;
            let has_resume = need!(c.u8());
            let epoch = need!(c.u64());
            let next = need!(c.u64());
            let resume = match has_resume {
                0 => None,
                1 => Some(Position { epoch, next }),
                v => {
                    return Err(WireError::BadField {
                        field: "has_resume",
                        value: v.into(),
                    });
                }
            };
            let terminal = match tag {
                b'T' => Some(match (need!(c.u8()), need!(c.u8())) {
                    (0, _) => Keys::Sent,
                    (keys @ (1 | 2), detach) => Keys::Read {
                        detach,
                        read_only: keys == 2,
                    },
                    (v, _) => {
                        return Err(WireError::BadField {
                            field: "keys",
                            value: v.into(),
                        });
                    }
                }),
                _ => None,
            };
            ClientMsg::Hello {
                policy,
                resume,
                terminal,
            }
        }
        b'i' => {
            let len = need!(c.len(MAX_INPUT)?);
            ClientMsg::Input(Bytes::copy_from_slice(need!(c.take(len))))
        }
        b'W' => {
            let rows = need!(c.u16());
            let cols = need!(c.u16());
            for (field, side) in [("rows", rows), ("cols", cols)] {
                if !(1..=MAX_TERMINAL_SIDE).contains(&side) {
                    return Err(WireError::BadField {
                        field,
                        value: side.into(),
                    });
                }
            }
            ClientMsg::Resize(PtySize { rows, cols })
        }
        b'D' => ClientMsg::Detach,
        tag => return Err(WireError::UnknownTag { tag }),
    };
    Ok(Some((msg, c.at)))
}

/// Appends the header of an item frame (the payload, `item.bytes`, follows it on the wire), so
/// a writer can send the shared chunk without copying it into a frame buffer.
pub fn encode_item_header(item: &Item, out: &mut Vec<u8>) {
    out.push(b'I');
    out.extend_from_slice(&item.epoch.to_le_bytes());
    out.extend_from_slice(&item.offset.to_le_bytes());
    out.extend_from_slice(&(item.bytes.len() as u32).to_le_bytes());
}

/// Appends the encoding of `msg` to `out`.
pub fn encode_server(msg: &ServerMsg, out: &mut Vec<u8>) {
    match msg {
        ServerMsg::Snapshot(s) => {
            out.push(b'S');
            out.push(kind_code(s.kind()));
            out.extend_from_slice(&s.epoch().to_le_bytes());
            out.extend_from_slice(&s.at().to_le_bytes());
            out.extend_from_slice(&(s.bytes().len() as u32).to_le_bytes());
            out.extend_from_slice(s.bytes());
        }
        ServerMsg::Item(item) => {
            encode_item_header(item, out);
            out.extend_from_slice(&item.bytes);
        }
        ServerMsg::Gap { epoch, from, to } => {
            out.push(b'G');
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&from.to_le_bytes());
            out.extend_from_slice(&to.to_le_bytes());
        }
        ServerMsg::Exited(exit) => {
            out.push(b'X');
            let (how, value) = match exit {
                ProgramExit::Code(code) => (0u8, *code),
                ProgramExit::Signal(signal) => (1, *signal),
            };
            out.push(how);
            out.extend_from_slice(&value.to_le_bytes());
        }
        ServerMsg::Shown(p) => {
            out.push(b'P');
            out.extend_from_slice(&p.epoch.to_le_bytes());
            out.extend_from_slice(&p.next.to_le_bytes());
        }
        ServerMsg::Detached => out.push(b'D'),
        ServerMsg::Closed(reason) => {
            out.push(b'C');
            let (code, at, tail) = match reason {
                CloseReason::Finished => (0u8, 0, 0),
                CloseReason::Overrun { at, tail } => (1, *at, *tail),
            };
            out.push(code);
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&tail.to_le_bytes());
        }
        ServerMsg::Refused(text) => {
            // Longer refusals are cut at a character boundary to fit the u16 length.
            let mut end = text.len().min(u16::MAX as usize);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            out.push(b'E');
            out.extend_from_slice(&(end as u16).to_le_bytes());
            out.extend_from_slice(&text.as_bytes()[..end]);
        }
    }
}

/// Decodes one server message from the front of `buf`: the message and the bytes it used,
/// `Ok(None)` if `buf` holds only part of one.
pub fn decode_server(buf: &[u8]) -> Result<Option<(ServerMsg, usize)>, WireError> {
    let mut c = Cursor::new(buf);
    let msg = match need!(c.u8()) {
        b'S' => {
            let kind = match need!(c.u8()) {
                0 => SnapshotKind::Suffix,
                1 => SnapshotKind::State,
                2 => SnapshotKind::Resume,
                v => {
                    return Err(WireError::BadField {
                        field: "kind",
                        value: v.into(),
                    });
                }
            };
            let epoch = need!(c.u64());
            let at = need!(c.u64());
            let len = need!(c.len(MAX_PAYLOAD)?);
            let suffix_too_long = kind != SnapshotKind::State && len as u64 > at;
            if suffix_too_long || (kind == SnapshotKind::Resume && len != 0) {
                return Err(WireError::BadField {
                    field: "snapshot len",
                    value: len as u64,
                });
            }
            let bytes = Bytes::copy_from_slice(need!(c.take(len)));
            ServerMsg::Snapshot(Snapshot::new(epoch, at, kind, bytes))
        }
        b'I' => {
            let epoch = need!(c.u64());
            let offset = need!(c.u64());
            let len = need!(c.len(MAX_PAYLOAD)?);
            if offset.checked_add(len as u64).is_none() {
                return Err(WireError::BadField {
                    field: "offset",
                    value: offset,
                });
            }
            let bytes = Bytes::copy_from_slice(need!(c.take(len)));
            ServerMsg::Item(Item {
                epoch,
                offset,
                bytes,
            })
        }
        b'G' => {
            let epoch = need!(c.u64());
            let from = need!(c.u64());
            let to = need!(c.u64());
            if from > to {
                return Err(WireError::BadField {
                    field: "gap from",
                    value: from,
                });
            }
            ServerMsg::Gap { epoch, from, to }
        }
        b'X' => {
            let how = need!(c.u8());
            let value = need!(c.u32()) as i32;
            ServerMsg::Exited(match how {
                0 => ProgramExit::Code(value),
                1 => ProgramExit::Signal(value),
                v => {
                    return Err(WireError::BadField {
                        field: "exit kind",
                        value: v.into(),
                    });
                }
            })
        }
        b'P' => {
            let epoch = need!(c.u64());
            let next = need!(c.u64());
            ServerMsg::Shown(Position { epoch, next })
        }
        b'D' => ServerMsg::Detached,
        b'C' => {
            let code = need!(c.u8());
            let at = need!(c.u64());
            let tail = need!(c.u64());
            let reason = match code {
                0 => CloseReason::Finished,
                1 => CloseReason::Overrun { at, tail },
                v => {
                    return Err(WireError::BadField {
                        field: "close reason",
                        value: v.into(),
                    });
                }
            };
            ServerMsg::Closed(reason)
        }
        b'E' => {
            let len = need!(c.u16()) as usize;
            let text = need!(c.take(len));
            let text = std::str::from_utf8(text).map_err(|_| WireError::BadText)?;
            ServerMsg::Refused(text.to_owned())
        }
        tag => return Err(WireError::UnknownTag { tag }),
    };
    Ok(Some((msg, c.at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_roundtrip(msg: ServerMsg) {
        let mut buf = Vec::new();
        encode_server(&msg, &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(
                decode_server(&buf[..cut]),
                Ok(None),
                "prefix of {cut} bytes"
            );
        }
        buf.extend_from_slice(b"trailing");
        let (back, used) = decode_server(&buf).expect("valid").expect("complete");
        assert_eq!(back, msg);
        assert_eq!(&buf[used..], b"trailing");
    }

    #[test]
    fn server_messages_roundtrip_and_need_every_byte() {
        server_roundtrip(ServerMsg::Snapshot(Snapshot::new(
            9,
            5,
            SnapshotKind::Suffix,
            Bytes::from_static(b"hello"),
        )));
        server_roundtrip(ServerMsg::Item(Item {
            epoch: 9,
            offset: 5,
            bytes: Bytes::from_static(b"x"),
        }));
        server_roundtrip(ServerMsg::Gap {
            epoch: 1,
            from: 2,
            to: 3,
        });
        server_roundtrip(ServerMsg::Closed(CloseReason::Overrun { at: 4, tail: 8 }));
        server_roundtrip(ServerMsg::Closed(CloseReason::Finished));
        server_roundtrip(ServerMsg::Refused("too many subscribers".into()));
        server_roundtrip(ServerMsg::Exited(ProgramExit::Code(7)));
        server_roundtrip(ServerMsg::Exited(ProgramExit::Code(-1)));
        server_roundtrip(ServerMsg::Exited(ProgramExit::Signal(9)));
        server_roundtrip(ServerMsg::Shown(Position {
            epoch: 2,
            next: 1 << 40,
        }));
    }

    #[test]
    fn client_messages_roundtrip() {
        for msg in [
            ClientMsg::Hello {
                policy: Policy::Block,
                resume: Some(Position { epoch: 3, next: 7 }),
                terminal: None,
            },
            ClientMsg::Hello {
                policy: Policy::Resync,
                resume: None,
                terminal: Some(Keys::Sent),
            },
            ClientMsg::Hello {
                policy: Policy::Gap,
                resume: Some(Position { epoch: 1, next: 2 }),
                terminal: Some(Keys::Read {
                    detach: 0x1c,
                    read_only: false,
                }),
            },
            ClientMsg::Hello {
                policy: Policy::Resync,
                resume: None,
                terminal: Some(Keys::Read {
                    detach: b'q',
                    read_only: true,
                }),
            },
            ClientMsg::Input(Bytes::from_static(b"q")),
            ClientMsg::Resize(PtySize {
                rows: 50,
                cols: 132,
            }),
            ClientMsg::Resize(PtySize {
                rows: MAX_TERMINAL_SIDE,
                cols: 1,
            }),
            ClientMsg::Detach,
        ] {
            let mut buf = Vec::new();
            encode_client(&msg, &mut buf);
            assert_eq!(decode_client(&buf), Ok(Some((msg, buf.len()))));
        }
    }

    #[test]
    fn resize_frames_outside_the_size_bounds_are_rejected() {
        for (rows, cols, field) in [(0u16, 80u16, "rows"), (24, 0, "cols"), (24, 1001, "cols")] {
            let mut frame = vec![b'W'];
            frame.extend_from_slice(&rows.to_le_bytes());
            frame.extend_from_slice(&cols.to_le_bytes());
            match decode_client(&frame) {
                Err(WireError::BadField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{rows}x{cols}: {other:?}"),
            }
        }
        // Truncated: waits for more bytes.
        assert_eq!(decode_client(&[b'W', 24, 0]), Ok(None));
    }

    #[test]
    fn invalid_frames_are_rejected_by_field() {
        assert_eq!(
            decode_server(b"Z"),
            Err(WireError::UnknownTag { tag: b'Z' })
        );
        let mut gap = vec![b'G'];
        gap.extend_from_slice(&1u64.to_le_bytes());
        gap.extend_from_slice(&5u64.to_le_bytes());
        gap.extend_from_slice(&4u64.to_le_bytes());
        let err = decode_server(&gap).unwrap_err();
        assert!(err.to_string().contains("gap from"), "{err}");
        // A suffix snapshot longer than its end offset would make `suffix_from` underflow.
        let mut snap = vec![b'S', 0];
        snap.extend_from_slice(&1u64.to_le_bytes());
        snap.extend_from_slice(&2u64.to_le_bytes());
        snap.extend_from_slice(&3u32.to_le_bytes());
        snap.extend_from_slice(b"abc");
        assert!(decode_server(&snap).is_err());
        // A terminal hello names who reads the keys: 0, 1 or 2.
        let mut keys = vec![b'T', 0, 0];
        keys.extend_from_slice(&[0; 16]);
        keys.extend_from_slice(&[3, 0x1c]);
        let err = decode_client(&keys).unwrap_err();
        assert!(err.to_string().contains("`keys`"), "{err}");
        let mut big = vec![b'i'];
        big.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_client(&big),
            Err(WireError::TooLarge { .. })
        ));
        // Input is bounded by MAX_INPUT, refused from the header alone.
        let mut over = vec![b'i'];
        over.extend_from_slice(&(MAX_INPUT as u32 + 1).to_le_bytes());
        assert_eq!(
            decode_client(&over),
            Err(WireError::TooLarge {
                len: MAX_INPUT + 1,
                max: MAX_INPUT
            })
        );
        let mut at_limit = vec![b'i'];
        at_limit.extend_from_slice(&(MAX_INPUT as u32).to_le_bytes());
        assert_eq!(decode_client(&at_limit), Ok(None));
        assert_eq!(
            decode_server(&[b'X', 2, 0, 0, 0, 0]),
            Err(WireError::BadField {
                field: "exit kind",
                value: 2
            })
        );
    }
}
