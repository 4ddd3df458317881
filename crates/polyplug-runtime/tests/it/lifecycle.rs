//! The life of a library version: private copies, `polyplug_fini`, files replaced on disk,
//! guest logs.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use polyplug_runtime::{ReloadRequest, Runtime};

use crate::contracts::{GREETER, Greeter, RELOAD_TEST, ReloadTest, greeting};
use crate::fixtures::fixtures;

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Each version is loaded from its own private copy, removed once the version is closed; a
/// runtime's own copy directory is private (0700) and removed with the runtime.
#[test]
fn every_version_gets_a_private_copy_removed_after_close() {
    let f = fixtures();
    let (v1, v2) = f.c_pair("c-copies");
    let copies = f.scratch("copies");
    let rt = Runtime::builder()
        .hot_reload(true)
        .copy_dir(&copies)
        .build()
        .expect("runtime");
    rt.load_bundle(&v1).expect("load");
    assert_eq!(files_in(&copies), vec!["c-copies.1.libc-guest-v1.so"]);
    rt.reload(ReloadRequest::new("c-copies").from_dir(&v2))
        .expect("reload");
    assert_eq!(
        files_in(&copies),
        vec!["c-copies.2.libc-guest-v2.so"],
        "old copy removed"
    );
    rt.unload("c-copies").expect("unload");
    assert!(files_in(&copies).is_empty());

    let rt = Runtime::new(Default::default()).expect("runtime");
    rt.load_bundle(&v1).expect("load");
    let own = std::env::temp_dir()
        .read_dir()
        .expect("tmp")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("polyplug-{}-", std::process::id())))
                && files_in(p).iter().any(|f| f.starts_with("c-copies."))
        })
        .expect("the runtime's copy directory");
    let mode = std::fs::metadata(&own).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    drop(rt);
    assert!(!own.exists(), "copy directory removed with the runtime");
}

/// `polyplug_fini` runs once per version, before its library is closed.
#[test]
fn fini_runs_before_each_version_is_closed() {
    let f = fixtures();
    let (v1, v2) = f.c_pair("c-fini");
    let rt = Runtime::builder()
        .hot_reload(true)
        .build()
        .expect("runtime");
    rt.load_bundle(&v1).expect("load");
    assert!(!v1.join("fini.log").exists());
    rt.reload(ReloadRequest::new("c-fini").from_dir(&v2))
        .expect("reload");
    let log = std::fs::read_to_string(v1.join("fini.log")).expect("v1 finalised");
    assert_eq!(log, "c-guest v1 fini\n");
    rt.unload("c-fini").expect("unload");
    let log = std::fs::read_to_string(v2.join("fini.log")).expect("v2 finalised");
    assert_eq!(log, "c-guest v2 fini\n");
}

/// A library file replaced in place on disk is picked up by a reload of the same directory:
/// the new version is loaded from a new private path, never confused with the image already
/// mapped.
#[test]
fn a_library_replaced_on_disk_is_reloaded_from_the_same_directory() {
    let f = fixtures();
    let dir = f.scratch("in-place");
    let spec = f.c_spec("c-in-place", 1);
    std::fs::write(dir.join("manifest.toml"), spec.manifest()).expect("manifest");
    let library = dir.join("libc-guest-v1.so");
    std::fs::copy(f.c("v1"), &library).expect("copy v1");
    let rt = Runtime::builder()
        .hot_reload(true)
        .build()
        .expect("runtime");
    rt.load_bundle(&dir).expect("load");
    let version = |rt: &Runtime| {
        let g = rt.find(&GREETER).expect("greeter");
        let t = g.functions::<Greeter>().expect("table");
        ((t.version)(), greeting(t))
    };
    assert_eq!(version(&rt), (100, "hello from C v1".to_owned()));
    // Deploy v2 over the same file name (a rename, as deploy tools do).
    let staged = dir.join(".staged.so");
    std::fs::copy(f.c("v2"), &staged).expect("stage v2");
    std::fs::rename(&staged, &library).expect("replace");
    // The manifest still declares the v1 contract set, which v2 satisfies (and c.extra is
    // undeclared): declare it.
    std::fs::write(
        dir.join("manifest.toml"),
        f.c_spec("c-in-place", 2)
            .manifest()
            .replace("libc-guest-v2.so", "libc-guest-v1.so"),
    )
    .expect("manifest v2");
    let report = rt
        .reload(ReloadRequest::new("c-in-place"))
        .expect("reload in place");
    assert_eq!(report.to.major, 2);
    assert_eq!(version(&rt), (200, "hello from C v2".to_owned()));
}

/// Guests' log lines reach the runtime's log callback with their bundle.
#[test]
fn guest_logs_reach_the_log_callback() {
    let f = fixtures();
    let lines: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = Arc::clone(&lines);
    let rt = Runtime::builder()
        .hot_reload(true)
        .on_log(move |r| {
            sink.lock()
                .expect("lines")
                .push((r.bundle.to_owned(), r.message.to_owned()));
        })
        .build()
        .expect("runtime");
    let (c_v1, _) = f.c_pair("c-logs");
    let (rust_v1, rust_v2) = f.rust_pair("rust-logs");
    rt.load_bundle(&c_v1).expect("c");
    rt.load_bundle(&rust_v1).expect("rust");
    rt.reload(ReloadRequest::new("rust-logs").from_dir(&rust_v2))
        .expect("reload");
    let g = rt.find(&RELOAD_TEST).expect("find");
    assert_eq!((g.functions::<ReloadTest>().expect("t").version)(), 200);
    let lines = lines.lock().expect("lines");
    let has = |bundle: &str, text: &str| lines.iter().any(|(b, m)| b == bundle && m.contains(text));
    assert!(has("c-logs", "c-guest v1 init (reload=0)"), "{lines:?}");
    assert!(
        has(
            "rust-logs",
            "rust-guest v1 init for bundle rust-logs (reload: false)"
        ),
        "{lines:?}"
    );
    assert!(
        has(
            "rust-logs",
            "rust-guest v2 init for bundle rust-logs (reload: true)"
        ),
        "{lines:?}"
    );
}

/// A Rust guest sees its bundle directory and the bundle version from the manifest (it logs
/// both during init).
#[test]
fn a_rust_guest_sees_its_bundle_directory_and_version() {
    let f = fixtures();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&lines);
    let rt = Runtime::builder()
        .on_log(move |r| sink.lock().expect("lines").push(r.message.to_owned()))
        .build()
        .expect("runtime");
    let dir = f.bundle(&f.rust_spec("rust-sees-dir", 2));
    rt.load_bundle(&dir).expect("load");
    let lines = lines.lock().expect("lines");
    let expected = format!("dir {} version 2.0.0", dir.display());
    assert!(
        lines.iter().any(|l| l.contains(&expected)),
        "{expected:?} in {lines:?}"
    );
}
