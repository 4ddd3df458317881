//! Hot reload of real plugins: the contracts of polyplug 0.1.1's `tests/concurrency/reload.rs`
//! (100 alternating reloads, a callback per
//! cycle, concurrent reloads of one bundle mutually exclusive with the contract resolvable
//! after every reload) and ours (try_reload, failed reloads, rollback, cascade, deferred
//! unload, whether the old image left the process).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::Duration;

use polyplug_runtime::abi::{ReloadPhaseType, status};
use polyplug_runtime::ids::ContractRef;
use polyplug_runtime::{
    ImageRelease, LoadError, LookupError, ProviderPolicy, RegistryError, ReloadError,
    ReloadRequest, ReloadStep, Runtime, UnloadError,
};

use crate::contracts::{
    Answer, GREETER, Greeter, RELOAD_TEST, ReloadTest, SHARED_MATH, SharedMath, V2_ONLY, Versioned,
    greeting,
};
use crate::fixtures::{BundleSpec, fixtures};

fn hot_runtime() -> Runtime {
    Runtime::builder()
        .hot_reload(true)
        .build()
        .expect("runtime")
}

/// The `version()` of the current `reload.test` provider, if it resolves.
fn resolve_version(rt: &Runtime) -> Option<u32> {
    let guard = rt.find(&RELOAD_TEST).ok()?;
    Some((guard.functions::<ReloadTest>()?.version)())
}

/// From polyplug 0.1.1's `stress_rapid_reload_cycles_100`: 100 alternating v1/v2 reloads of
/// one runtime; the interface answers the right
/// version after each.
#[test]
fn hundred_alternating_reloads_answer_the_right_version() {
    let f = fixtures();
    let (v1_dir, v2_dir) = f.rust_pair("rust-cycles");
    let rt = hot_runtime();
    rt.load_bundle(&v1_dir).expect("load v1");
    assert_eq!(resolve_version(&rt), Some(100));
    for i in 0..100u32 {
        let dir = if i % 2 == 0 { &v2_dir } else { &v1_dir };
        rt.reload(ReloadRequest::new("rust-cycles").from_dir(dir))
            .unwrap_or_else(|e| panic!("reload failed at cycle {i}: {e}"));
        let expected = if i % 2 == 0 { 200 } else { 100 };
        assert_eq!(
            resolve_version(&rt),
            Some(expected),
            "cycle {i}: expected version {expected}"
        );
    }
    assert_eq!(resolve_version(&rt), Some(100), "last reload was v1");
}

