//! What a builder is told about its load: the key, and whether — and why — it should stop.
//!
//! A load can lose its reason to exist while it builds: admission or an explicit `unload`
//! evicts the entry, or the manager shuts down. Nothing would be published then (publish
//! refuses an evicted entry), so a builder that checks [`BuildContext::cancelled`] between
//! steps, or races its work against [`BuildContext::cancellation`], stops wasting the work.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll};

use crate::entry::{Cancelled, Entry};
use crate::flight::Ticket;

/// The cancellation side of an entry, without its value type.
trait Signal: Send + Sync {
    fn reason(&self) -> Option<Cancelled>;
    fn gate(&self) -> &crate::flight::Gate;
}

impl<K: Send + Sync, V: Send + Sync> Signal for Entry<K, V> {
    fn reason(&self) -> Option<Cancelled> {
        self.cancel_reason()
    }

    fn gate(&self) -> &crate::flight::Gate {
        &self.gate
    }
}

/// Handed to a builder: the key being built, and a cancellation signal.
///
/// It dereferences to the key, so `|key| build(key)` style builders keep working.
///
/// ```
/// use sqry_admission::{AdmissionConfig, AdmissionManager, LoadOptions};
///
/// let manager = AdmissionManager::<String, Vec<u8>>::new(AdmissionConfig::new(1 << 20));
/// let value = manager
///     .get_or_load(&"repo".to_string(), LoadOptions::new(100), |ctx| {
///         assert_eq!(ctx.key(), "repo");
///         // A long build checks between steps and gives up if the entry went away.
///         if let Some(why) = ctx.cancelled() {
///             return Err(format!("stopped: {why}").into());
///         }
///         Ok(vec![0; 100])
///     })
///     .expect("fits");
/// assert_eq!(value.len(), 100);
/// ```
pub struct BuildContext<K> {
    key: K,
    signal: StdArc<dyn Signal>,
}

impl<K: Clone + Send + Sync + 'static> BuildContext<K> {
    pub(crate) fn new<V: Send + Sync + 'static>(entry: &StdArc<Entry<K, V>>) -> Self {
        let signal: StdArc<dyn Signal> = StdArc::<Entry<K, V>>::clone(entry);
        Self {
            key: entry.key.clone(),
            signal,
        }
    }
}

impl<K> BuildContext<K> {
    /// The key being built.
    #[must_use]
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Why the build should stop, if it should: the entry was evicted or unloaded, or the
    /// manager is shutting down. Whatever the build returns afterwards is not published.
    #[must_use]
    pub fn cancelled(&self) -> Option<Cancelled> {
        self.signal.reason()
    }

    /// A future that completes, with the reason, when the build should stop — to race against
    /// the build's own work (e.g. in `tokio::select!`). It never completes if the build is not
    /// cancelled.
    pub fn cancellation(&self) -> Cancellation {
        Cancellation {
            signal: StdArc::clone(&self.signal),
            ticket: None,
        }
    }
}

impl<K> Deref for BuildContext<K> {
    type Target = K;
    fn deref(&self) -> &K {
        &self.key
    }
}

/// Displays the key, so a builder's messages can name what it builds.
impl<K: fmt::Display> fmt::Display for BuildContext<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key.fmt(f)
    }
}

impl<K: fmt::Debug> fmt::Debug for BuildContext<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildContext")
            .field("key", &self.key)
            .field("cancelled", &self.cancelled())
            .finish()
    }
}

/// The future of [`BuildContext::cancellation`].
#[must_use = "futures do nothing unless polled"]
pub struct Cancellation {
    signal: StdArc<dyn Signal>,
    ticket: Option<(crate::entry::EntryState, Ticket)>,
}

impl fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancellation")
            .field("cancelled", &self.signal.reason())
            .finish()
    }
}

impl Future for Cancellation {
    type Output = Cancelled;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cancelled> {
        let this = self.get_mut();
        let gate = this.signal.gate();
        loop {
            // The ticket is taken before the reason is read: a cancellation after the read
            // moves the gate's generation, which the wait below sees.
            let (state, ticket) = this
                .ticket
                .get_or_insert_with(|| (gate.state(), gate.ticket()));
            if let Some(reason) = this.signal.reason() {
                return Poll::Ready(reason);
            }
            match gate.poll_wait(*state, ticket, cx.waker()) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => this.ticket = None,
            }
        }
    }
}

impl Drop for Cancellation {
    fn drop(&mut self) {
        if let Some((_, ticket)) = &mut self.ticket {
            self.signal.gate().forget(ticket);
        }
    }
}
