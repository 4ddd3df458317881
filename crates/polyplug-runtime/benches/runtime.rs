//! What a plugin call costs, what lookups cost, what a reload's swap costs, and what a
//! continuous reload does to callers — on the real C plugin, with baselines from this run.
//!
//! Verdicts:
//! - `guard_call_ratio`: a call through an interface resolved by a guard (the function pointer
//!   loaded from the dispatch table each call) / the same function called through a raw
//!   `dlsym` pointer, target ≤ 1.2;
//! - `resolve_ns`: `resolve(handle)` with its guard dropped, target ≤ 10 ns;
//! - `find_ns`: `find(contract)` with its guard dropped, target ≤ 30 ns;
//! - `reload_swap_us`: the swap phase of a reload (the registry commit; excludes the copy,
//!   `dlopen` and init), median, target ≤ 100 µs;
//! - `reload_p99_ratio`: p99 latency of find + call while another thread reloads the same
//!   bundle continuously / the idle p99 of the same loop, target ≤ 2.

#[path = "../tests/support/contracts.rs"]
mod contracts;
#[path = "../tests/support/fixtures.rs"]
mod fixtures;

use std::ffi::CString;
use std::hint::black_box;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use polyplug_runtime::{ReloadRequest, ReloadStep, Runtime};
use workspace_tests::bench::{Samples, Target, verdict};

use contracts::{GREETER, Greeter};

/// Per-iteration timings criterion handed to `iter_custom`, kept to compute verdicts.
static SAMPLES: Samples = Samples::new();
/// The p99 figures measured outside criterion's loop.
static P99: Mutex<Option<(f64, f64, usize, usize)>> = Mutex::new(None);

type AddFn = extern "C" fn(u32, u32) -> u32;

/// The C plugin's exported `c_guest_add`, through `dlopen`/`dlsym` of its own private copy.
fn raw_add(library: &std::path::Path, copy: &std::path::Path) -> AddFn {
    std::fs::copy(library, copy).expect("copy");
    let path = CString::new(copy.as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path to the fixture library; it stays open for the process.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen of the C fixture failed");
    // SAFETY: the handle is open and the name NUL-terminated.
    let symbol = unsafe { libc::dlsym(handle, c"c_guest_add".as_ptr()) };
    assert!(!symbol.is_null(), "c_guest_add not exported");
    // SAFETY: guest.c defines `uint32_t c_guest_add(uint32_t, uint32_t)`.
    unsafe { std::mem::transmute::<*mut libc::c_void, AddFn>(symbol) }
}

fn bench_runtime(c: &mut Criterion) {
    let f = fixtures::fixtures();
    let (v1, v2) = f.c_pair("c-bench");
    let rt = Runtime::builder()
        .hot_reload(true)
        .build()
        .expect("runtime");
    rt.load_bundle(&v1).expect("load");
    let handle = rt.registry().handle_of(&GREETER).expect("handle");
    let raw = raw_add(f.c("v1"), &f.scratch("raw").join("libraw.so"));

    let mut group = c.benchmark_group("call");
    group.bench_function("raw_dlsym_pointer", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                black_box(black_box(raw)(black_box(i as u32), 1));
            }
            SAMPLES.record("raw", iters, start.elapsed())
        })
    });
    group.bench_function("guard_resolved_interface", |b| {
        b.iter_custom(|iters| {
            let guard = rt.find(&GREETER).expect("find");
            let table = guard.functions::<Greeter>().expect("table");
            let start = Instant::now();
            for i in 0..iters {
                black_box((black_box(table).add)(black_box(i as u32), 1));
            }
            SAMPLES.record("guard", iters, start.elapsed())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("lookup");
    group.bench_function("resolve_handle", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(rt.resolve(black_box(handle)).is_ok());
            }
            SAMPLES.record("resolve", iters, start.elapsed())
        })
    });
    group.bench_function("find_contract", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(rt.find(black_box(&GREETER)).is_ok());
            }
            SAMPLES.record("find", iters, start.elapsed())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("reload");
    group.sample_size(20);
    let mut next_v2 = true;
    group.bench_function("swap_phase", |b| {
        b.iter_custom(|iters| {
            let mut swap = Duration::ZERO;
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = if next_v2 { &v2 } else { &v1 };
                next_v2 = !next_v2;
                let report = rt
                    .reload(ReloadRequest::new("c-bench").from_dir(dir))
                    .expect("reload");
                swap += report.phase(ReloadStep::Swap).unwrap_or_default();
                total += report.total;
            }
            SAMPLES.record("reload_total", iters, total);
            SAMPLES.record("swap", iters, swap)
        })
    });
    group.finish();

    p99_under_reload(&rt, &v1, &v2);
}

