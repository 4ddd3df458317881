//! `cargo xtask ci`: every suite in order, stopping at the first failure.
//!
//! All stages share the workspace's one target directory. Stages that need a different build
//! (loom models) select it with a cargo feature on one crate, so the rest of the workspace is
//! not rebuilt for them.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cmd::{self, Tally, cargo};

/// A loom suite: the crate, its test target, and the feature that swaps in loom's primitives.
/// Each suite includes negative controls (deliberately wrong variants loom must catch).
struct LoomSuite {
    package: &'static str,
    test: &'static str,
    feature: &'static str,
}

/// Every crate's loom model.
const LOOM_SUITES: &[LoomSuite] = &[
    LoomSuite {
        package: "engate-attach",
        test: "loom",
        feature: "loom",
    },
    LoomSuite {
        package: "sqry-admission",
        test: "loom",
        feature: "loom",
    },
    LoomSuite {
        package: "polyplug-runtime",
        test: "loom",
        feature: "loom",
    },
    LoomSuite {
        package: "squib-host",
        test: "loom",
        feature: "loom",
    },
];

/// Preemption bound for loom: enough for the protocols' interleavings, small enough for CI.
const LOOM_MAX_PREEMPTIONS: &str = "2";

/// One CI stage: the name `--stage` takes (no spaces, so it needs no quoting), the heading
/// printed for it, and what it runs.
struct Stage {
    name: &'static str,
    heading: &'static str,
    run: fn(&mut Tally) -> Result<(), String>,
}

const STAGES: &[Stage] = &[
    Stage {
        name: "format",
        heading: "format",
        run: format,
    },
    Stage {
        name: "clippy",
        heading: "clippy",
        run: clippy,
    },
    Stage {
        name: "macos-check",
        heading: "macOS build check",
        run: macos_build_check,
    },
    Stage {
        name: "tests",
        heading: "tests",
        run: tests,
    },
    Stage {
        name: "docs",
        heading: "docs",
        run: docs,
    },
    Stage {
        name: "loom",
        heading: "loom",
        run: loom,
    },
    Stage {
        name: "cross-crate",
        heading: "cross-crate",
        run: cross_crate,
    },
    Stage {
        name: "dependency-policy",
        heading: "dependency policy",
        run: dependency_policy,
    },
    Stage {
        name: "packaging",
        heading: "packaging",
        run: packaging,
    },
    Stage {
        name: "platform-gated",
        heading: "platform-gated suites",
        run: platform_gated,
    },
];

/// Runs every stage, or only the one named `only`.
pub(crate) fn run(only: Option<&str>) -> Result<(), String> {
    let stages: Vec<&Stage> = match only {
        None => STAGES.iter().collect(),
        Some(name) => match STAGES.iter().find(|s| s.name == name) {
            Some(stage) => vec![stage],
            None => {
                let names: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
                return Err(format!(
                    "no CI stage named {name:?}; the stages are: {}",
                    names.join(", ")
                ));
            }
        },
    };
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut times: Vec<(&str, Duration)> = Vec::new();
    let mut failure = None;
    for stage in stages {
        let Stage { name, heading, run } = *stage;
        println!("\n==> ci stage: {heading} (--stage {name})");
        let t = Instant::now();
        let result = run(&mut tally);
        times.push((heading, t.elapsed()));
        println!(
            "==> ci stage: {heading} took {:.1}s",
            t.elapsed().as_secs_f64()
        );
        if let Err(err) = result {
            failure = Some(format!("ci stage '{name}' failed: {err}"));
            break;
        }
    }

    println!("\n==> ci stage times");
    for (name, d) in &times {
        println!("    {name:<24} {:>8.1}s", d.as_secs_f64());
    }
    println!(
        "    {:<24} {:>8.1}s",
        "total",
        started.elapsed().as_secs_f64()
    );
    // A failed stage counts as a failure even when it was not a test that failed.
    let failed = tally.failed + u64::from(failure.is_some() && tally.failed == 0);
    println!("\n{} passed, {} failed", tally.passed, failed);
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

fn format(_: &mut Tally) -> Result<(), String> {
    cmd::run(cargo().args(["fmt", "--all", "--check"]))
        .map_err(|e| format!("{e}; run `cargo fmt --all` and commit"))
}

/// The features that build the workspace's programs (they are off for library users, so a
/// plain `--workspace` build would leave the binaries and their tests out).
const PROGRAM_FEATURES: &str = "squib-host/service";

/// The feature that builds a crate's program, for `cargo bench -p <crate>`.
pub(crate) fn program_features(krate: &str) -> Option<&'static str> {
    PROGRAM_FEATURES
        .split(',')
        .find_map(|f| f.strip_prefix(krate)?.strip_prefix('/'))
}

