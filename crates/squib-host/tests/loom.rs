//! Model checks of the single-flight table: whatever the interleaving, one page is never
//! fetched by two threads at once, every caller gets the page's bytes, and a failed leader
//! never strands its followers. The negative control runs the same model on a table that
//! checks and inserts in two critical sections; loom must find the double fetch.
//!
//! Run: `LOOM_MAX_PREEMPTIONS=2 cargo test --release -p squib-host --features loom --test loom`

#![cfg(feature = "loom")]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use squib_host::model::{RacySingleFlight, SingleFlight};

/// The operation the models exercise, implemented by the real table and the broken one.
trait Table: Send + Sync + 'static {
    fn get(&self, key: u64, fetch: &mut dyn FnMut() -> Result<u32, ()>) -> Result<u32, ()>;
}

impl Table for SingleFlight<u32> {
    fn get(&self, key: u64, fetch: &mut dyn FnMut() -> Result<u32, ()>) -> Result<u32, ()> {
        self.run(key, fetch).map(|(v, _)| v)
    }
}

impl Table for RacySingleFlight<u32> {
    fn get(&self, key: u64, fetch: &mut dyn FnMut() -> Result<u32, ()>) -> Result<u32, ()> {
        self.run(key, fetch).map(|(v, _)| v)
    }
}

/// Two threads want page 1 at the same time. `fail_first`: the first fetch fails.
fn two_callers<T: Table>(make: fn() -> T, fail_first: bool) {
    workspace_tests::loom_model!(move || {
        let table = Arc::new(make());
        let active = Arc::new(AtomicUsize::new(0));
        let attempts = Arc::new(AtomicUsize::new(0));
        let caller = {
            let (table, active, attempts) = (table.clone(), active.clone(), attempts.clone());
            move || {
                let mut fetch = || {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    assert_eq!(now, 1, "page fetched twice at once");
                    let n = attempts.fetch_add(1, Ordering::SeqCst);
                    active.fetch_sub(1, Ordering::SeqCst);
                    if fail_first && n == 0 {
                        Err(())
                    } else {
                        Ok(42)
                    }
                };
                // A caller whose own fetch failed retries once, as the pager's retry loop does.
                table
                    .get(1, &mut fetch)
                    .or_else(|()| table.get(1, &mut fetch))
            }
        };
        let other = thread::spawn(caller.clone());
        let mine = caller();
        let theirs = other.join().expect("thread");
        assert_eq!(mine, Ok(42));
        assert_eq!(theirs, Ok(42));
    });
}

#[test]
fn one_page_is_never_fetched_twice_at_once() {
    two_callers(SingleFlight::<u32>::new, false);
}

#[test]
fn a_failed_leader_does_not_strand_its_followers() {
    two_callers(SingleFlight::<u32>::new, true);
}

#[test]
fn different_pages_do_not_wait_for_each_other() {
    workspace_tests::loom_model!(|| {
        let table = Arc::new(SingleFlight::<u32>::new());
        let t = {
            let table = table.clone();
            thread::spawn(move || table.run(1, || Ok::<_, ()>(1)))
        };
        let mine = table.run(2, || Ok::<_, ()>(2));
        // Each caller led its own fetch: distinct pages never share a slot.
        assert_eq!(mine, Ok((2, true)));
        assert_eq!(t.join().expect("thread"), Ok((1, true)));
        assert_eq!(table.in_flight(), 0);
    });
}

/// Negative control: the check-then-insert race lets two threads fetch the same page at once.
#[test]
#[should_panic(expected = "page fetched twice at once")]
fn negative_control_racy_table_fetches_twice() {
    two_callers(RacySingleFlight::<u32>::new, false);
}
