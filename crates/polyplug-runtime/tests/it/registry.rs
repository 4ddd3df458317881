//! The registry on its own: handles, in-place swaps under a held guard, generations, several
//! providers, id collisions, version negotiation, the revision counter and reload
//! transactions (the direct-swap contracts of polyplug 0.1.1's `tests/concurrency/reload.rs`,
//! against our API).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use polyplug_runtime::abi::{DispatchTable, GuestContractHandle, GuestContractInterface, Version};
use polyplug_runtime::ids::{BundleId, ContractId, ContractRef};
use polyplug_runtime::registry::{Registration, SwapSummary};
use polyplug_runtime::{CachedInterface, LookupError, ProviderPolicy, Registry, RegistryError};

use crate::contracts::Versioned;

extern "C" fn one() -> u32 {
    1
}
extern "C" fn two() -> u32 {
    2
}
extern "C" fn three() -> u32 {
    3
}

static TABLE_V1: Versioned = Versioned { version: one };
static TABLE_V2: Versioned = Versioned { version: two };
static TABLE_V3: Versioned = Versioned { version: three };

const SWAP_ID: ContractId = ContractId::from_u64(0xDEAD_BEEF_0000_0001);

static INTERFACE_V1: GuestContractInterface = GuestContractInterface::new(
    SWAP_ID,
    Version::new(1, 0, 0),
    DispatchTable::from_static(&TABLE_V1),
);
static INTERFACE_V2: GuestContractInterface = GuestContractInterface::new(
    SWAP_ID,
    Version::new(2, 0, 0),
    DispatchTable::from_static(&TABLE_V2),
);

fn register_raw(
    registry: &Registry,
    contract: &str,
    bundle: &str,
    interface: &GuestContractInterface,
) -> Result<GuestContractHandle, RegistryError> {
    // SAFETY: the interfaces of this module point at static tables of valid functions.
    unsafe {
        registry.register(Registration {
            contract_name: contract,
            bundle: BundleId::new(bundle),
            bundle_name: bundle,
            plugin_version: Version::new(1, 0, 0),
            interface: *interface,
        })
    }
}

fn version_of(registry: &Registry, handle: GuestContractHandle) -> u32 {
    let guard = registry.resolve(handle).expect("resolve");
    (guard.functions::<Versioned>().expect("table").version)()
}

/// From polyplug 0.1.1's `test_swap_interface_changes_interface_pointer` and
/// `test_direct_swap_interface`: swap_interface changes what the handle resolves to, while an
/// interface resolved
/// before the swap stays valid (and callable) as long as it is held.
#[test]
fn swap_replaces_the_interface_and_a_held_guard_keeps_the_old_one() {
    let registry = Registry::new();
    let handle = register_raw(
        &registry,
        "swap.test.contract",
        "swap_test_plugin",
        &INTERFACE_V1,
    )
    .expect("registration");

    let before = registry.resolve(handle).expect("valid before the swap");
    assert_eq!(before.contract_version.major, 1);
    // SAFETY: INTERFACE_V2 points at a static table.
    unsafe { registry.swap_interface(handle.index, &INTERFACE_V2) }.expect("swap");

    let after = registry
        .resolve(handle)
        .expect("same handle valid after the swap");
    assert_eq!(after.contract_version.major, 2, "after swap: version 2");
    assert_eq!(
        after.handle(),
        handle,
        "in place: same slot, same generation"
    );
    // The guard taken before the swap still derefs to version 1 and calls into it.
    assert_eq!(
        before.contract_version.major, 1,
        "held guard keeps version 1"
    );
    assert_eq!(
        (before.functions::<Versioned>().expect("table").version)(),
        1
    );
    assert_eq!(
        (after.functions::<Versioned>().expect("table").version)(),
        2
    );
}

