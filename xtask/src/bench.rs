//! `cargo xtask bench [crate]`: runs the crates' criterion benches and collects their verdict
//! lines (`bench: <crate>/<metric> = <value> <unit> (target <op> <value>) ok|FAIL`). Run for
//! every crate (no argument), it also writes `docs/benchmarks.md`: every figure with its
//! target, baseline and verdict, and the machine it was measured on.

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
    if only.is_none() {
        let path = root().join("docs/benchmarks.md");
        std::fs::write(&path, table(&verdicts))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
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

/// One parsed verdict line.
#[derive(Debug, PartialEq)]
struct Verdict<'a> {
    krate: &'a str,
    metric: &'a str,
    value: &'a str,
    unit: &'a str,
    target: &'a str,
    ok: bool,
}

/// Parses `bench: <crate>/<metric> = <value> <unit> (target <op> <bound>) ok|FAIL`.
fn parse(line: &str) -> Option<Verdict<'_>> {
    let rest = line.strip_prefix("bench: ")?;
    let (name, rest) = rest.split_once(" = ")?;
    let (krate, metric) = name.split_once('/')?;
    let (value, rest) = rest.split_once(' ')?;
    let (unit, rest) = rest.split_once(" (target ")?;
    let (target, verdict) = rest.rsplit_once(") ")?;
    let ok = match verdict.trim() {
        "ok" => true,
        "FAIL" => false,
        _ => return None,
    };
    Some(Verdict {
        krate,
        metric,
        value,
        unit,
        target,
        ok,
    })
}

/// What a metric is compared with, from its name: a ratio names its same-run baseline after
/// `_vs_`; anything else is an absolute figure.
fn baseline(metric: &str) -> String {
    match metric.split_once("_vs_") {
        Some((_, against)) => against.replace('_', " "),
        None => "absolute".to_owned(),
    }
}

/// The machine the figures were measured on: CPU model, cores, kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("unknown CPU")
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| std::env::consts::OS.to_owned(), |k| k.trim().to_owned());
    format!("{model}, {cores} cores, {} {kernel}", std::env::consts::OS)
}

/// `docs/benchmarks.md` from the collected verdict and skip lines.
fn table(lines: &[String]) -> String {
    let mut out = String::from(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` (every crate) — do not edit by hand. Each ratio is \
         measured against its baseline in the same run (the bench's own doc comment says what \
         the baseline is and why it is the best alternative); absolute figures are noted as \
         such. The crates' READMEs quote their numbers from this file.\n\n",
    );
    out.push_str(&format!("Machine: {}.\n\n", machine()));
    out.push_str("| crate | metric | value | unit | target | baseline | verdict |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    let mut failed = 0;
    for v in lines.iter().filter_map(|l| parse(l)) {
        failed += usize::from(!v.ok);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            v.krate,
            v.metric,
            v.value,
            v.unit,
            v.target,
            baseline(v.metric),
            if v.ok { "ok" } else { "**FAIL**" }
        ));
    }
    let skips: Vec<&String> = lines.iter().filter(|l| l.starts_with("skip: ")).collect();
    if !skips.is_empty() {
        out.push_str("\nNot measured on this machine:\n\n");
        for s in skips {
            out.push_str(&format!("- {}\n", s.trim_start_matches("skip: ")));
        }
    }
    out.push_str(&format!(
        "\n{} figures, {failed} missing their target.\n",
        lines.iter().filter_map(|l| parse(l)).count()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines_parse_and_tabulate() {
        let line = "bench: engate-attach/cat_64MiB_throughput_vs_dtach = 0.55 x (target >= 1) FAIL";
        let v = parse(line).expect("parses");
        assert_eq!(
            v,
            Verdict {
                krate: "engate-attach",
                metric: "cat_64MiB_throughput_vs_dtach",
                value: "0.55",
                unit: "x",
                target: ">= 1",
                ok: false,
            }
        );
        assert_eq!(baseline(v.metric), "dtach");
        assert_eq!(baseline("memory_per_agent"), "absolute");
        assert!(parse("bench: nonsense").is_none());
        let md = table(&[line.to_owned(), "skip: x: no dtach".to_owned()]);
        assert!(md.contains("| engate-attach | cat_64MiB_throughput_vs_dtach | 0.55 | x | >= 1 | dtach | **FAIL** |"), "{md}");
        assert!(md.contains("- x: no dtach"), "{md}");
        assert!(md.contains("1 figures, 1 missing"), "{md}");
    }
}
