//! The contracts of sqry's daemon (the code-search daemon this crate comes from: its
//! `manager.rs` and that file's unit tests), asserted against this crate's API. Each test names
//! the sqry test it stands for. Those that need internals (cancellation flags, hand-set states,
//! the rollback guard, panics injected between publish steps) are unit tests in
//! `src/manager/tests.rs`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use sqry_admission::{
    AdmissionConfig, AdmissionManager, EntryState, Handle, LoadError, LoadOptions, PublishHook,
    ReserveError, ReserveRequest, RetireCause, WeakManager,
};

use crate::support::{MIB, Manager, RecordingHook, blob, key, load, load_pinned, manager};

/// sqry's `reserve_rebuild_succeeds_when_headroom_available`
#[test]
fn reserve_succeeds_when_headroom_available() {
    let m = manager(MIB);
    let k = key("/repos/example");
    m.register(k.clone());
    let r = m.reserve(&k, ReserveRequest::new(500_000)).expect("fits");
    assert_eq!(r.bytes(), 500_000);
    assert_eq!(m.ledger().snapshot().reserved, 500_000);
    drop(r);
    assert_eq!(m.ledger().snapshot().reserved, 0, "drop refunds");
}

/// sqry's `reserve_rebuild_rejects_oversized_request`
#[test]
fn reserve_rejects_request_larger_than_the_budget() {
    let m = manager(MIB);
    let k = key("/repos/example");
    m.register(k.clone());
    let err = m
        .reserve(&k, ReserveRequest::new(10 * MIB))
        .expect_err("larger than the budget");
    match &err {
        ReserveError::ExceedsLimit {
            requested, ledger, ..
        } => {
            assert_eq!(*requested, 10 * MIB);
            assert_eq!(ledger.limit, MIB);
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_eq!(err.code(), sqry_admission::CODE_BUDGET_EXCEEDED);
    assert!(err.to_string().contains("/repos/example"), "{err}");
    assert_eq!(m.ledger().snapshot().reserved, 0, "ledger unchanged");
}

/// sqry's `reserve_rebuild_rejects_when_running_total_would_exceed_budget`
#[test]
fn reserve_rejects_when_running_total_would_exceed_budget() {
    let m = manager(MIB);
    let k = key("/repos/example");
    m.register(k.clone());
    let first = m.reserve(&k, ReserveRequest::new(600_000)).expect("fits");
    let err = m
        .reserve(&k, ReserveRequest::new(600_000))
        .expect_err("600k + 600k > 1 MiB");
    match &err {
        ReserveError::BudgetExceeded { ledger, .. } => {
            assert_eq!(ledger.reserved, 600_000, "first reservation still held");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    drop(first);
    assert_eq!(m.ledger().snapshot().reserved, 0);
}

/// sqry's `reserve_rebuild_rejects_unknown_key`
#[test]
fn reserve_rejects_unknown_key() {
    let m = manager(MIB);
    let err = m
        .reserve(
            &key("/repos/never-registered"),
            ReserveRequest::new(100_000),
        )
        .expect_err("unknown key");
    match &err {
        ReserveError::NotRegistered { key } => assert!(key.contains("/repos/never-registered")),
        other => panic!("wrong variant: {other:?}"),
    }
    assert_eq!(err.code(), sqry_admission::CODE_EVICTED);
    assert_eq!(m.ledger().snapshot().reserved, 0);
}

/// sqry's `publish_and_retain_moves_bytes_and_retains_old_arc` — the old version stays counted,
/// as retained, exactly while a reader holds it, and is credited back by that reader's drop.
#[test]
fn publish_moves_reservation_to_loaded_and_retains_old_version() {
    let m = manager(MIB);
    let old = load(&m, "/repos/example", 50_000);
    let k = key("/repos/example");
    let r = m.reserve(&k, ReserveRequest::new(100_000)).expect("fits");
    let new = m.publish(r, blob(80_000)).expect("publish");

    let s = m.ledger().snapshot();
    assert_eq!(s.reserved, 0, "reservation drained");
    assert_eq!(s.loaded, 80_000, "loaded = prior - prior + new");
    assert_eq!((s.retained, s.retained_count), (50_000, 1), "old retained");
    assert_eq!(Handle::holders(&old), 1, "the reader is the sole holder");
    drop(old);
    let s = m.ledger().snapshot();
    assert_eq!((s.retained, s.retained_count), (0, 0), "credited on drop");
    assert_eq!(m.ledger().metrics().retained_released, 1);
    drop(new);
}

/// sqry's `reap_once_drops_last_holder_entries` — with no reader, the old version is credited
/// back at publish time, without any reaper pass.
#[test]
fn replaced_version_without_readers_is_credited_at_once() {
    let m = manager(MIB);
    drop(load(&m, "/repos/example", 30_000));
    let r = m
        .reserve(&key("/repos/example"), ReserveRequest::new(0))
        .expect("zero always fits");
    drop(m.publish(r, Vec::new()).expect("publish"));
    let s = m.ledger().snapshot();
    assert_eq!((s.retained, s.retained_count), (0, 0));
    assert_eq!(s.loaded, 0);
    let audit = m.audit();
    assert_eq!(audit.reclaimed, 0, "nothing left for the audit to do");
    assert!(audit.consistent);
}

/// sqry's `reap_once_retains_entries_with_outstanding_holders`
#[test]
fn retained_version_with_a_reader_survives_audits_until_dropped() {
    let m = manager(MIB);
    let held = load(&m, "/repos/example", 40_000);
    let r = m
        .reserve(&key("/repos/example"), ReserveRequest::new(0))
        .expect("fits");
    drop(m.publish(r, Vec::new()).expect("publish"));
    assert_eq!(Handle::holders(&held), 1);
    for _ in 0..3 {
        let audit = m.audit();
        assert_eq!(audit.reclaimed, 0, "a held version is never reclaimed");
        assert!(audit.consistent);
        assert_eq!(m.ledger().snapshot().retained, 40_000);
    }
    drop(held);
    assert_eq!(m.ledger().snapshot().retained_count, 0);
}

/// sqry's `unconsumed_reservation_refunds_reserved_bytes_on_drop` (including on unwind)
#[test]
fn unconsumed_reservation_refunds_on_drop_and_on_panic() {
    let m = manager(MIB);
    let k = key("/repos/example");
    m.register(k.clone());
    let r = m.reserve(&k, ReserveRequest::new(250_000)).expect("fits");
    assert_eq!(m.ledger().snapshot().reserved, 250_000);
    let outcome = catch_unwind(AssertUnwindSafe(move || {
        let _held = r;
        panic!("rebuild panics before publishing");
    }));
    assert!(outcome.is_err());
    assert_eq!(m.ledger().snapshot().reserved, 0, "refunded on unwind");
}

/// sqry's `publish_and_retain_leaves_reservation_fully_disarmed_on_success`
#[test]
fn publish_drains_the_reservation_exactly_once() {
    let m = manager(MIB);
    let k = key("/repos/example");
    m.register(k.clone());
    let r = m.reserve(&k, ReserveRequest::new(100_000)).expect("fits");
    let v = m.publish(r, Vec::new()).expect("publish");
    assert_eq!(m.ledger().snapshot().reserved, 0);
    let again = m
        .reserve(&k, ReserveRequest::new(100_000))
        .expect("no leaked reservation");
    drop(again);
    assert_eq!(m.ledger().snapshot().reserved, 0);
    drop(v);
}

/// sqry's `get_or_load_builds_on_miss_and_caches`
#[test]
fn get_or_load_builds_on_miss_and_caches() {
    let m = manager(MIB);
    let k = key("/repos/example");
    let mut builds = 0;
    let g1 = m
        .get_or_load(&k, LoadOptions::new(1_000), |_| {
            builds += 1;
            Ok(blob(100))
        })
        .expect("first load");
    let g2 = m
        .get_or_load(&k, LoadOptions::new(1_000), |_| {
            builds += 1;
            Ok(blob(100))
        })
        .expect("cache hit");
    assert!(Handle::ptr_eq(&g1, &g2));
    assert_eq!(builds, 1);
}

/// sqry's `get_or_load_surfaces_builder_failures_and_sets_failed_state`
#[test]
fn get_or_load_surfaces_builder_failure_and_sets_failed_state() {
    let m = manager(MIB);
    let k = key("/repos/example");
    let err = m
        .get_or_load(&k, LoadOptions::new(1_000), |_| {
            Err("simulated plugin failure".into())
        })
        .expect_err("builder failure bubbles up");
    match &err {
        LoadError::Build { source, key } => {
            assert_eq!(source.to_string(), "simulated plugin failure");
            assert!(key.contains("/repos/example"));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_eq!(m.state(&k), Some(EntryState::Failed));
    let status = m.status();
    assert_eq!(status.entries[0].retry_count, 1);
    assert!(status.entries[0].last_error.is_some());
    assert_eq!(m.ledger().snapshot().reserved, 0, "no leaked reservation");
}

/// sqry's `evict_lru_picks_oldest_non_pinned_workspace`
#[test]
fn evict_lru_picks_the_least_recently_used() {
    let m = manager(MIB);
    let (a, b) = (key("/repos/a"), key("/repos/b"));
    drop(m.get_or_load(&a, LoadOptions::new(100_000), |_| Ok(Vec::new())));
    thread::sleep(Duration::from_millis(5));
    drop(m.get_or_load(&b, LoadOptions::new(100_000), |_| Ok(Vec::new())));
    assert_eq!(m.evict_lru(), Some(a.clone()));
    assert!(!m.contains(&a), "victim removed from the map");
    assert!(m.contains(&b), "non-victim stays");
}

/// sqry's `evict_lru_returns_none_when_no_candidates`
#[test]
fn evict_lru_returns_none_when_empty() {
    assert_eq!(manager(MIB).evict_lru(), None);
}

/// sqry's `evict_lru_skips_pinned_workspaces`
#[test]
fn evict_lru_skips_pinned_entries() {
    let m = manager(MIB);
    drop(load_pinned(&m, "/repos/pinned", 1_000));
    thread::sleep(Duration::from_millis(2));
    drop(load(&m, "/repos/other", 1_000));
    assert_eq!(m.evict_lru(), Some(key("/repos/other")));
    assert!(m.contains(&key("/repos/pinned")));
    assert_eq!(m.evict_lru(), None, "only the pinned entry is left");
}

/// sqry's `unload_removes_workspace_and_reclaims_bytes`
#[test]
fn unload_removes_entry_and_reclaims_bytes() {
    let m = manager(MIB);
    drop(load(&m, "/repos/example", 100_000));
    let k = key("/repos/example");
    assert_eq!(m.ledger().snapshot().loaded, 100_000);
    assert!(m.unload(&k));
    assert!(!m.contains(&k));
    let s = m.ledger().snapshot();
    assert_eq!(
        (s.loaded, s.retained),
        (0, 0),
        "no reader: reclaimed at once"
    );
    assert!(!m.unload(&k), "already gone");
}

/// sqry's `status_reflects_loaded_workspaces_and_memory`
#[test]
fn status_reflects_entries_and_memory() {
    let m = manager(MIB);
    let k = key("/repos/example");
    drop(m.get_or_load(&k, LoadOptions::new(100_000), |_| Ok(blob(4_096))));
    let status = m.status();
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.entries.len(), 1);
    let e = &status.entries[0];
    assert_eq!(e.key, k);
    assert_eq!(e.state, EntryState::Loaded);
    assert!(!e.pinned);
    assert_eq!((e.bytes, e.peak_bytes), (4_096, 4_096));
    assert!(e.last_good_at.is_some());
    assert_eq!(status.ledger.limit, MIB);
    assert_eq!(status.ledger.loaded, 4_096);
    assert!(status.ledger.high_water >= status.ledger.total());
    assert!(
        status.ledger.high_water >= 100_000,
        "the reservation peak is recorded"
    );
}

/// sqry's `reserve_rebuild_triggers_eviction_when_budget_tight`
#[test]
fn reserve_evicts_when_budget_is_tight() {
    let m = manager(MIB);
    drop(load(&m, "/repos/victim", 700_000));
    let new = key("/repos/new");
    m.register(new.clone());
    let r = m
        .reserve(&new, ReserveRequest::new(600_000))
        .expect("eviction frees headroom");
    assert!(!m.contains(&key("/repos/victim")));
    let s = m.ledger().snapshot();
    assert_eq!((s.reserved, s.loaded, s.retained), (600_000, 0, 0));
    assert_eq!(m.ledger().metrics().evictions.admission, 1);
    drop(r);
}

/// sqry's `reserve_rebuild_rejects_when_only_pinned_workspaces_remain`
#[test]
fn reserve_rejects_when_only_pinned_entries_remain() {
    let m = manager(MIB);
    drop(load_pinned(&m, "/repos/pinned", 900_000));
    let new = key("/repos/new");
    m.register(new.clone());
    let err = m
        .reserve(&new, ReserveRequest::new(600_000))
        .expect_err("pinned bytes cannot be evicted");
    match &err {
        ReserveError::BudgetExceeded {
            requested, ledger, ..
        } => {
            assert_eq!(*requested, 600_000);
            assert_eq!(ledger.loaded, 900_000, "pinned bytes still count");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert!(m.contains(&key("/repos/pinned")));
}

/// sqry's `execute_eviction_routes_bytes_through_retained_old`
#[test]
fn eviction_moves_bytes_from_loaded_to_retained() {
    let m = manager(MIB);
    let slow_reader = load(&m, "/repos/example", 300_000);
    assert!(m.unload(&key("/repos/example")));
    let s = m.ledger().snapshot();
    assert_eq!(s.loaded, 0, "left the loaded tier");
    assert_eq!(
        (s.retained, s.retained_count),
        (300_000, 1),
        "entered retained"
    );
    let _ = m.audit();
    assert_eq!(
        m.ledger().snapshot().retained,
        300_000,
        "held: still counted"
    );
    drop(slow_reader);
    assert_eq!(m.ledger().snapshot().retained, 0, "credited by the drop");
}

/// sqry's `get_or_load_state_cas_rejects_concurrent_load` — exactly one loader runs the build;
/// here the others join it (single flight) and get its result.
#[test]
fn concurrent_loads_run_one_build_and_share_its_result() {
    const THREADS: usize = 8;
    let m = manager(MIB);
    let builds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (m, builds, start) = (m.clone(), Arc::clone(&builds), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                m.get_or_load(&key("/repos/example"), LoadOptions::new(10_000), |_| {
                    builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(30));
                    Ok(blob(5_000))
                })
                .expect("every caller gets the value")
            })
        })
        .collect();
    let values: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(values.iter().all(|v| Handle::ptr_eq(v, &values[0])));
    assert_eq!(m.ledger().snapshot().reserved, 0);
}

/// sqry's `get_or_load_loading_guard_recovers_from_builder_panic`
#[test]
fn builder_panic_leaves_entry_failed_with_error_and_retry() {
    let m = manager(MIB);
    let k = key("/repos/example");
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let _ = m.get_or_load(&k, LoadOptions::new(1_000), |_| {
            panic!("simulated builder panic")
        });
    }));
    assert!(outcome.is_err(), "the panic propagates");
    assert_eq!(m.state(&k), Some(EntryState::Failed));
    let e = &m.status().entries[0];
    assert!(
        e.last_error
            .as_deref()
            .is_some_and(|t| t.contains("panicked"))
    );
    assert!(e.retry_count >= 1);
    assert_eq!(m.ledger().snapshot().reserved, 0, "refunded on unwind");
    // Inside the backoff window a load backs off; an explicit retry loads it again.
    let err = m
        .get_or_load(&k, LoadOptions::new(1_000), |_| Ok(blob(10)))
        .expect_err("backing off");
    assert!(matches!(err, LoadError::BackingOff { .. }), "{err:?}");
    let v = m
        .get_or_load(&k, LoadOptions::new(1_000).retry_now(), |_| Ok(blob(10)))
        .expect("retry succeeds");
    assert_eq!(v.len(), 10);
    assert_eq!(m.status().entries[0].retry_count, 0);
}

