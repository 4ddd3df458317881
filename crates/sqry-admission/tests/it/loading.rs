//! Loading and rebuilding: single flight, rebuild lifecycles, failures and backoff.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use platform_primitives::error::chain;
use sqry_admission::{EntryState, Handle, LoadError, LoadOptions, ReserveRequest, SingleFlight};

use crate::support::{assert_join_timed_out, backing_off, blob, key, load, manager};

#[test]
fn joiners_of_a_failed_load_receive_its_error() {
    let m = manager(100_000);
    let start = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (m, start) = (m.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                m.get_or_load(&key("k"), LoadOptions::new(100), |_| {
                    thread::sleep(Duration::from_millis(30));
                    Err("disk gone".into())
                })
                .expect_err("fails")
            })
        })
        .collect();
    let errors: Vec<LoadError> = threads
        .into_iter()
        .map(|t| t.join().expect("join"))
        .collect();
    let builds = errors
        .iter()
        .filter(|e| matches!(e, LoadError::Build { .. }))
        .count();
    assert_eq!(builds, 1, "one build ran: {errors:?}");
    for e in &errors {
        assert!(
            matches!(e, LoadError::Build { .. } | LoadError::JoinedFailed { .. }),
            "{e:?}"
        );
        let text = chain(e);
        assert!(text.contains("disk gone"), "{text}");
    }
    assert_eq!(m.status().entries[0].retry_count, 1);
}

#[test]
fn refuse_mode_returns_in_progress_while_a_load_runs() {
    let m = manager(100_000);
    let started = Arc::new(Barrier::new(2));
    let loader = {
        let (m, started) = (m.clone(), Arc::clone(&started));
        thread::spawn(move || {
            m.get_or_load(&key("k"), LoadOptions::new(100), |_| {
                started.wait();
                thread::sleep(Duration::from_millis(50));
                Ok(blob(10))
            })
            .map(|v| v.len())
        })
    };
    started.wait();
    let err = m
        .get_or_load(
            &key("k"),
            LoadOptions::new(100).single_flight(SingleFlight::Refuse),
            |_| Ok(blob(10)),
        )
        .expect_err("in progress");
    assert!(matches!(
        err,
        LoadError::InProgress {
            state: EntryState::Loading,
            ..
        }
    ));
    assert_eq!(loader.join().expect("loader").expect("loads"), 10);
}

#[test]
fn rebuild_serves_the_old_version_until_publish_and_retains_it_for_readers() {
    let m = manager(10_000);
    let v1 = load(&m, "k", 1_000);
    let during = Arc::new(parking_lot::Mutex::new(None));
    let v2 = m
        .rebuild(&key("k"), ReserveRequest::new(2_000), |k| {
            *during.lock() = Some((m.state(k), m.get(k).map(|h| h.len())));
            Ok(blob(2_000))
        })
        .expect("rebuild");
    assert_eq!(
        *during.lock(),
        Some((Some(EntryState::Rebuilding), Some(1_000))),
        "the old version served during the rebuild"
    );
    let s = m.ledger().snapshot();
    assert_eq!((s.loaded, s.retained), (2_000, 1_000));
    assert_eq!(m.state(&key("k")), Some(EntryState::Loaded));
    drop(v1);
    assert_eq!(m.ledger().snapshot().retained, 0);
    assert_eq!(v2.len(), 2_000);
}

#[test]
fn failed_rebuild_keeps_the_last_good_version_and_counts_backoff() {
    let m = manager(10_000);
    drop(load(&m, "k", 1_000));
    let err = m
        .rebuild(&key("k"), ReserveRequest::new(2_000), |_| {
            Err("parse error".into())
        })
        .expect_err("fails");
    assert!(matches!(err, LoadError::Build { .. }));
    assert_eq!(m.state(&key("k")), Some(EntryState::Failed));
    assert_eq!(m.get(&key("k")).expect("last good kept").len(), 1_000);
    let e = &m.status().entries[0];
    assert_eq!(e.retry_count, 1);
    let after = e.retry_after.expect("backoff after a failure");
    assert!(after <= Duration::from_secs(30) && after > Duration::from_secs(29));
    assert_eq!(m.ledger().snapshot().loaded, 1_000);
    // A second rebuild may run from Failed (inside the window only when asked for explicitly);
    // success resets the count.
    drop(
        m.rebuild(&key("k"), LoadOptions::new(500).retry_now(), |_| {
            Ok(blob(500))
        })
        .expect("succeeds"),
    );
    assert_eq!(m.status().entries[0].retry_count, 0);
}

