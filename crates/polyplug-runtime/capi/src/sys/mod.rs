//! The C API: the runtime for hosts written in C, C++ or Zig (declared in
//! `include/polyplug_runtime.h`, beside this crate's manifest).
//!
//! Every function returns a status code (`POLYPLUG_OK` or a negative `POLYPLUG_ERR_*`) or a
//! pointer that is null on failure; the failure's message is kept per thread and read with
//! `polyplug_runtime_last_error`. No panic crosses the boundary. C callers hold interfaces
//! through `PolyplugInterfaceRef`s (reference-counted, like the Rust `OwnedInterface`): the
//! interface and its library stay valid until `polyplug_runtime_release`, whatever reloads or
//! unloads happen meanwhile.
//!
//! The symbols are exported from the libraries this crate builds (`#[unsafe(no_mangle)]`),
//! and from a Rust binary that links this crate; they all start with `polyplug_runtime_`. Only
//! this crate exports them: `polyplug-runtime` itself exports no symbol, so two versions of it
//! can live in one binary.

use core::ffi::{CStr, c_char, c_void};
use std::cell::RefCell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use platform_primitives::error::chain;
use polyplug_runtime::abi::{
    GuestContractHandle, GuestContractInterface, RuntimeOptions, StringView, status,
};
use polyplug_runtime::guest::ffi_guard;
use polyplug_runtime::ids::ContractRef;
use polyplug_runtime::registry::{LookupError, OwnedInterface, ProviderPolicy, RegistryError};
use polyplug_runtime::runtime::{ReloadRequest, Runtime, RuntimeConfig};

/// A C callback and its user data, called from whichever thread reloads.
#[derive(Clone, Copy)]
struct Callback<F> {
    function: F,
    user_data: *mut c_void,
}

// SAFETY: the C host declares, by passing the callback to the runtime, that it may be called
// from any thread with this user data (documented in polyplug.h).
unsafe impl<F: Send> Send for Callback<F> {}
// SAFETY: as for Send: the callback is only called, never mutated, through a shared reference.
unsafe impl<F: Sync> Sync for Callback<F> {}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// Records `error` and returns `code`.
fn fail(code: i32, error: impl std::fmt::Display) -> i32 {
    set_error(error.to_string());
    code
}

/// A C string argument as UTF-8.
///
/// # Safety
///
/// `s` must be null or a NUL-terminated string valid for the call.
unsafe fn c_str<'a>(s: *const c_char, what: &str) -> Result<&'a str, i32> {
    if s.is_null() {
        return Err(fail(status::INVALID_ARGUMENT, format!("{what} is null")));
    }
    // SAFETY: non-null and NUL-terminated for the call (caller's contract).
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    core::str::from_utf8(bytes).map_err(|_| fail(status::NON_UTF8, format!("{what} is not UTF-8")))
}

