//! The ledger on its own: tiers, grants, the version lifecycle, the queue and the audit.

use sqry_admission::{Handle, Ledger};

#[test]
fn tiers_add_up_through_a_version_lifecycle() {
    let ledger = Ledger::new(1_000);
    let g = ledger.try_reserve(400).expect("fits");
    assert_eq!(ledger.snapshot().reserved, 400);
    let v1 = ledger.publish(g, "v1", 300, None).expect("fits");
    let s = ledger.snapshot();
    assert_eq!(
        (s.loaded, s.reserved, s.retained),
        (300, 0, 0),
        "trued down to 300"
    );

    let g = ledger.try_reserve(500).expect("fits");
    let reader = v1.clone();
    let v2 = ledger.publish(g, "v2", 500, Some(&v1)).expect("fits");
    drop(v1);
    let s = ledger.snapshot();
    assert_eq!((s.loaded, s.retained, s.retained_count), (500, 300, 1));
    assert_eq!(*reader, "v1", "the reader still reads its version");
    drop(reader);
    assert_eq!(ledger.snapshot().retained, 0);
    assert!(ledger.retire(&v2), "v2 was loaded");
    assert!(!ledger.retire(&v2), "retiring twice moves nothing");
    assert_eq!(ledger.snapshot().retained, 500);
    drop(v2);
    assert_eq!(ledger.snapshot().total(), 0);
    assert_eq!(ledger.snapshot().high_water, 800);
}

#[test]
fn publish_refuses_growth_that_does_not_fit_and_gives_everything_back() {
    let ledger = Ledger::new(1_000);
    let other = ledger.try_reserve(600).expect("fits");
    let g = ledger.try_reserve(300).expect("fits");
    let refused = ledger
        .publish(g, vec![1u8, 2, 3], 500, None)
        .expect_err("300 reserved, 500 measured, 100 free");
    assert_eq!(refused.value, vec![1, 2, 3]);
    assert_eq!(refused.grant.bytes(), 300);
    assert_eq!(refused.ledger.reserved, 900);
    drop(refused);
    drop(other);
    assert_eq!(ledger.snapshot().total(), 0);
    assert_eq!(ledger.metrics().rejected_at_publish, 1);
}

#[test]
fn oversize_check_counts_the_replaced_version_and_other_reservations() {
    // The old version stays counted while it moves to retained, so replacing 400 bytes with
    // 700 needs room for both at the commit instant.
    let ledger = Ledger::new(1_000);
    let g = ledger.try_reserve(400).expect("fits");
    let old = ledger.publish(g, 0u8, 400, None).expect("fits");
    let g = ledger.try_reserve(300).expect("fits");
    let err = ledger
        .publish(g, 1u8, 700, Some(&old))
        .expect_err("400 old + 700 new > 1000");
    assert_eq!(err.ledger.loaded, 400);
    drop(err);
    let g = ledger.try_reserve(600).expect("fits");
    let new = ledger
        .publish(g, 1u8, 600, Some(&old))
        .expect("400 + 600 fits");
    assert_eq!(ledger.snapshot().high_water, 1_000);
    drop(old);
    assert_eq!(ledger.snapshot().total(), 600);
    drop(new);
}

#[test]
fn grants_grow_and_shrink() {
    let ledger = Ledger::new(1_000);
    let mut g = ledger.try_reserve(100).expect("fits");
    g.try_grow(800).expect("900 fits");
    assert_eq!(ledger.snapshot().reserved, 900);
    assert!(g.try_grow(200).is_err(), "1100 does not fit");
    assert_eq!(g.bytes(), 900, "a refused growth changes nothing");
    g.shrink_to(250);
    assert_eq!(ledger.snapshot().reserved, 250);
    g.shrink_to(400);
    assert_eq!(g.bytes(), 250, "shrink never grows");
    drop(g);
    assert_eq!(ledger.snapshot().reserved, 0);
}

#[test]
fn set_limit_admits_more_or_refuses_new_requests() {
    let ledger = Ledger::new(100);
    let g = ledger.try_reserve(80).expect("fits");
    ledger.set_limit(50);
    assert!(ledger.try_reserve(1).is_err(), "over the lowered limit");
    ledger.set_limit(200);
    let h = ledger.try_reserve(120).expect("fits the raised limit");
    drop((g, h));
}

#[test]
fn audit_finds_the_records_consistent_and_holders_alive() {
    let ledger = Ledger::new(10_000);
    let mut handles: Vec<Handle<u32>> = Vec::new();
    for i in 0..20 {
        let g = ledger.try_reserve(100).expect("fits");
        handles.push(ledger.publish(g, i, 100, None).expect("fits"));
    }
    for h in handles.iter().step_by(2) {
        ledger.retire(h);
    }
    let report = ledger.audit(std::time::Duration::from_secs(60));
    assert_eq!(report.checked, 20);
    assert_eq!(report.reclaimed, 0);
    assert!(report.consistent);
    assert!(report.newly_past_drain.is_empty());
    let report = ledger.audit(std::time::Duration::ZERO);
    assert_eq!(
        report.newly_past_drain.len(),
        10,
        "each retained version warned once"
    );
    assert!(
        ledger
            .audit(std::time::Duration::ZERO)
            .newly_past_drain
            .is_empty()
    );
    drop(handles);
    assert_eq!(ledger.snapshot().total(), 0);
}

#[test]
fn snapshot_display_names_every_tier() {
    let ledger = Ledger::new(1_000);
    let _g = ledger.try_reserve(10).expect("fits");
    let text = ledger.snapshot().to_string();
    for word in [
        "limit 1000",
        "loaded 0",
        "reserved 10",
        "retained 0",
        "high-water 10",
    ] {
        assert!(text.contains(word), "{text}");
    }
}

#[test]
fn grants_and_handles_of_another_ledger_are_refused_not_miscounted() {
    let (a, b) = (Ledger::new(1_000), Ledger::new(1_000));
    let grant_a = a.try_reserve(100).expect("fits");
    let refused = b
        .publish(grant_a, 1u8, 50, None)
        .expect_err("a grant of ledger a cannot publish into b");
    assert_eq!(refused.grant.bytes(), 100);
    drop(refused);
    let grant_a = a.try_reserve(100).expect("fits");
    let in_a = a.publish(grant_a, 1u8, 100, None).expect("fits");
    assert!(!b.retire(&in_a), "b does not own it");
    let grant_b = b.try_reserve(10).expect("fits");
    let in_b = b.publish(grant_b, 2u8, 10, Some(&in_a)).expect("fits");
    assert_eq!(
        a.snapshot().loaded,
        100,
        "a's version untouched by b's publish"
    );
    assert_eq!((b.snapshot().loaded, b.snapshot().retained), (10, 0));
    drop((in_a, in_b));
    assert_eq!(a.snapshot().total() + b.snapshot().total(), 0);
}
