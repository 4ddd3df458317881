//! Cross-crate test suites for the workspace; see `tests/tests/`. This library is empty on
//! purpose: the suites are integration tests so each runs against the crates' public APIs only.
