//! Consumer-side de-duplication by offset, for deliveries that are not fenced.
//!
//! A subscriber of a [`Hub`](crate::Hub) never sees a byte twice. Other paths can: a client of
//! a session server that reconnects and is sent an overlapping range, or a producer that
//! cannot fence (a log file read for history, then a live tail subscribed separately). Because
//! every byte has an absolute offset within an epoch, the consumer can settle it: [`Dedup`]
//! remembers the next offset it needs, trims any overlap from what arrives, and reports a
//! skipped range as a gap instead of splicing it silently.

use crate::snapshot::{Position, Snapshot, SnapshotKind};

/// What [`Dedup::accept`] made of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted<'a> {
    /// New bytes, starting exactly at the expected offset (overlap already trimmed).
    New(&'a [u8]),
    /// Everything in the chunk was seen before.
    Duplicate,
    /// The chunk starts after the expected offset: `from..to` is missing, then `bytes` follow.
    Gap {
        /// The first missing offset.
        from: u64,
        /// The chunk's offset.
        to: u64,
        /// The chunk's bytes.
        bytes: &'a [u8],
    },
    /// The chunk belongs to another epoch; apply a snapshot of that epoch first.
    WrongEpoch {
        /// The epoch the consumer is in.
        expected: u64,
        /// The chunk's epoch.
        got: u64,
    },
    /// No snapshot or position has anchored the consumer yet.
    Unanchored,
}

/// Tracks the next expected offset and trims overlap.
///
/// A subscriber of a [`Hub`](crate::Hub) never sees a byte twice; other paths can (a client
/// that reconnects and is sent an overlapping range, or a producer that cannot fence, such as
/// a log file read for history and a live tail subscribed separately). With absolute offsets
/// the consumer settles it: `Dedup` trims what it already holds and reports a skipped range
/// as a gap instead of splicing it silently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dedup {
    position: Option<Position>,
    duplicate_bytes: u64,
    gap_bytes: u64,
}

impl Dedup {
    /// An unanchored consumer: the first snapshot (or [`resume_at`](Self::resume_at)) anchors it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Anchors at `position` (a consumer that already holds the stream up to there).
    pub fn resume_at(&mut self, position: Position) {
        self.position = Some(position);
    }

    /// Applies a snapshot: the consumer now stands at its `at` (a resume snapshot keeps it
    /// where it was, which is the same place).
    pub fn snapshot(&mut self, snapshot: &Snapshot) {
        if snapshot.kind() == SnapshotKind::Resume
            && let Some(p) = self.position
            && p.epoch == snapshot.epoch()
            && p.next > snapshot.at()
        {
            // An older resume point than what we hold: the overlap is trimmed on arrival.
            return;
        }
        self.position = Some(snapshot.position());
    }

    /// Where the consumer stands.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// Bytes trimmed as already seen.
    pub fn duplicate_bytes(&self) -> u64 {
        self.duplicate_bytes
    }

    /// Bytes reported missing.
    pub fn gap_bytes(&self) -> u64 {
        self.gap_bytes
    }

    /// Takes a chunk of `epoch` at `offset`, returning only what is new.
    pub fn accept<'a>(&mut self, epoch: u64, offset: u64, bytes: &'a [u8]) -> Accepted<'a> {
        let Some(pos) = self.position.as_mut() else {
            return Accepted::Unanchored;
        };
        if epoch != pos.epoch {
            return Accepted::WrongEpoch {
                expected: pos.epoch,
                got: epoch,
            };
        }
        let end = offset + bytes.len() as u64;
        if end <= pos.next && !bytes.is_empty() {
            self.duplicate_bytes += bytes.len() as u64;
            return Accepted::Duplicate;
        }
        if offset > pos.next {
            let from = pos.next;
            self.gap_bytes += offset - from;
            pos.next = end;
            return Accepted::Gap {
                from,
                to: offset,
                bytes,
            };
        }
        let skip = (pos.next - offset) as usize;
        self.duplicate_bytes += skip as u64;
        pos.next = pos.next.max(end);
        Accepted::New(&bytes[skip.min(bytes.len())..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn overlap_is_trimmed_and_gaps_reported() {
        let mut d = Dedup::new();
        assert_eq!(d.accept(1, 0, b"ab"), Accepted::Unanchored);
        d.snapshot(&Snapshot::new(
            1,
            4,
            SnapshotKind::Suffix,
            Bytes::from_static(b"abcd"),
        ));
        assert_eq!(d.accept(1, 2, b"cd"), Accepted::Duplicate);
        assert_eq!(d.accept(1, 2, b"cdef"), Accepted::New(b"ef"));
        assert_eq!(d.accept(1, 6, b"gh"), Accepted::New(b"gh"));
        assert_eq!(
            d.accept(1, 10, b"kl"),
            Accepted::Gap {
                from: 8,
                to: 10,
                bytes: b"kl"
            }
        );
        assert_eq!(
            d.accept(2, 12, b"x"),
            Accepted::WrongEpoch {
                expected: 1,
                got: 2
            }
        );
        assert_eq!(d.position(), Some(Position { epoch: 1, next: 12 }));
        assert_eq!(d.duplicate_bytes(), 4);
        assert_eq!(d.gap_bytes(), 2);
    }

    #[test]
    fn an_older_resume_snapshot_does_not_move_the_consumer_back() {
        let mut d = Dedup::new();
        d.resume_at(Position { epoch: 3, next: 10 });
        d.snapshot(&Snapshot::new(3, 6, SnapshotKind::Resume, Bytes::new()));
        assert_eq!(d.position(), Some(Position { epoch: 3, next: 10 }));
        assert_eq!(d.accept(3, 6, b"ghijkl"), Accepted::New(b"kl"));
    }
}
