//! Kernel-attested identity: stream peers, datagram batches from this process and from a real
//! `systemd-notify` child, and the promise that every passed descriptor is closed.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use platform_primitives::creds::{BatchConfig, Credentials, DatagramBatch, Wait, peer_credentials};
use platform_primitives::fdpass::send_with_fds;

use crate::support::{TempDir, Tracer, skip, which};

#[test]
fn stream_peer_credentials_are_this_process() {
    let (a, _b) = UnixStream::pair().expect("pair");
    assert_eq!(
        peer_credentials(&a).expect("peer creds"),
        Credentials::current()
    );
}

#[cfg(target_os = "linux")]
#[test]
fn stream_peer_pidfd_names_the_peer() {
    use platform_primitives::creds::{peer_pidfd, pidfd_pid};
    let (a, _b) = UnixStream::pair().expect("pair");
    let pidfd = peer_pidfd(&a).expect("SO_PEERPIDFD (Linux >= 6.5)");
    assert_eq!(pidfd_pid(&pidfd).expect("fdinfo"), Some(std::process::id()));
}

#[cfg(target_os = "linux")]
fn receiver() -> (UnixDatagram, UnixDatagram) {
    use platform_primitives::creds::enable_datagram_credentials;
    let (rx, tx) = UnixDatagram::pair().expect("pair");
    let support = enable_datagram_credentials(&rx).expect("SO_PASSCRED");
    assert!(
        support.pidfd,
        "these machines run Linux >= 6.5, which has SO_PASSPIDFD"
    );
    (rx, tx)
}

#[cfg(target_os = "linux")]
#[test]
fn every_datagram_carries_sender_credentials_and_pidfd_in_order() {
    use platform_primitives::creds::pidfd_pid;
    let (rx, tx) = receiver();
    for i in 0u32..100 {
        tx.send(&i.to_le_bytes()).expect("send");
    }
    let mut batch = DatagramBatch::new(BatchConfig {
        capacity: 16,
        ..BatchConfig::default()
    });
    let mut next = 0u32;
    while next < 100 {
        let n = batch.recv(&rx, Wait::NonBlock).expect("queued datagrams");
        assert!((1..=16).contains(&n), "{n}");
        for dgram in batch.drain() {
            assert_eq!(dgram.data, next.to_le_bytes(), "order preserved");
            assert_eq!(dgram.credentials, Some(Credentials::current()));
            let pidfd = dgram.pidfd.expect("pidfd attached");
            assert_eq!(pidfd_pid(&pidfd).expect("fdinfo"), Some(std::process::id()));
            assert!(!dgram.truncated && !dgram.control_truncated);
            next += 1;
        }
    }
    let err = batch.recv(&rx, Wait::NonBlock).expect_err("queue is empty");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}

