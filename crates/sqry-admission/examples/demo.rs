//! A code-search-like daemon under a memory budget, on real directory trees: it indexes the
//! trees under `/usr/share` (paths and sizes, sorted for search) with a budget of a third of
//! what all the indexes need, and shows, with measured figures:
//!
//! 1. admissions, and the least recently used indexes evicted to make room;
//! 2. a rebuild while a slow reader holds the old version: the old version stays counted, as
//!    retained, until the reader drops it, and is credited back at that moment;
//! 3. a request queued while every index is held by readers, admitted once they let go;
//! 4. a fail-fast request refused with the whole ledger, and one larger than the budget;
//! 5. the high-water mark, compared with the budget — also sampled every millisecond by an
//!    observer thread — and the learned estimate multiplier.
//!
//! Run it with `cargo run --release -p sqry-admission --example demo`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sqry_admission::{
    AdmissionConfig, AdmissionManager, Handle, HeapSize, LoadOptions, PublishHook, ReserveError,
    ReserveRequest, RetireCause,
};

/// At most this many files per tree, so the demo stays well under 20 s on any machine.
const MAX_FILES: usize = 25_000;
/// Rough guess of index bytes per file; the manager learns the real ratio.
const GUESS_PER_FILE: u64 = 64;

/// One indexed tree: every file's path and size, sorted by path.
struct TreeIndex {
    files: Vec<(String, u64)>,
}

impl HeapSize for TreeIndex {
    fn heap_bytes(&self) -> usize {
        self.files.capacity() * std::mem::size_of::<(String, u64)>()
            + self.files.iter().map(|(p, _)| p.capacity()).sum::<usize>()
    }
}

impl TreeIndex {
    fn build(root: &Path) -> Self {
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if kind.is_file() && files.len() < MAX_FILES {
                    let size = entry.metadata().map_or(0, |m| m.len());
                    files.push((entry.path().to_string_lossy().into_owned(), size));
                }
            }
        }
        files.sort_unstable();
        files.shrink_to_fit();
        Self { files }
    }

    fn total_size(&self) -> u64 {
        self.files.iter().map(|(_, s)| s).sum()
    }
}

/// Prints evictions as they happen (hooks run after every lock is released).
struct Log {
    evicted: Mutex<Vec<String>>,
}

impl PublishHook<PathBuf, TreeIndex> for Log {
    fn on_evict(&self, key: &PathBuf, cause: RetireCause) {
        self.evicted
            .lock()
            .push(format!("{} ({cause:?})", short(key)));
    }
}

