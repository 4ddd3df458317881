//! Page sources on real files and sockets, and how bad sources are refused.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use squib_host::{
    FilePageSource, MemorySource, PageRequest, PageServerSource, PageSource, PageSourceError,
    Pager, PagerConfig, PagerError, serve_pages,
};

use crate::pages::{ps, snapshot};
use crate::support::temp_dir;

fn req(offset: u64, len: usize) -> PageRequest {
    PageRequest {
        addr: 0x4000_0000 + offset,
        offset,
        len,
        page_size: ps(),
    }
}

#[test]
fn file_source_reads_at_the_offset_and_refuses_short_files() {
    let dir = temp_dir("file-source");
    let path = dir.join("mem.snap");
    let data = snapshot(16);
    std::fs::write(&path, &data[..15 * ps() + 100]).unwrap();
    let src = FilePageSource::open(&path).unwrap();
    assert_eq!(src.len(), (15 * ps() + 100) as u64);
    let got = src.fetch(&req(3 * ps() as u64, 2 * ps())).unwrap();
    assert_eq!(&got[..], &data[3 * ps()..5 * ps()]);
    let err = src.fetch(&req(15 * ps() as u64, ps())).unwrap_err();
    assert!(
        matches!(err, PageSourceError::Short { got: 100, .. }),
        "{err}"
    );

    // A pager refuses regions beyond the file, and never pads a short read with zeros.
    let pager = Pager::new(
        src,
        PagerConfig {
            retry_backoff: Duration::from_micros(10),
            ..PagerConfig::default()
        },
    );
    assert!(
        pager
            .register_region(0x4000_0000, 16 * ps() as u64)
            .is_err()
    );
    pager
        .register_region(0x4000_0000, 15 * ps() as u64)
        .unwrap();
    let bytes = pager
        .serve_fault(0x4000_0000 + 14 * ps() as u64, 1)
        .unwrap();
    assert_eq!(&bytes[..], &data[14 * ps()..15 * ps()]);

    let missing = FilePageSource::open(dir.join("nope"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope"), "{missing}");
}

#[test]
fn page_server_source_round_trips_over_a_socket() {
    let data = snapshot(32);
    let (client, server) = UnixStream::pair().unwrap();
    let backing = MemorySource::new(data.clone());
    let t = std::thread::spawn(move || serve_pages(server, &backing));
    let src = PageServerSource::from_stream(client).with_len(data.len() as u64);
    for p in [0usize, 5, 31, 7] {
        let got = src.fetch(&req((p * ps()) as u64, ps())).unwrap();
        assert_eq!(&got[..], &data[p * ps()..(p + 1) * ps()]);
    }
    let err = src.fetch(&req(31 * ps() as u64, 2 * ps())).unwrap_err();
    assert!(
        matches!(err, PageSourceError::Refused { status: 1, .. }),
        "{err}"
    );
    // The connection stays usable after a refusal.
    assert_eq!(src.fetch(&req(0, ps())).unwrap()[..], data[..ps()]);
    drop(src);
    t.join().unwrap().unwrap();
}

#[test]
fn a_page_server_answering_the_wrong_length_is_refused() {
    let (client, mut server) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut msg = [0u8; 16];
        server.read_exact(&mut msg).unwrap();
        let mut head = [0u8; 12];
        head[4..].copy_from_slice(&10u64.to_le_bytes());
        server.write_all(&head).unwrap();
        server.write_all(&[1u8; 10]).unwrap();
        server
    });
    let src = PageServerSource::from_stream(client);
    let err = src.fetch(&req(0, ps())).unwrap_err();
    assert!(
        matches!(err, PageSourceError::Short { got: 10, .. }),
        "{err}"
    );
    drop(t.join().unwrap());
    // The server hung up: an I/O error naming the offset, not a panic.
    let err = src.fetch(&req(ps() as u64, ps())).unwrap_err();
    assert!(err.to_string().contains(&format!("{:#x}", ps())), "{err}");
}

#[test]
fn short_and_failing_sources_fail_closed_never_zero_filled() {
    #[derive(Debug)]
    struct Short;
    impl PageSource for Short {
        fn fetch(&self, req: &PageRequest) -> Result<bytes::Bytes, PageSourceError> {
            Ok(bytes::Bytes::from(vec![1u8; req.len / 2]))
        }
    }
    let pager = Pager::new(
        Arc::new(Short),
        PagerConfig {
            fetch_retries: 2,
            retry_backoff: Duration::from_micros(10),
            ..PagerConfig::default()
        },
    );
    pager.register_region(0x4000_0000, 4 * ps() as u64).unwrap();
    let err = pager.serve_fault(0x4000_0000, 1).unwrap_err();
    assert!(
        matches!(
            &err,
            PagerError::Source {
                attempts: 3,
                source: PageSourceError::Short { .. },
                ..
            }
        ),
        "{err}"
    );
    let s = pager.stats();
    assert_eq!(
        (s.source_errors, s.failed_closed, s.bytes_served),
        (3, 1, 0)
    );
}
