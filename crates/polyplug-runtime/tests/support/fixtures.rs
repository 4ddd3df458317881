//! Real plugins for the tests, the bench and the demo, built on first use.
//!
//! - The Rust plugin (`fixtures/rust-guest`, package `polyplug-fixture-rust-guest`) is built
//!   twice with cargo, v1 and v2 (feature `v2`), each into its own target directory under
//!   `<target>/polyplug-fixtures/`; cargo's fingerprints make later builds instant.
//! - The C plugin (`fixtures/c-guest/guest.c`) is compiled with the system C compiler (`$CC`
//!   or `cc`) once per variant (v1, v2, and the broken ones the bad-input tests load).
//!
//! Each process builds at most once (a `OnceLock`). Bundle directories (a `manifest.toml` and
//! a symlink to the library) are made per test under `<target>/polyplug-fixtures/bundles/<pid>`;
//! directories of processes that no longer exist are swept at start.
//!
//! This file is included by the integration tests, the bench and the demo with `#[path]`;
//! each uses only part of it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The C plugin's variants: name and compiler flags.
pub(crate) const C_VARIANTS: &[(&str, &[&str])] = &[
    ("v1", &["-DVERSION=1"]),
    ("v2", &["-DVERSION=2"]),
    ("dependent-v1", &["-DVERSION=1", "-DROLE_DEPENDENT"]),
    ("dependent-v2", &["-DVERSION=2", "-DROLE_DEPENDENT"]),
    ("bad-abi", &["-DVERSION=1", "-DBAD_ABI"]),
    ("no-sentinel", &["-DVERSION=1", "-DNO_SENTINEL"]),
    ("no-init", &["-DVERSION=1", "-DNO_INIT"]),
    ("init-fails", &["-DVERSION=1", "-DINIT_FAILS"]),
    ("bad-utf8", &["-DVERSION=1", "-DBAD_UTF8"]),
    ("dup-provider", &["-DVERSION=1", "-DDUP_PROVIDER"]),
    ("id-mismatch", &["-DVERSION=1", "-DID_MISMATCH"]),
    (
        "v2-changed-signature",
        &["-DVERSION=2", "-DCHANGED_SIGNATURE"],
    ),
    ("stateful", &["-DVERSION=1", "-DSTATEFUL"]),
    ("relay", &["-DVERSION=1", "-DROLE_RELAY"]),
    (
        "stateful-refuses",
        &["-DVERSION=2", "-DSTATEFUL", "-DREFUSE_STATE"],
    ),
];

/// The Rust plugin's library file name on this platform.
pub(crate) const RUST_LIB: &str = if cfg!(target_os = "macos") {
    "libpolyplug_fixture_rust_guest.dylib"
} else {
    "libpolyplug_fixture_rust_guest.so"
};

/// The built plugins.
#[derive(Debug)]
pub(crate) struct Fixtures {
    /// `<target>/polyplug-fixtures`.
    pub(crate) root: PathBuf,
    /// This process's bundle directories.
    pub(crate) bundles: PathBuf,
    /// The Rust plugin, v1.
    pub(crate) rust_v1: PathBuf,
    /// The Rust plugin, v2.
    pub(crate) rust_v2: PathBuf,
    /// The Rust plugin, v1 with `reload.test`'s `add` changed to `u64` (feature
    /// `changed-signature`): an incompatible change under the same major.
    pub(crate) rust_changed: PathBuf,
    /// The Rust plugin, v1 with `rust.counter@1`, whose count is handed over on reload, and
    /// `rust.relay@1`, which calls a host service and the C plugin (feature `services`).
    pub(crate) rust_services: PathBuf,
    /// The C plugin's variants.
    pub(crate) c: HashMap<&'static str, PathBuf>,
}

/// polyplug-runtime's directory, where the fixtures live (also from the tests of
/// polyplug-runtime-capi, whose directory is inside it).
pub(crate) fn crate_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if dir.join("fixtures").is_dir() {
        dir
    } else {
        dir.join("..")
    }
}

/// The workspace root.
pub(crate) fn workspace_dir() -> PathBuf {
    crate_dir()
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| crate_dir().join("../.."))
}

/// The cargo target directory this binary was built in.
pub(crate) fn target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors() {
            let name = dir.file_name().and_then(|n| n.to_str());
            if matches!(name, Some("debug" | "release"))
                && let Some(parent) = dir.parent()
            {
                return parent.to_owned();
            }
        }
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
}

/// The fixtures, built on first use. Panics with the build output if a build fails.
pub(crate) fn fixtures() -> &'static Fixtures {
    match try_fixtures() {
        Ok(f) => f,
        Err(e) => panic!("building the plugin fixtures failed:\n{e}"),
    }
}

