//! The real terminal in raw mode, restored on every way out.
//!
//! [`RawMode::enter`] saves the terminal's modes and makes it raw; the modes come back when the
//! guard is dropped (detach, the program's end, an error, a signal the client takes and turns
//! into an orderly exit) and, through a panic hook installed once, when any thread panics, so
//! a bug never leaves a person's shell without echo.

use std::io::{self, IsTerminal};
use std::os::fd::AsFd;
use std::sync::{Mutex, Once};

use engate_attach::pty::PtySize;

use crate::sys::{self, Modes};

/// The modes to restore, while some guard holds the terminal raw.
static SAVED: Mutex<Option<Modes>> = Mutex::new(None);

/// Puts the saved modes back on standard input, if some are saved.
fn restore_saved() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(modes) = saved {
        let _ = modes.set(io::stdin().as_fd());
    }
}

/// Standard input's terminal in raw mode until dropped.
#[derive(Debug)]
pub(crate) struct RawMode {
    original: Modes,
}

impl RawMode {
    /// Makes standard input's terminal raw; `None` if standard input is not a terminal.
    pub(crate) fn enter() -> io::Result<Option<Self>> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let original = Modes::get(stdin.as_fd())?;
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_saved();
                previous(info);
            }));
        });
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
        original.raw().set(stdin.as_fd())?;
        Ok(Some(Self { original }))
    }

    /// Puts the terminal's own modes back for a while (the client stops; the shell gets the
    /// terminal as it was); [`reapply`](Self::reapply) makes it raw again.
    pub(crate) fn pause(&self) {
        let _ = self.original.set(io::stdin().as_fd());
    }

    /// Makes the terminal raw again (after the shell reset it while the client was stopped).
    pub(crate) fn reapply(&self) {
        let _ = self.original.raw().set(io::stdin().as_fd());
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_saved();
        let _ = self.original.set(io::stdin().as_fd());
    }
}

/// The size of the terminal on standard input (or output), if either is one.
pub(crate) fn size() -> Option<PtySize> {
    let (stdin, stdout) = (io::stdin(), io::stdout());
    let (rows, cols) = sys::window_size(stdin.as_fd())
        .or_else(|_| sys::window_size(stdout.as_fd()))
        .ok()?;
    (rows > 0 && cols > 0).then_some(PtySize { rows, cols })
}

/// Puts back what a full-screen program may have switched on and a detached terminal should
/// not keep: a hidden cursor, mouse reporting, bracketed paste, application keypad and cursor
/// keys, and text attributes.
pub(crate) const RESET_MODES: &[u8] =
    b"\x1b[0m\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[?1l\x1b>";

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic on any thread puts the terminal back at once, while the raw-mode guard still
    /// lives (a client that panics must not leave a person's shell without echo).
    #[test]
    fn a_panic_on_any_thread_puts_the_terminal_back() {
        let _terminal = sys::test_terminal::StdinTerminal::new().expect("a pty as standard input");
        let modes = || Modes::get(io::stdin().as_fd()).expect("tcgetattr");
        assert!(modes().echoes(), "a new pty starts cooked");
        let raw = RawMode::enter()
            .expect("raw mode")
            .expect("standard input is a terminal");
        assert!(!modes().echoes(), "raw mode is on");
        let panicked = std::thread::spawn(|| panic!("a bug in a client thread")).join();
        assert!(panicked.is_err());
        assert!(
            modes().echoes(),
            "the panic hook put the terminal's modes back"
        );
        drop(raw);
        assert!(modes().echoes());
    }
}
