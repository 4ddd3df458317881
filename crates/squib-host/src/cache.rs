//! A page cache in front of a source, shared by every pager restoring the same snapshot.
//!
//! When many VMs restore from one snapshot template at once, each of their pagers asks for the
//! same pages. [`CachedSource`] sits between them and the real source: the snapshot is cut into
//! fixed blocks (64 KiB by default); a block is read from the source once, kept under a byte
//! budget, and served to every pager that asks for any part of it. Concurrent misses on one
//! block share one read (single flight). When the budget is full, the least recently used
//! blocks are dropped; a dropped block is read again on its next use.
//!
//! ```
//! use squib_host::{CacheConfig, CachedSource, MemorySource, PageRequest, PageSource};
//!
//! let cache = CachedSource::new(MemorySource::new(vec![7u8; 1 << 20]), CacheConfig::default())?;
//! let req = PageRequest { addr: 0, offset: 4096, len: 4096, page_size: 4096 };
//! assert_eq!(cache.fetch(&req)?[0], 7);
//! assert_eq!(cache.fetch(&req)?[0], 7);
//! assert_eq!(cache.stats().source_reads, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};

use crate::inflight::SingleFlight;
use crate::source::{PageRequest, PageSource, PageSourceError};

/// Block size and budget of a [`CachedSource`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes per block, a power of two of at least 4 KiB. Default 64 KiB.
    pub block: usize,
    /// Most bytes kept. Default 1 GiB.
    pub budget: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            block: 64 << 10,
            budget: 1 << 30,
        }
    }
}

/// Why a cache could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The source does not know its length, so its last block cannot be sized.
    #[error("the source has no known length (give a page server source one with `with_len`)")]
    UnknownLength,
    /// The block size is not a power of two of at least 4 KiB.
    #[error("cache block size {0} is not a power of two of at least 4096 bytes")]
    BadBlock(usize),
}

/// Counters of a [`CachedSource`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads issued to the underlying source.
    pub source_reads: u64,
    /// Bytes read from the underlying source.
    pub source_bytes: u64,
    /// Block lookups served from the cache.
    pub hits: u64,
    /// Block lookups that had to read (or wait for another caller's read).
    pub misses: u64,
    /// Bytes dropped to stay within the budget.
    pub evicted_bytes: u64,
    /// Bytes held now.
    pub cached_bytes: u64,
}

#[derive(Debug, Default)]
struct Blocks {
    /// Block index → its bytes and the tick of its last use.
    map: HashMap<u64, (Bytes, u64)>,
    /// Tick of last use → block index, oldest first.
    lru: BTreeMap<u64, u64>,
    tick: u64,
    bytes: u64,
}

/// A page source with a shared block cache in front: each block is read from the source once
/// while it is cached, however many pagers ask for it.
#[derive(Debug)]
pub struct CachedSource<S> {
    inner: S,
    len: u64,
    config: CacheConfig,
    blocks: Mutex<Blocks>,
    inflight: SingleFlight<Bytes>,
    source_reads: AtomicU64,
    source_bytes: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evicted: AtomicU64,
}