/// Every feature a user of a published crate may turn on, as `crate/feature,…`: all features
/// of the crates under `crates/` except `default` and the test-only `loom`. Read from the
/// manifests, so a feature added to a crate is linted from the day it lands.
fn shipped_features() -> Result<String, String> {
    let mut manifests = vec![cmd::root().join("crates/polyplug-runtime/capi/Cargo.toml")];
    let crates = std::fs::read_dir(cmd::root().join("crates"))
        .map_err(|e| format!("cannot list crates/: {e}"))?;
    for entry in crates.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if manifest.is_file() {
            manifests.push(manifest);
        }
    }
    manifests.sort();
    let mut features = Vec::new();
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
        let name = manifest_value(&text, "package", "name")
            .ok_or_else(|| format!("{}: no [package] name", manifest.display()))?;
        let mut in_features = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_features = line == "[features]";
            } else if in_features && let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if !key.is_empty() && !key.starts_with('#') && key != "default" && key != "loom" {
                    features.push(format!("{name}/{key}"));
                }
            }
        }
    }
    Ok(features.join(","))
}

/// The string value of `key` in `[section]` of a manifest (enough TOML for `name = "…"`).
fn manifest_value<'a>(text: &'a str, section: &str, key: &str) -> Option<&'a str> {
    let header = format!("[{section}]");
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == header;
        } else if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().trim_matches('"'));
        }
    }
    None
}

/// Lints every target with every shipped feature on (not `--all-features`, which would turn
/// on the test-only `loom` features and lint a model-checking build as if it shipped).
fn clippy(_: &mut Tally) -> Result<(), String> {
    let features = shipped_features()?;
    cmd::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        &features,
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))
}

/// The macOS target the Apple-only code (Mach exception ports, dyld, `proc_pidinfo`) is
/// type-checked and linted for when CI runs elsewhere.
const MACOS_TARGET: &str = "aarch64-apple-darwin";

/// Lints every library and binary for macOS, so the Apple-only FFI is at least compiled on a
/// Linux machine. Test and bench targets are left out: criterion builds C code, which needs an
/// Apple C toolchain. On a macOS host the clippy stage already covers this.
fn macos_build_check(_: &mut Tally) -> Result<(), String> {
    if cfg!(target_os = "macos") {
        println!("this is macOS: the clippy stage already compiled the Apple-only code");
        return Ok(());
    }
    // From the workspace root, so rustup acts on the toolchain rust-toolchain.toml pins.
    let rustup = || {
        let mut c = std::process::Command::new("rustup");
        c.current_dir(cmd::root());
        c
    };
    let installed = rustup()
        .args(["target", "list", "--installed"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == MACOS_TARGET)
        })
        .unwrap_or(false);
    if !installed {
        println!("adding the {MACOS_TARGET} standard library with rustup (once per machine)");
        let added = cmd::succeeds(std::process::Command::new("rustup").args([
            "target",
            "add",
            MACOS_TARGET,
        ]));
        if !added {
            println!(
                "skip: macOS build check: `rustup target add {MACOS_TARGET}` failed; the \
                 Apple-only code is not compiled on this machine"
            );
            return Ok(());
        }
    }
    let features = shipped_features()?;
    cmd::run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "workspace-tests",
        "--target",
        MACOS_TARGET,
        "--lib",
        "--bins",
        "--features",
        &features,
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))
}

fn tests(tally: &mut Tally) -> Result<(), String> {
    prepare_python_oracle();
    // --no-fail-fast: every test binary runs and is counted even after one fails.
    cmd::run_counting(
        cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "workspace-tests",
            "--features",
            PROGRAM_FEATURES,
            "--locked",
            "--no-fail-fast",
        ]),
        tally,
        |_| false,
    )
    .map(drop)
}

