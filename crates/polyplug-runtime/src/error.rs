//! The runtime's error enums, one per operation: building a runtime, loading a bundle,
//! reloading it, unloading it. Every variant names the bundle, and the path where one is
//! involved; none leaves the runtime in a state where it stops serving what was loaded before.

use std::path::PathBuf;

use crate::abi::status;
use crate::ids::ContractId;
use crate::manifest::ManifestError;
use crate::registry::RegistryError;

/// Errors building a [`Runtime`](crate::Runtime).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The private directory for per-version library copies could not be created.
    #[error("{}: cannot create the library copy directory", path.display())]
    CopyDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What a guest did wrong while registering its contracts in `polyplug_init`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// A null descriptor or interface, or a name view with a null pointer or absurd length.
    #[error("a registration passed a null or malformed {what}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
    },
    /// A name is not UTF-8.
    #[error("the {field} is not UTF-8 (bytes: {lossy:?})")]
    NonUtf8 {
        /// Which name (`plugin name`, `contract name`).
        field: &'static str,
        /// The name with invalid bytes replaced.
        lossy: String,
    },
    /// The interface's contract id is not the id of (contract name, major).
    #[error(
        "contract `{contract}`: interface id {found} is not the id {expected} of its name and major"
    )]
    IdMismatch {
        /// The contract name.
        contract: String,
        /// `ContractId::new(name, major)`.
        expected: ContractId,
        /// What the interface says.
        found: ContractId,
    },
    /// The plugin registered a contract twice.
    #[error("contract `{contract}` was registered twice")]
    Duplicate {
        /// The contract name.
        contract: String,
    },
    /// The plugin registered a contract its manifest does not list in `provides`.
    #[error("contract `{contract}` is not declared in the manifest's `provides`")]
    Undeclared {
        /// The contract (`name@major.minor`).
        contract: String,
    },
    /// The interface cannot be served.
    #[error("contract `{contract}`: invalid interface: {reason}")]
    InvalidInterface {
        /// The contract name.
        contract: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl RegistrationError {
    /// The status code the host returns to the guest for this error.
    pub fn status(&self) -> i32 {
        match self {
            RegistrationError::Malformed { .. } | RegistrationError::InvalidInterface { .. } => {
                status::INVALID_ARGUMENT
            }
            RegistrationError::NonUtf8 { .. } => status::NON_UTF8,
            RegistrationError::IdMismatch { .. } => status::ID_MISMATCH,
            RegistrationError::Duplicate { .. } => status::DUPLICATE_PROVIDER,
            RegistrationError::Undeclared { .. } => status::UNDECLARED,
        }
    }
}

/// Errors loading a bundle. The runtime is unchanged after any of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The manifest is missing or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A bundle of this name is loaded already (reload it instead).
    #[error("bundle `{bundle}` is already loaded (from {})", dir.display())]
    AlreadyLoaded {
        /// The bundle.
        bundle: String,
        /// Where the loaded one came from.
        dir: PathBuf,
    },
    /// A bundle in `depends` is not loaded; load it first.
    #[error("bundle `{bundle}` depends on `{dependency}`, which is not loaded")]
    MissingDependency {
        /// The bundle.
        bundle: String,
        /// The missing dependency.
        dependency: String,
    },
    /// A contract in the manifest's `requires` is not provided, at that major and at least
    /// that minor, by any loaded bundle (nor by this one); load a provider first.
    #[error("bundle `{bundle}` requires contract `{contract}`, which no loaded bundle provides")]
    RequiredContractMissing {
        /// The bundle.
        bundle: String,
        /// The required contract (`name@major.minor`, the minor a minimum).
        contract: String,
    },
    /// Loading this version would make bundles depend on each other in a cycle.
    #[error("bundle `{bundle}`: dependency cycle {}", chain.join(" -> "))]
    DependencyCycle {
        /// The bundle.
        bundle: String,
        /// The cycle.
        chain: Vec<String>,
    },
    /// A reload was pointed at a directory whose manifest names another bundle.
    #[error("{}: manifest names bundle `{found}`, not `{bundle}`", dir.display())]
    NameMismatch {
        /// The bundle being reloaded.
        bundle: String,
        /// The name in the manifest.
        found: String,
        /// The directory.
        dir: PathBuf,
    },
    /// The library file named by the manifest does not exist.
    #[error("bundle `{bundle}`: library {} does not exist", path.display())]
    LibraryMissing {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
    },
    /// The library could not be copied to its private per-version path.
    #[error("bundle `{bundle}`: cannot copy {} to {}", path.display(), copy.display())]
    Copy {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
        /// The private copy's path.
        copy: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `dlopen` failed (not a shared library, wrong architecture, unresolved symbols, …).
    #[error("bundle `{bundle}`: cannot open {}: {message}", path.display())]
    Open {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
        /// The dynamic loader's message.
        message: String,
    },
    /// The library lacks a required symbol.
    #[error("bundle `{bundle}`: {} does not export `{symbol}` (is it a polyplug plugin?)", path.display())]
    MissingSymbol {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
        /// The symbol.
        symbol: &'static str,
    },
    /// The library was built for another ABI version; rebuild it against this one.
    #[error("bundle `{bundle}`: {} speaks ABI version {found}, this host speaks {expected}", path.display())]
    AbiMismatch {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
        /// The library's `polyplug_abi_version`.
        found: u32,
        /// The host's [`ABI_VERSION`](crate::abi::ABI_VERSION).
        expected: u32,
    },
    /// `polyplug_init` returned an error code.
    #[error("bundle `{bundle}`: polyplug_init of {} failed with status {code}", path.display())]
    InitFailed {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
        /// The status code.
        code: i32,
    },
    /// The plugin registered something invalid.
    #[error("bundle `{bundle}` ({}): invalid registration", path.display())]
    Registration {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: RegistrationError,
    },
    /// The manifest declares a contract the plugin did not register (or at a lower minor).
    #[error("bundle `{bundle}` ({}): declared contract `{contract}` was not registered", path.display())]
    MissingContract {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
        /// The contract (`name@major.minor`).
        contract: String,
    },
    /// A contract's signature fingerprint (the hash of its functions' signatures, see
    /// [`signature`](crate::signature)) differs from the one already served for the same
    /// contract and major — by this bundle's old version on a reload, or by another provider:
    /// calling it would be undefined behaviour. Bump the major for an incompatible change.
    #[error(
        "bundle `{bundle}` ({}): contract `{contract}` has signature fingerprint {found:#018x}, but `{provider}` serves it with {expected:#018x} (an incompatible change needs a new major)",
        path.display()
    )]
    SignatureMismatch {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
        /// The contract (`name@major`).
        contract: String,
        /// The bundle that serves the contract now.
        provider: String,
        /// The fingerprint served now (0: none declared).
        expected: u64,
        /// The new version's fingerprint (0: none declared).
        found: u64,
    },
    /// The registry refused the bundle's contracts (an id collision with another bundle's).
    #[error("bundle `{bundle}` ({}): the registry refused its contracts", path.display())]
    Registry {
        /// The bundle.
        bundle: String,
        /// The library path.
        path: PathBuf,
        /// The registry's error.
        #[source]
        source: RegistryError,
    },
}

