//! Admission costs, measured in one run:
//!
//! - `reserve_publish_release_median`: one reserve + publish (replacing the previous version,
//!   whose drop credits it back) + release of the returned handle, uncontended; target ≤ 1 µs.
//! - `serve_read_median`: one serve-path read (`get` + drop of the handle); target ≤ 100 ns.
//!   `serve_read_ledger_locks` counts the ledger-mutex acquisitions over a million reads;
//!   target 0 (reads never take it).
//! - `plan_eviction_10k_median`: planning an admission that must evict over 10 000 loaded
//!   entries (down to the low watermark: about a thousand victims); target ≤ 1 ms.
//! - `admission_throughput_vs_moka`: the same get-or-insert workload (4 096 keys, weighted
//!   values, a working set four times the budget, so most operations admit and evict) through
//!   `get_or_load` and through moka's `get_with` with a weigher; ratio of our throughput to
//!   moka's, target ≥ 0.5. moka bounds memory best-effort (it may exceed its capacity until its
//!   maintenance runs, and counts neither loads in flight nor evicted values still held); we
//!   never exceed, so the ratio is the price of exactness. The peaks of both are printed.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use sqry_admission::{AdmissionConfig, AdmissionManager, HeapSize, LoadOptions, ReserveRequest};
use workspace_tests::bench::{Samples, Target, verdict};

/// An index whose heap size is given, so the timings measure admission, not allocation.
struct Index(u64);

impl HeapSize for Index {
    fn heap_bytes(&self) -> usize {
        self.0 as usize
    }
}

/// Per-call timings criterion handed to `iter_custom`, kept to compute verdicts.
static SAMPLES: Samples = Samples::new();
/// Peaks observed during the comparison: (ours / limit, moka / capacity).
static PEAKS: Mutex<(f64, f64)> = Mutex::new((0.0, 0.0));

fn manager(limit: u64) -> AdmissionManager<u64, Index> {
    AdmissionManager::new(AdmissionConfig::new(limit).audit_interval(None))
}

fn bench_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("admission");

    let m = manager(1 << 30);
    m.register(1, false);
    group.bench_function("reserve_publish_release", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let r = m.reserve(&1, ReserveRequest::new(4096)).expect("fits");
                let h = m.publish(r, Index(4096)).expect("publish");
                drop(black_box(h));
            }
            SAMPLES.record("cycle", iters, t.elapsed())
        })
    });

    for k in 0..64u64 {
        m.register(k, false);
        let r = m.reserve(&k, ReserveRequest::new(1024)).expect("fits");
        drop(m.publish(r, Index(1024)).expect("publish"));
    }
    group.bench_function("serve_read", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for i in 0..iters {
                let h = m.get(black_box(&(i & 63))).expect("loaded");
                black_box(&h);
                drop(h);
            }
            SAMPLES.record("read", iters, t.elapsed())
        })
    });

    let big = manager(10_000 * 1000);
    for k in 0..10_000u64 {
        big.register(k, false);
        let r = big.reserve(&k, ReserveRequest::new(1000)).expect("fits");
        drop(big.publish(r, Index(1000)).expect("publish"));
    }
    assert_eq!(big.len(), 10_000);
    group.bench_function("plan_eviction_10k", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let plan = big.plan_eviction(black_box(50_000), None);
                assert!(plan.sufficient && plan.victims.len() > 1000);
                black_box(plan);
            }
            SAMPLES.record("plan", iters, t.elapsed())
        })
    });
    group.finish();

    let before = m.ledger().metrics().lock_acquisitions;
    for i in 0..1_000_000u64 {
        drop(black_box(m.get(&(i & 63))));
    }
    let locks = m.ledger().metrics().lock_acquisitions - before - 1;
    SAMPLES.push("read_locks", locks as f64);
}

const KEYS: u64 = 4096;

fn weight(k: u64) -> u64 {
    1024 * (1 + (k.wrapping_mul(0x9E37_79B9) >> 7) % 16)
}

fn capacity() -> u64 {
    (0..KEYS).map(weight).sum::<u64>() / 4
}

/// The same pseudo-random key stream for both caches.
fn key_at(i: u64) -> u64 {
    (i.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 17) % KEYS
}

fn bench_vs_moka(c: &mut Criterion) {
    let mut group = c.benchmark_group("admission_vs_moka");
    let limit = capacity();

    let ours = manager(limit);
    let mut next = 0u64;
    group.bench_function("sqry_admission_get_or_load", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let k = key_at(next);
                next += 1;
                let w = weight(k);
                let v = ours
                    .get_or_load(&k, LoadOptions::new(w), |_| Ok(Index(w)))
                    .expect("every value fits the budget");
                black_box(&v);
            }
            let elapsed = t.elapsed();
            let s = ours.ledger().snapshot();
            let mut peaks = PEAKS.lock().expect("peaks");
            peaks.0 = peaks.0.max(s.high_water as f64 / limit as f64);
            SAMPLES.record("ours", iters, elapsed)
        })
    });

    let moka: moka::sync::Cache<u64, std::sync::Arc<Index>> = moka::sync::Cache::builder()
        .max_capacity(limit)
        .weigher(|_, v: &std::sync::Arc<Index>| v.0.min(u64::from(u32::MAX)) as u32)
        .build();
    let mut next = 0u64;
    group.bench_function("moka_get_with", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            let mut peak = 0u64;
            for i in 0..iters {
                let k = key_at(next);
                next += 1;
                let w = weight(k);
                let v = moka.get_with(k, || std::sync::Arc::new(Index(w)));
                black_box(&v);
                if i % 256 == 0 {
                    peak = peak.max(moka.weighted_size());
                }
            }
            let elapsed = t.elapsed();
            let mut peaks = PEAKS.lock().expect("peaks");
            peaks.1 = peaks.1.max(peak as f64 / limit as f64);
            SAMPLES.record("moka", iters, elapsed)
        })
    });
    group.finish();
}

const KRATE: &str = "sqry-admission";

fn verdicts(_: &mut Criterion) {
    verdict(
        KRATE,
        "reserve_publish_release_median",
        SAMPLES.median("cycle"),
        "ns",
        Target::AtMost(1000.0),
    );
    verdict(
        KRATE,
        "serve_read_median",
        SAMPLES.median("read"),
        "ns",
        Target::AtMost(100.0),
    );
    verdict(
        KRATE,
        "serve_read_ledger_locks",
        SAMPLES.median("read_locks"),
        "locks per 1M reads",
        Target::AtMost(0.0),
    );
    verdict(
        KRATE,
        "plan_eviction_10k_median",
        SAMPLES.median("plan") / 1000.0,
        "us",
        Target::AtMost(1000.0),
    );
    let (ours, moka) = (1e9 / SAMPLES.median("ours"), 1e9 / SAMPLES.median("moka"));
    verdict(
        KRATE,
        "admission_throughput_vs_moka",
        ours / moka,
        "x",
        Target::AtLeast(0.5),
    );
    let peaks = *PEAKS.lock().expect("peaks");
    println!(
        "info: sqry-admission/admission_throughput = {ours:.0} ops/s (moka {moka:.0} ops/s, same \
         workload); peak committed / budget: ours {:.3}, moka {:.3}",
        peaks.0, peaks.1
    );
}

criterion_group! {
    name = benches;
    config = workspace_tests::criterion_config!(2, 30);
    targets = bench_paths, bench_vs_moka, verdicts
}
criterion_main!(benches);
