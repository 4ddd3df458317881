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
    /// Where a copy of the screen leaves the alternate screen, to draw the primary one.
    scratch: vt100::Parser,
    rows: NonZeroU16,
    cols: NonZeroU16,
}

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
        }
    }

    /// The parsed screen, for inspection.
    pub fn screen(&self) -> &vt100::Screen {
        self.parser.screen()
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
        self.rows = NonZeroU16::new(rows).unwrap_or(NonZeroU16::MIN);
        self.cols = NonZeroU16::new(cols).unwrap_or(NonZeroU16::MIN);
        self.parser.screen_mut().set_size(self.rows, self.cols);
        self.scratch.screen_mut().set_size(self.rows, self.cols);
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.parser.process(bytes);
    }

    fn snapshot(&mut self, out: &mut Vec<u8>) {
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
