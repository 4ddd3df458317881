//! Fan-out, allocations and attach latency, each against a baseline measured in this run.
//!
//! - **Fan-out**: 4096 chunks of 4 KiB from one producer thread to 1, 4 and 16 subscriber
//!   threads, through the hub (every subscriber with `Policy::Block`, so nothing is lost) and
//!   through `tokio::sync::broadcast` with the same retention (1024 chunks = the hub's 4 MiB
//!   budget) read with `blocking_recv`. Throughput is chunks delivered per second over all
//!   subscribers; broadcast's `Lagged` losses are counted and reported. Target: the hub's
//!   throughput ≥ 1.0× broadcast's, with zero loss.
//! - **Allocations**: a counting global allocator over 8192 chunks fanned out to 4 subscriber
//!   threads in steady state. Target: 0 allocations per chunk per subscriber.
//! - **Attach latency**: `subscribe` (fenced 64 KiB tail snapshot + cursor) → `replay` →
//!   `live`, while a producer thread emits 4 KiB chunks at full speed, on one hub (a 1 MiB
//!   ring) with about 1 MiB and then with more than 1 GiB of emitted history. Targets: median
//!   ≤ 50 µs, and the two medians within 1.5× of each other (attach cost is independent of the
//!   history's length).

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use engate_attach::{
    AttachOptions, Event, Hub, HubConfig, Policy, Producer, TailProvider, channel,
};
use workspace_tests::bench::Target;
use workspace_tests::support::CountingAlloc;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const CHUNK: usize = 4096;
const CHUNKS: usize = 4096;
const BUDGET: usize = 4 << 20;
const SUBSCRIBERS: [usize; 3] = [1, 4, 16];

/// Values recorded by the timed sections: (name, value).
static SAMPLES: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());

fn record(name: impl Into<String>, value: f64) {
    SAMPLES.lock().expect("samples").push((name.into(), value));
}

fn median(name: &str) -> f64 {
    let mut v: Vec<f64> = SAMPLES
        .lock()
        .expect("samples")
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, t)| *t)
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn sum(name: &str) -> f64 {
    SAMPLES
        .lock()
        .expect("samples")
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, t)| *t)
        .sum()
}

/// A pool of 4 KiB chunks, already shared, so cloning one is a reference-count increment.
fn chunk_pool() -> Vec<Bytes> {
    (0..64u8)
        .map(|i| {
            let b = Bytes::from(vec![i; CHUNK]);
            drop(b.clone());
            b
        })
        .collect()
}

/// One round through the hub; returns (elapsed, chunks delivered, chunks lost).
fn hub_round(subscribers: usize, pool: &[Bytes]) -> (Duration, u64, u64) {
    let config = HubConfig::new()
        .budget_bytes(BUDGET)
        .max_blocking(subscribers);
    let (mut producer, hub) = channel(config, TailProvider::new(0)).expect("config");
    let options = AttachOptions::new().policy(Policy::Block);
    let lives: Vec<_> = (0..subscribers)
        .map(|_| {
            let (synced, ()) = hub
                .attach_with(options)
                .subscribe()
                .expect("attach")
                .replay(|_| ());
            synced.live()
        })
        .collect();
    let start = Instant::now();
    let (delivered, lost) = std::thread::scope(|s| {
        let readers: Vec<_> = lives
            .into_iter()
            .map(|mut live| {
                s.spawn(move || {
                    let (mut got, mut lost) = (0u64, 0u64);
                    loop {
                        match live.next_blocking() {
                            Event::Item(item) => {
                                black_box(&item.bytes);
                                got += 1;
                            }
                            Event::Gap { .. } | Event::Resync(_) => lost += 1,
                            Event::Closed(_) => break,
                            Event::Empty => {}
                        }
                    }
                    (got, lost)
                })
            })
            .collect();
        for i in 0..CHUNKS {
            producer.emit(pool[i % pool.len()].clone()).expect("emit");
        }
        drop(producer);
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .fold((0, 0), |(a, b), (g, l)| (a + g, b + l))
    });
    (start.elapsed(), delivered, lost)
}