/// The p99 of `find` + call, idle and while another thread reloads the bundle continuously.
fn p99_under_reload(rt: &Runtime, v1: &std::path::Path, v2: &std::path::Path) {
    const CALLS: usize = 400_000;
    let measure = |rt: &Runtime| {
        let mut samples = Vec::with_capacity(CALLS);
        for i in 0..CALLS {
            let start = Instant::now();
            let guard = rt.find(&GREETER).expect("callers never fail");
            let table = guard.functions::<Greeter>().expect("table");
            black_box((table.add)(black_box(i as u32), 1));
            drop(guard);
            samples.push(start.elapsed().as_nanos() as u64);
        }
        samples.sort_unstable();
        samples[samples.len() * 99 / 100] as f64
    };
    // Warm up, then idle.
    let _ = measure(rt);
    let idle = measure(rt);
    let stop = AtomicBool::new(false);
    let reloads = AtomicUsize::new(0);
    let busy = std::thread::scope(|s| {
        s.spawn(|| {
            let mut next_v2 = true;
            while !stop.load(Ordering::Relaxed) {
                let dir = if next_v2 { v2 } else { v1 };
                next_v2 = !next_v2;
                rt.reload(ReloadRequest::new("c-bench").from_dir(dir))
                    .expect("reload");
                reloads.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Let the reloader get going.
        while reloads.load(Ordering::Relaxed) < 3 {
            std::thread::yield_now();
        }
        let before = reloads.load(Ordering::Relaxed);
        let busy = measure(rt);
        let during = reloads.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        (busy, during)
    });
    *P99.lock().expect("p99") = Some((idle, busy.0, busy.1, CALLS));
}

const KRATE: &str = "polyplug-runtime";

fn verdicts(_: &mut Criterion) {
    let (raw, guard) = (SAMPLES.median("raw"), SAMPLES.median("guard"));
    println!(
        "info: polyplug-runtime/raw_dlsym_call = {raw:.2} ns, guard_resolved_call = {guard:.2} ns"
    );
    verdict(
        KRATE,
        "guard_call_ratio",
        guard / raw,
        "x",
        Target::AtMost(1.2),
    );
    verdict(
        KRATE,
        "resolve_ns",
        SAMPLES.median("resolve"),
        "ns",
        Target::AtMost(10.0),
    );
    verdict(
        KRATE,
        "find_ns",
        SAMPLES.median("find"),
        "ns",
        Target::AtMost(30.0),
    );
    verdict(
        KRATE,
        "reload_swap_us",
        SAMPLES.median("swap") / 1000.0,
        "us",
        Target::AtMost(100.0),
    );
    println!(
        "info: polyplug-runtime/reload_total_us = {:.1} us (copy, dlopen, init, swap, drain, dlclose)",
        SAMPLES.median("reload_total") / 1000.0
    );
    if let Some((idle, busy, reloads, calls)) = *P99.lock().expect("p99") {
        println!(
            "info: polyplug-runtime/find_call_p99 = {idle:.0} ns idle, {busy:.0} ns during {reloads} reloads ({calls} calls each)"
        );
        verdict(
            KRATE,
            "reload_p99_ratio",
            busy / idle,
            "x",
            Target::AtMost(2.0),
        );
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_runtime, verdicts
}
criterion_main!(benches);
