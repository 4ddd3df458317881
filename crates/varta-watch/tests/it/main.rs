//! Integration tests of varta-watch on real parts: the real `varta-watch` binary as a child
//! process, real senders (`systemd-notify`, the `varta-watch beacon` agent, raw sockets), real
//! signals (SIGSTOP, SIGCONT, SIGKILL, SIGTERM), real socket activation, and the observer
//! library's bind contracts.

#![cfg(target_os = "linux")]

#[path = "../support/crc32c.rs"]
mod crc32c;

mod bind;
mod daemon;
mod edges;
mod hooks;
mod interop;
mod services;
mod support;
mod systemd;
