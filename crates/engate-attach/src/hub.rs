//! The hub: one shared ring of reference-counted chunks, a cursor per subscriber, and the
//! fence that makes an attach exactly-once.
//!
//! Every emitted chunk gets the absolute offset of its first byte within the producer's epoch.
//! The ring keeps the newest chunks under a byte budget; a subscriber is a cursor into it (an
//! offset and the ring sequence number of the chunk that holds it), so fan-out costs one
//! reference-count increment per chunk per subscriber and no copies.
//!
//! Two locks, always taken in this order:
//!
//! - the **fence** guards the snapshot provider together with the epoch and the head offset.
//!   Emitting holds it from before the append until the provider has been fed; attaching takes
//!   the snapshot and registers the cursor while holding it. So a snapshot stamped `at` and a
//!   cursor starting at `at` are one atomic step, and live delivery starts exactly where the
//!   snapshot ends: no byte twice, none missed.
//! - the **ring** guards the chunks and the cursors. Emitting appends under it and releases it
//!   before feeding the provider; subscribers take chunks under it alone, so they never wait
//!   for the provider (a terminal parser can be slow).
//!
//! A subscriber that falls behind the ring's tail is handled lazily, on its next poll, by its
//! [`Policy`]; the producer never scans subscribers except the few with [`Policy::Block`],
//! whose cursors it must not overrun. It checks them in the same ring critical section as the
//! append, and waits for them with the fence released (nothing appended or fed yet), so
//! attaches go on while an authority subscriber is slow. Once waiting, it resumes when half
//! the ring is free again, not at every chunk.
//!
//! The producer releases the fence with a fair unlock: an attach waiting for it gets it next,
//! so a producer emitting in a tight loop cannot starve attaches.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering as StdOrdering};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::attach::{Attach, Item, Spawned};
use crate::config::{AttachOptions, ConfigError, HubConfig, Policy};
use crate::snapshot::{Position, Snapshot, SnapshotKind, SnapshotProvider};
use crate::sync::{Arc, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering, unlock_fair};

/// Counters of the hub's life. Plain atomics: they order nothing.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) head: AtomicU64,
    pub(crate) epoch: AtomicU64,
    pub(crate) attaches: AtomicU64,
    pub(crate) resumes_exact: AtomicU64,
    pub(crate) resumes_refused: AtomicU64,
    pub(crate) attach_ns_total: AtomicU64,
    pub(crate) attach_ns_max: AtomicU64,
    pub(crate) attach_ns_last: AtomicU64,
    pub(crate) delivered_bytes: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) gap_bytes: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) duplicates_delivered: AtomicU64,
    pub(crate) unannounced_gaps: AtomicU64,
    pub(crate) unreplayed_histories: AtomicU64,
    pub(crate) producer_waits: AtomicU64,
    pub(crate) producer_wait_ns: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, StdOrdering::Relaxed);
    }
}

/// A point-in-time reading of a hub's state and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// The current epoch.
    pub epoch: u64,
    /// Offset of the next byte to be emitted (bytes emitted in this epoch).
    pub head: u64,
    /// Offset of the oldest retained byte.
    pub tail: u64,
    /// Payload bytes retained in the ring.
    pub retained_bytes: usize,
    /// Chunks retained in the ring.
    pub retained_chunks: usize,
    /// Subscribers attached now.
    pub subscribers: usize,
    /// The largest distance, in bytes, between the head and a subscriber's cursor in the ring.
    pub max_lag_bytes: u64,
    /// Chunks emitted over the hub's life.
    pub emitted_chunks: u64,
    /// Bytes emitted over the hub's life (all epochs).
    pub emitted_bytes: u64,
    /// Bytes dropped from the ring to stay within the budget.
    pub evicted_bytes: u64,
    /// Attaches completed (fresh and resumed).
    pub attaches: u64,
    /// Resumes that got the exact suffix.
    pub resumes_exact: u64,
    /// Resumes that got a snapshot instead (other epoch, or suffix no longer retained).
    pub resumes_refused: u64,
    /// Mean time to attach (fence, snapshot, cursor registration).
    pub attach_latency_mean: Duration,
    /// Longest time to attach.
    pub attach_latency_max: Duration,
    /// Time the latest attach took.
    pub attach_latency_last: Duration,
    /// Bytes delivered as live items to all subscribers (a live subscriber adds its count at
    /// each visit to the ring, so this trails by at most one read-ahead batch each).
    pub delivered_bytes: u64,
    /// [`Event::Gap`](crate::Event::Gap)s delivered.
    pub gaps: u64,
    /// Bytes reported lost in gaps.
    pub gap_bytes: u64,
    /// [`Event::Resync`](crate::Event::Resync)s delivered.
    pub resyncs: u64,
    /// Subscribers ended by [`Policy::Disconnect`].
    pub disconnects: u64,
    /// Bytes delivered twice to a subscriber. The fence makes this 0; it is measured, at every
    /// delivery, against the subscriber's position.
    pub duplicates_delivered: u64,
    /// Items that skipped bytes without a Gap or Resync announcing it. Measured; must be 0.
    pub unannounced_gaps: u64,
    /// [`History`](crate::History) values dropped without being replayed (consumer bugs).
    pub unreplayed_histories: u64,
    /// Times the producer waited for a [`Policy::Block`] subscriber.
    pub producer_waits: u64,
    /// Total time the producer waited for [`Policy::Block`] subscribers.
    pub producer_wait: Duration,
}

