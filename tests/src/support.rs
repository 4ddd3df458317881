//! The small things every suite needs: a temporary directory that cleans up, one skip line,
//! "am I root", "is this program installed" (and "skip unless these are"), an error with its
//! causes, and an allocator that counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed with its contents on drop.
///
/// Names carry the process id and a counter, so parallel tests and concurrent runs of the same
/// suite never share one.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/<label>-<pid>-<n>`.
    ///
    /// # Panics
    ///
    /// If the directory cannot be created: a test cannot go on without it.
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{label}-{}-{n}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create the test directory {}: {e}", dir.display());
        }
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }

    /// The names of the directory's entries other than `keep`, for "nothing was left behind"
    /// checks.
    ///
    /// # Panics
    ///
    /// If the directory cannot be read.
    pub fn entries_except(&self, keep: &[&str]) -> Vec<String> {
        let entries = std::fs::read_dir(&self.0)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.0.display()));
        entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect()
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints why `test` cannot run here, in the one form `cargo xtask ci` and readers look for:
/// `skip: <test>: <why>`. The caller then returns without asserting.
pub fn skip(test: &str, why: &str) {
    eprintln!("skip: {test}: {why}");
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // The effective uid is the second field of `Uid:` in /proc/self/status; where there is no
    // /proc (macOS), the `id` program answers.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        return status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    }
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The path of `program` if it is an executable file on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether every one of `programs` is installed (on `PATH`); if one is not, prints the skip
/// line naming it for `test` and answers `false`, so a test opens with
/// `if !have(test, &["tmux"]) { return; }`.
pub fn have(test: &str, programs: &[&str]) -> bool {
    match programs.iter().find(|p| which(p).is_none()) {
        Some(missing) => {
            skip(test, &format!("{missing} is not installed"));
            false
        }
        None => true,
    }
}

/// `error` followed by each of its sources, joined with `": "` — what a test prints or
/// searches when a message must name a path or key anywhere in the chain (the crates' own
/// [`platform_primitives::error::chain`]).
pub use platform_primitives::error::chain as error_chain;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting: install it in a bench or test binary with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;` and read
/// [`CountingAlloc::allocations`] and [`CountingAlloc::live_bytes`], so memory and allocation
/// figures are measured rather than computed.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

impl CountingAlloc {
    /// Allocations (and reallocations) made so far by the whole process.
    pub fn allocations() -> u64 {
        ALLOCATIONS.load(Ordering::Relaxed)
    }

    /// Heap bytes allocated and not yet freed.
    pub fn live_bytes() -> usize {
        LIVE_BYTES.load(Ordering::Relaxed)
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged
// and only adds bookkeeping on atomic counters, which never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    #[allow(unsafe_code)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, which satisfies `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    #[allow(unsafe_code)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` (through `alloc` above) with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    #[allow(unsafe_code)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_are_distinct_and_removed_on_drop() {
        let a = TempDir::new("ws-support");
        let b = TempDir::new("ws-support");
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), b"x").expect("write");
        assert_eq!(a.entries_except(&[]), ["f"]);
        assert!(a.entries_except(&["f"]).is_empty());
        let kept = a.path().to_owned();
        drop(a);
        assert!(!kept.exists(), "{} outlived its TempDir", kept.display());
    }

    #[test]
    fn error_chain_names_every_cause() {
        let inner = std::io::Error::other("disk on fire");
        let outer = std::io::Error::new(std::io::ErrorKind::NotFound, WithSource(inner));
        let text = error_chain(&outer);
        assert!(
            text.contains("reading /x") && text.ends_with("disk on fire"),
            "{text}"
        );
    }

    #[derive(Debug)]
    struct WithSource(std::io::Error);
    impl std::fmt::Display for WithSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("reading /x")
        }
    }
    impl std::error::Error for WithSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn which_finds_sh_and_not_a_made_up_name() {
        assert!(which("sh").is_some());
        assert!(which("no-such-program-anywhere-42").is_none());
        assert!(have("support", &["sh"]));
        assert!(!have("support", &["sh", "no-such-program-anywhere-42"]));
    }
}
