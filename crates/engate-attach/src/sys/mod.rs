//! The platform seam: every FFI call of this crate lives below this module.
//!
//! `unix` holds what POSIX gives both supported systems (window size, the controlling-terminal
//! set-up of a child, signals); `linux` and `macos` open a pseudo-terminal pair, which each
//! kernel does its own way. The modules above `sys` are safe code.

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
compile_error!("engate-attach supports Linux and macOS only");
