//! Loom models of the ledger: concurrent admissions against one budget, and a publish that
//! replaces a version while a reader still holds it, racing that reader's drop (the drop
//! notification) and a competing admission.
//!
//! Run with `LOOM_MAX_PREEMPTIONS=2 cargo test --release -p sqry-admission --features loom
//! --test loom`. Each model has a negative control — the same scenario with a deliberately
//! broken primitive — that loom must catch (the control passes only by panicking with the
//! model's own assertion message).

use loom::thread;
use sqry_admission::Ledger;

/// Runs `f` under loom (see [`workspace_tests::loom_model!`]).
fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    workspace_tests::loom_model!(f);
}

/// Two admissions of 60 bytes against a 100-byte budget, one of them publishing a version
/// trued down to 50: whatever the interleaving, at most one holds its 60 at a time and the
/// high-water mark never passes the limit.
#[test]
fn concurrent_admissions_never_exceed_the_budget() {
    model(|| {
        let ledger = Ledger::new(100);
        let other = ledger.clone();
        let t = thread::spawn(move || {
            if let Ok(grant) = other.try_reserve(60) {
                let published = other.publish(grant, 1u8, 50, None).ok();
                drop(published);
            }
        });
        let held = ledger.try_reserve(60).ok();
        let s = ledger.snapshot();
        assert!(s.total() <= s.limit, "over budget: {s}");
        drop(held);
        t.join().expect("thread");
        let s = ledger.snapshot();
        assert!(s.high_water <= s.limit, "over budget: {s}");
        assert_eq!(s.total(), 0, "everything settled: {s}");
    });
}

/// Negative control: checking the headroom in one critical section and committing in another
/// lets both admissions through; loom must find the interleaving.
#[test]
#[should_panic(expected = "over budget")]
fn negative_control_check_then_commit_in_two_sections_is_caught() {
    model(|| {
        let ledger = Ledger::new(100);
        let racy = |l: &Ledger| {
            if l.snapshot().headroom() >= 60 {
                Some(l.reserve_unchecked(60))
            } else {
                None
            }
        };
        let other = ledger.clone();
        let t = thread::spawn(move || drop(racy(&other)));
        drop(racy(&ledger));
        t.join().expect("thread");
        let s = ledger.snapshot();
        assert!(s.high_water <= s.limit, "over budget: {s}");
    });
}

/// The drop-notification protocol. v1 (40 bytes) is published and a reader holds it. One
/// thread publishes v2 (30) replacing v1 and lets go of its own v1 handle; the reader checks
/// that its version is still counted, then drops it (the last handle: its drop credits the
/// retained bytes); the main thread admits 30 more, which fits only because v1 is counted
/// once, not twice. At the end exactly v2 is loaded.
fn replace_while_a_reader_holds(broken: bool) {
    model(move || {
        let ledger = Ledger::new(100);
        let grant = ledger.try_reserve(40).expect("fits");
        let v1 = ledger.publish(grant, [1u8; 4], 40, None).expect("fits");
        let reader = v1.clone();

        let publisher = {
            let ledger = ledger.clone();
            thread::spawn(move || {
                let grant = ledger.try_reserve(30).expect("40 + 30 (+ 30) fits");
                let v2 = if broken {
                    ledger.retire_forgetting_readers(&v1);
                    ledger.publish(grant, [2u8; 4], 30, None)
                } else {
                    ledger.publish(grant, [2u8; 4], 30, Some(&v1))
                }
                .expect("fits");
                drop(v1);
                v2
            })
        };
        let reading = {
            let ledger = ledger.clone();
            thread::spawn(move || {
                let s = ledger.snapshot();
                assert!(
                    s.loaded + s.retained >= 40,
                    "a version a reader holds is uncounted: {s}"
                );
                assert_eq!(reader[0], 1);
                drop(reader);
            })
        };
        let other = ledger.try_reserve(30).expect("40 + 30 + 30 fits");
        let s = ledger.snapshot();
        assert!(s.total() <= s.limit, "over budget: {s}");

        reading.join().expect("reader");
        let v2 = publisher.join().expect("publisher");
        drop(other);
        let s = ledger.snapshot();
        assert_eq!((s.loaded, s.retained, s.reserved), (30, 0, 0), "{s}");
        assert!(s.high_water <= s.limit, "over budget: {s}");
        drop(v2);
        assert_eq!(ledger.snapshot().total(), 0);
    });
}

#[test]
fn replaced_version_stays_counted_until_its_last_reader_drops() {
    replace_while_a_reader_holds(false);
}

/// Negative control: crediting an evicted version at once, while a reader still holds it (what
/// best-effort caches do), must be caught.
#[test]
#[should_panic(expected = "a version a reader holds is uncounted")]
fn negative_control_crediting_at_eviction_is_caught() {
    replace_while_a_reader_holds(true);
}

/// Eviction racing a replacement of the same version: an evictor retires v1 (it holds a handle
/// to name it) while a publisher replaces v1 with v2 and a reader holds v1. Both paths move v1
/// to retained; the ledger must count it exactly once, keep it counted while anyone holds it,
/// and credit it exactly once when the last holder — whichever thread that is — drops it.
fn evict_races_replace(broken: bool) {
    model(move || {
        let ledger = Ledger::new(100);
        let grant = ledger.try_reserve(40).expect("fits");
        let v1 = ledger.publish(grant, [1u8; 4], 40, None).expect("fits");
        let reader = v1.clone();
        let evictor_handle = v1.clone();

        let evictor = {
            let ledger = ledger.clone();
            thread::spawn(move || {
                if broken {
                    ledger.retire_forgetting_readers(&evictor_handle);
                } else {
                    ledger.retire(&evictor_handle);
                }
                drop(evictor_handle);
            })
        };
        let publisher = {
            let ledger = ledger.clone();
            thread::spawn(move || {
                let grant = ledger.try_reserve(30).expect("40 + 30 fits");
                let v2 = ledger
                    .publish(grant, [2u8; 4], 30, Some(&v1))
                    .expect("fits");
                drop(v1);
                v2
            })
        };
        let reading = {
            let ledger = ledger.clone();
            thread::spawn(move || {
                let s = ledger.snapshot();
                assert!(
                    s.loaded + s.retained >= 40,
                    "a version a reader holds is uncounted: {s}"
                );
                drop(reader);
            })
        };
        evictor.join().expect("evictor");
        reading.join().expect("reader");
        let v2 = publisher.join().expect("publisher");
        let s = ledger.snapshot();
        assert_eq!((s.loaded, s.retained, s.reserved), (30, 0, 0), "{s}");
        assert!(s.high_water <= 70, "v1 counted twice: {s}");
        drop(v2);
        assert_eq!(ledger.snapshot().total(), 0);
    });
}

#[test]
fn eviction_racing_a_replacement_counts_the_version_once() {
    evict_races_replace(false);
}

/// Negative control: an eviction that credits at once while others hold the version.
#[test]
#[should_panic(expected = "a version a reader holds is uncounted")]
fn negative_control_eviction_crediting_held_version_is_caught() {
    evict_races_replace(true);
}
