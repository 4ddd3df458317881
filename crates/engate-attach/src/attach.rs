//! The typed attach lifecycle and the poll surface.
//!
//! The lifecycle is documented on [`Attach`], where it is public.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering as StdOrdering;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{AttachOptions, Policy};
use crate::hub::{AttachError, AttachOutcome, Fill, Registered, Shared, Stats};
use crate::snapshot::{History, Position, Snapshot};
use crate::sync::Arc;

/// A chunk of the stream as delivered: its bytes, the offset of its first byte and the epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct Item {
    /// The producer's incarnation.
    pub epoch: u64,
    /// Offset of the first byte of `bytes` within the epoch.
    pub offset: u64,
    /// The bytes (a reference to the shared chunk, not a copy).
    pub bytes: Bytes,
}

impl Item {
    /// The offset just past the item.
    pub fn end(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("epoch", &self.epoch)
            .field("offset", &self.offset)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The producer closed and every retained byte was delivered.
    Finished,
    /// [`Policy::Disconnect`]: the subscriber fell behind the ring and was detached.
    Overrun {
        /// The subscriber's position when it was detached.
        at: u64,
        /// The oldest offset the ring still held.
        tail: u64,
    },
}

/// The answer to a poll.
#[derive(Debug)]
#[must_use = "an Event may carry bytes or a History that must be applied"]
pub enum Event {
    /// The next bytes of the stream, starting exactly where the previous event ended.
    Item(Item),
    /// [`Policy::Gap`]: the bytes `from..to` were evicted before this subscriber took them;
    /// items go on at `to`.
    Gap {
        /// The first lost offset (this subscriber's position).
        from: u64,
        /// The first offset that follows (the ring's tail).
        to: u64,
    },
    /// A fresh snapshot to apply before the items that follow: the subscriber fell behind
    /// ([`Policy::Resync`]) or the producer started a new epoch.
    Resync(History),
    /// Nothing new yet (non-blocking polls and timeouts only).
    Empty,
    /// Nothing will follow. Repeated on every later poll.
    Closed(CloseReason),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Spawned {}
    impl Sealed for super::Subscribed {}
    impl Sealed for super::Synced {}
    impl Sealed for super::Live {}
}

/// A phase of the attach lifecycle. Sealed: the four phases are this crate's.
pub trait Phase: sealed::Sealed {}
impl Phase for Spawned {}
impl Phase for Subscribed {}
impl Phase for Synced {}
impl Phase for Live {}

/// Phase 1: nothing registered yet.
#[derive(Debug)]
pub struct Spawned {
    shared: Arc<Shared>,
    options: AttachOptions,
}

/// Phase 2: cursor registered and snapshot taken, atomically; the history awaits replay.
///
/// Dropping it detaches; the unreplayed history then goes with it (nothing can go live
/// without it), so that is not counted as a consumer bug.
#[derive(Debug)]
pub struct Subscribed {
    reg: Registration,
    history: Option<History>,
    outcome: AttachOutcome,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        if let Some(history) = self.history.take() {
            drop(history.into_snapshot());
        }
    }
}

/// Phase 3: the snapshot was applied; live items start at its `at`.
#[derive(Debug)]
pub struct Synced {
    reg: Registration,
    position: Position,
}

/// Phase 4: polling live items.
#[derive(Debug)]
pub struct Live {
    reg: Registration,
    local: VecDeque<Item>,
    /// Where the consumer stands: the epoch and offset of the next byte it expects.
    position: Position,
    finished: Option<CloseReason>,
    stats: SubscriberStats,
    /// Delivered bytes not yet added to the hub's shared counter (added once per batch, so
    /// subscribers do not contend on one cache line per item).
    unflushed: u64,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.flush();
    }
}

