//! What a reload or an unload did: its phases and their timings, what changed in the registry,
//! the cascade to dependents, and whether the old library image really left the process.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::abi::Version;
use crate::error::ReloadError;
use crate::loader::ImageRelease;
use crate::registry::SwapSummary;

/// The steps of a reload, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadStep {
    /// Waiting for the bundle's reload gate (another reload of the same bundle).
    GateWait,
    /// Reading the manifest.
    Manifest,
    /// Copying the library to its private per-version path.
    Copy,
    /// `dlopen`.
    Open,
    /// Reading the ABI-version sentinel and the entry points.
    AbiCheck,
    /// `polyplug_init` (registrations staged, invisible).
    Init,
    /// The state hand-off: the old version's `polyplug_state_export`, the new one's
    /// `polyplug_state_import` (only when both export them).
    State,
    /// The registry commit: swap in place, publish, retire. Readers never wait for it.
    Swap,
    /// The post-swap validation hook.
    Validate,
    /// Reloading dependents that opted in.
    Cascade,
    /// Waiting for readers of the old version to let go.
    Drain,
    /// `polyplug_fini`, `dlclose` and the mapping check.
    Unmap,
}

impl fmt::Display for ReloadStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ReloadStep::GateWait => "gate-wait",
            ReloadStep::Manifest => "manifest",
            ReloadStep::Copy => "copy",
            ReloadStep::Open => "dlopen",
            ReloadStep::AbiCheck => "abi-check",
            ReloadStep::Init => "init",
            ReloadStep::State => "state",
            ReloadStep::Swap => "swap",
            ReloadStep::Validate => "validate",
            ReloadStep::Cascade => "cascade",
            ReloadStep::Drain => "drain",
            ReloadStep::Unmap => "unmap",
        };
        f.write_str(name)
    }
}

/// A dependent's reload triggered by this one. Its failure does not fail the parent reload.
#[derive(Debug)]
pub struct CascadeOutcome {
    /// The dependent bundle.
    pub bundle: String,
    /// Its reload's report or error.
    pub result: Result<Box<ReloadReport>, ReloadError>,
}

/// What a successful reload did.
#[derive(Debug)]
pub struct ReloadReport {
    /// The bundle.
    pub bundle: String,
    /// The version that was live before.
    pub from: Version,
    /// The version live now.
    pub to: Version,
    /// The library file the new version was loaded from.
    pub library: PathBuf,
    /// Each step and its duration, in order.
    pub phases: Vec<(ReloadStep, Duration)>,
    /// What changed in the registry.
    pub swap: SwapSummary,
    /// Dependents reloaded after this bundle.
    pub cascade: Vec<CascadeOutcome>,
    /// What became of the old image.
    pub old_image: ImageRelease,
    /// From the request to the end of the report.
    pub total: Duration,
}

impl ReloadReport {
    /// The duration of `step`, if it ran.
    pub fn phase(&self, step: ReloadStep) -> Option<Duration> {
        self.phases
            .iter()
            .find(|(s, _)| *s == step)
            .map(|(_, d)| *d)
    }

    /// Whether every cascaded reload (recursively) succeeded.
    pub fn cascade_ok(&self) -> bool {
        self.cascade.iter().all(|c| match &c.result {
            Ok(report) => report.cascade_ok(),
            Err(_) => false,
        })
    }
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reload of `{}` {} -> {} from {} in {:?}",
            self.bundle,
            self.from,
            self.to,
            self.library.display(),
            self.total
        )?;
        for (step, duration) in &self.phases {
            writeln!(f, "  {step:<10} {duration:?}")?;
        }
        writeln!(
            f,
            "  contracts: {} swapped in place, {} added, {} retired{}",
            self.swap.swapped,
            self.swap.added,
            self.swap.retired,
            if self.swap.index_republished {
                " (find index republished)"
            } else {
                ""
            }
        )?;
        writeln!(f, "  old image: {}", self.old_image)?;
        for outcome in &self.cascade {
            match &outcome.result {
                Ok(report) => writeln!(
                    f,
                    "  cascade: `{}` reloaded in {:?}",
                    outcome.bundle, report.total
                )?,
                Err(e) => writeln!(f, "  cascade: `{}` failed: {e}", outcome.bundle)?,
            }
        }
        Ok(())
    }
}

/// What an unload did.
#[derive(Debug, Clone)]
pub struct UnloadReport {
    /// The bundle.
    pub bundle: String,
    /// Contracts retired (their handles are stale now).
    pub retired: usize,
    /// Time spent waiting for readers.
    pub drain: Duration,
    /// What became of the image.
    pub image: ImageRelease,
}
