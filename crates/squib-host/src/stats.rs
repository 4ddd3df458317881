//! Counters and the per-fault latency histogram.
//!
//! Every counter is a relaxed atomic bumped where the event happens; [`PagerStatsSnapshot`] is
//! a copy read at one moment (each counter exact, the set not a single atomic cut). Counters of
//! an install are bumped right after the install, which also wakes the faulting thread: a
//! thread that reads a page and then the counters may see that install counted a moment later
//! (the counters are eventually exact, never ahead of what happened). Latency is
//! measured from the moment the pager reads a fault to the moment the page is installed, and
//! kept in power-of-two microsecond buckets: bucket `i` counts faults that took less than
//! `2^i` µs (and at least `2^(i-1)` µs); the last bucket takes everything slower.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Number of histogram buckets: up to 2^30 µs (about 18 minutes), then one overflow bucket.
pub const LATENCY_BUCKETS: usize = 32;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) faults: AtomicU64,
    pub(crate) bytes_served: AtomicU64,
    pub(crate) pages_copied: AtomicU64,
    pub(crate) zero_pages: AtomicU64,
    pub(crate) eexist: AtomicU64,
    pub(crate) eagain_retries: AtomicU64,
    pub(crate) removes: AtomicU64,
    pub(crate) prewarmed: AtomicU64,
    pub(crate) background_pages: AtomicU64,
    pub(crate) readahead_pages: AtomicU64,
    pub(crate) readahead_hits: AtomicU64,
    pub(crate) source_errors: AtomicU64,
    pub(crate) failed_closed: AtomicU64,
    pub(crate) fetches: AtomicU64,
    pub(crate) readahead_retries: AtomicU64,
    pub(crate) fetch_threads_replaced: AtomicU64,
    pub(crate) port_reinstalls: AtomicU64,
    pub(crate) forwarded_exceptions: AtomicU64,
    pub(crate) latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn record_latency(&self, elapsed: Duration) {
        self.latency[bucket(elapsed)].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PagerStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Relaxed);
        PagerStatsSnapshot {
            faults: get(&self.faults),
            bytes_served: get(&self.bytes_served),
            pages_copied: get(&self.pages_copied),
            zero_pages: get(&self.zero_pages),
            eexist: get(&self.eexist),
            eagain_retries: get(&self.eagain_retries),
            removes: get(&self.removes),
            prewarmed: get(&self.prewarmed),
            background_pages: get(&self.background_pages),
            readahead_pages: get(&self.readahead_pages),
            readahead_hits: get(&self.readahead_hits),
            source_errors: get(&self.source_errors),
            failed_closed: get(&self.failed_closed),
            fetches: get(&self.fetches),
            readahead_retries: get(&self.readahead_retries),
            fetch_threads_replaced: get(&self.fetch_threads_replaced),
            port_reinstalls: get(&self.port_reinstalls),
            forwarded_exceptions: get(&self.forwarded_exceptions),
            latency: LatencyHistogram {
                buckets: std::array::from_fn(|i| get(&self.latency[i])),
            },
        }
    }
}

/// The bucket for a latency: the number of bits of its whole microseconds, capped.
pub(crate) fn bucket(elapsed: Duration) -> usize {
    let us = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
    ((u64::BITS - us.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

/// A copy of the pager's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PagerStatsSnapshot {
    /// Faults served: demand faults read from the kernel plus [`serve_fault`] calls.
    ///
    /// [`serve_fault`]: crate::Pager::serve_fault
    pub faults: u64,
    /// Bytes installed (copied and zero-mapped), by every path.
    pub bytes_served: u64,
    /// Pages installed by copying source bytes.
    pub pages_copied: u64,
    /// Pages installed as the zero page (all-zero source pages, holes, removed ranges).
    pub zero_pages: u64,
    /// Installs that found the page already present (`EEXIST`), answered with a wake-up.
    pub eexist: u64,
    /// Installs deferred because the kernel had an unread event pending (`EAGAIN`) or
    /// reported a short count, and retried.
    pub eagain_retries: u64,
    /// `REMOVE` events (`madvise(MADV_DONTNEED)`, balloon inflation) handled.
    pub removes: u64,
    /// Pages installed from the prewarm list.
    pub prewarmed: u64,
    /// Pages installed by background population.
    pub background_pages: u64,
    /// Pages installed by readahead beyond the faulting page.
    pub readahead_pages: u64,
    /// Sequential faults that continued a readahead window (the window paid off and grew).
    pub readahead_hits: u64,
    /// Failed fetches (each attempt counts).
    pub source_errors: u64,
    /// Faults failed closed after the retries ran out (SIGBUS for the faulting thread, or
    /// the peer killed).
    pub failed_closed: u64,
    /// Source fetches issued.
    pub fetches: u64,
    /// Demand fetches with readahead that failed or timed out and were retried for the
    /// demanded page alone.
    pub readahead_retries: u64,
    /// Fetch threads started to replace ones held by a fetch that timed out.
    pub fetch_threads_replaced: u64,
    /// macOS: times the drift check found another exception handler and re-installed ours.
    pub port_reinstalls: u64,
    /// macOS: exceptions outside every region forwarded to the previous handler.
    pub forwarded_exceptions: u64,
    /// Per-fault latency.
    pub latency: LatencyHistogram,
}

/// Fault latencies in power-of-two microsecond buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `buckets[i]`: faults that took under `2^i` µs and at least `2^(i-1)` µs (bucket 0: under
    /// 1 µs); the last bucket also holds everything slower.
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl LatencyHistogram {
    /// Faults recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0.0–1.0), or `None` if empty.
    pub fn quantile_upper_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(1u64 << i);
            }
        }
        Some(1u64 << (LATENCY_BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds() {
        assert_eq!(bucket(Duration::from_nanos(500)), 0);
        assert_eq!(bucket(Duration::from_micros(1)), 1);
        assert_eq!(bucket(Duration::from_micros(3)), 2);
        assert_eq!(bucket(Duration::from_micros(4)), 3);
        assert_eq!(bucket(Duration::from_secs(100_000)), LATENCY_BUCKETS - 1);
        let s = Stats::default();
        for us in [1, 2, 3, 40, 40, 40] {
            s.record_latency(Duration::from_micros(us));
        }
        let h = s.snapshot().latency;
        assert_eq!(h.count(), 6);
        assert_eq!(h.quantile_upper_us(0.5), Some(4));
        assert_eq!(h.quantile_upper_us(1.0), Some(64));
        assert_eq!(LatencyHistogram::default().quantile_upper_us(0.5), None);
    }
}
