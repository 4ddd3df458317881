//! squib-host's figures, measured in one run on real page faults and real snapshot files:
//!
//! - `fault_latency_ratio`: median latency of one random 4 KiB demand fault (timed by the
//!   touching thread, from the touch until the byte is readable) through the pager's server,
//!   over the same through the fastest of three minimal handlers written here (read one
//!   event, `UFFDIO_COPY` the page, repeat), waiting in a blocking `read`, in `poll`, or
//!   spinning on a non-blocking `read` — this machine's floor; target ≤ 1.25. Process CPU
//!   time per fault is printed beside each, so a busy-polling handler cannot look fast for
//!   free.
//! - `sequential_restore_ratio`: time to restore a 1 GiB snapshot file and touch every page in
//!   order, lazily (readahead + background population), over eager restore (`pread` the whole
//!   file into an anonymous mapping, then touch it); target ≤ 1.0.
//! - `first_access_pct`: time from the start of a lazy restore to the first byte being
//!   readable, as a percentage of the eager restore time; target ≤ 1 %.
//! - `zero_heavy_speedup`: eager over lazy time for a 1 GiB snapshot that is 90 % zero pages
//!   (stored as holes of a sparse file); target ≥ 3.
//!
//! - `page_server_background_latency_ratio`: median demand-fault latency through a page server
//!   (Unix socket, a simulated 512 MB/s link) with background population on, over the same
//!   with it off; target ≤ 1.5 (demand fetches have a lane of their own).
//! - `firecracker_restore_vs_example_handler` and `firecracker_restore_vs_file_backend`: a real
//!   Firecracker restoring a 256 MiB snapshot, time from the load request to the guest's first
//!   whole verified pass, through this crate's handler over the same through Firecracker's own
//!   `uffd_on_demand_handler` (target ≤ 0.1) and over Firecracker's File backend (target
//!   ≤ 0.2). Skipped with the reason where the Firecracker kit (`FIRECRACKER_BIN`) or
//!   `/dev/kvm` is missing.
//!
//! Skips with a note where userfaultfd is not available.

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use workspace_tests::bench::{Samples, Target, verdict};

/// Per-iteration timings handed to `iter_custom`, kept to compute verdicts.
static SAMPLES: Samples = Samples::new();

fn record(name: &'static str, value: f64) {
    SAMPLES.push(name, value);
}

fn median(name: &str) -> f64 {
    SAMPLES.median(name)
}

const GIB: usize = 1 << 30;

fn ps() -> usize {
    squib_host::host_page_size()
}

