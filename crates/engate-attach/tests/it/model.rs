//! proptest: the hub as a state machine against a reference journal, and the wire decoder.
//!
//! Operations are numbered emits, attaches with random policies, detaches, resumes from the
//! last position, polls of random length and stalls (a subscriber that is simply not polled).
//! After every poll each subscriber's rebuilt stream must equal the journal — no duplicate, no
//! gap — except where its policy says a typed Gap or Resync comes, and then exactly there: a
//! Gap from its position to the ring's tail, a Resync stamped at the head with the journal's
//! tail bytes.

use engate_attach::session::wire;
use engate_attach::{
    Attach, AttachOptions, AttachOutcome, CloseReason, Event, Hub, HubConfig, Live, Policy,
    Position, Producer, SnapshotKind, TailProvider, channel,
};
use proptest::prelude::*;

const BUDGET: usize = 48;
const TAIL: usize = 32;

#[derive(Debug, Clone)]
enum Op {
    Emit(usize),
    Attach(Policy),
    Detach(usize),
    Resume(usize),
    Poll { sub: usize, polls: usize },
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::Resync),
        Just(Policy::Gap),
        Just(Policy::Disconnect),
        Just(Policy::Block),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..12).prop_map(Op::Emit),
        1 => policy().prop_map(Op::Attach),
        1 => (0usize..4).prop_map(Op::Detach),
        1 => (0usize..4).prop_map(Op::Resume),
        3 => ((0usize..4), (0usize..6)).prop_map(|(sub, polls)| Op::Poll { sub, polls }),
    ]
}

/// A subscriber under test and what the model knows about it.
struct Sub {
    live: Option<Attach<Live>>,
    policy: Policy,
    /// Stream bytes `base..base + held.len()` as the subscriber rebuilt them.
    base: u64,
    held: Vec<u8>,
    left_at: Option<Position>,
    closed: bool,
}

struct Harness {
    producer: Producer,
    hub: Hub,
    journal: Vec<u8>,
    subs: Vec<Sub>,
}

impl Harness {
    fn new() -> Self {
        let config = HubConfig::new()
            .epoch(1)
            .budget_bytes(BUDGET)
            .max_blocking(4);
        let (producer, hub) = channel(config, TailProvider::new(TAIL)).expect("config");
        Self {
            producer,
            hub,
            journal: Vec::new(),
            subs: Vec::new(),
        }
    }

    fn tail(&self) -> u64 {
        self.hub.metrics().tail
    }

    fn head(&self) -> u64 {
        self.journal.len() as u64
    }

    /// The journal's last `TAIL` bytes before `at`.
    fn tail_bytes(&self, at: u64) -> &[u8] {
        let at = at as usize;
        &self.journal[at.saturating_sub(TAIL)..at]
    }

    fn position_of(&self, i: usize) -> u64 {
        let s = &self.subs[i];
        s.base + s.held.len() as u64
    }

    fn emit(&mut self, len: usize) -> Result<(), TestCaseError> {
        let start = self.journal.len();
        let chunk: Vec<u8> = (start..start + len).map(|i| (i % 251) as u8).collect();
        // A blocking subscriber that has not taken what the append would evict holds the
        // producer back: the single-threaded model polls it first, as a real one would.
        loop {
            match self.producer.try_emit(chunk.clone()) {
                Ok(offset) => {
                    prop_assert_eq!(offset, start as u64);
                    break;
                }
                Err(engate_attach::EmitError::WouldBlock { .. }) => {
                    let blocking: Vec<usize> = (0..self.subs.len())
                        .filter(|&i| {
                            let s = &self.subs[i];
                            s.policy == Policy::Block && s.live.is_some() && !s.closed
                        })
                        .collect();
                    prop_assert!(
                        !blocking.is_empty(),
                        "WouldBlock without a blocking subscriber"
                    );
                    let before: Vec<u64> = blocking.iter().map(|&i| self.position_of(i)).collect();
                    for &i in &blocking {
                        self.poll(i, 1)?;
                    }
                    let after: Vec<u64> = blocking.iter().map(|&i| self.position_of(i)).collect();
                    prop_assert!(
                        before != after,
                        "WouldBlock but every blocking subscriber is caught up"
                    );
                }
                Err(e) => return Err(TestCaseError::fail(format!("emit: {e}"))),
            }
        }
        self.journal.extend_from_slice(&chunk);
        let m = self.hub.metrics();
        prop_assert!(m.retained_bytes <= BUDGET, "over budget: {:?}", m);
        Ok(())
    }

