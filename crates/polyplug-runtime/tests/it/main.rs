//! Integration tests of polyplug-runtime against real shared libraries: a C plugin compiled
//! with the system C compiler and a Rust cdylib plugin built with cargo (see
//! `tests/support/fixtures.rs`), each in a v1 and a v2, plus a C host driving the C API.

#[path = "../support/contracts.rs"]
mod contracts;
#[path = "../support/fixtures.rs"]
mod fixtures;

mod abi;
mod bad_input;
mod lifecycle;
mod proptests;
mod registry;
mod reload;
mod requires;
mod services;
mod signature;
mod state;
