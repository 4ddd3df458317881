//! The guest's side of the C boundary: reading what the host passes to `polyplug_init`, calling
//! the host back, and the thread-safety of the plain-data ABI structures.
//!
//! Everything here is OS-independent; it lives in `sys` because it is where the crate's raw
//! pointers are dereferenced.

use core::ffi::c_void;
use core::marker::PhantomData;

use crate::abi::{
    ABI_VERSION, BundleInitContext, DispatchTable, GuestContractInterface, HostApi,
    PluginDescriptor, ReloadPhase, StringView, status,
};
use crate::ids::BundleId;

// The ABI structures are plain data: their pointers refer to immutable guest statics (tables,
// names) or to host memory valid for one call, and reading through them is `unsafe` anyway.
// Sharing the structures themselves between threads is therefore sound, and required for
// guests to keep them in `static`s.

// SAFETY: a StringView is a (pointer, length) pair to immutable bytes; see above.
unsafe impl Send for StringView {}
// SAFETY: as for Send: no interior mutability, the bytes are never written through it.
unsafe impl Sync for StringView {}
// SAFETY: a pointer to an immutable table of function pointers; see above.
unsafe impl Send for DispatchTable {}
// SAFETY: as for Send.
unsafe impl Sync for DispatchTable {}
// SAFETY: plain data: an id, a version and pointers to immutable guest code and tables.
unsafe impl Send for GuestContractInterface {}
// SAFETY: as for Send.
unsafe impl Sync for GuestContractInterface {}
// SAFETY: two immutable StringViews and a version.
unsafe impl Send for PluginDescriptor {}
// SAFETY: as for Send.
unsafe impl Sync for PluginDescriptor {}
// SAFETY: plain data; the views are valid during the callback that receives it.
unsafe impl Send for ReloadPhase {}
// SAFETY: as for Send.
unsafe impl Sync for ReloadPhase {}

/// The host as a Rust guest sees it during `polyplug_init`.
///
/// Only [`run_init`] makes one, from the host's pointers, and only for the duration of the
/// init call: that is what makes its methods safe.
#[derive(Debug)]
pub struct GuestHost<'a> {
    api: &'a HostApi,
    context: &'a BundleInitContext,
    // Not Send: the host's context is only valid on the thread running `polyplug_init`.
    _not_send: PhantomData<*mut c_void>,
}

impl<'a> GuestHost<'a> {
    /// The bundle's id.
    pub fn bundle_id(&self) -> BundleId {
        BundleId::from_u64(self.context.bundle_id)
    }

    /// The bundle name from its manifest (`None` if the host passed no valid UTF-8).
    pub fn bundle_name(&self) -> Option<&'a str> {
        // SAFETY: the host's views are valid for the duration of `polyplug_init`, which
        // outlives 'a by construction (run_init).
        let bytes = unsafe { view(self.context.bundle_name) };
        bytes.and_then(|b| core::str::from_utf8(b).ok())
    }

    /// The bundle directory the host loaded this version from (`None` if not valid UTF-8).
    pub fn bundle_dir(&self) -> Option<&'a str> {
        // SAFETY: as for bundle_name: valid for the duration of `polyplug_init`.
        let bytes = unsafe { view(self.context.bundle_dir) };
        bytes.and_then(|b| core::str::from_utf8(b).ok())
    }

    /// The bundle version from the manifest (`version = "…"`).
    pub fn bundle_version(&self) -> crate::abi::Version {
        self.context.bundle_version
    }

    /// Whether this load replaces a live version of the bundle (hot reload).
    pub fn is_reload(&self) -> bool {
        self.context.is_reload != 0
    }

    /// The runtime's lookups, which stay usable after `polyplug_init` returns, for as long as
    /// this library is loaded (keep them in a static). `None` if the host offers none.
    pub fn services(&self) -> Option<Services> {
        let services = self.api.services;
        (services.find.is_some()
            && services.acquire.is_some()
            && services.interface.is_some()
            && services.release.is_some())
        .then_some(Services(services))
    }

    /// Registers one contract. The interface is `'static` because its dispatch table must stay
    /// valid while the library is loaded; the descriptor is copied.
    ///
    /// # Errors
    ///
    /// The host's [`status`] code: duplicate provider, id mismatch, non-UTF-8 name, …
    pub fn register(
        &self,
        descriptor: &PluginDescriptor,
        interface: &'static GuestContractInterface,
    ) -> Result<(), i32> {
        let Some(register) = self.api.register_contract else {
            return Err(status::INVALID_ARGUMENT);
        };
        // SAFETY: the host's callback and context are valid during `polyplug_init`; the
        // descriptor and interface are live references for the call.
        let code = unsafe { register(self.api.host_context, descriptor, interface) };
        if code == status::OK {
            Ok(())
        } else {
            Err(code)
        }
    }

    /// Writes a line to the host's log.
    pub fn log(&self, level: u32, message: &str) {
        if let Some(log) = self.api.log {
            // SAFETY: the host's callback and context are valid during `polyplug_init`; the
            // view points into `message`, alive for the call.
            unsafe { log(self.api.host_context, level, StringView::borrowed(message)) };
        }
    }
}

