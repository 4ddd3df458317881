//! Loom models of the ledger — concurrent admissions against one budget, and a publish that
//! replaces a version while a reader still holds it, racing that reader's drop (the drop
//! notification) and a competing admission — and of the single-flight gate: a leader that
//! gives up (its future dropped) while a joiner, blocking or async, waits for it — and of a
//! publish growing its reservation while a newcomer queues: the finished build is served first.
//!
//! Run with `LOOM_MAX_PREEMPTIONS=2 cargo test --release -p sqry-admission --features loom
//! --test loom`. Each model has a negative control — the same scenario with a deliberately
//! broken primitive — that loom must catch (the control passes only by panicking with the
//! model's own assertion message).

use std::future::poll_fn;

use loom::sync::Arc;
use loom::thread;
use sqry_admission::EntryState::{Failed, Loaded, Loading, Unloaded};
use sqry_admission::Ledger;
use sqry_admission::flight::Gate;

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

/// Wakes a loom thread parked in [`block_on`].
struct Unpark(loom::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` on this loom thread, parking between polls until its waker is called (a
/// lost wake-up shows as a deadlock).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// A caller of `get_or_load` on the gate: takes it and loads, or waits for the load in flight
/// (blocking, or as a future polled by loom's executor) and tries again. Returns whether it led.
fn load_or_join(gate: &Gate, asynchronous: bool) -> bool {
    loop {
        match gate.try_transition(&[Unloaded, Failed], Loading) {
            Ok(_) => {
                gate.set_state(Loaded);
                gate.finish();
                return true;
            }
            Err(Loaded) => return false,
            Err(state) if asynchronous => {
                let mut ticket = gate.ticket();
                block_on(poll_fn(|cx| gate.poll_wait(state, &mut ticket, cx.waker())));
            }
            Err(state) => {
                gate.wait(state, None);
            }
        }
    }
}

/// The leader holds the gate and gives up (its future is dropped: the state goes back and the
/// flight finishes) while a joiner waits. Whatever the interleaving, the joiner wakes, takes
/// the gate and loads: the entry never stays `Loading` and nobody waits for ever (loom reports
/// a waiter nobody wakes as a deadlock).
fn dropped_leader(asynchronous: bool, broken: bool) {
    model(move || {
        let gate = Arc::new(Gate::new());
        gate.try_transition(&[Unloaded, Failed], Loading)
            .expect("the leader takes the gate");
        let joiner = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || load_or_join(&gate, asynchronous))
        };
        assert!(gate.restore(Loading, Unloaded), "only the leader moves it");
        if broken {
            gate.finish_without_generation();
        } else {
            gate.finish();
        }
        let led = joiner.join().expect("joiner");
        assert!(led, "the joiner took the abandoned gate");
        assert_eq!(gate.state(), Loaded, "the entry stayed Loading");
    });
}

#[test]
fn a_dropped_leader_hands_the_gate_to_a_blocking_joiner() {
    dropped_leader(false, false);
}

#[test]
fn a_dropped_leader_hands_the_gate_to_an_async_joiner() {
    dropped_leader(true, false);
}

/// Negative control: finishing without moving the generation under the waiters' mutex lets a
/// joiner check the state, miss the wake-up and sleep for ever; loom must find it.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_a_finish_outside_the_mutex_is_caught() {
    workspace_tests::loom_expect_deadlock_in_child(
        "negative_control_a_finish_outside_the_mutex_is_caught",
        || dropped_leader(false, true),
    );
}

/// Two callers race for a cold gate while neither has loaded: exactly one builds, the other
/// serves its result (one build per key however many wait).
#[test]
fn racing_callers_build_once() {
    model(|| {
        let gate = Arc::new(Gate::new());
        let other = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || load_or_join(&gate, true))
        };
        let me = load_or_join(&gate, false);
        let them = other.join().expect("other");
        assert!(me ^ them, "exactly one caller built (me {me}, them {them})");
        assert_eq!(gate.state(), Loaded);
    });
}

/// Limit 1000: a 500-byte victim is loaded and a finished build holds a 300-byte reservation
/// it must grow by 300 to publish. A newcomer queues for 500 at any moment. The growth evicts
/// the victim to make room; whatever the interleaving, the freed bytes serve the growth first
/// and the newcomer gets nothing it would take from it.
fn growth_racing_a_newcomer(behind: bool) {
    model(move || {
        let ledger = Ledger::new(1_000);
        let grant = ledger.try_reserve(500).expect("fits");
        let victim = ledger.publish(grant, [0u8; 4], 500, None).expect("fits");
        let mut finished = ledger.try_reserve(300).expect("fits");
        let newcomer = {
            let ledger = ledger.clone();
            thread::spawn(move || {
                let ticket = ledger.enqueue_request(500);
                ledger.leave_queue(ticket)
            })
        };
        let evict = {
            let ledger = ledger.clone();
            move || {
                ledger.retire(&victim);
                drop(victim);
            }
        };
        let grown = if behind {
            ledger.grow_behind_queue(&mut finished, 300, evict)
        } else {
            ledger.grow_ahead_of_queue(&mut finished, 300, evict)
        };
        let newcomer = newcomer.join().expect("newcomer");
        assert!(
            grown.is_ok(),
            "the finished build lost its growth to a queued newcomer"
        );
        assert_eq!(finished.bytes(), 600);
        assert!(newcomer.is_none(), "600 + 500 > 1000");
        let s = ledger.snapshot();
        assert!(s.high_water <= s.limit, "over budget: {s}");
        drop(finished);
        assert_eq!(ledger.snapshot().total(), 0);
    });
}

#[test]
fn growth_at_publish_is_served_before_a_queued_newcomer() {
    growth_racing_a_newcomer(false);
}

/// Negative control: growth queued behind newcomers loses the victim's bytes to them.
#[test]
#[should_panic(expected = "the finished build lost its growth to a queued newcomer")]
fn negative_control_growth_behind_the_queue_is_caught() {
    growth_racing_a_newcomer(true);
}
