//! The measured-memory probe: a real reading of this process, and a probe that reduces the
//! headroom of new admissions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqry_admission::probe::{CgroupProbe, MemoryProbe, MemorySample, ProbeError, RssProbe};
use sqry_admission::{AdmissionManager, ProbeConfig, ReserveError, ReserveRequest};

use crate::support::{Manager, config, key};

/// A probe whose reading the test sets.
struct Dial {
    current: AtomicU64,
    max: u64,
}

impl MemoryProbe for Dial {
    fn sample(&self) -> Result<MemorySample, ProbeError> {
        Ok(MemorySample {
            current: self.current.load(Ordering::SeqCst),
            max: Some(self.max),
        })
    }

    fn name(&self) -> &str {
        "dial"
    }
}

#[test]
fn untracked_memory_reduces_headroom_and_its_release_restores_it() {
    let dial = Arc::new(Dial {
        current: AtomicU64::new(0),
        max: 10_000,
    });
    let m: Manager = AdmissionManager::new(
        config(8_000).probe(
            ProbeConfig::new(dial.clone())
                .margin(500)
                .refresh_every(Duration::ZERO),
        ),
    );
    m.register(key("k"), false);
    // Nothing untracked: min(8000, 10000 - 500) = 8000.
    assert_eq!(m.refresh_probe().expect("reads"), 0);
    // 4000 bytes the ledger does not count: the effective limit falls to 10000 - 4500.
    dial.current.store(4_000, Ordering::SeqCst);
    assert_eq!(m.refresh_probe().expect("reads"), 2_500);
    assert_eq!(m.ledger().snapshot().effective_limit, 5_500);
    let err = m
        .reserve(&key("k"), ReserveRequest::new(6_000))
        .expect_err("over the effective limit");
    assert!(matches!(err, ReserveError::ExceedsLimit { .. }), "{err:?}");
    let r = m
        .reserve(&key("k"), ReserveRequest::new(5_000))
        .expect("fits");
    dial.current.store(0, Ordering::SeqCst);
    m.register(key("j"), false);
    let r2 = m
        .reserve(&key("j"), ReserveRequest::new(3_000))
        .expect("headroom restored (the probe refreshes on the admission path)");
    assert!(m.ledger().snapshot().high_water <= 8_000);
    drop((r, r2));
}

#[test]
fn rss_and_cgroup_probes_read_this_machine() {
    match RssProbe.sample() {
        Ok(s) => assert!(s.current > 0),
        Err(e) => println!("skip: rss probe: {e}"),
    }
    match CgroupProbe::detect() {
        Ok(probe) => {
            let s = probe.sample().expect("detected cgroup is readable");
            assert!(s.current > 0, "{}: {s:?}", probe.dir().display());
        }
        Err(e) => println!("skip: cgroup probe: {e}"),
    }
}
