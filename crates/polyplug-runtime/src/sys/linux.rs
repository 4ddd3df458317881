//! Linux: whether a library image is still mapped, from `/proc/self/maps`.
//!
//! `dlclose` may succeed without unmapping anything (a library whose thread-local destructors
//! are still registered on a live thread stays mapped in glibc; musl never unmaps), so the
//! reload report checks what the kernel says: every library version is loaded from a unique
//! private path, and after `dlclose` the path either still appears among the mappings (possibly
//! as `<path> (deleted)`) or not.

use std::path::Path;

/// `Some(true)` if a mapping of `path` exists, `Some(false)` if not, `None` if unknown.
pub(crate) fn image_mapped(path: &Path) -> Option<bool> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = path.to_str()?;
    Some(maps.lines().any(|line| {
        let line = line.strip_suffix(" (deleted)").unwrap_or(line);
        line.ends_with(path) && line[..line.len() - path.len()].ends_with(' ')
    }))
}