/// The `varta==0.2.0` Python package from PyPI is varta-watch's interop oracle. It goes into a
/// virtualenv under `target/` (never the system Python); tests that need it skip, saying why,
/// when it could not be installed.
fn prepare_python_oracle() {
    let venv = cmd::root().join("target/oracle-venv");
    let python = venv.join("bin/python3");
    let ready = || {
        cmd::succeeds(
            std::process::Command::new(&python)
                .args(["-c", "import varta; assert varta.__version__ == '0.2.0'"]),
        )
    };
    if ready() {
        return;
    }
    println!(
        "installing the varta==0.2.0 Python oracle into {}",
        venv.display()
    );
    let made = cmd::succeeds(
        std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv),
    ) && cmd::succeeds(std::process::Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "varta==0.2.0",
    ]));
    if !made || !ready() {
        println!(
            "skip note: could not install the varta==0.2.0 oracle; its interop tests will skip"
        );
    }
}

fn docs(_: &mut Tally) -> Result<(), String> {
    cmd::run(
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )
}

fn loom(tally: &mut Tally) -> Result<(), String> {
    // The loom builds are linted too: their code is compiled nowhere else.
    let mut lint = cargo();
    lint.args(["clippy", "--locked", "--lib"]);
    let mut tests: Vec<&str> = Vec::new();
    for suite in LOOM_SUITES {
        lint.args(["-p", suite.package, "--features"])
            .arg(format!("{}/{}", suite.package, suite.feature));
        if !tests.contains(&suite.test) {
            tests.push(suite.test);
        }
    }
    for test in tests {
        lint.args(["--test", test]);
    }
    cmd::run(lint.args(["--", "-D", "warnings"]))?;
    for suite in LOOM_SUITES {
        cmd::run_counting(
            cargo()
                .args(["test", "--release", "--locked", "-p", suite.package])
                .args(["--features", suite.feature, "--test", suite.test])
                .env("LOOM_MAX_PREEMPTIONS", LOOM_MAX_PREEMPTIONS),
            tally,
            |_| false,
        )?;
    }
    Ok(())
}

/// The workspace's programs and the feature each needs: `cargo build` of one package at a time,
/// because with several `-p` cargo leaves out a binary whose `required-features` were asked
/// for as `pkg/feature`.
const PROGRAMS: &[(&str, Option<&str>)] = &[
    ("squib-host", Some("service")),
    ("engate-attach", Some("cli")),
    ("varta-watch", None),
];

/// Builds the workspace's programs (`squib-host`, `engate`, `varta-watch`) into
/// `target/<profile>/`, where the cross-crate suites look for them.
pub(crate) fn build_programs(release: bool) -> Result<(), String> {
    for (package, feature) in PROGRAMS {
        let mut build = cargo();
        build.args(["build", "--quiet", "--locked", "-p", package, "--bins"]);
        if release {
            build.arg("--release");
        }
        if let Some(feature) = feature {
            build.args(["--features", feature]);
        }
        cmd::run(&mut build)?;
    }
    Ok(())
}

/// The cross-crate suites (`tests/`). They drive the workspace's programs, built here first;
/// a missing program fails the suite instead of skipping it.
fn cross_crate(tally: &mut Tally) -> Result<(), String> {
    build_programs(false)?;
    cmd::run_counting(
        cargo()
            .args([
                "test",
                "-p",
                "workspace-tests",
                "--locked",
                "--no-fail-fast",
            ])
            .env("WORKSPACE_PROGRAMS_REQUIRED", "1"),
        tally,
        |_| false,
    )
    .map(drop)
}

fn dependency_policy(_: &mut Tally) -> Result<(), String> {
    if !cmd::succeeds(cargo().args(["deny", "--version"])) {
        println!("cargo-deny is not installed: installing it from crates.io (once per machine)");
        cmd::run(cargo().args(["install", "cargo-deny", "--locked"]))?;
    }
    println!(
        "note: the advisories check is not run: its database cannot be fetched from this network; \
         bans, licenses and sources are checked offline"
    );
    cmd::run(cargo().args(["deny", "--locked", "check", "bans", "licenses", "sources"]))
}

