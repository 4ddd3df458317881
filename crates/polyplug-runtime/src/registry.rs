//! The contract registry: slots read without locks, generation-checked handles, a find index,
//! and reload transactions that swap interfaces in place.
//!
//! # Model
//!
//! Every registered contract occupies a **slot**. A slot holds an immutable [`Interface`]
//! (a copy of the guest's [`GuestContractInterface`] plus its names, its bundle and what keeps
//! its library loaded) behind an atomically replaceable `Arc` read through hazard pointers (no
//! read-modify-write on the read path; the private `sys::hazard` module has the protocol). A
//! [`GuestContractHandle`] names a slot and the **generation** of its occupant:
//!
//! - reading ([`Registry::resolve`], [`Registry::find`]) is a few atomic loads — no lock, no
//!   allocation, no waiting for writers, ever;
//! - a hot reload **swaps** a new interface into the *same* slot with the *same* generation, so
//!   every handle and every find keeps working and now reaches the new version;
//! - **retiring** a slot (unload, or a new version that no longer provides the contract) makes
//!   its handles stale ([`RegistryError::StaleHandle`]); a reused slot gets a new generation.
//!
//! An [`InterfaceGuard`] returned by a read keeps the interface it resolved — and the library
//! behind it — alive for as long as it is held, even if a reload swaps the slot meanwhile
//! (the equivalent of an epoch pin): the old library is released only after the last guard is
//! dropped. Callers that keep an interface across calls use a [`CachedInterface`], which polls
//! the registry's revision counter (one acquire load) and re-resolves only after a change.
//!
//! # Writers
//!
//! Writers serialize on one mutex and publish only what changed: a swap replaces one slot
//! (O(1)); the find index (contract id → providers and the policy's choice) is updated in
//! place for exactly the contracts whose providers, or whose providers' versions, changed —
//! `O(k · p)` for `k` such contracts with `p` providers each, amortized, however many
//! contracts the registry holds — and a reload that keeps its contracts and their versions
//! republishes nothing but its slots. A writer republishes a contract's entry before it
//! vacates a retired slot, so a lookup that meets a vacated slot retries on the new choice.
//! The index is an open-addressing table of per-contract cells: `find` loads the table (one
//! hazard-protected load) and reads the contract's choice with one acquire load; the private
//! `find_index` module documents the layout and the ordering.
//!
//! A reload runs as a [`ReloadTransaction`]: it first takes the bundle's **reload gate** (so
//! two reloads of one bundle never overlap, while reloads of different bundles run in
//! parallel), stages the new version's registrations (invisible to readers), commits them in
//! one critical section (swap what both versions provide, publish what is new, retire what was
//! dropped), and can roll the commit back (post-swap validation) until it is finished.
//!
//! # Several providers
//!
//! Different bundles may provide the same contract; which one a [`Registry::find`] returns is
//! decided by an explicit [`ProviderPolicy`] — by default none is chosen silently and the
//! lookup fails with [`LookupError::Ambiguous`]. The same bundle registering a contract twice
//! is [`RegistryError::DuplicateProvider`]; a second name hashing to an existing contract id
//! is [`RegistryError::ContractIdCollision`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use crate::abi::{
    DISPATCH_FUNCTION_TABLE, FunctionTable, GuestContractHandle, GuestContractInterface,
    MAX_FUNCTIONS, Version,
};
use crate::ids::{BundleId, ContractId, ContractRef};
use crate::sync::{ArcCell, AtomicU64, CellGuard, Condvar, Mutex, Ordering};
use platform_primitives::sync::MutexGuard;

mod error;
mod find_index;
mod interface;
mod transaction;

pub use error::{LookupError, RegistryError};
pub(crate) use interface::Signature;
pub use interface::{CachedInterface, Interface, InterfaceGuard, OwnedInterface};
pub use transaction::{ReloadTransaction, SwapSummary};

use find_index::{Choice, FindIndex, IndexBook, IndexEntry, Selection};

/// Slots per segment of the first segment; segment `k` holds `SEGMENT_BASE << k` slots.
#[cfg(not(feature = "loom"))]
const SEGMENT_BASE: usize = 64;
/// Under loom every slot is a modelled mutex: keep the first segment small.
#[cfg(feature = "loom")]
const SEGMENT_BASE: usize = 4;
/// Segments: enough for every index below `u32::MAX - 63` (the null handle's index is out).
const SEGMENTS: usize = 26;
/// Number of slot indices the table can hold.
const CAPACITY: u64 = (SEGMENT_BASE as u64) * ((1u64 << SEGMENTS) - 1);

/// What keeps a registered interface's code loaded (the runtime passes its library).
pub type KeepAlive = Arc<dyn Any + Send + Sync>;

/// How [`Registry::find`] chooses among several bundles providing one contract.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProviderPolicy {
    /// Only a single provider is ever chosen: with two or more, lookups fail with
    /// [`LookupError::Ambiguous`] (nothing depends silently on load order).
    #[default]
    Unique,
    /// The provider registered first.
    FirstLoaded,
    /// The provider with the highest contract version; the first registered among equals.
    HighestVersion,
    /// The first bundle of this list that provides the contract; with none of them present,
    /// as `Unique`.
    Prefer(Vec<String>),
}

/// One provider of a contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInfo {
    /// The bundle.
    pub bundle: BundleId,
    /// The bundle name.
    pub bundle_name: String,
    /// Its slot.
    pub handle: GuestContractHandle,
    /// The contract version it provides.
    pub version: Version,
}

/// Fields of a registration (what a guest's descriptor and interface say, plus the bundle).
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    /// The contract name.
    pub contract_name: &'a str,
    /// The providing bundle.
    pub bundle: BundleId,
    /// The bundle's name (for lookups by bundle and for messages).
    pub bundle_name: &'a str,
    /// The plugin's own version (from its descriptor).
    pub plugin_version: Version,
    /// The interface; its `contract_id` is the slot's contract.
    pub interface: GuestContractInterface,
}

