//! What a plugin call costs, what lookups cost, what a reload's swap costs, and what a
//! continuous reload does to callers — on the real C plugin, with baselines from this run.
//!
//! Every verdict is a ratio of two figures measured in this run; absolute times (printed as
//! `info:` lines) depend on the machine. Verdicts:
//! - `resolve_call_ratio`: `resolve(handle)` + a call of `add` through the typed table / the
//!   same with the original crate (`polyplug` 0.1.1: `resolve_guest_contract` + a call through
//!   its table), the same C function behind both; median of alternated rounds, target ≤ 1.0;
//! - `find_call_ratio`: `find(contract)` + the call / the original's `find_guest_contract` +
//!   resolve + the call, target ≤ 1.0;
//! - `guard_call_ratio`: a call through an interface resolved by a held guard (the function
//!   pointer loaded from the dispatch table each call) / the same function called through a raw
//!   `dlsym` pointer, median of alternated rounds, target ≤ 1.1;
//! - `reload_p99_ratio`: p99 latency of find + call while another thread reloads the same
//!   bundle continuously / the idle p99 of the same loop, target ≤ 2;
//! - `republish_scaling`: the registry commit of a reload that changes its find-index entries
//!   (one contract's version changes, one is dropped, one added) in a registry holding 10,000
//!   other contracts / the same commit in one holding 10, target ≤ 2 (republishing costs what
//!   the reload changed, not what the registry holds). Batches of the two alternate, so drift
//!   on a busy machine hits both alike.

#[path = "../tests/support/contracts.rs"]
mod contracts;
#[path = "../tests/support/fixtures.rs"]
mod fixtures;
#[path = "support/original.rs"]
mod original;

use std::ffi::CString;
use std::hint::black_box;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use polyplug_runtime::abi::Version;
use polyplug_runtime::ids::BundleId;
use polyplug_runtime::{Registry, ReloadRequest, ReloadStep, Runtime};
use workspace_tests::bench::{Samples, Target, verdict};

use contracts::{GREETER, Greeter, Versioned};

/// Per-iteration timings criterion handed to `iter_custom`, kept to compute verdicts.
static SAMPLES: Samples = Samples::new();
/// The p99 figures measured outside criterion's loop.
static P99: Mutex<Option<(f64, f64, usize, usize)>> = Mutex::new(None);

use original::{AddFn, Original};

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

    let original = Original::new(raw);
    alternated_rounds(&rt, handle, &original, raw);
    p99_under_reload(&rt, &v1, &v2);
    republish_scaling();
}

const BATCH: u32 = 200_000;

