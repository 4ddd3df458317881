//! A userspace pager for the lazy restore of memory snapshots.
//!
//! A VMM (or a checkpoint/restore tool) that restores a memory snapshot eagerly pays for every
//! page before the guest runs its first instruction. With a pager, the memory is mapped empty
//! and the guest starts at once: each page is served from the snapshot on first touch, the pages
//! the last run touched first are installed right away (a recorded *working set*), and a
//! background pass populates the rest in growing chunks while demand faults always go first.
//!
//! The pieces:
//! - a [`PageSource`] gives snapshot bytes by offset: [`FilePageSource`] (`pread`, with holes
//!   known to be zero), [`MemorySource`], [`PageServerSource`] (a page server over a socket);
//! - [`Region`]s map memory addresses onto snapshot offsets, with 4 KiB or 2 MiB pages;
//! - a [`Pager`] holds the regions, the source, the fetch policy (single-flight per page,
//!   bounded retries, fail closed — a source error never becomes wrong or zero-filled memory)
//!   and the counters ([`PagerStatsSnapshot`], with a per-fault latency histogram);
//! - [`spawn_server`] starts the platform server. On **Linux** it is a userfaultfd server that
//!   installs pages with `UFFDIO_COPY`/`UFFDIO_ZEROPAGE` and handles `REMOVE` events; the
//!   [`firecracker`] module serves a Firecracker VMM's uffd after its snapshot-restore
//!   handshake (every Firecracker generation; a refused handshake kills the VMM). On **macOS** it is a Mach exception-port server whose policy ([`mach`]) is
//!   portable and tested everywhere; its thin FFI layer is compiled and linted for macOS in CI
//!   but has not yet run on a Mac.
//!
//! ```no_run
//! # #[cfg(target_os = "linux")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use squib_host::{FilePageSource, Pager, PagerConfig, PrewarmList, spawn_server};
//!
//! let source = FilePageSource::open("guest-memory.snap")?;
//! let len = source.len() as usize;
//! let pager = Pager::new(source, PagerConfig {
//!     prewarm: PrewarmList::load("guest-memory.ws").unwrap_or_default(),
//!     ..PagerConfig::default()
//! });
//! let memory = pager.map_lazy(len, 0)?;     // empty, registered with userfaultfd
//! let server = spawn_server(&pager)?;
//! let first = memory.as_slice()[0];        // served on first touch
//! # let _ = first;
//! pager.working_set().save("guest-memory.ws")?; // the next restore prewarms these pages
//! pager.request_shutdown();
//! server.join().expect("server thread")?;
//! println!("{:?}", pager.stats());
//! # Ok(())
//! # }
//! # #[cfg(not(target_os = "linux"))]
//! # fn main() {}
//! ```

#![deny(unsafe_code)]

mod cache;
mod inflight;
pub mod mach;
mod page_server;
mod pager;
mod prewarm;
mod region;
mod source;
mod stats;
mod sync;
mod sys;

#[cfg(target_os = "linux")]
mod linux;

pub use cache::{CacheConfig, CacheError, CacheStats, CachedSource};
pub use page_server::{PageServerAddr, PageServerConfig, PageServerSource, serve_pages};
pub use pager::{FaultFailure, Pager, PagerConfig, PagerError, ServeError, spawn_server};
pub use prewarm::{PrewarmError, PrewarmList};
pub use region::{HUGE_PAGE_SIZE, Region, RegionError, RegionSet, host_page_size};
pub use source::{FilePageSource, MemorySource, PageRequest, PageSource, PageSourceError};
pub use stats::{LATENCY_BUCKETS, LatencyHistogram, PagerStatsSnapshot};

#[cfg(target_os = "linux")]
pub use linux::{
    Copied, FailTarget, LazyMapping, Uffd, UffdError, UffdEvent, firecracker, spawn_server_for,
};

/// The single-flight table and its deliberately broken twin, exposed for the loom model.
#[cfg(feature = "loom")]
#[doc(hidden)]
pub mod model {
    pub use crate::inflight::{RacySingleFlight, SingleFlight};
}
