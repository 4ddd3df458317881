//! Helpers shared by the integration tests.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

pub(crate) use workspace_tests::support::{TempDir, skip, which};

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
