//! The original crate, `polyplug` 0.1.1 from crates.io, as the benches' same-run baseline: its
//! registry (`RuntimeStore`) serving the very C function the runtime serves, so a lookup + call
//! through either differs only in what the lookup costs.
//!
//! The original's interfaces are `'static` (its contract: a plugin's statics, never freed while
//! the runtime lives), so the one registered here is leaked; the function it points to is the C
//! plugin's `c_guest_add`, from a library this process keeps open.

use std::ffi::c_void;

use polyplug::runtime_store::RuntimeStore;
use polyplug_abi::types::Version;
use polyplug_abi::{
    DispatchMechanisms, DispatchType, GuestContractHandle, GuestContractInstance,
    GuestContractInterface, HostApi, NativeDispatch, PluginDescriptor, StringView, VmLoaderData,
};
use polyplug_utils::{BundleId, GuestContractId};

/// `uint32_t c_guest_add(uint32_t, uint32_t)`.
pub(crate) type AddFn = extern "C" fn(u32, u32) -> u32;

/// The original registry with `c.greeter@1` registered, its `add` at index 1 as in ours.
pub(crate) struct Original {
    store: RuntimeStore,
    id: GuestContractId,
    handle: GuestContractHandle,
}

unsafe extern "C" fn create_instance(
    _: VmLoaderData,
    _: *const HostApi,
    _: *const (),
    out: *mut GuestContractInstance,
) {
    // SAFETY: the original passes a valid out-pointer; a null instance means "stateless".
    unsafe { out.write(GuestContractInstance::null()) };
}

unsafe extern "C" fn destroy_instance(
    _: VmLoaderData,
    _: *const HostApi,
    _: GuestContractInstance,
) {
}

impl Original {
    /// Registers `add` (with the C plugin's other two functions' slots unused) as
    /// `c.greeter@1.0`.
    pub(crate) fn new(add: AddFn) -> Self {
        let functions: &'static [*const (); 3] = Box::leak(Box::new([
            std::ptr::null(),
            add as *const (),
            std::ptr::null(),
        ]));
        let interface: &'static GuestContractInterface =
            Box::leak(Box::new(GuestContractInterface {
                contract_id: GuestContractId::new("c.greeter", 1),
                contract_version: Version {
                    major: 1,
                    minor: 0,
                    patch: 0,
                },
                dispatch_type: DispatchType::Native,
                create_instance,
                destroy_instance,
                dispatch: DispatchMechanisms {
                    native: NativeDispatch {
                        function_count: 3,
                        functions: functions.as_ptr(),
                    },
                },
            }));
        let store = RuntimeStore::new();
        let descriptor = PluginDescriptor {
            name: StringView::from_static(b"c-guest"),
            contract_name: StringView::from_static(b"c.greeter"),
            version: Version {
                major: 1,
                minor: 0,
                patch: 0,
            },
        };
        // SAFETY: the interface and its table are leaked ('static), and the function they point
        // to belongs to a library this process never closes.
        let handle = unsafe {
            store.register_guest_contract(
                descriptor,
                interface,
                "c.greeter".to_owned(),
                BundleId::new("c-bench-original"),
            )
        }
        .expect("the original registers c.greeter");
        Self {
            store,
            id: GuestContractId::new("c.greeter", 1),
            handle,
        }
    }

    /// The handle its registry issued.
    pub(crate) fn handle(&self) -> GuestContractHandle {
        self.handle
    }

    /// The original's `resolve_guest_contract`, then a call of `add` through the table.
    #[inline]
    pub(crate) fn resolve_call(&self, handle: GuestContractHandle, a: u32) -> u32 {
        let interface = self.store.resolve_guest_contract(handle).expect("resolve");
        call_add(interface, a)
    }

    /// The original's `find_guest_contract` (a handle), its resolve, then the call.
    #[inline]
    pub(crate) fn find_call(&self, a: u32) -> u32 {
        let handle = self.store.find_guest_contract(self.id, 1).expect("find");
        let interface = self.store.resolve_guest_contract(handle).expect("resolve");
        call_add(interface, a)
    }
}

#[inline]
fn call_add(interface: *const GuestContractInterface, a: u32) -> u32 {
    // SAFETY: `interface` is the one registered above ('static).
    let interface = unsafe { &*interface };
    // SAFETY: its dispatch type is native, so `native` is the union's live field.
    let table = unsafe { interface.dispatch.native.functions };
    // SAFETY: the table has three entries; index 1 is in bounds.
    let entry = unsafe { table.add(1) };
    // SAFETY: the entry is readable (a leaked 'static array).
    let entry = unsafe { *entry };
    // SAFETY: entry 1 is `c_guest_add`, `uint32_t (uint32_t, uint32_t)`.
    let add = unsafe { std::mem::transmute::<*const (), AddFn>(entry) };
    add(a, 1)
}

const _: () = assert!(std::mem::size_of::<*const c_void>() == std::mem::size_of::<AddFn>());
