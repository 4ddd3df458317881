//! Measured memory: what the process or its cgroup really uses, to take headroom away from the
//! budget when memory the ledger does not count grows.
//!
//! The ledger counts what its users tell it (estimates, then measured heap bytes). A daemon also
//! uses memory nobody reports — allocator slack, buffers, code. A probe reads the real figure:
//! [`CgroupProbe`] reads the cgroup's use and limit (the limit the kernel enforces, so the one
//! that matters for OOM) on cgroup v2, v1 and hybrid hosts, and its memory pressure (PSI) where
//! the kernel has it; [`RssProbe`] reads the process's resident set from `/proc/self/status`.
//! Both read files only (Linux); elsewhere they report [`ProbeError::Unavailable`]. See
//! [`ProbeConfig`](crate::ProbeConfig) for how a reading becomes a reduction.

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
    /// No mounted cgroup hierarchy holds this process's cgroup with a readable memory
    /// controller (the controller is not enabled, or `/sys/fs/cgroup` is not mounted here).
    #[error("no memory cgroup found for this process (memberships in {}: {memberships})", path.display())]
    NoMemoryCgroup {
        /// `/proc/self/cgroup`, as read.
        path: PathBuf,
        /// Its lines, joined with `; `.
        memberships: String,
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

    /// Memory pressure, if the source has such a signal (PSI). `None` by default.
    fn pressure(&self) -> Option<Result<Pressure, ProbeError>> {
        None
    }

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

/// Which cgroup interface a [`CgroupProbe`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CgroupVersion {
    /// cgroup v2: `memory.current`, `memory.max`, `memory.pressure`.
    V2,
    /// cgroup v1's memory controller: `memory.usage_in_bytes`, `memory.limit_in_bytes`.
    V1,
}

/// v1 reports "no limit" as the largest page-aligned `i64`; anything this large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// The memory use and limit of a cgroup: v2's `memory.current` and `memory.max`, or v1's
/// `memory.usage_in_bytes` and `memory.limit_in_bytes`; and, when the kernel has PSI, the
/// memory pressure (`memory.pressure` of the v2 cgroup, or the system's
/// `/proc/pressure/memory` where the cgroup is v1).
#[derive(Debug, Clone)]
pub struct CgroupProbe {
    dir: PathBuf,
    version: CgroupVersion,
    pressure: Option<PathBuf>,
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
struct Membership<'a> {
    controllers: Vec<&'a str>,
    path: &'a str,
}

/// One cgroup mount from `/proc/self/mountinfo`.
struct Mount {
    /// The part of the hierarchy mounted (`/` unless the mount shows a sub-tree).
    root: String,
    point: String,
    v2: bool,
    controllers: Vec<String>,
}

fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn memberships(text: &str) -> Vec<Membership<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: controllers.split(',').filter(|c| !c.is_empty()).collect(),
                path,
            })
        })
        .collect()
}