/// polyplug 0.1.1 reloads by library path (`stress_rapid_reload_cycles_100`): a request can
/// name the library file to load instead of
/// the manifest's (here the same file again: a new private copy, a new image).
#[test]
fn a_reload_can_name_the_library_file() {
    let f = fixtures();
    let (v1_dir, _) = f.rust_pair("rust-by-path");
    let rt = hot_runtime();
    rt.load_bundle(&v1_dir).expect("load v1");
    let before = rt.find(&RELOAD_TEST).expect("find").to_owned_interface();
    let so: &PathBuf = &f.rust_v1;
    let report = rt
        .reload(ReloadRequest::new("rust-by-path").library(so))
        .expect("reload by path");
    assert_eq!(&report.library, so);
    let after = rt.find(&RELOAD_TEST).expect("find").to_owned_interface();
    assert!(
        !after.same_as(&before),
        "a new image behind the same handle"
    );
    assert_eq!(after.handle(), before.handle());
    assert_eq!(resolve_version(&rt), Some(100));
    // The v2 library registers a contract this bundle's manifest does not declare.
    match rt.reload(ReloadRequest::new("rust-by-path").library(&f.rust_v2)) {
        Err(ReloadError::Load { source, .. }) => assert!(
            matches!(*source, LoadError::Registration { .. }),
            "{source}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(resolve_version(&rt), Some(100));
}

/// From polyplug 0.1.1's `stress_reload_callback_fires_on_every_cycle`: the reload callback
/// fires on every cycle; every Reloaded names the bundle; each
/// Preparing is followed by exactly one Reloaded.
#[test]
fn reload_callbacks_fire_on_every_cycle_with_the_bundle_name() {
    let f = fixtures();
    let (v1_dir, v2_dir) = f.rust_pair("rust-events");
    let events: Arc<Mutex<Vec<(ReloadPhaseType, String, u64)>>> = Arc::default();
    let sink = Arc::clone(&events);
    let rt = Runtime::builder()
        .hot_reload(true)
        .on_reload(move |ev| {
            let abi = ev.to_abi();
            sink.lock().expect("events").push((
                abi.phase_type,
                ev.bundle_name.to_owned(),
                abi.bundle_id,
            ));
        })
        .build()
        .expect("runtime");
    rt.load_bundle(&v1_dir).expect("load v1");
    for i in 0..100 {
        let dir = if i % 2 == 0 { &v2_dir } else { &v1_dir };
        rt.reload(ReloadRequest::new("rust-events").from_dir(dir))
            .unwrap_or_else(|e| panic!("reload failed at cycle {i}: {e}"));
    }
    let events = events.lock().expect("events");
    let reloaded = events
        .iter()
        .filter(|(p, _, _)| *p == ReloadPhaseType::Reloaded)
        .count();
    assert_eq!(reloaded, 100, "one Reloaded per cycle");
    assert_eq!(
        events.len(),
        200,
        "Preparing + Reloaded per cycle, nothing else"
    );
    for (i, pair) in events.chunks(2).enumerate() {
        assert_eq!(pair[0].0, ReloadPhaseType::Preparing, "event pair {i}");
        assert_eq!(pair[1].0, ReloadPhaseType::Reloaded, "event pair {i}");
        for (_, name, id) in pair {
            assert_eq!(name, "rust-events", "bundle name must not be empty");
            assert_eq!(
                *id,
                polyplug_runtime::ids::BundleId::new("rust-events").id()
            );
        }
    }
}

/// From polyplug 0.1.1's `stress_concurrent_reload_threads_no_panic`: two threads reload one
/// bundle back and forth; nothing panics and the final
/// interface is callable.
#[test]
fn concurrent_reload_threads_leave_a_callable_interface() {
    let f = fixtures();
    let (v1_dir, v2_dir) = f.rust_pair("rust-two-threads");
    let rt = Arc::new(hot_runtime());
    rt.load_bundle(&v1_dir).expect("load v1");
    let threads: Vec<_> = [(v2_dir.clone(), v1_dir.clone()), (v1_dir, v2_dir)]
        .into_iter()
        .map(|(even, odd)| {
            let rt = Arc::clone(&rt);
            std::thread::spawn(move || {
                for i in 0..40 {
                    let dir = if i % 2 == 0 { &even } else { &odd };
                    rt.reload(ReloadRequest::new("rust-two-threads").from_dir(dir))
                        .expect("reload");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reloader must not panic");
    }
    let version = resolve_version(&rt).expect("resolvable after concurrent reloads");
    assert!(version == 100 || version == 200, "got {version}");
}

/// From polyplug 0.1.1's `concurrent_reloads_are_mutually_exclusive`: concurrent reloads of
/// one bundle never overlap their critical sections (a counter
/// raised on Preparing and lowered on Reloaded/Failed never exceeds 1), and a contract both
/// versions provide resolves after every reload, even while another thread is mid-reload.
#[test]
fn concurrent_reloads_of_one_bundle_are_mutually_exclusive() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 50;
    let f = fixtures();
    let (v1_dir, v2_dir) = f.rust_pair("rust-exclusive");
    let in_section = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let (cb_in, cb_max) = (Arc::clone(&in_section), Arc::clone(&max_seen));
    let rt = Arc::new(
        Runtime::builder()
            .hot_reload(true)
            .on_reload(move |ev| match ev.phase {
                ReloadPhaseType::Preparing => {
                    let now = cb_in.fetch_add(1, Ordering::SeqCst) + 1;
                    cb_max.fetch_max(now, Ordering::SeqCst);
                }
                ReloadPhaseType::Reloaded | ReloadPhaseType::Failed => {
                    let _ = cb_in.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                        Some(v.saturating_sub(1))
                    });
                }
                ReloadPhaseType::Unloading => {}
            })
            .build()
            .expect("runtime"),
    );
    rt.load_bundle(&v1_dir).expect("load v1");
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (rt, barrier) = (Arc::clone(&rt), Arc::clone(&barrier));
            let (v1_dir, v2_dir) = (v1_dir.clone(), v2_dir.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..ROUNDS {
                    let dir = if (i + t) % 2 == 0 { &v2_dir } else { &v1_dir };
                    rt.reload(ReloadRequest::new("rust-exclusive").from_dir(dir))
                        .expect("reload");
                    assert!(
                        resolve_version(&rt).is_some(),
                        "thread {t} round {i}: contract must stay resolvable"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reloader thread must not panic");
    }
    assert_eq!(in_section.load(Ordering::SeqCst), 0, "every section exited");
    assert_eq!(
        max_seen.load(Ordering::SeqCst),
        1,
        "two reloads were in their critical sections at once"
    );
    let version = resolve_version(&rt).expect("final interface must resolve");
    assert!(version == 100 || version == 200, "got {version}");
}

/// `try_reload` fails with ReloadInProgress while a reload of the same bundle is in its
/// critical section; a reload of another bundle completes meanwhile.
#[test]
fn try_reload_reports_a_reload_in_progress_and_other_bundles_proceed() {
    let f = fixtures();
    let (rust_v1, rust_v2) = f.rust_pair("rust-busy");
    let (c_v1, c_v2) = f.c_pair("c-free");
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let entered_tx = Mutex::new(entered_tx);
    let rt = Arc::new(
        Runtime::builder()
            .hot_reload(true)
            .on_reload(move |ev| {
                if ev.phase == ReloadPhaseType::Preparing && ev.bundle_name == "rust-busy" {
                    let _ = entered_tx.lock().expect("tx").send(());
                    let _ = release_rx.lock().expect("rx").recv();
                }
            })
            .build()
            .expect("runtime"),
    );
    rt.load_bundle(&rust_v1).expect("rust");
    rt.load_bundle(&c_v1).expect("c");
    let holder = {
        let rt = Arc::clone(&rt);
        std::thread::spawn(move || rt.reload(ReloadRequest::new("rust-busy").from_dir(rust_v2)))
    };
    entered_rx.recv().expect("first reload entered");
    match rt.try_reload(ReloadRequest::new("rust-busy").from_dir(&rust_v1)) {
        Err(ReloadError::ReloadInProgress { bundle }) => assert_eq!(bundle, "rust-busy"),
        other => panic!("expected ReloadInProgress, got {other:?}"),
    }
    // Callers are not blocked by the reload in progress.
    assert_eq!(resolve_version(&rt), Some(100));
    let other = rt
        .try_reload(ReloadRequest::new("c-free").from_dir(&c_v2))
        .expect("another bundle reloads in parallel");
    assert_eq!(other.to.major, 2);
    release_tx.send(()).expect("release");
    holder.join().expect("holder").expect("first reload");
    assert_eq!(resolve_version(&rt), Some(200));
}

#[test]
fn reload_is_disabled_by_default_and_fires_nothing() {
    let f = fixtures();
    let (v1, v2) = f.rust_pair("rust-cold");
    let fired = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&fired);
    let rt = Runtime::builder()
        .on_reload(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .expect("runtime");
    rt.load_bundle(&v1).expect("load");
    let err = rt
        .reload(ReloadRequest::new("rust-cold").from_dir(v2))
        .expect_err("disabled");
    assert!(
        matches!(err, ReloadError::HotReloadDisabled { .. }),
        "{err}"
    );
    assert_eq!(err.status(), status::HOT_RELOAD_DISABLED);
    assert!(matches!(
        rt.reload(ReloadRequest::new("nobody")),
        Err(ReloadError::UnknownBundle { .. })
    ));
    assert_eq!(fired.load(Ordering::SeqCst), 0);
}

/// A reload whose new library cannot load fires Preparing then Failed, and the old version
/// stays live behind the same handle.
#[test]
fn a_failed_reload_keeps_the_old_version_live() {
    let f = fixtures();
    let (v1, _) = f.c_pair("c-failing");
    let broken = f.bundle(&BundleSpec::new(
        "c-failing",
        "2.0.0",
        f.c("bad-abi"),
        &["c.greeter@1.0", "shared.math@1.0"],
    ));
    let phases: Arc<Mutex<Vec<(ReloadPhaseType, String)>>> = Arc::default();
    let sink = Arc::clone(&phases);
    let rt = Runtime::builder()
        .hot_reload(true)
        .on_reload(move |ev| {
            sink.lock()
                .expect("phases")
                .push((ev.phase, ev.reason.to_owned()));
        })
        .build()
        .expect("runtime");
    rt.load_bundle(&v1).expect("load");
    let handle = rt.registry().handle_of(&GREETER).expect("handle");
    let err = rt
        .reload(ReloadRequest::new("c-failing").from_dir(&broken))
        .expect_err("bad ABI");
    match &err {
        ReloadError::Load { bundle, source } => {
            assert_eq!(bundle, "c-failing");
            assert!(
                matches!(
                    **source,
                    LoadError::AbiMismatch {
                        found: 99,
                        expected: polyplug_runtime::abi::ABI_VERSION,
                        ..
                    }
                ),
                "{source}"
            );
        }
        other => panic!("{other:?}"),
    }
    let phases = phases.lock().expect("phases");
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[0].0, ReloadPhaseType::Preparing);
    assert_eq!(phases[1].0, ReloadPhaseType::Failed);
    assert!(phases[1].1.contains("c-failing"), "{}", phases[1].1);
    let guard = rt.resolve(handle).expect("same handle still valid");
    let table = guard.functions::<Greeter>().expect("table");
    assert_eq!((table.version)(), 100);
    assert_eq!(greeting(table), "hello from C v1");
}

/// A post-swap validation hook that refuses the new version rolls the swap back: handles
/// reach the old version again, contracts new in the refused version disappear.
#[test]
fn a_failing_post_swap_validation_rolls_back() {
    let f = fixtures();
    let (v1, v2) = f.rust_pair("rust-validated");
    let saw_new_version = Arc::new(AtomicBool::new(false));
    let saw = Arc::clone(&saw_new_version);
    let rt = Runtime::builder()
        .hot_reload(true)
        .validate_after_swap(move |rt, info| {
            // The hook runs with the new version live: lookups reach it.
            let version = resolve_version(rt).unwrap_or(0);
            if version == 200 {
                saw.store(true, Ordering::SeqCst);
                return Err(format!("{} v{} refused by policy", info.name, info.version));
            }
            Ok(())
        })
        .build()
        .expect("runtime");
    rt.load_bundle(&v1).expect("load");
    let handle = rt.registry().handle_of(&RELOAD_TEST).expect("handle");
    let err = rt
        .reload(ReloadRequest::new("rust-validated").from_dir(&v2))
        .expect_err("refused");
    assert!(
        matches!(&err, ReloadError::ValidationFailed { reason, .. } if reason.contains("refused")),
        "{err}"
    );
    assert!(
        saw_new_version.load(Ordering::SeqCst),
        "hook ran after the swap"
    );
    assert_eq!(resolve_version(&rt), Some(100), "rolled back to v1");
    assert_eq!(rt.resolve(handle).expect("handle valid").handle(), handle);
    assert!(matches!(
        rt.find(&V2_ONLY),
        Err(LookupError::NotFound { .. })
    ));
    let info = rt.bundle("rust-validated").expect("still loaded");
    assert_eq!(info.version.major, 1);
    assert_eq!(info.dir, v1);
    // And the next reload (v1 again, accepted) works normally.
    rt.reload(ReloadRequest::new("rust-validated"))
        .expect("reload v1");
}

/// Contracts both versions provide keep their handles; a contract only v2 provides is
/// published by the reload to v2 and retired (stale handle) by the reload back to v1.
#[test]
fn handles_survive_reloads_and_dropped_contracts_become_stale() {
    let f = fixtures();
    let (v1, v2) = f.rust_pair("rust-handles");
    let rt = hot_runtime();
    let info = rt.load_bundle(&v1).expect("load");
    assert_eq!(info.contracts.len(), 2);
    let kept = rt.registry().handle_of(&RELOAD_TEST).expect("reload.test");
    let report = rt
        .reload(ReloadRequest::new("rust-handles").from_dir(&v2))
        .expect("to v2");
    assert_eq!(
        (report.swap.swapped, report.swap.added, report.swap.retired),
        (2, 1, 0)
    );
    let v2_only = rt.registry().handle_of(&V2_ONLY).expect("published by v2");
    let answer = rt.resolve(v2_only).expect("resolve");
    assert_eq!(
        (answer.functions::<Answer>().expect("table").answer)(),
        4242
    );
    drop(answer);
    let report = rt
        .reload(ReloadRequest::new("rust-handles").from_dir(&v1))
        .expect("back to v1");
    assert_eq!(
        (report.swap.swapped, report.swap.added, report.swap.retired),
        (2, 0, 1)
    );
    assert!(matches!(
        rt.resolve(v2_only),
        Err(RegistryError::StaleHandle { .. })
    ));
    assert!(matches!(
        rt.find(&V2_ONLY),
        Err(LookupError::NotFound { .. })
    ));
    let guard = rt.resolve(kept).expect("kept handle still valid");
    assert_eq!((guard.functions::<ReloadTest>().expect("t").version)(), 100);
}

/// The report of a C plugin reload: every phase timed, and the old image really gone from
/// the address space.
#[test]
fn reload_report_times_each_phase_and_sees_the_old_image_unmapped() {
    let f = fixtures();
    let (v1, v2) = f.c_pair("c-report");
    let rt = hot_runtime();
    rt.load_bundle(&v1).expect("load");
    let report = rt
        .reload(
            ReloadRequest::new("c-report")
                .from_dir(&v2)
                .reason("deploy"),
        )
        .expect("reload");
    for step in [
        ReloadStep::GateWait,
        ReloadStep::Manifest,
        ReloadStep::Copy,
        ReloadStep::Open,
        ReloadStep::AbiCheck,
        ReloadStep::Init,
        ReloadStep::Swap,
        ReloadStep::Drain,
        ReloadStep::Unmap,
    ] {
        assert!(report.phase(step).is_some(), "{step} missing from {report}");
    }
    assert_eq!(report.from.major, 1);
    assert_eq!(report.to.major, 2);
    assert_eq!((report.swap.swapped, report.swap.added), (2, 1));
    if cfg!(target_os = "linux") {
        assert_eq!(report.old_image, ImageRelease::Unmapped, "{report}");
    }
    let text = report.to_string();
    assert!(text.contains("c-report") && text.contains("swap"), "{text}");
    let guard = rt.find(&GREETER).expect("greeter");
    assert_eq!(
        greeting(guard.functions::<Greeter>().expect("t")),
        "hello from C v2"
    );
}

/// An interface held during a reload keeps the old library mapped and callable; the report
/// says the release was deferred; the library closes once the holder lets go.
#[test]
fn a_held_interface_defers_the_unload_of_the_old_version() {
    let f = fixtures();
    let (v1, v2) = f.c_pair("c-held");
    let rt = Runtime::builder()
        .hot_reload(true)
        .drain_timeout(Duration::from_millis(20))
        .build()
        .expect("runtime");
    rt.load_bundle(&v1).expect("load");
    let held = rt.find(&GREETER).expect("v1");
    let report = rt
        .reload(ReloadRequest::new("c-held").from_dir(&v2))
        .expect("reload");
    assert_eq!(
        report.old_image,
        ImageRelease::Deferred { holders: 1 },
        "{report}"
    );
    assert_eq!(rt.deferred_count(), 1);
    // The old version is still mapped and answers as v1, the registry serves v2.
    let old = held.functions::<Greeter>().expect("t");
    assert_eq!((old.version)(), 100);
    assert_eq!(greeting(old), "hello from C v1");
    assert_eq!(
        (rt.find(&GREETER)
            .expect("v2")
            .functions::<Greeter>()
            .expect("t")
            .version)(),
        200
    );
    assert_eq!(rt.collect_deferred(), 0, "still held");
    drop(held);
    assert_eq!(rt.collect_deferred(), 1, "closed after the holder let go");
    assert_eq!(rt.deferred_count(), 0);
}

/// glibc cannot unload a library whose thread-local destructor is registered on a live
/// thread: the report says so instead of pretending.
#[test]
fn a_rust_plugin_with_live_thread_locals_stays_mapped_and_the_report_says_so() {
    if !cfg!(target_os = "linux") {
        return workspace_tests::support::skip(
            "a_rust_plugin_with_live_thread_locals_stays_mapped_and_the_report_says_so",
            "the behaviour checked is glibc's, on Linux",
        );
    }
    let f = fixtures();
    let (v1, v2) = f.rust_pair("rust-tls");
    let rt = Arc::new(hot_runtime());
    rt.load_bundle(&v1).expect("load");
    let (touched_tx, touched_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let toucher = {
        let rt = Arc::clone(&rt);
        std::thread::spawn(move || {
            let n = {
                let g = rt.find(&RELOAD_TEST).expect("find");
                (g.functions::<ReloadTest>().expect("t").touch_tls)()
            };
            touched_tx.send(n).expect("send");
            let _ = exit_rx.recv();
        })
    };
    assert_eq!(touched_rx.recv().expect("touched"), 1);
    let report = rt
        .reload(ReloadRequest::new("rust-tls").from_dir(&v2))
        .expect("reload");
    assert_eq!(report.old_image, ImageRelease::StillMapped, "{report}");
    // Without live thread-locals the same plugin does unload.
    let report = rt
        .reload(ReloadRequest::new("rust-tls").from_dir(&v1))
        .expect("reload back");
    assert_eq!(report.old_image, ImageRelease::Unmapped, "{report}");
    exit_tx.send(()).expect("exit");
    toucher.join().expect("toucher");
}

/// A panic inside a Rust plugin function is stopped at the boundary by the guest helper and
/// comes back as an error code; the plugin keeps working.
#[test]
fn a_panic_in_a_rust_plugin_becomes_an_error_code() {
    let f = fixtures();
    let (v1, _) = f.rust_pair("rust-panics");
    let rt = hot_runtime();
    rt.load_bundle(&v1).expect("load");
    let guard = rt.find(&RELOAD_TEST).expect("find");
    let table = guard.functions::<ReloadTest>().expect("table");
    assert_eq!((table.explode)(), status::PANICKED);
    assert_eq!((table.add)(40, 2), 42);
}

/// Two bundles providing one contract: no silent choice by default, and each policy picks as
/// documented, with real plugins.
#[test]
fn a_contract_from_two_real_plugins_is_chosen_by_policy() {
    let f = fixtures();
    let (c_v1, _) = f.c_pair("c-math");
    let (rust_v1, _) = f.rust_pair("rust-math");
    let who = |policy: ProviderPolicy| {
        let rt = Runtime::builder()
            .provider_policy(policy)
            .build()
            .expect("runtime");
        rt.load_bundle(&c_v1).expect("c");
        rt.load_bundle(&rust_v1).expect("rust");
        let result = rt
            .find(&SHARED_MATH)
            .map(|g| (g.functions::<SharedMath>().expect("t").who)());
        let from_c = rt
            .registry()
            .find_from(&SHARED_MATH, polyplug_runtime::ids::BundleId::new("c-math"))
            .map(|g| (g.functions::<SharedMath>().expect("t").who)());
        (result, from_c)
    };
    match who(ProviderPolicy::Unique) {
        (Err(LookupError::Ambiguous { providers, .. }), Ok(1)) => {
            assert_eq!(providers, vec!["c-math", "rust-math"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(who(ProviderPolicy::FirstLoaded).0, Ok(1));
    assert_eq!(who(ProviderPolicy::HighestVersion).0, Ok(2));
    assert_eq!(
        who(ProviderPolicy::Prefer(vec!["rust-math".into()])).0,
        Ok(2)
    );
    // Asking for a minor only the Rust plugin has.
    let rt = Runtime::builder()
        .provider_policy(ProviderPolicy::HighestVersion)
        .build()
        .expect("runtime");
    rt.load_bundle(&c_v1).expect("c");
    assert!(matches!(
        rt.find(&ContractRef::new("shared.math", 1, 1)),
        Err(LookupError::IncompatibleVersion { .. })
    ));
}

/// Dependencies: loading needs them loaded; reloading a dependency reloads the dependents that
/// opted in (their failure only reported); unloading refuses while dependents exist, and the
/// cascade variant unloads dependents first.
#[test]
fn dependents_cascade_on_reload_and_block_unload() {
    let f = fixtures();
    let (base_v1, base_v2) = f.c_pair("c-base");
    let follower = f.bundle(
        &BundleSpec::new(
            "c-follower",
            "1.0.0",
            f.c("dependent-v1"),
            &["c.dependent@1.0"],
        )
        .depends("c-base")
        .reload_with_dependencies(),
    );
    let bystander_spec = BundleSpec::new(
        "rust-bystander",
        "1.0.0",
        &f.rust_v1,
        &["reload.test@1.0", "shared.math@1.1"],
    )
    .depends("c-base");
    let bystander = f.bundle(&bystander_spec);
    let rt = hot_runtime();
    match rt.load_bundle(&follower) {
        Err(LoadError::MissingDependency { bundle, dependency }) => {
            assert_eq!(
                (bundle.as_str(), dependency.as_str()),
                ("c-follower", "c-base")
            );
        }
        other => panic!("{other:?}"),
    }
    rt.load_bundle(&base_v1).expect("base");
    rt.load_bundle(&follower).expect("follower");
    rt.load_bundle(&bystander).expect("bystander");

    let report = rt
        .reload(ReloadRequest::new("c-base").from_dir(&base_v2))
        .expect("reload base");
    assert_eq!(report.cascade.len(), 1, "only the dependent that opted in");
    assert_eq!(report.cascade[0].bundle, "c-follower");
    assert!(report.cascade_ok(), "{report}");
    assert!(report.phase(ReloadStep::Cascade).is_some());

    // A dependent whose reload fails does not fail the dependency's reload.
    std::fs::write(
        follower.join("manifest.toml"),
        "name = \"c-follower\"\nversion = 1\n",
    )
    .expect("break the follower");
    let report = rt
        .reload(ReloadRequest::new("c-base").from_dir(&base_v1))
        .expect("reload base again");
    assert!(!report.cascade_ok());
    assert!(matches!(
        report.cascade[0].result,
        Err(ReloadError::Load { .. })
    ));
    let dependent = rt
        .find(&crate::contracts::DEPENDENT)
        .expect("follower still served");
    assert_eq!(
        (dependent.functions::<Versioned>().expect("t").version)(),
        100
    );
    drop(dependent);

    match rt.unload("c-base") {
        Err(UnloadError::DependencyInUse { bundle, dependents }) => {
            assert_eq!(bundle, "c-base");
            assert_eq!(dependents, vec!["c-follower", "rust-bystander"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(rt.find(&GREETER).is_ok(), "refused unload changes nothing");
    let handle = rt.registry().handle_of(&GREETER).expect("handle");
    let reports = rt.unload_cascade("c-base").expect("cascade");
    let order: Vec<&str> = reports.iter().map(|r| r.bundle.as_str()).collect();
    assert_eq!(order.last(), Some(&"c-base"), "dependents first: {order:?}");
    assert_eq!(order.len(), 3);
    assert!(matches!(
        rt.resolve(handle),
        Err(RegistryError::StaleHandle { .. })
    ));
    assert!(rt.bundles().is_empty());
    assert_eq!(rt.registry().contract_count(), 0);
}

/// Unload with a reader still holding the interface: the contract disappears at once, the
/// reader keeps a working interface, and the library closes after it lets go.
#[test]
fn unload_retires_at_once_and_closes_after_the_last_reader() {
    let f = fixtures();
    let (v1, _) = f.c_pair("c-unload");
    let rt = Runtime::builder()
        .drain_timeout(Duration::from_millis(10))
        .build()
        .expect("runtime");
    rt.load_bundle(&v1).expect("load");
    let held = rt.find(&GREETER).expect("find").to_owned_interface();
    let report = rt.unload("c-unload").expect("unload");
    assert_eq!(report.retired, 2);
    assert_eq!(report.image, ImageRelease::Deferred { holders: 1 });
    assert!(rt.find(&GREETER).is_err());
    assert_eq!((held.functions::<Greeter>().expect("t").version)(), 100);
    drop(held);
    assert_eq!(rt.collect_deferred(), 1);
    // Loading it again works (a new private copy, a new image).
    rt.load_bundle(&v1).expect("load again");
    assert!(matches!(
        rt.unload("c-nothing"),
        Err(UnloadError::UnknownBundle { .. })
    ));
}
