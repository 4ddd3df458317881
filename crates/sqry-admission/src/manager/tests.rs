//! Contracts that need the manager's internals: cancellation flags, lifecycle states set by
//! hand, the slot transaction, and panics injected between the steps of a publish.

use std::panic::{AssertUnwindSafe, catch_unwind};

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::*;
use crate::entry::SlotTxn;
use crate::error::{LoadError, ReserveError};
use crate::sync::Arc;

pub(super) type Manager = AdmissionManager<String, Vec<u8>>;

pub(super) const MIB: u64 = 1 << 20;

fn manager() -> Manager {
    AdmissionManager::new(AdmissionConfig::new(MIB).audit_interval(None))
}

fn key(path: &str) -> String {
    path.to_string()
}

/// Publishes a value of exactly `bytes` heap bytes for `k` (registered first).
fn load(m: &Manager, k: &str, bytes: usize) -> Handle<Vec<u8>> {
    m.register(key(k));
    let r = m
        .reserve(&key(k), ReserveRequest::new(bytes as u64))
        .expect("fits");
    m.publish(r, vec![7u8; bytes]).expect("publish")
}

/// The serve path never waits for a writer: with the map write-locked (as when a key is
/// added or removed) and the entry's slot write-locked (as through a publish's ledger
/// commit), `get` still returns the published version at once.
#[test]
fn serve_reads_do_not_wait_for_writers() {
    let m = manager();
    let held = load(&m, "/repos/busy", 1000);
    let entry = m.entry(&key("/repos/busy")).expect("registered");
    let map_guard = m.shared.entries.write();
    let slot_guard = entry.slot.write();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = m.clone();
    let t = std::thread::spawn(move || {
        let got = reader.get(&key("/repos/busy")).map(|h| h.version_id());
        let _ = tx.send(got);
    });
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a read blocked behind writers");
    assert_eq!(got, Some(held.version_id()));
    drop(slot_guard);
    drop(map_guard);
    t.join().expect("reader");
}

/// sqry's `reserve_rebuild_rejects_cancelled_workspace`
#[test]
fn reserve_rejects_cancelled_entry() {
    let m = manager();
    let k = key("/repos/cancelled");
    m.register(k.clone());
    m.entry(&k)
        .expect("registered")
        .cancelled
        .store(true, Ordering::Release);
    let err = m.reserve(&k, ReserveRequest::new(100_000)).unwrap_err();
    assert!(
        matches!(&err, ReserveError::Evicted { key } if key.contains("/repos/cancelled")),
        "{err:?}"
    );
    assert_eq!(m.ledger().snapshot().reserved, 0);
}

/// sqry's `rollback_guard_restores_workspace_on_panic_path`
#[test]
fn slot_txn_restores_previous_version_and_bytes_when_dropped_armed() {
    let m = manager();
    let old = load(&m, "/repos/example", 10_000);
    let entry = m.entry(&key("/repos/example")).expect("registered");
    {
        let mut txn = SlotTxn::begin(entry.slot.write(), &entry.bytes);
        let stomped = m.ledger().stage(vec![1u8; 99_999], 99_999);
        let previous = txn.swap_in(stomped, 99_999);
        assert_eq!(previous, Some(old.version_id()));
        assert_eq!(entry.bytes.load(Ordering::Acquire), 99_999);
        // Dropped armed, as on the unwind path.
    }
    let restored = entry.current().expect("a version");
    assert!(Arc::ptr_eq(&restored, old.arc()), "previous version back");
    assert_eq!(entry.bytes.load(Ordering::Acquire), 10_000);
    assert_eq!(m.ledger().snapshot().loaded, 10_000, "ledger untouched");
}

