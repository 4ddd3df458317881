//! Interoperability with the original clients: the `varta==0.2.0` Python package from PyPI
//! (installed by `cargo xtask ci` into `target/oracle-venv`) encodes and decodes the same bytes
//! as our codec, and its real client is watched by the real daemon.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use varta_watch::vlp::{Frame, Status};

use crate::crc32c::crc32c;
use crate::support::{Daemon, TempDir, skip};

/// The oracle's Python, if `cargo xtask ci` (or a developer) installed it.
fn oracle() -> Option<PathBuf> {
    let python =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/oracle-venv/bin/python3");
    let ok = Command::new(&python)
        .args(["-c", "import varta; assert varta.__version__ == '0.2.0'"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

fn no_oracle(test: &str) {
    skip(
        test,
        "the varta==0.2.0 Python oracle is not installed (cargo xtask ci installs it into target/oracle-venv)",
    );
}

/// 300 pseudo-random frames: Python encodes what we decode, and decodes what we encode.
#[test]
fn codec_matches_the_python_client_byte_for_byte() {
    let Some(python) = oracle() else {
        return no_oracle("codec interop");
    };
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let frames: Vec<Frame> = (0..300)
        .map(|i| {
            // Every 50th frame is a terminal one, which is only valid with Critical.
            let terminal = i % 50 == 2;
            Frame {
                status: if terminal {
                    Status::Critical
                } else {
                    [Status::Ok, Status::Degraded, Status::Critical][i % 3]
                },
                pid: 2 + (next() % 4_000_000) as u32,
                timestamp: next() % (u64::MAX - 1),
                nonce: if terminal {
                    u64::MAX
                } else {
                    next() % (u64::MAX - 1)
                },
                payload: next() as u32,
            }
        })
        .collect();
    let input: String = frames
        .iter()
        .map(|f| {
            format!(
                "{} {} {} {} {} {}\n",
                [Status::Ok, Status::Degraded, Status::Critical]
                    .iter()
                    .position(|s| *s == f.status)
                    .expect("status"),
                f.pid,
                f.timestamp,
                f.nonce,
                f.payload,
                f.encode()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        })
        .collect();
    // For each line: Python encodes the fields, decodes our bytes, and prints both.
    let script = r#"
import sys
from varta._vlp import encode, decode
for line in sys.stdin:
    st, pid, ts, nonce, payload, ours = line.split()
    theirs = encode(int(st), int(pid), int(ts), int(nonce), int(payload)).hex()
    f = decode(bytes.fromhex(ours))
    print(theirs, int(f.status), f.pid, f.timestamp, f.nonce, f.payload)
"#;
    let dir = TempDir::new("interop");
    let input_path = dir.join("frames.txt");
    std::fs::write(&input_path, input).expect("write frames");
    let out = Command::new(&python)
        .args(["-c", script])
        .stdin(std::fs::File::open(&input_path).expect("open frames"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), frames.len());
    for (frame, line) in frames.iter().zip(lines) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let theirs: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&cols[0][2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(
            theirs,
            frame.encode(),
            "Python encodes {frame:?} differently"
        );
        assert_eq!(Frame::decode(&theirs), Ok(*frame));
        let fields: Vec<u64> = cols[1..]
            .iter()
            .map(|c| c.parse().expect("number"))
            .collect();
        assert_eq!(
            fields,
            [
                fields[0],
                u64::from(frame.pid),
                frame.timestamp,
                frame.nonce,
                u64::from(frame.payload)
            ],
            "Python decodes our bytes differently"
        );
    }
}

/// The Python client's real beats register with the daemon, its CRITICAL beat is reported, and
/// its exit is seen.
#[test]
fn python_client_is_watched_by_the_daemon() {
    let Some(python) = oracle() else {
        return no_oracle("python client");
    };
    let dir = TempDir::new("pyclient");
    let mut d = Daemon::start(&dir, &["--threshold", "5s"]);
    let script = r#"
import sys, time, varta
agent = varta.Varta.connect(sys.argv[1])
for _ in range(5):
    assert agent.beat(varta.Status.OK).kind == "sent"
    time.sleep(0.02)
assert agent.beat(varta.Status.CRITICAL).kind == "sent"
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .arg(&d.socket)
        .spawn()
        .expect("python agent");
    let pid = child.id();
    d.expect_event("registered", pid, Duration::from_secs(10));
    let critical = d.expect_event("critical", pid, Duration::from_secs(10));
    assert!(critical.contains("status_critical"), "{critical}");
    assert!(child.wait().expect("python").success());
    d.expect_event("exited", pid, Duration::from_secs(10));
    assert!(
        !d.seen
            .iter()
            .any(|l| l.contains("auth_failure") || l.contains("\"decode\"")),
        "{:?}",
        d.seen
    );
}

/// Defective frames: Python and we blame the same first defect, in the same decode order.
#[test]
fn both_codecs_reject_the_same_defect_first() {
    use varta_watch::vlp::DecodeError;
    let Some(python) = oracle() else {
        return no_oracle("rejection interop");
    };
    let good = Frame {
        status: Status::Ok,
        pid: 4242,
        timestamp: 7,
        nonce: 9,
        payload: 1,
    }
    .encode();
    let reseal = |mut b: [u8; 32]| {
        let crc = crc32c(&b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        b
    };
    let mut cases: Vec<[u8; 32]> = Vec::new();
    for edit in 0..8 {
        let mut b = good;
        match edit {
            0 => b[1] = b'X',   // magic (and more below)
            1 => b[2] = 1,      // version 0.1
            2 => b[25] ^= 0x10, // crc
            3 => {
                b = reseal({
                    let mut c = b;
                    c[3] = 7;
                    c
                })
            } // status
            4 => {
                b = reseal({
                    let mut c = b;
                    c[3] = 3;
                    c
                })
            } // stall on wire
            5 => {
                b = reseal({
                    let mut c = b;
                    c[4..8].copy_from_slice(&1u32.to_le_bytes());
                    c
                })
            }
            6 => {
                b = reseal({
                    let mut c = b;
                    c[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
                    c
                })
            }
            _ => {
                b = reseal({
                    let mut c = b;
                    c[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
                    c
                })
            }
        }
        cases.push(b);
    }
    // Two defects at once: the earlier check wins (bad version and bad CRC → version).
    let mut both = good;
    both[2] = 9;
    both[20] ^= 1;
    cases.push(both);

    let hex: Vec<String> = cases
        .iter()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .collect();
    let script = r#"
import sys
from varta._vlp import decode, DecodeError
for h in sys.argv[1:]:
    try:
        decode(bytes.fromhex(h)); print("ok")
    except DecodeError as e:
        print(e.kind)
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .args(&hex)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let ours: Vec<&str> = cases
        .iter()
        .map(|b| match Frame::decode(b) {
            Ok(_) => "ok",
            Err(DecodeError::Magic { .. }) => "BadMagic",
            Err(DecodeError::Version { .. }) => "BadVersion",
            Err(DecodeError::Crc { .. }) => "BadCrc",
            Err(DecodeError::Status { .. }) => "BadStatus",
            Err(DecodeError::StallOnWire) => "StallOnWire",
            Err(DecodeError::Pid { .. }) => "BadPid",
            Err(DecodeError::Timestamp) => "BadTimestamp",
            Err(DecodeError::Nonce) => "BadNonce",
            Err(e) => panic!("unexpected {e}"),
        })
        .collect();
    assert_eq!(theirs, ours);
}
