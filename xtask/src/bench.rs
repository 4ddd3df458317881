//! `cargo xtask bench [crate]`: runs the crates' criterion benches and collects their verdict
//! lines (`bench: <crate>/<metric> = <value> <unit> (target <op> <value>) ok|FAIL`), and writes
//! them into `docs/benchmarks.md`: every figure with its target, baseline and verdict, the
//! date each crate was measured and the machine. Benching one crate replaces that crate's rows
//! and keeps the others'.

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
    let mut measured: Vec<(String, String)> = Vec::new();
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
        measured.extend(lines.iter().map(|l| (krate.clone(), l.clone())));
        verdicts.extend(lines);
    }
    println!("\n==> bench verdicts");
    for line in &verdicts {
        println!("{line}");
    }
    let path = root().join("docs/benchmarks.md");
    let previous = std::fs::read_to_string(&path).unwrap_or_default();
    let today = utc_date(std::time::SystemTime::now());
    let mut entries: Vec<Entry> = raw_entries(&previous)
        .into_iter()
        .filter(|e| !selected.contains(&e.krate))
        .collect();
    entries.extend(measured.into_iter().map(|(krate, line)| Entry {
        krate,
        date: today.clone(),
        line,
    }));
    entries.sort_by(|a, b| a.krate.cmp(&b.krate));
    std::fs::write(&path, table(&entries))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
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

/// What a metric is compared with: a ratio that names its same-run baseline after `_vs_`
/// gives it; another ratio (unit `x`) has its baseline in its bench's doc comment; anything
/// else is an absolute figure.
fn baseline(metric: &str, unit: &str) -> String {
    match metric.split_once("_vs_") {
        Some((_, against)) => against.replace('_', " "),
        None if unit == "x" => "ratio: see the bench".to_owned(),
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

/// One collected line: the crate it came from, the day it was measured, the line.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    krate: String,
    date: String,
    line: String,
}

/// Where the table keeps its raw lines, so one crate's rows can be replaced later.
const RAW_START: &str =
    "<!-- raw verdict lines (crate, date, line), read back by cargo xtask bench";
const RAW_END: &str = "-->";

/// The raw lines kept at the end of a previous `docs/benchmarks.md`.
fn raw_entries(text: &str) -> Vec<Entry> {
    let Some(start) = text.find(RAW_START) else {
        return Vec::new();
    };
    let body = &text[start + RAW_START.len()..];
    let body = &body[..body.find(RAW_END).unwrap_or(body.len())];
    body.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '\t');
            Some(Entry {
                krate: parts.next()?.trim().to_owned(),
                date: parts.next()?.to_owned(),
                line: parts.next()?.to_owned(),
            })
        })
        .filter(|e| !e.krate.is_empty())
        .collect()
}

/// `YYYY-MM-DD` (UTC) of `time`.
fn utc_date(time: std::time::SystemTime) -> String {
    let days = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `docs/benchmarks.md` from the collected verdict and skip lines.
fn table(entries: &[Entry]) -> String {
    let mut out = String::from(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` — do not edit by hand (benching one crate replaces its \
         rows). Each ratio is measured against its baseline in the same run (the bench's own \
         doc comment says what the baseline is and why it is the best alternative); absolute \
         figures are noted as such. The crates' READMEs quote their numbers from this file.\n\n",
    );
    out.push_str(&format!("Machine: {}.\n\n", machine()));
    out.push_str("| crate | metric | value | unit | target | baseline | verdict | measured |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut failed = 0;
    let mut figures = 0;
    for e in entries {
        let Some(v) = parse(&e.line) else { continue };
        figures += 1;
        failed += usize::from(!v.ok);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            v.krate,
            v.metric,
            v.value,
            v.unit,
            v.target,
            baseline(v.metric, v.unit),
            if v.ok { "ok" } else { "**FAIL**" },
            e.date
        ));
    }
    let skips: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.line.starts_with("skip: "))
        .collect();
    if !skips.is_empty() {
        out.push_str("\nNot measured on this machine:\n\n");
        for s in skips {
            out.push_str(&format!("- {}\n", s.line.trim_start_matches("skip: ")));
        }
    }
    out.push_str(&format!(
        "\n{figures} figures, {failed} missing their target.\n\n"
    ));
    out.push_str(RAW_START);
    out.push('\n');
    for e in entries {
        out.push_str(&format!("{}\t{}\t{}\n", e.krate, e.date, e.line));
    }
    out.push_str(RAW_END);
    out.push('\n');
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
        assert_eq!(baseline(v.metric, v.unit), "dtach");
        assert_eq!(baseline("memory_per_agent", "bytes"), "absolute");
        assert_eq!(baseline("resolve_call_ratio", "x"), "ratio: see the bench");
        assert!(parse("bench: nonsense").is_none());
        let entry = |line: &str| Entry {
            krate: "engate-attach".into(),
            date: "2026-12-04".into(),
            line: line.into(),
        };
        let entries = [entry(line), entry("skip: x: no dtach")];
        let md = table(&entries);
        assert!(
            md.contains(
                "| engate-attach | cat_64MiB_throughput_vs_dtach | 0.55 | x | >= 1 | dtach | \
                 **FAIL** | 2026-12-04 |"
            ),
            "{md}"
        );
        assert!(md.contains("- x: no dtach"), "{md}");
        assert!(md.contains("1 figures, 1 missing"), "{md}");
        // The raw lines come back, so one crate's rows can be replaced later.
        assert_eq!(raw_entries(&md), entries);
    }

    #[test]
    fn dates_are_civil_utc() {
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(utc_date(at(0)), "1970-01-01");
        assert_eq!(utc_date(at(951_782_400)), "2000-02-29");
        assert_eq!(utc_date(at(1_796_342_400)), "2026-12-04");
    }
}
