//! engate-attach end to end: a real program (`seq 1 200000`) runs in a real pseudo-terminal
//! behind the session server; three clients attach over the Unix socket at different moments
//! (one of them an authority that paces the program), one detaches and re-attaches from its
//! position. Every client must rebuild the program's exact output; the demo prints attach
//! latencies, lag and duplicates delivered (0).
//!
//! Run with `cargo run --release -p engate-attach --example demo` (or `cargo xtask demo`).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engate_attach::session::wire::ServerMsg;
use engate_attach::session::{Applied, SessionClient, SessionConfig, SessionServer, Transcript};
use engate_attach::{HubConfig, Policy};

const LINES: u32 = 200_000;

/// What one client saw.
struct Report {
    name: &'static str,
    transcript: Transcript,
    /// Connect → first (snapshot) message, per connection.
    attach: Vec<Duration>,
    /// Whether each connection's first message was a resume (no bytes to replay).
    resumed: Vec<bool>,
}

/// Connects (resuming if `transcript` has a position) and reads until `stop` says so or the
/// stream closes; returns whether it closed.
fn session(
    socket: &Path,
    policy: Policy,
    report: &mut Report,
    mut stop: impl FnMut(u64) -> bool,
    pace: bool,
) -> Result<bool, Box<dyn Error>> {
    let started = Instant::now();
    let mut client = SessionClient::connect(socket, policy, report.transcript.position())?;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut messages = 0u64;
    loop {
        let msg = client.next_message()?;
        if messages == 0 {
            report.attach.push(started.elapsed());
            report.resumed.push(matches!(
                &msg,
                ServerMsg::Snapshot(s) if s.kind() == engate_attach::SnapshotKind::Resume
            ));
        }
        messages += 1;
        if let Applied::Closed(_) = report.transcript.apply(&msg) {
            return Ok(true);
        }
        if pace && messages.is_multiple_of(8) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if stop(messages) {
            client.detach();
            return Ok(false);
        }
    }
}

fn new_report(name: &'static str) -> Report {
    Report {
        name,
        transcript: Transcript::new(),
        attach: Vec::new(),
        resumed: Vec::new(),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("engate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir.join("session.sock"));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn wait_for_head(hub: &engate_attach::Hub, bytes: u64) {
    while hub.metrics().head < bytes && !hub.is_closed() {
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn run(socket: &PathBuf) -> Result<(), Box<dyn Error>> {
    let expected: Vec<u8> = (1..=LINES)
        .flat_map(|i| format!("{i}\r\n").into_bytes())
        .collect();
    let total = expected.len() as u64;
    let config = SessionConfig::new(socket, "seq")
        .args(["1", &LINES.to_string()])
        .hub(HubConfig::new().budget_bytes(256 << 10))
        .snapshot(engate_attach::session::SnapshotMode::Tail { bytes: 2 << 20 })
        .read_chunk(4096);
    let started = Instant::now();
    let mut server = SessionServer::start(config)?;
    println!(
        "session: `seq 1 {LINES}` in a pty, served at {} (ring budget 256 KiB, 2 MiB tail snapshot)",
        socket.display()
    );

    // Sample the hub's largest subscriber lag while the program runs.
    let done = Arc::new(AtomicBool::new(false));
    let max_lag = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (hub, done, max_lag) = (
            server.hub().clone(),
            Arc::clone(&done),
            Arc::clone(&max_lag),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                max_lag.fetch_max(hub.metrics().max_lag_bytes, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };

    let a = {
        let socket = socket.clone();
        std::thread::spawn(move || -> Result<Report, String> {
            let mut r = new_report("A (authority, Policy::Block, from the start)");
            session(&socket, Policy::Block, &mut r, |_| false, true).map_err(|e| e.to_string())?;
            Ok(r)
        })
    };
    let b = {
        let (socket, hub) = (socket.clone(), server.hub().clone());
        std::thread::spawn(move || -> Result<Report, String> {
            wait_for_head(&hub, total / 4);
            let mut r = new_report("B (attaches at ~25% of the output)");
            session(&socket, Policy::Resync, &mut r, |_| false, false)
                .map_err(|e| e.to_string())?;
            Ok(r)
        })
    };
    let c = {
        let (socket, hub) = (socket.clone(), server.hub().clone());
        std::thread::spawn(move || -> Result<Report, String> {
            wait_for_head(&hub, total / 2);
            let mut r = new_report("C (attaches at ~50%, detaches, re-attaches)");
            let closed = session(&socket, Policy::Resync, &mut r, |n| n >= 40, false)
                .map_err(|e| e.to_string())?;
            if !closed {
                std::thread::sleep(Duration::from_millis(15));
                session(&socket, Policy::Resync, &mut r, |_| false, false)
                    .map_err(|e| e.to_string())?;
            }
            Ok(r)
        })
    };

    let status = server.wait_program()?;
    let reports = [a, b, c].map(|h| h.join().expect("client thread"));
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let elapsed = started.elapsed();
    println!("program exited ({status}) after {elapsed:.2?}; {total} bytes of output\n");

    let mut all_exact = true;
    for report in reports {
        let r = report.map_err(|e| format!("client failed: {e}"))?;
        let exact = r.transcript.base() == 0 && r.transcript.bytes() == expected.as_slice();
        all_exact &= exact && r.transcript.duplicates_delivered() == 0;
        let attaches: Vec<String> = r
            .attach
            .iter()
            .zip(&r.resumed)
            .map(|(d, resumed)| {
                format!(
                    "{d:.2?} ({})",
                    if *resumed { "exact resume" } else { "snapshot" }
                )
            })
            .collect();
        println!("client {}", r.name);
        println!(
            "  rebuilt {} bytes, exact copy of the output: {}; duplicates delivered: {}; \
             resync overlap trimmed: {} bytes; gaps: {}",
            r.transcript.bytes().len(),
            if exact { "yes" } else { "NO" },
            r.transcript.duplicates_delivered(),
            r.transcript.snapshot_overlap_bytes(),
            r.transcript.gaps().len()
        );
        println!("  connect-to-snapshot latency: {}", attaches.join(", "));
    }
    let m = server.hub().metrics();
    println!(
        "\nhub: {} attaches (exact resumes {}, refused resumes {}), attach latency mean {:.2?} \
         max {:.2?}; largest lag seen {} KiB (ring budget 256 KiB); resyncs {}; gaps {}; \
         duplicates delivered {}; unannounced gaps {}; producer waited for the authority {} \
         times ({:.2?})",
        m.attaches,
        m.resumes_exact,
        m.resumes_refused,
        m.attach_latency_mean,
        m.attach_latency_max,
        max_lag.load(Ordering::Relaxed) / 1024,
        m.resyncs,
        m.gaps,
        m.duplicates_delivered,
        m.unannounced_gaps,
        m.producer_waits,
        m.producer_wait,
    );
    server.shutdown();
    if all_exact && m.duplicates_delivered == 0 && m.unannounced_gaps == 0 {
        println!("\nevery client rebuilt the program's exact output, 0 duplicates delivered");
        Ok(())
    } else {
        Err("a client's copy differs from the program's output".into())
    }
}
