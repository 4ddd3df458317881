//! A dtach-like session server and its client, built on the hub.
//!
//! [`SessionServer`] runs one program in a real pseudo-terminal ([`crate::pty`]) and serves its
//! output over a Unix stream socket bound with `platform-primitives`' `UdsBinder`. Each client
//! connection is one hub subscriber: it attaches (fenced snapshot, then live items) or resumes
//! from the position it had when it left, with the policy it asked for, and may send input to
//! the program. [`SessionClient`] speaks the [`wire`] protocol; [`Transcript`] rebuilds the
//! program's raw output from what arrives, exactly once.
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
mod server;
pub mod wire;

pub use client::{Applied, ClientError, SessionClient, SessionReader, SessionWriter, Transcript};
pub use server::{SessionConfig, SessionError, SessionServer, SnapshotMode};
pub use wire::ProgramExit;
