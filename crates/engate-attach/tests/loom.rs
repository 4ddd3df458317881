//! Loom models of the attach protocol: every schedule of attach vs emit vs detach vs resume,
//! blocking polls vs emit and close (no lost wake-ups), an authority subscriber holding
//! the producer back vs its detach, and the session server's hand-off of a client's output
//! between the pump and the client's writer thread (no output left behind, one writer at a
//! time).
//!
//! Run with `LOOM_MAX_PREEMPTIONS=2 cargo test --release -p engate-attach --features loom
//! --test loom`. Each model has negative controls — the same scenario with a deliberately
//! wrong shape — that loom must catch: the control passes only by panicking with the model's
//! own message (bytes duplicated, bytes lost) or with loom's deadlock report.
//!
//! Nothing here uses loom's `mpsc`, which does not model a sender hanging up: the emitter is
//! joined and the subscriber drains with non-blocking polls, or parks on the hub's own
//! condition variable, which loom does model.

#![cfg(feature = "loom")]

use std::sync::Arc as StdArc;

use engate_attach::{
    Attach, AttachOptions, AttachOutcome, EmitError, Event, Fault, Handoff, HandoffFault, Hub,
    HubConfig, Live, Policy, Snapshot, SnapshotKind, Subscribed, TailProvider, UnfencedOrder,
    channel,
};
use loom::thread;

/// Runs `f` under loom (see [`workspace_tests::loom_model!`]).
fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    workspace_tests::loom_model!(f);
}

/// Like [`model`], with at least `floor` preemptions: some windows need one more switch than
/// the suite's default bound to be reached.
fn model_with_floor<F>(floor: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    workspace_tests::loom_model!(floor, f);
}

/// The journal every model emits: one byte before the race, two during it.
const JOURNAL: &[u8] = b"abc";

/// A consumer's view of the stream, rebuilt from snapshots and items.
#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
}

impl Screen {
    /// Applies a snapshot: the tail provider in these models keeps the whole journal, so a
    /// suffix snapshot starts at offset 0 and replaces the view; a resume keeps it.
    fn apply(&mut self, s: &Snapshot) {
        match s.kind() {
            SnapshotKind::Suffix => {
                assert_eq!(
                    s.suffix_from(),
                    Some(0),
                    "the tail covers the whole journal"
                );
                self.bytes = s.bytes().to_vec();
            }
            SnapshotKind::Resume => {
                assert_eq!(s.at(), self.bytes.len() as u64, "resumed where it left");
            }
            other => panic!("unexpected snapshot kind {other:?}"),
        }
    }

    /// Applies one event; false once the stream is closed.
    fn event(&mut self, event: Event) -> bool {
        match event {
            Event::Item(item) => {
                self.bytes.extend_from_slice(&item.bytes);
                true
            }
            Event::Resync(history) => {
                history.replay(|s| self.apply(s));
                true
            }
            Event::Gap { from, to } => panic!("no gap expected: {from}..{to}"),
            Event::Empty => true,
            Event::Closed(_) => false,
        }
    }

    fn drain(&mut self, live: &mut Attach<Live>) {
        while self.event(live.try_next()) {}
    }

    /// The subscriber's position must be exactly what the consumer holds.
    fn check_position(&self, next: u64) {
        let held = self.bytes.len() as u64;
        assert!(
            held <= next,
            "duplicated bytes: {held} held at position {next}"
        );
        assert!(held >= next, "lost bytes: {held} held at position {next}");
    }

    fn check(&self) {
        let got = &self.bytes;
        assert!(
            got.len() <= JOURNAL.len(),
            "duplicated bytes: got {:?}, journal {:?}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(JOURNAL)
        );
        assert!(
            got.len() >= JOURNAL.len(),
            "lost bytes: got {:?}, journal {:?}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(JOURNAL)
        );
        assert_eq!(got, JOURNAL);
    }
}

fn hub_with_one_byte(config: HubConfig) -> (engate_attach::Producer, Hub) {
    let (mut producer, hub) = channel(config.epoch(1), TailProvider::new(16)).expect("config");
    producer.emit(&JOURNAL[..1]).expect("emit");
    (producer, hub)
}

/// How the model attaches.
#[derive(Clone, Copy)]
enum Shape {
    Fenced,
    Unfenced(UnfencedOrder),
}

fn subscribe(hub: &Hub, shape: Shape) -> Attach<Subscribed> {
    match shape {
        Shape::Fenced => hub.attach().subscribe().expect("attach"),
        Shape::Unfenced(order) => hub.attach_unfenced(order),
    }
}

