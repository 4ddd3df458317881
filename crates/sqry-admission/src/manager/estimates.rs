//! Learned estimate multipliers: per class, measured / estimated bytes at publish, smoothed and
//! applied to later reservations of that class.

use std::fmt;
use std::hash::Hash;

use crate::HeapSize;

use super::AdmissionManager;
use super::admission::ReserveRequest;

/// A learned estimate multiplier for one class.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ClassEstimate {
    /// The class.
    pub class: &'static str,
    /// Measured / estimated bytes, smoothed; applied to later estimates of the class.
    pub multiplier: f64,
    /// Publishes it learned from.
    pub samples: u64,
    /// Mean of |measured − reserved| / measured over those publishes.
    pub mean_abs_error: f64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ClassStats {
    multiplier: f64,
    samples: u64,
    abs_error_sum: f64,
}

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    pub(super) fn scaled(&self, request: &ReserveRequest) -> u64 {
        let Some(class) = request.class.filter(|_| self.shared.config.learn_estimates) else {
            return request.estimate;
        };
        let multiplier = self
            .shared
            .classes
            .lock()
            .get(class)
            .map_or(1.0, |c| c.multiplier);
        let scaled = (request.estimate as f64 * multiplier).ceil();
        if scaled >= u64::MAX as f64 {
            u64::MAX
        } else {
            scaled as u64
        }
    }

    pub(super) fn learn(
        &self,
        class: Option<&'static str>,
        estimate: u64,
        reserved: u64,
        measured: u64,
    ) {
        let Some(class) = class.filter(|_| self.shared.config.learn_estimates) else {
            return;
        };
        if estimate == 0 {
            return;
        }
        let ratio = (measured as f64 / estimate as f64).clamp(1.0 / 64.0, 64.0);
        let error = (measured as f64 - reserved as f64).abs() / (measured.max(1) as f64);
        let mut classes = self.shared.classes.lock();
        let stats = classes.entry(class).or_insert(ClassStats {
            multiplier: ratio,
            samples: 0,
            abs_error_sum: 0.0,
        });
        if stats.samples > 0 {
            stats.multiplier = 0.75 * stats.multiplier + 0.25 * ratio;
        }
        stats.samples += 1;
        stats.abs_error_sum += error;
    }

    /// The learned estimate classes, sorted by class.
    #[must_use]
    pub fn estimates(&self) -> Vec<ClassEstimate> {
        let mut out: Vec<ClassEstimate> = self
            .shared
            .classes
            .lock()
            .iter()
            .map(|(class, s)| ClassEstimate {
                class,
                multiplier: s.multiplier,
                samples: s.samples,
                mean_abs_error: if s.samples == 0 {
                    0.0
                } else {
                    s.abs_error_sum / s.samples as f64
                },
            })
            .collect();
        out.sort_by(|a, b| a.class.cmp(b.class));
        out
    }
}
