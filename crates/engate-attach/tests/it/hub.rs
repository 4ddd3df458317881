//! The hub's contracts with real threads: the typed lifecycle, exactly-once attach racing a
//! producer at full speed, resume, the four policies, bounded memory, the poll surface, the
//! History check, epochs, metrics and the async stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engate_attach::{
    AttachError, AttachOptions, AttachOutcome, CloseReason, EmitError, Event, Hub, HubConfig,
    Policy, Position, SnapshotKind, TailProvider, channel,
};

use crate::support::{Replica, numbered_chunk};

/// Attaches fresh and returns the live subscriber with a replica built from its snapshot.
fn attach_replica(
    hub: &Hub,
    options: AttachOptions,
) -> (engate_attach::Attach<engate_attach::Live>, Replica) {
    let mut replica = Replica::default();
    let (synced, ()) = hub
        .attach_with(options)
        .subscribe()
        .expect("attach")
        .replay(|s| replica.apply_snapshot(s));
    (synced.live(), replica)
}

/// The `at` of a Resync event (replaying it); panics on anything else.
fn resync_at(event: Event) -> u64 {
    match event {
        Event::Resync(history) => history.replay(|s| s.at()),
        other => panic!("expected a resync, got {other:?}"),
    }
}

fn drain(live: &mut engate_attach::Attach<engate_attach::Live>, replica: &mut Replica) {
    while replica.apply(live.try_next()) {}
}

/// engate-attach 0.1.1's lifecycle contract (its `tests/loom_attach.rs`): Spawned → Subscribed →
/// Synced → Live, with the snapshot
/// taken when subscribing and live items starting exactly at its `at`.
#[test]
fn lifecycle_goes_spawned_subscribed_synced_live() {
    let (mut p, hub) = channel(HubConfig::new().epoch(7), TailProvider::new(1024)).unwrap();
    p.emit(&b"prompt$ "[..]).unwrap();
    let spawned = hub.attach();
    // Output between creating the attach and subscribing belongs to the snapshot.
    p.emit(&b"ls\r\n"[..]).unwrap();
    let subscribed = spawned.subscribe().expect("subscribe");
    assert_eq!(subscribed.outcome(), AttachOutcome::Fresh);
    assert_eq!(subscribed.snapshot().at(), 12);
    assert_eq!(subscribed.snapshot().kind(), SnapshotKind::Suffix);
    // Output after subscribing belongs to the live stream, not the snapshot.
    p.emit(&b"a b c\r\n"[..]).unwrap();
    let (synced, snap) = subscribed.replay(|s| s.bytes().clone());
    assert_eq!(&snap[..], b"prompt$ ls\r\n");
    assert_eq!(synced.position(), Position { epoch: 7, next: 12 });
    let mut live = synced.live();
    match live.try_next() {
        Event::Item(item) => {
            assert_eq!((item.epoch, item.offset), (7, 12));
            assert_eq!(&item.bytes[..], b"a b c\r\n");
        }
        other => panic!("expected the live item, got {other:?}"),
    }
    assert!(matches!(live.try_next(), Event::Empty));
}

/// engate-attach 0.1.1's invariant "every emitted item is observed" (`tests/loom_attach.rs`),
/// made exact: subscribers attaching
/// at staggered moments while the producer emits at full speed each rebuild the journal
/// exactly — no byte missing, none twice.
#[test]
fn every_emitted_byte_is_observed_exactly_once_by_racing_attaches() {
    const CHUNKS: usize = 20_000;
    let journal: Vec<u8> = (0..CHUNKS).flat_map(numbered_chunk).collect();
    let (mut p, hub) = channel(HubConfig::new(), TailProvider::new(journal.len())).unwrap();
    let emitter = std::thread::spawn(move || {
        for i in 0..CHUNKS {
            p.emit(numbered_chunk(i)).expect("emit");
        }
    });
    let readers: Vec<_> = (0..4u64)
        .map(|k| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                // Attach at a different moment each: after 0, 1/4, 1/2, 3/4 of the bytes.
                let mark = k * 40_000;
                while hub.metrics().head < mark && !hub.is_closed() {
                    std::hint::spin_loop();
                }
                let (mut live, mut replica) = attach_replica(&hub, AttachOptions::new());
                while replica.apply(live.next_blocking()) {}
                (replica, live.stats())
            })
        })
        .collect();
    emitter.join().expect("emitter");
    for r in readers {
        let (replica, stats) = r.join().expect("reader");
        assert_eq!(replica.base, 0, "the tail covers the whole journal");
        assert_eq!(
            replica.bytes.len(),
            journal.len(),
            "no byte missing or repeated"
        );
        assert!(replica.bytes == journal, "bytes differ from the journal");
        assert_eq!(stats.duplicates_delivered, 0);
        assert!(replica.closed);
    }
    let m = hub.metrics();
    assert_eq!(
        (m.duplicates_delivered, m.unannounced_gaps),
        (0, 0),
        "{m:?}"
    );
}