/// ns/iteration of `BATCH` iterations of `body` (monomorphized: no indirection is added to the
/// loop under test).
#[inline(never)]
fn time_batch(mut body: impl FnMut(u32) -> u32) -> f64 {
    let start = Instant::now();
    let mut sum = 0u32;
    for i in 0..BATCH {
        sum = sum.wrapping_add(body(black_box(i)));
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / f64::from(BATCH)
}

/// Runs each of the `names.len()` loops (`run(k)` times loop `k` once) per round, in an order
/// that rotates between rounds, and records each loop's ns/iteration per round after a
/// warm-up: a busy machine's drift hits every loop alike, and the verdicts compare medians of
/// the same rounds.
fn alternate(names: &[&'static str], mut run: impl FnMut(usize) -> f64) {
    const ROUNDS: usize = 41;
    const WARM_UP: usize = 4;
    for round in 0..WARM_UP + ROUNDS {
        for k in 0..names.len() {
            let which = (k + round) % names.len();
            let ns = run(which);
            if round >= WARM_UP {
                SAMPLES.push(names[which], ns);
            }
        }
    }
}

/// The lookup + call loops against the original crate's, and the held-guard call against the
/// raw `dlsym` pointer, in alternated rounds.
fn alternated_rounds(
    rt: &Runtime,
    handle: polyplug_runtime::abi::GuestContractHandle,
    original: &Original,
    raw: AddFn,
) {
    let original_handle = original.handle();
    alternate(
        &[
            "resolve_call_ours",
            "resolve_call_original",
            "find_call_ours",
            "find_call_original",
        ],
        |k| match k {
            0 => time_batch(|i| {
                let guard = rt.resolve(black_box(handle)).expect("resolve");
                let table = guard.functions::<Greeter>().expect("table");
                (table.add)(i, 1)
            }),
            1 => time_batch(|i| original.resolve_call(black_box(original_handle), i)),
            2 => time_batch(|i| {
                let guard = rt.find(black_box(&GREETER)).expect("find");
                let table = guard.functions::<Greeter>().expect("table");
                (table.add)(i, 1)
            }),
            _ => time_batch(|i| original.find_call(i)),
        },
    );

    let guard = rt.find(&GREETER).expect("find");
    let table = guard.functions::<Greeter>().expect("table");
    // Both loops as a host writes them: the caller holds a function pointer (raw) or a table
    // reference (guard) across the loop, and the compiler may keep either in a register; the
    // argument is opaque to it in both.
    alternate(&["guard_call", "raw_call"], |k| match k {
        0 => time_batch(|i| (table.add)(i, 1)),
        _ => time_batch(|i| raw(i, 1)),
    });
}

extern "C" fn one() -> u32 {
    1
}
static TABLE: Versioned = Versioned { version: one };

/// A registry holding `others` contracts besides the bundle `scaling` that the commits reload.
fn scaling_registry(others: u32) -> Registry {
    let registry = Registry::new();
    for i in 0..others {
        let bundle = format!("other{}", i % 50);
        registry
            .register_table(
                &format!("other.{i}"),
                Version::new(1, 0, 0),
                BundleId::new(&bundle),
                &bundle,
                &TABLE,
            )
            .expect("register");
    }
    registry
}

/// The mean time of `batch` registry commits of bundle `scaling`, alternating between v1
/// (`scaling.kept@1.0`, `scaling.a`) and v2 (`scaling.kept@1.1`, `scaling.b`): each commit
/// swaps one contract with a new version, retires one and publishes one — three index
/// entries republished. Only the commit (the swap phase of a reload) is timed.
fn commit_batch(registry: &Registry, next_v2: &mut bool, batch: u32) -> f64 {
    let bundle = BundleId::new("scaling");
    let mut spent = Duration::ZERO;
    for _ in 0..batch {
        let (minor, other) = if *next_v2 {
            (1, "scaling.b")
        } else {
            (0, "scaling.a")
        };
        *next_v2 = !*next_v2;
        let mut txn = registry
            .begin_reload(bundle, "scaling", true)
            .expect("begin");
        txn.stage_table("scaling.kept", Version::new(1, minor, 0), &TABLE)
            .expect("stage");
        txn.stage_table(other, Version::new(1, 0, 0), &TABLE)
            .expect("stage");
        let start = Instant::now();
        let summary = black_box(txn.commit().expect("commit"));
        spent += start.elapsed();
        assert!(summary.index_republished, "each commit republishes");
        drop(txn);
    }
    spent.as_nanos() as f64 / f64::from(batch)
}

/// Commits in a registry of 10 other contracts and in one of 10,000, in alternating batches.
fn republish_scaling() {
    const ROUNDS: usize = 60;
    const WARM_UP: usize = 5;
    const BATCH: u32 = 400;
    let few = scaling_registry(10);
    let many = scaling_registry(10_000);
    let (mut few_v2, mut many_v2) = (false, false);
    for round in 0..WARM_UP + ROUNDS {
        let few_first = round % 2 == 0;
        for pass in 0..2 {
            let (name, registry, next_v2) = if (pass == 0) == few_first {
                ("republish_few", &few, &mut few_v2)
            } else {
                ("republish_many", &many, &mut many_v2)
            };
            let ns = commit_batch(registry, next_v2, BATCH);
            if round >= WARM_UP {
                SAMPLES.push(name, ns);
            }
        }
    }
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
    let ratio = |ours: &str, theirs: &str| SAMPLES.median(ours) / SAMPLES.median(theirs);
    println!(
        "info: polyplug-runtime/resolve_call = {:.2} ns, original {:.2} ns; find_call = {:.2} ns, original {:.2} ns",
        SAMPLES.median("resolve_call_ours"),
        SAMPLES.median("resolve_call_original"),
        SAMPLES.median("find_call_ours"),
        SAMPLES.median("find_call_original"),
    );
    verdict(
        KRATE,
        "resolve_call_ratio",
        ratio("resolve_call_ours", "resolve_call_original"),
        "x",
        Target::AtMost(1.0),
    );
    verdict(
        KRATE,
        "find_call_ratio",
        ratio("find_call_ours", "find_call_original"),
        "x",
        Target::AtMost(1.0),
    );
    println!(
        "info: polyplug-runtime/raw_dlsym_call = {:.2} ns, guard_resolved_call = {:.2} ns",
        SAMPLES.median("raw_call"),
        SAMPLES.median("guard_call"),
    );
    verdict(
        KRATE,
        "guard_call_ratio",
        ratio("guard_call", "raw_call"),
        "x",
        Target::AtMost(1.1),
    );
    println!(
        "info: polyplug-runtime/reload_swap = {:.1} us median; reload_total = {:.1} us (copy, dlopen, init, swap, drain, dlclose)",
        SAMPLES.median("swap") / 1000.0,
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
    let (few, many) = (
        SAMPLES.median("republish_few"),
        SAMPLES.median("republish_many"),
    );
    println!(
        "info: polyplug-runtime/republish_commit = {few:.0} ns with 10 other contracts, {many:.0} ns with 10000"
    );
    verdict(
        KRATE,
        "republish_scaling",
        many / few,
        "x",
        Target::AtMost(2.0),
    );
}

criterion_group! {
    name = benches;
    config = workspace_tests::criterion_config!(2, 30);
    targets = bench_runtime, verdicts
}
criterion_main!(benches);
