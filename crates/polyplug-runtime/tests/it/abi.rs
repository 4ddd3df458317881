//! The C ABI: Rust layouts checked against `include/polyplug.h` by compiling static assertions
//! generated from the Rust definitions (so the check fails if either side changes), and the
//! header's id functions checked against Rust's.

use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};
use std::process::Command;

use polyplug_runtime::abi::{
    self, BundleInitContext, DispatchTable, FunctionTable, GuestContractHandle,
    GuestContractInterface, HostApi, HostServices, PluginDescriptor, ReloadPhase, RuntimeOptions,
    StringView, Version, status,
};
use polyplug_runtime::ids::{BundleId, ContractId};

use crate::fixtures::{compile_c, crate_dir, fixtures};

/// `(C type, size, align, [(C field, offset)])` of one ABI struct, from the Rust side.
type Layout = (&'static str, usize, usize, Vec<(&'static str, usize)>);

/// Every ABI struct's layout.
fn layouts() -> Vec<Layout> {
    macro_rules! layout {
        ($c:literal, $t:ty, [$($f:ident),*]) => {
            ($c, size_of::<$t>(), align_of::<$t>(), vec![$((stringify!($f), offset_of!($t, $f))),*])
        };
    }
    vec![
        layout!("PolyplugVersion", Version, [major, minor, patch]),
        layout!("PolyplugStringView", StringView, [ptr, len]),
        layout!(
            "PolyplugDispatchTable",
            DispatchTable,
            [function_count, functions]
        ),
        layout!(
            "PolyplugGuestContractInterface",
            GuestContractInterface,
            [
                contract_id,
                contract_version,
                dispatch_type,
                create_instance,
                destroy_instance,
                dispatch,
                signature
            ]
        ),
        layout!(
            "PolyplugGuestContractHandle",
            GuestContractHandle,
            [index, generation]
        ),
        layout!(
            "PolyplugPluginDescriptor",
            PluginDescriptor,
            [name, contract_name, version]
        ),
        layout!(
            "PolyplugReloadPhase",
            ReloadPhase,
            [phase_type, bundle_id, bundle_name, reason]
        ),
        layout!(
            "PolyplugHostApi",
            HostApi,
            [
                abi_version,
                struct_size,
                host_context,
                register_contract,
                log,
                services
            ]
        ),
        layout!(
            "PolyplugHostServices",
            HostServices,
            [context, find, acquire, interface, release]
        ),
        layout!(
            "PolyplugBundleInitContext",
            BundleInitContext,
            [
                bundle_id,
                bundle_name,
                bundle_dir,
                bundle_version,
                is_reload
            ]
        ),
        layout!(
            "PolyplugRuntimeOptions",
            RuntimeOptions,
            [
                struct_size,
                hot_reload,
                provider_policy,
                drain_timeout_ms,
                on_reload,
                reload_user_data,
                on_log,
                log_user_data,
                copy_dir
            ]
        ),
    ]
}

fn constants() -> Vec<(&'static str, i64)> {
    vec![
        ("POLYPLUG_ABI_VERSION", abi::ABI_VERSION.into()),
        (
            "POLYPLUG_DISPATCH_FUNCTION_TABLE",
            abi::DISPATCH_FUNCTION_TABLE.into(),
        ),
        ("POLYPLUG_OK", status::OK.into()),
        (
            "POLYPLUG_ERR_INVALID_ARGUMENT",
            status::INVALID_ARGUMENT.into(),
        ),
        ("POLYPLUG_ERR_NOT_FOUND", status::NOT_FOUND.into()),
        ("POLYPLUG_ERR_STALE_HANDLE", status::STALE_HANDLE.into()),
        ("POLYPLUG_ERR_LOAD_FAILED", status::LOAD_FAILED.into()),
        (
            "POLYPLUG_ERR_RELOAD_IN_PROGRESS",
            status::RELOAD_IN_PROGRESS.into(),
        ),
        (
            "POLYPLUG_ERR_DEPENDENCY_IN_USE",
            status::DEPENDENCY_IN_USE.into(),
        ),
        ("POLYPLUG_ERR_PANICKED", status::PANICKED.into()),
        (
            "POLYPLUG_ERR_DUPLICATE_PROVIDER",
            status::DUPLICATE_PROVIDER.into(),
        ),
        ("POLYPLUG_ERR_ID_COLLISION", status::ID_COLLISION.into()),
        ("POLYPLUG_ERR_NON_UTF8", status::NON_UTF8.into()),
        ("POLYPLUG_ERR_ID_MISMATCH", status::ID_MISMATCH.into()),
        ("POLYPLUG_ERR_NOT_IN_INIT", status::NOT_IN_INIT.into()),
        ("POLYPLUG_ERR_AMBIGUOUS", status::AMBIGUOUS.into()),
        (
            "POLYPLUG_ERR_INCOMPATIBLE_VERSION",
            status::INCOMPATIBLE_VERSION.into(),
        ),
        ("POLYPLUG_ERR_RELOAD_FAILED", status::RELOAD_FAILED.into()),
        (
            "POLYPLUG_ERR_HOT_RELOAD_DISABLED",
            status::HOT_RELOAD_DISABLED.into(),
        ),
        ("POLYPLUG_ERR_UNDECLARED", status::UNDECLARED.into()),
        ("POLYPLUG_ERR_INTERNAL", status::INTERNAL.into()),
        ("POLYPLUG_LOG_ERROR", abi::log_level::ERROR.into()),
        ("POLYPLUG_LOG_DEBUG", abi::log_level::DEBUG.into()),
        (
            "POLYPLUG_RELOAD_PREPARING",
            abi::ReloadPhaseType::Preparing as i64,
        ),
        (
            "POLYPLUG_RELOAD_RELOADED",
            abi::ReloadPhaseType::Reloaded as i64,
        ),
        (
            "POLYPLUG_RELOAD_FAILED",
            abi::ReloadPhaseType::Failed as i64,
        ),
        (
            "POLYPLUG_RELOAD_UNLOADING",
            abi::ReloadPhaseType::Unloading as i64,
        ),
    ]
}

