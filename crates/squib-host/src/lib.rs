//! A userspace pager for the lazy restore of memory snapshots.
//!
//! A VMM (or a checkpoint/restore tool) that restores a memory snapshot eagerly pays for every page
//! before the guest runs its first instruction. `squib-host` lets the guest start at once: the
//! memory is mapped empty, each page is served on first touch from a snapshot file or a page
//! server, and a background pass populates the rest, working-set pages first.
//!
//! ## Planned design
//!
//! - **Linux:** userfaultfd in missing mode over registered anonymous regions; pages installed with
//!   `UFFDIO_COPY`, known-zero pages with `UFFDIO_ZEROPAGE`; `REMOVE` events handled; a
//!   Firecracker-compatible handler mode that accepts the VMM's region handshake (JSON plus the
//!   uffd over `SCM_RIGHTS`) on a Unix socket from `platform-primitives`.
//! - **macOS:** a Mach exception-port pager that forwards out-of-region faults to the previous
//!   handler (a debugger or the default one) and re-installs itself if replaced.
//! - Page sources (snapshot file, memory, page server), prewarm lists with working-set record and
//!   replay, background population in growing chunks, and a fail-closed policy: a source error never
//!   becomes silently wrong or zero-filled memory.
//!
//! ## Status
//!
//! This crate is a skeleton: it has no public API yet, and nothing in it pretends to work.
//! The design above is what its tracking issue ("squib-host pager (userfaultfd on Linux, Mach on macOS)") asks for.
