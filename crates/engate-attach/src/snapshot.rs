//! Snapshots: what a client replays before live bytes, stamped with the offset they cover.
//!
//! A client that attaches to a running stream needs a starting state that meets the live bytes
//! exactly. The hub keeps one [`SnapshotProvider`] that sees every emitted byte, in order,
//! under the same lock (the *fence*) that appends to the stream; an attach asks it for a
//! [`Snapshot`] inside that fence, so the snapshot's [`at`](Snapshot::at) is exactly the offset
//! where the subscriber's live items start.
//!
//! Two providers ship with the crate:
//!
//! - [`TailProvider`] keeps the last `N` bytes: its snapshot is a verbatim suffix of the
//!   stream ([`SnapshotKind::Suffix`]), for log tailers and raw relays;
//! - `ScreenProvider` (feature `screen`) parses the stream as terminal output and snapshots
//!   the current screen and modes as escape sequences that redraw it
//!   ([`SnapshotKind::State`]): re-attach costs the size of the screen, not of the history.
//!
//! A [`History`] wraps a snapshot that the consumer still has to apply. It is `#[must_use]`,
//! and dropping one unreplayed is counted in the hub's metrics and, in debug builds, panics:
//! a subscriber that goes live without its history paints a screen that is silently wrong.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::hub::Stats;

/// A place in the stream: the producer's incarnation and the offset of the next byte.
///
/// A client that detaches keeps its position and resumes from it: within the same epoch the
/// exact suffix follows if it is still retained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The producer's incarnation. Offsets of different epochs are unrelated.
    pub epoch: u64,
    /// The offset of the next byte the client has not seen.
    pub next: u64,
}

/// What the bytes of a [`Snapshot`] are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SnapshotKind {
    /// A verbatim suffix of the stream: the bytes at offsets `at - len .. at`.
    Suffix,
    /// Bytes that reproduce a state (a terminal screen) when applied to a fresh consumer; they
    /// are not stream bytes.
    State,
    /// Nothing to apply: the client resumed at `at` and its own state is already right there.
    Resume,
}

/// A starting state stamped with the offset it covers.
///
/// Live items of the subscriber that received it start at exactly [`at`](Self::at).
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    epoch: u64,
    at: u64,
    kind: SnapshotKind,
    bytes: Bytes,
}

impl Snapshot {
    pub(crate) fn new(epoch: u64, at: u64, kind: SnapshotKind, bytes: Bytes) -> Self {
        Self {
            epoch,
            at,
            kind,
            bytes,
        }
    }

    /// The producer's incarnation the snapshot belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The offset the snapshot covers: live items start here.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// Where a client stands after applying the snapshot.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            next: self.at,
        }
    }

    /// What the bytes are.
    pub fn kind(&self) -> SnapshotKind {
        self.kind
    }

    /// The bytes to apply.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// For a verbatim suffix (or a resume), the offset of its first byte; `None` for state.
    pub fn suffix_from(&self) -> Option<u64> {
        match self.kind {
            SnapshotKind::Suffix | SnapshotKind::Resume => {
                Some(self.at.saturating_sub(self.bytes.len() as u64))
            }
            SnapshotKind::State => None,
        }
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("epoch", &self.epoch)
            .field("at", &self.at)
            .field("kind", &self.kind)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A snapshot the consumer must apply before it applies live items.
///
/// Call [`replay`](Self::replay) (or [`into_snapshot`](Self::into_snapshot) and apply it
/// yourself). Dropping a `History` unreplayed is a bug in the consumer: it is counted in
/// [`Metrics::unreplayed_histories`](crate::Metrics::unreplayed_histories) and panics in debug
/// builds; release builds never panic.
#[must_use = "a History must be replayed before live items are applied"]
pub struct History {
    snapshot: Option<Snapshot>,
    stats: Option<Arc<Stats>>,
}

impl History {
    pub(crate) fn new(snapshot: Snapshot, stats: Arc<Stats>) -> Self {
        Self {
            snapshot: Some(snapshot),
            stats: Some(stats),
        }
    }

    /// Looks at the snapshot without replaying it.
    pub fn snapshot(&self) -> &Snapshot {
        self.snapshot
            .as_ref()
            .expect("a History holds its snapshot until it is consumed")
    }

    /// Applies the snapshot with `apply` and marks the history replayed.
    pub fn replay<R>(mut self, apply: impl FnOnce(&Snapshot) -> R) -> R {
        let snapshot = self.take();
        apply(&snapshot)
    }

    /// Takes the snapshot out, marking the history replayed: the caller applies it.
    pub fn into_snapshot(mut self) -> Snapshot {
        self.take()
    }

    fn take(&mut self) -> Snapshot {
        self.stats = None;
        self.snapshot
            .take()
            .expect("a History holds its snapshot until it is consumed")
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("History").field(&self.snapshot).finish()
    }
}

impl Drop for History {
    fn drop(&mut self) {
        let Some(stats) = self.stats.take() else {
            return;
        };
        stats.unreplayed_histories.fetch_add(1, Ordering::Relaxed);
        if cfg!(debug_assertions) && !std::thread::panicking() {
            let at = self.snapshot.as_ref().map_or(0, Snapshot::at);
            panic!(
                "engate-attach: a History (snapshot at offset {at}) was dropped without being \
                 replayed; call History::replay before applying live items"
            );
        }
    }
}

/// Sees every emitted byte in order and produces the state a new subscriber starts from.
///
/// The hub calls [`feed`](Self::feed) and [`snapshot`](Self::snapshot) under its fence, so a
/// snapshot always covers exactly the bytes emitted before it. Implementations should keep
/// both cheap: the producer waits for `feed`, and an attach waits for `snapshot`.
pub trait SnapshotProvider: Send + 'static {
    /// What this provider's snapshots are: [`SnapshotKind::Suffix`] or [`SnapshotKind::State`].
    fn kind(&self) -> SnapshotKind;

    /// Takes in the next emitted bytes.
    fn feed(&mut self, bytes: &[u8]);

    /// Appends the snapshot of everything fed so far to `out` (which arrives empty).
    fn snapshot(&mut self, out: &mut Vec<u8>);

    /// Forgets everything: the producer started a new epoch.
    fn reset(&mut self);

    /// The terminal behind the stream now has `rows` × `cols` cells. A provider that keeps a
    /// screen lays it out again; the default ignores it (a byte suffix has no size).
    fn resize(&mut self, rows: u16, cols: u16) {
        let _ = (rows, cols);
    }
}

