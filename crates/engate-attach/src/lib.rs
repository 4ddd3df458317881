//! Attach clients to a live byte stream, exactly once.
//!
//! Terminal session servers, log tailers and any producer that lets clients attach, detach and
//! re-attach face the same race: the snapshot a client starts from and the live bytes that
//! follow must meet exactly, with no byte lost and none repeated, and one slow client must not
//! make the producer's memory grow without bound.
//!
//! ## The model
//!
//! - **Offsets and epochs.** Every emitted chunk carries the absolute offset of its first byte
//!   and the producer's epoch (its incarnation). A [`Position`] `{ epoch, next }` is all a
//!   client needs to resume.
//! - **Fenced attach.** [`Attach::subscribe`] registers the subscriber's cursor and takes the
//!   [`Snapshot`] under one lock that emitting also holds, so live delivery starts exactly at
//!   [`Snapshot::at`]: no duplicate, no gap. Consumers of unfenced sources de-duplicate by
//!   offset with [`Dedup`].
//! - **A typed lifecycle.** `Spawned → Subscribed → Synced → Live` are types
//!   ([`Attach<Spawned>`] …): a snapshot cannot be taken before subscribing, and nothing can
//!   be polled before the snapshot (a [`History`]) is replayed.
//! - **Resume.** [`Attach::resume`] with the last position delivers the exact suffix when the
//!   ring still holds it in the same epoch, and otherwise a fresh snapshot
//!   ([`AttachOutcome`] says which).
//! - **Bounded memory.** One shared ring of reference-counted chunks under a byte budget
//!   ([`HubConfig`]); a subscriber is a cursor, never a queue of copies. A slow subscriber
//!   is handled by its [`Policy`]: resync (default), gap, disconnect, or block (an authority
//!   subscriber that may hold the producer back).
//! - **A poll surface without ambiguity.** [`Event`] is `Item | Gap | Resync | Empty | Closed`,
//!   blocking or not, and (feature `tokio`) a `futures_core::Stream`; wake-ups are registered
//!   under the lock that emit takes, so none is lost.
//! - **Snapshot providers.** [`TailProvider`] (the last N bytes) and, with the `screen`
//!   feature, `ScreenProvider` (terminal screen state through the `vt100` crate: re-attach
//!   redraws the screen, at a cost independent of the history's length).
//! - **Metrics.** [`Metrics`]: lag, gaps, resyncs, duplicates delivered (measured at every
//!   delivery; 0), attach latency.
//!
//! The [`pty`] and [`session`] modules build a dtach-like session server on top: a program in a
//! real pseudo-terminal, clients over a Unix socket (bound with `platform-primitives`'
//! `UdsBinder`) that attach, detach and resume.
//!
//! ## Features
//!
//! - `screen` (default): `ScreenProvider` and the session server's screen mode (`vt100`).
//! - `tokio`: `impl futures_core::Stream for Attach<Live>`, for tokio or any executor.
//! - `cli`: the `engate` program (new, attach, list, kill, tail), a dtach-like terminal tool
//!   whose re-attach replays exactly the missed output.
//! - `loom`: the hub's locks, condition variables and atomics become loom's (model checking
//!   only; see `tests/loom.rs`).
//!
//! ## Example
//!
//! ```
//! use engate_attach::{channel, Event, HubConfig, TailProvider};
//!
//! let (mut producer, hub) = channel(HubConfig::new(), TailProvider::new(64 << 10))?;
//! producer.emit(&b"hello "[..])?;
//!
//! // Subscribe (fenced), replay the snapshot, go live.
//! let mut screen = Vec::new();
//! let (synced, ()) = hub
//!     .attach()
//!     .subscribe()?
//!     .replay(|snapshot| screen.extend_from_slice(snapshot.bytes()));
//! let mut live = synced.live();
//!
//! producer.emit(&b"world"[..])?;
//! drop(producer); // closes the stream
//! loop {
//!     match live.next_blocking() {
//!         Event::Item(item) => screen.extend_from_slice(&item.bytes),
//!         Event::Resync(history) => history.replay(|s| screen = s.bytes().to_vec()),
//!         Event::Gap { .. } | Event::Empty => {}
//!         Event::Closed(_) => break,
//!     }
//! }
//! assert_eq!(screen, b"hello world");
//! assert_eq!(hub.metrics().duplicates_delivered, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

mod attach;
mod config;
mod dedup;
mod hub;
pub mod pty;
#[cfg(feature = "screen")]
mod screen;
pub mod session;
mod snapshot;
#[cfg(feature = "tokio")]
mod stream;
mod sync;
mod sys;

pub use attach::{
    Attach, CloseReason, Event, Item, Live, Phase, Spawned, Subscribed, SubscriberStats, Synced,
};
pub use config::{AttachOptions, ConfigError, HubConfig, Policy};
pub use dedup::{Accepted, Dedup};
pub use hub::{AttachError, AttachOutcome, EmitError, Hub, Metrics, Producer, channel};
#[cfg(feature = "loom")]
#[doc(hidden)]
pub use hub::{Fault, UnfencedOrder};
#[cfg(feature = "screen")]
pub use screen::ScreenProvider;
#[cfg(feature = "loom")]
#[doc(hidden)]
pub use session::handoff::{Handoff, HandoffFault};
pub use snapshot::{History, Position, Snapshot, SnapshotKind, SnapshotProvider, TailProvider};
