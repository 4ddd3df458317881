//! The edges of fault serving: a readahead window that runs into a bad page, fetches that hang
//! for good, and what a fault that failed closed looks like from the kernel's side.
//!
//! Pages are read here through the kernel (`write(2)` from the lazy mapping into a pipe): a
//! missing page makes the write wait for the server exactly as a touch would, and a page that
//! failed closed (`UFFDIO_POISON`) makes it fail with `EFAULT` instead of raising `SIGBUS`, so
//! one test can tell, page by page, which faults were served and which failed.

#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use squib_host::{PageRequest, PageSource, PageSourceError, PagerConfig};
use workspace_tests::support::skip;

use crate::pages::{ps, require_uffd, snapshot, uffd_or_skip};
use crate::support::{Restore, kernel_read, one_quick_retry, quiet, within};

/// Whether the kernel delivers failed faults as poisoned pages (Linux 6.6+), which
/// `kernel_read` needs; prints the skip line if not.
pub(crate) fn poison_or_skip(test: &str) -> bool {
    if !uffd_or_skip(test) {
        return false;
    }
    match squib_host::Uffd::open() {
        Ok(u) if u.can_poison() => true,
        _ => {
            skip(test, "this kernel has no UFFDIO_POISON (Linux 6.6)");
            false
        }
    }
}

/// A snapshot whose reads fail past `end` (a truncated file, a page server missing a tail),
/// and whose reads touching one of the `hang` pages block until released.
#[derive(Debug)]
struct Flawed {
    data: Bytes,
    end: u64,
    local: bool,
    hang: HashSet<u64>,
    released: Arc<(Mutex<bool>, Condvar)>,
}

impl Flawed {
    fn new(data: Vec<u8>, local: bool) -> Self {
        let end = data.len() as u64;
        Self {
            data: data.into(),
            end,
            local,
            hang: HashSet::new(),
            released: Arc::new((Mutex::new(false), Condvar::new())),
        }
    }
}

impl PageSource for Flawed {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        let (first, last) = (req.offset, req.offset + req.len as u64);
        let ps = ps() as u64;
        if (first / ps..last.div_ceil(ps)).any(|p| self.hang.contains(&p)) {
            // Hangs until the test releases it (bounded, so no thread outlives the run long).
            let (lock, cv) = &*self.released;
            let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let _ = cv.wait_timeout_while(guard, Duration::from_secs(60), |released| !*released);
        }
        if last > self.end {
            return Err(PageSourceError::Short {
                offset: req.offset,
                wanted: req.len,
                got: self.end.saturating_sub(first) as usize,
            });
        }
        Ok(self.data.slice(first as usize..last as usize))
    }

    fn is_local(&self) -> bool {
        self.local
    }
}

/// A thread reading pages 2970..2999 in order against a source that fails from page 3000 on:
/// the readahead windows grow into page 3000, but only page 3000 itself fails.
fn readahead_into_a_bad_page(local: bool) {
    let (pages, bad) = (3064usize, 3000usize);
    let data = snapshot(pages);
    let mut source = Flawed::new(data.clone(), local);
    source.end = (bad * ps()) as u64;
    let Restore { data, mem, pager } = Restore::serving(data)
        .source(source)
        .config(one_quick_retry())
        .start();
    let m = mem.clone();
    let results = within(Duration::from_secs(30), "sequential reads", move || {
        (bad - 30..=bad)
            .map(|p| (p, kernel_read(&m, p)))
            .collect::<Vec<_>>()
    });
    for (p, got) in results {
        match got {
            Ok(bytes) if p < bad => assert!(
                bytes == data[p * ps()..(p + 1) * ps()],
                "page {p} read wrong bytes"
            ),
            Err(e) if p == bad => assert_eq!(e.raw_os_error(), Some(libc::EFAULT), "page {p}"),
            other => panic!("page {p} (the source fails from page {bad}): {other:?}"),
        }
    }
    let s = pager.stats();
    assert_eq!(s.failed_closed, 1, "{s:?}");
    assert!(s.readahead_retries >= 1, "{s:?}");
    pager.finish();
}

#[test]
fn a_failed_readahead_window_fails_only_the_bad_page_local_source() {
    if poison_or_skip("a_failed_readahead_window_fails_only_the_bad_page_local_source") {
        readahead_into_a_bad_page(true);
    }
}

#[test]
fn a_failed_readahead_window_fails_only_the_bad_page_remote_source() {
    if poison_or_skip("a_failed_readahead_window_fails_only_the_bad_page_remote_source") {
        readahead_into_a_bad_page(false);
    }
}

