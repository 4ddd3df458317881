//! Contract-level requirements (`requires = ["name@major.minor"]` in the manifest): a load, a
//! reload or an unload that would leave a loaded bundle without a contract it requires is
//! refused with a typed error naming both bundles and the contract, and the old version keeps
//! serving.
//!
//! The central scenario: `hcalc` (the C plugin, v2) provides `c.greeter`, `shared.math` and
//! `c.extra`; `hconsumer` requires `c.extra@1.0`; reloading `hcalc` from its v1 (which provides
//! no `c.extra`) must be refused, so the consumer's `c.extra` handle never goes stale.

use polyplug_runtime::abi::{GuestContractHandle, Version};
use polyplug_runtime::{LoadError, ReloadError, ReloadRequest, Runtime, UnloadError};

use crate::contracts::{Answer, EXTRA, GREETER, Greeter, greeting};
use crate::fixtures::{BundleSpec, fixtures};

fn hot_runtime() -> Runtime {
    Runtime::builder()
        .hot_reload(true)
        .build()
        .expect("runtime")
}

/// The `answer()` behind `c.extra`, resolved through the handle a consumer holds.
fn extra_answer(rt: &Runtime, handle: GuestContractHandle) -> Option<u32> {
    let guard = rt.resolve(handle).ok()?;
    Some((guard.functions::<Answer>()?.answer)())
}

#[test]
fn a_reload_that_drops_a_required_contract_is_refused_and_the_old_version_serves() {
    let f = fixtures();
    let (calc_v1, calc_v2) = f.c_pair("hcalc");
    let consumer = f.bundle(
        &BundleSpec::new(
            "hconsumer",
            "1.0.0",
            f.c("dependent-v1"),
            &["c.dependent@1.0"],
        )
        .requires("c.extra@1.0"),
    );
    let rt = hot_runtime();

    // Nothing provides c.extra yet: the consumer cannot load.
    match rt.load_bundle(&consumer) {
        Err(LoadError::RequiredContractMissing { bundle, contract }) => {
            assert_eq!(
                (bundle.as_str(), contract.as_str()),
                ("hconsumer", "c.extra@1.0")
            );
        }
        other => panic!("loading a consumer without its provider: {other:?}"),
    }
    assert!(rt.bundle("hconsumer").is_none());

    rt.load_bundle(&calc_v2).expect("hcalc v2");
    rt.load_bundle(&consumer).expect("hconsumer");
    let handle = rt.find(&EXTRA).expect("c.extra").handle();
    assert_eq!(extra_answer(&rt, handle), Some(42));

    // v1 provides no c.extra: the reload is refused, naming both bundles and the contract.
    let error = rt
        .reload(ReloadRequest::new("hcalc").from_dir(&calc_v1))
        .expect_err("a reload dropping a required contract");
    let message = error.to_string();
    match &error {
        ReloadError::ContractRequired {
            bundle,
            dependent,
            contract,
        } => {
            assert_eq!(
                (bundle.as_str(), dependent.as_str(), contract.as_str()),
                ("hcalc", "hconsumer", "c.extra@1.0")
            );
        }
        other => panic!("expected ContractRequired, got {other:?}"),
    }
    for part in ["hcalc", "hconsumer", "c.extra@1.0"] {
        assert!(message.contains(part), "{message:?} names {part}");
    }

    // The old version keeps serving, through the handle the consumer held.
    assert_eq!(extra_answer(&rt, handle), Some(42));
    assert_eq!(
        rt.bundle("hcalc").map(|b| b.version),
        Some(Version::new(2, 0, 0))
    );
    let guard = rt.find(&GREETER).expect("c.greeter");
    let table = guard.functions::<Greeter>().expect("greeter table");
    assert_eq!(greeting(table), "hello from C v2");
    drop(guard);

    // Unloading the provider is refused the same way.
    match rt.unload("hcalc") {
        Err(UnloadError::ContractRequired {
            bundle,
            dependent,
            contract,
        }) => {
            assert_eq!(
                (bundle.as_str(), dependent.as_str(), contract.as_str()),
                ("hcalc", "hconsumer", "c.extra@1.0")
            );
        }
        other => panic!("unloading a required provider: {other:?}"),
    }
    assert_eq!(extra_answer(&rt, handle), Some(42));

    // Without the consumer, the same reload goes through.
    rt.unload("hconsumer").expect("unload the consumer");
    rt.reload(ReloadRequest::new("hcalc").from_dir(&calc_v1))
        .expect("reload once nothing requires c.extra");
    assert_eq!(extra_answer(&rt, handle), None, "c.extra retired");
}

