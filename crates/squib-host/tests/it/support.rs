//! Shared helpers: snapshot contents, skip checks, deadline joins.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use workspace_tests::support::TempDir;

/// The host page size.
pub(crate) fn ps() -> usize {
    squib_host::host_page_size()
}

/// Whether a userfaultfd can be created here; prints the skip line if not.
pub(crate) fn uffd_or_skip(test: &str) -> bool {
    #[cfg(target_os = "linux")]
    {
        match squib_host::Uffd::open() {
            Ok(_) => true,
            Err(e) => {
                eprintln!("skip: {test}: {e}");
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("skip: {test}: userfaultfd is Linux-only");
        false
    }
}

/// A deterministic byte for page `page`, byte `i`.
pub(crate) fn byte(page: usize, i: usize) -> u8 {
    let x = (page as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (x >> 29) as u8 | 1
}

/// Whether page `page` of a test snapshot is all zeros (30% of pages).
pub(crate) fn zero_page(page: usize) -> bool {
    page % 10 < 3
}

/// A snapshot of `pages` pages mixing data pages and zero pages.
pub(crate) fn snapshot(pages: usize) -> Vec<u8> {
    let ps = ps();
    let mut v = vec![0u8; pages * ps];
    for p in 0..pages {
        if !zero_page(p) {
            for (i, b) in v[p * ps..(p + 1) * ps].iter_mut().enumerate() {
                *b = byte(p, i);
            }
        }
    }
    v
}

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