/// A retained chunk: its offset and its bytes.
#[derive(Debug)]
struct Stored {
    offset: u64,
    bytes: Bytes,
}

impl Stored {
    fn end(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }
}

/// A subscriber's shared state: its cursor into the ring.
#[derive(Debug)]
struct Entry {
    /// Offset of the next byte to take from the ring.
    cursor: u64,
    /// Ring sequence number of the chunk holding `cursor` (or of the next chunk to come).
    seq: u64,
    epoch: u64,
    policy: Policy,
    waker: Option<Waker>,
}

/// What the snapshot side of the hub knows, guarded by the fence.
pub(crate) struct Fence {
    provider: Box<dyn SnapshotProvider>,
    kind: SnapshotKind,
    epoch: u64,
    head: u64,
    tail: u64,
    scratch_hint: usize,
}

/// The chunks and the cursors, guarded by the ring lock.
#[derive(Debug)]
pub(crate) struct Ring {
    epoch: u64,
    head: u64,
    tail: u64,
    retained: usize,
    chunks: VecDeque<Stored>,
    /// Sequence number of `chunks[0]`.
    first_seq: u64,
    closed: bool,
    subs: Vec<Option<Entry>>,
    free: Vec<usize>,
    live_subs: usize,
    blocking_keys: Vec<usize>,
    /// Subscribers parked on the data condition variable.
    pub(crate) data_waiters: usize,
    /// Keys of subscribers that left an async waker.
    wake_list: Vec<usize>,
    producer_waiting: bool,
    /// A blocking subscriber crossing this offset wakes the waiting producer.
    space_wanted: u64,
    /// Woken (once) when the producer may emit again after a refused
    /// [`Producer::try_emit_or_wake`].
    producer_waker: Option<Waker>,
    emitted_chunks: u64,
    emitted_bytes: u64,
    evicted_bytes: u64,
}

/// What a visit to the ring gave a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Items were appended; `wake_producer` if this subscriber unblocked the producer.
    Took { wake_producer: bool },
    /// The ring no longer holds the cursor: `from` is the cursor, `to` the ring's tail.
    Lagged { from: u64, to: u64 },
    /// The producer started a new epoch.
    EpochChanged,
    /// Nothing new yet.
    Empty,
    /// Nothing new, ever: the producer closed.
    Closed,
}

impl Ring {
    fn entry(&self, key: usize) -> &Entry {
        self.subs[key]
            .as_ref()
            .expect("a registered key names an entry")
    }

    /// Index into `chunks` of the chunk holding `offset` (which is within `tail..head`).
    fn index_of(&self, offset: u64) -> usize {
        self.chunks.partition_point(|c| c.end() <= offset)
    }

    /// How many chunks must go to append `len` bytes, and the tail after that.
    fn eviction_for(&self, len: usize, config: &HubConfig) -> (usize, u64) {
        let n = self.chunks.len();
        let mut retained = self.retained;
        let mut count = 0;
        while count < n
            && (retained + len > config.budget_bytes || n - count + 1 > config.max_chunks)
        {
            retained -= self.chunks[count].bytes.len();
            count += 1;
        }
        let tail = self.chunks.get(count).map_or(self.head, |c| c.offset);
        (count, tail)
    }

    fn min_blocking_cursor(&self) -> Option<u64> {
        self.blocking_keys
            .iter()
            .map(|&k| self.entry(k))
            .filter(|e| e.epoch == self.epoch)
            .map(|e| e.cursor)
            .min()
    }

    /// If appending `len` bytes would evict bytes a blocking subscriber has not taken: the
    /// tail the append needs.
    fn blocked_by(&self, len: usize, config: &HubConfig) -> Option<u64> {
        let min = self.min_blocking_cursor()?;
        let (_, needed) = self.eviction_for(len, config);
        (min < needed).then_some(needed)
    }

