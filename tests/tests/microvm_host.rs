//! A microVM host, end to end: the workspace's crates working together on real parts.
//!
//! - **Restore**: squib-host's pager service (`squib-host serve`) restores four real
//!   Firecracker microVMs from one snapshot template, lazily: by demand faults alone (no
//!   prewarm list, no background population), so what the pager installs is what the guest
//!   touched.
//! - **Consoles**: every Firecracker runs inside an engate session (`engate new`), so its
//!   serial console is the session's output, read by `engate tail` from the start. A second
//!   client attaches to one session mid-restore (after the VM started, before its first
//!   verified pass), detaches, re-attaches, and at the end every byte it read is the byte the
//!   console that never detached holds at the same offset of the session's stream.
//! - **Supervision**: the pager reports to varta-watch over sd_notify (`NOTIFY_SOCKET`);
//!   so does every engate session server. `SIGSTOP` of the pager gives a `stalled` event;
//!   `SIGKILL` an `exited` event whose hook tells the service's keeper (`--restart on-signal`)
//!   to start a new pager. The new pager lists every live session as serving its VMM, the
//!   guest that was restoring faults pages through it, and every guest goes on verifying its
//!   memory.
//! - **Memory**: restores are admitted by sqry-admission against a budget with room for three
//!   VMs (each reservation its memory size, trued up to the bytes the pager installed for it):
//!   the ledger is sampled after every step and must hold exactly the trued-up sizes and the
//!   reservations in flight, never more than the budget; the fourth restore waits in the
//!   queue for want of room and is admitted only after the first VM exits.
//! - **Plugins**: one more template's pages come from a polyplug plugin (C, built here) that
//!   reads a compressed snapshot (zero pages elided), served to the pager over squib-host's
//!   page-server protocol; the plugin is hot-reloaded again and again, at least twice between
//!   the first page fetched through it and the guest's first verified pass, both versions
//!   serve pages, and the guest verifies with no error.
//!
//! The programs come from the workspace's target directory (`cargo xtask ci` builds them in
//! its cross-crate stage); the Firecracker kit from `FIRECRACKER_BIN`. Without the kit or KVM
//! (or with `MICROVM_HOST_FIXTURE=1`) the scenario says why and runs with a stand-in VMM instead:
//! this test binary re-run as `--fixture-vmm`, which maps guest memory, registers it with a
//! userfaultfd, hands both to the pager with Firecracker's handshake, and then behaves like the
//! memory-testing guest (verify every page's pattern of the previous pass, write the next one,
//! print `P<k> …… OK`) — real faults, a real pager, no KVM. Where a part cannot run (no
//! userfaultfd, the programs not built, no C compiler for the plugin) it is skipped with the
//! reason, except under `cargo xtask ci` (`WORKSPACE_PROGRAMS_REQUIRED` or `FIRECRACKER_BIN`
//! set), where that fails, as does a configured Firecracker kit that cannot be used. It prints
//! a table (the demo's finale shows it) and a verdict.

