//! Serving with the stale policy: fresh, stale up to a maximum age, not ready, or a typed error.

use std::fmt;
use std::hash::Hash;
use std::time::{Duration, SystemTime};

use crate::HeapSize;
use crate::entry::EntryState;
use platform_primitives::error::chain;

use crate::error::{ServeError, key_text};
use crate::ledger::Handle;

use super::AdmissionManager;

/// What a caller may serve for a key (see [`AdmissionManager::classify_for_serve`]).
#[derive(Debug, Clone)]
pub enum ServeVerdict<V> {
    /// Loaded (or loaded with a rebuild in flight): serve `value`.
    Fresh {
        /// The version to serve.
        value: Handle<V>,
        /// `Loaded` or `Rebuilding`.
        state: EntryState,
    },
    /// The last rebuild failed; the last good version is younger than the cap: serve it marked
    /// stale.
    Stale {
        /// The last good version.
        value: Handle<V>,
        /// Its age.
        age: Duration,
        /// When it was built.
        last_good_at: SystemTime,
        /// The error of the failed build.
        last_error: Option<String>,
    },
    /// Registered but not yet loaded (`Unloaded` or `Loading`): retry later.
    NotReady {
        /// `Unloaded` or `Loading`.
        state: EntryState,
    },
}

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    // ----- serving and reporting -----

    /// What may be served for `key` at `now` (wall-clock, for stale ages).
    ///
    /// | state | result |
    /// |---|---|
    /// | `Loaded`, `Rebuilding` | `Fresh` |
    /// | `Failed`, last good younger than the cap (or no cap) | `Stale` |
    /// | `Failed`, last good at or past the cap | `Err(StaleExpired)` |
    /// | `Failed`, no good version | `Err(BuildFailed)` |
    /// | `Unloaded`, `Loading` | `NotReady` |
    /// | evicted or not registered | `Err(Evicted)` |
    ///
    /// State and version are read together under the map's read lock, so an eviction can never
    /// make an emptied entry look fresh. The ledger's mutex is not taken.
    ///
    /// # Errors
    ///
    /// [`ServeError`] as in the table.
    pub fn classify_for_serve(
        &self,
        key: &K,
        now: SystemTime,
    ) -> Result<ServeVerdict<V>, ServeError> {
        let (state, version, last_good, last_error) = {
            let map = self.shared.entries.read();
            let Some(entry) = map.get(key) else {
                return Err(ServeError::Evicted { key: key_text(key) });
            };
            let slot = entry.slot.read();
            let state = entry.state();
            let version = slot.clone();
            let history = entry.history.lock();
            let last_good = history.last_good_at;
            let last_error = history.last_error.as_deref().map(|e| chain(e));
            drop(history);
            drop(slot);
            if version.is_some() && state != EntryState::Evicted {
                entry.touch(self.now_ns());
            }
            (state, version, last_good, last_error)
        };
        match state {
            EntryState::Loaded | EntryState::Rebuilding => match version {
                Some(v) => Ok(ServeVerdict::Fresh {
                    value: Handle::from_arc(v),
                    state,
                }),
                None => Ok(ServeVerdict::NotReady { state }),
            },
            EntryState::Failed => {
                let (Some(good_at), Some(version)) = (last_good, version) else {
                    return Err(ServeError::BuildFailed {
                        key: key_text(key),
                        reason: last_error
                            .unwrap_or_else(|| "no prior successful build".to_string()),
                    });
                };
                let age = now.duration_since(good_at).unwrap_or_default();
                match self.shared.config.stale_serve_max_age {
                    Some(cap) if age >= cap => Err(ServeError::StaleExpired {
                        key: key_text(key),
                        age,
                        cap,
                        last_good_at: Some(good_at),
                        last_error,
                    }),
                    _ => Ok(ServeVerdict::Stale {
                        value: Handle::from_arc(version),
                        age,
                        last_good_at: good_at,
                        last_error,
                    }),
                }
            }
            EntryState::Unloaded | EntryState::Loading => Ok(ServeVerdict::NotReady { state }),
            EntryState::Evicted => Err(ServeError::Evicted { key: key_text(key) }),
        }
    }
}
