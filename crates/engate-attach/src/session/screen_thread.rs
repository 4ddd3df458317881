//! The session server's screen, parsed on a thread of its own, in batches.
//!
//! Parsing every byte of output into a terminal screen (vt100) costs about as much as
//! everything else the server does with it. Done on the pty reader's thread, it would hold up
//! the reader and so the program's output; here the reader appends each chunk to a queue and
//! goes on, and a parser thread keeps the screen. The parser is woken only when output has
//! gathered ([`WAKE_BYTES`]) or something needs the screen (a snapshot, a resize, a reset):
//! a keystroke's echo wakes nobody but the client it goes to, and bulk output is parsed in
//! large batches, where the text that scrolls away unseen can be skipped (see
//! [`ScreenProvider`]). Snapshots, resizes and resets travel in the same queue, so each is
//! applied after exactly the bytes fed before it: a snapshot still covers the stream up to the
//! attach's offset, no more, no less. The queue is bounded ([`MAX_BYTES`] of output,
//! [`MAX_MESSAGES`] messages): a reader that outruns the parser waits for it. The parser runs
//! at a lower priority ([`PARSER_NICE`]) than the threads on the output's path.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::screen::ScreenProvider;
use crate::snapshot::{SnapshotKind, SnapshotProvider};

/// How many nice levels the parser runs below the server's other threads (Linux). The output's
/// path (the pump, the writers) then goes first whenever it can run, and the parser takes the
/// time it leaves: in bulk output on two CPUs, 6-13 % more throughput measured (the parser
/// costs about 12 % of a CPU at full speed). Nice 10 still weighs a tenth of a normal
/// thread, so a busy machine slows the parser, never stops it; if it falls a queue behind,
/// the pump waits for it.
const PARSER_NICE: i32 = 10;
/// Output gathered before the parser is woken for it.
const WAKE_BYTES: usize = 64 << 10;
/// Output queued before the reader waits for the parser.
const MAX_BYTES: usize = 1 << 20;
/// Messages queued before the reader waits for the parser (resizes, say, from a client that
/// sends many).
const MAX_MESSAGES: usize = 256;
/// How long a snapshot waits for the parser before giving up (the client then gets no
/// redraw; the stream itself is unaffected).
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(5);

enum Msg {
    Feed(Vec<u8>),
    Snapshot(SyncSender<Vec<u8>>),
    Resize(u16, u16),
    Reset,
}

/// What the reader has handed over and the parser not yet taken.
#[derive(Default)]
struct Queue {
    msgs: VecDeque<Msg>,
    /// Bytes in the queue's `Feed` messages.
    bytes: usize,
    /// The reader's end is gone: the parser stops.
    closed: bool,
    /// The parser thread has ended (it panicked): nothing is queued any more.
    parser_gone: bool,
}

impl Queue {
    /// Whether the parser has something to do now (not only a little output).
    fn wants_parser(&self) -> bool {
        self.closed
            || self.bytes >= WAKE_BYTES
            || self.msgs.iter().any(|m| !matches!(m, Msg::Feed(_)))
    }

    fn full(&self) -> bool {
        self.bytes >= MAX_BYTES || self.msgs.len() >= MAX_MESSAGES
    }
}

#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    /// The parser waits here for work.
    work: Condvar,
    /// A reader held back by a full queue waits here.
    room: Condvar,
}

/// A [`ScreenProvider`] behind a parser thread.
pub(super) struct ThreadedScreen {
    inner: Arc<Inner>,
}

impl ThreadedScreen {
    /// A screen of `rows` × `cols` cells, parsed on a new thread.
    pub(super) fn new(rows: u16, cols: u16) -> std::io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let parser = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("engate-screen".into())
            .spawn(move || {
                // Best effort: at the default priority the parser only competes more.
                let _ = crate::sys::os::lower_thread_priority(PARSER_NICE);
                parse(ScreenProvider::new(rows, cols), &parser)
            })?;
        Ok(Self { inner })
    }

    /// Queues what `add` puts in the queue, waiting while it is full; wakes the parser if it
    /// has work now. `false` if the parser is gone.
    fn send(&self, add: impl FnOnce(&mut Queue)) -> bool {
        let mut q = self.inner.queue.lock();
        while q.full() && !q.parser_gone {
            self.inner.work.notify_one();
            self.inner.room.wait(&mut q);
        }
        if q.parser_gone {
            drop(q);
            tracing::warn!("the screen parser is gone; re-attaching clients get no redraw");
            return false;
        }
        add(&mut q);
        if q.wants_parser() {
            self.inner.work.notify_one();
        }
        true
    }
}

