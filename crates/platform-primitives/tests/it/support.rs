//! Helpers shared by the integration tests.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pp-it-{}-{label}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        Self(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Entries of the directory other than `keep`.
    pub(crate) fn entries_except(&self, keep: &[&str]) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .expect("read test dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| !keep.contains(&n.as_str()))
            .collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pipe whose write end is meant to travel: once every copy of the write end is closed,
/// the read end reports end-of-file, which proves no descriptor for it is left anywhere (in
/// this process, in a socket queue, or in a child).
pub(crate) struct Tracer {
    read: std::io::PipeReader,
    write: OwnedFd,
}

impl Tracer {
    pub(crate) fn new() -> Self {
        let (read, write) = std::io::pipe().expect("pipe");
        Self {
            read,
            write: OwnedFd::from(write),
        }
    }

    pub(crate) fn write_end(&self) -> BorrowedFd<'_> {
        self.write.as_fd()
    }

    /// Closes our own copy of the write end and waits up to two seconds for end-of-file.
    pub(crate) fn all_write_ends_closed(self) -> bool {
        let Self { mut read, write } = self;
        drop(write);
        let (tx, rx) = mpsc::channel();
        // A leaked write end would block this read forever: keep it off the test's thread.
        thread::spawn(move || {
            let mut byte = [0u8; 1];
            let _ = tx.send(read.read(&mut byte).ok());
        });
        matches!(rx.recv_timeout(Duration::from_secs(2)), Ok(Some(0)))
    }
}

/// Whether an executable is on PATH; tests that need it print a skip line when it is not.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Prints why a test is skipping, in one recognisable form.
pub(crate) fn skip(test: &str, why: &str) {
    eprintln!("skip: {test}: {why}");
}
