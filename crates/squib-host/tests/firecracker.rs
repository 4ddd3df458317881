//! squib-host against the real Firecracker.
//!
//! A guest that checks and rewrites every page of its memory on each pass is booted, paused
//! mid-pass and snapshotted; a new Firecracker restores the snapshot through this crate's
//! [`FirecrackerHandler`], and the guest's next whole `P… OK` line proves every page came back
//! exact. The kit (binary, guest) is found through `FIRECRACKER_BIN`, which `cargo xtask` sets
//! when `../shared/firecracker` exists; without it, or without `/dev/kvm` or userfaultfd, each
//! check prints why it skips.

use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    {
        if let Ok(role) = std::env::var("SQUIB_FC_ROLE") {
            return linux::role(&role);
        }
        let code = workspace_tests::harness::run(linux::CHECKS);
        fc::remove_work_dir();
        code
    }
    #[cfg(not(target_os = "linux"))]
    {
        workspace_tests::support::skip("firecracker", "Firecracker and userfaultfd are Linux-only");
        workspace_tests::harness::report(&[])
    }
}

#[cfg(target_os = "linux")]
#[path = "support/fc.rs"]
mod fc;

#[cfg(target_os = "linux")]
#[path = "support/pages.rs"]
mod pages;

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitCode, Stdio};
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use squib_host::firecracker::{FirecrackerHandler, HandlerConfig, HandshakeError, Session};
    use squib_host::{FilePageSource, PagerConfig};
    use workspace_tests::firecracker::{Kit, Snapshot, Vm, take_snapshot, verified_passes};
    use workspace_tests::harness::Check;

    use crate::fc::{kit_or_skip, work_dir};
    use crate::pages::Slow;

    pub(super) const CHECKS: &[Check] = &[
        (
            "firecracker_restores_a_snapshot_through_the_handler_with_4k_pages",
            restore_4k,
        ),
        (
            "firecracker_restores_a_snapshot_through_the_handler_with_2m_pages",
            restore_2m,
        ),
        (
            "firecracker_whose_handshake_is_refused_is_killed_not_hung",
            refused,
        ),
        (
            "firecracker_whose_handler_dies_mid_restore_stays_alive_and_frozen",
            handler_killed,
        ),
    ];

    const MEM_MIB: u32 = 256;

    /// One 4 KiB-page snapshot for every check that needs one.
    fn snapshot_4k(kit: &Kit) -> Result<Snapshot, String> {
        static SNAP: OnceLock<Result<Snapshot, String>> = OnceLock::new();
        SNAP.get_or_init(|| take_snapshot(kit, work_dir(), "base", MEM_MIB, false))
            .clone()
    }

    fn handler_config(socket: &Path, snapshot: &Path) -> HandlerConfig {
        HandlerConfig {
            pager: PagerConfig {
                poll_interval: Duration::from_millis(50),
                ..PagerConfig::default()
            },
            ..HandlerConfig::new(socket, snapshot)
        }
    }

    /// Restores `snap` in a new VMM through `handler`; returns the VM, its session, and how
    /// long the guest took from the load request to its first whole verified pass.
    fn restore_through(
        kit: &Kit,
        snap: &Snapshot,
        handler: &FirecrackerHandler,
        id: &str,
    ) -> Result<(Vm, Session, Duration), String> {
        let vm = Arc::new(Vm::spawn(kit, work_dir(), id)?);
        let t0 = Instant::now();
        let loader = {
            let (vm, snap, sock) = (vm.clone(), snap.clone(), handler.path().to_owned());
            std::thread::spawn(move || vm.load_uffd(&snap, &sock, Duration::from_secs(60)))
        };
        let session = handler
            .accept_timeout(Duration::from_secs(30))
            .map_err(|e| format!("handshake: {e} ({:?})", e.reason()))?
            .ok_or("Firecracker never connected to the handler")?;
        let load = loader.join().map_err(|_| "loader panicked")??;
        if !(200..300).contains(&load.0) {
            return Err(format!("snapshot load answered {load:?}"));
        }
        let took = vm.wait_verified(t0, Duration::from_secs(120))?;
        let vm = Arc::try_unwrap(vm).map_err(|_| "the VM is still shared")?;
        Ok((vm, session, took))
    }

    fn restore(huge: bool) -> Result<(), String> {
        let test = if huge { "restore-2m" } else { "restore-4k" };
        let Some(kit) = kit_or_skip(test) else {
            return Ok(());
        };
        // Two VMs of huge pages exist one after the other; leave room for both plus slack.
        let _pool = if huge {
            match workspace_tests::hugetlb::reserve(u64::from(MEM_MIB) / 2 + 8) {
                Ok(r) => Some(r),
                Err(why) => {
                    workspace_tests::support::skip(test, &why);
                    return Ok(());
                }
            }
        } else {
            None
        };
        let snap = if huge {
            take_snapshot(&kit, work_dir(), "huge", MEM_MIB, true)?
        } else {
            snapshot_4k(&kit)?
        };
        let handler = FirecrackerHandler::bind(handler_config(
            &work_dir().join(format!("{test}.sock")),
            &snap.mem,
        ))
        .map_err(|e| e.to_string())?;
        let (mut vm, session, took) = restore_through(&kit, &snap, &handler, test)?;
        let page = if huge { 2 << 20 } else { 4096 };
        if session.mappings().iter().any(|m| m.page_size != page) {
            return Err(format!("regions {:?}", session.mappings()));
        }
        if session.peer_pid() != vm.pid() {
            return Err(format!(
                "peer {} is not the VMM {}",
                session.peer_pid(),
                vm.pid()
            ));
        }
        // A second verified pass: the guest keeps running on the restored memory.
        vm.wait_console(Duration::from_secs(60), |t| verified_passes(t) >= 2)?;
        vm.kill();
        let pager = session.pager().clone();
        let start = Instant::now();
        while !session.is_finished() {
            if start.elapsed() > Duration::from_secs(5) {
                return Err("the handler did not notice the VMM's exit".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        session.wait().map_err(|e| e.to_string())?;
        let s = pager.stats();
        if s.failed_closed != 0 || s.bytes_served == 0 {
            return Err(format!("stats {s:?}"));
        }
        if huge {
            let _ = std::fs::remove_file(&snap.mem);
        }
        println!("{test}: first verified pass {took:?} after the load request; {s:?}");
        Ok(())
    }

    fn restore_4k() -> Result<(), String> {
        restore(false)
    }

    fn restore_2m() -> Result<(), String> {
        restore(true)
    }

    /// The memory file is one page short of the VM's memory: the handler refuses the
    /// handshake, the VMM is killed at once, and the error names it.
    fn refused() -> Result<(), String> {
        let Some(kit) = kit_or_skip("refused") else {
            return Ok(());
        };
        let snap = snapshot_4k(&kit)?;
        let short = work_dir().join("short.mem");
        {
            let f = std::fs::File::create(&short).map_err(|e| e.to_string())?;
            f.set_len(u64::from(MEM_MIB) * (1 << 20) - 4096)
                .map_err(|e| e.to_string())?;
        }
        let handler =
            FirecrackerHandler::bind(handler_config(&work_dir().join("refused.sock"), &short))
                .map_err(|e| e.to_string())?;
        let vm = Arc::new(Vm::spawn(&kit, work_dir(), "refused")?);
        let loader = {
            let (vm, snap, sock) = (vm.clone(), snap.clone(), handler.path().to_owned());
            std::thread::spawn(move || vm.load_uffd(&snap, &sock, Duration::from_secs(30)))
        };
        let got = handler.accept_timeout(Duration::from_secs(30));
        let _ = loader.join();
        let mut vm = Arc::try_unwrap(vm).map_err(|_| "the VM is still shared")?;
        match got {
            Err(HandshakeError::Refused {
                pid, killed: true, ..
            }) if pid == vm.pid() => {}
            other => return Err(format!("accept gave {other:?}")),
        }
        if vm.wait_exit(Duration::from_secs(5)).is_none() {
            return Err("the refused Firecracker is still running".into());
        }
        let _ = std::fs::remove_file(&short);
        Ok(())
    }

    /// Child role: a handler process serving one VMM from a slow source.
    fn handler_role() -> ExitCode {
        let sock = PathBuf::from(std::env::var_os("SQUIB_SOCKET").expect("socket"));
        let snap = PathBuf::from(std::env::var_os("SQUIB_SNAPSHOT").expect("snapshot"));
        // Slow enough that the restore is still under way when the handler is killed.
        let source = Slow {
            source: FilePageSource::open(&snap).expect("snapshot"),
            delay: Duration::from_millis(2),
        };
        let config = HandlerConfig {
            pager: PagerConfig {
                background: false,
                readahead_max: 0,
                ..PagerConfig::default()
            },
            ..HandlerConfig::new(&sock, &snap)
        };
        let handler = FirecrackerHandler::bind_with_source(config, Arc::new(source)).expect("bind");
        println!("listening");
        let session = handler.accept().expect("handshake");
        println!("serving {}", session.peer_pid());
        let _ = session.wait();
        ExitCode::SUCCESS
    }

    /// What Firecracker sees when its handler process dies mid-restore: it stays alive, its
    /// API keeps answering, and the guest freezes without a word. (The pager service keeps
    /// the userfaultfd across a restart so its VMs never get here.)
    fn handler_killed() -> Result<(), String> {
        let Some(kit) = kit_or_skip("handler_killed") else {
            return Ok(());
        };
        let snap = snapshot_4k(&kit)?;
        let sock = work_dir().join("dying.sock");
        let mut handler: Child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .env("SQUIB_FC_ROLE", "handler")
            .env("SQUIB_SOCKET", &sock)
            .env("SQUIB_SNAPSHOT", &snap.mem)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut out = BufReader::new(handler.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let vm = Arc::new(Vm::spawn(&kit, work_dir(), "orphan")?);
        let loader = {
            let (vm, snap, sock) = (vm.clone(), snap.clone(), sock.clone());
            std::thread::spawn(move || vm.load_uffd(&snap, &sock, Duration::from_secs(60)))
        };
        line.clear();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let load = loader.join().map_err(|_| "loader panicked")??;
        // Let the guest run into lazily served memory, then kill the handler.
        vm.wait_console(Duration::from_secs(30), |t| t.contains('.'))?;
        let _ = handler.kill();
        let _ = handler.wait();
        std::thread::sleep(Duration::from_millis(300));
        let frozen_at = vm.console().len();
        std::thread::sleep(Duration::from_secs(2));
        let mut vm = Arc::try_unwrap(vm).map_err(|_| "the VM is still shared")?;
        let alive = vm.is_alive();
        let api = vm.request("GET", "/", "", Duration::from_secs(5));
        let grew = vm.console().len() - frozen_at;
        println!(
            "handler killed mid-restore: load answered {}, VMM alive: {alive}, API: {:?}, console \
             bytes in the 2 s after: {grew}, verified passes: {}",
            load.0,
            api.as_ref().map(|(code, _)| code),
            verified_passes(&vm.console())
        );
        if !alive || !matches!(api, Ok((200, _))) || grew != 0 {
            return Err(format!(
                "expected a live VMM with a working API and a frozen guest; got alive {alive}, \
                 API {api:?}, {grew} new console bytes"
            ));
        }
        vm.kill();
        Ok(())
    }

    pub(super) fn role(role: &str) -> ExitCode {
        match role {
            "handler" => handler_role(),
            _ => ExitCode::from(2),
        }
    }
}