fn short(p: &Path) -> String {
    p.strip_prefix("/usr").unwrap_or(p).display().to_string()
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Trees with at least 40 files: (path, files, index bytes) — a survey, to set the budget.
fn trees() -> Vec<(PathBuf, usize, u64)> {
    for base in ["/usr/share", "/usr/lib"] {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        let found: Vec<(PathBuf, usize, u64)> = dirs
            .into_iter()
            .map(|d| {
                let index = TreeIndex::build(&d);
                let (files, bytes) = (index.files.len(), index.heap_bytes() as u64);
                (d, files, bytes)
            })
            .filter(|(_, n, _)| *n >= 40)
            .take(24)
            .collect();
        if found.len() >= 6 {
            return found;
        }
    }
    Vec::new()
}

fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let surveyed = trees();
    if surveyed.len() < 6 {
        println!(
            "skip: demo: fewer than 6 directory trees with 40+ files under /usr/share or /usr/lib"
        );
        return Ok(());
    }
    // What every index would need, to set a budget well below it.
    let total: u64 = surveyed.iter().map(|t| t.2).sum();
    let largest = surveyed.iter().map(|t| t.2).max().unwrap_or(0);
    let trees: Vec<(PathBuf, usize)> = surveyed.into_iter().map(|(p, n, _)| (p, n)).collect();
    let budget = (total / 3).max(largest + largest / 4);
    println!(
        "{} trees under {}, {} files; their indexes need {} in all; budget {}",
        trees.len(),
        trees[0]
            .0
            .parent()
            .map_or("?".into(), |p| p.display().to_string()),
        trees.iter().map(|(_, n)| n).sum::<usize>(),
        mib(total),
        mib(budget)
    );

    let manager: AdmissionManager<PathBuf, TreeIndex> = AdmissionManager::new(
        AdmissionConfig::new(budget)
            .low_watermark_percent(85)
            .audit_interval(Some(Duration::from_millis(200))),
    );
    let log = Arc::new(Log {
        evicted: Mutex::new(Vec::new()),
    });
    manager.set_hook(log.clone());

    let done = Arc::new(AtomicBool::new(false));
    let observed_max = Arc::new(AtomicU64::new(0));
    let observer = {
        let (m, done, max) = (manager.clone(), done.clone(), observed_max.clone());
        thread::spawn(move || {
            let mut samples = 0u64;
            while !done.load(Ordering::Acquire) {
                let s = m.ledger().snapshot();
                assert!(s.total() <= s.limit, "over budget: {s}");
                max.fetch_max(s.total(), Ordering::Relaxed);
                samples += 1;
                thread::sleep(Duration::from_millis(1));
            }
            samples
        })
    };
    let load = |path: &PathBuf, files: usize| {
        let request = ReserveRequest::new(files as u64 * GUESS_PER_FILE).class("tree");
        manager.get_or_load(
            path,
            LoadOptions::new(files as u64 * GUESS_PER_FILE).request(request),
            |p| Ok(TreeIndex::build(p)),
        )
    };
    let take_evictions = || std::mem::take(&mut *log.evicted.lock());

    println!(
        "\n1. admissions (each reserves files x {GUESS_PER_FILE} B, trued up to the measured size at publish)"
    );
    for (path, files) in &trees {
        match load(path, *files) {
            Ok(index) => {
                let evicted = take_evictions();
                let s = manager.ledger().snapshot();
                println!(
                    "   admit {:<28} {:>6} files {:>10}   ledger {:>10} / {}{}",
                    short(path),
                    index.files.len(),
                    mib(index.bytes()),
                    mib(s.total()),
                    mib(s.limit),
                    if evicted.is_empty() {
                        String::new()
                    } else {
                        format!("   evicted {}", evicted.join(", "))
                    }
                );
            }
            Err(e) => println!("   refused {}: {e}", short(path)),
        }
    }

    println!("\n2. rebuild while a slow reader holds the old version");
    let (victim, victim_files) = trees
        .iter()
        .rev()
        .find(|(p, _)| manager.contains(p))
        .cloned()
        .ok_or("no loaded tree")?;
    let slow_reader = manager.get(&victim).ok_or("loaded")?;
    let query = slow_reader
        .files
        .iter()
        .filter(|(_, size)| *size > 16 << 10)
        .count();
    println!(
        "   a slow query holds {} ({}; it is counting files over 16 KiB: {query})",
        short(&victim),
        mib(slow_reader.bytes())
    );
    let rebuilt = manager.rebuild(
        &victim,
        ReserveRequest::new(victim_files as u64 * GUESS_PER_FILE).class("tree"),
        |p| Ok(TreeIndex::build(p)),
    )?;
    let s = manager.ledger().snapshot();
    println!(
        "   rebuilt: new version {} loaded; old version retained: {} in {} version(s); ledger {} / {}",
        mib(rebuilt.bytes()),
        mib(s.retained),
        s.retained_count,
        mib(s.total()),
        mib(s.limit)
    );
    assert!(
        s.retained >= slow_reader.bytes(),
        "the held version stays counted"
    );
    drop(rebuilt);
    let at = Instant::now();
    drop(slow_reader);
    let s = manager.ledger().snapshot();
    println!(
        "   the reader lets go: retained {} ({:?} after the drop, no polling)",
        mib(s.retained),
        at.elapsed()
    );

    println!("\n3. a request queued while every index is held by readers");
    let held: Vec<Handle<TreeIndex>> = trees.iter().filter_map(|(p, _)| manager.get(p)).collect();
    let (next, next_files) = trees
        .iter()
        .find(|(p, _)| !manager.contains(p))
        .cloned()
        .ok_or("every tree is loaded: budget too large")?;
    let need = (next_files as u64 * GUESS_PER_FILE)
        .max(manager.ledger().snapshot().headroom() + 1)
        .min(budget);
    manager.register(next.clone());
    let waiter = {
        let (m, next) = (manager.clone(), next.clone());
        thread::spawn(move || {
            let t = Instant::now();
            let r = m.reserve(
                &next,
                ReserveRequest::new(need).wait_for(Duration::from_secs(10)),
            );
            let admitted_at = Instant::now();
            let waited = admitted_at - t;
            // Build and publish under the reservation: trued down to the measured size.
            let published = r.map(|r| {
                let bytes = r.bytes();
                let index = m.publish(r, TreeIndex::build(&next)).map(|h| h.bytes());
                (bytes, index)
            });
            (published, waited, admitted_at)
        })
    };
    while manager.ledger().snapshot().queue_depth == 0 {
        thread::sleep(Duration::from_millis(1));
    }
    println!(
        "   {} asks for {} with a 10 s deadline: queued (depth {}), {} readers hold every index",
        short(&next),
        mib(need),
        manager.ledger().snapshot().queue_depth,
        held.len()
    );

    println!("\n4. refusals");
    let err = manager
        .reserve(&next, ReserveRequest::new(need))
        .expect_err("fail-fast behind a queued request");
    println!("   fail-fast: {err}");
    assert!(matches!(err, ReserveError::BudgetExceeded { .. }));
    let err = manager
        .reserve(&next, ReserveRequest::new(budget + 1))
        .expect_err("larger than the budget");
    println!("   oversize:  {err}");

    thread::sleep(Duration::from_millis(150));
    let released = Instant::now();
    drop(held);
    let (granted, waited, admitted_at) = waiter.join().map_err(|_| "waiter panicked")?;
    let (reserved, published) = granted?;
    println!(
        "\n3. (cont.) the readers let go; the queued request evicts {} and is admitted: {} after \
         waiting {waited:?} ({:?} after the release); its index publishes at {}, the rest is \
         credited back",
        take_evictions().join(", "),
        mib(reserved),
        admitted_at.saturating_duration_since(released),
        mib(published?)
    );

    done.store(true, Ordering::Release);
    let samples = observer.join().map_err(|_| "observer panicked")?;
    let status = manager.status();
    let s = status.ledger;
    println!("\n5. the ledger");
    println!("   {s}");
    println!(
        "   high-water {} of a {} budget ({:.1} %); observer: {samples} samples, max {}",
        mib(s.high_water),
        mib(s.limit),
        100.0 * s.high_water as f64 / s.limit as f64,
        mib(observed_max.load(Ordering::Relaxed))
    );
    let m = &status.metrics;
    println!(
        "   admitted {} ({} after waiting, longest wait {:?}); refused {} fail-fast, {} oversize; \
         evictions {} admission / {} explicit ({} moved); retained versions credited by drop: {}",
        m.admitted,
        m.admitted_after_wait,
        m.queue_wait_max,
        m.rejected_budget,
        m.rejected_exceeds_limit,
        m.evictions.admission,
        m.evictions.explicit,
        mib(m.evictions.bytes),
        m.retained_released
    );
    for e in &status.estimates {
        println!(
            "   estimate class {:?}: measured / estimated = {:.2} after {} publishes (mean error {:.0} %)",
            e.class,
            e.multiplier,
            e.samples,
            100.0 * e.mean_abs_error
        );
    }
    let loaded: Vec<Handle<TreeIndex>> = trees.iter().filter_map(|(p, _)| manager.get(p)).collect();
    println!(
        "   {} index(es) loaded now ({} of index for {} of files on disk)",
        loaded.len(),
        mib(loaded.iter().map(|h| h.bytes()).sum()),
        mib(loaded.iter().map(|h| h.total_size()).sum())
    );
    assert!(s.high_water <= s.limit, "the ledger exceeded its budget");
    assert!(observed_max.load(Ordering::Relaxed) <= s.limit);
    println!("   never above the budget: ok ({:?})", started.elapsed());
    Ok(())
}
