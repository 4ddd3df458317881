//! Async single-flight loads and rebuilds: one build per key however many tasks wait, on a
//! real tokio runtime with the builds on its blocking pool; dropped leaders and joiners (a
//! dropped rebuild included); rebuilds racing loads; the build context's cancellation signal.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use sqry_admission::{
    BuildError, Cancelled, EntryState, Handle, LoadError, LoadOptions, PublishHook, ReserveRequest,
};

use crate::support::{assert_join_timed_out, assert_ledger_back_to, blob, key, load, manager};

/// Counts publishes (every successful load publishes once).
#[derive(Default)]
struct Publishes(AtomicUsize);

impl PublishHook<String, Vec<u8>> for Publishes {
    fn on_publish(&self, _key: &String, _value: &Handle<Vec<u8>>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A small deterministic generator, so each client asks for its own sequence of indexes.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

/// The daemon: 24 indexes, a budget a third of their total, 48 clients × 30 queries,
/// builds on tokio's blocking pool. Every build is used: builds == publishes, no publish
/// replaced a version (a duplicate build of a cold key would), no finished build was lost to
/// an eviction, and every query was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_builds_each_cold_miss_once_and_loses_no_finished_build() {
    const INDEXES: u64 = 24;
    const SIZE: usize = 32 << 10;
    const CLIENTS: u64 = 48;
    const QUERIES: usize = 30;
    let m = manager(INDEXES * SIZE as u64 / 3);
    let publishes = Arc::new(Publishes::default());
    m.set_hook(Arc::clone(&publishes) as Arc<dyn PublishHook<String, Vec<u8>>>);
    let builds = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (m, builds, finished) = (m.clone(), Arc::clone(&builds), Arc::clone(&finished));
            tokio::spawn(async move {
                let mut rng = client + 1;
                let mut answered = 0;
                for _ in 0..QUERIES {
                    let k = key(&format!("index-{}", next(&mut rng) % INDEXES));
                    let options = LoadOptions::new(SIZE as u64).request(
                        ReserveRequest::new(SIZE as u64).wait_for(Duration::from_secs(30)),
                    );
                    let (builds, finished) = (Arc::clone(&builds), Arc::clone(&finished));
                    let index = m
                        .get_or_load_async(&k, options, |_ctx| async move {
                            builds.fetch_add(1, Ordering::Relaxed);
                            let value = tokio::task::spawn_blocking(move || {
                                std::thread::sleep(Duration::from_millis(2));
                                blob(SIZE)
                            })
                            .await?;
                            finished.fetch_add(1, Ordering::Relaxed);
                            Ok(value)
                        })
                        .await
                        .unwrap_or_else(|e| panic!("query for {k}: {e}"));
                    assert_eq!(index.len(), SIZE);
                    tokio::task::yield_now().await;
                    drop(index);
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for c in clients {
        answered += c.await.expect("client");
    }
    let builds = builds.load(Ordering::Relaxed);
    let finished = finished.load(Ordering::Relaxed);
    let published = publishes.0.load(Ordering::Relaxed);
    let metrics = m.ledger().metrics();
    eprintln!(
        "daemon: {answered} queries, {builds} builds, {published} publishes, {} admission evictions",
        metrics.evictions.admission
    );
    assert_eq!(answered, CLIENTS as usize * QUERIES);
    assert!(
        builds > INDEXES as usize / 3,
        "the budget forced reloads: {builds}"
    );
    assert_eq!(finished, builds, "every build finished");
    assert_eq!(published, finished, "no finished build was lost");
    assert_eq!(metrics.replaced, 0, "no cold key was built twice");
    let s = m.ledger().snapshot();
    assert!(s.high_water <= s.limit, "{s}");
    assert_eq!((s.reserved, s.queue_depth), (0, 0), "{s}");
}

/// The leader's future is dropped mid-build while a joiner waits: the leader's reservation is
/// refunded, the entry does not stay `Loading`, and the joiner takes the gate and loads.
#[tokio::test(flavor = "current_thread")]
async fn dropping_the_leader_hands_the_load_to_a_joiner() {
    let m = manager(10_000);
    let k = key("k");
    let started = Arc::new(tokio::sync::Notify::new());
    let leader = tokio::spawn({
        let (m, k, started) = (m.clone(), k.clone(), Arc::clone(&started));
        async move {
            m.get_or_load_async(&k, LoadOptions::new(1_000), |_ctx| async move {
                started.notify_one();
                std::future::pending::<()>().await;
                Ok(blob(1_000))
            })
            .await
        }
    });
    started.notified().await;
    assert_eq!(m.state(&k), Some(EntryState::Loading));
    assert_eq!(m.ledger().snapshot().reserved, 1_000);
    let joiner = tokio::spawn({
        let (m, k) = (m.clone(), k.clone());
        async move {
            m.get_or_load_async(
                &k,
                LoadOptions::new(1_000),
                |_ctx| async move { Ok(blob(800)) },
            )
            .await
            .map(|h| h.len())
        }
    });
    tokio::task::yield_now().await;
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    let len = tokio::time::timeout(Duration::from_secs(5), joiner)
        .await
        .expect("the joiner did not hang")
        .expect("task")
        .expect("the joiner loaded");
    assert_eq!(len, 800);
    assert_eq!(m.state(&k), Some(EntryState::Loaded));
    let s = m.ledger().snapshot();
    assert_eq!((s.reserved, s.loaded), (0, 800), "{s}");
    let status = m.status();
    assert_eq!(
        status.entries[0].retry_count, 0,
        "cancelling is not failing"
    );
}

/// A dropped leader with nobody waiting leaves the entry as it was and nothing reserved.
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_lone_leader_leaks_nothing() {
    let m = manager(10_000);
    let k = key("k");
    let load = m.get_or_load_async(&k, LoadOptions::new(1_000), |_ctx| async move {
        std::future::pending::<()>().await;
        Ok(blob(1_000))
    });
    let outcome = tokio::time::timeout(Duration::from_millis(20), load).await;
    assert!(outcome.is_err(), "the build never finishes");
    assert_eq!(m.state(&k), Some(EntryState::Unloaded));
    assert_eq!(m.ledger().snapshot().total(), 0);
    // The gate is open again.
    let v = m
        .get_or_load_async(
            &k,
            LoadOptions::new(1_000),
            |_ctx| async move { Ok(blob(10)) },
        )
        .await
        .expect("loads");
    assert_eq!(v.len(), 10);
}

/// A dropped joiner leaves the leader's load alone.
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_joiner_leaves_the_load_alone() {
    let m = manager(10_000);
    let k = key("k");
    let release = Arc::new(tokio::sync::Notify::new());
    let leader = tokio::spawn({
        let (m, k, release) = (m.clone(), k.clone(), Arc::clone(&release));
        async move {
            m.get_or_load_async(&k, LoadOptions::new(1_000), |_ctx| async move {
                release.notified().await;
                Ok(blob(500))
            })
            .await
            .map(|h| h.len())
        }
    });
    tokio::task::yield_now().await;
    let joined = tokio::time::timeout(
        Duration::from_millis(20),
        m.get_or_load_async(
            &k,
            LoadOptions::new(1_000),
            |_ctx| async move { Ok(blob(1)) },
        ),
    )
    .await;
    assert!(joined.is_err(), "the joiner was still waiting");
    release.notify_one();
    assert_eq!(leader.await.expect("task").expect("loads"), 500);
    let s = m.ledger().snapshot();
    assert_eq!((s.reserved, s.loaded), (0, 500), "{s}");
}

/// A builder racing its work against the cancellation signal stops when the entry is
/// unloaded mid-build, and learns why; nothing is published or left reserved.
#[tokio::test(flavor = "current_thread")]
async fn unloading_mid_build_cancels_the_build_context() {
    let m = manager(10_000);
    let k = key("k");
    let seen = Arc::new(parking_lot::Mutex::new(None));
    let load = tokio::spawn({
        let (m, k, seen) = (m.clone(), k.clone(), Arc::clone(&seen));
        async move {
            m.get_or_load_async(&k, LoadOptions::new(1_000), |ctx| async move {
                tokio::select! {
                    why = ctx.cancellation() => {
                        *seen.lock() = Some(why);
                        Err(format!("stopped: {why}").into())
                    }
                    () = tokio::time::sleep(Duration::from_secs(30)) => Ok(blob(1_000)),
                }
            })
            .await
        }
    });
    tokio::task::yield_now().await;
    assert_eq!(m.state(&k), Some(EntryState::Loading));
    assert!(m.unload(&k));
    let err = tokio::time::timeout(Duration::from_secs(5), load)
        .await
        .expect("the build stopped")
        .expect("task")
        .expect_err("nothing published");
    assert!(matches!(err, LoadError::Build { .. }), "{err:?}");
    assert_eq!(*seen.lock(), Some(Cancelled::Unloaded));
    assert_eq!(m.ledger().snapshot().total(), 0);
}

/// Unloads its key on the first publish it sees (an eviction right after a load).
struct UnloadOnFirstPublish {
    manager: sqry_admission::WeakManager<String, Vec<u8>>,
    done: std::sync::atomic::AtomicBool,
}

impl PublishHook<String, Vec<u8>> for UnloadOnFirstPublish {
    fn on_publish(&self, key: &String, _value: &Handle<Vec<u8>>) {
        if !self.done.swap(true, Ordering::AcqRel)
            && let Some(m) = self.manager.upgrade()
        {
            m.unload(key);
        }
    }
}

/// A joiner whose entry was evicted right after the load it joined published (the daemon's
/// budget does this all the time) looks the key up again and loads it, instead of failing
/// with `EvictedMidLoad`.
#[tokio::test(flavor = "current_thread")]
async fn a_joiner_whose_entry_was_evicted_after_the_load_looks_again() {
    let m = manager(10_000);
    m.set_hook(Arc::new(UnloadOnFirstPublish {
        manager: m.downgrade(),
        done: std::sync::atomic::AtomicBool::new(false),
    }));
    let k = key("k");
    let release = Arc::new(tokio::sync::Notify::new());
    let leader = tokio::spawn({
        let (m, k, release) = (m.clone(), k.clone(), Arc::clone(&release));
        async move {
            m.get_or_load_async(&k, LoadOptions::new(100), |_ctx| async move {
                release.notified().await;
                Ok(blob(100))
            })
            .await
            .map(|h| h.len())
        }
    });
    tokio::task::yield_now().await;
    let joiner = tokio::spawn({
        let (m, k) = (m.clone(), k.clone());
        async move {
            m.get_or_load_async(
                &k,
                LoadOptions::new(100),
                |_ctx| async move { Ok(blob(60)) },
            )
            .await
            .map(|h| h.len())
        }
    });
    tokio::task::yield_now().await;
    // The leader publishes and its hook unloads the key before the joiner runs again.
    release.notify_one();
    assert_eq!(leader.await.expect("task").expect("loads"), 100);
    let joined = joiner.await.expect("task");
    assert_eq!(joined.expect("looked the key up again and loaded it"), 60);
    assert_eq!(m.ledger().snapshot().reserved, 0);
}

/// An async builder awaiting a load of its own key gets `SelfJoin` instead of waiting for
/// itself for ever.
#[tokio::test(flavor = "current_thread")]
async fn an_async_builder_loading_its_own_key_gets_an_error() {
    let m = manager(10_000);
    let k = key("k");
    let inner = Arc::new(parking_lot::Mutex::new(None));
    let outer = tokio::time::timeout(
        Duration::from_secs(5),
        m.get_or_load_async(&k, LoadOptions::new(100), |ctx| {
            let (m, inner) = (m.clone(), Arc::clone(&inner));
            async move {
                let nested = m
                    .get_or_load_async(ctx.key(), LoadOptions::new(100), |_| async { Ok(blob(1)) })
                    .await;
                *inner.lock() = Some(nested.map(|h| h.len()));
                Ok(blob(10))
            }
        }),
    )
    .await
    .expect("no self-wait");
    assert_eq!(outer.expect("the outer load publishes").len(), 10);
    let inner = inner.lock().take().expect("the builder ran");
    assert!(
        matches!(inner, Err(LoadError::SelfJoin { .. })),
        "{inner:?}"
    );
}

/// Many tasks load eight keys through a budget for three, each giving up after a random
/// short time (dropping leaders and joiners mid-build and mid-admission). Afterwards no entry
/// is left `Loading`, nothing is reserved or queued, the budget was never exceeded, and once
/// every key is unloaded the ledger is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_async_loads_never_leak_or_leave_an_entry_loading() {
    const SIZE: u64 = 1_000;
    let m = manager(3 * SIZE);
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let m = m.clone();
            tokio::spawn(async move {
                let mut rng = t * 7 + 3;
                let mut served = 0u32;
                for _ in 0..150 {
                    let k = key(&format!("k{}", next(&mut rng) % 8));
                    let give_up = Duration::from_micros(next(&mut rng) % 3_000);
                    let build_for = Duration::from_micros(next(&mut rng) % 2_000);
                    let options = LoadOptions::new(SIZE)
                        .request(ReserveRequest::new(SIZE).wait_for(Duration::from_millis(50)));
                    let load = m.get_or_load_async(&k, options, move |_ctx| async move {
                        tokio::task::spawn_blocking(move || {
                            std::thread::sleep(build_for);
                            blob(SIZE as usize)
                        })
                        .await
                        .map_err(Into::into)
                    });
                    if let Ok(Ok(h)) = tokio::time::timeout(give_up, load).await {
                        served += 1;
                        drop(h);
                    }
                    let s = m.ledger().snapshot();
                    assert!(s.total() <= s.limit, "{s}");
                }
                served
            })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        served += t.await.expect("task");
    }
    for i in 0..8 {
        let state = m.state(&key(&format!("k{i}")));
        assert!(
            !matches!(state, Some(EntryState::Loading | EntryState::Rebuilding)),
            "k{i} left {state:?}"
        );
    }
    let s = m.ledger().snapshot();
    assert_eq!((s.reserved, s.queue_depth), (0, 0), "{s}");
    assert!(s.high_water <= s.limit, "{s}");
    assert!(served > 0, "some loads finished in time");
    for i in 0..8 {
        m.unload(&key(&format!("k{i}")));
    }
    assert_eq!(m.ledger().snapshot().total(), 0);
}

/// An async join waits at most until its request's deadline, like a blocking one: while the
/// leader is still building it returns `JoinTimeout` soon after the deadline (woken by the
/// manager's timer, not by the leader); the leader's build carries on and publishes, and
/// nothing is left reserved or queued.
#[tokio::test(flavor = "current_thread")]
async fn an_async_join_gives_up_at_its_deadline() {
    const DEADLINE: Duration = Duration::from_millis(50);
    let m = manager(10_000);
    let k = key("k");
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let leader = tokio::spawn({
        let (m, k, started, release) = (
            m.clone(),
            k.clone(),
            Arc::clone(&started),
            Arc::clone(&release),
        );
        async move {
            m.get_or_load_async(&k, LoadOptions::new(100), |_ctx| async move {
                started.notify_one();
                release.notified().await;
                Ok(blob(10))
            })
            .await
            .map(|h| h.len())
        }
    });
    started.notified().await;
    let began = std::time::Instant::now();
    let joined = tokio::time::timeout(
        Duration::from_secs(5),
        m.get_or_load_async(
            &k,
            LoadOptions::new(100).request(ReserveRequest::new(100).wait_for(DEADLINE)),
            |_ctx| async { panic!("a joiner never builds") },
        ),
    )
    .await
    .expect("the join gave up at its own deadline, long before this one");
    let waited = began.elapsed();
    let err = joined.expect_err("the leader is still building");
    assert_join_timed_out(&err, waited, DEADLINE, Duration::from_secs(2));
    assert_eq!(m.state(&k), Some(EntryState::Loading), "the leader goes on");
    release.notify_one();
    assert_eq!(leader.await.expect("task").expect("loads"), 10);
    assert_eq!(m.state(&k), Some(EntryState::Loaded));
    let s = m.ledger().snapshot();
    assert_eq!((s.loaded, s.reserved, s.queue_depth), (10, 0, 0), "{s}");
}

/// Polls `future` once with a waker that does nothing (the tests below drive the futures by
/// hand, so every interleaving they check is the one they wrote).
fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// A builder future that stays pending until `released` is set.
fn gated(released: &Cell<bool>, bytes: usize) -> impl Future<Output = Result<Vec<u8>, BuildError>> {
    std::future::poll_fn(move |_| {
        if released.get() {
            Poll::Ready(Ok(blob(bytes)))
        } else {
            Poll::Pending
        }
    })
}

/// An async rebuild whose future is dropped mid-build puts the entry back to `Loaded`, still
/// serving the version it had, with the ledger exactly as before the rebuild (its reservation
/// refunded, nothing recorded as a failure); the gate is open for the next rebuild.
#[test]
fn dropping_an_async_rebuild_mid_build_puts_the_entry_back() {
    let m = manager(10_000);
    let k = key("k");
    let v1 = load(&m, "k", 1_000);
    let before = m.ledger().snapshot();
    let released = Cell::new(false);
    let mut rebuild = Box::pin(m.rebuild_async(&k, ReserveRequest::new(2_000), |_ctx| {
        gated(&released, 2_000)
    }));
    assert!(poll_once(rebuild.as_mut()).is_pending(), "building");
    assert_eq!(m.state(&k), Some(EntryState::Rebuilding));
    assert_eq!(m.ledger().snapshot().reserved, 2_000);
    drop(rebuild);
    assert_eq!(m.state(&k), Some(EntryState::Loaded));
    assert_ledger_back_to(&m, &before, before.queue_depth);
    assert!(Handle::ptr_eq(&m.get(&k).expect("served"), &v1));
    let status = m.status();
    assert_eq!(
        status.entries[0].retry_count, 0,
        "cancelling is not failing"
    );
    assert!(status.entries[0].last_error.is_none(), "{status:?}");
    // The gate is open again.
    let v2 =
        block_on(m.rebuild_async(&k, ReserveRequest::new(500), |_ctx| async { Ok(blob(500)) }))
            .expect("rebuilds");
    assert_eq!(v2.len(), 500);
    let s = m.ledger().snapshot();
    assert_eq!((s.loaded, s.retained, s.reserved), (500, 1_000, 0), "{s}");
    drop(v1);
    assert_eq!(m.ledger().snapshot().retained, 0);
}

/// An async rebuild dropped while it waits in the admission queue leaves the queue, reserves
/// nothing and puts the entry back to `Loaded`.
#[test]
fn dropping_an_async_rebuild_waiting_for_admission_puts_the_entry_back() {
    let m = manager(1_500);
    let k = key("k");
    // Held by a reader, so admission cannot evict it to make room.
    let v1 = load(&m, "k", 1_000);
    let before = m.ledger().snapshot();
    let mut rebuild = Box::pin(m.rebuild_async(
        &k,
        ReserveRequest::new(1_000).wait_for(Duration::from_secs(60)),
        |_ctx| async { Ok(blob(1_000)) },
    ));
    assert!(poll_once(rebuild.as_mut()).is_pending(), "queued");
    assert_eq!(m.ledger().snapshot().queue_depth, 1);
    assert_eq!(m.state(&k), Some(EntryState::Rebuilding));
    drop(rebuild);
    assert_eq!(m.state(&k), Some(EntryState::Loaded));
    assert_ledger_back_to(&m, &before, 0);
    assert!(Handle::ptr_eq(&m.get(&k).expect("served"), &v1));
}

/// While an async rebuild builds, `get_or_load` and `get_or_load_async` of the key serve the
/// current version at once (no join, no build); a rebuild asked for while a load of the key
/// is in flight is refused with `InProgress`. Once the rebuild publishes, loads serve the new
/// version and the old one stays counted, as retained, while a reader holds it.
#[test]
fn an_async_rebuild_racing_loads_keeps_serving_the_current_version() {
    let m = manager(10_000);
    let k = key("k");
    let v1 = load(&m, "k", 1_000);
    let released = Cell::new(false);
    let mut rebuild = Box::pin(m.rebuild_async(&k, ReserveRequest::new(2_000), |_ctx| {
        gated(&released, 2_000)
    }));
    assert!(poll_once(rebuild.as_mut()).is_pending(), "building");
    let never = |_: &_| -> Result<Vec<u8>, BuildError> { panic!("served without building") };
    let served_blocking = m
        .get_or_load(&k, LoadOptions::new(100), never)
        .expect("served");
    assert!(Handle::ptr_eq(&served_blocking, &v1));
    let mut load = Box::pin(
        m.get_or_load_async(&k, LoadOptions::new(100), |_ctx| async {
            panic!("served without building")
        }),
    );
    let Poll::Ready(Ok(served_async)) = poll_once(load.as_mut()) else {
        panic!("the async load served at once");
    };
    assert!(Handle::ptr_eq(&served_async, &v1));
    assert_eq!(m.state(&k), Some(EntryState::Rebuilding));
    released.set(true);
    let Poll::Ready(Ok(v2)) = poll_once(rebuild.as_mut()) else {
        panic!("the rebuild publishes once its build finishes");
    };
    assert_eq!(v2.len(), 2_000);
    let now = m
        .get_or_load(&k, LoadOptions::new(100), never)
        .expect("served");
    assert!(Handle::ptr_eq(&now, &v2));
    let s = m.ledger().snapshot();
    assert_eq!((s.loaded, s.retained, s.reserved), (2_000, 1_000, 0), "{s}");
    drop((v1, served_blocking, served_async));
    assert_eq!(m.ledger().snapshot().retained, 0);

    // The other way round: a load in flight refuses a rebuild.
    let other = key("other");
    let load_released = Cell::new(false);
    let mut load = Box::pin(m.get_or_load_async(&other, LoadOptions::new(100), |_ctx| {
        gated(&load_released, 100)
    }));
    assert!(poll_once(load.as_mut()).is_pending(), "loading");
    let refused = block_on(
        m.rebuild_async(&other, ReserveRequest::new(100), |_ctx| async {
            panic!("refused without building")
        }),
    );
    assert!(
        matches!(
            refused,
            Err(LoadError::InProgress {
                state: EntryState::Loading,
                ..
            })
        ),
        "{refused:?}"
    );
    load_released.set(true);
    assert!(matches!(poll_once(load.as_mut()), Poll::Ready(Ok(_))));
}

/// Concurrent async rebuilds of one key on a multi-threaded runtime: exactly one builds and
/// publishes; every other caller gets `InProgress` at once, as documented, and the ledger ends
/// with the one new version loaded and nothing reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_async_rebuilds_build_once() {
    const CALLERS: usize = 8;
    let m = manager(10_000);
    let k = key("k");
    drop(load(&m, "k", 1_000));
    let builds = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Arc::new(tokio::sync::Barrier::new(CALLERS));
    for _ in 0..CALLERS {
        let (m, k, builds, release, done_tx, start) = (
            m.clone(),
            k.clone(),
            Arc::clone(&builds),
            Arc::clone(&release),
            done_tx.clone(),
            Arc::clone(&start),
        );
        tokio::spawn(async move {
            start.wait().await;
            let result = m
                .rebuild_async(&k, ReserveRequest::new(500), |_ctx| async move {
                    builds.fetch_add(1, Ordering::Relaxed);
                    release.notified().await;
                    Ok(blob(500))
                })
                .await;
            done_tx.send(result.map(|h| h.len())).expect("collector");
        });
    }
    let mut results = Vec::new();
    while results.len() < CALLERS - 1 {
        let result = tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await
            .expect("the refused callers return at once")
            .expect("a caller's result");
        results.push(result);
    }
    for refused in &results {
        assert!(
            matches!(
                refused,
                Err(LoadError::InProgress {
                    state: EntryState::Rebuilding,
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    release.notify_one();
    let led = tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
        .await
        .expect("the leader finishes once released")
        .expect("the leader's result");
    assert_eq!(led.expect("the one rebuild publishes"), 500);
    assert_eq!(builds.load(Ordering::Relaxed), 1, "one build");
    let s = m.ledger().snapshot();
    assert_eq!((s.loaded, s.reserved, s.retained), (500, 0, 0), "{s}");
    assert_eq!(m.state(&k), Some(EntryState::Loaded));
}

/// Runs `future` to completion on a fresh current-thread runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(future)
}
