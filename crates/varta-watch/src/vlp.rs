//! VLP v0.2, the Varta liveness protocol: one 32-byte little-endian frame per heartbeat.
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 2 | magic | `"VA"` (`0x56 0x41`) |
//! | 2 | 1 | version | `0x02` |
//! | 3 | 1 | status | 0 Ok, 1 Degraded, 2 Critical (3, Stall, is observer-only) |
//! | 4 | 4 | pid | the sender's pid in its own pid namespace |
//! | 8 | 8 | timestamp | sender-local monotonic ns, not interpreted by the observer |
//! | 16 | 8 | nonce | starts at 1, strictly increasing, wraps `u64::MAX - 1 → 0`; `u64::MAX` marks the terminal (panic) frame |
//! | 24 | 4 | payload | opaque application context |
//! | 28 | 4 | crc32c | CRC-32C of bytes 0..28 |
//!
//! Decoding checks, in this order: length, magic, version, CRC, status, stall-on-wire, pid,
//! timestamp, nonce — so a frame is blamed for its first defect, the same way by every
//! implementation.
//!
//! ```
//! use varta_watch::vlp::{Frame, Status};
//!
//! let frame = Frame { status: Status::Ok, pid: 2, timestamp: 0, nonce: 1, payload: 0 };
//! let bytes = frame.encode();
//! assert_eq!(&bytes[28..], &[0xe4, 0x11, 0x6b, 0xaa]);
//! assert_eq!(Frame::decode(&bytes), Ok(frame));
//! ```

use crate::crc32c::crc32c;

/// Length of every VLP frame.
pub const FRAME_LEN: usize = 32;
/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"VA";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 2;
/// The nonce of the terminal frame a panicking sender emits (with status Critical).
pub const TERMINAL_NONCE: u64 = u64::MAX;

/// A sender's self-reported health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Working normally.
    Ok,
    /// Working, but impaired.
    Degraded,
    /// Failing; the observer acts on it at once.
    Critical,
}

impl Status {
    fn to_wire(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Degraded => 1,
            Self::Critical => 2,
        }
    }

    /// The lowercase name used in events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Critical => "critical",
        }
    }
}

/// One heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The sender's health.
    pub status: Status,
    /// The sender's pid as it sees it.
    pub pid: u32,
    /// Sender-local monotonic nanoseconds.
    pub timestamp: u64,
    /// Sequence number; [`TERMINAL_NONCE`] marks the terminal frame.
    pub nonce: u64,
    /// Opaque application context.
    pub payload: u32,
}

/// Why bytes are not a valid VLP v0.2 frame, in decode order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Frames are exactly 32 bytes.
    #[error("frame is {len} bytes; VLP frames are exactly 32")]
    Length {
        /// The length received.
        len: usize,
    },
    /// The first two bytes are not `"VA"`.
    #[error("bad magic {found:02x?}; expected \"VA\"")]
    Magic {
        /// The bytes found.
        found: [u8; 2],
    },
    /// Another protocol version (v0.1 senders must upgrade).
    #[error("unsupported VLP version {found}; this observer speaks version 2")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// The checksum does not match the contents.
    #[error("CRC-32C mismatch: frame carries {stored:#010x}, contents give {computed:#010x}")]
    Crc {
        /// The checksum in the frame.
        stored: u32,
        /// The checksum of bytes 0..28.
        computed: u32,
    },
    /// A status byte outside 0..=3.
    #[error("unknown status {found}")]
    Status {
        /// The status byte found.
        found: u8,
    },
    /// Status 3 (Stall) is the observer's verdict, never a sender's claim.
    #[error("status Stall is observer-only and not accepted on the wire")]
    StallOnWire,
    /// Pids 0 and 1 cannot be heartbeat senders.
    #[error("pid {pid} cannot send heartbeats")]
    Pid {
        /// The pid found.
        pid: u32,
    },
    /// `u64::MAX` is reserved as a timestamp.
    #[error("timestamp u64::MAX is reserved")]
    Timestamp,
    /// The terminal nonce is only valid with status Critical.
    #[error("terminal nonce without status Critical")]
    Nonce,
}

impl Frame {
    /// Whether this is the terminal frame a panicking sender emits.
    pub fn is_terminal(&self) -> bool {
        self.nonce == TERMINAL_NONCE
    }

