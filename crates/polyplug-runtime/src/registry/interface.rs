//! What readers get from the registry: a slot's immutable [`Interface`], the
//! [`InterfaceGuard`] that keeps it (and its library) alive while held, the
//! [`OwnedInterface`] that keeps it without borrowing the registry, and the
//! [`CachedInterface`] that re-resolves only after the registry's revision changes.

use super::*;

/// A registry slot's occupant: a copy of a guest's interface, its names, and what keeps its
/// code loaded. Reached through an [`InterfaceGuard`], an [`OwnedInterface`] or a
/// [`CachedInterface`]; derefs to the [`GuestContractInterface`].
pub struct Interface {
    pub(crate) generation: u32,
    pub(crate) index: u32,
    pub(crate) occupied: bool,
    pub(crate) interface: GuestContractInterface,
    pub(super) contract_name: Arc<str>,
    pub(super) bundle: BundleId,
    pub(super) bundle_name: Arc<str>,
    pub(super) plugin_version: Version,
    /// The signature fingerprint of each prefix of the table: `signature[k]` covers functions
    /// `0..=k` (see [`crate::signature`]); empty if the provider declares none.
    pub(crate) signature: Signature,
    /// The fingerprint of the whole table (the last prefix; 0 for none), kept inline so the
    /// common typed view — a table type as long as the table — checks it without reaching
    /// into `signature`.
    pub(crate) signature_full: u64,
    pub(super) _keep_alive: Option<KeepAlive>,
}

/// Prefix fingerprints of an interface's functions (see [`Interface`]).
pub(crate) type Signature = Arc<[u64]>;

impl Interface {
    pub(super) fn vacant(index: u32, generation: u32) -> Self {
        Self {
            generation,
            index,
            occupied: false,
            interface: GuestContractInterface::EMPTY,
            contract_name: Arc::from(""),
            bundle: BundleId::from_u64(0),
            bundle_name: Arc::from(""),
            plugin_version: Version::default(),
            signature: Arc::from([]),
            signature_full: 0,
            _keep_alive: None,
        }
    }

    /// The fingerprint of the functions' signatures (see [`crate::signature`]), or 0 if the
    /// provider declares none.
    pub fn signature(&self) -> u64 {
        self.signature_full
    }

    /// Whether two providers' signatures agree on the functions both have: both declare
    /// none, or the fingerprints of their common prefix are equal.
    pub(crate) fn signature_compatible(a: &[u64], b: &[u64]) -> bool {
        match (a.len(), b.len()) {
            (0, 0) => true,
            (0, _) | (_, 0) => false,
            (x, y) => a[x.min(y) - 1] == b[x.min(y) - 1],
        }
    }

    /// The contract name.
    pub fn contract_name(&self) -> &str {
        &self.contract_name
    }

    /// The contract id.
    pub fn contract_id(&self) -> ContractId {
        ContractId::from_u64(self.interface.contract_id)
    }

    /// The contract version this provider implements.
    pub fn version(&self) -> Version {
        self.interface.contract_version
    }

    /// The version of the plugin (from its descriptor).
    pub fn plugin_version(&self) -> Version {
        self.plugin_version
    }

    /// The providing bundle.
    pub fn bundle(&self) -> BundleId {
        self.bundle
    }

    /// The providing bundle's name.
    pub fn bundle_name(&self) -> &str {
        &self.bundle_name
    }

    /// The handle of this interface's slot.
    pub fn handle(&self) -> GuestContractHandle {
        GuestContractHandle {
            index: self.index,
            generation: self.generation,
        }
    }

    /// Number of functions in the dispatch table.
    pub fn function_count(&self) -> usize {
        self.interface.dispatch.function_count
    }

    /// The dispatch table viewed as `T`, or `None` if the table has fewer functions than `T`
    /// (an older minor version) or is not a function table.
    ///
    /// The reference lives as long as the guard it came from, which keeps the library loaded:
    /// calling through it costs what a call through a function pointer costs.
    #[inline]
    pub fn functions<T: FunctionTable>(&self) -> Option<&T> {
        crate::sys::abi::table_view::<T>(self)
    }
}

impl Deref for Interface {
    type Target = GuestContractInterface;
    #[inline]
    fn deref(&self) -> &GuestContractInterface {
        &self.interface
    }
}

