//! Admission: eviction planning (only victims freeable now, nothing if not enough, down to the
//! low watermark), fail-fast and queued requests (FIFO, deadlines, sync and async), and the
//! counters they leave.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sqry_admission::{AdmissionManager, Overflow, ReserveError, ReserveRequest};

use crate::support::{Manager, blob, config, key, load, manager};

#[test]
fn planning_counts_only_victims_no_reader_holds() {
    let m = manager(1_000);
    let held = load(&m, "a", 400);
    drop(load(&m, "b", 400));
    m.register(key("c"));
    let plan = m.plan_eviction(500, Some(&key("c")));
    assert_eq!(plan.victims, vec![(key("b"), 400)], "a is held by a reader");
    assert!(plan.sufficient, "need 300, b frees 400");
    let r = m
        .reserve(&key("c"), ReserveRequest::new(500))
        .expect("evicts b");
    assert!(m.contains(&key("a")) && !m.contains(&key("b")));
    drop((r, held));
}

#[test]
fn admission_evicts_nothing_when_victims_would_not_suffice() {
    let m = manager(1_000);
    let held = load(&m, "a", 500);
    drop(load(&m, "b", 300));
    m.register(key("c"));
    let plan = m.plan_eviction(800, Some(&key("c")));
    assert!(!plan.sufficient, "need 600, only b (300) is freeable");
    let err = m
        .reserve(&key("c"), ReserveRequest::new(800))
        .expect_err("cannot fit");
    assert!(matches!(err, ReserveError::BudgetExceeded { .. }));
    assert!(
        m.contains(&key("b")),
        "nothing was evicted for a failing admission"
    );
    assert_eq!(m.ledger().metrics().evictions.admission, 0);
    drop(held);
}

#[test]
fn admission_evicts_down_to_the_low_watermark() {
    // Limit 1000, low watermark 60 %: admitting 200 over a full ledger evicts until
    // total + 200 <= 600, not just until it fits.
    let m: Manager = AdmissionManager::new(config(1_000).low_watermark_percent(60));
    for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        drop(load(&m, k, 200));
        thread::sleep(Duration::from_millis(1 + i as u64));
    }
    assert_eq!(m.ledger().snapshot().loaded, 1_000);
    m.register(key("f"));
    let r = m
        .reserve(&key("f"), ReserveRequest::new(200))
        .expect("fits");
    let s = m.ledger().snapshot();
    assert_eq!(s.loaded + s.reserved, 600, "evicted to the watermark");
    assert!(!m.contains(&key("a")) && !m.contains(&key("b")) && !m.contains(&key("c")));
    assert!(
        m.contains(&key("d")) && m.contains(&key("e")),
        "most recent kept"
    );
    assert_eq!(m.ledger().metrics().evictions.admission, 3);
    drop(r);
    // The next admission fits without evicting again.
    m.register(key("g"));
    let r = m
        .reserve(&key("g"), ReserveRequest::new(200))
        .expect("fits");
    assert_eq!(m.ledger().metrics().evictions.admission, 3, "hysteresis");
    drop(r);
}

#[test]
fn recently_read_entries_are_evicted_last() {
    let m = manager(1_000);
    drop(load(&m, "old", 400));
    thread::sleep(Duration::from_millis(2));
    drop(load(&m, "new", 400));
    thread::sleep(Duration::from_millis(2));
    drop(m.get(&key("old")).expect("loaded")); // a read refreshes recency, lock-free
    m.register(key("x"));
    let r = m
        .reserve(&key("x"), ReserveRequest::new(300))
        .expect("fits");
    assert!(m.contains(&key("old")), "read most recently");
    assert!(!m.contains(&key("new")));
    drop(r);
}

#[test]
fn queued_request_is_admitted_when_bytes_are_released() {
    let m = manager(1_000);
    let (a, b) = (key("a"), key("b"));
    m.register(a.clone());
    m.register(b.clone());
    let first = m.reserve(&a, ReserveRequest::new(800)).expect("fits");
    let waiter = {
        let (m, b) = (m.clone(), b.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let r = m.reserve(
                &b,
                ReserveRequest::new(500).wait_for(Duration::from_secs(10)),
            );
            (r.map(|r| r.bytes()), started.elapsed())
        })
    };
    while m.ledger().snapshot().queue_depth == 0 {
        thread::yield_now();
    }
    thread::sleep(Duration::from_millis(30));
    drop(first);
    let (granted, waited) = waiter.join().expect("waiter");
    assert_eq!(granted.expect("admitted after the release"), 500);
    assert!(waited >= Duration::from_millis(30));
    let metrics = m.ledger().metrics();
    assert_eq!(metrics.admitted_after_wait, 1);
    assert!(metrics.queue_wait_max >= Duration::from_millis(30));
    assert_eq!(
        m.ledger().snapshot().reserved,
        0,
        "its reservation dropped in the thread"
    );
}

