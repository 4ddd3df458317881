//! `cargo xtask bench [crate]`: runs the crates' criterion benches and collects their verdict
//! lines (`bench: <crate>/<metric> = <value> <unit> (target <op> <value>) ok|FAIL`), the
//! `info:` lines beside them (where the benches print their baselines' measured values) and
//! the machine, and writes them into `docs/benchmarks.md`: every figure with its target, its
//! same-run baseline by name and measured value, its verdict, and the date and machine of the
//! run it came from. Benching one crate replaces that crate's rows and keeps the others'.
//! `cargo xtask bench --rewrite` only re-renders the file from the lines it keeps.

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

/// Re-renders `docs/benchmarks.md` from the raw lines it keeps, measuring nothing (after a
/// change to the table's layout or to [`BASELINES`]).
fn rewrite() -> Result<(), String> {
    let path = root().join("docs/benchmarks.md");
    let previous = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    std::fs::write(&path, table(&raw_entries(&previous)))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("rewrote {} from its recorded lines", path.display());
    Ok(())
}

pub(crate) fn run(only: Option<&str>) -> Result<(), String> {
    if only == Some("--rewrite") {
        return rewrite();
    }
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
            ["bench: ", "skip: ", "info: "]
                .iter()
                .any(|p| line.starts_with(p))
        })?;
        if !lines
            .iter()
            .any(|l| l.starts_with("bench: ") || l.starts_with("skip: "))
        {
            return Err(format!("{krate}'s benches printed no verdict line"));
        }
        measured.push((krate.clone(), format!("{MACHINE}{}", machine())));
        measured.extend(lines.iter().map(|l| (krate.clone(), l.clone())));
        verdicts.extend(lines.into_iter().filter(|l| !l.starts_with("info: ")));
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

/// A ratio's same-run baseline: what it is, and where its bench prints its measured value.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    /// The crate and metric (`crate/metric`) of the verdict line.
    metric: &'static str,
    /// The baseline, by name.
    name: &'static str,
    /// Where its value is printed, if the bench prints it.
    value: Option<BaselineValue>,
}

/// Where a baseline's measured value is printed.
#[derive(Debug, Clone, Copy)]
enum BaselineValue {
    /// In the `info:` line of the same run that starts with `line`: the number that follows
    /// the last of `after` (each searched after the previous), in `unit`.
    Info {
        line: &'static str,
        after: &'static [&'static str],
        unit: &'static str,
    },
    /// It is another verdict of the same run (`crate/metric`).
    Verdict(&'static str),
}