/// One round through tokio's broadcast; returns (elapsed, chunks delivered, chunks lagged).
fn broadcast_round(subscribers: usize, pool: &[Bytes]) -> (Duration, u64, u64) {
    let (tx, _) = tokio::sync::broadcast::channel::<Bytes>(BUDGET / CHUNK);
    let rxs: Vec<_> = (0..subscribers).map(|_| tx.subscribe()).collect();
    let start = Instant::now();
    let (delivered, lagged) = std::thread::scope(|s| {
        let readers: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                s.spawn(move || {
                    use tokio::sync::broadcast::error::RecvError;
                    let (mut got, mut lagged) = (0u64, 0u64);
                    loop {
                        match rx.blocking_recv() {
                            Ok(bytes) => {
                                black_box(&bytes);
                                got += 1;
                            }
                            Err(RecvError::Lagged(n)) => lagged += n,
                            Err(RecvError::Closed) => break,
                        }
                    }
                    (got, lagged)
                })
            })
            .collect();
        for i in 0..CHUNKS {
            let _ = tx.send(pool[i % pool.len()].clone());
        }
        drop(tx);
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .fold((0, 0), |(a, b), (g, l)| (a + g, b + l))
    });
    (start.elapsed(), delivered, lagged)
}

/// Each iteration runs one hub round and one broadcast round back to back (alternating which
/// goes first), so both see the same machine load; the verdict uses the median of the
/// per-pair throughput ratios.
fn bench_fanout(c: &mut Criterion) {
    let pool = chunk_pool();
    let mut group = c.benchmark_group("fanout_4k_chunks_hub_and_broadcast_round");
    for n in SUBSCRIBERS {
        let mut flip = false;
        group.bench_function(format!("{n}_subscribers"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    flip = !flip;
                    let (hub, bc) = if flip {
                        let h = hub_round(n, &pool);
                        (h, broadcast_round(n, &pool))
                    } else {
                        let b = broadcast_round(n, &pool);
                        (hub_round(n, &pool), b)
                    };
                    let ours = hub.1 as f64 / hub.0.as_secs_f64();
                    let theirs = bc.1 as f64 / bc.0.as_secs_f64();
                    record(format!("hub_{n}"), ours);
                    record(format!("hub_{n}_lost"), hub.2 as f64);
                    record(format!("broadcast_{n}"), theirs);
                    record(format!("broadcast_{n}_lagged"), bc.2 as f64);
                    record(format!("broadcast_{n}_rounds"), 1.0);
                    record(format!("ratio_{n}"), ours / theirs);
                    total += hub.0 + bc.0;
                }
                total
            })
        });
    }
    group.finish();
}

/// Allocations per chunk per subscriber while 4 subscriber threads take 8192 chunks.
fn allocations_per_chunk_per_subscriber() -> f64 {
    const SUBS: usize = 4;
    const WARM: usize = 2048;
    const MEASURED: usize = 8192;
    let pool = chunk_pool();
    let config = HubConfig::new().budget_bytes(BUDGET).max_blocking(SUBS);
    let (mut producer, hub) = channel(config, TailProvider::new(64 << 10)).expect("config");
    let taken: Vec<AtomicU64> = (0..SUBS).map(|_| AtomicU64::new(0)).collect();
    let wait_for = |n: u64| {
        while taken.iter().any(|t| t.load(Ordering::Acquire) < n) {
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    std::thread::scope(|s| {
        for t in &taken {
            let (synced, ()) = hub
                .attach_with(AttachOptions::new().policy(Policy::Block))
                .subscribe()
                .expect("attach")
                .replay(|_| ());
            let mut live = synced.live();
            s.spawn(move || {
                while let Event::Item(item) = live.next_blocking() {
                    black_box(&item.bytes);
                    t.fetch_add(1, Ordering::Release);
                }
            });
        }
        for i in 0..WARM {
            producer.emit(pool[i % pool.len()].clone()).expect("emit");
        }
        wait_for(WARM as u64);
        let before = CountingAlloc::allocations();
        for i in 0..MEASURED {
            producer.emit(pool[i % pool.len()].clone()).expect("emit");
        }
        wait_for((WARM + MEASURED) as u64);
        let allocations = CountingAlloc::allocations() - before;
        drop(producer);
        allocations as f64 / (MEASURED * SUBS) as f64
    })
}

/// How many chunks the latency worker emits at full speed after the attaches may start
/// (256 MiB): it stops earlier when they are done. Only attaches made while it was still
/// emitting are judged; the median history at the attach is reported.
const PRODUCER_CAP: usize = (256 << 20) / CHUNK;

/// Chunks emitted at full speed before attaches start, so the producer is in its stride.
const WARM_CHUNKS: usize = 64;

/// Attaches per phase and round.
const ATTACHES_PER_PHASE: usize = 16;

const IDLE: u8 = 0;
const GO_SMALL: u8 = 1;
const GO_LARGE: u8 = 2;
const RUNNING: u8 = 3;
const STOP: u8 = 4;
const EXIT: u8 = 5;

/// The persistent producer thread of the latency hub, driven through `state`.
struct Worker<'a> {
    state: &'a std::sync::atomic::AtomicU8,
    thread: std::thread::Thread,
}

impl Worker<'_> {
    /// Starts a phase, runs `during` once the producer is in its stride, stops it.
    fn while_emitting<R>(&self, go: u8, during: impl FnOnce() -> R) -> R {
        self.state.store(go, Ordering::Release);
        self.thread.unpark();
        // Spin, not yield: a yield hands the core to other processes for a whole time slice,
        // and the attaches would come after the producer stopped.
        while self.state.load(Ordering::Acquire) != RUNNING {
            std::hint::spin_loop();
        }
        let r = during();
        self.state.store(STOP, Ordering::Release);
        while self.state.load(Ordering::Acquire) != IDLE {
            std::thread::yield_now();
        }
        r
    }
}

