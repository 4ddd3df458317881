//! Property tests: the manifest parser never panics and round-trips what it renders; the
//! registry, driven by random operations, always agrees with a simple model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use polyplug_runtime::abi::{GuestContractHandle, Version};
use polyplug_runtime::ids::{BundleId, ContractRef};
use polyplug_runtime::manifest::{LibraryFiles, Manifest, ProvidedContract, RequiredContract};
use polyplug_runtime::{LookupError, Registry, RegistryError};
use proptest::prelude::*;

use crate::contracts::Versioned;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const VALID: &str = "name = \"b\"\nversion = \"1.2.3\"\nprovides = [\"a@1.0\", 'c@2.1']\n\
depends = [\"x\"]\nreload_with_dependencies = true\n[library]\nlinux = \"lib.so\"\n";

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn the_manifest_parser_never_panics_on_any_text(text in "\\PC{0,200}") {
        let _ = Manifest::parse(&text, Path::new("m.toml"));
    }

    #[test]
    fn the_manifest_parser_never_panics_on_mutated_manifests(
        cut in 0usize..VALID.len(),
        insert in "[\\[\\]\"'=,#\\\\\n a-z0-9@.]{0,4}",
    ) {
        let mut text = VALID.to_owned();
        let at = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &insert);
        match Manifest::parse(&text, Path::new("m.toml")) {
            Ok(m) => prop_assert!(!m.name.is_empty()),
            Err(e) => prop_assert!(e.to_string().starts_with("m.toml")),
        }
    }
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,20}"
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        name(),
        (0u32..1000, 0u32..1000, 0u32..1000),
        proptest::collection::vec(("[a-z.\"\\\\ é]{1,12}", 0u32..5, 0u32..5), 0..4),
        proptest::collection::vec(name(), 0..3),
        (
            any::<bool>(),
            proptest::collection::vec(("[a-z.\"\\\\ é]{1,12}", 0u32..5, 0u32..5), 0..3),
        ),
        proptest::option::of("[a-z_]{1,10}\\.so"),
        proptest::option::of("[a-z_]{1,10}\\.dylib"),
    )
        .prop_map(
            |(name, (a, b, c), provides, depends, (cascade, requires), linux, macos)| {
                let mut required = std::collections::HashSet::new();
                let requires = requires
                    .into_iter()
                    .map(|(name, major, minor)| RequiredContract { name, major, minor })
                    .filter(|r| required.insert(r.id()))
                    .collect();
                let mut seen = std::collections::HashSet::new();
                let provides = provides
                    .into_iter()
                    .map(|(name, major, minor)| ProvidedContract { name, major, minor })
                    .filter(|p| seen.insert(p.id()))
                    .collect();
                let mut deps: Vec<String> = Vec::new();
                for d in depends {
                    if !deps.contains(&d) {
                        deps.push(d);
                    }
                }
                Manifest {
                    name,
                    version: Version::new(a, b, c),
                    library: LibraryFiles {
                        linux: linux.map(PathBuf::from),
                        macos: macos.map(PathBuf::from),
                    },
                    provides,
                    depends: deps,
                    requires,
                    reload_with_dependencies: cascade,
                }
            },
        )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn rendered_manifests_parse_back_equal(m in manifest()) {
        let text = m.to_toml();
        let parsed = Manifest::parse(&text, Path::new("m.toml"));
        prop_assert_eq!(parsed.as_ref().ok(), Some(&m), "{}\n{:?}", text, parsed);
    }
}

extern "C" fn v0() -> u32 {
    0
}
extern "C" fn v1() -> u32 {
    1
}
extern "C" fn v2() -> u32 {
    2
}
static TABLES: [Versioned; 3] = [
    Versioned { version: v0 },
    Versioned { version: v1 },
    Versioned { version: v2 },
];

const BUNDLES: [&str; 3] = ["b0", "b1", "b2"];
const CONTRACTS: [&str; 4] = ["c0", "c1", "c2", "c3"];

#[derive(Debug, Clone)]
enum Op {
    Register {
        bundle: usize,
        contract: usize,
        table: usize,
    },
    Unregister {
        pick: usize,
    },
    Swap {
        pick: usize,
        table: usize,
    },
    Reload {
        bundle: usize,
        contracts: Vec<(usize, usize)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..4usize, 0..3usize).prop_map(|(bundle, contract, table)| Op::Register {
            bundle,
            contract,
            table
        }),
        any::<usize>().prop_map(|pick| Op::Unregister { pick }),
        (any::<usize>(), 0..3usize).prop_map(|(pick, table)| Op::Swap { pick, table }),
        (
            0..3usize,
            proptest::collection::vec((0..4usize, 0..3usize), 0..4)
        )
            .prop_map(|(bundle, contracts)| Op::Reload { bundle, contracts }),
    ]
}

/// The model: (bundle, contract) → (handle, table).
type Model = HashMap<(usize, usize), (GuestContractHandle, usize)>;

