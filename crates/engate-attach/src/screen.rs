//! A snapshot provider that keeps terminal screen state instead of history.
//!
//! Replaying history to a re-attaching terminal costs time proportional to everything the
//! program ever printed, and a terminal that missed part of it paints garbage. A full-screen
//! program's visible state is small and bounded: [`ScreenProvider`] parses the stream with the
//! `vt100` crate and, on attach, emits the escape sequences that redraw the current screen
//! (contents, attributes, cursor) and restore the input modes (application keypad and cursor,
//! bracketed paste, mouse reporting). While a full-screen program uses the alternate screen,
//! the snapshot draws the primary screen underneath first, then enters the alternate screen and
//! draws it, so that when the program exits the client is left with the same primary screen as
//! everyone else. Attach then costs the size of the screen, whatever the length of the history.
//!
//! # Text that scrolls away unseen
//!
//! Parsing costs about as much per byte as everything else a session server does, so bulk output
//! (`cat` of a large file) would be limited by the parser. Most of it never reaches a screen: with
//! no scrollback, a line is gone once enough lines follow it. [`ScreenProvider::feed`] therefore
//! skips plain text that provably cannot change the result: a stretch of printable text, tabs,
//! backspaces, carriage returns and line feeds, with the escape parser at rest before it, followed
//! within the same call by a carriage return and then at least `2 × rows + 1` line feeds of such
//! text, while the scroll region is the whole screen. Whatever the cursor did in the skipped
//! stretch, the carriage return puts it in the first column, `rows - 1` line feeds bring it to the
//! bottom row, and the next `rows + 1` scroll in a fresh row each: every row on screen after them,
//! the cursor and the modes are the same as if the stretch had been parsed (a property test
//! checks this against a parser fed every byte). Whether the scroll region is the whole screen
//! is asked of the parser itself, on a copy of the screen. The server's screen thread hands the
//! parser all the output it has queued in one call, so the stretch grows with the backlog.

use std::fmt;
use std::num::NonZeroU16;

use crate::snapshot::{SnapshotKind, SnapshotProvider};

/// Enter the alternate screen (xterm mode 1049: save the cursor, switch, clear).
const ENTER_ALTERNATE: &[u8] = b"\x1b[?1049h";
/// Leave the alternate screen (restore the primary screen and the saved cursor).
const LEAVE_ALTERNATE: &[u8] = b"\x1b[?1049l";

/// Parses the stream as terminal output and snapshots the screen.
///
/// The snapshot is the escape sequences that redraw the current screen (contents,
/// attributes, cursor) and restore the input modes; while a full-screen program uses the
/// alternate screen, the primary screen underneath is drawn first. Its size is bounded by the
/// screen, whatever the length of the history.
pub struct ScreenProvider {
    parser: vt100::Parser,
    /// Where a copy of the screen leaves the alternate screen, to draw the primary one, or
    /// probes its scroll region.
    scratch: vt100::Parser,
    rows: NonZeroU16,
    cols: NonZeroU16,
    /// Where the escape parser is, as far as skipping text needs to know.
    escape: Escape,
    /// Bytes skipped as text that scrolls away unseen.
    skipped: u64,
    /// The end of the output so far, not parsed yet: plain text in ground state (at most
    /// [`HOLD_MAX`] bytes), kept so that it can be skipped if enough text follows it. Parsed
    /// before anything looks at the screen.
    held: Vec<u8>,
}

/// The most plain text held back unparsed between feeds.
const HOLD_MAX: usize = 64 << 10;

/// A conservative copy of the escape parser's state (vte's): [`Escape::Ground`] exactly when
/// the parser is at rest, any other state when it may not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    Ground,
    /// After ESC, or ESC and intermediates.
    Esc,
    EscIntermediate,
    /// A control sequence (CSI), up to its final byte.
    Csi,
    /// An operating system command (OSC), up to BEL (or ST, ESC `\\`).
    Osc,
    /// Another string (DCS, SOS, PM, APC): it ends only at ESC, CAN or SUB here, a superset of
    /// where the parser may still be inside it.
    Str,
}

