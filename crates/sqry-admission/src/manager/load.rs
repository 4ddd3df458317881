//! Loading and rebuilding: one loader per key (the lifecycle gate), the others joining its
//! result or refused by choice — blocking or as futures; a loading guard that turns every
//! failure, panic included, into `Failed`, and a load abandoned by its caller (a dropped future)
//! back into what the entry was, so a joiner can take over.
//!
//! The blocking and async paths share every step but the waits: [`AdmissionManager::enter`]
//! decides whether a caller serves a version, leads the load or joins one, and the lead runs
//! admission, the builder and the publish under one [`LoadingGuard`].

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::HeapSize;
use crate::entry::{Entry, EntryState};
use crate::error::{BuildError, LoadError, ReserveError, key_text};
use crate::flight::Ticket;
use crate::housekeeper::{Housekeeper, Timer};
use crate::ledger::{Grant, Handle};

use super::AdmissionManager;
use super::admission::{Admission, Overflow, Reservation, ReserveRequest};
use super::context::BuildContext;

/// What a load does when another caller is already loading the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SingleFlight {
    /// Wait for that load and return its result (single flight).
    #[default]
    Join,
    /// Return [`LoadError::InProgress`] at once.
    Refuse,
}

/// Options of [`AdmissionManager::get_or_load`] and [`AdmissionManager::rebuild`] (and their
/// async forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The reservation to make before building.
    pub request: ReserveRequest,
    /// What to do if a load is already in flight.
    pub single_flight: SingleFlight,
    /// Build even inside the failure backoff window (an operator's explicit retry).
    pub retry_now: bool,
}

impl LoadOptions {
    /// A fail-fast load reserving `estimate` bytes that joins a load in flight.
    #[must_use]
    pub fn new(estimate: u64) -> Self {
        Self {
            request: ReserveRequest::new(estimate),
            single_flight: SingleFlight::Join,
            retry_now: false,
        }
    }

    /// Uses `request` for the reservation.
    #[must_use]
    pub fn request(mut self, request: ReserveRequest) -> Self {
        self.request = request;
        self
    }

    /// Sets what to do if a load is already in flight.
    #[must_use]
    pub fn single_flight(mut self, single_flight: SingleFlight) -> Self {
        self.single_flight = single_flight;
        self
    }

    /// Builds even if the key failed recently and its backoff window is still open (by
    /// default such a load returns [`LoadError::BackingOff`] without building).
    #[must_use]
    pub fn retry_now(mut self) -> Self {
        self.retry_now = true;
        self
    }
}

/// A load (or rebuild) with `request` and the default options: join a load in flight, back off
/// inside the failure window. What [`AdmissionManager::rebuild`] takes when given just a
/// request.
///
/// ```
/// use sqry_admission::{LoadOptions, ReserveRequest, SingleFlight};
///
/// let options = LoadOptions::from(ReserveRequest::new(100));
/// assert_eq!(options.request.estimate, 100);
/// assert_eq!(options.single_flight, SingleFlight::Join);
/// assert!(!options.retry_now);
/// ```
impl From<ReserveRequest> for LoadOptions {
    fn from(request: ReserveRequest) -> Self {
        Self::new(request.estimate).request(request)
    }
}

/// The reason stored when a load unwinds.
#[derive(Debug, thiserror::Error)]
#[error("the load of {key} panicked before it finished")]
pub(super) struct LoadAborted {
    key: String,
}

/// Turns every non-success exit of a load into a settled state, and wakes joiners:
///
/// - an error or a panic → `Failed`, the error recorded, one more retry counted;
/// - a drop without a panic (the caller's future was dropped mid-load) → the state the entry
///   had before the gate was taken, nothing recorded: cancelling is not failing, and a joiner
///   then finds the gate open and takes it.
pub(super) struct LoadingGuard<'a, K: fmt::Debug, V> {
    entry: &'a Entry<K, V>,
    /// The gate state this load holds (`Loading` or `Rebuilding`) and the one it came from.
    held: EntryState,
    prior: EntryState,
    armed: bool,
}

