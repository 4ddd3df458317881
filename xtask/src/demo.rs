//! `cargo xtask demo`: one scenario per crate on real OS parts, with measured figures, and as
//! the finale the crates working together: the microVM host scenario (`tests/tests/
//! microvm_host.rs`), which prints its table and verdict.

use crate::cmd::{self, cargo};

/// One crate's demo: an example of the crate, run in release mode.
struct Demo {
    krate: &'static str,
    /// The example to run.
    example: &'static str,
    /// Build the crate's binaries first (the demo drives the real daemon).
    needs_bins: bool,
}

const DEMOS: &[Demo] = &[
    Demo {
        krate: "platform-primitives",
        example: "tour",
        needs_bins: false,
    },
    Demo {
        krate: "squib-host",
        example: "demo",
        needs_bins: false,
    },
    Demo {
        krate: "engate-attach",
        example: "demo",
        needs_bins: false,
    },
    Demo {
        krate: "varta-watch",
        example: "demo",
        needs_bins: true,
    },
    Demo {
        krate: "polyplug-runtime",
        example: "demo",
        needs_bins: false,
    },
    Demo {
        krate: "sqry-admission",
        example: "demo",
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
        if *needs_bins {
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
        cmd::run(cargo().args([
            "run",
            "--quiet",
            "--release",
            "--locked",
            "-p",
            krate,
            "--example",
            example,
        ]))?;
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
