//! An error as one line: the error and each of its causes.
//!
//! Daemons log errors and send them to clients as text; the top-level message alone usually
//! hides the part that says what went wrong (`cannot start the pager` without `permission
//! denied`). [`chain`] walks [`Error::source`] and joins every message with `": "`, the form
//! every crate of the workspace logs and reports.
//!
//! ```
//! use platform_primitives::error::chain;
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("cannot open the snapshot /var/snap/mem")]
//! struct Open(#[source] std::io::Error);
//!
//! let e = Open(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
//! assert_eq!(chain(&e), "cannot open the snapshot /var/snap/mem: permission denied");
//! ```

use std::error::Error;

/// `error`'s message followed by each of its sources', joined with `": "`.
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
