//! Writing a plugin in Rust: the entry points, registration, and panics stopped at the boundary.
//!
//! A panic must never unwind out of an `extern "C"` function: since Rust 1.81 it aborts the
//! whole host process. Every function a Rust guest exports (its `polyplug_init` and each
//! function of its dispatch tables) therefore runs its body under [`ffi_guard`], which turns a
//! panic into a value the contract defines as an error (for `polyplug_init`, the status code
//! [`status::PANICKED`]). This only works with `panic = "unwind"` (the default); a guest built
//! with `panic = "abort"` aborts the host on a panic whatever it does.
//!
//! [`guest_fn!`](crate::guest_fn) writes such functions with the guard already around their
//! bodies.
//!
//! [`export_guest!`](crate::export_guest) writes the two required exports: the ABI-version
//! sentinel and `polyplug_init`, which hands the guest's init function a [`GuestHost`] to
//! register its contracts with:
//!
//! ```
//! use polyplug_runtime::abi::{
//!     DispatchTable, FunctionTable, GuestContractInterface, PluginDescriptor, StringView, Version,
//! };
//! use polyplug_runtime::guest::{ffi_guard, GuestHost};
//! use polyplug_runtime::ids::ContractId;
//!
//! #[repr(C)]
//! pub struct Counter {
//!     pub next: extern "C" fn(u64) -> u64,
//! }
//! // SAFETY: repr(C), only non-null `extern "C"` function pointers, in the contract's order.
//! unsafe impl FunctionTable for Counter {}
//!
//! extern "C" fn next(n: u64) -> u64 {
//!     ffi_guard(u64::MAX, || n.checked_add(1).expect("counter overflow"))
//! }
//!
//! static TABLE: Counter = Counter { next };
//! static INTERFACE: GuestContractInterface = GuestContractInterface::new(
//!     ContractId::new("counter", 1),
//!     Version::new(1, 0, 0),
//!     DispatchTable::from_static(&TABLE),
//! );
//! static DESCRIPTOR: PluginDescriptor = PluginDescriptor {
//!     name: StringView::from_static(b"counter-plugin"),
//!     contract_name: StringView::from_static(b"counter"),
//!     version: Version::new(1, 0, 0),
//! };
//!
//! fn init(host: &GuestHost<'_>) -> Result<(), i32> {
//!     host.register(&DESCRIPTOR, &INTERFACE)
//! }
//!
//! polyplug_runtime::export_guest!(init);
//! # fn main() {}
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::status;

pub use crate::sys::abi::{
    GuestHost, ServiceRef, Services, run_init, run_state_export, run_state_import,
};

/// Runs `f`, returning `on_panic` instead of unwinding if it panics.
///
/// Wrap the body of every `extern "C"` function a guest exports with it.
pub fn ffi_guard<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    // AssertUnwindSafe: after a panic the guest returns an error value and the caller decides
    // whether to keep using the guest; the guest's own state is its responsibility, as it
    // would be after any error it reports.
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// Runs `f` and maps its outcome to a [`status`] code: `Ok` is [`status::OK`], `Err(code)` is
/// `code`, a panic is [`status::PANICKED`].
pub fn status_guard(f: impl FnOnce() -> Result<(), i32>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => status::OK,
        Ok(Err(code)) => code,
        Err(_) => status::PANICKED,
    }
}

/// Exports a Rust guest's entry points: the `polyplug_abi_version` sentinel and
/// `polyplug_init`, which calls `$init(&GuestHost) -> Result<(), i32>` with panics stopped at
/// the boundary. An optional second argument, a `fn()`, is exported as `polyplug_fini` (run
/// once before the host closes the library; panics are stopped there too).
#[macro_export]
macro_rules! export_guest {
    ($init:expr) => {
        /// The ABI-version sentinel the host reads before calling `polyplug_init`.
        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static polyplug_abi_version: u32 = $crate::abi::ABI_VERSION;

        /// The guest entry point: registers this plugin's contracts with the host.
        ///
        /// # Safety
        ///
        /// `host` and `context` must be valid for the duration of the call (the host passes
        /// its own structures).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn polyplug_init(
            host: *const $crate::abi::HostApi,
            context: *const $crate::abi::BundleInitContext,
        ) -> i32 {
            // SAFETY: the host calls this entry point with pointers valid for the call.
            unsafe { $crate::guest::run_init(host, context, $init) }
        }
    };
    ($init:expr, $fini:expr) => {
        $crate::export_guest!($init);

        /// Runs once before the host closes this library.
        #[unsafe(no_mangle)]
        pub extern "C" fn polyplug_fini() {
            $crate::guest::ffi_guard((), $fini)
        }
    };
}

