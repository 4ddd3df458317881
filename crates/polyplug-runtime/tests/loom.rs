//! Loom models of the registry's protocols: a reload transaction swapping a contract in place
//! while readers look it up (through `find` and through a revision-polling cache), two
//! reloads of one bundle racing for its reload gate, and the find index changing in place —
//! growing, gaining a provider, losing one — under a reader; and the hazard pointers behind
//! every slot (a value freed only after its last reader lets go).
//!
//! Run with `LOOM_MAX_PREEMPTIONS=2 cargo test --release -p polyplug-runtime --features loom
//! --test loom`. Each model has negative controls — the same scenario with a deliberately
//! broken variant — that loom must catch (each control passes only by panicking with the
//! model's own assertion message).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use loom::sync::atomic::AtomicUsize as LoomUsize;
use loom::thread;
use polyplug_runtime::abi::{FunctionTable, Version};
use polyplug_runtime::ids::{BundleId, ContractRef};
use polyplug_runtime::{CachedInterface, ProviderPolicy, Registry, hazard_model};

#[repr(C)]
struct Versioned {
    version: extern "C" fn() -> u32,
}
// SAFETY: repr(C), one extern "C" function pointer.
unsafe impl FunctionTable for Versioned {}

extern "C" fn one() -> u32 {
    1
}
extern "C" fn two() -> u32 {
    2
}
static V1: Versioned = Versioned { version: one };
static V2: Versioned = Versioned { version: two };

const CONTRACT: ContractRef<'static> = ContractRef::new("model", 1, 0);
const VERSION: Version = Version::new(1, 0, 0);

/// Runs `f` under loom (see [`workspace_tests::loom_model!`]).
fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    workspace_tests::loom_model!(f);
}

fn registry_with_v1() -> Arc<Registry> {
    let registry = Arc::new(Registry::new());
    registry
        .register_table("model", VERSION, BundleId::new("b"), "b", &V1)
        .expect("register v1");
    registry
}

fn version_of(interface: &polyplug_runtime::Interface) -> u32 {
    (interface.functions::<Versioned>().expect("table").version)()
}

/// How a cached caller reads; the wrong one reads the revision after the lookup.
#[derive(Clone, Copy)]
enum CacheRead {
    RevisionFirst,
    RevisionLate,
}

/// A reload swaps v1 → v2 while a cached caller reads: it sees v1 or v2, and once the reload
/// is done its next read is v2 — it never keeps serving the superseded version.
fn cached_caller_scenario(read: CacheRead) {
    model(move || {
        let registry = registry_with_v1();
        let writer = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || {
                let mut txn = registry
                    .begin_reload(BundleId::new("b"), "b", true)
                    .expect("begin");
                txn.stage_table("model", VERSION, &V2).expect("stage");
                txn.commit().expect("commit");
            })
        };
        let mut cache = CachedInterface::new(CONTRACT);
        let get = |cache: &mut CachedInterface<'static>| match read {
            CacheRead::RevisionFirst => version_of(cache.get(&registry).expect("get")),
            CacheRead::RevisionLate => {
                version_of(cache.get_reading_revision_late(&registry).expect("get"))
            }
        };
        let during = get(&mut cache);
        assert!(during == 1 || during == 2, "torn read: {during}");
        writer.join().expect("writer");
        assert_eq!(
            get(&mut cache),
            2,
            "stale cache: serves v1 after the reload"
        );
    });
}

#[test]
fn a_cached_caller_never_keeps_a_superseded_version() {
    cached_caller_scenario(CacheRead::RevisionFirst);
}

/// Negative control: reading the revision after the lookup can pair the old interface with
/// the new revision; loom must find the interleaving.
#[test]
#[should_panic(expected = "stale cache")]
fn negative_control_reading_the_revision_late_is_caught() {
    cached_caller_scenario(CacheRead::RevisionLate);
}

/// How the reloads in the scenario below enter and commit.
#[derive(Clone, Copy)]
enum Reloads {
    Correct,
    /// Without the per-bundle gate.
    Ungated,
    /// Retire everything, then publish the new version afresh (no in-place swap).
    RetireAndRepublish,
}

/// Two reloads of one bundle race while a reader looks the contract up: the reloads' critical
/// sections never overlap, and the contract both versions provide resolves at every moment.
fn racing_reloads_scenario(mode: Reloads) {
    model(move || {
        let registry = registry_with_v1();
        let in_section = Arc::new(LoomUsize::new(0));
        let reload = |table: &'static Versioned| {
            let registry = Arc::clone(&registry);
            let in_section = Arc::clone(&in_section);
            thread::spawn(move || {
                let mut txn = match mode {
                    Reloads::Ungated => registry.begin_reload_ungated(BundleId::new("b"), "b"),
                    _ => registry
                        .begin_reload(BundleId::new("b"), "b", true)
                        .expect("begin"),
                };
                let now = in_section.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(
                    now <= 1,
                    "overlap: {now} reloads in their critical sections"
                );
                txn.stage_table("model", VERSION, table).expect("stage");
                match mode {
                    Reloads::RetireAndRepublish => txn.commit_by_retire_and_republish(),
                    _ => txn.commit(),
                }
                .expect("commit");
                in_section.fetch_sub(1, Ordering::SeqCst);
                drop(txn);
            })
        };
        let a = reload(&V2);
        let b = reload(&V1);
        let found = registry.find(&CONTRACT);
        assert!(
            found.is_ok(),
            "contract unresolvable during a reload: {found:?}"
        );
        let version = version_of(&found.expect("checked"));
        assert!(version == 1 || version == 2);
        a.join().expect("a");
        b.join().expect("b");
        assert!(
            registry.find(&CONTRACT).is_ok(),
            "contract unresolvable after the reloads"
        );
    });
}