/// The fixtures, built on first use.
pub(crate) fn try_fixtures() -> Result<&'static Fixtures, String> {
    static FIXTURES: OnceLock<Result<Fixtures, String>> = OnceLock::new();
    FIXTURES.get_or_init(build).as_ref().map_err(Clone::clone)
}

fn build() -> Result<Fixtures, String> {
    let root = target_dir().join("polyplug-fixtures");
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;

    // Both Rust builds at once (separate target directories, separate cargo locks).
    let cargo = env!("CARGO");
    let spawn = |flavour: &str, features: &[&str]| {
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_dir())
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "polyplug-fixture-rust-guest",
            ])
            .args(features)
            .arg("--target-dir")
            .arg(root.join(flavour))
            .env_remove("CARGO_TARGET_DIR");
        cmd.output()
    };
    let (v1, v2, changed, services) = std::thread::scope(|s| {
        let v2 = s.spawn(|| spawn("rust-v2", &["--features", "v2"]));
        let changed = s.spawn(|| spawn("rust-changed", &["--features", "changed-signature"]));
        let services = s.spawn(|| spawn("rust-services", &["--features", "services"]));
        let v1 = spawn("rust-v1", &[]);
        (v1, v2.join(), changed.join(), services.join())
    });
    for (flavour, result) in [
        ("v1", v1),
        ("v2", v2.map_err(|_| "panicked".to_owned())?),
        (
            "changed-signature",
            changed.map_err(|_| "panicked".to_owned())?,
        ),
        ("services", services.map_err(|_| "panicked".to_owned())?),
    ] {
        let output = result.map_err(|e| format!("cargo build of the Rust guest {flavour}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo build of the Rust guest {flavour} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    let rust_v1 = root.join("rust-v1/release").join(RUST_LIB);
    let rust_v2 = root.join("rust-v2/release").join(RUST_LIB);
    let rust_changed = root.join("rust-changed/release").join(RUST_LIB);
    let rust_services = root.join("rust-services/release").join(RUST_LIB);

    let mut c = HashMap::new();
    let c_dir = root.join("c");
    std::fs::create_dir_all(&c_dir).map_err(|e| format!("{}: {e}", c_dir.display()))?;
    for (variant, flags) in C_VARIANTS {
        let out = c_dir.join(format!("libc-guest-{variant}.so"));
        compile_c(
            &crate_dir().join("fixtures/c-guest/guest.c"),
            &out,
            flags,
            true,
        )?;
        c.insert(*variant, out);
    }

    let bundles = root.join("bundles").join(std::process::id().to_string());
    sweep_dead(&root.join("bundles"));
    std::fs::create_dir_all(&bundles).map_err(|e| format!("{}: {e}", bundles.display()))?;
    Ok(Fixtures {
        root,
        bundles,
        rust_v1,
        rust_v2,
        rust_changed,
        rust_services,
        c,
    })
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The C API libraries of `polyplug-runtime-capi` (static, shared), built on first use with
/// cargo into `<target>/polyplug-fixtures/capi` (a target directory of their own: the one the
/// running tests came from is locked by the cargo that runs them).
pub(crate) fn capi_libraries() -> Result<&'static (PathBuf, PathBuf), String> {
    static LIBS: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    LIBS.get_or_init(|| {
        let dir = target_dir().join("polyplug-fixtures").join("capi");
        let output = Command::new(env!("CARGO"))
            .current_dir(workspace_dir())
            .args([
                "build",
                "--quiet",
                "-p",
                "polyplug-runtime-capi",
                "--target-dir",
            ])
            .arg(&dir)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .map_err(|e| format!("cargo build -p polyplug-runtime-capi: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo build -p polyplug-runtime-capi failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let shared = if cfg!(target_os = "macos") {
            "libpolyplug_runtime_capi.dylib"
        } else {
            "libpolyplug_runtime_capi.so"
        };
        let built = dir.join("debug");
        // The shared library's SONAME names major version 0: what a linked program looks for.
        let soname = built.join("libpolyplug_runtime_capi.so.0");
        if cfg!(target_os = "linux") && !soname.exists() {
            let _ = std::os::unix::fs::symlink(shared, &soname);
        }
        Ok((built.join("libpolyplug_runtime_capi.a"), built.join(shared)))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Compiles `source` into `out` (a shared library if `shared`) unless `out` is newer than the
/// source and the header. Writes a temporary file and renames it, so concurrent test
/// processes never load a half-written library.
pub(crate) fn compile_c(
    source: &Path,
    out: &Path,
    flags: &[&str],
    shared: bool,
) -> Result<(), String> {
    let header = crate_dir().join("include/polyplug.h");
    let host_header = crate_dir().join("capi/include/polyplug_runtime.h");
    let newest_input = [modified(source), modified(&header), modified(&host_header)]
        .into_iter()
        .flatten()
        .max();
    if let (Some(built), Some(input)) = (modified(out), newest_input)
        && built >= input
    {
        return Ok(());
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut cmd = Command::new(&cc);
    if shared {
        cmd.args(["-shared", "-fPIC"]);
    }
    cmd.args(["-O2", "-std=c11", "-Wall", "-Wextra"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg("-I")
        .arg(crate_dir().join("capi/include"))
        .arg(source)
        .args(flags)
        .arg("-o")
        .arg(&tmp);
    let output = cmd.output().map_err(|e| format!("{cc}: {e}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{cc} {} {flags:?} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}

/// Removes `bundles/<pid>` directories of processes that no longer exist.
fn sweep_dead(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !platform_primitives::process::exists(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A bundle to write: its manifest fields and its library.
#[derive(Debug, Clone)]
pub(crate) struct BundleSpec {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) library: PathBuf,
    pub(crate) provides: Vec<String>,
    pub(crate) depends: Vec<String>,
    /// Contracts required from other bundles (`name@major.minor`); written only if any.
    pub(crate) requires: Vec<String>,
    pub(crate) reload_with_dependencies: bool,
}

impl BundleSpec {
    pub(crate) fn new(name: &str, version: &str, library: &Path, provides: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            library: library.to_owned(),
            provides: provides.iter().map(|s| s.to_string()).collect(),
            depends: Vec::new(),
            requires: Vec::new(),
            reload_with_dependencies: false,
        }
    }

    pub(crate) fn depends(mut self, bundle: &str) -> Self {
        self.depends.push(bundle.to_owned());
        self
    }

    pub(crate) fn requires(mut self, contract: &str) -> Self {
        self.requires.push(contract.to_owned());
        self
    }

    pub(crate) fn reload_with_dependencies(mut self) -> Self {
        self.reload_with_dependencies = true;
        self
    }

    pub(crate) fn manifest(&self) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let file = self
            .library
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let requires = if self.requires.is_empty() {
            String::new()
        } else {
            format!("requires = [{}]\n", list(&self.requires))
        };
        format!(
            "# written by polyplug-runtime's test fixtures\n\
             name = {:?}\nversion = {:?}\nprovides = [{}]\ndepends = [{}]\n{requires}\
             reload_with_dependencies = {}\n\n[library]\nlinux = {file:?}\nmacos = {file:?}\n",
            self.name,
            self.version,
            list(&self.provides),
            list(&self.depends),
            self.reload_with_dependencies,
        )
    }
}

impl Fixtures {
    /// A C variant's library.
    pub(crate) fn c(&self, variant: &str) -> &Path {
        match self.c.get(variant) {
            Some(path) => path,
            None => panic!("no C fixture variant {variant:?}"),
        }
    }

    /// A fresh, unique directory for one test.
    pub(crate) fn scratch(&self, label: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self
            .bundles
            .join(format!("{label}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    /// Writes a bundle directory: `manifest.toml` and a symlink to the library.
    pub(crate) fn bundle(&self, spec: &BundleSpec) -> PathBuf {
        let dir = self.scratch(&spec.name);
        std::fs::write(dir.join("manifest.toml"), spec.manifest()).expect("manifest");
        if let Some(file) = spec.library.file_name() {
            std::os::unix::fs::symlink(&spec.library, dir.join(file)).expect("library link");
        }
        dir
    }

    /// The Rust plugin's standard bundle, version 1 or 2, under `name`.
    pub(crate) fn rust_spec(&self, name: &str, version: u32) -> BundleSpec {
        if version >= 2 {
            BundleSpec::new(
                name,
                "2.0.0",
                &self.rust_v2,
                &["reload.test@1.0", "shared.math@1.2", "rust.v2only@1.0"],
            )
        } else {
            BundleSpec::new(
                name,
                "1.0.0",
                &self.rust_v1,
                &["reload.test@1.0", "shared.math@1.1"],
            )
        }
    }

    /// The C plugin's standard bundle, version 1 or 2, under `name`.
    pub(crate) fn c_spec(&self, name: &str, version: u32) -> BundleSpec {
        if version >= 2 {
            BundleSpec::new(
                name,
                "2.0.0",
                self.c("v2"),
                &["c.greeter@1.1", "shared.math@1.0", "c.extra@1.0"],
            )
        } else {
            BundleSpec::new(
                name,
                "1.0.0",
                self.c("v1"),
                &["c.greeter@1.0", "shared.math@1.0"],
            )
        }
    }

    /// A pair of bundle directories (v1, v2) of the Rust plugin under `name`.
    pub(crate) fn rust_pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.bundle(&self.rust_spec(name, 1)),
            self.bundle(&self.rust_spec(name, 2)),
        )
    }

    /// A pair of bundle directories (v1, v2) of the C plugin under `name`.
    pub(crate) fn c_pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.bundle(&self.c_spec(name, 1)),
            self.bundle(&self.c_spec(name, 2)),
        )
    }
}
