//! squib-host end to end: a 256 MiB memory snapshot restored lazily with a recorded working
//! set, against an eager restore of the same file.
//!
//! 1. Writes a snapshot with a realistic mix: data pages, scattered all-zero pages written out,
//!    and never-used memory at the top left as holes of a sparse file.
//! 2. First lazy restore: a "boot" touches 4 % of the pages in a fixed scattered order; the
//!    pager records them (the working set) and it is saved next to the snapshot.
//! 3. Second lazy restore with that working set as the prewarm list: the same boot, then every
//!    byte of the 256 MiB is checked against the snapshot.
//! 4. Eager restore (read the whole file into memory, then the same boot and check).
//!
//! Run with `cargo run --release -p squib-host --example demo` (or `cargo xtask demo`).

use std::error::Error;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

const SIZE: usize = 256 << 20;

fn main() -> Result<(), Box<dyn Error>> {
    #[cfg(target_os = "linux")]
    {
        linux::run()
    }
    #[cfg(not(target_os = "linux"))]
    {
        println!("squib-host demo: the userfaultfd pager is Linux-only; nothing to show here");
        Ok(())
    }
}

fn ps() -> usize {
    squib_host::host_page_size()
}

/// Page kinds of the demo snapshot.
fn page_kind(p: usize, pages: usize) -> u8 {
    if p >= pages * 7 / 10 {
        0 // never used: a hole
    } else if p % 7 == 3 {
        1 // all zeros, written out
    } else {
        2 // data
    }
}

fn write_snapshot(path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    let pages = SIZE / ps();
    let mut image = vec![0u8; SIZE];
    let mut x = 0x0123_4567_89AB_CDEFu64;
    for p in 0..pages {
        if page_kind(p, pages) == 2 {
            for w in image[p * ps()..(p + 1) * ps()].chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
        }
    }
    let f = File::create(path)?;
    f.set_len(SIZE as u64)?;
    // Everything up to the unused top is written (zero pages included); the top stays a hole.
    let used = pages * 7 / 10 * ps();
    f.write_all_at(&image[..used], 0)?;
    f.sync_all()?;
    Ok(image)
}

/// The boot's page order: 4 % of the used pages, scattered.
fn boot_order() -> Vec<usize> {
    let pages = SIZE / ps();
    let used = pages * 7 / 10;
    let mut x = 0xDEAD_BEEFu64;
    (0..pages / 25)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % used as u64) as usize
        })
        .collect()
}

/// Figures of one restore.
struct Run {
    first_access: Duration,
    boot: Duration,
    total: Duration,
    boot_faults: u64,
    faults: u64,
    detail: String,
}

fn print_run(name: &str, r: &Run) {
    println!(
        "  {name:<22} first access {:>9.3} ms | boot done {:>8.1} ms | all 256 MiB verified {:>8.1} ms | faults: boot {:>5}, total {:>6}{}",
        r.first_access.as_secs_f64() * 1e3,
        r.boot.as_secs_f64() * 1e3,
        r.total.as_secs_f64() * 1e3,
        r.boot_faults,
        r.faults,
        r.detail
    );
}

