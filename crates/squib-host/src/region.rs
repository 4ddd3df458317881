//! Regions: which memory addresses the pager serves, and where in the snapshot their bytes are.
//!
//! A [`Region`] maps `[base, base + len)` onto the snapshot range `[offset, offset + len)`
//! with one page size (the host's base page, or 2 MiB for hugetlbfs-backed memory). Regions
//! must be page-aligned and must not overlap; [`RegionSet`] checks both, and resolves an address
//! to its region and page.

use std::fmt;

/// The host's base page size.
pub fn host_page_size() -> usize {
    platform_primitives::mem::page_size()
}

/// The huge page size regions may use besides the base page size (2 MiB).
pub use platform_primitives::mem::HUGE_PAGE_SIZE;

/// A range of memory served from a range of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte of the memory range.
    pub base: u64,
    /// Length of the range in bytes (a whole number of pages).
    pub len: u64,
    /// Snapshot offset of the byte at `base`.
    pub offset: u64,
    /// Page size of the range: the host page size or [`HUGE_PAGE_SIZE`].
    pub page_size: usize,
}

impl Region {
    /// A region at `base` of `len` bytes, snapshot offset 0, host page size.
    pub fn new(base: u64, len: u64) -> Self {
        Self {
            base,
            len,
            offset: 0,
            page_size: host_page_size(),
        }
    }

    /// Sets the snapshot offset of the byte at `base`.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Sets the page size (host page size or [`HUGE_PAGE_SIZE`]).
    pub fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.len)
    }

    /// Whether `addr` lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end()
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        (self.len / self.page_size as u64) as usize
    }

    /// The snapshot offset of `addr` (which must lie in the region).
    pub fn offset_of(&self, addr: u64) -> u64 {
        self.offset + (addr - self.base)
    }

    /// Checks alignment and sizes; `source_len`, when known, bounds `offset + len`.
    pub fn validate(&self, source_len: Option<u64>) -> Result<(), RegionError> {
        let host = host_page_size();
        if self.page_size != host && self.page_size != HUGE_PAGE_SIZE {
            return Err(RegionError::PageSize {
                base: self.base,
                page_size: self.page_size,
            });
        }
        let ps = self.page_size as u64;
        if self.len == 0 {
            return Err(RegionError::Empty { base: self.base });
        }
        if !self.base.is_multiple_of(ps)
            || !self.len.is_multiple_of(ps)
            || !self.offset.is_multiple_of(host as u64)
        {
            return Err(RegionError::Unaligned {
                region: *self,
                page_size: self.page_size,
            });
        }
        if self.base.checked_add(self.len).is_none() {
            return Err(RegionError::Overflow { region: *self });
        }
        let Some(end) = self.offset.checked_add(self.len) else {
            return Err(RegionError::Overflow { region: *self });
        };
        if let Some(source_len) = source_len
            && end > source_len
        {
            return Err(RegionError::BeyondSource {
                region: *self,
                source_len,
            });
        }
        Ok(())
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:#x}, {:#x}) at snapshot offset {:#x}, {} KiB pages",
            self.base,
            self.end(),
            self.offset,
            self.page_size / 1024
        )
    }
}

/// Why a region was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegionError {
    /// The region has no bytes.
    #[error("region at {base:#x} is empty")]
    Empty {
        /// Its base.
        base: u64,
    },
    /// The page size is neither the host's nor 2 MiB.
    #[error("region at {base:#x}: page size {page_size} is neither the host page size nor 2 MiB")]
    PageSize {
        /// Its base.
        base: u64,
        /// The rejected page size.
        page_size: usize,
    },
    /// Base or length is not a multiple of the page size (or the offset of the host page size).
    #[error("region {region} is not aligned to its {page_size}-byte pages")]
    Unaligned {
        /// The region.
        region: Region,
        /// Its page size.
        page_size: usize,
    },
    /// Base + length or offset + length overflows.
    #[error("region {region} overflows the address space")]
    Overflow {
        /// The region.
        region: Region,
    },
    /// The region reaches past the end of the snapshot.
    #[error("region {region} reaches past the end of the {source_len}-byte snapshot")]
    BeyondSource {
        /// The region.
        region: Region,
        /// The snapshot's length.
        source_len: u64,
    },
    /// The region overlaps one already registered.
    #[error("region {new} overlaps registered region {existing}")]
    Overlap {
        /// The rejected region.
        new: Region,
        /// The region it overlaps.
        existing: Region,
    },
}