/// Attach vs emit vs detach vs resume. The emitter appends "b" and "c" and closes while the
/// main thread attaches (in `shape`), takes one event, detaches, resumes from its position
/// and drains, and a second client attaches (fenced) and drains with blocking polls. Both
/// reconstructions must be the journal exactly.
///
/// With a budget of one byte every emit evicts the previous chunk, so the main client may lag
/// (and get a Resync) and its resume may find its position evicted (and get a snapshot). A
/// later snapshot then repairs what an unfenced attach lost in most schedules; the one that
/// shows the loss (an item delivered past the snapshot before the resume) needs three
/// preemptions, so the evicting variant runs with a floor of three.
fn attach_emit_detach_resume(shape: Shape, budget: usize) {
    let floor = if budget < JOURNAL.len() { 3 } else { 0 };
    model_with_floor(floor, move || {
        let (mut producer, hub) = hub_with_one_byte(HubConfig::new().budget_bytes(budget));
        let emitter = thread::spawn(move || {
            producer.emit(&JOURNAL[1..2]).expect("emit");
            producer.emit(&JOURNAL[2..]).expect("emit");
        });
        let other = {
            let hub = hub.clone();
            thread::spawn(move || {
                let mut screen = Screen::default();
                let (synced, ()) = hub
                    .attach()
                    .subscribe()
                    .expect("attach")
                    .replay(|s| screen.apply(s));
                let mut live = synced.live();
                while screen.event(live.next_blocking()) {}
                screen.check();
            })
        };
        let mut screen = Screen::default();
        let (synced, ()) = subscribe(&hub, shape).replay(|s| screen.apply(s));
        let mut live = synced.live();
        let open = screen.event(live.try_next());
        let position = live.detach();
        screen.check_position(position.next);
        let resumed = hub.attach().resume(position).expect("resume");
        if budget >= JOURNAL.len() {
            assert_eq!(
                resumed.outcome(),
                AttachOutcome::Resumed,
                "nothing is evicted"
            );
        }
        let (synced, ()) = resumed.replay(|s| screen.apply(s));
        let mut live = synced.live();
        emitter.join().expect("emitter");
        if open {
            screen.drain(&mut live);
        }
        screen.check();
        other.join().expect("second client");
        if let Shape::Fenced = shape {
            let m = hub.metrics();
            assert_eq!(
                (m.duplicates_delivered, m.unannounced_gaps),
                (0, 0),
                "{m:?}"
            );
        }
    });
}

#[test]
fn fenced_attach_detach_resume_is_exactly_once_under_all_schedules() {
    attach_emit_detach_resume(Shape::Fenced, 64);
}

#[test]
fn fenced_attach_with_eviction_resyncs_or_resumes_exactly() {
    attach_emit_detach_resume(Shape::Fenced, 1);
}

/// Negative control: subscribe, then snapshot in a separate critical section (what the
/// original crate did). Emits in the window are in both the snapshot and the live stream.
#[test]
#[should_panic(expected = "duplicated bytes")]
fn negative_control_subscribe_then_snapshot_duplicates() {
    attach_emit_detach_resume(Shape::Unfenced(UnfencedOrder::SubscribeThenSnapshot), 64);
}

/// Negative control: snapshot, then subscribe (the order a naive attach takes: output emitted
/// between reading the snapshot and joining the live stream reaches the client by neither).
#[test]
#[should_panic(expected = "lost bytes")]
fn negative_control_snapshot_then_subscribe_loses() {
    attach_emit_detach_resume(Shape::Unfenced(UnfencedOrder::SnapshotThenSubscribe), 64);
}

/// Negative control, evicting ring: the unfenced shape still duplicates.
#[test]
#[should_panic(expected = "duplicated bytes")]
fn negative_control_subscribe_then_snapshot_duplicates_with_eviction() {
    attach_emit_detach_resume(Shape::Unfenced(UnfencedOrder::SubscribeThenSnapshot), 1);
}

/// Negative control, evicting ring: snapshot-before-subscribe still loses.
#[test]
#[should_panic(expected = "lost bytes")]
fn negative_control_snapshot_then_subscribe_loses_with_eviction() {
    attach_emit_detach_resume(Shape::Unfenced(UnfencedOrder::SnapshotThenSubscribe), 1);
}