impl fmt::Debug for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interface")
            .field("contract", &self.contract_name)
            .field("version", &self.interface.contract_version)
            .field("bundle", &self.bundle_name)
            .field("handle", &self.handle())
            .field("functions", &self.interface.dispatch.function_count)
            .finish()
    }
}

/// A resolved interface, valid (and its library loaded) while the guard lives, whatever
/// reloads happen meanwhile. Derefs to [`Interface`], and through it to the
/// [`GuestContractInterface`].
#[must_use = "a guard keeps a version alive only while held; use it or drop it"]
pub struct InterfaceGuard<'r> {
    pub(super) entry: CellGuard<'r, Interface>,
    pub(super) _registry: PhantomData<&'r Registry>,
}

impl InterfaceGuard<'_> {
    /// An owned, `Send` reference to the same interface (one reference-count increment).
    pub fn to_owned_interface(&self) -> OwnedInterface {
        OwnedInterface(Arc::clone(&self.entry))
    }
}

impl Deref for InterfaceGuard<'_> {
    type Target = Interface;
    #[inline]
    fn deref(&self) -> &Interface {
        &self.entry
    }
}

impl fmt::Debug for InterfaceGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InterfaceGuard").field(&**self).finish()
    }
}

/// An interface held by reference count: `Send`, `Clone`, and it keeps its library loaded
/// until dropped. Prefer [`InterfaceGuard`] for short reads. (If the last reference to an old
/// version outlives its runtime, dropping it is what closes that library.)
#[derive(Clone)]
#[must_use = "an owned interface keeps a version alive only while held"]
pub struct OwnedInterface(Arc<Interface>);

impl OwnedInterface {
    /// Whether `self` and `other` are the same occupant (same swap), not merely the same slot.
    pub fn same_as(&self, other: &OwnedInterface) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for OwnedInterface {
    type Target = Interface;
    fn deref(&self) -> &Interface {
        &self.0
    }
}

impl fmt::Debug for OwnedInterface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OwnedInterface").field(&*self.0).finish()
    }
}

/// A contract lookup kept across calls: one acquire load of the registry's revision counter
/// per [`get`](Self::get), and a new lookup only after the registry changed.
///
/// It holds the interface by reference count, so it keeps an old version's library loaded
/// until its next `get` after a reload (the reload report counts it as a holder).
#[derive(Debug)]
#[must_use = "a cache does nothing until `get` is called"]
pub struct CachedInterface<'c> {
    contract: ContractRef<'c>,
    entry: Option<OwnedInterface>,
    seen: u64,
}

impl<'c> CachedInterface<'c> {
    /// A cache for `contract`, empty until the first `get`.
    pub fn new(contract: ContractRef<'c>) -> Self {
        Self {
            contract,
            entry: None,
            seen: 0,
        }
    }

    /// The current provider of the contract.
    ///
    /// # Errors
    ///
    /// As [`Registry::find`]; the cache is emptied (and the old library released) on error.
    pub fn get(&mut self, registry: &Registry) -> Result<&Interface, LookupError> {
        // The revision is read *before* the lookup: a reader that sees a writer's bump also
        // sees what the writer published before bumping, so the pair (entry, seen) is never
        // newer in `seen` than in `entry`.
        let now = registry.revision();
        if self.entry.is_none() || self.seen != now {
            match registry.find(&self.contract) {
                Ok(guard) => {
                    self.entry = Some(guard.to_owned_interface());
                    self.seen = now;
                }
                Err(e) => {
                    self.entry = None;
                    return Err(e);
                }
            }
        }
        match &self.entry {
            Some(entry) => Ok(entry),
            None => Err(LookupError::NotFound {
                contract: self.contract.to_string(),
            }),
        }
    }

    /// A deliberately wrong `get` for the loom suite's negative control: it reads the revision
    /// *after* the lookup, so it can pair an old interface with a new revision and keep serving
    /// the old version forever.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn get_reading_revision_late(
        &mut self,
        registry: &Registry,
    ) -> Result<&Interface, LookupError> {
        if self.entry.is_none() || self.seen != registry.revision() {
            let guard = registry.find(&self.contract)?;
            self.entry = Some(guard.to_owned_interface());
            self.seen = registry.revision();
        }
        match &self.entry {
            Some(entry) => Ok(entry),
            None => Err(LookupError::NotFound {
                contract: self.contract.to_string(),
            }),
        }
    }
}
