//! `cargo xtask demo`: one scenario per crate on real OS parts, with measured figures, and as
//! the finale the crates working together: the microVM host scenario (`tests/tests/
//! microvm_host.rs`), which prints its table and verdict.

use crate::cmd::{self, cargo};

/// One crate's demo: an example of the crate, run in release mode.
struct Demo {
    krate: &'static str,
    /// The example to run; `None` while the crate has no demo yet.
    example: Option<&'static str>,
    /// Build the crate's binaries first (the demo drives the real daemon).
    needs_bins: bool,
}

const DEMOS: &[Demo] = &[
    Demo {
        krate: "platform-primitives",
        example: Some("tour"),
        needs_bins: false,
    },
    Demo {
        krate: "squib-host",
        example: Some("demo"),
        needs_bins: false,
    },
    Demo {
        krate: "engate-attach",
        example: Some("demo"),
        needs_bins: false,
    },
    Demo {
        krate: "varta-watch",
        example: Some("demo"),
        needs_bins: true,
    },
    Demo {
        krate: "polyplug-runtime",
        example: Some("demo"),
        needs_bins: false,
    },
    Demo {
        krate: "sqry-admission",
        example: Some("demo"),
        needs_bins: false,
    },
];

pub(crate) fn run() -> Result<(), String> {
    for Demo {
        krate,
        example,
        needs_bins,
    } in DEMOS
    {
        println!("\n==> demo: {krate}");
        if *needs_bins && example.is_some() {
            cmd::run(cargo().args([
                "build",
                "--quiet",
                "--release",
                "--locked",
                "-p",
                krate,
                "--bins",
            ]))?;
        }
        match example {
            Some(example) => cmd::run(cargo().args([
                "run",
                "--quiet",
                "--release",
                "--locked",
                "-p",
                krate,
                "--example",
                example,
            ]))?,
            None => println!(
                "not there yet: {krate} is a skeleton (docs only); its issue adds its demo"
            ),
        }
    }
    finale()
}

/// The microVM host: real Firecracker guests restored through the pager service, their
/// consoles in engate sessions, the pager supervised by varta-watch, restores admitted by
/// sqry-admission, one template served by a hot-reloaded polyplug plugin. Without the
/// Firecracker kit or KVM it says why and runs the same host on a stand-in VMM.
fn finale() -> Result<(), String> {
    println!("\n==> demo finale: a microVM host (the crates together)");
    crate::ci::build_programs(true)?;
    cmd::run(
        cargo()
            .args([
                "test",
                "--quiet",
                "--release",
                "--locked",
                "-p",
                "workspace-tests",
                "--test",
                "microvm_host",
            ])
            .env("WORKSPACE_PROGRAMS_REQUIRED", "1"),
    )
}
