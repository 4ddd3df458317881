//! Host page size and anonymous memory mappings owned by RAII guards.
//!
//! [`AnonMapping`] reserves private, zero-filled memory with `mmap` and unmaps it on drop. It
//! can be aligned beyond the page size (to 2 MiB for huge pages, say): the mapping is
//! over-reserved and trimmed, so the kernel picks the address and nothing else is clobbered.
//! Pagers register such mappings with the kernel (userfaultfd) and fill them on demand.
//! [`AnonMapping::huge`] maps 2 MiB hugetlb pages instead (Linux), from the pool the
//! administrator reserves in `/proc/sys/vm/nr_hugepages`.
//!
//! ```
//! use platform_primitives::mem::{AnonMapping, page_size};
//!
//! let mut map = AnonMapping::aligned(4 * page_size(), 2 << 20)?;
//! assert_eq!(map.as_ptr() as usize % (2 << 20), 0);
//! map.as_mut_slice()[0] = 7;
//! assert_eq!(map.as_slice()[0], 7);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::sync::OnceLock;

use crate::sys::unix::{self, Mapping};

/// The host's base page size in bytes (4 KiB on x86_64 Linux, 16 KiB on Apple Silicon).
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(unix::page_size)
}

/// The huge page size [`AnonMapping::huge`] maps: 2 MiB.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// A private anonymous read-write mapping, unmapped on drop.
#[derive(Debug)]
pub struct AnonMapping {
    map: Mapping,
}

impl AnonMapping {
    /// Maps `len` bytes (rounded up to whole pages), page-aligned.
    pub fn new(len: usize) -> io::Result<Self> {
        Self::aligned(len, page_size())
    }

    /// Maps `len` bytes (rounded up to whole pages) at an address aligned to `align`, a power
    /// of two (values below the page size mean the page size).
    pub fn aligned(len: usize, align: usize) -> io::Result<Self> {
        let page = page_size();
        if len == 0 {
            return Err(invalid("cannot map 0 bytes"));
        }
        if !align.is_power_of_two() {
            return Err(invalid("alignment must be a power of two"));
        }
        let align = align.max(page);
        let len = len
            .checked_next_multiple_of(page)
            .ok_or_else(|| invalid("length overflows"))?;
        let reserve = len
            .checked_add(align - page)
            .ok_or_else(|| invalid("length plus alignment overflows"))?;
        let map = Mapping::new(reserve)?;
        let addr = map.as_ptr() as usize;
        let head = addr.next_multiple_of(align) - addr;
        Ok(Self {
            map: map.trim(head, len),
        })
    }

    /// Maps `len` bytes (rounded up to whole 2 MiB pages) of private hugetlb memory, aligned
    /// to 2 MiB. The pages are reserved from the hugetlb pool when the mapping is made, so a
    /// pool too small fails here (with a message saying how to grow it) rather than at the
    /// first touch.
    ///
    /// # Errors
    ///
    /// `Unsupported` where there are no hugetlb pages (macOS); `OutOfMemory` when the pool has
    /// too few free pages; `InvalidInput` for a zero or overflowing length.
    pub fn huge(len: usize) -> io::Result<Self> {
        let Some(flags) = crate::sys::os::MAP_HUGE_2MIB else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "hugetlb pages are Linux-only",
            ));
        };
        if len == 0 {
            return Err(invalid("cannot map 0 bytes"));
        }
        let len = len
            .checked_next_multiple_of(HUGE_PAGE_SIZE)
            .ok_or_else(|| invalid("length overflows"))?;
        let map = Mapping::with_flags(len, flags).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOMEM) {
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "too few free 2 MiB huge pages for {} MiB (reserve more in \
                         /proc/sys/vm/nr_hugepages): {e}",
                        len >> 20
                    ),
                )
            } else {
                e
            }
        })?;
        Ok(Self { map })
    }

    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// The mapping's length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: empty mappings cannot be created.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The mapping's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// The mapping's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.map.as_mut_slice()
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}
