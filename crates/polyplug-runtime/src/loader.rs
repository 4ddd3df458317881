//! Loading one version of a bundle's library: a private copy, `dlopen`, the ABI sentinel, and
//! `polyplug_init` with its registrations collected (not yet visible to anyone).
//!
//! Every version is loaded from its own private copy of the library file
//! (`<copy dir>/<bundle>.<n>.<file name>`): `dlopen` of a path that is already loaded returns
//! the *old* image, and `dlclose` may leave an image mapped (thread-local destructors, macOS,
//! musl), so reusing a path could silently keep serving the old code. Unique paths also let
//! the reload report tell whether the old image really left the address space.
//!
//! The `polyplug_abi_version` sentinel is read after `dlopen` (which runs the library's static
//! constructors — unavoidable with the system loader) and before any polyplug entry point runs.
//! During `polyplug_init` the guest's `register_contract` calls land in an [`InitSink`] found
//! through a token, not a pointer, so a late or forged callback cannot touch freed memory.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::abi::{
    ABI_VERSION, ABI_VERSION_SYMBOL, BundleInitContext, FINI_SYMBOL, GuestContractInterface,
    HostApi, HostServices, INIT_SYMBOL, MAX_STATE_LEN, STATE_EXPORT_SYMBOL, STATE_IMPORT_SYMBOL,
    StringView, Version, status,
};
use crate::error::{LoadError, RegistrationError};
use crate::ids::{BundleId, ContractId};
use crate::manifest::ProvidedContract;
use crate::sys;
use crate::sys::host::ServiceContext;
use crate::sys::unix::{DlHandle, FiniFn, StateExportFn, StateImportFn};

/// A guest's log line, forwarded to the runtime's log callback.
pub(crate) type LogSink = Arc<dyn Fn(u32, &str, &str) + Send + Sync>;

/// One loaded library version. Dropping it runs `polyplug_fini`, closes the library and
/// removes its private copy.
pub(crate) struct Library {
    handle: Option<DlHandle>,
    fini: Option<FiniFn>,
    state_export: Option<StateExportFn>,
    state_import: Option<StateImportFn>,
    /// Keeps the services context the library's code may call alive while it is loaded.
    _services: Option<Arc<ServiceContext>>,
    private_path: PathBuf,
    source_path: PathBuf,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("source", &self.source_path)
            .field("private", &self.private_path)
            .finish()
    }
}

impl Library {
    /// This version's state (`polyplug_state_export`), `Ok(None)` if it exports none.
    pub(crate) fn export_state(&self) -> Result<Option<Vec<u8>>, &'static str> {
        let Some(export) = self.state_export else {
            return Ok(None);
        };
        let mut buffer = Vec::new();
        // The state may change between the two calls (the old version keeps serving): ask
        // again with the new length a few times.
        for _ in 0..4 {
            let len = sys::unix::call_state_export(export, &mut buffer);
            if len == usize::MAX {
                return Err("polyplug_state_export failed (a panic in a Rust guest)");
            }
            if len > MAX_STATE_LEN {
                return Err("the state is larger than MAX_STATE_LEN");
            }
            if len <= buffer.len() && !buffer.is_empty() || len == 0 {
                buffer.truncate(len);
                return Ok(Some(buffer));
            }
            buffer = vec![0; len];
        }
        Err("the state kept changing size while it was exported")
    }

    /// Whether this version exports `polyplug_state_import`.
    pub(crate) fn imports_state(&self) -> bool {
        self.state_import.is_some()
    }

    /// Hands `state` to this version's `polyplug_state_import`; `None` if it exports none.
    pub(crate) fn import_state(&self, state: &[u8]) -> Option<i32> {
        let import = self.state_import?;
        Some(sys::unix::call_state_import(import, state))
    }

    /// The library file this version was copied from.
    pub(crate) fn source_path(&self) -> &Path {
        &self.source_path
    }

    /// The private copy it was loaded from.
    pub(crate) fn private_path(&self) -> &Path {
        &self.private_path
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            if let Some(fini) = self.fini {
                // A panic cannot come out of a C finaliser; a Rust guest's export_guest! stops
                // its own. Nothing here can unwind into the loader.
                sys::unix::call_fini(fini);
            }
            let _ = handle.close();
        }
        let _ = std::fs::remove_file(&self.private_path);
    }
}

