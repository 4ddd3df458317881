//! Integration tests of sqry-admission through its public API: the contracts of sqry's daemon
//! (the code-search daemon this crate comes from), admission and eviction, publishing, loading, serving, the memory probe, a
//! model-based property test and a million-operation stress test.

mod admission;
mod async_loading;
mod contracts;
mod export;
mod ledger;
mod loading;
mod model;
mod probe;
mod publishing;
mod serving;
mod stress;
mod support;
