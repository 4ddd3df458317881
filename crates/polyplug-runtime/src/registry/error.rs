//! The registry's errors: what a writer ([`RegistryError`]) or a lookup ([`LookupError`])
//! reports. Each names the contract, bundle or handle involved.

use super::*;

/// Errors of registrations, handles and reload transactions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The handle names no slot, or a generation never issued for its slot (the null handle is
    /// always invalid).
    #[error("invalid contract handle {handle}")]
    InvalidHandle {
        /// The handle.
        handle: GuestContractHandle,
    },
    /// The handle's contract was retired (unloaded, or dropped by a reload); look it up again.
    #[error("stale contract handle {handle}: its contract was unloaded or dropped by a reload")]
    StaleHandle {
        /// The handle.
        handle: GuestContractHandle,
    },
    /// One bundle registered the same contract twice.
    #[error("bundle `{bundle}` registered contract `{contract}` twice")]
    DuplicateProvider {
        /// The contract name.
        contract: String,
        /// The bundle name.
        bundle: String,
    },
    /// Two different contract names have the same id; rename one of them.
    #[error("contract `{new}` has id {id}, already taken by contract `{existing}`")]
    ContractIdCollision {
        /// The id.
        id: ContractId,
        /// The registered contract's name.
        existing: String,
        /// The name that collided.
        new: String,
    },
    /// Another reload of the bundle holds its reload gate (`try_reload`).
    #[error("bundle `{bundle}`: another reload is in progress")]
    ReloadInProgress {
        /// The bundle name.
        bundle: String,
    },
    /// Every slot index is in use.
    #[error("registry is full: no slot left for contract `{contract}`")]
    Full {
        /// The contract that found no slot.
        contract: String,
    },
    /// A swap tried to put one contract into another contract's slot.
    #[error("slot {index} holds contract {held}, not {given}")]
    ContractMismatch {
        /// The slot index.
        index: u32,
        /// The id of the slot's contract.
        held: ContractId,
        /// The id of the interface offered.
        given: ContractId,
    },
    /// The interface cannot be served: unknown dispatch type, or a bad function table.
    #[error("contract `{contract}`: invalid interface: {reason}")]
    InvalidInterface {
        /// The contract name.
        contract: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `commit` was called a second time on one transaction.
    #[error("bundle `{bundle}`: the transaction has committed already")]
    AlreadyCommitted {
        /// The bundle name.
        bundle: String,
    },
    /// `rollback` was called on a transaction that has not committed.
    #[error("bundle `{bundle}`: nothing to roll back, the transaction has not committed")]
    NotCommitted {
        /// The bundle name.
        bundle: String,
    },
}

/// Errors of a lookup by contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// No loaded bundle provides the contract (at this major version).
    #[error("no provider of contract `{contract}`")]
    NotFound {
        /// The contract asked for (`name@major.minor`).
        contract: String,
    },
    /// Several bundles provide the contract and the provider policy does not choose one; set
    /// a [`ProviderPolicy`] or look up from a bundle with `find_from`.
    #[error("contract `{contract}` has several providers ({}) and the provider policy chooses none", providers.join(", "))]
    Ambiguous {
        /// The contract asked for.
        contract: String,
        /// The bundles providing it.
        providers: Vec<String>,
    },
    /// The provider's minor version is lower than the caller needs.
    #[error(
        "contract `{contract}`: provider has version {found}, caller needs {required} or a later minor"
    )]
    IncompatibleVersion {
        /// The contract asked for.
        contract: String,
        /// The provider's version.
        found: Version,
        /// What the caller needs.
        required: Version,
    },
}
