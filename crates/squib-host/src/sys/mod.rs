//! The platform seam: every FFI call of this crate lives below this module.
//!
//! `linux` holds the hand-written userfaultfd ABI (structures, ioctl numbers, pinned by
//! compile-time size asserts) and the few other Linux calls the pager needs (eventfd, poll,
//! `SEEK_DATA`, signals to threads and pidfds, `madvise`). `macos` holds the Mach
//! exception-port calls. The modules above `sys` are safe code.

#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
pub(crate) mod linux;

#[cfg(target_os = "macos")]
pub(crate) mod macos;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!("squib-host supports Linux and macOS only");
