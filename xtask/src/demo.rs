//! `cargo xtask demo`: one scenario per crate on real OS parts, with measured figures. Crates
//! that have not landed yet are listed plainly as such.

use crate::cmd::{self, cargo};

/// Each crate's demo: (crate, how it runs). `None` means the crate has no demo yet.
const DEMOS: &[(&str, Option<&str>)] = &[
    ("platform-primitives", Some("tour")),
    ("squib-host", None),
    ("engate-attach", None),
    ("varta-watch", None),
    ("polyplug-runtime", None),
    ("sqry-admission", None),
];

pub(crate) fn run() -> Result<(), String> {
    for (krate, example) in DEMOS {
        println!("\n==> demo: {krate}");
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
    Ok(())
}
