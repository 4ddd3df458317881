//! Contract signature fingerprints: a hash of a contract's function signatures, generated
//! from the same definition as its C table type (`POLYPLUG_DEFINE_CONTRACT` in the header) or
//! its Rust table type (`polyplug_runtime::contract!`). A version that changes a function's
//! signature under the same major is refused at reload (and beside another provider at load)
//! instead of being called with the wrong types.

use polyplug_runtime::{LoadError, ReloadError, ReloadRequest, Runtime};

use crate::contracts::{GREETER, Greeter, RELOAD_TEST, ReloadTest, greeting};
use crate::fixtures::{BundleSpec, fixtures};

fn hot_runtime() -> Runtime {
    Runtime::builder()
        .hot_reload(true)
        .build()
        .expect("runtime")
}

/// The error under a refused reload, if it is a signature mismatch: (contract, provider).
fn mismatch(error: &ReloadError) -> Option<(String, String)> {
    match error {
        ReloadError::Load { source, .. } => match source.as_ref() {
            LoadError::SignatureMismatch {
                contract, provider, ..
            } => Some((contract.clone(), provider.clone())),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn a_c_plugin_changing_a_signature_under_the_same_major_is_refused_at_reload() {
    let f = fixtures();
    let v1 = f.bundle(&f.c_spec("sig-c", 1));
    let changed = f.bundle(&BundleSpec::new(
        "sig-c",
        "2.0.0",
        f.c("v2-changed-signature"),
        &["c.greeter@1.1", "shared.math@1.0", "c.extra@1.0"],
    ));
    let rt = hot_runtime();
    rt.load_bundle(&v1).expect("v1");
    let error = rt
        .reload(ReloadRequest::new("sig-c").from_dir(&changed))
        .expect_err("c.greeter's add changed from uint32_t to uint64_t under major 1");
    assert_eq!(
        mismatch(&error),
        Some(("c.greeter@1".to_owned(), "sig-c".to_owned())),
        "{error:?}"
    );
    // The old version keeps serving.
    let guard = rt.find(&GREETER).expect("c.greeter");
    let table = guard.functions::<Greeter>().expect("table");
    assert_eq!(greeting(table), "hello from C v1");
    assert_eq!((table.add)(40, 2), 42);
}

#[test]
fn a_rust_plugin_changing_a_signature_under_the_same_major_is_refused_at_reload() {
    let f = fixtures();
    let v1 = f.bundle(&f.rust_spec("sig-rust", 1));
    let changed = f.bundle(&BundleSpec::new(
        "sig-rust",
        "1.1.0",
        &f.rust_changed,
        &["reload.test@1.0", "shared.math@1.1"],
    ));
    let rt = hot_runtime();
    rt.load_bundle(&v1).expect("v1");
    let error = rt
        .reload(ReloadRequest::new("sig-rust").from_dir(&changed))
        .expect_err("reload.test's add changed from u32 to u64 under major 1");
    assert_eq!(
        mismatch(&error),
        Some(("reload.test@1".to_owned(), "sig-rust".to_owned())),
        "{error:?}"
    );
    let guard = rt.find(&RELOAD_TEST).expect("reload.test");
    let table = guard.functions::<ReloadTest>().expect("table");
    assert_eq!(((table.version)(), (table.add)(40, 2)), (100, 42));
}

/// The changed Rust plugin loaded beside the original under another bundle name: two
/// providers of `reload.test@1` whose signatures differ cannot both be served.
#[test]
fn a_second_provider_with_another_signature_is_refused_at_load() {
    let f = fixtures();
    let v1 = f.bundle(&f.rust_spec("sig-first", 1));
    let changed = f.bundle(&BundleSpec::new(
        "sig-second",
        "1.0.0",
        &f.rust_changed,
        &["reload.test@1.0", "shared.math@1.1"],
    ));
    let rt = hot_runtime();
    rt.load_bundle(&v1).expect("first provider");
    match rt.load_bundle(&changed) {
        Err(LoadError::SignatureMismatch {
            bundle,
            contract,
            provider,
            expected,
            found,
            ..
        }) => {
            assert_eq!(
                (bundle.as_str(), contract.as_str(), provider.as_str()),
                ("sig-second", "reload.test@1", "sig-first")
            );
            assert_ne!(expected, found);
        }
        other => panic!("a second provider with another signature: {other:?}"),
    }
    assert!(rt.bundle("sig-second").is_none());
}

/// `shared.math@1` is defined once in C (an X-macro list in the C plugin) and once in Rust
/// (`contract!` in the Rust plugin and in the host's view): all three carry one fingerprint,
/// so both plugins load side by side and the host's typed view accepts either.
#[test]
fn the_c_and_the_rust_definition_of_one_contract_have_one_fingerprint() {
    use polyplug_runtime::abi::FunctionTable;
    use polyplug_runtime::ids::ContractId;

    use crate::contracts::SharedMath;

    let f = fixtures();
    let rt = hot_runtime();
    rt.load_bundle(f.bundle(&f.c_spec("fp-c", 1))).expect("C");
    rt.load_bundle(f.bundle(&f.rust_spec("fp-rust", 1)))
        .expect("Rust, beside the C provider of shared.math");
    let providers = rt.registry().providers(ContractId::new("shared.math", 1));
    assert_eq!(providers.len(), 2);
    for provider in providers {
        let guard = rt.resolve(provider.handle).expect("provider");
        assert_eq!(
            guard.signature(),
            SharedMath::SIGNATURE,
            "{}",
            provider.bundle_name
        );
        let table = guard.functions::<SharedMath>().expect("typed view");
        assert_eq!((table.add)(2, 3), 5);
    }
    assert_ne!(SharedMath::SIGNATURE, 0);
}

/// The host's typed view is checked too: a table type whose signature differs from the
/// provider's is refused (`None`) rather than called with the wrong types.
#[test]
fn a_typed_view_with_another_signature_is_refused() {
    polyplug_runtime::contract! {
        struct WideReloadTest {
            fn version() -> u32;
            fn add(a: u64, b: u64) -> u64;
        }
    }
    let f = fixtures();
    let rt = hot_runtime();
    rt.load_bundle(f.bundle(&f.rust_spec("view-rust", 1)))
        .expect("load");
    let guard = rt.find(&RELOAD_TEST).expect("reload.test");
    assert!(guard.functions::<WideReloadTest>().is_none());
    assert!(guard.functions::<ReloadTest>().is_some());
    assert!(
        guard.functions::<crate::contracts::Versioned>().is_some(),
        "a prefix with the same signatures"
    );
}