#[test]
fn queued_request_times_out_with_the_whole_ledger() {
    let m = manager(1_000);
    m.register(key("a"));
    let first = m
        .reserve(&key("a"), ReserveRequest::new(900))
        .expect("fits");
    let started = Instant::now();
    let err = m
        .reserve(
            &key("a"),
            ReserveRequest::new(200).wait_for(Duration::from_millis(50)),
        )
        .expect_err("nothing is released");
    assert!(started.elapsed() >= Duration::from_millis(50));
    match &err {
        ReserveError::Timeout { ledger, waited, .. } => {
            assert_eq!(ledger.reserved, 900);
            assert_eq!(ledger.queue_depth, 0, "it left the queue");
            assert!(*waited >= Duration::from_millis(50));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert_eq!(m.ledger().metrics().rejected_timeout, 1);
    drop(first);
}

#[test]
fn queue_is_fifo_and_fail_fast_requests_do_not_overtake_it() {
    let m = manager(1_000);
    for k in ["a", "w1", "w2", "late"] {
        m.register(key(k));
    }
    let first = m
        .reserve(&key("a"), ReserveRequest::new(1_000))
        .expect("fits");
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let spawn = |k: &'static str, bytes: u64, hold: Duration| {
        let (m, order) = (m.clone(), Arc::clone(&order));
        thread::spawn(move || {
            let r = m
                .reserve(
                    &key(k),
                    ReserveRequest::new(bytes).wait_for(Duration::from_secs(10)),
                )
                .expect("admitted");
            order.lock().push(k);
            thread::sleep(hold);
            drop(r);
        })
    };
    let w1 = spawn("w1", 700, Duration::from_millis(100));
    while m.ledger().snapshot().queue_depth < 1 {
        thread::yield_now();
    }
    let w2 = spawn("w2", 400, Duration::ZERO);
    while m.ledger().snapshot().queue_depth < 2 {
        thread::yield_now();
    }
    drop(first);
    while order.lock().is_empty() {
        thread::yield_now();
    }
    // w1 holds 700 and w2 (400) waits: 100 bytes would fit, but a fail-fast request may not
    // overtake a queued one.
    let err = m
        .reserve(&key("late"), ReserveRequest::new(100))
        .expect_err("queued requests go first");
    assert!(
        matches!(
            err,
            ReserveError::BudgetExceeded {
                queued_ahead: 1,
                ..
            }
        ),
        "{err:?}"
    );
    w1.join().expect("w1");
    w2.join().expect("w2");
    assert_eq!(*order.lock(), vec!["w1", "w2"]);
    assert_eq!(m.ledger().snapshot().total(), 0);
}

#[test]
fn waiting_request_evicts_a_victim_once_its_reader_lets_go() {
    let m = manager(1_000);
    let reader = load(&m, "a", 800);
    m.register(key("b"));
    let waiter = {
        let m = m.clone();
        thread::spawn(move || {
            m.reserve(
                &key("b"),
                ReserveRequest::new(500).wait_for(Duration::from_secs(10)),
            )
            .map(|r| r.bytes())
        })
    };
    while m.ledger().snapshot().queue_depth == 0 {
        thread::yield_now();
    }
    assert!(
        m.contains(&key("a")),
        "held: not evicted while the reader reads"
    );
    drop(reader); // the handle's drop pokes the queue
    assert_eq!(waiter.join().expect("waiter").expect("admitted"), 500);
    assert!(!m.contains(&key("a")));
}

#[test]
fn reservation_grows_through_admission_and_shrinks() {
    let m = manager(1_000);
    drop(load(&m, "victim", 600));
    m.register(key("k"));
    let mut r = m
        .reserve(&key("k"), ReserveRequest::new(300))
        .expect("fits");
    r.grow(400, Overflow::FailFast).expect("evicts the victim");
    assert_eq!(r.bytes(), 700);
    assert!(!m.contains(&key("victim")));
    let err = r.grow(400, Overflow::FailFast).expect_err("1100 > 1000");
    assert!(matches!(err, ReserveError::BudgetExceeded { .. }));
    assert_eq!(r.bytes(), 700);
    r.shrink_to(100);
    assert_eq!(m.ledger().snapshot().reserved, 100);
    drop(r);
    assert_eq!(m.ledger().snapshot().total(), 0);
}

#[test]
fn rejections_and_evictions_are_counted_by_cause() {
    let m = manager(1_000);
    m.register(key("k"));
    let _ = m.reserve(&key("k"), ReserveRequest::new(5_000));
    let hold = m
        .reserve(&key("k"), ReserveRequest::new(900))
        .expect("fits");
    let _ = m.reserve(&key("k"), ReserveRequest::new(200));
    let _ = m.reserve(
        &key("k"),
        ReserveRequest::new(200).wait_for(Duration::from_millis(1)),
    );
    drop(hold);
    drop(load(&m, "x", 10));
    drop(load(&m, "y", 10));
    m.unload(&key("x"));
    m.evict_lru();
    let metrics = m.ledger().metrics();
    assert_eq!(metrics.rejected_exceeds_limit, 1);
    assert_eq!(metrics.rejected_budget, 1);
    assert_eq!(metrics.rejected_timeout, 1);
    assert_eq!(metrics.evictions.explicit, 1);
    assert!(metrics.evictions.lru >= 1);
    assert_eq!(metrics.evictions.bytes, 10 + 10 * metrics.evictions.lru);
}

#[tokio::test(flavor = "current_thread")]
async fn async_waiter_is_admitted_after_a_release_without_blocking_the_runtime() {
    let m = manager(1_000);
    m.register(key("a"));
    m.register(key("b"));
    let first = m
        .reserve(&key("a"), ReserveRequest::new(900))
        .expect("fits");
    let waiter = tokio::spawn({
        let m = m.clone();
        async move {
            m.reserve_async(
                &key("b"),
                ReserveRequest::new(300).wait_for(Duration::from_secs(10)),
            )
            .await
            .map(|r| r.bytes())
        }
    });
    // On a single-threaded runtime, this task must keep running while the waiter waits.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(m.ledger().snapshot().queue_depth, 1);
    drop(first);
    assert_eq!(waiter.await.expect("task").expect("admitted"), 300);
}

#[tokio::test(flavor = "current_thread")]
async fn async_waiter_times_out_at_its_deadline() {
    let m = manager(1_000);
    m.register(key("a"));
    let first = m
        .reserve(&key("a"), ReserveRequest::new(900))
        .expect("fits");
    let started = Instant::now();
    let err = m
        .reserve_async(
            &key("a"),
            ReserveRequest::new(300).wait_for(Duration::from_millis(40)),
        )
        .await
        .expect_err("nothing released");
    let waited = started.elapsed();
    assert!(matches!(err, ReserveError::Timeout { .. }), "{err:?}");
    assert!(waited >= Duration::from_millis(40), "{waited:?}");
    assert!(
        waited < Duration::from_secs(2),
        "the timer thread woke it: {waited:?}"
    );
    drop(first);
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_an_async_waiter_leaves_the_queue() {
    let m = manager(1_000);
    m.register(key("a"));
    let first = m
        .reserve(&key("a"), ReserveRequest::new(900))
        .expect("fits");
    let fut = m.reserve_async(
        &key("a"),
        ReserveRequest::new(300).wait_for(Duration::from_secs(60)),
    );
    let outcome = tokio::time::timeout(Duration::from_millis(20), fut).await;
    assert!(outcome.is_err(), "still waiting");
    assert_eq!(
        m.ledger().snapshot().queue_depth,
        0,
        "dropped future left the queue"
    );
    drop(first);
    assert_eq!(m.ledger().snapshot().total(), 0);
    // Immediate paths of the future.
    let r = m
        .reserve_async(&key("a"), ReserveRequest::new(100))
        .await
        .expect("fits at once");
    assert_eq!(r.bytes(), 100);
    let err = m
        .reserve_async(&key("nope"), ReserveRequest::new(1))
        .await
        .expect_err("not registered");
    assert!(matches!(err, ReserveError::NotRegistered { .. }));
    let _ = blob(0);
}

/// A `ReserveFuture` polled again after it returned `Ready` panics, as futures do: a second
/// result would be invented (no second reservation exists), and an error such as
/// `ManagerGone` would be false while the manager is alive.
#[test]
fn reserve_future_polled_after_completion_panics() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let m = manager(1_000);
    m.register(key("a"));
    let mut fut = Box::pin(m.reserve_async(&key("a"), ReserveRequest::new(100)));
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(first) = fut.as_mut().poll(&mut cx) else {
        panic!("a request that fits is granted on the first poll");
    };
    let reservation = first.expect("fits");
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = fut.as_mut().poll(&mut cx);
    }));
    let payload = again.expect_err("polling a completed future panics");
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(text.contains("after completion"), "panic message: {text:?}");
    assert_eq!(m.ledger().snapshot().reserved, reservation.bytes());
    drop(reservation);
    assert_eq!(m.ledger().snapshot().reserved, 0);
}