impl Escape {
    fn step(self, byte: u8) -> Self {
        match (self, byte) {
            (_, 0x18 | 0x1A) => Self::Ground,
            (_, 0x1B) => Self::Esc,
            (Self::Ground, _) => Self::Ground,
            (Self::Esc, b'[') => Self::Csi,
            (Self::Esc, b']') => Self::Osc,
            (Self::Osc, 0x07) => Self::Ground,
            (Self::Esc, b'P' | b'X' | b'^' | b'_') => Self::Str,
            (Self::Esc, 0x20..=0x2F) => Self::EscIntermediate,
            (Self::Esc | Self::EscIntermediate, 0x30..=0x7E) | (Self::Csi, 0x40..=0x7E) => {
                Self::Ground
            }
            (state, _) => state,
        }
    }
}

/// Where `bytes` ends but for a UTF-8 character cut short at its end.
fn utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let at = bytes.len() - back;
        let len = match bytes[at] {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            0x80..=0xBF => continue,
            _ => return bytes.len(),
        };
        return if len > back { at } else { bytes.len() };
    }
    bytes.len()
}

/// Bytes that only move the cursor and write cells when the parser is at rest: printable
/// ASCII, UTF-8, tab, backspace, carriage return and line feed.
fn plain(byte: u8) -> bool {
    PLAIN[usize::from(byte)]
}

/// [`plain`] as a table: the scan runs over every byte of output.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8, 0x20..=0x7E | 0x80..=0xFF | b'\t' | 0x08 | b'\r' | b'\n');
        b += 1;
    }
    table
};

impl ScreenProvider {
    /// A screen of `rows` × `cols` cells with no scrollback. Zero sizes are raised to one.
    pub fn new(rows: u16, cols: u16) -> Self {
        let rows = NonZeroU16::new(rows).unwrap_or(NonZeroU16::MIN);
        let cols = NonZeroU16::new(cols).unwrap_or(NonZeroU16::MIN);
        Self {
            parser: vt100::Parser::new(rows, cols, 0),
            scratch: vt100::Parser::new(rows, cols, 0),
            rows,
            cols,
            escape: Escape::Ground,
            skipped: 0,
            held: Vec::new(),
        }
    }

    /// How many bytes of output were skipped, unparsed, as text that scrolled away unseen.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// Where the skippable stretch of the plain run `run` (starting in ground state) ends: at
    /// the last carriage return followed, within the run, by at least `2 × rows + 1` line feeds
    /// and some printable text. `None` if there is none, or it is at the run's start.
    fn skip_end(&self, run: &[u8]) -> Option<usize> {
        let needed = 2 * usize::from(self.rows.get()) + 1;
        let (mut feeds, mut printable) = (0, false);
        for (i, &b) in run.iter().enumerate().rev() {
            match b {
                b'\n' => feeds += 1,
                b'\r' if feeds >= needed && printable => return (i > 0).then_some(i),
                0x20..=0x7E => printable = true,
                _ => {}
            }
        }
        None
    }

    /// Parses `text` (plain, in ground state, followed by a tail that scrolls the whole screen
    /// anew) keeping only what outlives the tail: the cursor's moves and the scrolling. A line
    /// of printable ASCII that starts in the first column, fits the width and ends in CR LF
    /// becomes a bare line feed (it writes cells the tail scrolls away, and moves and scrolls
    /// exactly as one line feed does); a last piece without a line feed that would fit is
    /// dropped; anything else is parsed as it is.
    fn skim(&mut self, text: &[u8]) {
        let cols = usize::from(self.cols.get());
        let mut pending = Vec::new();
        let mut first_column = self.parser.screen().cursor_position().1 == 0;
        for segment in text.split_inclusive(|&b| b == b'\n') {
            let (body, ending): (&[u8], &[u8]) = match segment {
                [body @ .., b'\r', b'\n'] => (body, b"\r\n"),
                [.., b'\n'] => (segment, b""),
                _ => (segment, b"-"),
            };
            let simple = first_column
                && !ending.is_empty()
                && body.len() <= cols
                && body.iter().all(|b| (0x20..=0x7E).contains(b));
            if simple && ending == b"\r\n" {
                pending.push(b'\n');
                self.skipped += (segment.len() - 1) as u64;
            } else if simple {
                self.skipped += segment.len() as u64;
            } else {
                pending.extend_from_slice(segment);
                self.parser.process(&pending);
                pending.clear();
                first_column = self.parser.screen().cursor_position().1 == 0;
            }
        }
        self.parser.process(&pending);
    }

