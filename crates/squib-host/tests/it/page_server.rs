//! The page server on real sockets: two lanes so demand fetches never wait for background
//! chunks, a deadline on every request, reconnection when the server restarts, and TCP.

#![cfg(target_os = "linux")]

use std::net::{Shutdown, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use squib_host::{
    MemorySource, PageRequest, PageServerAddr, PageServerConfig, PageServerSource, PageSource,
    PageSourceError, PagerConfig, serve_pages,
};

use crate::edges::poison_or_skip;
use crate::pages::{ps, snapshot};
use crate::support::{Restore, kernel_read, quiet, temp_dir, within};

/// Closes one connection from the server's side.
type Closer = Box<dyn Fn() + Send>;

/// A page server serving `source` on a listener, one thread per connection; `stop` closes the
/// listener and every connection from the server's side.
struct TestServer {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Closer>>>,
    wake: Box<dyn Fn() + Send>,
}

impl TestServer {
    fn unix(path: &Path, source: Arc<dyn PageSource>) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let p = path.to_owned();
        Self::run(
            move || listener.accept().map(|(c, _)| c),
            |c: &UnixStream| {
                let c = c.try_clone().unwrap();
                Box::new(move || {
                    let _ = c.shutdown(Shutdown::Both);
                })
            },
            source,
            Box::new(move || {
                let _ = UnixStream::connect(&p);
            }),
        )
    }

    fn tcp(source: Arc<dyn PageSource>) -> (Self, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let a = addr.clone();
        let server = Self::run(
            move || listener.accept().map(|(c, _)| c),
            |c: &std::net::TcpStream| {
                let c = c.try_clone().unwrap();
                Box::new(move || {
                    let _ = c.shutdown(Shutdown::Both);
                })
            },
            source,
            Box::new(move || {
                let _ = std::net::TcpStream::connect(&a);
            }),
        );
        (server, addr)
    }

    fn run<C: std::io::Read + std::io::Write + Send + 'static>(
        accept: impl Fn() -> std::io::Result<C> + Send + 'static,
        closer: fn(&C) -> Box<dyn Fn() + Send>,
        source: Arc<dyn PageSource>,
        wake: Box<dyn Fn() + Send>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Closer>>> = Arc::default();
        let (s, cs) = (stop.clone(), conns.clone());
        std::thread::spawn(move || {
            while let Ok(conn) = accept() {
                if s.load(Ordering::Acquire) {
                    return;
                }
                cs.lock().unwrap().push(closer(&conn));
                let source = source.clone();
                std::thread::spawn(move || serve_pages(conn, &*source));
            }
        });
        Self { stop, conns, wake }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        (self.wake)();
        for close in self.conns.lock().unwrap().drain(..) {
            close();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A restore of `data` through a page-server `source`, without readahead, with background
/// population on or off.
fn restore_over(data: &[u8], source: PageServerSource, background: bool) -> Restore {
    Restore::serving(data.to_vec())
        .source(source)
        .config(PagerConfig {
            background,
            readahead_max: 0,
            ..quiet()
        })
        .start()
}

#[test]
fn a_page_server_over_tcp_serves_faults_byte_for_byte() {
    if !poison_or_skip("a_page_server_over_tcp_serves_faults_byte_for_byte") {
        return;
    }
    let pages = 512;
    let data = snapshot(pages);
    let (_server, addr) = TestServer::tcp(Arc::new(MemorySource::new(data.clone())));
    let source =
        PageServerSource::connect_to(PageServerAddr::Tcp(addr), PageServerConfig::default())
            .unwrap()
            .with_len(data.len() as u64);
    let Restore { mem, pager, .. } = restore_over(&data, source, true);
    let m = mem.clone();
    let bad = within(Duration::from_secs(30), "tcp reads", move || {
        (0..pages)
            .rev()
            .filter(|&p| {
                kernel_read(&m, p).ok().as_deref() != Some(&data[p * ps()..(p + 1) * ps()])
            })
            .count()
    });
    assert_eq!(bad, 0, "pages read wrong over TCP");
    pager.finish();
}

/// A source that takes 1 ms per 16 KiB asked for, as a page server behind a link of 16 MB/s
/// would: a 4 MiB background chunk takes 256 ms, a page 0.25 ms.
#[derive(Debug)]
struct Bandwidth(MemorySource);
impl PageSource for Bandwidth {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        std::thread::sleep(Duration::from_micros(req.len as u64 / 16));
        self.0.fetch(req)
    }
}

/// The median demand-fault latency (µs, the upper bound of its histogram bucket) and the
/// number of faults, for scattered reads in the last quarter of 64 MiB, with background
/// population in 4 MiB chunks (from the start) on or off.
fn demand_median_us(background: bool) -> (u64, u64) {
    let pages = (64 << 20) / ps();
    let data = snapshot(pages);
    let dir = temp_dir(if background { "lanes-bg" } else { "lanes-nobg" });
    let path = dir.join("pages.sock");
    let _server = TestServer::unix(&path, Arc::new(Bandwidth(MemorySource::new(data.clone()))));
    let source =
        PageServerSource::connect_to(PageServerAddr::Unix(path), PageServerConfig::default())
            .unwrap()
            .with_len(data.len() as u64);
    let Restore { data, mem, pager } = Restore::serving(data)
        .source(source)
        .config(PagerConfig {
            background,
            background_min_chunk: 4 << 20,
            background_max_chunk: 4 << 20,
            readahead_max: 0,
            record_working_set: false,
            ..quiet()
        })
        .start();
    let m = mem.clone();
    within(Duration::from_secs(60), "demand reads", move || {
        let mut x = 0x9E37_79B9u64;
        for _ in 0..24 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = pages - 1 - (x % (pages as u64 / 4)) as usize;
            std::thread::sleep(Duration::from_millis(3));
            let got = kernel_read(&m, p).expect("served");
            assert!(got == data[p * ps()..(p + 1) * ps()], "page {p}");
        }
    });
    let s = pager.stats();
    pager.finish();
    (s.latency.quantile_upper_us(0.5).unwrap_or(0), s.faults)
}