/// Defines `extern "C"` functions for a guest's dispatch tables, each body run under
/// [`ffi_guard`]: a panic returns the function's `on_panic` value (or its return type's
/// `Default`) instead of unwinding into the host — which, through `extern "C"`, would abort
/// the whole process.
///
/// ```
/// polyplug_runtime::guest_fn! {
///     /// `a / b`; `u32::MAX` instead of a panic on `b == 0`.
///     pub fn divide(a: u32, b: u32) -> u32 [on_panic = u32::MAX] {
///         a.checked_div(b).expect("division by zero")
///     }
///
///     /// 0 (the default) if it panics.
///     fn parse_len(len: usize) -> u64 {
///         u64::try_from(len).expect("fits")
///     }
/// }
///
/// assert_eq!(divide(7, 2), 3);
/// assert_eq!(divide(7, 0), u32::MAX);
/// assert_eq!(parse_len(5), 5);
/// ```
#[macro_export]
macro_rules! guest_fn {
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident ( $($arg:ident : $aty:ty),* $(,)? ) $(-> $ret:ty)?
            $([on_panic = $on_panic:expr])? $body:block
    )*) => {
        $(
            $(#[$attr])*
            $vis extern "C" fn $name($($arg: $aty),*) $(-> $ret)? {
                $crate::guest::ffi_guard($crate::__guest_on_panic!($($on_panic)?), move || $body)
            }
        )*
    };
}

/// The value a [`guest_fn!`] returns on a panic: its `on_panic`, or the `Default`.
#[doc(hidden)]
#[macro_export]
macro_rules! __guest_on_panic {
    () => {
        ::core::default::Default::default()
    };
    ($on_panic:expr) => {
        $on_panic
    };
}

/// Exports a Rust guest's state hand-off entry points, which the host calls on a hot reload:
/// `polyplug_state_export` on the old version (`$export: fn() -> Vec<u8>`, its state as
/// bytes) and `polyplug_state_import` on the new one (`$import: fn(&[u8]) -> Result<(), i32>`),
/// before the new version serves a call. An `Err(code)` (or a panic) from `$import` refuses
/// the reload, which then fails with `ReloadError::StateRefused` and leaves the old version
/// serving. Both are optional: without them (on either side) the new version starts fresh.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// static COUNT: AtomicU64 = AtomicU64::new(0);
///
/// fn export() -> Vec<u8> {
///     COUNT.load(Ordering::Relaxed).to_le_bytes().to_vec()
/// }
///
/// fn import(state: &[u8]) -> Result<(), i32> {
///     let bytes: [u8; 8] = state.try_into().map_err(|_| -1)?;
///     COUNT.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
///     Ok(())
/// }
///
/// polyplug_runtime::export_state!(export, import);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_state {
    ($export:expr, $import:expr) => {
        /// Writes this version's state into `buffer` if it fits; returns its length.
        ///
        /// # Safety
        ///
        /// `buffer` is null or has `capacity` writable bytes (the host's contract).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn polyplug_state_export(buffer: *mut u8, capacity: usize) -> usize {
            // SAFETY: the host passes null or `capacity` writable bytes.
            unsafe { $crate::guest::run_state_export(buffer, capacity, $export) }
        }

        /// Takes over the previous version's state; a non-zero status refuses the reload.
        ///
        /// # Safety
        ///
        /// `state` has `len` readable bytes (the host's contract).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn polyplug_state_import(state: *const u8, len: usize) -> i32 {
            // SAFETY: the host passes `len` readable bytes.
            unsafe { $crate::guest::run_state_import(state, len, $import) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffi_guard_turns_a_panic_into_the_fallback() {
        assert_eq!(ffi_guard(-1, || 7), 7);
        assert_eq!(ffi_guard(-1, || panic!("boom")), -1);
    }

    crate::guest_fn! {
        fn checked_divide(a: u32, b: u32) -> u32 [on_panic = u32::MAX] {
            a.checked_div(b).expect("division by zero")
        }

        fn defaulted(fail: bool) -> i64 {
            assert!(!fail, "asked to fail");
            7
        }

        fn unit(fail: bool) {
            assert!(!fail, "asked to fail");
        }
    }

    #[test]
    fn guest_fn_stops_every_panic_at_the_boundary() {
        assert_eq!(checked_divide(9, 3), 3);
        assert_eq!(checked_divide(9, 0), u32::MAX);
        assert_eq!(defaulted(false), 7);
        assert_eq!(defaulted(true), 0);
        unit(true);
        unit(false);
    }

    #[test]
    fn status_guard_maps_outcomes_to_codes() {
        assert_eq!(status_guard(|| Ok(())), status::OK);
        assert_eq!(status_guard(|| Err(-42)), -42);
        assert_eq!(status_guard(|| panic!("boom")), status::PANICKED);
    }
}