    /// Takes up to `read_ahead` chunks for subscriber `key` into `out`.
    pub(crate) fn fill(&mut self, key: usize, read_ahead: usize, out: &mut VecDeque<Item>) -> Fill {
        let Ring {
            epoch,
            head,
            tail,
            chunks,
            first_seq,
            closed,
            subs,
            producer_waiting,
            space_wanted,
            ..
        } = self;
        let e = subs[key].as_mut().expect("a registered key names an entry");
        if e.epoch != *epoch {
            return Fill::EpochChanged;
        }
        if e.cursor < *tail {
            return Fill::Lagged {
                from: e.cursor,
                to: *tail,
            };
        }
        if e.cursor >= *head {
            return if *closed { Fill::Closed } else { Fill::Empty };
        }
        let mut idx = e.seq.wrapping_sub(*first_seq) as usize;
        let holds = |i: usize| {
            chunks
                .get(i)
                .is_some_and(|c| c.offset <= e.cursor && e.cursor < c.end())
        };
        if !holds(idx) {
            // Only a resume lands mid-ring without a hint; find the chunk.
            idx = chunks.partition_point(|c| c.end() <= e.cursor);
        }
        let before = e.cursor;
        let mut taken = 0;
        while taken < read_ahead {
            let Some(c) = chunks.get(idx) else { break };
            let skip = (e.cursor - c.offset) as usize;
            let bytes = if skip == 0 {
                c.bytes.clone()
            } else {
                c.bytes.slice(skip..)
            };
            out.push_back(Item {
                epoch: *epoch,
                offset: e.cursor,
                bytes,
            });
            e.cursor = c.end();
            idx += 1;
            taken += 1;
        }
        e.seq = *first_seq + idx as u64;
        let wake_producer = *producer_waiting
            && e.policy == Policy::Block
            && before < *space_wanted
            && e.cursor >= *space_wanted;
        Fill::Took { wake_producer }
    }

    /// Applies [`Policy::Gap`]: the cursor jumps to the tail.
    pub(crate) fn skip_to_tail(&mut self, key: usize) {
        let (tail, seq) = (self.tail, self.first_seq);
        let e = self.subs[key]
            .as_mut()
            .expect("a registered key names an entry");
        e.cursor = tail;
        e.seq = seq;
    }

    /// Leaves an async waker for subscriber `key`, woken by the next emit or close.
    pub(crate) fn park_waker(&mut self, key: usize, waker: &Waker) {
        let e = self.subs[key]
            .as_mut()
            .expect("a registered key names an entry");
        match &e.waker {
            Some(w) if w.will_wake(waker) => {}
            Some(_) => e.waker = Some(waker.clone()),
            None => {
                e.waker = Some(waker.clone());
                self.wake_list.push(key);
            }
        }
    }

    fn take_wakers(&mut self, all: bool, out: &mut Vec<Waker>) {
        let Ring {
            subs, wake_list, ..
        } = self;
        if all {
            out.extend(subs.iter_mut().flatten().filter_map(|e| e.waker.take()));
            wake_list.clear();
        } else {
            for key in wake_list.drain(..) {
                if let Some(Some(e)) = subs.get_mut(key) {
                    out.extend(e.waker.take());
                }
            }
        }
    }

    fn insert(&mut self, entry: Entry) -> usize {
        self.live_subs += 1;
        match self.free.pop() {
            Some(key) => {
                self.subs[key] = Some(entry);
                key
            }
            None => {
                self.subs.push(Some(entry));
                self.subs.len() - 1
            }
        }
    }
}

/// Which wrong attach shape a loom negative control uses.
#[cfg(feature = "loom")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnfencedOrder {
    /// Register the cursor, then take the snapshot in a separate critical section.
    SubscribeThenSnapshot,
    /// Take the snapshot, then register the cursor in a separate critical section.
    SnapshotThenSubscribe,
}

/// Deliberate protocol bugs for the loom suite's negative controls.
#[cfg(feature = "loom")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// A blocking poll checks for data and parks in two critical sections.
    LostWakeup = 1,
    /// Detaching a blocking subscriber does not wake a waiting producer.
    DetachWithoutNotify = 2,
    /// A blocking subscriber that frees room does not wake a producer's waker.
    FillWithoutWaker = 4,
}

/// Everything the producer, the hub handles and the subscribers share.
pub(crate) struct Shared {
    pub(crate) fence: Mutex<Fence>,
    pub(crate) ring: Mutex<Ring>,
    /// Subscribers waiting for data park here (with the ring lock).
    pub(crate) data: Condvar,
    /// The producer waiting for a blocking subscriber parks here (with the ring lock).
    pub(crate) space: Condvar,
    /// Subscribers with [`Policy::Block`]. Raised only under the fence, so a producer holding
    /// the fence that reads zero may skip the overrun check.
    blocking: AtomicUsize,
    pub(crate) config: HubConfig,
    pub(crate) stats: std::sync::Arc<Stats>,
    #[cfg(feature = "loom")]
    faults: std::sync::atomic::AtomicU8,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether a resume got the exact suffix, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttachOutcome {
    /// A fresh attach: a snapshot, then live items from its `at`.
    Fresh,
    /// The resume position was retained: no snapshot, the exact suffix follows.
    Resumed,
    /// The resume position is from another epoch: a snapshot of the current one follows.
    EpochChanged {
        /// The epoch the client asked for.
        asked: u64,
        /// The producer's epoch now.
        current: u64,
    },
    /// The ring no longer holds the resume position: a snapshot follows.
    Evicted {
        /// The offset the client asked for.
        next: u64,
        /// The oldest offset still retained.
        tail: u64,
    },
    /// The resume position is beyond anything emitted in this epoch: a snapshot follows.
    Ahead {
        /// The offset the client asked for.
        next: u64,
        /// The next offset the producer will emit.
        head: u64,
    },
}

/// A successful registration: the subscriber's key, the snapshot it starts from.
pub(crate) struct Registered {
    pub(crate) key: usize,
    pub(crate) snapshot: Snapshot,
    pub(crate) outcome: AttachOutcome,
}

/// Why an attach was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The hub already has `max_subscribers` subscribers.
    #[error(
        "the hub already has {limit} subscribers (config key `max_subscribers`); detach one or raise the limit"
    )]
    TooManySubscribers {
        /// The configured limit.
        limit: usize,
    },
    /// The hub already has `max_blocking` subscribers with [`Policy::Block`].
    #[error(
        "the hub already has {limit} subscribers with Policy::Block (config key `max_blocking`); use another policy or raise the limit"
    )]
    TooManyBlocking {
        /// The configured limit.
        limit: usize,
    },
}