/// `requires` names a minimum minor: `c.greeter@1.1` is met by v2 (minor 1), not by v1
/// (minor 0), so a reload back to v1 is refused and a requirement above v2's minor cannot load.
#[test]
fn a_required_minimum_minor_is_enforced_on_load_and_reload() {
    let f = fixtures();
    let (calc_v1, calc_v2) = f.c_pair("mcalc");
    let spec = |name: &str, contract: &str| {
        BundleSpec::new(name, "1.0.0", f.c("dependent-v1"), &["c.dependent@1.0"]).requires(contract)
    };
    let rt = hot_runtime();
    rt.load_bundle(&calc_v2).expect("mcalc v2");

    match rt.load_bundle(f.bundle(&spec("too-new", "c.greeter@1.2"))) {
        Err(LoadError::RequiredContractMissing { bundle, contract }) => {
            assert_eq!(
                (bundle.as_str(), contract.as_str()),
                ("too-new", "c.greeter@1.2")
            );
        }
        other => panic!("a requirement above every provider's minor: {other:?}"),
    }
    rt.load_bundle(f.bundle(&spec("mconsumer", "c.greeter@1.1")))
        .expect("a requirement v2 meets");
    match rt.reload(ReloadRequest::new("mcalc").from_dir(&calc_v1)) {
        Err(ReloadError::ContractRequired {
            bundle,
            dependent,
            contract,
        }) => {
            assert_eq!(
                (bundle.as_str(), dependent.as_str(), contract.as_str()),
                ("mcalc", "mconsumer", "c.greeter@1.1")
            );
        }
        other => panic!("a reload lowering a required minor: {other:?}"),
    }
    assert_eq!(
        rt.bundle("mcalc").map(|b| b.version),
        Some(Version::new(2, 0, 0))
    );
}

/// A requirement another loaded bundle also meets does not pin the provider: both the C and
/// the Rust plugin provide `shared.math@1`, so either may be unloaded while a consumer
/// requires it — but not both.
#[test]
fn a_requirement_met_by_another_provider_does_not_block() {
    let f = fixtures();
    let c = f.bundle(&f.c_spec("scalc", 1));
    let rust = f.bundle(&f.rust_spec("srust", 1));
    let consumer = f.bundle(
        &BundleSpec::new(
            "sconsumer",
            "1.0.0",
            f.c("dependent-v1"),
            &["c.dependent@1.0"],
        )
        .requires("shared.math@1.0"),
    );
    let rt = hot_runtime();
    rt.load_bundle(&c).expect("C");
    rt.load_bundle(&rust).expect("Rust");
    rt.load_bundle(&consumer).expect("consumer");
    rt.unload("scalc")
        .expect("the Rust plugin still provides shared.math");
    match rt.unload("srust") {
        Err(UnloadError::ContractRequired {
            bundle,
            dependent,
            contract,
        }) => assert_eq!(
            (bundle.as_str(), dependent.as_str(), contract.as_str()),
            ("srust", "sconsumer", "shared.math@1.0")
        ),
        other => panic!("unloading the last provider: {other:?}"),
    }
    assert!(rt.bundle("srust").is_some());
}

/// `unload_cascade` unloads, first, the bundles that would lose a required contract — as it
/// does for bundles that `depends` on the one unloaded.
#[test]
fn unload_cascade_unloads_the_bundles_that_require_its_contracts_first() {
    let f = fixtures();
    let calc = f.bundle(&f.c_spec("ccalc", 2));
    let consumer = f.bundle(
        &BundleSpec::new(
            "cconsumer",
            "1.0.0",
            f.c("dependent-v1"),
            &["c.dependent@1.0"],
        )
        .requires("c.extra@1.0"),
    );
    let rt = hot_runtime();
    rt.load_bundle(&calc).expect("provider");
    rt.load_bundle(&consumer).expect("consumer");
    let reports = rt.unload_cascade("ccalc").expect("cascade");
    let order: Vec<&str> = reports.iter().map(|r| r.bundle.as_str()).collect();
    assert_eq!(order, ["cconsumer", "ccalc"]);
    assert!(rt.bundles().is_empty());
}
