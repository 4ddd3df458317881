//! Publishing: true-up to the measured size, the oversize check counting every tier, learned
//! estimate multipliers, and publishes racing evictions.

use std::time::Duration;

use sqry_admission::{PublishError, ReserveRequest};

use crate::support::{blob, key, load, manager};

#[test]
fn publish_trues_a_reservation_down_to_the_measured_size() {
    let m = manager(1_000);
    m.register(key("k"));
    let r = m
        .reserve(&key("k"), ReserveRequest::new(800))
        .expect("fits");
    let v = m.publish(r, blob(300)).expect("publish");
    let s = m.ledger().snapshot();
    assert_eq!((s.loaded, s.reserved), (300, 0), "500 credited back");
    assert_eq!(v.bytes(), 300);
}

#[test]
fn publish_trues_a_reservation_up_when_the_budget_allows() {
    let m = manager(1_000);
    m.register(key("k"));
    let r = m
        .reserve(&key("k"), ReserveRequest::new(100))
        .expect("fits");
    let v = m.publish(r, blob(600)).expect("500 more fit");
    assert_eq!(m.ledger().snapshot().loaded, 600);
    drop(v);
}

#[test]
fn publish_true_up_evicts_freeable_victims_but_never_its_own_key() {
    let m = manager(1_000);
    drop(load(&m, "victim", 500));
    let own = load(&m, "k", 200);
    drop(own);
    let r = m
        .reserve(&key("k"), ReserveRequest::new(100))
        .expect("fits");
    let v = m.publish(r, blob(450)).expect("evicts victim to fit");
    assert!(!m.contains(&key("victim")));
    let s = m.ledger().snapshot();
    assert_eq!(
        (s.loaded, s.retained),
        (450, 0),
        "old version of k credited"
    );
    drop(v);
}

#[test]
fn oversize_at_publish_counts_the_old_version_and_other_reservations() {
    let m = manager(1_000);
    let old = load(&m, "k", 400);
    m.register(key("other"));
    let other = m
        .reserve(&key("other"), ReserveRequest::new(300))
        .expect("fits");
    let r = m
        .reserve(&key("k"), ReserveRequest::new(100))
        .expect("fits");
    // 400 (old, retained at commit) + 300 (other) + 350 > 1000.
    let err = m.publish(r, blob(350)).expect_err("does not fit");
    match &err {
        PublishError::Oversize {
            measured,
            reserved,
            ledger,
            key,
        } => {
            assert_eq!((*measured, *reserved), (350, 100));
            assert_eq!((ledger.loaded, ledger.reserved), (400, 400));
            assert!(key.contains('k'));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    let s = m.ledger().snapshot();
    assert_eq!(
        (s.loaded, s.reserved),
        (400, 300),
        "refunded; old version kept"
    );
    assert!(sqry_admission::Handle::ptr_eq(
        &old,
        &m.get(&key("k")).expect("still serving")
    ));
    assert_eq!(m.ledger().metrics().rejected_at_publish, 1);
    drop(other);
}

#[test]
fn publish_into_an_entry_evicted_meanwhile_publishes_nothing() {
    let m = manager(1_000);
    m.register(key("k"));
    let r = m
        .reserve(&key("k"), ReserveRequest::new(200))
        .expect("fits");
    assert!(m.unload(&key("k")));
    let err = m.publish(r, blob(100)).expect_err("evicted");
    assert!(matches!(err, PublishError::Evicted { .. }), "{err:?}");
    assert_eq!(m.ledger().snapshot().total(), 0);
    // Re-registering does not let the stale reservation's entry come back either.
    m.register(key("k"));
    let r2 = m
        .reserve(&key("k"), ReserveRequest::new(200))
        .expect("fits");
    drop(m.publish(r2, blob(100)).expect("fresh entry publishes"));
}

#[test]
fn estimate_multiplier_is_learned_per_class() {
    let m = manager(1_000_000);
    m.register(key("k"));
    for _ in 0..6 {
        let r = m
            .reserve(&key("k"), ReserveRequest::new(1_000).class("tree"))
            .expect("fits");
        drop(m.publish(r, blob(3_000)).expect("fits"));
    }
    let estimates = m.estimates();
    assert_eq!(estimates.len(), 1);
    let tree = &estimates[0];
    assert_eq!((tree.class, tree.samples), ("tree", 6));
    assert!((tree.multiplier - 3.0).abs() < 1e-9, "{tree:?}");
    let r = m
        .reserve(&key("k"), ReserveRequest::new(1_000).class("tree"))
        .expect("fits");
    assert_eq!(
        r.bytes(),
        3_000,
        "the estimate is scaled by what was learned"
    );
    // The first publish reserved 1000 for 3000 (error 2/3), the rest exactly.
    assert!(
        (tree.mean_abs_error - (2.0 / 3.0) / 6.0).abs() < 1e-9,
        "{tree:?}"
    );
    let r2 = m
        .reserve(&key("k"), ReserveRequest::new(1_000).class("other"))
        .expect("fits");
    assert_eq!(r2.bytes(), 1_000, "other classes are not scaled");
    drop((r, r2));
}

#[test]
fn a_reservation_of_another_manager_is_refused() {
    let (m1, m2) = (manager(1_000), manager(1_000));
    m1.register(key("k"));
    m2.register(key("k"));
    let r = m1
        .reserve(&key("k"), ReserveRequest::new(100))
        .expect("fits");
    let err = m2.publish(r, blob(50)).expect_err("foreign");
    assert!(
        matches!(err, PublishError::ForeignReservation { .. }),
        "{err:?}"
    );
    assert_eq!(
        m1.ledger().snapshot().total() + m2.ledger().snapshot().total(),
        0
    );
}

/// A finished build growing at publish is served before a newcomer queued meanwhile: limit
/// 1000, a 500-byte victim held by a reader, reservation A of 300, a waiter for 500 queued,
/// the reader drops, `publish(A, 600)` — the victim is evicted for A's growth, A publishes
/// 600, and the waiter keeps waiting. A finished build is worth more than a request that has
/// not started: were the waiter served first, it would take the victim's bytes and A's
/// finished work would be lost to `Oversize`.
#[test]
fn growth_at_publish_is_served_before_a_queued_newcomer() {
    use std::future::Future;
    use std::task::{Context, Waker};

    let m = manager(1_000);
    let victim = load(&m, "victim", 500);
    m.register(key("a"));
    m.register(key("b"));
    let a = m
        .reserve(&key("a"), ReserveRequest::new(300))
        .expect("fits");
    let mut waiter = Box::pin(m.reserve_async(
        &key("b"),
        ReserveRequest::new(500).wait_for(Duration::from_secs(30)),
    ));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        waiter.as_mut().poll(&mut cx).is_pending(),
        "the victim is held"
    );
    assert_eq!(m.ledger().snapshot().queue_depth, 1);
    drop(victim);
    let published = m.publish(a, blob(600)).expect("A's growth is served first");
    assert_eq!(published.bytes(), 600);
    assert!(!m.contains(&key("victim")), "evicted for A's growth");
    assert!(
        waiter.as_mut().poll(&mut cx).is_pending(),
        "600 + 500 > 1000"
    );
    drop(waiter);
    let s = m.ledger().snapshot();
    assert_eq!((s.loaded, s.reserved, s.queue_depth), (600, 0, 0), "{s}");
    assert!(s.high_water <= s.limit, "{s}");
}