/// A registration copied out of guest memory by the host callback.
#[derive(Debug)]
pub(crate) struct RawRegistration {
    pub(crate) plugin_name: Vec<u8>,
    pub(crate) contract_name: Vec<u8>,
    pub(crate) plugin_version: Version,
    pub(crate) interface: GuestContractInterface,
    pub(crate) table_has_null: bool,
}

/// A validated registration.
#[derive(Debug)]
pub(crate) struct GuestRegistration {
    pub(crate) contract_name: String,
    pub(crate) plugin_version: Version,
    pub(crate) interface: GuestContractInterface,
}

/// Where one `polyplug_init` call's registrations land.
pub(crate) struct InitSink {
    bundle: String,
    declared: Vec<ProvidedContract>,
    state: Mutex<SinkState>,
    log: Option<LogSink>,
}

#[derive(Default)]
struct SinkState {
    registrations: Vec<GuestRegistration>,
    first_error: Option<RegistrationError>,
}

impl InitSink {
    /// Validates and records one registration; returns the status code for the guest.
    pub(crate) fn register(&self, raw: Result<RawRegistration, RegistrationError>) -> i32 {
        let result = raw.and_then(|raw| self.validate(raw));
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let result = result.and_then(|reg| {
            let id = reg.interface.contract_id;
            if state
                .registrations
                .iter()
                .any(|r| r.interface.contract_id == id)
            {
                Err(RegistrationError::Duplicate {
                    contract: reg.contract_name,
                })
            } else {
                state.registrations.push(reg);
                Ok(())
            }
        });
        match result {
            Ok(()) => status::OK,
            Err(e) => {
                let code = e.status();
                state.first_error.get_or_insert(e);
                code
            }
        }
    }

    fn validate(&self, raw: RawRegistration) -> Result<GuestRegistration, RegistrationError> {
        let utf8 = |bytes: Vec<u8>, field| {
            String::from_utf8(bytes).map_err(|e| RegistrationError::NonUtf8 {
                field,
                lossy: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            })
        };
        let _plugin_name = utf8(raw.plugin_name, "plugin name")?;
        let contract_name = utf8(raw.contract_name, "contract name")?;
        let interface = raw.interface;
        let version = interface.contract_version;
        let expected = ContractId::new(&contract_name, version.major);
        if expected.id() != interface.contract_id {
            return Err(RegistrationError::IdMismatch {
                contract: contract_name,
                expected,
                found: ContractId::from_u64(interface.contract_id),
            });
        }
        if raw.table_has_null {
            return Err(RegistrationError::InvalidInterface {
                contract: contract_name,
                reason: "null function in the dispatch table",
            });
        }
        let declared = self
            .declared
            .iter()
            .any(|d| d.name == contract_name && d.major == version.major);
        if !declared {
            return Err(RegistrationError::Undeclared {
                contract: format!("{contract_name}@{}.{}", version.major, version.minor),
            });
        }
        Ok(GuestRegistration {
            contract_name,
            plugin_version: raw.plugin_version,
            interface,
        })
    }

    /// Forwards a guest log line.
    pub(crate) fn log(&self, level: u32, message: &[u8]) {
        if let Some(log) = &self.log {
            log(level, &self.bundle, &String::from_utf8_lossy(message));
        }
    }
}