/// Why a chunk was not emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The chunk alone is larger than the ring's budget.
    #[error(
        "a chunk of {len} bytes exceeds the hub's budget of {budget} bytes (config key `budget_bytes`); split it or raise the budget"
    )]
    ChunkTooLarge {
        /// The chunk's length.
        len: usize,
        /// The configured budget.
        budget: usize,
    },
    /// (`try_emit` only) a [`Policy::Block`] subscriber has not yet taken the bytes the chunk
    /// would evict.
    #[error(
        "a blocking subscriber has not taken the bytes before offset {needed_tail}; the chunk of {len} bytes would evict them"
    )]
    WouldBlock {
        /// The chunk's length.
        len: usize,
        /// The tail the append needs the slowest blocking subscriber to pass.
        needed_tail: u64,
    },
}

fn random_epoch() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// Creates a hub with `config` and `provider`: the single [`Producer`] that emits, and a
/// [`Hub`] handle (cloneable) that clients attach through.
pub fn channel(
    config: HubConfig,
    provider: impl SnapshotProvider,
) -> Result<(Producer, Hub), ConfigError> {
    config.validate()?;
    let epoch = config.epoch.unwrap_or_else(random_epoch);
    let stats = std::sync::Arc::new(Stats::default());
    stats.epoch.store(epoch, StdOrdering::Relaxed);
    let kind = provider.kind();
    let shared = Arc::new(Shared {
        fence: Mutex::new(Fence {
            provider: Box::new(provider),
            kind,
            epoch,
            head: 0,
            tail: 0,
            scratch_hint: 0,
        }),
        ring: Mutex::new(Ring {
            epoch,
            head: 0,
            tail: 0,
            retained: 0,
            chunks: VecDeque::new(),
            first_seq: 0,
            closed: false,
            subs: Vec::new(),
            free: Vec::new(),
            live_subs: 0,
            blocking_keys: Vec::new(),
            data_waiters: 0,
            wake_list: Vec::new(),
            producer_waiting: false,
            space_wanted: 0,
            producer_waker: None,
            emitted_chunks: 0,
            emitted_bytes: 0,
            evicted_bytes: 0,
        }),
        data: Condvar::new(),
        space: Condvar::new(),
        blocking: AtomicUsize::new(0),
        config,
        stats,
        #[cfg(feature = "loom")]
        faults: std::sync::atomic::AtomicU8::new(0),
    });
    let producer = Producer {
        shared: Arc::clone(&shared),
        epoch,
        head: 0,
        wakers: Vec::new(),
        closed: false,
    };
    Ok((producer, Hub { shared }))
}

impl Shared {
    /// Takes the provider's snapshot under the fence.
    fn snapshot_locked(fence: &mut Fence) -> Snapshot {
        let mut out = Vec::with_capacity(fence.scratch_hint);
        fence.provider.snapshot(&mut out);
        fence.scratch_hint = out.len();
        Snapshot::new(fence.epoch, fence.head, fence.kind, Bytes::from(out))
    }

    /// The fenced attach: decides between resume and snapshot, takes the snapshot and
    /// registers the cursor, all under the fence.
    pub(crate) fn register(
        &self,
        resume: Option<Position>,
        options: AttachOptions,
    ) -> Result<Registered, AttachError> {
        let started = Instant::now();
        let mut fence = self.fence.lock();
        let (epoch, head, tail) = (fence.epoch, fence.head, fence.tail);
        let outcome = match resume {
            None => AttachOutcome::Fresh,
            Some(p) if p.epoch != epoch => AttachOutcome::EpochChanged {
                asked: p.epoch,
                current: epoch,
            },
            Some(p) if p.next > head => AttachOutcome::Ahead { next: p.next, head },
            Some(p) if p.next < tail => AttachOutcome::Evicted { next: p.next, tail },
            Some(_) => AttachOutcome::Resumed,
        };
        let snapshot = match (outcome, resume) {
            (AttachOutcome::Resumed, Some(p)) => {
                Snapshot::new(epoch, p.next, SnapshotKind::Resume, Bytes::new())
            }
            _ => Self::snapshot_locked(&mut fence),
        };
        let mut ring = self.ring.lock();
        if ring.live_subs >= self.config.max_subscribers {
            return Err(AttachError::TooManySubscribers {
                limit: self.config.max_subscribers,
            });
        }
        if options.policy == Policy::Block && ring.blocking_keys.len() >= self.config.max_blocking {
            return Err(AttachError::TooManyBlocking {
                limit: self.config.max_blocking,
            });
        }
        let cursor = snapshot.at();
        let seq = if cursor == ring.head {
            ring.first_seq + ring.chunks.len() as u64
        } else {
            ring.first_seq + ring.index_of(cursor) as u64
        };
        let key = ring.insert(Entry {
            cursor,
            seq,
            epoch,
            policy: options.policy,
            waker: None,
        });
        if options.policy == Policy::Block {
            ring.blocking_keys.push(key);
            self.blocking.fetch_add(1, Ordering::AcqRel);
        }
        drop(ring);
        drop(fence);

        let stats = &self.stats;
        let ns = started.elapsed().as_nanos() as u64;
        Stats::add(&stats.attaches, 1);
        Stats::add(&stats.attach_ns_total, ns);
        stats.attach_ns_max.fetch_max(ns, StdOrdering::Relaxed);
        stats.attach_ns_last.store(ns, StdOrdering::Relaxed);
        match outcome {
            AttachOutcome::Fresh => {}
            AttachOutcome::Resumed => Stats::add(&stats.resumes_exact, 1),
            _ => Stats::add(&stats.resumes_refused, 1),
        }
        Ok(Registered {
            key,
            snapshot,
            outcome,
        })
    }

