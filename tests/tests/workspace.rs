//! Workspace hygiene that every crate must keep to be published on its own: each product crate
//! has a README, a CHANGELOG with an Unreleased section, inherits the workspace lints, builds
//! its docs for Linux and macOS, and carries a crate-level doc comment.

use std::path::{Path, PathBuf};

/// The published crates: name and folder under `crates/`.
const PUBLISHED: &[(&str, &str)] = &[
    ("platform-primitives", "platform-primitives"),
    ("squib-host", "squib-host"),
    ("engate-attach", "engate-attach"),
    ("varta-watch", "varta-watch"),
    ("polyplug-runtime", "polyplug-runtime"),
    // The C API packaged as static and shared libraries, beside the crate it packages.
    ("polyplug-runtime-capi", "polyplug-runtime/capi"),
    ("sqry-admission", "sqry-admission"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_published_crate_stands_alone() {
    for (name, folder) in PUBLISHED {
        let dir = root().join("crates").join(folder);
        let manifest = read(&dir.join("Cargo.toml"));
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name}: crates/{folder} holds another crate"
        );
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{name}: must inherit workspace lints"
        );
        assert!(
            manifest.contains("description = "),
            "{name}: needs a description"
        );
        assert!(
            !manifest.contains("publish = false"),
            "{name}: must be publishable"
        );
        // What crates.io and docs.rs show: where the code lives, where its docs are, and how
        // it is found.
        for key in [
            "repository",
            "homepage",
            "documentation",
            "keywords",
            "categories",
        ] {
            assert!(
                manifest.lines().any(
                    |l| l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}."))
                ),
                "{name}: the manifest has no `{key}`"
            );
        }
        assert!(
            manifest.contains("[package.metadata.docs.rs]") && manifest.contains("apple-darwin"),
            "{name}: docs.rs must cover Linux and macOS"
        );
        let changelog = read(&dir.join("CHANGELOG.md"));
        assert!(
            changelog.contains("## [Unreleased]"),
            "{name}: CHANGELOG needs [Unreleased]"
        );
        let readme = read(&dir.join("README.md"));
        assert!(
            readme.starts_with(&format!("# {name}")),
            "{name}: README must open with its name"
        );
        let lib = read(&dir.join("src/lib.rs"));
        assert!(
            lib.starts_with("//! "),
            "{name}: lib.rs must open with crate docs"
        );
    }
}

#[test]
fn workspace_members_are_exactly_the_documented_layout() {
    let mut found: Vec<String> = std::fs::read_dir(root().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut expected: Vec<String> = PUBLISHED
        .iter()
        .filter(|(_, folder)| !folder.contains('/'))
        .map(|(name, _)| name.to_string())
        .collect();
    expected.sort();
    assert_eq!(
        found, expected,
        "docs/ARCHITECTURE.md's code map must list every crate"
    );
    let architecture = read(&root().join("docs/ARCHITECTURE.md"));
    for (name, _) in PUBLISHED {
        assert!(
            architecture.contains(&format!("`{name}`")),
            "ARCHITECTURE.md misses {name}"
        );
    }
}

/// Crates outside [`PUBLISHED`] that hold the same fence: the plugin fixture polyplug-runtime's
/// tests load, xtask, and the workspace-tests library (its counting allocator and a page-cache
/// advice allow unsafe code locally).
const ALSO_FENCED: &[&str] = &[
    "crates/polyplug-runtime/fixtures/rust-guest",
    "xtask",
    "tests",
];

/// The crate roots under `src`: `lib.rs`, `main.rs`, and each program in `bin/` (`bin/x.rs` or
/// `bin/x/main.rs`).
fn crate_roots(src: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|r| src.join(r))
        .filter(|p| p.is_file())
        .collect();
    if let Ok(programs) = std::fs::read_dir(src.join("bin")) {
        for program in programs {
            let path = program.expect("entry").path();
            if path.is_dir() {
                roots.push(path.join("main.rs"));
            } else if path.extension().is_some_and(|e| e == "rs") {
                roots.push(path);
            }
        }
    }
    roots
}

