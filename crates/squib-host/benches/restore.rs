//! squib-host's figures, measured in one run on real page faults and real snapshot files:
//!
//! - `fault_latency_ratio`: median latency of one random 4 KiB demand fault (timed by the
//!   touching thread, from the touch until the byte is readable) through the pager's server,
//!   over the same through a minimal handler written here (read one event, `UFFDIO_COPY` the
//!   page, repeat) — this machine's floor; target ≤ 1.25.
//! - `sequential_restore_ratio`: time to restore a 1 GiB snapshot file and touch every page in
//!   order, lazily (readahead + background population), over eager restore (`pread` the whole
//!   file into an anonymous mapping, then touch it); target ≤ 1.0.
//! - `first_access_pct`: time from the start of a lazy restore to the first byte being
//!   readable, as a percentage of the eager restore time; target ≤ 1 %.
//! - `zero_heavy_speedup`: eager over lazy time for a 1 GiB snapshot that is 90 % zero pages
//!   (stored as holes of a sparse file); target ≥ 3.
//!
//! Skips with a note where userfaultfd is not available.

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use workspace_tests::bench::{Samples, Target, verdict};

/// Per-iteration timings handed to `iter_custom`, kept to compute verdicts.
static SAMPLES: Samples = Samples::new();

fn record(name: &'static str, value: f64) {
    SAMPLES.push(name, value);
}

fn median(name: &str) -> f64 {
    SAMPLES.median(name)
}

const GIB: usize = 1 << 30;

fn ps() -> usize {
    squib_host::host_page_size()
}

fn bench_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("squib-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// A 1 GiB snapshot of pseudo-random data pages (written, no holes).
fn dense_snapshot(path: &Path) {
    let f = File::create(path).expect("create snapshot");
    let mut chunk = vec![0u8; 4 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for c in 0..GIB / chunk.len() {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all_at(&chunk, (c * chunk.len()) as u64)
            .expect("write");
    }
    f.sync_all().expect("sync");
}

/// A 1 GiB sparse snapshot: 64 KiB of data every 640 KiB, holes elsewhere (90 % zero).
fn zero_heavy_snapshot(path: &Path) {
    let f = File::create(path).expect("create snapshot");
    f.set_len(GIB as u64).expect("set_len");
    let data = vec![0x5Au8; 64 << 10];
    let stride = 640 << 10;
    for c in 0..GIB / stride {
        f.write_all_at(&data, (c * stride) as u64).expect("write");
    }
    f.sync_all().expect("sync");
}

/// Reads the file once so both restores start from a warm page cache.
fn warm(path: &Path) {
    let f = File::open(path).expect("open");
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while let Ok(n) = f.read_at(&mut buf, off) {
        if n == 0 {
            break;
        }
        off += n as u64;
    }
}

fn touch_all(mem: &[u8]) -> u64 {
    let mut sum = 0u64;
    for p in (0..mem.len()).step_by(ps()) {
        sum = sum.wrapping_add(u64::from(mem[p]));
    }
    sum
}

/// Eager restore: pread the whole file into a fresh anonymous mapping, then touch it.
fn eager(path: &Path) -> Duration {
    let t = Instant::now();
    let f = File::open(path).expect("open");
    let len = f.metadata().expect("metadata").len() as usize;
    let mut map = platform_primitives::mem::AnonMapping::new(len).expect("mmap");
    f.read_exact_at(map.as_mut_slice(), 0).expect("pread");
    black_box(touch_all(map.as_slice()));
    let d = t.elapsed();
    drop(map);
    d
}

#[cfg(target_os = "linux")]
mod lazy {
    use super::*;
    use squib_host::{
        FilePageSource, MemorySource, Pager, PagerConfig, Uffd, UffdEvent, spawn_server,
    };
    use std::sync::Arc;

    /// Lazy restore: pager + lazy mapping + server, then touch every page in order. Returns
    /// (time to first readable byte, total time).
    pub(super) fn restore(path: &Path) -> (Duration, Duration) {
        let t = Instant::now();
        let source = FilePageSource::open(path).expect("open");
        let len = source.len() as usize;
        let pager = Pager::new(source, PagerConfig::default());
        let mem = pager.map_lazy(len, 0).expect("map_lazy");
        let server = spawn_server(&pager).expect("server");
        black_box(mem.as_slice()[0]);
        let first = t.elapsed();
        black_box(touch_all(mem.as_slice()));
        let total = t.elapsed();
        pager.request_shutdown();
        server.join().expect("join").expect("server");
        drop(mem);
        (first, total)
    }

    const PAGES: usize = 16384;

    fn order(seed: u64) -> Vec<usize> {
        let mut v: Vec<usize> = (0..PAGES).collect();
        let mut x = seed | 1;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        v
    }

    fn data() -> Vec<u8> {
        (0..PAGES * ps()).map(|i| (i % 251) as u8 | 1).collect()
    }

    /// Times `n` random faults on `mem` (fresh pages from `next`), returning per-fault ns.
    fn time_faults(mem: &[u8], order: &[usize], next: &mut usize, n: u64) -> Vec<f64> {
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let p = order[*next];
            *next += 1;
            let t = Instant::now();
            black_box(mem[p * ps() + 1]);
            out.push(t.elapsed().as_nanos() as f64);
        }
        out
    }

    pub(super) fn bench_faults(c: &mut Criterion) {
        let mut group = c.benchmark_group("random_4k_fault");
        let data = Arc::new(data());

        // Baseline: the minimal handler — blocking read of one event, UFFDIO_COPY, repeat.
        group.bench_function("minimal_read_copy_loop", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(PAGES as u64);
                    left -= n;
                    let uffd = Arc::new(Uffd::open().expect("uffd"));
                    uffd.set_nonblocking(false).expect("blocking");
                    let mut map =
                        platform_primitives::mem::AnonMapping::new(PAGES * ps()).expect("mmap");
                    uffd.register_mapping(&mut map).expect("register");
                    let base = map.as_ptr() as u64;
                    let (u, d) = (uffd.clone(), data.clone());
                    let handler = std::thread::spawn(move || {
                        let mut events = Vec::with_capacity(32);
                        for _ in 0..n {
                            events.clear();
                            if u.read_events(&mut events).is_err() {
                                return;
                            }
                            for e in &events {
                                if let UffdEvent::PageFault { addr, .. } = *e {
                                    let off = (addr - base) as usize;
                                    let _ = u.copy(addr, &d[off..off + ps()], true);
                                }
                            }
                        }
                    });
                    let ord = order(iters ^ n);
                    let mut next = 0;
                    let times = time_faults(map.as_slice(), &ord, &mut next, n);
                    handler.join().expect("handler");
                    for t in &times {
                        record("baseline_fault", *t);
                        total += Duration::from_nanos(*t as u64);
                    }
                    uffd.unregister(base, map.len() as u64).expect("unregister");
                }
                total
            })
        });

        group.bench_function("pager", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(PAGES as u64);
                    left -= n;
                    let pager = Pager::new(
                        MemorySource::new(data.to_vec()),
                        PagerConfig {
                            background: false,
                            record_working_set: false,
                            ..PagerConfig::default()
                        },
                    );
                    let mem = pager.map_lazy(PAGES * ps(), 0).expect("map_lazy");
                    let server = spawn_server(&pager).expect("server");
                    let ord = order(iters ^ n);
                    let mut next = 0;
                    let times = time_faults(mem.as_slice(), &ord, &mut next, n);
                    pager.request_shutdown();
                    server.join().expect("join").expect("server");
                    for t in &times {
                        record("pager_fault", *t);
                        total += Duration::from_nanos(*t as u64);
                    }
                }
                total
            })
        });
        group.finish();
    }
}

