//! Bad input: every broken bundle is refused with a typed error naming the bundle and the
//! path, and the runtime keeps serving what it had.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use polyplug_runtime::manifest::ManifestError;
use polyplug_runtime::{LoadError, RegistrationError, Runtime};

use crate::contracts::{GREETER, Greeter, RELOAD_TEST, ReloadTest};
use crate::fixtures::{BundleSpec, fixtures};

/// A runtime already serving the Rust plugin, to check that failures change nothing.
fn serving() -> Runtime {
    let f = fixtures();
    let rt = Runtime::new(Default::default()).expect("runtime");
    rt.load_bundle(f.bundle(&f.rust_spec("healthy", 1)))
        .expect("healthy");
    rt
}

/// The healthy bundle still answers and nothing else got registered.
fn still_serving(rt: &Runtime) {
    let g = rt.find(&RELOAD_TEST).expect("still served");
    assert_eq!((g.functions::<ReloadTest>().expect("table").version)(), 100);
    assert_eq!(rt.bundles().len(), 1, "no half-loaded bundle");
    assert_eq!(
        rt.registry().contract_count(),
        2,
        "no contract of the failed bundle"
    );
}

fn load_err(rt: &Runtime, dir: &Path) -> LoadError {
    let err = rt.load_bundle(dir).expect_err("must be refused");
    still_serving(rt);
    err
}

/// A C variant bundled as `name` with the standard v1 manifest.
fn c_variant(name: &str, variant: &str) -> std::path::PathBuf {
    let f = fixtures();
    let mut spec = f.c_spec(name, 1);
    spec.library = f.c(variant).to_owned();
    f.bundle(&spec)
}