    /// A fresh fenced snapshot for a registered subscriber, whose cursor moves to its `at`.
    pub(crate) fn resync(&self, key: usize) -> Snapshot {
        let mut fence = self.fence.lock();
        let snapshot = Self::snapshot_locked(&mut fence);
        let mut ring = self.ring.lock();
        let seq = ring.first_seq + ring.chunks.len() as u64;
        let e = ring.subs[key]
            .as_mut()
            .expect("a registered key names an entry");
        e.cursor = snapshot.at();
        e.seq = seq;
        e.epoch = snapshot.epoch();
        drop(ring);
        drop(fence);
        Stats::add(&self.stats.resyncs, 1);
        snapshot
    }

    /// Removes subscriber `key`, waking a producer it may have been holding back.
    pub(crate) fn remove(&self, key: usize) {
        let mut ring = self.ring.lock();
        let Some(entry) = ring.subs[key].take() else {
            return;
        };
        ring.free.push(key);
        ring.live_subs -= 1;
        let mut wake_producer = false;
        if entry.policy == Policy::Block {
            ring.blocking_keys.retain(|&k| k != key);
            self.blocking.fetch_sub(1, Ordering::AcqRel);
            wake_producer = ring.producer_waiting;
        }
        #[cfg(feature = "loom")]
        if self.has_fault(Fault::DetachWithoutNotify) {
            wake_producer = false;
        }
        let waker = if wake_producer {
            ring.producer_waker.take()
        } else {
            None
        };
        drop(ring);
        if wake_producer {
            self.space.notify_all();
        }
        // Wakers run arbitrary code: never under a lock of ours.
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// A blocking subscriber crossed the offset the producer waits for (`Fill::Took`'s
    /// `wake_producer`): wakes it, whether it waits on the condition variable or left a
    /// waker. Takes the ring lock's guard and releases it first.
    pub(crate) fn wake_producer(&self, mut ring: MutexGuard<'_, Ring>) {
        #[cfg(feature = "loom")]
        let waker = if self.has_fault(Fault::FillWithoutWaker) {
            None
        } else {
            ring.producer_waker.take()
        };
        #[cfg(not(feature = "loom"))]
        let waker = ring.producer_waker.take();
        drop(ring);
        self.space.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn close(&self, wakers: &mut Vec<Waker>) {
        let fence = self.fence.lock();
        let mut ring = self.ring.lock();
        ring.closed = true;
        ring.take_wakers(true, wakers);
        drop(ring);
        drop(fence);
        self.data.notify_all();
        for w in wakers.drain(..) {
            w.wake();
        }
    }

    fn metrics(&self) -> Metrics {
        let ring = self.ring.lock();
        let max_lag_bytes = ring
            .subs
            .iter()
            .flatten()
            .map(|e| {
                if e.epoch == ring.epoch {
                    ring.head.saturating_sub(e.cursor)
                } else {
                    ring.head
                }
            })
            .max()
            .unwrap_or(0);
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(StdOrdering::Relaxed);
        let attaches = get(&s.attaches);
        Metrics {
            epoch: ring.epoch,
            head: ring.head,
            tail: ring.tail,
            retained_bytes: ring.retained,
            retained_chunks: ring.chunks.len(),
            subscribers: ring.live_subs,
            max_lag_bytes,
            emitted_chunks: ring.emitted_chunks,
            emitted_bytes: ring.emitted_bytes,
            evicted_bytes: ring.evicted_bytes,
            attaches,
            resumes_exact: get(&s.resumes_exact),
            resumes_refused: get(&s.resumes_refused),
            attach_latency_mean: Duration::from_nanos(
                get(&s.attach_ns_total).checked_div(attaches).unwrap_or(0),
            ),
            attach_latency_max: Duration::from_nanos(get(&s.attach_ns_max)),
            attach_latency_last: Duration::from_nanos(get(&s.attach_ns_last)),
            delivered_bytes: get(&s.delivered_bytes),
            gaps: get(&s.gaps),
            gap_bytes: get(&s.gap_bytes),
            resyncs: get(&s.resyncs),
            disconnects: get(&s.disconnects),
            duplicates_delivered: get(&s.duplicates_delivered),
            unannounced_gaps: get(&s.unannounced_gaps),
            unreplayed_histories: get(&s.unreplayed_histories),
            producer_waits: get(&s.producer_waits),
            producer_wait: Duration::from_nanos(get(&s.producer_wait_ns)),
        }
    }

    #[cfg(feature = "loom")]
    pub(crate) fn has_fault(&self, fault: Fault) -> bool {
        self.faults.load(StdOrdering::Relaxed) & fault as u8 != 0
    }

    /// The two wrong attach shapes, for the loom negative controls.
    #[cfg(feature = "loom")]
    fn register_unfenced(&self, order: UnfencedOrder) -> Registered {
        let register = |ring: &mut Ring| {
            let (cursor, epoch) = (ring.head, ring.epoch);
            let seq = ring.first_seq + ring.chunks.len() as u64;
            ring.insert(Entry {
                cursor,
                seq,
                epoch,
                policy: Policy::Resync,
                waker: None,
            })
        };
        let (key, snapshot) = match order {
            UnfencedOrder::SubscribeThenSnapshot => {
                let key = register(&mut self.ring.lock());
                let snapshot = Self::snapshot_locked(&mut self.fence.lock());
                (key, snapshot)
            }
            UnfencedOrder::SnapshotThenSubscribe => {
                let snapshot = Self::snapshot_locked(&mut self.fence.lock());
                let key = register(&mut self.ring.lock());
                (key, snapshot)
            }
        };
        Registered {
            key,
            snapshot,
            outcome: AttachOutcome::Fresh,
        }
    }
}

/// The attach point of a hub: cheap to clone, one per server thread or client handler.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// Starts an attach with the default [`AttachOptions`] (policy [`Policy::Resync`]).
    pub fn attach(&self) -> Attach<Spawned> {
        self.attach_with(AttachOptions::default())
    }

    /// Starts an attach with `options`.
    pub fn attach_with(&self, options: AttachOptions) -> Attach<Spawned> {
        Attach::spawned(Arc::clone(&self.shared), options)
    }

    /// The hub's state and counters now.
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics()
    }

