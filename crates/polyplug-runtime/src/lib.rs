//! Native plugins behind a stable C ABI, hot-reloaded without blocking callers.
//!
//! Applications — Rust hosts and C hosts — load plugins written in any language that can
//! export a C ABI (C, C++, Rust, Zig) from bundle directories, call them at the cost of a call
//! through a function pointer, and replace them in production while other threads keep
//! calling.
//!
//! - [`abi`]: the `#[repr(C)]` types both sides share, mirrored by `include/polyplug.h` (a test
//!   compiles static assertions of every size and offset against it), and the ABI-version
//!   sentinel a plugin exports. [`ids`]: contract ids hash (name, major), so majors never
//!   collide; versions negotiate as "same major, minor ≥".
//! - [`manifest`]: a bundle is a directory with a `manifest.toml` (name, version, library per
//!   platform, provided contracts, dependencies) and the library.
//! - [`registry`]: slots read with a few atomic loads and no lock, generation-checked handles
//!   (a stale handle is a typed error), an [`InterfaceGuard`] that keeps what it resolved
//!   alive, explicit [`ProviderPolicy`] for contracts with several providers, reload
//!   transactions that swap interfaces in place and publish only what changed.
//! - [`Runtime`]: loads bundles (`dlopen` with `RTLD_NOW | RTLD_LOCAL`, each version from a
//!   private copy), hot-reloads them (serialized per bundle, `try_reload`, rollback on a
//!   failed post-swap check, cascade to dependents, a [`ReloadReport`] that says whether the
//!   old image really left the process), unloads them once no reader holds them.
//! - [`guest`]: for plugins written in Rust: the exports, registration, and panics stopped at
//!   the boundary. The C API for C hosts is the `polyplug-runtime-capi` crate (header
//!   `polyplug_runtime.h`); this crate exports no C symbol.
//!
//! # Features
//!
//! - `host` (default): everything above. Without it only [`abi`], [`ids`] and [`guest`]
//!   remain, with no dependencies: what a Rust plugin needs.
//! - `loom`: swaps the registry's synchronisation primitives for loom's (model checking only;
//!   see `tests/loom.rs`).
//!
//! # Safety boundary
//!
//! Loading a plugin runs its code in this process: a bundle is trusted like any linked
//! library. Within that, the safe API keeps its promises: interfaces are reached only through
//! guards that keep their library loaded, dispatch tables are viewed through
//! [`FunctionTable`](abi::FunctionTable) types whose `unsafe impl` vouches for the contract's
//! signatures, and every `unsafe` block lives in the private `sys` module.
//!
//! ```no_run
//! use polyplug_runtime::abi::FunctionTable;
//! use polyplug_runtime::ids::ContractRef;
//! use polyplug_runtime::{ReloadRequest, Runtime};
//!
//! /// The contract's function table, as its header defines it.
//! #[repr(C)]
//! struct Greeter {
//!     version: extern "C" fn() -> u32,
//! }
//! // SAFETY: repr(C), only non-null extern "C" function pointers, in the contract's order.
//! unsafe impl FunctionTable for Greeter {}
//!
//! const GREETER: ContractRef<'static> = ContractRef::new("greeter", 1, 0);
//!
//! let runtime = Runtime::builder().hot_reload(true).build()?;
//! runtime.load_bundle("plugins/greeter")?;
//!
//! // Callers: no lock, no allocation; the guard keeps the version it resolved alive.
//! let guard = runtime.find(&GREETER)?;
//! let greeter = guard.functions::<Greeter>().ok_or("table too short")?;
//! println!("greeter version {}", (greeter.version)());
//! drop(guard);
//!
//! // Elsewhere, while callers keep calling:
//! let report = runtime.reload(ReloadRequest::new("greeter").from_dir("plugins/greeter-v2"))?;
//! println!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]
// The overview above links to host-side items, which a guest-only build (no `host` feature)
// does not have.
#![cfg_attr(not(feature = "host"), allow(rustdoc::broken_intra_doc_links))]

pub mod abi;
pub mod guest;
pub mod ids;
pub mod signature;

#[cfg(feature = "host")]
pub mod error;
#[cfg(feature = "host")]
mod loader;
#[cfg(feature = "host")]
pub mod manifest;
#[cfg(feature = "host")]
pub mod registry;
#[cfg(feature = "host")]
pub mod report;
#[cfg(feature = "host")]
pub mod runtime;
#[cfg(feature = "host")]
mod sync;

mod sys;

/// The hazard-pointer protocol's loom model (the `loom` feature only; see `tests/loom.rs`).
#[cfg(feature = "loom")]
#[doc(hidden)]
pub use sys::hazard::model as hazard_model;

#[cfg(feature = "host")]
pub use error::{
    BuildError, LoadError, RegistrationError, ReloadError, UnloadError, WithdrawError,
};
#[cfg(feature = "host")]
pub use loader::ImageRelease;
#[cfg(feature = "host")]
pub use registry::{
    CachedInterface, Interface, InterfaceGuard, LookupError, OwnedInterface, ProviderPolicy,
    Registry, RegistryError,
};
#[cfg(feature = "host")]
pub use report::{ReloadReport, ReloadStep, UnloadReport};
#[cfg(feature = "host")]
pub use runtime::{
    BundleInfo, LogRecord, ReloadEvent, ReloadRequest, Runtime, RuntimeBuilder, RuntimeConfig,
};