#[test]
fn racing_reloads_of_one_bundle_are_exclusive_and_keep_the_contract_resolvable() {
    racing_reloads_scenario(Reloads::Correct);
}

/// Negative control: without the gate two reloads overlap; loom must find it.
#[test]
#[should_panic(expected = "overlap")]
fn negative_control_reloads_without_the_gate_overlap() {
    racing_reloads_scenario(Reloads::Ungated);
}

/// Negative control: retiring and republishing instead of swapping in place leaves a window
/// in which the contract is missing; loom must find it.
#[test]
#[should_panic(expected = "contract unresolvable")]
fn negative_control_retire_and_republish_loses_the_contract() {
    racing_reloads_scenario(Reloads::RetireAndRepublish);
}

/// How the writer in the scenario below changes the find index.
#[derive(Clone, Copy)]
enum IndexWrites {
    Correct,
    /// Retire a provider by vacating its slot before republishing the contract's entry.
    VacateFirst,
    /// Grow the index by publishing the new table empty, then filling it.
    RebuildPublishedEmpty,
}

/// While a reader looks `model` up, a writer grows the find index (a new contract id past the
/// table's load limit forces a rebuild), registers a second provider of `model` and retires
/// the first. `model` has a provider at every moment, so the lookup always succeeds, and
/// once the writer is done it reaches the second provider.
fn index_changes_scenario(mode: IndexWrites) {
    model(move || {
        let registry = Arc::new(Registry::with_policy(ProviderPolicy::FirstLoaded));
        let first = registry
            .register_table("model", VERSION, BundleId::new("a"), "a", &V1)
            .expect("first provider");
        for name in ["filler.1", "filler.2"] {
            registry
                .register_table(name, VERSION, BundleId::new("c"), "c", &V1)
                .expect("filler");
        }
        if let IndexWrites::RebuildPublishedEmpty = mode {
            registry.publish_index_rebuilds_before_filling();
        }
        let writer = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || {
                registry
                    .register_table("extra", VERSION, BundleId::new("b"), "b", &V2)
                    .expect("a fourth contract id: the index grows");
                registry
                    .register_table("model", VERSION, BundleId::new("b"), "b", &V2)
                    .expect("second provider");
                match mode {
                    IndexWrites::VacateFirst => registry.unregister_vacating_first(first),
                    _ => registry.unregister(first),
                }
                .expect("retire the first provider");
            })
        };
        let found = registry.find(&CONTRACT);
        assert!(
            found.is_ok(),
            "contract unresolvable while the index changes: {found:?}"
        );
        let version = version_of(&found.expect("checked"));
        assert!(version == 1 || version == 2);
        writer.join().expect("writer");
        let after = registry.find(&CONTRACT).expect("found after the writer");
        assert_eq!(version_of(&after), 2, "stale choice after the writer");
    });
}

#[test]
fn the_find_index_changes_in_place_without_losing_a_contract() {
    index_changes_scenario(IndexWrites::Correct);
}

/// Negative control: vacating a retired provider's slot before republishing its contract
/// lets a lookup keep meeting the vacated slot; loom must find it.
#[test]
#[should_panic(expected = "contract unresolvable")]
fn negative_control_vacating_before_republishing_loses_the_contract() {
    index_changes_scenario(IndexWrites::VacateFirst);
}

/// Negative control: a grown index published before it is filled hides contracts; loom must
/// find it.
#[test]
#[should_panic(expected = "contract unresolvable")]
fn negative_control_publishing_a_rebuilt_index_before_filling_it_loses_the_contract() {
    index_changes_scenario(IndexWrites::RebuildPublishedEmpty);
}

/// The hazard pointers behind every slot: a reader protecting a value while a writer swaps it
/// out and retires it never sees it freed, and the value is freed once the reader lets go.
#[test]
fn a_value_a_reader_protects_is_freed_only_after_it_lets_go() {
    model(|| hazard_model::reader_against_retire(hazard_model::Variant::Correct));
}

/// Negative control: a reader that publishes its hazard without loading the cell again can
/// hold a value the writer already freed; loom must find it.
#[test]
#[should_panic(expected = "freed under its reader")]
fn negative_control_a_reader_without_its_recheck_reads_a_freed_value() {
    model(|| hazard_model::reader_against_retire(hazard_model::Variant::NoRecheck));
}

/// Negative control: without the reader's barrier its hazard and its recheck can be reordered
/// around the writer's swap and scan; loom must find it.
#[test]
#[should_panic(expected = "freed under its reader")]
fn negative_control_a_reader_without_its_barrier_reads_a_freed_value() {
    model(|| hazard_model::reader_against_retire(hazard_model::Variant::NoReaderBarrier));
}