    /// The 32 wire bytes of this frame.
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let mut b = [0u8; FRAME_LEN];
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.status.to_wire();
        b[4..8].copy_from_slice(&self.pid.to_le_bytes());
        b[8..16].copy_from_slice(&self.timestamp.to_le_bytes());
        b[16..24].copy_from_slice(&self.nonce.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload.to_le_bytes());
        let crc = crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a frame. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        let b: &[u8; FRAME_LEN] = bytes
            .try_into()
            .map_err(|_| DecodeError::Length { len: bytes.len() })?;
        if b[0..2] != MAGIC {
            return Err(DecodeError::Magic {
                found: [b[0], b[1]],
            });
        }
        if b[2] != VERSION {
            return Err(DecodeError::Version { found: b[2] });
        }
        let stored = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        let computed = crc32c(&b[..28]);
        if stored != computed {
            return Err(DecodeError::Crc { stored, computed });
        }
        let status = match b[3] {
            0 => Status::Ok,
            1 => Status::Degraded,
            2 => Status::Critical,
            3 => return Err(DecodeError::StallOnWire),
            found => return Err(DecodeError::Status { found }),
        };
        let word = |range: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w[..range.len()].copy_from_slice(&b[range]);
            u64::from_le_bytes(w)
        };
        let pid = word(4..8) as u32;
        if pid <= 1 {
            return Err(DecodeError::Pid { pid });
        }
        let timestamp = word(8..16);
        if timestamp == u64::MAX {
            return Err(DecodeError::Timestamp);
        }
        let nonce = word(16..24);
        if nonce == TERMINAL_NONCE && status != Status::Critical {
            return Err(DecodeError::Nonce);
        }
        Ok(Frame {
            status,
            pid,
            timestamp,
            nonce,
            payload: word(24..28) as u32,
        })
    }
}

/// Whether a datagram claims to be a VLP frame (magic, then a binary version byte) rather than
/// sd_notify text, which is printable. Such datagrams are decoded strictly.
pub fn looks_like_frame(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0..2] == MAGIC && bytes[2] < 0x20
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_frame() -> Frame {
        Frame {
            status: Status::Ok,
            pid: 2,
            timestamp: 0,
            nonce: 1,
            payload: 0,
        }
    }

    #[test]
    fn worked_frame_matches_the_reference_bytes() {
        let expected: [u8; 32] = [
            0x56, 0x41, 0x02, 0x00, 0x02, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0xe4, 0x11, 0x6b, 0xaa,
        ];
        assert_eq!(ok_frame().encode(), expected);
        assert_eq!(Frame::decode(&expected), Ok(ok_frame()));
    }

    #[test]
    fn defects_are_reported_in_decode_order() {
        let good = ok_frame().encode();
        let reseal = |mut b: [u8; 32]| {
            let crc = crc32c(&b[..28]);
            b[28..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        assert_eq!(
            Frame::decode(&good[..31]),
            Err(DecodeError::Length { len: 31 })
        );
        // Bad magic and bad version together: magic is blamed.
        let mut b = good;
        b[0] = b'X';
        b[2] = 1;
        assert!(matches!(Frame::decode(&b), Err(DecodeError::Magic { .. })));
        // v0.1 frame.
        let mut b = good;
        b[2] = 1;
        assert_eq!(Frame::decode(&b), Err(DecodeError::Version { found: 1 }));
        // Corrupted payload: CRC, with both values named.
        let mut b = good;
        b[24] ^= 1;
        assert!(
            matches!(Frame::decode(&b), Err(DecodeError::Crc { stored, computed }) if stored == 0xaa6b11e4 && computed != stored)
        );
        let mut b = good;
        b[3] = 3;
        assert_eq!(Frame::decode(&reseal(b)), Err(DecodeError::StallOnWire));
        let mut b = good;
        b[3] = 9;
        assert_eq!(
            Frame::decode(&reseal(b)),
            Err(DecodeError::Status { found: 9 })
        );
        let mut b = good;
        b[4] = 1;
        assert_eq!(Frame::decode(&reseal(b)), Err(DecodeError::Pid { pid: 1 }));
        let mut b = good;
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Frame::decode(&reseal(b)), Err(DecodeError::Timestamp));
        let mut b = good;
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Frame::decode(&reseal(b)), Err(DecodeError::Nonce));
        b[3] = 2;
        let terminal = Frame::decode(&reseal(b)).expect("terminal + critical is valid");
        assert!(terminal.is_terminal());
    }

    #[test]
    fn text_is_not_mistaken_for_a_frame() {
        assert!(looks_like_frame(&ok_frame().encode()));
        assert!(looks_like_frame(b"VA\x01 old"));
        assert!(!looks_like_frame(b"VAR=1"));
        assert!(!looks_like_frame(b"READY=1"));
        assert!(!looks_like_frame(b"VA"));
    }
}
