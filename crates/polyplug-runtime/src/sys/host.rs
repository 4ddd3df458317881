//! The host callbacks a guest calls during `polyplug_init`: `register_contract` and `log`.
//!
//! The `host_context` a guest passes back is not a pointer but a token naming the init call in
//! progress (see `loader`): a guest that calls back after `polyplug_init` returned, or with a
//! garbage context, gets `NOT_IN_INIT` instead of making the host read freed memory. Panics
//! never cross back into the guest.

use core::ffi::c_void;

use crate::abi::{
    DISPATCH_FUNCTION_TABLE, GuestContractInterface, MAX_FUNCTIONS, PluginDescriptor, StringView,
    status,
};
use crate::error::RegistrationError;
use crate::guest::ffi_guard;
use crate::loader::{RawRegistration, sink_for};

/// `HostApi::register_contract`.
///
/// # Safety
///
/// `descriptor` and `interface` must be null or valid for the call, the views in the
/// descriptor must be valid for their lengths, and the dispatch table must hold
/// `function_count` readable pointers (the ABI's contract for guests).
pub(crate) unsafe extern "C" fn register_contract(
    host_context: *mut c_void,
    descriptor: *const PluginDescriptor,
    interface: *const GuestContractInterface,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        let Some(sink) = sink_for(host_context.addr()) else {
            return status::NOT_IN_INIT;
        };
        // SAFETY: null or valid for the call (caller's contract).
        let descriptor = unsafe { descriptor.as_ref() };
        // SAFETY: as above.
        let interface = unsafe { interface.as_ref() };
        let raw = match (descriptor, interface) {
            // SAFETY: valid for the call, per the caller's contract.
            (Some(d), Some(i)) => unsafe { read_registration(d, i) },
            (None, _) => Err(RegistrationError::Malformed { what: "descriptor" }),
            (_, None) => Err(RegistrationError::Malformed { what: "interface" }),
        };
        sink.register(raw)
    })
}

/// Copies a registration out of guest memory.
///
/// # Safety
///
/// As for [`register_contract`].
unsafe fn read_registration(
    descriptor: &PluginDescriptor,
    interface: &GuestContractInterface,
) -> Result<RawRegistration, RegistrationError> {
    // SAFETY: the descriptor's views are valid for the call (caller's contract).
    let plugin_name =
        unsafe { crate::sys::abi::view(descriptor.name) }.ok_or(RegistrationError::Malformed {
            what: "plugin name",
        })?;
    // SAFETY: as above.
    let contract_name = unsafe { crate::sys::abi::view(descriptor.contract_name) }.ok_or(
        RegistrationError::Malformed {
            what: "contract name",
        },
    )?;
    let dispatch = interface.dispatch;
    let mut table_has_null = false;
    if interface.dispatch_type == DISPATCH_FUNCTION_TABLE
        && dispatch.function_count <= MAX_FUNCTIONS
        && !dispatch.functions.is_null()
    {
        // Read the entries as data pointers: a null entry must not be materialised as a
        // (non-nullable) function pointer.
        let entries = dispatch.functions.cast::<*const c_void>();
        for k in 0..dispatch.function_count {
            // SAFETY: k < function_count <= MAX_FUNCTIONS: the offset stays inside the table.
            let slot = unsafe { entries.add(k) };
            // SAFETY: the table holds function_count readable pointers (caller's contract).
            let entry = unsafe { slot.read_unaligned() };
            table_has_null |= entry.is_null();
        }
    }
    Ok(RawRegistration {
        plugin_name: plugin_name.to_vec(),
        contract_name: contract_name.to_vec(),
        plugin_version: descriptor.version,
        interface: *interface,
        table_has_null,
    })
}

/// `HostApi::log`.
///
/// # Safety
///
/// `message` must be valid for its length during the call.
pub(crate) unsafe extern "C" fn log(host_context: *mut c_void, level: u32, message: StringView) {
    ffi_guard((), || {
        if let Some(sink) = sink_for(host_context.addr()) {
            // SAFETY: valid for the call (caller's contract).
            let bytes = unsafe { crate::sys::abi::view(message) }.unwrap_or(b"<malformed message>");
            sink.log(level, bytes);
        }
    });
}

/// What [`HostServices::context`](crate::abi::HostServices) points to: the registry, weakly
/// (a plugin outliving its runtime gets `NOT_FOUND`, never a dangling registry). Each loaded
/// library holds a strong reference to it, so the pointer stays valid while its code runs.
#[derive(Debug)]
pub(crate) struct ServiceContext {
    pub(crate) registry: std::sync::Weak<crate::registry::Registry>,
}

