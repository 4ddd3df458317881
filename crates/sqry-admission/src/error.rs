//! One error enum per operation: admission ([`ReserveError`]), publishing ([`PublishError`]),
//! loading ([`LoadError`]) and serving ([`ServeError`]).
//!
//! Every message names the key (its `Debug` form). Refusals for lack of memory carry the whole
//! [`LedgerSnapshot`], so a refusal says where the budget went. Errors a daemon forwards to
//! clients map to the original daemon's JSON-RPC codes through `code()`.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::ledger::LedgerSnapshot;
use crate::manager::EntryState;

/// A builder's error, shared so that every caller that joined a load receives the same one.
pub type BuildError = Box<dyn Error + Send + Sync + 'static>;

/// JSON-RPC code: the build failed and there is no good version to serve.
pub const CODE_BUILD_FAILED: i32 = -32001;
/// JSON-RPC code: the last good version is older than the stale-serving cap.
pub const CODE_STALE_EXPIRED: i32 = -32002;
/// JSON-RPC code: the memory budget refused the request.
pub const CODE_BUDGET_EXCEEDED: i32 = -32003;
/// JSON-RPC code: the entry was evicted (or never loaded).
pub const CODE_EVICTED: i32 = -32004;

/// Why a reservation was not granted. The ledger is unchanged by a refused request.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveError {
    /// The key is not registered: register it or use `get_or_load`.
    #[error("cannot reserve for {key}: not registered (register it or use get_or_load)")]
    NotRegistered {
        /// The key.
        key: String,
    },
    /// The entry was evicted or its rebuild cancelled: load it again.
    #[error("cannot reserve for {key}: it was evicted; load it again")]
    Evicted {
        /// The key.
        key: String,
    },
    /// The budget has no room and the request chose to fail fast (or requests were queued
    /// ahead of it, which it may not overtake).
    #[error("cannot admit {requested} bytes for {key}: memory budget exceeded ({ledger})")]
    BudgetExceeded {
        /// The key.
        key: String,
        /// Bytes requested (after the class multiplier).
        requested: u64,
        /// Ungranted requests queued ahead of this one.
        queued_ahead: usize,
        /// The ledger at refusal.
        ledger: Box<LedgerSnapshot>,
    },
    /// The request is larger than the whole effective budget: it can never be admitted.
    #[error("cannot admit {requested} bytes for {key}: larger than the whole budget ({ledger})")]
    ExceedsLimit {
        /// The key.
        key: String,
        /// Bytes requested.
        requested: u64,
        /// The ledger at refusal.
        ledger: Box<LedgerSnapshot>,
    },
    /// The request waited in the admission queue until its deadline.
    #[error(
        "cannot admit {requested} bytes for {key}: still no room after waiting {waited:?} ({ledger})"
    )]
    Timeout {
        /// The key.
        key: String,
        /// Bytes requested.
        requested: u64,
        /// How long it waited.
        waited: Duration,
        /// The ledger at the deadline.
        ledger: Box<LedgerSnapshot>,
    },
    /// The manager was dropped while the request was outstanding.
    #[error("cannot reserve for {key}: the admission manager is gone")]
    ManagerGone {
        /// The key.
        key: String,
    },
}

impl ReserveError {
    /// The JSON-RPC code a daemon reports for this error.
    #[must_use]
    pub fn code(&self) -> i32 {
        match self {
            Self::NotRegistered { .. } | Self::Evicted { .. } | Self::ManagerGone { .. } => {
                CODE_EVICTED
            }
            _ => CODE_BUDGET_EXCEEDED,
        }
    }

    /// The ledger at refusal, for the variants that refuse for lack of memory.
    #[must_use]
    pub fn ledger(&self) -> Option<&LedgerSnapshot> {
        match self {
            Self::BudgetExceeded { ledger, .. }
            | Self::ExceedsLimit { ledger, .. }
            | Self::Timeout { ledger, .. } => Some(&**ledger),
            _ => None,
        }
    }
}

/// Why a publish did not happen. The reservation is refunded and the entry keeps serving what
/// it served before.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The entry was evicted (or removed) while the value was being built: nothing published.
    #[error("{key} was evicted while its new version was built; nothing was published")]
    Evicted {
        /// The key.
        key: String,
    },
    /// The measured value is larger than its reservation and the budget has no room for the
    /// difference, even after evicting what could be freed. The check counts everything: the
    /// version being replaced (it stays counted until its readers drop it), retained versions
    /// and other reservations.
    #[error(
        "{key}: measured {measured} bytes but only {reserved} were reserved and the rest does not fit ({ledger})"
    )]
    Oversize {
        /// The key.
        key: String,
        /// The value's measured heap bytes.
        measured: u64,
        /// Bytes the reservation held.
        reserved: u64,
        /// The ledger at refusal.
        ledger: Box<LedgerSnapshot>,
    },
    /// The manager was dropped before the publish.
    #[error("cannot publish {key}: the admission manager is gone")]
    ManagerGone {
        /// The key.
        key: String,
    },
    /// The reservation was made by another manager: publish it through that one.
    #[error("cannot publish {key}: its reservation belongs to another admission manager")]
    ForeignReservation {
        /// The key.
        key: String,
    },
}

