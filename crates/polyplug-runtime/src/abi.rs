//! The C ABI that hosts and guests share.
//!
//! A plugin (a *guest*) is a shared library that exports two symbols: the ABI-version sentinel
//! `polyplug_abi_version` (a `uint32_t` equal to [`ABI_VERSION`]), which the host reads before
//! running any plugin code of its own, and `polyplug_init`, which the host calls with a
//! [`HostApi`] and a [`BundleInitContext`]. During `polyplug_init` the guest registers every
//! contract it provides: a [`PluginDescriptor`] (names and version) and a
//! [`GuestContractInterface`] (the contract id, its version and a table of `extern "C"`
//! functions). An optional `polyplug_fini` runs when the host releases the library.
//!
//! Every type here is `#[repr(C)]`; `include/polyplug.h` declares the same layouts for C, C++
//! and Zig, and the crate's tests compile a C file of static assertions generated from these
//! definitions, so the two cannot drift apart. Sizes below are for 64-bit targets.
//!
//! Raw pointers appear only in these plain-data structures; the safe host API never hands them
//! out (see `InterfaceGuard`, which derefs to a [`GuestContractInterface`] whose pointers it
//! keeps valid).

use core::ffi::c_void;
use core::fmt;

use crate::ids::ContractId;

/// The ABI version this crate speaks; a guest's `polyplug_abi_version` must equal it.
pub const ABI_VERSION: u32 = 2;

/// Name of the exported ABI-version sentinel (`const uint32_t polyplug_abi_version`).
pub const ABI_VERSION_SYMBOL: &str = "polyplug_abi_version";

/// Name of the guest entry point (`int32_t polyplug_init(const PolyplugHostApi *, const
/// PolyplugBundleInitContext *)`).
pub const INIT_SYMBOL: &str = "polyplug_init";

/// Name of the optional guest finaliser (`void polyplug_fini(void)`), called once before the
/// host closes the library.
pub const FINI_SYMBOL: &str = "polyplug_fini";

/// Name of the optional state export (`size_t polyplug_state_export(uint8_t *buffer, size_t
/// capacity)`): called on the old version during a reload, it returns the length of its state
/// and writes it into `buffer` when it fits (the host first asks with a null buffer).
pub const STATE_EXPORT_SYMBOL: &str = "polyplug_state_export";

/// Name of the optional state import (`int32_t polyplug_state_import(const uint8_t *state,
/// size_t len)`): called on the new version (after its `polyplug_init`, before it serves) with
/// the old version's state; a non-zero status refuses the reload.
pub const STATE_IMPORT_SYMBOL: &str = "polyplug_state_import";

/// The largest state the host hands over (64 MiB).
pub const MAX_STATE_LEN: usize = 64 << 20;

/// `dispatch_type` of a [`GuestContractInterface`] whose dispatch is a table of functions.
pub const DISPATCH_FUNCTION_TABLE: u32 = 0;

/// Upper bound on a registered dispatch table's length (a guard against garbage counts).
pub const MAX_FUNCTIONS: usize = 4096;

/// Upper bound on a name a guest passes through a [`StringView`].
pub const MAX_NAME_LEN: usize = 4096;

/// The longest signature text the host reads (see [`crate::signature`]).
pub const MAX_SIGNATURE_LEN: usize = 1 << 20;

