//! The pager lifecycle contracts: spawn → poll → shutdown → join within 4 × poll_interval, and
//! exact fault counts under concurrent `serve_fault` calls.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use squib_host::{
    PageRequest, PageSource, PageSourceError, Pager, PagerConfig, PagerStatsSnapshot, PrewarmList,
    spawn_server,
};

use crate::pages::require_uffd;

/// Answers every request with the same bytes.
#[derive(Debug)]
struct ConstSource(Bytes);

impl PageSource for ConstSource {
    fn fetch(&self, _req: &PageRequest) -> Result<Bytes, PageSourceError> {
        Ok(self.0.clone())
    }
}

const POLL: Duration = Duration::from_millis(50);

fn make_pager() -> Pager {
    Pager::new(
        ConstSource(Bytes::from(vec![0u8; 16 * 1024])),
        PagerConfig {
            poll_interval: POLL,
            prewarm: PrewarmList::default(),
            ..PagerConfig::default()
        },
    )
}

/// Waits for `join` to finish within `limit`; returns how long it took after the call.
fn join_within<T>(join: thread::JoinHandle<T>, limit: Duration) -> Result<T, String> {
    let start = Instant::now();
    while !join.is_finished() {
        if start.elapsed() > limit {
            return Err(format!("server did not join within {limit:?}"));
        }
        thread::sleep(Duration::from_millis(2));
    }
    join.join()
        .map_err(|_| "server thread panicked".to_string())
}

fn spawn_idle_then_shut_down(idle: Duration) {
    let pager = make_pager();
    pager.register_region(0x8000_0000, 0x1000_0000).unwrap();
    let join = spawn_server(&pager).expect("spawn server");
    // The idle server wakes every poll interval; let it tick a few times.
    thread::sleep(idle);
    assert!(
        !join.is_finished(),
        "server stopped before shutdown was requested"
    );
    pager.request_shutdown();
    assert!(pager.is_shutdown_requested());
    join_within(join, 4 * POLL)
        .expect("join within 4 x poll_interval")
        .expect("server returns Ok after shutdown");
}

#[test]
fn server_joins_after_shutdown_when_it_started_late() {
    // The debugger-after ordering: the server is up and ticking when the shutdown comes.
    require_uffd!("server_joins_after_shutdown_when_it_started_late");
    spawn_idle_then_shut_down(Duration::from_millis(150));
}

#[test]
fn server_joins_after_shutdown_when_shut_down_early() {
    // The debugger-before ordering, lifecycle part: a short-lived server.
    require_uffd!("server_joins_after_shutdown_when_shut_down_early");
    spawn_idle_then_shut_down(Duration::from_millis(120));
}

#[test]
fn shutdown_requested_before_spawn_returns_at_once() {
    require_uffd!("shutdown_requested_before_spawn_returns_at_once");
    let pager = make_pager();
    pager.request_shutdown();
    let join = spawn_server(&pager).unwrap();
    join_within(join, 4 * POLL).unwrap().unwrap();
}

#[test]
fn concurrent_serve_fault_counts_every_fault_exactly() {
    let pager = make_pager();
    pager.register_region(0x8000_0000, 0x1000_0000).unwrap();
    let pager = Arc::new(pager);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let p = pager.clone();
            thread::spawn(move || {
                for i in 0..100u64 {
                    let ipa = 0x8000_0000 + ((t * 100 + i) * 16 * 1024);
                    assert!(ipa < 0x9000_0000);
                    let bytes = p.serve_fault(ipa, 16 * 1024).unwrap();
                    assert_eq!(bytes.len(), 16 * 1024);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s: PagerStatsSnapshot = pager.stats();
    assert_eq!(s.faults, 400);
    assert_eq!(s.bytes_served, 400 * 16 * 1024);
    assert_eq!(s.latency.count(), 400);
    assert_eq!(pager.working_set().len(), 400);
}

#[test]
fn same_page_faults_from_many_threads_share_fetches() {
    #[derive(Debug)]
    struct Counting(std::sync::atomic::AtomicUsize);
    impl PageSource for Counting {
        fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            thread::sleep(Duration::from_millis(400));
            Ok(Bytes::from(vec![7u8; req.len]))
        }
    }
    let source = Arc::new(Counting(std::sync::atomic::AtomicUsize::new(0)));
    let pager = Pager::new(source.clone(), PagerConfig::default());
    pager.register_region(0x8000_0000, 0x10_0000).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let p = pager.clone();
            thread::spawn(move || p.serve_fault(0x8000_0010, 1).unwrap())
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap().iter().all(|&b| b == 7));
    }
    assert_eq!(pager.stats().faults, 4);
    let fetched = source.0.load(std::sync::atomic::Ordering::SeqCst);
    assert!(fetched < 4, "{fetched} fetches for one page");
}
