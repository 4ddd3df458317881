//! Running cargo and other tools, echoing their output while counting test results.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Tests counted from libtest summary lines (`test result: ok. 3 passed; 0 failed; …`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) passed: u64,
    pub(crate) failed: u64,
}

impl Tally {
    /// Adds the counts of one libtest summary line, if `line` is one.
    pub(crate) fn absorb(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A `cargo` command run from the workspace root, honouring `$CARGO`.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    if std::env::var_os(FIRECRACKER_ENV).is_none()
        && let Some(bin) = shared_firecracker()
    {
        cmd.env(FIRECRACKER_ENV, bin);
    }
    cmd
}

/// Where tests and benches look for a Firecracker binary (its example UFFD handler and the
/// memory-testing guest sit beside it); they skip, saying why, when it is unset.
const FIRECRACKER_ENV: &str = "FIRECRACKER_BIN";

/// The Firecracker kit in `../shared/firecracker`, when this checkout has one beside it.
fn shared_firecracker() -> Option<PathBuf> {
    let bin = root().parent()?.join("shared/firecracker/firecracker");
    bin.is_file().then_some(bin)
}

/// Runs `cmd`, echoing its stdout line by line (stderr goes straight through), adding the
/// libtest counts it prints to `tally` (also when it fails), and returns every line for which
/// `keep` returned true.
pub(crate) fn run_counting(
    cmd: &mut Command,
    tally: &mut Tally,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Vec<String>, String> {
    let shown = describe(cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    let mut kept = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.map_err(|e| format!("reading output of `{shown}`: {e}"))?;
            println!("{line}");
            tally.absorb(&line);
            if keep(&line) {
                kept.push(line);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for `{shown}`: {e}"))?;
    if status.success() {
        Ok(kept)
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// Runs `cmd` with inherited output; an error names the command.
pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = describe(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// Whether `cmd` can be started and exits successfully, output discarded.
pub(crate) fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn counts_libtest_summary_lines() {
        let mut t = Tally::default();
        t.absorb("test result: ok. 34 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.06s");
        t.absorb("test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out");
        t.absorb("test foo ... ok");
        t.absorb("running 3 tests");
        assert_eq!(
            t,
            Tally {
                passed: 37,
                failed: 2
            }
        );
    }

    #[test]
    fn ignores_lines_that_only_look_similar() {
        let mut t = Tally::default();
        t.absorb("the test result: was fine");
        t.absorb("test result: ok. many passed; 0 failed");
        assert_eq!(
            t,
            Tally {
                passed: 0,
                failed: 0
            }
        );
    }
}
