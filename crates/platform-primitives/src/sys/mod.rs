//! The platform seam: every FFI call of this crate lives below this module.
//!
//! `unix` holds what POSIX gives every supported system (cmsg parsing, `sendmsg`/`recvmsg`,
//! `mmap`, non-blocking connect); `linux` and `macos` hold what only one kernel offers. The
//! modules above `sys` are safe code written against the functions re-exported here, so the
//! policy in them (bind recovery, batch bookkeeping, error naming) reads the same on every OS.

#![allow(unsafe_code)]

pub(crate) mod unix;

#[cfg(target_os = "linux")]
pub(crate) mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux as os;

#[cfg(target_os = "macos")]
pub(crate) mod macos;
#[cfg(target_os = "macos")]
pub(crate) use macos as os;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!("platform-primitives supports Linux and macOS only");