fn eager(path: &Path, image: &[u8], boot: &[usize]) -> Result<Run, Box<dyn Error>> {
    let t = Instant::now();
    let f = File::open(path)?;
    let mut mem = platform_primitives::mem::AnonMapping::new(SIZE)?;
    f.read_exact_at(mem.as_mut_slice(), 0)?;
    let first = mem.as_slice()[boot[0] * ps()];
    let first_access = t.elapsed();
    std::hint::black_box(first);
    for &p in boot {
        if mem.as_slice()[p * ps() + 17] != image[p * ps() + 17] {
            return Err(format!("eager restore: wrong byte in page {p}").into());
        }
    }
    let boot_done = t.elapsed();
    if mem.as_slice() != image {
        return Err("eager restore: bytes differ from the snapshot".into());
    }
    Ok(Run {
        first_access,
        boot: boot_done,
        total: t.elapsed(),
        boot_faults: 0,
        faults: 0,
        detail: String::new(),
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use squib_host::{FilePageSource, Pager, PagerConfig, PrewarmList, Uffd, spawn_server};

    fn lazy(
        path: &Path,
        image: &[u8],
        boot: &[usize],
        prewarm: PrewarmList,
        background: bool,
    ) -> Result<(Run, PrewarmList), Box<dyn Error>> {
        let t = Instant::now();
        let source = FilePageSource::open(path)?;
        let pager = Pager::new(
            source,
            PagerConfig {
                prewarm,
                background,
                ..PagerConfig::default()
            },
        );
        let mem = pager.map_lazy(SIZE, 0)?;
        let server = spawn_server(&pager)?;
        let first = mem.as_slice()[boot[0] * ps()];
        let first_access = t.elapsed();
        std::hint::black_box(first);
        for &p in boot {
            if mem.as_slice()[p * ps() + 17] != image[p * ps() + 17] {
                return Err(format!("lazy restore: wrong byte in page {p}").into());
            }
        }
        let boot_done = t.elapsed();
        let boot_faults = pager.stats().faults;
        // The working set is what the boot touched: record it before the full check.
        let ws = pager.working_set();
        if mem.as_slice() != image {
            return Err("lazy restore: bytes differ from the snapshot".into());
        }
        let total = t.elapsed();
        pager.request_shutdown();
        server.join().map_err(|_| "server panicked")??;
        let s = pager.stats();
        let detail = format!(
            " | prewarmed {}, background {}, readahead {}, zero pages {}, p50 fault <= {} us",
            s.prewarmed,
            s.background_pages,
            s.readahead_pages,
            s.zero_pages,
            s.latency.quantile_upper_us(0.5).unwrap_or(0)
        );
        Ok((
            Run {
                first_access,
                boot: boot_done,
                total,
                boot_faults,
                faults: s.faults,
                detail,
            },
            ws,
        ))
    }

    pub(super) fn run() -> Result<(), Box<dyn Error>> {
        if let Err(e) = Uffd::open() {
            println!("squib-host demo: userfaultfd is not permitted here: {e}");
            println!(
                "  enable it with `sudo sysctl vm.unprivileged_userfaultfd=1`, run as root, or \
                 grant this user read-write access to /dev/userfaultfd"
            );
            return Ok(());
        }
        let dir = std::env::temp_dir().join(format!("squib-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let result = demo(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn demo(dir: &Path) -> Result<(), Box<dyn Error>> {
        let path = dir.join("guest-memory.snap");
        let ws_path = dir.join("guest-memory.ws");
        let image = write_snapshot(&path)?;
        let source = FilePageSource::open(&path)?;
        println!(
            "snapshot: {} MiB, {} MiB of it holes; 1 page in 7 of the rest all zeros",
            SIZE >> 20,
            (SIZE as u64 - source.data_bytes()) >> 20
        );
        drop(source);
        let boot = boot_order();
        println!(
            "boot: touches {} pages in a fixed scattered order\n",
            boot.len()
        );

        let (record, ws) = lazy(&path, &image, &boot, PrewarmList::default(), false)?;
        ws.save(&ws_path)?;
        println!(
            "1. record run (lazy, no prewarm): working set of {} pages saved",
            ws.len()
        );
        print_run("lazy, recording", &record);

        let prewarm = PrewarmList::load(&ws_path)?;
        let (replay, _) = lazy(&path, &image, &boot, prewarm, true)?;
        println!("2. restore with the working set as prewarm list, background population on");
        print_run("lazy + working set", &replay);

        let eager = eager(&path, &image, &boot)?;
        println!("3. eager restore (read the whole file, then run)");
        print_run("eager", &eager);

        println!(
            "\nfirst access: {:.1}x sooner lazily; boot done {:.1}x sooner; boot faults {} -> {} with the working set",
            eager.first_access.as_secs_f64() / replay.first_access.as_secs_f64(),
            eager.boot.as_secs_f64() / replay.boot.as_secs_f64(),
            record.boot_faults,
            replay.boot_faults
        );
        println!("every byte of every restore matched the snapshot");
        Ok(())
    }
}
