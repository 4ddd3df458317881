//! Prewarm lists and working-set record and replay.
//!
//! A restored guest touches much the same pages in the same order every time it starts (REAP
//! and FaaSnap measured 3–4× faster cold starts by prefetching them). The pager records the
//! snapshot offsets of the pages that took a *demand* fault, in first-touch order; saved with
//! [`PrewarmList::save`], that list is the prewarm list of the next restore: those pages are
//! installed eagerly, in order, right after the server starts, before background population
//! and while demand faults still go first.
//!
//! Offsets, not addresses, are recorded: a VMM maps guest memory at a different host address on
//! every run, but a page's place in the snapshot does not move.
//!
//! The file format is text: a `squib-working-set v1` header line, then one hexadecimal snapshot
//! offset per line.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const HEADER: &str = "squib-working-set v1";

/// Snapshot offsets to install eagerly, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrewarmList {
    offsets: Vec<u64>,
}

/// Why a prewarm list could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrewarmError {
    /// Reading or writing the file failed.
    #[error("cannot {op} working-set file {}", path.display())]
    Io {
        /// "read" or "write".
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file is not a working-set file, or a line is not a hexadecimal offset.
    #[error("{}:{line}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl PrewarmList {
    /// A list of snapshot offsets (each is rounded down to its page when installed).
    pub fn new(offsets: impl IntoIterator<Item = u64>) -> Self {
        Self {
            offsets: offsets.into_iter().collect(),
        }
    }

    /// The offsets, in order.
    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// Number of offsets.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Appends an offset.
    pub fn push(&mut self, offset: u64) {
        self.offsets.push(offset);
    }

    /// Writes the list to `path` (atomically: a temporary file renamed into place).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), PrewarmError> {
        let path = path.as_ref();
        let err = |source| PrewarmError::Io {
            op: "write",
            path: path.to_owned(),
            source,
        };
        let mut text = String::with_capacity(HEADER.len() + 1 + self.offsets.len() * 10);
        text.push_str(HEADER);
        text.push('\n');
        for off in &self.offsets {
            text.push_str(&format!("{off:x}\n"));
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, path).map_err(err)?;
        Ok(())
    }

    /// Reads a list written by [`save`](Self::save).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PrewarmError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| PrewarmError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| PrewarmError::Format {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Parses the text format; errors carry the 1-based line.
    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(HEADER) {
            return Err((1, format!("not a working-set file (expected `{HEADER}`)")));
        }
        let mut offsets = Vec::new();
        for (i, line) in lines.enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let off = u64::from_str_radix(line, 16)
                .map_err(|e| (i + 2, format!("`{line}` is not a hexadecimal offset: {e}")))?;
            offsets.push(off);
        }
        Ok(Self { offsets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_bad_files_name_the_line() {
        let dir = std::env::temp_dir().join(format!("squib-prewarm-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ws");
        let list = PrewarmList::new([0x3000, 0, 0x1_0000_0000]);
        list.save(&path).unwrap();
        assert_eq!(PrewarmList::load(&path).unwrap(), list);

        fs::write(&path, format!("{HEADER}\n1000\nzz\n")).unwrap();
        let err = PrewarmList::load(&path).unwrap_err();
        assert!(matches!(err, PrewarmError::Format { line: 3, .. }), "{err}");
        fs::write(&path, "hello\n").unwrap();
        let err = PrewarmList::load(&path).unwrap_err().to_string();
        assert!(err.contains(":1:"), "{err}");
        let missing = PrewarmList::load(dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing"), "{missing}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