/// A registration waiting in a transaction.
struct Staged {
    contract: ContractId,
    name: Arc<str>,
    plugin_version: Version,
    interface: GuestContractInterface,
    signature: Signature,
    keep_alive: Option<KeepAlive>,
}

/// The per-bundle reload gate: a flag under a mutex, and a condition variable to wait on.
struct Gate {
    busy: Mutex<bool>,
    freed: Condvar,
}

impl Gate {
    fn new() -> Self {
        Self {
            busy: Mutex::new(false),
            freed: Condvar::new(),
        }
    }

    /// Takes the gate; `false` if it is held and `wait` is false.
    fn acquire(&self, wait: bool) -> bool {
        let mut busy = self.busy.lock();
        while *busy {
            if !wait {
                return false;
            }
            self.freed.wait(&mut busy);
        }
        *busy = true;
        true
    }

    fn release(&self) {
        *self.busy.lock() = false;
        self.freed.notify_all();
    }
}

struct SlotInfo {
    contract: ContractId,
    bundle: BundleId,
    seq: u64,
    version: Version,
}

struct ContractRecord {
    name: Arc<str>,
    /// Slot indices of the providers.
    providers: Vec<u32>,
}

struct BundleRecord {
    name: Arc<str>,
    gate: Arc<Gate>,
    contracts: HashMap<ContractId, u32>,
}

#[derive(Default)]
struct WriterState {
    next_index: u32,
    free: Vec<u32>,
    slot_info: Vec<Option<SlotInfo>>,
    contracts: HashMap<ContractId, ContractRecord>,
    bundles: HashMap<BundleId, BundleRecord>,
    seq: u64,
    index: IndexBook,
}

/// The writer lock for writes that swap cells. What those swaps replaced is reclaimed once the
/// lock is released, so its destructors (a plugin library's close among them) never run under
/// it.
struct WriteLock<'a>(Option<MutexGuard<'a, WriterState>>);

impl Deref for WriteLock<'_> {
    type Target = WriterState;
    fn deref(&self) -> &WriterState {
        self.0.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for WriteLock<'_> {
    fn deref_mut(&mut self) -> &mut WriterState {
        self.0.as_mut().expect("held until dropped")
    }
}

impl Drop for WriteLock<'_> {
    fn drop(&mut self) {
        drop(self.0.take());
        crate::sync::reclaim();
    }
}

/// Segmented slot storage: segments are allocated once (under the writer mutex) and never
/// move, so a reader reaches a slot with one acquire load and an index.
struct SlotTable {
    segments: [OnceLock<Box<[ArcCell<Interface>]>>; SEGMENTS],
}

impl SlotTable {
    fn new() -> Self {
        Self {
            segments: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    #[inline]
    fn locate(index: u32) -> Option<(usize, usize)> {
        let n = index as usize / SEGMENT_BASE + 1;
        let segment = (usize::BITS - 1 - n.leading_zeros()) as usize;
        if segment >= SEGMENTS {
            return None;
        }
        let start = SEGMENT_BASE * ((1usize << segment) - 1);
        Some((segment, index as usize - start))
    }

    #[inline]
    fn get(&self, index: u32) -> Option<&ArcCell<Interface>> {
        let (segment, offset) = Self::locate(index)?;
        self.segments[segment].get()?.get(offset)
    }

    /// The slot at `index`, allocating its segment (writers only).
    fn get_or_create(&self, index: u32) -> Option<&ArcCell<Interface>> {
        let (segment, offset) = Self::locate(index)?;
        let cells = self.segments[segment].get_or_init(|| {
            let start = SEGMENT_BASE * ((1usize << segment) - 1);
            (0..SEGMENT_BASE << segment)
                .map(|i| ArcCell::new(Arc::new(Interface::vacant((start + i) as u32, 0))))
                .collect()
        });
        cells.get(offset)
    }
}

/// The contract registry. See the [module documentation](self).
pub struct Registry {
    slots: SlotTable,
    index: FindIndex,
    revision: AtomicU64,
    writer: Mutex<WriterState>,
    policy: ProviderPolicy,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("policy", &self.policy)
            .field("revision", &self.revision())
            .field("contracts", &self.contract_count())
            .finish()
    }
}

impl Registry {
    /// An empty registry with the default policy ([`ProviderPolicy::Unique`]).
    pub fn new() -> Self {
        Self::with_policy(ProviderPolicy::default())
    }

    /// An empty registry choosing among several providers with `policy`.
    pub fn with_policy(policy: ProviderPolicy) -> Self {
        Self {
            slots: SlotTable::new(),
            index: FindIndex::new(),
            revision: AtomicU64::new(0),
            writer: Mutex::new(WriterState::default()),
            policy,
        }
    }

    /// The provider policy.
    pub fn policy(&self) -> &ProviderPolicy {
        &self.policy
    }

    /// A counter that changes whenever anything a lookup could return changes (one acquire
    /// load; see [`CachedInterface`]).
    #[inline]
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// The writer lock, for writes that swap cells (see [`WriteLock`]).
    fn write(&self) -> WriteLock<'_> {
        WriteLock(Some(self.writer.lock()))
    }

    /// Frees what earlier writes replaced or retired (interfaces, and what keeps their code
    /// loaded) once the last guard on it is gone; returns how many still wait for a guard.
    /// Every write that swaps a slot does this after releasing its lock, and
    /// [`Runtime`](crate::Runtime) does it while draining a reload or unload; call it after
    /// dropping a guard that outlived the last write if nothing else will write soon.
    ///
    /// ```
    /// use polyplug_runtime::Registry;
    ///
    /// let registry = Registry::new();
    /// assert_eq!(registry.reclaim(), 0);
    /// ```
    pub fn reclaim(&self) -> usize {
        crate::sync::reclaim()
    }