    /// The current epoch and head offset (the position a fresh attach would start at).
    pub fn position(&self) -> Position {
        let fence = self.shared.fence.lock();
        Position {
            epoch: fence.epoch,
            next: fence.head,
        }
    }

    /// Tells the snapshot provider the terminal behind the stream changed size (see
    /// [`SnapshotProvider::resize`](crate::SnapshotProvider::resize)), under the fence: the
    /// bytes emitted from now on are laid out at the new size. Call it before the program
    /// learns the new size (before `TIOCSWINSZ`), so its redraw is parsed at that size.
    pub fn resize_provider(&self, rows: u16, cols: u16) {
        self.shared.fence.lock().provider.resize(rows, cols);
    }

    /// Whether the producer has closed the stream.
    pub fn is_closed(&self) -> bool {
        self.shared.ring.lock().closed
    }

    /// Attaches with a deliberately wrong, unfenced shape (loom negative controls only).
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn attach_unfenced(&self, order: UnfencedOrder) -> Attach<crate::attach::Subscribed> {
        let registered = self.shared.register_unfenced(order);
        Attach::subscribed(
            Arc::clone(&self.shared),
            AttachOptions::default(),
            registered,
        )
    }

    /// Turns on a deliberate protocol bug (loom negative controls only).
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) {
        self.shared
            .faults
            .fetch_or(fault as u8, StdOrdering::Relaxed);
    }
}

/// The single writer of a hub. Dropping it closes the stream: subscribers drain what is
/// retained and then see [`Event::Closed`](crate::Event::Closed).
pub struct Producer {
    shared: Arc<Shared>,
    epoch: u64,
    head: u64,
    /// Wakers collected under the ring lock and woken after it; reused, so steady-state emits
    /// allocate nothing.
    wakers: Vec<Waker>,
    closed: bool,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("epoch", &self.epoch)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Appends `bytes` to the stream and returns the offset of its first byte.
    ///
    /// Waits only if a [`Policy::Block`] subscriber has not yet taken the bytes the append
    /// would evict (with the fence released, so attaches go on meanwhile). An empty chunk is
    /// a no-op.
    pub fn emit(&mut self, bytes: impl Into<Bytes>) -> Result<u64, EmitError> {
        self.emit_inner(bytes.into(), true, None)
    }

    /// Like [`emit`](Self::emit) but fails with [`EmitError::WouldBlock`] instead of waiting.
    pub fn try_emit(&mut self, bytes: impl Into<Bytes>) -> Result<u64, EmitError> {
        self.emit_inner(bytes.into(), false, None)
    }