/// Errors of a reload. After any of them the old version is live, as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// No bundle of this name is loaded.
    #[error("bundle `{bundle}` is not loaded")]
    UnknownBundle {
        /// The bundle.
        bundle: String,
    },
    /// Hot reload is disabled; enable it with `RuntimeConfig::hot_reload`.
    #[error("bundle `{bundle}`: hot reload is disabled in the runtime configuration")]
    HotReloadDisabled {
        /// The bundle.
        bundle: String,
    },
    /// Another reload of the bundle is running (from `try_reload`).
    #[error("bundle `{bundle}`: another reload is in progress")]
    ReloadInProgress {
        /// The bundle.
        bundle: String,
    },
    /// The new version could not be loaded; the old one stays live.
    #[error("bundle `{bundle}`: reload failed, the old version stays live")]
    Load {
        /// The bundle.
        bundle: String,
        /// Why.
        #[source]
        source: Box<LoadError>,
    },
    /// The new version does not provide a contract another loaded bundle requires (and no
    /// other bundle provides it); the old version stays live. Reload or unload the dependent
    /// first, or keep providing the contract.
    #[error(
        "bundle `{bundle}`: the new version does not provide `{contract}`, which bundle `{dependent}` requires; the old version stays live"
    )]
    ContractRequired {
        /// The bundle being reloaded.
        bundle: String,
        /// The loaded bundle that requires the contract.
        dependent: String,
        /// The required contract (`name@major.minor`).
        contract: String,
    },
    /// The new version's `polyplug_state_import` refused the old version's state (or
    /// panicked); the old version stays live.
    #[error(
        "bundle `{bundle}`: the new version refused the old version's state (status {code}); the old version stays live"
    )]
    StateRefused {
        /// The bundle.
        bundle: String,
        /// The status the import returned.
        code: i32,
    },
    /// The old version's `polyplug_state_export` failed (it panicked, its state kept changing
    /// size, or it is larger than the runtime accepts); the old version stays live.
    #[error("bundle `{bundle}`: the old version's state could not be exported: {reason}")]
    StateExportFailed {
        /// The bundle.
        bundle: String,
        /// What went wrong.
        reason: &'static str,
    },
    /// The post-swap validation hook refused the new version; the swap was rolled back.
    #[error(
        "bundle `{bundle}`: post-swap validation failed ({reason}); rolled back to the old version"
    )]
    ValidationFailed {
        /// The bundle.
        bundle: String,
        /// The hook's reason.
        reason: String,
    },
}

