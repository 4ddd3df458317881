//! Reload transactions: a bundle's reload gate held, a new version's registrations staged
//! invisibly, committed in one critical section (swap in place, publish, retire), and rolled
//! back if the host's post-swap validation refuses them.

use super::*;

/// What a commit changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapSummary {
    /// Contracts both versions provide: swapped in place (handles stay valid).
    pub swapped: usize,
    /// Contracts new in this version: published in new slots.
    pub added: usize,
    /// Contracts the new version dropped: retired (their handles are stale).
    pub retired: usize,
    /// Whether the find index was republished (only when providers changed).
    pub index_republished: bool,
}

pub(super) struct Committed {
    summary: SwapSummary,
    /// (slot, the interface it held before the swap).
    swapped: Vec<(u32, Arc<Interface>)>,
    added: Vec<GuestContractHandle>,
    /// (slot, the interface it held, its slot info).
    retired: Vec<(u32, Arc<Interface>, SlotInfo)>,
}

/// A reload (or load, or unload) of one bundle, holding the bundle's reload gate until it is
/// finished or dropped. See the [registry documentation](crate::registry).
#[must_use = "a transaction rolls back (and releases the gate) when dropped uncommitted"]
pub struct ReloadTransaction<'r> {
    pub(super) registry: &'r Registry,
    pub(super) bundle: BundleId,
    pub(super) bundle_name: Arc<str>,
    pub(super) gate: Arc<Gate>,
    pub(super) staged: Vec<Staged>,
    pub(super) committed: Option<Committed>,
    pub(super) remove_bundle: bool,
}

impl fmt::Debug for ReloadTransaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadTransaction")
            .field("bundle", &self.bundle_name)
            .field("staged", &self.staged.len())
            .field("committed", &self.committed.as_ref().map(|c| c.summary))
            .finish()
    }
}

