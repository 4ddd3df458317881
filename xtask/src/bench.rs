//! `cargo xtask bench [crate]`: runs the crates' criterion benches and collects their verdict
//! lines (`bench: <crate>/<metric> = <value> <unit> (target <op> <value>) ok|FAIL`).

use std::process::Command;

use crate::cmd::{self, Tally, cargo, root};

/// engate-attach's terminal bench compares the `engate` program with dtach; dtach is installed
/// with apt when it is missing. If that fails the bench prints `skip: … why` for the dtach
/// comparison and gives no verdict for it.
fn prepare_dtach() {
    if on_path("dtach") {
        return;
    }
    println!("dtach is not installed: trying `apt-get install -y dtach`");
    let install = || cmd::succeeds(Command::new("apt-get").args(["install", "-y", "dtach"]));
    // A fresh machine may have no package lists yet.
    let installed =
        install() || (cmd::succeeds(Command::new("apt-get").arg("update")) && install());
    if !installed || !on_path("dtach") {
        println!(
            "warning: could not install dtach with apt-get; engate-attach's bench skips the dtach comparison"
        );
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// Workspace crates whose manifest declares at least one `[[bench]]`.
fn crates_with_benches() -> Result<Vec<String>, String> {
    let dir = root().join("crates");
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path().join("Cargo.toml");
        let manifest = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(name) = path.parent().and_then(|p| p.file_name())
            && manifest.contains("[[bench]]")
        {
            found.push(name.to_string_lossy().into_owned());
        }
    }
    found.sort();
    Ok(found)
}

pub(crate) fn run(only: Option<&str>) -> Result<(), String> {
    let available = crates_with_benches()?;
    let selected: Vec<String> = match only {
        Some(name) if available.iter().any(|c| c == name) => vec![name.to_owned()],
        Some(name) if root().join("crates").join(name).is_dir() => {
            println!("{name} has no benchmarks yet");
            return Ok(());
        }
        Some(name) => return Err(format!("no workspace crate named '{name}'")),
        None => available,
    };
    let mut verdicts = Vec::new();
    for krate in &selected {
        println!("\n==> bench: {krate}");
        if krate == "engate-attach" {
            prepare_dtach();
        }
        let mut bench = cargo();
        bench.args(["bench", "--locked", "-p", krate]);
        if let Some(features) = crate::ci::program_features(krate) {
            bench.args(["--features", features]);
        }
        let lines = cmd::run_counting(&mut bench, &mut Tally::default(), |line| {
            line.starts_with("bench: ") || line.starts_with("skip: ")
        })?;
        if lines.is_empty() {
            return Err(format!("{krate}'s benches printed no verdict line"));
        }
        verdicts.extend(lines);
    }
    println!("\n==> bench verdicts");
    for line in &verdicts {
        println!("{line}");
    }
    let failed = verdicts
        .iter()
        .filter(|l| l.starts_with("bench: ") && l.trim_end().ends_with("FAIL"))
        .count();
    let judged = verdicts.iter().filter(|l| l.starts_with("bench: ")).count();
    println!("{} ok, {failed} FAIL", judged - failed);
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} benchmark target(s) missed"))
    }
}