/// A C string argument as a path (any bytes).
///
/// # Safety
///
/// As for [`c_str`].
unsafe fn c_path<'a>(s: *const c_char, what: &str) -> Result<&'a Path, i32> {
    if s.is_null() {
        return Err(fail(status::INVALID_ARGUMENT, format!("{what} is null")));
    }
    // SAFETY: non-null and NUL-terminated for the call (caller's contract).
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// Creates a runtime; `options` may be null (defaults: no hot reload). Returns null on failure.
///
/// # Safety
///
/// `options` must be null or valid for the call; its callbacks must be callable from any
/// thread with their user data until the runtime is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_new(options: *const RuntimeOptions) -> *mut Runtime {
    ffi_guard(core::ptr::null_mut(), || {
        let mut builder = Runtime::builder();
        // SAFETY: null or valid for the call (caller's contract).
        if let Some(options) = unsafe { options.as_ref() } {
            let mut config = RuntimeConfig {
                hot_reload: options.hot_reload != 0,
                ..RuntimeConfig::default()
            };
            config.provider_policy = match options.provider_policy {
                1 => ProviderPolicy::FirstLoaded,
                2 => ProviderPolicy::HighestVersion,
                _ => ProviderPolicy::Unique,
            };
            if options.drain_timeout_ms > 0 {
                config.drain_timeout = Duration::from_millis(options.drain_timeout_ms.into());
            }
            let covers_copy_dir = options.struct_size as usize
                >= core::mem::offset_of!(RuntimeOptions, copy_dir)
                    + core::mem::size_of::<*const c_char>();
            if covers_copy_dir && !options.copy_dir.is_null() {
                // SAFETY: a NUL-terminated path valid for the call (caller's contract).
                match unsafe { c_path(options.copy_dir, "copy_dir") } {
                    Ok(dir) => config.copy_dir = Some(dir.to_owned()),
                    Err(_) => return core::ptr::null_mut(),
                }
            }
            builder = builder.config(config);
            if let Some(function) = options.on_reload {
                let callback = Callback {
                    function,
                    user_data: options.reload_user_data,
                };
                builder = builder.on_reload(move |event| {
                    let callback = callback;
                    // SAFETY: the host's callback, callable from any thread with its user data
                    // (its contract); the views in the phase live for the call.
                    unsafe { (callback.function)(callback.user_data, event.to_abi()) }
                });
            }
            if let Some(function) = options.on_log {
                let callback = Callback {
                    function,
                    user_data: options.log_user_data,
                };
                builder = builder.on_log(move |record| {
                    let callback = callback;
                    // SAFETY: as for on_reload; the views borrow the record for the call.
                    unsafe {
                        (callback.function)(
                            callback.user_data,
                            record.level,
                            StringView::borrowed(record.bundle),
                            StringView::borrowed(record.message),
                        )
                    }
                });
            }
        }
        match builder.build() {
            Ok(runtime) => Box::into_raw(Box::new(runtime)),
            Err(e) => {
                set_error(e.to_string());
                core::ptr::null_mut()
            }
        }
    })
}

/// Frees a runtime (null is ignored). Interface references stay valid until released.
///
/// # Safety
///
/// `runtime` must be null or a pointer from `polyplug_runtime_new` not freed before, and no
/// other call may use it concurrently or afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_free(runtime: *mut Runtime) {
    if runtime.is_null() {
        return;
    }
    // SAFETY: from polyplug_runtime_new, freed once (caller's contract).
    let runtime = unsafe { Box::from_raw(runtime) };
    ffi_guard((), move || drop(runtime));
}

/// Borrows the runtime behind a pointer.
///
/// # Safety
///
/// `runtime` must be null or a live pointer from `polyplug_runtime_new`.
unsafe fn runtime_ref<'a>(runtime: *const Runtime) -> Result<&'a Runtime, i32> {
    // SAFETY: null or live (caller's contract).
    unsafe { runtime.as_ref() }.ok_or_else(|| fail(status::INVALID_ARGUMENT, "runtime is null"))
}

fn code(result: Result<i32, i32>) -> i32 {
    result.unwrap_or_else(|code| code)
}

/// Loads the bundle in directory `dir`.
///
/// # Safety
///
/// `runtime` must be live; `dir` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_load_bundle(
    runtime: *const Runtime,
    dir: *const c_char,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code((|| {
            // SAFETY: live runtime (caller's contract).
            let runtime = unsafe { runtime_ref(runtime)? };
            // SAFETY: valid string (caller's contract).
            let dir = unsafe { c_path(dir, "dir")? };
            runtime
                .load_bundle(dir)
                .map(|_| status::OK)
                .map_err(|e| fail(status::LOAD_FAILED, chain(&e)))
        })())
    })
}

fn reload(
    runtime: *const Runtime,
    bundle: *const c_char,
    from_dir: *const c_char,
    wait: bool,
) -> Result<i32, i32> {
    reload_report(runtime, bundle, from_dir, wait).map(|_| status::OK)
}

