//! The dynamic loader (POSIX `dlopen`, `dlsym`, `dlclose`, `dlerror`) and the calls into a
//! guest's entry points.
//!
//! Libraries are opened with `RTLD_NOW | RTLD_LOCAL`: every undefined symbol is resolved at
//! open time (a plugin with a missing symbol fails to load instead of crashing later), and the
//! plugin's symbols stay out of the global namespace (two versions of one plugin, or two
//! plugins exporting the same names, cannot capture each other's references). `RTLD_DEEPBIND`
//! is deliberately not used: it breaks `malloc` interposition and libstdc++.

use core::ffi::{CStr, c_void};
use core::ptr::NonNull;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::abi::{BundleInitContext, HostApi};

/// `polyplug_init`.
pub(crate) type InitFn =
    unsafe extern "C" fn(host: *const HostApi, context: *const BundleInitContext) -> i32;

/// `polyplug_fini`.
pub(crate) type FiniFn = unsafe extern "C" fn();
/// `size_t polyplug_state_export(uint8_t *buffer, size_t capacity)`.
pub(crate) type StateExportFn = unsafe extern "C" fn(buffer: *mut u8, capacity: usize) -> usize;
/// `int32_t polyplug_state_import(const uint8_t *state, size_t len)`.
pub(crate) type StateImportFn = unsafe extern "C" fn(state: *const u8, len: usize) -> i32;

/// An open library; closed on drop.
#[derive(Debug)]
pub(crate) struct DlHandle(NonNull<c_void>);

// SAFETY: a dlopen handle is an opaque token; glibc, musl and macOS dyld make dlsym/dlclose
// thread-safe, so the handle may move and be shared between threads.
unsafe impl Send for DlHandle {}
// SAFETY: as for Send: the only operations (dlsym, dlclose) are thread-safe.
unsafe impl Sync for DlHandle {}

/// The calling thread's last dynamic-loader error, or a fallback text.
fn last_error() -> String {
    // SAFETY: dlerror takes no arguments and returns null or a NUL-terminated string owned by
    // the loader, valid until the next dl* call on this thread; we copy it at once.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return "unknown dynamic loader error".to_owned();
    }
    // SAFETY: non-null and NUL-terminated, per dlerror's contract, and not yet invalidated.
    unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned()
}

impl DlHandle {
    /// Opens `path` with `RTLD_NOW | RTLD_LOCAL`. This runs the library's constructors.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "the path contains a NUL byte".to_owned())?;
        // SAFETY: c_path is a valid NUL-terminated string for the call; the flags are valid.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        NonNull::new(handle).map(Self).ok_or_else(last_error)
    }

    /// The address of symbol `name`, if the library exports it (non-null).
    pub(crate) fn symbol(&self, name: &CStr) -> Option<NonNull<c_void>> {
        // SAFETY: the handle is open (we own it until drop) and name is NUL-terminated.
        let address = unsafe { libc::dlsym(self.0.as_ptr(), name.as_ptr()) };
        NonNull::new(address)
    }

    /// The value of an exported `uint32_t` data symbol.
    pub(crate) fn read_u32(&self, name: &CStr) -> Option<u32> {
        let address = self.symbol(name)?.cast::<u32>();
        // SAFETY: the symbol is the ABI's `const uint32_t` sentinel, exported by the open
        // library and mapped while the handle is open; read_unaligned tolerates any address.
        Some(unsafe { address.as_ptr().read_unaligned() })
    }

    /// The guest's `polyplug_init`, if exported.
    pub(crate) fn init_fn(&self, name: &CStr) -> Option<InitFn> {
        let address = self.symbol(name)?;
        // SAFETY: the ABI defines this symbol as a function with the InitFn signature; a
        // non-null code address converts to a function pointer of that type.
        Some(unsafe { core::mem::transmute::<*mut c_void, InitFn>(address.as_ptr()) })
    }

    /// The guest's optional `polyplug_fini`.
    pub(crate) fn fini_fn(&self, name: &CStr) -> Option<FiniFn> {
        let address = self.symbol(name)?;
        // SAFETY: as for init_fn: the ABI defines `void polyplug_fini(void)`.
        Some(unsafe { core::mem::transmute::<*mut c_void, FiniFn>(address.as_ptr()) })
    }

    /// The guest's optional `polyplug_state_export`.
    pub(crate) fn state_export_fn(&self, name: &CStr) -> Option<StateExportFn> {
        let address = self.symbol(name)?;
        // SAFETY: as for init_fn: the ABI defines this symbol's signature (StateExportFn).
        Some(unsafe { core::mem::transmute::<*mut c_void, StateExportFn>(address.as_ptr()) })
    }

    /// The guest's optional `polyplug_state_import`.
    pub(crate) fn state_import_fn(&self, name: &CStr) -> Option<StateImportFn> {
        let address = self.symbol(name)?;
        // SAFETY: as for init_fn: the ABI defines this symbol's signature (StateImportFn).
        Some(unsafe { core::mem::transmute::<*mut c_void, StateImportFn>(address.as_ptr()) })
    }

    /// Closes the library, reporting the loader's error.
    pub(crate) fn close(self) -> Result<(), String> {
        let handle = self.0.as_ptr();
        core::mem::forget(self);
        // SAFETY: the handle came from dlopen and is closed exactly once (drop is skipped).
        if unsafe { libc::dlclose(handle) } == 0 {
            Ok(())
        } else {
            Err(last_error())
        }
    }
}

impl Drop for DlHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and this is its only close (`close` forgets self).
        unsafe { libc::dlclose(self.0.as_ptr()) };
    }
}

/// Calls a guest's `polyplug_init`.
pub(crate) fn call_init(init: InitFn, host: &HostApi, context: &BundleInitContext) -> i32 {
    // SAFETY: `init` is the open library's entry point (the library stays open while the
    // caller holds its handle); host and context are valid for the call, and the views inside
    // them point into strings the caller keeps alive until this returns.
    unsafe { init(host, context) }
}

/// Calls a guest's `polyplug_state_export` with `buffer` (empty: asks only for the length).
pub(crate) fn call_state_export(export: StateExportFn, buffer: &mut [u8]) -> usize {
    let pointer = if buffer.is_empty() {
        core::ptr::null_mut()
    } else {
        buffer.as_mut_ptr()
    };
    // SAFETY: the open library's export (the caller holds the library); the pointer is null
    // or `buffer.len()` writable bytes, borrowed for the call.
    unsafe { export(pointer, buffer.len()) }
}

/// Calls a guest's `polyplug_state_import` with `state`.
pub(crate) fn call_state_import(import: StateImportFn, state: &[u8]) -> i32 {
    // SAFETY: the open library's import (the caller holds the library); `state.len()` readable
    // bytes, borrowed for the call.
    unsafe { import(state.as_ptr(), state.len()) }
}

/// Calls a guest's `polyplug_fini`.
pub(crate) fn call_fini(fini: FiniFn) {
    // SAFETY: the open library's finaliser, called once, before its dlclose.
    unsafe { fini() }
}
