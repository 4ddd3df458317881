//! Receiving small datagrams: one `recv` per datagram (the baseline, std's `UnixDatagram`)
//! against one `recvmmsg` per batch with [`DatagramBatch`], without and with kernel-attested
//! credentials and pidfds. Only the receive side is timed; the queue is refilled between
//! timed sections.
//!
//! Verdicts (ratios from this run):
//! - `batch_recv_speedup`: baseline time / batch time for 32 datagrams, target ≥ 1.0;
//! - `attested_recv_rate`: datagrams per second received with credentials and a pidfd each,
//!   target ≥ 250 000 (what varta-watch needs per core), printed beside the ratio to the
//!   unattested batch so the cost of attestation is visible.

use std::hint::black_box;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use platform_primitives::creds::{BatchConfig, DatagramBatch, Wait, enable_datagram_credentials};
use workspace_tests::bench::{Samples, Target, verdict};

const PER_ROUND: usize = 32;
const FRAME: [u8; 32] = [0x56; 32];

/// Per-call timings criterion handed to `iter_custom`, kept to compute verdicts.
static SAMPLES: Samples = Samples::new();

fn pair(attested: bool) -> (UnixDatagram, UnixDatagram) {
    let (rx, tx) = UnixDatagram::pair().expect("socketpair");
    if attested {
        enable_datagram_credentials(&rx).expect("SO_PASSCRED");
    }
    (rx, tx)
}

fn fill(tx: &UnixDatagram) {
    for _ in 0..PER_ROUND {
        tx.send(&FRAME).expect("send");
    }
}

/// Times receiving `PER_ROUND` datagrams `iters` times with `receive`.
fn timed(iters: u64, tx: &UnixDatagram, mut receive: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        fill(tx);
        let t = Instant::now();
        receive();
        total += t.elapsed();
    }
    total
}

fn bench_recv(c: &mut Criterion) {
    let mut group = c.benchmark_group("recv_32_datagrams");

    let (rx, tx) = pair(false);
    group.bench_function("baseline_recv_loop", |b| {
        b.iter_custom(|iters| {
            let mut buf = [0u8; 4096];
            let d = timed(iters, &tx, || {
                for _ in 0..PER_ROUND {
                    black_box(rx.recv(&mut buf).expect("recv"));
                }
            });
            SAMPLES.record("baseline", iters, d)
        })
    });

    let mut batch = DatagramBatch::new(BatchConfig::default());
    group.bench_function("batch", |b| {
        b.iter_custom(|iters| {
            let d = timed(iters, &tx, || {
                let mut got = 0;
                while got < PER_ROUND {
                    got += batch.recv(&rx, Wait::Block).expect("recv");
                    for dgram in batch.drain() {
                        black_box(dgram.data);
                    }
                }
            });
            SAMPLES.record("batch", iters, d)
        })
    });

    let (arx, atx) = pair(true);
    group.bench_function("batch_attested", |b| {
        b.iter_custom(|iters| {
            let d = timed(iters, &atx, || {
                let mut got = 0;
                while got < PER_ROUND {
                    got += batch.recv(&arx, Wait::Block).expect("recv");
                    for dgram in batch.drain() {
                        black_box((dgram.data, dgram.credentials, dgram.pidfd));
                    }
                }
            });
            SAMPLES.record("attested", iters, d)
        })
    });
    group.finish();
}

fn verdicts(_: &mut Criterion) {
    let (baseline, batch, attested) = (
        SAMPLES.median("baseline"),
        SAMPLES.median("batch"),
        SAMPLES.median("attested"),
    );
    let krate = "platform-primitives";
    verdict(
        krate,
        "batch_recv_speedup",
        baseline / batch,
        "x",
        Target::AtLeast(1.0),
    );
    let rate = PER_ROUND as f64 * 1e9 / attested;
    verdict(
        krate,
        "attested_recv_rate",
        rate,
        "datagrams/s",
        Target::AtLeast(250_000.0),
    );
    println!(
        "info: platform-primitives/attestation_cost = {:.2}x the unattested batch time",
        attested / batch
    );
}

criterion_group! {
    name = benches;
    config = workspace_tests::criterion_config!(2, 30);
    targets = bench_recv, verdicts
}
criterion_main!(benches);