/// The worker's loop. GO_SMALL starts a new epoch and emits 1 MiB; GO_LARGE emits until the
/// epoch holds 1 GiB. Then, in both, 64 chunks at full speed, RUNNING, and full speed until
/// STOP (or the cap), then IDLE.
fn work(mut producer: Producer, pool: &[Bytes], state: &std::sync::atomic::AtomicU8) {
    let mut i = 0usize;
    let mut emit = |producer: &mut Producer| {
        producer.emit(pool[i % pool.len()].clone()).expect("emit");
        i += 1;
    };
    loop {
        let target = match state.load(Ordering::Acquire) {
            GO_SMALL => {
                producer.restart();
                1u64 << 20
            }
            GO_LARGE => 1u64 << 30,
            EXIT => return,
            _ => {
                std::thread::park();
                continue;
            }
        };
        while producer.position().next < target {
            emit(&mut producer);
        }
        for _ in 0..WARM_CHUNKS {
            emit(&mut producer);
        }
        state.store(RUNNING, Ordering::Release);
        let mut n = 0;
        while state.load(Ordering::Relaxed) == RUNNING && n < PRODUCER_CAP {
            emit(&mut producer);
            n += 1;
        }
        while state.load(Ordering::Acquire) != STOP {
            std::thread::yield_now();
        }
        state.store(IDLE, Ordering::Release);
    }
}

/// One attach with a 64 KiB snapshot: records its latency under `name` (if it happened while
/// the producer was still emitting, i.e. before offset `emitting_until`) and the history it
/// attached at; returns the latency.
fn timed_attach(hub: &Hub, name: &str, emitting_until: u64) -> Duration {
    let t = Instant::now();
    let (synced, (len, at)) = hub
        .attach()
        .subscribe()
        .expect("attach")
        .replay(|s| (black_box(s.bytes().len()), s.at()));
    let live = synced.live();
    let d = t.elapsed();
    assert_eq!(len, 64 << 10, "a full 64 KiB snapshot");
    drop(live);
    record(format!("{name}_all"), d.as_nanos() as f64);
    if at < emitting_until {
        record(name, d.as_nanos() as f64);
        record(format!("{name}_history"), at as f64);
    }
    d
}