/// Every ratio's baseline, by name (not guessed from the metric's name), with where its bench
/// prints the baseline's own figure. A ratio missing here shows as unnamed in the table (and
/// the unit test below fails for the rows `docs/benchmarks.md` holds).
const BASELINES: &[Baseline] = &[
    Baseline {
        metric: "engate-attach/fanout_1_subscribers_vs_broadcast",
        name: "tokio broadcast, 1 receiver",
        value: Some(BaselineValue::Info {
            line: "info: engate-attach/fanout_1_subscribers:",
            after: &["broadcast "],
            unit: "chunks/s",
        }),
    },
    Baseline {
        metric: "engate-attach/fanout_4_subscribers_vs_broadcast",
        name: "tokio broadcast, 4 receivers",
        value: Some(BaselineValue::Info {
            line: "info: engate-attach/fanout_4_subscribers:",
            after: &["broadcast "],
            unit: "chunks/s",
        }),
    },
    Baseline {
        metric: "engate-attach/fanout_16_subscribers_vs_broadcast",
        name: "tokio broadcast, 16 receivers",
        value: Some(BaselineValue::Info {
            line: "info: engate-attach/fanout_16_subscribers:",
            after: &["broadcast "],
            unit: "chunks/s",
        }),
    },
    Baseline {
        metric: "engate-attach/attach_latency_1GiB_vs_1MiB_history",
        name: "attach with 1 MiB of history",
        value: Some(BaselineValue::Verdict(
            "engate-attach/attach_latency_median",
        )),
    },
    Baseline {
        metric: "engate-attach/cat_64MiB_throughput_vs_dtach",
        name: "dtach",
        value: Some(BaselineValue::Info {
            line: "info: engate-attach/terminal: dtach:",
            after: &["attached client "],
            unit: "MiB/s",
        }),
    },
    Baseline {
        metric: "engate-attach/keystroke_echo_median_vs_dtach",
        name: "dtach",
        value: Some(BaselineValue::Info {
            line: "info: engate-attach/terminal: dtach:",
            after: &["echo median "],
            unit: "us",
        }),
    },
    Baseline {
        metric: "engate-attach/cat_64MiB_throughput_vs_tmux",
        name: "tmux",
        value: Some(BaselineValue::Info {
            line: "info: engate-attach/terminal: tmux:",
            after: &["attached client "],
            unit: "MiB/s",
        }),
    },
    Baseline {
        metric: "platform-primitives/batch_recv_speedup",
        name: "one recv per datagram (std UnixDatagram)",
        value: None,
    },
    Baseline {
        metric: "polyplug-runtime/resolve_call_ratio",
        name: "polyplug 0.1.1 (the original)",
        value: Some(BaselineValue::Info {
            line: "info: polyplug-runtime/resolve_call =",
            after: &["original "],
            unit: "ns",
        }),
    },
    Baseline {
        metric: "polyplug-runtime/find_call_ratio",
        name: "polyplug 0.1.1 (the original)",
        value: Some(BaselineValue::Info {
            line: "info: polyplug-runtime/resolve_call =",
            after: &["find_call = ", "original "],
            unit: "ns",
        }),
    },
    Baseline {
        metric: "polyplug-runtime/guard_call_ratio",
        name: "raw dlsym function pointer",
        value: Some(BaselineValue::Info {
            line: "info: polyplug-runtime/raw_dlsym_call =",
            after: &[" "],
            unit: "ns",
        }),
    },
    Baseline {
        metric: "polyplug-runtime/reload_p99_ratio",
        name: "find + call p99 with no reload",
        value: Some(BaselineValue::Info {
            line: "info: polyplug-runtime/find_call_p99 =",
            after: &[" "],
            unit: "ns",
        }),
    },
    Baseline {
        metric: "polyplug-runtime/republish_scaling",
        name: "republish with 10 other contracts",
        value: Some(BaselineValue::Info {
            line: "info: polyplug-runtime/republish_commit =",
            after: &[" "],
            unit: "ns",
        }),
    },
    Baseline {
        metric: "sqry-admission/admission_throughput_vs_moka",
        name: "moka",
        value: Some(BaselineValue::Info {
            line: "info: sqry-admission/admission_throughput =",
            after: &["(moka "],
            unit: "ops/s",
        }),
    },
    Baseline {
        metric: "sqry-admission/daemon_builds_per_cold_miss",
        name: "cold misses",
        value: Some(BaselineValue::Info {
            line: "info: sqry-admission/daemon:",
            after: &["builds for "],
            unit: "misses",
        }),
    },
    Baseline {
        metric: "sqry-admission/daemon_p99_vs_blocking",
        name: "blocking get_or_load",
        value: Some(BaselineValue::Info {
            line: "info: sqry-admission/daemon:",
            after: &["blocking get_or_load p99 "],
            unit: "us",
        }),
    },
    Baseline {
        metric: "squib-host/fault_latency_ratio",
        name: "minimal userfaultfd handler (floor)",
        value: Some(BaselineValue::Info {
            line: "info: squib-host/fault_latency =",
            after: &["(floor: ", ", "],
            unit: "us",
        }),
    },
    Baseline {
        metric: "squib-host/page_server_background_latency_ratio",
        name: "page server without background population",
        value: Some(BaselineValue::Info {
            line: "info: squib-host/page_server_fault =",
            after: &["population, "],
            unit: "us",
        }),
    },
    Baseline {
        metric: "squib-host/firecracker_restore_vs_example_handler",
        name: "Firecracker's example UFFD handler",
        value: Some(BaselineValue::Info {
            line: "info: squib-host/firecracker_restore_256mib =",
            after: &["(example handler "],
            unit: "ms",
        }),
    },
    Baseline {
        metric: "squib-host/firecracker_restore_vs_file_backend",
        name: "Firecracker's File backend",
        value: Some(BaselineValue::Info {
            line: "info: squib-host/firecracker_restore_256mib =",
            after: &["File backend "],
            unit: "ms",
        }),
    },
    Baseline {
        metric: "squib-host/sequential_restore_ratio",
        name: "eager restore (read the whole file)",
        value: Some(BaselineValue::Info {
            line: "info: squib-host/restore_1gib =",
            after: &["eager "],
            unit: "ms",
        }),
    },
    Baseline {
        metric: "squib-host/first_access_pct",
        name: "eager restore (read the whole file)",
        value: Some(BaselineValue::Info {
            line: "info: squib-host/restore_1gib =",
            after: &["eager "],
            unit: "ms",
        }),
    },
    Baseline {
        metric: "squib-host/zero_heavy_speedup",
        name: "eager restore (read the whole file)",
        value: Some(BaselineValue::Info {
            line: "info: squib-host/zero_heavy_1gib =",
            after: &["eager "],
            unit: "ms",
        }),
    },
    Baseline {
        metric: "squib-host/service_kernel_page_cache_vs_block_cache_time_ratio",
        name: "eight restores through the service's block cache",
        value: Some(BaselineValue::Info {
            line: "info: squib-host/service eight restores =",
            after: &["block cache "],
            unit: "ms",
        }),
    },
    Baseline {
        metric: "squib-host/service_source_read_ratio",
        name: "one snapshot's size",
        value: None,
    },
    Baseline {
        metric: "squib-host/service_eight_vs_one_time_ratio",
        name: "one restore alone",
        value: Some(BaselineValue::Info {
            line: "info: squib-host/service restores =",
            after: &["one "],
            unit: "ms",
        }),
    },
    Baseline {
        metric: "varta-watch/ingest_4096_agents_vs_recv_floor",
        name: "the kernel's receive floor (raw recvmmsg loop)",
        value: None,
    },
    Baseline {
        metric: "varta-watch/ingest_0_agents_vs_recv_floor",
        name: "the kernel's receive floor (raw recvmmsg loop)",
        value: None,
    },
];