/// Status codes of the C boundary (guest entry points, host callbacks and the C API).
///
/// Zero is success; every failure is negative. The C header defines the same values as
/// `POLYPLUG_OK`, `POLYPLUG_ERR_*`.
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// A null pointer, a bad length or a malformed argument.
    pub const INVALID_ARGUMENT: i32 = -1;
    /// No such bundle, contract or handle.
    pub const NOT_FOUND: i32 = -2;
    /// The handle's slot was retired (its contract was unloaded or dropped by a reload).
    pub const STALE_HANDLE: i32 = -3;
    /// Loading a bundle failed (manifest, library, symbols, ABI version or init).
    pub const LOAD_FAILED: i32 = -4;
    /// Another reload of the same bundle is running (`try_reload`).
    pub const RELOAD_IN_PROGRESS: i32 = -5;
    /// The bundle cannot be unloaded while other bundles depend on it.
    pub const DEPENDENCY_IN_USE: i32 = -6;
    /// Guest or host code panicked; the panic was stopped at the boundary.
    pub const PANICKED: i32 = -7;
    /// The same bundle registered one contract twice.
    pub const DUPLICATE_PROVIDER: i32 = -8;
    /// Two different contract names hash to the same contract id.
    pub const ID_COLLISION: i32 = -9;
    /// A name was not UTF-8.
    pub const NON_UTF8: i32 = -10;
    /// The interface's contract id is not the id of (contract name, major version).
    pub const ID_MISMATCH: i32 = -11;
    /// A registration arrived outside `polyplug_init`.
    pub const NOT_IN_INIT: i32 = -12;
    /// More than one bundle provides the contract and the selection policy cannot choose.
    pub const AMBIGUOUS: i32 = -13;
    /// The provider's version does not satisfy the request (same major, minor ≥).
    pub const INCOMPATIBLE_VERSION: i32 = -14;
    /// A reload failed; the old version stays live.
    pub const RELOAD_FAILED: i32 = -15;
    /// Hot reload is disabled in the runtime configuration.
    pub const HOT_RELOAD_DISABLED: i32 = -16;
    /// The guest registered a contract its manifest does not declare.
    pub const UNDECLARED: i32 = -17;
    /// An unexpected host failure.
    pub const INTERNAL: i32 = -99;
}

/// Log levels of [`HostApi::log`].
pub mod log_level {
    /// An error.
    pub const ERROR: u32 = 1;
    /// A warning.
    pub const WARN: u32 = 2;
    /// Information.
    pub const INFO: u32 = 3;
    /// Debugging detail.
    pub const DEBUG: u32 = 4;
}

/// A semantic version. Contracts negotiate as "same major, minor ≥".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Incompatible changes; part of the contract id.
    pub major: u32,
    /// Compatible additions (functions appended to the dispatch table).
    pub minor: u32,
    /// Fixes.
    pub patch: u32,
}

