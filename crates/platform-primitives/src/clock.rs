//! Monotonic clocks that do, or do not, count time spent suspended.
//!
//! A liveness observer that measures silence with a clock that stops during suspend sees
//! nothing odd after a resume; one that uses a clock that keeps counting sees every agent
//! silent for the whole suspend. Which is right depends on the question, so the choice is
//! explicit:
//!
//! | source | Linux | macOS | counts suspend |
//! |---|---|---|---|
//! | [`ClockSource::Monotonic`] | `CLOCK_MONOTONIC` | `CLOCK_UPTIME_RAW` | no |
//! | [`ClockSource::Boottime`] | `CLOCK_BOOTTIME` | `CLOCK_MONOTONIC` | yes |
//!
//! Neither jumps with wall-clock changes (NTP steps, `date -s`). Comparing the two over an
//! interval is how a daemon detects that it was suspended.
//!
//! ```
//! use platform_primitives::clock::ClockSource;
//!
//! let a = ClockSource::Boottime.now()?;
//! let b = ClockSource::Boottime.now()?;
//! assert!(b >= a);
//! # Ok::<(), platform_primitives::clock::ClockError>(())
//! ```

use std::time::Duration;

use crate::sys::{os, unix};

/// Which monotonic clock to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClockSource {
    /// Stops while the machine is suspended.
    #[default]
    Monotonic,
    /// Keeps counting while the machine is suspended.
    Boottime,
}

/// A reading of a [`ClockSource`]: time since that clock's (arbitrary) epoch.
///
/// Readings of different sources are not comparable with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(Duration);

impl Stamp {
    /// The reading as a duration since the clock's epoch.
    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Stamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// This stamp moved forward by `d`, saturating at the maximum.
    pub fn saturating_add(self, d: Duration) -> Stamp {
        Stamp(self.0.saturating_add(d))
    }
}

/// Why a clock could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// The platform has no clock with these semantics.
    #[error("clock source {0:?} is not available on this platform; use ClockSource::Monotonic")]
    Unsupported(ClockSource),
    /// The kernel refused to read the clock.
    #[error("cannot read clock source {source_kind:?}")]
    Read {
        /// The clock that was asked for.
        source_kind: ClockSource,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

impl ClockSource {
    /// Reads the clock.
    pub fn now(self) -> Result<Stamp, ClockError> {
        let id = match self {
            Self::Monotonic => os::CLOCK_MONOTONIC,
            Self::Boottime => os::CLOCK_BOOTTIME.ok_or(ClockError::Unsupported(self))?,
        };
        unix::clock_gettime(id)
            .map(Stamp)
            .map_err(|source| ClockError::Read {
                source_kind: self,
                source,
            })
    }
}
