//! Anonymous mappings: alignment, zero fill, bounds and the page size.

use platform_primitives::mem::{AnonMapping, page_size};

#[test]
fn page_size_is_the_hosts() {
    let page = page_size();
    assert!(page.is_power_of_two() && page >= 4096, "{page}");
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    assert_eq!(page, 4096);
}

#[test]
fn aligned_mapping_is_aligned_zeroed_and_writable() {
    for align in [page_size(), 64 << 10, 2 << 20] {
        let mut map = AnonMapping::aligned(3 * page_size() + 1, align).expect("map");
        assert_eq!(map.as_ptr() as usize % align, 0, "align {align}");
        assert_eq!(map.len(), 4 * page_size(), "rounded up to whole pages");
        assert!(
            map.as_slice().iter().all(|&b| b == 0),
            "fresh memory is zero"
        );
        let len = map.len();
        map.as_mut_slice()[len - 1] = 0xA5;
        map.as_mut_slice()[0] = 0x5A;
        assert_eq!((map.as_slice()[0], map.as_slice()[len - 1]), (0x5A, 0xA5));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn mapping_is_visible_in_proc_maps() {
    let map = AnonMapping::aligned(8 << 20, 2 << 20).expect("map");
    let (start, end) = (map.as_ptr() as usize, map.as_ptr() as usize + map.len());
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let covered = maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap_or("");
        let Some((a, b)) = range.split_once('-') else {
            return false;
        };
        let a = usize::from_str_radix(a, 16).unwrap_or(usize::MAX);
        let b = usize::from_str_radix(b, 16).unwrap_or(0);
        a <= start && end <= b && line.contains("rw-p")
    });
    assert!(covered, "{start:#x}-{end:#x} not in /proc/self/maps");
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    assert!(AnonMapping::new(0).is_err());
    assert!(
        AnonMapping::aligned(4096, 3 << 12).is_err(),
        "non power of two"
    );
    assert!(AnonMapping::aligned(usize::MAX - 10, 4096).is_err());
    assert!(AnonMapping::aligned(1 << 20, 1 << 62).is_err());
}

/// The `KernelPageSize` `/proc/self/smaps` reports for the mapping starting at `start`.
#[cfg(target_os = "linux")]
fn kernel_page_size_kib(start: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let header = format!("{start:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
    lines.next()?;
    lines
        .take_while(|l| !l.contains('-') || l.contains(':'))
        .find_map(|l| l.strip_prefix("KernelPageSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(target_os = "linux")]
#[test]
fn huge_mappings_use_2mib_pages_and_a_short_pool_is_a_clear_error() {
    use platform_primitives::mem::HUGE_PAGE_SIZE;
    let reservation = match workspace_tests::hugetlb::reserve(2) {
        Ok(r) => r,
        Err(why) => {
            return crate::support::skip(
                "huge_mappings_use_2mib_pages_and_a_short_pool_is_a_clear_error",
                &why,
            );
        }
    };
    {
        // Rounded up to whole huge pages, aligned, writable, and really 2 MiB pages.
        let mut map = AnonMapping::huge(HUGE_PAGE_SIZE + 1).expect("huge mapping");
        assert_eq!(map.len(), 2 * HUGE_PAGE_SIZE);
        assert_eq!(map.as_ptr() as usize % HUGE_PAGE_SIZE, 0);
        map.as_mut_slice()[HUGE_PAGE_SIZE + 7] = 9;
        assert_eq!(map.as_slice()[HUGE_PAGE_SIZE + 7], 9);
        assert_eq!(kernel_page_size_kib(map.as_ptr() as usize), Some(2048));
    }
    // More than the pool holds fails when mapped, naming the knob.
    let free = workspace_tests::hugetlb::free_pages().unwrap_or(0) as usize;
    let err = AnonMapping::huge((free + 1) * HUGE_PAGE_SIZE).expect_err("pool is short");
    assert_eq!(err.kind(), std::io::ErrorKind::OutOfMemory, "{err}");
    assert!(err.to_string().contains("nr_hugepages"), "{err}");
    drop(reservation);
    assert!(AnonMapping::huge(0).is_err());
}
