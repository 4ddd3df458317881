//! Real page faults on lazily restored memory, served by the userfaultfd server.

#![cfg(target_os = "linux")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use squib_host::{
    FilePageSource, LazyMapping, MemorySource, PageRequest, PageSource, PageSourceError, Pager,
    PagerConfig, PrewarmList, spawn_server,
};

use crate::pages::{ps, require_uffd, snapshot};
use crate::support::{Restore, Served, eventually, one_quick_retry, quiet, temp_dir, within};
use workspace_tests::support::skip;

const LIMIT: Duration = Duration::from_secs(30);

/// Touches the given pages (reads one byte each) in order, then returns the whole mapping's
/// bytes compared with `expected`: the index of the first differing byte, if any.
fn first_mismatch(mem: &LazyMapping, expected: &[u8]) -> Option<usize> {
    mem.as_slice()
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
}

#[test]
fn faults_from_several_threads_are_served_byte_for_byte() {
    require_uffd!("faults_from_several_threads_are_served_byte_for_byte");
    let pages = 2048;
    let data = Arc::new(snapshot(pages));
    let pager = Pager::new(MemorySource::new(data.to_vec()), quiet());
    let mem = Arc::new(pager.map_lazy(pages * ps(), 0).unwrap());
    let server = spawn_server(&pager).unwrap();

    let threads: Vec<_> = (0..4usize)
        .map(|t| {
            let (mem, data) = (mem.clone(), data.clone());
            std::thread::spawn(move || {
                // Each thread walks all pages in its own pseudo-random order.
                let mut bad = Vec::new();
                let mut x = 0x1234_5678u64 + t as u64;
                for _ in 0..pages {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = (x % pages as u64) as usize;
                    let i = (x >> 32) as usize % ps();
                    let off = p * ps() + i;
                    if mem.as_slice()[off] != data[off] {
                        bad.push(off);
                    }
                }
                bad
            })
        })
        .collect();
    let bad = within(LIMIT, "four faulting threads", move || {
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(
        bad.is_empty(),
        "wrong bytes at offsets {:?}",
        &bad[..bad.len().min(8)]
    );
    let check = within(LIMIT, "full comparison", {
        let (mem, data) = (mem.clone(), data.clone());
        move || first_mismatch(&mem, &data)
    });
    assert_eq!(check, None);
    let s = pager.stats();
    // Threads touching the same missing page at once each raise a fault of their own.
    assert!(s.faults > 0 && s.faults <= 4 * pages as u64, "{s:?}");
    assert!(
        s.zero_pages > 0,
        "all-zero pages use UFFDIO_ZEROPAGE: {s:?}"
    );
    assert!(s.pages_copied > 0);
    assert_eq!(s.pages_copied + s.zero_pages, pages as u64, "{s:?}");
    assert_eq!(s.source_errors + s.failed_closed, 0);
    assert!(s.latency.count() > 0);

    let asked = Instant::now();
    pager.request_shutdown();
    within(Duration::from_millis(200), "server shutdown", move || {
        server.join()
    })
    .unwrap()
    .unwrap();
    assert!(asked.elapsed() <= 4 * pager.config().poll_interval);
}

#[test]
fn sparse_snapshot_files_serve_holes_as_zero_pages() {
    require_uffd!("sparse_snapshot_files_serve_holes_as_zero_pages");
    use std::os::unix::fs::FileExt;
    let dir = temp_dir("sparse");
    let path = dir.join("mem.snap");
    let pages = 1024;
    // Data only in pages 0..16 and 512..528; the rest are holes.
    let file = std::fs::File::create(&path).unwrap();
    file.set_len((pages * ps()) as u64).unwrap();
    let data = snapshot(pages);
    for range in [0..16 * ps(), 512 * ps()..528 * ps()] {
        file.write_all_at(&data[range.clone()], range.start as u64)
            .unwrap();
    }
    file.sync_all().unwrap();
    let mut expected = vec![0u8; pages * ps()];
    expected[..16 * ps()].copy_from_slice(&data[..16 * ps()]);
    expected[512 * ps()..528 * ps()].copy_from_slice(&data[512 * ps()..528 * ps()]);

    let source = FilePageSource::open(&path).unwrap();
    assert!(
        source.data_bytes() < (pages * ps()) as u64,
        "the file system keeps holes"
    );
    let Restore { mem, pager, .. } = Restore::of(pages).source(source).start();
    let m = mem.clone();
    let mismatch = within(LIMIT, "reading the sparse snapshot", move || {
        first_mismatch(&m, &expected)
    });
    assert_eq!(mismatch, None);
    let s = pager.stats();
    // Pages in holes are never read from the file.
    assert!(s.zero_pages >= (pages - 32) as u64 * 7 / 10, "{s:?}");
    assert!(s.fetches <= 64, "holes must not be fetched: {s:?}");
    pager.finish();
}

#[test]
fn removed_pages_read_as_zeros_on_the_next_touch() {
    require_uffd!("removed_pages_read_as_zeros_on_the_next_touch");
    let Restore { data, mem, pager } = Restore::of(64).start();
    let mut mem = Arc::into_inner(mem).expect("the only owner of the mapping");
    let (mem, data) = within(LIMIT, "remove then touch", move || {
        assert_eq!(mem.as_slice()[3 * ps() + 5], data[3 * ps() + 5]);
        assert_eq!(mem.as_slice()[4 * ps() + 5], data[4 * ps() + 5]);
        // A balloon takes pages 3..5 back; one of them was never touched.
        mem.discard(3 * ps(), 3 * ps()).unwrap();
        for p in 3..6 {
            assert!(
                mem.as_slice()[p * ps()..(p + 1) * ps()]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
        // Writes after the remove work too.
        mem.as_mut_slice()[4 * ps()] = 0xAB;
        assert_eq!(mem.as_slice()[4 * ps()], 0xAB);
        (mem, data)
    });
    assert_eq!(mem.as_slice()[7 * ps()..8 * ps()], data[7 * ps()..8 * ps()]);
    let s = pager.stats();
    assert!(s.removes >= 1, "{s:?}");
    pager.finish();
}

#[test]
fn background_population_fills_untouched_memory_in_growing_chunks() {
    require_uffd!("background_population_fills_untouched_memory_in_growing_chunks");
    let pages = 4096;
    let Restore { data, mem, pager } = Restore::of(pages).background().start();
    eventually(LIMIT, "background population", || {
        pager.stats().background_pages == pages as u64
    });
    let m = mem.clone();
    assert_eq!(
        within(LIMIT, "compare", move || first_mismatch(&m, &data)),
        None
    );
    let s = pager.stats();
    assert_eq!(
        s.faults, 0,
        "everything was present before the first touch: {s:?}"
    );
    // 64 KiB doubling to 4 MiB covers 16 MiB in far fewer fetches than pages.
    assert!(s.fetches < 20, "{s:?}");
    pager.finish();
}

/// `Pager::populate` drains a restore whose background population is off: every page comes
/// in without a fault, a page whose fetch failed on the first pass is fetched on a later one,
/// and only then does the pager say it is populated.
#[test]
fn populate_installs_every_page_and_retries_what_failed() {
    require_uffd!("populate_installs_every_page_and_retries_what_failed");
    /// Fails every fetch that covers `bad_page` until `failures` of them have failed.
    #[derive(Debug)]
    struct FailsAtFirst {
        inner: MemorySource,
        bad_page: u64,
        failures: usize,
        failed: AtomicUsize,
    }
    impl PageSource for FailsAtFirst {
        fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
            let bad = self.bad_page * ps() as u64;
            if (req.offset..req.offset + req.len as u64).contains(&bad)
                && self.failed.fetch_add(1, Ordering::AcqRel) < self.failures
            {
                return Err(PageSourceError::Other {
                    offset: req.offset,
                    reason: "the page server blinked".into(),
                });
            }
            self.inner.fetch(req)
        }
        fn len_hint(&self) -> Option<u64> {
            self.inner.len_hint()
        }
    }
    let data = snapshot(2048);
    let Restore { data, mem, pager } = Restore::serving(data.clone())
        .source(FailsAtFirst {
            inner: MemorySource::new(data),
            bad_page: 1500,
            failures: 4,
            failed: AtomicUsize::new(0),
        })
        .config(one_quick_retry())
        .start();
    let m = mem.clone();
    within(LIMIT, "touch page 3", move || m.as_slice()[3 * ps()]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!pager.is_populated(), "nothing asked for the other pages");
    assert_eq!(pager.stats().background_pages, 0);

    pager.populate();
    eventually(LIMIT, "population", || pager.is_populated());
    let s = pager.stats();
    assert_eq!(s.faults, 1, "only the first touch faulted: {s:?}");
    assert!(s.source_errors >= 4, "the bad page failed first: {s:?}");
    let m = mem.clone();
    assert_eq!(
        within(LIMIT, "compare", move || first_mismatch(&m, &data)),
        None
    );
    assert_eq!(
        pager.stats().faults,
        1,
        "nothing faulted after the population"
    );
    pager.finish();
}

#[test]
fn sequential_faults_trigger_readahead() {
    require_uffd!("sequential_faults_trigger_readahead");
    let pages = 2048;
    let Restore { data, mem, pager } = Restore::of(pages).start();
    let m = mem.clone();
    let mismatch = within(LIMIT, "sequential walk", move || {
        (0..pages).find(|&p| m.as_slice()[p * ps()] != data[p * ps()])
    });
    assert_eq!(mismatch, None);
    let s = pager.stats();
    assert!(s.readahead_hits > 0, "{s:?}");
    assert!(
        s.faults < pages as u64 / 8,
        "readahead must absorb most faults: {s:?}"
    );
    assert_eq!(s.readahead_pages + s.faults, pages as u64, "{s:?}");
    pager.finish();
}

#[test]
fn a_recorded_working_set_prewarms_the_next_restore() {
    require_uffd!("a_recorded_working_set_prewarms_the_next_restore");
    let dir = temp_dir("ws");
    let ws_path = dir.join("ws");
    let pages = 512;
    let touched: Vec<usize> = vec![17, 3, 400, 401, 9, 250, 511, 0];
    let no_readahead = PagerConfig {
        readahead_max: 0,
        ..quiet()
    };

    // First run: record.
    let Restore { data, mem, pager } = Restore::of(pages).config(no_readahead.clone()).start();
    let (m, t, d) = (mem.clone(), touched.clone(), data.clone());
    within(LIMIT, "first run", move || {
        for p in t {
            assert_eq!(m.as_slice()[p * ps() + 1], d[p * ps() + 1]);
        }
    });
    let ws = pager.working_set();
    let expected: Vec<u64> = touched.iter().map(|&p| (p * ps()) as u64).collect();
    assert_eq!(ws.offsets(), &expected[..]);
    ws.save(&ws_path).unwrap();
    pager.finish();
    drop(mem);

    // Second run: replay; the same touches take no fault.
    let Restore { mem, pager, .. } = Restore::of(pages)
        .config(PagerConfig {
            prewarm: PrewarmList::load(&ws_path).unwrap(),
            ..no_readahead
        })
        .start();
    eventually(LIMIT, "prewarm", || {
        pager.stats().prewarmed == touched.len() as u64
    });
    let (m, t, d) = (mem.clone(), touched.clone(), data.clone());
    within(LIMIT, "second run", move || {
        for p in t {
            assert_eq!(
                m.as_slice()[p * ps()..(p + 1) * ps()],
                d[p * ps()..(p + 1) * ps()]
            );
        }
    });
    let s = pager.stats();
    assert_eq!(s.faults, 0, "{s:?}");
    pager.finish();
}

/// A slow source: page 0 takes 1.5 s, every other page is immediate.
#[derive(Debug)]
struct SlowFirstPage {
    inner: MemorySource,
    concurrent: AtomicUsize,
    max_concurrent_same_page: AtomicUsize,
}

impl PageSource for SlowFirstPage {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        if req.offset == 0 {
            let now = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_concurrent_same_page
                .fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1500));
            self.concurrent.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.fetch(req)
    }
    // Not local: fetched on workers.
}

#[test]
fn a_slow_fetch_does_not_hold_up_faults_on_other_pages() {
    require_uffd!("a_slow_fetch_does_not_hold_up_faults_on_other_pages");
    let data = snapshot(64);
    let source = Arc::new(SlowFirstPage {
        inner: MemorySource::new(data.clone()),
        concurrent: AtomicUsize::new(0),
        max_concurrent_same_page: AtomicUsize::new(0),
    });
    let Restore { data, mem, pager } = Restore::serving(data)
        .source(source.clone())
        .config(PagerConfig {
            readahead_max: 0,
            ..quiet()
        })
        .start();
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let m = mem.clone();
            std::thread::spawn(move || m.as_slice()[100])
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let (m, d) = (mem.clone(), data.clone());
    let fast = within(
        Duration::from_millis(1000),
        "a fault on another page",
        move || {
            let t = Instant::now();
            assert_eq!(m.as_slice()[45 * ps()..46 * ps()], d[45 * ps()..46 * ps()]);
            t.elapsed()
        },
    );
    assert!(fast < Duration::from_millis(1000), "{fast:?}");
    let got = within(LIMIT, "the slow page", move || {
        slow.into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(got.iter().all(|&b| b == data[100]));
    assert_eq!(
        source.max_concurrent_same_page.load(Ordering::SeqCst),
        1,
        "page 0 fetched twice at once"
    );
    pager.finish();
}

#[test]
fn mappings_come_and_go_while_the_server_runs() {
    require_uffd!("mappings_come_and_go_while_the_server_runs");
    let pages = 256;
    let (data, pager) = Restore::of(2 * pages).serve();
    // Made after the server started: it picks new regions up.
    let first = pager.map_lazy(pages * ps(), 0).unwrap();
    let second = Arc::new(pager.map_lazy(pages * ps(), (pages * ps()) as u64).unwrap());
    assert_eq!(pager.regions().len(), 2);
    let (m, d) = (second.clone(), data.clone());
    within(LIMIT, "second mapping, first half", move || {
        assert_eq!(
            m.as_slice()[..pages / 2 * ps()],
            d[pages * ps()..(pages + pages / 2) * ps()]
        );
    });
    drop(first);
    assert_eq!(pager.regions().len(), 1);
    let (m, d) = (second.clone(), data.clone());
    within(
        LIMIT,
        "second mapping after the first was dropped",
        move || {
            assert_eq!(m.as_slice(), &d[pages * ps()..]);
        },
    );
    pager.finish();
}

#[test]
fn serve_fault_installs_into_lazy_memory_and_answers_present_pages_with_a_wake() {
    require_uffd!("serve_fault_installs_into_lazy_memory_and_answers_present_pages_with_a_wake");
    let Restore { data, mem, pager } = Restore::of(16).start();
    let base = mem.as_ptr() as u64;
    // Installed by the caller before anyone touches it: the touch takes no fault.
    let bytes = pager.serve_fault(base + 5 * ps() as u64, 1).unwrap();
    assert_eq!(&bytes[..], &data[5 * ps()..6 * ps()]);
    let m = mem.clone();
    let d = data.clone();
    within(
        LIMIT,
        "touching pre-installed and missing pages",
        move || {
            assert_eq!(m.as_slice()[5 * ps()..6 * ps()], d[5 * ps()..6 * ps()]);
            assert_eq!(m.as_slice()[7 * ps()..8 * ps()], d[7 * ps()..8 * ps()]);
        },
    );
    let s = pager.stats();
    assert_eq!(
        s.faults, 2,
        "one serve_fault call and one kernel fault: {s:?}"
    );
    // The page is present now: installing it again is answered with EEXIST and a wake-up.
    pager.serve_fault(base + 7 * ps() as u64, 1).unwrap();
    assert_eq!(pager.stats().eexist, 1);
    pager.finish();
}

/// A snapshot of `pages` 2 MiB pages; pages 2 and 5 are all zeros.
fn huge_snapshot(pages: usize) -> Vec<u8> {
    let hp = squib_host::HUGE_PAGE_SIZE;
    let mut v = vec![0u8; pages * hp];
    for p in (0..pages).filter(|p| *p != 2 && *p != 5) {
        for (i, b) in v[p * hp..(p + 1) * hp].iter_mut().enumerate() {
            // Varies inside the page, so a wrongly offset 4 KiB copy would show.
            *b = (p as u8).wrapping_mul(31) ^ (i as u8) ^ ((i >> 12) as u8) | 1;
        }
    }
    v
}

#[test]
fn huge_pages_are_served_whole_with_zero_pages_copied_from_zeros() {
    let test = "huge_pages_are_served_whole_with_zero_pages_copied_from_zeros";
    require_uffd!(test);
    let pages = 8;
    let hp = squib_host::HUGE_PAGE_SIZE;
    let reservation = match workspace_tests::hugetlb::reserve(pages as u64) {
        Ok(r) => r,
        Err(why) => return skip(test, &why),
    };
    let data = Arc::new(huge_snapshot(pages));
    let pager = Pager::new(MemorySource::new(data.to_vec()), quiet());
    let mut mem = pager.map_lazy_huge(pages * hp, 0).unwrap();
    assert_eq!(mem.page_size(), hp);
    assert_eq!(pager.regions()[0].page_size, hp);
    let pager = Served::start(pager);
    let (mem, data) = within(LIMIT, "huge page faults", move || {
        // Two threads touch every page in opposite orders, at offsets inside the pages.
        std::thread::scope(|s| {
            for reverse in [false, true] {
                let (mem, data) = (&mem, &data);
                s.spawn(move || {
                    for k in 0..pages {
                        let p = if reverse { pages - 1 - k } else { k };
                        let off = p * hp + (k * 4099 + 77) % hp;
                        assert_eq!(mem.as_slice()[off], data[off], "page {p} offset {off}");
                    }
                });
            }
        });
        assert_eq!(first_mismatch(&mem, &data), None);
        // A balloon takes a whole huge page back; it reads as zeros afterwards.
        mem.discard(3 * hp + 5, 10).unwrap();
        assert!(mem.as_slice()[3 * hp..4 * hp].iter().all(|&b| b == 0));
        assert_eq!(mem.as_slice()[4 * hp + 9], data[4 * hp + 9]);
        (mem, data)
    });
    let s = pager.stats();
    assert!(s.faults >= 1 && s.faults <= 2 * pages as u64 + 1, "{s:?}");
    assert_eq!(
        s.zero_pages,
        2 + 1,
        "pages 2, 5 and the removed page 3: {s:?}"
    );
    assert_eq!(s.pages_copied, pages as u64 - 2, "{s:?}");
    assert_eq!(s.bytes_served, (pages as u64 + 1) * hp as u64, "{s:?}");
    assert_eq!(s.source_errors + s.failed_closed, 0, "{s:?}");
    assert!(s.removes >= 1, "{s:?}");
    pager.finish();
    drop((mem, data));
    drop(reservation);
}

#[test]
fn installs_racing_removes_get_eagain_and_are_retried_without_wrong_bytes() {
    let test = "installs_racing_removes_get_eagain_and_are_retried_without_wrong_bytes";
    require_uffd!(test);
    // While a balloon's madvise(DONTNEED) waits for the server to read its REMOVE event, the
    // kernel refuses installs with EAGAIN. Background population copies many small runs (30%
    // of pages are zero, so every ten pages make two installs); a thread discarding pages at
    // the same time lands in that window sooner or later. Each round uses a fresh mapping.
    let pages = 8192;
    let (data, pager) = Restore::of(pages).background().serve();
    let started = Instant::now();
    let mut rounds = 0;
    while pager.stats().eagain_retries == 0 && started.elapsed() < Duration::from_secs(20) {
        rounds += 1;
        let mut mem = pager.map_lazy(pages * ps(), 0).unwrap();
        let background_before = pager.stats().background_pages;
        let data = data.clone();
        let (mem, removed) = within(LIMIT, "discards during background population", move || {
            let mut removed = vec![false; pages];
            let mut x = 0x9E37_79B9u64 + rounds;
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = (x % pages as u64) as usize;
                mem.discard(p * ps(), ps()).unwrap();
                removed[p] = true;
            }
            // Removed pages read zeros whenever they were removed; the rest are the snapshot.
            for p in 0..pages {
                let page = &mem.as_slice()[p * ps()..(p + 1) * ps()];
                if removed[p] {
                    assert!(page.iter().all(|&b| b == 0), "removed page {p}");
                } else {
                    assert_eq!(page, &data[p * ps()..(p + 1) * ps()], "page {p}");
                }
            }
            (mem, removed)
        });
        assert!(pager.stats().background_pages > background_before);
        assert!(removed.iter().any(|&r| r));
        drop(mem);
    }
    let s = pager.stats();
    assert!(
        s.eagain_retries > 0,
        "no install met a pending remove in {rounds} rounds: {s:?}"
    );
    assert!(s.removes > 0, "{s:?}");
    assert_eq!(s.source_errors + s.failed_closed, 0, "{s:?}");
    eprintln!(
        "{test}: {} EAGAIN retries in {rounds} round(s)",
        s.eagain_retries
    );
    pager.finish();
}