/// Every crate root — each published library, each of their programs in `src/bin/`, and the
/// [`ALSO_FENCED`] crates — denies unsafe code (`#![deny(unsafe_code)]` or `forbid`), so the
/// compiler refuses an unsafe block anywhere the crate's `sys` seam (a `sys/` folder or a
/// `sys.rs` module, which says `#![allow(unsafe_code)]`) does not allow one. Every `unsafe`
/// block or impl carries a `SAFETY:` comment just above it; outside `sys` each one stands under
/// an explicit, local `#[allow(unsafe_code)]`; platform-primitives keeps all of its unsafe code
/// in `sys/`.
#[test]
fn unsafe_code_is_fenced_documented_and_primitives_keep_it_in_sys() {
    let crates = PUBLISHED
        .iter()
        .map(|(name, folder)| (*name, root().join("crates").join(folder)))
        .chain(
            ALSO_FENCED
                .iter()
                .map(|folder| (*folder, root().join(folder))),
        );
    let mut roots = 0;
    let mut checked = 0;
    for (name, dir) in crates {
        let src = dir.join("src");
        for crate_root in crate_roots(&src) {
            let text = read(&crate_root);
            assert!(
                text.contains("#![deny(unsafe_code)]") || text.contains("#![forbid(unsafe_code)]"),
                "{name}: {} does not deny unsafe code",
                crate_root.display()
            );
            roots += 1;
        }
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = read(&path);
                let lines: Vec<&str> = text.lines().collect();
                let in_sys = path
                    .strip_prefix(&src)
                    .expect("below src")
                    .components()
                    .any(|c| c.as_os_str() == "sys" || c.as_os_str() == "sys.rs");
                for (no, line) in lines.iter().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    if !(code.contains("unsafe {") || code.contains("unsafe impl")) {
                        continue;
                    }
                    checked += 1;
                    if name == "platform-primitives" {
                        assert!(in_sys, "{}:{}: unsafe outside sys/", path.display(), no + 1);
                    }
                    // A macro's body (`$crate::…`) expands in its user's crate, under its lints.
                    let allowed = in_sys
                        || code.contains("$crate")
                        || lines[no.saturating_sub(8)..no]
                            .iter()
                            .any(|l| l.contains("allow(unsafe_code)"));
                    assert!(
                        allowed,
                        "{}:{}: unsafe outside sys without a local #[allow(unsafe_code)]",
                        path.display(),
                        no + 1
                    );
                    let documented = lines[no.saturating_sub(6)..no]
                        .iter()
                        .any(|l| l.contains("SAFETY:"));
                    assert!(
                        documented,
                        "{}:{}: unsafe without a SAFETY comment",
                        path.display(),
                        no + 1
                    );
                }
            }
        }
    }
    // Seven libraries, three programs, the fixture, xtask and workspace-tests.
    assert!(
        roots >= 13,
        "the scan found only {roots} crate roots: is it reading the crates?"
    );
    assert!(
        checked > 50,
        "the scan found only {checked} unsafe sites: is it reading the crates?"
    );
}

/// polyplug-runtime's public error enums are `#[non_exhaustive]` (a new failure mode is not a
/// breaking change), and the values that do nothing unless used — guards, transactions,
/// builders, requests — are `#[must_use]`.
#[test]
fn polyplug_runtime_errors_are_non_exhaustive_and_handles_must_use() {
    let src = root().join("crates/polyplug-runtime/src");
    let mut sources = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push(read(&path));
            }
        }
    }
    // The attributes in the few lines above an item's `pub enum` / `pub struct` line.
    let attributes_of = |item: &str| -> Option<String> {
        sources.iter().find_map(|text| {
            let lines: Vec<&str> = text.lines().collect();
            let at = lines.iter().position(|l| {
                l.starts_with(item) && l[item.len()..].starts_with([' ', '<', '(', '{'])
            })?;
            Some(lines[at.saturating_sub(6)..at].join("\n"))
        })
    };
    let mut missing = Vec::new();
    for error in [
        "BuildError",
        "RegistrationError",
        "LoadError",
        "ReloadError",
        "UnloadError",
        "ManifestError",
        "RegistryError",
        "LookupError",
    ] {
        match attributes_of(&format!("pub enum {error}")) {
            Some(attrs) if attrs.contains("#[non_exhaustive]") => {}
            Some(_) => missing.push(format!("{error}: #[non_exhaustive]")),
            None => missing.push(format!("{error}: not found")),
        }
    }
    for handle in [
        "InterfaceGuard",
        "OwnedInterface",
        "CachedInterface",
        "ReloadTransaction",
        "RuntimeBuilder",
        "ReloadRequest",
    ] {
        match attributes_of(&format!("pub struct {handle}")) {
            Some(attrs) if attrs.contains("#[must_use") => {}
            Some(_) => missing.push(format!("{handle}: #[must_use]")),
            None => missing.push(format!("{handle}: not found")),
        }
    }
    assert!(missing.is_empty(), "missing: {missing:?}");
}

/// C exports live only in the FFI crate: polyplug-runtime defines no `polyplug_runtime_*`
/// C function (two versions of it in one binary would collide); polyplug-runtime-capi does,
/// and ships its header beside its manifest.
#[test]
fn the_c_api_is_exported_only_by_the_capi_crate() {
    let runtime = root().join("crates/polyplug-runtime/src");
    let mut dirs = vec![runtime];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = read(&path);
                assert!(
                    !text.contains("extern \"C\" fn polyplug_runtime_"),
                    "{}: a C API function outside polyplug-runtime-capi",
                    path.display()
                );
            }
        }
    }
    let capi = root().join("crates/polyplug-runtime/capi");
    assert!(read(&capi.join("src/sys/mod.rs")).contains("fn polyplug_runtime_new"));
    assert!(capi.join("include/polyplug_runtime.h").is_file());
    assert!(capi.join("polyplug-runtime-capi.pc.in").is_file());
}