fn cgroup_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let (root, point) = (fields.get(3)?, fields.get(4)?);
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let options = right.next().unwrap_or("");
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(Mount {
                root: unescape(root),
                point: unescape(point),
                v2,
                controllers: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Where `path` (a cgroup path as `/proc/self/cgroup` shows it) lives under `mount`, seen from
/// `root`: the mount's point plus the path below the mount's own root. A container that shows
/// its host-side path but mounts only its own sub-tree (no cgroup namespace) is read at the
/// mount point itself.
fn cgroup_dirs(root: &Path, mount: &Mount, path: &str) -> Vec<PathBuf> {
    let point = root.join(mount.point.trim_start_matches('/'));
    let mut dirs = Vec::new();
    let below = if mount.root == "/" {
        Some(path)
    } else {
        path.strip_prefix(mount.root.as_str())
    };
    if let Some(rel) = below {
        dirs.push(point.join(rel.trim_start_matches('/')));
    }
    dirs.push(point);
    dirs
}

impl CgroupProbe {
    /// The cgroup v2 probe for the cgroup directory `dir` (e.g.
    /// `/sys/fs/cgroup/system.slice/x.service`).
    #[must_use]
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            pressure: Some(dir.join("memory.pressure")),
            dir,
            version: CgroupVersion::V2,
        }
    }

    /// The cgroup v1 probe for the memory-controller directory `dir` (e.g.
    /// `/sys/fs/cgroup/memory/system.slice/x.service`); no pressure file.
    #[must_use]
    pub fn v1_at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            version: CgroupVersion::V1,
            pressure: None,
        }
    }

    /// The probe for this process's own cgroup, found through `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`: cgroup v2 if the memory controller is enabled there, else v1's
    /// memory controller (v1-only and hybrid hosts).
    ///
    /// # Errors
    ///
    /// When the two files are unreadable, or no mounted hierarchy holds this process's cgroup
    /// with a readable memory controller.
    pub fn detect() -> Result<Self, ProbeError> {
        Self::detect_under(Path::new("/"))
    }

    /// [`Self::detect`] with every path taken under `root` (a fixture tree in tests, or a
    /// host's root seen from a container).
    ///
    /// # Errors
    ///
    /// As [`Self::detect`].
    pub fn detect_under(root: &Path) -> Result<Self, ProbeError> {
        let list = root.join("proc/self/cgroup");
        let list_text = read(&list)?;
        let mountinfo = read(&root.join("proc/self/mountinfo"))?;
        let groups = memberships(&list_text);
        let mounts = cgroup_mounts(&mountinfo);
        let v2_path = groups
            .iter()
            .find(|g| g.controllers.is_empty())
            .map(|g| g.path);
        let v2_dirs: Vec<PathBuf> = v2_path
            .into_iter()
            .flat_map(|path| {
                mounts
                    .iter()
                    .filter(|m| m.v2)
                    .flat_map(move |m| cgroup_dirs(root, m, path))
            })
            .collect();
        if let Some(dir) = v2_dirs.iter().find(|d| d.join("memory.current").is_file()) {
            return Ok(Self::at(dir));
        }
        let v1_path = groups
            .iter()
            .find(|g| g.controllers.contains(&"memory"))
            .map(|g| g.path);
        if let Some(path) = v1_path {
            for mount in mounts
                .iter()
                .filter(|m| !m.v2 && m.controllers.iter().any(|c| c == "memory"))
            {
                if let Some(dir) = cgroup_dirs(root, mount, path)
                    .into_iter()
                    .find(|d| d.join("memory.usage_in_bytes").is_file())
                {
                    // PSI of a hybrid host's v2 tree, else the system's.
                    let pressure = v2_dirs
                        .iter()
                        .map(|d| d.join("memory.pressure"))
                        .chain([root.join("proc/pressure/memory")])
                        .find(|p| p.is_file());
                    return Ok(Self {
                        dir,
                        version: CgroupVersion::V1,
                        pressure,
                    });
                }
            }
        }
        Err(ProbeError::NoMemoryCgroup {
            path: list,
            memberships: list_text.lines().take(16).collect::<Vec<_>>().join("; "),
        })
    }

    /// The cgroup directory read.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Which interface it reads.
    #[must_use]
    pub fn version(&self) -> CgroupVersion {
        self.version
    }
}

fn parse_u64(path: &Path) -> Result<u64, ProbeError> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| malformed(path, &text))
}

/// Memory pressure (PSI): the share of recent time some or all tasks stalled on memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    /// `some avg10`: percent of the last 10 s in which at least one task stalled on memory.
    pub some_avg10: f64,
    /// `full avg10`: percent of the last 10 s in which all non-idle tasks stalled at once.
    pub full_avg10: f64,
}

impl Pressure {
    /// Parses a PSI file (`some avg10=… avg60=… avg300=… total=…` and a `full` line).
    ///
    /// # Errors
    ///
    /// [`ProbeError::Malformed`] naming `path` if the `some` line or its `avg10` is missing.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ProbeError> {
        let avg10 = |kind: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(kind))
                .and_then(|rest| {
                    rest.split_whitespace()
                        .find_map(|f| f.strip_prefix("avg10="))
                })
                .and_then(|v| v.parse::<f64>().ok())
        };
        let some_avg10 = avg10("some ").ok_or_else(|| malformed(path, text))?;
        Ok(Self {
            some_avg10,
            full_avg10: avg10("full ").unwrap_or(0.0),
        })
    }
}

impl MemoryProbe for CgroupProbe {
    fn sample(&self) -> Result<MemorySample, ProbeError> {
        let (current, max_path) = match self.version {
            CgroupVersion::V2 => (
                parse_u64(&self.dir.join("memory.current"))?,
                self.dir.join("memory.max"),
            ),
            CgroupVersion::V1 => (
                parse_u64(&self.dir.join("memory.usage_in_bytes"))?,
                self.dir.join("memory.limit_in_bytes"),
            ),
        };
        let max = match read(&max_path) {
            Ok(text) if text.trim() == "max" => None,
            Ok(text) => {
                let limit: u64 = text
                    .trim()
                    .parse()
                    .map_err(|_| malformed(&max_path, &text))?;
                (limit < V1_UNLIMITED).then_some(limit)
            }
            Err(_) => None,
        };
        Ok(MemorySample { current, max })
    }

    fn pressure(&self) -> Option<Result<Pressure, ProbeError>> {
        let path = self.pressure.as_ref()?;
        match read(path) {
            Ok(text) => Some(Pressure::parse(path, &text)),
            // No PSI in this kernel: no signal rather than an error.
            Err(_) => None,
        }
    }

    fn name(&self) -> &str {
        match self.version {
            CgroupVersion::V2 => "cgroup",
            CgroupVersion::V1 => "cgroup-v1",
        }
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
