//! Shared support for the workspace's tests and benches, and the home of the cross-crate
//! suites (`tests/tests/`).
//!
//! Crates use this library as a path-only dev-dependency (stripped when they are published), so
//! the mechanisms every suite needs exist once:
//!
//! - [`bench`](mod@bench): per-call timings recorded from criterion's `iter_custom`, medians, and the
//!   verdict line every bench prints;
//! - [`harness`](mod@harness): the runner for test binaries that cannot use libtest (they must be
//!   single-threaded, or re-execute themselves as a child process), printing the summary line
//!   `cargo xtask ci` counts;
//! - [`criterion_config!`]: the short criterion configuration every bench uses;
//! - [`loom_expect_deadlock_in_child`]: a loom negative control that must deadlock, run in a
//!   child process (loom aborts the process that deadlocks);
//! - [`loom_model!`]: the one way the crates' loom suites run a model (preemption bound,
//!   executions explored);
//! - [`firecracker`](mod@firecracker): the real Firecracker, its guest and its API, for the
//!   suites that restore microVMs;
//! - [`support`]: a temporary directory removed on drop, the `skip:` line, `have` (skip unless
//!   every named program is installed), `is_root`, `which`,
//!   an error with its causes, and a counting global allocator;
//! - [`pager_service`]: squib-host's pager service (`squib-host serve`) started, called and
//!   killed;
//! - [`hugetlb`](mod@hugetlb): a temporary reservation of 2 MiB huge pages for the suites that
//!   map them, undone when the test ends.

#![deny(unsafe_code)]

pub mod pager_service;
pub mod support;

/// Whether process `pid` exists and is not a zombie (its `/proc` state is not `Z`).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

pub mod bench {
    //! Benchmark bookkeeping: criterion measures, these helpers keep the timings and print
    //! the verdicts, `bench: <crate>/<metric> = <value> <unit> (target <op> <value>) ok|FAIL`.

    use std::sync::Mutex;
    use std::time::Duration;

    /// Named samples (nanoseconds per iteration, or any per-sample figure).
    #[derive(Debug, Default)]
    pub struct Samples {
        inner: Mutex<Vec<(&'static str, f64)>>,
    }

    impl Samples {
        /// An empty set, usable in a `static`.
        pub const fn new() -> Self {
            Self {
                inner: Mutex::new(Vec::new()),
            }
        }

        /// Records one `iter_custom` call (`elapsed` for `iters` iterations) as ns/iteration,
        /// and hands `elapsed` back for criterion.
        pub fn record(&self, name: &'static str, iters: u64, elapsed: Duration) -> Duration {
            self.push(name, elapsed.as_nanos() as f64 / iters.max(1) as f64);
            elapsed
        }

        /// Records one figure under `name`.
        pub fn push(&self, name: &'static str, value: f64) {
            self.inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name, value));
        }

        /// The median of the figures recorded under `name` (NaN if none).
        pub fn median(&self, name: &str) -> f64 {
            let mut v: Vec<f64> = self
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, x)| *x)
                .collect();
            median(&mut v)
        }
    }

    /// The median of `values` (NaN if empty); sorts them.
    pub fn median(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The p-th percentile (0..=100) of `values` (NaN if empty); sorts them.
    pub fn percentile(values: &mut [f64], p: f64) -> f64 {
        values.sort_by(f64::total_cmp);
        if values.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    }

    /// What a figure must satisfy.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Target {
        /// At least this much.
        AtLeast(f64),
        /// At most this much.
        AtMost(f64),
    }

    /// Prints the verdict line and returns whether the target is met (NaN never is).
    pub fn verdict(krate: &str, metric: &str, value: f64, unit: &str, target: Target) -> bool {
        let (op, bound, ok) = match target {
            Target::AtLeast(t) => (">=", t, value >= t),
            Target::AtMost(t) => ("<=", t, value <= t),
        };
        println!(
            "bench: {krate}/{metric} = {value:.2} {unit} (target {op} {bound}) {}",
            if ok { "ok" } else { "FAIL" }
        );
        ok
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn medians_and_percentiles() {
            let s = Samples::new();
            for x in [5.0, 1.0, 3.0] {
                s.push("a", x);
            }
            s.record("b", 4, Duration::from_nanos(400));
            assert_eq!(s.median("a"), 3.0);
            assert_eq!(s.median("b"), 100.0);
            assert!(s.median("missing").is_nan());
            let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
            assert_eq!(percentile(&mut v, 99.0), 99.0);
            assert_eq!(percentile(&mut v, 100.0), 100.0);
        }

        #[test]
        fn verdicts_compare_in_the_stated_direction() {
            assert!(verdict("c", "m", 2.0, "x", Target::AtLeast(1.0)));
            assert!(!verdict("c", "m", 0.5, "x", Target::AtLeast(1.0)));
            assert!(verdict("c", "m", 0.5, "ms", Target::AtMost(1.0)));
            assert!(!verdict("c", "m", f64::NAN, "ms", Target::AtMost(1.0)));
        }
    }
}

pub mod harness {
    //! A runner for test binaries built with `harness = false`.

    use std::process::ExitCode;