/// The baseline of `crate/metric`, if it is one of [`BASELINES`].
fn baseline_of(krate: &str, metric: &str) -> Option<&'static Baseline> {
    BASELINES
        .iter()
        .find(|b| b.metric.split_once('/') == Some((krate, metric)))
}

/// The baseline column: its name, or `absolute` for a figure with no baseline.
fn baseline_name(v: &Verdict<'_>) -> String {
    match baseline_of(v.krate, v.metric) {
        Some(b) => b.name.to_owned(),
        None if v.unit == "x" => "not named (add it to BASELINES in xtask/src/bench.rs)".to_owned(),
        None => "absolute".to_owned(),
    }
}

/// The baseline's measured value, from `run` (the lines of the same crate and date); why not
/// otherwise.
fn baseline_value(v: &Verdict<'_>, run: &[&Entry]) -> String {
    let Some(b) = baseline_of(v.krate, v.metric) else {
        return "-".to_owned();
    };
    let recorded = || {
        if run.iter().any(|e| e.line.starts_with("info: ")) {
            "not found in its info line".to_owned()
        } else {
            "not recorded (rerun the bench)".to_owned()
        }
    };
    match b.value {
        None => "not printed by the bench".to_owned(),
        Some(BaselineValue::Verdict(other)) => run
            .iter()
            .filter_map(|e| parse(&e.line))
            .find(|o| Some((o.krate, o.metric)) == other.split_once('/'))
            .map_or_else(recorded, |o| format!("{} {}", o.value, o.unit)),
        Some(BaselineValue::Info { line, after, unit }) => run
            .iter()
            .find(|e| e.line.starts_with(line))
            .and_then(|e| number_after(&e.line[line.len()..], after))
            .map_or_else(recorded, |n| format!("{n} {unit}")),
    }
}