use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    {
        let args: Vec<String> = std::env::args().collect();
        if args.get(1).map(String::as_str) == Some(linux::FIXTURE_FLAG) {
            return linux::fixture_vmm(&args[2..]);
        }
        workspace_tests::harness::run(&[
            (
                "the_console_checks_catch_a_lost_or_repeated_byte",
                linux::console_check_is_sharp,
            ),
            (linux::NAME, linux::scenario),
            (
                "the_same_host_runs_on_the_stand_in_vmm_without_kvm",
                linux::scenario_on_the_stand_in,
            ),
        ])
    }
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("skip: microvm_host: userfaultfd and Firecracker are Linux-only");
        workspace_tests::harness::report(&[])
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use serde_json::Value;
    use sqry_admission::{
        AdmissionConfig, AdmissionManager, HeapSize, LedgerSnapshot, ReserveRequest,
    };
    use workspace_tests::firecracker::{
        ConsoleRecord, Kit, KitUnavailable, Snapshot, Vm, redraw_end, take_snapshot,
        verified_passes,
    };
    use workspace_tests::pager_service::Service;
    use workspace_tests::support::{TempDir, skip};

    pub(super) const NAME: &str =
        "a_microvm_host_restores_lazily_shows_consoles_supervises_and_admits";

    const MEM_MIB: u64 = 256;
    const MEM: u64 = MEM_MIB << 20;
    const VMS: usize = 4;
    /// VMs the memory budget has room for.
    const ROOM: u64 = 3;
    /// Every wait for a guest.
    const GUEST_LIMIT: Duration = Duration::from_secs(180);
    /// varta-watch's stall threshold for the pager (it reports every second).
    const THRESHOLD: Duration = Duration::from_millis(2500);

    /// The workspace's programs, from the target directory this test was built into.
    struct Programs {
        squib: PathBuf,
        engate: PathBuf,
        varta: PathBuf,
    }

    impl Programs {
        fn find() -> Result<Self, String> {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/<profile>/deps/microvm_host-<hash>
            let dir = exe
                .parent()
                .and_then(Path::parent)
                .ok_or("no target directory above the test binary")?;
            let programs = Self {
                squib: dir.join("squib-host"),
                engate: dir.join("engate"),
                varta: dir.join("varta-watch"),
            };
            for p in [&programs.squib, &programs.engate, &programs.varta] {
                if !p.is_file() {
                    return Err(format!(
                        "{} is not built (`cargo xtask ci` builds it in its tests stage; or \
                         `cargo build -p squib-host --features service -p engate-attach \
                         --features engate-attach/cli -p varta-watch`)",
                        p.display()
                    ));
                }
            }
            Ok(programs)
        }
    }

    /// What a VM's admission holds: the bytes of guest memory the pager installed for it.
    #[derive(Debug)]
    struct GuestMemory(u64);

    impl HeapSize for GuestMemory {
        fn heap_bytes(&self) -> usize {
            self.0 as usize
        }
    }

    /// varta-watch as the host's supervisor: its events, one JSON object per line.
    struct Varta {
        child: Child,
        socket: PathBuf,
        events: Arc<(Mutex<Vec<Value>>, Condvar)>,
        hook_log: PathBuf,
    }

    impl Varta {
        fn start(binary: &Path, dir: &Path) -> Result<Self, String> {
            let socket = dir.join("observer.sock");
            let hook_log = dir.join("exit-hooks.log");
            let mut child = Command::new(binary)
                .arg("--socket")
                .arg(&socket)
                .arg("--threshold")
                .arg(format!("{}ms", THRESHOLD.as_millis()))
                .arg("--events")
                .arg("-")
                .arg("--hook-debounce")
                .arg("0s")
                .arg("--on-exit")
                .arg(format!(
                    "echo \"$VARTA_PID $VARTA_EVENT $VARTA_COMM\" >> '{log}'; \
                     if [ \"$VARTA_COMM\" = squib-host ]; then kill -USR1 \"$(cat '{keeper}')\"; fi",
                    log = hook_log.display(),
                    keeper = dir.join("keeper.pid").display()
                ))
                .arg("--log-level")
                .arg("warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
            let out = child.stdout.take().ok_or("no stdout")?;
            let events = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
            let sink = Arc::clone(&events);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        sink.0.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                        sink.1.notify_all();
                    }
                }
            });
            let varta = Self {
                child,
                socket,
                events,
                hook_log,
            };
            let start = Instant::now();
            while !varta.socket.exists() {
                if start.elapsed() > Duration::from_secs(5) {
                    return Err(format!("{} did not appear", varta.socket.display()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(varta)
        }

        /// Waits for an event `kind` about `pid`.
        fn wait_event(&self, kind: &str, pid: u32, limit: Duration) -> Result<Value, String> {
            let deadline = Instant::now() + limit;
            let (lock, cv) = &*self.events;
            let mut events = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(e) = events
                    .iter()
                    .find(|e| e["event"] == kind && e["pid"].as_u64() == Some(u64::from(pid)))
                {
                    return Ok(e.clone());
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let seen: Vec<String> = events.iter().map(Value::to_string).collect();
                    return Err(format!(
                        "no {kind} event for pid {pid} within {limit:?}; events: {seen:?}"
                    ));
                }
                events = cv
                    .wait_timeout(events, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }

        fn event_count(&self) -> usize {
            self.events.0.lock().map_or(0, |e| e.len())
        }
    }

    impl Drop for Varta {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Sends `signal` to process `pid` (a pager, which is not our child).
    fn signal(pid: u32, signal: libc::c_int) -> Result<(), String> {
        platform_primitives::process::signal(pid, signal)
            .map_err(|e| format!("kill({pid}, {signal}): {e}"))
    }

    /// The variable that makes every part of the scenario required, if one is set: the
    /// scenario then fails where it would skip. `cargo xtask ci` sets both
    /// (`WORKSPACE_PROGRAMS_REQUIRED` in its cross-crate stage, `FIRECRACKER_BIN` wherever
    /// `../shared/firecracker` exists).
    fn required_by() -> Option<&'static str> {
        [
            "WORKSPACE_PROGRAMS_REQUIRED",
            workspace_tests::firecracker::ENV,
        ]
        .into_iter()
        .find(|v| std::env::var_os(v).is_some())
    }

    /// A part of the scenario cannot run here: outside CI it is skipped with the reason;
    /// under CI ([`required_by`]) that is a failure, with the reason.
    fn skip_or_fail(part: &str, why: &str) -> Result<(), String> {
        match required_by() {
            Some(var) => Err(format!(
                "{part}: {why} ({var} is set, as under `cargo xtask ci`: this part must run)"
            )),
            None => {
                skip(part, why);
                Ok(())
            }
        }
    }

    /// One VM of the host: its engate session, when it was admitted, when its load was sent,
    /// how long its restore took until the first verified pass.
    struct Guest {
        name: String,
        vm: Vm,
        admitted_at: Instant,
        loaded_at: Instant,
        restore: Option<Duration>,
    }

    /// The restore's pager session: demand faults only (no prewarm list, no background
    /// population), so the bytes the pager installs are the pages the guest touched (and the
    /// readahead next to them), and a VM's trued-up reservation means something.
    fn session_body(template: &str, socket: &Path) -> String {
        format!(
            r#"{{"template":"{template}","socket":"{}","background":false,"prewarm":false}}"#,
            socket.display()
        )
    }

    /// Admits, then restores VM `i`: reserve its memory (waiting in the queue for room),
    /// create its pager session, start Firecracker in an engate session and load the snapshot.
    fn restore(
        env: &Env<'_>,
        ledger: &Ledger,
        i: usize,
    ) -> Result<(Guest, sqry_admission::Reservation<String, GuestMemory>), String> {
        let key = format!("vm{i}");
        let reservation = ledger
            .manager
            .reserve(&key, ReserveRequest::new(MEM).wait_for(GUEST_LIMIT))
            .map_err(|e| format!("admission of {key}: {e}"))?;
        let admitted_at = Instant::now();
        ledger.sample(&format!("{key} admitted"))?;
        let sock = env.dir.join(format!("{key}.uffd"));
        env.svc.ok(
            "PUT",
            &format!("/sessions/{key}"),
            &session_body("base", &sock),
        )?;
        let (vm, loaded_at) = start_vm(env, &key, &sock)?;
        Ok((
            Guest {
                name: key,
                vm,
                admitted_at,
                loaded_at,
                restore: None,
            },
            reservation,
        ))
    }

    /// Starts VM `key` in an engate session reporting to varta-watch and restores it through
    /// the pager session listening at `sock`: Firecracker loading the snapshot, or the stand-in
    /// VMM. Returns the VM and when its restore began.
    fn start_vm(env: &Env<'_>, key: &str, sock: &Path) -> Result<(Vm, Instant), String> {
        let supervised = [("NOTIFY_SOCKET", env.supervisor)];
        let vm = match env.kit {
            Some(kit) => Vm::spawn_in_session(
                kit,
                env.dir,
                key,
                &env.programs.engate,
                env.runtime,
                &supervised,
            )?,
            None => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let command: Vec<std::ffi::OsString> = vec![
                    exe.into(),
                    FIXTURE_FLAG.into(),
                    sock.into(),
                    MEM_MIB.to_string().into(),
                    FIXTURE_PASS.to_string().into(),
                ];
                Vm::program_in_session(
                    &command,
                    env.dir,
                    key,
                    &env.programs.engate,
                    env.runtime,
                    &supervised,
                )?
            }
        };
        let server = vm
            .session_server_pid()
            .ok_or(format!("{key}: no session server pid"))?;
        env.varta
            .wait_event("ready", server, Duration::from_secs(10))
            .map_err(|e| format!("{key}'s session server: {e}"))?;
        let loaded_at = Instant::now();
        if env.kit.is_some() {
            match vm.load_uffd(env.snap, sock, Duration::from_secs(60))? {
                (200..=299, _) => {}
                other => return Err(format!("{key}: snapshot load answered {other:?}")),
            }
        } else {
            // Firecracker's load returns once the pager serves its memory; the stand-in
            // connects on its own, so wait for the same point.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let sessions = env.svc.ok("GET", "/sessions", "")?;
                let state = sessions
                    .as_array()
                    .and_then(|a| a.iter().find(|s| s["id"] == key))
                    .map(|s| s["state"].clone());
                if state.as_ref().is_some_and(|s| s == "serving") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{key}'s session is not serving the stand-in: {state:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok((vm, loaded_at))
    }

    /// The flag that makes this test binary the stand-in VMM.
    pub(super) const FIXTURE_FLAG: &str = "--fixture-vmm";
    /// The pass the fixture snapshot was taken after.
    const FIXTURE_PASS: u64 = 1;
    /// Where the memory-testing guest (and the stand-in) start their passes.
    const TESTED_FROM: usize = 16 << 20;
    /// One progress mark per this much memory checked.
    const MARK: usize = 2 << 20;

    /// The word pass `k` writes at the start, middle and end of page `page`.
    fn pattern(page: usize, k: u64) -> u64 {
        page as u64 ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Where in a page the stand-in checks and writes its pattern (first, middle, last word).
    fn probes(page_size: usize) -> [usize; 3] {
        [0, page_size / 2, page_size - 8]
    }

    /// The stand-in's snapshot: every tested page holds pass `FIXTURE_PASS`'s pattern.
    fn fixture_snapshot(dir: &Path) -> Result<Snapshot, String> {
        let page = squib_host::host_page_size();
        let len = (MEM_MIB as usize) << 20;
        let mut mem = vec![0u8; len];
        for p in TESTED_FROM / page..len / page {
            for at in probes(page) {
                let off = p * page + at;
                mem[off..off + 8].copy_from_slice(&pattern(p, FIXTURE_PASS).to_le_bytes());
            }
        }
        let path = dir.join("fixture.mem");
        std::fs::write(&path, &mem).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Snapshot {
            state: dir.join("fixture.state"),
            mem: path,
            mem_mib: MEM_MIB as u32,
            huge: false,
        })
    }

    /// The stand-in VMM: `--fixture-vmm SOCKET MEM_MIB PASS`.
    pub(super) fn fixture_vmm(args: &[String]) -> std::process::ExitCode {
        match run_fixture(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fixture vmm: {e}");
                std::process::ExitCode::from(1)
            }
        }
    }

    fn run_fixture(args: &[String]) -> Result<(), String> {
        use std::io::Write;
        use std::os::fd::AsFd;
        let [socket, mem_mib, pass] = args else {
            return Err(format!("usage: {FIXTURE_FLAG} SOCKET MEM_MIB PASS"));
        };
        let len = mem_mib.parse::<usize>().map_err(|e| e.to_string())? << 20;
        let mut k: u64 = pass
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string())?;
        let page = squib_host::host_page_size();
        let uffd = squib_host::Uffd::open().map_err(|e| e.to_string())?;
        let mut mem = platform_primitives::mem::AnonMapping::new(len).map_err(|e| e.to_string())?;
        uffd.register_mapping(&mut mem).map_err(|e| e.to_string())?;
        // Firecracker's handshake: the regions as JSON, the userfaultfd attached.
        let handshake = format!(
            r#"[{{"base_host_virt_addr":{},"size":{len},"offset":0,"page_size":{page},"page_size_kib":{page}}}]"#,
            mem.as_ptr() as u64
        );
        let conn = std::os::unix::net::UnixStream::connect(socket)
            .map_err(|e| format!("{socket}: {e}"))?;
        platform_primitives::fdpass::send_with_fds(&conn, handshake.as_bytes(), &[uffd.as_fd()])
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection and the userfaultfd stay open for the life of the process, as
        // Firecracker keeps them.
        let _session = (conn, uffd);
        let mut out = std::io::stdout().lock();
        loop {
            k += 1;
            let _ = write!(out, "P{k:016x} ");
            let _ = out.flush();
            for chunk in (TESTED_FROM..len).step_by(MARK) {
                for p in chunk / page..(chunk + MARK).min(len) / page {
                    let bytes = mem.as_mut_slice();
                    for at in probes(page) {
                        let off = p * page + at;
                        let word = &mut bytes[off..off + 8];
                        let got = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
                        if got != pattern(p, k - 1) {
                            let _ = writeln!(
                                out,
                                "FAIL pass={k} addr={off:#x} got={got:#x} want={:#x}",
                                pattern(p, k - 1)
                            );
                            let _ = out.flush();
                            // As the real guest does: stop here, keep the VM up.
                            loop {
                                std::thread::park();
                            }
                        }
                        word.copy_from_slice(&pattern(p, k).to_le_bytes());
                    }
                }
                let _ = write!(out, ".");
                let _ = out.flush();
            }
            let _ = writeln!(out, " OK");
            let _ = out.flush();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the current pager process reports for session `key`: faults served and bytes
    /// installed (its counters start at zero in each pager process).
    #[derive(Debug, Clone, Copy)]
    struct Served {
        faults: u64,
        bytes: u64,
    }

    /// [`Served`] for session `key`, which must be installing pages on demand alone: no
    /// background population, no prewarm list, nothing prewarmed — else the bytes installed
    /// would count pages the guest never asked for.
    fn served(svc: &Service, key: &str) -> Result<Served, String> {
        let sessions = svc.ok("GET", "/sessions", "")?;
        let session = sessions
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == key))
            .ok_or(format!("no session {key} in {sessions}"))?;
        if session["background"] != false
            || session["prewarm"] != false
            || session["prewarmed"].as_u64() != Some(0)
        {
            return Err(format!(
                "{key}'s pager installs pages the guest did not fault on: {session}"
            ));
        }
        match (session["faults"].as_u64(), session["bytes_served"].as_u64()) {
            (Some(faults), Some(bytes)) => Ok(Served { faults, bytes }),
            _ => Err(format!("no fault counters for {key} in {session}")),
        }
    }

    /// The bytes a guest's memory really holds, for its true-up: every page the guest verified
    /// (all of them from `TESTED_FROM` up) was installed by a pager, and no pager installs more
    /// than the guest's memory. `what` names the figure in the error.
    fn touched(key: &str, bytes: u64, what: &str) -> Result<u64, String> {
        let verified = MEM - TESTED_FROM as u64;
        if (verified..=MEM).contains(&bytes) {
            Ok(bytes)
        } else {
            Err(format!(
                "{key}: {what} is {bytes} bytes, but the guest verified {verified} bytes of its \
                 {MEM}"
            ))
        }
    }

    /// The admission ledger as the test sees it: the manager, and a sample of the ledger after
    /// every step, each checked against the budget when it is taken.
    struct Ledger {
        manager: AdmissionManager<String, GuestMemory>,
        samples: Mutex<Vec<(String, LedgerSnapshot)>>,
    }

    impl Ledger {
        /// Samples the ledger after `step`; fails if it is above the budget.
        fn sample(&self, step: &str) -> Result<LedgerSnapshot, String> {
            let snapshot = self.manager.ledger().snapshot();
            self.samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((step.to_owned(), snapshot));
            if snapshot.total() > snapshot.limit {
                return Err(format!(
                    "after {step} the ledger is over budget: {snapshot:?}"
                ));
            }
            Ok(snapshot)
        }

        /// Samples the ledger after `step` and checks it holds exactly `published` (the
        /// trued-up sizes of the VMs running) and `reserved` whole-VM reservations in flight.
        fn expect(
            &self,
            step: &str,
            published: &[(String, u64)],
            reserved: u64,
        ) -> Result<(), String> {
            let snapshot = self.sample(step)?;
            let loaded: u64 = published.iter().map(|(_, b)| b).sum();
            if snapshot.loaded != loaded
                || snapshot.reserved != reserved * MEM
                || snapshot.total() != loaded + reserved * MEM
            {
                return Err(format!(
                    "after {step} the ledger should hold {published:?} and {reserved} \
                     reservation(s) of {MEM} bytes: {snapshot:?}"
                ));
            }
            Ok(())
        }

        /// The largest total the samples saw, and how many were taken.
        fn observed_max(&self) -> (u64, usize) {
            let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            (
                samples.iter().map(|(_, s)| s.total()).max().unwrap_or(0),
                samples.len(),
            )
        }
    }

    struct Env<'a> {
        /// The Firecracker kit, or `None` for the stand-in VMM.
        kit: Option<&'a Kit>,
        varta: &'a Varta,
        supervisor: &'a Path,
        dir: &'a Path,
        runtime: &'a Path,
        programs: &'a Programs,
        svc: &'a Service,
        snap: &'a Snapshot,
    }

    /// Every whole pass line on a console has exactly `marks` progress marks after its
    /// `P<k>` header, the pass numbers count up by one, and nothing else appears: a lost or
    /// repeated byte anywhere (a re-attach that replayed or skipped output) breaks one of
    /// these.
    fn console_is_exact(console: &[u8], marks: usize) -> Result<usize, String> {
        let text = String::from_utf8_lossy(console);
        // Every line ends as the first one does (`\n`, or `\r\n` through a terminal).
        let crlf = text.find('\n').is_some_and(|i| text[..i].ends_with('\r'));
        let lines: Vec<&str> = text.split('\n').collect();
        let mut last: Option<u64> = None;
        let mut whole = 0;
        for (n, raw) in lines.iter().enumerate() {
            let in_progress = n + 1 == lines.len();
            let line = if in_progress {
                *raw
            } else if crlf {
                raw.strip_suffix('\r')
                    .ok_or(format!("line {n} lost its carriage return: {raw:?}"))?
            } else if raw.ends_with('\r') {
                return Err(format!("line {n} has a stray carriage return: {raw:?}"));
            } else {
                raw
            };
            if line.is_empty() {
                continue;
            }
            let Some(rest) = line.strip_prefix('P') else {
                // The first line may be the rest of the pass the snapshot was taken in.
                if n == 0 {
                    continue;
                }
                return Err(format!("line {n} is not a pass: {line:?}"));
            };
            if in_progress {
                // Cut anywhere: a prefix of `P<16 hex> <marks> OK`.
                let hex_len = rest
                    .bytes()
                    .take_while(u8::is_ascii_hexdigit)
                    .count()
                    .min(16);
                let whole_line = format!("P{} {} OK", &rest[..hex_len], ".".repeat(marks));
                if !(whole_line.starts_with(line) && (hex_len == 16 || line.len() == hex_len + 1)) {
                    return Err(format!("the pass in progress is malformed: {line:?}"));
                }
                continue;
            }
            let k = rest
                .get(..16)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or(format!("line {n} has no pass number: {line:?}"))?;
            if let Some(prev) = last
                && k != prev + 1
            {
                return Err(format!("pass {k:#x} follows pass {prev:#x}"));
            }
            last = Some(k);
            // Exactly: a space, the marks, and ` OK`.
            let dots = rest[16..]
                .strip_prefix(' ')
                .and_then(|b| b.strip_suffix(" OK"))
                .filter(|m| m.bytes().all(|b| b == b'.'))
                .ok_or(format!("line {n} is not `P<k> <marks> OK`: {line:?}"))?
                .len();
            if dots != marks {
                return Err(format!("pass {k:#x} has {dots} marks, not {marks}"));
            }
            whole += 1;
        }
        Ok(whole)
    }

    polyplug_runtime::contract! {
        /// `snapshot.pages@1`, as `tests/fixtures/pages-plugin/pages.c` defines it.
        pub struct Pages {
            pub fn read(offset: u64, out: *mut u8, len: u64) -> i32;
            pub fn len() -> u64;
            pub fn version() -> u32;
        }
    }

    const PAGES: polyplug_runtime::ids::ContractRef<'static> =
        polyplug_runtime::ids::ContractRef::new("snapshot.pages", 1, 0);

    /// A page source that calls the plugin providing `snapshot.pages@1`, whichever version is
    /// loaded at the moment (the guard keeps it loaded for the call), and counts the fetches
    /// each version served (asked through the same guard, so the answer is the version that
    /// read the bytes).
    struct PluginPages {
        runtime: Arc<polyplug_runtime::Runtime>,
        len: u64,
        errors: std::sync::atomic::AtomicU64,
        /// Fetches served by version 1 and by version 2 of the plugin.
        served_by: [std::sync::atomic::AtomicU64; 2],
        /// When the first fetch was asked for.
        first_fetch: std::sync::OnceLock<Instant>,
    }

    impl std::fmt::Debug for PluginPages {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PluginPages")
                .field("len", &self.len)
                .finish()
        }
    }

    impl squib_host::PageSource for PluginPages {
        fn fetch(
            &self,
            req: &squib_host::PageRequest,
        ) -> Result<bytes::Bytes, squib_host::PageSourceError> {
            let fail = |why: String| {
                self.errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                squib_host::PageSourceError::Io {
                    offset: req.offset,
                    len: req.len,
                    source: std::io::Error::other(why),
                }
            };
            self.first_fetch.get_or_init(Instant::now);
            let guard = self.runtime.find(&PAGES).map_err(|e| fail(e.to_string()))?;
            let pages = guard
                .functions::<Pages>()
                .ok_or_else(|| fail("the plugin's table does not match snapshot.pages@1".into()))?;
            let mut out = vec![0u8; req.len];
            match (pages.read)(req.offset, out.as_mut_ptr(), req.len as u64) {
                0 => {}
                rc => return Err(fail(format!("the plugin's read returned {rc}"))),
            }
            match (pages.version)() {
                v @ (1 | 2) => {
                    self.served_by[v as usize - 1]
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(bytes::Bytes::from(out))
                }
                v => Err(fail(format!("the plugin says it is version {v}"))),
            }
        }

        fn len_hint(&self) -> Option<u64> {
            Some(self.len)
        }
    }

    /// Writes `mem` as a ZPK1 file (`pages.c`'s format: zero pages elided); returns its size.
    fn compress(mem: &Path, out: &Path) -> Result<u64, String> {
        const PAGE: usize = 4096;
        let data = std::fs::read(mem).map_err(|e| format!("{}: {e}", mem.display()))?;
        let pages = data.len().div_ceil(PAGE);
        let mut bitmap = vec![0u8; pages.div_ceil(8)];
        let mut packed = Vec::new();
        for (i, page) in data.chunks(PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                bitmap[i / 8] |= 1 << (i % 8);
                packed.extend_from_slice(page);
                packed.resize(packed.len().next_multiple_of(PAGE), 0);
            }
        }
        let mut file = Vec::with_capacity(24 + bitmap.len() + packed.len());
        file.extend_from_slice(b"ZPK1");
        file.extend_from_slice(&(PAGE as u32).to_le_bytes());
        file.extend_from_slice(&(data.len() as u64).to_le_bytes());
        file.extend_from_slice(&(pages as u64).to_le_bytes());
        file.extend_from_slice(&bitmap);
        file.extend_from_slice(&packed);
        std::fs::write(out, &file).map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(file.len() as u64)
    }

    /// Builds the plugin's bundle `version` in `dir` (C compiler: `$CC` or `cc`), reading the
    /// snapshot at `zpk`.
    fn build_bundle(dir: &Path, version: u32, zpk: &Path) -> Result<(), String> {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pages-plugin");
        let include =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/polyplug-runtime/include");
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
        let out = Command::new(&cc)
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror"])
            .arg(format!("-DVERSION={version}"))
            .arg("-I")
            .arg(&include)
            .arg(fixtures.join("pages.c"))
            .arg("-o")
            .arg(dir.join("libpages.so"))
            .output()
            .map_err(|e| format!("{cc}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cc} could not build pages.c ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::fs::write(
            dir.join("manifest.toml"),
            format!(
                "name = \"pages\"\nversion = \"1.{version}.0\"\nprovides = [\"snapshot.pages@1.0\"]\n\
                 \n[library]\nlinux = \"libpages.so\"\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("snapshot.path"), format!("{}\n", zpk.display()))
            .map_err(|e| e.to_string())
    }

    /// The plugin stage: a template served by the plugin, a VM restoring through it by demand
    /// faults alone while the plugin is reloaded v1 → v2 → v1 … Only reloads that begin after
    /// the first page was fetched and end before the guest's first verified pass count, and
    /// both versions must have served pages. Returns the table row (`None`: skipped here).
    fn plugin_restore(env: &Env<'_>, ledger: &Ledger) -> Result<Option<Row>, String> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let zpk = env.dir.join("snapshot.zpk");
        let packed = compress(&env.snap.mem, &zpk)?;
        let (v1, v2) = (env.dir.join("pages-v1"), env.dir.join("pages-v2"));
        for (dir, version) in [(&v1, 1), (&v2, 2)] {
            if let Err(why) = build_bundle(dir, version, &zpk) {
                skip_or_fail(&format!("{NAME} (plugin stage)"), &why)?;
                return Ok(None);
            }
        }
        let runtime = Arc::new(
            polyplug_runtime::Runtime::builder()
                .hot_reload(true)
                .build()
                .map_err(|e| e.to_string())?,
        );
        runtime
            .load_bundle(&v1)
            .map_err(|e| format!("load {}: {e}", v1.display()))?;
        let source = Arc::new(PluginPages {
            runtime: Arc::clone(&runtime),
            len: MEM,
            errors: AtomicU64::new(0),
            served_by: [AtomicU64::new(0), AtomicU64::new(0)],
            first_fetch: std::sync::OnceLock::new(),
        });
        let socket = env.dir.join("plugin-pages.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).map_err(|e| e.to_string())?;
        {
            let source = Arc::clone(&source);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    let source = Arc::clone(&source);
                    std::thread::spawn(move || squib_host::serve_pages(conn, &*source));
                }
            });
        }
        env.svc.ok(
            "PUT",
            "/templates/plug",
            &format!(
                r#"{{"page_server":"unix:{}","len":{MEM}}}"#,
                socket.display()
            ),
        )?;
        let key = "vm4".to_owned();
        ledger.manager.register_pinned(key.clone());
        let reservation = ledger
            .manager
            .reserve(&key, ReserveRequest::new(MEM).wait_for(GUEST_LIMIT))
            .map_err(|e| format!("admission of {key}: {e}"))?;
        ledger.expect("vm4's admission", &[], 1)?;
        let sock = env.dir.join("vm4.uffd");
        env.svc
            .ok("PUT", "/sessions/vm4", &session_body("plug", &sock))?;
        // Reloads, back and forth, for as long as the guest restores.
        let stop = Arc::new(AtomicBool::new(false));
        let reloader = {
            let (runtime, stop) = (Arc::clone(&runtime), Arc::clone(&stop));
            let (v1, v2) = (v1.clone(), v2.clone());
            // Each reload's start and end.
            std::thread::spawn(move || -> Result<Vec<(Instant, Instant)>, String> {
                let mut done = Vec::new();
                for dir in [&v2, &v1].into_iter().cycle() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let began = Instant::now();
                    runtime
                        .reload(polyplug_runtime::ReloadRequest::new("pages").from_dir(dir))
                        .map_err(|e| format!("reload from {}: {e}", dir.display()))?;
                    done.push((began, Instant::now()));
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(done)
            })
        };
        let verified = start_vm(env, &key, &sock).and_then(|(vm, loaded_at)| {
            let restore = vm.wait_verified(loaded_at, GUEST_LIMIT)?;
            Ok((restore, Instant::now(), vm))
        });
        stop.store(true, Ordering::SeqCst);
        let reloads = reloader.join().map_err(|_| "the reloader panicked")??;
        let (restore, verified_at, vm) = verified?;
        let first_fetch = *source
            .first_fetch
            .get()
            .ok_or("the guest verified with no page fetched from the plugin")?;
        let reloads = reloads
            .iter()
            .filter(|(began, ended)| *began >= first_fetch && *ended <= verified_at)
            .count();
        let served_by = source
            .served_by
            .each_ref()
            .map(|n| n.load(Ordering::Relaxed));
        let errors = source.errors.load(Ordering::Relaxed);
        let sessions = env.svc.ok("GET", "/sessions", "")?;
        let failed = sessions
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == "vm4"))
            .and_then(|s| s["failed_closed"].as_u64())
            .ok_or(format!("no vm4 in {sessions}"))?;
        if errors != 0 || failed != 0 || reloads < 2 || served_by.contains(&0) {
            return Err(format!(
                "through the plugin: {errors} source errors, {failed} pages failed closed, \
                 {reloads} reloads between the first fetch and the first verified pass, \
                 fetches served by v1 and v2: {served_by:?}"
            ));
        }
        let bytes = touched(
            "vm4",
            served(env.svc, "vm4")?.bytes,
            "what the pager installed",
        )?;
        let handle = ledger
            .manager
            .publish(reservation, GuestMemory(bytes))
            .map_err(|e| format!("true-up of vm4: {e}"))?;
        ledger.expect("vm4's true-up", &[(key.clone(), bytes)], 0)?;
        println!(
            "vm4 restored through the plugin (compressed snapshot {packed} bytes) across \
             {reloads} hot reloads between its first fetch and its first verified pass, \
             fetches served by v1 {} and v2 {}: 0 source errors, 0 pages failed closed",
            served_by[0], served_by[1]
        );
        let console = vm.console_bytes();
        let whole = console_is_exact(&console, ((MEM_MIB - 16) / 2) as usize)
            .map_err(|e| format!("console of vm4: {e}"))?;
        drop(handle);
        drop(vm);
        ledger.manager.unload(&key);
        ledger.expect("vm4's exit", &[], 0)?;
        Ok(Some(Row {
            name: format!("{key} (plugin source, {reloads} reloads mid-restore)"),
            restore: Some(restore),
            trued_up: bytes,
            console: console.len(),
            whole,
        }))
    }

    /// One line of the scenario's table.
    struct Row {
        name: String,
        restore: Option<Duration>,
        /// The VM's reservation after its true-up.
        trued_up: u64,
        /// Console bytes.
        console: usize,
        /// Whole verified passes on the console.
        whole: usize,
    }

    /// The negative control of [`console_is_exact`]: a console as a guest writes it passes,
    /// and the same console with one byte lost or repeated anywhere in a pass does not.
    pub(super) fn console_check_is_sharp() -> Result<(), String> {
        let marks = 4;
        let mut good = b"..... OK\r\n".to_vec(); // the end of the pass the snapshot was in
        for k in 7u64..10 {
            good.extend_from_slice(format!("P{k:016x} {} OK\r\n", ".".repeat(marks)).as_bytes());
        }
        good.extend_from_slice(format!("P{:016x} ..", 10).as_bytes());
        if console_is_exact(&good, marks) != Ok(3) {
            return Err(format!(
                "a good console fails: {:?}",
                console_is_exact(&good, marks)
            ));
        }
        let first_pass = good.iter().position(|&b| b == b'P').unwrap_or(0);
        for at in first_pass..good.len() {
            let mut lost = good.clone();
            lost.remove(at);
            let mut repeated = good.clone();
            repeated.insert(at, good[at]);
            for (what, console) in [("lost", &lost), ("repeated", &repeated)] {
                // A byte of the pass in progress at the end cannot be judged yet.
                let judged = at < good.len() - 2;
                if judged && console_is_exact(console, marks).is_ok_and(|n| n == 3) {
                    return Err(format!(
                        "a {what} byte at {at} passes: {:?}",
                        String::from_utf8_lossy(console)
                    ));
                }
            }
        }
        visitor_check_is_sharp(&good)
    }

    /// The negative control of [`ConsoleRecord::holds`], the comparison of a visitor's bytes
    /// with the console's: a visitor's stretch of `console` as read passes; one byte changed,
    /// lost or repeated anywhere, a stretch placed one byte off, in another epoch or running
    /// past the console's end does not. (A byte lost or repeated in a run of equal bytes that
    /// ends the stretch leaves the compared bytes equal: the visitor's saved position, checked
    /// at every detach, catches that.)
    fn visitor_check_is_sharp(console: &[u8]) -> Result<(), String> {
        let whole = ConsoleRecord {
            epoch: 1,
            start: 100,
            bytes: console.to_vec(),
        };
        let read = ConsoleRecord {
            epoch: 1,
            start: 103,
            bytes: console[3..console.len() - 2].to_vec(),
        };
        if whole.holds(&read) != Ok(read.bytes.len()) {
            return Err(format!(
                "a visitor's exact bytes fail: {:?}",
                whole.holds(&read)
            ));
        }
        let bad = |what: String, part: ConsoleRecord| -> Result<(), String> {
            match whole.holds(&part) {
                Ok(_) => Err(format!("a visitor's bytes with {what} pass")),
                Err(_) => Ok(()),
            }
        };
        for at in 0..read.bytes.len() {
            let mut changed = read.clone();
            changed.bytes[at] ^= 0x20;
            bad(format!("byte {at} changed"), changed)?;
            if read.bytes[at..].iter().all(|&b| b == read.bytes[at]) {
                continue;
            }
            let mut lost = read.clone();
            lost.bytes.remove(at);
            bad(format!("byte {at} lost"), lost)?;
            let mut repeated = read.clone();
            repeated.bytes.insert(at, read.bytes[at]);
            bad(format!("byte {at} repeated"), repeated)?;
        }
        bad(
            "a start one byte late".into(),
            ConsoleRecord {
                start: read.start + 1,
                ..read.clone()
            },
        )?;
        bad(
            "another epoch".into(),
            ConsoleRecord {
                epoch: 2,
                ..read.clone()
            },
        )?;
        bad(
            "bytes past the console's end".into(),
            ConsoleRecord {
                start: whole.start + 3,
                bytes: console[3..].iter().chain(b"P").copied().collect(),
                ..read
            },
        )
    }

    /// The scenario with real Firecracker guests where the kit and KVM are here (else the
    /// stand-in, saying why).
    pub(super) fn scenario() -> Result<(), String> {
        run(false)
    }

    /// The scenario with the stand-in VMM, whatever the machine offers: the path a machine
    /// without KVM takes, kept tested on machines with it.
    pub(super) fn scenario_on_the_stand_in() -> Result<(), String> {
        run(true)
    }

    fn run(stand_in: bool) -> Result<(), String> {
        if let Err(e) = squib_host::Uffd::open() {
            return skip_or_fail(NAME, &format!("no userfaultfd: {e}"));
        }
        let kit = if stand_in || std::env::var_os("MICROVM_HOST_FIXTURE").is_some() {
            println!("the guests are the stand-in VMM (real userfaultfd faults, no KVM)");
            None
        } else {
            match Kit::locate() {
                Ok(kit) => Some(kit),
                // A kit that is configured must work: falling back would pass without it.
                Err(KitUnavailable::Broken(why)) if required_by().is_some() => {
                    return Err(format!(
                        "{} is set but the Firecracker kit cannot be used: {why}",
                        workspace_tests::firecracker::ENV
                    ));
                }
                Err(why) => {
                    println!(
                        "no real microVMs here ({why}): the guests are the stand-in VMM, on \
                         real userfaultfd faults"
                    );
                    None
                }
            }
        };
        let programs = match Programs::find() {
            Ok(p) => p,
            Err(why) => return skip_or_fail(NAME, &why),
        };
        let started = Instant::now();
        let dir = TempDir::new("microvm-host");
        let runtime = dir.join("run");
        std::fs::create_dir_all(&runtime).map_err(|e| e.to_string())?;

        // Supervision: varta-watch first, then the pager service reporting to it.
        let varta = Varta::start(&programs.varta, &dir)?;
        // The keeper restarts a dead pager only when told (SIGUSR1): varta-watch's exit hook
        // tells it.
        let svc = Service::start_with(
            &programs.squib,
            &dir,
            "pager",
            &[("NOTIFY_SOCKET", &varta.socket)],
            &["--restart", "on-signal"],
        )?;
        std::fs::write(dir.join("keeper.pid"), svc.keeper_pid().to_string())
            .map_err(|e| e.to_string())?;
        let pager = svc.wait_up(Duration::from_secs(10))?;
        varta.wait_event("ready", pager, Duration::from_secs(10))?;
        println!("varta-watch sees the pager (pid {pager}) ready");

        let snap = match &kit {
            Some(kit) => take_snapshot(kit, &dir, "tmpl", MEM_MIB as u32, false)?,
            None => fixture_snapshot(&dir)?,
        };
        svc.ok(
            "PUT",
            "/templates/base",
            &format!(r#"{{"mem_file":"{}"}}"#, snap.mem.display()),
        )?;
        let env = Env {
            kit: kit.as_ref(),
            varta: &varta,
            supervisor: &varta.socket,
            dir: &dir,
            runtime: &runtime,
            programs: &programs,
            svc: &svc,
            snap: &snap,
        };

        // Memory: room for three VMs; every VM pinned (a running guest cannot be evicted).
        let ledger = Ledger {
            manager: AdmissionManager::new(AdmissionConfig::new(ROOM * MEM)),
            samples: Mutex::new(Vec::new()),
        };
        for i in 0..VMS {
            ledger.manager.register_pinned(format!("vm{i}"));
        }
        // The trued-up size of every VM running, as published.
        let mut published: Vec<(String, u64)> = Vec::new();
        let mut guests = Vec::new();
        let mut handles = Vec::new();
        let mut reservations = Vec::new();
        // The first three restores read the snapshot from storage once between them (the
        // kernel's page cache is shared by their sessions); measured on this pager process.
        snap.drop_from_page_cache()?;
        let storage_before = svc.storage_read_bytes()?;
        for i in 0..ROOM as usize {
            let (guest, reservation) = restore(&env, &ledger, i)?;
            guests.push(guest);
            reservations.push(reservation);
            ledger.expect(&format!("vm{i}'s restore began"), &published, i as u64 + 1)?;
        }
        // Consoles: a second client attaches to the session of the guest whose restore began
        // last, mid-restore (it has read bytes while the console that never detached shows no
        // verified pass yet), reads some of the restore (the guest prints a dot per 2 MiB it
        // verifies), detaches, and re-attaches after a while; at the end its bytes are
        // compared with that console's.
        let visited = ROOM as usize - 1;
        let mut visitor = guests[visited].vm.visit_console(&dir)?;
        visitor.wait_bytes(0, GUEST_LIMIT)?;
        if verified_passes(&guests[visited].vm.console()) > 0 {
            return Err(format!(
                "vm{visited} verified before a client could attach mid-restore"
            ));
        }
        visitor.wait_bytes(visitor.len(), GUEST_LIMIT)?;
        let detached = visitor.detach()?;
        if detached.bytes.is_empty() {
            return Err(format!(
                "vm{visited}'s visitor read nothing before it detached"
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
        visitor.attach()?;
        println!(
            "a client attached to vm{visited}'s console mid-restore at byte {}, read {} bytes, \
             detached and came back",
            detached.start,
            detached.bytes.len()
        );
        // One mark per 2 MiB checked, from 16 MiB to the end of guest memory.
        let marks = ((MEM_MIB - 16) / 2) as usize;
        let mut rows = Vec::new();
        let mut row = |guest: &Guest, trued_up: u64| -> Result<(), String> {
            let console = guest.vm.console_bytes();
            let whole = console_is_exact(&console, marks)
                .map_err(|e| format!("console of {}: {e}", guest.name))?;
            rows.push(Row {
                name: guest.name.clone(),
                restore: guest.restore,
                trued_up,
                console: console.len(),
                whole,
            });
            Ok(())
        };

        let mut storage_read = 0;
        // The fourth restore waits for room.
        let (fourth, exit_began) = std::thread::scope(|scope| -> Result<_, String> {
            let waiter = scope.spawn(|| restore(&env, &ledger, 3));
            let queued_by = Instant::now() + Duration::from_secs(10);
            while ledger.manager.ledger().snapshot().queue_depth == 0 {
                if Instant::now() > queued_by {
                    return Err("the fourth restore never queued".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            for (i, (guest, reservation)) in
                guests.iter_mut().zip(reservations.drain(..)).enumerate()
            {
                guest.restore = Some(guest.vm.wait_verified(guest.loaded_at, GUEST_LIMIT)?);
                let bytes = touched(
                    &guest.name,
                    served(&svc, &guest.name)?.bytes,
                    "what the pager installed",
                )?;
                handles.push(
                    ledger
                        .manager
                        .publish(reservation, GuestMemory(bytes))
                        .map_err(|e| format!("true-up of vm{i}: {e}"))?,
                );
                published.push((guest.name.clone(), bytes));
                ledger.expect(
                    &format!("{}'s true-up", guest.name),
                    &published,
                    ROOM - published.len() as u64,
                )?;
            }
            let read = svc.storage_read_bytes()? - storage_before;
            if read as f64 > 1.1 * MEM as f64 {
                return Err(format!("{read} bytes read from storage for three restores"));
            }
            storage_read = read;
            let snapshot = ledger.sample("three guests verified")?;
            if snapshot.queue_depth != 1 {
                return Err(format!(
                    "three guests run and the fourth should still wait: {snapshot:?}"
                ));
            }
            // The wait is for want of room, not a stuck queue.
            if snapshot.headroom() >= MEM {
                return Err(format!(
                    "the fourth restore waits though the ledger has room for it: {snapshot:?}"
                ));
            }
            println!(
                "three guests verified and trued up to {:?} bytes; the fourth restore waits in \
                 the admission queue ({} of {} bytes in use)",
                published.iter().map(|(_, b)| b).collect::<Vec<_>>(),
                snapshot.total(),
                snapshot.limit
            );
            // The first VM exits: its session ends, its memory is given back, the fourth goes.
            let exit_began = Instant::now();
            let first = guests.remove(0);
            row(&first, published[0].1)?;
            drop(first);
            drop(handles.remove(0));
            ledger.manager.unload(&"vm0".to_owned());
            published.remove(0);
            let fourth = waiter.join().map_err(|_| "the fourth restore panicked")??;
            Ok((fourth, exit_began))
        })?;
        let (guest, reservation) = fourth;
        if guest.admitted_at < exit_began {
            return Err("the fourth restore was admitted before the first VM exited".into());
        }
        ledger.expect("vm0's exit and vm3's admission", &published, 1)?;
        guests.push(guest);

        // Supervision while the fourth guest restores: a stopped pager is a stall, a killed
        // one an exit whose hook runs; the keeper starts a new pager that adopts every session.
        signal(pager, libc::SIGSTOP)?;
        let stalled = varta.wait_event("stalled", pager, THRESHOLD + Duration::from_secs(5));
        signal(pager, libc::SIGCONT)?;
        stalled?;
        println!("a stopped pager was reported stalled");
        // What the old pager installed for the restoring guest, read just before it dies.
        let before_kill = served(&svc, "vm3")?;
        let killed_at = Instant::now();
        signal(pager, libc::SIGKILL)?;
        varta.wait_event("exited", pager, Duration::from_secs(10))?;
        let hooks_ran = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let log = std::fs::read_to_string(&varta.hook_log).unwrap_or_default();
                if log.contains(&format!("{pager} exited")) {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        if !hooks_ran {
            return Err("the exit hook did not run for the killed pager".into());
        }
        let new_pager = svc.wait_up(Duration::from_secs(20))?;
        if new_pager == pager {
            return Err("the pager was not replaced".into());
        }
        varta.wait_event("ready", new_pager, Duration::from_secs(10))?;
        // The new pager serves every live session, each for its own VMM.
        let sessions = svc.ok("GET", "/sessions", "")?;
        for guest in &guests {
            let adopted = sessions
                .as_array()
                .and_then(|a| a.iter().find(|s| s["id"] == guest.name.as_str()))
                .ok_or(format!(
                    "the new pager does not list {}: {sessions}",
                    guest.name
                ))?;
            if adopted["state"] != "serving"
                || adopted["pid"].as_u64() != Some(u64::from(guest.vm.pid()))
            {
                return Err(format!(
                    "the new pager does not serve {} (VMM pid {}): {adopted}",
                    guest.name,
                    guest.vm.pid()
                ));
            }
        }
        println!(
            "a killed pager was reported, its exit hook told the keeper to start a new one, \
             pid {new_pager} took over and serves {}",
            guests
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );

        let last = guests.len() - 1;
        guests[last].restore = Some(
            guests[last]
                .vm
                .wait_verified(guests[last].loaded_at, GUEST_LIMIT)?,
        );
        // The new pager's counters started at zero: faults it reports, it served.
        let after_kill = served(&svc, "vm3")?;
        if after_kill.faults == 0 {
            return Err(format!(
                "vm3 restored across the pager's restart but faulted nothing through the new \
                 pager (the old one had served {before_kill:?})"
            ));
        }
        // Its true-up adds what the two pagers installed. What the old one installed in the
        // instant between its last answer and its death is in neither figure, so this one is
        // checked against the guest's memory size only, not against the pages it verified.
        let bytes = before_kill.bytes + after_kill.bytes;
        if bytes > MEM {
            return Err(format!(
                "vm3: the two pagers installed {bytes} bytes of a {MEM}-byte guest memory"
            ));
        }
        handles.push(
            ledger
                .manager
                .publish(reservation, GuestMemory(bytes))
                .map_err(|e| format!("true-up of vm3: {e}"))?,
        );
        published.push(("vm3".to_owned(), bytes));
        ledger.expect("vm3's true-up", &published, 0)?;
        println!(
            "vm3 faulted {} times through the old pager and {} through the new one \
             ({} + {} bytes)",
            before_kill.faults, after_kill.faults, before_kill.bytes, after_kill.bytes
        );
        // Every guest verifies again after the pager was killed.
        for guest in &guests {
            let before = verified_passes(&guest.vm.console());
            guest
                .vm
                .wait_console(GUEST_LIMIT, |c| verified_passes(c) > before)?;
        }
        let after_kill = killed_at.elapsed();
        let mut vms = guests;
        if vms.iter_mut().any(|g| !g.vm.is_alive()) {
            return Err("a VMM died".into());
        }

        // Every console is well formed; the visitor's bytes are the console's bytes.
        for (guest, (_, trued_up)) in vms.iter().zip(&published) {
            row(guest, *trued_up)?;
        }
        let visit = visitor.detach()?;
        // vm0 left the list when it exited. The console that never detached reads from the
        // session's start: it is compared once it has read as far as the visitor.
        let reader = &mut vms[visited - 1].vm;
        reader.wait_console(GUEST_LIMIT, |text| {
            let bytes = text.as_bytes();
            (bytes.len() - redraw_end(bytes)) as u64 >= visit.end()
        })?;
        let console = reader.stop_console()?;
        let compared = console
            .holds(&visit)
            .map_err(|e| format!("vm{visited}'s visitor against its console: {e}"))?;
        println!(
            "vm{visited}'s visitor read bytes {}..{} of its console across a detach: all \
             {compared} are the console's",
            visit.start,
            visit.end()
        );
        // The VMs exit and give their memory back; one more restores through the plugin.
        drop(handles);
        drop(vms);
        for i in 1..VMS {
            ledger.manager.unload(&format!("vm{i}"));
        }
        published.clear();
        ledger.expect("every VM's exit", &published, 0)?;
        let plugin = plugin_restore(&env, &ledger)?;
        let plugin_ran = plugin.is_some();
        rows.extend(plugin);
        let snapshot = ledger.sample("the end")?;
        let (observed, samples) = ledger.observed_max();
        if snapshot.high_water > snapshot.limit || observed > snapshot.limit {
            return Err(format!("the ledger went over its budget: {snapshot:?}"));
        }
        let read = storage_read;

        println!();
        println!(
            "| VM | restore (load → first verified pass) | trued-up bytes | console bytes | \
             verified passes |"
        );
        println!("|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                r.name,
                r.restore
                    .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
                r.trued_up,
                r.console,
                r.whole
            );
        }
        println!();
        println!(
            "snapshot bytes read from storage: {read} ({:.2}× one snapshot for the first three \
             restores); supervisor events: {}; ledger: at most {observed} of {} bytes in {samples} \
             samples (high-water {}); every guest verified again {:.1} s after the pager was \
             killed",
            read as f64 / MEM as f64,
            varta.event_count(),
            snapshot.limit,
            snapshot.high_water,
            after_kill.as_secs_f64()
        );
        println!(
            "verdict: ok — {} {} restored lazily through one pager, consoles exact, \
             pager stall and crash reported and survived, memory admitted within budget{} \
             ({:.0} s)",
            VMS + usize::from(plugin_ran),
            if kit.is_some() {
                "Firecracker microVMs"
            } else {
                "stand-in VMs"
            },
            if plugin_ran {
                ", a plugin's page source hot-reloaded mid-restore"
            } else {
                ""
            },
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
