//! macOS: whether a library image is still loaded, from dyld's image list.
//!
//! dyld refuses to unload images with thread-local variables, and `dlclose` does not say so;
//! every library version is loaded from a unique private path, so the reload report looks the
//! path up among the images dyld still has.

use core::ffi::CStr;
use std::path::Path;

/// `Some(true)` if dyld lists an image at `path`, `Some(false)` if not, `None` if unknown.
pub(crate) fn image_mapped(path: &Path) -> Option<bool> {
    let wanted = path.to_str()?;
    // SAFETY: _dyld_image_count takes no arguments and only reads dyld's image list.
    let count = unsafe { mach2::dyld::_dyld_image_count() };
    for index in 0..count {
        // SAFETY: index < count; dyld returns null for an image unloaded meanwhile, or a
        // NUL-terminated name it owns, which we copy before the next dyld call.
        let name = unsafe { mach2::dyld::_dyld_get_image_name(index) };
        if name.is_null() {
            continue;
        }
        // SAFETY: non-null and NUL-terminated per dyld's contract.
        let name = unsafe { CStr::from_ptr(name) };
        if name.to_bytes() == wanted.as_bytes() {
            return Some(true);
        }
    }
    Some(false)
}
