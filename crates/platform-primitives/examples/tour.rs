//! A tour of platform-primitives on real OS parts, with measured figures: a daemon socket bound
//! with its mode in place, a second instance refused, a crashed predecessor's socket recovered,
//! a real `systemd-notify` attested by the kernel with its barrier descriptor closed at once,
//! a burst of attested datagrams received in batches, and the time this machine spent
//! suspended.
//!
//! Run it with `cargo run --release -p platform-primitives --example tour`.

use std::error::Error;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use platform_primitives::clock::ClockSource;
use platform_primitives::creds::{BatchConfig, DatagramBatch, Wait, enable_datagram_credentials};
use platform_primitives::uds::UdsBinder;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("pp-tour-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = tour(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tour(dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let path = dir.join("tour.sock");
    let binder = UdsBinder::new("tour-daemon").mode(0o600);

    // A crashed predecessor: its socket inode stays behind with nobody bound to it.
    drop(UnixDatagram::bind(&path)?);
    let t = Instant::now();
    let daemon = binder.bind_datagram(&path)?;
    let bind_time = t.elapsed();
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    println!(
        "bound {} over a stale socket in {bind_time:?}, mode {mode:o}",
        path.display()
    );

    match binder.bind_datagram(&path) {
        Ok(_) => return Err("a second instance was allowed to bind".into()),
        Err(e) => println!("second instance refused: {e}"),
    }

    let support = enable_datagram_credentials(daemon.socket())?;
    daemon.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut batch = DatagramBatch::new(BatchConfig::default());

    match which("systemd-notify") {
        Some(program) => {
            let t = Instant::now();
            let mut child = Command::new(program)
                .args(["READY=1", "STATUS=touring"])
                .env("NOTIFY_SOCKET", &path)
                .stdin(Stdio::null())
                .spawn()?;
            let child_pid = child.id();
            let mut barrier_seen = false;
            while !barrier_seen {
                batch.recv(daemon.socket(), Wait::Block)?;
                for d in batch.drain() {
                    let text = String::from_utf8_lossy(d.data).replace('\n', " ");
                    let creds = d.credentials.ok_or("no credentials attached")?;
                    println!(
                        "systemd-notify sent {text:?}: kernel says pid {} uid {} (child pid {child_pid}), pidfd {}, {} passed fd(s) closed",
                        creds.pid,
                        creds.uid,
                        if d.pidfd.is_some() {
                            "attached"
                        } else {
                            "absent"
                        },
                        d.closed_fds
                    );
                    barrier_seen |= text.contains("BARRIER=1");
                }
            }
            println!(
                "  (a privileged sender may put another pid in its credentials: systemd-notify run as root names its parent for READY=1)"
            );
            let status = child.wait()?;
            println!(
                "systemd-notify exited {status} after {:?} (a receiver that kept the barrier fd would hold it for 5 s)",
                t.elapsed()
            );
        }
        None => println!("skip: systemd-notify is not installed"),
    }

    // A burst of heartbeat-sized datagrams from another thread, received in batches with
    // credentials and a pidfd on each.
    const BURST: usize = 100_000;
    let sender_path = path.clone();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let tx = UnixDatagram::unbound()?;
        tx.connect(&sender_path)?;
        for _ in 0..BURST {
            tx.send(&[0x56; 32])?;
        }
        Ok(())
    });
    let t = Instant::now();
    let (mut received, mut calls) = (0, 0);
    while received < BURST {
        received += batch.recv(daemon.socket(), Wait::Block)?;
        calls += 1;
        for d in batch.drain() {
            if d.credentials.is_none() {
                return Err("a datagram arrived without credentials".into());
            }
        }
    }
    sender.join().map_err(|_| "sender panicked")??;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "received {received} attested datagrams in {calls} batch calls: {:.0} datagrams/s (pidfds: {})",
        received as f64 / secs,
        support.pidfd
    );

    let mono = ClockSource::Monotonic.now()?;
    let boot = ClockSource::Boottime.now()?;
    println!(
        "time suspended since boot (boottime - monotonic): {:?}",
        boot.as_duration().saturating_sub(mono.as_duration())
    );

    drop(daemon);
    println!("daemon dropped: socket path removed = {}", !path.exists());
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