/// sqry's `concurrent_load_and_evict_never_publishes_into_evicted_workspace`
#[test]
fn concurrent_load_and_unload_never_publish_into_an_evicted_entry() {
    for iter in 0..64u64 {
        let m = manager(64 * MIB);
        let k = format!("/repos/example-{iter}");
        let start = Arc::new(Barrier::new(2));
        let loader = {
            let (m, k, start) = (m.clone(), k.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                let _ = m.get_or_load(&k, LoadOptions::new(100_000), |_| Ok(blob(1_000)));
            })
        };
        let evictor = {
            let (m, k, start) = (m.clone(), k.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                m.unload(&k);
            })
        };
        loader.join().expect("loader");
        evictor.join().expect("evictor");
        if let Some(state) = m.state(&k) {
            assert_eq!(
                state,
                EntryState::Loaded,
                "iter {iter}: in the map means loaded"
            );
        }
        let s = m.ledger().snapshot();
        assert_eq!(s.reserved, 0, "iter {iter}: no leaked reservation");
        let expected = if m.contains(&k) { 1_000 } else { 0 };
        assert_eq!(
            s.loaded, expected,
            "iter {iter}: loaded bytes match the map"
        );
        assert_eq!(s.retained, 0, "iter {iter}");
        assert!(s.high_water <= s.limit);
    }
}

