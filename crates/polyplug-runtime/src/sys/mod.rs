//! The crate's platform seam and C boundary: every `unsafe` operation lives below this module.
//!
//! - `abi`: the guest side of the boundary (reading what the host passes to `polyplug_init`,
//!   calling the host back) and the typed view of a registered dispatch table;
//! - `unix`: the dynamic loader (`dlopen`/`dlsym`/`dlclose`) and calls into guest entry points;
//! - `host`: the host callbacks a guest calls during `polyplug_init`;
//! - `linux` / `macos`: whether an image is still mapped after `dlclose`;
//! - `hazard`: hazard pointers with an asymmetric fence, behind the registry's slot cells.
//!
//! The modules above `sys` are safe code; `#![deny(unsafe_code)]` holds there, except for
//! declarations of `unsafe fn` / `unsafe trait` contracts, which carry an explicit `allow`.

#![allow(unsafe_code)]

pub(crate) mod abi;

#[cfg(feature = "host")]
pub(crate) mod hazard;
#[cfg(feature = "host")]
pub(crate) mod host;
#[cfg(feature = "host")]
pub(crate) mod unix;

#[cfg(all(feature = "host", target_os = "linux"))]
pub(crate) mod linux;
#[cfg(all(feature = "host", target_os = "linux"))]
pub(crate) use linux as os;

#[cfg(all(feature = "host", target_os = "macos"))]
pub(crate) mod macos;
#[cfg(all(feature = "host", target_os = "macos"))]
pub(crate) use macos as os;

#[cfg(all(feature = "host", not(any(target_os = "linux", target_os = "macos"))))]
compile_error!("polyplug-runtime's host side supports Linux and macOS only");