fn bench_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("squib-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// A 1 GiB snapshot of pseudo-random data pages (written, no holes).
fn dense_snapshot(path: &Path) {
    let f = File::create(path).expect("create snapshot");
    let mut chunk = vec![0u8; 4 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for c in 0..GIB / chunk.len() {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all_at(&chunk, (c * chunk.len()) as u64)
            .expect("write");
    }
    f.sync_all().expect("sync");
}

/// A 1 GiB sparse snapshot: 64 KiB of data every 640 KiB, holes elsewhere (90 % zero).
fn zero_heavy_snapshot(path: &Path) {
    let f = File::create(path).expect("create snapshot");
    f.set_len(GIB as u64).expect("set_len");
    let data = vec![0x5Au8; 64 << 10];
    let stride = 640 << 10;
    for c in 0..GIB / stride {
        f.write_all_at(&data, (c * stride) as u64).expect("write");
    }
    f.sync_all().expect("sync");
}

/// Reads the file once so both restores start from a warm page cache.
fn warm(path: &Path) {
    let f = File::open(path).expect("open");
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while let Ok(n) = f.read_at(&mut buf, off) {
        if n == 0 {
            break;
        }
        off += n as u64;
    }
}

fn touch_all(mem: &[u8]) -> u64 {
    let mut sum = 0u64;
    for p in (0..mem.len()).step_by(ps()) {
        sum = sum.wrapping_add(u64::from(mem[p]));
    }
    sum
}

/// Eager restore: pread the whole file into a fresh anonymous mapping, then touch it.
fn eager(path: &Path) -> Duration {
    let t = Instant::now();
    let f = File::open(path).expect("open");
    let len = f.metadata().expect("metadata").len() as usize;
    let mut map = platform_primitives::mem::AnonMapping::new(len).expect("mmap");
    f.read_exact_at(map.as_mut_slice(), 0).expect("pread");
    black_box(touch_all(map.as_slice()));
    let d = t.elapsed();
    drop(map);
    d
}

#[cfg(target_os = "linux")]
mod lazy {
    use super::*;
    use squib_host::{
        FilePageSource, MemorySource, Pager, PagerConfig, Uffd, UffdEvent, spawn_server,
    };
    use std::sync::Arc;

    /// Lazy restore: pager + lazy mapping + server, then touch every page in order. Returns
    /// (time to first readable byte, total time).
    pub(super) fn restore(path: &Path) -> (Duration, Duration) {
        let t = Instant::now();
        let source = FilePageSource::open(path).expect("open");
        let len = source.len() as usize;
        let pager = Pager::new(source, PagerConfig::default());
        let mem = pager.map_lazy(len, 0).expect("map_lazy");
        let server = spawn_server(&pager).expect("server");
        black_box(mem.as_slice()[0]);
        let first = t.elapsed();
        black_box(touch_all(mem.as_slice()));
        let total = t.elapsed();
        pager.request_shutdown();
        server.join().expect("join").expect("server");
        drop(mem);
        (first, total)
    }

    const PAGES: usize = 16384;

    fn order(seed: u64) -> Vec<usize> {
        let mut v: Vec<usize> = (0..PAGES).collect();
        let mut x = seed | 1;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        v
    }

    fn data() -> Vec<u8> {
        (0..PAGES * ps()).map(|i| (i % 251) as u8 | 1).collect()
    }

    /// Times `n` random faults on `mem` (fresh pages from `next`), returning per-fault ns.
    fn time_faults(mem: &[u8], order: &[usize], next: &mut usize, n: u64) -> Vec<f64> {
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let p = order[*next];
            *next += 1;
            let t = Instant::now();
            black_box(mem[p * ps() + 1]);
            out.push(t.elapsed().as_nanos() as f64);
        }
        out
    }

    /// CPU time this process has used (every thread), to charge busy-polling to whoever does
    /// it.
    pub(super) fn process_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer for the duration of the call.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// How a minimal handler waits for the next fault.
    #[derive(Debug, Clone, Copy)]
    enum Wake {
        /// A blocking `read` of the uffd.
        Block,
        /// `poll`, then a non-blocking `read` (what the pager does when idle).
        Poll,
        /// Non-blocking `read` in a loop (a core burnt per handler).
        Spin,
    }

    /// One round of `n` random faults served by a minimal handler (read one event,
    /// `UFFDIO_COPY` the page, repeat); returns per-fault ns and process CPU ns per fault.
    fn minimal_round(data: &Arc<Vec<u8>>, wake: Wake, seed: u64, n: u64) -> (Vec<f64>, f64) {
        let uffd = Arc::new(Uffd::open().expect("uffd"));
        uffd.set_nonblocking(!matches!(wake, Wake::Block))
            .expect("O_NONBLOCK");
        let mut map = platform_primitives::mem::AnonMapping::new(PAGES * ps()).expect("mmap");
        uffd.register_mapping(&mut map).expect("register");
        let base = map.as_ptr() as u64;
        let (u, d) = (uffd.clone(), data.clone());
        let cpu0 = process_cpu();
        let handler = std::thread::spawn(move || {
            let mut events = Vec::with_capacity(32);
            let mut served = 0;
            while served < n {
                events.clear();
                match wake {
                    Wake::Block => {}
                    Wake::Poll => {
                        let _ = u.wait(None);
                    }
                    Wake::Spin => {}
                }
                match u.read_events(&mut events) {
                    Ok(0) => std::hint::spin_loop(),
                    Ok(_) => {}
                    Err(_) => return,
                }
                for e in &events {
                    if let UffdEvent::PageFault { addr, .. } = *e {
                        let off = (addr - base) as usize;
                        let _ = u.copy(addr, &d[off..off + ps()], true);
                        served += 1;
                    }
                }
            }
        });
        let ord = order(seed);
        let mut next = 0;
        let times = time_faults(map.as_slice(), &ord, &mut next, n);
        handler.join().expect("handler");
        let cpu = (process_cpu() - cpu0).as_nanos() as f64 / n as f64;
        uffd.unregister(base, map.len() as u64).expect("unregister");
        (times, cpu)
    }

    /// One round of `n` random faults served by the pager; per-fault ns and CPU ns per fault.
    fn pager_round(data: &Arc<Vec<u8>>, seed: u64, n: u64) -> (Vec<f64>, f64) {
        let pager = Pager::new(
            MemorySource::new(data.to_vec()),
            PagerConfig {
                background: false,
                record_working_set: false,
                ..PagerConfig::default()
            },
        );
        let mem = pager.map_lazy(PAGES * ps(), 0).expect("map_lazy");
        let server = spawn_server(&pager).expect("server");
        let cpu0 = process_cpu();
        let ord = order(seed);
        let mut next = 0;
        let times = time_faults(mem.as_slice(), &ord, &mut next, n);
        let cpu = (process_cpu() - cpu0).as_nanos() as f64 / n as f64;
        pager.request_shutdown();
        server.join().expect("join").expect("server");
        (times, cpu)
    }

    pub(super) fn bench_faults(c: &mut Criterion) {
        let mut group = c.benchmark_group("random_4k_fault");
        let data = Arc::new(data());
        let mut bench = |name: &str,
                         key: &'static str,
                         cpu_key: &'static str,
                         round: &dyn Fn(u64, u64) -> (Vec<f64>, f64)| {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(PAGES as u64);
                        left -= n;
                        let (times, cpu) = round(iters ^ n, n);
                        record(cpu_key, cpu);
                        for t in &times {
                            record(key, *t);
                            total += Duration::from_nanos(*t as u64);
                        }
                    }
                    total
                })
            });
        };
        // The floor: the fastest of three minimal handlers, one per way of waiting.
        bench(
            "minimal_blocking_read",
            "floor_block",
            "floor_block_cpu",
            &|seed, n| minimal_round(&data, Wake::Block, seed, n),
        );
        bench(
            "minimal_poll_read",
            "floor_poll",
            "floor_poll_cpu",
            &|seed, n| minimal_round(&data, Wake::Poll, seed, n),
        );
        bench(
            "minimal_spin_read",
            "floor_spin",
            "floor_spin_cpu",
            &|seed, n| minimal_round(&data, Wake::Spin, seed, n),
        );
        bench("pager", "pager_fault", "pager_cpu", &|seed, n| {
            pager_round(&data, seed, n)
        });
        group.finish();
    }
}

