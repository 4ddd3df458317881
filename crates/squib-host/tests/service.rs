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
        workspace_tests::support::skip("service", "the pager service is Linux-only");
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
    use workspace_tests::support::{have, skip};

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
            "four_vms_through_the_block_cache_read_each_page_once",
            four_through_block_cache,
        ),
        (
            "a_drained_session_installs_every_page_and_reads_the_source_no_more",
            drained,
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
        (
            "a_crashed_keeper_loses_no_vm_through_the_systemd_fd_store",
            fd_store_restart,
        ),
    ];

    const MEM_MIB: u64 = 256;

    /// Session options for a restore by demand paging only (slow on this machine's KVM, so the
    /// restore is still under way when a test acts on it).
    const DEMAND_ONLY: &str = r#","background":false,"prewarm":false"#;

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
                "POST",
                "/sessions/nope/drain",
                String::new(),
                404,
                Some("id"),
            ),
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
        let test = "the_systemd_unit_verifies";
        if !have(test, &["systemd-analyze"]) {
            return Ok(());
        }
        let runs = Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !runs {
            skip(test, "systemd-analyze does not run here");
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

    /// The common start of a test: the kit (or `None` after the skip line), the shared
    /// snapshot, a service under `work_dir()/name`, and its template `base` on the snapshot's
    /// memory file with `extra` fields (`,"cache":true`, say).
    fn service_with_template(
        test: &str,
        name: &str,
        extra: &str,
    ) -> Result<Option<(Kit, Snapshot, Service, std::path::PathBuf)>, String> {
        let Some(kit) = kit_or_skip(test) else {
            return Ok(None);
        };
        let snap = snapshot(&kit)?;
        let svc = Service::start(env!("CARGO_BIN_EXE_squib-host"), work_dir(), name)?;
        svc.ok(
            "PUT",
            "/templates/base",
            &format!(r#"{{"mem_file":"{}"{extra}}}"#, snap.mem.display()),
        )?;
        Ok(Some((kit, snap, svc, work_dir().join(name))))
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
        let Some((kit, snap, svc, dir)) = service_with_template("four_at_once", "four", "")? else {
            return Ok(());
        };
        snap.drop_from_page_cache()?;
        let before = svc.storage_read_bytes()?;
        let (vms, t0) = restore_many(&svc, &kit, (&dir, "vm"), &snap, 4, "")?;
        for vm in &vms {
            vm.wait_verified(t0, Duration::from_secs(120))?;
        }
        let took = t0.elapsed();
        let read = svc.storage_read_bytes()? - before;
        let one = MEM_MIB << 20;
        println!(
            "four VMs verified {took:?} after their loads; {read} bytes read from storage \
             ({:.2}x one snapshot)",
            read as f64 / one as f64
        );
        if read as f64 > 1.1 * one as f64 {
            return Err(format!(
                "{read} bytes read from storage for 4 restores of {one}"
            ));
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

    /// The same with the service's own block cache (`"cache": true`, what a page-server
    /// template always uses): each block is read from the source once.
    fn four_through_block_cache() -> Result<(), String> {
        let Some((kit, snap, svc, dir)) =
            service_with_template("four_through_block_cache", "blocks", r#","cache":true"#)?
        else {
            return Ok(());
        };
        let (vms, t0) = restore_many(&svc, &kit, (&dir, "vm"), &snap, 4, "")?;
        for vm in &vms {
            vm.wait_verified(t0, Duration::from_secs(120))?;
        }
        let templates = svc.ok("GET", "/templates", "")?;
        let read = templates[0]["source_bytes"].as_u64().unwrap_or(u64::MAX);
        let one = MEM_MIB << 20;
        if read as f64 > 1.1 * one as f64 {
            return Err(format!(
                "{read} bytes read from the source for 4 restores of {one}"
            ));
        }
        Ok(())
    }

    /// `POST /sessions/{id}/drain` on a restore with demand paging only: the session installs
    /// the rest of the guest's memory, says `drained`, and from then on the guest runs (passes
    /// verified) with no fault served and nothing more read from the template's source. A drain
    /// of an ended session is refused with 409.
    fn drained() -> Result<(), String> {
        let Some((kit, snap, svc, dir)) = service_with_template("drained", "drain", "")? else {
            return Ok(());
        };
        let (vms, _) = restore_many(&svc, &kit, (&dir, "vm"), &snap, 1, DEMAND_ONLY)?;
        let session = |svc: &Service| -> Result<Value, String> {
            let all = svc.ok("GET", "/sessions", "")?;
            Ok(all[0].clone())
        };
        if session(&svc)?["populated"] != false {
            return Err(format!("populated before any drain: {}", session(&svc)?));
        }
        let (code, text) = svc.call("POST", "/sessions/vm0/drain", "")?;
        if code != 202 {
            return Err(format!("drain answered {code} {text}"));
        }
        let start = Instant::now();
        let at_drained = loop {
            let s = session(&svc)?;
            if s["state"] == "drained" {
                break s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("not drained after 60 s: {s}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let installed = at_drained["bytes_served"].as_u64().unwrap_or(0);
        if installed < MEM_MIB << 20 || at_drained["populated"] != true {
            return Err(format!(
                "drained with {installed} bytes installed: {at_drained}"
            ));
        }
        let reads = |svc: &Service| -> Result<u64, String> {
            Ok(svc.ok("GET", "/templates", "")?[0]["source_reads"]
                .as_u64()
                .unwrap_or(u64::MAX))
        };
        let reads_at_drained = reads(&svc)?;
        let passes = verified_passes(&vms[0].console());
        vms[0].wait_console(Duration::from_secs(120), |text| {
            verified_passes(text) >= passes + 2
        })?;
        let after = session(&svc)?;
        if after["faults"] != at_drained["faults"] || reads(&svc)? != reads_at_drained {
            return Err(format!(
                "the drained guest still needed the pager: {at_drained} then {after}; source \
                 reads {reads_at_drained} then {}",
                reads(&svc)?
            ));
        }
        println!(
            "drained {:?} after the load; {installed} bytes installed; the guest verified two \
             more passes with no fault",
            start.elapsed()
        );
        drop(vms);
        let start = Instant::now();
        while !session(&svc)?["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("ended"))
        {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "the session did not end with its VMM: {}",
                    session(&svc)?
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        match svc.call("POST", "/sessions/vm0/drain", "")? {
            (409, _) => Ok(()),
            other => Err(format!("a drain of an ended session answered {other:?}")),
        }
    }

    /// Restores two VMs with demand paging only (slow on this machine's KVM), interrupts the
    /// pager with `interrupt` while the guests are still on their first pass, and checks that
    /// every guest still verifies and no VMM was killed.
    fn interrupted(
        name: &str,
        interrupt: &dyn Fn(&Service, u32) -> Result<(), String>,
    ) -> Result<(), String> {
        let Some((kit, snap, svc, dir)) = service_with_template(name, name, "")? else {
            return Ok(());
        };
        let pager = svc.wait_up(Duration::from_secs(5))?;
        let (vms, t0) = restore_many(&svc, &kit, (&dir, "vm"), &snap, 2, DEMAND_ONLY)?;
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
    /// by the new pager (the keeper held its listening socket); the drain asked for before the
    /// restart is carried out once the VMM connects.
    fn waiting_survives() -> Result<(), String> {
        let Some((kit, snap, svc, dir)) = service_with_template("waiting_survives", "waiting", "")?
        else {
            return Ok(());
        };
        let sock = dir.join("w0.sock");
        svc.ok(
            "PUT",
            "/sessions/w0",
            &format!(r#"{{"template":"base","socket":"{}"}}"#, sock.display()),
        )?;
        match svc.call("POST", "/sessions/w0/drain", "")? {
            (202, _) => {}
            other => return Err(format!("drain of a waiting session answered {other:?}")),
        }
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
        let start = Instant::now();
        while svc.ok("GET", "/sessions", "")?[0]["state"] != "drained" {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "the drain asked before the restart never finished: {}",
                    svc.ok("GET", "/sessions", "")?
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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

    /// systemd's side of sd_notify, as far as the descriptor store goes: a datagram socket
    /// that keeps every descriptor sent with `FDSTORE=1` under its `FDNAME` and drops it on
    /// `FDSTOREREMOVE=1`. (systemd is not PID 1 on the test machines, so its protocol is
    /// played here.)
    struct FdStore {
        path: std::path::PathBuf,
        stored: Arc<std::sync::Mutex<std::collections::BTreeMap<String, std::os::fd::OwnedFd>>>,
    }

    impl FdStore {
        fn bind(path: &Path) -> Result<Self, String> {
            let sock = std::os::unix::net::UnixDatagram::bind(path).map_err(|e| e.to_string())?;
            let stored = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
            let sink = Arc::clone(&stored);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok(got) = platform_primitives::fdpass::recv_with_fds(&sock, &mut buf, 16)
                    else {
                        return;
                    };
                    let text = String::from_utf8_lossy(&buf[..got.len]).to_string();
                    let field = |key: &str| {
                        text.lines()
                            .find_map(|l| l.strip_prefix(key))
                            .map(str::to_owned)
                    };
                    let mut store = sink.lock().unwrap_or_else(|p| p.into_inner());
                    if field("FDSTORE=") == Some("1".into())
                        && let Some(name) = field("FDNAME=")
                    {
                        for fd in got.fds {
                            store.insert(name.clone(), fd);
                        }
                    } else if field("FDSTOREREMOVE=") == Some("1".into())
                        && let Some(name) = field("FDNAME=")
                    {
                        store.remove(&name);
                    }
                }
            });
            Ok(Self {
                path: path.to_owned(),
                stored,
            })
        }

        fn names(&self) -> Vec<String> {
            self.stored
                .lock()
                .map(|s| s.keys().cloned().collect())
                .unwrap_or_default()
        }

        fn wait_names(&self, what: &str, ok: impl Fn(&[String]) -> bool) -> Result<(), String> {
            let start = Instant::now();
            while !ok(&self.names()) {
                if start.elapsed() > Duration::from_secs(10) {
                    return Err(format!("{what}: the store holds {:?}", self.names()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        }

        /// Starts `binary serve …` as systemd restarts a service: the stored descriptors at
        /// 3, 4, … with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` naming the new process.
        fn restart(
            &self,
            binary: &str,
            api: &Path,
            state: &Path,
        ) -> Result<std::process::Child, String> {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let store = self.stored.lock().map_err(|_| "store poisoned")?;
            let names: Vec<String> = store.keys().cloned().collect();
            let raw: Vec<i32> = store.values().map(AsRawFd::as_raw_fd).collect();
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
                .arg(binary)
                .arg("serve")
                .arg("--api")
                .arg(api)
                .arg("--state-dir")
                .arg(state)
                .env("NOTIFY_SOCKET", &self.path)
                .env("INVOCATION_ID", "7c1b0d9e5f2a4b6c8d0e1f2a3b4c5d6e")
                .env("LISTEN_FDS", raw.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null());
            // Each descriptor goes to a high number first, so moving one to its place never
            // overwrites another still to be moved.
            let place = move || -> std::io::Result<()> {
                let dup2 = |from: i32, to: i32| {
                    // SAFETY: dup2 on descriptors this process owns (they stay open in the
                    // parent while the child starts); it is async-signal-safe.
                    if unsafe { libc::dup2(from, to) } < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                for (i, &fd) in raw.iter().enumerate() {
                    dup2(fd, 200 + i as i32)?;
                }
                for i in 0..raw.len() as i32 {
                    dup2(200 + i, 3 + i)?;
                    // SAFETY: 200 + i is the copy made above, owned by this child alone.
                    unsafe { libc::close(200 + i) };
                }
                Ok(())
            };
            // SAFETY: between fork and exec the closure only calls dup2 and close, which are
            // async-signal-safe, and allocates nothing.
            unsafe { cmd.pre_exec(place) };
            let child = cmd.spawn().map_err(|e| format!("restart: {e}"))?;
            drop(store);
            Ok(child)
        }
    }

    /// Under systemd the keeper hands every session's descriptors to the fd store. When the
    /// whole service dies (keeper and pager killed, as systemd does before restarting a
    /// crashed service), the restarted keeper takes them back from `LISTEN_FDS` and the guest,
    /// frozen meanwhile, goes on and verifies; the VMM is never killed. An ended session
    /// leaves the store.
    fn fd_store_restart() -> Result<(), String> {
        let Some(kit) = kit_or_skip("fd_store_restart") else {
            return Ok(());
        };
        let snap = snapshot(&kit)?;
        let dir = work_dir().join("fdstore");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let store = FdStore::bind(&dir.join("notify.sock"))?;
        let binary = env!("CARGO_BIN_EXE_squib-host");
        // As systemd starts a unit: its notify socket and an invocation id.
        let svc = Service::start_with_env(
            binary,
            work_dir(),
            "fdstore",
            &[
                ("NOTIFY_SOCKET", &store.path),
                (
                    "INVOCATION_ID",
                    Path::new("7c1b0d9e5f2a4b6c8d0e1f2a3b4c5d6e"),
                ),
            ],
        )?;
        svc.ok(
            "PUT",
            "/templates/base",
            &format!(r#"{{"mem_file":"{}"}}"#, snap.mem.display()),
        )?;
        let (vms, t0) = restore_many(&svc, &kit, (&dir, "vm"), &snap, 1, DEMAND_ONLY)?;
        store.wait_names("the session's uffd, pidfd and connection are stored", |n| {
            n == ["s.vm0.0", "s.vm0.1", "s.vm0.2"]
        })?;
        if verified_passes(&vms[0].console()) > 0 {
            return Err("the guest verified before the service died".into());
        }
        // The whole service dies.
        let pager = svc.wait_up(Duration::from_secs(5))?;
        for pid in [svc.keeper_pid(), pager] {
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .map_err(|e| e.to_string())?;
        }
        let api = svc.api.clone();
        drop(svc);
        // The guest runs on until it needs a page nobody installed (what readahead put in
        // is there, and console output already sent is still on its way): then it is stuck.
        std::thread::sleep(Duration::from_millis(300));
        let frozen = vms[0].console().len();
        std::thread::sleep(Duration::from_millis(500));
        if vms[0].console().len() != frozen {
            return Err("the guest kept making progress with no pager at all".into());
        }
        // systemd restarts it with the stored descriptors.
        let keeper = store.restart(binary, &api, &work_dir().join("fdstore").join("state"))?;
        let svc = Service::from_child(keeper, api)?;
        vms[0].wait_verified(t0, Duration::from_secs(120))?;
        let sessions = svc.ok("GET", "/sessions", "")?;
        if sessions[0]["state"] != "serving" {
            return Err(format!("after the restart: {sessions}"));
        }
        let mut vm = Arc::try_unwrap(vms.into_iter().next().ok_or("no VM")?)
            .map_err(|_| "the VM is still shared")?;
        if !vm.is_alive() {
            return Err("the VMM died".into());
        }
        println!(
            "fd store: the guest verified {:?} after its load, across a restart of the whole \
             service",
            t0.elapsed()
        );
        // The VM ends: its session leaves the store.
        drop(vm);
        store.wait_names("the ended session left the store", |n| n.is_empty())?;
        Ok(())
    }
}