/// An attach in phase `P` of the typed lifecycle.
///
/// An attach goes through four phases, each a type, so the order is checked by the compiler:
///
/// 1. [`Spawned`] — an intent to attach; nothing is registered and there is nothing to poll.
/// 2. [`Subscribed`] — [`Attach::subscribe`] (or [`Attach::resume`]) registered the cursor and
///    took the snapshot in one fenced step. The snapshot is held as a [`History`]: the only way
///    on is to replay it.
/// 3. [`Synced`] — the consumer applied the snapshot; its state is exactly the stream up to the
///    snapshot's `at`.
/// 4. [`Live`] — items from `at` on: [`Attach::try_next`], [`Attach::next_blocking`],
///    [`Attach::next_timeout`], or (feature `tokio`) the `futures_core::Stream` impl.
///
/// The order that compiles:
///
/// ```
/// # let (_producer, hub) = engate_attach::channel(Default::default(), engate_attach::TailProvider::new(8)).unwrap();
/// let (synced, _len) = hub.attach().subscribe().unwrap().replay(|snapshot| snapshot.bytes().len());
/// let _event = synced.live().try_next();
/// ```
///
/// There is no way to take a snapshot before subscribing, nor to poll before replaying:
///
/// ```compile_fail
/// # let (_producer, hub) = engate_attach::channel(Default::default(), engate_attach::TailProvider::new(8)).unwrap();
/// // A Spawned attach has no snapshot to replay: this does not compile.
/// let synced = hub.attach().replay(|snapshot| snapshot.bytes().len());
/// ```
///
/// ```compile_fail
/// # let (_producer, hub) = engate_attach::channel(Default::default(), engate_attach::TailProvider::new(8)).unwrap();
/// // A Subscribed attach must replay its history before it can poll: this does not compile.
/// let event = hub.attach().subscribe().unwrap().try_next();
/// ```
///
/// Every poll answers with an [`Event`]: an [`Item`] (bytes with their offset and epoch), a
/// [`Gap`](Event::Gap), a [`Resync`](Event::Resync) carrying a new [`History`],
/// [`Empty`](Event::Empty) or [`Closed`](Event::Closed) — never an ambiguous `false`.
#[must_use = "dropping an attach detaches it"]
pub struct Attach<P: Phase> {
    phase: P,
}

impl<P: Phase> fmt::Debug for Attach<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attach")
            .field("phase", &std::any::type_name::<P>())
            .finish_non_exhaustive()
    }
}

/// A registered cursor and its options; dropping it detaches.
#[derive(Debug)]
struct Registration {
    shared: Arc<Shared>,
    key: Option<usize>,
    options: AttachOptions,
}

impl Registration {
    fn detach(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.remove(key);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.detach();
    }
}

impl Attach<Spawned> {
    pub(crate) fn spawned(shared: Arc<Shared>, options: AttachOptions) -> Self {
        Self {
            phase: Spawned { shared, options },
        }
    }

    /// Registers the cursor and takes a snapshot in one fenced step: live items will start
    /// exactly at the snapshot's `at`.
    pub fn subscribe(self) -> Result<Attach<Subscribed>, AttachError> {
        self.register(None)
    }

    /// Resumes at `position` (the client's last seen offset + 1): within the same epoch and
    /// while the ring still holds it, no snapshot is needed and the exact suffix follows
    /// (the history is then a [`SnapshotKind::Resume`](crate::SnapshotKind::Resume) with no
    /// bytes); otherwise a fresh snapshot, as for [`subscribe`](Self::subscribe).
    /// [`Attach::outcome`] says which.
    pub fn resume(self, position: Position) -> Result<Attach<Subscribed>, AttachError> {
        self.register(Some(position))
    }

    fn register(self, resume: Option<Position>) -> Result<Attach<Subscribed>, AttachError> {
        let Spawned { shared, options } = self.phase;
        let registered = shared.register(resume, options)?;
        Ok(Attach::subscribed(shared, options, registered))
    }
}

impl Attach<Subscribed> {
    pub(crate) fn subscribed(
        shared: Arc<Shared>,
        options: AttachOptions,
        registered: Registered,
    ) -> Self {
        let Registered {
            key,
            snapshot,
            outcome,
        } = registered;
        let history = History::new(snapshot, std::sync::Arc::clone(&shared.stats));
        Self {
            phase: Subscribed {
                reg: Registration {
                    shared,
                    key: Some(key),
                    options,
                },
                history: Some(history),
                outcome,
            },
        }
    }

    /// Whether this was a fresh attach, an exact resume, or a resume that fell back to a
    /// snapshot (and why).
    pub fn outcome(&self) -> AttachOutcome {
        self.phase.outcome
    }

    /// The snapshot, to look at before replaying it.
    pub fn snapshot(&self) -> &Snapshot {
        self.phase
            .history
            .as_ref()
            .expect("a Subscribed attach holds its history until replayed")
            .snapshot()
    }

    /// Applies the snapshot with `apply` and moves on to [`Synced`].
    pub fn replay<R>(mut self, apply: impl FnOnce(&Snapshot) -> R) -> (Attach<Synced>, R) {
        let history = self
            .phase
            .history
            .take()
            .expect("a Subscribed attach holds its history until replayed");
        let old = &mut self.phase.reg;
        let reg = Registration {
            shared: Arc::clone(&old.shared),
            key: old.key.take(),
            options: old.options,
        };
        let (position, result) = history.replay(|s| (s.position(), apply(s)));
        (
            Attach {
                phase: Synced { reg, position },
            },
            result,
        )
    }

