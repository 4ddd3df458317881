//! Integration tests of squib-host on real parts: real userfaultfd faults raised by real
//! threads touching lazily restored memory, a real KVM guest whose RAM is served lazily, real
//! snapshot files (sparse, with holes), real sockets for the page-server source, all verified
//! byte for byte; plus property tests of the parsers and region bookkeeping. Tests that need
//! userfaultfd or /dev/kvm print a skip line when they are not available.

#[path = "../support/pages.rs"]
mod pages;

mod edges;
mod faults;
mod kvm;
mod lifecycle;
mod page_server;
mod props;
mod sources;
mod support;
