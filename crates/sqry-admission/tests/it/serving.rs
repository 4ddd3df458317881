//! Serving: the verdicts of `classify_for_serve` and reads that never take the ledger's mutex.

use std::time::{Duration, SystemTime};

use sqry_admission::{
    AdmissionManager, CODE_BUILD_FAILED, CODE_EVICTED, CODE_STALE_EXPIRED, EntryState, LoadOptions,
    ReserveRequest, ServeError, ServeVerdict,
};

use crate::support::{Manager, blob, config, key, load, manager};

const HOUR: Duration = Duration::from_secs(3600);

fn failed_after_good(m: &Manager) {
    drop(load(m, "k", 100));
    let _ = m.rebuild(
        &key("k"),
        ReserveRequest::new(100),
        |_| Err("broken".into()),
    );
    assert_eq!(m.state(&key("k")), Some(EntryState::Failed));
}

#[test]
fn loaded_and_rebuilding_entries_are_fresh() {
    let m = manager(10_000);
    drop(load(&m, "k", 100));
    match m.classify_for_serve(&key("k"), SystemTime::now()) {
        Ok(ServeVerdict::Fresh { value, state }) => {
            assert_eq!(state, EntryState::Loaded);
            assert_eq!(value.len(), 100);
        }
        other => panic!("{other:?}"),
    }
    let seen = m
        .rebuild(&key("k"), ReserveRequest::new(10), |k| {
            Ok(match m.classify_for_serve(k, SystemTime::now()) {
                Ok(ServeVerdict::Fresh { state, .. }) => blob(if state == EntryState::Rebuilding {
                    1
                } else {
                    2
                }),
                _ => blob(3),
            })
        })
        .expect("rebuild");
    assert_eq!(seen.len(), 1, "fresh while rebuilding");
}

#[test]
fn failed_entry_is_stale_within_the_cap_and_expired_after() {
    let m = manager(10_000);
    failed_after_good(&m);
    let now = SystemTime::now();
    match m.classify_for_serve(&key("k"), now + 2 * HOUR) {
        Ok(ServeVerdict::Stale {
            value,
            age,
            last_error,
            ..
        }) => {
            assert_eq!(value.len(), 100, "the last good version");
            assert!(age >= 2 * HOUR && age < 3 * HOUR);
            assert!(last_error.is_some_and(|e| e.contains("broken")));
        }
        other => panic!("{other:?}"),
    }
    let err = m
        .classify_for_serve(&key("k"), now + 25 * HOUR)
        .expect_err("past the 24 h cap");
    assert!(matches!(err, ServeError::StaleExpired { cap, .. } if cap == 24 * HOUR));
    assert_eq!(err.code(), CODE_STALE_EXPIRED);
}

#[test]
fn no_cap_serves_stale_forever() {
    let m: Manager = AdmissionManager::new(config(10_000).stale_serve_max_age(None));
    failed_after_good(&m);
    let far = SystemTime::now() + 1000 * 24 * HOUR;
    assert!(matches!(
        m.classify_for_serve(&key("k"), far),
        Ok(ServeVerdict::Stale { .. })
    ));
}

#[test]
fn failed_entry_without_a_good_version_is_build_failed() {
    let m = manager(10_000);
    let _ = m.get_or_load(&key("k"), LoadOptions::new(10), |_| Err("no source".into()));
    let err = m
        .classify_for_serve(&key("k"), SystemTime::now())
        .expect_err("nothing to serve");
    assert!(matches!(&err, ServeError::BuildFailed { reason, .. } if reason.contains("no source")));
    assert_eq!(err.code(), CODE_BUILD_FAILED);
}

#[test]
fn evicted_and_unknown_entries_are_evicted_errors() {
    let m = manager(10_000);
    drop(load(&m, "k", 10));
    m.unload(&key("k"));
    for k in ["k", "never"] {
        let err = m
            .classify_for_serve(&key(k), SystemTime::now())
            .expect_err("gone");
        assert!(matches!(err, ServeError::Evicted { .. }));
        assert_eq!(err.code(), CODE_EVICTED);
        assert!(err.to_string().contains(k));
    }
}

#[test]
fn reads_never_take_the_ledger_lock() {
    let m = manager(10_000);
    drop(load(&m, "k", 10));
    let before = m.ledger().metrics().lock_acquisitions;
    for _ in 0..10_000 {
        let v = m.get(&key("k")).expect("loaded");
        assert_eq!(v.len(), 10);
        assert!(matches!(
            m.classify_for_serve(&key("k"), SystemTime::now()),
            Ok(ServeVerdict::Fresh { .. })
        ));
    }
    // One acquisition: the `metrics()` call that reads the counter.
    assert_eq!(m.ledger().metrics().lock_acquisitions, before + 1);
}

#[test]
fn status_reports_readers_and_idle_time() {
    let m = manager(10_000);
    let a = load(&m, "k", 10);
    let b = m.get(&key("k")).expect("loaded");
    std::thread::sleep(Duration::from_millis(5));
    let status = m.status();
    let e = &status.entries[0];
    assert_eq!(e.readers, 2);
    assert!(e.idle >= Duration::from_millis(5));
    drop((a, b));
    assert_eq!(m.status().entries[0].readers, 0);
}
