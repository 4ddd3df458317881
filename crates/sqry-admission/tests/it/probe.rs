//! The measured-memory probe: a real reading of this process, and a probe that reduces the
//! headroom of new admissions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqry_admission::probe::{
    CgroupProbe, CgroupVersion, MemoryProbe, MemorySample, Pressure, ProbeError, RssProbe,
};
use sqry_admission::{AdmissionManager, ProbeConfig, ReserveError, ReserveRequest};
use workspace_tests::support::TempDir;

use crate::support::{Manager, config, key};

/// A probe whose reading the test sets.
struct Dial {
    current: AtomicU64,
    max: u64,
    /// PSI `some avg10`, in hundredths of a percent.
    pressure: AtomicU64,
}

impl MemoryProbe for Dial {
    fn sample(&self) -> Result<MemorySample, ProbeError> {
        Ok(MemorySample {
            current: self.current.load(Ordering::SeqCst),
            max: Some(self.max),
        })
    }

    fn pressure(&self) -> Option<Result<Pressure, ProbeError>> {
        Some(Ok(Pressure {
            some_avg10: self.pressure.load(Ordering::SeqCst) as f64 / 100.0,
            full_avg10: 0.0,
        }))
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
        pressure: AtomicU64::new(0),
    });
    let m: Manager = AdmissionManager::new(
        config(8_000).probe(
            ProbeConfig::new(dial.clone())
                .margin(500)
                .refresh_every(Duration::ZERO),
        ),
    );
    m.register(key("k"));
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
    m.register(key("j"));
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

/// On this machine's real cgroup layout — v1, v2 or hybrid (v1 controllers with a v2 tree
/// mounted beside them, as on the build machines) — `detect` finds the memory controller of
/// this process's own cgroup and reads a plausible figure. On a hybrid host the v2 line is
/// the empty `0::/`, whose directory has no `memory.current`: `detect` must pick the v1 memory
/// controller's line instead.
#[test]
fn cgroup_probe_detects_this_hosts_cgroup() {
    if !std::path::Path::new("/proc/self/cgroup").exists() {
        println!("skip: no /proc/self/cgroup (not Linux)");
        return;
    }
    let probe = CgroupProbe::detect().unwrap_or_else(|e| panic!("detect on this host: {e}"));
    let sample = probe
        .sample()
        .unwrap_or_else(|e| panic!("sample {}: {e}", probe.dir().display()));
    assert!(
        sample.current > 1 << 20,
        "{sample:?} from {}",
        probe.dir().display()
    );
    println!("cgroup probe: {} {sample:?}", probe.dir().display());
    // PSI, where this kernel has it.
    if std::path::Path::new("/proc/pressure/memory").exists() {
        let pressure = probe
            .pressure()
            .expect("a PSI file is found")
            .expect("parses");
        assert!((0.0..=100.0).contains(&pressure.some_avg10), "{pressure:?}");
    }
}

/// A fixture root: `/proc/self/cgroup`, `/proc/self/mountinfo` and cgroup files, under a
/// temporary directory removed on drop.
struct Fixture(TempDir);

impl Fixture {
    fn new(name: &str, cgroup: &str, mountinfo: &str) -> Self {
        let root = TempDir::new(&format!("sqry-cg-{name}"));
        std::fs::create_dir_all(root.join("proc/self")).expect("fixture");
        std::fs::write(root.join("proc/self/cgroup"), cgroup).expect("fixture");
        std::fs::write(root.join("proc/self/mountinfo"), mountinfo).expect("fixture");
        Self(root)
    }

    fn file(&self, path: &str, content: &str) -> &Self {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("fixture");
        std::fs::write(path, content).expect("fixture");
        self
    }
}

const PSI: &str = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=2.25 avg60=0.50 avg300=0.10 total=45\n";

#[test]
fn cgroup_probe_reads_a_v2_host() {
    let f = Fixture::new(
        "v2",
        "0::/system.slice/indexer.service\n",
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
    );
    f.file(
        "sys/fs/cgroup/system.slice/indexer.service/memory.current",
        "4096000\n",
    )
    .file(
        "sys/fs/cgroup/system.slice/indexer.service/memory.max",
        "8192000\n",
    )
    .file(
        "sys/fs/cgroup/system.slice/indexer.service/memory.pressure",
        PSI,
    );
    let probe = CgroupProbe::detect_under(&f.0).expect("v2");
    assert_eq!(probe.version(), CgroupVersion::V2);
    assert_eq!(
        probe.sample().expect("sample"),
        MemorySample {
            current: 4_096_000,
            max: Some(8_192_000)
        }
    );
    let pressure = probe.pressure().expect("PSI").expect("parses");
    assert_eq!((pressure.some_avg10, pressure.full_avg10), (12.5, 2.25));
}

