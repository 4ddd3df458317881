//! Configuration of an [`AdmissionManager`](crate::AdmissionManager): a struct with defaults
//! and builder methods.
//!
//! The defaults are those of the daemon this crate comes from: a 2 GiB budget, eviction down to
//! 90 % of the budget once it must evict, stale serving for up to 24 hours after a failed
//! rebuild, a warning when a retained version is still held after 5 s, and failure backoff
//! 30 s / 60 s / 120 s / 300 s / 600 s.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::probe::MemoryProbe;

/// How an [`AdmissionManager`](crate::AdmissionManager) budgets and serves.
///
/// ```
/// use std::time::Duration;
/// use sqry_admission::AdmissionConfig;
///
/// let config = AdmissionConfig::new(512 << 20)
///     .low_watermark_percent(80)
///     .stale_serve_max_age(Some(Duration::from_secs(3600)))
///     .audit_interval(None);
/// assert_eq!(config.limit_bytes, 512 << 20);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdmissionConfig {
    /// The budget: `loaded + reserved + retained` never exceeds it. Default 2 GiB.
    pub limit_bytes: u64,
    /// When an admission must evict, it evicts until the total plus the request is at most this
    /// percentage of the (effective) limit, if enough victims can be freed — hysteresis, so the
    /// next admissions do not each evict again. 100 disables it. Default 90.
    pub low_watermark_percent: u8,
    /// How long after its last good build a failed entry may still be served as stale; `None`
    /// serves stale without an age limit. Default 24 hours.
    pub stale_serve_max_age: Option<Duration>,
    /// A retained version still held after this long is reported by the audit scan (it stays
    /// counted: this is a warning, not a deadline). Default 5 s.
    pub drain_warn_after: Duration,
    /// How often a background thread runs the audit scan (and refreshes the memory probe);
    /// `None` runs no scan (async deadlines still get a timer thread when first needed).
    /// Default 1 s.
    pub audit_interval: Option<Duration>,
    /// Backoff after consecutive failed loads or rebuilds: the n-th consecutive failure waits
    /// the n-th entry (the last entry repeats). Inside the window `get_or_load`, `rebuild` and
    /// their async forms return [`LoadError::BackingOff`](crate::LoadError::BackingOff),
    /// carrying the last error, without running the builder (unless the call asks to
    /// [`retry_now`](crate::LoadOptions::retry_now)); status reports the time left. An empty
    /// schedule never backs off. Default 30, 60, 120, 300, 600 s.
    pub failure_backoff: Vec<Duration>,
    /// Learn a multiplier per estimate class from measured / estimated bytes at publish and
    /// apply it to later reservations of that class. Default on.
    pub learn_estimates: bool,
    /// An optional measured-memory probe that reduces the headroom for new admissions.
    pub probe: Option<ProbeConfig>,
    /// Whether small requests that fit may pass a queued one that does not. Default FIFO.
    pub queue_policy: QueuePolicy,
}

/// The admission queue's order.
///
/// ```
/// use sqry_admission::{AdmissionConfig, QueuePolicy};
///
/// // Up to 8 small requests may pass a queued large one; then it is served first.
/// let config = AdmissionConfig::new(1 << 30).queue_policy(QueuePolicy::Overtake { max_overtakes: 8 });
/// assert_ne!(config.queue_policy, QueuePolicy::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueuePolicy {
    /// Strict first come, first served: while a request waits, no later one is granted — not
    /// even a small one that fits (a fail-fast one is refused with `queued_ahead`).
    #[default]
    Fifo,
    /// A request that fits now may be granted past queued ones that do not, but each queued
    /// request lets at most `max_overtakes` pass; after that it is served first, so a large
    /// request cannot starve.
    Overtake {
        /// How many later requests may pass one queued request.
        max_overtakes: u32,
    },
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self::new(2 << 30)
    }
}