/// The planner prefers victims with no build in flight: evicting an entry that is being
/// rebuilt throws its rebuild away too. "a" is the least recently used but is rebuilding, so
/// admission evicts "b" instead.
#[test]
fn planner_prefers_victims_without_a_build_in_flight() {
    let m = manager(1_000);
    drop(load(&m, "a", 400));
    thread::sleep(Duration::from_millis(2));
    drop(load(&m, "b", 400));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
    let rebuild = {
        let m = m.clone();
        thread::spawn(move || {
            m.rebuild(&key("a"), ReserveRequest::new(100), |_| {
                started_tx.send(()).expect("started");
                finish_rx.recv().expect("finish");
                Ok(blob(100))
            })
            .map(|h| h.len())
        })
    };
    started_rx.recv().expect("the rebuild started");
    m.register(key("c"));
    let plan = m.plan_eviction(400, Some(&key("c")));
    assert_eq!(
        plan.victims.first().map(|(k, _)| k.as_str()),
        Some("b"),
        "{plan:?}"
    );
    let r = m
        .reserve(&key("c"), ReserveRequest::new(400))
        .expect("evicts b");
    assert!(m.contains(&key("a")), "the rebuilding entry was spared");
    assert!(!m.contains(&key("b")));
    finish_tx.send(()).expect("finish");
    assert_eq!(rebuild.join().expect("rebuild").expect("published"), 100);
    drop(r);
}

