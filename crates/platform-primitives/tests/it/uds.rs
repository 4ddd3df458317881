//! The bind contracts: live listener refused, stale socket replaced, non-socket occupants left
//! alone, mode in place without touching the umask, directory fsync counted, and Drop removing
//! only the inode it created.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::sync::{Arc, Barrier};

use platform_primitives::uds::{BindError, UdsBinder, drain_dir_fsync_failures};

use crate::support::TempDir;

fn binder() -> UdsBinder {
    UdsBinder::new("varta-watch").mode(0o600)
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn bind_on_clean_path_creates_socket_with_mode_and_drop_removes_it() {
    let dir = TempDir::new("clean");
    let path = dir.join("obs.sock");
    let bound = binder().bind_datagram(&path).expect("bind on a clean path");

    let meta = std::fs::metadata(&path).expect("metadata");
    assert!(meta.file_type().is_socket());
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(bound.path(), path);
    assert!(
        dir.entries_except(&["obs.sock"]).is_empty(),
        "staging directory left behind: {:?}",
        dir.entries_except(&["obs.sock"])
    );

    drop(bound);
    assert!(!path.exists(), "drop must unlink the socket");
}

/// The umask never shapes the mode: 0o666 survives even though the usual umask (022) would
/// strip group and other write bits, and the process umask is unchanged afterwards.
#[test]
fn mode_is_exact_and_umask_is_untouched() {
    let before = umask_of_self();
    let dir = TempDir::new("mode");
    let path = dir.join("wide.sock");
    let _bound = UdsBinder::new("t")
        .mode(0o666)
        .bind_listener(&path)
        .expect("bind");
    assert_eq!(mode_of(&path), 0o666);
    assert_eq!(umask_of_self(), before, "bind must not change the umask");
}

/// The current umask as /proc reports it (reading it with umask(2) would change it).
fn umask_of_self() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|s| s.trim().to_owned())
}

#[test]
fn live_datagram_listener_is_refused_with_addr_in_use() {
    let dir = TempDir::new("live");
    let path = dir.join("obs.sock");
    let first = binder().bind_datagram(&path).expect("first bind");

    let err = binder()
        .bind_datagram(&path)
        .expect_err("second bind on a live socket must fail");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    assert!(
        err.to_string()
            .contains("another varta-watch is already running at "),
        "message: {err}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));

    // The io::Error conversion keeps kind and message (what callers of varta-watch 0.2.0's `Observer::bind` matched on).
    let io_err = std::io::Error::from(err);
    assert_eq!(io_err.kind(), ErrorKind::AddrInUse);
    assert!(io_err.to_string().contains("already running"));

    // The first instance still owns and serves the path.
    let client = UnixDatagram::unbound().expect("client");
    client.send_to(b"ping", &path).expect("send to survivor");
    let mut buf = [0u8; 8];
    let n = first.recv(&mut buf).expect("survivor receives");
    assert_eq!(&buf[..n], b"ping");
}

#[test]
fn live_stream_listener_is_refused_too() {
    let dir = TempDir::new("live-stream");
    let path = dir.join("ctl.sock");
    let _first = binder().bind_listener(&path).expect("first bind");
    let err = binder().bind_listener(&path).expect_err("second bind");
    assert!(matches!(err, BindError::AlreadyRunning { .. }), "{err}");
    // A datagram daemon at a path held by a stream listener is refused as well.
    let err = binder().bind_datagram(&path).expect_err("other type");
    assert!(matches!(err, BindError::AlreadyRunning { .. }), "{err}");
}

#[test]
fn stale_datagram_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.join("obs.sock");
    let stale = UnixDatagram::bind(&path).expect("stale socket");
    let stale_ino = std::fs::metadata(&path).expect("meta").ino();
    drop(stale);
    assert!(
        std::fs::metadata(&path)
            .expect("meta")
            .file_type()
            .is_socket()
    );

    let bound = binder()
        .bind_datagram(&path)
        .expect("bind over a stale socket");
    let meta = std::fs::metadata(&path).expect("meta");
    assert!(meta.file_type().is_socket());
    assert_ne!(meta.ino(), stale_ino, "the stale inode must be replaced");
    assert_eq!(mode_of(&path), 0o600);

    // And the new socket really serves the path.
    UnixDatagram::unbound()
        .expect("client")
        .send_to(b"x", &path)
        .expect("send");
    let mut buf = [0u8; 4];
    assert_eq!(bound.recv(&mut buf).expect("recv"), 1);
    assert!(dir.entries_except(&["obs.sock"]).is_empty());
}

#[test]
fn stale_stream_socket_is_replaced() {
    let dir = TempDir::new("stale-stream");
    let path = dir.join("ctl.sock");
    drop(UnixListener::bind(&path).expect("stale listener"));
    let bound = binder().bind_listener(&path).expect("bind over stale");
    let _client = UnixStream::connect(&path).expect("connect to the new listener");
    let (_conn, _) = bound.accept().expect("accept");
}