    fn attach(&mut self, policy: Policy, resume: Option<Position>) -> Result<Sub, TestCaseError> {
        let head = self.head();
        let tail = self.tail();
        let attach = self
            .hub
            .attach_with(AttachOptions::new().policy(policy).read_ahead(2));
        let subscribed = match resume {
            Some(p) => attach.resume(p),
            None => attach.subscribe(),
        }
        .map_err(|e| TestCaseError::fail(format!("attach: {e}")))?;
        let mut sub = Sub {
            live: None,
            policy,
            base: 0,
            held: Vec::new(),
            left_at: None,
            closed: false,
        };
        match (resume, subscribed.outcome()) {
            (Some(p), AttachOutcome::Resumed) => {
                prop_assert!(
                    p.next >= tail && p.next <= head,
                    "resumed an unretained position"
                );
                sub.base = p.next;
            }
            (Some(p), AttachOutcome::Evicted { next, tail: t }) => {
                prop_assert_eq!((next, t), (p.next, tail));
                prop_assert!(p.next < tail);
            }
            (None, AttachOutcome::Fresh) => {}
            (r, o) => return Err(TestCaseError::fail(format!("outcome {o:?} for {r:?}"))),
        }
        let (synced, ()) = subscribed.replay(|s| {
            if s.kind() == SnapshotKind::Suffix {
                sub.base = s.suffix_from().unwrap_or(0);
                sub.held = s.bytes().to_vec();
            }
        });
        let at = synced.position().next;
        prop_assert_eq!(sub.base + sub.held.len() as u64, at);
        if sub.held.is_empty() && resume.is_some_and(|p| p.next == at) {
            // An exact resume: nothing replayed.
        } else {
            prop_assert_eq!(at, head, "a snapshot is stamped at the head");
            prop_assert_eq!(
                &sub.held[..],
                self.tail_bytes(at),
                "the snapshot is the tail"
            );
        }
        sub.live = Some(synced.live());
        Ok(sub)
    }

    fn poll(&mut self, i: usize, polls: usize) -> Result<(), TestCaseError> {
        let (head, tail) = (self.head(), self.tail());
        let journal = self.journal.clone();
        let Some(sub) = self.subs.get_mut(i) else {
            return Ok(());
        };
        let Some(live) = sub.live.as_mut() else {
            return Ok(());
        };
        if sub.closed {
            return Ok(());
        }
        for _ in 0..polls {
            let pos = sub.base + sub.held.len() as u64;
            prop_assert_eq!(live.position().next, pos);
            match live.try_next() {
                Event::Item(item) => {
                    prop_assert_eq!(item.offset, pos, "item exactly at the position");
                    let end = item.offset as usize + item.bytes.len();
                    prop_assert_eq!(&item.bytes[..], &journal[item.offset as usize..end]);
                    sub.held.extend_from_slice(&item.bytes);
                }
                Event::Gap { from, to } => {
                    prop_assert_eq!(sub.policy, Policy::Gap, "a gap only under Policy::Gap");
                    prop_assert_eq!((from, to), (pos, tail), "gap from the position to the tail");
                    prop_assert!(from < to);
                    sub.base = to;
                    sub.held.clear();
                }
                Event::Resync(history) => {
                    prop_assert!(
                        matches!(sub.policy, Policy::Resync),
                        "resync only under Policy::Resync"
                    );
                    prop_assert!(pos < tail, "resync only when behind the tail");
                    let s = history.into_snapshot();
                    prop_assert_eq!(s.at(), head, "stamped at the head");
                    let want = &journal[(head as usize).saturating_sub(TAIL)..head as usize];
                    prop_assert_eq!(&s.bytes()[..], want);
                    sub.base = s.suffix_from().unwrap_or(0);
                    sub.held = s.bytes().to_vec();
                }
                Event::Closed(reason) => {
                    prop_assert_eq!(sub.policy, Policy::Disconnect);
                    prop_assert_eq!(reason, CloseReason::Overrun { at: pos, tail });
                    prop_assert!(pos < tail);
                    sub.closed = true;
                    break;
                }
                Event::Empty => {
                    prop_assert_eq!(pos, head, "Empty only when caught up");
                    break;
                }
            }
            // Whatever the subscriber holds is exactly the journal there.
            let b = sub.base as usize;
            prop_assert_eq!(&sub.held[..], &journal[b..b + sub.held.len()]);
        }
        Ok(())
    }