/// Lowering the limit evicts down to it, and reports what it could not free (versions readers
/// hold stay counted). `Ledger::set_limit` alone evicted nothing.
#[test]
fn shrinking_the_limit_evicts_down_to_it_and_reports_the_rest() {
    let m = manager(1_000);
    let held = load(&m, "held", 300);
    drop(load(&m, "a", 300));
    drop(load(&m, "b", 300));
    let report = m.set_limit(700);
    assert_eq!(report.evicted, 1, "{report:?}");
    assert_eq!(report.freed, 300);
    assert_eq!(report.still_over, 0);
    let s = m.ledger().snapshot();
    assert!(s.total() <= 700 && s.limit == 700, "{s}");
    // Only the held version is left to free: it cannot be, and the report says by how much.
    drop(load(&m, "c", 300));
    let report = m.set_limit(200);
    assert_eq!(report.evicted, 1, "c, not the held one: {report:?}");
    assert_eq!(report.still_over, 100, "{report:?}");
    assert!(m.contains(&key("held")));
    drop(held);
    let report = m.set_limit(200);
    assert_eq!((report.evicted, report.still_over), (1, 0), "{report:?}");
    assert_eq!(m.ledger().snapshot().total(), 0);
}

/// One queued 600-byte request made all 19 small fail-fast requests fail although they fit.
/// FIFO (the default) still does; with overtaking they pass it — at most `max_overtakes` of
/// them — and the large request is granted once memory comes back (it does not starve).
#[test]
fn small_requests_may_overtake_a_queued_large_one_within_a_bound() {
    use std::future::Future;
    use std::task::{Context, Waker};

    for (policy, expect_admitted) in [
        (sqry_admission::QueuePolicy::Fifo, 0),
        (
            sqry_admission::QueuePolicy::Overtake { max_overtakes: 100 },
            19,
        ),
        (
            sqry_admission::QueuePolicy::Overtake { max_overtakes: 5 },
            5,
        ),
    ] {
        let m = crate::support::manager_with(config(1_000).queue_policy(policy));
        let held = load(&m, "held", 500);
        m.register(key("large"));
        let mut large = Box::pin(m.reserve_async(
            &key("large"),
            ReserveRequest::new(600).wait_for(Duration::from_secs(30)),
        ));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(large.as_mut().poll(&mut cx).is_pending(), "{policy:?}");
        let mut small = Vec::new();
        for i in 0..19 {
            let k = key(&format!("small-{i}"));
            m.register(k.clone());
            if let Ok(r) = m.reserve(&k, ReserveRequest::new(20)) {
                small.push(r);
            }
        }
        assert_eq!(small.len(), expect_admitted, "{policy:?}");
        assert_eq!(
            m.ledger().metrics().overtakes,
            expect_admitted as u64,
            "{policy:?}"
        );
        // Memory comes back: the large request is served.
        drop((held, small));
        assert!(m.unload(&key("held")));
        let std::task::Poll::Ready(granted) = large.as_mut().poll(&mut cx) else {
            panic!("{policy:?}: the large request starved");
        };
        assert_eq!(granted.expect("granted").bytes(), 600);
        let s = m.ledger().snapshot();
        assert!(s.high_water <= s.limit, "{s}");
    }
}
