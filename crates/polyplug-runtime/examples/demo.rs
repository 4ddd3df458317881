//! polyplug-runtime end to end: a C plugin (compiled with the system C compiler) and a Rust
//! plugin (a cdylib built with cargo) are loaded from bundle directories; two threads call
//! them without pause while the main thread hot-reloads them 100 times (v1 ↔ v2, alternating
//! between the two plugins). Printed: calls made, failed calls (must be 0), call latency idle
//! and during the reloads, and the last reload report.
//!
//! Run with `cargo xtask demo`, or `cargo run --release -p polyplug-runtime --example demo`
//! (it builds its plugins on first run).

#[path = "../tests/support/contracts.rs"]
mod contracts;
#[path = "../tests/support/fixtures.rs"]
mod fixtures;

use std::error::Error;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use polyplug_runtime::ids::ContractRef;
use polyplug_runtime::{ReloadReport, ReloadRequest, Runtime};

use contracts::{GREETER, Greeter, RELOAD_TEST, ReloadTest};

const RELOADS: usize = 100;
const IDLE_CALLS: usize = 300_000;

/// One caller's results.
#[derive(Default)]
struct Calls {
    idle: Vec<u32>,
    busy: Vec<u32>,
    failed: u64,
    versions_seen: [u64; 2],
}

/// Calls `contract` (find + `version()` + `add()`) until told to stop, timing each call.
fn caller(
    rt: &Runtime,
    contract: ContractRef<'static>,
    call: fn(&polyplug_runtime::Interface, u32) -> Option<u32>,
    reloading: &AtomicBool,
    done: &AtomicBool,
    started: &AtomicU64,
) -> Calls {
    let mut calls = Calls::default();
    let one = |calls: &mut Calls, i: u32, busy: bool| {
        let start = Instant::now();
        let version = rt.find(&contract).ok().and_then(|guard| call(&guard, i));
        let ns = start.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32;
        match version {
            Some(100) => calls.versions_seen[0] += 1,
            Some(200) => calls.versions_seen[1] += 1,
            _ => calls.failed += 1,
        }
        if busy {
            calls.busy.push(ns);
        } else {
            calls.idle.push(ns);
        }
    };
    for i in 0..IDLE_CALLS {
        one(&mut calls, i as u32, false);
    }
    started.fetch_add(1, Ordering::SeqCst);
    while !reloading.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
    let mut i = 0u32;
    while !done.load(Ordering::Relaxed) {
        one(&mut calls, i, true);
        i = i.wrapping_add(1);
    }
    calls
}

/// The version of a `c.greeter` provider, after checking its `add`.
fn call_greeter(interface: &polyplug_runtime::Interface, i: u32) -> Option<u32> {
    let table = interface.functions::<Greeter>()?;
    ((table.add)(black_box(i), 1) == i.wrapping_add(1)).then(|| (table.version)())
}

/// The version of a `reload.test` provider, after checking its `add`.
fn call_reload_test(interface: &polyplug_runtime::Interface, i: u32) -> Option<u32> {
    let table = interface.functions::<ReloadTest>()?;
    ((table.add)(black_box(i), 1) == i.wrapping_add(1)).then(|| (table.version)())
}

fn percentile(samples: &mut [u32], p: usize) -> u32 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

fn main() -> Result<(), Box<dyn Error>> {
    let started_at = Instant::now();
    println!("building the plugins (C with the system compiler, Rust with cargo) ...");
    let f = fixtures::try_fixtures()?;
    let (c_v1, c_v2) = f.c_pair("c-guest");
    let (rust_v1, rust_v2) = f.rust_pair("rust-guest");

    let rt = Runtime::builder()
        .hot_reload(true)
        .drain_timeout(Duration::from_millis(50))
        .build()?;
    for dir in [&c_v1, &rust_v1] {
        let info = rt.load_bundle(dir)?;
        println!(
            "loaded `{}` {} ({} contracts) from {}",
            info.name,
            info.version,
            info.contracts.len(),
            info.dir.display()
        );
    }

    let reloading = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let ready = AtomicU64::new(0);
    let mut last: Option<ReloadReport> = None;
    let mut reload_time = Duration::ZERO;
    let (c_calls, rust_calls) =
        std::thread::scope(|s| -> Result<(Calls, Calls), Box<dyn Error>> {
            let c = s.spawn(|| caller(&rt, GREETER, call_greeter, &reloading, &done, &ready));
            let r = s.spawn(|| {
                caller(
                    &rt,
                    RELOAD_TEST,
                    call_reload_test,
                    &reloading,
                    &done,
                    &ready,
                )
            });
            while ready.load(Ordering::SeqCst) < 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
            reloading.store(true, Ordering::SeqCst);
            let start = Instant::now();
            let mut failure = None;
            for i in 0..RELOADS {
                // C v2, Rust v2, C v1, Rust v1, ...
                let (bundle, dir) = match i % 4 {
                    0 => ("c-guest", &c_v2),
                    1 => ("rust-guest", &rust_v2),
                    2 => ("c-guest", &c_v1),
                    _ => ("rust-guest", &rust_v1),
                };
                match rt.reload(ReloadRequest::new(bundle).from_dir(dir).reason("demo")) {
                    Ok(report) => last = Some(report),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            reload_time = start.elapsed();
            done.store(true, Ordering::SeqCst);
            let calls = (
                c.join().map_err(|_| "C caller panicked")?,
                r.join().map_err(|_| "Rust caller panicked")?,
            );
            match failure {
                Some(e) => Err(e.into()),
                None => Ok(calls),
            }
        })?;

    println!(
        "\n{RELOADS} hot reloads in {reload_time:?} ({:.0} µs each), two threads calling throughout",
        reload_time.as_secs_f64() * 1e6 / RELOADS as f64
    );
    let mut failed = 0;
    for (name, mut calls) in [
        ("C plugin (c.greeter)", c_calls),
        ("Rust plugin (reload.test)", rust_calls),
    ] {
        failed += calls.failed;
        let (idle50, idle99) = (
            percentile(&mut calls.idle, 50),
            percentile(&mut calls.idle, 99),
        );
        let (busy50, busy99) = (
            percentile(&mut calls.busy, 50),
            percentile(&mut calls.busy, 99),
        );
        println!("{name}:");
        println!(
            "  calls: {} idle + {} during reloads (v1 answered {}, v2 answered {}), failed: {}",
            calls.idle.len(),
            calls.busy.len(),
            calls.versions_seen[0],
            calls.versions_seen[1],
            calls.failed
        );
        println!("  find + call latency idle:           p50 {idle50} ns, p99 {idle99} ns");
        println!(
            "  find + call latency during reloads: p50 {busy50} ns, p99 {busy99} ns ({:.2}x idle p99)",
            f64::from(busy99) / f64::from(idle99.max(1))
        );
    }
    println!("failed calls: {failed}");
    if let Some(report) = &last {
        println!("\nlast reload report:\n{report}");
    }
    println!("demo finished in {:?}", started_at.elapsed());
    if failed != 0 {
        return Err(format!("{failed} calls failed").into());
    }
    Ok(())
}