impl Version {
    /// A version from its three parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Whether a provider of `self` serves a caller that asks for `required`: the same major
    /// and a minor at least as high (the patch does not matter).
    pub const fn satisfies(self, required: Version) -> bool {
        self.major == required.major && self.minor >= required.minor
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A borrowed byte string across the boundary: a pointer and a length, not NUL-terminated.
///
/// Names are UTF-8; the host refuses others with a typed error.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StringView {
    /// First byte (may be null when `len` is 0).
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl StringView {
    /// The empty view.
    pub const EMPTY: StringView = StringView {
        ptr: core::ptr::null(),
        len: 0,
    };

    /// A view of static bytes.
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// A view of a string the caller keeps alive for as long as the view is read.
    pub const fn borrowed(s: &str) -> Self {
        Self {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Whether the view has no bytes.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A generic guest function pointer as stored in a dispatch table (`void (*)(void)` in C).
pub type GuestFn = unsafe extern "C" fn();

/// A table of `extern "C"` functions: the dispatch of a contract.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DispatchTable {
    /// Number of entries in `functions`.
    pub function_count: usize,
    /// The functions, in the order the contract defines (new minors append at the end).
    pub functions: *const GuestFn,
}

impl DispatchTable {
    /// The empty table.
    pub const EMPTY: DispatchTable = DispatchTable {
        function_count: 0,
        functions: core::ptr::null(),
    };

    /// The table of a static `#[repr(C)]` struct of function pointers.
    ///
    /// This is how a Rust guest publishes its functions: declare the contract's table as a
    /// [`FunctionTable`] struct, put one in a `static`, and point the interface at it.
    pub const fn from_static<T: FunctionTable>(table: &'static T) -> Self {
        Self {
            function_count: core::mem::size_of::<T>() / core::mem::size_of::<GuestFn>(),
            functions: (table as *const T).cast::<GuestFn>(),
        }
    }
}

/// A contract's function table as a Rust type: a `#[repr(C)]` struct whose fields are all
/// `extern "C"` function pointers (not `Option`), in the contract's order.
///
/// Hosts view a resolved interface through it (`InterfaceGuard::functions`), guests publish
/// one with [`DispatchTable::from_static`] or [`GuestContractInterface::for_table`]. Define it
/// with [`contract!`](crate::contract), which also computes [`SIGNATURE`](Self::SIGNATURE) from
/// the same definition.
///
/// # Safety
///
/// The implementing type must be `#[repr(C)]`, contain only non-nullable function pointers
/// (so it is a prefix-compatible view of an array of [`GuestFn`]), and each field's signature
/// must be the one the contract defines for that position: the host calls them as declared.
#[allow(unsafe_code)] // Declares the contract only; implementations vouch for it.
pub unsafe trait FunctionTable: Sized + 'static {
    /// Number of functions in the table.
    const LEN: usize = core::mem::size_of::<Self>() / core::mem::size_of::<GuestFn>();

    /// The fingerprint of the functions' signatures (see [`signature`](crate::signature));
    /// 0 for a hand-written table that declares none. When it is not 0, a host view of an
    /// interface whose first [`LEN`](Self::LEN) functions have another fingerprint is refused
    /// (an interface that declares no signature is not checked).
    const SIGNATURE: u64 = 0;

    /// The canonical signature text [`SIGNATURE`](Self::SIGNATURE) hashes (empty if none),
    /// which [`GuestContractInterface::for_table`] publishes for the host to check.
    const SIGNATURE_TEXT: &'static str = "";
}

/// What a guest registers for one contract it provides.
///
/// The host copies this structure at registration; the dispatch table it points to must stay
/// valid for as long as the library is loaded (a `static` in the guest).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GuestContractInterface {
    /// `ContractId::new(contract_name, contract_version.major)`.
    pub contract_id: u64,
    /// The version this guest implements.
    pub contract_version: Version,
    /// How calls are dispatched; [`DISPATCH_FUNCTION_TABLE`] is the only kind today.
    pub dispatch_type: u32,
    /// Creates per-caller instance state, if the contract has any.
    pub create_instance: Option<unsafe extern "C" fn() -> *mut c_void>,
    /// Destroys an instance made by `create_instance`.
    pub destroy_instance: Option<unsafe extern "C" fn(instance: *mut c_void)>,
    /// The functions.
    pub dispatch: DispatchTable,
    /// The functions' canonical signature text (see [`signature`](crate::signature)): one
    /// `name(args)->ret;` per table entry, in order; empty if the guest declares none. The
    /// host fingerprints it and refuses a version whose signatures differ from the ones served
    /// for the same contract and major (on the functions both have).
    pub signature: StringView,
}

impl GuestContractInterface {
    /// An interface with no functions (the content of vacant registry slots).
    pub const EMPTY: GuestContractInterface = GuestContractInterface {
        contract_id: 0,
        contract_version: Version::new(0, 0, 0),
        dispatch_type: DISPATCH_FUNCTION_TABLE,
        create_instance: None,
        destroy_instance: None,
        dispatch: DispatchTable::EMPTY,
        signature: StringView::EMPTY,
    };

    /// A function-table interface without instances and without a signature fingerprint
    /// (prefer [`for_table`](Self::for_table)).
    pub const fn new(id: ContractId, version: Version, dispatch: DispatchTable) -> Self {
        Self {
            contract_id: id.id(),
            contract_version: version,
            dispatch_type: DISPATCH_FUNCTION_TABLE,
            create_instance: None,
            destroy_instance: None,
            dispatch,
            signature: StringView::EMPTY,
        }
    }

    /// The interface of a static table, with the table type's signature fingerprint.
    ///
    /// ```
    /// use polyplug_runtime::abi::{FunctionTable, GuestContractInterface, Version};
    /// use polyplug_runtime::ids::ContractId;
    ///
    /// polyplug_runtime::contract! {
    ///     pub struct Answer {
    ///         pub fn answer() -> u32;
    ///     }
    /// }
    /// extern "C" fn answer() -> u32 {
    ///     42
    /// }
    /// static TABLE: Answer = Answer { answer };
    /// static INTERFACE: GuestContractInterface =
    ///     GuestContractInterface::for_table(ContractId::new("answer", 1), Version::new(1, 0, 0), &TABLE);
    /// assert_eq!(INTERFACE.signature.len, Answer::SIGNATURE_TEXT.len());
    /// ```
    pub const fn for_table<T: FunctionTable>(
        id: ContractId,
        version: Version,
        table: &'static T,
    ) -> Self {
        let mut interface = Self::new(id, version, DispatchTable::from_static(table));
        interface.signature = StringView::from_static(T::SIGNATURE_TEXT.as_bytes());
        interface
    }
}

/// A handle to one registry slot: its index and the generation of its occupant.
///
/// Reloading a contract in place keeps the handle valid (the slot keeps its generation);
/// retiring the slot (unload, or a new version that drops the contract) makes it stale.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestContractHandle {
    /// Slot index.
    pub index: u32,
    /// Generation of the occupant the handle was issued for (never 0 for a real handle).
    pub generation: u32,
}

impl GuestContractHandle {
    /// The null handle, `{u32::MAX, 0}`; it never resolves.
    pub const NULL: GuestContractHandle = GuestContractHandle {
        index: u32::MAX,
        generation: 0,
    };