/// The body of a guest's `polyplug_init` (what [`export_guest!`](crate::export_guest)
/// expands to): checks the host's pointers and ABI version, then runs `init` with panics
/// stopped at the boundary.
///
/// # Safety
///
/// `host` and `context` must be null or point to structures valid for the duration of the call
/// (what a host passes to `polyplug_init`).
pub unsafe fn run_init(
    host: *const HostApi,
    context: *const BundleInitContext,
    init: impl FnOnce(&GuestHost<'_>) -> Result<(), i32>,
) -> i32 {
    // SAFETY: null or valid for the call, by the caller's contract.
    let api = unsafe { host.as_ref() };
    // SAFETY: as above.
    let context = unsafe { context.as_ref() };
    let (Some(api), Some(context)) = (api, context) else {
        return status::INVALID_ARGUMENT;
    };
    if api.abi_version != ABI_VERSION {
        return status::INVALID_ARGUMENT;
    }
    let guest = GuestHost {
        api,
        context,
        _not_send: PhantomData,
    };
    crate::guest::status_guard(|| init(&guest))
}

/// The runtime's lookups from a guest: find another plugin's contract or a host service and
/// call it through a [`ServiceRef`], which keeps that version loaded while held. Obtained from
/// [`GuestHost::services`]; valid for as long as the guest's library is loaded.
///
/// ```no_run
/// use std::sync::OnceLock;
///
/// use polyplug_runtime::guest::{GuestHost, Services};
/// use polyplug_runtime::ids::ContractRef;
///
/// polyplug_runtime::contract! {
///     pub struct Clock {
///         pub fn now_ms() -> u64;
///     }
/// }
///
/// static SERVICES: OnceLock<Services> = OnceLock::new();
///
/// fn init(host: &GuestHost<'_>) -> Result<(), i32> {
///     let _ = SERVICES.set(host.services().ok_or(-1)?);
///     Ok(())
/// }
///
/// extern "C" fn uptime() -> u64 {
///     polyplug_runtime::guest::ffi_guard(0, || {
///         let Some(services) = SERVICES.get() else { return 0 };
///         let Ok(clock) = services.get(&ContractRef::new("host.clock", 1, 0)) else { return 0 };
///         clock.functions::<Clock>().map_or(0, |clock| (clock.now_ms)())
///     })
/// }
/// # fn main() {}
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Services(crate::abi::HostServices);

// SAFETY: the context is the runtime's thread-safe services context (a weak registry
// reference) and the functions are thread-safe; the host guarantees both for any thread.
unsafe impl Send for Services {}
// SAFETY: as for Send; nothing is mutated through a shared Services.
unsafe impl Sync for Services {}

impl Services {
    /// The handle of the provider of `contract` (same major, minor at least the required).
    ///
    /// # Errors
    ///
    /// A [`status`] code: `NOT_FOUND`, `AMBIGUOUS`, `INCOMPATIBLE_VERSION`, `NON_UTF8`.
    pub fn find(
        &self,
        contract: &crate::ids::ContractRef<'_>,
    ) -> Result<crate::abi::GuestContractHandle, i32> {
        let find = self.0.find.ok_or(status::NOT_FOUND)?;
        let mut handle = crate::abi::GuestContractHandle::NULL;
        let required = contract.required();
        // SAFETY: the host's find with its own context, a view of a live string and a
        // writable handle, all valid for the call.
        let code = unsafe {
            find(
                self.0.context,
                StringView::borrowed(contract.name()),
                required.major,
                required.minor,
                &mut handle,
            )
        };
        if code == status::OK {
            Ok(handle)
        } else {
            Err(code)
        }
    }

    /// A counted reference to the interface behind `handle`.
    ///
    /// # Errors
    ///
    /// A [`status`] code: `STALE_HANDLE`, `NOT_FOUND`.
    pub fn acquire(&self, handle: crate::abi::GuestContractHandle) -> Result<ServiceRef, i32> {
        let (Some(acquire), Some(interface), Some(release)) =
            (self.0.acquire, self.0.interface, self.0.release)
        else {
            return Err(status::NOT_FOUND);
        };
        let mut reference = core::ptr::null_mut();
        // SAFETY: the host's acquire with its own context and a writable out-pointer.
        let code = unsafe { acquire(self.0.context, handle, &mut reference) };
        if code != status::OK || reference.is_null() {
            return Err(if code == status::OK {
                status::INTERNAL
            } else {
                code
            });
        }
        // SAFETY: a live reference from acquire.
        let raw = unsafe { interface(reference) };
        // SAFETY: the host keeps the interface valid until the reference is released, which
        // only ServiceRef's drop does, after every borrow of it ended.
        let Some(table) = (unsafe { raw.as_ref() }) else {
            // SAFETY: live, released once.
            unsafe { release(reference) };
            return Err(status::INTERNAL);
        };
        Ok(ServiceRef {
            reference,
            interface: core::ptr::from_ref(table),
            release,
        })
    }

    /// [`find`](Self::find) then [`acquire`](Self::acquire).
    ///
    /// # Errors
    ///
    /// As either.
    pub fn get(&self, contract: &crate::ids::ContractRef<'_>) -> Result<ServiceRef, i32> {
        self.acquire(self.find(contract)?)
    }
}

/// A counted reference to one version of a contract, taken through [`Services`]: that version
/// and its library stay loaded until it is dropped.
#[derive(Debug)]
#[must_use = "a service reference is only useful to call through"]
pub struct ServiceRef {
    reference: *mut crate::abi::InterfaceRef,
    interface: *const GuestContractInterface,
    release: unsafe extern "C" fn(reference: *mut crate::abi::InterfaceRef),
}

impl ServiceRef {
    /// The interface.
    pub fn interface(&self) -> &GuestContractInterface {
        // SAFETY: valid until the reference is released, which happens only in drop.
        unsafe { &*self.interface }
    }

    /// The dispatch table viewed as `T`, if it has at least `T::LEN` functions and, when both
    /// sides declare one, the same signature fingerprint on those functions.
    pub fn functions<T: crate::abi::FunctionTable>(&self) -> Option<&T> {
        let interface = self.interface();
        let dispatch = &interface.dispatch;
        if interface.dispatch_type != crate::abi::DISPATCH_FUNCTION_TABLE
            || T::LEN == 0
            || dispatch.function_count < T::LEN
            || dispatch.functions.is_null()
            || !(dispatch.functions as usize).is_multiple_of(core::mem::align_of::<T>())
        {
            return None;
        }
        if T::SIGNATURE != 0 {
            // SAFETY: the interface's signature view is valid while it is (the host's ABI).
            let text = unsafe { view_any(interface.signature) }?;
            if !text.is_empty() {
                let text = core::str::from_utf8(text).ok()?;
                let prefixes = crate::signature::prefix_fingerprints(text)?;
                if prefixes.get(T::LEN - 1) != Some(&T::SIGNATURE) {
                    return None;
                }
            }
        }
        // SAFETY: a function table of at least T::LEN non-null entries (checked at
        // registration and above), aligned for T, valid while this reference lives; T is a
        // FunctionTable (its implementer's contract).
        Some(unsafe { &*dispatch.functions.cast::<T>() })
    }
}

impl Drop for ServiceRef {
    fn drop(&mut self) {
        // SAFETY: a live reference from acquire, released once.
        unsafe { (self.release)(self.reference) };
    }
}

/// The bytes of a view of any length up to [`MAX_SIGNATURE_LEN`](crate::abi::MAX_SIGNATURE_LEN).
///
/// # Safety
///
/// A non-null `view.ptr` must point to `view.len` readable bytes valid for `'a`.
unsafe fn view_any<'a>(view: StringView) -> Option<&'a [u8]> {
    if view.len == 0 {
        return Some(&[]);
    }
    if view.ptr.is_null() || view.len > crate::abi::MAX_SIGNATURE_LEN {
        return None;
    }
    // SAFETY: non-null and readable for len bytes (caller's contract); len is bounded.
    Some(unsafe { core::slice::from_raw_parts(view.ptr, view.len) })
}

/// The body of a guest's `polyplug_state_export` (see
/// [`export_state!`](crate::export_state)): asks `export` for the state and copies it into
/// `buffer` if it fits. Returns the state's length, or `usize::MAX` if `export` panicked.
///
/// # Safety
///
/// `buffer` must be null or point to `capacity` writable bytes for the duration of the call.
pub unsafe fn run_state_export(
    buffer: *mut u8,
    capacity: usize,
    export: impl FnOnce() -> Vec<u8>,
) -> usize {
    let Some(state) = crate::guest::ffi_guard(None, || Some(export())) else {
        return usize::MAX;
    };
    if !buffer.is_null() && state.len() <= capacity {
        // SAFETY: `buffer` has `capacity >= state.len()` writable bytes (caller's contract),
        // and a fresh Vec cannot overlap it.
        unsafe { core::ptr::copy_nonoverlapping(state.as_ptr(), buffer, state.len()) };
    }
    state.len()
}

/// The body of a guest's `polyplug_state_import` (see
/// [`export_state!`](crate::export_state)): hands the old version's state to `import`.
/// Returns [`status::OK`], `import`'s refusal code, or [`status::PANICKED`].
///
/// # Safety
///
/// `state` must be null (with `len` 0) or point to `len` readable bytes for the call.
pub unsafe fn run_state_import(
    state: *const u8,
    len: usize,
    import: impl FnOnce(&[u8]) -> Result<(), i32>,
) -> i32 {
    let bytes: &[u8] = if len == 0 {
        &[]
    } else if state.is_null() || len > isize::MAX as usize {
        return status::INVALID_ARGUMENT;
    } else {
        // SAFETY: non-null, `len` readable bytes for the call (caller's contract).
        unsafe { core::slice::from_raw_parts(state, len) }
    };
    crate::guest::status_guard(|| import(bytes))
}

/// The bytes of a view, or `None` for a null pointer with a non-zero length or an absurd
/// length.
///
/// # Safety
///
/// A non-null `view.ptr` must point to `view.len` readable bytes that stay valid and unchanged
/// for `'a`.
pub(crate) unsafe fn view<'a>(view: StringView) -> Option<&'a [u8]> {
    if view.len == 0 {
        return Some(&[]);
    }
    if view.ptr.is_null() || view.len > crate::abi::MAX_NAME_LEN {
        return None;
    }
    // SAFETY: non-null, `len` readable bytes valid for 'a (caller's contract), and len is
    // bounded well below isize::MAX.
    Some(unsafe { core::slice::from_raw_parts(view.ptr, view.len) })
}

/// The signature text of an interface (its canonical function list; empty if it declares
/// none), or `None` for a malformed view (null with a length, or longer than
/// [`MAX_SIGNATURE_LEN`](crate::abi::MAX_SIGNATURE_LEN)).
///
/// # Safety
///
/// `interface.signature` must be empty or point to `len` readable bytes, valid for `'a`.
#[cfg(feature = "host")]
pub(crate) unsafe fn signature_text<'a>(interface: &GuestContractInterface) -> Option<&'a [u8]> {
    let view = interface.signature;
    if view.len == 0 {
        return Some(&[]);
    }
    if view.ptr.is_null() || view.len > crate::abi::MAX_SIGNATURE_LEN {
        return None;
    }
    // SAFETY: non-null, `len` readable bytes valid for 'a (caller's contract), and len is
    // bounded well below isize::MAX.
    Some(unsafe { core::slice::from_raw_parts(view.ptr, view.len) })
}

/// The dispatch table of a registry entry viewed as `T`, when it has at least `T::LEN`
/// functions and suitable alignment.
#[cfg(feature = "host")]
#[inline]
pub(crate) fn table_view<T: crate::abi::FunctionTable>(
    entry: &crate::registry::Interface,
) -> Option<&T> {
    let dispatch = &entry.interface.dispatch;
    let usable = entry.occupied
        && entry.interface.dispatch_type == crate::abi::DISPATCH_FUNCTION_TABLE
        && T::LEN > 0
        && dispatch.function_count >= T::LEN
        // A table type with a signature is refused on a provider whose signature differs on
        // the functions the type covers; a provider that declares none is not checked.
        && (T::SIGNATURE == 0
            || entry.signature_full == 0
            || if dispatch.function_count == T::LEN {
                entry.signature_full == T::SIGNATURE
            } else {
                entry.signature.get(T::LEN - 1) == Some(&T::SIGNATURE)
            })
        && !dispatch.functions.is_null()
        && (dispatch.functions as usize).is_multiple_of(core::mem::align_of::<T>());
    if !usable {
        return None;
    }
    // SAFETY: registry entries are built only from registrations whose safety contract (or,
    // for bundles, the loader's check of every entry) guarantees `function_count` valid
    // non-null function pointers with the contract's signatures, alive as long as the entry
    // (the entry holds what keeps the library loaded). `T: FunctionTable` is a repr(C) struct
    // of `T::LEN` such pointers (its implementer's contract), the table has at least that many,
    // and the pointer is non-null and aligned for `T`. The returned reference borrows `entry`.
    Some(unsafe { &*dispatch.functions.cast::<T>() })
}
