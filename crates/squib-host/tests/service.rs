//! The `squib-host serve` pager service, run as a person would run it, with the real
//! Firecracker: several microVMs restored at once from one template (each page read from the
//! snapshot once), the pager process killed mid-restore and restarted by its keeper, a
//! graceful upgrade, and a control API that refuses bad requests without harm.
//!
//! The Firecracker kit comes through `FIRECRACKER_BIN` (set by `cargo xtask`); without it,
//! `/dev/kvm` or userfaultfd the VM checks print why they skip. The API checks need none of
//! them.

use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    {
        let code = workspace_tests::harness::run(linux::CHECKS);
        fc::remove_work_dir();
        code
    }
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("skip: service: the pager service is Linux-only");
        workspace_tests::harness::report(&[])
    }
}

#[cfg(target_os = "linux")]
#[path = "support/fc.rs"]
mod fc;

#[cfg(target_os = "linux")]
mod linux {
    use std::path::Path;
    use std::process::Command;
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use serde_json::Value;
    use workspace_tests::firecracker::{Kit, Snapshot, Vm, http, take_snapshot, verified_passes};

    use workspace_tests::harness::Check;
    use workspace_tests::pager_service::Service;

    use crate::fc::{kit_or_skip, work_dir};

    pub(super) const CHECKS: &[Check] = &[
        (
            "the_service_tells_its_supervisor_it_is_ready_over_sd_notify",
            notifies,
        ),
        ("the_systemd_unit_verifies", unit_verifies),
        (
            "the_control_api_refuses_bad_requests_and_stays_up",
            bad_requests,
        ),
        (
            "four_vms_restore_at_once_from_one_template_reading_each_page_once",
            four_at_once,
        ),
        (
            "a_pager_killed_mid_restore_is_restarted_and_every_guest_verifies",
            killed_mid_restore,
        ),
        (
            "a_graceful_upgrade_hands_live_sessions_to_a_new_pager",
            upgrade_mid_restore,
        ),
        (
            "a_session_waiting_for_its_vmm_survives_a_pager_restart",
            waiting_survives,
        ),
        ("a_page_server_template_restores_a_vm", page_server_template),
    ];

    const MEM_MIB: u64 = 256;

    fn snapshot(kit: &Kit) -> Result<Snapshot, String> {
        static SNAP: OnceLock<Result<Snapshot, String>> = OnceLock::new();
        SNAP.get_or_init(|| take_snapshot(kit, work_dir(), "tmpl", MEM_MIB as u32, false))
            .clone()
    }