/// From polyplug 0.1.1's `stress_memory_interface_swap_cycles`: repeated swaps through one
/// handle; each cycle serves the version just swapped in,
/// and every superseded interface is released once unreferenced.
#[test]
fn fifty_swap_cycles_serve_the_latest_and_release_the_rest() {
    let registry = Registry::new();
    let handle = register_raw(
        &registry,
        "stress.mem.contract",
        "stress-mem-plugin",
        &INTERFACE_V1,
    )
    .expect("register");
    let mut previous = registry
        .resolve(handle)
        .expect("resolve")
        .to_owned_interface();
    for cycle in 0..50 {
        let (interface, expected) = if cycle % 2 == 0 {
            (&INTERFACE_V2, 2)
        } else {
            (&INTERFACE_V1, 1)
        };
        // SAFETY: static tables.
        unsafe { registry.swap_interface(handle.index, interface) }
            .unwrap_or_else(|e| panic!("swap failed at cycle {cycle}: {e}"));
        assert_eq!(version_of(&registry, handle), expected, "cycle {cycle}");
        let current = registry
            .resolve(handle)
            .expect("resolve")
            .to_owned_interface();
        assert!(!current.same_as(&previous), "cycle {cycle}: a new occupant");
        previous = current;
    }
}

#[test]
fn handles_are_generation_checked() {
    let registry = Registry::new();
    assert!(matches!(
        registry.resolve(GuestContractHandle::NULL),
        Err(RegistryError::InvalidHandle { .. })
    ));
    assert!(matches!(
        registry.resolve(GuestContractHandle {
            index: 0,
            generation: 1
        }),
        Err(RegistryError::InvalidHandle { .. })
    ));
    let a = registry
        .register_table(
            "gen.a",
            Version::new(1, 0, 0),
            BundleId::new("b"),
            "b",
            &TABLE_V1,
        )
        .expect("register");
    assert_eq!(a.generation, 1);
    let never_issued = GuestContractHandle {
        index: a.index,
        generation: a.generation + 1,
    };
    assert!(matches!(
        registry.resolve(never_issued),
        Err(RegistryError::InvalidHandle { .. })
    ));
    registry.unregister(a).expect("unregister");
    let err = registry.resolve(a).expect_err("retired");
    assert_eq!(err, RegistryError::StaleHandle { handle: a });
    assert!(err.to_string().contains("stale"), "{err}");
    assert!(matches!(
        registry.unregister(a),
        Err(RegistryError::StaleHandle { .. })
    ));
    // The slot is reused with a new generation; the old handle stays stale.
    let b = registry
        .register_table(
            "gen.b",
            Version::new(1, 0, 0),
            BundleId::new("b"),
            "b",
            &TABLE_V2,
        )
        .expect("register");
    assert_eq!(b.index, a.index, "freed slot reused");
    assert_eq!(b.generation, a.generation + 1);
    assert!(matches!(
        registry.resolve(a),
        Err(RegistryError::StaleHandle { .. })
    ));
    assert_eq!(version_of(&registry, b), 2);
}

#[test]
fn one_bundle_cannot_provide_a_contract_twice_but_two_bundles_can() {
    let registry = Registry::new();
    let v = Version::new(1, 0, 0);
    registry
        .register_table("dup", v, BundleId::new("a"), "a", &TABLE_V1)
        .expect("first");
    let err = registry
        .register_table("dup", v, BundleId::new("a"), "a", &TABLE_V2)
        .expect_err("duplicate");
    assert_eq!(
        err,
        RegistryError::DuplicateProvider {
            contract: "dup".into(),
            bundle: "a".into()
        }
    );
    assert!(
        err.to_string().contains("`a`") && err.to_string().contains("`dup`"),
        "{err}"
    );
    registry
        .register_table("dup", v, BundleId::new("b"), "b", &TABLE_V2)
        .expect("second bundle");
    assert_eq!(registry.providers(ContractId::new("dup", 1)).len(), 2);
}