#[test]
fn a_missing_manifest_names_the_path() {
    let rt = serving();
    let dir = fixtures().scratch("empty");
    match load_err(&rt, &dir) {
        LoadError::Manifest(ManifestError::Missing { path }) => {
            assert_eq!(path, dir.join("manifest.toml"));
        }
        other => panic!("{other:?}"),
    }
    let err = load_err(&rt, &dir.join("does-not-exist"));
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

#[test]
fn a_malformed_manifest_names_the_line() {
    let rt = serving();
    let dir = fixtures().scratch("malformed");
    std::fs::write(
        dir.join("manifest.toml"),
        "name = \"broken\"\nversion = \"1.0.0\"\nprovides = [\"a@1.0\",\n  oops]\n",
    )
    .expect("write");
    let err = load_err(&rt, &dir);
    match &err {
        LoadError::Manifest(ManifestError::Syntax { line, path, .. }) => {
            assert_eq!(*line, 4);
            assert_eq!(path, &dir.join("manifest.toml"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("manifest.toml:4:"), "{err}");

    std::fs::write(dir.join("manifest.toml"), b"name = \"\xff\"\n").expect("write");
    assert!(matches!(
        load_err(&rt, &dir),
        LoadError::Manifest(ManifestError::NotUtf8 { .. })
    ));
    std::fs::write(
        dir.join("manifest.toml"),
        "name = \"x\"\nversion = \"1.0.0\"\n",
    )
    .expect("write");
    assert!(matches!(
        load_err(&rt, &dir),
        LoadError::Manifest(ManifestError::NoLibraryForPlatform { .. })
    ));
}

#[test]
fn a_wrong_abi_version_is_refused_before_init() {
    let rt = serving();
    let dir = c_variant("c-bad-abi", "bad-abi");
    let err = load_err(&rt, &dir);
    match &err {
        LoadError::AbiMismatch {
            bundle,
            path,
            found,
            expected,
        } => {
            assert_eq!(bundle, "c-bad-abi");
            assert_eq!(path, &dir.join("libc-guest-bad-abi.so"));
            assert_eq!(
                (*found, *expected),
                (99, polyplug_runtime::abi::ABI_VERSION)
            );
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("c-bad-abi") && text.contains("libc-guest-bad-abi.so"),
        "{text}"
    );
}

#[test]
fn missing_symbols_are_named() {
    let rt = serving();
    for (variant, symbol) in [
        ("no-sentinel", "polyplug_abi_version"),
        ("no-init", "polyplug_init"),
    ] {
        match load_err(&rt, &c_variant(&format!("c-{variant}"), variant)) {
            LoadError::MissingSymbol {
                symbol: missing,
                bundle,
                ..
            } => {
                assert_eq!(missing, symbol);
                assert_eq!(bundle, format!("c-{variant}"));
            }
            other => panic!("{variant}: {other:?}"),
        }
    }
}

#[test]
fn an_init_that_fails_is_reported_with_its_code() {
    let rt = serving();
    match load_err(&rt, &c_variant("c-init-fails", "init-fails")) {
        LoadError::InitFailed { code, bundle, .. } => {
            assert_eq!(code, -42);
            assert_eq!(bundle, "c-init-fails");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_registrations_are_typed() {
    let rt = serving();
    let registration = |name: &str, variant: &str| match load_err(&rt, &c_variant(name, variant)) {
        LoadError::Registration { source, bundle, .. } => {
            assert_eq!(bundle, name);
            source
        }
        other => panic!("{variant}: {other:?}"),
    };
    match registration("c-bad-utf8", "bad-utf8") {
        RegistrationError::NonUtf8 { field, lossy } => {
            assert_eq!(field, "contract name");
            assert!(lossy.starts_with("c."), "{lossy}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        registration("c-dup", "dup-provider"),
        RegistrationError::Duplicate {
            contract: "c.greeter".into()
        }
    );
    assert!(matches!(
        registration("c-id-mismatch", "id-mismatch"),
        RegistrationError::IdMismatch { .. }
    ));
}

#[test]
fn registrations_must_match_the_manifest() {
    let f = fixtures();
    let rt = serving();
    // The plugin registers shared.math, which this manifest does not declare.
    let undeclared = f.bundle(&BundleSpec::new(
        "c-undeclared",
        "1.0.0",
        f.c("v1"),
        &["c.greeter@1.0"],
    ));
    match load_err(&rt, &undeclared) {
        LoadError::Registration {
            source: RegistrationError::Undeclared { contract },
            ..
        } => assert_eq!(contract, "shared.math@1.0"),
        other => panic!("{other:?}"),
    }
    // The manifest declares a contract the plugin does not register, or a higher minor.
    for provides in [
        ["c.greeter@1.0", "shared.math@1.0", "c.nothing@1.0"].as_slice(),
        ["c.greeter@1.5", "shared.math@1.0"].as_slice(),
    ] {
        let dir = f.bundle(&BundleSpec::new("c-missing", "1.0.0", f.c("v1"), provides));
        match load_err(&rt, &dir) {
            LoadError::MissingContract {
                contract, bundle, ..
            } => {
                assert_eq!(bundle, "c-missing");
                assert!(contract == "c.nothing@1.0" || contract == "c.greeter@1.5");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn missing_or_invalid_library_files_are_refused() {
    let f = fixtures();
    let rt = serving();
    let dir = f.scratch("no-library");
    std::fs::write(
        dir.join("manifest.toml"),
        "name = \"c-gone\"\nversion = \"1.0.0\"\n[library]\nlinux = \"libgone.so\"\nmacos = \"libgone.dylib\"\n",
    )
    .expect("manifest");
    match load_err(&rt, &dir) {
        LoadError::LibraryMissing { bundle, path } => {
            assert_eq!(bundle, "c-gone");
            assert!(path.ends_with(if cfg!(target_os = "macos") {
                "libgone.dylib"
            } else {
                "libgone.so"
            }));
        }
        other => panic!("{other:?}"),
    }
    let garbage = dir.join("libgarbage.so");
    std::fs::write(&garbage, b"this is not an ELF file").expect("garbage");
    let dir = f.bundle(&BundleSpec::new("c-garbage", "1.0.0", &garbage, &[]));
    match load_err(&rt, &dir) {
        LoadError::Open {
            bundle, message, ..
        } => {
            assert_eq!(bundle, "c-garbage");
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn loading_the_same_bundle_twice_is_refused() {
    let f = fixtures();
    let rt = serving();
    match load_err(&rt, &f.bundle(&f.rust_spec("healthy", 2))) {
        LoadError::AlreadyLoaded { bundle, .. } => assert_eq!(bundle, "healthy"),
        other => panic!("{other:?}"),
    }
}

/// Paths are bytes: a bundle directory whose name is not UTF-8 loads normally.
#[test]
fn a_non_utf8_bundle_directory_loads() {
    let f = fixtures();
    let rt = Runtime::new(Default::default()).expect("runtime");
    let dir = f
        .scratch("bytes")
        .join(std::ffi::OsStr::from_bytes(b"bundle-\xff\xfe"));
    std::fs::create_dir_all(&dir).expect("dir");
    let spec = f.c_spec("c-bytes", 1);
    std::fs::write(dir.join("manifest.toml"), spec.manifest()).expect("manifest");
    std::os::unix::fs::symlink(&spec.library, dir.join("libc-guest-v1.so")).expect("link");
    let info = rt.load_bundle(&dir).expect("load from a non-UTF-8 path");
    assert_eq!(info.dir, dir);
    let g = rt.find(&GREETER).expect("greeter");
    assert_eq!((g.functions::<Greeter>().expect("t").version)(), 100);
}