/// The number in `text` right after the last of `anchors`, each found after the previous.
fn number_after<'a>(text: &'a str, anchors: &[&str]) -> Option<&'a str> {
    let mut rest = text;
    for anchor in anchors {
        rest = &rest[rest.find(anchor)? + anchor.len()..];
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
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

/// The raw line that records the machine a crate's benches ran on.
const MACHINE: &str = "machine: ";

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

/// `docs/benchmarks.md` from the collected verdict, info, skip and machine lines.
fn table(entries: &[Entry]) -> String {
    let mut out = String::from(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` — do not edit by hand (benching one crate replaces its \
         rows; `cargo xtask bench --rewrite` re-renders this file from the lines it keeps). \
         Each ratio is measured against its baseline in the same run: the table names the \
         baseline and gives its measured value where the bench prints it (the bench's own doc \
         comment says why it is the best alternative); absolute figures are noted as such. \
         Each row says when and on which machine its run was made. The crates' READMEs quote \
         their numbers from this file.\n\n",
    );
    // The runs: one per crate and date, each with its machine (if it was recorded).
    let mut runs: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.krate.as_str(), e.date.as_str()))
        .collect();
    runs.dedup();
    let machine_of = |krate: &str, date: &str| {
        entries
            .iter()
            .find(|e| e.krate == krate && e.date == date && e.line.starts_with(MACHINE))
            .map(|e| e.line[MACHINE.len()..].trim().to_owned())
    };
    let mut machines: Vec<String> = Vec::new();
    for (krate, date) in &runs {
        if let Some(m) = machine_of(krate, date)
            && !machines.contains(&m)
        {
            machines.push(m);
        }
    }
    let label = |krate: &str, date: &str| match machine_of(krate, date) {
        Some(m) => format!(
            "{date}, machine {}",
            machines.iter().position(|x| *x == m).map_or(0, |i| i + 1)
        ),
        None => format!("{date}, machine not recorded"),
    };
    if !machines.is_empty() {
        out.push_str("Machines (CPU model, cores, kernel):\n\n");
        for (i, m) in machines.iter().enumerate() {
            out.push_str(&format!("{}. {m}\n", i + 1));
        }
        out.push('\n');
    }
    if runs.iter().any(|(k, d)| machine_of(k, d).is_none()) {
        out.push_str(
            "Rows marked \"machine not recorded\" come from runs made before the machine was \
             recorded with each run; benching their crate again records it.\n\n",
        );
    }
    out.push_str(
        "| crate | metric | value | unit | target | baseline | baseline value | verdict | \
         measured |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let mut failed = 0;
    let mut figures = 0;
    for e in entries {
        let Some(v) = parse(&e.line) else { continue };
        figures += 1;
        failed += usize::from(!v.ok);
        let run: Vec<&Entry> = entries
            .iter()
            .filter(|o| o.krate == e.krate && o.date == e.date)
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            v.krate,
            v.metric,
            v.value,
            v.unit,
            v.target,
            baseline_name(&v),
            baseline_value(&v, &run),
            if v.ok { "ok" } else { "**FAIL**" },
            label(&e.krate, &e.date)
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
        assert!(parse("bench: nonsense").is_none());
        let entry = |date: &str, line: &str| Entry {
            krate: "engate-attach".into(),
            date: date.into(),
            line: line.into(),
        };
        let entries = [
            entry("2026-12-04", "machine: Some CPU, 2 cores, linux 6.1"),
            entry(
                "2026-12-04",
                "info: engate-attach/terminal: dtach: cat of 64 MiB through an attached client \
                 812.3 MiB/s (median of 5), keystroke to echo median 45.1 us (200 samples)",
            ),
            entry("2026-12-04", line),
            entry("2026-12-04", "skip: x: no dtach"),
            entry(
                "2026-12-05",
                "bench: engate-attach/keystroke_echo_median_vs_dtach = 0.97 x (target <= 1) ok",
            ),
        ];
        let md = table(&entries);
        assert!(
            md.contains(
                "| engate-attach | cat_64MiB_throughput_vs_dtach | 0.55 | x | >= 1 | dtach | \
                 812.3 MiB/s | **FAIL** | 2026-12-04, machine 1 |"
            ),
            "{md}"
        );
        // A run with no info or machine lines says so rather than borrowing another's.
        assert!(
            md.contains(
                "| keystroke_echo_median_vs_dtach | 0.97 | x | <= 1 | dtach | not recorded \
                 (rerun the bench) | ok | 2026-12-05, machine not recorded |"
            ),
            "{md}"
        );
        assert!(md.contains("1. Some CPU, 2 cores, linux 6.1\n"), "{md}");
        assert!(md.contains("- x: no dtach"), "{md}");
        assert!(md.contains("2 figures, 1 missing"), "{md}");
        // The raw lines come back, so one crate's rows can be replaced later.
        assert_eq!(raw_entries(&md), entries);
    }

    #[test]
    fn baselines_are_named_and_their_values_found() {
        let absolute = parse("bench: varta-watch/memory_per_agent = 60.04 bytes (target <= 64) ok");
        assert_eq!(baseline_name(&absolute.expect("parses")), "absolute");
        let unnamed = parse("bench: c/new_ratio = 1.00 x (target <= 1) ok").expect("parses");
        assert!(baseline_name(&unnamed).starts_with("not named"));
        // Each against the format its bench prints.
        let value = |line: &str, info: &str| {
            let v = parse(line).expect("parses");
            let run = [Entry {
                krate: v.krate.into(),
                date: "d".into(),
                line: info.into(),
            }];
            baseline_value(&v, &run.iter().collect::<Vec<_>>())
        };
        let polyplug = "info: polyplug-runtime/resolve_call = 3.10 ns, original 2.30 ns; \
                        find_call = 5.00 ns, original 6.50 ns";
        assert_eq!(
            value(
                "bench: polyplug-runtime/resolve_call_ratio = 1.34 x (target <= 1) FAIL",
                polyplug
            ),
            "2.30 ns"
        );
        assert_eq!(
            value(
                "bench: polyplug-runtime/find_call_ratio = 0.77 x (target <= 1) ok",
                polyplug
            ),
            "6.50 ns"
        );
        assert_eq!(
            value(
                "bench: polyplug-runtime/guard_call_ratio = 1.00 x (target <= 1.1) ok",
                "info: polyplug-runtime/raw_dlsym_call = 2.17 ns, guard_resolved_call = 2.18 ns"
            ),
            "2.17 ns"
        );
        assert_eq!(
            value(
                "bench: polyplug-runtime/reload_p99_ratio = 0.98 x (target <= 2) ok",
                "info: polyplug-runtime/find_call_p99 = 41 ns idle, 40 ns during 101 reloads"
            ),
            "41 ns"
        );
        assert_eq!(
            value(
                "bench: squib-host/fault_latency_ratio = 1.02 x (target <= 1.25) ok",
                "info: squib-host/fault_latency = 12.3 us median, 4.0 us CPU per fault (floor: \
                 blocking read, 11.9 us)"
            ),
            "11.9 us"
        );
        assert_eq!(
            value(
                "bench: engate-attach/fanout_1_subscribers_vs_broadcast = 2.37 x (target >= 1) ok",
                "info: engate-attach/fanout_16_subscribers: medians hub 1 chunks/s, broadcast 2 \
                 chunks/s"
            ),
            "not found in its info line"
        );
        assert_eq!(
            value(
                "bench: varta-watch/ingest_0_agents_vs_recv_floor = 0.96 x (target >= 0.9) ok",
                "info: varta-watch/ingest_rate_0_agents = 1 frames/s"
            ),
            "not printed by the bench"
        );
        // A baseline that is another verdict of the same run.
        let v = parse(
            "bench: engate-attach/attach_latency_1GiB_vs_1MiB_history = 1.01 x (target <= 1.5) ok",
        )
        .expect("parses");
        let run = [Entry {
            krate: "engate-attach".into(),
            date: "d".into(),
            line: "bench: engate-attach/attach_latency_median = 1.58 us (target <= 50) ok".into(),
        }];
        assert_eq!(
            baseline_value(&v, &run.iter().collect::<Vec<_>>()),
            "1.58 us"
        );
    }

    #[test]
    fn every_recorded_ratio_has_a_named_baseline() {
        let path = root().join("docs/benchmarks.md");
        let text = std::fs::read_to_string(&path).expect("docs/benchmarks.md");
        for e in raw_entries(&text) {
            if let Some(v) = parse(&e.line)
                && v.unit == "x"
            {
                assert!(
                    baseline_of(v.krate, v.metric).is_some(),
                    "{}/{} has no entry in BASELINES",
                    v.krate,
                    v.metric
                );
            }
        }
        // Every recorded baseline value is found where its anchor says.
        let entries = raw_entries(&text);
        for e in &entries {
            if let Some(v) = parse(&e.line) {
                let run: Vec<&Entry> = entries
                    .iter()
                    .filter(|o| o.krate == e.krate && o.date == e.date)
                    .collect();
                let value = baseline_value(&v, &run);
                assert!(
                    !value.starts_with("not found"),
                    "{}/{}: its baseline's anchor is not in its info line",
                    v.krate,
                    v.metric
                );
            }
        }
        for b in BASELINES {
            let (krate, _) = b.metric.split_once('/').expect("crate/metric");
            if let Some(BaselineValue::Info { line, .. }) = b.value {
                assert!(line.starts_with(&format!("info: {krate}/")), "{line}");
            }
        }
    }

    #[test]
    fn dates_are_civil_utc() {
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(utc_date(at(0)), "1970-01-01");
        assert_eq!(utc_date(at(951_782_400)), "2000-02-29");
        assert_eq!(utc_date(at(1_796_342_400)), "2026-12-04");
    }
}
