//! What squib-host's test binaries share about pages: the host page size, the deterministic
//! test snapshot (data pages mixed with zero pages), the userfaultfd guard every fault test
//! opens with, and a page source slowed down on purpose.
//!
//! Included with `#[path]` at the root of the integration tests (`tests/it`) and of the
//! harness-free binaries (`processes`, `firecracker`), so [`require_uffd!`] finds it as
//! `crate::pages`; each uses only part of it.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use squib_host::{PageRequest, PageSource, PageSourceError};

/// The host page size.
pub(crate) fn ps() -> usize {
    squib_host::host_page_size()
}

/// Whether page `page` of a test snapshot is all zeros (30% of pages).
fn zero_page(page: usize) -> bool {
    page % 10 < 3
}

/// A deterministic, never-zero byte for page `page`, byte `i`.
fn byte(page: usize, i: usize) -> u8 {
    let x = (page as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (x >> 29) as u8 | 1
}

/// A snapshot of `pages` pages: 30% all zeros, the rest bytes that differ from page to page
/// and within each page, so a page served at the wrong offset shows.
pub(crate) fn snapshot(pages: usize) -> Vec<u8> {
    let ps = ps();
    let mut v = vec![0u8; pages * ps];
    for p in (0..pages).filter(|&p| !zero_page(p)) {
        for (i, b) in v[p * ps..(p + 1) * ps].iter_mut().enumerate() {
            *b = byte(p, i);
        }
    }
    v
}

/// Whether a userfaultfd can be created here; prints `test`'s skip line if not.
pub(crate) fn uffd_or_skip(test: &str) -> bool {
    #[cfg(target_os = "linux")]
    let usable = squib_host::Uffd::open()
        .map(drop)
        .map_err(|e| e.to_string());
    #[cfg(not(target_os = "linux"))]
    let usable: Result<(), String> = Err("userfaultfd is Linux-only".into());
    match usable {
        Ok(()) => true,
        Err(why) => {
            workspace_tests::support::skip(test, &why);
            false
        }
    }
}

/// Returns from the calling test, after printing its skip line, when this machine cannot
/// create a userfaultfd (not Linux, no `/dev/userfaultfd` access, `vm.unprivileged_userfaultfd`
/// off): `require_uffd!("test_name")` in a libtest test, `require_uffd!("check_name", Ok(()))`
/// in a harness-free check, whose skip is a pass.
#[allow(unused_macros)] // Not every including binary checks for userfaultfd itself.
macro_rules! require_uffd {
    ($test:expr) => {
        $crate::pages::require_uffd!($test, ())
    };
    ($test:expr, $skipped:expr) => {
        if !$crate::pages::uffd_or_skip($test) {
            return $skipped;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_uffd;

/// A page source that sleeps `delay` before each fetch of the source it wraps, so a restore
/// lasts long enough for something to happen during it (a debugger attaching, a handler being
/// killed). Local, so the fault server fetches inline, one fault at a time.
#[derive(Debug)]
pub(crate) struct Slow<S> {
    pub(crate) source: S,
    pub(crate) delay: Duration,
}

impl<S: PageSource> PageSource for Slow<S> {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        std::thread::sleep(self.delay);
        self.source.fetch(req)
    }

    fn len_hint(&self) -> Option<u64> {
        self.source.len_hint()
    }

    fn known_zero(&self, offset: u64, len: usize) -> bool {
        self.source.known_zero(offset, len)
    }

    fn is_local(&self) -> bool {
        true
    }
}
