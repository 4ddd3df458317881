//! Admission: reservations and the one admission loop.
//!
//! A request that fits is granted at once. One that does not joins the ledger's FIFO queue and
//! goes round a single loop — [`AdmissionManager::admission_turn`] — shared by the blocking
//! [`AdmissionManager::reserve`] (which sleeps on the ledger between turns) and
//! [`ReserveFuture`] (which returns `Pending` and is woken by the ledger's next event or the
//! timer thread): each turn collects a grant, or at the head of the queue evicts what can be
//! freed now, or decides the request is refused or timed out. Leaving the queue — by refusal,
//! timeout, unwinding or dropping the future — cancels the ticket and refunds any grant that
//! arrived meanwhile.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc as StdArc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::HeapSize;
use crate::entry::Entry;
use crate::error::{ReserveError, key_text};
use crate::ledger::{Grant, Ledger, LedgerSnapshot, Rejection, TicketPoll};

use super::{AdmissionManager, Shared};

/// A queued request re-plans its evictions at least this often while it waits, even without an
/// event (a reader's drop can race with the request being queued and miss its poke).
pub(crate) const REPLAN_INTERVAL: Duration = Duration::from_millis(20);

/// What to do when a request does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Fail at once with [`ReserveError::BudgetExceeded`] (after evicting, if that suffices).
    FailFast,
    /// Wait in the FIFO admission queue until `deadline`.
    Wait {
        /// When to give up with [`ReserveError::Timeout`].
        deadline: Instant,
    },
}

/// A request for memory: an estimate, an optional estimate class and what to do on overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Estimated bytes of the value to build.
    pub estimate: u64,
    /// A class whose learned multiplier scales the estimate (e.g. `"tree-index"`).
    pub class: Option<&'static str>,
    /// What to do if it does not fit.
    pub overflow: Overflow,
}

impl ReserveRequest {
    /// A fail-fast request for `estimate` bytes with no class.
    #[must_use]
    pub fn new(estimate: u64) -> Self {
        Self {
            estimate,
            class: None,
            overflow: Overflow::FailFast,
        }
    }

    /// Scales the estimate by `class`'s learned multiplier.
    #[must_use]
    pub fn class(mut self, class: &'static str) -> Self {
        self.class = Some(class);
        self
    }

    /// Waits in the admission queue for up to `timeout`.
    #[must_use]
    pub fn wait_for(self, timeout: Duration) -> Self {
        self.wait_until(Instant::now() + timeout)
    }

    /// Waits in the admission queue until `deadline`.
    #[must_use]
    pub fn wait_until(mut self, deadline: Instant) -> Self {
        self.overflow = Overflow::Wait { deadline };
        self
    }
}

/// Reserved headroom for one key's next version, refunded when dropped unless published.
///
/// Obtained from [`AdmissionManager::reserve`]; consumed by [`AdmissionManager::publish`].
#[must_use = "a reservation holds budget until it is published or dropped"]
pub struct Reservation<K, V> {
    pub(super) grant: Grant,
    pub(super) entry: StdArc<Entry<K, V>>,
    pub(super) manager: Weak<Shared<K, V>>,
    pub(super) estimate: u64,
    pub(super) class: Option<&'static str>,
    pub(super) initial: u64,
}

impl<K, V> fmt::Debug for Reservation<K, V>
where
    K: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.entry.key)
            .field("bytes", &self.grant.bytes())
            .field("estimate", &self.estimate)
            .field("class", &self.class)
            .finish()
    }
}

impl<K, V> Reservation<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    /// Bytes reserved.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.grant.bytes()
    }

    /// The key the reservation is for.
    #[must_use]
    pub fn key(&self) -> &K {
        &self.entry.key
    }

    /// Grows the reservation by `extra` bytes, as a new admission request (it queues, evicts
    /// and fails like one, but never evicts its own key). Waiting for growth while holding a
    /// reservation can wait on requests that are themselves waiting for this one's bytes: give
    /// it a deadline.
    ///
    /// # Errors
    ///
    /// As [`AdmissionManager::reserve`]; the reservation keeps what it had.
    pub fn grow(&mut self, extra: u64, overflow: Overflow) -> Result<(), ReserveError> {
        let Some(shared) = self.manager.upgrade() else {
            return Err(ReserveError::ManagerGone {
                key: key_text(&self.entry.key),
            });
        };
        let manager = AdmissionManager { shared };
        let more = manager.admit(&self.entry.key, extra, overflow)?;
        self.grant.absorb(more);
        Ok(())
    }

    /// Shrinks the reservation to `bytes`, crediting the rest at once.
    pub fn shrink_to(&mut self, bytes: u64) {
        self.grant.shrink_to(bytes);
    }
}