/// The unfenced shape is repaired by de-duplicating by offset: the consumer side of the
/// contract for producers that cannot fence.
#[test]
fn unfenced_attach_with_offset_dedup_is_exactly_once() {
    model(|| {
        let (mut producer, hub) = hub_with_one_byte(HubConfig::new());
        let emitter = thread::spawn(move || {
            producer.emit(&JOURNAL[1..2]).expect("emit");
            producer.emit(&JOURNAL[2..]).expect("emit");
        });
        let mut dedup = engate_attach::Dedup::new();
        let mut bytes = Vec::new();
        let subscribed = hub.attach_unfenced(UnfencedOrder::SubscribeThenSnapshot);
        let (synced, ()) = subscribed.replay(|s| {
            dedup.snapshot(s);
            bytes.extend_from_slice(s.bytes());
        });
        let mut live = synced.live();
        emitter.join().expect("emitter");
        loop {
            match live.try_next() {
                Event::Item(item) => match dedup.accept(item.epoch, item.offset, &item.bytes) {
                    engate_attach::Accepted::New(b) => bytes.extend_from_slice(b),
                    engate_attach::Accepted::Duplicate => {}
                    other => panic!("unexpected {other:?}"),
                },
                Event::Closed(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(bytes, JOURNAL);
    });
}

/// A subscriber parked in `next_blocking` vs emits and the close: it must see every byte and
/// then `Closed`; a lost wake-up would leave it parked, which loom reports as a deadlock.
fn blocking_poll_sees_every_emit(fault: Option<Fault>) {
    model(move || {
        let (mut producer, hub) = hub_with_one_byte(HubConfig::new());
        if let Some(f) = fault {
            hub.inject_fault(f);
        }
        let (synced, bytes) = hub
            .attach()
            .subscribe()
            .expect("attach")
            .replay(|s| s.bytes().to_vec());
        let mut live = synced.live();
        let reader = thread::spawn(move || {
            let mut screen = Screen { bytes };
            while screen.event(live.next_blocking()) {}
            screen
        });
        producer.emit(&JOURNAL[1..2]).expect("emit");
        producer.emit(&JOURNAL[2..]).expect("emit");
        drop(producer);
        reader.join().expect("reader").check();
    });
}

#[test]
fn blocking_poll_loses_no_wakeup() {
    blocking_poll_sees_every_emit(None);
}

/// Negative control: checking for data and parking in two critical sections.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_check_then_park_loses_a_wakeup() {
    workspace_tests::loom_expect_deadlock_in_child(
        "negative_control_check_then_park_loses_a_wakeup",
        || blocking_poll_sees_every_emit(Some(Fault::LostWakeup)),
    );
}

/// A waker that unparks a loom thread (loom's own `block_on` needs an extra crate feature).
struct NotifyWaker(loom::sync::Notify);

impl std::task::Wake for NotifyWaker {
    fn wake(self: StdArc<Self>) {
        self.0.notify();
    }
}

/// Polls `fut` to completion on the current loom thread, parking between polls.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let notify = StdArc::new(NotifyWaker(loom::sync::Notify::new()));
    let waker = std::task::Waker::from(StdArc::clone(&notify));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        notify.0.wait();
    }
}

/// The async surface: the waker left in `poll_next` is woken by the emit or the close that
/// follows.
#[test]
fn async_stream_loses_no_wakeup() {
    use futures_core::Stream;
    use std::pin::Pin;

    model(|| {
        let (mut producer, hub) = hub_with_one_byte(HubConfig::new());
        let (synced, bytes) = hub
            .attach()
            .subscribe()
            .expect("attach")
            .replay(|s| s.bytes().to_vec());
        let mut live = synced.live();
        let reader = thread::spawn(move || {
            let mut screen = Screen { bytes };
            block_on(async {
                while let Some(event) =
                    std::future::poll_fn(|cx| Pin::new(&mut live).poll_next(cx)).await
                {
                    screen.event(event);
                }
            });
            screen
        });
        producer.emit(&JOURNAL[1..2]).expect("emit");
        drop(producer);
        let screen = reader.join().expect("reader");
        assert_eq!(screen.bytes, &JOURNAL[..2]);
    });
}