/// sqry's `publish_fires_installed_hook`
#[test]
fn publish_fires_the_installed_hook_once() {
    let m = manager(MIB);
    let hook = RecordingHook::new();
    m.set_hook(hook.clone());
    let k = key("/repos/example");
    drop(m.get_or_load(&k, LoadOptions::new(0), |_| Ok(Vec::new())));
    assert_eq!(*hook.published.lock(), vec![k]);
}

/// sqry's `set_hook_replaces_prior_hook_for_subsequent_publishes`
#[test]
fn set_hook_replaces_the_previous_hook() {
    let m = manager(MIB);
    let (a, b) = (RecordingHook::new(), RecordingHook::new());
    let k = key("/repos/example");
    m.set_hook(a.clone());
    drop(m.get_or_load(&k, LoadOptions::new(0), |_| Ok(Vec::new())));
    m.unload(&k);
    m.set_hook(b.clone());
    drop(m.get_or_load(&k, LoadOptions::new(0), |_| Ok(Vec::new())));
    assert_eq!(a.published.lock().len(), 1);
    assert_eq!(
        a.evicted.lock().as_slice(),
        &[(k.clone(), RetireCause::Explicit)]
    );
    assert_eq!(b.published.lock().len(), 1);
}

struct UnloadingHook {
    manager: WeakManager<String, Vec<u8>>,
}

