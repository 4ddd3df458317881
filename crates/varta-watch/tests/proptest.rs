//! Properties: the parsers never panic on arbitrary bytes, frames round-trip, and the lazy
//! deadline heap decides exactly what an eager scan of every agent would.

use std::time::Duration;

use proptest::prelude::*;
use varta_watch::notify::Notification;
use varta_watch::tracker::{Sender, Tracker, TrackerConfig};
use varta_watch::vlp::{Frame, Status, looks_like_frame};

#[path = "support/crc32c.rs"]
mod crc32c;
use crc32c::crc32c;

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Ok),
        Just(Status::Degraded),
        Just(Status::Critical)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..=80)) {
        let _ = Frame::decode(&bytes);
        let _ = Notification::parse(&bytes);
        let _ = looks_like_frame(&bytes);
    }

    /// Frames with a correct header and CRC but any field values: the field checks decide,
    /// and whatever decodes re-encodes to the same bytes. (Random 32-byte strings almost never
    /// pass the CRC, so they are built with a correct one, computed here independently.)
    #[test]
    fn any_fields_with_a_valid_crc_decode_exactly_or_error(
        status in 0u8..6,
        pid in prop_oneof![0u32..4, any::<u32>()],
        timestamp in prop_oneof![Just(u64::MAX), any::<u64>()],
        nonce in prop_oneof![Just(u64::MAX), Just(0u64), any::<u64>()],
        payload in any::<u32>(),
    ) {
        let mut bytes = [0u8; 32];
        bytes[..3].copy_from_slice(b"VA\x02");
        bytes[3] = status;
        bytes[4..8].copy_from_slice(&pid.to_le_bytes());
        bytes[8..16].copy_from_slice(&timestamp.to_le_bytes());
        bytes[16..24].copy_from_slice(&nonce.to_le_bytes());
        bytes[24..28].copy_from_slice(&payload.to_le_bytes());
        let crc = crc32c(&bytes[..28]);
        bytes[28..].copy_from_slice(&crc.to_le_bytes());
        match Frame::decode(&bytes) {
            Ok(frame) => {
                prop_assert!(status <= 2 && pid > 1 && timestamp != u64::MAX);
                prop_assert_eq!(frame.encode(), bytes);
            }
            Err(_) => prop_assert!(
                status > 2
                    || pid <= 1
                    || timestamp == u64::MAX
                    || (nonce == u64::MAX && status != 2),
                "a well-formed frame was refused: {:?}", bytes
            ),
        }
    }

    #[test]
    fn valid_frames_round_trip(
        status in status(),
        pid in 2u32..,
        timestamp in 0u64..u64::MAX,
        nonce in 0u64..u64::MAX,
        payload in any::<u32>(),
    ) {
        let frame = Frame { status, pid, timestamp, nonce, payload };
        prop_assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
    }

    #[test]
    fn one_flipped_bit_never_decodes_as_a_different_valid_frame(
        pid in 2u32..1_000_000, nonce in 1u64..1000, bit in 0usize..256,
    ) {
        let frame = Frame { status: Status::Ok, pid, timestamp: 5, nonce, payload: 9 };
        let mut bytes = frame.encode();
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Frame::decode(&bytes).is_err(), "CRC-32C detects every single-bit error");
    }

    /// Messages of known and unknown keys, with `STATUS=` lines mixed in: the last `STATUS`
    /// line's text is kept, whatever the other lines say (unknown keys are ignored; a known
    /// key with a bad value makes the whole message an error).
    #[test]
    fn notify_text_keeps_the_last_status_line(
        lines in proptest::collection::vec(
            prop_oneof![
                "STATUS=[a-z0-9 ]{0,12}",
                "X_[A-Z]{1,8}=[a-z0-9 ]{0,12}",
                Just("READY=1".to_owned()),
                Just("WATCHDOG=1".to_owned()),
            ],
            1..8,
        )
    ) {
        let text = lines.join("\n");
        let n = Notification::parse(text.as_bytes());
        prop_assert!(n.is_ok(), "{:?}: {:?}", text, n);
        let want = lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("STATUS="));
        let got = n.map(|n| n.status).ok().flatten();
        prop_assert_eq!(got.as_deref(), want);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Beat { pid: u32 },
    Advance { ms: u64 },
    Exit { pid: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (2u32..8).prop_map(|pid| Op::Beat { pid }),
        3 => (0u64..700).prop_map(|ms| Op::Advance { ms }),
        1 => (2u32..8).prop_map(|pid| Op::Exit { pid }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// After every step, an agent is stalled exactly when an eager scan says its silence has
    /// reached its limit: the lazy heap never misses or invents a stall.
    #[test]
    fn lazy_deadlines_match_an_eager_scan(ops in proptest::collection::vec(op(), 1..200)) {
        let timeout = Duration::from_millis(1000);
        let mut t = Tracker::new(TrackerConfig {
            timeout,
            per_agent_limit: None,
            ..TrackerConfig::default()
        });
        let mut now = Duration::ZERO;
        let mut nonces = [0u64; 8];
        // The model: when each live agent last spoke.
        let mut last_beat: std::collections::HashMap<u32, Duration> = Default::default();
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Beat { pid } => {
                    nonces[pid as usize] += 1;
                    let frame = Frame {
                        status: Status::Ok, pid, timestamp: 0,
                        nonce: nonces[pid as usize], payload: 0,
                    };
                    t.on_frame(now, Sender { pid, uid: 0 }, &frame, &mut events);
                    last_beat.insert(pid, now);
                }
                Op::Advance { ms } => now += Duration::from_millis(ms),
                Op::Exit { pid } => {
                    t.on_exit(now, pid, &mut events);
                    last_beat.remove(&pid);
                    nonces[pid as usize] = 0;
                }
            }
            t.expire(now, &mut events);
            prop_assert_eq!(t.len(), last_beat.len());
            for (&pid, &at) in &last_beat {
                let agent = t.agent(pid).expect("tracked");
                let due = now - at >= timeout;
                prop_assert_eq!(agent.is_stalled(), due, "pid {} at {:?}", pid, now);
                prop_assert_eq!(t.silent_for(agent, now), now - at);
            }
        }
    }
}
