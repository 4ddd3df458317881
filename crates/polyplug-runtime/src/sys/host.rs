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