/// Active init calls by token.
fn sinks() -> &'static Mutex<HashMap<usize, Arc<InitSink>>> {
    static SINKS: OnceLock<Mutex<HashMap<usize, Arc<InitSink>>>> = OnceLock::new();
    SINKS.get_or_init(Mutex::default)
}

/// The sink of the init call `token` names, if it is still running.
pub(crate) fn sink_for(token: usize) -> Option<Arc<InitSink>> {
    let sinks = sinks().lock().unwrap_or_else(|e| e.into_inner());
    sinks.get(&token).cloned()
}

/// Removes the token from the table when the init call ends (even by panic).
struct TokenGuard(usize);

impl Drop for TokenGuard {
    fn drop(&mut self) {
        let mut sinks = sinks().lock().unwrap_or_else(|e| e.into_inner());
        sinks.remove(&self.0);
    }
}

/// What to load.
pub(crate) struct LoadRequest<'a> {
    pub(crate) bundle: &'a str,
    pub(crate) version: Version,
    pub(crate) dir: &'a Path,
    pub(crate) library: &'a Path,
    pub(crate) declared: &'a [ProvidedContract],
    pub(crate) is_reload: bool,
    pub(crate) copy_path: PathBuf,
    pub(crate) log: Option<LogSink>,
    /// The runtime's lookups for the library's code (none: the services are absent).
    pub(crate) services: Option<Arc<ServiceContext>>,
}

/// Time spent in each step of a load.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LoadTimings {
    pub(crate) copy: Duration,
    pub(crate) open: Duration,
    pub(crate) abi_check: Duration,
    pub(crate) init: Duration,
}

/// A loaded, initialised library and what it registered.
pub(crate) struct Loaded {
    pub(crate) library: Arc<Library>,
    pub(crate) registrations: Vec<GuestRegistration>,
    pub(crate) timings: LoadTimings,
}