/// The services a library gets: `context` must be kept alive (the library holds it).
pub(crate) fn host_services(context: &std::sync::Arc<ServiceContext>) -> crate::abi::HostServices {
    crate::abi::HostServices {
        context: std::sync::Arc::as_ptr(context).cast_mut().cast(),
        find: Some(services_find),
        acquire: Some(services_acquire),
        interface: Some(services_interface),
        release: Some(services_release),
    }
}

/// The registry behind a services context, if the runtime is still alive.
///
/// # Safety
///
/// `context` must be null or the pointer [`host_services`] handed out, whose `Arc` the
/// calling library holds.
unsafe fn registry_of(
    context: *mut c_void,
) -> Result<std::sync::Arc<crate::registry::Registry>, i32> {
    // SAFETY: null or a live ServiceContext (caller's contract).
    let context = unsafe { context.cast::<ServiceContext>().as_ref() };
    let context = context.ok_or(status::INVALID_ARGUMENT)?;
    context.registry.upgrade().ok_or(status::NOT_FOUND)
}

/// `HostServices::find`.
///
/// # Safety
///
/// `context` as for [`registry_of`]; `contract` valid for its length; `out_handle` null or
/// writable.
pub(crate) unsafe extern "C" fn services_find(
    context: *mut c_void,
    contract: StringView,
    major: u32,
    min_minor: u32,
    out_handle: *mut crate::abi::GuestContractHandle,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        // SAFETY: caller's contract.
        let registry = match unsafe { registry_of(context) } {
            Ok(registry) => registry,
            Err(code) => return code,
        };
        // SAFETY: valid for its length during the call (caller's contract).
        let Some(name) = (unsafe { crate::sys::abi::view(contract) }) else {
            return status::INVALID_ARGUMENT;
        };
        let Ok(name) = core::str::from_utf8(name) else {
            return status::NON_UTF8;
        };
        if out_handle.is_null() {
            return status::INVALID_ARGUMENT;
        }
        let contract = crate::ids::ContractRef::new(name, major, min_minor);
        match registry.handle_of(&contract) {
            Ok(handle) => {
                // SAFETY: non-null and writable (caller's contract).
                unsafe { out_handle.write(handle) };
                status::OK
            }
            Err(crate::registry::LookupError::Ambiguous { .. }) => status::AMBIGUOUS,
            Err(crate::registry::LookupError::IncompatibleVersion { .. }) => {
                status::INCOMPATIBLE_VERSION
            }
            Err(_) => status::NOT_FOUND,
        }
    })
}

/// `HostServices::acquire`.
///
/// # Safety
///
/// `context` as for [`registry_of`]; `out_ref` null or writable.
pub(crate) unsafe extern "C" fn services_acquire(
    context: *mut c_void,
    handle: crate::abi::GuestContractHandle,
    out_ref: *mut *mut crate::abi::InterfaceRef,
) -> i32 {
    ffi_guard(status::PANICKED, || {
        // SAFETY: caller's contract.
        let registry = match unsafe { registry_of(context) } {
            Ok(registry) => registry,
            Err(code) => return code,
        };
        if out_ref.is_null() {
            return status::INVALID_ARGUMENT;
        }
        match registry.resolve(handle) {
            Ok(guard) => {
                let owned = Box::new(guard.to_owned_interface());
                // SAFETY: non-null and writable (caller's contract).
                unsafe { out_ref.write(Box::into_raw(owned).cast()) };
                status::OK
            }
            Err(crate::registry::RegistryError::StaleHandle { .. }) => status::STALE_HANDLE,
            Err(_) => status::NOT_FOUND,
        }
    })
}

/// `HostServices::interface`.
///
/// # Safety
///
/// `reference` must be null or live (from `services_acquire`, not yet released).
pub(crate) unsafe extern "C" fn services_interface(
    reference: *const crate::abi::InterfaceRef,
) -> *const GuestContractInterface {
    // SAFETY: null or a live boxed OwnedInterface (caller's contract).
    match unsafe { reference.cast::<crate::registry::OwnedInterface>().as_ref() } {
        Some(owned) => &owned.interface,
        None => core::ptr::null(),
    }
}

/// `HostServices::release`.
///
/// # Safety
///
/// `reference` must be null or live, and is released once.
pub(crate) unsafe extern "C" fn services_release(reference: *mut crate::abi::InterfaceRef) {
    if reference.is_null() {
        return;
    }
    // SAFETY: a boxed OwnedInterface from services_acquire, released once (caller's contract).
    let owned = unsafe { Box::from_raw(reference.cast::<crate::registry::OwnedInterface>()) };
    ffi_guard((), move || drop(owned));
}