fn median_of(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

/// Attach latency while the producer runs at full speed, with about 1 MiB and with more than
/// 1 GiB of history, on the same hub (so ring, provider and memory layout are the same and
/// only the history differs). Each round starts a new epoch, emits 1 MiB and attaches 16 times
/// while the producer keeps emitting; then emits on to 1 GiB and attaches 16 times again while
/// the producer keeps emitting. Criterion's own report for this group times whole rounds; the
/// verdicts use the per-attach latencies recorded here.
fn bench_attach(c: &mut Criterion) {
    let pool = chunk_pool();
    let (producer, hub) = channel(
        HubConfig::new().budget_bytes(1 << 20),
        TailProvider::new(64 << 10),
    )
    .expect("config");
    let state = std::sync::atomic::AtomicU8::new(IDLE);
    std::thread::scope(|s| {
        let thread = s.spawn(|| work(producer, &pool, &state));
        let worker = Worker {
            state: &state,
            thread: thread.thread().clone(),
        };
        let phase = |go: u8, name: &str| {
            worker.while_emitting(go, || {
                let until = hub.position().next + (PRODUCER_CAP * CHUNK) as u64;
                (0..ATTACHES_PER_PHASE)
                    .map(|_| timed_attach(&hub, name, until))
                    .collect::<Vec<_>>()
            })
        };
        let mut group = c.benchmark_group("attach_64k_snapshot_producer_at_full_speed");
        group.sampling_mode(criterion::SamplingMode::Flat);
        group.bench_function("history_1MiB_then_1GiB", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let small = phase(GO_SMALL, "attach_1MiB");
                    let large = phase(GO_LARGE, "attach_1GiB");
                    record("attach_ratio_all", median_of(large) / median_of(small));
                }
                start.elapsed()
            })
        });
        group.finish();
        state.store(EXIT, Ordering::Release);
        worker.thread.unpark();
    });
}

/// The shared verdict line, with this bench's `(op, target)` spelling.
fn verdict(metric: &str, value: f64, unit: &str, op: &str, target: f64) -> bool {
    let target = if op == ">=" {
        Target::AtLeast(target)
    } else {
        Target::AtMost(target)
    };
    workspace_tests::bench::verdict("engate-attach", metric, value, unit, target)
}

fn verdicts(_: &mut Criterion) {
    for n in SUBSCRIBERS {
        let (ours, theirs) = (
            median(&format!("hub_{n}")),
            median(&format!("broadcast_{n}")),
        );
        verdict(
            &format!("fanout_{n}_subscribers_vs_broadcast"),
            ours / theirs,
            "x",
            ">=",
            1.0,
        );
        verdict(
            &format!("fanout_{n}_subscribers_lost_chunks"),
            sum(&format!("hub_{n}_lost")),
            "chunks",
            "<=",
            0.0,
        );
        let rounds = sum(&format!("broadcast_{n}_rounds")).max(1.0);
        println!(
            "info: engate-attach/fanout_{n}_subscribers: medians hub {:.0} chunks/s, broadcast {:.0} chunks/s delivered with {:.0} Lagged chunks per round of {} ({:.1}% of deliveries lost); ratio is the median of paired rounds",
            ours,
            theirs,
            sum(&format!("broadcast_{n}_lagged")) / rounds,
            CHUNKS * n,
            100.0 * sum(&format!("broadcast_{n}_lagged")) / rounds / (CHUNKS * n) as f64,
        );
    }
    verdict(
        "allocations_per_chunk_per_subscriber",
        allocations_per_chunk_per_subscriber(),
        "allocations",
        "<=",
        0.0,
    );
    let (small, large) = (median("attach_1MiB"), median("attach_1GiB"));
    verdict("attach_latency_median", small / 1000.0, "us", "<=", 50.0);
    verdict(
        "attach_latency_median_1GiB_history",
        large / 1000.0,
        "us",
        "<=",
        50.0,
    );
    let ratio = small / large;
    verdict(
        "attach_latency_1GiB_vs_1MiB_history",
        ratio.max(1.0 / ratio),
        "x",
        "<=",
        1.5,
    );
    let count = |name: &str| {
        SAMPLES
            .lock()
            .expect("samples")
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    };
    println!(
        "info: engate-attach/attach_history: {} of {} attaches with ~1 MiB and {} of {} with \
         ~1 GiB history happened while the producer was emitting (only those are judged); \
         median history at attach {:.2} MiB and {:.2} GiB; all attaches: medians {:.2} us and \
         {:.2} us, median per-round ratio {:.2}",
        count("attach_1MiB"),
        count("attach_1MiB_all"),
        count("attach_1GiB"),
        count("attach_1GiB_all"),
        median("attach_1MiB_history") / (1 << 20) as f64,
        median("attach_1GiB_history") / (1u64 << 30) as f64,
        median("attach_1MiB_all") / 1000.0,
        median("attach_1GiB_all") / 1000.0,
        median("attach_ratio_all"),
    );
}

criterion_group! {
    name = benches;
    config = workspace_tests::criterion_config!(2, 20);
    targets = bench_fanout, bench_attach, verdicts
}
criterion_main!(benches);