    fn run(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Emit(len) => self.emit(len),
            Op::Attach(policy) => {
                if self.subs.len() < 4 {
                    let sub = self.attach(policy, None)?;
                    self.subs.push(sub);
                }
                Ok(())
            }
            Op::Detach(i) => {
                if let Some(sub) = self.subs.get_mut(i)
                    && let Some(live) = sub.live.take()
                {
                    sub.left_at = Some(live.detach());
                }
                Ok(())
            }
            Op::Resume(i) => {
                let Some(sub) = self.subs.get(i) else {
                    return Ok(());
                };
                let (Some(at), None, false) = (sub.left_at, sub.live.as_ref(), sub.closed) else {
                    return Ok(());
                };
                let (policy, base, held) = (sub.policy, sub.base, sub.held.clone());
                let mut fresh = self.attach(policy, Some(at))?;
                if fresh.base == at.next {
                    // Exact resume: the subscriber keeps what it held.
                    fresh.base = base;
                    fresh.held = held;
                }
                self.subs[i] = fresh;
                Ok(())
            }
            Op::Poll { sub, polls } => self.poll(sub, polls),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn rebuilt_streams_equal_the_journal_or_see_the_typed_loss(ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness::new();
        for op in ops {
            h.run(op)?;
        }
        // Drain everyone at the end: caught-up subscribers hold exactly the journal's end.
        for i in 0..h.subs.len() {
            h.poll(i, 64)?;
        }
        let head = h.head();
        for s in &h.subs {
            if s.live.is_some() && !s.closed {
                prop_assert_eq!(s.base + s.held.len() as u64, head);
            }
        }
        let m = h.hub.metrics();
        prop_assert_eq!((m.duplicates_delivered, m.unannounced_gaps), (0, 0));
    }

    #[test]
    fn wire_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = wire::decode_server(&bytes);
        let _ = wire::decode_client(&bytes);
    }

    #[test]
    fn wire_decoding_never_panics_on_the_terminal_frames(
        tag in prop::sample::select(vec![b'T', b'P', b'D', b'H']),
        rest in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&rest);
        let _ = wire::decode_server(&bytes);
        let _ = wire::decode_client(&bytes);
    }

    #[test]
    fn wire_hellos_and_positions_roundtrip(
        policy in prop::sample::select(vec![
            engate_attach::Policy::Resync,
            engate_attach::Policy::Gap,
            engate_attach::Policy::Disconnect,
            engate_attach::Policy::Block,
        ]),
        resume in proptest::option::of((any::<u64>(), any::<u64>())),
        keys in 0u8..4,
        detach: u8,
        epoch: u64,
        next: u64,
    ) {
        let terminal = match keys {
            0 => None,
            1 => Some(wire::Keys::Sent),
            k => Some(wire::Keys::Read { detach, read_only: k == 3 }),
        };
        let resume = resume.map(|(epoch, next)| engate_attach::Position { epoch, next });
        let hello = wire::ClientMsg::Hello { policy, resume, terminal };
        let mut buf = Vec::new();
        wire::encode_client(&hello, &mut buf);
        prop_assert_eq!(wire::decode_client(&buf), Ok(Some((hello, buf.len()))));
        for cut in 0..buf.len() {
            prop_assert_eq!(wire::decode_client(&buf[..cut]), Ok(None));
        }
        let shown = wire::ServerMsg::Shown(engate_attach::Position { epoch, next });
        let mut buf = Vec::new();
        wire::encode_server(&shown, &mut buf);
        prop_assert_eq!(wire::decode_server(&buf), Ok(Some((shown, buf.len()))));
    }

    #[test]
    fn wire_items_roundtrip(epoch: u64, offset in 0u64..u64::MAX / 2, payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let msg = wire::ServerMsg::Item(engate_attach::Item { epoch, offset, bytes: payload.into() });
        let mut buf = Vec::new();
        wire::encode_server(&msg, &mut buf);
        prop_assert_eq!(wire::decode_server(&buf), Ok(Some((msg, buf.len()))));
    }
}