    /// Whether this is the null handle.
    pub const fn is_null(self) -> bool {
        self.index == u32::MAX && self.generation == 0
    }
}

impl fmt::Display for GuestContractHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}@gen{}", self.index, self.generation)
    }
}

/// Names and version of a plugin's registration.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PluginDescriptor {
    /// The plugin's own name (free-form, UTF-8).
    pub name: StringView,
    /// The contract name; with the major version it determines the contract id.
    pub contract_name: StringView,
    /// The plugin's version.
    pub version: Version,
}

/// The phases a reload (or unload) reports to the host's callback.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReloadPhaseType {
    /// A reload of the bundle is about to start (the host may destroy instances now).
    Preparing = 0,
    /// The new version is live.
    Reloaded = 1,
    /// The reload failed; the old version stays live.
    Failed = 2,
    /// The bundle is about to be unloaded.
    Unloading = 3,
}

/// What the reload callback of a C host receives.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReloadPhase {
    /// The phase.
    pub phase_type: ReloadPhaseType,
    /// FNV-1a-64 of the bundle name.
    pub bundle_id: u64,
    /// The bundle name (valid during the callback).
    pub bundle_name: StringView,
    /// Why: the request's reason, or the error that failed the reload (valid during the
    /// callback).
    pub reason: StringView,
}

/// An opaque counted reference to one interface version (`PolyplugInterfaceRef` in C): the
/// version and its library stay loaded until it is released.
#[repr(C)]
#[derive(Debug)]
pub struct InterfaceRef {
    _private: [u8; 0],
}

/// The runtime's lookups, for guests: find a contract (another plugin's, or a service the host
/// published) and call it through a counted reference. Unlike the rest of [`HostApi`], these
/// stay valid for as long as the guest's library is loaded — copy the structure during
/// `polyplug_init` (the `HostApi` it sits in is valid only during the call).
///
/// Every function returns a [`status`] code (or null); all are thread-safe and lock-free.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HostServices {
    /// Opaque; pass it to `find` and `acquire`.
    pub context: *mut c_void,
    /// The handle of the provider of `contract` at `major`, minor ≥ `min_minor`.
    pub find: Option<
        unsafe extern "C" fn(
            context: *mut c_void,
            contract: StringView,
            major: u32,
            min_minor: u32,
            out_handle: *mut GuestContractHandle,
        ) -> i32,
    >,
    /// A counted reference to the interface behind `handle` (release it).
    pub acquire: Option<
        unsafe extern "C" fn(
            context: *mut c_void,
            handle: GuestContractHandle,
            out_ref: *mut *mut InterfaceRef,
        ) -> i32,
    >,
    /// The interface a reference holds (valid until released); null for null.
    pub interface: Option<
        unsafe extern "C" fn(reference: *const InterfaceRef) -> *const GuestContractInterface,
    >,
    /// Releases a reference (null is ignored).
    pub release: Option<unsafe extern "C" fn(reference: *mut InterfaceRef)>,
}

/// The host's side of `polyplug_init`: where the guest registers its contracts.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HostApi {
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// `sizeof(PolyplugHostApi)`, so later versions can append fields.
    pub struct_size: u32,
    /// Opaque; pass it back in every call.
    pub host_context: *mut c_void,
    /// Registers one contract; returns a [`status`] code. Valid only during `polyplug_init`.
    pub register_contract: Option<
        unsafe extern "C" fn(
            host_context: *mut c_void,
            descriptor: *const PluginDescriptor,
            interface: *const GuestContractInterface,
        ) -> i32,
    >,
    /// Writes a line to the host's log (a [`log_level`] and UTF-8 text).
    pub log:
        Option<unsafe extern "C" fn(host_context: *mut c_void, level: u32, message: StringView)>,
    /// The runtime's lookups, valid while the library is loaded (copy them).
    pub services: HostServices,
}