impl<K: fmt::Debug, V> LoadingGuard<'_, K, V> {
    pub(super) fn fail(&mut self, error: LoadError) -> LoadError {
        self.armed = false;
        let builder = matches!(error, LoadError::Build { .. });
        self.entry
            .record_failure(StdArc::new(error.clone()), builder);
        // An eviction that happened meanwhile keeps its `Evicted`, so joiners look again.
        self.entry.gate.restore(self.held, EntryState::Failed);
        self.entry.finish_flight();
        error
    }

    pub(super) fn succeed(&mut self) {
        self.armed = false;
        self.entry.finish_flight();
    }
}

impl<K: fmt::Debug, V> Drop for LoadingGuard<'_, K, V> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if std::thread::panicking() {
            self.entry.record_failure(
                StdArc::new(LoadAborted {
                    key: key_text(&self.entry.key),
                }),
                true,
            );
            self.entry.set_state(EntryState::Failed);
        } else {
            // Abandoned: an eviction that happened meanwhile keeps its `Evicted`.
            self.entry.gate.restore(self.held, self.prior);
        }
        self.entry.finish_flight();
    }
}

/// Where a caller stands after trying the lifecycle gate.
pub(super) enum Enter<V> {
    /// A version to serve.
    Serve(Handle<V>),
    /// This caller took the gate (it came from the given state) and must run the load.
    Lead(EntryState),
    /// Another caller holds the gate in this state: wait for it, then try again. The count
    /// is the entry's consecutive failures before the gate was tried, so the joiner can tell
    /// a load that failed from one that was abandoned (which records nothing).
    Join(EntryState, u32),
    /// The entry was evicted and has left the map: look the key up again.
    Gone,
}

thread_local! {
    /// The entries whose builders are running on this thread right now (their addresses): a
    /// blocking builder for the whole call, an async one during each poll of its future.
    static BUILDING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks an entry as being built on this thread while it lives (unwind-safe).
struct Building(usize);

impl Building {
    fn enter<K, V>(entry: &Entry<K, V>) -> Self {
        let id = std::ptr::from_ref(entry) as usize;
        BUILDING.with(|b| b.borrow_mut().push(id));
        Self(id)
    }

    /// Whether this thread is inside the builder of `entry`.
    fn active<K, V>(entry: &Entry<K, V>) -> bool {
        let id = std::ptr::from_ref(entry) as usize;
        BUILDING.with(|b| b.borrow().contains(&id))
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        BUILDING.with(|b| {
            let mut b = b.borrow_mut();
            if let Some(pos) = b.iter().rposition(|&id| id == self.0) {
                b.remove(pos);
            }
        });
    }
}

/// A builder's future, polled with its entry marked as being built on the polling thread.
struct Marked<'a, K, V, F> {
    entry: &'a Entry<K, V>,
    future: Pin<Box<F>>,
}

impl<K, V, F: Future> Future for Marked<'_, K, V, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _building = Building::enter(self.entry);
        self.future.as_mut().poll(cx)
    }
}

/// What a joiner found when the load it joined finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Joined {
    /// Try the same entry again.
    Again,
    /// The entry was evicted: look the key up again.
    Gone,
}

/// How many times one load looks its key up again after finding its entry evicted, before it
/// gives up with `EvictedMidLoad` (each time, some other load or eviction made progress).
const MAX_LOOKUPS: u32 = 16;

/// Which lifecycle a load runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Load,
    Rebuild,
}