#[cfg(target_os = "linux")]
#[test]
fn passed_descriptors_are_closed_and_counted() {
    let (rx, tx) = receiver();
    let tracers: Vec<Tracer> = (0..3).map(|_| Tracer::new()).collect();
    let fds: Vec<BorrowedFd<'_>> = tracers.iter().map(Tracer::write_end).collect();
    send_with_fds(&tx, b"BARRIER=1", &fds).expect("send with fds");

    let mut batch = DatagramBatch::new(BatchConfig::default());
    assert_eq!(batch.recv(&rx, Wait::Block).expect("recv"), 1);
    let dgram = batch.drain().next().expect("one datagram");
    assert_eq!(dgram.data, b"BARRIER=1");
    assert_eq!(dgram.closed_fds, 3);
    assert!(!dgram.control_truncated);
    drop(fds);
    for tracer in tracers {
        assert!(
            tracer.all_write_ends_closed(),
            "a passed descriptor was kept open"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn too_many_descriptors_set_ctrunc_and_leak_nothing() {
    let (rx, tx) = receiver();
    let tracers: Vec<Tracer> = (0..20).map(|_| Tracer::new()).collect();
    let fds: Vec<BorrowedFd<'_>> = tracers.iter().map(Tracer::write_end).collect();
    send_with_fds(&tx, b"x", &fds).expect("send 20 fds");

    let mut batch = DatagramBatch::new(BatchConfig {
        max_fds: 2,
        ..BatchConfig::default()
    });
    batch.recv(&rx, Wait::Block).expect("recv");
    let dgram = batch.drain().next().expect("one datagram");
    assert!(dgram.control_truncated, "MSG_CTRUNC must be reported");
    assert!(
        !dgram.truncated,
        "the data fit: MSG_TRUNC must not be reported"
    );
    assert!(dgram.closed_fds <= 20);
    drop(dgram);
    drop(fds);
    for tracer in tracers {
        assert!(tracer.all_write_ends_closed(), "a descriptor leaked");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn oversized_datagram_is_truncated_with_its_real_length() {
    let (rx, tx) = receiver();
    let payload: Vec<u8> = (0..100u8).collect();
    tx.send(&payload).expect("send");
    tx.send(b"").expect("send empty");
    let mut batch = DatagramBatch::new(BatchConfig {
        max_datagram: 32,
        ..BatchConfig::default()
    });
    assert_eq!(batch.recv(&rx, Wait::Block).expect("recv"), 2);
    let mut it = batch.drain();
    let big = it.next().expect("first");
    assert!(big.truncated, "MSG_TRUNC must be reported");
    assert!(
        !big.control_truncated,
        "control data fit: MSG_CTRUNC must not be reported"
    );
    assert_eq!(big.original_len, 100);
    assert_eq!(big.data, &payload[..32]);
    let empty = it.next().expect("second");
    assert!(empty.data.is_empty() && !empty.truncated);
    assert_eq!(empty.original_len, 0);
}

/// The real `systemd-notify` sends its message, then `BARRIER=1` with a pipe descriptor, and
/// waits until the receiver closes it. A receiver that keeps descriptors makes it hang for 5 s;
/// ours closes it at once. The barrier datagram comes from the child itself, so the kernel
/// attests the child's pid and our uid.
#[cfg(target_os = "linux")]
#[test]
fn real_systemd_notify_is_attested_and_its_barrier_fd_closed() {
    use platform_primitives::uds::UdsBinder;
    let Some(program) = which("systemd-notify") else {
        return skip("systemd-notify", "systemd-notify is not installed");
    };
    let dir = TempDir::new("notify");
    let path = dir.join("notify.sock");
    let bound = UdsBinder::new("notify-test")
        .bind_datagram(&path)
        .expect("bind");
    platform_primitives::creds::enable_datagram_credentials(bound.socket()).expect("creds");
    bound
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");

    let started = Instant::now();
    let mut child = Command::new(program)
        .args(["READY=1", "STATUS=testing"])
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn systemd-notify");
    let child_pid = child.id();

    let mut batch = DatagramBatch::new(BatchConfig::default());
    let mut texts = Vec::new();
    let mut barrier_creds = None;
    while barrier_creds.is_none() {
        batch
            .recv(bound.socket(), Wait::Block)
            .expect("datagram from systemd-notify");
        for dgram in batch.drain() {
            let text = String::from_utf8_lossy(dgram.data).into_owned();
            if text.contains("BARRIER=1") {
                assert_eq!(dgram.closed_fds, 1, "the barrier carries one fd");
                barrier_creds = dgram.credentials;
            }
            texts.push(text);
        }
    }
    let status = child.wait().expect("wait");
    let elapsed = started.elapsed();
    assert!(status.success(), "systemd-notify failed: {status}");
    assert!(
        elapsed < Duration::from_secs(4),
        "systemd-notify waited {elapsed:?}: the barrier fd was not closed promptly"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("READY=1") && t.contains("STATUS=testing")),
        "{texts:?}"
    );
    let creds = barrier_creds.expect("credentials on the barrier datagram");
    assert_eq!(creds.pid, child_pid, "kernel-attested sender pid");
    assert_eq!(creds.uid, Credentials::current().uid);
}

/// Macro-free check that `AsFd` is all the batch needs (a bound socket, a raw pair, a ref).
#[test]
fn batch_accepts_any_socket_handle() {
    let (rx, tx) = UnixDatagram::pair().expect("pair");
    tx.send(b"a").expect("send");
    let mut batch = DatagramBatch::new(BatchConfig::default());
    let fd: BorrowedFd<'_> = rx.as_fd();
    assert_eq!(batch.recv(&fd, Wait::Block).expect("recv"), 1);
    assert_eq!(
        batch.drain().map(|d| d.data.to_vec()).collect::<Vec<_>>(),
        [b"a".to_vec()]
    );
}

/// A privileged sender may vouch for another live process; the receiver sees that pid.
#[cfg(target_os = "linux")]
#[test]
fn privileged_sender_can_vouch_for_a_child() {
    use platform_primitives::creds::send_with_credentials;
    let (rx, tx) = receiver();
    let mut own = Credentials::current();
    send_with_credentials(&tx, b"self", own).expect("own credentials are always allowed");
    let mut child = Command::new("sleep").arg("5").spawn().expect("sleep");
    own.pid = child.id();
    let vouched = send_with_credentials(&tx, b"child", own);
    let mut batch = DatagramBatch::new(BatchConfig::default());
    batch.recv(&rx, Wait::Block).expect("recv");
    let pids: Vec<u32> = batch
        .drain()
        .map(|d| d.credentials.expect("creds").pid)
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    match vouched {
        Ok(_) => assert_eq!(pids, [std::process::id(), child.id()]),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            skip("vouching", "not privileged (CAP_SYS_ADMIN)");
            assert_eq!(pids, [std::process::id()]);
        }
        Err(e) => panic!("send_with_credentials: {e}"),
    }
}
