//! A million operations from several threads on a budget far smaller than what they ask for:
//! reads that hold versions for a while, reserve + publish, queued and fail-fast requests,
//! loads, unloads and LRU evictions. Every observation of the ledger — from the workers and
//! from an observer thread that also runs the audit — must be within the budget; at the end
//! nothing is reserved, nothing is retained without a holder, and the records add up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use sqry_admission::{Handle, LoadOptions, ReserveRequest};

use crate::support::{blob, key, manager};

const THREADS: usize = 4;
const OPS_PER_THREAD: usize = 250_000;
const LIMIT: u64 = 256 << 10;
const KEYS: usize = 24;

/// xorshift64*: a deterministic generator per thread, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn million_operations_stay_within_the_budget_and_settle_exactly() {
    let m = manager(LIMIT);
    let keys: Vec<String> = (0..KEYS).map(|i| key(&format!("/idx/{i:02}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        if i == 0 {
            m.register_pinned(k.clone());
        } else {
            m.register(k.clone());
        }
    }
    let observations = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let observer = {
        let (m, observations, done) = (m.clone(), Arc::clone(&observations), Arc::clone(&done));
        thread::spawn(move || {
            let mut audits = 0;
            while !done.load(Ordering::Acquire) {
                let s = m.ledger().snapshot();
                assert!(s.total() <= s.limit && s.high_water <= s.limit, "{s}");
                observations.fetch_add(1, Ordering::Relaxed);
                if observations.load(Ordering::Relaxed) % 64 == 0 {
                    let report = m.audit();
                    assert!(report.consistent, "{report:?}");
                    assert_eq!(report.reclaimed, 0, "no drop notification was lost");
                    audits += 1;
                }
                thread::yield_now();
            }
            audits
        })
    };

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (m, keys, observations) = (m.clone(), keys.clone(), Arc::clone(&observations));
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678_9ABC));
                let mut held: Vec<Handle<Vec<u8>>> = Vec::new();
                let mut ok = [0u64; 4];
                for _ in 0..OPS_PER_THREAD {
                    let k = &keys[rng.below(KEYS as u64) as usize];
                    let size = 512 + rng.below(16 << 10) as usize;
                    match rng.below(1000) {
                        // Serve-path reads, some held across later operations (slow readers).
                        0..=699 => {
                            if let Some(h) = m.get(k) {
                                if h.len() != h.bytes() as usize {
                                    panic!("a version's bytes match its value");
                                }
                                if rng.below(8) == 0 {
                                    held.push(h);
                                }
                            }
                        }
                        700..=759 => {
                            let _ = m.classify_for_serve(k, SystemTime::now());
                        }
                        760..=879 => {
                            if let Ok(r) = m.reserve(k, ReserveRequest::new(size as u64)) {
                                let jitter = rng.below(4096) as usize;
                                if m.publish(r, blob((size + jitter).saturating_sub(2048).max(1)))
                                    .is_ok()
                                {
                                    ok[0] += 1;
                                }
                            }
                        }
                        880..=899 => {
                            let request =
                                ReserveRequest::new(size as u64).wait_for(Duration::from_millis(2));
                            if let Ok(r) = m.reserve(k, request) {
                                ok[1] += 1;
                                drop(r);
                            }
                        }
                        900..=949 => {
                            let loaded =
                                m.get_or_load(k, LoadOptions::new(size as u64), |_| Ok(blob(size)));
                            if loaded.is_ok() {
                                ok[2] += 1;
                            }
                        }
                        950..=969 => {
                            if m.unload(k) {
                                m.register(k.clone());
                            }
                        }
                        970..=979 => {
                            if let Some(k) = m.evict_lru() {
                                m.register(k);
                            }
                        }
                        _ => {
                            let s = m.ledger().snapshot();
                            assert!(s.total() <= s.limit && s.high_water <= s.limit, "{s}");
                            observations.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if held.len() > 6 || (!held.is_empty() && rng.below(4) == 0) {
                        let i = rng.below(held.len() as u64) as usize;
                        held.swap_remove(i);
                    }
                    // Keys evicted and not re-registered by their evictor come back here.
                    if !m.contains(k) {
                        m.register(k.clone());
                    }
                }
                ok
            })
        })
        .collect();

    let mut totals = [0u64; 4];
    for w in workers {
        let ok = w.join().expect("worker");
        for (t, o) in totals.iter_mut().zip(ok) {
            *t += o;
        }
    }
    done.store(true, Ordering::Release);
    let audits = observer.join().expect("observer");

    let s = m.ledger().snapshot();
    let metrics = m.ledger().metrics();
    println!(
        "stress: {} ops in {:?}; {} observations, {audits} audits; publishes {}, queued grants {}, \
         loads {}; evictions {:?}; final {s}",
        THREADS * OPS_PER_THREAD,
        started.elapsed(),
        observations.load(Ordering::Relaxed),
        totals[0],
        totals[1],
        totals[2],
        metrics.evictions,
    );
    assert!(s.high_water <= LIMIT, "{s}");
    assert_eq!(s.reserved, 0, "every reservation settled: {s}");
    assert_eq!(
        (s.retained, s.retained_count),
        (0, 0),
        "no retained version without a holder: {s}"
    );
    assert_eq!(s.queue_depth, 0);
    let status = m.status();
    let in_slots: u64 = status.entries.iter().map(|e| e.bytes).sum();
    assert_eq!(
        s.loaded, in_slots,
        "loaded bytes are exactly the slots' versions"
    );
    assert!(status.entries.iter().all(|e| e.readers == 0));
    let report = m.audit();
    assert!(report.consistent && report.reclaimed == 0, "{report:?}");
    assert!(
        totals[0] > 1_000 && totals[2] > 100,
        "the run did real work: {totals:?}"
    );
    assert!(
        metrics.evictions.admission > 0,
        "the budget was under pressure"
    );
    // Refusals depend on how the threads interleave (usually hundreds, occasionally none), so
    // they are reported rather than required; the budget assertions above are what counts.
    eprintln!(
        "stress: {} requests refused for budget",
        metrics.rejected_budget
    );
}