impl<P: SnapshotProvider + ?Sized> SnapshotProvider for Box<P> {
    fn kind(&self) -> SnapshotKind {
        (**self).kind()
    }

    fn feed(&mut self, bytes: &[u8]) {
        (**self).feed(bytes);
    }

    fn snapshot(&mut self, out: &mut Vec<u8>) {
        (**self).snapshot(out);
    }

    fn reset(&mut self) {
        (**self).reset();
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        (**self).resize(rows, cols);
    }
}

/// Keeps the last `capacity` bytes of the stream; snapshots are verbatim suffixes.
///
/// Feeding copies into a fixed circular buffer (no allocation after construction); a snapshot
/// copies at most `capacity` bytes.
#[derive(Clone)]
pub struct TailProvider {
    buf: Box<[u8]>,
    /// Index of the oldest byte.
    start: usize,
    len: usize,
}

impl TailProvider {
    /// A provider that keeps the last `capacity` bytes (a zero capacity keeps nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            len: 0,
        }
    }

    /// How many bytes it keeps at most.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// How many bytes it holds now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for TailProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TailProvider")
            .field("capacity", &self.buf.len())
            .field("len", &self.len)
            .finish()
    }
}

impl SnapshotProvider for TailProvider {
    fn kind(&self) -> SnapshotKind {
        SnapshotKind::Suffix
    }

    fn feed(&mut self, bytes: &[u8]) {
        let cap = self.buf.len();
        if cap == 0 {
            return;
        }
        if bytes.len() >= cap {
            self.buf.copy_from_slice(&bytes[bytes.len() - cap..]);
            self.start = 0;
            self.len = cap;
            return;
        }
        // Write at the end of the live region, wrapping; then drop what fell off the front.
        let mut write = (self.start + self.len) % cap;
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = rest.len().min(cap - write);
            self.buf[write..write + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            write = (write + n) % cap;
        }
        let total = self.len + bytes.len();
        if total > cap {
            self.start = (self.start + (total - cap)) % cap;
            self.len = cap;
        } else {
            self.len = total;
        }
    }

    fn snapshot(&mut self, out: &mut Vec<u8>) {
        let cap = self.buf.len();
        if self.len == 0 {
            return;
        }
        let first = self.len.min(cap - self.start);
        out.reserve(self.len);
        out.extend_from_slice(&self.buf[self.start..self.start + first]);
        out.extend_from_slice(&self.buf[..self.len - first]);
    }

    fn reset(&mut self) {
        self.start = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(p: &mut TailProvider) -> Vec<u8> {
        let mut out = Vec::new();
        p.snapshot(&mut out);
        out
    }

    #[test]
    fn tail_keeps_exactly_the_last_bytes_across_wraps() {
        let mut p = TailProvider::new(5);
        let mut all = Vec::new();
        for (i, chunk) in [&b"ab"[..], b"cde", b"f", b"ghijklm", b"n", b"opq"]
            .iter()
            .enumerate()
        {
            p.feed(chunk);
            all.extend_from_slice(chunk);
            let want = &all[all.len().saturating_sub(5)..];
            assert_eq!(snap(&mut p), want, "after chunk {i}");
        }
        p.reset();
        assert!(snap(&mut p).is_empty());
        assert!(p.is_empty());
    }

    #[test]
    fn zero_capacity_tail_keeps_nothing() {
        let mut p = TailProvider::new(0);
        p.feed(b"abc");
        assert!(snap(&mut p).is_empty());
        assert_eq!(p.capacity(), 0);
    }

    #[test]
    fn suffix_from_is_the_first_offset_of_the_bytes() {
        let s = Snapshot::new(7, 10, SnapshotKind::Suffix, Bytes::from_static(b"abcd"));
        assert_eq!(s.suffix_from(), Some(6));
        assert_eq!(s.position(), Position { epoch: 7, next: 10 });
        let state = Snapshot::new(7, 10, SnapshotKind::State, Bytes::from_static(b"x"));
        assert_eq!(state.suffix_from(), None);
    }

    #[test]
    fn replayed_history_is_not_counted() {
        let stats = Arc::new(Stats::default());
        let s = Snapshot::new(1, 3, SnapshotKind::Suffix, Bytes::from_static(b"abc"));
        let n = History::new(s.clone(), stats.clone()).replay(|s| s.bytes().len());
        assert_eq!(n, 3);
        let back = History::new(s.clone(), stats.clone()).into_snapshot();
        assert_eq!(back, s);
        assert_eq!(stats.unreplayed_histories.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn dropped_history_is_counted_and_panics_in_debug_builds() {
        let stats = Arc::new(Stats::default());
        let s = Snapshot::new(1, 3, SnapshotKind::Suffix, Bytes::from_static(b"abc"));
        let history = History::new(s, stats.clone());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(history)));
        assert_eq!(result.is_err(), cfg!(debug_assertions));
        assert_eq!(stats.unreplayed_histories.load(Ordering::Relaxed), 1);
    }
}