/// sqry's `rollback_guard_disarmed_is_noop`
#[test]
fn slot_txn_committed_keeps_the_new_version() {
    let m = manager();
    let old = load(&m, "/repos/example", 10_000);
    let entry = m.entry(&key("/repos/example")).expect("registered");
    let stomped = m.ledger().stage(vec![1u8; 99_999], 99_999);
    let previous = {
        let mut txn = SlotTxn::begin(entry.slot.write(), &entry.bytes);
        txn.swap_in(Arc::clone(&stomped), 99_999);
        txn.commit()
    };
    assert!(Arc::ptr_eq(previous.as_ref().expect("previous"), old.arc()));
    assert_eq!(entry.bytes.load(Ordering::Acquire), 99_999);
    assert!(Arc::ptr_eq(&entry.current().expect("a version"), &stomped));
}

/// sqry's `unwind_after_swap_before_admission_commit_restores_full_state` — a panic between the
/// slot swap and the ledger commit (or inside the commit's fallible insert) leaves
/// everything exactly as before the publish.
#[test]
fn unwind_after_swap_before_ledger_commit_restores_full_state() {
    for point in ["publish.after_swap", "ledger.commit.insert"] {
        let m = manager();
        let prior = load(&m, "/repos/example", 50_000);
        let k = key("/repos/example");
        let r = m.reserve(&k, ReserveRequest::new(100_000)).expect("fits");
        assert_eq!(m.ledger().snapshot().reserved, 100_000);

        crate::failpoint::arm(point);
        let outcome = catch_unwind(AssertUnwindSafe(|| m.publish(r, vec![9u8; 60_000])));
        assert!(outcome.is_err(), "{point}: the injected panic propagates");

        let entry = m.entry(&k).expect("still registered");
        let current = entry.current().expect("a version");
        assert!(
            Arc::ptr_eq(&current, prior.arc()),
            "{point}: slot rolled back"
        );
        assert_eq!(entry.bytes.load(Ordering::Acquire), 50_000, "{point}");
        let s = m.ledger().snapshot();
        assert_eq!(s.reserved, 0, "{point}: reservation refunded");
        assert_eq!(s.loaded, 50_000, "{point}: loaded untouched");
        assert_eq!((s.retained, s.retained_count), (0, 0), "{point}");
        assert_eq!(s.loaded_count, 1, "{point}: no record of the new version");
        assert!(m.audit().consistent, "{point}");
    }
}

/// sqry's `get_or_load_state_cas_rejects_concurrent_load` (with `SingleFlight::Refuse`; the
/// default joins instead — see the integration test `concurrent_loads_run_one_build…`)
#[test]
fn get_or_load_refuses_concurrent_load_when_asked_to() {
    let m = manager();
    let k = key("/repos/example");
    let entry = m.entry_or_insert(&k);
    entry.set_state(EntryState::Loading);
    let opts = LoadOptions::new(1_000).single_flight(SingleFlight::Refuse);
    let err = m.get_or_load(&k, opts, |_| Ok(Vec::new())).unwrap_err();
    assert!(
        matches!(
            &err,
            LoadError::InProgress {
                state: EntryState::Loading,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("already in progress"), "{err}");
    assert_eq!(m.ledger().snapshot().reserved, 0);
}

/// sqry's `get_or_load_detects_cancellation_between_cas_and_publish`
#[test]
fn get_or_load_honours_cancellation_left_before_the_gate() {
    let m = manager();
    let k = key("/repos/example");
    let entry = m.entry_or_insert(&k);
    entry.cancelled.store(true, Ordering::Release);
    entry.set_state(EntryState::Unloaded);
    let mut built = false;
    let err = m
        .get_or_load(&k, LoadOptions::new(1_000), |_| {
            built = true;
            Ok(Vec::new())
        })
        .unwrap_err();
    assert!(matches!(err, LoadError::EvictedMidLoad { .. }), "{err:?}");
    assert!(err.to_string().contains("evicted mid-load"));
    assert!(!built, "nothing is built for an evicted entry");
    assert!(entry.cancelled.load(Ordering::Acquire), "cancellation kept");
    assert_eq!(entry.state(), EntryState::Failed);
    assert_eq!(m.ledger().snapshot().reserved, 0);
}

#[test]
fn classify_reports_not_ready_for_unloaded_and_loading() {
    let m = manager();
    let k = key("/repos/example");
    m.register(k.clone());
    let now = SystemTime::now();
    assert!(matches!(
        m.classify_for_serve(&k, now),
        Ok(ServeVerdict::NotReady {
            state: EntryState::Unloaded
        })
    ));
    m.entry(&k)
        .expect("registered")
        .set_state(EntryState::Loading);
    assert!(matches!(
        m.classify_for_serve(&k, now),
        Ok(ServeVerdict::NotReady {
            state: EntryState::Loading
        })
    ));
    // The transient window of an eviction: still in the map, already Evicted.
    m.entry(&k)
        .expect("registered")
        .set_state(EntryState::Evicted);
    let err = m.classify_for_serve(&k, now).unwrap_err();
    assert_eq!(err.code(), crate::CODE_EVICTED);
}

/// A waker that reports each wake on a channel.
struct ChannelWaker(std::sync::Mutex<std::sync::mpsc::Sender<()>>);

impl std::task::Wake for ChannelWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.lock().map(|tx| tx.send(()));
    }
}

