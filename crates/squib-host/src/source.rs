//! Where page contents come from.
//!
//! A snapshot is a byte space addressed by *source offset*; a registered region maps a range of
//! memory addresses onto it (see [`Region`](crate::Region)). The pager asks a [`PageSource`] for
//! whole pages, or runs of whole pages, with a [`PageRequest`] and installs what comes back. A
//! source may also say that a range is *known to be zero* without reading it (a hole in a sparse
//! file); the pager then maps the shared zero page instead of copying.
//!
//! Three sources ship here:
//! - [`MemorySource`]: a snapshot already in memory;
//! - [`FilePageSource`]: a snapshot file, read with `pread` at the request's offset, with its
//!   holes found once with `SEEK_DATA`/`SEEK_HOLE`;
//! - [`PageServerSource`](crate::PageServerSource): a client of a page server over a Unix or
//!   TCP stream socket, speaking the small protocol
//!   [`serve_pages`](crate::serve_pages) answers (for snapshots that live in another process or
//!   on another host).
//!
//! Sources must return exactly the bytes asked for: a short answer is an error
//! ([`PageSourceError::Short`]), never padding, so the pager can refuse to install wrong data.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// One request for page contents: `len` bytes of the snapshot at `offset`, destined for memory
/// at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// The memory address the first byte will be installed at.
    pub addr: u64,
    /// The snapshot offset of the first byte.
    pub offset: u64,
    /// Bytes wanted: a whole number of pages.
    pub len: usize,
    /// The page size of the region the request is for (4 KiB, or 2 MiB for huge pages).
    pub page_size: usize,
}

/// Why a source could not produce the requested bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PageSourceError {
    /// The source had fewer bytes than asked for (a truncated file, a short reply).
    #[error("short read at source offset {offset:#x}: wanted {wanted} bytes, got {got}")]
    Short {
        /// Source offset of the request.
        offset: u64,
        /// Bytes requested.
        wanted: usize,
        /// Bytes available.
        got: usize,
    },
    /// The snapshot file could not be opened or inspected.
    #[error("cannot open snapshot {}", path.display())]
    Open {
        /// The snapshot path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Reading the source failed.
    #[error("cannot read source offset {offset:#x} ({len} bytes)")]
    Io {
        /// Source offset of the request.
        offset: u64,
        /// Bytes requested.
        len: usize,
        /// What the OS or the peer said.
        #[source]
        source: io::Error,
    },
    /// A page server answered with an error status.
    #[error("page server refused source offset {offset:#x} ({len} bytes) with status {status}")]
    Refused {
        /// Source offset of the request.
        offset: u64,
        /// Bytes requested.
        len: usize,
        /// The server's status code.
        status: u32,
    },
    /// A custom source's own failure.
    #[error("page source failed at offset {offset:#x}: {reason}")]
    Other {
        /// Source offset of the request.
        offset: u64,
        /// What went wrong.
        reason: String,
    },
}

/// A provider of snapshot bytes. Implementations must be safe to call from many threads.
pub trait PageSource: Send + Sync + fmt::Debug {
    /// Returns exactly `req.len` bytes of the snapshot at `req.offset`.
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError>;

    /// Whether `[offset, offset + len)` is known to read as zeros without fetching it (a hole
    /// in a sparse file). The default knows nothing.
    fn known_zero(&self, offset: u64, len: usize) -> bool {
        let _ = (offset, len);
        false
    }

    /// The snapshot's length in bytes, if known (used to check region sizes).
    fn len_hint(&self) -> Option<u64> {
        None
    }

    /// Hands back bytes this source returned once the pager has installed them, so a source
    /// can reuse its buffers instead of allocating (and faulting in) fresh ones. The default
    /// drops them.
    fn recycle(&self, bytes: Bytes) {
        drop(bytes);
    }

    /// Whether a fetch is a fast local operation (memory, the page cache) that the fault
    /// server may run inline. Sources that may block for long (network, slow disks) say
    /// `false`, and the server runs their fetches on worker threads so one slow fetch never
    /// holds up faults on other pages. The default is `false`.
    fn is_local(&self) -> bool {
        false
    }

    /// Like [`fetch`](Self::fetch), for pages nobody waits for yet: background population and
    /// prewarm runs. A source with a priority channel (such as [`PageServerSource`]) sends
    /// these on a lane of their own so demand fetches never queue behind them. The default
    /// calls `fetch`.
    ///
    /// [`PageServerSource`]: crate::PageServerSource
    fn fetch_background(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        self.fetch(req)
    }
}

impl<T: PageSource + ?Sized> PageSource for Box<T> {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        (**self).fetch(req)
    }
    fn known_zero(&self, offset: u64, len: usize) -> bool {
        (**self).known_zero(offset, len)
    }
    fn len_hint(&self) -> Option<u64> {
        (**self).len_hint()
    }
    fn recycle(&self, bytes: Bytes) {
        (**self).recycle(bytes)
    }
    fn is_local(&self) -> bool {
        (**self).is_local()
    }
    fn fetch_background(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        (**self).fetch_background(req)
    }
}

impl<T: PageSource + ?Sized> PageSource for std::sync::Arc<T> {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        (**self).fetch(req)
    }
    fn known_zero(&self, offset: u64, len: usize) -> bool {
        (**self).known_zero(offset, len)
    }
    fn len_hint(&self) -> Option<u64> {
        (**self).len_hint()
    }
    fn recycle(&self, bytes: Bytes) {
        (**self).recycle(bytes)
    }
    fn is_local(&self) -> bool {
        (**self).is_local()
    }
    fn fetch_background(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        (**self).fetch_background(req)
    }
}