/// Where an admission step left a queued request.
pub(super) enum Step {
    Granted(Grant),
    Pending {
        ahead: usize,
        snapshot: LedgerSnapshot,
        events: u64,
    },
    Gone,
}

/// How admission started.
pub(super) enum Admission {
    /// Granted at once.
    Granted(Grant),
    /// Queued; see [`AdmissionManager::admission_turn`].
    Queued(Queued),
}

/// A request in the admission queue, as the loop carries it from turn to turn. Dropping it
/// leaves the queue (refunding a grant that arrived meanwhile).
pub(super) struct Queued {
    ticket: TicketGuard,
    id: u64,
    bytes: u64,
    overflow: Overflow,
    started: Instant,
    /// The ledger event count and time of the last eviction plan.
    planned: Option<(u64, Instant)>,
}

/// What one turn of the admission loop decided.
pub(super) enum Turn {
    /// Granted or refused.
    Done(Result<Grant, ReserveError>),
    /// Still queued: wait for a ledger event newer than `events`, or until `until` (a re-plan
    /// interval, or the `deadline`).
    Wait {
        events: u64,
        until: Instant,
        deadline: Instant,
    },
}

/// Leaves the queue if the waiting caller unwinds or gives up.
pub(super) struct TicketGuard {
    ledger: Ledger,
    ticket: Option<u64>,
}

impl TicketGuard {
    pub(super) fn cancel(&mut self) -> Option<Grant> {
        self.ticket
            .take()
            .and_then(|t| self.ledger.cancel_ticket(t))
    }