impl Kind {
    fn from(self) -> &'static [EntryState] {
        match self {
            Self::Load => &[EntryState::Unloaded, EntryState::Failed],
            Self::Rebuild => &[EntryState::Loaded, EntryState::Failed],
        }
    }

    fn gate(self) -> EntryState {
        match self {
            Self::Load => EntryState::Loading,
            Self::Rebuild => EntryState::Rebuilding,
        }
    }
}

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    /// The value of `key`, loading it with `build` if it is not loaded.
    ///
    /// A loaded (or rebuilding) entry is returned at once. Otherwise one caller takes the
    /// lifecycle gate (`Unloaded`/`Failed` → `Loading`), reserves `options.request`, runs
    /// `build` with no lock held and publishes — unless the entry was evicted meanwhile, in
    /// which case nothing is published and the reservation is refunded. Concurrent callers
    /// join that load and receive its result ([`SingleFlight::Join`]; a join waits at most
    /// until the request's deadline, if it has one) or are refused ([`SingleFlight::Refuse`]).
    /// Any failure — including a panic in `build` — leaves the entry `Failed` with its error
    /// recorded and its retry count raised. The hook runs after the publish, with no lock held.
    ///
    /// `build` receives a [`BuildContext`]: the key (it dereferences to it) and a cancellation
    /// signal raised if the entry is evicted or unloaded, or the manager shuts down, mid-build.
    ///
    /// # Errors
    ///
    /// [`LoadError`]: admission refused, the builder failed, the value did not fit, the entry
    /// was evicted mid-load, the joined load failed, the key is inside its failure backoff
    /// window ([`LoadError::BackingOff`]), or `build` itself asked for its own key
    /// ([`LoadError::SelfJoin`]: detected when the nested call runs on the builder's thread —
    /// a blocking builder's, or the thread polling an async builder; a builder that hands the
    /// nested call to another thread is not detected, and its wait ends only at the request's
    /// deadline).
    pub fn get_or_load<F>(
        &self,
        key: &K,
        options: LoadOptions,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(&BuildContext<K>) -> Result<V, BuildError>,
    {
        if let Some(handle) = self.loaded_now(key) {
            return Ok(handle);
        }
        self.refuse_if_shutting_down(key)?;
        let mut entry = self.entry_or_insert(key);
        let deadline = join_deadline(&options);
        let mut lookups = 1;
        let prior = loop {
            match self.enter(&entry, Kind::Load, &options)? {
                Enter::Serve(handle) => return Ok(handle),
                Enter::Lead(prior) => break prior,
                Enter::Join(state, failures) => {
                    if !entry.gate.wait(state, deadline) {
                        return Err(LoadError::JoinTimeout {
                            key: key_text(key),
                            state,
                        });
                    }
                    if self.after_join(&entry, failures)? == Joined::Again {
                        continue;
                    }
                }
                Enter::Gone => {}
            }
            entry = self.look_up_again(key, &mut lookups)?;
        };
        self.lead_blocking(key, &entry, Kind::Load, prior, options.request, build)
    }

    /// [`Self::get_or_load`] as a future, with an async builder: one build per key however
    /// many callers wait, and no thread blocked while they do.
    ///
    /// `build` is called by the one caller that leads the load, with a [`BuildContext`]; it
    /// returns the future that builds the value — run CPU-heavy work on a blocking pool
    /// (e.g. `tokio::task::spawn_blocking`) inside it; the crate itself needs no runtime. The
    /// other callers wait for that load without blocking a thread and receive its result.
    ///
    /// Cancellation-safe: dropping any caller's future — the leader's included — leaks no
    /// reservation and leaves no entry `Loading`. A dropped leader's load is abandoned (its
    /// reservation refunded, the entry put back as it was, nothing recorded as a failure) and
    /// one of its joiners takes the gate and builds with its own builder.
    ///
    /// ```
    /// use sqry_admission::{AdmissionConfig, AdmissionManager, LoadOptions};
    ///
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// let manager = AdmissionManager::<String, Vec<u8>>::new(AdmissionConfig::new(1 << 20));
    /// let key = "repo".to_string();
    /// let value = manager
    ///     .get_or_load_async(&key, LoadOptions::new(100), |ctx| async move {
    ///         // e.g. tokio::task::spawn_blocking(move || build(ctx.key())).await?
    ///         Ok(vec![ctx.key().len() as u8; 100])
    ///     })
    ///     .await
    ///     .expect("fits");
    /// assert_eq!(value.len(), 100);
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Self::get_or_load`].
    pub async fn get_or_load_async<F, Fut>(
        &self,
        key: &K,
        options: LoadOptions,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(BuildContext<K>) -> Fut,
        Fut: Future<Output = Result<V, BuildError>>,
    {
        if let Some(handle) = self.loaded_now(key) {
            return Ok(handle);
        }
        self.refuse_if_shutting_down(key)?;
        let mut entry = self.entry_or_insert(key);
        let deadline = join_deadline(&options);
        let mut lookups = 1;
        let prior = loop {
            match self.enter(&entry, Kind::Load, &options)? {
                Enter::Serve(handle) => return Ok(handle),
                Enter::Lead(prior) => break prior,
                Enter::Join(state, failures) => {
                    if deadline.is_some() {
                        // Its timer wakes the join at the deadline.
                        self.start_housekeeper();
                    }
                    let join = JoinFlight::new(&entry, state, deadline, &self.shared.housekeeper);
                    if !join.await {
                        return Err(LoadError::JoinTimeout {
                            key: key_text(key),
                            state,
                        });
                    }
                    if self.after_join(&entry, failures)? == Joined::Again {
                        continue;
                    }
                }
                Enter::Gone => {}
            }
            entry = self.look_up_again(key, &mut lookups)?;
        };
        self.lead_async(&entry, Kind::Load, prior, options.request, build)
            .await
    }

    /// Rebuilds `key`: takes the gate (`Loaded`/`Failed` → `Rebuilding`), reserves
    /// `options.request`, builds with no lock held and publishes; the previous version keeps
    /// serving until then and stays counted, as retained, until its readers drop it. A failed
    /// rebuild leaves the entry `Failed`, still serving its last good version as stale.
    ///
    /// `options` is a [`LoadOptions`] or just a [`ReserveRequest`]. Like a load, a rebuild of a
    /// key whose builder failed recently is refused inside the failure backoff window
    /// ([`LoadError::BackingOff`], carrying the last error, without building) unless
    /// [`LoadOptions::retry_now`] asks for it anyway. A rebuild never joins another load or
    /// rebuild of the key: `options.single_flight` does not apply, and one in flight makes it
    /// return [`LoadError::InProgress`].
    ///
    /// ```
    /// use sqry_admission::{AdmissionConfig, AdmissionManager, LoadError, LoadOptions, ReserveRequest};
    ///
    /// let manager = AdmissionManager::<&str, Vec<u8>>::new(AdmissionConfig::new(1 << 20));
    /// manager.get_or_load(&"repo", LoadOptions::new(100), |_| Ok(vec![0; 100])).expect("loads");
    /// let failed = manager.rebuild(&"repo", ReserveRequest::new(100), |_| Err("disk full".into()));
    /// assert!(matches!(failed, Err(LoadError::Build { .. })));
    /// // Inside the backoff window the builder is not run again...
    /// let refused = manager.rebuild(&"repo", ReserveRequest::new(100), |_| Ok(vec![1; 100]));
    /// assert!(matches!(refused, Err(LoadError::BackingOff { .. })));
    /// // ...unless the caller insists.
    /// let rebuilt = manager
    ///     .rebuild(&"repo", LoadOptions::new(100).retry_now(), |_| Ok(vec![1; 100]))
    ///     .expect("rebuilt");
    /// assert_eq!(rebuilt[0], 1);
    /// ```
    ///
    /// # Errors
    ///
    /// [`LoadError::InProgress`] if a load or rebuild is already running,
    /// [`LoadError::NotLoaded`] if the key was never loaded, [`LoadError::BackingOff`] inside
    /// the failure backoff window, otherwise as [`Self::get_or_load`].
    pub fn rebuild<F>(
        &self,
        key: &K,
        options: impl Into<LoadOptions>,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(&BuildContext<K>) -> Result<V, BuildError>,
    {
        let options = options.into();
        let (entry, prior) = self.enter_rebuild(key, &options)?;
        self.lead_blocking(key, &entry, Kind::Rebuild, prior, options.request, build)
    }

    /// [`Self::rebuild`] as a future with an async builder; cancellation-safe like
    /// [`Self::get_or_load_async`] (a dropped rebuild puts the entry back to serving its
    /// current version).
    ///
    /// # Errors
    ///
    /// As [`Self::rebuild`].
    pub async fn rebuild_async<F, Fut>(
        &self,
        key: &K,
        options: impl Into<LoadOptions>,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(BuildContext<K>) -> Fut,
        Fut: Future<Output = Result<V, BuildError>>,
    {
        let options = options.into();
        let (entry, prior) = self.enter_rebuild(key, &options)?;
        self.lead_async(&entry, Kind::Rebuild, prior, options.request, build)
            .await
    }

    /// The current version if the entry is loaded (the fast path of a load).
    fn loaded_now(&self, key: &K) -> Option<Handle<V>> {
        let entry = self.entry(key)?;
        if entry.state() != EntryState::Loaded {
            return None;
        }
        let version = entry.current()?;
        entry.touch(self.now_ns());
        Some(Handle::from_arc(version))
    }

    /// Tries the load gate once.
    pub(super) fn enter(
        &self,
        entry: &StdArc<Entry<K, V>>,
        kind: Kind,
        options: &LoadOptions,
    ) -> Result<Enter<V>, LoadError> {
        let key = &entry.key;
        let failures = entry.retry_count.load(Ordering::Acquire);
        self.refuse_if_backing_off(entry, options)?;
        match entry.gate.try_transition(kind.from(), kind.gate()) {
            Ok(prior) => Ok(Enter::Lead(prior)),
            Err(state) => {
                if matches!(state, EntryState::Loaded | EntryState::Rebuilding)
                    && let Some(version) = entry.current()
                {
                    entry.touch(self.now_ns());
                    return Ok(Enter::Serve(Handle::from_arc(version)));
                }
                if state == EntryState::Evicted {
                    return Ok(Enter::Gone);
                }
                if Building::active(entry) {
                    return Err(LoadError::SelfJoin { key: key_text(key) });
                }
                if options.single_flight == SingleFlight::Refuse {
                    return Err(LoadError::InProgress {
                        key: key_text(key),
                        state,
                    });
                }
                Ok(Enter::Join(state, failures))
            }
        }
    }

    /// The entry this load was looking at left the map (evicted, perhaps just after the load
    /// it joined published): look the key up again, a bounded number of times.
    fn look_up_again(&self, key: &K, lookups: &mut u32) -> Result<StdArc<Entry<K, V>>, LoadError> {
        *lookups += 1;
        if *lookups > MAX_LOOKUPS {
            return Err(LoadError::EvictedMidLoad { key: key_text(key) });
        }
        Ok(self.entry_or_insert(key))
    }

    /// What a joiner does once the load it joined finished: report its failure, or go round
    /// again (to serve the published version, or to take an abandoned gate), or look the key
    /// up again if the entry was evicted.
    fn after_join(&self, entry: &Entry<K, V>, failures: u32) -> Result<Joined, LoadError> {
        let key = &entry.key;
        match entry.state() {
            // Failed, but not by the load this call joined: that one was abandoned and put
            // the entry back as it was. Try the gate again.
            EntryState::Failed if entry.retry_count.load(Ordering::Acquire) == failures => {
                Ok(Joined::Again)
            }
            EntryState::Failed => {
                let source = entry.history.lock().last_error.clone();
                Err(match source {
                    Some(source) => LoadError::JoinedFailed {
                        key: key_text(key),
                        source,
                    },
                    None => LoadError::EvictedMidLoad { key: key_text(key) },
                })
            }
            EntryState::Evicted => Ok(Joined::Gone),
            _ => Ok(Joined::Again),
        }
    }

    fn refuse_if_shutting_down(&self, key: &K) -> Result<(), LoadError> {
        if self.is_shutting_down() {
            return Err(LoadError::ShuttingDown { key: key_text(key) });
        }
        Ok(())
    }

    /// Inside the failure backoff window of a failed key, the cached error instead of a build
    /// (unless the caller asked for `retry_now`).
    fn refuse_if_backing_off(
        &self,
        entry: &Entry<K, V>,
        options: &LoadOptions,
    ) -> Result<(), LoadError> {
        if !options.retry_now
            && entry.state() == EntryState::Failed
            && let Some(retry_after) = entry.backoff_remaining(&self.shared.config.failure_backoff)
            && let Some(source) = entry.history.lock().last_error.clone()
        {
            return Err(LoadError::BackingOff {
                key: key_text(&entry.key),
                retry_after,
                failures: entry.retry_count.load(Ordering::Acquire),
                source,
            });
        }
        Ok(())
    }

    fn enter_rebuild(
        &self,
        key: &K,
        options: &LoadOptions,
    ) -> Result<(StdArc<Entry<K, V>>, EntryState), LoadError> {
        self.refuse_if_shutting_down(key)?;
        let entry = self
            .entry(key)
            .ok_or_else(|| ReserveError::NotRegistered { key: key_text(key) })?;
        self.refuse_if_backing_off(&entry, options)?;
        let current = match entry
            .gate
            .try_transition(Kind::Rebuild.from(), EntryState::Rebuilding)
        {
            Ok(prior) => return Ok((entry, prior)),
            Err(state) => state,
        };
        Err(match current {
            EntryState::Unloaded => LoadError::NotLoaded { key: key_text(key) },
            state => LoadError::InProgress {
                key: key_text(key),
                state,
            },
        })
    }

    fn guard<'a>(
        &self,
        entry: &'a Entry<K, V>,
        kind: Kind,
        prior: EntryState,
    ) -> LoadingGuard<'a, K, V> {
        LoadingGuard {
            entry,
            held: kind.gate(),
            prior,
            armed: true,
        }
    }

    /// The leader's admission, before building: honours a cancellation left by an eviction
    /// before the gate was taken, then reserves through `admit`.
    fn lead_admission(
        &self,
        entry: &StdArc<Entry<K, V>>,
        guard: &mut LoadingGuard<'_, K, V>,
        request: ReserveRequest,
        admit: impl FnOnce(u64) -> Result<Grant, ReserveError>,
    ) -> Result<Reservation<K, V>, LoadError> {
        self.check_not_cancelled(entry, guard)?;
        let bytes = self.scaled(&request);
        match admit(bytes) {
            Ok(grant) => Ok(self.reservation(grant, StdArc::clone(entry), &request, bytes)),
            Err(e) => Err(guard.fail(LoadError::Admission(e))),
        }
    }

    fn check_not_cancelled(
        &self,
        entry: &Entry<K, V>,
        guard: &mut LoadingGuard<'_, K, V>,
    ) -> Result<(), LoadError> {
        // An eviction that ran before the gate was taken left its cancellation behind: honour
        // it (and keep it) rather than publish into an evicted entry.
        if entry.cancelled.load(Ordering::Acquire) {
            return Err(guard.fail(LoadError::EvictedMidLoad {
                key: key_text(&entry.key),
            }));
        }
        Ok(())
    }

    /// The blocking leader: admission (waiting in the queue as `request` says), the builder on
    /// this thread, the publish.
    fn lead_blocking<F>(
        &self,
        key: &K,
        entry: &StdArc<Entry<K, V>>,
        kind: Kind,
        prior: EntryState,
        request: ReserveRequest,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(&BuildContext<K>) -> Result<V, BuildError>,
    {
        let mut guard = self.guard(entry, kind, prior);
        let reservation = self.lead_admission(entry, &mut guard, request, |bytes| {
            self.admit(key, bytes, request.overflow)
        })?;
        let built = {
            let _building = Building::enter(entry);
            build(&BuildContext::new(entry))
        };
        self.finish_load(entry, guard, reservation, built)
    }

    /// The async leader: admission as a future, the builder's future, the publish.
    async fn lead_async<F, Fut>(
        &self,
        entry: &StdArc<Entry<K, V>>,
        kind: Kind,
        prior: EntryState,
        request: ReserveRequest,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(BuildContext<K>) -> Fut,
        Fut: Future<Output = Result<V, BuildError>>,
    {
        let mut guard = self.guard(entry, kind, prior);
        self.check_not_cancelled(entry, &mut guard)?;
        let bytes = self.scaled(&request);
        let grant = match self.admit_async(&entry.key, bytes, request.overflow).await {
            Ok(grant) => grant,
            Err(e) => return Err(guard.fail(LoadError::Admission(e))),
        };
        let reservation = self.reservation(grant, StdArc::clone(entry), &request, bytes);
        let future = {
            let _building = Building::enter(entry);
            Box::pin(build(BuildContext::new(entry)))
        };
        let built = Marked {
            entry: &**entry,
            future,
        }
        .await;
        self.finish_load(entry, guard, reservation, built)
    }

    /// Admission as a future (the shared admission loop, woken by the ledger).
    pub(super) async fn admit_async(
        &self,
        key: &K,
        bytes: u64,
        overflow: Overflow,
    ) -> Result<Grant, ReserveError> {
        let mut queued = match self.begin_admission(key, bytes, overflow)? {
            Admission::Granted(grant) => return Ok(grant),
            Admission::Queued(queued) => queued,
        };
        let mut watched = false;
        std::future::poll_fn(|cx| self.poll_admission(key, &mut queued, &mut watched, cx)).await
    }

    /// The end of a lead: publish what was built (or record why not), settle the gate, run
    /// the hook.
    fn finish_load(
        &self,
        entry: &Entry<K, V>,
        mut guard: LoadingGuard<'_, K, V>,
        reservation: Reservation<K, V>,
        built: Result<V, BuildError>,
    ) -> Result<Handle<V>, LoadError> {
        let key = &entry.key;
        let value = match built {
            Ok(value) => value,
            Err(e) => {
                drop(reservation);
                let source: StdArc<dyn Error + Send + Sync> = StdArc::from(e);
                return Err(guard.fail(LoadError::Build {
                    key: key_text(key),
                    source,
                }));
            }
        };
        match self.publish_inner(reservation, value) {
            Ok(handle) => {
                guard.succeed();
                drop(guard);
                if let Some(hook) = self.hook() {
                    hook.on_publish(key, &handle);
                }
                Ok(handle)
            }
            Err(e) => Err(guard.fail(LoadError::Publish(e))),
        }
    }
}

/// How long a join may wait: until the request's deadline, if it waits at all.
fn join_deadline(options: &LoadOptions) -> Option<Instant> {
    match options.request.overflow {
        Overflow::Wait { deadline } => Some(deadline),
        Overflow::FailFast => None,
    }
}

/// Waits, as a future, for the load in flight on an entry to finish, or until `deadline`:
/// `true` if the load finished, `false` if the deadline came first (the async form of
/// [`Gate::wait`](crate::flight::Gate::wait)). The manager's timer thread wakes it at the
/// deadline.
struct JoinFlight<'a, K, V> {
    entry: &'a Entry<K, V>,
    state: EntryState,
    ticket: Ticket,
    deadline: Option<Instant>,
    timers: &'a Housekeeper,
    /// The timer registered for the deadline, and the waker it wakes.
    timer: Option<(Timer, Waker)>,
}

impl<'a, K, V> JoinFlight<'a, K, V> {
    fn new(
        entry: &'a Entry<K, V>,
        state: EntryState,
        deadline: Option<Instant>,
        timers: &'a Housekeeper,
    ) -> Self {
        Self {
            entry,
            state,
            ticket: entry.gate.ticket(),
            deadline,
            timers,
            timer: None,
        }
    }

    fn cancel_timer(&mut self) {
        if let Some((timer, _)) = self.timer.take() {
            self.timers.cancel(timer);
        }
    }
}

impl<K, V> Future for JoinFlight<'_, K, V> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = self.get_mut();
        if this
            .entry
            .gate
            .poll_wait(this.state, &mut this.ticket, cx.waker())
            .is_ready()
        {
            this.cancel_timer();
            return Poll::Ready(true);
        }
        if let Some(deadline) = this.deadline {
            if Instant::now() >= deadline {
                this.entry.gate.forget(&mut this.ticket);
                this.cancel_timer();
                return Poll::Ready(false);
            }
            if !matches!(&this.timer, Some((_, waker)) if waker.will_wake(cx.waker())) {
                this.cancel_timer();
                let timer = this.timers.wake_at(deadline, cx.waker());
                this.timer = Some((timer, cx.waker().clone()));
            }
        }
        Poll::Pending
    }
}

impl<K, V> Drop for JoinFlight<'_, K, V> {
    fn drop(&mut self) {
        self.entry.gate.forget(&mut self.ticket);
        self.cancel_timer();
    }
}
