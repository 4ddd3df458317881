//! State hand-off on reload: the old version exports its state (`polyplug_state_export`), the
//! new one imports it (`polyplug_state_import`) before it serves a call, and an import that
//! refuses fails the reload with the old version still serving. A counter plugin in C and in
//! Rust keeps counting across 100 reloads.

use std::path::Path;

use polyplug_runtime::ids::ContractRef;
use polyplug_runtime::{ReloadError, ReloadRequest, Runtime};

use crate::fixtures::{BundleSpec, fixtures};

polyplug_runtime::contract! {
    /// `c.counter@1` and `rust.counter@1`.
    struct Counter {
        fn next() -> u64;
    }
}

fn next(rt: &Runtime, contract: &ContractRef<'_>) -> u64 {
    let guard = rt.find(contract).expect("counter");
    (guard.functions::<Counter>().expect("counter table").next)()
}

/// Counts 3, reloads 100 times (each reload a fresh copy of the library, whose own count
/// starts at 0), counting once after each: the count goes on from where the last version
/// left it.
fn count_across_reloads(bundle: &str, dir: &Path, contract: &ContractRef<'_>) -> Runtime {
    let rt = Runtime::builder()
        .hot_reload(true)
        .build()
        .expect("runtime");
    rt.load_bundle(dir).expect("load");
    for expected in 1..=3 {
        assert_eq!(next(&rt, contract), expected);
    }
    for i in 0..100u64 {
        rt.reload(ReloadRequest::new(bundle))
            .unwrap_or_else(|e| panic!("reload {i}: {e}"));
        assert_eq!(next(&rt, contract), 4 + i, "after reload {i}");
    }
    rt
}

#[test]
fn a_c_plugin_keeps_its_state_across_100_reloads_and_a_refusal_rolls_back() {
    let f = fixtures();
    let counter = ContractRef::new("c.counter", 1, 0);
    let dir = f.bundle(&BundleSpec::new(
        "c-state",
        "1.0.0",
        f.c("stateful"),
        &["c.counter@1.0"],
    ));
    let rt = count_across_reloads("c-state", &dir, &counter);

    let refusing = f.bundle(&BundleSpec::new(
        "c-state",
        "2.0.0",
        f.c("stateful-refuses"),
        &["c.counter@1.0"],
    ));
    match rt.reload(ReloadRequest::new("c-state").from_dir(&refusing)) {
        Err(ReloadError::StateRefused { bundle, code }) => {
            assert_eq!((bundle.as_str(), code), ("c-state", -7));
        }
        other => panic!("a refused state import: {other:?}"),
    }
    assert_eq!(next(&rt, &counter), 104, "the old version keeps serving");
    assert_eq!(
        rt.bundle("c-state").map(|b| b.version.major),
        Some(1),
        "still version 1"
    );
}

#[test]
fn a_rust_plugin_keeps_its_state_across_100_reloads() {
    let f = fixtures();
    let counter = ContractRef::new("rust.counter", 1, 0);
    let dir = f.bundle(&BundleSpec::new(
        "rust-state",
        "1.0.0",
        &f.rust_services,
        &[
            "reload.test@1.0",
            "shared.math@1.1",
            "rust.counter@1.0",
            "rust.relay@1.0",
        ],
    ));
    let rt = count_across_reloads("rust-state", &dir, &counter);
    assert_eq!(next(&rt, &counter), 104);
}

/// A new version without `polyplug_state_import` starts fresh: hand-off is opt-in.
#[test]
fn without_an_import_the_new_version_starts_fresh() {
    let f = fixtures();
    let counter = ContractRef::new("c.counter", 1, 0);
    let dir = f.bundle(&BundleSpec::new(
        "c-fresh",
        "1.0.0",
        f.c("stateful"),
        &["c.counter@1.0"],
    ));
    let rt = Runtime::builder()
        .hot_reload(true)
        .build()
        .expect("runtime");
    rt.load_bundle(&dir).expect("load");
    assert_eq!(next(&rt, &counter), 1);
    assert_eq!(next(&rt, &counter), 2);
    // The Rust plugin (no c.counter) in between: C's state cannot follow it, and the C plugin
    // loaded after it has no state to import.
    let rust = f.bundle(&BundleSpec::new(
        "c-fresh",
        "1.1.0",
        &f.rust_v1,
        &["reload.test@1.0", "shared.math@1.1"],
    ));
    rt.reload(ReloadRequest::new("c-fresh").from_dir(&rust))
        .expect("to the Rust plugin");
    rt.reload(ReloadRequest::new("c-fresh").from_dir(&dir))
        .expect("back to the C plugin");
    assert_eq!(
        next(&rt, &counter),
        1,
        "fresh: the Rust version exported nothing"
    );
}