impl PublishHook<String, Vec<u8>> for UnloadingHook {
    fn on_publish(&self, key: &String, _value: &Handle<Vec<u8>>) {
        if let Some(m) = self.manager.upgrade() {
            assert!(m.unload(key), "the hook sees the published entry");
        }
    }
}

/// sqry's `hook_can_call_manager_unload_without_deadlock`
#[test]
fn hook_can_unload_the_key_it_was_told_about_without_deadlock() {
    let m = manager(MIB);
    m.set_hook(Arc::new(UnloadingHook {
        manager: m.downgrade(),
    }));
    let k = key("/repos/example");
    let handle = {
        let (m, k) = (m.clone(), k.clone());
        thread::spawn(move || {
            m.get_or_load(&k, LoadOptions::new(0), |_| Ok(blob(10)))
                .expect("load succeeds with a re-entrant hook")
                .len()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "get_or_load deadlocked in the hook"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(handle.join().expect("loader"), 10);
    assert!(!m.contains(&k), "the hook's unload removed the entry");
}

/// sqry's `retention_reaper_task_eventually_drops_free_entries` — retained bytes come back when
/// the last reader drops, on its own task, with no reaper; the audit thread runs beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_bytes_return_when_a_reader_task_drops_its_handle() {
    let m: Manager = AdmissionManager::new(
        AdmissionConfig::new(MIB).audit_interval(Some(Duration::from_millis(10))),
    );
    let reader = load(&m, "/repos/example", 64_000);
    let r = m
        .reserve(&key("/repos/example"), ReserveRequest::new(0))
        .expect("fits");
    drop(m.publish(r, Vec::new()).expect("publish"));
    assert_eq!(m.ledger().snapshot().retained, 64_000);
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(reader);
    });
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if m.ledger().snapshot().retained_count == 0 {
            task.await.expect("reader task");
            assert_eq!(m.ledger().metrics().retained_released, 1);
            assert_eq!(
                m.ledger().metrics().audit_reclaimed,
                0,
                "not the audit's doing"
            );
            return;
        }
    }
    panic!("retained version not credited within 200 ms of its reader dropping it");
}