#[test]
fn resume_gets_the_exact_suffix_while_it_is_retained() {
    let (mut p, hub) = channel(HubConfig::new().epoch(3), TailProvider::new(4)).unwrap();
    p.emit(&b"abc"[..]).unwrap();
    let (mut live, mut replica) = attach_replica(&hub, AttachOptions::new());
    p.emit(&b"def"[..]).unwrap();
    drain(&mut live, &mut replica);
    let position = live.detach();
    assert_eq!(position, Position { epoch: 3, next: 6 });
    p.emit(&b"ghi"[..]).unwrap();
    p.emit(&b"jk"[..]).unwrap();

    let resumed = hub.attach().resume(position).expect("resume");
    assert_eq!(resumed.outcome(), AttachOutcome::Resumed);
    assert_eq!(resumed.snapshot().kind(), SnapshotKind::Resume);
    assert!(resumed.snapshot().bytes().is_empty(), "nothing to replay");
    let (synced, ()) = resumed.replay(|s| replica.apply_snapshot(s));
    let mut live = synced.live();
    drain(&mut live, &mut replica);
    assert_eq!(replica.bytes, b"abcdefghijk");

    // A resume in the middle of a chunk gets the rest of that chunk.
    let mid = hub
        .attach()
        .resume(Position { epoch: 3, next: 7 })
        .expect("resume");
    let (synced, ()) = mid.replay(|_| ());
    match synced.live().try_next() {
        Event::Item(item) => assert_eq!((item.offset, &item.bytes[..]), (7, &b"hi"[..])),
        other => panic!("expected the rest of the chunk, got {other:?}"),
    }
}

#[test]
fn resume_that_cannot_be_exact_gets_a_stamped_snapshot() {
    let config = HubConfig::new().epoch(10).budget_bytes(4);
    let (mut p, hub) = channel(config, TailProvider::new(16)).unwrap();
    for c in [&b"ab"[..], b"cd", b"ef"] {
        p.emit(c).unwrap();
    }
    // Evicted: offset 1 is gone (the ring holds 2..6).
    let s = hub
        .attach()
        .resume(Position { epoch: 10, next: 1 })
        .unwrap();
    assert_eq!(s.outcome(), AttachOutcome::Evicted { next: 1, tail: 2 });
    assert_eq!(
        (s.snapshot().at(), &s.snapshot().bytes()[..]),
        (6, &b"abcdef"[..])
    );
    let _ = s.replay(|_| ());
    // Another epoch.
    let s = hub.attach().resume(Position { epoch: 9, next: 6 }).unwrap();
    assert_eq!(
        s.outcome(),
        AttachOutcome::EpochChanged {
            asked: 9,
            current: 10
        }
    );
    let _ = s.replay(|_| ());
    // Beyond the head.
    let s = hub
        .attach()
        .resume(Position {
            epoch: 10,
            next: 99,
        })
        .unwrap();
    assert_eq!(s.outcome(), AttachOutcome::Ahead { next: 99, head: 6 });
    assert_eq!(s.snapshot().at(), 6);
    let _ = s.replay(|_| ());
    let m = hub.metrics();
    assert_eq!((m.resumes_exact, m.resumes_refused), (0, 3));
}

/// Emits `n` one-byte chunks past a budget of 8 so that a stalled subscriber falls behind.
fn overrun(
    policy: Policy,
) -> (
    engate_attach::Producer,
    Hub,
    engate_attach::Attach<engate_attach::Live>,
) {
    let config = HubConfig::new().epoch(1).budget_bytes(8);
    let (mut p, hub) = channel(config, TailProvider::new(64)).unwrap();
    p.emit(&b"0123"[..]).unwrap();
    let (live, _) = attach_replica(&hub, AttachOptions::new().policy(policy));
    for i in 0..20u8 {
        p.emit(vec![b'a' + i]).unwrap();
    }
    (p, hub, live)
}

