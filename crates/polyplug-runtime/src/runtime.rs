//! The runtime: bundles loaded from directories, hot reload, unload, and lookups.
//!
//! # Reload
//!
//! A reload of bundle `B` (disabled unless [`RuntimeConfig::hot_reload`]):
//!
//! 1. takes `B`'s reload gate — reloads of `B` are serialized (a second waits, or fails with
//!    [`ReloadError::ReloadInProgress`] from [`Runtime::try_reload`]); reloads of other bundles
//!    run in parallel;
//! 2. fires `Preparing`, reads the manifest, loads the new library from a private copy and runs
//!    its `polyplug_init` (its registrations are staged, invisible to callers);
//! 3. commits: swaps the new interfaces into the old slots (handles stay valid), publishes new
//!    contracts, retires dropped ones — callers never wait for any of it;
//! 4. runs the post-swap validation hook, rolling the swap back if it refuses;
//! 5. reloads the dependents that opted in (`reload_with_dependencies`), collecting their
//!    results without failing on them;
//! 6. fires `Reloaded` (or `Failed`, after any error: the old version is then still live) and
//!    releases the gate;
//! 7. waits (up to [`RuntimeConfig::drain_timeout`]) for readers still holding the old version,
//!    then closes it and checks whether its image left the address space. If readers hold on
//!    longer, the library is closed later ([`Runtime::collect_deferred`]) — never under them.
//!
//! `Preparing` and `Reloaded`/`Failed` bracket exactly one critical section of one bundle:
//! a reload refused before it takes the gate (unknown bundle, reload disabled, gate busy for
//! `try_reload`) fires nothing.
//!
//! # Locks
//!
//! Lock order: a bundle's reload gate (dependencies before dependents) → the topology lock →
//! the bundle map → a bundle's state → the registry's writer mutex. Callbacks run with only the gate held; no
//! lock is ever taken on the call path ([`Runtime::find`], [`Runtime::resolve`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::abi::FunctionTable;
use crate::abi::{
    GuestContractHandle, ReloadPhase, ReloadPhaseType, StringView, Version, log_level, status,
};
use crate::error::{BuildError, LoadError, ReloadError, UnloadError, WithdrawError};
use crate::ids::{BundleId, ContractId, ContractRef};
use crate::loader::{self, ImageRelease, Library, LoadRequest, LogSink};
use crate::manifest::{MANIFEST_FILE, Manifest, ProvidedContract, RequiredContract};
use crate::sys::host::ServiceContext;

/// The bundle name host services are registered under (not a valid manifest name, so no
/// bundle can take it).
pub const HOST_BUNDLE: &str = "<host>";
use crate::registry::{
    Interface, InterfaceGuard, KeepAlive, LookupError, ProviderPolicy, Registry, RegistryError,
    ReloadTransaction,
};
use crate::report::{CascadeOutcome, ReloadReport, ReloadStep, UnloadReport};

/// Runtime settings. `RuntimeConfig::default()` is a runtime without hot reload.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Allow [`Runtime::reload`]. Default `false`: production hosts opt in.
    pub hot_reload: bool,
    /// How lookups choose among several providers of one contract. Default
    /// [`ProviderPolicy::Unique`].
    pub provider_policy: ProviderPolicy,
    /// Where private per-version library copies go. Default: a fresh
    /// `polyplug-<pid>-<n>` directory in the temporary directory, removed with the runtime
    /// (directories left by dead processes are swept at start).
    pub copy_dir: Option<PathBuf>,
    /// How long a reload or unload waits for readers still holding the old version before it
    /// leaves the library to [`Runtime::collect_deferred`]. Default 100 ms.
    pub drain_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            hot_reload: false,
            provider_policy: ProviderPolicy::default(),
            copy_dir: None,
            drain_timeout: Duration::from_millis(100),
        }
    }
}

/// A reload callback's view of one phase.
#[derive(Debug, Clone, Copy)]
pub struct ReloadEvent<'a> {
    /// The phase.
    pub phase: ReloadPhaseType,
    /// The bundle.
    pub bundle: BundleId,
    /// The bundle name.
    pub bundle_name: &'a str,
    /// The request's reason, or the error for `Failed`.
    pub reason: &'a str,
}

impl ReloadEvent<'_> {
    /// The event as the C ABI's [`ReloadPhase`] (its views borrow this event's strings).
    pub fn to_abi(&self) -> ReloadPhase {
        ReloadPhase {
            phase_type: self.phase,
            bundle_id: self.bundle.id(),
            bundle_name: StringView::borrowed(self.bundle_name),
            reason: StringView::borrowed(self.reason),
        }
    }
}

/// A log line from the runtime or a guest.
#[derive(Debug, Clone, Copy)]
pub struct LogRecord<'a> {
    /// A [`log_level`] value.
    pub level: u32,
    /// The bundle it concerns.
    pub bundle: &'a str,
    /// The text.
    pub message: &'a str,
}

type ReloadHook = Arc<dyn Fn(&ReloadEvent<'_>) + Send + Sync>;
type LogHook = Arc<dyn Fn(&LogRecord<'_>) + Send + Sync>;
type Validator = Arc<dyn Fn(&Runtime, &BundleInfo) -> Result<(), String> + Send + Sync>;

/// Builds a [`Runtime`]: configuration plus callbacks.
#[must_use = "a builder does nothing until `build` is called"]
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    on_reload: Option<ReloadHook>,
    on_log: Option<LogHook>,
    validator: Option<Validator>,
}

impl fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("config", &self.config)
            .field("on_reload", &self.on_reload.is_some())
            .field("on_log", &self.on_log.is_some())
            .field("validator", &self.validator.is_some())
            .finish()
    }
}