    /// Applies the snapshot with a fallible `apply` (writing it to a client's socket, say).
    /// On error the subscriber is detached and the error returned.
    pub fn try_replay<E>(
        self,
        apply: impl FnOnce(&Snapshot) -> Result<(), E>,
    ) -> Result<Attach<Synced>, E> {
        let (synced, result) = self.replay(apply);
        result.map(|()| synced)
    }
}

impl Attach<Synced> {
    /// Where the consumer stands: the snapshot's epoch and `at`.
    pub fn position(&self) -> Position {
        self.phase.position
    }

    /// Starts polling live items.
    pub fn live(self) -> Attach<Live> {
        let Synced { reg, position } = self.phase;
        let read_ahead = reg.options.read_ahead;
        Attach {
            phase: Live {
                reg,
                local: VecDeque::with_capacity(read_ahead),
                position,
                finished: None,
                stats: SubscriberStats::default(),
                unflushed: 0,
            },
        }
    }
}

/// One subscriber's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// Items delivered.
    pub items: u64,
    /// Bytes delivered in items.
    pub bytes: u64,
    /// Gaps delivered.
    pub gaps: u64,
    /// Bytes reported lost in gaps.
    pub gap_bytes: u64,
    /// Resyncs delivered.
    pub resyncs: u64,
    /// Bytes delivered twice (measured against the position; 0 by construction).
    pub duplicates_delivered: u64,
}

/// How a poll may wait.
#[derive(Clone, Copy)]
pub(crate) enum Wait<'a> {
    /// Not at all.
    No,
    /// On the data condition variable, until the deadline if any.
    Park(Option<Instant>),
    /// Leave this waker and return [`Event::Empty`].
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    Waker(&'a Waker),
}

impl Attach<Live> {
    /// The next event without waiting: [`Event::Empty`] if nothing is new.
    pub fn try_next(&mut self) -> Event {
        self.poll(Wait::No)
    }

    /// The next event, waiting as long as it takes. Never [`Event::Empty`].
    ///
    /// With nothing to take, it yields the CPU once and looks again before it parks, so that
    /// a producer in full flow hands over a batch rather than one wake-up per chunk.
    pub fn next_blocking(&mut self) -> Event {
        self.poll(Wait::Park(None))
    }

    /// The next event, waiting at most `timeout`: [`Event::Empty`] if nothing came.
    pub fn next_timeout(&mut self, timeout: Duration) -> Event {
        self.poll(Wait::Park(Some(Instant::now() + timeout)))
    }

    /// Where the consumer stands: the epoch and the offset of the next byte it expects.
    /// After a detach, [`Attach::resume`] from here gets the exact suffix if it is retained.
    pub fn position(&self) -> Position {
        self.phase.position
    }

    /// This subscriber's policy.
    pub fn policy(&self) -> Policy {
        self.phase.reg.options.policy
    }

    /// Bytes emitted that this subscriber has not been delivered yet.
    pub fn lag_bytes(&self) -> u64 {
        let stats = &self.phase.reg.shared.stats;
        let (epoch, head) = (
            stats.epoch.load(StdOrdering::Relaxed),
            stats.head.load(StdOrdering::Relaxed),
        );
        if epoch == self.phase.position.epoch {
            head.saturating_sub(self.phase.position.next)
        } else {
            head
        }
    }

    /// This subscriber's counters.
    pub fn stats(&self) -> SubscriberStats {
        self.phase.stats
    }