    /// Like [`try_emit`](Self::try_emit), and when it fails with
    /// [`EmitError::WouldBlock`] it leaves `waker`, woken once the [`Policy::Block`]
    /// subscribers have freed room (about half the ring, as [`emit`](Self::emit) waits for) or
    /// one of them has left: try again then. A producer that waits on other things too (a
    /// poll loop, an executor) is held back without a timer. Only the last waker left is
    /// kept.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::task::{Wake, Waker};
    /// use engate_attach::{AttachOptions, EmitError, Event, HubConfig, Policy, TailProvider, channel};
    ///
    /// struct Flag(AtomicBool);
    /// impl Wake for Flag {
    ///     fn wake(self: Arc<Self>) {
    ///         self.0.store(true, Ordering::SeqCst);
    ///     }
    /// }
    /// let (mut producer, hub) = channel(HubConfig::new().budget_bytes(4), TailProvider::new(4))?;
    /// let options = AttachOptions::new().policy(Policy::Block);
    /// let (synced, ()) = hub.attach_with(options).subscribe()?.replay(|_| ());
    /// let mut authority = synced.live();
    /// let flag = Arc::new(Flag(AtomicBool::new(false)));
    /// let waker = Waker::from(Arc::clone(&flag));
    /// producer.try_emit_or_wake(&b"abcd"[..], &waker)?;
    /// // The ring is full and the authority has taken nothing: refused, the waker is left.
    /// let refused = producer.try_emit_or_wake(&b"e"[..], &waker);
    /// assert!(matches!(refused, Err(EmitError::WouldBlock { .. })));
    /// assert!(matches!(authority.try_next(), Event::Item(_)));
    /// assert!(flag.0.load(Ordering::SeqCst), "room freed: the waker was woken");
    /// producer.try_emit_or_wake(&b"e"[..], &waker)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_emit_or_wake(
        &mut self,
        bytes: impl Into<Bytes>,
        waker: &Waker,
    ) -> Result<u64, EmitError> {
        self.emit_inner(bytes.into(), false, Some(waker))
    }

    fn emit_inner(
        &mut self,
        bytes: Bytes,
        may_wait: bool,
        waker: Option<&Waker>,
    ) -> Result<u64, EmitError> {
        let len = bytes.len();
        let offset = self.head;
        if len == 0 {
            return Ok(offset);
        }
        let shared = &*self.shared;
        let config = &shared.config;
        if len > config.budget_bytes {
            return Err(EmitError::ChunkTooLarge {
                len,
                budget: config.budget_bytes,
            });
        }
        let mut waited: Option<Instant> = None;
        loop {
            let fence = shared.fence.lock();
            let mut ring = shared.ring.lock();
            // Raised only under the fence, which we hold: zero means no cursor to protect.
            if shared.blocking.load(Ordering::Acquire) > 0
                && let Some(needed_tail) = ring.blocked_by(len, config)
            {
                // Wait with the fence released: attaches must not queue behind a slow
                // authority. Nothing was appended or fed yet, so the fence's invariant holds.
                drop(fence);
                if !may_wait {
                    if let Some(waker) = waker {
                        // Under the ring lock, as a waiting producer's wish: a subscriber that
                        // frees the room afterwards sees it and wakes the waker.
                        let slack = (len + config.budget_bytes / 2).min(config.budget_bytes);
                        let (_, with_slack) = ring.eviction_for(slack, config);
                        ring.space_wanted = with_slack.max(needed_tail);
                        ring.producer_waiting = true;
                        ring.producer_waker = Some(waker.clone());
                    }
                    return Err(EmitError::WouldBlock { len, needed_tail });
                }
                waited.get_or_insert_with(Instant::now);
                Stats::add(&shared.stats.producer_waits, 1);
                while let Some(needed) = ring.blocked_by(len, config) {
                    // Wait until half the ring is free again: one hand-over per half ring
                    // instead of one per chunk, which matters when threads outnumber cores.
                    let slack = (len + config.budget_bytes / 2).min(config.budget_bytes);
                    let (_, with_slack) = ring.eviction_for(slack, config);
                    ring.space_wanted = with_slack.max(needed);
                    ring.producer_waiting = true;
                    shared.space.wait(&mut ring);
                }
                ring.producer_waiting = false;
                continue;
            }
            if ring.producer_waker.take().is_some() {
                // A waker left by an earlier refusal: this producer is not waiting any more.
                ring.producer_waiting = false;
            }
            append(shared, &mut self.wakers, fence, ring, bytes);
            self.head += len as u64;
            shared.stats.head.store(self.head, StdOrdering::Relaxed);
            break;
        }
        if let Some(t) = waited {
            Stats::add(
                &shared.stats.producer_wait_ns,
                t.elapsed().as_nanos() as u64,
            );
        }
        Ok(offset)
    }

    /// The producer's epoch and the offset its next byte will get.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            next: self.head,
        }
    }

    /// Starts a new incarnation (the program behind the stream was restarted): offsets start
    /// again at 0, the ring and the provider are cleared, and every subscriber gets a
    /// [`Event::Resync`](crate::Event::Resync) of the new epoch. Returns the new epoch.
    pub fn restart(&mut self) -> u64 {
        let shared = &*self.shared;
        let mut fence = shared.fence.lock();
        fence.provider.reset();
        let epoch = fence.epoch.wrapping_add(1).max(1);
        fence.epoch = epoch;
        fence.head = 0;
        fence.tail = 0;
        let mut ring = shared.ring.lock();
        ring.first_seq += ring.chunks.len() as u64;
        ring.chunks.clear();
        ring.retained = 0;
        ring.epoch = epoch;
        ring.head = 0;
        ring.tail = 0;
        ring.take_wakers(true, &mut self.wakers);
        drop(ring);
        drop(fence);
        shared.data.notify_all();
        for w in self.wakers.drain(..) {
            w.wake();
        }
        shared.stats.epoch.store(epoch, StdOrdering::Relaxed);
        shared.stats.head.store(0, StdOrdering::Relaxed);
        self.epoch = epoch;
        self.head = 0;
        epoch
    }

    /// A handle to attach through.
    pub fn hub(&self) -> Hub {
        Hub {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Closes the stream (the same as dropping the producer).
    pub fn close(mut self) {
        self.close_once();
    }

    fn close_once(&mut self) {
        if !self.closed {
            self.closed = true;
            self.shared.close(&mut self.wakers);
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.close_once();
    }
}

/// Appends `bytes` to the ring, then feeds the provider, with the fence held throughout:
/// subscribers see the chunk as soon as the ring lock is released, while an attach (which
/// needs the fence) sees the provider and the ring only once they agree again.
fn append(
    shared: &Shared,
    wakers: &mut Vec<Waker>,
    mut fence: MutexGuard<'_, Fence>,
    mut ring: MutexGuard<'_, Ring>,
    bytes: Bytes,
) {
    let len = bytes.len();
    let offset = ring.head;
    let (count, _) = ring.eviction_for(len, &shared.config);
    let mut evicted = 0;
    for _ in 0..count {
        let c = ring.chunks.pop_front().expect("counted chunks exist");
        evicted += c.bytes.len();
    }
    ring.retained -= evicted;
    ring.evicted_bytes += evicted as u64;
    ring.first_seq += count as u64;
    ring.chunks.push_back(Stored {
        offset,
        bytes: bytes.clone(),
    });
    ring.retained += len;
    ring.head += len as u64;
    ring.emitted_chunks += 1;
    ring.emitted_bytes += len as u64;
    ring.tail = ring.chunks.front().map_or(ring.head, |c| c.offset);
    fence.head = ring.head;
    fence.tail = ring.tail;
    let wake_sync = ring.data_waiters > 0;
    ring.take_wakers(false, wakers);
    drop(ring);
    if wake_sync {
        shared.data.notify_all();
    }
    fence.provider.feed(&bytes);
    unlock_fair(fence);
    // Wakers run arbitrary code: never under a lock of ours.
    for w in wakers.drain(..) {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::TailProvider;

    fn ring_state(hub: &Hub) -> (u64, u64, usize, usize) {
        let r = hub.shared.ring.lock();
        (r.head, r.tail, r.retained, r.chunks.len())
    }

    #[test]
    fn ring_stays_within_budget_and_chunk_limit() {
        let config = HubConfig::new().budget_bytes(10).max_chunks(3).epoch(5);
        let (mut p, hub) = channel(config, TailProvider::new(4)).expect("config");
        for (i, n) in [4usize, 4, 1, 1, 3, 10, 2].into_iter().enumerate() {
            let offset = p.emit(vec![i as u8; n]).expect("fits");
            let (head, tail, retained, chunks) = ring_state(&hub);
            assert_eq!(head, offset + n as u64);
            assert!(
                retained <= 10 && chunks <= 3,
                "{retained} bytes in {chunks} chunks"
            );
            assert_eq!(
                head - tail,
                retained as u64,
                "tail..head is what is retained"
            );
        }
        let m = hub.metrics();
        assert_eq!(m.emitted_bytes, 25);
        assert_eq!(m.evicted_bytes, 25 - m.retained_bytes as u64);
    }

    #[test]
    fn oversized_and_empty_chunks() {
        let (mut p, hub) = channel(HubConfig::new().budget_bytes(8), TailProvider::new(4)).unwrap();
        let err = p.emit(vec![0u8; 9]).unwrap_err();
        assert_eq!(err, EmitError::ChunkTooLarge { len: 9, budget: 8 });
        assert!(err.to_string().contains("budget_bytes"), "{err}");
        assert_eq!(p.emit(Bytes::new()).unwrap(), 0);
        assert_eq!(hub.metrics().emitted_chunks, 0);
    }

    #[test]
    fn random_epochs_differ_and_are_nonzero() {
        let a = random_epoch();
        let b = random_epoch();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn restart_starts_a_new_epoch_at_offset_zero() {
        let (mut p, hub) = channel(HubConfig::new().epoch(41), TailProvider::new(8)).unwrap();
        p.emit(&b"abc"[..]).unwrap();
        let e = p.restart();
        assert_eq!(e, 42);
        assert_eq!(p.position(), Position { epoch: 42, next: 0 });
        assert_eq!(hub.position(), Position { epoch: 42, next: 0 });
        assert_eq!(ring_state(&hub), (0, 0, 0, 0));
    }
}