/// Five pages whose fetches hang for good, four fetch workers: the five faults fail closed at
/// the fetch timeout, and every later fault on a healthy page is still served promptly.
#[test]
fn hung_fetches_never_starve_faults_on_healthy_pages() {
    if !poison_or_skip("hung_fetches_never_starve_faults_on_healthy_pages") {
        return;
    }
    let pages = 256;
    let data = snapshot(pages);
    let mut source = Flawed::new(data.clone(), false);
    source.hang = (0..5).collect();
    let released = source.released.clone();
    let timeout = Duration::from_millis(300);
    let Restore { data, mem, pager } = Restore::serving(data)
        .source(source)
        .config(PagerConfig {
            readahead_max: 0,
            fetch_workers: 4,
            fetch_timeout: timeout,
            ..quiet()
        })
        .start();
    let hung: Vec<_> = (0..5)
        .map(|p| {
            let m = mem.clone();
            std::thread::spawn(move || kernel_read(&m, p))
        })
        .collect();
    for (p, t) in hung.into_iter().enumerate() {
        let got = t.join().unwrap();
        assert_eq!(
            got.as_ref().map_err(io::Error::raw_os_error).err(),
            Some(Some(libc::EFAULT)),
            "page {p} hangs in the source and must fail closed"
        );
    }
    let m = mem.clone();
    let slow = within(Duration::from_secs(30), "healthy reads", move || {
        (100..140)
            .filter_map(|p| {
                let t0 = Instant::now();
                let got = kernel_read(&m, p);
                let took = t0.elapsed();
                (got.as_deref().ok() != Some(&data[p * ps()..(p + 1) * ps()]) || took >= timeout)
                    .then(|| format!("page {p}: {:?} after {took:?}", got.map(|_| ())))
            })
            .collect::<Vec<_>>()
    });
    assert!(slow.is_empty(), "healthy pages failed or waited: {slow:?}");
    let s = pager.stats();
    assert_eq!(s.failed_closed, 5, "{s:?}");
    assert!(s.fetch_threads_replaced >= 5, "{s:?}");
    let (lock, cv) = &*released;
    *lock.lock().unwrap() = true;
    cv.notify_all();
    pager.finish();
}

/// A balloon thread discards pages through a shared reference while another thread reads the
/// rest of the mapping: discarded pages read zeros, the others the snapshot.
#[test]
fn a_balloon_thread_discards_through_a_shared_reference() {
    require_uffd!("a_balloon_thread_discards_through_a_shared_reference");
    let pages = 256;
    let Restore { data, mem, pager } = Restore::of(pages).background().start();
    let balloon = {
        let mem = mem.clone();
        std::thread::spawn(move || {
            for p in (pages / 2..pages).step_by(2) {
                // SAFETY: nothing holds a reference into the second half: the reader below
                // reads only the first half, through raw pointers.
                unsafe { mem.discard_shared(p * ps(), ps()) }.unwrap();
            }
        })
    };
    let base = mem.as_ptr();
    let first_half_ok = (0..pages / 2).all(|p| {
        (0..ps()).step_by(512).all(|i| {
            // SAFETY: in bounds of the mapping, which outlives this loop; read through a raw
            // pointer, so no reference overlaps the balloon's range.
            let b = unsafe { std::ptr::read_volatile(base.wrapping_add(p * ps() + i)) };
            b == data[p * ps() + i]
        })
    });
    balloon.join().unwrap();
    assert!(first_half_ok, "the reader saw wrong bytes");
    for p in pages / 2..pages {
        let page = &mem.as_slice()[p * ps()..(p + 1) * ps()];
        if (p - pages / 2) % 2 == 0 {
            assert!(page.iter().all(|&b| b == 0), "discarded page {p}");
        } else {
            assert!(page == &data[p * ps()..(p + 1) * ps()], "page {p}");
        }
    }
    assert!(pager.stats().removes > 0);
    pager.finish();
}

/// `Uffd::copy` while a `REMOVE` event sits unread returns at once with the copy deferred
/// (it cannot succeed until the caller reads its events), and succeeds after the read.
#[test]
fn a_copy_deferred_by_an_unread_remove_returns_at_once() {
    use squib_host::{Copied, Uffd, UffdEvent};
    require_uffd!("a_copy_deferred_by_an_unread_remove_returns_at_once");
    let uffd = Arc::new(Uffd::open().unwrap());
    let mut map = platform_primitives::mem::AnonMapping::new(4 * ps()).unwrap();
    uffd.register_mapping(&mut map).unwrap();
    let base = map.as_ptr() as u64;
    // A thread drops page 2: madvise waits until the REMOVE event is read.
    let remover = std::thread::spawn(move || {
        // SAFETY: page 2 of a mapping this test owns; nothing references it.
        let rc = unsafe {
            libc::madvise(
                (base as usize + 2 * ps()) as *mut libc::c_void,
                ps(),
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0);
    });
    let page = vec![7u8; ps()];
    // Nothing may panic until the event is read: the remover would stay blocked in madvise.
    let queued = uffd.wait(Some(Duration::from_secs(10)));
    let t0 = Instant::now();
    let got = uffd.copy(base, &page, true);
    let took = t0.elapsed();
    let mut events = Vec::new();
    while !remover.is_finished() {
        let _ = uffd.wait(Some(Duration::from_millis(10)));
        let _ = uffd.read_events(&mut events);
    }
    remover.join().unwrap();
    assert!(matches!(queued, Ok(true)), "the REMOVE event never came");
    assert_eq!(got.unwrap(), Copied::Deferred { copied: 0 });
    assert!(
        took < Duration::from_millis(100),
        "the deferral took {took:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, UffdEvent::Remove { .. })),
        "{events:?}"
    );
    assert_eq!(uffd.copy(base, &page, true).unwrap(), Copied::All);
    assert_eq!(map.as_slice()[0], 7);
    uffd.unregister(base, map.len() as u64).unwrap();
}
