//! Numbers a daemon can export: [`Status`] and [`Metrics`] as Prometheus text, through the
//! workspace's one encoder (`platform_primitives::prom`, which varta-watch and squib-host use
//! too), and — with the `serde` feature — `Status` as anything serde writes (JSON for a
//! `status` endpoint).
//!
//! Every family is prefixed `sqry_admission_`; bytes are `_bytes`, durations `_seconds`,
//! counters `_total`. Ledger tiers, refusal reasons and eviction causes are labels of one
//! family each, so a dashboard sums or splits them without knowing the list. Entries are
//! labelled by key (its `Display` form, escaped by the encoder).
//!
//! ```
//! use sqry_admission::{AdmissionConfig, AdmissionManager, ReserveRequest};
//!
//! let m = AdmissionManager::<String, Vec<u8>>::new(AdmissionConfig::new(1000).audit_interval(None));
//! m.register("repo".to_string());
//! let r = m.reserve(&"repo".to_string(), ReserveRequest::new(600)).unwrap();
//! let _v = m.publish(r, vec![0; 600]).unwrap();
//! let text = m.status().prometheus();
//! assert!(text.contains("sqry_admission_bytes{tier=\"loaded\"} 600\n"));
//! assert!(text.contains("sqry_admission_entry_bytes{key=\"repo\",state=\"loaded\"} 600\n"));
//! ```

use std::fmt::Display;

use platform_primitives::prom::Exposition;

use crate::ledger::{LedgerSnapshot, Metrics};
use crate::manager::{EntryState, Status};

impl<K: Display> Status<K> {
    /// The whole status as a Prometheus text page (`platform_primitives::prom::CONTENT_TYPE`).
    #[must_use]
    pub fn prometheus(&self) -> String {
        let mut page = Exposition::with_capacity(4096 + self.entries.len() * 512);
        self.write_prometheus(&mut page);
        page.into_string()
    }

    /// Writes the status's families to `page` (beside a daemon's own).
    pub fn write_prometheus(&self, page: &mut Exposition) {
        page.gauge(
            "sqry_admission_uptime_seconds",
            "Time since the manager was created.",
        )
        .value(self.uptime.as_secs_f64());
        self.ledger.write_prometheus(page);
        self.metrics.write_prometheus(page);

        let mut by_state = page.gauge("sqry_admission_entries", "Registered entries by state.");
        for state in EntryState::ALL {
            let n = self.entries.iter().filter(|e| e.state == state).count();
            by_state.sample(&[("state", &state)], n);
        }
        let mut bytes = page.gauge(
            "sqry_admission_entry_bytes",
            "Bytes of the entry's current version.",
        );
        for e in &self.entries {
            bytes.sample(&[("key", &e.key), ("state", &e.state)], e.bytes);
        }
        let mut readers = page.gauge(
            "sqry_admission_entry_readers",
            "Readers holding the entry's current version.",
        );
        for e in &self.entries {
            readers.sample(&[("key", &e.key)], e.readers);
        }
        let mut idle = page.gauge(
            "sqry_admission_entry_idle_seconds",
            "Time since the entry was last read.",
        );
        for e in &self.entries {
            idle.sample(&[("key", &e.key)], e.idle.as_secs_f64());
        }
        let mut pinned = page.gauge(
            "sqry_admission_entry_pinned",
            "Whether admission may never evict the entry.",
        );
        for e in &self.entries {
            pinned.sample(&[("key", &e.key)], e.pinned);
        }
        let mut failures = page.gauge(
            "sqry_admission_entry_failures",
            "Consecutive failed loads of the entry.",
        );
        for e in &self.entries {
            failures.sample(&[("key", &e.key)], e.retry_count);
        }
        let mut retry = page.gauge(
            "sqry_admission_entry_retry_after_seconds",
            "Time left in the entry's failure backoff window (0 when none).",
        );
        for e in &self.entries {
            retry.sample(
                &[("key", &e.key)],
                e.retry_after.map_or(0.0, |d| d.as_secs_f64()),
            );
        }
        let mut multiplier = page.gauge(
            "sqry_admission_estimate_multiplier",
            "Learned measured / estimated bytes of the class.",
        );
        for c in &self.estimates {
            multiplier.sample(&[("class", &c.class)], c.multiplier);
        }
        let mut samples = page.counter(
            "sqry_admission_estimate_samples_total",
            "Publishes the class's multiplier learned from.",
        );
        for c in &self.estimates {
            samples.sample(&[("class", &c.class)], c.samples);
        }
    }
}