    /// The interface in `handle`'s slot, if the handle is current.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidHandle`] for an index out of range, a never-issued generation
    /// or the null handle; [`RegistryError::StaleHandle`] once the contract was retired.
    #[inline(always)]
    pub fn resolve(
        &self,
        handle: GuestContractHandle,
    ) -> Result<InterfaceGuard<'_>, RegistryError> {
        let Some(cell) = self.slots.get(handle.index) else {
            return Err(RegistryError::InvalidHandle { handle });
        };
        let entry = cell.load();
        if entry.generation == handle.generation && entry.occupied {
            return Ok(InterfaceGuard {
                entry,
                _registry: PhantomData,
            });
        }
        Err(Self::classify(handle, &entry))
    }

    #[cold]
    fn classify(handle: GuestContractHandle, current: &Interface) -> RegistryError {
        if handle.generation == 0 || handle.generation > current.generation {
            RegistryError::InvalidHandle { handle }
        } else {
            RegistryError::StaleHandle { handle }
        }
    }

    /// The provider of `contract` that the [`ProviderPolicy`] chooses, if its version satisfies
    /// the request (same major, minor ≥).
    ///
    /// # Errors
    ///
    /// [`LookupError::NotFound`], [`LookupError::Ambiguous`] or
    /// [`LookupError::IncompatibleVersion`].
    #[inline]
    pub fn find(&self, contract: &ContractRef<'_>) -> Result<InterfaceGuard<'_>, LookupError> {
        // A writer retiring the chosen slot republishes the contract's entry before vacating
        // the slot, so a lookup that meets a vacated slot retries on a newer choice.
        let id = contract.id().id();
        for _ in 0..8 {
            let handle = match self.index.choice(id) {
                Choice::One(handle) => handle,
                Choice::Absent => break,
                Choice::Ambiguous => match self.ambiguous(contract) {
                    Some(error) => return Err(error),
                    None => continue,
                },
            };
            if let Ok(guard) = self.resolve(handle) {
                return Self::check(contract, guard);
            }
        }
        Err(LookupError::NotFound {
            contract: contract.to_string(),
        })
    }

    /// The `Ambiguous` error for `contract`, naming its providers; `None` if the contract is
    /// no longer ambiguous (a writer changed it since its choice was read: look again).
    #[cold]
    fn ambiguous(&self, contract: &ContractRef<'_>) -> Option<LookupError> {
        let entry = self.index.entry(contract.id().id())?;
        matches!(entry.selection, Selection::Ambiguous).then(|| LookupError::Ambiguous {
            contract: contract.to_string(),
            providers: entry
                .providers
                .iter()
                .map(|p| p.bundle_name.clone())
                .collect(),
        })
    }

    /// The provider of `contract` in bundle `bundle`, whatever the policy.
    ///
    /// # Errors
    ///
    /// As [`find`](Self::find) (never `Ambiguous`).
    pub fn find_from(
        &self,
        contract: &ContractRef<'_>,
        bundle: BundleId,
    ) -> Result<InterfaceGuard<'_>, LookupError> {
        for _ in 0..8 {
            let handle = {
                let entry = self.index.entry(contract.id().id());
                let found = entry
                    .as_deref()
                    .and_then(|e| e.providers.iter().find(|p| p.bundle == bundle));
                match found {
                    Some(p) => p.handle,
                    None => break,
                }
            };
            if let Ok(guard) = self.resolve(handle) {
                return Self::check(contract, guard);
            }
        }
        Err(LookupError::NotFound {
            contract: contract.to_string(),
        })
    }

    #[inline]
    fn check<'r>(
        contract: &ContractRef<'_>,
        guard: InterfaceGuard<'r>,
    ) -> Result<InterfaceGuard<'r>, LookupError> {
        if &*guard.contract_name != contract.name() {
            // Same id, another name: a collision between the caller's name and ours.
            return Err(LookupError::NotFound {
                contract: contract.to_string(),
            });
        }
        if !guard.version().satisfies(contract.required()) {
            return Err(LookupError::IncompatibleVersion {
                contract: contract.to_string(),
                found: guard.version(),
                required: contract.required(),
            });
        }
        Ok(guard)
    }

    /// The handle of the provider [`find`](Self::find) would return.
    ///
    /// # Errors
    ///
    /// As [`find`](Self::find).
    pub fn handle_of(
        &self,
        contract: &ContractRef<'_>,
    ) -> Result<GuestContractHandle, LookupError> {
        self.find(contract).map(|g| g.handle())
    }

    /// Every provider of `contract`'s id, in registration order.
    pub fn providers(&self, contract: ContractId) -> Vec<ProviderInfo> {
        self.index
            .entry(contract.id())
            .map(|e| e.providers.to_vec())
            .unwrap_or_default()
    }

    /// The contracts bundle `bundle` provides now, by name, with their handles.
    pub fn bundle_contracts(&self, bundle: BundleId) -> Vec<(String, GuestContractHandle)> {
        let w = self.writer.lock();
        let Some(record) = w.bundles.get(&bundle) else {
            return Vec::new();
        };
        let mut out: Vec<(String, GuestContractHandle)> = record
            .contracts
            .values()
            .filter_map(|&index| {
                let entry = self.slots.get(index)?.load_full();
                entry
                    .occupied
                    .then(|| (entry.contract_name.to_string(), entry.handle()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Number of contracts with at least one provider (takes the writer mutex briefly; not a
    /// lookup path).
    pub fn contract_count(&self) -> usize {
        self.writer.lock().index.live()
    }

    /// Registers one contract directly (outside any reload transaction).
    ///
    /// # Errors
    ///
    /// [`RegistryError::DuplicateProvider`], [`RegistryError::ContractIdCollision`],
    /// [`RegistryError::InvalidInterface`] or [`RegistryError::Full`].
    ///
    /// # Safety
    ///
    /// `registration.interface.dispatch` must point to `function_count` non-null function
    /// pointers with the contract's signatures, valid for as long as this registry — or any
    /// guard, owned interface or cache obtained from it — may hand the interface out (for a
    /// guest library: until it is unloaded; for Rust code: `static`s); and
    /// `registration.interface.signature` must be empty or point to `len` readable bytes
    /// during the call.
    #[allow(unsafe_code)] // Declares the contract only; no unsafe operation happens here.
    pub unsafe fn register(
        &self,
        registration: Registration<'_>,
    ) -> Result<GuestContractHandle, RegistryError> {
        self.register_entry(registration, None)
    }

    /// Registers a Rust function table as the interface of `contract_name` (safe: the table is
    /// `'static` and its type vouches for its contents).
    ///
    /// # Errors
    ///
    /// As [`register`](Self::register).
    pub fn register_table<T: FunctionTable>(
        &self,
        contract_name: &str,
        version: Version,
        bundle: BundleId,
        bundle_name: &str,
        table: &'static T,
    ) -> Result<GuestContractHandle, RegistryError> {
        let interface = GuestContractInterface::for_table(
            ContractId::new(contract_name, version.major),
            version,
            table,
        );
        let registration = Registration {
            contract_name,
            bundle,
            bundle_name,
            plugin_version: version,
            interface,
        };
        self.register_entry(registration, None)
    }

    /// [`register`](Self::register) with something keeping the code alive; the caller
    /// vouches for the interface as `register`'s safety section says.
    pub(crate) fn register_entry(
        &self,
        registration: Registration<'_>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<GuestContractHandle, RegistryError> {
        let signature = check_interface(registration.contract_name, &registration.interface)?;
        let contract = ContractId::from_u64(registration.interface.contract_id);
        let mut w = self.write();
        check_collision(&w, contract, registration.contract_name)?;
        let bundle = w
            .bundles
            .entry(registration.bundle)
            .or_insert_with(|| BundleRecord {
                name: Arc::from(registration.bundle_name),
                gate: Arc::new(Gate::new()),
                contracts: HashMap::new(),
            });
        if bundle.contracts.contains_key(&contract) {
            return Err(RegistryError::DuplicateProvider {
                contract: registration.contract_name.to_owned(),
                bundle: bundle.name.to_string(),
            });
        }
        let bundle_name = Arc::clone(&bundle.name);
        let staged = Staged {
            contract,
            name: Arc::from(registration.contract_name),
            plugin_version: registration.plugin_version,
            interface: registration.interface,
            signature,
            keep_alive,
        };
        let handle = self.occupy(&mut w, registration.bundle, bundle_name, staged)?;
        self.republish(&mut w, &[contract]);
        self.revision.fetch_add(1, Ordering::Release);
        Ok(handle)
    }

    /// Replaces the interface in slot `index` in place: the generation — and so every handle —
    /// stays valid and now reaches `interface`. Guards taken before keep the old one.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidHandle`] for a vacant or unknown slot,
    /// [`RegistryError::ContractMismatch`] if `interface` is another contract's.
    ///
    /// # Safety
    ///
    /// As for [`register`](Self::register).
    #[allow(unsafe_code)] // Declares the contract only; no unsafe operation happens here.
    pub unsafe fn swap_interface(
        &self,
        index: u32,
        interface: &GuestContractInterface,
    ) -> Result<(), RegistryError> {
        self.swap_entry(index, *interface, None).map(drop)
    }

    fn swap_entry(
        &self,
        index: u32,
        interface: GuestContractInterface,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Arc<Interface>, RegistryError> {
        let mut w = self.write();
        let invalid = RegistryError::InvalidHandle {
            handle: GuestContractHandle {
                index,
                generation: 0,
            },
        };
        let Some(cell) = self.slots.get(index) else {
            return Err(invalid);
        };
        let current = cell.load_full();
        if !current.occupied {
            return Err(invalid);
        }
        let signature = check_interface(&current.contract_name, &interface)?;
        if interface.contract_id != current.interface.contract_id {
            return Err(RegistryError::ContractMismatch {
                index,
                held: current.contract_id(),
                given: ContractId::from_u64(interface.contract_id),
            });
        }
        let next = Interface {
            generation: current.generation,
            index,
            occupied: true,
            interface,
            contract_name: Arc::clone(&current.contract_name),
            bundle: current.bundle,
            bundle_name: Arc::clone(&current.bundle_name),
            plugin_version: current.plugin_version,
            signature_full: signature.last().copied().unwrap_or(0),
            signature,
            _keep_alive: keep_alive,
        };
        let old = cell.swap(Arc::new(next));
        let version_changed = old.interface.contract_version != interface.contract_version;
        if let Some(Some(info)) = w.slot_info.get_mut(index as usize) {
            info.version = interface.contract_version;
        }
        if version_changed {
            self.republish(&mut w, &[current.contract_id()]);
        }
        self.revision.fetch_add(1, Ordering::Release);
        Ok(old)
    }

    /// Retires `handle`'s slot: its handles become stale and lookups stop finding it.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    pub fn unregister(&self, handle: GuestContractHandle) -> Result<(), RegistryError> {
        self.retire(handle, false)
    }

    /// A deliberately wrong `unregister` for the loom suite's negative control: it vacates the
    /// slot before republishing the contract's entry, so a lookup can keep meeting the vacated
    /// slot while another provider is there all along.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn unregister_vacating_first(
        &self,
        handle: GuestContractHandle,
    ) -> Result<(), RegistryError> {
        self.retire(handle, true)
    }

    /// [`unregister`](Self::unregister); `vacate_first` only for the loom negative control.
    fn retire(&self, handle: GuestContractHandle, vacate_first: bool) -> Result<(), RegistryError> {
        let mut w = self.write();
        let Some(cell) = self.slots.get(handle.index) else {
            return Err(RegistryError::InvalidHandle { handle });
        };
        let current = cell.load_full();
        if !(current.occupied && current.generation == handle.generation) {
            return Err(Self::classify(handle, &current));
        }
        let info = w
            .slot_info
            .get_mut(handle.index as usize)
            .and_then(Option::take);
        if let Some(info) = info {
            forget_provider(&mut w, info.contract, info.bundle, handle.index);
        }
        let vacate = || {
            drop(cell.swap(Arc::new(Interface::vacant(
                handle.index,
                current.generation,
            ))));
        };
        if vacate_first {
            vacate();
            self.republish(&mut w, &[current.contract_id()]);
        } else {
            // Before vacating: a lookup that still meets the retired slot retries on its new
            // entry.
            self.republish(&mut w, &[current.contract_id()]);
            vacate();
        }
        release_index(&mut w, handle.index, current.generation);
        self.revision.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Makes this registry's find-index rebuilds deliberately wrong, for the loom suite's
    /// negative control: the new table is published empty, then filled.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn publish_index_rebuilds_before_filling(&self) {
        self.writer.lock().index.publish_before_fill = true;
    }

    /// Opens a reload (or first load, or unload) transaction for `bundle`, waiting for the
    /// bundle's reload gate if `wait`, failing with [`RegistryError::ReloadInProgress`]
    /// otherwise. Transactions of different bundles never wait for each other.
    ///
    /// # Errors
    ///
    /// [`RegistryError::ReloadInProgress`] when `wait` is false and the gate is held.
    pub fn begin_reload(
        &self,
        bundle: BundleId,
        bundle_name: &str,
        wait: bool,
    ) -> Result<ReloadTransaction<'_>, RegistryError> {
        loop {
            let gate = {
                let mut w = self.writer.lock();
                let record = w.bundles.entry(bundle).or_insert_with(|| BundleRecord {
                    name: Arc::from(bundle_name),
                    gate: Arc::new(Gate::new()),
                    contracts: HashMap::new(),
                });
                Arc::clone(&record.gate)
            };
            if !gate.acquire(wait) {
                return Err(RegistryError::ReloadInProgress {
                    bundle: bundle_name.to_owned(),
                });
            }
            let mut w = self.writer.lock();
            let current = w.bundles.entry(bundle).or_insert_with(|| BundleRecord {
                name: Arc::from(bundle_name),
                gate: Arc::clone(&gate),
                contracts: HashMap::new(),
            });
            if Arc::ptr_eq(&current.gate, &gate) {
                let name = Arc::clone(&current.name);
                drop(w);
                return Ok(ReloadTransaction {
                    registry: self,
                    bundle,
                    bundle_name: name,
                    gate,
                    staged: Vec::new(),
                    committed: None,
                    remove_bundle: false,
                });
            }
            // The bundle was removed and recreated while we waited: wait on the new gate.
            drop(w);
            gate.release();
        }
    }

    /// A transaction without its gate, for the loom suite's negative control: two of them can
    /// overlap, which the real `begin_reload` makes impossible.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn begin_reload_ungated(
        &self,
        bundle: BundleId,
        bundle_name: &str,
    ) -> ReloadTransaction<'_> {
        let gate = Arc::new(Gate::new());
        gate.acquire(false);
        {
            let mut w = self.writer.lock();
            w.bundles.entry(bundle).or_insert_with(|| BundleRecord {
                name: Arc::from(bundle_name),
                gate: Arc::new(Gate::new()),
                contracts: HashMap::new(),
            });
        }
        ReloadTransaction {
            registry: self,
            bundle,
            bundle_name: Arc::from(bundle_name),
            gate,
            staged: Vec::new(),
            committed: None,
            remove_bundle: false,
        }
    }

    /// Allocates a slot for `staged` and makes it visible (the caller publishes the index).
    fn occupy(
        &self,
        w: &mut WriterState,
        bundle: BundleId,
        bundle_name: Arc<str>,
        staged: Staged,
    ) -> Result<GuestContractHandle, RegistryError> {
        let index = match w.free.pop() {
            Some(index) => index,
            None => {
                if u64::from(w.next_index) >= CAPACITY {
                    return Err(RegistryError::Full {
                        contract: staged.name.to_string(),
                    });
                }
                let index = w.next_index;
                w.next_index += 1;
                index
            }
        };
        let Some(cell) = self.slots.get_or_create(index) else {
            return Err(RegistryError::Full {
                contract: staged.name.to_string(),
            });
        };
        let generation = cell.load().generation + 1;
        w.seq += 1;
        let info = SlotInfo {
            contract: staged.contract,
            bundle,
            seq: w.seq,
            version: staged.interface.contract_version,
        };
        if w.slot_info.len() <= index as usize {
            w.slot_info.resize_with(index as usize + 1, || None);
        }
        w.slot_info[index as usize] = Some(info);
        w.contracts
            .entry(staged.contract)
            .or_insert_with(|| ContractRecord {
                name: Arc::clone(&staged.name),
                providers: Vec::new(),
            })
            .providers
            .push(index);
        if let Some(record) = w.bundles.get_mut(&bundle) {
            record.contracts.insert(staged.contract, index);
        }
        let entry = Interface {
            generation,
            index,
            occupied: true,
            interface: staged.interface,
            contract_name: staged.name,
            bundle,
            bundle_name,
            plugin_version: staged.plugin_version,
            signature_full: staged.signature.last().copied().unwrap_or(0),
            signature: staged.signature,
            _keep_alive: staged.keep_alive,
        };
        drop(cell.swap(Arc::new(entry)));
        Ok(GuestContractHandle { index, generation })
    }

    /// Republishes the find-index entries of the `changed` contracts — only theirs: each is
    /// rebuilt from the writer state (its providers in registration order, the policy's
    /// choice) and stored in place, in `O(providers)`. Every writer passes each contract whose
    /// set of providers, or one of whose providers' versions, it changed; a contract missing
    /// here would keep a stale entry.
    fn republish(&self, w: &mut WriterState, changed: &[ContractId]) {
        for &contract in changed {
            let entry = self.build_entry(w, contract);
            self.index.set(&mut w.index, contract.id(), entry);
        }
    }

    /// `contract`'s index entry as the writer state says; `None` without providers.
    fn build_entry(&self, w: &WriterState, contract: ContractId) -> Option<IndexEntry> {
        let record = w.contracts.get(&contract)?;
        let mut providers: Vec<(u64, ProviderInfo)> = record
            .providers
            .iter()
            .filter_map(|&index| {
                let info = w.slot_info.get(index as usize)?.as_ref()?;
                let generation = self.slots.get(index)?.load().generation;
                let bundle_name = w
                    .bundles
                    .get(&info.bundle)
                    .map(|b| b.name.to_string())
                    .unwrap_or_default();
                Some((
                    info.seq,
                    ProviderInfo {
                        bundle: info.bundle,
                        bundle_name,
                        handle: GuestContractHandle { index, generation },
                        version: info.version,
                    },
                ))
            })
            .collect();
        if providers.is_empty() {
            return None;
        }
        providers.sort_by_key(|(seq, _)| *seq);
        let providers: Box<[ProviderInfo]> = providers.into_iter().map(|(_, p)| p).collect();
        let selection = select(&self.policy, &providers);
        Some(IndexEntry {
            selection,
            providers,
        })
    }
}

/// The policy's choice among `providers` (in registration order).
fn select(policy: &ProviderPolicy, providers: &[ProviderInfo]) -> Selection {
    let one = |p: &ProviderInfo| Selection::One(p.handle);
    match (policy, providers) {
        (_, [only]) => one(only),
        (_, []) | (ProviderPolicy::Unique, _) => Selection::Ambiguous,
        (ProviderPolicy::FirstLoaded, [first, ..]) => one(first),
        (ProviderPolicy::HighestVersion, _) => {
            let mut best = &providers[0];
            for p in &providers[1..] {
                if p.version > best.version {
                    best = p;
                }
            }
            one(best)
        }
        (ProviderPolicy::Prefer(order), _) => order
            .iter()
            .find_map(|name| providers.iter().find(|p| &p.bundle_name == name))
            .map_or(Selection::Ambiguous, one),
    }
}

/// Checks an interface before it enters the registry and returns its signature's prefix
/// fingerprints (every way in — `register`, `swap_interface`, `stage` and their crate-internal
/// forms — passes here).
pub(crate) fn check_interface(
    contract: &str,
    interface: &GuestContractInterface,
) -> Result<Signature, RegistryError> {
    let invalid = |reason| RegistryError::InvalidInterface {
        contract: contract.to_owned(),
        reason,
    };
    if interface.dispatch_type != DISPATCH_FUNCTION_TABLE {
        return Err(invalid("unknown dispatch type"));
    }
    if interface.dispatch.function_count > MAX_FUNCTIONS {
        return Err(invalid("more functions than MAX_FUNCTIONS"));
    }
    if interface.dispatch.function_count > 0 && interface.dispatch.functions.is_null() {
        return Err(invalid("null function table"));
    }
    #[allow(unsafe_code)]
    // SAFETY: an interface reaches the registry only with its views valid: the public entry
    // points (`register`, `swap_interface`, `stage`) require it of their callers, the
    // table forms build it from a `'static` table and its type's `'static` text, and a guest's
    // interface is checked during staging while its library is loaded (the loader holds it).
    let text = unsafe { crate::sys::abi::signature_text(interface) }
        .ok_or_else(|| invalid("malformed signature view"))?;
    let text = core::str::from_utf8(text).map_err(|_| invalid("signature is not UTF-8"))?;
    let prefixes = crate::signature::prefix_fingerprints(text)
        .ok_or_else(|| invalid("signature text does not end with `;`"))?;
    if !prefixes.is_empty() && prefixes.len() != interface.dispatch.function_count {
        return Err(invalid(
            "the signature lists another number of functions than the table holds",
        ));
    }
    Ok(Arc::from(prefixes))
}

fn check_collision(w: &WriterState, id: ContractId, name: &str) -> Result<(), RegistryError> {
    match w.contracts.get(&id) {
        Some(record) if &*record.name != name => Err(RegistryError::ContractIdCollision {
            id,
            existing: record.name.to_string(),
            new: name.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Removes slot `index` from its contract's providers and its bundle's contracts.
fn forget_provider(w: &mut WriterState, contract: ContractId, bundle: BundleId, index: u32) {
    if let Some(record) = w.contracts.get_mut(&contract) {
        record.providers.retain(|&i| i != index);
        if record.providers.is_empty() {
            w.contracts.remove(&contract);
        }
    }
    if let Some(record) = w.bundles.get_mut(&bundle)
        && record.contracts.get(&contract) == Some(&index)
    {
        record.contracts.remove(&contract);
    }
}

/// Returns a vacated slot index to the free list, unless its generations are exhausted.
fn release_index(w: &mut WriterState, index: u32, generation: u32) {
    if generation < u32::MAX {
        w.free.push(index);
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn slot_segments_cover_indices_without_overlap() {
        assert_eq!(SlotTable::locate(0), Some((0, 0)));
        assert_eq!(SlotTable::locate(63), Some((0, 63)));
        assert_eq!(SlotTable::locate(64), Some((1, 0)));
        assert_eq!(SlotTable::locate(191), Some((1, 127)));
        assert_eq!(SlotTable::locate(192), Some((2, 0)));
        assert_eq!(SlotTable::locate(u32::MAX), None);
        let last = (CAPACITY - 1) as u32;
        let (segment, offset) = SlotTable::locate(last).expect("last index");
        assert_eq!(segment, SEGMENTS - 1);
        assert_eq!(offset, (SEGMENT_BASE << (SEGMENTS - 1)) - 1);
    }

    fn provider(name: &str, index: u32, minor: u32) -> ProviderInfo {
        ProviderInfo {
            bundle: BundleId::new(name),
            bundle_name: name.to_owned(),
            handle: GuestContractHandle {
                index,
                generation: 1,
            },
            version: Version::new(1, minor, 0),
        }
    }

    fn chosen(policy: &ProviderPolicy, providers: &[ProviderInfo]) -> Option<u32> {
        match select(policy, providers) {
            Selection::One(h) => Some(h.index),
            Selection::Ambiguous => None,
        }
    }

    #[test]
    fn selection_policies_choose_as_documented() {
        let ps = [
            provider("a", 0, 1),
            provider("b", 1, 3),
            provider("c", 2, 3),
        ];
        assert_eq!(chosen(&ProviderPolicy::Unique, &ps), None);
        assert_eq!(chosen(&ProviderPolicy::Unique, &ps[..1]), Some(0));
        assert_eq!(chosen(&ProviderPolicy::FirstLoaded, &ps), Some(0));
        assert_eq!(chosen(&ProviderPolicy::HighestVersion, &ps), Some(1));
        let prefer = ProviderPolicy::Prefer(vec!["zz".into(), "c".into(), "a".into()]);
        assert_eq!(chosen(&prefer, &ps), Some(2));
        let none = ProviderPolicy::Prefer(vec!["zz".into()]);
        assert_eq!(chosen(&none, &ps), None);
        assert_eq!(chosen(&none, &ps[1..2]), Some(1));
    }

    #[repr(C)]
    struct Table {
        _f: extern "C" fn() -> u32,
    }
    #[allow(unsafe_code)]
    // SAFETY: repr(C), one non-null extern "C" function pointer.
    unsafe impl FunctionTable for Table {}
    extern "C" fn f() -> u32 {
        0
    }
    static TABLE: Table = Table { _f: f };

    fn v(minor: u32) -> Version {
        Version::new(1, minor, 0)
    }

    /// Commits a reload of `bundle` providing `contracts` (name, minor); an empty list
    /// unloads it.
    fn reload(registry: &Registry, bundle: &str, contracts: &[(&str, u32)]) -> SwapSummary {
        let mut txn = registry
            .begin_reload(BundleId::new(bundle), bundle, true)
            .expect("begin");
        for (name, minor) in contracts {
            txn.stage_table(name, v(*minor), &TABLE).expect("stage");
        }
        let summary = txn.commit().expect("commit");
        if contracts.is_empty() {
            txn.remove_bundle_on_finish();
        }
        summary
    }

    /// (entries built, cells moved) so far.
    fn index_work(registry: &Registry) -> (u64, u64) {
        let w = registry.writer.lock();
        (w.index.entries_built, w.index.cells_moved)
    }

    /// The index holds exactly what a rebuild from scratch of the writer state would, and
    /// `find` answers what the entries say.
    fn check_index(registry: &Registry) -> Result<(), String> {
        let mut expected: Vec<(u64, IndexEntry)> = {
            let w = registry.writer.lock();
            if w.index.live() != w.contracts.len() {
                return Err(format!(
                    "index counts {} live contracts, the writer state {}",
                    w.index.live(),
                    w.contracts.len()
                ));
            }
            w.contracts
                .keys()
                .filter_map(|id| Some((id.id(), registry.build_entry(&w, *id)?)))
                .collect()
        };
        expected.sort_by_key(|(id, _)| *id);
        let mut live = registry.index.live_entries();
        live.sort_by_key(|(id, _)| *id);
        let live: Vec<(u64, &IndexEntry)> = live.iter().map(|(id, e)| (*id, &**e)).collect();
        let want: Vec<(u64, &IndexEntry)> = expected.iter().map(|(id, e)| (*id, e)).collect();
        if live != want {
            return Err(format!("index {live:#?}\nrebuilt {want:#?}"));
        }
        for (id, entry) in &expected {
            let name = &entry.providers[0].bundle_name;
            let choice = registry.index.choice(*id);
            let agrees = match (choice, entry.selection) {
                (Choice::One(got), Selection::One(want)) => got == want,
                (Choice::Ambiguous, Selection::Ambiguous) => true,
                _ => false,
            };
            if !agrees {
                return Err(format!("{name}: choice {choice:?}, entry {entry:?}"));
            }
        }
        Ok(())
    }

    /// Every writer path — register, unregister, a swap changing the version, reload commits
    /// adding, keeping and dropping contracts, rollbacks, unloads — under every policy: after
    /// each operation the incrementally republished index equals a rebuild from scratch
    /// (a contract a writer forgot to republish shows up here as a stale entry).
    mod republish_model {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Register {
                bundle: u8,
                contract: u8,
                minor: u32,
            },
            Unregister {
                pick: usize,
            },
            Swap {
                pick: usize,
                minor: u32,
            },
            Reload {
                bundle: u8,
                contracts: Vec<(u8, u32)>,
                rollback: bool,
            },
            Unload {
                bundle: u8,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0u8..3, 0u8..6, 0u32..3).prop_map(|(bundle, contract, minor)| {
                    Op::Register { bundle, contract, minor }
                }),
                1 => any::<usize>().prop_map(|pick| Op::Unregister { pick }),
                1 => (any::<usize>(), 0u32..3).prop_map(|(pick, minor)| Op::Swap { pick, minor }),
                3 => (
                    0u8..3,
                    proptest::collection::vec((0u8..6, 0u32..3), 0..4),
                    any::<bool>(),
                )
                    .prop_map(|(bundle, contracts, rollback)| Op::Reload {
                        bundle,
                        contracts,
                        rollback,
                    }),
                1 => (0u8..3).prop_map(|bundle| Op::Unload { bundle }),
            ]
        }

        fn policy() -> impl Strategy<Value = ProviderPolicy> {
            prop_oneof![
                Just(ProviderPolicy::Unique),
                Just(ProviderPolicy::FirstLoaded),
                Just(ProviderPolicy::HighestVersion),
                Just(ProviderPolicy::Prefer(vec!["b2".into(), "b0".into()])),
            ]
        }

        const CONTRACTS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];

        fn handles(registry: &Registry) -> Vec<GuestContractHandle> {
            (0..3)
                .flat_map(|b| registry.bundle_contracts(BundleId::new(&format!("b{b}"))))
                .map(|(_, handle)| handle)
                .collect()
        }

        fn apply(registry: &Registry, op: &Op) {
            match op {
                Op::Register {
                    bundle,
                    contract,
                    minor,
                } => {
                    let name = format!("b{bundle}");
                    let _ = registry.register_table(
                        CONTRACTS[*contract as usize],
                        v(*minor),
                        BundleId::new(&name),
                        &name,
                        &TABLE,
                    );
                }
                Op::Unregister { pick } => {
                    let all = handles(registry);
                    if !all.is_empty() {
                        registry
                            .unregister(all[pick % all.len()])
                            .expect("unregister");
                    }
                }
                Op::Swap { pick, minor } => {
                    let all = handles(registry);
                    if !all.is_empty() {
                        let handle = all[pick % all.len()];
                        let current = registry.resolve(handle).expect("resolve");
                        let interface = GuestContractInterface::new(
                            current.contract_id(),
                            v(*minor),
                            crate::abi::DispatchTable::from_static(&TABLE),
                        );
                        drop(current);
                        registry
                            .swap_entry(handle.index, interface, None)
                            .expect("swap");
                    }
                }
                Op::Reload {
                    bundle,
                    contracts,
                    rollback,
                } => {
                    let name = format!("b{bundle}");
                    let mut txn = registry
                        .begin_reload(BundleId::new(&name), &name, true)
                        .expect("begin");
                    for (contract, minor) in contracts {
                        // A contract staged twice is refused; the first stays staged.
                        let _ = txn.stage_table(CONTRACTS[*contract as usize], v(*minor), &TABLE);
                    }
                    txn.commit().expect("commit");
                    if let Err(e) = check_index(registry) {
                        panic!("after the commit: {e}");
                    }
                    if *rollback {
                        txn.rollback().expect("rollback");
                    }
                }
                Op::Unload { bundle } => {
                    let name = format!("b{bundle}");
                    let mut txn = registry
                        .begin_reload(BundleId::new(&name), &name, true)
                        .expect("begin");
                    txn.commit().expect("commit");
                    txn.remove_bundle_on_finish();
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 256,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn the_index_always_equals_a_rebuild_from_scratch(
                policy in policy(),
                ops in proptest::collection::vec(op(), 1..40),
            ) {
                let registry = Registry::with_policy(policy);
                for op in &ops {
                    apply(&registry, op);
                    if let Err(e) = check_index(&registry) {
                        return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
                    }
                }
            }
        }
    }

    /// The cost claim: in a registry of 5,000 contracts, reloading a one-contract bundle
    /// rebuilds the entries of the contracts it changed — one or two — and moves no cell;
    /// a stream of reloads each bringing a never-seen contract id moves fewer than two cells
    /// per new id, amortized (the table's rebuilds), never thousands per reload.
    #[test]
    fn a_one_contract_reload_among_5000_contracts_rebuilds_only_its_own_entries() {
        const OTHERS: u32 = 5_000;
        let registry = Registry::new();
        for i in 0..OTHERS {
            let bundle = format!("filler{}", i % 50);
            registry
                .register_table(
                    &format!("filler.{i}"),
                    v(0),
                    BundleId::new(&bundle),
                    &bundle,
                    &TABLE,
                )
                .expect("register");
        }
        // `solo.b` has been seen once, so alternating `solo.a` and `solo.b` reuses cells.
        reload(&registry, "solo", &[("solo.b", 0)]);
        reload(&registry, "solo", &[("solo.a", 0)]);
        check_index(&registry).expect("consistent");
        let found = |name: &str| {
            registry
                .find(&ContractRef::new(name, 1, 0))
                .map(|g| g.version())
        };
        let sample = |registry: &Registry| {
            for i in (0..OTHERS).step_by(499) {
                let name = format!("filler.{i}");
                assert_eq!(
                    registry
                        .find(&ContractRef::new(&name, 1, 0))
                        .map(|g| g.version()),
                    Ok(v(0)),
                    "{name}"
                );
            }
        };

        let before = index_work(&registry);
        let summary = reload(&registry, "solo", &[("solo.a", 1)]);
        assert!(summary.index_republished);
        assert_eq!(
            index_work(&registry),
            (before.0 + 1, before.1),
            "version change"
        );
        assert_eq!(found("solo.a"), Ok(v(1)));

        let before = index_work(&registry);
        let summary = reload(&registry, "solo", &[("solo.a", 1)]);
        assert!(!summary.index_republished);
        assert_eq!(
            index_work(&registry),
            before,
            "same contracts, same versions"
        );

        for round in 0..10 {
            let (drop, keep) = if round % 2 == 0 {
                ("solo.a", "solo.b")
            } else {
                ("solo.b", "solo.a")
            };
            let before = index_work(&registry);
            reload(&registry, "solo", &[(keep, 0)]);
            assert_eq!(
                index_work(&registry),
                (before.0 + 2, before.1),
                "round {round}: one contract dropped, one added"
            );
            assert_eq!(found(keep), Ok(v(0)));
            assert!(matches!(found(drop), Err(LookupError::NotFound { .. })));
        }
        sample(&registry);
        check_index(&registry).expect("consistent");

        // Never-seen ids: each reload adds one and retires the previous one.
        const NEW_IDS: u64 = 20_000;
        let before = index_work(&registry);
        for i in 0..NEW_IDS {
            reload(&registry, "solo", &[(&format!("fresh.{i}"), 0)]);
        }
        let (built, moved) = index_work(&registry);
        assert_eq!(built - before.0, 2 * NEW_IDS, "two entries per reload");
        let live = u64::from(OTHERS) + 1;
        assert!(
            moved - before.1 <= 2 * NEW_IDS + live,
            "{} cells moved for {NEW_IDS} new ids among {live} contracts",
            moved - before.1
        );
        assert!(
            registry.index.capacity() <= 4 * 8192,
            "{}",
            registry.index.capacity()
        );
        assert_eq!(found(&format!("fresh.{}", NEW_IDS - 1)), Ok(v(0)));
        assert!(found("fresh.0").is_err());
        sample(&registry);
        check_index(&registry).expect("consistent");
    }
}