fn reload_report(
    runtime: *const Runtime,
    bundle: *const c_char,
    from_dir: *const c_char,
    wait: bool,
) -> Result<polyplug_runtime::ReloadReport, i32> {
    // SAFETY: live runtime and valid strings (the exported callers' contracts).
    let runtime = unsafe { runtime_ref(runtime)? };
    // SAFETY: as above.
    let bundle = unsafe { c_str(bundle, "bundle")? };
    let mut request = ReloadRequest::new(bundle).reason("reload requested through the C API");
    if !from_dir.is_null() {
        // SAFETY: as above.
        request = request.from_dir(unsafe { c_path(from_dir, "from_dir")? });
    }
    let result = if wait {
        runtime.reload(request)
    } else {
        runtime.try_reload(request)
    };
    result.map_err(|e| fail(e.status(), chain(&e)))
}

/// Hot-reloads `bundle` (from `from_dir` if not null), waiting for a reload in progress.
///
/// # Safety
///
/// `runtime` must be live; `bundle` a NUL-terminated string; `from_dir` null or one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_reload_bundle(
    runtime: *const Runtime,
    bundle: *const c_char,
    from_dir: *const c_char,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code(reload(runtime, bundle, from_dir, true))
    })
}

/// As `polyplug_runtime_reload_bundle`, but fails with `POLYPLUG_ERR_RELOAD_IN_PROGRESS`
/// instead of waiting.
///
/// # Safety
///
/// As for `polyplug_runtime_reload_bundle`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_try_reload_bundle(
    runtime: *const Runtime,
    bundle: *const c_char,
    from_dir: *const c_char,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code(reload(runtime, bundle, from_dir, false))
    })
}

/// Unloads `bundle`.
///
/// # Safety
///
/// `runtime` must be live; `bundle` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_unload_bundle(
    runtime: *const Runtime,
    bundle: *const c_char,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code((|| {
            // SAFETY: live runtime (caller's contract).
            let runtime = unsafe { runtime_ref(runtime)? };
            // SAFETY: valid string (caller's contract).
            let bundle = unsafe { c_str(bundle, "bundle")? };
            runtime
                .unload(bundle)
                .map(|_| status::OK)
                .map_err(|e| fail(e.status(), e))
        })())
    })
}

/// `PolyplugReloadReport`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ReloadReportAbi {
    /// `sizeof(PolyplugReloadReport)`, set by the caller.
    pub struct_size: u32,
    /// The version before.
    pub from: polyplug_runtime::abi::Version,
    /// The version after.
    pub to: polyplug_runtime::abi::Version,
    /// Contracts swapped in place.
    pub swapped: u32,
    /// Contracts added.
    pub added: u32,
    /// Contracts retired.
    pub retired: u32,
    /// A `POLYPLUG_IMAGE_*`.
    pub old_image: u32,
    /// Dependents whose cascade reload failed.
    pub cascade_failures: u32,
    /// The whole reload, in nanoseconds.
    pub total_ns: u64,
    /// The registry commit, in nanoseconds.
    pub swap_ns: u64,
}

/// `PolyplugUnloadReport`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct UnloadReportAbi {
    /// `sizeof(PolyplugUnloadReport)`, set by the caller.
    pub struct_size: u32,
    /// Contracts retired.
    pub retired: u32,
    /// A `POLYPLUG_IMAGE_*`.
    pub image: u32,
    /// Time waiting for readers, in nanoseconds.
    pub drain_ns: u64,
}

