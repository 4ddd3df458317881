//! The observer keeps the daemon bind contracts (through platform-primitives' `uds`).

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;

use varta_watch::{Observer, ObserverConfig};

use crate::support::TempDir;

fn config(dir: &TempDir) -> ObserverConfig {
    ObserverConfig::new(dir.join("observer.sock"))
}

#[test]
fn clean_bind_has_mode_0600_and_drop_unlinks() {
    let dir = TempDir::new("clean");
    let obs = Observer::bind(config(&dir)).expect("bind");
    let meta = std::fs::metadata(dir.join("observer.sock")).expect("meta");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(obs.owns_path());
    drop(obs);
    assert!(!dir.join("observer.sock").exists());
}

#[test]
fn second_observer_is_refused_while_the_first_lives() {
    let dir = TempDir::new("live");
    let _first = Observer::bind(config(&dir)).expect("first");
    let err = Observer::bind(config(&dir)).expect_err("second");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    assert!(
        err.to_string()
            .contains("another varta-watch is already running at "),
        "{err}"
    );
}

#[test]
fn stale_socket_is_replaced_and_regular_file_kept() {
    let dir = TempDir::new("stale");
    let path = dir.join("observer.sock");
    drop(UnixDatagram::bind(&path).expect("stale"));
    let old = std::fs::metadata(&path).expect("meta").ino();
    let obs = Observer::bind(config(&dir)).expect("bind over stale");
    assert_ne!(std::fs::metadata(&path).expect("meta").ino(), old);
    drop(obs);

    std::fs::write(&path, b"keep me").expect("file");
    let err = Observer::bind(config(&dir)).expect_err("file occupant");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    assert!(
        err.to_string().contains("path exists and is not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).expect("kept"), b"keep me");
}

#[test]
fn drop_spares_a_newer_observers_socket() {
    let dir = TempDir::new("foreign");
    let path = dir.join("observer.sock");
    let a = Observer::bind(config(&dir)).expect("a");
    std::fs::remove_file(&path).expect("remove");
    let b = Observer::bind(config(&dir)).expect("b");
    drop(a);
    assert!(path.exists(), "a's drop must not remove b's socket");
    drop(b);
    assert!(!path.exists());
}