    pub(super) fn disarm(&mut self) {
        self.ticket = None;
    }
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        drop(self.cancel());
    }
}

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    // ----- admission -----

    pub(super) fn admissible_entry(&self, key: &K) -> Result<StdArc<Entry<K, V>>, ReserveError> {
        let entry = self
            .entry(key)
            .ok_or_else(|| ReserveError::NotRegistered { key: key_text(key) })?;
        if entry.cancelled.load(Ordering::Acquire) {
            return Err(ReserveError::Evicted { key: key_text(key) });
        }
        Ok(entry)
    }

    /// Reserves headroom for `key`'s next version.
    ///
    /// If the request does not fit, the least recently used unpinned entries that can be freed
    /// now are evicted — down to the low watermark if possible, and none at all if they would
    /// not be enough — and the request is then granted or refused authoritatively in one
    /// critical section of the ledger. With [`Overflow::Wait`] it waits in the FIFO admission
    /// queue (blocking this thread) until granted or the deadline passes.
    ///
    /// # Errors
    ///
    /// [`ReserveError`]: the key is not registered or was evicted, the request is larger than
    /// the whole budget, the budget is exhausted (fail fast), or the deadline passed. On error
    /// the ledger holds nothing for this request.
    pub fn reserve(
        &self,
        key: &K,
        request: ReserveRequest,
    ) -> Result<Reservation<K, V>, ReserveError> {
        let entry = self.admissible_entry(key)?;
        let bytes = self.scaled(&request);
        let grant = self.admit(key, bytes, request.overflow)?;
        Ok(self.reservation(grant, entry, &request, bytes))
    }

    /// [`Self::reserve`] as a future: waits in the same FIFO queue without blocking a thread.
    /// Dropping the future leaves the queue (refunding anything granted meanwhile). Works on
    /// any executor: deadlines are kept by the manager's timer thread.
    pub fn reserve_async(&self, key: &K, request: ReserveRequest) -> ReserveFuture<K, V> {
        ReserveFuture {
            manager: self.clone(),
            key: key.clone(),
            request,
            state: FutureState::Start,
        }
    }

    pub(super) fn reservation(
        &self,
        grant: Grant,
        entry: StdArc<Entry<K, V>>,
        request: &ReserveRequest,
        bytes: u64,
    ) -> Reservation<K, V> {
        Reservation {
            grant,
            entry,
            manager: StdArc::downgrade(&self.shared),
            estimate: request.estimate,
            class: request.class,
            initial: bytes,
        }
    }

    /// The part of admission before any waiting: an immediate grant, or a refusal that no
    /// amount of waiting changes. `Ok(None)` means the request should queue.
    pub(super) fn admit_now(
        &self,
        key: &K,
        bytes: u64,
        overflow: Overflow,
    ) -> Result<Option<Grant>, ReserveError> {
        self.maybe_refresh_probe();
        let ledger = &self.shared.ledger;
        match ledger.try_reserve(bytes) {
            Ok(grant) => Ok(Some(grant)),
            Err(snapshot) if bytes > snapshot.effective_limit => {
                ledger.count_rejection(Rejection::ExceedsLimit);
                Err(ReserveError::ExceedsLimit {
                    key: key_text(key),
                    requested: bytes,
                    ledger: Box::new(snapshot),
                })
            }
            Err(snapshot) if overflow == Overflow::FailFast && snapshot.queue_depth > 0 => {
                ledger.count_rejection(Rejection::Budget);
                Err(ReserveError::BudgetExceeded {
                    key: key_text(key),
                    requested: bytes,
                    queued_ahead: snapshot.queue_depth,
                    ledger: Box::new(snapshot),
                })
            }
            Err(_) => Ok(None),
        }
    }

    /// Starts admitting `bytes` for `key`: granted at once, refused for good, or queued (the
    /// queued request then goes through [`Self::admission_turn`] until it is done).
    pub(super) fn begin_admission(
        &self,
        key: &K,
        bytes: u64,
        overflow: Overflow,
    ) -> Result<Admission, ReserveError> {
        if let Some(grant) = self.admit_now(key, bytes, overflow)? {
            return Ok(Admission::Granted(grant));
        }
        let ledger = self.shared.ledger.clone();
        let ticket = ledger.enqueue(bytes);
        Ok(Admission::Queued(Queued {
            ticket: TicketGuard {
                ledger,
                ticket: Some(ticket),
            },
            id: ticket,
            bytes,
            overflow,
            started: Instant::now(),
            planned: None,
        }))
    }

    /// One turn of the admission loop, shared by the blocking [`Self::reserve`] and
    /// [`ReserveFuture`]: collect a grant, evict for the head of the queue, or decide the
    /// request is refused (fail fast) or timed out. `waker` (async callers) is woken by the
    /// next ledger event.
    pub(super) fn admission_turn(
        &self,
        key: &K,
        queued: &mut Queued,
        waker: Option<&Waker>,
    ) -> Turn {
        let ledger = &self.shared.ledger;
        let bytes = queued.bytes;
        match self.step(key, queued.id, &mut queued.planned, waker) {
            Step::Granted(grant) => {
                queued.ticket.disarm();
                Turn::Done(Ok(grant))
            }
            Step::Gone => {
                queued.ticket.disarm();
                ledger.count_rejection(Rejection::Budget);
                Turn::Done(Err(self.budget_exceeded(key, bytes, 0)))
            }
            Step::Pending {
                ahead,
                snapshot,
                events,
            } => match queued.overflow {
                Overflow::FailFast => {
                    if let Some(grant) = queued.ticket.cancel() {
                        return Turn::Done(Ok(grant));
                    }
                    ledger.count_rejection(Rejection::Budget);
                    Turn::Done(Err(ReserveError::BudgetExceeded {
                        key: key_text(key),
                        requested: bytes,
                        queued_ahead: ahead,
                        ledger: Box::new(snapshot),
                    }))
                }
                Overflow::Wait { deadline } => {
                    let now = Instant::now();
                    if now < deadline {
                        return Turn::Wait {
                            events,
                            until: deadline.min(now + REPLAN_INTERVAL),
                            deadline,
                        };
                    }
                    if let Some(grant) = queued.ticket.cancel() {
                        return Turn::Done(Ok(grant));
                    }
                    ledger.count_rejection(Rejection::Timeout);
                    Turn::Done(Err(ReserveError::Timeout {
                        key: key_text(key),
                        requested: bytes,
                        waited: queued.started.elapsed(),
                        ledger: Box::new(ledger.snapshot()),
                    }))
                }
            },
        }
    }

    /// One turn of the admission loop for an async caller: `Ready` once granted or refused,
    /// otherwise `Pending` with the task's waker registered for the ledger's next event — and,
    /// the first time (`watched`), the deadline handed to the timer thread, which wakes the
    /// queue then even if nothing else happens.
    pub(super) fn poll_admission(
        &self,
        key: &K,
        queued: &mut Queued,
        watched: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Grant, ReserveError>> {
        match self.admission_turn(key, queued, Some(cx.waker())) {
            Turn::Done(result) => Poll::Ready(result),
            Turn::Wait { deadline, .. } => {
                if !*watched {
                    *watched = true;
                    self.start_housekeeper();
                    self.shared.housekeeper.watch(deadline);
                }
                Poll::Pending
            }
        }
    }

    /// Admission of `bytes` for `key`, blocking this thread while it waits.
    pub(super) fn admit(
        &self,
        key: &K,
        bytes: u64,
        overflow: Overflow,
    ) -> Result<Grant, ReserveError> {
        let mut queued = match self.begin_admission(key, bytes, overflow)? {
            Admission::Granted(grant) => return Ok(grant),
            Admission::Queued(queued) => queued,
        };
        loop {
            match self.admission_turn(key, &mut queued, None) {
                Turn::Done(result) => return result,
                Turn::Wait { events, until, .. } => {
                    self.shared.ledger.sleep(queued.id, events, until);
                }
            }
        }
    }

    pub(super) fn budget_exceeded(&self, key: &K, bytes: u64, ahead: usize) -> ReserveError {
        ReserveError::BudgetExceeded {
            key: key_text(key),
            requested: bytes,
            queued_ahead: ahead,
            ledger: Box::new(self.shared.ledger.snapshot()),
        }
    }

    /// One round for a queued request: collect a grant, or — at the head of the queue, after
    /// a new event or a replan interval — evict what can be freed now and look again.
    pub(super) fn step(
        &self,
        key: &K,
        ticket: u64,
        planned: &mut Option<(u64, Instant)>,
        waker: Option<&Waker>,
    ) -> Step {
        loop {
            match self.shared.ledger.poll_ticket(ticket, waker) {
                TicketPoll::Granted(grant) => return Step::Granted(grant),
                TicketPoll::Gone => return Step::Gone,
                TicketPoll::Pending {
                    ahead,
                    bytes,
                    snapshot,
                    events,
                } => {
                    let due = match *planned {
                        None => true,
                        Some((seen, at)) => seen != events || at.elapsed() >= REPLAN_INTERVAL,
                    };
                    if ahead == 0 && due {
                        *planned = Some((events, Instant::now()));
                        if self.evict_for(bytes, &snapshot, Some(key)) > 0 {
                            continue;
                        }
                    }
                    return Step::Pending {
                        ahead,
                        snapshot,
                        events,
                    };
                }
            }
        }
    }
}

