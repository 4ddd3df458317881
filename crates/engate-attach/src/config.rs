//! Configuration: the hub's memory budget and limits, and each subscriber's options.
//!
//! Memory is bounded by [`HubConfig::budget_bytes`] (payload bytes retained in the shared
//! ring) and [`HubConfig::max_chunks`] (ring entries); each live subscriber adds one cursor and
//! at most [`AttachOptions::read_ahead`] reference-counted chunks it has taken but not yet
//! delivered — never copies.

/// What happens to a subscriber that falls so far behind that the ring no longer holds the
/// next byte it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Deliver a fresh stamped snapshot ([`Event::Resync`](crate::Event::Resync)) and go on
    /// from there. The default: right for terminals, which converge to the current screen.
    #[default]
    Resync,
    /// Report the lost range ([`Event::Gap`](crate::Event::Gap)) and go on with the oldest
    /// retained byte: right for consumers that can tolerate, but must know about, loss.
    Gap,
    /// End the subscription ([`Event::Closed`](crate::Event::Closed) with
    /// [`CloseReason::Overrun`](crate::CloseReason::Overrun)).
    Disconnect,
    /// Never fall behind: the producer waits until this subscriber has taken the bytes it
    /// would evict. Meant for one authority subscriber (the log shipper that must not miss a
    /// line); how many may hold the producer back is [`HubConfig::max_blocking`].
    Block,
}

/// The hub's budget and limits. Build with [`HubConfig::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    pub(crate) budget_bytes: usize,
    pub(crate) max_chunks: usize,
    pub(crate) max_subscribers: usize,
    pub(crate) max_blocking: usize,
    pub(crate) epoch: Option<u64>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            budget_bytes: 4 << 20,
            max_chunks: 8192,
            max_subscribers: 1024,
            max_blocking: 1,
            epoch: None,
        }
    }
}

impl HubConfig {
    /// The defaults: 4 MiB retained, at most 8192 chunks, 1024 subscribers, one of which may
    /// use [`Policy::Block`], and a random first epoch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Payload bytes the ring retains at most (`budget_bytes`). A single emitted chunk may
    /// not be larger.
    pub fn budget_bytes(mut self, bytes: usize) -> Self {
        self.budget_bytes = bytes;
        self
    }

    /// Chunks the ring retains at most (`max_chunks`), which bounds its bookkeeping when
    /// chunks are tiny.
    pub fn max_chunks(mut self, chunks: usize) -> Self {
        self.max_chunks = chunks;
        self
    }

    /// Subscribers attached at once at most (`max_subscribers`).
    pub fn max_subscribers(mut self, n: usize) -> Self {
        self.max_subscribers = n;
        self
    }

    /// Subscribers with [`Policy::Block`] at once at most (`max_blocking`, default 1).
    pub fn max_blocking(mut self, n: usize) -> Self {
        self.max_blocking = n;
        self
    }

    /// The first epoch (`epoch`). By default it is random, so a restarted server never
    /// resumes a client into a different incarnation's offsets.
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.budget_bytes == 0 {
            return Err(ConfigError::Zero {
                key: "budget_bytes",
            });
        }
        if self.max_chunks == 0 {
            return Err(ConfigError::Zero { key: "max_chunks" });
        }
        if self.max_subscribers == 0 {
            return Err(ConfigError::Zero {
                key: "max_subscribers",
            });
        }
        Ok(())
    }
}

/// A [`HubConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit that must be at least one is zero.
    #[error("hub config key `{key}` is zero; it must be at least 1")]
    Zero {
        /// The offending key.
        key: &'static str,
    },
}

/// One subscriber's options. Build with [`AttachOptions::new`] and the setters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    pub(crate) policy: Policy,
    pub(crate) read_ahead: usize,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            policy: Policy::Resync,
            read_ahead: 32,
        }
    }
}

impl AttachOptions {
    /// The defaults: [`Policy::Resync`], 32 chunks of read-ahead.
    pub fn new() -> Self {
        Self::default()
    }

    /// What happens when this subscriber falls behind the ring.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// How many chunks one visit to the shared ring takes at most (at least 1). Larger values
    /// take the ring's lock less often; each taken chunk is a reference, not a copy.
    pub fn read_ahead(mut self, chunks: usize) -> Self {
        self.read_ahead = chunks.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_are_rejected_by_name() {
        let err = HubConfig::new().budget_bytes(0).validate().unwrap_err();
        assert!(err.to_string().contains("budget_bytes"), "{err}");
        let err = HubConfig::new().max_chunks(0).validate().unwrap_err();
        assert!(err.to_string().contains("max_chunks"), "{err}");
        let err = HubConfig::new().max_subscribers(0).validate().unwrap_err();
        assert!(err.to_string().contains("max_subscribers"), "{err}");
        assert!(HubConfig::new().validate().is_ok());
    }

    #[test]
    fn read_ahead_is_at_least_one() {
        assert_eq!(AttachOptions::new().read_ahead(0).read_ahead, 1);
        assert_eq!(AttachOptions::new().policy, Policy::Resync);
    }
}