#[test]
fn regular_file_is_never_touched() {
    let dir = TempDir::new("regular");
    let path = dir.join("obs.sock");
    std::fs::write(&path, b"do not delete").expect("write file");

    let err = binder().bind_datagram(&path).expect_err("bind over a file");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    assert!(
        err.to_string().contains("path exists and is not a socket"),
        "message: {err}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(std::fs::read(&path).expect("file kept"), b"do not delete");
    assert!(dir.entries_except(&["obs.sock"]).is_empty());
}

#[test]
fn directory_and_symlink_occupants_are_never_touched() {
    let dir = TempDir::new("occupants");
    let sub = dir.join("a-dir");
    std::fs::create_dir(&sub).expect("mkdir");
    let err = binder()
        .bind_datagram(&sub)
        .expect_err("bind over a directory");
    assert!(matches!(err, BindError::NotASocket { .. }), "{err}");
    assert!(sub.is_dir());

    // A symlink, even one pointing at a stale socket, is not ours to remove.
    let target = dir.join("target.sock");
    drop(UnixDatagram::bind(&target).expect("stale target"));
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let err = binder()
        .bind_datagram(&link)
        .expect_err("bind over a symlink");
    assert!(matches!(err, BindError::NotASocket { .. }), "{err}");
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link kept")
            .file_type()
            .is_symlink()
    );
}

#[test]
fn missing_parent_directory_is_named() {
    let dir = TempDir::new("noparent");
    let path = dir.join("missing/obs.sock");
    let err = binder().bind_datagram(&path).expect_err("no parent");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "message: {msg}");
    assert!(
        msg.contains("missing"),
        "message names the directory: {msg}"
    );
}

#[test]
fn overlong_path_is_rejected_by_name() {
    let dir = TempDir::new("long");
    let path = dir.join("s".repeat(120));
    let err = binder().bind_datagram(&path).expect_err("too long");
    assert!(matches!(err, BindError::PathTooLong { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains(&path.display().to_string()));
    assert!(dir.entries_except(&[]).is_empty(), "nothing left behind");
}

#[test]
fn directory_fsync_succeeds_on_clean_bind() {
    let dir = TempDir::new("fsync");
    let pre = drain_dir_fsync_failures();
    let bound = binder().bind_datagram(dir.join("a.sock")).expect("bind");
    assert_eq!(drain_dir_fsync_failures(), 0, "earlier failures: {pre}");
    drop(bound);
}

#[test]
fn directory_fsync_succeeds_after_stale_recovery() {
    let dir = TempDir::new("fsync-stale");
    let path = dir.join("a.sock");
    drop(UnixDatagram::bind(&path).expect("stale"));
    let _ = drain_dir_fsync_failures();
    let _bound = binder().bind_datagram(&path).expect("bind");
    assert_eq!(drain_dir_fsync_failures(), 0);
}

#[test]
fn drop_tolerates_a_path_removed_by_someone_else() {
    let dir = TempDir::new("removed");
    let path = dir.join("a.sock");
    let bound = binder().bind_datagram(&path).expect("bind");
    std::fs::remove_file(&path).expect("manual remove");
    drop(bound);
    assert!(!path.exists());
}

#[test]
fn drop_never_removes_a_newer_instances_socket() {
    let dir = TempDir::new("foreign");
    let path = dir.join("a.sock");
    let old = binder().bind_datagram(&path).expect("first");
    std::fs::remove_file(&path).expect("operator removes the path");
    let new = binder().bind_datagram(&path).expect("second instance");
    let new_ino = std::fs::metadata(&path).expect("meta").ino();

    drop(old);
    assert_eq!(
        std::fs::metadata(&path)
            .expect("newer socket must survive")
            .ino(),
        new_ino
    );
    drop(new);
    assert!(!path.exists());
}

/// Many instances racing for one path that holds a stale socket: exactly one wins each round,
/// every loser is told the path is taken, and the path names the winner's socket. Without the
/// directory lock around stale recovery this fails within a few hundred rounds (one racer
/// unlinks the socket another has just linked, leaving two "winners").
#[test]
fn racing_binds_over_a_stale_socket_have_exactly_one_winner() {
    const RACERS: usize = 6;
    let dir = TempDir::new("race");
    let path = dir.join("a.sock");
    for round in 0..400 {
        drop(UnixDatagram::bind(&path).expect("stale"));
        let barrier = Arc::new(Barrier::new(RACERS));
        let handles: Vec<_> = (0..RACERS)
            .map(|_| {
                let (barrier, path) = (Arc::clone(&barrier), path.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    binder().bind_datagram(&path)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("racer"))
            .collect();
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for err in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(err.kind(), ErrorKind::AddrInUse, "round {round}: {err}");
        }
        let winner_sees = std::fs::metadata(&path).expect("meta").ino();
        UnixDatagram::unbound()
            .expect("client")
            .send_to(&[round as u8], &path)
            .expect("the path must lead to the winner");
        let mut buf = [0u8; 1];
        winners[0].recv(&mut buf).expect("winner receives");
        assert_eq!(buf[0], round as u8);
        drop(results);
        assert!(!path.exists() || std::fs::metadata(&path).expect("meta").ino() != winner_sees);
        let leftovers = dir.entries_except(&["a.sock"]);
        assert!(
            leftovers.is_empty(),
            "round {round}: left behind {leftovers:?}"
        );
    }
}

/// `bind_with` runs its set-up before the path exists, and a failing set-up leaves nothing.
#[test]
fn setup_runs_before_the_socket_is_reachable() {
    let dir = TempDir::new("setup");
    let path = dir.join("a.sock");
    let seen_path = path.clone();
    let bound = binder()
        .bind_with(&path, move |_: &UnixDatagram| {
            assert!(!seen_path.exists(), "set-up must run before the link");
            Ok(())
        })
        .expect("bind");
    assert!(path.exists());
    drop(bound);

    let err = binder()
        .bind_with(&path, |_: &UnixDatagram| {
            Err(std::io::Error::new(ErrorKind::PermissionDenied, "no"))
        })
        .expect_err("failing set-up");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(dir.entries_except(&[]).is_empty(), "nothing left behind");
}
