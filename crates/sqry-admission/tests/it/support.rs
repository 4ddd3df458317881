//! Shared helpers: managers with small budgets, values of exact sizes, a recording hook.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sqry_admission::{
    AdmissionConfig, AdmissionManager, EntryState, Handle, LedgerSnapshot, LoadError, PublishHook,
    ReserveRequest, RetireCause,
};

pub(crate) type Manager = AdmissionManager<String, Vec<u8>>;

pub(crate) const MIB: u64 = 1 << 20;

/// A manager with `limit` bytes and no background thread.
pub(crate) fn manager(limit: u64) -> Manager {
    AdmissionManager::new(config(limit))
}

/// A manager with `config`.
pub(crate) fn manager_with(config: AdmissionConfig) -> Manager {
    AdmissionManager::new(config)
}

pub(crate) fn config(limit: u64) -> AdmissionConfig {
    AdmissionConfig::new(limit).audit_interval(None)
}

pub(crate) fn key(s: &str) -> String {
    s.to_string()
}

/// A value of exactly `bytes` heap bytes.
pub(crate) fn blob(bytes: usize) -> Vec<u8> {
    vec![0xA5; bytes]
}

/// Registers `k` and publishes a value of `bytes` bytes under a reservation of that size.
pub(crate) fn load(m: &Manager, k: &str, bytes: usize) -> Handle<Vec<u8>> {
    m.register(key(k));
    let r = m
        .reserve(&key(k), ReserveRequest::new(bytes as u64))
        .unwrap_or_else(|e| panic!("reserve {k}: {e}"));
    m.publish(r, blob(bytes))
        .unwrap_or_else(|e| panic!("publish {k}: {e}"))
}

/// Like [`load`] but the entry is pinned.
pub(crate) fn load_pinned(m: &Manager, k: &str, bytes: usize) -> Handle<Vec<u8>> {
    m.register_pinned(key(k));
    load(m, k, bytes)
}

/// Records every hook call.
#[derive(Default)]
pub(crate) struct RecordingHook {
    pub(crate) published: Mutex<Vec<String>>,
    pub(crate) evicted: Mutex<Vec<(String, RetireCause)>>,
}

impl RecordingHook {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl PublishHook<String, Vec<u8>> for RecordingHook {
    fn on_publish(&self, key: &String, _value: &Handle<Vec<u8>>) {
        self.published.lock().push(key.clone());
    }

    fn on_evict(&self, key: &String, cause: RetireCause) {
        self.evicted.lock().push((key.clone(), cause));
    }
}

/// `e` is a key's cached failure inside its backoff window after one failure (a retry due
/// within the default 30 s window); returns the cached error.
pub(crate) fn backing_off(e: &LoadError) -> &(dyn Error + Send + Sync) {
    let LoadError::BackingOff {
        retry_after,
        failures,
        source,
        ..
    } = e
    else {
        panic!("backing off: {e:?}");
    };
    assert_eq!(*failures, 1);
    assert!(*retry_after > Duration::ZERO && *retry_after <= Duration::from_secs(30));
    &**source
}

/// The ledger holds what it held in `before`: loaded, reserved and retained bytes, and
/// `queued` requests in its queue.
pub(crate) fn assert_ledger_back_to(m: &Manager, before: &LedgerSnapshot, queued: usize) {
    let after = m.ledger().snapshot();
    assert_eq!(
        (
            after.loaded,
            after.reserved,
            after.retained,
            after.queue_depth
        ),
        (before.loaded, before.reserved, before.retained, queued),
        "{after}"
    );
}

/// `err` is a join that gave up at its request's deadline while the leader still loads, after
/// waiting at least `deadline` and less than `within`.
pub(crate) fn assert_join_timed_out(
    err: &LoadError,
    waited: Duration,
    deadline: Duration,
    within: Duration,
) {
    assert!(
        matches!(
            err,
            LoadError::JoinTimeout {
                state: EntryState::Loading,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(waited >= deadline && waited < within, "{waited:?}");
}
