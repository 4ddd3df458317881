//! Measured memory: what the process or its cgroup really uses, to take headroom away from the
//! budget when memory the ledger does not count grows.
//!
//! The ledger counts what its users tell it (estimates, then measured heap bytes). A daemon also
//! uses memory nobody reports — allocator slack, buffers, code. A probe reads the real figure:
//! [`CgroupProbe`] reads cgroup v2's `memory.current` and `memory.max` (the limit the kernel
//! enforces, so the one that matters for OOM), [`RssProbe`] the process's resident set from
//! `/proc/self/status`. Both read files only (Linux); elsewhere they report
//! [`ProbeError::Unavailable`]. See [`ProbeConfig`](crate::ProbeConfig) for how a reading
//! becomes a reduction.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// One reading of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySample {
    /// Bytes in use now.
    pub current: u64,
    /// The ceiling the probe knows of (cgroup `memory.max`), if any.
    pub max: Option<u64>,
}

/// Failure to read a probe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The file the probe reads could not be read (not Linux, no cgroup v2, no permission).
    #[error("memory probe cannot read {}", path.display())]
    Unavailable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file was read but did not hold what the probe expects.
    #[error("memory probe cannot parse {}: {content:?}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The text that did not parse (first 80 bytes).
        content: String,
    },
}

/// A source of memory readings.
pub trait MemoryProbe: Send + Sync {
    /// Reads the memory in use now.
    ///
    /// # Errors
    ///
    /// When the source cannot be read or parsed.
    fn sample(&self) -> Result<MemorySample, ProbeError>;

    /// A short name for status and logs.
    fn name(&self) -> &str;
}

fn read(path: &Path) -> Result<String, ProbeError> {
    std::fs::read_to_string(path).map_err(|source| ProbeError::Unavailable {
        path: path.to_owned(),
        source,
    })
}

fn malformed(path: &Path, content: &str) -> ProbeError {
    ProbeError::Malformed {
        path: path.to_owned(),
        content: content.chars().take(80).collect(),
    }
}

/// cgroup v2 `memory.current` and `memory.max` of a cgroup directory.
#[derive(Debug, Clone)]
pub struct CgroupProbe {
    dir: PathBuf,
}

impl CgroupProbe {
    /// The probe for the cgroup directory `dir` (e.g. `/sys/fs/cgroup/system.slice/x.service`).
    #[must_use]
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The probe for this process's own cgroup v2, found through `/proc/self/cgroup`.
    ///
    /// # Errors
    ///
    /// When `/proc/self/cgroup` is unreadable or lists no cgroup v2 membership, or the cgroup
    /// has no readable `memory.current` (memory controller not enabled).
    pub fn detect() -> Result<Self, ProbeError> {
        let list = Path::new("/proc/self/cgroup");
        let text = read(list)?;
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| malformed(list, &text))?;
        let probe = Self::at(Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/')));
        read(&probe.dir.join("memory.current"))?;
        Ok(probe)
    }

    /// The cgroup directory read.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl MemoryProbe for CgroupProbe {
    fn sample(&self) -> Result<MemorySample, ProbeError> {
        let cur_path = self.dir.join("memory.current");
        let cur = read(&cur_path)?;
        let current = cur.trim().parse().map_err(|_| malformed(&cur_path, &cur))?;
        let max_path = self.dir.join("memory.max");
        let max = match read(&max_path) {
            Ok(text) if text.trim() == "max" => None,
            Ok(text) => Some(
                text.trim()
                    .parse()
                    .map_err(|_| malformed(&max_path, &text))?,
            ),
            Err(_) => None,
        };
        Ok(MemorySample { current, max })
    }

    fn name(&self) -> &str {
        "cgroup"
    }
}

/// The resident set size of this process (`VmRSS` in `/proc/self/status`); no ceiling.
#[derive(Debug, Clone, Copy, Default)]
pub struct RssProbe;

impl MemoryProbe for RssProbe {
    fn sample(&self) -> Result<MemorySample, ProbeError> {
        let path = Path::new("/proc/self/status");
        let text = read(path)?;
        let kib: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| malformed(path, &text))?;
        Ok(MemorySample {
            current: kib * 1024,
            max: None,
        })
    }

    fn name(&self) -> &str {
        "rss"
    }
}

impl fmt::Debug for dyn MemoryProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemoryProbe({})", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_probe_reads_a_plausible_figure_on_linux() {
        match RssProbe.sample() {
            Ok(s) => {
                assert!(s.current > 1 << 20, "a test process uses more than 1 MiB");
                assert!(s.max.is_none());
            }
            Err(e) if !cfg!(target_os = "linux") => println!("skip: rss probe: {e}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn cgroup_probe_parses_current_and_max() {
        let dir = std::env::temp_dir().join(format!("sqry-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "123456\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        let probe = CgroupProbe::at(&dir);
        assert_eq!(
            probe.sample().unwrap(),
            MemorySample {
                current: 123_456,
                max: None
            }
        );
        std::fs::write(dir.join("memory.max"), "1000000\n").unwrap();
        assert_eq!(probe.sample().unwrap().max, Some(1_000_000));
        std::fs::write(dir.join("memory.current"), "lots\n").unwrap();
        assert!(matches!(probe.sample(), Err(ProbeError::Malformed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            probe.sample(),
            Err(ProbeError::Unavailable { .. })
        ));
    }
}
