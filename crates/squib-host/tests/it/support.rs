//! Shared helpers: temporary directories, deadline joins, kernel reads, and the restore
//! fixture (a pager serving a test snapshot into a lazy mapping) the fault tests start from.
//! The test snapshot itself, the page size and the userfaultfd guard are in
//! `tests/support/pages.rs`, shared with the other test binaries.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use workspace_tests::support::TempDir;

#[cfg(target_os = "linux")]
use crate::pages::{ps, snapshot};

/// A fresh temporary directory for one test, removed when it is dropped.
pub(crate) fn temp_dir(label: &str) -> TempDir {
    TempDir::new(&format!("squib-it-{label}"))
}

/// Runs `f` on a thread and waits at most `limit` for it. A pager bug would leave a faulting
/// thread asleep forever; this turns that into a test failure instead of a hung CI.
pub(crate) fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?} (a fault was never served?)"),
    }
}

/// Polls `cond` every 5 ms until it holds or `limit` passes.
pub(crate) fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Page `page` of `mem`, read by the kernel (`write(2)` from the mapping into a pipe): a missing
/// page makes the write wait for the server as a touch would, and a page that failed closed
/// (`UFFDIO_POISON`) fails the write with `EFAULT` instead of raising `SIGBUS`.
#[cfg(target_os = "linux")]
pub(crate) fn kernel_read(mem: &squib_host::LazyMapping, page: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let (mut r, mut w) = std::io::pipe()?;
    let bytes = &mem.as_slice()[page * ps()..(page + 1) * ps()];
    w.write_all(bytes)?;
    drop(w);
    let mut out = Vec::with_capacity(ps());
    r.read_to_end(&mut out)?;
    Ok(out)
}

/// A pager with its userfaultfd server running on its own thread. It derefs to the [`Pager`];
/// [`Served::finish`] stops the server and requires a clean exit, and dropping it (a test that
/// panicked) still stops and joins the server, so no faulting thread is left asleep.
///
/// [`Pager`]: squib_host::Pager
#[cfg(target_os = "linux")]
pub(crate) struct Served {
    pager: squib_host::Pager,
    server: Option<thread::JoinHandle<Result<(), squib_host::ServeError>>>,
}

#[cfg(target_os = "linux")]
impl Served {
    /// Starts serving `pager`'s mappings (map them first).
    pub(crate) fn start(pager: squib_host::Pager) -> Self {
        let server = squib_host::spawn_server(&pager).expect("spawn the userfaultfd server");
        Self {
            pager,
            server: Some(server),
        }
    }

    /// Stops the server and asserts that it ended without an error.
    pub(crate) fn finish(mut self) {
        if let Some(Err(e)) = self.stop() {
            panic!("the server ended with an error: {e}");
        }
    }

    fn stop(&mut self) -> Option<Result<(), squib_host::ServeError>> {
        let server = self.server.take()?;
        self.pager.request_shutdown();
        Some(server.join().expect("the server thread panicked"))
    }
}

#[cfg(target_os = "linux")]
impl std::ops::Deref for Served {
    type Target = squib_host::Pager;

    fn deref(&self) -> &squib_host::Pager {
        &self.pager
    }
}

#[cfg(target_os = "linux")]
impl Drop for Served {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.pager.request_shutdown();
            let _ = server.join();
        }
    }
}

/// The pager settings the fault tests start from: no background population (so every page
/// comes in through a fault or readahead the test causes) and a short poll interval (so
/// shutdown is prompt).
#[cfg(target_os = "linux")]
pub(crate) fn quiet() -> squib_host::PagerConfig {
    squib_host::PagerConfig {
        poll_interval: Duration::from_millis(50),
        background: false,
        ..squib_host::PagerConfig::default()
    }
}

/// [`quiet`] with one retry of a failed fetch, 1 ms apart: for sources that fail on purpose.
#[cfg(target_os = "linux")]
pub(crate) fn one_quick_retry() -> squib_host::PagerConfig {
    squib_host::PagerConfig {
        fetch_retries: 1,
        retry_backoff: Duration::from_millis(1),
        ..quiet()
    }
}

/// A restore under test: the test snapshot of some pages ([`data`](Self::data)), mapped lazily
/// at offset 0 ([`mem`](Self::mem)) and served by a running pager ([`pager`](Self::pager)).
/// Made with [`Restore::of`]; fields are public so a test can destructure it.
///
/// `pager` stops its server when it is dropped (see [`Served`]), so a test that panics halfway
/// leaves no faulting thread asleep; [`Served::finish`] also asserts a clean end.
#[cfg(target_os = "linux")]
pub(crate) struct Restore {
    /// The snapshot the mapping must read back.
    pub(crate) data: Vec<u8>,
    /// The whole snapshot, mapped lazily at offset 0; shared so faulting threads can hold it.
    pub(crate) mem: std::sync::Arc<squib_host::LazyMapping>,
    /// The pager, its server running.
    pub(crate) pager: Served,
}

/// How a [`Restore`] is made: a snapshot served from memory with the [`quiet`] settings
/// unless [`source`](Self::source) or [`config`](Self::config) say otherwise.
#[cfg(target_os = "linux")]
pub(crate) struct RestoreBuilder {
    data: Vec<u8>,
    source: Option<Box<dyn squib_host::PageSource>>,
    config: squib_host::PagerConfig,
}

#[cfg(target_os = "linux")]
impl Restore {
    /// A restore of the [`snapshot`] of `pages` pages.
    pub(crate) fn of(pages: usize) -> RestoreBuilder {
        Self::serving(snapshot(pages))
    }

    /// A restore of `data` (whole pages), for a test that builds its source from the
    /// snapshot before the restore starts.
    pub(crate) fn serving(data: Vec<u8>) -> RestoreBuilder {
        RestoreBuilder {
            data,
            source: None,
            config: quiet(),
        }
    }
}

#[cfg(target_os = "linux")]
impl RestoreBuilder {
    /// Serves the pages from `source` instead of the snapshot held in memory (a slow, failing
    /// or remote source); [`Restore::data`] is still the snapshot the mapping should read.
    pub(crate) fn source(mut self, source: impl squib_host::PageSource + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The pager's settings (start from [`quiet`]).
    pub(crate) fn config(mut self, config: squib_host::PagerConfig) -> Self {
        self.config = config;
        self
    }

    /// Turns background population on (the pager's default, off in [`quiet`]).
    pub(crate) fn background(mut self) -> Self {
        self.config.background = true;
        self
    }

    /// Maps the whole snapshot at offset 0 and starts the server.
    pub(crate) fn start(self) -> Restore {
        let (data, pager) = self.pager();
        let mem = pager.map_lazy(data.len(), 0).expect("map the snapshot");
        Restore {
            data,
            mem: std::sync::Arc::new(mem),
            pager: Served::start(pager),
        }
    }

    /// Starts the server with nothing mapped, for tests that map (and unmap) regions while it
    /// runs; returns the snapshot and the served pager.
    pub(crate) fn serve(self) -> (Vec<u8>, Served) {
        let (data, pager) = self.pager();
        (data, Served::start(pager))
    }

    fn pager(self) -> (Vec<u8>, squib_host::Pager) {
        let source = match self.source {
            Some(source) => source,
            None => Box::new(squib_host::MemorySource::new(self.data.clone())),
        };
        (self.data, squib_host::Pager::new(source, self.config))
    }
}