#[test]
fn cgroup_probe_reads_a_v1_host() {
    let f = Fixture::new(
        "v1",
        "11:pids:/user.slice\n4:memory:/user.slice/indexer\n1:name=systemd:/user.slice\n",
        "25 23 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
         29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
         30 25 0:27 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids\n",
    );
    f.file(
        "sys/fs/cgroup/memory/user.slice/indexer/memory.usage_in_bytes",
        "5000000\n",
    )
    .file(
        "sys/fs/cgroup/memory/user.slice/indexer/memory.limit_in_bytes",
        "9223372036854771712\n",
    )
    .file("proc/pressure/memory", PSI);
    let probe = CgroupProbe::detect_under(&f.0).expect("v1");
    assert_eq!(probe.version(), CgroupVersion::V1);
    assert_eq!(
        probe.sample().expect("sample"),
        MemorySample {
            current: 5_000_000,
            max: None
        },
        "v1's 'no limit' is no ceiling"
    );
    assert_eq!(
        probe
            .pressure()
            .expect("system PSI")
            .expect("parses")
            .some_avg10,
        12.5
    );
    f.file(
        "sys/fs/cgroup/memory/user.slice/indexer/memory.limit_in_bytes",
        "6000000\n",
    );
    assert_eq!(probe.sample().expect("sample").max, Some(6_000_000));
}

/// A hybrid host (this machine's layout): v1 controllers, and a v2 tree at
/// `/sys/fs/cgroup/unified` with no memory controller, whose `0::/` line must not be taken
/// for the memory cgroup.
#[test]
fn cgroup_probe_reads_a_hybrid_host() {
    let f = Fixture::new(
        "hybrid",
        "4:memory:/process_api/abc\n1:name=systemd:/\n0::/\n",
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
         35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
    );
    f.file(
        "sys/fs/cgroup/memory/process_api/abc/memory.usage_in_bytes",
        "7000000\n",
    )
    .file(
        "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
        "8000000\n",
    )
    .file("sys/fs/cgroup/unified/memory.pressure", PSI);
    let probe = CgroupProbe::detect_under(&f.0).expect("hybrid");
    assert_eq!(probe.version(), CgroupVersion::V1);
    assert!(
        probe.dir().ends_with("memory/process_api/abc"),
        "{}",
        probe.dir().display()
    );
    assert_eq!(probe.sample().expect("sample").current, 7_000_000);
    assert_eq!(
        probe
            .pressure()
            .expect("v2 tree's PSI")
            .expect("parses")
            .full_avg10,
        2.25
    );
}

/// A container without a cgroup namespace shows its host-side path but mounts only its own
/// cgroup: the probe reads the mount point. With no memory controller anywhere, detection
/// fails with a typed error naming the memberships.
#[test]
fn cgroup_probe_reads_a_container_mount_and_reports_a_missing_controller() {
    let f = Fixture::new(
        "container",
        "4:memory:/docker/0123abcd\n0::/\n",
        "35 31 0:32 /docker/0123abcd /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
    );
    f.file("sys/fs/cgroup/memory/memory.usage_in_bytes", "3000000\n");
    let probe = CgroupProbe::detect_under(&f.0).expect("container");
    assert_eq!(probe.sample().expect("sample").current, 3_000_000);

    let none = Fixture::new("none", "1:name=systemd:/\n0::/\n", "");
    let err = CgroupProbe::detect_under(&none.0).expect_err("no memory controller");
    assert!(matches!(err, ProbeError::NoMemoryCgroup { .. }), "{err:?}");
    assert!(err.to_string().contains("name=systemd"), "{err}");
}

/// With a pressure threshold, memory pressure (PSI `some avg10`) at or above it stops new
/// admissions from growing the total; below it the headroom comes back.
#[test]
fn memory_pressure_above_the_threshold_stops_growth() {
    let dial = Arc::new(Dial {
        current: AtomicU64::new(0),
        max: 100_000,
        pressure: AtomicU64::new(0),
    });
    let m: Manager = AdmissionManager::new(
        config(8_000).probe(
            ProbeConfig::new(dial.clone())
                .pressure_threshold(10.0)
                .refresh_every(Duration::ZERO),
        ),
    );
    m.register(key("k"));
    let first = m
        .reserve(&key("k"), ReserveRequest::new(3_000))
        .expect("no pressure");
    dial.pressure.store(2_500, Ordering::SeqCst);
    assert_eq!(
        m.refresh_probe().expect("reads"),
        5_000,
        "only what is committed"
    );
    let err = m
        .reserve(&key("k"), ReserveRequest::new(1_000))
        .expect_err("under pressure");
    assert!(
        matches!(err, ReserveError::BudgetExceeded { .. }),
        "{err:?}"
    );
    assert_eq!(err.ledger().expect("ledger").effective_limit, 3_000);
    dial.pressure.store(500, Ordering::SeqCst);
    let second = m
        .reserve(&key("k"), ReserveRequest::new(1_000))
        .expect("pressure fell below the threshold");
    drop((first, second));
}