/// `cargo package` for every published crate, verifying that each one builds from its
/// packaged files alone (path dependencies replaced by the packaged versions), so a missing
/// file, a path-only dependency or absent metadata is found here rather than at release.
fn packaging(_: &mut Tally) -> Result<(), String> {
    let verify_dir = forget_packaged_sources()?;
    let mut package = cargo();
    package
        .args([
            "package",
            "--workspace",
            "--locked",
            "--allow-dirty",
            "--target-dir",
        ])
        .arg(&verify_dir);
    for name in unpublished_members()? {
        package.args(["--exclude", &name]);
    }
    cmd::run(&mut package)
}

/// Removes what an earlier `cargo package` left, and returns the target directory to verify
/// in. Cargo treats the packaged crates as registry crates, which it never rebuilds or
/// re-unpacks for an unchanged version: a crate would be verified against a sibling's
/// *earlier* sources and build. So the verification gets a target directory of its own, made
/// afresh each run, and the sources cargo unpacked into `$CARGO_HOME/registry/src/-<hash>/`
/// (the local registry it verifies against) are removed.
fn forget_packaged_sources() -> Result<std::path::PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cmd::root().join("target"));
    let verify_dir = target.join("package-verify");
    for stale in [target.join("package"), verify_dir.clone()] {
        if stale.exists() {
            std::fs::remove_dir_all(&stale)
                .map_err(|e| format!("cannot remove {}: {e}", stale.display()))?;
        }
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let Some(src) = cargo_home.map(|h| h.join("registry/src")) else {
        return Ok(verify_dir);
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return Ok(verify_dir);
    };
    for registry in registries.flatten() {
        // Local registries (the packaging overlay) are named `-<hash>`, crates.io's is not;
        // removing an unpacked copy only makes cargo unpack it again.
        if registry.file_name().to_string_lossy().starts_with('-') {
            let _ = std::fs::remove_dir_all(registry.path());
        }
    }
    Ok(verify_dir)
}

/// The names of the workspace members marked `publish = false` (xtask, the test library, the
/// plugin fixtures).
fn unpublished_members() -> Result<Vec<String>, String> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
                walk(&path, out);
            } else if path.file_name().is_some_and(|n| n == "Cargo.toml") {
                out.push(path);
            }
        }
    }
    let root = cmd::root();
    let mut manifests = vec![root.join("xtask/Cargo.toml"), root.join("tests/Cargo.toml")];
    walk(&root.join("crates"), &mut manifests);
    let mut names = Vec::new();
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
        if manifest_value(&text, "package", "publish") == Some("false")
            && let Some(name) = manifest_value(&text, "package", "name")
        {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn platform_gated(tally: &mut Tally) -> Result<(), String> {
    // Privileged suites decide at run time and print their own skip lines; report here what
    // this machine offers so a skipped suite is never silent.
    report_device("/dev/userfaultfd", "userfaultfd pager suites");
    report_device("/dev/kvm", "KVM guest suites");
    // (package, test target): the Mach exception-port pager against a live task.
    let macos_suites: &[(&str, &str)] = &[("squib-host", "mach_live")];
    if cfg!(target_os = "macos") {
        for (package, test) in macos_suites {
            cmd::run_counting(
                cargo().args(["test", "--locked", "-p", package, "--test", test]),
                tally,
                |_| false,
            )?;
        }
    } else {
        println!(
            "skip: macOS-only suites (Mach exception-port pager): this is {}, not macOS",
            std::env::consts::OS
        );
    }
    Ok(())
}

fn report_device(dev: &str, what: &str) {
    let path = Path::new(dev);
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => println!("{dev}: usable; {what} can run here"),
        Err(e) if path.exists() => {
            println!("skip note: {dev} exists but cannot be opened ({e}); {what} skip")
        }
        Err(_) => println!("skip note: {dev} is missing; {what} skip"),
    }
}

#[cfg(test)]
mod tests {
    use super::STAGES;

    /// `--stage NAME` takes every stage by a name that needs no quoting in a shell, and no two
    /// stages share one.
    #[test]
    fn stage_names_are_single_words_and_unique() {
        for (i, stage) in STAGES.iter().enumerate() {
            assert!(
                !stage.name.is_empty()
                    && stage
                        .name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '-'),
                "stage {:?} ({}) needs a lowercase name without spaces",
                stage.name,
                stage.heading
            );
            assert!(
                STAGES[..i].iter().all(|s| s.name != stage.name),
                "two stages are named {:?}",
                stage.name
            );
        }
    }
}
