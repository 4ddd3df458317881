//! Property tests: the handshake parser never panics and accepts exactly the well-formed
//! region lists; a region set never holds overlapping regions and resolves addresses like a
//! linear scan; prewarm lists round-trip through their file.

use proptest::prelude::*;
use squib_host::{PrewarmList, Region, RegionSet};

use crate::pages::ps;
use crate::support::temp_dir;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn region_sets_never_overlap_and_find_like_a_scan(
        specs in proptest::collection::vec((0u64..64, 1u64..8), 1..24),
        probes in proptest::collection::vec(0u64..80, 1..32),
    ) {
        let ps = ps() as u64;
        let mut set = RegionSet::new();
        let mut accepted: Vec<Region> = Vec::new();
        for (page, len) in specs {
            let r = Region::new(page * ps, len * ps);
            let overlaps = accepted.iter().any(|a| a.base < r.end() && r.base < a.end());
            let got = set.insert(r, None);
            prop_assert_eq!(got.is_ok(), !overlaps, "{:?}", r);
            if got.is_ok() {
                accepted.push(r);
            }
        }
        for p in probes {
            let addr = p * ps + 7;
            let scan = accepted.iter().find(|r| r.contains(addr)).map(|r| r.base);
            prop_assert_eq!(set.find(addr).map(|r| r.base), scan);
        }
    }

    #[test]
    fn prewarm_lists_round_trip(offsets in proptest::collection::vec(any::<u64>(), 0..64)) {
        let dir = temp_dir("prop-prewarm");
        let path = dir.join("ws");
        let list = PrewarmList::new(offsets);
        list.save(&path).unwrap();
        prop_assert_eq!(PrewarmList::load(&path).unwrap(), list);
    }
}

#[cfg(target_os = "linux")]
mod handshake {
    use super::*;
    use squib_host::firecracker::parse_handshake;

    /// A region: page index, length and offset in pages, the Firecracker generation whose
    /// page-size fields it carries (0: none, ≤ v1.6; 1: `page_size_kib` in bytes, v1.7 – v1.11;
    /// 2: both, ≥ v1.12), and the name of an unknown field.
    fn region_json() -> impl Strategy<Value = (u64, u64, u64, u8, String)> {
        (0u64..32, 0u64..6, 0u64..32, 0u8..3, "[a-z_]{0,6}")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_handshake(&bytes, 1 << 20);
        }

        #[test]
        fn accepted_handshakes_are_exactly_the_valid_region_lists(
            regions in proptest::collection::vec(region_json(), 0..6),
        ) {
            let ps = ps() as u64;
            let snapshot_len = 48 * ps;
            let mut json = String::from("[");
            let mut valid = !regions.is_empty();
            let mut seen: Vec<(u64, u64)> = Vec::new();
            for (i, (page, len, off, generation, extra)) in regions.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                let size_field = match generation {
                    0 => String::new(),
                    1 => format!("\"page_size_kib\":{ps},"),
                    _ => format!("\"page_size\":{ps},\"page_size_kib\":{ps},"),
                };
                json.push_str(&format!(
                    "{{\"base_host_virt_addr\":{},\"size\":{},\"offset\":{},{size_field}\"{extra}x\":1}}",
                    (page + 1) * ps * 16,
                    len * ps,
                    off * ps
                ));
                let (base, size) = ((page + 1) * ps * 16, len * ps);
                valid &= *len > 0
                    && off * ps + size <= snapshot_len
                    && !seen.iter().any(|&(b, s)| b < base + size && base < b + s);
                seen.push((base, size));
            }
            json.push(']');
            let got = parse_handshake(json.as_bytes(), snapshot_len);
            prop_assert_eq!(got.is_ok(), valid, "{} -> {:?}", json, got);
            if let Ok(m) = got {
                prop_assert_eq!(m.len(), regions.len());
            }
        }
    }
}