#[test]
fn a_second_name_with_a_taken_id_is_a_collision() {
    let registry = Registry::new();
    let id = ContractId::new("first.name", 1);
    let first = GuestContractInterface::new(
        id,
        Version::new(1, 0, 0),
        DispatchTable::from_static(&TABLE_V1),
    );
    register_raw(&registry, "first.name", "a", &first).expect("first");
    let err = register_raw(&registry, "second.name", "b", &first).expect_err("collision");
    assert_eq!(
        err,
        RegistryError::ContractIdCollision {
            id,
            existing: "first.name".into(),
            new: "second.name".into()
        }
    );
    // The first contract is untouched.
    let found = registry
        .find(&ContractRef::new("first.name", 1, 0))
        .expect("still served");
    assert_eq!(found.bundle_name(), "a");
}

#[test]
fn providers_are_chosen_by_an_explicit_policy() {
    let v = |minor| Version::new(1, minor, 0);
    let contract = ContractRef::new("multi", 1, 0);
    let fill = |registry: &Registry| {
        registry
            .register_table("multi", v(0), BundleId::new("first"), "first", &TABLE_V1)
            .expect("first");
        registry
            .register_table("multi", v(3), BundleId::new("newest"), "newest", &TABLE_V2)
            .expect("newest");
        registry
            .register_table("multi", v(1), BundleId::new("third"), "third", &TABLE_V3)
            .expect("third");
    };
    let unique = Registry::new();
    fill(&unique);
    match unique.find(&contract) {
        Err(LookupError::Ambiguous { providers, .. }) => {
            assert_eq!(providers, vec!["first", "newest", "third"]);
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    let from = unique
        .find_from(&contract, BundleId::new("third"))
        .expect("explicit bundle");
    assert_eq!((from.functions::<Versioned>().expect("t").version)(), 3);

    for (policy, expected) in [
        (ProviderPolicy::FirstLoaded, 1),
        (ProviderPolicy::HighestVersion, 2),
        (
            ProviderPolicy::Prefer(vec!["nope".into(), "third".into()]),
            3,
        ),
    ] {
        let registry = Registry::with_policy(policy.clone());
        fill(&registry);
        let g = registry.find(&contract).expect("chosen");
        assert_eq!(
            (g.functions::<Versioned>().expect("t").version)(),
            expected,
            "{policy:?}"
        );
    }
}

#[test]
fn versions_negotiate_same_major_minor_at_least() {
    let registry = Registry::new();
    registry
        .register_table(
            "neg",
            Version::new(1, 2, 5),
            BundleId::new("a"),
            "a",
            &TABLE_V1,
        )
        .expect("register");
    assert!(registry.find(&ContractRef::new("neg", 1, 0)).is_ok());
    assert!(registry.find(&ContractRef::new("neg", 1, 2)).is_ok());
    match registry.find(&ContractRef::new("neg", 1, 3)) {
        Err(LookupError::IncompatibleVersion {
            found, required, ..
        }) => {
            assert_eq!(found, Version::new(1, 2, 5));
            assert_eq!(required, Version::new(1, 3, 0));
        }
        other => panic!("{other:?}"),
    }
    // Another major is another contract id: not found, never the major-1 table.
    assert!(matches!(
        registry.find(&ContractRef::new("neg", 2, 0)),
        Err(LookupError::NotFound { .. })
    ));
    // A table asked for with more functions than the provider has is refused.
    #[repr(C)]
    struct Longer {
        _a: extern "C" fn() -> u32,
        _b: extern "C" fn() -> u32,
    }
    // SAFETY: repr(C) of two function pointers.
    unsafe impl polyplug_runtime::abi::FunctionTable for Longer {}
    let g = registry.find(&ContractRef::new("neg", 1, 0)).expect("find");
    assert!(g.functions::<Longer>().is_none());
    assert!(g.functions::<Versioned>().is_some());
}

#[test]
fn cached_lookups_refresh_only_after_the_revision_changes() {
    let registry = Registry::new();
    let handle = register_raw(
        &registry,
        "cached",
        "a",
        &GuestContractInterface::new(
            ContractId::new("cached", 1),
            Version::new(1, 0, 0),
            DispatchTable::from_static(&TABLE_V1),
        ),
    )
    .expect("register");
    let mut cache = CachedInterface::new(ContractRef::new("cached", 1, 0));
    let r0 = registry.revision();
    assert_eq!(
        (cache
            .get(&registry)
            .expect("get")
            .functions::<Versioned>()
            .expect("t")
            .version)(),
        1
    );
    assert_eq!(registry.revision(), r0, "reads do not change the revision");
    let swapped = GuestContractInterface::new(
        ContractId::new("cached", 1),
        Version::new(1, 1, 0),
        DispatchTable::from_static(&TABLE_V2),
    );
    // SAFETY: static table.
    unsafe { registry.swap_interface(handle.index, &swapped) }.expect("swap");
    assert!(registry.revision() > r0);
    assert_eq!(
        (cache
            .get(&registry)
            .expect("get")
            .functions::<Versioned>()
            .expect("t")
            .version)(),
        2
    );
    registry.unregister(handle).expect("unregister");
    assert!(matches!(
        cache.get(&registry),
        Err(LookupError::NotFound { .. })
    ));
}

/// A reload transaction: what both versions provide is swapped in place (handles stay valid),
/// new contracts are published, dropped ones retired; a rollback restores everything.
#[test]
fn transactions_swap_publish_retire_and_roll_back() {
    let registry = Registry::new();
    let bundle = BundleId::new("tx");
    let v = Version::new(1, 0, 0);
    let mut txn = registry.begin_reload(bundle, "tx", true).expect("begin");
    txn.stage_table("kept", v, &TABLE_V1).expect("stage");
    txn.stage_table("dropped", v, &TABLE_V1).expect("stage");
    assert!(matches!(
        txn.stage_table("kept", v, &TABLE_V2),
        Err(RegistryError::DuplicateProvider { .. })
    ));
    assert!(
        registry.find(&ContractRef::new("kept", 1, 0)).is_err(),
        "staged registrations are invisible"
    );
    let first = txn.commit().expect("commit");
    assert_eq!(first.added, 2);
    drop(txn);
    let kept = registry
        .handle_of(&ContractRef::new("kept", 1, 0))
        .expect("kept");
    let dropped = registry
        .handle_of(&ContractRef::new("dropped", 1, 0))
        .expect("dropped");

    let mut txn = registry.begin_reload(bundle, "tx", true).expect("begin");
    txn.stage_table("kept", v, &TABLE_V2).expect("stage");
    txn.stage_table("new", v, &TABLE_V3).expect("stage");
    let summary = txn.commit().expect("commit");
    assert_eq!(
        summary,
        SwapSummary {
            swapped: 1,
            added: 1,
            retired: 1,
            index_republished: true
        }
    );
    assert_eq!(
        version_of(&registry, kept),
        2,
        "kept: same handle, new version"
    );
    assert!(matches!(
        registry.resolve(dropped),
        Err(RegistryError::StaleHandle { .. })
    ));
    let new = registry
        .handle_of(&ContractRef::new("new", 1, 0))
        .expect("new");

    txn.rollback().expect("rollback");
    assert_eq!(
        version_of(&registry, kept),
        1,
        "rolled back to the old interface"
    );
    assert_eq!(
        version_of(&registry, dropped),
        1,
        "retired contract restored"
    );
    assert!(registry.resolve(new).is_err(), "new contract withdrawn");
    assert!(registry.find(&ContractRef::new("new", 1, 0)).is_err());
    drop(txn);
    assert_eq!(registry.bundle_contracts(bundle).len(), 2);

    // A reload that keeps its contract set republishes nothing but its slots.
    let mut txn = registry.begin_reload(bundle, "tx", true).expect("begin");
    txn.stage_table("kept", v, &TABLE_V3).expect("stage");
    txn.stage_table("dropped", v, &TABLE_V3).expect("stage");
    let same = txn.commit().expect("commit");
    assert_eq!(
        (
            same.swapped,
            same.added,
            same.retired,
            same.index_republished
        ),
        (2, 0, 0, false)
    );
}

/// `begin_reload` without waiting fails while another transaction of the same bundle holds
/// the gate; another bundle's transaction proceeds meanwhile.
#[test]
fn reload_gates_are_per_bundle() {
    let registry = Arc::new(Registry::new());
    let held = registry
        .begin_reload(BundleId::new("a"), "a", true)
        .expect("a");
    assert_eq!(
        registry
            .begin_reload(BundleId::new("a"), "a", false)
            .expect_err("busy"),
        RegistryError::ReloadInProgress { bundle: "a".into() }
    );
    let other = registry
        .begin_reload(BundleId::new("b"), "b", false)
        .expect("b is free");
    drop(other);

    // A waiting transaction proceeds once the holder finishes.
    let entered = Arc::new(AtomicBool::new(false));
    let waiter = {
        let registry = Arc::clone(&registry);
        let entered = Arc::clone(&entered);
        std::thread::spawn(move || {
            let txn = registry
                .begin_reload(BundleId::new("a"), "a", true)
                .expect("waits");
            entered.store(true, Ordering::SeqCst);
            drop(txn);
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!entered.load(Ordering::SeqCst), "must wait for the holder");
    drop(held);
    waiter.join().expect("waiter");
    assert!(entered.load(Ordering::SeqCst));
}

/// Readers resolving while a writer swaps in place never fail and always see a whole
/// version.
#[test]
fn readers_never_fail_during_in_place_swaps() {
    let registry = Arc::new(Registry::new());
    let handle = registry
        .register_table(
            "busy",
            Version::new(1, 0, 0),
            BundleId::new("a"),
            "a",
            &TABLE_V1,
        )
        .expect("register");
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (registry, stop, calls) =
                (Arc::clone(&registry), Arc::clone(&stop), Arc::clone(&calls));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let g = registry
                        .find(&ContractRef::new("busy", 1, 0))
                        .expect("always found");
                    let v = (g.functions::<Versioned>().expect("t").version)();
                    assert!(v == 1 || v == 2);
                    assert_eq!(
                        registry.resolve(handle).expect("always valid").handle(),
                        handle
                    );
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..2000 {
        let mut txn = registry
            .begin_reload(BundleId::new("a"), "a", true)
            .expect("begin");
        let table = if i % 2 == 0 { &TABLE_V2 } else { &TABLE_V1 };
        txn.stage_table("busy", Version::new(1, 0, 0), table)
            .expect("stage");
        txn.commit().expect("commit");
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    assert!(calls.load(Ordering::Relaxed) > 0);
}

/// Registers `count` contracts `filler.<i>` over a few bundles: the writer paths below run in
/// a registry that holds far more than the contracts they touch.
fn fill(registry: &Registry, count: u32) {
    for i in 0..count {
        let bundle = format!("filler{}", i % 7);
        registry
            .register_table(
                &format!("filler.{i}"),
                Version::new(1, 0, 0),
                BundleId::new(&bundle),
                &bundle,
                &TABLE_V1,
            )
            .expect("filler");
    }
}

/// Every filler contract is still found, in its own slot.
fn fillers_intact(registry: &Registry, count: u32) {
    for i in 0..count {
        let name = format!("filler.{i}");
        let found = registry
            .find(&ContractRef::new(&name, 1, 0))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(found.contract_name(), name);
    }
}

/// Which table `find` returns (1, 2, 3), or the error.
fn found(registry: &Registry, name: &str) -> Result<u32, LookupError> {
    registry
        .find(&ContractRef::new(name, 1, 0))
        .map(|g| (g.functions::<Versioned>().expect("table").version)())
}

/// Registering and unregistering providers republishes exactly the contract's entry: `find`
/// follows every change under every policy, and the other contracts are untouched.
#[test]
fn find_follows_registrations_and_retirements_under_every_policy() {
    const FILLERS: u32 = 300;
    let v = |minor| Version::new(1, minor, 0);
    for (policy, both) in [
        (ProviderPolicy::Unique, None),
        (ProviderPolicy::FirstLoaded, Some(1)),
        (ProviderPolicy::HighestVersion, Some(2)),
        (ProviderPolicy::Prefer(vec!["second".into()]), Some(2)),
    ] {
        let registry = Registry::with_policy(policy.clone());
        fill(&registry, FILLERS);
        assert!(matches!(
            found(&registry, "multi"),
            Err(LookupError::NotFound { .. })
        ));
        let first = registry
            .register_table("multi", v(0), BundleId::new("first"), "first", &TABLE_V1)
            .expect("first");
        assert_eq!(found(&registry, "multi"), Ok(1), "{policy:?}: one provider");
        let second = registry
            .register_table("multi", v(2), BundleId::new("second"), "second", &TABLE_V2)
            .expect("second");
        match both {
            Some(expected) => assert_eq!(found(&registry, "multi"), Ok(expected), "{policy:?}"),
            None => match found(&registry, "multi") {
                Err(LookupError::Ambiguous { providers, .. }) => {
                    assert_eq!(providers, vec!["first", "second"]);
                }
                other => panic!("{policy:?}: expected Ambiguous, got {other:?}"),
            },
        }
        assert_eq!(
            registry
                .providers(ContractId::new("multi", 1))
                .iter()
                .map(|p| p.handle)
                .collect::<Vec<_>>(),
            vec![first, second]
        );
        // Retiring the provider the policy chose falls back to the other one.
        let (gone, left, left_table) = if both == Some(1) {
            (first, second, 2)
        } else {
            (second, first, 1)
        };
        registry.unregister(gone).expect("unregister");
        assert_eq!(found(&registry, "multi"), Ok(left_table), "{policy:?}");
        assert_eq!(
            registry.handle_of(&ContractRef::new("multi", 1, 0)),
            Ok(left)
        );
        registry.unregister(left).expect("unregister");
        assert!(matches!(
            found(&registry, "multi"),
            Err(LookupError::NotFound { .. })
        ));
        assert!(registry.providers(ContractId::new("multi", 1)).is_empty());
        // A returning contract is found again.
        registry
            .register_table("multi", v(0), BundleId::new("third"), "third", &TABLE_V3)
            .expect("third");
        assert_eq!(found(&registry, "multi"), Ok(3), "{policy:?}");
        fillers_intact(&registry, FILLERS);
        assert_eq!(registry.contract_count(), FILLERS as usize + 1);
    }
}

/// A reload whose v2 adds a contract, drops one and changes a version republishes those
/// three; a rollback republishes them back; a version change through `swap_interface` moves
/// the `HighestVersion` choice.
#[test]
fn find_follows_reloads_that_add_drop_and_reversion_contracts() {
    const FILLERS: u32 = 300;
    let v = |minor| Version::new(1, minor, 0);
    let registry = Registry::with_policy(ProviderPolicy::HighestVersion);
    fill(&registry, FILLERS);
    let bundle = BundleId::new("tx");
    let mut txn = registry.begin_reload(bundle, "tx", true).expect("begin");
    txn.stage_table("kept", v(0), &TABLE_V1).expect("stage");
    txn.stage_table("dropped", v(0), &TABLE_V1).expect("stage");
    txn.commit().expect("commit v1");
    drop(txn);
    assert_eq!(found(&registry, "kept"), Ok(1));
    assert_eq!(found(&registry, "dropped"), Ok(1));
    assert!(found(&registry, "added").is_err());

    // Another bundle provides `kept` at minor 1: the higher version wins.
    let other = registry
        .register_table("kept", v(1), BundleId::new("other"), "other", &TABLE_V3)
        .expect("other");
    assert_eq!(found(&registry, "kept"), Ok(3));

    // v2: `kept` rises to minor 2 (and wins again), `dropped` goes, `added` comes.
    let mut txn = registry.begin_reload(bundle, "tx", true).expect("begin");
    txn.stage_table("kept", v(2), &TABLE_V2).expect("stage");
    txn.stage_table("added", v(0), &TABLE_V2).expect("stage");
    let summary = txn.commit().expect("commit v2");
    assert_eq!((summary.swapped, summary.added, summary.retired), (1, 1, 1));
    assert_eq!(found(&registry, "kept"), Ok(2));
    assert!(matches!(
        found(&registry, "dropped"),
        Err(LookupError::NotFound { .. })
    ));
    assert_eq!(found(&registry, "added"), Ok(2));
    fillers_intact(&registry, FILLERS);

    // Rolled back: v1 again, on every contract the commit touched.
    txn.rollback().expect("rollback");
    assert_eq!(
        found(&registry, "kept"),
        Ok(3),
        "minor 1 beats v1's minor 0"
    );
    assert_eq!(found(&registry, "dropped"), Ok(1));
    assert!(matches!(
        found(&registry, "added"),
        Err(LookupError::NotFound { .. })
    ));
    drop(txn);

    // A swap that lowers `other`'s version hands the choice back to `tx`.
    let lower = GuestContractInterface::new(
        ContractId::new("kept", 1),
        v(0),
        DispatchTable::from_static(&TABLE_V3),
    );
    let higher = GuestContractInterface::new(
        ContractId::new("kept", 1),
        v(5),
        DispatchTable::from_static(&TABLE_V3),
    );
    // SAFETY: static tables.
    unsafe { registry.swap_interface(other.index, &lower) }.expect("swap");
    assert_eq!(
        found(&registry, "kept"),
        Ok(1),
        "equal versions: first registered"
    );
    // SAFETY: static tables.
    unsafe { registry.swap_interface(other.index, &higher) }.expect("swap");
    assert_eq!(found(&registry, "kept"), Ok(3));
    fillers_intact(&registry, FILLERS);
}

/// Unloading a bundle (a commit with nothing staged) republishes each of its contracts: a
/// contract with another provider falls back to it, one without is gone.
#[test]
fn find_follows_an_unload() {
    const FILLERS: u32 = 300;
    let v = Version::new(1, 0, 0);
    let registry = Registry::with_policy(ProviderPolicy::FirstLoaded);
    fill(&registry, FILLERS);
    let mut txn = registry
        .begin_reload(BundleId::new("leaving"), "leaving", true)
        .expect("begin");
    txn.stage_table("shared", v, &TABLE_V1).expect("stage");
    txn.stage_table("own", v, &TABLE_V1).expect("stage");
    txn.commit().expect("load");
    drop(txn);
    registry
        .register_table("shared", v, BundleId::new("staying"), "staying", &TABLE_V2)
        .expect("staying");
    assert_eq!(found(&registry, "shared"), Ok(1), "first loaded");

    let mut txn = registry
        .begin_reload(BundleId::new("leaving"), "leaving", true)
        .expect("begin");
    let summary = txn.commit().expect("unload");
    txn.remove_bundle_on_finish();
    drop(txn);
    assert_eq!(summary.retired, 2);
    assert_eq!(found(&registry, "shared"), Ok(2), "the remaining provider");
    assert!(matches!(
        found(&registry, "own"),
        Err(LookupError::NotFound { .. })
    ));
    assert!(
        registry
            .find_from(&ContractRef::new("shared", 1, 0), BundleId::new("leaving"))
            .is_err()
    );
    assert!(
        registry
            .bundle_contracts(BundleId::new("leaving"))
            .is_empty()
    );
    fillers_intact(&registry, FILLERS);
    assert_eq!(registry.contract_count(), FILLERS as usize + 1);
}
