//! Shared support for the workspace's tests and benches, and the home of the cross-crate
//! suites (`tests/tests/`).
//!
//! Crates use this library as a path-only dev-dependency (stripped when they are published), so
//! the mechanisms every suite needs exist once:
//!
//! - [`bench`](mod@bench): per-call timings recorded from criterion's `iter_custom`, medians, and the
//!   verdict line every bench prints;
//! - [`harness`](mod@harness): the runner for test binaries that cannot use libtest (they must be
//!   single-threaded, or re-execute themselves as a child process), printing the summary line
//!   `cargo xtask ci` counts;
//! - [`criterion_config!`]: the short criterion configuration every bench uses;
//! - [`loom_model!`]: the one way the crates' loom suites run a model (preemption bound,
//!   executions explored);
//! - [`hugetlb`](mod@hugetlb): a temporary reservation of 2 MiB huge pages for the suites that
//!   map them, undone when the test ends.

pub mod bench {
    //! Benchmark bookkeeping: criterion measures, these helpers keep the timings and print
    //! the verdicts, `bench: <crate>/<metric> = <value> <unit> (target <op> <value>) ok|FAIL`.

    use std::sync::Mutex;
    use std::time::Duration;

    /// Named samples (nanoseconds per iteration, or any per-sample figure).
    #[derive(Debug, Default)]
    pub struct Samples {
        inner: Mutex<Vec<(&'static str, f64)>>,
    }

    impl Samples {
        /// An empty set, usable in a `static`.
        pub const fn new() -> Self {
            Self {
                inner: Mutex::new(Vec::new()),
            }
        }

        /// Records one `iter_custom` call (`elapsed` for `iters` iterations) as ns/iteration,
        /// and hands `elapsed` back for criterion.
        pub fn record(&self, name: &'static str, iters: u64, elapsed: Duration) -> Duration {
            self.push(name, elapsed.as_nanos() as f64 / iters.max(1) as f64);
            elapsed
        }

        /// Records one figure under `name`.
        pub fn push(&self, name: &'static str, value: f64) {
            self.inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name, value));
        }

        /// The median of the figures recorded under `name` (NaN if none).
        pub fn median(&self, name: &str) -> f64 {
            let mut v: Vec<f64> = self
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, x)| *x)
                .collect();
            median(&mut v)
        }
    }

    /// The median of `values` (NaN if empty); sorts them.
    pub fn median(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The p-th percentile (0..=100) of `values` (NaN if empty); sorts them.
    pub fn percentile(values: &mut [f64], p: f64) -> f64 {
        values.sort_by(f64::total_cmp);
        if values.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    }

    /// What a figure must satisfy.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Target {
        /// At least this much.
        AtLeast(f64),
        /// At most this much.
        AtMost(f64),
    }

    /// Prints the verdict line and returns whether the target is met (NaN never is).
    pub fn verdict(krate: &str, metric: &str, value: f64, unit: &str, target: Target) -> bool {
        let (op, bound, ok) = match target {
            Target::AtLeast(t) => (">=", t, value >= t),
            Target::AtMost(t) => ("<=", t, value <= t),
        };
        println!(
            "bench: {krate}/{metric} = {value:.2} {unit} (target {op} {bound}) {}",
            if ok { "ok" } else { "FAIL" }
        );
        ok
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn medians_and_percentiles() {
            let s = Samples::new();
            for x in [5.0, 1.0, 3.0] {
                s.push("a", x);
            }
            s.record("b", 4, Duration::from_nanos(400));
            assert_eq!(s.median("a"), 3.0);
            assert_eq!(s.median("b"), 100.0);
            assert!(s.median("missing").is_nan());
            let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
            assert_eq!(percentile(&mut v, 99.0), 99.0);
            assert_eq!(percentile(&mut v, 100.0), 100.0);
        }

        #[test]
        fn verdicts_compare_in_the_stated_direction() {
            assert!(verdict("c", "m", 2.0, "x", Target::AtLeast(1.0)));
            assert!(!verdict("c", "m", 0.5, "x", Target::AtLeast(1.0)));
            assert!(verdict("c", "m", 0.5, "ms", Target::AtMost(1.0)));
            assert!(!verdict("c", "m", f64::NAN, "ms", Target::AtMost(1.0)));
        }
    }
}

pub mod harness {
    //! A runner for test binaries built with `harness = false`.

    use std::process::ExitCode;