    fn bad_requests() -> Result<(), String> {
        let svc = Service::start(env!("CARGO_BIN_EXE_squib-host"), work_dir(), "api")?;
        let dir = work_dir().join("api");
        let mem = dir.join("mem");
        std::fs::write(&mem, vec![0u8; 1 << 20]).map_err(|e| e.to_string())?;
        let template = format!(r#"{{"mem_file":"{}"}}"#, mem.display());
        svc.ok("PUT", "/templates/base", &template)?;
        let foreign = dir.join("foreign");
        std::fs::create_dir_all(&foreign).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).map_err(|e| e.to_string())?;
        let session =
            |socket: &Path| format!(r#"{{"template":"base","socket":"{}"}}"#, socket.display());
        svc.ok("PUT", "/sessions/one", &session(&dir.join("one.sock")))?;
        let cases: Vec<(&str, &str, String, u16, Option<&str>)> = vec![
            ("PUT", "/templates/x", "{not json".into(), 400, None),
            ("PUT", "/templates/x", "[]".into(), 400, None),
            (
                "PUT",
                "/templates/x",
                r#"{"mem_file":"/nonexistent/mem"}"#.into(),
                400,
                Some("mem_file"),
            ),
            (
                "PUT",
                "/templates/x",
                r#"{"mem_file":"/tmp","extra":1}"#.into(),
                400,
                Some("extra"),
            ),
            (
                "PUT",
                "/templates/x",
                r#"{"page_server":"unix:/nope"}"#.into(),
                400,
                Some("len"),
            ),
            (
                "PUT",
                "/templates/bad%20name",
                template.clone(),
                400,
                Some("name"),
            ),
            (
                "PUT",
                "/templates/base",
                template.clone(),
                409,
                Some("name"),
            ),
            (
                "PUT",
                "/sessions/two",
                r#"{"template":"nope","socket":"/tmp/x.sock"}"#.into(),
                404,
                Some("template"),
            ),
            (
                "PUT",
                "/sessions/two",
                r#"{"template":"base","socket":"relative.sock"}"#.into(),
                400,
                Some("socket"),
            ),
            (
                "PUT",
                "/sessions/two",
                r#"{"template":"base","socket":"/tmp/x.sock","prewarm":"yes"}"#.into(),
                400,
                Some("prewarm"),
            ),
            (
                "PUT",
                "/sessions/two",
                session(&dir.join("one.sock")),
                409,
                Some("socket"),
            ),
            (
                "PUT",
                "/sessions/one",
                session(&dir.join("other.sock")),
                409,
                Some("id"),
            ),
            (
                "PUT",
                "/sessions/two",
                session(&foreign.join("s.sock")),
                403,
                Some("socket"),
            ),
            ("DELETE", "/sessions/nope", String::new(), 404, Some("id")),
            (
                "DELETE",
                "/templates/base",
                String::new(),
                409,
                Some("name"),
            ),
            ("GET", "/nowhere", String::new(), 404, None),
            ("POST", "/templates", String::new(), 405, None),
        ];
        for (method, path, body, code, field) in cases {
            let (got, text) = svc.call(method, path, &body)?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if got != code
                || v["error"].as_str().is_none()
                || field.is_some_and(|f| v["field"] != f)
            {
                return Err(format!(
                    "{method} {path} {body:?}: expected {code} naming {field:?}, got {got} {text}"
                ));
            }
        }
        // A client that sends half a request and stalls, and a garbage request, harm nothing.
        let mut stalled =
            std::os::unix::net::UnixStream::connect(&svc.api).map_err(|e| e.to_string())?;
        std::io::Write::write_all(
            &mut stalled,
            b"PUT /templates/y HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
        )
        .map_err(|e| e.to_string())?;
        let (code, _) = http(&svc.api, "GARBAGE\r\n\r\n", "", "", Duration::from_secs(5))
            .unwrap_or((400, String::new()));
        if !(400..500).contains(&code) {
            return Err(format!("a garbage request got {code}"));
        }
        let sessions = svc.ok("GET", "/sessions", "")?;
        if sessions.as_array().map(Vec::len) != Some(1) {
            return Err(format!("sessions after the bad requests: {sessions}"));
        }
        svc.ok("DELETE", "/sessions/one", "")?;
        let metrics = svc.call("GET", "/metrics", "")?;
        if metrics.0 != 200
            || !metrics
                .1
                .contains("squib_template_source_reads_total{template=\"base\"}")
        {
            return Err(format!("metrics: {metrics:?}"));
        }
        drop(stalled);
        Ok(())
    }

    /// With `NOTIFY_SOCKET` set, the service sends `READY=1` and a `STATUS=` once its API
    /// answers.
    fn notifies() -> Result<(), String> {
        let dir = work_dir().join("notify");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let svc = Service::start_with_env(
            env!("CARGO_BIN_EXE_squib-host"),
            work_dir(),
            "notify",
            &[("NOTIFY_SOCKET", &path)],
        )?;
        let mut buf = [0u8; 4096];
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("no sd_notify message: {e}"))?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if !text.lines().any(|l| l == "READY=1") || !text.contains("STATUS=") {
            return Err(format!("first message {text:?}"));
        }
        svc.ok("GET", "/", "")?;
        Ok(())
    }