    /// A named check.
    pub type Check = (&'static str, fn() -> Result<(), String>);

    /// Runs `checks` in order and reports them (see [`report`]). Like libtest, arguments that
    /// are not flags filter the checks by substring of their names.
    pub fn run(checks: &[Check]) -> ExitCode {
        let filters: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        let results: Vec<(&str, Result<(), String>)> = checks
            .iter()
            .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
            .map(|(name, check)| (*name, check()))
            .collect();
        report(&results)
    }

    /// Prints one `test <name> ... ok|FAILED` line per result and the libtest summary line that
    /// `cargo xtask ci` counts; fails the process if any check failed.
    pub fn report(results: &[(&str, Result<(), String>)]) -> ExitCode {
        let mut failed = 0;
        for (name, result) in results {
            match result {
                Ok(()) => println!("test {name} ... ok"),
                Err(why) => {
                    failed += 1;
                    println!("test {name} ... FAILED\n    {why}");
                }
            }
        }
        let verdict = if failed == 0 { "ok" } else { "FAILED" };
        println!(
            "\ntest result: {verdict}. {} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n",
            results.len() - failed
        );
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

pub mod firecracker {
    //! Drives the real Firecracker for the suites that restore microVMs: finds the kit (the
    //! binary, its example UFFD handler and the memory-testing guest, through the
    //! `FIRECRACKER_BIN` variable `cargo xtask` sets), starts VMMs, talks to their API socket
    //! (HTTP/1.1, one request per connection), boots the guest, takes snapshots, restores them
    //! through a UFFD handler or the File backend, and reads the serial console.
    //!
    //! The guest, on every pass `k`, prints `P<k as 16 hex digits> `, checks every page it
    //! wrote in pass `k - 1` and rewrites it, printing `.` per 2 MiB, then ` OK`; a mismatch
    //! prints `FAIL …`. A snapshot taken mid-pass and restored prints a whole `P… OK` line only
    //! if every page came back exact: [`Vm::wait_verified`] waits for that line.

    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    /// The variable naming the Firecracker binary.
    pub const ENV: &str = "FIRECRACKER_BIN";

    /// Console bytes kept per VM (the oldest are dropped past this).
    const CONSOLE_LIMIT: usize = 4 << 20;

    /// The Firecracker kit: binary, example handler, guest.
    #[derive(Debug, Clone)]
    pub struct Kit {
        /// The `firecracker` binary.
        pub firecracker: PathBuf,
        /// Firecracker's example `uffd_on_demand_handler SOCKET MEMFILE`.
        pub example_handler: PathBuf,
        /// The memory-testing guest for 256 MiB VMs.
        pub guest: PathBuf,
    }

    /// Why the kit cannot be used here, sorted by what a caller may do about it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum KitUnavailable {
        /// `FIRECRACKER_BIN` is not set: this checkout has no kit beside it.
        NotConfigured(String),
        /// The machine has no KVM (`/dev/kvm` does not exist).
        NoKvm(String),
        /// The kit is configured but cannot be used: a file is missing, or `/dev/kvm` exists
        /// and cannot be opened.
        Broken(String),
    }

    impl std::fmt::Display for KitUnavailable {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let (Self::NotConfigured(why) | Self::NoKvm(why) | Self::Broken(why)) = self;
            f.write_str(why)
        }
    }

    impl Kit {
        /// Finds the kit and checks that this machine can run it.
        ///
        /// # Errors
        ///
        /// Why not, for the caller's skip line: the variable is unset, a file is missing, or
        /// `/dev/kvm` cannot be opened.
        pub fn find() -> Result<Self, String> {
            Self::locate().map_err(|e| e.to_string())
        }

        /// [`find`](Self::find), saying which way it failed: a suite that must not skip
        /// silently where the kit is configured (under `cargo xtask`) fails on
        /// [`KitUnavailable::Broken`] and may fall back only on the other two.
        ///
        /// # Errors
        ///
        /// As for [`find`](Self::find).
        pub fn locate() -> Result<Self, KitUnavailable> {
            let bin =
                std::env::var_os(ENV)
                    .map(PathBuf::from)
                    .ok_or(KitUnavailable::NotConfigured(format!(
                        "{ENV} is not set (cargo xtask sets it when ../shared/firecracker exists)"
                    )))?;
            let dir = bin.parent().unwrap_or(Path::new("."));
            let kit = Self {
                example_handler: dir.join("uffd_on_demand_handler"),
                guest: dir.join("guest/memtest-256m.elf"),
                firecracker: bin,
            };
            for f in [&kit.firecracker, &kit.example_handler, &kit.guest] {
                if !f.is_file() {
                    return Err(KitUnavailable::Broken(format!(
                        "{} is missing",
                        f.display()
                    )));
                }
            }
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
            {
                Ok(_) => Ok(kit),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(KitUnavailable::NoKvm(format!("/dev/kvm: {e}")))
                }
                Err(e) => Err(KitUnavailable::Broken(format!("/dev/kvm: {e}"))),
            }
        }
    }

    /// A snapshot of a guest taken mid-pass: the VM state file and the memory file.
    #[derive(Debug, Clone)]
    pub struct Snapshot {
        /// Firecracker's VM state file.
        pub state: PathBuf,
        /// The guest memory file (`mem_size_mib` MiB).
        pub mem: PathBuf,
        /// The guest's memory size.
        pub mem_mib: u32,
        /// Whether guest memory used 2 MiB huge pages.
        pub huge: bool,
    }