fn check(
    registry: &Registry,
    model: &Model,
    retired: &[GuestContractHandle],
) -> Result<(), TestCaseError> {
    for ((_, _), (handle, table)) in model {
        let g = registry.resolve(*handle);
        prop_assert!(g.is_ok(), "{handle} must resolve: {g:?}");
        let g = g.expect("checked");
        prop_assert_eq!(
            (g.functions::<Versioned>().expect("t").version)(),
            *table as u32
        );
    }
    for handle in retired {
        prop_assert!(
            matches!(
                registry.resolve(*handle),
                Err(RegistryError::StaleHandle { .. })
            ),
            "{} must be stale",
            handle
        );
    }
    for (c, name) in CONTRACTS.iter().enumerate() {
        let providers: Vec<_> = model.iter().filter(|((_, mc), _)| *mc == c).collect();
        let found = registry.find(&ContractRef::new(name, 1, 0));
        match providers.len() {
            0 => prop_assert!(
                matches!(found, Err(LookupError::NotFound { .. })),
                "{found:?}"
            ),
            1 => {
                let g = found.expect("one provider");
                prop_assert_eq!(g.handle(), providers[0].1.0);
            }
            _ => prop_assert!(
                matches!(found, Err(LookupError::Ambiguous { .. })),
                "{found:?}"
            ),
        }
        prop_assert_eq!(
            registry
                .providers(polyplug_runtime::ids::ContractId::new(name, 1))
                .len(),
            providers.len()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn the_registry_agrees_with_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let registry = Registry::new();
        let mut model: Model = HashMap::new();
        let mut retired: Vec<GuestContractHandle> = Vec::new();
        let version = Version::new(1, 0, 0);
        for op in ops {
            match op {
                Op::Register { bundle, contract, table } => {
                    let result = registry.register_table(
                        CONTRACTS[contract], version, BundleId::new(BUNDLES[bundle]),
                        BUNDLES[bundle], &TABLES[table],
                    );
                    match model.entry((bundle, contract)) {
                        std::collections::hash_map::Entry::Occupied(_) => prop_assert!(
                            matches!(result, Err(RegistryError::DuplicateProvider { .. })),
                            "{result:?}"
                        ),
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            let handle = result.expect("register");
                            slot.insert((handle, table));
                        }
                    }
                }
                Op::Unregister { pick } => {
                    let keys: Vec<_> = { let mut k: Vec<_> = model.keys().copied().collect(); k.sort(); k };
                    if keys.is_empty() { continue; }
                    let key = keys[pick % keys.len()];
                    let (handle, _) = model.remove(&key).expect("key");
                    registry.unregister(handle).expect("unregister");
                    retired.push(handle);
                }
                Op::Swap { pick, table } => {
                    let keys: Vec<_> = { let mut k: Vec<_> = model.keys().copied().collect(); k.sort(); k };
                    if keys.is_empty() { continue; }
                    let key = keys[pick % keys.len()];
                    let (handle, _) = model[&key];
                    let interface = polyplug_runtime::abi::GuestContractInterface::new(
                        polyplug_runtime::ids::ContractId::new(CONTRACTS[key.1], 1),
                        version,
                        polyplug_runtime::abi::DispatchTable::from_static(&TABLES[table]),
                    );
                    // SAFETY: static tables of valid functions.
                    unsafe { registry.swap_interface(handle.index, &interface) }.expect("swap");
                    model.insert(key, (handle, table));
                }
                Op::Reload { bundle, contracts } => {
                    let mut txn = registry
                        .begin_reload(BundleId::new(BUNDLES[bundle]), BUNDLES[bundle], true)
                        .expect("begin");
                    let mut staged: HashMap<usize, usize> = HashMap::new();
                    for (contract, table) in contracts {
                        let r = txn.stage_table(CONTRACTS[contract], version, &TABLES[table]);
                        match staged.entry(contract) {
                            std::collections::hash_map::Entry::Occupied(_) => prop_assert!(r.is_err()),
                            std::collections::hash_map::Entry::Vacant(slot) => {
                                r.expect("stage");
                                slot.insert(table);
                            }
                        }
                    }
                    txn.commit().expect("commit");
                    drop(txn);
                    let old: Vec<(usize, usize)> =
                        model.keys().filter(|(b, _)| *b == bundle).copied().collect();
                    for key in old {
                        if !staged.contains_key(&key.1) {
                            let (handle, _) = model.remove(&key).expect("key");
                            retired.push(handle);
                        }
                    }
                    for (contract, table) in staged {
                        let handle = match model.get(&(bundle, contract)) {
                            Some((handle, _)) => *handle,
                            None => registry
                                .find_from(&ContractRef::new(CONTRACTS[contract], 1, 0), BundleId::new(BUNDLES[bundle]))
                                .expect("published")
                                .handle(),
                        };
                        model.insert((bundle, contract), (handle, table));
                    }
                }
            }
            check(&registry, &model, &retired)?;
        }
    }
}
