//! Checks that need whole processes: a faulting process that must die of `SIGBUS` when its
//! source fails (fail closed), a child process playing a Firecracker VMM against the handler,
//! a VMM killed when its snapshot turns out short, bad handshakes on real sockets with an exact
//! descriptor-leak check, and `gdb -p <pid> -batch -ex detach` against a process mid-restore in
//! both orderings.
//!
//! This binary runs without the libtest harness because it re-executes itself for the child
//! roles (`SQUIB_TEST_ROLE`) and because the leak check compares the whole descriptor table,
//! which needs the checks to run one after another. It prints a libtest-style summary.

use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    {
        if let Ok(role) = std::env::var("SQUIB_TEST_ROLE") {
            return linux::role(&role);
        }
        linux::run_checks()
    }
    #[cfg(not(target_os = "linux"))]
    {
        workspace_tests::support::skip("processes", "userfaultfd is Linux-only");
        workspace_tests::harness::report(&[])
    }
}

#[cfg(target_os = "linux")]
#[path = "support/pages.rs"]
mod pages;

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, ExitCode, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use platform_primitives::fdpass::send_with_fds;
    use platform_primitives::mem::{AnonMapping, HUGE_PAGE_SIZE};
    use squib_host::firecracker::{
        FirecrackerHandler, HandlerConfig, HandshakeError, Session, serve_connection,
    };
    use squib_host::{
        MemorySource, PageRequest, PageSource, PageSourceError, Pager, PagerConfig, ServeError,
        Uffd, spawn_server,
    };

    use workspace_tests::harness::Check;
    use workspace_tests::support::{have, skip};

    use crate::pages::{Slow, ps, require_uffd, snapshot};

    const CHECKS: &[Check] = &[
        (
            "failing_source_gives_the_faulting_thread_sigbus",
            failing_source_sigbus,
        ),
        (
            "hanging_source_fails_closed_after_the_fetch_timeout",
            hanging_source_sigbus,
        ),
        (
            "firecracker_handshake_serves_a_child_vmm_byte_for_byte",
            handler_end_to_end,
        ),
        (
            "firecracker_handshake_with_2mib_huge_pages_and_a_sparse_snapshot",
            handler_huge_pages,
        ),
        (
            "handler_kills_the_vmm_when_the_snapshot_cannot_serve_it",
            handler_kills_peer,
        ),
        (
            "a_vmm_reading_below_a_truncated_end_is_served_not_killed",
            truncated_end,
        ),
        (
            "threads_faulting_on_memory_the_vmm_unmaps_are_woken_not_frozen_or_killed",
            unmapped_while_faulting,
        ),
        (
            "every_firecracker_handshake_generation_is_served",
            handshake_generations,
        ),
        (
            "a_refused_handshake_kills_the_vmm_and_names_its_pid",
            refused_handshake_kills_vmm,
        ),
        (
            "a_dribbling_handshake_times_out_whole_and_never_delays_another_vmm",
            dribbling_handshake,
        ),
        (
            "bad_handshakes_are_typed_errors_and_leak_no_descriptor",
            bad_handshakes,
        ),
        (
            "a_forked_child_never_reads_wrong_bytes_from_a_lazy_mapping",
            fork_child,
        ),
        ("gdb_attach_and_detach_before_the_pager_starts", gdb_before),
        ("gdb_attach_and_detach_mid_restore", gdb_after),
    ];

    pub(super) fn run_checks() -> ExitCode {
        println!("\nrunning {} tests", CHECKS.len());
        workspace_tests::harness::run(CHECKS)
    }

    // ---- helpers ---------------------------------------------------------------------------

    fn temp_dir(label: &str) -> workspace_tests::support::TempDir {
        workspace_tests::support::TempDir::new(&format!("squib-proc-{label}"))
    }

    fn child(role: &str, envs: &[(&str, &str)]) -> Result<Child, String> {
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.env("SQUIB_TEST_ROLE", role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.spawn().map_err(|e| format!("spawn {role}: {e}"))
    }

    /// Writes `data` to `dir/mem.snap`, binds a handler for it that serves pages from `source`
    /// with `pager`'s settings, starts a one-region child VMM with `extra` settings of its role,
    /// and accepts its session.
    fn vmm_on_source(
        dir: &std::path::Path,
        data: &[u8],
        source: Arc<dyn PageSource>,
        pager: PagerConfig,
        extra: &[(&str, &str)],
    ) -> Result<(Session, Child), String> {
        let snap_path = dir.join("mem.snap");
        std::fs::write(&snap_path, data).map_err(|e| e.to_string())?;
        let sock = dir.join("uffd.sock");
        let handler = FirecrackerHandler::bind_with_source(
            HandlerConfig {
                pager,
                ..HandlerConfig::new(&sock, &snap_path)
            },
            source,
        )
        .map_err(|e| e.to_string())?;
        let mut envs = vec![
            ("SQUIB_SOCKET", sock.to_str().unwrap_or_default()),
            ("SQUIB_SNAPSHOT", snap_path.to_str().unwrap_or_default()),
            ("SQUIB_REGIONS", "1"),
        ];
        envs.extend_from_slice(extra);
        let vmm = child("vmm", &envs)?;
        let session = handler.accept().map_err(|e| e.to_string())?;
        Ok((session, vmm))
    }

    /// Waits for `child` at most `limit`, killing it on timeout.
    fn wait_for(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("child did not finish within {limit:?}; killed"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads one line the child prints (its progress marker).
    fn read_line(child: &mut Child) -> Result<String, String> {
        let out = child.stdout.as_mut().ok_or("no stdout")?;
        let mut line = String::new();
        // One byte at a time so nothing past the line is swallowed by a buffer.
        let mut byte = [0u8; 1];
        loop {
            match std::io::Read::read(out, &mut byte) {
                Ok(0) => return Ok(line),
                Ok(_) if byte[0] == b'\n' => return Ok(line),
                Ok(_) => line.push(byte[0] as char),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    }

    // ---- fail closed -----------------------------------------------------------------------

    #[derive(Debug)]
    struct Failing;
    impl PageSource for Failing {
        fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
            Err(PageSourceError::Other {
                offset: req.offset,
                reason: "the page server is down".into(),
            })
        }
        fn is_local(&self) -> bool {
            true
        }
    }

    #[derive(Debug)]
    struct Hanging;
    impl PageSource for Hanging {
        fn fetch(&self, _req: &PageRequest) -> Result<Bytes, PageSourceError> {
            loop {
                std::thread::park();
            }
        }
    }

    /// Child role: touch a page whose source fails. Must die of SIGBUS before printing.
    fn touch_failing(source: Arc<dyn PageSource>) -> ExitCode {
        let pager = Pager::new(
            source,
            PagerConfig {
                fetch_retries: 2,
                retry_backoff: Duration::from_millis(1),
                fetch_timeout: Duration::from_millis(300),
                background: false,
                ..PagerConfig::default()
            },
        );
        let mem = pager.map_lazy(16 * ps(), 0).expect("map");
        let _server = spawn_server(&pager).expect("server");
        let b = mem.as_slice()[5 * ps() + 3];
        println!("survived with byte {b}");
        ExitCode::from(3)
    }

    fn expect_sigbus(test: &str, role: &str) -> Result<(), String> {
        require_uffd!(test, Ok(()));
        let mut c = child(role, &[])?;
        let status = wait_for(&mut c, Duration::from_secs(20))?;
        let out = read_line(&mut c)?;
        match status.signal() {
            Some(libc::SIGBUS) => Ok(()),
            _ => Err(format!(
                "child ended with {status:?}, printed {out:?}; expected SIGBUS"
            )),
        }
    }

    fn failing_source_sigbus() -> Result<(), String> {
        expect_sigbus("failing_source_gives_the_faulting_thread_sigbus", "failing")
    }

    fn hanging_source_sigbus() -> Result<(), String> {
        expect_sigbus(
            "hanging_source_fails_closed_after_the_fetch_timeout",
            "hanging",
        )
    }

    // ---- Firecracker handler mode ----------------------------------------------------------

    /// Child role: a VMM. Maps guest memory, registers it with a fresh uffd, sends Firecracker's
    /// handshake with the uffd, then touches every page in random order from two threads and
    /// checks each byte against the snapshot file.
    fn vmm() -> ExitCode {
        let socket = std::env::var("SQUIB_SOCKET").expect("socket");
        let snap = std::fs::read(std::env::var("SQUIB_SNAPSHOT").expect("snapshot")).expect("read");
        let regions: usize = std::env::var("SQUIB_REGIONS").map_or(2, |v| v.parse().unwrap_or(2));
        // SQUIB_HUGE: guest memory of 2 MiB hugetlb pages, as Firecracker maps it with
        // `huge_pages: "2M"`.
        let huge = std::env::var_os("SQUIB_HUGE").is_some();
        let page = if huge { HUGE_PAGE_SIZE } else { ps() };
        let uffd = Uffd::open().expect("uffd");
        let per = snap.len() / regions;
        let mut maps: Vec<AnonMapping> = (0..regions)
            .map(|_| {
                if huge {
                    AnonMapping::huge(per).expect("mmap huge")
                } else {
                    AnonMapping::new(per).expect("mmap")
                }
            })
            .collect();
        // SQUIB_GENERATION: the handshake fields of a Firecracker generation, as its source
        // writes them (`page_size_kib` carries bytes).
        let generation = std::env::var("SQUIB_GENERATION").unwrap_or_default();
        let mut json = String::from("[");
        for (i, m) in maps.iter_mut().enumerate() {
            uffd.register_mapping(m).expect("register");
            if i > 0 {
                json.push(',');
            }
            let size_field = match generation.as_str() {
                "v1.6" => String::new(),
                "v1.7" => format!(",\"page_size_kib\":{page}"),
                _ => format!(",\"page_size\":{page},\"page_size_kib\":{page}"),
            };
            json.push_str(&format!(
                "{{\"base_host_virt_addr\":{},\"size\":{},\"offset\":{}{size_field},\
                 \"future_field\":{{\"ignored\":true}}}}",
                m.as_ptr() as u64,
                per,
                i * per
            ));
        }
        json.push(']');
        let conn = UnixStream::connect(&socket).expect("connect");
        send_with_fds(&conn, json.as_bytes(), &[uffd.as_fd()]).expect("send handshake");
        println!("sent");
        // SQUIB_TOUCH_BELOW=N: one thread reads pages 0..N of the first region in order, and
        // nothing else (a guest that never goes near the end of its memory).
        if let Some(n) = std::env::var("SQUIB_TOUCH_BELOW")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            let ok = (0..n).all(|p| {
                maps[0].as_slice()[p * page..(p + 1) * page] == snap[p * page..(p + 1) * page]
            });
            drop(conn);
            return if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            };
        }
        // SQUIB_UNMAP_WHILE_FAULTING=N: N threads read page 5 of the first region (staggered,
        // so all but the first wait on a fetch already in flight), then the main thread unmaps
        // the region under them. Like any access to unmapped memory, theirs must end in
        // SIGSEGV; a thread still blocked after 5 s is a frozen VMM (exit 5).
        if let Some(n) = std::env::var("SQUIB_UNMAP_WHILE_FAULTING")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            let addr = maps[0].as_ptr() as usize + 5 * page;
            for t in 0..n {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50 * t));
                    // SAFETY: a read of mapped (then unmapped) memory; once unmapped, the
                    // kernel answers it with SIGSEGV, which is what this role tests.
                    unsafe { std::ptr::read_volatile(addr as *const u8) }
                });
            }
            std::thread::sleep(Duration::from_millis(300));
            let region = maps.swap_remove(0);
            // SAFETY: unmaps the region the threads fault on; the mapping is forgotten so it
            // is not unmapped twice.
            unsafe { libc::munmap(region.as_ptr().cast(), region.len()) };
            std::mem::forget(region);
            std::thread::sleep(Duration::from_secs(5));
            return ExitCode::from(5);
        }
        let maps = Arc::new(maps);
        let snap = Arc::new(snap);
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let (maps, snap) = (maps.clone(), snap.clone());
                std::thread::spawn(move || {
                    let pages = per / page;
                    let mut order: Vec<usize> = (0..pages * maps.len()).collect();
                    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ t;
                    for i in (1..order.len()).rev() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        order.swap(i, (x % (i as u64 + 1)) as usize);
                    }
                    order.into_iter().all(|g| {
                        let (r, p) = (g / pages, g % pages);
                        let got = &maps[r].as_slice()[p * page..(p + 1) * page];
                        got == &snap[r * per + p * page..r * per + (p + 1) * page]
                    })
                })
            })
            .collect();
        let ok = threads.into_iter().all(|t| t.join().unwrap_or(false));
        drop(conn);
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(4)
        }
    }

    /// Binds a handler for `snap_path` in `dir`, starts a child VMM against it with `envs`,
    /// and checks that the VMM found every byte right. Returns the session (still serving
    /// until it notices the VMM's exit) and the VMM's pid.
    fn serve_child_vmm(
        dir: &std::path::Path,
        snap_path: &std::path::Path,
        envs: &[(&str, &str)],
    ) -> Result<(Session, u32), String> {
        let sock = dir.join("uffd.sock");
        let handler = FirecrackerHandler::bind(HandlerConfig {
            pager: PagerConfig {
                poll_interval: Duration::from_millis(50),
                ..PagerConfig::default()
            },
            ..HandlerConfig::new(&sock, snap_path)
        })
        .map_err(|e| e.to_string())?;
        let mut all = vec![
            ("SQUIB_SOCKET", sock.to_str().unwrap_or_default()),
            ("SQUIB_SNAPSHOT", snap_path.to_str().unwrap_or_default()),
        ];
        all.extend_from_slice(envs);
        let mut vmm = child("vmm", &all)?;
        let session = handler.accept().map_err(|e| e.to_string())?;
        let status = wait_for(&mut vmm, Duration::from_secs(60))?;
        if !status.success() {
            // The server's own account of why it failed (a fault that failed closed kills the VMM).
            let failures = session.pager().failures();
            let served = session.shutdown();
            return Err(format!(
                "the VMM found wrong bytes or failed: {status:?}; the server ended with \
                 {served:?}; faults that failed closed: {failures:?}"
            ));
        }
        Ok((session, vmm.id()))
    }

    fn handler_end_to_end() -> Result<(), String> {
        require_uffd!(
            "firecracker_handshake_serves_a_child_vmm_byte_for_byte",
            Ok(())
        );
        let dir = temp_dir("fc");
        let snap_path = dir.join("mem.snap");
        let pages = 2048;
        std::fs::write(&snap_path, snapshot(pages)).map_err(|e| e.to_string())?;
        let (session, vmm_pid) = serve_child_vmm(&dir, &snap_path, &[])?;
        if session.peer_pid() != vmm_pid {
            return Err(format!(
                "peer pid {} is not the child's {vmm_pid}",
                session.peer_pid()
            ));
        }
        if session.mappings().len() != 2 {
            return Err(format!("{:?}", session.mappings()));
        }
        let pager = session.pager().clone();
        // The handler notices the VMM's exit through its pidfd and stops by itself.
        let start = Instant::now();
        while !session.is_finished() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !session.is_finished() {
            return Err("the handler did not notice the VMM's exit".into());
        }
        session.shutdown().map_err(|e| e.to_string())?;
        let s = pager.stats();
        if s.pages_copied + s.zero_pages == 0 || s.failed_closed != 0 {
            return Err(format!("unexpected stats {s:?}"));
        }
        Ok(())
    }

    /// Firecracker with `huge_pages: "2M"`: the VMM's guest memory is hugetlb, the handshake
    /// says 2 MiB pages, and the snapshot file has a 2 MiB hole, served as a zero huge page.
    fn handler_huge_pages() -> Result<(), String> {
        require_uffd!(
            "firecracker_handshake_with_2mib_huge_pages_and_a_sparse_snapshot",
            Ok(())
        );
        let huge_pages = 8;
        let reservation = match workspace_tests::hugetlb::reserve(huge_pages as u64) {
            Ok(r) => r,
            Err(why) => {
                skip(
                    "firecracker_handshake_with_2mib_huge_pages_and_a_sparse_snapshot",
                    &why,
                );
                return Ok(());
            }
        };
        let dir = temp_dir("fc-huge");
        let snap_path = dir.join("mem.snap");
        let mut data = snapshot(huge_pages * HUGE_PAGE_SIZE / ps());
        // Huge page 5 is a hole in the file (never written), so it reads back as zeros.
        let hole = 5 * HUGE_PAGE_SIZE..6 * HUGE_PAGE_SIZE;
        data[hole.clone()].fill(0);
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(&snap_path).map_err(|e| e.to_string())?;
            f.set_len(data.len() as u64).map_err(|e| e.to_string())?;
            f.write_all_at(&data[..hole.start], 0)
                .and_then(|()| f.write_all_at(&data[hole.end..], hole.end as u64))
                .map_err(|e| e.to_string())?;
        }
        let (session, _) = serve_child_vmm(&dir, &snap_path, &[("SQUIB_HUGE", "1")])?;
        if session
            .mappings()
            .iter()
            .any(|m| m.page_size != HUGE_PAGE_SIZE)
        {
            return Err(format!("{:?}", session.mappings()));
        }
        let pager = session.pager().clone();
        session.shutdown().map_err(|e| e.to_string())?;
        let s = pager.stats();
        // Every huge page once, whole: 7 copied, the hole as a zero page.
        let expected = (huge_pages * HUGE_PAGE_SIZE) as u64;
        if s.bytes_served != expected || s.zero_pages != 1 || s.pages_copied != 7 {
            return Err(format!("unexpected stats {s:?}"));
        }
        if s.failed_closed != 0 {
            return Err(format!("unexpected failures {s:?}"));
        }
        drop(reservation);
        Ok(())
    }

    fn handler_kills_peer() -> Result<(), String> {
        require_uffd!(
            "handler_kills_the_vmm_when_the_snapshot_cannot_serve_it",
            Ok(())
        );
        let dir = temp_dir("fc-kill");
        let data = snapshot(256);
        let (session, mut vmm) = vmm_on_source(
            &dir,
            &data,
            // Every read comes up short, as from a snapshot truncated after the handshake.
            Arc::new(EndsEarly {
                data: data.clone().into(),
                end: 0,
            }),
            PagerConfig {
                poll_interval: Duration::from_millis(50),
                background: false,
                fetch_retries: 1,
                retry_backoff: Duration::from_millis(1),
                ..PagerConfig::default()
            },
            &[],
        )?;
        let status = wait_for(&mut vmm, Duration::from_secs(30))?;
        if status.signal() != Some(libc::SIGKILL) {
            return Err(format!("the VMM ended with {status:?}; expected SIGKILL"));
        }
        let pager = session.pager().clone();
        match session.wait() {
            Err(ServeError::PeerKilled { pid, .. }) if pid == vmm.id() => {}
            other => return Err(format!("server ended with {other:?}")),
        }
        let s = pager.stats();
        if s.failed_closed != 1 || s.source_errors < 2 || pager.failures().is_empty() {
            return Err(format!("unexpected stats {s:?}"));
        }
        Ok(())
    }

    /// A VMM unmapping guest memory while its threads fault on it, the fetch still in flight:
    /// the threads are woken to find the memory gone (SIGSEGV, as without a pager), whether
    /// they own the fetch or wait on it; the VMM is neither frozen nor killed, and nothing
    /// fails closed.
    fn unmapped_while_faulting() -> Result<(), String> {
        require_uffd!(
            "threads_faulting_on_memory_the_vmm_unmaps_are_woken_not_frozen_or_killed",
            Ok(())
        );
        for threads in [1, 2] {
            let dir = temp_dir("fc-unmap");
            let data = snapshot(64);
            let (session, mut vmm) = vmm_on_source(
                &dir,
                &data,
                Arc::new(Stalls {
                    data: MemorySource::new(data.clone()),
                    delay: Duration::from_millis(1500),
                }),
                PagerConfig {
                    background: false,
                    ..PagerConfig::default()
                },
                &[("SQUIB_UNMAP_WHILE_FAULTING", &threads.to_string())],
            )?;
            let status = wait_for(&mut vmm, Duration::from_secs(30))?;
            let pager = session.pager().clone();
            let served = session.shutdown();
            let s = pager.stats();
            if status.signal() != Some(libc::SIGSEGV) || served.is_err() || s.failed_closed != 0 {
                return Err(format!(
                    "{threads} thread(s): the VMM ended with {status:?} (expected SIGSEGV; exit \
                     status 5 is a thread left frozen), the server with {served:?}, \
                     failures {:?}",
                    pager.failures()
                ));
            }
        }
        Ok(())
    }

    /// A remote-like source (fetched off the fault thread) whose every fetch takes `delay`.
    #[derive(Debug)]
    struct Stalls {
        data: MemorySource,
        delay: Duration,
    }
    impl PageSource for Stalls {
        fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
            std::thread::sleep(self.delay);
            self.data.fetch(req)
        }
        fn len_hint(&self) -> Option<u64> {
            self.data.len_hint()
        }
        fn is_local(&self) -> bool {
            false
        }
    }

    /// The handler's source: the snapshot's length, but reads past `end` come up short (a
    /// memory file truncated after the handshake).
    #[derive(Debug)]
    struct EndsEarly {
        data: Bytes,
        end: u64,
    }
    impl PageSource for EndsEarly {
        fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
            let last = req.offset + req.len as u64;
            if last > self.end {
                return Err(PageSourceError::Short {
                    offset: req.offset,
                    wanted: req.len,
                    got: self.end.saturating_sub(req.offset) as usize,
                });
            }
            Ok(self.data.slice(req.offset as usize..last as usize))
        }
        fn len_hint(&self) -> Option<u64> {
            Some(self.data.len() as u64)
        }
        fn is_local(&self) -> bool {
            true
        }
    }

    /// A VMM reading only pages below where its memory file ends, in order: the readahead
    /// windows grow past the end, but the VMM is served every page it reads.
    fn truncated_end() -> Result<(), String> {
        require_uffd!(
            "a_vmm_reading_below_a_truncated_end_is_served_not_killed",
            Ok(())
        );
        let dir = temp_dir("fc-trunc");
        let data = snapshot(1024);
        let end = 1000;
        let (session, mut vmm) = vmm_on_source(
            &dir,
            &data,
            Arc::new(EndsEarly {
                data: data.clone().into(),
                end: (end * ps()) as u64,
            }),
            PagerConfig {
                background: false,
                ..PagerConfig::default()
            },
            &[("SQUIB_TOUCH_BELOW", &end.to_string())],
        )?;
        let status = wait_for(&mut vmm, Duration::from_secs(30))?;
        if !status.success() {
            return Err(format!(
                "the VMM ended with {status:?}; it read only good pages"
            ));
        }
        let s = session.pager().stats();
        if s.failed_closed != 0 || s.readahead_retries == 0 {
            return Err(format!("unexpected stats {s:?}"));
        }
        session.shutdown().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Firecracker ≤ v1.6 (no page size), v1.7–v1.11 (`page_size_kib` in bytes) and ≥ v1.12
    /// (`page_size`), each with an unknown field, restore byte for byte.
    fn handshake_generations() -> Result<(), String> {
        use squib_host::firecracker::HandshakeGeneration as G;
        require_uffd!("every_firecracker_handshake_generation_is_served", Ok(()));
        let dir = temp_dir("fc-gen");
        let snap_path = dir.join("mem.snap");
        std::fs::write(&snap_path, snapshot(512)).map_err(|e| e.to_string())?;
        for (generation, expected) in [
            ("v1.6", G::NoPageSize),
            ("v1.7", G::PageSizeKib),
            ("v1.12", G::PageSize),
        ] {
            let (session, _) =
                serve_child_vmm(&dir, &snap_path, &[("SQUIB_GENERATION", generation)])
                    .map_err(|e| format!("{generation}: {e}"))?;
            if session.generation() != expected
                || session.mappings().iter().any(|m| m.page_size != ps())
            {
                return Err(format!(
                    "{generation}: read as {:?} with {:?}",
                    session.generation(),
                    session.mappings()
                ));
            }
            session.shutdown().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A handshake the handler refuses (the snapshot is one page short of the VMM's memory)
    /// kills the VMM at once, and the error names its pid and the reason.
    fn refused_handshake_kills_vmm() -> Result<(), String> {
        require_uffd!(
            "a_refused_handshake_kills_the_vmm_and_names_its_pid",
            Ok(())
        );
        let dir = temp_dir("fc-refuse");
        let (full, short) = (dir.join("full.snap"), dir.join("short.snap"));
        let data = snapshot(256);
        std::fs::write(&full, &data).map_err(|e| e.to_string())?;
        std::fs::write(&short, &data[..data.len() - ps()]).map_err(|e| e.to_string())?;
        let sock = dir.join("uffd.sock");
        let handler = FirecrackerHandler::bind(HandlerConfig::new(&sock, &short))
            .map_err(|e| e.to_string())?;
        let mut vmm = child(
            "vmm",
            &[
                ("SQUIB_SOCKET", sock.to_str().unwrap_or_default()),
                ("SQUIB_SNAPSHOT", full.to_str().unwrap_or_default()),
                ("SQUIB_REGIONS", "1"),
            ],
        )?;
        let got = handler.accept_timeout(Duration::from_secs(20));
        let status = wait_for(&mut vmm, Duration::from_secs(5))
            .map_err(|e| format!("the refused VMM was left alive: {e}"))?;
        if status.signal() != Some(libc::SIGKILL) {
            return Err(format!("the VMM ended with {status:?}; expected SIGKILL"));
        }
        match got {
            Err(HandshakeError::Refused {
                pid,
                killed: true,
                reason,
            }) if pid == vmm.id() => match *reason {
                HandshakeError::Region { .. } => {}
                other => return Err(format!("refused for the wrong reason: {other:?}")),
            },
            other => return Err(format!("accept gave {other:?}")),
        }
        Ok(())
    }

    /// Child role: connects to the handler and sends one byte of a handshake every 300 ms,
    /// never finishing it.
    fn dribble() -> ExitCode {
        let socket = std::env::var("SQUIB_SOCKET").expect("socket");
        let conn = UnixStream::connect(&socket).expect("connect");
        println!("connected");
        for b in b"[{\"base_host_virt_addr\": 4096, \"size\": 4096, \"offset\": 0"
            .iter()
            .cycle()
        {
            if (&conn).write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        ExitCode::SUCCESS
    }

    /// A VMM sending its handshake a byte at a time, each byte within the timeout, is refused
    /// when the whole handshake is late; a good VMM connecting meanwhile is served at once.
    fn dribbling_handshake() -> Result<(), String> {
        require_uffd!(
            "a_dribbling_handshake_times_out_whole_and_never_delays_another_vmm",
            Ok(())
        );
        let dir = temp_dir("fc-dribble");
        let snap_path = dir.join("mem.snap");
        std::fs::write(&snap_path, snapshot(256)).map_err(|e| e.to_string())?;
        let sock = dir.join("uffd.sock");
        let limit = Duration::from_secs(3);
        let handler = FirecrackerHandler::bind(HandlerConfig {
            handshake_timeout: limit,
            ..HandlerConfig::new(&sock, &snap_path)
        })
        .map_err(|e| e.to_string())?;
        let envs = [
            ("SQUIB_SOCKET", sock.to_str().unwrap_or_default()),
            ("SQUIB_SNAPSHOT", snap_path.to_str().unwrap_or_default()),
        ];
        let started = Instant::now();
        let mut slow = child("dribble", &envs)?;
        read_line(&mut slow)?;
        let mut vmm = child("vmm", &envs)?;
        // The good VMM's session comes first, long before the slow handshake's deadline.
        let first = handler.accept_timeout(Duration::from_secs(10));
        let first_at = started.elapsed();
        let session = match first {
            Ok(Some(s)) if s.peer_pid() == vmm.id() => s,
            other => {
                let _ = slow.kill();
                return Err(format!("first accept after {first_at:?} gave {other:?}"));
            }
        };
        if first_at >= limit {
            return Err(format!(
                "the good VMM waited {first_at:?} behind the slow one"
            ));
        }
        let status = wait_for(&mut vmm, Duration::from_secs(30))?;
        if !status.success() {
            return Err(format!("the good VMM failed: {status:?}"));
        }
        session.shutdown().map_err(|e| e.to_string())?;
        // Then the slow one is refused at its whole-handshake deadline, and killed.
        let second = handler.accept_timeout(Duration::from_secs(10));
        let second_at = started.elapsed();
        match second {
            Err(HandshakeError::Refused { pid, reason, .. })
                if pid == slow.id() && matches!(*reason, HandshakeError::Timeout { .. }) => {}
            other => {
                let _ = slow.kill();
                return Err(format!("second accept gave {other:?}"));
            }
        }
        if second_at > limit + Duration::from_secs(2) {
            return Err(format!(
                "the deadline of {limit:?} was enforced only at {second_at:?}"
            ));
        }
        let status = wait_for(&mut slow, Duration::from_secs(5))?;
        if status.signal() != Some(libc::SIGKILL) {
            return Err(format!(
                "the slow VMM ended with {status:?}; expected SIGKILL"
            ));
        }
        Ok(())
    }

    fn bad_handshakes() -> Result<(), String> {
        let dir = temp_dir("bad-hs");
        let snap_path = dir.join("mem.snap");
        std::fs::write(&snap_path, vec![1u8; 16 * ps()]).map_err(|e| e.to_string())?;
        let config = HandlerConfig {
            max_handshake: 64 << 10,
            handshake_timeout: Duration::from_secs(5),
            ..HandlerConfig::new(dir.join("unused.sock"), &snap_path)
        };
        let good_region = format!(
            "[{{\"base_host_virt_addr\":1048576,\"size\":{},\"offset\":0,\"page_size\":{}}}]",
            4 * ps(),
            ps()
        );
        let beyond = format!(
            "[{{\"base_host_virt_addr\":1048576,\"size\":{},\"offset\":0,\"page_size\":{}}}]",
            32 * ps(),
            ps()
        );
        let huge = format!("[{}]", " ".repeat(200 << 10));
        type Expect = fn(&HandshakeError) -> bool;
        let cases: Vec<(&str, String, usize, Expect)> = vec![
            ("malformed", "[}".into(), 1, |e| {
                matches!(e, HandshakeError::Json { .. })
            }),
            ("huge", huge, 1, |e| {
                matches!(e, HandshakeError::TooLarge { .. })
            }),
            ("beyond the file", beyond, 1, |e| {
                matches!(e, HandshakeError::Region { .. })
            }),
            ("missing fd", good_region.clone(), 0, |e| {
                matches!(e, HandshakeError::MissingFd)
            }),
            ("extra fds", good_region.clone(), 3, |e| {
                matches!(e, HandshakeError::ExtraFds { .. })
            }),
            ("closed early", "[{\"size\":".into(), 1, |e| {
                matches!(e, HandshakeError::Closed { .. })
            }),
        ];
        let before = open_fds();
        for (what, payload, nfds, expect) in cases {
            let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
            let sender = std::thread::spawn(move || {
                let files: Vec<std::fs::File> = (0..nfds)
                    .filter_map(|_| std::fs::File::open("/dev/null").ok())
                    .collect();
                let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
                let bytes = payload.as_bytes();
                let first = bytes.len().min(4096);
                let _ = send_with_fds(&theirs, &bytes[..first], &fds);
                let _ = (&theirs).write_all(&bytes[first..]);
                // Hang up: a complete handshake never needs more.
            });
            let got = serve_connection(ours, &config);
            let _ = sender.join();
            match got {
                // The peer is this process: refused, never killed.
                Err(HandshakeError::Refused {
                    killed: false,
                    reason,
                    ..
                }) if expect(&reason) => {}
                Err(e) => return Err(format!("{what}: unexpected error {e:?}")),
                Ok(_) => return Err(format!("{what}: accepted")),
            }
        }
        let after = open_fds();
        if after != before {
            return Err(format!(
                "descriptors leaked: {before} open before, {after} after"
            ));
        }
        Ok(())
    }

    // ---- fork ------------------------------------------------------------------------------

    /// A child forked while a lazy mapping has missing pages reads one of them: it must die
    /// (the mapping is not inherited), never read zeros where the snapshot has data.
    fn fork_child() -> Result<(), String> {
        require_uffd!(
            "a_forked_child_never_reads_wrong_bytes_from_a_lazy_mapping",
            Ok(())
        );
        let pages = 16;
        let pager = Pager::new(
            MemorySource::new(vec![0x61u8; pages * ps()]),
            PagerConfig {
                background: false,
                readahead_max: 0,
                poll_interval: Duration::from_millis(50),
                ..PagerConfig::default()
            },
        );
        let mem = pager.map_lazy(pages * ps(), 0).map_err(|e| e.to_string())?;
        let server = spawn_server(&pager).map_err(|e| e.to_string())?;
        if mem.as_slice()[0] != 0x61 {
            return Err("the parent read a wrong byte".into());
        }
        let (mut r, w) = std::io::pipe().map_err(|e| e.to_string())?;
        let target = mem.as_slice()[3 * ps()..].as_ptr();
        // SAFETY: the child runs only async-signal-safe code (a volatile read, write(2),
        // _exit(2)) before it exits, so forking this multi-threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: `target` points into memory this process mapped (in the parent); if the
            // child does not have it, the read faults with SIGSEGV, which is the point.
            let b = unsafe { std::ptr::read_volatile(target) };
            // SAFETY: writes one byte from a local to a pipe descriptor this process owns.
            let _ = unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&w),
                    (&raw const b).cast(),
                    1,
                )
            };
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        drop(w);
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited != pid {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut r, &mut got);
        match got.first() {
            Some(&b) if b != 0x61 => {
                return Err(format!(
                    "the child read {b:#04x} where the snapshot holds 0x61"
                ));
            }
            Some(_) => {}
            None if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV => {}
            None => return Err(format!("the child ended with status {status:#x}")),
        }
        if mem.as_slice()[3 * ps()] != 0x61 {
            return Err("the parent read a wrong byte after the fork".into());
        }
        pager.request_shutdown();
        server
            .join()
            .map_err(|_| "server panicked".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    // ---- gdb -------------------------------------------------------------------------------

    /// Child role: print "ready", wait for a line on stdin, start the pager, print "serving",
    /// restore 1500 pages one fault at a time and check every byte.
    fn slow_restore() -> ExitCode {
        let pages = 1500;
        let data = snapshot(pages);
        println!("ready");
        let mut line = String::new();
        let _ = BufReader::new(std::io::stdin()).read_line(&mut line);
        let pager = Pager::new(
            // A little while per fetch, so the restore lasts long enough to attach.
            Slow {
                source: MemorySource::new(data.clone()),
                delay: Duration::from_micros(800),
            },
            PagerConfig {
                background: false,
                readahead_max: 0,
                ..PagerConfig::default()
            },
        );
        let mem = pager.map_lazy(pages * ps(), 0).expect("map");
        let server = spawn_server(&pager).expect("server");
        println!("serving");
        let ok = (0..pages)
            .all(|p| mem.as_slice()[p * ps()..(p + 1) * ps()] == data[p * ps()..(p + 1) * ps()]);
        pager.request_shutdown();
        let joined = server.join().map(|r| r.is_ok()).unwrap_or(false);
        if ok && joined && pager.stats().faults == pages as u64 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(5)
        }
    }

    fn gdb_detach(pid: u32) -> Result<(), String> {
        let out = Command::new("gdb")
            .args(["-p", &pid.to_string(), "-batch", "-nx", "-ex", "detach"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "gdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
        Ok(())
    }

    fn gdb_scenario(before: bool) -> Result<(), String> {
        let test = if before {
            "gdb_attach_and_detach_before_the_pager_starts"
        } else {
            "gdb_attach_and_detach_mid_restore"
        };
        require_uffd!(test, Ok(()));
        if !have(test, &["gdb"]) {
            return Ok(());
        }
        let mut c = child("slow-restore", &[])?;
        let pid = c.id();
        let result = (|| {
            if read_line(&mut c)? != "ready" {
                return Err("child did not get ready".to_string());
            }
            if before {
                gdb_detach(pid)?;
            }
            let mut stdin = c.stdin.take().ok_or("no stdin")?;
            writeln!(stdin, "go").map_err(|e| e.to_string())?;
            if read_line(&mut c)? != "serving" {
                return Err("child did not start serving".to_string());
            }
            if !before {
                std::thread::sleep(Duration::from_millis(100));
                gdb_detach(pid)?;
            }
            let status = wait_for(&mut c, Duration::from_secs(60))?;
            if !status.success() {
                return Err(format!("the restore was disturbed: {status:?}"));
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = c.kill();
            let _ = c.wait();
        }
        result
    }

    fn gdb_before() -> Result<(), String> {
        gdb_scenario(true)
    }

    fn gdb_after() -> Result<(), String> {
        gdb_scenario(false)
    }

    pub(super) fn role(role: &str) -> ExitCode {
        match role {
            "failing" => touch_failing(Arc::new(Failing)),
            "hanging" => touch_failing(Arc::new(Hanging)),
            "vmm" => vmm(),
            "dribble" => dribble(),
            "slow-restore" => slow_restore(),
            _ => ExitCode::from(2),
        }
    }
}