#[test]
fn demand_faults_never_queue_behind_background_chunks() {
    if !poison_or_skip("demand_faults_never_queue_behind_background_chunks") {
        return;
    }
    let (off, _) = demand_median_us(false);
    let (on, faults) = demand_median_us(true);
    // A background chunk takes 256 ms to fetch: a demand fault queued behind one would wait
    // for half of that on average; a page alone takes 0.25 ms.
    assert!(
        on <= 16_384,
        "median demand fault under {on} µs with background population on ({off} µs off)"
    );
    assert!(faults >= 12, "only {faults} reads faulted");
}

/// A server that never answers the first request it gets, then serves normally.
#[derive(Debug)]
struct StallsOnce {
    inner: MemorySource,
    calls: AtomicUsize,
}
impl PageSource for StallsOnce {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        if self.calls.fetch_add(1, Ordering::AcqRel) == 0 {
            std::thread::sleep(Duration::from_secs(30));
        }
        self.inner.fetch(req)
    }
}

#[test]
fn a_stalled_request_times_out_and_its_lane_reconnects() {
    if !poison_or_skip("a_stalled_request_times_out_and_its_lane_reconnects") {
        return;
    }
    let pages = 64;
    let data = snapshot(pages);
    let dir = temp_dir("stall");
    let path = dir.join("pages.sock");
    let _server = TestServer::unix(
        &path,
        Arc::new(StallsOnce {
            inner: MemorySource::new(data.clone()),
            calls: AtomicUsize::new(0),
        }),
    );
    let source = PageServerSource::connect_to(
        PageServerAddr::Unix(path),
        PageServerConfig {
            request_timeout: Duration::from_millis(200),
            ..PageServerConfig::default()
        },
    )
    .unwrap()
    .with_len(data.len() as u64);
    let Restore { mem, pager, .. } = restore_over(&data, source, false);
    let m = mem.clone();
    let (got, took) = within(Duration::from_secs(30), "stalled read", move || {
        let t0 = Instant::now();
        (kernel_read(&m, 9), t0.elapsed())
    });
    assert!(
        got.as_deref().ok() == Some(&data[9 * ps()..10 * ps()]),
        "page 9 after a stalled request: {:?}",
        got.map(|_| ())
    );
    assert!(took < Duration::from_secs(2), "served only after {took:?}");
    pager.finish();
}

#[test]
fn a_restarted_page_server_is_reconnected_to() {
    if !poison_or_skip("a_restarted_page_server_is_reconnected_to") {
        return;
    }
    let pages = 64;
    let data = snapshot(pages);
    let dir = temp_dir("restart");
    let path = dir.join("pages.sock");
    let first = TestServer::unix(&path, Arc::new(MemorySource::new(data.clone())));
    let source = PageServerSource::connect_to(
        PageServerAddr::Unix(path.clone()),
        PageServerConfig::default(),
    )
    .unwrap()
    .with_len(data.len() as u64);
    let Restore { mem, pager, .. } = restore_over(&data, source, false);
    let page = |p: usize| &data[p * ps()..(p + 1) * ps()];
    assert!(kernel_read(&mem, 1).ok().as_deref() == Some(page(1)));
    first.stop();
    drop(first);
    let _second = TestServer::unix(&path, Arc::new(MemorySource::new(data.clone())));
    let m = mem.clone();
    let got = within(Duration::from_secs(30), "read after restart", move || {
        kernel_read(&m, 40)
    });
    assert!(
        got.as_deref().ok() == Some(page(40)),
        "page 40 after the server restarted: {:?}",
        got.map(|_| ())
    );
    pager.finish();
}