    /// Detaches and returns the position to resume from later.
    pub fn detach(mut self) -> Position {
        self.phase.reg.detach();
        self.phase.position
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn is_finished(&self) -> bool {
        self.phase.finished.is_some()
    }

    pub(crate) fn poll(&mut self, mut wait: Wait<'_>) -> Event {
        let live = &mut self.phase;
        if let Some(item) = live.local.pop_front() {
            return live.deliver(item);
        }
        if let Some(reason) = live.finished {
            return Event::Closed(reason);
        }
        let shared = Arc::clone(&live.reg.shared);
        let Some(key) = live.reg.key else {
            return live.finish(CloseReason::Finished);
        };
        let options = live.reg.options;
        live.flush();
        #[cfg(not(feature = "loom"))]
        let mut yielded = false;
        let mut ring = shared.ring.lock();
        loop {
            match ring.fill(key, options.read_ahead, &mut live.local) {
                Fill::Took { wake_producer } => {
                    if wake_producer {
                        shared.wake_producer(ring);
                    } else {
                        drop(ring);
                    }
                    let item = live.local.pop_front().expect("a fill took items");
                    return live.deliver(item);
                }
                Fill::Lagged { from, to } => match options.policy {
                    Policy::Gap => {
                        ring.skip_to_tail(key);
                        drop(ring);
                        return live.gap(from, to);
                    }
                    Policy::Disconnect => {
                        drop(ring);
                        live.reg.detach();
                        Stats::add(&shared.stats.disconnects, 1);
                        return live.finish(CloseReason::Overrun { at: from, tail: to });
                    }
                    // A blocking subscriber only lags if it resumed into a chunk the producer
                    // was already evicting; it converges like the default.
                    Policy::Resync | Policy::Block => {
                        drop(ring);
                        return live.resync(&shared, key);
                    }
                },
                Fill::EpochChanged => {
                    drop(ring);
                    return live.resync(&shared, key);
                }
                Fill::Closed => {
                    drop(ring);
                    return live.finish(CloseReason::Finished);
                }
                Fill::Empty => match wait {
                    Wait::No => return Event::Empty,
                    Wait::Waker(waker) => {
                        ring.park_waker(key, waker);
                        return Event::Empty;
                    }
                    Wait::Park(deadline) => {
                        #[cfg(feature = "loom")]
                        if shared.has_fault(crate::hub::Fault::LostWakeup) {
                            // The bug under test: the check above and the park below are
                            // separate critical sections, so an emit in between is missed.
                            drop(ring);
                            ring = shared.ring.lock();
                            ring.data_waiters += 1;
                            shared.data.wait(&mut ring);
                            ring.data_waiters -= 1;
                            continue;
                        }
                        #[cfg(not(feature = "loom"))]
                        if !yielded {
                            // Give the CPU away once before parking: a producer in full flow
                            // then appends a batch, and this subscriber takes it in one visit
                            // instead of being woken once per chunk (which, with more threads
                            // than cores, starves the producer).
                            yielded = true;
                            drop(ring);
                            std::thread::yield_now();
                            ring = shared.ring.lock();
                            continue;
                        }
                        ring.data_waiters += 1;
                        let timed_out = match deadline {
                            None => {
                                shared.data.wait(&mut ring);
                                false
                            }
                            Some(d) => shared.data.wait_until(&mut ring, d),
                        };
                        ring.data_waiters -= 1;
                        if timed_out {
                            // One last look, then report nothing.
                            wait = Wait::No;
                        }
                    }
                },
            }
        }
    }
}

impl Live {
    fn deliver(&mut self, item: Item) -> Event {
        let stats = &self.reg.shared.stats;
        let len = item.bytes.len() as u64;
        if item.epoch == self.position.epoch {
            if item.offset < self.position.next {
                let dup = (self.position.next - item.offset).min(len);
                self.stats.duplicates_delivered += dup;
                Stats::add(&stats.duplicates_delivered, dup);
            } else if item.offset > self.position.next {
                Stats::add(&stats.unannounced_gaps, 1);
            }
        } else {
            Stats::add(&stats.unannounced_gaps, 1);
        }
        self.position = Position {
            epoch: item.epoch,
            next: item.end(),
        };
        self.stats.items += 1;
        self.stats.bytes += len;
        self.unflushed += len;
        Event::Item(item)
    }

    fn flush(&mut self) {
        if self.unflushed > 0 {
            Stats::add(&self.reg.shared.stats.delivered_bytes, self.unflushed);
            self.unflushed = 0;
        }
    }

    fn gap(&mut self, from: u64, to: u64) -> Event {
        self.position.next = to;
        self.stats.gaps += 1;
        self.stats.gap_bytes += to - from;
        let stats = &self.reg.shared.stats;
        Stats::add(&stats.gaps, 1);
        Stats::add(&stats.gap_bytes, to - from);
        Event::Gap { from, to }
    }

    fn resync(&mut self, shared: &Arc<Shared>, key: usize) -> Event {
        let snapshot = shared.resync(key);
        self.position = snapshot.position();
        self.stats.resyncs += 1;
        Event::Resync(History::new(snapshot, std::sync::Arc::clone(&shared.stats)))
    }

    fn finish(&mut self, reason: CloseReason) -> Event {
        self.finished = Some(reason);
        Event::Closed(reason)
    }
}