impl ReloadError {
    /// The C API status code for this error.
    pub fn status(&self) -> i32 {
        match self {
            ReloadError::UnknownBundle { .. } => status::NOT_FOUND,
            ReloadError::HotReloadDisabled { .. } => status::HOT_RELOAD_DISABLED,
            ReloadError::ReloadInProgress { .. } => status::RELOAD_IN_PROGRESS,
            ReloadError::ContractRequired { .. } => status::DEPENDENCY_IN_USE,
            ReloadError::Load { .. }
            | ReloadError::ValidationFailed { .. }
            | ReloadError::StateRefused { .. }
            | ReloadError::StateExportFailed { .. } => status::RELOAD_FAILED,
        }
    }
}

/// Errors of an unload. The bundle stays loaded after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnloadError {
    /// No bundle of this name is loaded.
    #[error("bundle `{bundle}` is not loaded")]
    UnknownBundle {
        /// The bundle.
        bundle: String,
    },
    /// Other bundles depend on this one; unload them first or use `unload_cascade`.
    #[error("bundle `{bundle}` is in use by {}", dependents.join(", "))]
    DependencyInUse {
        /// The bundle.
        bundle: String,
        /// The loaded bundles that depend on it.
        dependents: Vec<String>,
    },
    /// Another loaded bundle requires a contract only this bundle provides; unload that one
    /// first.
    #[error("bundle `{bundle}` provides `{contract}`, which bundle `{dependent}` requires")]
    ContractRequired {
        /// The bundle.
        bundle: String,
        /// The loaded bundle that requires the contract.
        dependent: String,
        /// The required contract (`name@major.minor`).
        contract: String,
    },
}

impl UnloadError {
    /// The C API status code for this error.
    pub fn status(&self) -> i32 {
        match self {
            UnloadError::UnknownBundle { .. } => status::NOT_FOUND,
            UnloadError::DependencyInUse { .. } | UnloadError::ContractRequired { .. } => {
                status::DEPENDENCY_IN_USE
            }
        }
    }
}

/// Why a host service was not withdrawn ([`Runtime::withdraw_service`](crate::Runtime::withdraw_service)).
/// The service is still published after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WithdrawError {
    /// The handle names no live contract.
    #[error(transparent)]
    Handle(#[from] RegistryError),
    /// The contract is a plugin's: unload its bundle instead.
    #[error("`{contract}` is provided by bundle `{bundle}`, not by the host")]
    NotAService {
        /// The contract (`name@major`).
        contract: String,
        /// The bundle that provides it.
        bundle: String,
    },
    /// A loaded bundle requires the service and nothing else provides it; unload that bundle
    /// first.
    #[error("host service `{contract}` is required by bundle `{dependent}` (as `{required}`)")]
    ContractRequired {
        /// The service (`name@major`).
        contract: String,
        /// The loaded bundle that requires it.
        dependent: String,
        /// The requirement (`name@major.minor`).
        required: String,
    },
}

impl WithdrawError {
    /// The C API status code for this error.
    pub fn status(&self) -> i32 {
        match self {
            WithdrawError::Handle(RegistryError::StaleHandle { .. }) => status::STALE_HANDLE,
            WithdrawError::Handle(_) => status::NOT_FOUND,
            WithdrawError::NotAService { .. } => status::INVALID_ARGUMENT,
            WithdrawError::ContractRequired { .. } => status::DEPENDENCY_IN_USE,
        }
    }
}