fn image_code(image: polyplug_runtime::ImageRelease) -> u32 {
    match image {
        polyplug_runtime::ImageRelease::Unmapped => 0,
        polyplug_runtime::ImageRelease::StillMapped => 1,
        polyplug_runtime::ImageRelease::Deferred { .. } => 2,
        _ => 3,
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reloads like `polyplug_runtime_reload_bundle` and fills `report` (if not null, and if its
/// `struct_size` covers the structure).
///
/// # Safety
///
/// As for `polyplug_runtime_reload_bundle`; `report` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_reload_bundle_report(
    runtime: *const Runtime,
    bundle: *const c_char,
    from_dir: *const c_char,
    report: *mut ReloadReportAbi,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code((|| {
            // SAFETY: null or writable (caller's contract).
            if let Some(out) = unsafe { report.as_ref() }
                && (out.struct_size as usize) < core::mem::size_of::<ReloadReportAbi>()
            {
                return Err(fail(
                    status::INVALID_ARGUMENT,
                    "report.struct_size is too small",
                ));
            }
            let done = reload_report(runtime, bundle, from_dir, true)?;
            if !report.is_null() {
                let abi = ReloadReportAbi {
                    struct_size: core::mem::size_of::<ReloadReportAbi>() as u32,
                    from: done.from,
                    to: done.to,
                    swapped: count(done.swap.swapped),
                    added: count(done.swap.added),
                    retired: count(done.swap.retired),
                    old_image: image_code(done.old_image),
                    cascade_failures: count(
                        done.cascade.iter().filter(|c| c.result.is_err()).count(),
                    ),
                    total_ns: nanos(done.total),
                    swap_ns: nanos(
                        done.phase(polyplug_runtime::ReloadStep::Swap)
                            .unwrap_or_default(),
                    ),
                };
                // SAFETY: non-null and writable for the structure (caller's contract,
                // struct_size checked above).
                unsafe { report.write(abi) };
            }
            Ok(status::OK)
        })())
    })
}

/// Unloads like `polyplug_runtime_unload_bundle` and fills `report` (if not null).
///
/// # Safety
///
/// As for `polyplug_runtime_unload_bundle`; `report` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_unload_bundle_report(
    runtime: *const Runtime,
    bundle: *const c_char,
    report: *mut UnloadReportAbi,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code((|| {
            // SAFETY: null or writable (caller's contract).
            if let Some(out) = unsafe { report.as_ref() }
                && (out.struct_size as usize) < core::mem::size_of::<UnloadReportAbi>()
            {
                return Err(fail(
                    status::INVALID_ARGUMENT,
                    "report.struct_size is too small",
                ));
            }
            // SAFETY: live runtime (caller's contract).
            let runtime = unsafe { runtime_ref(runtime)? };
            // SAFETY: valid string (caller's contract).
            let bundle = unsafe { c_str(bundle, "bundle")? };
            let done = runtime
                .unload(bundle)
                .map_err(|e| fail(e.status(), chain(&e)))?;
            if !report.is_null() {
                let abi = UnloadReportAbi {
                    struct_size: core::mem::size_of::<UnloadReportAbi>() as u32,
                    retired: count(done.retired),
                    image: image_code(done.image),
                    drain_ns: nanos(done.drain),
                };
                // SAFETY: non-null and writable (caller's contract, struct_size checked).
                unsafe { report.write(abi) };
            }
            Ok(status::OK)
        })())
    })
}

/// Lists the loaded bundles ("name version\n" each, sorted) into `buffer`; returns the full
/// length.
///
/// # Safety
///
/// `runtime` must be live; `buffer` null or writable for `capacity` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_list_bundles(
    runtime: *const Runtime,
    buffer: *mut c_char,
    capacity: usize,
) -> usize {
    ffi_guard(0, || {
        // SAFETY: live runtime (caller's contract).
        let Ok(runtime) = (unsafe { runtime_ref(runtime) }) else {
            return 0;
        };
        let mut bundles = runtime.bundles();
        bundles.sort_by(|a, b| a.name.cmp(&b.name));
        let text: String = bundles
            .iter()
            .map(|b| format!("{} {}\n", b.name, b.version))
            .collect();
        // SAFETY: null or writable for capacity bytes (caller's contract).
        unsafe { copy_out(&text, buffer, capacity) };
        text.len()
    })
}