/// A ring of two one-byte chunks, with `fault` injected, and an authority subscriber
/// ([`Policy::Block`], one item read ahead) attached from its start.
fn held_back_by_an_authority(fault: Option<Fault>) -> (engate_attach::Producer, Hub, Attach<Live>) {
    let config = HubConfig::new().budget_bytes(2).epoch(1);
    let (producer, hub) = channel(config, TailProvider::new(16)).expect("config");
    if let Some(f) = fault {
        hub.inject_fault(f);
    }
    let options = AttachOptions::new().policy(Policy::Block).read_ahead(1);
    let (synced, ()) = hub
        .attach_with(options)
        .subscribe()
        .expect("attach")
        .replay(|s| assert!(s.bytes().is_empty()));
    (producer, hub, synced.live())
}

/// An authority subscriber ([`Policy::Block`]) in a ring of two one-byte chunks: the producer
/// emits four bytes and must wait for it, never overrunning it; the authority takes one event
/// and detaches, which must release the producer.
fn authority_detach_releases_producer(fault: Option<Fault>) {
    model(move || {
        let (mut producer, hub, mut authority) = held_back_by_an_authority(fault);
        let emitter = thread::spawn(move || {
            for b in b"wxyz" {
                producer.emit(vec![*b]).expect("emit");
            }
        });
        match authority.try_next() {
            Event::Item(item) => assert_eq!((item.offset, &item.bytes[..]), (0, &b"w"[..])),
            Event::Empty => {}
            other => panic!("an authority never lags: {other:?}"),
        }
        drop(authority);
        emitter.join().expect("emitter");
        assert_eq!(hub.metrics().head, 4);
    });
}

#[test]
fn authority_holds_the_producer_back_until_it_detaches() {
    authority_detach_releases_producer(None);
}

/// Negative control: a detach that does not wake the waiting producer.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_detach_without_wakeup_strands_the_producer() {
    workspace_tests::loom_expect_deadlock_in_child(
        "negative_control_detach_without_wakeup_strands_the_producer",
        || authority_detach_releases_producer(Some(Fault::DetachWithoutNotify)),
    );
}