impl RuntimeBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Enables or disables hot reload.
    pub fn hot_reload(mut self, enabled: bool) -> Self {
        self.config.hot_reload = enabled;
        self
    }

    /// Sets the provider policy.
    pub fn provider_policy(mut self, policy: ProviderPolicy) -> Self {
        self.config.provider_policy = policy;
        self
    }

    /// Sets the directory for private library copies.
    pub fn copy_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.copy_dir = Some(dir.into());
        self
    }

    /// Sets the drain timeout.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Called at each reload phase (with the bundle's reload gate held). It must not reload or
    /// unload the same bundle.
    pub fn on_reload(mut self, hook: impl Fn(&ReloadEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_reload = Some(Arc::new(hook));
        self
    }

    /// Receives log lines from the runtime and from guests.
    pub fn on_log(mut self, hook: impl Fn(&LogRecord<'_>) + Send + Sync + 'static) -> Self {
        self.on_log = Some(Arc::new(hook));
        self
    }

    /// Runs after each reload's swap, with the new version live; an `Err` rolls the swap back
    /// and fails the reload. It may call lookups, not reload or unload the same bundle.
    pub fn validate_after_swap(
        mut self,
        hook: impl Fn(&Runtime, &BundleInfo) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(hook));
        self
    }

    /// Builds the runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError::CopyDir`] if the copy directory cannot be created.
    pub fn build(self) -> Result<Runtime, BuildError> {
        let copy_dir = CopyDir::create(self.config.copy_dir.clone())?;
        let registry = Arc::new(Registry::with_policy(self.config.provider_policy.clone()));
        Ok(Runtime {
            registry: Arc::clone(&registry),
            services: Arc::new(ServiceContext {
                registry: Arc::downgrade(&registry),
            }),
            host_services: Mutex::new(Vec::new()),
            config: self.config,
            on_reload: self.on_reload,
            on_log: self.on_log,
            validator: self.validator,
            bundles: RwLock::new(HashMap::new()),
            graveyard: Mutex::new(Vec::new()),
            topology: Mutex::new(()),
            next_copy: AtomicU64::new(1),
            copy_dir,
        })
    }
}

/// What to reload.
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until passed to `reload`"]
pub struct ReloadRequest {
    bundle: String,
    dir: Option<PathBuf>,
    library: Option<PathBuf>,
    reason: String,
}

impl ReloadRequest {
    /// Reload `bundle` from its current directory (its files replaced on disk).
    pub fn new(bundle: impl Into<String>) -> Self {
        Self {
            bundle: bundle.into(),
            dir: None,
            library: None,
            reason: String::from("reload requested"),
        }
    }

    /// Take the new version from another bundle directory (same bundle name).
    pub fn from_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Load this library file instead of the one the manifest names.
    pub fn library(mut self, path: impl Into<PathBuf>) -> Self {
        self.library = Some(path.into());
        self
    }

    /// Why (passed to the reload callback).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
}

/// A loaded bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    /// Its id.
    pub id: BundleId,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: Version,
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// The library file it was loaded from.
    pub library: PathBuf,
    /// The contracts it provides now, with their handles.
    pub contracts: Vec<(String, GuestContractHandle)>,
    /// The bundles it depends on.
    pub depends: Vec<String>,
}

struct BundleState {
    manifest: Manifest,
    dir: PathBuf,
    library: Arc<Library>,
}

struct BundleSlot {
    id: BundleId,
    name: String,
    /// `None` once unloaded.
    state: Mutex<Option<BundleState>>,
}

/// The private directory of library copies; removed last, after every library closed.
struct CopyDir {
    path: PathBuf,
    owned: bool,
}

