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
//!   What this comparison does measure: the cost per operation of a synchronous
//!   get-or-insert cache under constant eviction, where the values cost nothing to build. What
//!   it does not: build costs, concurrency, or memory actually used — moka's weighted size may
//!   run past its capacity between maintenance passes, and it cannot refuse or queue a load,
//!   so it pays nothing for the guarantee this crate exists for. A ratio near 0.5 means
//!   exactness costs about one extra critical section per operation; it says nothing about
//!   which is faster in a daemon whose builds take milliseconds.
//! - The tokio daemon of issue 16: 24 indexes, a budget a third of their total, 48 clients ×
//!   30 queries, each build taking 2 ms on tokio's blocking pool, run five times through each
//!   of two wirings, interleaved: `get_or_load_async` (the build in `spawn_blocking` inside the
//!   async builder) and the blocking `get_or_load` called through `spawn_blocking` (the best a
//!   tokio daemon could do before: the call may block, so every query pays the hop).
//!   `daemon_builds_per_cold_miss` is builds / publishes that did not replace a version
//!   (target ≤ 1.0: a cold key is built once however many queries miss on it);
//!   `daemon_finished_builds_lost` counts builds that finished but were not published (target
//!   0); `daemon_p99_vs_blocking` is the async wiring's p99 query latency over the blocking
//!   wiring's, same run (target ≤ 1.0).

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sqry_admission::{AdmissionConfig, AdmissionManager, HeapSize, LoadOptions, ReserveRequest};
use workspace_tests::bench::{Samples, Target, percentile, verdict};

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
    m.register(1);
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
        m.register(k);
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
        big.register(k);
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

/// The daemon scenario's shape.
const DAEMON_INDEXES: u64 = 24;
const DAEMON_INDEX_BYTES: u64 = 256 << 10;
const DAEMON_CLIENTS: u64 = 48;
const DAEMON_QUERIES: usize = 30;
const DAEMON_BUILD: Duration = Duration::from_millis(2);
const DAEMON_ROUNDS: usize = 5;

/// What runs of the daemon scenario saw.
struct DaemonRun {
    latencies_us: Vec<f64>,
    builds: u64,
    finished: u64,
    /// Publishes that did not replace a version: distinct cold misses served.
    cold_publishes: u64,
}

impl DaemonRun {
    const EMPTY: Self = Self {
        latencies_us: Vec::new(),
        builds: 0,
        finished: 0,
        cold_publishes: 0,
    };

    fn add(&mut self, run: Self) {
        self.latencies_us.extend(run.latencies_us);
        self.builds += run.builds;
        self.finished += run.finished;
        self.cold_publishes += run.cold_publishes;
    }
}

/// The build: an index of the given size after `DAEMON_BUILD` of (simulated) work.
fn build_index() -> Index {
    std::thread::sleep(DAEMON_BUILD);
    Index(DAEMON_INDEX_BYTES)
}

fn daemon_run(rt: &tokio::runtime::Runtime, asynchronous: bool) -> DaemonRun {
    let m = manager(DAEMON_INDEXES * DAEMON_INDEX_BYTES / 3);
    let builds = std::sync::Arc::new(AtomicU64::new(0));
    let finished = std::sync::Arc::new(AtomicU64::new(0));
    let latencies = rt.block_on(async {
        let clients: Vec<_> = (0..DAEMON_CLIENTS)
            .map(|client| {
                let (m, builds, finished) = (
                    m.clone(),
                    std::sync::Arc::clone(&builds),
                    std::sync::Arc::clone(&finished),
                );
                tokio::spawn(async move {
                    let mut rng = client.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let mut latencies = Vec::with_capacity(DAEMON_QUERIES);
                    for _ in 0..DAEMON_QUERIES {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let k = rng % DAEMON_INDEXES;
                        let options = LoadOptions::new(DAEMON_INDEX_BYTES).request(
                            ReserveRequest::new(DAEMON_INDEX_BYTES)
                                .wait_for(Duration::from_secs(60)),
                        );
                        let (builds, finished) = (
                            std::sync::Arc::clone(&builds),
                            std::sync::Arc::clone(&finished),
                        );
                        let t = Instant::now();
                        let index = if asynchronous {
                            m.get_or_load_async(&k, options, |_ctx| async move {
                                builds.fetch_add(1, Ordering::Relaxed);
                                let index = tokio::task::spawn_blocking(build_index).await?;
                                finished.fetch_add(1, Ordering::Relaxed);
                                Ok(index)
                            })
                            .await
                        } else {
                            let m = m.clone();
                            tokio::task::spawn_blocking(move || {
                                m.get_or_load(&k, options, |_ctx| {
                                    builds.fetch_add(1, Ordering::Relaxed);
                                    let index = build_index();
                                    finished.fetch_add(1, Ordering::Relaxed);
                                    Ok(index)
                                })
                            })
                            .await
                            .expect("query task")
                        }
                        .expect("every query is answered within its deadline");
                        // Serve the query from the index, then let go of it.
                        black_box(index.0);
                        tokio::task::yield_now().await;
                        drop(index);
                        latencies.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for c in clients {
            all.extend(c.await.expect("client"));
        }
        all
    });
    let metrics = m.ledger().metrics();
    let s = m.ledger().snapshot();
    assert!(s.high_water <= s.limit, "over budget: {s}");
    let published = metrics.published;
    DaemonRun {
        latencies_us: latencies,
        builds: builds.load(Ordering::Relaxed),
        finished: finished.load(Ordering::Relaxed),
        cold_publishes: published - metrics.replaced,
    }
}

/// The daemon scenario over all rounds: the async wiring, then the blocking one.
static DAEMON: Mutex<[DaemonRun; 2]> = Mutex::new([DaemonRun::EMPTY, DaemonRun::EMPTY]);

fn bench_daemon(_: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let mut totals = DAEMON.lock().expect("daemon");
    for _ in 0..DAEMON_ROUNDS {
        for (slot, asynchronous) in [(0, true), (1, false)] {
            totals[slot].add(daemon_run(&rt, asynchronous));
        }
    }
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
    let mut daemon = DAEMON.lock().expect("daemon");
    let [asynchronous, blocking] = &mut *daemon;
    verdict(
        KRATE,
        "daemon_builds_per_cold_miss",
        asynchronous.builds as f64 / asynchronous.cold_publishes.max(1) as f64,
        "x",
        Target::AtMost(1.0),
    );
    verdict(
        KRATE,
        "daemon_finished_builds_lost",
        asynchronous
            .finished
            .saturating_sub(asynchronous.cold_publishes) as f64,
        "builds",
        Target::AtMost(0.0),
    );
    let async_p99 = percentile(&mut asynchronous.latencies_us, 99.0);
    let blocking_p99 = percentile(&mut blocking.latencies_us, 99.0);
    verdict(
        KRATE,
        "daemon_p99_vs_blocking",
        async_p99 / blocking_p99,
        "x",
        Target::AtMost(1.0),
    );
    println!(
        "info: sqry-admission/daemon: async p99 {async_p99:.0} us, {} builds for {} cold misses; \
         blocking get_or_load p99 {blocking_p99:.0} us, {} builds for {} cold misses",
        asynchronous.builds, asynchronous.cold_publishes, blocking.builds, blocking.cold_publishes
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
    targets = bench_paths, bench_vs_moka, bench_daemon, verdicts
}
criterion_main!(benches);