    impl Snapshot {
        /// Drops the memory file's pages from the kernel's page cache (after writing back any
        /// dirty ones), so the next restores read it from storage and a process's storage
        /// reads (`read_bytes` in `/proc/<pid>/io`) show how much of it they fetched.
        ///
        /// # Errors
        ///
        /// The file cannot be opened or synced, or the kernel refuses the advice.
        pub fn drop_from_page_cache(&self) -> Result<(), String> {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&self.mem)
                .map_err(|e| format!("{}: {e}", self.mem.display()))?;
            file.sync_all()
                .map_err(|e| format!("{}: {e}", self.mem.display()))?;
            // SAFETY: advice on an open descriptor; the kernel touches none of our memory.
            #[allow(unsafe_code)]
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc == 0 {
                Ok(())
            } else {
                Err(format!(
                    "posix_fadvise({}): {}",
                    self.mem.display(),
                    std::io::Error::from_raw_os_error(rc)
                ))
            }
        }
    }

    #[derive(Debug, Default)]
    struct Console {
        text: Mutex<ConsoleText>,
        cv: Condvar,
        /// When each progress mark (`.`) arrived, up to `MARKS_LIMIT`.
        marks: Mutex<Vec<Instant>>,
    }

    /// The console's bytes as read so far.
    #[derive(Debug, Default)]
    struct ConsoleText {
        /// The most recent bytes (at most `CONSOLE_LIMIT`).
        bytes: Vec<u8>,
        /// Bytes read and dropped from the front to keep within `CONSOLE_LIMIT`.
        dropped: u64,
        /// The reader reached the end of its stream.
        closed: bool,
    }

    /// Progress-mark arrival times kept per VM.
    const MARKS_LIMIT: usize = 1 << 20;

    /// A running Firecracker process; killed when dropped.
    #[derive(Debug)]
    pub struct Vm {
        process: Process,
        api: PathBuf,
        console: Arc<Console>,
    }

    /// How the VMM runs: as this process's child with its console on a pipe, or inside an
    /// engate session whose output a `engate tail` follows.
    #[derive(Debug)]
    enum Process {
        Child(Child),
        Session(Session),
    }

    /// A Firecracker inside an engate session (`engate new ID -- firecracker …`).
    #[derive(Debug)]
    pub struct Session {
        engate: PathBuf,
        runtime: PathBuf,
        name: String,
        pid: u32,
        tail: Child,
    }

    impl Session {
        fn command(&self) -> Command {
            let mut cmd = Command::new(&self.engate);
            cmd.env("XDG_RUNTIME_DIR", &self.runtime);
            cmd
        }

        fn alive(&self) -> bool {
            crate::process_alive(self.pid)
        }
    }

    /// Starts a thread that keeps what `out` yields (the serial console) with the arrival
    /// time of every progress mark.
    fn collect_console(out: impl Read + Send + 'static) -> Arc<Console> {
        let console = Arc::new(Console::default());
        append_console(&console, out);
        console
    }

    /// Starts a thread appending what `out` yields to `console`.
    fn append_console(console: &Arc<Console>, mut out: impl Read + Send + 'static) {
        let sink = Arc::clone(console);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = out.read(&mut buf).unwrap_or(0);
                let mut g = sink.text.lock().unwrap_or_else(|p| p.into_inner());
                if n == 0 {
                    g.closed = true;
                    sink.cv.notify_all();
                    return;
                }
                g.bytes.extend_from_slice(&buf[..n]);
                let now = Instant::now();
                let dots = buf[..n].iter().filter(|&&b| b == b'.').count();
                if dots > 0 {
                    let mut marks = sink.marks.lock().unwrap_or_else(|p| p.into_inner());
                    let room = MARKS_LIMIT.saturating_sub(marks.len());
                    marks.extend(std::iter::repeat_n(now, dots.min(room)));
                }
                if g.bytes.len() > CONSOLE_LIMIT {
                    let cut = g.bytes.len() - CONSOLE_LIMIT / 2;
                    g.bytes.drain(..cut);
                    g.dropped += cut as u64;
                }
                sink.cv.notify_all();
            }
        });
    }

    /// The arguments that start Firecracker with its API socket and log in `dir`.
    fn firecracker_args(dir: &Path, id: &str) -> Vec<std::ffi::OsString> {
        vec![
            "--api-sock".into(),
            dir.join(format!("{id}.api")).into(),
            "--id".into(),
            id.into(),
            "--log-path".into(),
            dir.join(format!("{id}.log")).into(),
            "--level".into(),
            "Info".into(),
        ]
    }

    impl Vm {
        /// Starts Firecracker with its API socket `dir/<id>.api` (its log in `dir/<id>.log`;
        /// Firecracker takes ids of letters, digits and `-`),
        /// a stdin that never closes and the serial console collected from stdout.
        ///
        /// # Errors
        ///
        /// The spawn failure, or an API socket that did not appear within 5 s.
        pub fn spawn(kit: &Kit, dir: &Path, id: &str) -> Result<Self, String> {
            let api = dir.join(format!("{id}.api"));
            let _ = std::fs::remove_file(&api);
            let mut child = Command::new(&kit.firecracker)
                .args(firecracker_args(dir, id))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("spawn {}: {e}", kit.firecracker.display()))?;
            let out = child.stdout.take().ok_or("no stdout")?;
            let mut vm = Self {
                console: collect_console(out),
                process: Process::Child(child),
                api,
            };
            vm.wait_api(id)?;
            Ok(vm)
        }

        /// Starts Firecracker inside an engate session named `id`
        /// (`engate new ID -- firecracker …`, with `XDG_RUNTIME_DIR=runtime`), so its serial
        /// console is the session's output; the console is read by an `engate tail` of the
        /// session. `env` goes to the session's server (`NOTIFY_SOCKET`, say). Dropping the VM
        /// ends the session (`engate kill`).
        ///
        /// # Errors
        ///
        /// `engate new` failing, the session's status file not naming the program's pid, or
        /// the API socket not appearing within 5 s.
        pub fn spawn_in_session(
            kit: &Kit,
            dir: &Path,
            id: &str,
            engate: &Path,
            runtime: &Path,
            env: &[(&str, &Path)],
        ) -> Result<Self, String> {
            let mut command = vec![kit.firecracker.clone().into_os_string()];
            command.extend(firecracker_args(dir, id));
            let mut vm = Self::program_in_session(&command, dir, id, engate, runtime, env)?;
            vm.wait_api(id)?;
            Ok(vm)
        }

        /// Starts `command` (a program and its arguments) inside an engate session named `id`
        /// as [`Vm::spawn_in_session`] does, for a stand-in VMM that serves no API (the
        /// fixture of suites that run without KVM).
        ///
        /// # Errors
        ///
        /// As for [`Vm::spawn_in_session`], less the API socket.
        pub fn program_in_session(
            command: &[std::ffi::OsString],
            dir: &Path,
            id: &str,
            engate: &Path,
            runtime: &Path,
            env: &[(&str, &Path)],
        ) -> Result<Self, String> {
            let api = dir.join(format!("{id}.api"));
            let _ = std::fs::remove_file(&api);
            let new = Command::new(engate)
                .env("XDG_RUNTIME_DIR", runtime)
                .envs(env.iter().copied())
                .args(["new", id, "--"])
                .args(command)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("spawn {}: {e}", engate.display()))?;
            if !new.status.success() {
                return Err(format!(
                    "engate new {id}: {}: {}",
                    new.status,
                    String::from_utf8_lossy(&new.stderr)
                ));
            }
            let info = runtime.join("engate").join(format!("{id}.info"));
            let start = Instant::now();
            let pid = loop {
                let pid = std::fs::read_to_string(&info).ok().and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("program_pid="))
                        .and_then(|p| p.trim().parse::<u32>().ok())
                });
                if let Some(pid) = pid.filter(|&p| p > 0) {
                    break pid;
                }
                if start.elapsed() > Duration::from_secs(5) {
                    return Err(format!("{} names no program pid", info.display()));
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let mut tail = Command::new(engate)
                .env("XDG_RUNTIME_DIR", runtime)
                .args(["tail", id])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("engate tail {id}: {e}"))?;
            let out = tail.stdout.take().ok_or("no stdout")?;
            Ok(Self {
                console: collect_console(out),
                process: Process::Session(Session {
                    engate: engate.to_owned(),
                    runtime: runtime.to_owned(),
                    name: id.to_owned(),
                    pid,
                    tail,
                }),
                api,
            })
        }

        fn wait_api(&mut self, id: &str) -> Result<(), String> {
            let start = Instant::now();
            while UnixStream::connect(&self.api).is_err() {
                if !self.is_alive() {
                    return Err(format!(
                        "Firecracker (id {id}) exited at start: {}",
                        self.console()
                    ));
                }
                if start.elapsed() > Duration::from_secs(5) {
                    return Err(format!("{} did not appear", self.api.display()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        }

        /// The pid of the engate session server a VM runs in (`None` for one started by
        /// [`Vm::spawn`]).
        pub fn session_server_pid(&self) -> Option<u32> {
            let Process::Session(session) = &self.process else {
                return None;
            };
            let info = session
                .runtime
                .join("engate")
                .join(format!("{}.info", session.name));
            std::fs::read_to_string(info)
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("pid=").and_then(|p| p.trim().parse().ok()))
        }

        /// The VMM's pid.
        pub fn pid(&self) -> u32 {
            match &self.process {
                Process::Child(child) => child.id(),
                Process::Session(session) => session.pid,
            }
        }

        /// Whether the process is still running (not exited, not killed).
        pub fn is_alive(&mut self) -> bool {
            match &mut self.process {
                Process::Child(child) => matches!(child.try_wait(), Ok(None)),
                Process::Session(session) => session.alive(),
            }
        }

        /// Waits up to `limit` for a VMM started by [`Vm::spawn`] to end; its exit status if
        /// it did (`None` for one in a session, whose status its server keeps).
        pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
            let Process::Child(child) = &mut self.process else {
                return None;
            };
            let start = Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
                if start.elapsed() > limit {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        /// Sends one API request and returns the status code and body.
        ///
        /// # Errors
        ///
        /// Connection or protocol failures, or no complete answer within `timeout`.
        pub fn request(
            &self,
            method: &str,
            path: &str,
            body: &str,
            timeout: Duration,
        ) -> Result<(u16, String), String> {
            http(&self.api, method, path, body, timeout)
        }

        /// Sends a request that must succeed (2xx) within 30 s.
        ///
        /// # Errors
        ///
        /// The failure, or the status and body of a refusal.
        pub fn api(&self, method: &str, path: &str, body: &str) -> Result<(), String> {
            match self.request(method, path, body, Duration::from_secs(30))? {
                (200..=299, _) => Ok(()),
                (code, text) => Err(format!("{method} {path}: {code} {text}")),
            }
        }

        /// Configures and starts the guest: `mem_mib` MiB, one vCPU, 2 MiB huge pages if
        /// `huge`.
        ///
        /// # Errors
        ///
        /// An API refusal.
        pub fn boot(&self, kit: &Kit, mem_mib: u32, huge: bool) -> Result<(), String> {
            let pages = if huge { r#","huge_pages":"2M""# } else { "" };
            self.api(
                "PUT",
                "/machine-config",
                &format!(r#"{{"vcpu_count":1,"mem_size_mib":{mem_mib}{pages}}}"#),
            )?;
            self.api(
                "PUT",
                "/boot-source",
                &format!(
                    r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}}"#,
                    kit.guest.display()
                ),
            )?;
            self.api("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
        }

        /// Pauses the VM and writes a full snapshot.
        ///
        /// # Errors
        ///
        /// An API refusal.
        pub fn snapshot(&self, state: &Path, mem: &Path) -> Result<(), String> {
            self.api("PATCH", "/vm", r#"{"state":"Paused"}"#)?;
            self.api(
                "PUT",
                "/snapshot/create",
                &format!(
                    r#"{{"snapshot_type":"Full","snapshot_path":"{}","mem_file_path":"{}"}}"#,
                    state.display(),
                    mem.display()
                ),
            )
        }

        /// Restores `snap` with the UFFD backend through the handler listening at `handler`,
        /// and resumes the guest. Returns the status and body (the load blocks while the
        /// handler does not serve, so `timeout` bounds it).
        ///
        /// # Errors
        ///
        /// Connection failures or the timeout.
        pub fn load_uffd(
            &self,
            snap: &Snapshot,
            handler: &Path,
            timeout: Duration,
        ) -> Result<(u16, String), String> {
            self.request(
                "PUT",
                "/snapshot/load",
                &format!(
                    r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"Uffd","backend_path":"{}"}},"resume_vm":true}}"#,
                    snap.state.display(),
                    handler.display()
                ),
                timeout,
            )
        }

        /// Restores `snap` with the File backend (Firecracker maps the memory file itself)
        /// and resumes the guest.
        ///
        /// # Errors
        ///
        /// An API refusal.
        pub fn load_file(&self, snap: &Snapshot) -> Result<(), String> {
            self.api(
                "PUT",
                "/snapshot/load",
                &format!(
                    r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}},"resume_vm":true}}"#,
                    snap.state.display(),
                    snap.mem.display()
                ),
            )
        }

        /// The longest gap between consecutive progress marks (`.`, one per 2 MiB the guest
        /// checks) ending after `since`, counting from the last mark before it: how long the
        /// guest stalled at worst from then on.
        pub fn longest_stall(&self, since: Instant) -> Option<Duration> {
            let marks = self.console.marks.lock().unwrap_or_else(|p| p.into_inner());
            marks
                .windows(2)
                .filter(|w| w[1] >= since)
                .map(|w| w[1].duration_since(w[0]))
                .max()
        }

        /// Stops the console's reader (the session's `engate tail`, with `SIGTERM`: it saves
        /// where it stopped) and returns what it read, placed in the session's output by that
        /// saved position. The VM runs on; its console reads no more.
        ///
        /// # Errors
        ///
        /// The VM is not in a session, the tail does not stop or saves no position, or it read
        /// more than the position says it wrote.
        pub fn stop_console(&mut self) -> Result<ConsoleRecord, String> {
            let Process::Session(session) = &mut self.process else {
                return Err("only a VM in an engate session has a session console".into());
            };
            stop_tail(&mut session.tail, &session.name)?;
            let saved = session
                .runtime
                .join("engate")
                .join(format!("{}.tail-pos", session.name));
            ConsoleRecord::read(&self.console, &saved, &session.name)
        }

        /// A second client of the VM's engate session, attached now (a fresh `engate tail`
        /// with its own session directory under `dir`, so its saved position is its own): it
        /// can detach and re-attach, and what it read is compared with the console's.
        ///
        /// # Errors
        ///
        /// The VM is not in a session, or the visitor's directory or tail cannot be made.
        pub fn visit_console(&self, dir: &Path) -> Result<ConsoleVisitor, String> {
            use std::os::unix::fs::DirBuilderExt;
            let Process::Session(session) = &self.process else {
                return Err("only a VM in an engate session has a session console".into());
            };
            let runtime = dir.join(format!("{}-visitor", session.name));
            let sessions = runtime.join("engate");
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&sessions)
                .map_err(|e| format!("{}: {e}", sessions.display()))?;
            let socket = format!("{}.sock", session.name);
            std::os::unix::fs::symlink(
                session.runtime.join("engate").join(&socket),
                sessions.join(&socket),
            )
            .map_err(|e| format!("{}: {e}", sessions.join(&socket).display()))?;
            let mut visitor = ConsoleVisitor {
                engate: session.engate.clone(),
                runtime,
                name: session.name.clone(),
                tail: None,
                console: Arc::new(Console::default()),
                start: None,
            };
            visitor.attach()?;
            Ok(visitor)
        }

        /// The console's bytes so far.
        pub fn console_bytes(&self) -> Vec<u8> {
            let g = self.console.text.lock().unwrap_or_else(|p| p.into_inner());
            g.bytes.clone()
        }

        /// The console so far, as text.
        pub fn console(&self) -> String {
            let g = self.console.text.lock().unwrap_or_else(|p| p.into_inner());
            String::from_utf8_lossy(&g.bytes).to_string()
        }

        /// Waits until `done(console)` holds; `Err` with the console's tail after `limit`, or
        /// at once if the console shows `FAIL` or closes first.
        ///
        /// # Errors
        ///
        /// As above.
        pub fn wait_console(
            &self,
            limit: Duration,
            mut done: impl FnMut(&str) -> bool,
        ) -> Result<(), String> {
            let deadline = Instant::now() + limit;
            let mut g = self.console.text.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let text = String::from_utf8_lossy(&g.bytes);
                if text.contains("FAIL") {
                    return Err(format!("the guest failed: {}", tail(&text)));
                }
                if done(&text) {
                    return Ok(());
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || g.closed {
                    let why = if g.closed {
                        "the console closed"
                    } else {
                        "timed out"
                    };
                    return Err(format!("{why} after {limit:?}: {}", tail(&text)));
                }
                g = self
                    .console
                    .cv
                    .wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }

        /// Waits for the guest's first whole verified pass (`P<k> …… OK`); returns how long
        /// that took from `since`.
        ///
        /// # Errors
        ///
        /// `FAIL` on the console, the console closing, or `limit` passing.
        pub fn wait_verified(&self, since: Instant, limit: Duration) -> Result<Duration, String> {
            self.wait_console(limit, |text| verified_passes(text) > 0)?;
            Ok(since.elapsed())
        }

        /// Sends `SIGKILL` and reaps the process; for a VMM in an engate session, ends the
        /// session (`engate kill`, which hangs the program up and waits for the server) and
        /// stops the tail.
        pub fn kill(&mut self) {
            match &mut self.process {
                Process::Child(child) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Process::Session(session) => {
                    let _ = session
                        .command()
                        .args(["kill", &session.name])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    if session.alive() {
                        let _ = Command::new("kill")
                            .args(["-KILL", &session.pid.to_string()])
                            .status();
                    }
                    let _ = session.tail.kill();
                    let _ = session.tail.wait();
                }
            }
        }
    }

    impl Drop for Vm {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_file(&self.api);
        }
    }

    /// Stops an `engate tail` with `SIGTERM` (it saves its position as it goes) and waits
    /// up to 5 s for it to exit; one that does not is killed and reaped before the error.
    fn stop_tail(tail: &mut Child, name: &str) -> Result<(), String> {
        // Our own child, not yet reaped, so its pid is not reused.
        let stopped = platform_primitives::process::signal(tail.id(), libc::SIGTERM)
            .map_err(|e| format!("SIGTERM to engate tail {}: {e}", tail.id()))
            .and_then(|()| {
                let start = Instant::now();
                loop {
                    match tail.try_wait() {
                        Ok(Some(_)) => return Ok(()),
                        Ok(None) if start.elapsed() < Duration::from_secs(5) => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        _ => return Err(format!("engate tail {name} did not stop")),
                    }
                }
            });
        if stopped.is_err() {
            let _ = tail.kill();
            let _ = tail.wait();
        }
        stopped
    }

    /// Where the screen redraw that a fresh `engate tail` prints before the session's output
    /// ends in what it printed: after the last escape sequence (CSI, or ESC and one byte).
    ///
    /// An engate session serves a client that attaches afresh a redraw of the terminal's
    /// screen (escape sequences and the screen's text) and then the output from the offset
    /// the redraw stands for; one that resumes gets the output alone. So for a program that
    /// writes no escape sequences (the memory-testing guest's serial console), the output a
    /// tail printed is what follows the last escape sequence. Should the redraw ever end in
    /// text, that text would be taken for output and fail the comparison, never pass it.
    pub fn redraw_end(bytes: &[u8]) -> usize {
        let Some(esc) = bytes.iter().rposition(|&b| b == 0x1b) else {
            return 0;
        };
        match bytes.get(esc + 1) {
            Some(b'[') => bytes[esc + 2..]
                .iter()
                .position(|b| (0x40..=0x7e).contains(b))
                .map_or(bytes.len(), |i| esc + 2 + i + 1),
            Some(_) => esc + 2,
            None => bytes.len(),
        }
    }

    /// A stretch of an engate session's output as one client read it: the bytes and where
    /// they stand in the session's stream (`engate tail`'s saved position, `epoch next`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ConsoleRecord {
        /// The session's output epoch.
        pub epoch: u64,
        /// The stream offset of `bytes[0]`.
        pub start: u64,
        /// What the client read.
        pub bytes: Vec<u8>,
    }

    impl ConsoleRecord {
        /// What `console`'s reader read (after it reached the end of its stream), less the
        /// screen redraw it began with, placed by the position its tail saved at `saved`: the
        /// last byte is at `next - 1`.
        fn read(console: &Console, saved: &Path, name: &str) -> Result<Self, String> {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut g = console.text.lock().unwrap_or_else(|p| p.into_inner());
            while !g.closed {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!("the reader of engate tail {name} did not finish"));
                }
                g = console
                    .cv
                    .wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let text = std::fs::read_to_string(saved)
                .map_err(|e| format!("engate tail {name} saved no position: {e}"))?;
            let (epoch, next) = text
                .trim()
                .split_once(' ')
                .and_then(|(e, n)| Some((e.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
                .ok_or(format!("{}: not `epoch next`: {text:?}", saved.display()))?;
            let output = &g.bytes[redraw_end(&g.bytes)..];
            let start = next.checked_sub(output.len() as u64).ok_or(format!(
                "engate tail {name} printed {} bytes of output but stopped at {next}",
                output.len()
            ))?;
            Ok(Self {
                epoch,
                start,
                bytes: output.to_vec(),
            })
        }

        /// The offset after the last byte.
        pub fn end(&self) -> u64 {
            self.start + self.bytes.len() as u64
        }

        /// Checks that every byte of `part` is this record's byte at the same offset (`part`
        /// lies within this record, in the same epoch); returns how many bytes were compared.
        ///
        /// # Errors
        ///
        /// Where they differ, or what of `part` this record does not cover.
        pub fn holds(&self, part: &Self) -> Result<usize, String> {
            if part.epoch != self.epoch {
                return Err(format!("epoch {} against {}", part.epoch, self.epoch));
            }
            if part.start < self.start || part.end() > self.end() {
                return Err(format!(
                    "bytes {}..{} are not all within {}..{}",
                    part.start,
                    part.end(),
                    self.start,
                    self.end()
                ));
            }
            let from = (part.start - self.start) as usize;
            let ours = &self.bytes[from..from + part.bytes.len()];
            if let Some(i) = ours.iter().zip(&part.bytes).position(|(a, b)| a != b) {
                let at = part.start + i as u64;
                let show =
                    |b: &[u8]| String::from_utf8_lossy(&b[i..(i + 16).min(b.len())]).into_owned();
                return Err(format!(
                    "byte {at} differs: {:?} here, {:?} there",
                    show(&part.bytes),
                    show(ours)
                ));
            }
            Ok(part.bytes.len())
        }
    }

    /// A client of a VM's engate session that the test attaches, detaches and re-attaches at
    /// moments of its choosing ([`Vm::visit_console`]): an `engate tail` with a session
    /// directory of its own (a link to the session's socket and its own saved position).
    #[derive(Debug)]
    pub struct ConsoleVisitor {
        engate: PathBuf,
        runtime: PathBuf,
        name: String,
        tail: Option<Child>,
        console: Arc<Console>,
        /// The stream offset of the first byte read (known from the first detach).
        start: Option<(u64, u64)>,
    }

    impl ConsoleVisitor {
        /// Attaches: a new `engate tail`, resuming where this visitor's last one stopped.
        ///
        /// # Errors
        ///
        /// It is attached already, or the tail cannot start.
        pub fn attach(&mut self) -> Result<(), String> {
            if self.tail.is_some() {
                return Err(format!("the visitor of {} is attached already", self.name));
            }
            let mut tail = Command::new(&self.engate)
                .env("XDG_RUNTIME_DIR", &self.runtime)
                .args(["tail", &self.name])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("engate tail {}: {e}", self.name))?;
            let out = tail.stdout.take().ok_or("no stdout")?;
            self.console
                .text
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .closed = false;
            append_console(&self.console, out);
            self.tail = Some(tail);
            Ok(())
        }

        /// Waits up to `limit` until the visitor has read more than `n` bytes in all.
        ///
        /// # Errors
        ///
        /// The time ran out or the tail ended first.
        pub fn wait_bytes(&self, n: usize, limit: Duration) -> Result<(), String> {
            let deadline = Instant::now() + limit;
            let mut g = self.console.text.lock().unwrap_or_else(|p| p.into_inner());
            while g.bytes.len() <= n {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || g.closed {
                    return Err(format!(
                        "the visitor of {} read {} bytes in {limit:?}",
                        self.name,
                        g.bytes.len()
                    ));
                }
                g = self
                    .console
                    .cv
                    .wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            Ok(())
        }

        /// Bytes read so far.
        pub fn len(&self) -> usize {
            self.console
                .text
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .bytes
                .len()
        }

        /// Whether nothing was read yet.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// Detaches (`SIGTERM` to the tail, which saves where it stopped) and returns all the
        /// visitor has read so far, placed in the session's stream. The saved position must
        /// be exactly the first byte's offset plus the bytes read: a tail that lost or
        /// repeated bytes across a re-attach stops somewhere else.
        ///
        /// # Errors
        ///
        /// It is not attached, the tail does not stop or saves no position, or the position
        /// does not match what was read.
        pub fn detach(&mut self) -> Result<ConsoleRecord, String> {
            let mut tail = self
                .tail
                .take()
                .ok_or(format!("the visitor of {} is not attached", self.name))?;
            stop_tail(&mut tail, &self.name)?;
            let saved = self
                .runtime
                .join("engate")
                .join(format!("{}.tail-pos", self.name));
            let record = ConsoleRecord::read(&self.console, &saved, &self.name)?;
            match self.start {
                None => self.start = Some((record.epoch, record.start)),
                Some(first) if first == (record.epoch, record.start) => {}
                Some((epoch, start)) => {
                    return Err(format!(
                        "the visitor of {} read from {epoch}:{start} but its bytes now end at \
                         {}:{} ({} bytes read): bytes were lost or repeated across a re-attach",
                        self.name,
                        record.epoch,
                        record.end(),
                        record.bytes.len()
                    ));
                }
            }
            Ok(record)
        }
    }

    impl Drop for ConsoleVisitor {
        fn drop(&mut self) {
            if let Some(mut tail) = self.tail.take() {
                let _ = tail.kill();
                let _ = tail.wait();
            }
        }
    }

    /// One HTTP/1.1 request over the Unix socket at `socket` (Firecracker's API, or any
    /// server in its style); returns the status code and body.
    ///
    /// # Errors
    ///
    /// Connection or protocol failures, or no complete answer within `timeout`.
    pub fn http(
        socket: &Path,
        method: &str,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let err = |e: std::io::Error| format!("{method} {path}: {e}");
        let mut conn = UnixStream::connect(socket).map_err(err)?;
        conn.set_read_timeout(Some(timeout)).map_err(err)?;
        conn.set_write_timeout(Some(timeout)).map_err(err)?;
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(err)?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).map_err(err)?;
            if n == 0 {
                return Err(format!("{method} {path}: connection closed mid-answer"));
            }
            raw.extend_from_slice(&buf[..n]);
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or(format!("{method} {path}: bad status line in {head:?}"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while raw.len() < end + 4 + len {
                let n = conn.read(&mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            let body_end = raw.len().min(end + 4 + len);
            let body = String::from_utf8_lossy(&raw[end + 4..body_end]).to_string();
            return Ok((status, body));
        }
    }

    /// Whole verified passes on a console: lines `P<16 hex digits> <dots> OK`.
    pub fn verified_passes(console: &str) -> usize {
        console
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| {
                l.len() > 17
                    && l.starts_with('P')
                    && l[1..17].bytes().all(|b| b.is_ascii_hexdigit())
                    && l.ends_with(" OK")
            })
            .count()
    }

    fn tail(text: &str) -> String {
        let start = text.len().saturating_sub(300);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!("{:?}", &text[start..])
    }

    /// Boots a guest of `mem_mib` MiB, lets it finish one verified pass, pauses it mid-pass
    /// and snapshots it into `dir` (`<name>.state`, `<name>.mem`); the VMM is then killed.
    ///
    /// # Errors
    ///
    /// Any step's failure.
    pub fn take_snapshot(
        kit: &Kit,
        dir: &Path,
        name: &str,
        mem_mib: u32,
        huge: bool,
    ) -> Result<Snapshot, String> {
        let vm = Vm::spawn(kit, dir, &format!("{name}-boot"))?;
        vm.boot(kit, mem_mib, huge)?;
        vm.wait_console(Duration::from_secs(60), |t| verified_passes(t) >= 1)?;
        // Part of the way into the next pass, so the snapshot holds pages of two passes.
        std::thread::sleep(Duration::from_millis(15));
        let snap = Snapshot {
            state: dir.join(format!("{name}.state")),
            mem: dir.join(format!("{name}.mem")),
            mem_mib,
            huge,
        };
        vm.snapshot(&snap.state, &snap.mem)?;
        Ok(snap)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_output_starts_after_the_redraw() {
            let redraw = b"\x1b[?25l\x1b[H\x1b[J..... OK\r\nP0\x1b[2;3H\x1b7\x1b[?25h";
            let mut printed = redraw.to_vec();
            printed.extend_from_slice(b"P00 ..");
            assert_eq!(redraw_end(&printed), redraw.len());
            assert_eq!(redraw_end(redraw), redraw.len());
            assert_eq!(redraw_end(b"P00 .. OK\r\n"), 0);
            assert_eq!(redraw_end(b"x\x1b8P"), 3);
            // A sequence cut short is all redraw.
            assert_eq!(redraw_end(b"..\x1b[12"), 6);
        }
    }
}

pub mod hugetlb {
    //! Temporarily grows the kernel's pool of 2 MiB huge pages for a test.
    //!
    //! Hugetlb memory comes only from a pool the administrator reserves
    //! (`/proc/sys/vm/nr_hugepages`, empty by default). A test that maps huge pages asks for
    //! what it needs with [`reserve`]; the pool is grown if it has too few free pages (which
    //! needs root) and put back to its old size when the returned guard drops. Reservations
    //! in one process are serialized, so two tests never undo each other's.

    use std::sync::{Mutex, MutexGuard};

    const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

    static LOCK: Mutex<()> = Mutex::new(());

    /// A reservation: free huge pages were available when it was made. Drop it after the
    /// test's huge mappings are unmapped.
    #[derive(Debug)]
    pub struct HugePages {
        restore: Option<u64>,
        _serial: MutexGuard<'static, ()>,
    }

    impl Drop for HugePages {
        fn drop(&mut self) {
            if let Some(total) = self.restore {
                let _ = std::fs::write(NR_HUGEPAGES, total.to_string());
            }
        }
    }

    /// The number of free 2 MiB huge pages (`HugePages_Free` in `/proc/meminfo`).
    pub fn free_pages() -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Makes sure at least `pages` huge pages are free, growing the pool if needed.
    ///
    /// # Errors
    ///
    /// Why it could not (no hugetlb support, not permitted to grow the pool, or the kernel
    /// could not find enough contiguous memory), for the caller's skip line.
    pub fn reserve(pages: u64) -> Result<HugePages, String> {
        let serial = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let free =
            free_pages().ok_or("no hugetlb support (HugePages_Free missing from /proc/meminfo)")?;
        if free >= pages {
            return Ok(HugePages {
                restore: None,
                _serial: serial,
            });
        }
        let total: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?;
        std::fs::write(NR_HUGEPAGES, (total + pages - free).to_string()).map_err(|e| {
            format!("cannot grow the huge page pool ({NR_HUGEPAGES}: {e}); run as root")
        })?;
        let guard = HugePages {
            restore: Some(total),
            _serial: serial,
        };
        match free_pages() {
            Some(now) if now >= pages => Ok(guard),
            now => Err(format!(
                "the kernel found only {} free huge pages of the {pages} needed",
                now.unwrap_or(0)
            )),
        }
    }
}

/// Set in the child process that runs a deadlocking loom negative control.
const LOOM_CHILD_ENV: &str = "WORKSPACE_LOOM_CHILD";

/// Runs a loom model that must deadlock (a negative control) in a child process of this test
/// binary, and panics with loom's report if it did: call it from a `#[should_panic]` test named
/// `test`, with `run` running the model.
///
/// When loom finds a deadlock it panics on the thread that blocked last, and unwinding that
/// thread drops loom guards whose destructors touch the torn-down execution and panic again,
/// which aborts the process. So the control runs the model (the same test, selected by name) in
/// a child and reads loom's `deadlock; threads = …` line from its output. A child that finishes
/// without that line means loom did not catch the bug: this returns normally and the
/// `#[should_panic]` control fails.
///
/// # Panics
///
/// When the child reported the deadlock (the control passed), or the child cannot be run.
pub fn loom_expect_deadlock_in_child(test: &str, run: impl FnOnce()) {
    if std::env::var_os(LOOM_CHILD_ENV).is_some() {
        run();
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(LOOM_CHILD_ENV, "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the control in a child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(line) = text.lines().find(|l| l.starts_with("deadlock; threads")) {
        panic!("loom caught the bug in the child: {line}");
    }
    eprintln!("the child did not report a deadlock; its output:\n{text}");
}

/// Runs a closure under loom's model checker and prints how many executions it explored.
///
/// The preemption bound is `LOOM_MAX_PREEMPTIONS` if set, else 2 (what `cargo xtask ci` uses),
/// and never below the optional `floor`: `loom_model!(3, f)` for a window that needs one more
/// context switch to reach. The macro expands in the calling crate, which depends on `loom`
/// (this crate does not, so ordinary test builds never compile it).
///
/// ```text
/// workspace_tests::loom_model!(|| {
///     let t = loom::thread::spawn(|| ());
///     t.join().unwrap();
/// });
/// ```
#[macro_export]
macro_rules! loom_model {
    ($f:expr) => {
        $crate::loom_model!(0, $f)
    };
    ($floor:expr, $f:expr) => {{
        let mut builder = ::loom::model::Builder::new();
        builder.preemption_bound = Some(builder.preemption_bound.unwrap_or(2).max($floor));
        let executions = ::std::sync::Arc::new(::std::sync::atomic::AtomicUsize::new(0));
        let counter = ::std::sync::Arc::clone(&executions);
        let f = $f;
        builder.check(move || {
            counter.fetch_add(1, ::std::sync::atomic::Ordering::Relaxed);
            f();
        });
        println!(
            "loom: {} executions explored",
            executions.load(::std::sync::atomic::Ordering::Relaxed)
        );
    }};
}

/// The short criterion configuration every bench uses: half a second of warm-up, `$secs`
/// seconds of measurement and `$samples` samples (the benches compute their own verdicts from
/// the timings, so long criterion runs buy nothing). Expands in the calling bench, which
/// depends on `criterion`.
///
/// ```text
/// criterion_group! {
///     name = benches;
///     config = workspace_tests::criterion_config!(2, 30);
///     targets = bench_paths, verdicts
/// }
/// ```
#[macro_export]
macro_rules! criterion_config {
    ($secs:expr, $samples:expr) => {
        ::criterion::Criterion::default()
            .warm_up_time(::std::time::Duration::from_millis(500))
            .measurement_time(::std::time::Duration::from_secs($secs))
            .sample_size($samples)
    };
}