#[test]
fn concurrent_rebuild_is_refused_and_get_or_load_serves_the_current_version() {
    let m = manager(10_000);
    let v1 = load(&m, "k", 1_000);
    let inner = m
        .rebuild(&key("k"), ReserveRequest::new(100), |k| {
            let refused = m.rebuild(k, ReserveRequest::new(100), |_| Ok(blob(1)));
            assert!(matches!(
                refused,
                Err(LoadError::InProgress {
                    state: EntryState::Rebuilding,
                    ..
                })
            ));
            let served = m
                .get_or_load(k, LoadOptions::new(100), |_| Ok(blob(1)))
                .expect("served without waiting");
            assert!(Handle::ptr_eq(&served, &v1));
            Ok(blob(100))
        })
        .expect("rebuild");
    assert_eq!(inner.len(), 100);
}

#[test]
fn unknown_key_cannot_be_rebuilt() {
    let m = manager(10_000);
    let err = m
        .rebuild(&key("nope"), ReserveRequest::new(1), |_| Ok(blob(1)))
        .expect_err("not registered");
    assert!(err.to_string().contains("not registered"), "{err}");
}

/// `rebuild` of a registered key that was never loaded says so, instead of claiming a load is
/// in progress.
#[test]
fn rebuild_of_a_never_loaded_key_says_it_was_never_loaded() {
    let m = manager(10_000);
    m.register(key("k"));
    let err = m
        .rebuild(&key("k"), ReserveRequest::new(100), |_| Ok(blob(10)))
        .expect_err("nothing to rebuild");
    assert!(matches!(err, LoadError::NotLoaded { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("never loaded"), "{text}");
    assert!(!text.contains("in progress"), "{text}");
    assert_eq!(m.state(&key("k")), Some(EntryState::Unloaded));
}

/// Inside the failure backoff window, `get_or_load` of a failed key returns the cached error
/// at once instead of running the builder again: ten back-to-back calls build once, and the
/// other nine carry the first one's error, so a client hammering a broken index does not
/// rebuild it on every request while status says when a retry makes sense.
#[test]
fn backoff_returns_the_cached_error_inside_the_window() {
    let m = manager(10_000);
    let builds = std::sync::atomic::AtomicUsize::new(0);
    let mut errors = Vec::new();
    for _ in 0..10 {
        let err = m
            .get_or_load(&key("k"), LoadOptions::new(100), |_| {
                builds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err("index corrupt".into())
            })
            .expect_err("fails");
        errors.push(err);
    }
    assert_eq!(builds.into_inner(), 1, "the builder ran once: {errors:?}");
    for e in &errors[1..] {
        let source = backing_off(e);
        assert!(
            source.to_string().contains("building"),
            "the cached error: {source}"
        );
        assert!(
            source
                .source()
                .is_some_and(|s| s.to_string().contains("index corrupt")),
            "the builder's own error is the cached error's source"
        );
    }
    let status = m.status();
    assert_eq!(status.entries[0].retry_count, 1, "one failure counted");
    assert!(status.entries[0].retry_after.is_some());
    // An explicit retry builds at once.
    let v = m
        .get_or_load(&key("k"), LoadOptions::new(100).retry_now(), |_| {
            Ok(blob(10))
        })
        .expect("the explicit retry builds");
    assert_eq!(v.len(), 10);
    assert_eq!(m.status().entries[0].retry_count, 0);
}

/// Inside the failure backoff window a rebuild of a failed key — blocking or async — returns
/// the cached error at once, as a load does, without running the builder; the entry stays
/// `Failed`, still serving its last good version, and nothing is reserved.
#[tokio::test(flavor = "current_thread")]
async fn rebuild_of_a_failed_key_backs_off_inside_the_window() {
    let m = manager(10_000);
    let v1 = load(&m, "k", 1_000);
    let builds = std::sync::atomic::AtomicUsize::new(0);
    let fail = || {
        builds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err::<Vec<u8>, _>("index corrupt".into())
    };
    let err = m
        .rebuild(&key("k"), ReserveRequest::new(500), |_| fail())
        .expect_err("the builder fails");
    assert!(matches!(err, LoadError::Build { .. }), "{err:?}");
    let blocking = m
        .rebuild(&key("k"), ReserveRequest::new(500), |_| fail())
        .expect_err("backs off");
    let asynchronous = m
        .rebuild_async(&key("k"), ReserveRequest::new(500), |_| async { fail() })
        .await
        .expect_err("backs off");
    for e in [&blocking, &asynchronous] {
        let source = backing_off(e);
        assert!(
            chain(source).contains("index corrupt"),
            "the cached error: {source}"
        );
    }
    assert_eq!(
        builds.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the builder ran once"
    );
    assert_eq!(m.state(&key("k")), Some(EntryState::Failed));
    assert!(Handle::ptr_eq(&m.get(&key("k")).expect("last good"), &v1));
    assert_eq!(m.status().entries[0].retry_count, 1, "one failure counted");
    let s = m.ledger().snapshot();
    assert_eq!((s.loaded, s.reserved), (1_000, 0), "{s}");
    // An explicit retry rebuilds at once.
    let v2 = m
        .rebuild(&key("k"), LoadOptions::new(500).retry_now(), |_| {
            Ok(blob(500))
        })
        .expect("the explicit retry rebuilds");
    assert_eq!(v2.len(), 500);
    assert_eq!(m.state(&key("k")), Some(EntryState::Loaded));
    assert_eq!(m.status().entries[0].retry_count, 0);
}

/// The schedule is configurable: a short window reopens the gate once it passes, and an empty
/// schedule never backs off. The async path backs off too.
#[tokio::test(flavor = "current_thread")]
async fn backoff_window_follows_the_configured_schedule() {
    let m = crate::support::manager_with(
        crate::support::config(10_000).failure_backoff(vec![Duration::from_millis(50)]),
    );
    let builds = std::sync::atomic::AtomicUsize::new(0);
    let fail = || {
        builds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err::<Vec<u8>, _>("flaky".into())
    };
    let _ = m.get_or_load(&key("k"), LoadOptions::new(100), |_| fail());
    let err = m
        .get_or_load_async(&key("k"), LoadOptions::new(100), |_| async { fail() })
        .await
        .expect_err("backs off");
    assert!(matches!(err, LoadError::BackingOff { .. }), "{err:?}");
    assert_eq!(builds.load(std::sync::atomic::Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let _ = m.get_or_load(&key("k"), LoadOptions::new(100), |_| fail());
    assert_eq!(
        builds.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the window passed: built again"
    );

    let never =
        crate::support::manager_with(crate::support::config(10_000).failure_backoff(Vec::new()));
    for _ in 0..3 {
        let _ = never.get_or_load(&key("k"), LoadOptions::new(100), |_| fail());
    }
    assert_eq!(builds.load(std::sync::atomic::Ordering::Relaxed), 5);
}

/// A builder that calls `get_or_load` on its own key gets a typed error instead of waiting for
/// itself for ever (and leaving every later caller of the key hanging behind it).
#[test]
fn a_builder_loading_its_own_key_gets_an_error_not_a_hang() {
    let m = manager(10_000);
    let (tx, rx) = std::sync::mpsc::channel();
    let loader = {
        let m = m.clone();
        thread::spawn(move || {
            let inner = std::sync::Mutex::new(None);
            let outer = m.get_or_load(&key("k"), LoadOptions::new(100), |ctx| {
                let nested = m.get_or_load(ctx.key(), LoadOptions::new(100), |_| Ok(blob(1)));
                *inner.lock().expect("inner") = Some(nested.map(|h| h.len()));
                Ok(blob(10))
            });
            let _ = tx.send((inner.into_inner().expect("inner"), outer.map(|h| h.len())));
        })
    };
    let (inner, outer) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the nested load returned instead of waiting for itself");
    let inner = inner.expect("the builder ran");
    assert!(
        matches!(inner, Err(LoadError::SelfJoin { .. })),
        "{inner:?}"
    );
    assert_eq!(outer.expect("the outer load still publishes"), 10);
    loader.join().expect("loader");
    assert_eq!(m.state(&key("k")), Some(EntryState::Loaded));
}

/// A blocking builder sees its entry evicted mid-build through its context, and stops.
#[test]
fn eviction_mid_build_is_visible_to_the_builder() {
    let m = manager(10_000);
    drop(load(&m, "a", 400));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let rebuild = {
        let m = m.clone();
        thread::spawn(move || {
            let mut seen = None;
            let result = m.rebuild(&key("a"), ReserveRequest::new(100), |ctx| {
                started_tx.send(()).expect("started");
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while seen.is_none() && std::time::Instant::now() < deadline {
                    seen = ctx.cancelled();
                    thread::sleep(Duration::from_millis(1));
                }
                Err(format!("stopped: {seen:?}").into())
            });
            (seen, result.map(|h| h.len()))
        })
    };
    started_rx.recv().expect("the rebuild started");
    assert_eq!(m.evict_lru(), Some(key("a")));
    let (seen, result) = rebuild.join().expect("rebuild");
    assert_eq!(seen, Some(sqry_admission::Cancelled::Evicted));
    assert!(result.is_err());
    assert_eq!(m.ledger().snapshot().total(), 0);
}

/// `shutdown` tells every build in flight to stop and refuses new loads.
#[test]
fn shutdown_cancels_builds_in_flight_and_refuses_new_loads() {
    let m = manager(10_000);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let loader = {
        let m = m.clone();
        thread::spawn(move || {
            let mut seen = None;
            let result = m.get_or_load(&key("k"), LoadOptions::new(100), |ctx| {
                started_tx.send(()).expect("started");
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while seen.is_none() && std::time::Instant::now() < deadline {
                    seen = ctx.cancelled();
                    thread::sleep(Duration::from_millis(1));
                }
                Err("stopped".into())
            });
            (seen, result.is_err())
        })
    };
    started_rx.recv().expect("the load started");
    m.shutdown();
    let (seen, failed) = loader.join().expect("loader");
    assert_eq!(seen, Some(sqry_admission::Cancelled::ShuttingDown));
    assert!(failed);
    let err = m
        .get_or_load(&key("other"), LoadOptions::new(100), |_| Ok(blob(1)))
        .expect_err("refused");
    assert!(matches!(err, LoadError::ShuttingDown { .. }), "{err:?}");
    assert_eq!(m.ledger().snapshot().total(), 0);
}

/// A blocking join waits at most until its request's deadline, then says why it gave up; the
/// load it joined carries on.
#[test]
fn a_blocking_join_gives_up_at_its_deadline() {
    let m = manager(10_000);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
    let leader = {
        let m = m.clone();
        thread::spawn(move || {
            m.get_or_load(&key("k"), LoadOptions::new(100), |_| {
                started_tx.send(()).expect("started");
                finish_rx.recv().expect("finish");
                Ok(blob(10))
            })
            .map(|h| h.len())
        })
    };
    started_rx.recv().expect("the load started");
    let started = std::time::Instant::now();
    let err = m
        .get_or_load(
            &key("k"),
            LoadOptions::new(100)
                .request(ReserveRequest::new(100).wait_for(Duration::from_millis(50))),
            |_| Ok(blob(1)),
        )
        .expect_err("the leader is still building");
    let waited = started.elapsed();
    assert_join_timed_out(
        &err,
        waited,
        Duration::from_millis(50),
        Duration::from_secs(5),
    );
    finish_tx.send(()).expect("finish");
    assert_eq!(leader.join().expect("leader").expect("loads"), 10);
}
