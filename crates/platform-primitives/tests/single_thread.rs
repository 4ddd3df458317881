//! Checks that need a process with no other threads, so this binary runs without the libtest
//! harness (which starts threads before the first test): the single-threaded attestation
//! succeeds, the whole process's descriptor table stays the same size while datagrams with
//! passed descriptors are received, a full descriptor table yields a typed "no pidfd" instead
//! of a negative descriptor, and unmapped memory really leaves the address space.
//!
//! It prints a libtest-style summary line so `cargo xtask ci` counts its checks.

use std::process::ExitCode;

use platform_primitives::threads::PreThreadAttestation;

use workspace_tests::harness::Check;

fn main() -> ExitCode {
    // First, before anything can start a thread.
    let attested = PreThreadAttestation::new()
        .map(|_| ())
        .map_err(|e| e.to_string());

    let mut checks: Vec<(&str, Result<(), String>)> =
        vec![("attestation_succeeds_when_single_threaded", attested)];
    let later: &[Check] = &[
        #[cfg(target_os = "linux")]
        (
            "descriptor_table_does_not_grow",
            linux::descriptor_table_does_not_grow,
        ),
        #[cfg(target_os = "linux")]
        (
            "full_descriptor_table_gives_no_pidfd_not_a_negative_fd",
            linux::full_descriptor_table_gives_no_pidfd_not_a_negative_fd,
        ),
        #[cfg(target_os = "linux")]
        (
            "dropped_mapping_leaves_the_address_space",
            linux::dropped_mapping_leaves_the_address_space,
        ),
        (
            "attestation_fails_once_a_thread_exists",
            attestation_fails_once_a_thread_exists,
        ),
    ];
    for (name, check) in later {
        checks.push((name, check()));
    }

    workspace_tests::harness::report(&checks)
}

fn attestation_fails_once_a_thread_exists() -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    let result = PreThreadAttestation::new();
    drop(tx);
    handle
        .join()
        .map_err(|_| "helper thread panicked".to_owned())?;
    match result {
        Ok(_) => Err("attestation succeeded with two threads".into()),
        Err(e) if e.to_string().contains("multi-threaded") => Ok(()),
        Err(e) => Err(format!("wrong error: {e}")),
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::os::unix::net::UnixDatagram;

    use platform_primitives::creds::{
        BatchConfig, DatagramBatch, Wait, enable_datagram_credentials,
    };
    use platform_primitives::fdpass::send_with_fds;
    use platform_primitives::mem::AnonMapping;

    fn open_fds() -> Result<usize, String> {
        Ok(std::fs::read_dir("/proc/self/fd")
            .map_err(|e| e.to_string())?
            .count())
    }

    pub(crate) fn descriptor_table_does_not_grow() -> Result<(), String> {
        let (rx, tx) = UnixDatagram::pair().map_err(|e| e.to_string())?;
        enable_datagram_credentials(&rx).map_err(|e| e.to_string())?;
        let (r, w) = std::io::pipe().map_err(|e| e.to_string())?;
        let (r, w) = (OwnedFd::from(r), OwnedFd::from(w));
        let mut batch = DatagramBatch::new(BatchConfig::default());
        let before = open_fds()?;
        for round in 0..50 {
            for _ in 0..8 {
                let fds: [BorrowedFd<'_>; 4] = [r.as_fd(), w.as_fd(), r.as_fd(), w.as_fd()];
                send_with_fds(&tx, b"BARRIER=1", &fds).map_err(|e| e.to_string())?;
            }
            let mut seen = 0;
            while seen < 8 {
                seen += batch.recv(&rx, Wait::Block).map_err(|e| e.to_string())?;
                for dgram in batch.drain() {
                    if dgram.closed_fds != 4 || dgram.pidfd.is_none() {
                        return Err(format!("round {round}: {dgram:?}"));
                    }
                }
            }
        }
        let after = open_fds()?;
        if after == before {
            Ok(())
        } else {
            Err(format!("descriptor table grew from {before} to {after}"))
        }
    }

    /// With every descriptor slot taken, the kernel cannot install the sender's pidfd and puts
    /// `-EMFILE` in the `SCM_PIDFD` record. That number is not a descriptor: the datagram must
    /// carry no pidfd and say why (wrapping -24 in an `OwnedFd` aborts debug builds on drop).
    pub(crate) fn full_descriptor_table_gives_no_pidfd_not_a_negative_fd() -> Result<(), String> {
        let (rx, tx) = UnixDatagram::pair().map_err(|e| e.to_string())?;
        let support = enable_datagram_credentials(&rx).map_err(|e| e.to_string())?;
        if !support.pidfd {
            workspace_tests::support::skip(
                "full_descriptor_table_gives_no_pidfd_not_a_negative_fd",
                "no SO_PASSPIDFD on this kernel (Linux >= 6.5 needed)",
            );
            return Ok(());
        }
        let mut batch = DatagramBatch::new(BatchConfig::default());
        let null = OwnedFd::from(std::fs::File::open("/dev/null").map_err(|e| e.to_string())?);
        // Fill the table up to the soft limit (duplicates of one descriptor, all closed below).
        let mut filler = Vec::new();
        loop {
            match null.try_clone() {
                Ok(fd) => filler.push(fd),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => return Err(format!("dup: {e}")),
            }
        }
        let result = (|| {
            tx.send(b"WATCHDOG=1").map_err(|e| e.to_string())?;
            batch.recv(&rx, Wait::Block).map_err(|e| e.to_string())?;
            let dgram = batch.drain().next().ok_or("no datagram")?;
            if dgram.pidfd.is_some() {
                return Err(format!("a pidfd with a full table: {dgram:?}"));
            }
            match dgram.no_pidfd {
                Some(why) if why.errno() == libc::EMFILE => {}
                other => return Err(format!("expected no pidfd (EMFILE), got {other:?}")),
            }
            let text = dgram.no_pidfd.map(|w| w.to_string()).unwrap_or_default();
            if !text.starts_with("no pidfd: ") {
                return Err(format!("message {text:?}"));
            }
            Ok(())
        })();
        drop(filler);
        result?;
        // With room again, the next datagram carries a real pidfd.
        tx.send(b"WATCHDOG=1").map_err(|e| e.to_string())?;
        batch.recv(&rx, Wait::Block).map_err(|e| e.to_string())?;
        let dgram = batch.drain().next().ok_or("no datagram")?;
        match (&dgram.pidfd, dgram.no_pidfd) {
            (Some(_), None) => Ok(()),
            _ => Err(format!("after freeing descriptors: {dgram:?}")),
        }
    }

    pub(crate) fn dropped_mapping_leaves_the_address_space() -> Result<(), String> {
        let map = AnonMapping::aligned(4 << 20, 2 << 20).map_err(|e| e.to_string())?;
        let (start, end) = (map.as_ptr() as usize, map.as_ptr() as usize + map.len());
        if !overlaps(start, end)? {
            return Err("mapping not in /proc/self/maps".into());
        }
        drop(map);
        if overlaps(start, end)? {
            return Err(format!("{start:#x}-{end:#x} still mapped after drop"));
        }
        Ok(())
    }

    fn overlaps(start: usize, end: usize) -> Result<bool, String> {
        let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
        Ok(maps.lines().any(|line| {
            let range = line.split_whitespace().next().unwrap_or("");
            let Some((a, b)) = range.split_once('-') else {
                return false;
            };
            let a = usize::from_str_radix(a, 16).unwrap_or(usize::MAX);
            let b = usize::from_str_radix(b, 16).unwrap_or(0);
            a < end && start < b
        }))
    }
}
