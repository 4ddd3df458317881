//! Descriptors crossing a socket: they arrive usable and close-on-exec, excess ones are closed.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};

use platform_primitives::fdpass::{recv_with_fds, send_with_fds};

use crate::support::{TempDir, Tracer};

#[test]
fn a_file_descriptor_arrives_usable() {
    let dir = TempDir::new("fdpass");
    let path = dir.join("data.bin");
    let mut file = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("file");
    file.write_all(b"snapshot bytes").expect("write");
    file.rewind().expect("rewind");

    let (a, b) = UnixStream::pair().expect("pair");
    assert_eq!(
        send_with_fds(&a, b"[{}]", &[file.as_fd()]).expect("send"),
        4
    );
    drop(file);

    let mut buf = [0u8; 64];
    let got = recv_with_fds(&b, &mut buf, 4).expect("recv");
    assert_eq!(&buf[..got.len], b"[{}]");
    assert!(!got.truncated && !got.control_truncated);
    let [fd] = <[_; 1]>::try_from(got.fds).expect("exactly one fd");
    let mut received = std::fs::File::from(fd);
    let mut text = String::new();
    received
        .read_to_string(&mut text)
        .expect("read through passed fd");
    assert_eq!(text, "snapshot bytes");

    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", received.as_raw_fd()))
            .expect("fdinfo");
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).expect("octal flags"))
            .expect("flags line");
        assert_ne!(
            flags & 0o2000000,
            0,
            "received descriptors must be close-on-exec"
        );
    }
}

#[test]
fn descriptors_beyond_max_fds_are_closed_and_reported() {
    let (a, b) = UnixDatagram::pair().expect("pair");
    let tracers: Vec<Tracer> = (0..6).map(|_| Tracer::new()).collect();
    let fds: Vec<BorrowedFd<'_>> = tracers.iter().map(Tracer::write_end).collect();
    send_with_fds(&a, b"six", &fds).expect("send");
    let mut buf = [0u8; 8];
    let got = recv_with_fds(&b, &mut buf, 2).expect("recv");
    assert!(got.control_truncated, "more fds than room must be reported");
    assert!(got.fds.len() <= 2, "{}", got.fds.len());
    drop(got);
    drop(fds);
    for tracer in tracers {
        assert!(
            tracer.all_write_ends_closed(),
            "an excess descriptor leaked"
        );
    }
}

#[test]
fn datagram_longer_than_the_buffer_is_reported_truncated() {
    let (a, b) = UnixDatagram::pair().expect("pair");
    send_with_fds(&a, &[7u8; 100], &[]).expect("send");
    let mut buf = [0u8; 10];
    let got = recv_with_fds(&b, &mut buf, 1).expect("recv");
    assert!(got.truncated);
    assert_eq!(got.len, 10);
    assert!(got.fds.is_empty());
}

#[test]
fn descriptors_without_payload_are_refused() {
    let (a, _b) = UnixStream::pair().expect("pair");
    let tracer = Tracer::new();
    let err = send_with_fds(&a, b"", &[tracer.write_end()]).expect_err("no payload");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
