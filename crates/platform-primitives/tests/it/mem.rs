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
