//! The session server's screen, parsed on a thread of its own.
//!
//! Parsing every byte of output into a terminal screen (vt100) costs about as much as
//! everything else the server does with it. Done on the pty reader's thread, it holds up the
//! reader and so the program's output; here the reader hands each chunk over a bounded channel
//! and goes on, and a parser thread keeps the screen. Snapshots, resizes and resets travel on the
//! same channel, so each is applied after exactly the bytes fed before it: a snapshot still
//! covers the stream up to the attach's offset, no more, no less. The channel's bound keeps the
//! memory bounded (a reader that outruns the parser waits for it).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use crate::screen::ScreenProvider;
use crate::snapshot::{SnapshotKind, SnapshotProvider};

/// Chunks the reader may hand over before it waits for the parser.
const QUEUE: usize = 256;
/// The most output parsed in one call.
const BATCH: usize = 1 << 20;
/// How long the parser lets trickling output gather before it parses again.
const GATHER: Duration = Duration::from_millis(4);
/// How long a snapshot waits for the parser to catch up before giving up (the client then
/// gets no redraw; the stream itself is unaffected).
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(5);

enum Msg {
    Feed(Vec<u8>),
    Snapshot(SyncSender<Vec<u8>>),
    Resize(u16, u16),
    Reset,
}

/// A [`ScreenProvider`] behind a parser thread.
pub(super) struct ThreadedScreen {
    tx: SyncSender<Msg>,
}

impl ThreadedScreen {
    /// A screen of `rows` × `cols` cells, parsed on a new thread.
    pub(super) fn new(rows: u16, cols: u16) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("engate-screen".into())
            .spawn(move || parse(ScreenProvider::new(rows, cols), &rx))?;
        Ok(Self { tx })
    }
}

/// The parser thread: applies every message in order until the server drops its end. Output
/// queued behind a chunk is parsed with it in one call (up to [`BATCH`] bytes), so that when the
/// parser falls behind, the text it can skip unparsed (see [`ScreenProvider`]) grows.
fn parse(mut screen: ScreenProvider, rx: &Receiver<Msg>) {
    let mut batch = Vec::new();
    let mut next = rx.recv().ok();
    while let Some(msg) = next.take() {
        match msg {
            Msg::Feed(bytes) => {
                batch.clear();
                batch.extend_from_slice(&bytes);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Feed(more)) => batch.extend_from_slice(&more),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                screen.feed(&batch);
                if next.is_some() {
                    continue;
                }
                if batch.len() < BATCH / 4 {
                    // Output is trickling in: let it gather for a moment rather than wake
                    // for every chunk (each wake-up is a context switch the program's output
                    // path pays for on a busy machine). A snapshot asked for meanwhile waits
                    // at most this long.
                    std::thread::sleep(GATHER);
                }
            }
            Msg::Snapshot(reply) => {
                let mut out = Vec::new();
                screen.snapshot(&mut out);
                let _ = reply.send(out);
            }
            Msg::Resize(rows, cols) => screen.resize(rows, cols),
            Msg::Reset => screen.reset(),
        }
        next = rx.recv().ok();
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
        if self.tx.send(Msg::Feed(bytes.to_vec())).is_err() {
            tracing::warn!("the screen parser is gone; re-attaching clients get no redraw");
        }
    }

    fn snapshot(&mut self, out: &mut Vec<u8>) {
        let (reply, answer) = sync_channel(1);
        if self.tx.send(Msg::Snapshot(reply)).is_err() {
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
        let _ = self.tx.send(Msg::Reset);
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        let _ = self.tx.send(Msg::Resize(rows, cols));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