impl CopyDir {
    fn create(configured: Option<PathBuf>) -> Result<Self, BuildError> {
        use std::os::unix::fs::DirBuilderExt;
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let (path, owned) = match configured {
            Some(path) => (path, false),
            None => {
                sweep_dead_copy_dirs();
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let name = format!("polyplug-{}-{n}", std::process::id());
                (std::env::temp_dir().join(name), true)
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|source| BuildError::CopyDir {
                path: path.clone(),
                source,
            })?;
        // The loader reports mappings by resolved path (/proc/self/maps, dyld): resolve
        // symlinks here (macOS's /var is one) so the unmap check compares like with like.
        let path = path.canonicalize().unwrap_or(path);
        Ok(Self { path, owned })
    }
}

impl Drop for CopyDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes `polyplug-<pid>-<n>` directories of processes that no longer exist.
fn sweep_dead_copy_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("polyplug-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid > 0 && !platform_primitives::process::exists(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Plugins loaded from bundle directories, callable through the [`Registry`], hot-reloadable.
/// See the [module documentation](self).
pub struct Runtime {
    registry: Arc<Registry>,
    /// What plugins reach the registry through (`HostServices`); weak, so no cycle.
    services: Arc<ServiceContext>,
    /// The contracts the host published with `publish_service` (providers for `requires`).
    host_services: Mutex<Vec<ProvidedContract>>,
    config: RuntimeConfig,
    on_reload: Option<ReloadHook>,
    on_log: Option<LogHook>,
    validator: Option<Validator>,
    bundles: RwLock<HashMap<BundleId, Arc<BundleSlot>>>,
    /// Old libraries whose readers outlived the drain timeout.
    graveyard: Mutex<Vec<Arc<Library>>>,
    /// Serializes "check the contract requirements, commit, record the new manifest" across
    /// loads, reloads and unloads of different bundles, so two concurrent changes cannot each
    /// pass the check and together leave a requirement unmet. Never taken on the call path.
    topology: Mutex<()>,
    next_copy: AtomicU64,
    // Declared last: dropped after every library above is closed.
    copy_dir: CopyDir,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("bundles", &self.bundles.read().len())
            .field("registry", &self.registry)
            .finish()
    }
}

/// A failed reload's error and, if it was live for a moment (rolled back), the new library.
type ReloadFailure = (ReloadError, Option<Arc<Library>>);

/// A reload's result inside the gate.
struct Swapped {
    from: Version,
    to: Version,
    library: PathBuf,
    summary: crate::registry::SwapSummary,
    old_library: Arc<Library>,
    cascade: Vec<CascadeOutcome>,
}

impl Runtime {
    /// A builder with the default configuration.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            config: RuntimeConfig::default(),
            on_reload: None,
            on_log: None,
            validator: None,
        }
    }

    /// A runtime with `config` and no callbacks.
    ///
    /// # Errors
    ///
    /// As [`RuntimeBuilder::build`].
    pub fn new(config: RuntimeConfig) -> Result<Self, BuildError> {
        Self::builder().config(config).build()
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The registry (lookups, handles, revision counter).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The provider of `contract` chosen by the policy: a few atomic loads, no lock.
    ///
    /// # Errors
    ///
    /// As [`Registry::find`].
    #[inline]
    pub fn find(&self, contract: &ContractRef<'_>) -> Result<InterfaceGuard<'_>, LookupError> {
        self.registry.find(contract)
    }

    /// The interface behind `handle`: a few atomic loads, no lock.
    ///
    /// # Errors
    ///
    /// As [`Registry::resolve`].
    #[inline(always)]
    pub fn resolve(
        &self,
        handle: GuestContractHandle,
    ) -> Result<InterfaceGuard<'_>, RegistryError> {
        self.registry.resolve(handle)
    }

    /// The loaded bundles, by name.
    pub fn bundles(&self) -> Vec<BundleInfo> {
        let slots: Vec<Arc<BundleSlot>> = self.bundles.read().values().cloned().collect();
        let mut out: Vec<BundleInfo> = slots.iter().filter_map(|s| self.info(s)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The loaded bundle called `name`.
    pub fn bundle(&self, name: &str) -> Option<BundleInfo> {
        self.slot(name).and_then(|s| self.info(&s))
    }

    fn slot(&self, name: &str) -> Option<Arc<BundleSlot>> {
        self.bundles.read().get(&BundleId::new(name)).cloned()
    }

    fn is_current(&self, slot: &Arc<BundleSlot>) -> bool {
        self.bundles
            .read()
            .get(&slot.id)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    fn info(&self, slot: &BundleSlot) -> Option<BundleInfo> {
        let state = slot.state.lock();
        let state = state.as_ref()?;
        Some(BundleInfo {
            id: slot.id,
            name: slot.name.clone(),
            version: state.manifest.version,
            dir: state.dir.clone(),
            library: state.library.source_path().to_owned(),
            contracts: self.registry.bundle_contracts(slot.id),
            depends: state.manifest.depends.clone(),
        })
    }

    fn log(&self, level: u32, bundle: &str, message: &str) {
        if let Some(hook) = &self.on_log {
            hook(&LogRecord {
                level,
                bundle,
                message,
            });
        }
    }

    fn log_sink(&self) -> Option<LogSink> {
        let hook = self.on_log.clone()?;
        Some(Arc::new(move |level, bundle: &str, message: &str| {
            hook(&LogRecord {
                level,
                bundle,
                message,
            });
        }))
    }

    fn emit(&self, phase: ReloadPhaseType, slot: &BundleSlot, reason: &str) {
        if let Some(hook) = &self.on_reload {
            hook(&ReloadEvent {
                phase,
                bundle: slot.id,
                bundle_name: &slot.name,
                reason,
            });
        }
    }

    fn copy_path(&self, bundle: &str, library: &Path) -> PathBuf {
        let n = self.next_copy.fetch_add(1, Ordering::Relaxed);
        let file = library
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "library".to_owned());
        self.copy_dir.path.join(format!("{bundle}.{n}.{file}"))
    }

    /// Missing dependencies, in manifest order.
    fn missing_dependency(&self, manifest: &Manifest) -> Option<String> {
        let bundles = self.bundles.read();
        manifest
            .depends
            .iter()
            .find(|d| !bundles.contains_key(&BundleId::new(d)))
            .cloned()
    }

    /// A dependency chain from one of `manifest`'s dependencies back to `manifest.name`.
    fn dependency_cycle(&self, manifest: &Manifest) -> Option<Vec<String>> {
        let depends: HashMap<String, Vec<String>> = self
            .bundles
            .read()
            .values()
            .filter_map(|s| {
                let state = s.state.lock();
                let state = state.as_ref()?;
                Some((s.name.clone(), state.manifest.depends.clone()))
            })
            .collect();
        let mut stack: Vec<Vec<String>> = manifest
            .depends
            .iter()
            .map(|d| vec![manifest.name.clone(), d.clone()])
            .collect();
        let mut seen = std::collections::HashSet::new();
        while let Some(chain) = stack.pop() {
            let last = chain.last().cloned().unwrap_or_default();
            if last == manifest.name {
                return Some(chain);
            }
            if !seen.insert(last.clone()) {
                continue;
            }
            for next in depends.get(&last).into_iter().flatten() {
                let mut longer = chain.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
        None
    }

    /// Loaded bundles that depend on `name` directly.
    fn dependents(&self, name: &str) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = self
            .bundles
            .read()
            .values()
            .filter_map(|s| {
                let state = s.state.lock();
                let state = state.as_ref()?;
                state
                    .manifest
                    .depends
                    .iter()
                    .any(|d| d == name)
                    .then(|| (s.name.clone(), state.manifest.reload_with_dependencies))
            })
            .collect();
        out.sort();
        out
    }

    /// The manifests of the loaded bundles, and the host's services as one more provider.
    fn manifests(&self, bundles: &HashMap<BundleId, Arc<BundleSlot>>) -> Vec<Manifest> {
        let mut manifests: Vec<Manifest> = bundles
            .values()
            .filter_map(|s| s.state.lock().as_ref().map(|state| state.manifest.clone()))
            .collect();
        let services = self.host_services.lock().clone();
        if !services.is_empty() {
            manifests.push(Manifest {
                name: HOST_BUNDLE.to_owned(),
                version: Version::default(),
                library: Default::default(),
                provides: services,
                depends: Vec::new(),
                requires: Vec::new(),
                reload_with_dependencies: false,
            });
        }
        manifests
    }

    /// Publishes a host service: `table` becomes the interface of contract `name` at
    /// `version`, found and called by plugins (through [`HostServices`](crate::abi::HostServices))
    /// and by the host like any plugin's contract. It counts as a provider for `requires`.
    ///
    /// ```
    /// use polyplug_runtime::abi::Version;
    /// use polyplug_runtime::ids::ContractRef;
    /// use polyplug_runtime::Runtime;
    ///
    /// polyplug_runtime::contract! {
    ///     pub struct Clock {
    ///         pub fn now_ms() -> u64;
    ///     }
    /// }
    /// extern "C" fn now_ms() -> u64 {
    ///     42
    /// }
    /// static CLOCK: Clock = Clock { now_ms };
    ///
    /// let runtime = Runtime::builder().build()?;
    /// runtime.publish_service("host.clock", Version::new(1, 0, 0), &CLOCK)?;
    /// let guard = runtime.find(&ContractRef::new("host.clock", 1, 0))?;
    /// assert_eq!((guard.functions::<Clock>().ok_or("table")?.now_ms)(), 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Registry::register_table`] (a second publication of the contract is a
    /// `DuplicateProvider`).
    pub fn publish_service<T: FunctionTable>(
        &self,
        name: &str,
        version: Version,
        table: &'static T,
    ) -> Result<GuestContractHandle, RegistryError> {
        let interface = crate::abi::GuestContractInterface::for_table(
            crate::ids::ContractId::new(name, version.major),
            version,
            table,
        );
        #[allow(unsafe_code)]
        // SAFETY: a 'static table whose type vouches for its functions, and its type's
        // 'static signature text.
        unsafe {
            self.publish_interface(name, &interface)
        }
    }

    /// [`publish_service`](Self::publish_service) for a raw interface (the C API's).
    ///
    /// # Errors
    ///
    /// As [`Registry::register`].
    ///
    /// # Safety
    ///
    /// As for [`Registry::register`], for as long as this runtime lives.
    #[allow(unsafe_code)] // Declares the contract only; no unsafe operation happens here.
    pub unsafe fn publish_interface(
        &self,
        name: &str,
        interface: &crate::abi::GuestContractInterface,
    ) -> Result<GuestContractHandle, RegistryError> {
        let _topology = self.topology.lock();
        let version = interface.contract_version;
        let registration = crate::registry::Registration {
            contract_name: name,
            bundle: BundleId::new(HOST_BUNDLE),
            bundle_name: HOST_BUNDLE,
            plugin_version: version,
            interface: *interface,
        };
        #[allow(unsafe_code)]
        // SAFETY: the caller's contract is `register`'s.
        let handle = unsafe { self.registry.register(registration) }?;
        self.host_services.lock().push(ProvidedContract {
            name: name.to_owned(),
            major: version.major,
            minor: version.minor,
        });
        Ok(handle)
    }

    /// Withdraws a host service published with [`publish_service`](Self::publish_service)
    /// (or [`publish_interface`](Self::publish_interface)): lookups stop finding it and its
    /// handles turn stale. A caller already holding a guard on it finishes its call (the table
    /// stays valid while the runtime lives). The service can be published again.
    ///
    /// ```
    /// use polyplug_runtime::abi::Version;
    /// use polyplug_runtime::ids::ContractRef;
    /// use polyplug_runtime::Runtime;
    ///
    /// polyplug_runtime::contract! {
    ///     pub struct Clock {
    ///         pub fn now_ms() -> u64;
    ///     }
    /// }
    /// extern "C" fn now_ms() -> u64 {
    ///     42
    /// }
    /// static CLOCK: Clock = Clock { now_ms };
    ///
    /// let runtime = Runtime::builder().build()?;
    /// let clock = runtime.publish_service("host.clock", Version::new(1, 0, 0), &CLOCK)?;
    /// runtime.withdraw_service(clock)?;
    /// assert!(runtime.find(&ContractRef::new("host.clock", 1, 0)).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`WithdrawError::ContractRequired`] while a loaded bundle requires the service and no
    /// other provider meets the requirement; [`WithdrawError::NotAService`] for a plugin's
    /// contract; [`WithdrawError::Handle`] for a stale or invalid handle. The service stays
    /// published after any of them.
    pub fn withdraw_service(&self, handle: GuestContractHandle) -> Result<(), WithdrawError> {
        let _topology = self.topology.lock();
        let (name, major) = {
            let guard = self.registry.resolve(handle)?;
            if guard.bundle_name() != HOST_BUNDLE {
                return Err(WithdrawError::NotAService {
                    contract: format!("{}@{}", guard.contract_name(), guard.version().major),
                    bundle: guard.bundle_name().to_owned(),
                });
            }
            (guard.contract_name().to_owned(), guard.version().major)
        };
        let mut remaining = self.host_services.lock().clone();
        remaining.retain(|s| !(s.name == name && s.major == major));
        let host_after = Manifest {
            name: HOST_BUNDLE.to_owned(),
            version: Version::default(),
            library: Default::default(),
            provides: remaining.clone(),
            depends: Vec::new(),
            requires: Vec::new(),
            reload_with_dependencies: false,
        };
        let loaded = self.manifests(&self.bundles.read());
        if let Some((dependent, required)) =
            broken_requirement(&loaded, HOST_BUNDLE, Some(&host_after))
        {
            return Err(WithdrawError::ContractRequired {
                contract: format!("{name}@{major}"),
                dependent,
                required: required.to_string(),
            });
        }
        self.registry.unregister(handle)?;
        *self.host_services.lock() = remaining;
        Ok(())
    }

    /// Loaded bundles with a requirement that only `name` meets (which unloading `name` would
    /// leave unmet).
    fn requirers(&self, name: &str) -> Vec<String> {
        let loaded = self.manifests(&self.bundles.read());
        let before: Vec<&Manifest> = loaded.iter().collect();
        let after: Vec<&Manifest> = loaded.iter().filter(|m| m.name != name).collect();
        let mut out: Vec<String> = loaded
            .iter()
            .filter(|m| m.name != name)
            .filter(|m| {
                m.requires
                    .iter()
                    .any(|r| is_provided(r, &before) && !is_provided(r, &after))
            })
            .map(|m| m.name.clone())
            .collect();
        out.sort();
        out
    }

    /// Loads the bundle in directory `dir` and publishes its contracts.
    ///
    /// # Errors
    ///
    /// Any [`LoadError`]; the runtime is unchanged and keeps serving.
    pub fn load_bundle(&self, dir: impl AsRef<Path>) -> Result<BundleInfo, LoadError> {
        self.collect_deferred();
        let dir = dir.as_ref();
        let (manifest, library) = read_version(dir, None)?;
        let id = BundleId::new(&manifest.name);
        let already = |slot: &BundleSlot| LoadError::AlreadyLoaded {
            bundle: slot.name.clone(),
            dir: slot
                .state
                .lock()
                .as_ref()
                .map(|s| s.dir.clone())
                .unwrap_or_default(),
        };
        if let Some(slot) = self.slot(&manifest.name) {
            return Err(already(&slot));
        }
        if let Some(dependency) = self.missing_dependency(&manifest) {
            return Err(LoadError::MissingDependency {
                bundle: manifest.name.clone(),
                dependency,
            });
        }
        // Checked here to fail before opening the library, and again before the commit.
        let loaded_manifests = self.manifests(&self.bundles.read());
        if let Some(required) = unmet_requirement(&manifest, &loaded_manifests) {
            return Err(LoadError::RequiredContractMissing {
                bundle: manifest.name.clone(),
                contract: required.to_string(),
            });
        }
        let registry_error = |source| LoadError::Registry {
            bundle: manifest.name.clone(),
            path: library.clone(),
            source,
        };
        let mut txn = self
            .registry
            .begin_reload(id, &manifest.name, true)
            .map_err(registry_error)?;
        txn.remove_bundle_on_finish(); // only takes effect if the load publishes nothing
        if let Some(slot) = self.slot(&manifest.name) {
            return Err(already(&slot));
        }
        let loaded = self.stage_version(&mut txn, &manifest, dir, &library, false)?;
        {
            let _topology = self.topology.lock();
            let mut bundles = self.bundles.write();
            if let Some(slot) = bundles.get(&id) {
                return Err(already(slot));
            }
            if let Some(dependency) = manifest
                .depends
                .iter()
                .find(|d| !bundles.contains_key(&BundleId::new(d)))
            {
                return Err(LoadError::MissingDependency {
                    bundle: manifest.name.clone(),
                    dependency: dependency.clone(),
                });
            }
            if let Some(required) = unmet_requirement(&manifest, &self.manifests(&bundles)) {
                return Err(LoadError::RequiredContractMissing {
                    bundle: manifest.name.clone(),
                    contract: required.to_string(),
                });
            }
            self.check_signatures(&manifest.name, &library, &loaded)?;
            txn.commit().map_err(registry_error)?;
            bundles.insert(
                id,
                Arc::new(BundleSlot {
                    id,
                    name: manifest.name.clone(),
                    state: Mutex::new(Some(BundleState {
                        manifest: manifest.clone(),
                        dir: dir.to_owned(),
                        library: loaded.library,
                    })),
                }),
            );
        }
        drop(txn);
        self.log(
            log_level::INFO,
            &manifest.name,
            &format!("loaded version {} from {}", manifest.version, dir.display()),
        );
        Ok(BundleInfo {
            id,
            name: manifest.name.clone(),
            version: manifest.version,
            dir: dir.to_owned(),
            library,
            contracts: self.registry.bundle_contracts(id),
            depends: manifest.depends,
        })
    }

    /// Hot-reloads a bundle, waiting if another reload of it is running.
    ///
    /// # Errors
    ///
    /// Any [`ReloadError`] except `ReloadInProgress`; the old version stays live.
    pub fn reload(&self, request: ReloadRequest) -> Result<ReloadReport, ReloadError> {
        self.reload_with(request, true)
    }

    /// Hot-reloads a bundle unless another reload of it is running.
    ///
    /// # Errors
    ///
    /// [`ReloadError::ReloadInProgress`] if one is; otherwise as [`reload`](Self::reload).
    pub fn try_reload(&self, request: ReloadRequest) -> Result<ReloadReport, ReloadError> {
        self.reload_with(request, false)
    }

    fn reload_with(&self, request: ReloadRequest, wait: bool) -> Result<ReloadReport, ReloadError> {
        let started = Instant::now();
        self.collect_deferred();
        let unknown = || ReloadError::UnknownBundle {
            bundle: request.bundle.clone(),
        };
        let slot = self.slot(&request.bundle).ok_or_else(unknown)?;
        if !self.config.hot_reload {
            return Err(ReloadError::HotReloadDisabled {
                bundle: slot.name.clone(),
            });
        }
        let gate_started = Instant::now();
        let mut txn = self
            .registry
            .begin_reload(slot.id, &slot.name, wait)
            .map_err(|_| ReloadError::ReloadInProgress {
                bundle: slot.name.clone(),
            })?;
        let gate_wait = gate_started.elapsed();
        if !self.is_current(&slot) {
            return Err(unknown());
        }
        self.emit(ReloadPhaseType::Preparing, &slot, &request.reason);
        let mut phases = vec![(ReloadStep::GateWait, gate_wait)];
        match self.reload_locked(&slot, &mut txn, &request, &mut phases) {
            Ok(swapped) => {
                self.emit(ReloadPhaseType::Reloaded, &slot, &request.reason);
                // Releases the gate and this transaction's references to the old interfaces.
                drop(txn);
                let (old_image, drain, unmap) = self.release(swapped.old_library);
                phases.push((ReloadStep::Drain, drain));
                phases.push((ReloadStep::Unmap, unmap));
                Ok(ReloadReport {
                    bundle: slot.name.clone(),
                    from: swapped.from,
                    to: swapped.to,
                    library: swapped.library,
                    phases,
                    swap: swapped.summary,
                    cascade: swapped.cascade,
                    old_image,
                    total: started.elapsed(),
                })
            }
            Err(failure) => {
                let (error, discarded) = *failure;
                self.emit(ReloadPhaseType::Failed, &slot, &error.to_string());
                drop(txn);
                if let Some(library) = discarded {
                    self.release(library);
                }
                self.log(log_level::WARN, &slot.name, &error.to_string());
                Err(error)
            }
        }
    }

    /// Steps 2 to 5 of a reload, with the gate held. On error, returns the new library if it
    /// was live for a moment (a rolled-back swap) so the caller drains it.
    fn reload_locked(
        &self,
        slot: &Arc<BundleSlot>,
        txn: &mut crate::registry::ReloadTransaction<'_>,
        request: &ReloadRequest,
        phases: &mut Vec<(ReloadStep, Duration)>,
    ) -> Result<Swapped, Box<ReloadFailure>> {
        let failed = |source: LoadError| {
            Box::new((
                ReloadError::Load {
                    bundle: slot.name.clone(),
                    source: Box::new(source),
                },
                None,
            ))
        };
        let (current_dir, from) = {
            let state = slot.state.lock();
            match state.as_ref() {
                Some(s) => (s.dir.clone(), s.manifest.version),
                None => {
                    return Err(Box::new((
                        ReloadError::UnknownBundle {
                            bundle: slot.name.clone(),
                        },
                        None,
                    )));
                }
            }
        };
        let started = Instant::now();
        let dir = request.dir.clone().unwrap_or(current_dir);
        let (manifest, library) = read_version(&dir, request.library.as_deref()).map_err(failed)?;
        if manifest.name != slot.name {
            return Err(failed(LoadError::NameMismatch {
                bundle: slot.name.clone(),
                found: manifest.name.clone(),
                dir: dir.clone(),
            }));
        }
        if let Some(dependency) = self.missing_dependency(&manifest) {
            return Err(failed(LoadError::MissingDependency {
                bundle: slot.name.clone(),
                dependency,
            }));
        }
        if let Some(chain) = self.dependency_cycle(&manifest) {
            return Err(failed(LoadError::DependencyCycle {
                bundle: slot.name.clone(),
                chain,
            }));
        }
        // Checked here to fail before opening the library, and again before the commit.
        self.check_reload_requirements(slot, &manifest)?;
        phases.push((ReloadStep::Manifest, started.elapsed()));

        let loaded = self
            .stage_version(txn, &manifest, &dir, &library, true)
            .map_err(failed)?;
        phases.push((ReloadStep::Copy, loaded.timings.copy));
        phases.push((ReloadStep::Open, loaded.timings.open));
        phases.push((ReloadStep::AbiCheck, loaded.timings.abi_check));
        phases.push((ReloadStep::Init, loaded.timings.init));

        let registry_error = |source| {
            failed(LoadError::Registry {
                bundle: slot.name.clone(),
                path: library.clone(),
                source,
            })
        };
        let started = Instant::now();
        self.hand_over_state(slot, &loaded.library)?;
        phases.push((ReloadStep::State, started.elapsed()));
        let topology = self.topology.lock();
        self.check_reload_requirements(slot, &manifest)?;
        self.check_signatures(&slot.name, &library, &loaded)
            .map_err(failed)?;
        let started = Instant::now();
        let summary = txn.commit().map_err(registry_error)?;
        phases.push((ReloadStep::Swap, started.elapsed()));

        let new_library = loaded.library;
        let old_library = {
            let _topology = topology;
            let mut state = slot.state.lock();
            let Some(state) = state.as_mut() else {
                return Err(Box::new((
                    ReloadError::UnknownBundle {
                        bundle: slot.name.clone(),
                    },
                    None,
                )));
            };
            let old_dir = std::mem::replace(&mut state.dir, dir.clone());
            let old_manifest = std::mem::replace(&mut state.manifest, manifest.clone());
            let old_library = std::mem::replace(&mut state.library, Arc::clone(&new_library));
            (old_library, old_dir, old_manifest)
        };
        let (old_library, old_dir, old_manifest) = old_library;

        if let Some(validator) = &self.validator {
            let started = Instant::now();
            let verdict = match self.info(slot) {
                Some(info) => validator(self, &info),
                None => Ok(()),
            };
            phases.push((ReloadStep::Validate, started.elapsed()));
            if let Err(reason) = verdict {
                let _ = txn.rollback();
                let mut state = slot.state.lock();
                if let Some(state) = state.as_mut() {
                    state.library = old_library;
                    state.manifest = old_manifest;
                    state.dir = old_dir;
                }
                drop(state);
                return Err(Box::new((
                    ReloadError::ValidationFailed {
                        bundle: slot.name.clone(),
                        reason,
                    },
                    Some(new_library),
                )));
            }
        }

        let started = Instant::now();
        let mut cascade = Vec::new();
        for (dependent, opted_in) in self.dependents(&slot.name) {
            if !opted_in {
                continue;
            }
            let result = self
                .reload(
                    ReloadRequest::new(dependent.clone())
                        .reason(format!("dependency `{}` reloaded", slot.name)),
                )
                .map(Box::new);
            if let Err(e) = &result {
                self.log(
                    log_level::WARN,
                    &dependent,
                    &format!("cascade reload after `{}` failed: {e}", slot.name),
                );
            }
            cascade.push(CascadeOutcome {
                bundle: dependent,
                result,
            });
        }
        if !cascade.is_empty() {
            phases.push((ReloadStep::Cascade, started.elapsed()));
        }
        drop(new_library);
        Ok(Swapped {
            from,
            to: manifest.version,
            library,
            summary,
            old_library,
            cascade,
        })
    }

    /// Waits for readers of `library` to let go (up to the drain timeout), then closes it;
    /// otherwise leaves it to `collect_deferred`. Returns what became of it, the drain time and
    /// the close time.
    fn release(&self, library: Arc<Library>) -> (ImageRelease, Duration, Duration) {
        let started = Instant::now();
        let deadline = started + self.config.drain_timeout;
        let mut rounds = 0u32;
        loop {
            // A replaced interface holds its library until the last guard on it lets go and a
            // reclaim drops it.
            if Arc::strong_count(&library) > 1 {
                crate::sync::reclaim();
            }
            if Arc::strong_count(&library) == 1 {
                break;
            }
            if Instant::now() >= deadline {
                let holders = Arc::strong_count(&library) - 1;
                self.graveyard.lock().push(library);
                return (
                    ImageRelease::Deferred { holders },
                    started.elapsed(),
                    Duration::ZERO,
                );
            }
            if rounds < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
            rounds += 1;
        }
        let drain = started.elapsed();
        let started = Instant::now();
        match loader::close_if_last(library) {
            Ok(image) => (image, drain, started.elapsed()),
            Err(library) => {
                let holders = Arc::strong_count(&library) - 1;
                self.graveyard.lock().push(library);
                (ImageRelease::Deferred { holders }, drain, Duration::ZERO)
            }
        }
    }

    /// Closes deferred libraries whose last reader has let go; returns how many were closed.
    /// Reloads and unloads call it too.
    pub fn collect_deferred(&self) -> usize {
        crate::sync::reclaim();
        let ready: Vec<Arc<Library>> = {
            let mut graveyard = self.graveyard.lock();
            let (ready, waiting): (Vec<_>, Vec<_>) = graveyard
                .drain(..)
                .partition(|library| Arc::strong_count(library) == 1);
            *graveyard = waiting;
            ready
        };
        let mut closed = 0;
        for library in ready {
            if let Err(library) = loader::close_if_last(library) {
                self.graveyard.lock().push(library);
            } else {
                closed += 1;
            }
        }
        closed
    }

    /// Number of old libraries waiting for readers to let go.
    pub fn deferred_count(&self) -> usize {
        self.graveyard.lock().len()
    }

    /// Unloads a bundle: its handles become stale, lookups stop finding it, and its library is
    /// closed once no reader holds it.
    ///
    /// # Errors
    ///
    /// [`UnloadError::DependencyInUse`] while loaded bundles depend on it (see
    /// [`unload_cascade`](Self::unload_cascade)), [`UnloadError::UnknownBundle`].
    pub fn unload(&self, bundle: &str) -> Result<UnloadReport, UnloadError> {
        self.collect_deferred();
        let unknown = || UnloadError::UnknownBundle {
            bundle: bundle.to_owned(),
        };
        let slot = self.slot(bundle).ok_or_else(unknown)?;
        let in_use = |dependents: Vec<(String, bool)>| UnloadError::DependencyInUse {
            bundle: slot.name.clone(),
            dependents: dependents.into_iter().map(|(name, _)| name).collect(),
        };
        let dependents = self.dependents(&slot.name);
        if !dependents.is_empty() {
            return Err(in_use(dependents));
        }
        let mut txn = self
            .registry
            .begin_reload(slot.id, &slot.name, true)
            .map_err(|_| unknown())?;
        self.emit(ReloadPhaseType::Unloading, &slot, "unload requested");
        let (library, retired) = {
            let _topology = self.topology.lock();
            let mut bundles = self.bundles.write();
            if !bundles.get(&slot.id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                return Err(unknown());
            }
            let dependents: Vec<(String, bool)> = bundles
                .values()
                .filter_map(|s| {
                    let state = s.state.lock();
                    let state = state.as_ref()?;
                    state
                        .manifest
                        .depends
                        .iter()
                        .any(|d| *d == slot.name)
                        .then(|| (s.name.clone(), false))
                })
                .collect();
            if !dependents.is_empty() {
                return Err(in_use(dependents));
            }
            if let Some((dependent, required)) =
                broken_requirement(&self.manifests(&bundles), &slot.name, None)
            {
                return Err(UnloadError::ContractRequired {
                    bundle: slot.name.clone(),
                    dependent,
                    contract: required.to_string(),
                });
            }
            let summary = txn.commit().map_err(|_| unknown())?;
            txn.remove_bundle_on_finish();
            bundles.remove(&slot.id);
            let state = slot.state.lock().take();
            (state.map(|s| s.library), summary.retired)
        };
        drop(txn);
        let (image, drain) = match library {
            Some(library) => {
                let (image, drain, _) = self.release(library);
                (image, drain)
            }
            None => (ImageRelease::Unknown, Duration::ZERO),
        };
        self.log(log_level::INFO, &slot.name, "unloaded");
        Ok(UnloadReport {
            bundle: slot.name.clone(),
            retired,
            drain,
            image,
        })
    }

    /// Unloads a bundle and, first, every loaded bundle that depends on it or requires a
    /// contract only it provides (transitively), dependents before their dependencies.
    ///
    /// # Errors
    ///
    /// As [`unload`](Self::unload); bundles unloaded before the error stay unloaded.
    pub fn unload_cascade(&self, bundle: &str) -> Result<Vec<UnloadReport>, UnloadError> {
        if self.slot(bundle).is_none() {
            return Err(UnloadError::UnknownBundle {
                bundle: bundle.to_owned(),
            });
        }
        // Post-order over the dependents graph: leaves first.
        let mut order = Vec::new();
        let mut visiting = vec![(bundle.to_owned(), false)];
        let mut seen = std::collections::HashSet::new();
        while let Some((name, expanded)) = visiting.pop() {
            if expanded {
                order.push(name);
                continue;
            }
            if !seen.insert(name.clone()) {
                continue;
            }
            visiting.push((name.clone(), true));
            for (dependent, _) in self.dependents(&name) {
                visiting.push((dependent, false));
            }
            for requirer in self.requirers(&name) {
                visiting.push((requirer, false));
            }
        }
        order
            .iter()
            .filter(|name| self.slot(name).is_some())
            .map(|name| self.unload(name))
            .collect()
    }
}

impl Runtime {
    /// Hands the live version's state to the new one, if the old exports state and the new
    /// imports it; a refusal (or a failed export) fails the reload before anything is swapped.
    fn hand_over_state(&self, slot: &BundleSlot, new: &Library) -> Result<(), Box<ReloadFailure>> {
        let old = slot
            .state
            .lock()
            .as_ref()
            .map(|state| Arc::clone(&state.library));
        let Some(old) = old else {
            return Ok(());
        };
        if !new.imports_state() {
            return Ok(());
        }
        let fail = |error| Err(Box::new((error, None)));
        let state = match old.export_state() {
            Ok(Some(state)) => state,
            Ok(None) => return Ok(()),
            Err(reason) => {
                return fail(ReloadError::StateExportFailed {
                    bundle: slot.name.clone(),
                    reason,
                });
            }
        };
        match new.import_state(&state) {
            None | Some(status::OK) => Ok(()),
            Some(code) => fail(ReloadError::StateRefused {
                bundle: slot.name.clone(),
                code,
            }),
        }
    }

    /// Refuses a reload of `slot` to `manifest` if the new version's own requirements are
    /// unmet, or if it would leave another loaded bundle's requirement unmet.
    fn check_reload_requirements(
        &self,
        slot: &BundleSlot,
        manifest: &Manifest,
    ) -> Result<(), Box<ReloadFailure>> {
        let loaded = self.manifests(&self.bundles.read());
        let others: Vec<Manifest> = loaded
            .iter()
            .filter(|m| m.name != slot.name)
            .cloned()
            .collect();
        if let Some(required) = unmet_requirement(manifest, &others) {
            return Err(Box::new((
                ReloadError::Load {
                    bundle: slot.name.clone(),
                    source: Box::new(LoadError::RequiredContractMissing {
                        bundle: slot.name.clone(),
                        contract: required.to_string(),
                    }),
                },
                None,
            )));
        }
        if let Some((dependent, required)) = broken_requirement(&loaded, &slot.name, Some(manifest))
        {
            return Err(Box::new((
                ReloadError::ContractRequired {
                    bundle: slot.name.clone(),
                    dependent,
                    contract: required.to_string(),
                },
                None,
            )));
        }
        Ok(())
    }
}

impl Runtime {
    /// Refuses a freshly loaded version of `bundle` if one of its contracts' signatures
    /// disagrees with a provider served now (its own old version on a reload, or another
    /// bundle) on the functions both have.
    fn check_signatures(
        &self,
        bundle: &str,
        library: &Path,
        loaded: &loader::Loaded,
    ) -> Result<(), LoadError> {
        for registration in &loaded.registrations {
            let interface = &registration.interface;
            let registry_error = |source| LoadError::Registry {
                bundle: bundle.to_owned(),
                path: library.to_owned(),
                source,
            };
            let new = crate::registry::check_interface(&registration.contract_name, interface)
                .map_err(registry_error)?;
            let contract = ContractId::from_u64(interface.contract_id);
            for provider in self.registry.providers(contract) {
                let Ok(current) = self.registry.resolve(provider.handle) else {
                    continue;
                };
                if !Interface::signature_compatible(&current.signature, &new) {
                    return Err(LoadError::SignatureMismatch {
                        bundle: bundle.to_owned(),
                        path: library.to_owned(),
                        contract: format!(
                            "{}@{}",
                            registration.contract_name, interface.contract_version.major
                        ),
                        provider: provider.bundle_name.clone(),
                        expected: current.signature(),
                        found: new.last().copied().unwrap_or(0),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether a bundle among `providers` meets `required`.
fn is_provided(required: &RequiredContract, providers: &[&Manifest]) -> bool {
    providers
        .iter()
        .any(|m| m.provides.iter().any(|p| required.is_met_by(p)))
}

/// The first requirement of `manifest` that neither it nor any of `others` meets.
fn unmet_requirement<'m>(
    manifest: &'m Manifest,
    others: &[Manifest],
) -> Option<&'m RequiredContract> {
    let providers: Vec<&Manifest> = others.iter().chain([manifest]).collect();
    manifest
        .requires
        .iter()
        .find(|r| !is_provided(r, &providers))
}

/// The first requirement of a loaded bundle other than `changed` that the `loaded` bundles
/// meet now and would no longer meet if `changed` were replaced by `replacement` (`None`: if
/// it were unloaded), with the name of the bundle that requires it.
fn broken_requirement(
    loaded: &[Manifest],
    changed: &str,
    replacement: Option<&Manifest>,
) -> Option<(String, RequiredContract)> {
    let before: Vec<&Manifest> = loaded.iter().collect();
    let after: Vec<&Manifest> = loaded
        .iter()
        .filter(|m| m.name != changed)
        .chain(replacement)
        .collect();
    let mut dependents: Vec<&Manifest> = loaded.iter().filter(|m| m.name != changed).collect();
    dependents.sort_by(|a, b| a.name.cmp(&b.name));
    dependents.iter().find_map(|dependent| {
        dependent
            .requires
            .iter()
            .find(|r| is_provided(r, &before) && !is_provided(r, &after))
            .map(|r| (dependent.name.clone(), r.clone()))
    })
}

/// The manifest in `dir` and the library file of this platform (or `library`, if given).
fn read_version(dir: &Path, library: Option<&Path>) -> Result<(Manifest, PathBuf), LoadError> {
    let manifest = Manifest::from_dir(dir)?;
    let library = match library {
        Some(path) => path.to_owned(),
        None => dir.join(manifest.library_for_this_platform(&dir.join(MANIFEST_FILE))?),
    };
    Ok((manifest, library))
}

impl Runtime {
    /// The one staging path of a load and a reload: loads `manifest`'s version from a private
    /// copy of `library`, runs its init (registrations checked against the manifest) and
    /// stages what it registered in `txn`, invisible until the commit.
    fn stage_version(
        &self,
        txn: &mut ReloadTransaction<'_>,
        manifest: &Manifest,
        dir: &Path,
        library: &Path,
        is_reload: bool,
    ) -> Result<loader::Loaded, LoadError> {
        let loaded = loader::load(LoadRequest {
            bundle: &manifest.name,
            version: manifest.version,
            dir,
            library,
            declared: &manifest.provides,
            is_reload,
            copy_path: self.copy_path(&manifest.name, library),
            log: self.log_sink(),
            services: Some(Arc::clone(&self.services)),
        })?;
        stage_registrations(txn, &loaded).map_err(|source| LoadError::Registry {
            bundle: manifest.name.clone(),
            path: library.to_owned(),
            source,
        })?;
        Ok(loaded)
    }
}

/// Stages every contract a freshly loaded library registered, each keeping the library alive.
fn stage_registrations(
    txn: &mut ReloadTransaction<'_>,
    loaded: &loader::Loaded,
) -> Result<(), RegistryError> {
    for registration in &loaded.registrations {
        let keep_alive: KeepAlive = loaded.library.clone();
        txn.stage_entry(
            &registration.contract_name,
            registration.plugin_version,
            registration.interface,
            Some(keep_alive),
        )?;
    }
    Ok(())
}