#[test]
fn policy_resync_delivers_a_fresh_snapshot_at_the_head() {
    let (mut p, hub, mut live) = overrun(Policy::Resync);
    match live.try_next() {
        Event::Resync(history) => {
            let s = history.into_snapshot();
            assert_eq!(s.at(), 24);
            assert_eq!(&s.bytes()[..], b"0123abcdefghijklmnopqrst");
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    assert_eq!(live.position().next, 24);
    p.emit(&b"!"[..]).unwrap();
    assert!(matches!(live.try_next(), Event::Item(i) if i.offset == 24));
    assert_eq!(hub.metrics().resyncs, 1);
}

#[test]
fn policy_gap_reports_the_lost_range_and_goes_on_at_the_tail() {
    let (_p, hub, mut live) = overrun(Policy::Gap);
    match live.try_next() {
        Event::Gap { from, to } => assert_eq!((from, to), (4, 16)),
        other => panic!("expected a gap, got {other:?}"),
    }
    match live.try_next() {
        Event::Item(item) => assert_eq!((item.offset, &item.bytes[..]), (16, &b"m"[..])),
        other => panic!("expected the oldest retained item, got {other:?}"),
    }
    let m = hub.metrics();
    assert_eq!((m.gaps, m.gap_bytes), (1, 12));
}

#[test]
fn policy_disconnect_ends_the_subscription() {
    let (_p, hub, mut live) = overrun(Policy::Disconnect);
    let expected = CloseReason::Overrun { at: 4, tail: 16 };
    assert!(matches!(live.try_next(), Event::Closed(r) if r == expected));
    assert!(
        matches!(live.try_next(), Event::Closed(r) if r == expected),
        "repeated"
    );
    let m = hub.metrics();
    assert_eq!(
        (m.disconnects, m.subscribers),
        (1, 0),
        "the slot is freed at once"
    );
}

#[test]
fn policy_block_holds_the_producer_back_and_never_loses() {
    let config = HubConfig::new().epoch(1).budget_bytes(8);
    let (mut p, hub) = channel(config, TailProvider::new(64)).unwrap();
    let options = AttachOptions::new().policy(Policy::Block).read_ahead(2);
    let (mut authority, mut replica) = attach_replica(&hub, options);
    // A second authority is refused by default...
    let err = hub.attach_with(options).subscribe().unwrap_err();
    assert_eq!(err, AttachError::TooManyBlocking { limit: 1 });
    assert!(err.to_string().contains("max_blocking"), "{err}");
    // ...and a bystander with the default policy is not held back by anyone.
    let (mut bystander, _) = attach_replica(&hub, AttachOptions::new());

    for c in [&b"abcd"[..], b"efgh"] {
        p.emit(c).unwrap();
    }
    let err = p.try_emit(&b"ij"[..]).unwrap_err();
    assert_eq!(
        err,
        EmitError::WouldBlock {
            len: 2,
            needed_tail: 4
        }
    );

    // A blocking emit waits until the authority takes "abcd".
    let done = Arc::new(AtomicBool::new(false));
    let emitter = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            for i in 0..40u8 {
                p.emit(vec![b'0' + i % 10; 3]).expect("emit");
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !done.load(Ordering::SeqCst),
        "the producer waits for the authority"
    );
    while replica.apply(authority.next_blocking()) {}
    emitter.join().expect("emitter");
    assert_eq!(
        replica.bytes.len(),
        8 + 40 * 3,
        "the authority lost nothing"
    );
    assert!(replica.gaps.is_empty() && replica.resyncs == 0);
    let m = hub.metrics();
    assert!(m.producer_waits >= 1, "{m:?}");
    assert!(m.retained_bytes <= 8, "{m:?}");
    // The bystander fell behind and converges with its own policy.
    assert_eq!(resync_at(bystander.try_next()), 128);
    // With a higher limit, two authorities are fine.
    let (_p, hub) = channel(HubConfig::new().max_blocking(2), TailProvider::new(8)).unwrap();
    let _a = attach_replica(&hub, options);
    let _b = attach_replica(&hub, options);
}

/// One stalled subscriber must not make memory grow: 64 MiB emitted past a 1 MiB budget.
#[test]
fn a_stalled_subscriber_costs_no_memory() {
    let config = HubConfig::new().budget_bytes(1 << 20);
    let (mut p, hub) = channel(config, TailProvider::new(64 << 10)).unwrap();
    let (mut stalled, _) = attach_replica(&hub, AttachOptions::new());
    let chunk = Bytes::from(vec![b'x'; 4096]);
    for _ in 0..(64 << 20) / 4096 {
        p.emit(chunk.clone()).unwrap();
    }
    let m = hub.metrics();
    assert!(m.retained_bytes <= 1 << 20, "{m:?}");
    assert_eq!(
        m.max_lag_bytes,
        64 << 20,
        "the stalled cursor is 64 MiB behind"
    );
    assert_eq!(m.evicted_bytes, (64 << 20) - (1 << 20));
    assert_eq!(stalled.lag_bytes(), 64 << 20);
    assert_eq!(resync_at(stalled.try_next()), 64 << 20);
    assert_eq!(stalled.lag_bytes(), 0);
}

/// Fan-out shares the producer's bytes: every subscriber's item points at the same memory.
#[test]
fn items_are_references_to_the_emitted_chunk_not_copies() {
    let (mut p, hub) = channel(HubConfig::new(), TailProvider::new(0)).unwrap();
    let (mut a, _) = attach_replica(&hub, AttachOptions::new());
    let (mut b, _) = attach_replica(&hub, AttachOptions::new());
    let chunk = Bytes::from(vec![7u8; 4096]);
    p.emit(chunk.clone()).unwrap();
    for live in [&mut a, &mut b] {
        match live.try_next() {
            Event::Item(item) => assert_eq!(item.bytes.as_ptr(), chunk.as_ptr()),
            other => panic!("expected an item, got {other:?}"),
        }
    }
}

#[test]
fn poll_surface_distinguishes_empty_from_closed() {
    let (mut p, hub) = channel(HubConfig::new(), TailProvider::new(8)).unwrap();
    let (mut live, _) = attach_replica(&hub, AttachOptions::new());
    assert!(matches!(live.try_next(), Event::Empty));
    let t = Instant::now();
    assert!(matches!(
        live.next_timeout(Duration::from_millis(30)),
        Event::Empty
    ));
    assert!(
        t.elapsed() >= Duration::from_millis(25),
        "the timeout waited"
    );
    p.emit(&b"x"[..]).unwrap();
    p.close();
    assert!(
        matches!(live.try_next(), Event::Item(_)),
        "retained bytes come before Closed"
    );
    for _ in 0..3 {
        assert!(matches!(
            live.try_next(),
            Event::Closed(CloseReason::Finished)
        ));
        assert!(matches!(
            live.next_blocking(),
            Event::Closed(CloseReason::Finished)
        ));
    }
    // Attaching after the close still gets the snapshot, then Closed.
    let (mut late, replica) = attach_replica(&hub, AttachOptions::new());
    assert_eq!(replica.bytes, b"x");
    assert!(matches!(
        late.try_next(),
        Event::Closed(CloseReason::Finished)
    ));
}

#[test]
fn a_parked_subscriber_wakes_for_the_emit_and_the_close() {
    let (mut p, hub) = channel(HubConfig::new(), TailProvider::new(8)).unwrap();
    let (mut live, mut replica) = attach_replica(&hub, AttachOptions::new());
    let reader = std::thread::spawn(move || {
        let mut events = 0;
        while replica.apply(live.next_blocking()) {
            events += 1;
        }
        (replica.bytes, events)
    });
    for c in [&b"one "[..], b"two"] {
        std::thread::sleep(Duration::from_millis(20));
        p.emit(c).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    drop(p);
    let (bytes, events) = reader.join().expect("reader");
    assert_eq!(bytes, b"one two");
    assert_eq!(events, 2);
}

#[test]
fn a_history_must_be_replayed() {
    let (_p, hub, mut live) = overrun(Policy::Resync);
    let Event::Resync(history) = live.try_next() else {
        panic!("expected a resync");
    };
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(history)));
    assert_eq!(
        dropped.is_err(),
        cfg!(debug_assertions),
        "panics in debug builds only"
    );
    assert_eq!(hub.metrics().unreplayed_histories, 1);
}

/// Abandoning an attach before replaying detaches it; that is not a consumer bug.
#[test]
fn dropping_a_subscribed_attach_detaches_without_complaint() {
    let (_p, hub) = channel(HubConfig::new(), TailProvider::new(8)).unwrap();
    let subscribed = hub.attach().subscribe().expect("attach");
    assert_eq!(hub.metrics().subscribers, 1);
    drop(subscribed);
    let m = hub.metrics();
    assert_eq!((m.subscribers, m.unreplayed_histories), (0, 0), "{m:?}");
}

#[test]
fn restart_moves_every_subscriber_to_the_new_epoch() {
    let (mut p, hub) = channel(HubConfig::new().epoch(100), TailProvider::new(64)).unwrap();
    p.emit(&b"old life"[..]).unwrap();
    let (mut live, mut replica) = attach_replica(&hub, AttachOptions::new());
    let old = live.position();
    assert_eq!(p.restart(), 101);
    p.emit(&b"new"[..]).unwrap();
    match live.try_next() {
        Event::Resync(h) => h.replay(|s| {
            assert_eq!((s.epoch(), s.at(), &s.bytes()[..]), (101, 3, &b"new"[..]));
            replica.apply_snapshot(s);
        }),
        other => panic!("expected a resync into the new epoch, got {other:?}"),
    }
    let s = hub.attach().resume(old).unwrap();
    assert!(matches!(
        s.outcome(),
        AttachOutcome::EpochChanged {
            asked: 100,
            current: 101
        }
    ));
    let _ = s.replay(|_| ());
}

#[test]
fn metrics_report_lag_attach_latency_and_limits() {
    let config = HubConfig::new().max_subscribers(2);
    let (mut p, hub) = channel(config, TailProvider::new(64 << 10)).unwrap();
    p.emit(vec![1u8; 1000]).unwrap();
    let (mut a, _) = attach_replica(&hub, AttachOptions::new());
    let (_b, _) = attach_replica(&hub, AttachOptions::new());
    let err = hub.attach().subscribe().unwrap_err();
    assert_eq!(err, AttachError::TooManySubscribers { limit: 2 });
    p.emit(vec![2u8; 500]).unwrap();
    assert_eq!(a.lag_bytes(), 500);
    assert!(matches!(a.try_next(), Event::Item(_)));
    assert_eq!(a.lag_bytes(), 0);
    // Delivered bytes reach the hub's counter at the subscriber's next visit to the ring.
    assert!(matches!(a.try_next(), Event::Empty));
    let m = hub.metrics();
    assert_eq!(
        (m.attaches, m.subscribers, m.max_lag_bytes),
        (2, 2, 500),
        "{m:?}"
    );
    assert!(m.attach_latency_max > Duration::ZERO && m.attach_latency_mean <= m.attach_latency_max);
    assert_eq!(m.delivered_bytes, 500);
    assert_eq!(a.stats().items, 1);
}

/// The async surface on a tokio runtime: every item, in order, then the stream ends.
#[test]
fn async_stream_delivers_every_item_then_ends() {
    use futures_core::Stream;
    use std::pin::Pin;

    let (mut p, hub) = channel(HubConfig::new(), TailProvider::new(1 << 20)).unwrap();
    let (mut live, mut replica) = attach_replica(&hub, AttachOptions::new());
    let emitter = std::thread::spawn(move || {
        for i in 0..2000 {
            p.emit(numbered_chunk(i)).unwrap();
            if i.is_multiple_of(500) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Some(event) = tokio::time::timeout_at(
            deadline,
            std::future::poll_fn(|cx| Pin::new(&mut live).poll_next(cx)),
        )
        .await
        .expect("the stream makes progress")
        {
            assert!(
                !matches!(event, Event::Empty),
                "a stream never yields Empty"
            );
            replica.apply(event);
        }
    });
    emitter.join().expect("emitter");
    let journal: Vec<u8> = (0..2000).flat_map(numbered_chunk).collect();
    assert!(replica.closed);
    assert!(replica.bytes == journal);
}
