//! Host services and calls between plugins: the host publishes `host.math@1` (a Rust table);
//! a Rust plugin (`rust.relay@1`) and a C plugin (`c.relay@1`) each find and call it, and each
//! finds and calls another plugin's contract through the runtime's lookups (with a counted
//! reference held across the call) — while another thread hot-reloads the plugin they call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use polyplug_runtime::abi::Version;
use polyplug_runtime::ids::ContractRef;
use polyplug_runtime::{RegistryError, ReloadRequest, Runtime, WithdrawError};

use crate::fixtures::{BundleSpec, fixtures};

polyplug_runtime::contract! {
    /// `host.math@1`: published by the host.
    struct HostMath {
        fn mix(a: u32, b: u32) -> u32;
    }
}

polyplug_runtime::contract! {
    /// `rust.relay@1` and `c.relay@1`.
    struct Relay {
        fn via_host(a: u32, b: u32) -> u32;
        fn via_peer(a: u32, b: u32) -> u32;
    }
}

extern "C" fn mix(a: u32, b: u32) -> u32 {
    a.wrapping_mul(1000).wrapping_add(b)
}

static HOST_MATH: HostMath = HostMath { mix };

fn relay(rt: &Runtime, contract: &ContractRef<'_>, a: u32, b: u32) -> (u32, u32) {
    let guard = rt.find(contract).expect("relay");
    let table = guard.functions::<Relay>().expect("relay table");
    ((table.via_host)(a, b), (table.via_peer)(a, b))
}

#[test]
fn plugins_call_a_host_service_and_each_other_during_reloads() {
    let f = fixtures();
    let rt = Runtime::builder()
        .hot_reload(true)
        .build()
        .expect("runtime");
    rt.publish_service("host.math", Version::new(1, 0, 0), &HOST_MATH)
        .expect("publish host.math");
    // The C plugin's greeter (`add`) is the Rust relay's peer; the Rust plugin's `reload.test`
    // (`add`) is the C relay's peer.
    let (c_v1, c_v2) = f.c_pair("svc-c");
    rt.load_bundle(&c_v1).expect("C plugin");
    let rust_relay = f.bundle(
        &BundleSpec::new(
            "svc-rust-relay",
            "1.0.0",
            &f.rust_services,
            &[
                "reload.test@1.0",
                "shared.math@1.1",
                "rust.counter@1.0",
                "rust.relay@1.0",
            ],
        )
        .requires("host.math@1.0")
        .requires("c.greeter@1.0"),
    );
    rt.load_bundle(&rust_relay).expect("Rust relay");
    let c_relay = f.bundle(
        &BundleSpec::new("svc-c-relay", "1.0.0", f.c("relay"), &["c.relay@1.0"])
            .requires("host.math@1.0")
            .requires("reload.test@1.0"),
    );
    rt.load_bundle(&c_relay).expect("C relay");

    let rust = ContractRef::new("rust.relay", 1, 0);
    let c = ContractRef::new("c.relay", 1, 0);
    assert_eq!(relay(&rt, &rust, 7, 5), (7005, 12));
    assert_eq!(relay(&rt, &c, 7, 5), (7005, 12));

    let stop = AtomicBool::new(false);
    let reloads = AtomicUsize::new(0);
    let calls = std::thread::scope(|s| {
        s.spawn(|| {
            let mut next_v2 = true;
            while !stop.load(Ordering::Relaxed) {
                let (c_dir, rust_dir) = if next_v2 {
                    (&c_v2, &rust_relay)
                } else {
                    (&c_v1, &rust_relay)
                };
                next_v2 = !next_v2;
                rt.reload(ReloadRequest::new("svc-c").from_dir(c_dir))
                    .expect("reload the C plugin");
                rt.reload(ReloadRequest::new("svc-rust-relay").from_dir(rust_dir))
                    .expect("reload the Rust plugin");
                reloads.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut calls = 0u32;
        while reloads.load(Ordering::Relaxed) < 50 {
            let (a, b) = (calls % 1000, calls % 7);
            assert_eq!(relay(&rt, &rust, a, b), (a * 1000 + b, a + b), "Rust relay");
            assert_eq!(relay(&rt, &c, a, b), (a * 1000 + b, a + b), "C relay");
            calls += 1;
        }
        stop.store(true, Ordering::Relaxed);
        calls
    });
    assert!(calls > 0);
    // The C relay's answers after it let go of everything: nothing it acquired is still held.
    assert_eq!(relay(&rt, &c, 1, 2), (1002, 3));
}

/// A plugin looking up a contract nobody provides gets an error status, not a crash; the
/// relays answer `u32::MAX` then.
#[test]
fn a_missing_service_is_an_error_status_for_the_plugin() {
    let f = fixtures();
    let rt = Runtime::builder().build().expect("runtime");
    let c_relay = f.bundle(&BundleSpec::new(
        "svc-lonely",
        "1.0.0",
        f.c("relay"),
        &["c.relay@1.0"],
    ));
    rt.load_bundle(&c_relay)
        .expect("C relay without its services");
    assert_eq!(
        relay(&rt, &ContractRef::new("c.relay", 1, 0), 1, 2),
        (u32::MAX, u32::MAX)
    );
}

/// The host withdraws a service: refused (and still served) while a loaded bundle requires it,
/// naming the bundle; a plugin's contract is not the host's to withdraw; once the bundle is
/// unloaded the service goes (lookups fail, its handle is stale, a bundle requiring it no
/// longer loads) and can be published again.
#[test]
fn a_host_service_is_withdrawn_only_when_no_loaded_bundle_requires_it() {
    let f = fixtures();
    let rt = Runtime::builder().build().expect("runtime");
    let math = ContractRef::new("host.math", 1, 0);
    let handle = rt
        .publish_service("host.math", Version::new(1, 0, 0), &HOST_MATH)
        .expect("publish host.math");
    let c_relay = f.bundle(
        &BundleSpec::new("wd-c-relay", "1.0.0", f.c("relay"), &["c.relay@1.0"])
            .requires("host.math@1.0"),
    );
    rt.load_bundle(&c_relay).expect("C relay");

    match rt.withdraw_service(handle) {
        Err(WithdrawError::ContractRequired {
            contract,
            dependent,
            ..
        }) => {
            assert_eq!(
                (contract.as_str(), dependent.as_str()),
                ("host.math@1", "wd-c-relay")
            );
        }
        other => panic!("withdrawing a required service: {other:?}"),
    }
    let guard = rt.find(&math).expect("still published");
    assert_eq!(
        (guard.functions::<HostMath>().expect("table").mix)(2, 3),
        2003
    );
    drop(guard);

    let relay = rt
        .registry()
        .handle_of(&ContractRef::new("c.relay", 1, 0))
        .expect("c.relay");
    assert!(matches!(
        rt.withdraw_service(relay),
        Err(WithdrawError::NotAService { .. })
    ));

    rt.unload("wd-c-relay").expect("unload the relay");
    rt.withdraw_service(handle).expect("withdraw host.math");
    assert!(rt.find(&math).is_err(), "no longer found");
    assert!(matches!(
        rt.resolve(handle),
        Err(RegistryError::StaleHandle { .. })
    ));
    assert!(matches!(
        rt.withdraw_service(handle),
        Err(WithdrawError::Handle(RegistryError::StaleHandle { .. }))
    ));
    assert!(
        rt.load_bundle(&c_relay).is_err(),
        "a bundle requiring the withdrawn service does not load"
    );
    rt.publish_service("host.math", Version::new(1, 0, 0), &HOST_MATH)
        .expect("published again");
    rt.load_bundle(&c_relay).expect("and the relay loads again");
}