/// A snapshot held in memory. Fetches are zero-copy slices.
#[derive(Debug, Clone)]
pub struct MemorySource {
    data: Bytes,
}

impl MemorySource {
    /// A source serving `data` from offset 0.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self { data: data.into() }
    }
}

impl PageSource for MemorySource {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        let start = usize::try_from(req.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(req.len);
        if end > self.data.len() {
            return Err(PageSourceError::Short {
                offset: req.offset,
                wanted: req.len,
                got: self.data.len().saturating_sub(start),
            });
        }
        Ok(self.data.slice(start..end))
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.data.len() as u64)
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// A snapshot file read with `pread`. Holes (found once, at open, with `SEEK_DATA`/`SEEK_HOLE`)
/// are reported as known zeros. Buffers handed back through [`PageSource::recycle`] are
/// reused, so a steady stream of large fetches does not allocate and fault in new memory.
#[derive(Debug)]
pub struct FilePageSource {
    file: File,
    path: PathBuf,
    len: u64,
    /// Sorted, disjoint data extents `(start, end)`; everything else is a hole.
    data: Vec<(u64, u64)>,
    spare: Mutex<Vec<BytesMut>>,
}

/// Buffers a [`FilePageSource`] keeps for reuse.
const SPARE_BUFFERS: usize = 4;

impl FilePageSource {
    /// Opens the snapshot at `path` read-only and maps its holes.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PageSourceError> {
        let path = path.as_ref().to_owned();
        let open_err = |source| PageSourceError::Open {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        let data = extents(&file, len).map_err(open_err)?;
        Ok(Self {
            file,
            path,
            len,
            data,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// The snapshot's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the snapshot is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the file that hold data (not holes).
    pub fn data_bytes(&self) -> u64 {
        self.data.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(target_os = "linux")]
fn extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    crate::sys::linux::data_extents(file.as_fd(), len)
}

#[cfg(not(target_os = "linux"))]
fn extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let _ = file.as_fd();
    Ok(if len > 0 { vec![(0, len)] } else { Vec::new() })
}

impl PageSource for FilePageSource {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = match spare {
            // Stale bytes are fine: the loop below overwrites all `req.len` of them or fails.
            Some(mut b) if b.len() >= req.len => {
                b.truncate(req.len);
                b
            }
            _ => BytesMut::zeroed(req.len),
        };
        let mut done = 0;
        while done < req.len {
            match self
                .file
                .read_at(&mut buf[done..], req.offset + done as u64)
            {
                Ok(0) => {
                    return Err(PageSourceError::Short {
                        offset: req.offset,
                        wanted: req.len,
                        got: done,
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(PageSourceError::Io {
                        offset: req.offset,
                        len: req.len,
                        source,
                    });
                }
            }
        }
        Ok(buf.freeze())
    }

    fn recycle(&self, bytes: Bytes) {
        if let Ok(mut b) = bytes.try_into_mut() {
            let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            if spare.len() < SPARE_BUFFERS {
                // Keep the initialized length so reuse needs no zeroing.
                let cap = b.capacity();
                if b.len() < cap {
                    b.resize(cap, 0);
                }
                spare.push(b);
            }
        }
    }

    fn known_zero(&self, offset: u64, len: usize) -> bool {
        let end = offset.saturating_add(len as u64);
        if end > self.len {
            return false;
        }
        // The first extent ending after `offset` is the only one that can overlap.
        let i = self.data.partition_point(|&(_, e)| e <= offset);
        self.data.get(i).is_none_or(|&(s, _)| s >= end)
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.len)
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// Whether every byte of `data` is zero (word at a time).
#[cfg(any(target_os = "linux", test))]
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let (head, body, tail) = {
        // Split at the first 16-byte boundary so the body compares whole 16-byte words.
        let misalign = data.as_ptr().align_offset(16).min(data.len());
        let (head, rest) = data.split_at(misalign);
        let body_len = rest.len() / 16 * 16;
        let (body, tail) = rest.split_at(body_len);
        (head, body, tail)
    };
    head.iter().all(|&b| b == 0)
        && tail.iter().all(|&b| b == 0)
        && body.chunks_exact(16).all(|c| {
            let mut w = [0u8; 16];
            w.copy_from_slice(c);
            u128::from_ne_bytes(w) == 0
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request for `len` bytes at `offset`, of 4 KiB pages.
    pub(crate) fn req(offset: u64, len: usize) -> PageRequest {
        PageRequest {
            addr: 0,
            offset,
            len,
            page_size: 4096,
        }
    }

    #[test]
    fn memory_source_slices_and_refuses_short_ranges() {
        let src = MemorySource::new((0..=255u8).cycle().take(8192).collect::<Vec<_>>());
        let got = src.fetch(&req(4096, 4096)).unwrap();
        assert_eq!(got[0], 0);
        assert_eq!(got[1], 1);
        assert!(matches!(
            src.fetch(&req(4096, 8192)),
            Err(PageSourceError::Short {
                wanted: 8192,
                got: 4096,
                ..
            })
        ));
        assert!(matches!(
            src.fetch(&req(u64::MAX, 4096)),
            Err(PageSourceError::Short { .. })
        ));
    }

    #[test]
    fn zero_check_handles_every_alignment() {
        let mut v = vec![0u8; 4096 + 33];
        for start in 0..17 {
            assert!(is_zero(&v[start..]));
        }
        v[4096 + 32] = 1;
        for start in 0..17 {
            assert!(!is_zero(&v[start..]));
        }
        v[4096 + 32] = 0;
        v[5] = 9;
        assert!(!is_zero(&v));
        assert!(is_zero(&v[6..]));
    }
}
