//! Properties: the parsers never panic on arbitrary bytes, frames round-trip, and the lazy
//! deadline heap decides exactly what an eager scan of every agent would.

use std::time::Duration;

use proptest::prelude::*;
use varta_watch::notify::Notification;
use varta_watch::tracker::{Sender, Tracker, TrackerConfig};
use varta_watch::vlp::{Frame, Status, looks_like_frame};

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

    #[test]
    fn any_32_bytes_decode_or_error_without_panic(bytes in proptest::array::uniform32(any::<u8>())) {
        if let Ok(frame) = Frame::decode(&bytes) {
            // Whatever decodes re-encodes to the same bytes.
            prop_assert_eq!(frame.encode(), bytes);
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

    #[test]
    fn notify_text_parses_lines_independently(
        lines in proptest::collection::vec("[A-Z_]{1,12}=[a-z0-9 ]{0,12}", 1..8)
    ) {
        let text = lines.join("\n");
        // Known keys with odd values are errors; nothing may panic, and STATUS keeps its text.
        if let Ok(n) = Notification::parse(text.as_bytes())
            && let Some(line) = lines.iter().rev().find(|l| l.starts_with("STATUS="))
        {
            prop_assert_eq!(n.status.as_deref(), Some(&line["STATUS=".len()..]));
        }
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