/// Non-overlapping regions sorted by base.
#[derive(Debug, Clone, Default)]
pub struct RegionSet {
    regions: Vec<Region>,
}

impl RegionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates `region` and adds it; returns its index in base order.
    pub fn insert(
        &mut self,
        region: Region,
        source_len: Option<u64>,
    ) -> Result<usize, RegionError> {
        region.validate(source_len)?;
        let i = self.regions.partition_point(|r| r.base < region.base);
        for neighbour in [i.checked_sub(1), Some(i)].into_iter().flatten() {
            if let Some(existing) = self.regions.get(neighbour)
                && existing.base < region.end()
                && region.base < existing.end()
            {
                return Err(RegionError::Overlap {
                    new: region,
                    existing: *existing,
                });
            }
        }
        self.regions.insert(i, region);
        Ok(i)
    }

    /// Removes the region based at `base`; returns it.
    pub fn remove(&mut self, base: u64) -> Option<Region> {
        let i = self.regions.iter().position(|r| r.base == base)?;
        Some(self.regions.remove(i))
    }

    /// The region containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.base <= addr);
        let r = self.regions.get(i.checked_sub(1)?)?;
        r.contains(addr).then_some(r)
    }

    /// The regions in base order.
    pub fn iter(&self) -> std::slice::Iter<'_, Region> {
        self.regions.iter()
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_and_unaligned_regions_are_refused() {
        let ps = host_page_size() as u64;
        let mut set = RegionSet::new();
        set.insert(Region::new(0x10_0000, 16 * ps), None).unwrap();
        set.insert(Region::new(0x20_0000, 16 * ps), None).unwrap();
        assert!(matches!(
            set.insert(Region::new(0x10_0000 + 15 * ps, 2 * ps), None),
            Err(RegionError::Overlap { .. })
        ));
        assert!(matches!(
            set.insert(Region::new(0x20_0000 - ps, 2 * ps), None),
            Err(RegionError::Overlap { .. })
        ));
        assert!(matches!(
            set.insert(Region::new(0x30_0001, ps), None),
            Err(RegionError::Unaligned { .. })
        ));
        assert!(matches!(
            set.insert(Region::new(0x30_0000, 0), None),
            Err(RegionError::Empty { .. })
        ));
        assert!(matches!(
            set.insert(Region::new(0x30_0000, ps).page_size(8192 * 3), None),
            Err(RegionError::PageSize { .. })
        ));
        assert!(matches!(
            set.insert(Region::new(u64::MAX - ps + 1, 2 * ps), None),
            Err(RegionError::Overflow { .. })
        ));
        assert!(matches!(
            set.insert(Region::new(0x40_0000, 4 * ps).offset(ps), Some(4 * ps)),
            Err(RegionError::BeyondSource { .. })
        ));
        let err = set
            .insert(Region::new(0x10_0000, ps), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0x100000"), "{err}");
        assert_eq!(set.len(), 2);
        assert_eq!(set.find(0x10_0000 + 3).map(|r| r.base), Some(0x10_0000));
        assert_eq!(set.find(0x10_0000 + 16 * ps), None);
        assert_eq!(
            set.find(0x20_0000 + 16 * ps - 1).map(|r| r.base),
            Some(0x20_0000)
        );
        assert_eq!(set.find(0), None);
    }
}