    /// Whether the active screen's scroll region is the whole screen, asked of the parser: on a
    /// copy, with origin mode off, a line feed on the last row must scroll the top row away.
    fn scroll_region_is_whole_screen(&mut self) -> bool {
        let rows = self.rows.get();
        if rows < 3 {
            return false;
        }
        *self.scratch.screen_mut() = self.parser.screen().clone();
        self.scratch.process(b"\x1b[?6l\x1b[1;1HA\x1b[2;1HZ");
        self.scratch
            .process(format!("\x1b[{rows};1HB\n").as_bytes());
        let at = |row, col| {
            self.scratch
                .screen()
                .cell(row, col)
                .map(|c| c.contents().to_owned())
        };
        at(0, 0).as_deref() == Some("Z") && at(rows - 2, 0).as_deref() == Some("B")
    }

    /// The parsed screen, for inspection (after everything fed so far).
    pub fn screen(&mut self) -> &vt100::Screen {
        self.flush();
        self.parser.screen()
    }

    /// Parses the text held back.
    fn flush(&mut self) {
        if !self.held.is_empty() {
            self.parser.process(&self.held);
            self.held.clear();
        }
    }

    /// Parses `bytes` (after what is held back, if anything), skipping text that scrolls away
    /// unseen, and holds back a plain end.
    fn consume(&mut self, bytes: &[u8]) {
        // `bytes[fed..]` is not parsed yet; `at` is where the escape state is known.
        let (mut fed, mut at) = (0, 0);
        let mut hold_from = bytes.len();
        while at < bytes.len() {
            if self.escape != Escape::Ground {
                self.escape = self.escape.step(bytes[at]);
                at += 1;
                continue;
            }
            // At rest: a plain run cannot leave the ground state (only ESC does).
            let len = bytes[at..]
                .iter()
                .position(|&b| !plain(b))
                .unwrap_or(bytes.len() - at);
            let run = &bytes[at..at + len];
            if let Some(skip) = self.skip_end(run) {
                self.parser.process(&bytes[fed..at]);
                fed = at;
                if self.scroll_region_is_whole_screen() {
                    self.skim(&run[..skip]);
                    fed = at + skip;
                }
            }
            if at + len == bytes.len() {
                hold_from = at.max(fed);
            }
            at += len;
            if let Some(&b) = bytes.get(at) {
                self.escape = self.escape.step(b);
                at += 1;
            }
        }
        if bytes.len() - hold_from > HOLD_MAX {
            // Too much to hold: parse it, all but a character cut short at the end (the parser
            // does not always join one split across two calls).
            hold_from = utf8_tail(bytes);
        }
        self.parser.process(&bytes[fed..hold_from]);
        self.held.extend_from_slice(&bytes[hold_from..]);
    }
}