fn bench_restores(c: &mut Criterion) {
    #[cfg(target_os = "linux")]
    {
        if let Err(e) = squib_host::Uffd::open() {
            println!("skip: squib-host restore benches: {e}");
            return;
        }
        let dir = bench_dir();
        let dense = dir.join("dense.snap");
        let sparse = dir.join("sparse.snap");
        dense_snapshot(&dense);
        zero_heavy_snapshot(&sparse);
        warm(&dense);
        warm(&sparse);

        let mut group = c.benchmark_group("restore_1gib");
        group.sampling_mode(SamplingMode::Flat).sample_size(10);
        for (label, path, eager_key, lazy_key) in [
            ("dense", &dense, "eager_dense", "lazy_dense"),
            ("zero_heavy", &sparse, "eager_sparse", "lazy_sparse"),
        ] {
            group.bench_function(format!("eager_{label}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let d = eager(path);
                        record(eager_key, d.as_nanos() as f64);
                        total += d;
                    }
                    total
                })
            });
            group.bench_function(format!("lazy_{label}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (first, d) = lazy::restore(path);
                        record(lazy_key, d.as_nanos() as f64);
                        if lazy_key == "lazy_dense" {
                            record("first_access", first.as_nanos() as f64);
                        }
                        total += d;
                    }
                    total
                })
            });
        }
        group.finish();
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (
            c,
            bench_dir,
            dense_snapshot,
            zero_heavy_snapshot,
            warm,
            eager,
        );
        println!("skip: squib-host restore benches: userfaultfd is Linux-only");
    }
}

fn bench_faults(c: &mut Criterion) {
    #[cfg(target_os = "linux")]
    {
        if squib_host::Uffd::open().is_err() {
            return;
        }
        lazy::bench_faults(c);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = c;
}

/// Prints the verdict, unless the figure was not measured (NaN: not on Linux, or no
/// userfaultfd here), in which case a skip note was printed when measuring.
fn check(metric: &str, value: f64, unit: &str, target: Target) {
    if !value.is_nan() {
        verdict("squib-host", metric, value, unit, target);
    }
}

fn verdicts(_: &mut Criterion) {
    let (base, ours) = (median("baseline_fault"), median("pager_fault"));
    println!(
        "info: squib-host/fault_latency = {:.1} us median (floor {:.1} us)",
        ours / 1e3,
        base / 1e3
    );
    check(
        "fault_latency_ratio",
        ours / base,
        "x",
        Target::AtMost(1.25),
    );
    let (eager_dense, lazy_dense) = (median("eager_dense"), median("lazy_dense"));
    println!(
        "info: squib-host/restore_1gib = lazy {:.0} ms, eager {:.0} ms",
        lazy_dense / 1e6,
        eager_dense / 1e6
    );
    check(
        "sequential_restore_ratio",
        lazy_dense / eager_dense,
        "x",
        Target::AtMost(1.0),
    );
    check(
        "first_access_pct",
        100.0 * median("first_access") / eager_dense,
        "%",
        Target::AtMost(1.0),
    );
    let (eager_sparse, lazy_sparse) = (median("eager_sparse"), median("lazy_sparse"));
    println!(
        "info: squib-host/zero_heavy_1gib = lazy {:.0} ms, eager {:.0} ms",
        lazy_sparse / 1e6,
        eager_sparse / 1e6
    );
    check(
        "zero_heavy_speedup",
        eager_sparse / lazy_sparse,
        "x",
        Target::AtLeast(3.0),
    );
}

criterion_group! {
    name = benches;
    config = workspace_tests::criterion_config!(3, 20);
    targets = bench_faults, bench_restores, verdicts
}
criterion_main!(benches);
