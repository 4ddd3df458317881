//! The `varta-watch` daemon: binds the observer socket, writes one JSON line per event, runs
//! hooks, serves Prometheus metrics and a status snapshot, and stops cleanly on SIGTERM/SIGINT
//! (removing its socket).
//!
//! `varta-watch status --control PATH` prints the running daemon's JSON status snapshot.

#![deny(unsafe_code)]

#[cfg(target_os = "linux")]
mod config;
#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

/// The observer needs Linux (`SO_PASSCRED`, pidfds); elsewhere the binary says so and fails.
#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "varta-watch: the observer daemon needs Linux (SO_PASSCRED credentials and pidfds); \
         agents on this platform can still send heartbeats with varta_watch::beacon::Beacon"
    );
    std::process::ExitCode::from(2)
}