impl LedgerSnapshot {
    /// Writes the ledger's tiers, limits, high-water mark and queue to `page`.
    pub fn write_prometheus(&self, page: &mut Exposition) {
        page.gauge("sqry_admission_limit_bytes", "The configured budget.")
            .value(self.limit);
        page.gauge(
            "sqry_admission_effective_limit_bytes",
            "The budget new admissions are checked against (the limit less a probe's reduction).",
        )
        .value(self.effective_limit);
        page.gauge(
            "sqry_admission_bytes",
            "Bytes counted against the budget, by tier.",
        )
        .sample(&[("tier", &"loaded")], self.loaded)
        .sample(&[("tier", &"reserved")], self.reserved)
        .sample(&[("tier", &"retained")], self.retained);
        page.gauge(
            "sqry_admission_high_water_bytes",
            "The largest total ever counted.",
        )
        .value(self.high_water);
        page.gauge("sqry_admission_versions", "Versions counted, by tier.")
            .sample(&[("tier", &"loaded")], self.loaded_count)
            .sample(&[("tier", &"retained")], self.retained_count);
        page.gauge(
            "sqry_admission_oldest_retained_seconds",
            "How long the oldest retained version has been held (0 when none).",
        )
        .value(self.oldest_retained.map_or(0.0, |d| d.as_secs_f64()));
        page.gauge(
            "sqry_admission_queue_depth",
            "Requests waiting in the admission queue.",
        )
        .value(self.queue_depth);
    }
}

impl Metrics {
    /// Writes the counters to `page`.
    pub fn write_prometheus(&self, page: &mut Exposition) {
        page.counter("sqry_admission_admitted_total", "Reservations granted.")
            .value(self.admitted);
        page.counter(
            "sqry_admission_admitted_after_wait_total",
            "Reservations granted after waiting in the queue.",
        )
        .value(self.admitted_after_wait);
        page.counter(
            "sqry_admission_rejections_total",
            "Requests refused, by reason.",
        )
        .sample(&[("reason", &"budget")], self.rejected_budget)
        .sample(&[("reason", &"timeout")], self.rejected_timeout)
        .sample(&[("reason", &"exceeds_limit")], self.rejected_exceeds_limit)
        .sample(&[("reason", &"at_publish")], self.rejected_at_publish);
        page.counter("sqry_admission_evictions_total", "Evictions, by cause.")
            .sample(&[("cause", &"admission")], self.evictions.admission)
            .sample(&[("cause", &"explicit")], self.evictions.explicit)
            .sample(&[("cause", &"lru")], self.evictions.lru);
        page.counter(
            "sqry_admission_evicted_bytes_total",
            "Bytes moved out of the loaded tier by evictions.",
        )
        .value(self.evictions.bytes);
        page.counter("sqry_admission_published_total", "Versions published.")
            .value(self.published);
        page.counter(
            "sqry_admission_replaced_total",
            "Versions replaced by a newer publish.",
        )
        .value(self.replaced);
        page.counter(
            "sqry_admission_retained_released_total",
            "Retained versions credited back by their last reader's drop.",
        )
        .value(self.retained_released);
        page.counter(
            "sqry_admission_audit_reclaimed_total",
            "Versions the audit scan reclaimed (a lost drop notification).",
        )
        .value(self.audit_reclaimed);
        page.counter(
            "sqry_admission_drain_warnings_total",
            "Retained versions held past the drain warning age.",
        )
        .value(self.drain_warnings);
        page.counter(
            "sqry_admission_queue_waits_total",
            "Requests that waited in the queue.",
        )
        .value(self.queue_waits);
        page.counter(
            "sqry_admission_queue_wait_seconds_total",
            "Time requests spent waiting in the queue.",
        )
        .value(self.queue_wait_total.as_secs_f64());
        page.gauge(
            "sqry_admission_queue_wait_max_seconds",
            "The longest wait in the queue.",
        )
        .value(self.queue_wait_max.as_secs_f64());
        page.counter(
            "sqry_admission_overtakes_total",
            "Requests granted past a queued one that did not fit.",
        )
        .value(self.overtakes);
        page.counter(
            "sqry_admission_ledger_lock_acquisitions_total",
            "Acquisitions of the ledger's mutex.",
        )
        .value(self.lock_acquisitions);
    }
}
