//! Shared helpers: a consumer that rebuilds the stream from events, journals, temp dirs.

use engate_attach::{Event, Snapshot, SnapshotKind};

/// A consumer's copy of the stream (`base..base + bytes.len()` of one epoch), rebuilt from a
/// snapshot and events, checking every delivery against the position it holds.
#[derive(Debug, Default)]
pub(crate) struct Replica {
    pub(crate) bytes: Vec<u8>,
    pub(crate) base: u64,
    pub(crate) epoch: u64,
    pub(crate) gaps: Vec<(u64, u64)>,
    pub(crate) resyncs: u64,
    pub(crate) closed: bool,
}

impl Replica {
    pub(crate) fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Applies a suffix or resume snapshot; panics on a state snapshot.
    pub(crate) fn apply_snapshot(&mut self, s: &Snapshot) {
        match s.kind() {
            SnapshotKind::Resume => {
                assert_eq!(s.epoch(), self.epoch, "a resume stays in its epoch");
                assert_eq!(s.at(), self.end(), "a resume continues exactly at the end");
            }
            SnapshotKind::Suffix => {
                let from = s.suffix_from().expect("suffix");
                if s.epoch() == self.epoch && from <= self.end() && self.end() <= s.at() {
                    // A resync that covers what we hold: keep ours, take the rest.
                    let skip = (self.end() - from) as usize;
                    self.bytes.extend_from_slice(&s.bytes()[skip..]);
                } else {
                    self.base = from;
                    self.bytes = s.bytes().to_vec();
                }
                self.epoch = s.epoch();
            }
            other => panic!("unexpected snapshot kind {other:?}"),
        }
    }

    /// Applies one event; false once closed (or on Empty, which the caller decides about).
    pub(crate) fn apply(&mut self, event: Event) -> bool {
        match event {
            Event::Item(item) => {
                assert_eq!(item.epoch, self.epoch, "item of another epoch");
                assert_eq!(
                    item.offset,
                    self.end(),
                    "every item starts exactly where the previous one ended"
                );
                self.bytes.extend_from_slice(&item.bytes);
                true
            }
            Event::Gap { from, to } => {
                assert_eq!(from, self.end(), "a gap starts at the position");
                self.gaps.push((from, to));
                self.base = to;
                self.bytes.clear();
                true
            }
            Event::Resync(history) => {
                self.resyncs += 1;
                history.replay(|s| self.apply_snapshot(s));
                true
            }
            Event::Empty => false,
            Event::Closed(_) => {
                self.closed = true;
                false
            }
        }
    }
}

/// The bytes of numbered chunks `0..n`, chunk `i` being `"<i>,"` padded to `i % 7 + 4` bytes.
pub(crate) fn numbered_chunk(i: usize) -> Vec<u8> {
    let mut v = format!("{i},").into_bytes();
    v.resize(v.len().max(i % 7 + 4), b'.');
    v
}

pub(crate) use workspace_tests::support::{TempDir, have, skip};

/// A session server running `sh -c script` on `socket`.
pub(crate) fn sh_session(
    socket: &std::path::Path,
    script: &str,
) -> engate_attach::session::SessionServer {
    use engate_attach::session::{SessionConfig, SessionServer};
    SessionServer::start(SessionConfig::new(socket, "sh").args(["-c", script]))
        .expect("start the session server")
}

/// A client attached to `socket` from the start (policy Resync) whose reads wait at most 10 s.
pub(crate) fn attached(socket: &std::path::Path) -> engate_attach::session::SessionClient {
    let client =
        engate_attach::session::SessionClient::connect(socket, engate_attach::Policy::Resync, None)
            .expect("attach");
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("read timeout");
    client
}
