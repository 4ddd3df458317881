//! A dtach-like session server and its client, built on the hub.
//!
//! [`SessionServer`] runs one program in a real pseudo-terminal ([`crate::pty`]) and serves its
//! output over a Unix stream socket bound with `platform-primitives`' `UdsBinder`. Each client
//! connection is one hub subscriber: it attaches (fenced snapshot, then live items) or resumes
//! from the position it had when it left, with the policy it asked for, and may send input to
//! the program. [`SessionClient`] speaks the [`wire`] protocol (and splits into a
//! [`SessionReader`] and a [`SessionWriter`] for two threads); [`Transcript`] rebuilds the
//! program's raw output from what arrives, exactly once, and [`Follower`] writes it out as it
//! comes (a tail). Clients learn how the program ended ([`ProgramExit`]).
//!
//! No client can hang the server: shutdown shuts every connection down from the server's side
//! and does not depend on the socket file; input frames are small
//! ([`wire::MAX_INPUT`]) and checked on their header; a bad hello or frame is refused with its
//! reason and logged with `tracing`.
//!
//! ```no_run
//! use engate_attach::Policy;
//! use engate_attach::session::{Applied, SessionClient, SessionConfig, SessionServer, Transcript};
//!
//! let server = SessionServer::start(
//!     SessionConfig::new("/tmp/seq.sock", "seq").args(["1", "1000"]),
//! )?;
//! let mut client = SessionClient::connect(server.socket_path(), Policy::Resync, None)?;
//! let mut transcript = Transcript::new();
//! while let Applied::Continue = transcript.apply(&client.next_message()?) {}
//! assert!(transcript.bytes().ends_with(b"1000\r\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
// Public (hidden) only for the loom suite, which models its protocol.
#[cfg_attr(not(feature = "loom"), allow(unreachable_pub))]
pub(crate) mod handoff;
mod input;
mod outlet;
#[cfg(feature = "screen")]
mod screen_thread;
mod server;
pub mod wire;

pub use client::{
    Applied, ClientError, Follower, SessionClient, SessionReader, SessionWriter, Transcript,
};
pub use server::{SessionConfig, SessionError, SessionServer, SnapshotMode};
pub use wire::ProgramExit;
