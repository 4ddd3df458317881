//! A daemon-shaped scenario across platform-primitives' modules, as the product crates use
//! them together: a control socket bound with `uds`, a client whose identity comes from
//! `creds`, and a descriptor handed over with `fdpass` (the shape of Firecracker's handshake to
//! a page-fault handler).

use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use platform_primitives::creds::{Credentials, peer_credentials};
use platform_primitives::fdpass::{recv_with_fds, send_with_fds};
use platform_primitives::uds::UdsBinder;
use workspace_tests::support::TempDir;

#[test]
fn handshake_with_descriptor_over_a_bound_control_socket() {
    let dir = TempDir::new("ws-daemon");
    let path = dir.join("handler.sock");
    let listener = UdsBinder::new("page-handler")
        .mode(0o600)
        .bind_listener(&path)
        .expect("bind");

    let client_path = path.clone();
    let client_dir = dir.path().to_owned();
    let client = std::thread::spawn(move || {
        let stream = UnixStream::connect(&client_path).expect("connect");
        let mut memfile = tempfile_with(&client_dir, b"guest memory");
        memfile.rewind().expect("rewind");
        let msg = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]"#;
        send_with_fds(&stream, msg, &[memfile.as_fd()]).expect("send handshake");
    });

    let (conn, _) = listener.accept().expect("accept");
    assert_eq!(
        peer_credentials(&conn).expect("peer creds"),
        Credentials::current()
    );
    let mut buf = vec![0u8; 4096];
    let got = recv_with_fds(&conn, &mut buf, 4).expect("recv handshake");
    client.join().expect("client");
    assert!(buf[..got.len].starts_with(b"[{\"base_host_virt_addr\""));
    let [fd] = <[_; 1]>::try_from(got.fds).expect("one descriptor");
    let mut text = String::new();
    std::fs::File::from(fd)
        .read_to_string(&mut text)
        .expect("read passed file");
    assert_eq!(text, "guest memory");

    drop(listener);
    assert!(!path.exists());
}

/// An unlinked file in `dir` holding `bytes` (its descriptor is all that is left of it).
fn tempfile_with(dir: &Path, bytes: &[u8]) -> std::fs::File {
    let path = dir.join("guest-memory");
    let mut f = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("temp file");
    std::fs::remove_file(&path).expect("unlink temp file");
    f.write_all(bytes).expect("write");
    f
}
