//! Workspace automation, run as `cargo xtask <command>`.
//!
//! - `ci` — every suite, in order, stopping at the first failure; the stages are `format`,
//!   `clippy`, `macos-check` (the Apple-only code linted for macOS), `tests`, `docs`, `loom`,
//!   `cross-crate`, `dependency-policy`, `packaging` (`cargo package` of the published crates)
//!   and `platform-gated`. Ends with one `N passed, N failed` line. `.ci/run` calls exactly
//!   this. `ci --stage NAME` runs one stage.
//! - `demo` — one scenario per crate on real OS parts, with measured figures.
//! - `bench [crate]` — the benchmarks, with `bench: …` verdict lines and a summary, recorded in
//!   `docs/benchmarks.md`; `bench --rewrite` re-renders that file without measuring.
//!
//! xtask has no dependencies so that it builds in seconds on a cold machine.

#![forbid(unsafe_code)]

mod bench;
mod ci;
mod cmd;
mod demo;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci              run every suite (what CI runs), ending with 'N passed, N failed'
  ci --stage NAME run one stage (format, clippy, macos-check, tests, …; a wrong name lists them)
  demo            run the demo scenarios on real OS parts
  bench [crate]   run benchmarks (all crates, or one), print their verdicts and record
                  them in docs/benchmarks.md (--rewrite: re-render it, measure nothing)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") if args.len() == 1 => ci::run(None),
        Some("ci") if args.len() == 3 && args[1] == "--stage" => ci::run(Some(&args[2])),
        Some("demo") if args.len() == 1 => demo::run(),
        Some("bench") if args.len() <= 2 => bench::run(args.get(1).map(String::as_str)),
        Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err}");
            ExitCode::FAILURE
        }
    }
}
