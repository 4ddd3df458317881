//! Native plugins behind a stable C ABI, hot-reloaded without blocking callers.
//!
//! Applications written in Rust or C load plugins written in any language that can export a C ABI,
//! call them at the cost of a direct call, and replace them in production while other threads keep
//! calling.
//!
//! ## Planned design
//!
//! - `#[repr(C)]` ABI types mirrored by a C header that CI checks; an ABI-version sentinel; contract
//!   ids derived from (name, major) with minor-version negotiation.
//! - Bundles as directories (manifest plus shared library), each version loaded from a private copy
//!   with `RTLD_NOW | RTLD_LOCAL`.
//! - A registry read without locks (epoch-protected), generation-checked handles, a guard type that
//!   pins while it derefs to the interface, per-bundle reload serialization with rollback, cascade
//!   reload of dependents and deferred unload once no reader is pinned.
//!
//! ## Status
//!
//! This crate is a skeleton: it has no public API yet, and nothing in it pretends to work.
//! The design above is what its tracking issue ("polyplug-runtime plugins and hot reload") asks for.