    /// A named check.
    pub type Check = (&'static str, fn() -> Result<(), String>);

    /// Runs `checks` in order and reports them (see [`report`]).
    pub fn run(checks: &[Check]) -> ExitCode {
        let results: Vec<(&str, Result<(), String>)> = checks
            .iter()
            .map(|(name, check)| (*name, check()))
            .collect();
        report(&results)
    }

    /// Prints one `test <name> ... ok|FAILED` line per result and the libtest summary line that
    /// `cargo xtask ci` counts; fails the process if any check failed.
    pub fn report(results: &[(&str, Result<(), String>)]) -> ExitCode {
        let mut failed = 0;
        for (name, result) in results {
            match result {
                Ok(()) => println!("test {name} ... ok"),
                Err(why) => {
                    failed += 1;
                    println!("test {name} ... FAILED\n    {why}");
                }
            }
        }
        let verdict = if failed == 0 { "ok" } else { "FAILED" };
        println!(
            "\ntest result: {verdict}. {} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n",
            results.len() - failed
        );
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

pub mod hugetlb {
    //! Temporarily grows the kernel's pool of 2 MiB huge pages for a test.
    //!
    //! Hugetlb memory comes only from a pool the administrator reserves
    //! (`/proc/sys/vm/nr_hugepages`, empty by default). A test that maps huge pages asks for
    //! what it needs with [`reserve`]; the pool is grown if it has too few free pages (which
    //! needs root) and put back to its old size when the returned guard drops. Reservations
    //! in one process are serialized, so two tests never undo each other's.

    use std::sync::{Mutex, MutexGuard};

    const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

    static LOCK: Mutex<()> = Mutex::new(());

    /// A reservation: free huge pages were available when it was made. Drop it after the
    /// test's huge mappings are unmapped.
    #[derive(Debug)]
    pub struct HugePages {
        restore: Option<u64>,
        _serial: MutexGuard<'static, ()>,
    }

    impl Drop for HugePages {
        fn drop(&mut self) {
            if let Some(total) = self.restore {
                let _ = std::fs::write(NR_HUGEPAGES, total.to_string());
            }
        }
    }

    /// The number of free 2 MiB huge pages (`HugePages_Free` in `/proc/meminfo`).
    pub fn free_pages() -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Makes sure at least `pages` huge pages are free, growing the pool if needed.
    ///
    /// # Errors
    ///
    /// Why it could not (no hugetlb support, not permitted to grow the pool, or the kernel
    /// could not find enough contiguous memory), for the caller's skip line.
    pub fn reserve(pages: u64) -> Result<HugePages, String> {
        let serial = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let free =
            free_pages().ok_or("no hugetlb support (HugePages_Free missing from /proc/meminfo)")?;
        if free >= pages {
            return Ok(HugePages {
                restore: None,
                _serial: serial,
            });
        }
        let total: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?;
        std::fs::write(NR_HUGEPAGES, (total + pages - free).to_string()).map_err(|e| {
            format!("cannot grow the huge page pool ({NR_HUGEPAGES}: {e}); run as root")
        })?;
        let guard = HugePages {
            restore: Some(total),
            _serial: serial,
        };
        match free_pages() {
            Some(now) if now >= pages => Ok(guard),
            now => Err(format!(
                "the kernel found only {} free huge pages of the {pages} needed",
                now.unwrap_or(0)
            )),
        }
    }
}

/// Runs a closure under loom's model checker and prints how many executions it explored.
///
/// The preemption bound is `LOOM_MAX_PREEMPTIONS` if set, else 2 (what `cargo xtask ci` uses),
/// and never below the optional `floor`: `loom_model!(3, f)` for a window that needs one more
/// context switch to reach. The macro expands in the calling crate, which depends on `loom`
/// (this crate does not, so ordinary test builds never compile it).
///
/// ```text
/// workspace_tests::loom_model!(|| {
///     let t = loom::thread::spawn(|| ());
///     t.join().unwrap();
/// });
/// ```
#[macro_export]
macro_rules! loom_model {
    ($f:expr) => {
        $crate::loom_model!(0, $f)
    };
    ($floor:expr, $f:expr) => {{
        let mut builder = ::loom::model::Builder::new();
        builder.preemption_bound = Some(builder.preemption_bound.unwrap_or(2).max($floor));
        let executions = ::std::sync::Arc::new(::std::sync::atomic::AtomicUsize::new(0));
        let counter = ::std::sync::Arc::clone(&executions);
        let f = $f;
        builder.check(move || {
            counter.fetch_add(1, ::std::sync::atomic::Ordering::Relaxed);
            f();
        });
        println!(
            "loom: {} executions explored",
            executions.load(::std::sync::atomic::Ordering::Relaxed)
        );
    }};
}

/// The short criterion configuration every bench uses: half a second of warm-up, `$secs`
/// seconds of measurement and `$samples` samples (the benches compute their own verdicts from
/// the timings, so long criterion runs buy nothing). Expands in the calling bench, which
/// depends on `criterion`.
///
/// ```text
/// criterion_group! {
///     name = benches;
///     config = workspace_tests::criterion_config!(2, 30);
///     targets = bench_paths, verdicts
/// }
/// ```
#[macro_export]
macro_rules! criterion_config {
    ($secs:expr, $samples:expr) => {
        ::criterion::Criterion::default()
            .warm_up_time(::std::time::Duration::from_millis(500))
            .measurement_time(::std::time::Duration::from_secs($secs))
            .sample_size($samples)
    };
}