    /// `systemd-analyze verify` accepts the shipped unit (with `ExecStart` pointing at the
    /// binary just built).
    fn unit_verifies() -> Result<(), String> {
        let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
            eprintln!("skip: the_systemd_unit_verifies: systemd-analyze is not installed");
            return Ok(());
        };
        if !out.status.success() {
            eprintln!("skip: the_systemd_unit_verifies: systemd-analyze does not run here");
            return Ok(());
        }
        let unit = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/systemd/squib-host.service"
        ))
        .map_err(|e| e.to_string())?;
        let unit = unit.replace(
            "/usr/local/bin/squib-host",
            env!("CARGO_BIN_EXE_squib-host"),
        );
        let dir = work_dir().join("unit");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("squib-host.service");
        std::fs::write(&path, unit).map_err(|e| e.to_string())?;
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        // Complaints about this machine (systemd not running as PID 1, other units) are not
        // about the file; any line naming it is.
        let about_unit: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("squib-host.service"))
            .collect();
        if !about_unit.is_empty() {
            return Err(format!("systemd-analyze verify: {text}"));
        }
        Ok(())
    }

    /// Starts `n` VMMs restoring `snap` through sessions of template `base`; returns them with
    /// the instant their loads were sent.
    fn restore_many(
        svc: &Service,
        kit: &Kit,
        (dir, prefix): (&Path, &str),
        snap: &Snapshot,
        n: usize,
        options: &str,
    ) -> Result<(Vec<Arc<Vm>>, Instant), String> {
        let mut vms = Vec::new();
        for i in 0..n {
            let sock = dir.join(format!("{prefix}{i}.sock"));
            svc.ok(
                "PUT",
                &format!("/sessions/{prefix}{i}"),
                &format!(
                    r#"{{"template":"base","socket":"{}"{options}}}"#,
                    sock.display()
                ),
            )?;
            vms.push((
                Arc::new(Vm::spawn(kit, dir, &format!("{prefix}{i}"))?),
                sock,
            ));
        }
        let t0 = Instant::now();
        let loads: Vec<_> = vms
            .iter()
            .map(|(vm, sock)| {
                let (vm, snap, sock) = (vm.clone(), snap.clone(), sock.clone());
                std::thread::spawn(move || vm.load_uffd(&snap, &sock, Duration::from_secs(60)))
            })
            .collect();
        for load in loads {
            match load.join().map_err(|_| "loader panicked")?? {
                (200..=299, _) => {}
                other => return Err(format!("snapshot load answered {other:?}")),
            }
        }
        Ok((vms.into_iter().map(|(vm, _)| vm).collect(), t0))
    }

    fn four_at_once() -> Result<(), String> {
        let Some(kit) = kit_or_skip("four_at_once") else {
            return Ok(());
        };
        let snap = snapshot(&kit)?;
        let svc = Service::start(env!("CARGO_BIN_EXE_squib-host"), work_dir(), "four")?;
        let dir = work_dir().join("four");
        svc.ok(
            "PUT",
            "/templates/base",
            &format!(r#"{{"mem_file":"{}"}}"#, snap.mem.display()),
        )?;
        let (vms, t0) = restore_many(&svc, &kit, (&dir, "vm"), &snap, 4, "")?;
        for vm in &vms {
            vm.wait_verified(t0, Duration::from_secs(120))?;
        }
        let took = t0.elapsed();
        let templates = svc.ok("GET", "/templates", "")?;
        let read = templates[0]["source_bytes"].as_u64().unwrap_or(u64::MAX);
        let one = MEM_MIB << 20;
        println!(
            "four VMs verified {took:?} after their loads; {read} bytes read from the snapshot \
             ({:.2}x one snapshot)",
            read as f64 / one as f64
        );
        if read as f64 > 1.1 * one as f64 {
            return Err(format!("{read} bytes read for 4 restores of {one}"));
        }
        let sessions = svc.ok("GET", "/sessions", "")?;
        let serving = sessions
            .as_array()
            .map_or(0, |a| a.iter().filter(|s| s["state"] == "serving").count());
        if serving != 4 {
            return Err(format!("sessions: {sessions}"));
        }
        // The first session to end leaves its first-touch order with the template; the next
        // restore replays it as prewarm.
        drop(vms);
        let start = Instant::now();
        loop {
            let t = svc.ok("GET", "/templates", "")?;
            if t[0]["working_set_pages"].as_u64().unwrap_or(0) > 0 {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("no working set recorded: {t}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (again, t1) = restore_many(&svc, &kit, (&dir, "again"), &snap, 1, "")?;
        again[0].wait_verified(t1, Duration::from_secs(120))?;
        let sessions = svc.ok("GET", "/sessions", "")?;
        let prewarmed = sessions
            .as_array()
            .and_then(|a| a.iter().find(|s| s["state"] == "serving"))
            .and_then(|s| s["prewarmed"].as_u64())
            .unwrap_or(0);
        if prewarmed == 0 {
            return Err(format!(
                "the next restore replayed no working set: {sessions}"
            ));
        }
        Ok(())
    }

    /// Restores two VMs with demand paging only (slow on this machine's KVM), interrupts the
    /// pager with `interrupt` while the guests are still on their first pass, and checks that
    /// every guest still verifies and no VMM was killed.
    fn interrupted(
        name: &str,
        interrupt: &dyn Fn(&Service, u32) -> Result<(), String>,
    ) -> Result<(), String> {
        let Some(kit) = kit_or_skip(name) else {
            return Ok(());
        };
        let snap = snapshot(&kit)?;
        let svc = Service::start(env!("CARGO_BIN_EXE_squib-host"), work_dir(), name)?;
        let dir = work_dir().join(name);
        svc.ok(
            "PUT",
            "/templates/base",
            &format!(r#"{{"mem_file":"{}"}}"#, snap.mem.display()),
        )?;
        let pager = svc.wait_up(Duration::from_secs(5))?;
        let (vms, t0) = restore_many(
            &svc,
            &kit,
            (&dir, "vm"),
            &snap,
            2,
            r#","background":false,"prewarm":false"#,
        )?;
        std::thread::sleep(Duration::from_millis(100));
        let before: Vec<usize> = vms
            .iter()
            .map(|vm| verified_passes(&vm.console()))
            .collect();
        if before.iter().any(|&n| n > 0) {
            return Err(format!(
                "the guests verified before the interruption: {before:?}"
            ));
        }
        interrupt(&svc, pager)?;
        let new_pager = svc.wait_up(Duration::from_secs(20))?;
        if new_pager == pager {
            return Err("the pager process was not replaced".into());
        }
        for vm in &vms {
            vm.wait_verified(t0, Duration::from_secs(120))?;
        }
        println!(
            "{name}: verified passes at the interruption {before:?}; every guest verified {:?} \
             after its load",
            t0.elapsed()
        );
        let mut vms: Vec<Vm> = vms
            .into_iter()
            .map(|vm| Arc::try_unwrap(vm).map_err(|_| "a VM is still shared".to_string()))
            .collect::<Result<_, _>>()?;
        if vms.iter_mut().any(|vm| !vm.is_alive()) {
            return Err("a VMM died".into());
        }
        let sessions = svc.ok("GET", "/sessions", "")?;
        let serving = sessions
            .as_array()
            .map_or(0, |a| a.iter().filter(|s| s["state"] == "serving").count());
        if serving != 2 {
            return Err(format!("sessions after the restart: {sessions}"));
        }
        Ok(())
    }

    fn killed_mid_restore() -> Result<(), String> {
        interrupted("killed", &|_, pid| {
            let status = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .map_err(|e| e.to_string())?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("kill -KILL {pid} failed"))
            }
        })
    }

    fn upgrade_mid_restore() -> Result<(), String> {
        interrupted(
            "upgrade",
            &|svc, _| match svc.call("POST", "/upgrade", "")? {
                (202, _) => Ok(()),
                other => Err(format!("upgrade answered {other:?}")),
            },
        )
    }

    /// A session created before a pager restart, whose VMM connects only after it, is served
    /// by the new pager (the keeper held its listening socket).
    fn waiting_survives() -> Result<(), String> {
        let Some(kit) = kit_or_skip("waiting_survives") else {
            return Ok(());
        };
        let snap = snapshot(&kit)?;
        let svc = Service::start(env!("CARGO_BIN_EXE_squib-host"), work_dir(), "waiting")?;
        let dir = work_dir().join("waiting");
        svc.ok(
            "PUT",
            "/templates/base",
            &format!(r#"{{"mem_file":"{}"}}"#, snap.mem.display()),
        )?;
        let sock = dir.join("w0.sock");
        svc.ok(
            "PUT",
            "/sessions/w0",
            &format!(r#"{{"template":"base","socket":"{}"}}"#, sock.display()),
        )?;
        let pager = svc.wait_up(Duration::from_secs(5))?;
        Command::new("kill")
            .args(["-KILL", &pager.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        // Give the keeper a moment to notice, so the API answers from the new pager.
        let start = Instant::now();
        while svc.wait_up(Duration::from_secs(20))? == pager {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("the pager was not replaced".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let sessions = svc.ok("GET", "/sessions", "")?;
        if sessions[0]["state"] != "waiting" {
            return Err(format!("after the restart: {sessions}"));
        }
        let vm = Vm::spawn(&kit, &dir, "w0")?;
        let t0 = Instant::now();
        match vm.load_uffd(&snap, &sock, Duration::from_secs(60))? {
            (200..=299, _) => {}
            other => return Err(format!("snapshot load answered {other:?}")),
        }
        vm.wait_verified(t0, Duration::from_secs(120))?;
        Ok(())
    }

    /// A template whose pages come from a page server (here one in this test process, over a
    /// Unix socket) restores a real VM.
    fn page_server_template() -> Result<(), String> {
        use squib_host::{FilePageSource, PageSource, serve_pages};
        let Some(kit) = kit_or_skip("page_server_template") else {
            return Ok(());
        };
        let snap = snapshot(&kit)?;
        let dir = work_dir().join("paged");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let pages = dir.join("pages.sock");
        let listener = std::os::unix::net::UnixListener::bind(&pages).map_err(|e| e.to_string())?;
        let source: Arc<dyn PageSource> =
            Arc::new(FilePageSource::open(&snap.mem).map_err(|e| e.to_string())?);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let source = source.clone();
                std::thread::spawn(move || serve_pages(conn, &*source));
            }
        });
        let svc = Service::start(env!("CARGO_BIN_EXE_squib-host"), work_dir(), "paged")?;
        svc.ok(
            "PUT",
            "/templates/base",
            &format!(
                r#"{{"page_server":"unix:{}","len":{}}}"#,
                pages.display(),
                MEM_MIB << 20
            ),
        )?;
        let (vms, t0) = restore_many(&svc, &kit, (&dir, "p"), &snap, 1, "")?;
        vms[0].wait_verified(t0, Duration::from_secs(120))?;
        let templates = svc.ok("GET", "/templates", "")?;
        if templates[0]["source_bytes"].as_u64().unwrap_or(0) == 0 {
            return Err(format!("nothing read from the page server: {templates}"));
        }
        Ok(())
    }
}