/// Why `get_or_load` or `rebuild` returned no value.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Admission refused the reservation.
    #[error(transparent)]
    Admission(#[from] ReserveError),
    /// The measured value did not fit or the entry was evicted before publishing.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The builder returned an error.
    #[error("building {key} failed")]
    Build {
        /// The key.
        key: String,
        /// The builder's error.
        #[source]
        source: Arc<dyn Error + Send + Sync>,
    },
    /// The entry was evicted before the load could start (its cancellation was pending).
    #[error("{key} was evicted mid-load; nothing was published")]
    EvictedMidLoad {
        /// The key.
        key: String,
    },
    /// Another caller is loading or rebuilding this key and this call chose not to join it.
    #[error("a load of {key} is already in progress ({state})")]
    InProgress {
        /// The key.
        key: String,
        /// The state that blocked this call.
        state: EntryState,
    },
    /// The key failed recently and its backoff window is still open: the builder was not run.
    /// Retry after `retry_after`, or ask for an immediate retry with `LoadOptions::retry_now`.
    #[error(
        "not rebuilding {key} for another {retry_after:?} after {failures} consecutive failures"
    )]
    BackingOff {
        /// The key.
        key: String,
        /// Time left in the backoff window.
        retry_after: Duration,
        /// Consecutive failures so far.
        failures: u32,
        /// The last failure's error.
        #[source]
        source: Arc<dyn Error + Send + Sync>,
    },
    /// The builder of `key` asked for `key` itself: waiting for its own load would never end.
    /// A builder must not load (or join the load of) the key it is building.
    #[error("the builder of {key} tried to load {key} itself; it would wait for itself for ever")]
    SelfJoin {
        /// The key.
        key: String,
    },
    /// The manager is shutting down and starts no new load.
    #[error("not loading {key}: the admission manager is shutting down")]
    ShuttingDown {
        /// The key.
        key: String,
    },
    /// `rebuild` of a key that was never loaded: there is nothing to rebuild.
    #[error("cannot rebuild {key}: it was never loaded (load it with get_or_load first)")]
    NotLoaded {
        /// The key.
        key: String,
    },
    /// This call joined another caller's load of the key and the load was still running at
    /// the request's deadline.
    #[error("gave up waiting for the load of {key} this call joined ({state}) at its deadline")]
    JoinTimeout {
        /// The key.
        key: String,
        /// The state of the load in flight.
        state: EntryState,
    },
    /// This call joined another caller's load of the key, and that load failed.
    #[error("the load of {key} this call joined failed")]
    JoinedFailed {
        /// The key.
        key: String,
        /// The winning loader's error.
        #[source]
        source: Arc<dyn Error + Send + Sync>,
    },
}

/// Why `classify_for_serve` has nothing to serve.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The entry failed and has no good version to serve (JSON-RPC -32001).
    #[error("{key}: build failed and there is no good version to serve: {reason}")]
    BuildFailed {
        /// The key.
        key: String,
        /// The last error, or why there is none.
        reason: String,
    },
    /// The entry failed and its last good version is older than the stale-serving cap
    /// (JSON-RPC -32002).
    #[error("{key}: last good version is {age:?} old, past the {cap:?} stale-serving cap")]
    StaleExpired {
        /// The key.
        key: String,
        /// Age of the last good version.
        age: Duration,
        /// The cap.
        cap: Duration,
        /// When the last good version was built.
        last_good_at: Option<SystemTime>,
        /// The last error.
        last_error: Option<String>,
    },
    /// The entry is not loaded: evicted or never registered (JSON-RPC -32004).
    #[error("{key} is not loaded (evicted or never registered)")]
    Evicted {
        /// The key.
        key: String,
    },
}

impl ServeError {
    /// The JSON-RPC code a daemon reports for this error.
    #[must_use]
    pub fn code(&self) -> i32 {
        match self {
            Self::BuildFailed { .. } => CODE_BUILD_FAILED,
            Self::StaleExpired { .. } => CODE_STALE_EXPIRED,
            Self::Evicted { .. } => CODE_EVICTED,
        }
    }
}

/// The `Debug` form of a key, as error messages show it.
pub(crate) fn key_text(key: &impl std::fmt::Debug) -> String {
    format!("{key:?}")
}