impl ReloadTransaction<'_> {
    /// The bundle.
    pub fn bundle(&self) -> BundleId {
        self.bundle
    }

    /// The bundle name.
    pub fn bundle_name(&self) -> &str {
        &self.bundle_name
    }

    /// Stages a registration of the new version (invisible until [`commit`](Self::commit)).
    ///
    /// # Errors
    ///
    /// [`RegistryError::DuplicateProvider`] if the contract is already staged,
    /// [`RegistryError::InvalidInterface`] for a bad interface.
    ///
    /// # Safety
    ///
    /// As for [`Registry::register`].
    #[allow(unsafe_code)] // Declares the contract only; no unsafe operation happens here.
    pub unsafe fn stage(
        &mut self,
        contract_name: &str,
        plugin_version: Version,
        interface: &GuestContractInterface,
    ) -> Result<(), RegistryError> {
        self.stage_entry(contract_name, plugin_version, *interface, None)
    }

    /// Stages a Rust function table (safe, as [`Registry::register_table`]).
    ///
    /// # Errors
    ///
    /// As [`stage`](Self::stage).
    pub fn stage_table<T: FunctionTable>(
        &mut self,
        contract_name: &str,
        version: Version,
        table: &'static T,
    ) -> Result<(), RegistryError> {
        let interface = GuestContractInterface::for_table(
            ContractId::new(contract_name, version.major),
            version,
            table,
        );
        self.stage_entry(contract_name, version, interface, None)
    }

    /// [`stage`](Self::stage) with a keep-alive; the caller vouches for the interface.
    pub(crate) fn stage_entry(
        &mut self,
        contract_name: &str,
        plugin_version: Version,
        interface: GuestContractInterface,
        keep_alive: Option<KeepAlive>,
    ) -> Result<(), RegistryError> {
        let signature = check_interface(contract_name, &interface)?;
        let contract = ContractId::from_u64(interface.contract_id);
        if self.staged.iter().any(|s| s.contract == contract) {
            return Err(RegistryError::DuplicateProvider {
                contract: contract_name.to_owned(),
                bundle: self.bundle_name.to_string(),
            });
        }
        self.staged.push(Staged {
            contract,
            name: Arc::from(contract_name),
            plugin_version,
            interface,
            signature,
            keep_alive,
        });
        Ok(())
    }

    /// Makes the staged registrations the bundle's contracts, in one critical section: what
    /// both versions provide is swapped in place, what is new is published, what the new
    /// version dropped is retired. Readers never see the bundle half-way.
    ///
    /// # Errors
    ///
    /// [`RegistryError::ContractIdCollision`] or [`RegistryError::Full`] (nothing changed),
    /// [`RegistryError::AlreadyCommitted`] on a second call.
    pub fn commit(&mut self) -> Result<SwapSummary, RegistryError> {
        if self.committed.is_some() {
            return Err(RegistryError::AlreadyCommitted {
                bundle: self.bundle_name.to_string(),
            });
        }
        let registry = self.registry;
        let mut w = registry.write();
        // Validate everything before changing anything.
        for s in &self.staged {
            check_collision(&w, s.contract, &s.name)?;
        }
        let old: HashMap<ContractId, u32> = match w.bundles.get(&self.bundle) {
            Some(record) => record.contracts.clone(),
            None => HashMap::new(),
        };
        let new_slots = self
            .staged
            .iter()
            .filter(|s| !old.contains_key(&s.contract))
            .count() as u64;
        let available = w.free.len() as u64 + CAPACITY.saturating_sub(u64::from(w.next_index));
        if new_slots > available {
            return Err(RegistryError::Full {
                contract: self.staged[0].name.to_string(),
            });
        }
        let record = w
            .bundles
            .entry(self.bundle)
            .or_insert_with(|| BundleRecord {
                name: Arc::clone(&self.bundle_name),
                gate: Arc::clone(&self.gate),
                contracts: HashMap::new(),
            });
        let bundle_name = Arc::clone(&record.name);

        let mut committed = Committed {
            summary: SwapSummary::default(),
            swapped: Vec::new(),
            added: Vec::new(),
            retired: Vec::new(),
        };
        // The contracts whose index entries this commit changes: a version changed by a swap,
        // a provider added, a provider retired. Nothing else is republished.
        let mut changed: Vec<ContractId> = Vec::new();
        for staged in std::mem::take(&mut self.staged) {
            if let Some(&index) = old.get(&staged.contract) {
                let Some(cell) = registry.slots.get(index) else {
                    continue;
                };
                let current = cell.load_full();
                let next = Interface {
                    generation: current.generation,
                    index,
                    occupied: true,
                    interface: staged.interface,
                    contract_name: staged.name,
                    bundle: self.bundle,
                    bundle_name: Arc::clone(&bundle_name),
                    plugin_version: staged.plugin_version,
                    signature_full: staged.signature.last().copied().unwrap_or(0),
                    signature: staged.signature,
                    _keep_alive: staged.keep_alive,
                };
                let before = cell.swap(Arc::new(next));
                if let Some(Some(info)) = w.slot_info.get_mut(index as usize)
                    && info.version != staged.interface.contract_version
                {
                    info.version = staged.interface.contract_version;
                    changed.push(staged.contract);
                }
                committed.swapped.push((index, before));
            } else {
                let contract = staged.contract;
                match registry.occupy(&mut w, self.bundle, Arc::clone(&bundle_name), staged) {
                    Ok(handle) => committed.added.push(handle),
                    Err(error) => {
                        // Unreachable after the capacity check above; if it happens, the index
                        // still matches what was done so far.
                        registry.republish(&mut w, &changed);
                        registry.revision.fetch_add(1, Ordering::Release);
                        return Err(error);
                    }
                }
                changed.push(contract);
            }
        }
        let kept: Vec<u32> = committed.swapped.iter().map(|(i, _)| *i).collect();
        let dropped: Vec<(ContractId, u32)> = old
            .iter()
            .filter(|(_, index)| !kept.contains(index))
            .map(|(c, i)| (*c, *i))
            .collect();
        let mut to_vacate = Vec::new();
        for (contract, index) in dropped {
            let info = w.slot_info.get_mut(index as usize).and_then(Option::take);
            forget_provider(&mut w, contract, self.bundle, index);
            if let Some(info) = info {
                to_vacate.push((index, info));
            }
            changed.push(contract);
        }
        let index_dirty = !changed.is_empty();
        // Before vacating: a lookup that still meets a retired slot retries on its new entry.
        registry.republish(&mut w, &changed);
        for (index, info) in to_vacate {
            if let Some(cell) = registry.slots.get(index) {
                let generation = cell.load().generation;
                let before = cell.swap(Arc::new(Interface::vacant(index, generation)));
                committed.retired.push((index, before, info));
            }
        }
        registry.revision.fetch_add(1, Ordering::Release);
        committed.summary = SwapSummary {
            swapped: committed.swapped.len(),
            added: committed.added.len(),
            retired: committed.retired.len(),
            index_republished: index_dirty,
        };
        let summary = committed.summary;
        self.committed = Some(committed);
        Ok(summary)
    }

    /// A deliberately wrong commit for the loom suite's negative control: it retires the
    /// bundle's contracts and publishes the new ones afresh instead of swapping in place, so a
    /// reader can find a contract both versions provide missing in between.
    #[cfg(feature = "loom")]
    #[doc(hidden)]
    pub fn commit_by_retire_and_republish(&mut self) -> Result<SwapSummary, RegistryError> {
        let staged = std::mem::take(&mut self.staged);
        self.commit()?;
        self.committed = None;
        self.staged = staged;
        self.commit()
    }

    /// Undoes the commit: swapped slots get their old interfaces back (same generation, so
    /// handles stay valid), new slots are retired, retired slots are restored.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotCommitted`] before a commit.
    pub fn rollback(&mut self) -> Result<(), RegistryError> {
        let Some(committed) = self.committed.take() else {
            return Err(RegistryError::NotCommitted {
                bundle: self.bundle_name.to_string(),
            });
        };
        let registry = self.registry;
        let mut w = registry.write();
        // Every contract the commit touched: swapped back, restored, or withdrawn.
        let mut changed: Vec<ContractId> = Vec::new();
        for (index, before) in committed.swapped {
            changed.push(before.contract_id());
            if let Some(cell) = registry.slots.get(index) {
                let version = before.interface.contract_version;
                drop(cell.swap(before));
                if let Some(Some(info)) = w.slot_info.get_mut(index as usize) {
                    info.version = version;
                }
            }
        }
        for (index, before, info) in committed.retired {
            changed.push(info.contract);
            w.contracts
                .entry(info.contract)
                .or_insert_with(|| ContractRecord {
                    name: Arc::clone(&before.contract_name),
                    providers: Vec::new(),
                })
                .providers
                .push(index);
            if let Some(record) = w.bundles.get_mut(&self.bundle) {
                record.contracts.insert(info.contract, index);
            }
            if w.slot_info.len() <= index as usize {
                w.slot_info.resize_with(index as usize + 1, || None);
            }
            w.slot_info[index as usize] = Some(info);
            if let Some(cell) = registry.slots.get(index) {
                drop(cell.swap(before));
            }
        }
        let mut to_vacate = Vec::new();
        for handle in committed.added {
            if let Some(info) = w
                .slot_info
                .get_mut(handle.index as usize)
                .and_then(Option::take)
            {
                forget_provider(&mut w, info.contract, info.bundle, handle.index);
                changed.push(info.contract);
                to_vacate.push(handle);
            }
        }
        registry.republish(&mut w, &changed);
        for handle in to_vacate {
            if let Some(cell) = registry.slots.get(handle.index) {
                drop(cell.swap(Arc::new(Interface::vacant(handle.index, handle.generation))));
                release_index(&mut w, handle.index, handle.generation);
            }
        }
        registry.revision.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Removes the bundle's record when the transaction finishes (an unload: commit with
    /// nothing staged, then finish).
    pub fn remove_bundle_on_finish(&mut self) {
        self.remove_bundle = true;
    }

    /// Ends the transaction: frees the slots it retired, drops the old interfaces it replaced
    /// (readers still holding them keep them alive) and releases the bundle's reload gate.
    pub fn finish(self) -> Option<SwapSummary> {
        self.committed.as_ref().map(|c| c.summary)
    }
}

impl Drop for ReloadTransaction<'_> {
    fn drop(&mut self) {
        let registry = self.registry;
        let committed = self.committed.take();
        {
            let mut w = registry.write();
            if let Some(committed) = &committed {
                for (index, before, _) in &committed.retired {
                    release_index(&mut w, *index, before.generation);
                }
            }
            if self.remove_bundle {
                let ours = w
                    .bundles
                    .get(&self.bundle)
                    .is_some_and(|r| Arc::ptr_eq(&r.gate, &self.gate) && r.contracts.is_empty());
                if ours {
                    w.bundles.remove(&self.bundle);
                }
            }
        }
        // The old interfaces (and what keeps their code alive) go with `committed`, outside the
        // writer lock.
        drop(committed);
        self.gate.release();
    }
}