fn bench_restores(c: &mut Criterion) {
    #[cfg(target_os = "linux")]
    {
        if let Err(e) = squib_host::Uffd::open() {
            println!("skip: squib-host restore benches: {e}");
            return;
        }
        let dir = bench_dir();
        let dense = dir.join("dense.snap");
        let sparse = dir.join("sparse.snap");
        dense_snapshot(&dense);
        zero_heavy_snapshot(&sparse);
        warm(&dense);
        warm(&sparse);

        let mut group = c.benchmark_group("restore_1gib");
        group.sampling_mode(SamplingMode::Flat).sample_size(10);
        for (label, path, eager_key, lazy_key) in [
            ("dense", &dense, "eager_dense", "lazy_dense"),
            ("zero_heavy", &sparse, "eager_sparse", "lazy_sparse"),
        ] {
            group.bench_function(format!("eager_{label}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let d = eager(path);
                        record(eager_key, d.as_nanos() as f64);
                        total += d;
                    }
                    total
                })
            });
            group.bench_function(format!("lazy_{label}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (first, d) = lazy::restore(path);
                        record(lazy_key, d.as_nanos() as f64);
                        if lazy_key == "lazy_dense" {
                            record("first_access", first.as_nanos() as f64);
                        }
                        total += d;
                    }
                    total
                })
            });
        }
        group.finish();
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (
            c,
            bench_dir,
            dense_snapshot,
            zero_heavy_snapshot,
            warm,
            eager,
        );
        println!("skip: squib-host restore benches: userfaultfd is Linux-only");
    }
}