impl fmt::Debug for ScreenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScreenProvider")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl SnapshotProvider for ScreenProvider {
    fn kind(&self) -> SnapshotKind {
        SnapshotKind::State
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        self.flush();
        self.rows = NonZeroU16::new(rows).unwrap_or(NonZeroU16::MIN);
        self.cols = NonZeroU16::new(cols).unwrap_or(NonZeroU16::MIN);
        self.parser.screen_mut().set_size(self.rows, self.cols);
        self.scratch.screen_mut().set_size(self.rows, self.cols);
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.held.is_empty() {
            self.consume(bytes);
        } else {
            let mut input = std::mem::take(&mut self.held);
            input.extend_from_slice(bytes);
            self.consume(&input);
        }
    }

    fn snapshot(&mut self, out: &mut Vec<u8>) {
        self.flush();
        let screen = self.parser.screen();
        if screen.alternate_screen() {
            *self.scratch.screen_mut() = screen.clone();
            self.scratch.process(LEAVE_ALTERNATE);
            out.extend_from_slice(self.scratch.screen().contents_formatted().as_bytes());
            out.extend_from_slice(ENTER_ALTERNATE);
        }
        out.extend_from_slice(screen.state_formatted().as_bytes());
    }

    fn reset(&mut self) {
        self.parser = vt100::Parser::new(self.rows, self.cols, 0);
        self.escape = Escape::Ground;
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redraw(provider: &mut ScreenProvider) -> vt100::Parser {
        let mut out = Vec::new();
        provider.snapshot(&mut out);
        let mut fresh = vt100::Parser::new(provider.rows, provider.cols, 0);
        fresh.process(&out);
        fresh
    }

    #[test]
    fn snapshot_redraws_contents_cursor_and_modes() {
        let mut p = ScreenProvider::new(5, 20);
        p.feed(b"hello\r\n\x1b[1;31mred\x1b[0m world\x1b[?1h\x1b[?2004h\x1b[3;7H");
        let fresh = redraw(&mut p);
        let (want, got) = (p.screen(), fresh.screen());
        assert_eq!(got.contents(), want.contents());
        assert_eq!(got.cursor_position(), want.cursor_position());
        assert_eq!(got.cursor_position(), (2, 6));
        assert!(got.application_cursor());
        assert!(got.bracketed_paste());
        assert!(got.cell(1, 0).expect("cell").bold());
    }

    fn size(screen: &vt100::Screen) -> (u16, u16) {
        let (rows, cols) = screen.size();
        (rows.get(), cols.get())
    }

    #[test]
    fn resizing_lays_the_screen_out_at_the_new_size() {
        let mut p = ScreenProvider::new(4, 10);
        // 13 characters wrap at 10 columns: the cursor ends on the second row.
        p.feed(b"0123456789abc");
        assert_eq!(p.screen().cursor_position(), (1, 3));
        p.resize(6, 20);
        assert_eq!(size(p.screen()), (6, 20));
        // After the resize, 25 characters wrap at 20 columns, and the redraw has the new size.
        p.feed(b"\r\n0123456789012345678901234");
        assert_eq!(p.screen().cursor_position(), (3, 5));
        let fresh = redraw(&mut p);
        assert_eq!(size(fresh.screen()), (6, 20));
        assert_eq!(fresh.screen().contents(), p.screen().contents());
        assert_eq!(fresh.screen().cursor_position(), (3, 5));
        // Zero is raised to one cell, as at construction.
        p.resize(0, 0);
        assert_eq!(size(p.screen()), (1, 1));
    }

    #[test]
    fn snapshot_enters_the_alternate_screen_over_the_primary_one() {
        let mut p = ScreenProvider::new(4, 10);
        p.feed(b"shell$ less\r\n\x1b[?1049h\x1b[Hfull");
        let mut fresh = redraw(&mut p);
        assert!(fresh.screen().alternate_screen());
        assert_eq!(fresh.screen().contents(), p.screen().contents());
        // When the program leaves, the primary screen and cursor come back on both.
        p.feed(b"\x1b[?1049l");
        fresh.process(b"\x1b[?1049l");
        assert_eq!(fresh.screen().contents(), "shell$ less");
        assert_eq!(fresh.screen().contents(), p.screen().contents());
        assert_eq!(
            fresh.screen().cursor_position(),
            p.screen().cursor_position()
        );
        p.reset();
        assert_eq!(p.screen().contents(), "");
        assert!(!p.screen().alternate_screen());
    }

    #[test]
    fn snapshot_size_does_not_grow_with_history() {
        let mut p = ScreenProvider::new(24, 80);
        let mut sizes = Vec::new();
        for round in 0..3 {
            for i in 0..(1000 * (round + 1)) {
                p.feed(format!("line {i} of round {round}\r\n").as_bytes());
            }
            let mut out = Vec::new();
            p.snapshot(&mut out);
            sizes.push(out.len());
        }
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(*max <= 24 * 81 + 64, "bounded by the screen: {sizes:?}");
        assert!(max - min < 64, "independent of history: {sizes:?}");
    }
}