impl Drop for ThreadedScreen {
    fn drop(&mut self) {
        self.inner.queue.lock().closed = true;
        self.inner.work.notify_one();
    }
}

/// The parser thread: takes everything queued whenever there is work, applies it in order,
/// and stops once the server's end is gone.
fn parse(mut screen: ScreenProvider, inner: &Inner) {
    /// Tells the readers when the thread ends, by a panic too, so none waits for it.
    struct Gone<'a>(&'a Inner);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            let mut q = self.0.queue.lock();
            q.parser_gone = true;
            q.msgs.clear();
            self.0.room.notify_all();
        }
    }
    let _gone = Gone(inner);
    loop {
        let msgs = {
            let mut q = inner.queue.lock();
            while !q.wants_parser() {
                inner.work.wait(&mut q);
            }
            if q.closed {
                return;
            }
            q.bytes = 0;
            inner.room.notify_all();
            std::mem::take(&mut q.msgs)
        };
        for msg in msgs {
            match msg {
                Msg::Feed(bytes) => screen.feed(&bytes),
                Msg::Snapshot(reply) => {
                    let mut out = Vec::new();
                    screen.snapshot(&mut out);
                    let _ = reply.send(out);
                }
                Msg::Resize(rows, cols) => screen.resize(rows, cols),
                Msg::Reset => screen.reset(),
            }
        }
    }
}

impl std::fmt::Debug for ThreadedScreen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadedScreen")
    }
}

impl SnapshotProvider for ThreadedScreen {
    fn kind(&self) -> SnapshotKind {
        SnapshotKind::State
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.send(|q| {
            q.bytes += bytes.len();
            match q.msgs.back_mut() {
                Some(Msg::Feed(last)) => last.extend_from_slice(bytes),
                _ => q.msgs.push_back(Msg::Feed(bytes.to_vec())),
            }
        });
    }

    fn snapshot(&mut self, out: &mut Vec<u8>) {
        let (reply, answer) = sync_channel(1);
        if !self.send(|q| q.msgs.push_back(Msg::Snapshot(reply))) {
            return;
        }
        match answer.recv_timeout(SNAPSHOT_LIMIT) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(_) => tracing::warn!(
                limit = ?SNAPSHOT_LIMIT,
                "the screen parser did not answer; this attach gets no redraw"
            ),
        }
    }

    fn reset(&mut self) {
        self.send(|q| q.msgs.push_back(Msg::Reset));
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        self.send(|q| q.msgs.push_back(Msg::Resize(rows, cols)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser thread runs PARSER_NICE levels below the thread that started it (Linux,
    /// read back from `/proc`).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_parser_runs_below_the_output_path() {
        // The nice value: field 19 of /proc/.../stat, counted after the command's `)`.
        let nice = |stat: &str| -> i32 {
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .expect("stat")
                .1
                .split_whitespace()
                .collect();
            fields[16].parse().expect("nice")
        };
        let mine = nice(&std::fs::read_to_string("/proc/thread-self/stat").expect("own stat"));
        let _screen = ThreadedScreen::new(6, 20).expect("thread");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let parser = loop {
            let found = std::fs::read_dir("/proc/self/task")
                .expect("tasks")
                .filter_map(Result::ok)
                .find(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "engate-screen")
                        && std::fs::read_to_string(t.path().join("stat"))
                            .is_ok_and(|s| nice(&s) != mine)
                });
            if let Some(t) = found {
                break nice(&std::fs::read_to_string(t.path().join("stat")).expect("stat"));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no lowered engate-screen thread"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(parser, (mine + PARSER_NICE).min(19));
    }

    /// The threaded screen snapshots exactly what the same bytes give the screen parsed inline,
    /// across resizes and resets, with snapshots taken between feeds.
    #[test]
    fn snapshots_match_the_inline_screen_at_every_point() {
        let mut inline = ScreenProvider::new(6, 20);
        let mut threaded = ThreadedScreen::new(6, 20).expect("thread");
        let steps: &[&[u8]] = &[
            b"hello\r\nworld",
            b"\x1b[1;31mred\x1b[0m and \x1b[?1049hfull screen",
            b"\x1b[?1049l back\r\n",
            b"0123456789012345678901234567890",
        ];
        for (i, step) in steps.iter().enumerate() {
            for p in [&mut inline as &mut dyn SnapshotProvider, &mut threaded] {
                p.feed(step);
                if i == 2 {
                    p.resize(8, 30);
                }
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            inline.snapshot(&mut a);
            threaded.snapshot(&mut b);
            assert_eq!(a, b, "after step {i}");
        }
        inline.reset();
        threaded.reset();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        inline.snapshot(&mut a);
        threaded.snapshot(&mut b);
        assert_eq!(a, b, "after reset");
    }
}