fn bench_faults(c: &mut Criterion) {
    #[cfg(target_os = "linux")]
    {
        if squib_host::Uffd::open().is_err() {
            return;
        }
        lazy::bench_faults(c);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = c;
}

/// Real Firecracker restores of a 256 MiB snapshot, three rounds of each backend in turn:
/// time from the load request to the guest's first whole verified pass, through this crate's
/// handler, through Firecracker's own example handler (`uffd_on_demand_handler`), and with the
/// File backend (Firecracker maps the memory file itself).
fn bench_firecracker(_: &mut Criterion) {
    #[cfg(target_os = "linux")]
    match workspace_tests::firecracker::Kit::find() {
        Ok(kit) if squib_host::Uffd::open().is_ok() => {
            if let Err(e) = real_vm::rounds(&kit, 3) {
                println!("skip: squib-host firecracker restore bench failed: {e}");
            }
        }
        Ok(_) => println!("skip: squib-host firecracker restore bench: no userfaultfd"),
        Err(why) => println!("skip: squib-host firecracker restore bench: {why}"),
    }
}

#[cfg(target_os = "linux")]
mod real_vm {
    use super::*;
    use squib_host::firecracker::{FirecrackerHandler, HandlerConfig};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use workspace_tests::firecracker::{Kit, Snapshot, Vm, take_snapshot};

    const LIMIT: Duration = Duration::from_secs(180);

    fn ours(kit: &Kit, dir: &Path, snap: &Snapshot) -> Result<Duration, String> {
        let handler =
            FirecrackerHandler::bind(HandlerConfig::new(dir.join("ours.sock"), &snap.mem))
                .map_err(|e| e.to_string())?;
        let vm = Arc::new(Vm::spawn(kit, dir, "ours")?);
        let t0 = Instant::now();
        let loader = {
            let (vm, snap, sock) = (vm.clone(), snap.clone(), handler.path().to_owned());
            std::thread::spawn(move || vm.load_uffd(&snap, &sock, LIMIT))
        };
        let session = handler
            .accept_timeout(Duration::from_secs(60))
            .map_err(|e| e.to_string())?
            .ok_or("no handshake")?;
        loader.join().map_err(|_| "loader panicked")??;
        let took = vm.wait_verified(t0, LIMIT)?;
        drop(vm);
        let _ = session.shutdown();
        Ok(took)
    }

    fn example(kit: &Kit, dir: &Path, snap: &Snapshot) -> Result<Duration, String> {
        let sock = dir.join("example.sock");
        let _ = std::fs::remove_file(&sock);
        let mut handler = Command::new(&kit.example_handler)
            .arg(&sock)
            .arg(&snap.mem)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let vm = Vm::spawn(kit, dir, "example")?;
        let t0 = Instant::now();
        let result = vm
            .load_uffd(snap, &sock, LIMIT)
            .and_then(|_| vm.wait_verified(t0, LIMIT));
        drop(vm);
        let _ = handler.kill();
        let _ = handler.wait();
        result
    }

    fn file(kit: &Kit, dir: &Path, snap: &Snapshot) -> Result<Duration, String> {
        let vm = Vm::spawn(kit, dir, "file")?;
        let t0 = Instant::now();
        vm.load_file(snap)?;
        vm.wait_verified(t0, LIMIT)
    }

    pub(super) fn rounds(kit: &Kit, n: usize) -> Result<(), String> {
        let dir = bench_dir().join("fc");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let snap = take_snapshot(kit, &dir, "bench", 256, false)?;
        warm(&snap.mem);
        for _ in 0..n {
            record("fc_ours", ours(kit, &dir, &snap)?.as_nanos() as f64);
            record("fc_example", example(kit, &dir, &snap)?.as_nanos() as f64);
            record("fc_file", file(kit, &dir, &snap)?.as_nanos() as f64);
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

/// Median demand-fault latency through a page server, with background population on and off:
/// a page server over a Unix socket in this process, a snapshot of 1 GiB behind a link of
/// 512 MB/s, and one thread touching random pages of the last half, timing only touches of
/// pages not yet installed (checked with `mincore`).
fn bench_page_server(_: &mut Criterion) {
    #[cfg(target_os = "linux")]
    {
        if squib_host::Uffd::open().is_err() {
            return;
        }
        for round in 0..3u64 {
            for background in [false, true] {
                let key = if background { "ps_bg_on" } else { "ps_bg_off" };
                for t in page_server::demand_faults(background, round) {
                    record(key, t);
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod page_server {
    use super::*;
    use bytes::Bytes;
    use squib_host::{
        MemorySource, PageRequest, PageServerAddr, PageServerConfig, PageServerSource, PageSource,
        PageSourceError, Pager, PagerConfig, serve_pages, spawn_server,
    };
    use std::os::unix::net::UnixListener;
    use std::sync::Arc;

    /// A source behind a link of 512 MB/s: a 4 MiB chunk takes 8 ms, a page 8 µs.
    #[derive(Debug)]
    struct Link(MemorySource);
    impl PageSource for Link {
        fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
            std::thread::sleep(Duration::from_nanos(req.len as u64 * 2));
            self.0.fetch(req)
        }
    }

    fn resident(page: *const u8) -> bool {
        let mut vec = [0u8; 1];
        // SAFETY: `page` is page-aligned inside a live mapping; `vec` has room for one page.
        let rc = unsafe { libc::mincore(page as *mut libc::c_void, ps(), vec.as_mut_ptr()) };
        rc == 0 && vec[0] & 1 != 0
    }

    pub(super) fn demand_faults(background: bool, seed: u64) -> Vec<f64> {
        let len = GIB;
        let dir = bench_dir();
        let path = dir.join(format!("pages-{background}-{seed}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        let source: Arc<dyn PageSource> = Arc::new(Link(MemorySource::new(data)));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let source = source.clone();
                std::thread::spawn(move || serve_pages(conn, &*source));
            }
        });
        let client = PageServerSource::connect_to(
            PageServerAddr::Unix(path.clone()),
            PageServerConfig::default(),
        )
        .expect("connect")
        .with_len(len as u64);
        let pager = Pager::new(
            client,
            PagerConfig {
                background,
                readahead_max: 0,
                record_working_set: false,
                ..PagerConfig::default()
            },
        );
        let mem = pager.map_lazy(len, 0).expect("map_lazy");
        let server = spawn_server(&pager).expect("server");
        let pages = len / ps();
        let mut x = 0x2545_F491_4F6C_DD1Du64 ^ seed;
        let mut times = Vec::new();
        let base = mem.as_ptr();
        while times.len() < 400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = pages / 2 + (x % (pages as u64 / 2)) as usize;
            if resident(base.wrapping_add(p * ps())) {
                continue;
            }
            let t = Instant::now();
            black_box(mem.as_slice()[p * ps()]);
            times.push(t.elapsed().as_nanos() as f64);
        }
        pager.request_shutdown();
        server.join().expect("join").expect("server");
        drop(mem);
        let _ = std::fs::remove_file(&path);
        times
    }
}

/// Prints the verdict, unless the figure was not measured (NaN: not on Linux, or no
/// userfaultfd here), in which case a skip note was printed when measuring.
fn check(metric: &str, value: f64, unit: &str, target: Target) {
    if !value.is_nan() {
        verdict("squib-host", metric, value, unit, target);
    }
}

fn verdicts(_: &mut Criterion) {
    // The floor is the fastest minimal handler, whichever way it waits; CPU per fault is
    // printed beside each so a busy-polling handler cannot look fast for free.
    let floors = [
        ("blocking read", "floor_block", "floor_block_cpu"),
        ("poll + read", "floor_poll", "floor_poll_cpu"),
        ("spinning read", "floor_spin", "floor_spin_cpu"),
    ];
    for (label, key, cpu) in floors {
        println!(
            "info: squib-host/minimal handler ({label}) = {:.1} us median, {:.1} us CPU per fault",
            median(key) / 1e3,
            median(cpu) / 1e3
        );
    }
    let (floor_label, base) = floors
        .iter()
        .map(|(label, key, _)| (*label, median(key)))
        .filter(|(_, m)| !m.is_nan())
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(("none", f64::NAN));
    let ours = median("pager_fault");
    println!(
        "info: squib-host/fault_latency = {:.1} us median, {:.1} us CPU per fault (floor: {floor_label}, {:.1} us)",
        ours / 1e3,
        median("pager_cpu") / 1e3,
        base / 1e3
    );
    check(
        "fault_latency_ratio",
        ours / base,
        "x",
        Target::AtMost(1.25),
    );
    let (bg_off, bg_on) = (median("ps_bg_off"), median("ps_bg_on"));
    println!(
        "info: squib-host/page_server_fault = {:.1} us median with background population, {:.1} us without",
        bg_on / 1e3,
        bg_off / 1e3
    );
    check(
        "page_server_background_latency_ratio",
        bg_on / bg_off,
        "x",
        Target::AtMost(1.5),
    );
    let (fc_ours, fc_example, fc_file) =
        (median("fc_ours"), median("fc_example"), median("fc_file"));
    if !fc_ours.is_nan() {
        println!(
            "info: squib-host/firecracker_restore_256mib = {:.0} ms to the verified pass (example handler {:.0} ms, File backend {:.0} ms)",
            fc_ours / 1e6,
            fc_example / 1e6,
            fc_file / 1e6
        );
    }
    check(
        "firecracker_restore_vs_example_handler",
        fc_ours / fc_example,
        "x",
        Target::AtMost(0.1),
    );
    check(
        "firecracker_restore_vs_file_backend",
        fc_ours / fc_file,
        "x",
        Target::AtMost(0.2),
    );
    let (eager_dense, lazy_dense) = (median("eager_dense"), median("lazy_dense"));
    println!(
        "info: squib-host/restore_1gib = lazy {:.0} ms, eager {:.0} ms",
        lazy_dense / 1e6,
        eager_dense / 1e6
    );
    check(
        "sequential_restore_ratio",
        lazy_dense / eager_dense,
        "x",
        Target::AtMost(1.0),
    );
    check(
        "first_access_pct",
        100.0 * median("first_access") / eager_dense,
        "%",
        Target::AtMost(1.0),
    );
    let (eager_sparse, lazy_sparse) = (median("eager_sparse"), median("lazy_sparse"));
    println!(
        "info: squib-host/zero_heavy_1gib = lazy {:.0} ms, eager {:.0} ms",
        lazy_sparse / 1e6,
        eager_sparse / 1e6
    );
    check(
        "zero_heavy_speedup",
        eager_sparse / lazy_sparse,
        "x",
        Target::AtLeast(3.0),
    );
}

criterion_group! {
    name = benches;
    config = workspace_tests::criterion_config!(3, 20);
    targets = bench_faults, bench_restores, bench_page_server, bench_firecracker, verdicts
}
criterion_main!(benches);