impl AdmissionConfig {
    /// Defaults with a budget of `limit_bytes`.
    #[must_use]
    pub fn new(limit_bytes: u64) -> Self {
        Self {
            limit_bytes,
            low_watermark_percent: 90,
            stale_serve_max_age: Some(Duration::from_secs(24 * 3600)),
            drain_warn_after: Duration::from_secs(5),
            audit_interval: Some(Duration::from_secs(1)),
            failure_backoff: [30, 60, 120, 300, 600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            learn_estimates: true,
            probe: None,
            queue_policy: QueuePolicy::Fifo,
        }
    }

    /// Sets [`Self::low_watermark_percent`] (clamped to 1..=100).
    #[must_use]
    pub fn low_watermark_percent(mut self, percent: u8) -> Self {
        self.low_watermark_percent = percent.clamp(1, 100);
        self
    }

    /// Sets [`Self::stale_serve_max_age`].
    #[must_use]
    pub fn stale_serve_max_age(mut self, age: Option<Duration>) -> Self {
        self.stale_serve_max_age = age;
        self
    }

    /// Sets [`Self::drain_warn_after`].
    #[must_use]
    pub fn drain_warn_after(mut self, after: Duration) -> Self {
        self.drain_warn_after = after;
        self
    }

    /// Sets [`Self::audit_interval`].
    #[must_use]
    pub fn audit_interval(mut self, interval: Option<Duration>) -> Self {
        self.audit_interval = interval;
        self
    }

    /// Sets [`Self::failure_backoff`].
    #[must_use]
    pub fn failure_backoff(mut self, schedule: Vec<Duration>) -> Self {
        self.failure_backoff = schedule;
        self
    }

    /// Sets [`Self::learn_estimates`].
    #[must_use]
    pub fn learn_estimates(mut self, learn: bool) -> Self {
        self.learn_estimates = learn;
        self
    }

    /// Sets [`Self::queue_policy`].
    #[must_use]
    pub fn queue_policy(mut self, policy: QueuePolicy) -> Self {
        self.queue_policy = policy;
        self
    }

    /// Sets [`Self::probe`].
    #[must_use]
    pub fn probe(mut self, probe: ProbeConfig) -> Self {
        self.probe = Some(probe);
        self
    }
}

/// A measured-memory probe and how its readings reduce the headroom.
///
/// At each refresh the probe reports the memory in use (`current`) and possibly a ceiling
/// (`max`). What it sees beyond the ledger's own total is memory the ledger does not count
/// (code, buffers, other allocations); new admissions are then checked against
/// `min(limit, ceiling - untracked - margin)`, where the ceiling is [`Self::ceiling`] if set and
/// the probe's `max` otherwise.
#[derive(Clone)]
#[non_exhaustive]
pub struct ProbeConfig {
    /// The probe.
    pub probe: Arc<dyn MemoryProbe>,
    /// A ceiling to use instead of the probe's own `max` (e.g. for an RSS probe, which has none).
    pub ceiling: Option<u64>,
    /// Bytes kept free below the ceiling.
    pub margin: u64,
    /// The probe is read at most this often on the admission path (and by the audit thread).
    pub refresh_every: Duration,
    /// Memory pressure (PSI `some avg10`, percent) at or above which new admissions get no
    /// headroom beyond what is already committed, if the probe reports pressure. `None`
    /// ignores pressure.
    pub pressure_threshold: Option<f64>,
}

impl ProbeConfig {
    /// A probe with no explicit ceiling, no margin, refreshed at most every 100 ms.
    #[must_use]
    pub fn new(probe: Arc<dyn MemoryProbe>) -> Self {
        Self {
            probe,
            ceiling: None,
            margin: 0,
            refresh_every: Duration::from_millis(100),
            pressure_threshold: None,
        }
    }

    /// Sets [`Self::ceiling`].
    #[must_use]
    pub fn ceiling(mut self, bytes: u64) -> Self {
        self.ceiling = Some(bytes);
        self
    }

    /// Sets [`Self::margin`].
    #[must_use]
    pub fn margin(mut self, bytes: u64) -> Self {
        self.margin = bytes;
        self
    }

    /// Sets [`Self::pressure_threshold`] (percent of `some avg10`).
    #[must_use]
    pub fn pressure_threshold(mut self, percent: f64) -> Self {
        self.pressure_threshold = Some(percent);
        self
    }

    /// Sets [`Self::refresh_every`].
    #[must_use]
    pub fn refresh_every(mut self, every: Duration) -> Self {
        self.refresh_every = every;
        self
    }

    /// The headroom reduction for a reading: how far below `limit` new admissions must stay.
    #[must_use]
    pub fn reduction(&self, current: u64, max: Option<u64>, ledger_total: u64, limit: u64) -> u64 {
        let Some(ceiling) = self.ceiling.or(max) else {
            return 0;
        };
        let untracked = current.saturating_sub(ledger_total);
        let allowed = ceiling.saturating_sub(untracked.saturating_add(self.margin));
        limit.saturating_sub(allowed.min(limit))
    }
}

impl fmt::Debug for ProbeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeConfig")
            .field("probe", &self.probe.name())
            .field("ceiling", &self.ceiling)
            .field("margin", &self.margin)
            .field("refresh_every", &self.refresh_every)
            .field("pressure_threshold", &self.pressure_threshold)
            .finish()
    }
}