/// Copies `text` into `buffer`, NUL-terminated and truncated to `capacity`.
///
/// # Safety
///
/// `buffer` must be null or writable for `capacity` bytes.
unsafe fn copy_out(text: &str, buffer: *mut c_char, capacity: usize) {
    if buffer.is_null() || capacity == 0 {
        return;
    }
    let n = text.len().min(capacity - 1);
    // SAFETY: writable for capacity > n bytes (caller's contract); our own string cannot
    // overlap it.
    unsafe { core::ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), n) };
    // SAFETY: n < capacity: the offset stays inside the caller's buffer.
    let end = unsafe { buffer.add(n) };
    // SAFETY: `end` is inside the writable buffer.
    unsafe { end.write(0) };
}

fn lookup_status(e: &LookupError) -> i32 {
    match e {
        LookupError::NotFound { .. } => status::NOT_FOUND,
        LookupError::Ambiguous { .. } => status::AMBIGUOUS,
        LookupError::IncompatibleVersion { .. } => status::INCOMPATIBLE_VERSION,
        _ => status::INTERNAL,
    }
}

/// Finds the provider of contract `name` at `major`, minor ≥ `min_minor`, and writes its
/// handle.
///
/// # Safety
///
/// `runtime` must be live; `name` a NUL-terminated string; `out_handle` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_find(
    runtime: *const Runtime,
    name: *const c_char,
    major: u32,
    min_minor: u32,
    out_handle: *mut GuestContractHandle,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code((|| {
            // SAFETY: live runtime (caller's contract).
            let runtime = unsafe { runtime_ref(runtime)? };
            // SAFETY: valid string (caller's contract).
            let name = unsafe { c_str(name, "contract")? };
            if out_handle.is_null() {
                return Err(fail(status::INVALID_ARGUMENT, "out_handle is null"));
            }
            let handle = runtime
                .registry()
                .handle_of(&ContractRef::new(name, major, min_minor))
                .map_err(|e| fail(lookup_status(&e), &e))?;
            // SAFETY: non-null and writable (caller's contract).
            unsafe { out_handle.write(handle) };
            Ok(status::OK)
        })())
    })
}

/// Publishes a host service: `count` functions at `functions` (with the canonical
/// `signature` text, or an empty view) as contract `name` at `version`, for plugins to find
/// through their `PolyplugHostServices` (and hosts through `polyplug_runtime_find`).
///
/// # Safety
///
/// `runtime` must be live; `name` a NUL-terminated string; `functions` must point to `count`
/// non-null functions with the contract's signatures, and they and `signature`'s bytes must
/// stay valid while the runtime lives; `out_handle` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_publish_service(
    runtime: *const Runtime,
    name: *const c_char,
    version: polyplug_runtime::abi::Version,
    functions: *const polyplug_runtime::abi::GuestFn,
    count: usize,
    signature: StringView,
    out_handle: *mut GuestContractHandle,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code((|| {
            // SAFETY: live runtime (caller's contract).
            let runtime = unsafe { runtime_ref(runtime)? };
            // SAFETY: valid string (caller's contract).
            let name = unsafe { c_str(name, "contract")? };
            if functions.is_null() || count == 0 {
                return Err(fail(status::INVALID_ARGUMENT, "functions is null or empty"));
            }
            let mut interface = GuestContractInterface::new(
                polyplug_runtime::ids::ContractId::new(name, version.major),
                version,
                polyplug_runtime::abi::DispatchTable {
                    function_count: count,
                    functions,
                },
            );
            interface.signature = signature;
            // SAFETY: the functions and the signature text stay valid while the runtime lives
            // (caller's contract).
            let handle = unsafe { runtime.publish_interface(name, &interface) }
                .map_err(|e| fail(status::INVALID_ARGUMENT, chain(&e)))?;
            if !out_handle.is_null() {
                // SAFETY: non-null and writable (caller's contract).
                unsafe { out_handle.write(handle) };
            }
            Ok(status::OK)
        })())
    })
}