/// A producer that does not wait on the hub but leaves a waker when an authority holds it
/// back (`try_emit_or_wake`, as the session server's poll loop does): each time the authority
/// frees room the waker is woken, so the producer never sleeps through it. The authority
/// takes all four bytes with blocking polls; the producer sleeps on its waker between tries.
fn authority_wakes_a_producer_that_left_a_waker(fault: Option<Fault>) {
    model(move || {
        let (mut producer, _hub, mut authority) = held_back_by_an_authority(fault);
        let emitter = thread::spawn(move || {
            let notify = StdArc::new(NotifyWaker(loom::sync::Notify::new()));
            let waker = std::task::Waker::from(StdArc::clone(&notify));
            for b in b"wxyz" {
                loop {
                    match producer.try_emit_or_wake(vec![*b], &waker) {
                        Ok(_) => break,
                        Err(EmitError::WouldBlock { .. }) => notify.0.wait(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 4 {
            match authority.next_blocking() {
                Event::Item(item) => got.extend_from_slice(&item.bytes),
                other => panic!("an authority never lags: {other:?}"),
            }
        }
        emitter.join().expect("emitter");
        assert_eq!(got, b"wxyz");
    });
}

#[test]
fn a_producer_that_left_a_waker_is_woken_when_room_frees_up() {
    authority_wakes_a_producer_that_left_a_waker(None);
}

/// Negative control: freeing room without waking the producer's waker strands it.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_room_freed_without_the_waker_strands_the_producer() {
    workspace_tests::loom_expect_deadlock_in_child(
        "negative_control_room_freed_without_the_waker_strands_the_producer",
        || authority_wakes_a_producer_that_left_a_waker(Some(Fault::FillWithoutWaker)),
    );
}

/// The session server's hand-off of a client's output between the pump (which writes it
/// without blocking while the client keeps up) and the client's writer thread
/// (`session::handoff`): a counter stands for the hub, a second for what the client was sent.
struct HandoffModel {
    handoff: Handoff,
    emitted: loom::sync::Mutex<u64>,
    sent: loom::sync::Mutex<u64>,
    /// Set while a thread writes the client's output: two at once would interleave frames.
    writing: loom::sync::atomic::AtomicBool,
}

impl HandoffModel {
    fn new(fault: Option<HandoffFault>) -> Self {
        Self {
            handoff: fault.map_or_else(Handoff::owned, Handoff::owned_with_fault),
            emitted: loom::sync::Mutex::new(0),
            sent: loom::sync::Mutex::new(0),
            writing: loom::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sends everything emitted so far.
    fn write(&self) {
        let twice = self
            .writing
            .swap(true, loom::sync::atomic::Ordering::SeqCst);
        assert!(!twice, "two threads write one client's output at once");
        let emitted = *self.emitted.lock().expect("emitted");
        *self.sent.lock().expect("sent") = emitted;
        self.writing
            .store(false, loom::sync::atomic::Ordering::SeqCst);
    }

    /// The pump: emits, then writes the client's output if nobody else is.
    fn emit(&self) {
        *self.emitted.lock().expect("emitted") += 1;
        if self.handoff.offer() {
            loop {
                self.write();
                if !self.handoff.release() {
                    break;
                }
            }
        }
    }

    /// Checks the client was sent everything emitted.
    fn assert_all_sent(&self) {
        let (emitted, sent) = (
            *self.emitted.lock().expect("emitted"),
            *self.sent.lock().expect("sent"),
        );
        assert_eq!(sent, emitted, "output left behind with nobody to write it");
    }

    /// The writer thread, owning the client: catches up, then leaves it to the pump.
    fn catch_up(&self) {
        loop {
            self.write();
            if !self.handoff.release() {
                break;
            }
            self.handoff.hand_over();
        }
    }
}

/// A pump thread that emits twice.
fn pump_twice(m: &loom::sync::Arc<HandoffModel>) -> thread::JoinHandle<()> {
    let m = loom::sync::Arc::clone(m);
    thread::spawn(move || {
        m.emit();
        m.emit();
    })
}

/// The pump emits twice while the writer catches up and lets go: whatever the schedule, the
/// client is sent everything, by one thread at a time.
fn handoff_sends_everything(fault: Option<HandoffFault>) {
    model(move || {
        let m = loom::sync::Arc::new(HandoffModel::new(fault));
        let pump = pump_twice(&m);
        m.catch_up();
        pump.join().expect("pump");
        m.assert_all_sent();
    });
}

#[test]
fn handoff_leaves_no_output_behind() {
    handoff_sends_everything(None);
}

/// Negative control: a driver that lets go without looking whether output came meanwhile.
#[test]
#[should_panic(expected = "output left behind")]
fn negative_control_handoff_release_without_recheck() {
    handoff_sends_everything(Some(HandoffFault::ReleaseWithoutRecheck));
}

/// Negative control: a driver that takes the flag after it has written instead of before.
#[test]
#[should_panic(expected = "output left behind")]
fn negative_control_handoff_clear_after_drain() {
    handoff_sends_everything(Some(HandoffFault::ClearAfterDrain));
}

/// Negative control: neither side fences between its store and its load (loom, like weak
/// hardware, lets both loads read the old values).
#[test]
#[should_panic(expected = "output left behind")]
fn negative_control_handoff_without_fences() {
    handoff_sends_everything(Some(HandoffFault::NoFence));
}

/// The pump's first write finds the socket full and hands the client to the writer, which
/// waits for it (spinning here; a condition variable in the server), catches up and lets go
/// again: whatever the schedule, everything is sent, by one thread at a time.
#[test]
fn handoff_hand_over_and_back_leaves_no_output_behind() {
    model(|| {
        let m = loom::sync::Arc::new(HandoffModel::new(None));
        let pumped = loom::sync::Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let pump = {
            let (m, pumped) = (loom::sync::Arc::clone(&m), loom::sync::Arc::clone(&pumped));
            thread::spawn(move || {
                *m.emitted.lock().expect("emitted") += 1;
                if m.handoff.offer() {
                    // The socket is full: the writer takes over.
                    m.handoff.hand_over();
                }
                m.emit();
                pumped.store(true, loom::sync::atomic::Ordering::SeqCst);
            })
        };
        m.catch_up();
        // Waits for a hand-over until the pump is done (then nothing more can come).
        loop {
            if m.handoff.is_owned() {
                m.catch_up();
            } else if pumped.load(loom::sync::atomic::Ordering::SeqCst) {
                break;
            } else {
                thread::yield_now();
            }
        }
        pump.join().expect("pump");
        if m.handoff.is_owned() {
            m.catch_up();
        }
        m.assert_all_sent();
    });
}

/// The writer lets the client go, then leaves (takes it back for good) while the pump emits:
/// once it has taken the client, the pump never writes to it again.
#[test]
fn handoff_take_excludes_the_pump() {
    model(|| {
        let m = loom::sync::Arc::new(HandoffModel::new(None));
        let pump = pump_twice(&m);
        m.catch_up();
        m.handoff.take();
        m.write();
        pump.join().expect("pump");
    });
}