/// What the guest learns about the bundle it is loaded for.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BundleInitContext {
    /// FNV-1a-64 of the bundle name.
    pub bundle_id: u64,
    /// The bundle name from its manifest.
    pub bundle_name: StringView,
    /// The bundle directory.
    pub bundle_dir: StringView,
    /// The bundle version from its manifest.
    pub bundle_version: Version,
    /// 1 when this load replaces a live version (hot reload), else 0.
    pub is_reload: u32,
}

/// A C host's reload callback: `void (*)(void *user_data, PolyplugReloadPhase phase)`.
pub type ReloadCallback = unsafe extern "C" fn(user_data: *mut c_void, phase: ReloadPhase);

/// A C host's log callback: `void (*)(void *user_data, uint32_t level, PolyplugStringView
/// bundle, PolyplugStringView message)`.
pub type LogCallback = unsafe extern "C" fn(
    user_data: *mut c_void,
    level: u32,
    bundle: StringView,
    message: StringView,
);

/// What a C host passes to `polyplug_runtime_new` (`PolyplugRuntimeOptions`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RuntimeOptions {
    /// `sizeof(PolyplugRuntimeOptions)`.
    pub struct_size: u32,
    /// Non-zero enables hot reload.
    pub hot_reload: u32,
    /// 0 unique, 1 first loaded, 2 highest version.
    pub provider_policy: u32,
    /// Drain timeout in milliseconds (0: the default).
    pub drain_timeout_ms: u32,
    /// Reload callback (may be null); called from whichever thread reloads.
    pub on_reload: Option<ReloadCallback>,
    /// Passed to `on_reload`.
    pub reload_user_data: *mut c_void,
    /// Log callback (may be null); called from whichever thread loads or reloads.
    pub on_log: Option<LogCallback>,
    /// Passed to `on_log`.
    pub log_user_data: *mut c_void,
    /// Where per-version library copies go (a NUL-terminated path); null: a private
    /// temporary directory. Read only if `struct_size` covers it.
    pub copy_dir: *const core::ffi::c_char,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_are_the_documented_ones() {
        let ptr = size_of::<usize>();
        assert_eq!((size_of::<Version>(), align_of::<Version>()), (12, 4));
        assert_eq!(size_of::<StringView>(), 2 * ptr);
        assert_eq!(size_of::<GuestContractHandle>(), 8);
        assert_eq!(align_of::<GuestContractHandle>(), 4);
        assert_eq!(size_of::<DispatchTable>(), 2 * ptr);
        assert_eq!(size_of::<ReloadPhaseType>(), 4);
        if ptr == 8 {
            assert_eq!(size_of::<GuestContractInterface>(), 72);
            assert_eq!(offset_of!(GuestContractInterface, signature), 56);
            assert_eq!(offset_of!(GuestContractInterface, contract_version), 8);
            assert_eq!(offset_of!(GuestContractInterface, dispatch_type), 20);
            assert_eq!(offset_of!(GuestContractInterface, create_instance), 24);
            assert_eq!(offset_of!(GuestContractInterface, dispatch), 40);
            assert_eq!(size_of::<PluginDescriptor>(), 48);
            assert_eq!(size_of::<ReloadPhase>(), 48);
            assert_eq!(offset_of!(ReloadPhase, bundle_id), 8);
            assert_eq!(size_of::<HostApi>(), 72);
            assert_eq!(size_of::<HostServices>(), 40);
            assert_eq!(size_of::<BundleInitContext>(), 56);
            assert_eq!(offset_of!(BundleInitContext, is_reload), 52);
        }
    }

    #[test]
    fn version_negotiation_is_same_major_and_minor_at_least() {
        let have = Version::new(1, 3, 0);
        assert!(have.satisfies(Version::new(1, 0, 0)));
        assert!(have.satisfies(Version::new(1, 3, 9)));
        assert!(!have.satisfies(Version::new(1, 4, 0)));
        assert!(!have.satisfies(Version::new(2, 0, 0)));
        assert!(!have.satisfies(Version::new(0, 3, 0)));
        assert_eq!(have.to_string(), "1.3.0");
    }

    #[test]
    fn null_handle_is_max_index_and_generation_zero() {
        assert!(GuestContractHandle::NULL.is_null());
        assert_eq!(GuestContractHandle::NULL.index, u32::MAX);
        assert!(
            !GuestContractHandle {
                index: 0,
                generation: 0
            }
            .is_null()
        );
    }
}