/// The C file of static assertions; `skew` is added to the first size (the negative check).
fn assertions(skew: usize) -> String {
    let mut c = String::from("#include <stddef.h>\n#include \"polyplug_runtime.h\"\n");
    for (i, (ty, size, align, fields)) in layouts().into_iter().enumerate() {
        let size = if i == 0 { size + skew } else { size };
        writeln!(
            c,
            "_Static_assert(sizeof({ty}) == {size}, \"size of {ty}\");"
        )
        .expect("fmt");
        writeln!(
            c,
            "_Static_assert(_Alignof({ty}) == {align}, \"alignment of {ty}\");"
        )
        .expect("fmt");
        for (field, offset) in fields {
            writeln!(
                c,
                "_Static_assert(offsetof({ty}, {field}) == {offset}, \"offset of {ty}.{field}\");"
            )
            .expect("fmt");
        }
    }
    for (name, value) in constants() {
        writeln!(c, "_Static_assert({name} == {value}, \"value of {name}\");").expect("fmt");
    }
    c
}

fn compiles(source: &str, label: &str) -> Result<(), String> {
    let dir = fixtures().scratch(label);
    let file = dir.join("layout.c");
    std::fs::write(&file, source).expect("write");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .args(["-fsyntax-only", "-std=c11", "-Wall", "-Werror", "-I"])
        .arg(crate_dir().join("include"))
        .arg("-I")
        .arg(crate_dir().join("capi/include"))
        .arg(&file)
        .output()
        .map_err(|e| format!("{cc}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_c_header_matches_every_rust_layout() {
    let source = assertions(0);
    assert!(source.matches("_Static_assert").count() > 60);
    if let Err(e) = compiles(&source, "layout") {
        panic!("polyplug.h disagrees with the Rust ABI:\n{e}");
    }
}

/// The layout check is live: a single wrong size makes it fail.
#[test]
fn the_layout_check_fails_when_a_size_differs() {
    let err = compiles(&assertions(4), "layout-skewed").expect_err("must not compile");
    assert!(err.contains("size of PolyplugVersion"), "{err}");
}

/// The header's inline id functions give the same ids as the Rust crate.
#[test]
fn c_and_rust_compute_the_same_ids() {
    let f = fixtures();
    let dir = f.scratch("ids");
    let source = dir.join("ids.c");
    let cases = [
        ("reload.test", 1u32),
        ("c.greeter", 1),
        ("x", 0),
        ("greeter", 4_000_000_000),
    ];
    let mut c = String::from(
        "#include <inttypes.h>\n#include <stdio.h>\n#include \"polyplug.h\"\nint main(void) {\n",
    );
    for (name, major) in cases {
        writeln!(
            c,
            "  printf(\"%\" PRIu64 \"\\n\", polyplug_contract_id(\"{name}\", {major}u));"
        )
        .expect("fmt");
    }
    c.push_str(
        "  printf(\"%\" PRIu64 \"\\n\", polyplug_bundle_id(\"rust-guest\"));\n  return 0;\n}\n",
    );
    std::fs::write(&source, c).expect("write");
    let exe = dir.join("ids");
    compile_c(&source, &exe, &[], false).expect("compile");
    let out = Command::new(&exe).output().expect("run");
    let printed: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("number"))
        .collect();
    let mut expected: Vec<u64> = cases
        .iter()
        .map(|(name, major)| ContractId::new(name, *major).id())
        .collect();
    expected.push(BundleId::new("rust-guest").id());
    assert_eq!(printed, expected);
}

#[repr(C)]
struct Two {
    a: extern "C" fn() -> u32,
    b: extern "C" fn(u32) -> u32,
}
// SAFETY: repr(C), two non-null function pointers.
unsafe impl FunctionTable for Two {}

extern "C" fn a() -> u32 {
    1
}
extern "C" fn b(x: u32) -> u32 {
    x + 1
}
static TWO: Two = Two { a, b };

#[test]
fn a_dispatch_table_from_a_static_struct_counts_its_functions() {
    let t = DispatchTable::from_static(&TWO);
    assert_eq!(t.function_count, 2);
    assert_eq!(Two::LEN, 2);
    assert_eq!(t.functions.cast::<Two>(), &TWO as *const Two);
    assert_eq!((TWO.a)() + (TWO.b)(1), 3);
}