impl<S: PageSource> CachedSource<S> {
    /// A cache in front of `inner`, which must know its length.
    pub fn new(inner: S, config: CacheConfig) -> Result<Self, CacheError> {
        if !config.block.is_power_of_two() || config.block < 4096 {
            return Err(CacheError::BadBlock(config.block));
        }
        let len = inner.len_hint().ok_or(CacheError::UnknownLength)?;
        Ok(Self {
            inner,
            len,
            config,
            blocks: Mutex::default(),
            inflight: SingleFlight::new(),
            source_reads: AtomicU64::new(0),
            source_bytes: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    /// The source behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let cached = crate::sync::lock_std(&self.blocks).bytes;
        CacheStats {
            source_reads: self.source_reads.load(Relaxed),
            source_bytes: self.source_bytes.load(Relaxed),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            evicted_bytes: self.evicted.load(Relaxed),
            cached_bytes: cached,
        }
    }

    /// Block `b`: from the cache, or read once however many callers ask at the same time.
    fn block(&self, b: u64, background: bool) -> Result<Bytes, PageSourceError> {
        if let Some(bytes) = self.lookup(b) {
            self.hits.fetch_add(1, Relaxed);
            return Ok(bytes);
        }
        self.misses.fetch_add(1, Relaxed);
        let (bytes, _) = self.inflight.run(b, || {
            // Another caller may have finished reading it between the lookup and here.
            if let Some(bytes) = self.lookup(b) {
                return Ok(bytes);
            }
            let offset = b * self.config.block as u64;
            let len = (self.len - offset).min(self.config.block as u64) as usize;
            let req = PageRequest {
                addr: 0,
                offset,
                len,
                page_size: 0,
            };
            self.source_reads.fetch_add(1, Relaxed);
            let bytes = if background {
                self.inner.fetch_background(&req)?
            } else {
                self.inner.fetch(&req)?
            };
            if bytes.len() != len {
                return Err(PageSourceError::Short {
                    offset,
                    wanted: len,
                    got: bytes.len(),
                });
            }
            self.source_bytes.fetch_add(len as u64, Relaxed);
            self.insert(b, bytes.clone());
            Ok(bytes)
        })?;
        Ok(bytes)
    }

    fn lookup(&self, b: u64) -> Option<Bytes> {
        let mut blocks = crate::sync::lock_std(&self.blocks);
        blocks.tick += 1;
        let tick = blocks.tick;
        let (bytes, last) = blocks.map.get_mut(&b)?;
        let (bytes, old) = (bytes.clone(), std::mem::replace(last, tick));
        blocks.lru.remove(&old);
        blocks.lru.insert(tick, b);
        Some(bytes)
    }

    fn insert(&self, b: u64, bytes: Bytes) {
        let mut blocks = crate::sync::lock_std(&self.blocks);
        blocks.tick += 1;
        let tick = blocks.tick;
        blocks.bytes += bytes.len() as u64;
        if let Some((old, last)) = blocks.map.insert(b, (bytes, tick)) {
            blocks.bytes -= old.len() as u64;
            blocks.lru.remove(&last);
        }
        blocks.lru.insert(tick, b);
        while blocks.bytes > self.config.budget {
            let Some((_, victim)) = blocks.lru.pop_first() else {
                break;
            };
            if let Some((gone, _)) = blocks.map.remove(&victim) {
                blocks.bytes -= gone.len() as u64;
                self.evicted.fetch_add(gone.len() as u64, Relaxed);
            }
        }
    }

    fn fetch_range(&self, req: &PageRequest, background: bool) -> Result<Bytes, PageSourceError> {
        let end = req
            .offset
            .checked_add(req.len as u64)
            .filter(|&e| e <= self.len);
        let Some(end) = end else {
            return Err(PageSourceError::Short {
                offset: req.offset,
                wanted: req.len,
                got: self.len.saturating_sub(req.offset) as usize,
            });
        };
        if req.len == 0 {
            return Ok(Bytes::new());
        }
        let bs = self.config.block as u64;
        let (first, last) = (req.offset / bs, (end - 1) / bs);
        if first == last {
            let block = self.block(first, background)?;
            let at = (req.offset - first * bs) as usize;
            return Ok(block.slice(at..at + req.len));
        }
        let mut out = BytesMut::with_capacity(req.len);
        for b in first..=last {
            let block = self.block(b, background)?;
            let start = req.offset.max(b * bs) - b * bs;
            let stop = end.min((b + 1) * bs) - b * bs;
            out.extend_from_slice(&block[start as usize..stop as usize]);
        }
        Ok(out.freeze())
    }
}

impl<S: PageSource> PageSource for CachedSource<S> {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        self.fetch_range(req, false)
    }

    fn fetch_background(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        self.fetch_range(req, true)
    }

    fn known_zero(&self, offset: u64, len: usize) -> bool {
        self.inner.known_zero(offset, len)
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.len)
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemorySource;
    use crate::source::tests::req;

    #[test]
    fn every_range_reads_back_exactly_and_each_block_once() {
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let cache = CachedSource::new(
            MemorySource::new(data.clone()),
            CacheConfig {
                block: 16 << 10,
                budget: 1 << 30,
            },
        )
        .unwrap();
        for (off, len) in [
            (0, 4096),
            (4096, 65536),
            (12288, 8192),
            (1040384, 8192),
            (0, 1 << 20),
        ] {
            let got = cache.fetch(&req(off, len)).unwrap();
            assert_eq!(
                &got[..],
                &data[off as usize..off as usize + len],
                "{off}+{len}"
            );
        }
        let s = cache.stats();
        assert_eq!(s.source_reads, 64, "{s:?}");
        assert_eq!(s.source_bytes, 1 << 20);
        assert!(cache.fetch(&req((1 << 20) - 4096, 8192)).is_err());
    }

    #[test]
    fn the_budget_evicts_least_recently_used_blocks() {
        let data = vec![1u8; 1 << 20];
        let cache = CachedSource::new(
            MemorySource::new(data),
            CacheConfig {
                block: 4096,
                budget: 3 * 4096,
            },
        )
        .unwrap();
        for p in [0u64, 1, 2, 0, 3] {
            cache.fetch(&req(p * 4096, 4096)).unwrap();
        }
        // Block 1 was the least recently used when 3 came in.
        let s = cache.stats();
        assert_eq!(
            (s.source_reads, s.cached_bytes, s.evicted_bytes),
            (4, 3 * 4096, 4096)
        );
        cache.fetch(&req(0, 4096)).unwrap();
        assert_eq!(cache.stats().source_reads, 4);
        cache.fetch(&req(4096, 4096)).unwrap();
        assert_eq!(cache.stats().source_reads, 5);
    }

    #[test]
    fn concurrent_misses_on_one_block_read_it_once() {
        #[derive(Debug)]
        struct Slow(MemorySource);
        impl PageSource for Slow {
            fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
                std::thread::sleep(std::time::Duration::from_millis(50));
                self.0.fetch(req)
            }
            fn len_hint(&self) -> Option<u64> {
                self.0.len_hint()
            }
        }
        let cache = std::sync::Arc::new(
            CachedSource::new(
                Slow(MemorySource::new(vec![3u8; 1 << 20])),
                CacheConfig::default(),
            )
            .unwrap(),
        );
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let c = cache.clone();
                std::thread::spawn(move || c.fetch(&req(i * 4096, 4096)).unwrap()[0])
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 3);
        }
        assert_eq!(cache.stats().source_reads, 1);
    }
}