/// Loads one version: copy, open, check the sentinel, run `polyplug_init`, check that every
/// declared contract was registered.
pub(crate) fn load(request: LoadRequest<'_>) -> Result<Loaded, LoadError> {
    let bundle = request.bundle.to_owned();
    let path = request.library.to_owned();
    let mut timings = LoadTimings::default();
    if !path.is_file() {
        return Err(LoadError::LibraryMissing { bundle, path });
    }

    let started = Instant::now();
    if let Err(source) = std::fs::copy(&path, &request.copy_path) {
        let _ = std::fs::remove_file(&request.copy_path);
        return Err(LoadError::Copy {
            bundle,
            path,
            copy: request.copy_path,
            source,
        });
    }
    timings.copy = started.elapsed();

    let started = Instant::now();
    let handle = match DlHandle::open(&request.copy_path) {
        Ok(handle) => handle,
        Err(message) => {
            let _ = std::fs::remove_file(&request.copy_path);
            return Err(LoadError::Open {
                bundle,
                path,
                message,
            });
        }
    };
    timings.open = started.elapsed();
    // From here on the library is owned by `Library`: every early return closes it and
    // removes the private copy.
    let c_name = |s: &str| CString::new(s).unwrap_or_default();
    let fini = handle.fini_fn(&c_name(FINI_SYMBOL));
    let state_export = handle.state_export_fn(&c_name(STATE_EXPORT_SYMBOL));
    let state_import = handle.state_import_fn(&c_name(STATE_IMPORT_SYMBOL));
    let init = handle.init_fn(&c_name(INIT_SYMBOL));
    let sentinel = handle.read_u32(&c_name(ABI_VERSION_SYMBOL));
    let library = Library {
        handle: Some(handle),
        fini,
        state_export,
        state_import,
        _services: request.services.clone(),
        private_path: request.copy_path.clone(),
        source_path: path.clone(),
    };

    let started = Instant::now();
    let Some(found) = sentinel else {
        return Err(LoadError::MissingSymbol {
            bundle,
            path,
            symbol: ABI_VERSION_SYMBOL,
        });
    };
    if found != ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            bundle,
            path,
            found,
            expected: ABI_VERSION,
        });
    }
    let Some(init) = init else {
        return Err(LoadError::MissingSymbol {
            bundle,
            path,
            symbol: INIT_SYMBOL,
        });
    };
    timings.abi_check = started.elapsed();

    let started = Instant::now();
    let sink = Arc::new(InitSink {
        bundle: bundle.clone(),
        declared: request.declared.to_vec(),
        state: Mutex::new(SinkState::default()),
        log: request.log,
    });
    static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(1);
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    sinks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token, Arc::clone(&sink));
    let token_guard = TokenGuard(token);
    let dir_text = request.dir.to_string_lossy();
    let host = HostApi {
        abi_version: ABI_VERSION,
        struct_size: size_of::<HostApi>() as u32,
        host_context: std::ptr::without_provenance_mut(token),
        register_contract: Some(sys::host::register_contract),
        log: Some(sys::host::log),
        services: match &request.services {
            Some(context) => sys::host::host_services(context),
            None => HostServices {
                context: std::ptr::null_mut(),
                find: None,
                acquire: None,
                interface: None,
                release: None,
            },
        },
    };
    let context = BundleInitContext {
        bundle_id: BundleId::new(&bundle).id(),
        bundle_name: StringView::borrowed(&bundle),
        bundle_dir: StringView::borrowed(&dir_text),
        bundle_version: request.version,
        is_reload: u32::from(request.is_reload),
    };
    let code = sys::unix::call_init(init, &host, &context);
    drop(token_guard);
    timings.init = started.elapsed();

    let state = std::mem::take(&mut *sink.state.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(source) = state.first_error {
        return Err(LoadError::Registration {
            bundle,
            path,
            source,
        });
    }
    if code != status::OK {
        return Err(LoadError::InitFailed { bundle, path, code });
    }
    for declared in request.declared {
        let provided = state.registrations.iter().any(|r| {
            r.contract_name == declared.name
                && r.interface.contract_version.major == declared.major
                && r.interface.contract_version.minor >= declared.minor
        });
        if !provided {
            return Err(LoadError::MissingContract {
                bundle,
                path,
                contract: declared.to_string(),
            });
        }
    }
    Ok(Loaded {
        library: Arc::new(library),
        registrations: state.registrations,
        timings,
    })
}

/// What became of a library image once the runtime let go of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRelease {
    /// `dlclose` ran and the image is gone from the address space.
    Unmapped,
    /// `dlclose` ran but the image is still mapped (a thread-local destructor registered by
    /// the library on a live thread, or a platform that never unloads). It will stay; each
    /// version has its own path, so the next reload is unaffected.
    StillMapped,
    /// Readers still held the old version when the drain timeout expired; the library is
    /// closed later, when the last of them lets go (`Runtime::collect_deferred`).
    Deferred {
        /// Interfaces of the old version still held.
        holders: usize,
    },
    /// `dlclose` ran; whether the image left could not be determined on this platform.
    Unknown,
}

impl std::fmt::Display for ImageRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRelease::Unmapped => f.write_str("unmapped"),
            ImageRelease::StillMapped => f.write_str("closed but still mapped"),
            ImageRelease::Deferred { holders } => {
                write!(f, "deferred ({holders} holder(s) still pinned)")
            }
            ImageRelease::Unknown => f.write_str("closed (mapping unknown)"),
        }
    }
}

/// Closes the library if `library` is its last reference, and checks the mappings.
pub(crate) fn close_if_last(library: Arc<Library>) -> Result<ImageRelease, Arc<Library>> {
    let library = Arc::try_unwrap(library)?;
    let private = library.private_path().to_owned();
    drop(library);
    Ok(match sys::os::image_mapped(&private) {
        Some(false) => ImageRelease::Unmapped,
        Some(true) => ImageRelease::StillMapped,
        None => ImageRelease::Unknown,
    })
}
