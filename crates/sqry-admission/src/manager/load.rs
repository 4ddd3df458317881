//! Loading and rebuilding: one loader per key (the lifecycle gate), the others joining its
//! result or refused by choice; a loading guard that turns every failure, panic included, into
//! `Failed`.

use std::error::Error;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc as StdArc;
use std::sync::atomic::Ordering;

use crate::HeapSize;
use crate::entry::{Entry, EntryState};
use crate::error::{BuildError, LoadError, ReserveError, key_text};
use crate::ledger::Handle;

use super::AdmissionManager;
use super::admission::ReserveRequest;

/// What a load does when another caller is already loading the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SingleFlight {
    /// Wait for that load and return its result (single flight).
    #[default]
    Join,
    /// Return [`LoadError::InProgress`] at once.
    Refuse,
}

/// Options of [`AdmissionManager::get_or_load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The reservation to make before building.
    pub request: ReserveRequest,
    /// What to do if a load is already in flight.
    pub single_flight: SingleFlight,
}

impl LoadOptions {
    /// A fail-fast load reserving `estimate` bytes that joins a load in flight.
    #[must_use]
    pub fn new(estimate: u64) -> Self {
        Self {
            request: ReserveRequest::new(estimate),
            single_flight: SingleFlight::Join,
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
}

/// The reason stored when a load unwinds.
#[derive(Debug, thiserror::Error)]
#[error("the load of {key} panicked or was abandoned before it finished")]
pub(super) struct LoadAborted {
    key: String,
}

/// Turns every non-success exit of a load — error, early return or panic — into `Failed`, with
/// the error recorded, one more retry counted and joiners woken.
pub(super) struct LoadingGuard<'a, K: fmt::Debug, V> {
    entry: &'a Entry<K, V>,
    armed: bool,
}

impl<K: fmt::Debug, V> LoadingGuard<'_, K, V> {
    pub(super) fn fail(&mut self, error: LoadError) -> LoadError {
        self.armed = false;
        self.entry.record_failure(StdArc::new(error.clone()));
        self.entry.set_state(EntryState::Failed);
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
        if self.armed {
            self.entry.record_failure(StdArc::new(LoadAborted {
                key: key_text(&self.entry.key),
            }));
            self.entry.set_state(EntryState::Failed);
            self.entry.finish_flight();
        }
    }
}

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    // ----- loading -----

    /// The value of `key`, loading it with `build` if it is not loaded.
    ///
    /// A loaded (or rebuilding) entry is returned at once. Otherwise one caller takes the
    /// lifecycle gate (`Unloaded`/`Failed` → `Loading`), reserves `options.request`, runs
    /// `build` with no lock held and publishes — unless the entry was evicted meanwhile, in
    /// which case nothing is published and the reservation is refunded. Concurrent callers
    /// join that load and receive its result ([`SingleFlight::Join`]) or are refused
    /// ([`SingleFlight::Refuse`]). Any failure — including a panic in `build` — leaves the
    /// entry `Failed` with its error recorded and its retry count raised. The hook runs after
    /// the publish, with no lock held.
    ///
    /// # Errors
    ///
    /// [`LoadError`]: admission refused, the builder failed, the value did not fit, the entry
    /// was evicted mid-load, or the joined load failed.
    pub fn get_or_load<F>(
        &self,
        key: &K,
        options: LoadOptions,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(&K) -> Result<V, BuildError>,
    {
        if let Some(entry) = self.entry(key)
            && entry.state() == EntryState::Loaded
            && let Some(version) = entry.current()
        {
            entry.touch(self.now_ns());
            return Ok(Handle::from_arc(version));
        }
        let entry = self.entry_or_insert(key);
        loop {
            match entry.try_transition(
                &[EntryState::Unloaded, EntryState::Failed],
                EntryState::Loading,
            ) {
                Ok(()) => break,
                Err(state) => {
                    if matches!(state, EntryState::Loaded | EntryState::Rebuilding)
                        && let Some(version) = entry.current()
                    {
                        entry.touch(self.now_ns());
                        return Ok(Handle::from_arc(version));
                    }
                    if state == EntryState::Evicted {
                        return Err(LoadError::EvictedMidLoad { key: key_text(key) });
                    }
                    if options.single_flight == SingleFlight::Refuse {
                        return Err(LoadError::InProgress {
                            key: key_text(key),
                            state,
                        });
                    }
                    entry.join_flight(state);
                    match entry.state() {
                        EntryState::Failed => {
                            let source = entry.history.lock().last_error.clone();
                            return Err(match source {
                                Some(source) => LoadError::JoinedFailed {
                                    key: key_text(key),
                                    source,
                                },
                                None => LoadError::EvictedMidLoad { key: key_text(key) },
                            });
                        }
                        EntryState::Evicted => {
                            return Err(LoadError::EvictedMidLoad { key: key_text(key) });
                        }
                        _ => continue,
                    }
                }
            }
        }
        self.run_load(&entry, options.request, build)
    }

    /// Rebuilds `key`: takes the gate (`Loaded`/`Failed` → `Rebuilding`), reserves, builds
    /// with no lock held and publishes; the previous version keeps serving until then and stays
    /// counted, as retained, until its readers drop it. A failed rebuild leaves the entry
    /// `Failed`, still serving its last good version as stale.
    ///
    /// # Errors
    ///
    /// [`LoadError::InProgress`] if a load or rebuild is already running, otherwise as
    /// [`Self::get_or_load`].
    pub fn rebuild<F>(
        &self,
        key: &K,
        request: ReserveRequest,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(&K) -> Result<V, BuildError>,
    {
        let entry = self
            .entry(key)
            .ok_or_else(|| ReserveError::NotRegistered { key: key_text(key) })?;
        entry
            .try_transition(
                &[EntryState::Loaded, EntryState::Failed],
                EntryState::Rebuilding,
            )
            .map_err(|state| LoadError::InProgress {
                key: key_text(key),
                state,
            })?;
        self.run_load(&entry, request, build)
    }

    pub(super) fn run_load<F>(
        &self,
        entry: &StdArc<Entry<K, V>>,
        request: ReserveRequest,
        build: F,
    ) -> Result<Handle<V>, LoadError>
    where
        F: FnOnce(&K) -> Result<V, BuildError>,
    {
        let key = &entry.key;
        let mut guard = LoadingGuard { entry, armed: true };
        // An eviction that ran before the gate was taken left its cancellation behind: honour
        // it (and keep it) rather than publish into an evicted entry.
        if entry.cancelled.swap(false, Ordering::AcqRel) {
            entry.cancelled.store(true, Ordering::Release);
            return Err(guard.fail(LoadError::EvictedMidLoad { key: key_text(key) }));
        }
        let bytes = self.scaled(&request);
        let grant = match self.admit(key, bytes, request.overflow) {
            Ok(grant) => grant,
            Err(e) => return Err(guard.fail(LoadError::Admission(e))),
        };
        let reservation = self.reservation(grant, StdArc::clone(entry), &request, bytes);
        let value = match build(key) {
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