/// Withdraws a host service published with `polyplug_runtime_publish_service`: lookups stop
/// finding it and `handle` turns stale. `POLYPLUG_DEPENDENCY_IN_USE` while a loaded bundle
/// requires it (the service stays published), `POLYPLUG_INVALID_ARGUMENT` for a plugin's
/// contract, `POLYPLUG_STALE_HANDLE` or `POLYPLUG_NOT_FOUND` for a handle to nothing live.
///
/// # Safety
///
/// `runtime` must be live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_withdraw_service(
    runtime: *const Runtime,
    handle: GuestContractHandle,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code((|| {
            // SAFETY: live runtime (caller's contract).
            let runtime = unsafe { runtime_ref(runtime)? };
            runtime
                .withdraw_service(handle)
                .map_err(|e| fail(e.status(), chain(&e)))?;
            Ok(status::OK)
        })())
    })
}

/// Takes a reference to the interface behind `handle`; release it with
/// `polyplug_runtime_release`.
///
/// # Safety
///
/// `runtime` must be live; `out_ref` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_acquire(
    runtime: *const Runtime,
    handle: GuestContractHandle,
    out_ref: *mut *mut OwnedInterface,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        code((|| {
            // SAFETY: live runtime (caller's contract).
            let runtime = unsafe { runtime_ref(runtime)? };
            if out_ref.is_null() {
                return Err(fail(status::INVALID_ARGUMENT, "out_ref is null"));
            }
            let owned = runtime
                .resolve(handle)
                .map(|guard| guard.to_owned_interface())
                .map_err(|e| {
                    let code = match e {
                        RegistryError::StaleHandle { .. } => status::STALE_HANDLE,
                        _ => status::NOT_FOUND,
                    };
                    fail(code, e)
                })?;
            // SAFETY: non-null and writable (caller's contract).
            unsafe { out_ref.write(Box::into_raw(Box::new(owned))) };
            Ok(status::OK)
        })())
    })
}

/// The interface a reference holds (valid until the reference is released); null for null.
///
/// # Safety
///
/// `reference` must be null or a live reference from `polyplug_runtime_acquire`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_interface(
    reference: *const OwnedInterface,
) -> *const GuestContractInterface {
    // SAFETY: null or live (caller's contract).
    match unsafe { reference.as_ref() } {
        Some(owned) => {
            let interface: &GuestContractInterface = owned;
            interface
        }
        None => core::ptr::null(),
    }
}

/// Releases an interface reference (null is ignored).
///
/// # Safety
///
/// `reference` must be null or a live reference from `polyplug_runtime_acquire`, released
/// once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_release(reference: *mut OwnedInterface) {
    if reference.is_null() {
        return;
    }
    // SAFETY: from polyplug_runtime_acquire, released once (caller's contract).
    let owned = unsafe { Box::from_raw(reference) };
    ffi_guard((), move || drop(owned));
}

/// Copies this thread's last error message into `buffer` (NUL-terminated, truncated to
/// `capacity`) and returns its full length in bytes (without the NUL).
///
/// # Safety
///
/// `buffer` must be null (with any capacity) or writable for `capacity` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn polyplug_runtime_last_error(
    buffer: *mut c_char,
    capacity: usize,
) -> usize {
    LAST_ERROR.with(|e| {
        let message = e.borrow();
        let bytes = message.as_bytes();
        if !buffer.is_null() && capacity > 0 {
            let n = bytes.len().min(capacity - 1);
            // SAFETY: buffer is writable for capacity bytes (caller's contract) and n + 1 <=
            // capacity; the source is our own string, which cannot overlap it.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), n) };
            // SAFETY: n < capacity: the offset stays inside the caller's buffer.
            let end = unsafe { buffer.add(n) };
            // SAFETY: `end` is inside the writable buffer.
            unsafe { end.write(0) };
        }
        bytes.len()
    })
}
