//! What the real-Firecracker test binaries share: their work directory and the skip check.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use workspace_tests::firecracker::{Kit, KitUnavailable};

/// This test process's scratch directory (snapshots, sockets, logs), made on first use.
pub(crate) fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("squib-fc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("work dir");
        dir
    })
}

/// Removes the snapshots and sockets of this run.
pub(crate) fn remove_work_dir() {
    let _ = std::fs::remove_dir_all(work_dir());
}

/// The kit, or `None` after printing why `test` skips (no kit configured, no `/dev/kvm`, no
/// userfaultfd). A kit that is configured (`FIRECRACKER_BIN`, which `cargo xtask` sets where
/// `../shared/firecracker` exists) but cannot be used fails the test instead: skipping would
/// hide it.
pub(crate) fn kit_or_skip(test: &str) -> Option<Kit> {
    let found = match Kit::locate() {
        Ok(kit) => Ok(kit),
        Err(KitUnavailable::Broken(why)) => {
            panic!("{test}: the Firecracker kit is configured but cannot be used: {why}")
        }
        Err(other) => Err(other.to_string()),
    };
    let found = found.and_then(|kit| match squib_host::Uffd::open() {
        Ok(_) => Ok(kit),
        Err(e) => Err(e.to_string()),
    });
    match found {
        Ok(kit) => Some(kit),
        Err(why) => {
            workspace_tests::support::skip(test, &why);
            None
        }
    }
}