/// Async joins with a deadline register one timer each and take it back however they end —
/// the load finished, the deadline passed (the timer thread woke them), or the join was
/// dropped — and a join polled with a new waker replaces its timer instead of adding one; so
/// timers do not pile up in a daemon whose joins mostly finish long before their deadlines.
#[test]
fn async_joins_take_their_deadline_timers_back() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let m = manager();
    let k = key("/repos/slow");
    let timers = &m.shared.housekeeper;
    let released = std::cell::Cell::new(false);
    let mut leader = Box::pin(m.get_or_load_async(&k, LoadOptions::new(100), |_ctx| {
        std::future::poll_fn(|_| {
            if released.get() {
                Poll::Ready(Ok(vec![0u8; 10]))
            } else {
                Poll::Pending
            }
        })
    }));
    let mut noop = Context::from_waker(Waker::noop());
    assert!(leader.as_mut().poll(&mut noop).is_pending(), "building");
    let join = |timeout: Duration| {
        m.get_or_load_async(
            &k,
            LoadOptions::new(100).request(ReserveRequest::new(100).wait_for(timeout)),
            |_ctx| async { unreachable!("a joiner of a load in flight never builds") },
        )
    };

    let mut long = Box::pin(join(Duration::from_secs(60)));
    assert!(long.as_mut().poll(&mut noop).is_pending());
    assert_eq!(timers.timers_pending(), 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let waker = Waker::from(Arc::new(ChannelWaker(std::sync::Mutex::new(tx))));
    let mut cx = Context::from_waker(&waker);
    assert!(long.as_mut().poll(&mut cx).is_pending());
    assert_eq!(timers.timers_pending(), 1, "a new waker replaces the timer");
    drop(long);
    assert_eq!(
        timers.timers_pending(),
        0,
        "a dropped join takes its timer back"
    );

    let mut short = Box::pin(join(Duration::from_millis(20)));
    assert!(short.as_mut().poll(&mut cx).is_pending());
    assert_eq!(timers.timers_pending(), 1);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the timer thread woke the join at its deadline");
    let Poll::Ready(Err(LoadError::JoinTimeout { .. })) = short.as_mut().poll(&mut cx) else {
        panic!("the join gave up at its deadline");
    };
    assert_eq!(timers.timers_pending(), 0, "a fired timer is gone");

    let mut finishing = Box::pin(join(Duration::from_secs(60)));
    assert!(finishing.as_mut().poll(&mut noop).is_pending());
    assert_eq!(timers.timers_pending(), 1);
    released.set(true);
    let Poll::Ready(Ok(led)) = leader.as_mut().poll(&mut noop) else {
        panic!("the leader publishes");
    };
    let Poll::Ready(Ok(joined)) = finishing.as_mut().poll(&mut noop) else {
        panic!("the join receives the load's result");
    };
    assert!(Handle::ptr_eq(&led, &joined));
    assert_eq!(
        timers.timers_pending(),
        0,
        "a finished join takes its timer back"
    );
}