/// The future of [`AdmissionManager::reserve_async`].
///
/// Dropping it leaves the admission queue and refunds anything granted meanwhile. Like other
/// futures it must not be polled again once it has returned `Ready` (that panics).
#[must_use = "futures do nothing unless polled"]
pub struct ReserveFuture<K, V> {
    manager: AdmissionManager<K, V>,
    key: K,
    request: ReserveRequest,
    state: FutureState<K, V>,
}

enum FutureState<K, V> {
    Start,
    Queued {
        entry: StdArc<Entry<K, V>>,
        queued: Queued,
        /// Whether the timer thread was asked to wake the queue by the deadline.
        watched: bool,
    },
    Done,
}

impl<K: fmt::Debug, V> fmt::Debug for ReserveFuture<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReserveFuture")
            .field("key", &self.key)
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl<K, V> Future for ReserveFuture<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + Unpin + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    type Output = Result<Reservation<K, V>, ReserveError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let manager = &this.manager;
        let state = std::mem::replace(&mut this.state, FutureState::Done);
        let (entry, mut queued, mut watched) = match state {
            FutureState::Done => panic!("ReserveFuture polled after completion"),
            FutureState::Start => {
                let started = manager.admissible_entry(&this.key).and_then(|entry| {
                    let bytes = manager.scaled(&this.request);
                    let admission =
                        manager.begin_admission(&this.key, bytes, this.request.overflow)?;
                    Ok((entry, admission))
                });
                match started {
                    Err(e) => return Poll::Ready(Err(e)),
                    Ok((entry, Admission::Granted(grant))) => {
                        let bytes = grant.bytes();
                        return Poll::Ready(Ok(manager.reservation(
                            grant,
                            entry,
                            &this.request,
                            bytes,
                        )));
                    }
                    Ok((entry, Admission::Queued(queued))) => (entry, queued, false),
                }
            }
            FutureState::Queued {
                entry,
                queued,
                watched,
            } => (entry, queued, watched),
        };
        match manager.poll_admission(&this.key, &mut queued, &mut watched, cx) {
            Poll::Ready(result) => {
                let bytes = queued.bytes;
                Poll::Ready(
                    result.map(|grant| manager.reservation(grant, entry, &this.request, bytes)),
                )
            }
            Poll::Pending => {
                this.state = FutureState::Queued {
                    entry,
                    queued,
                    watched,
                };
                Poll::Pending
            }
        }
    }
}