/// The audit thread reports a version held past the drain warning, and keeps it counted.
#[test]
fn audit_thread_warns_about_versions_held_past_the_drain_age() {
    let m: Manager = AdmissionManager::new(
        AdmissionConfig::new(MIB)
            .audit_interval(Some(Duration::from_millis(5)))
            .drain_warn_after(Duration::from_millis(10)),
    );
    let reader = load(&m, "/repos/example", 8_000);
    assert!(m.unload(&key("/repos/example")));
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.ledger().metrics().drain_warnings == 0 {
        assert!(Instant::now() < deadline, "no drain warning within 5 s");
        thread::sleep(Duration::from_millis(5));
    }
    let s = m.ledger().snapshot();
    assert_eq!(s.retained, 8_000, "a warning is not a deadline");
    assert!(
        s.oldest_retained
            .is_some_and(|age| age >= Duration::from_millis(10))
    );
    drop(reader);
    assert_eq!(m.ledger().snapshot().retained, 0);
    let _ = SystemTime::now();
}

/// A manager handle outliving its manager: reservations and handles still settle.
#[test]
fn reservations_and_handles_outliving_the_manager_settle_their_bytes() {
    let m = manager(MIB);
    let ledger = m.ledger().clone();
    let reader = load(&m, "/repos/example", 1_000);
    m.register(key("/repos/other"));
    let r = m
        .reserve(&key("/repos/other"), ReserveRequest::new(500))
        .expect("fits");
    drop(m);
    assert_eq!(ledger.snapshot().reserved, 500);
    drop(r);
    assert_eq!(ledger.snapshot().reserved, 0);
    drop(reader);
    assert_eq!(ledger.snapshot().total(), 0);
}
