//! Attach clients to a live byte stream, exactly once.
//!
//! Terminal session servers, log tailers and any producer that lets clients attach, detach and
//! re-attach face the same race: the snapshot a client starts from and the live bytes that follow
//! must meet exactly, with no byte lost and none repeated, and one slow client must not make the
//! producer's memory grow without bound.
//!
//! ## Planned design
//!
//! - A typed lifecycle `Spawned → Subscribed → Synced → Live`, so an attach that snapshots before
//!   subscribing does not compile.
//! - Absolute offsets and producer epochs on every chunk; snapshots stamped with the offset they
//!   cover; a fenced attach so live delivery starts exactly where the snapshot ends; resume from an
//!   offset when it is still retained.
//! - One shared ring of reference-counted chunks under a byte budget with O(1) state per
//!   subscriber, and a per-subscriber policy for slow readers (resync, gap, disconnect, block).
//! - Snapshot providers for a raw byte tail and for terminal screen state.
//!
//! ## Status
//!
//! This crate is a skeleton: it has no public API yet, and nothing in it pretends to work.
//! The design above is what its tracking issue ("engate-attach exactly-once attach") asks for.
