//! Running a program in a real pseudo-terminal.
//!
//! A session server needs the program to believe it writes to a terminal (line buffering,
//! colours, full-screen drawing), and needs to be the terminal: read what the program prints
//! from the master side, write keystrokes to it, and know when the program is gone. [`Pty`]
//! opens a pty pair with both ends close-on-exec (so no other child inherits them and hides
//! the end of output), spawns the program with the slave as its standard input, output and
//! error, in a new session whose controlling terminal is that slave, and keeps the master.
//!
//! End of output: once the program (and anything it spawned that holds the terminal) has
//! exited, reading the master fails with `EIO` on Linux (see [`is_end_of_output`]) after every
//! byte the program wrote has been read.
//!
//! ```no_run
//! use std::io::Read;
//! use std::process::Command;
//! use engate_attach::pty::{Pty, PtySize, is_end_of_output};
//!
//! let mut cmd = Command::new("seq");
//! cmd.args(["1", "3"]);
//! let mut pty = Pty::spawn(cmd, PtySize::default())?;
//! let mut reader = pty.reader()?;
//! let mut out = Vec::new();
//! let mut buf = [0u8; 4096];
//! loop {
//!     match reader.read(&mut buf) {
//!         Ok(0) => break,
//!         Ok(n) => out.extend_from_slice(&buf[..n]),
//!         Err(e) if is_end_of_output(&e) => break,
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! assert_eq!(out, b"1\r\n2\r\n3\r\n"); // the terminal turns \n into \r\n
//! pty.child_mut().wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};

use crate::sys;

/// Sets the size of the terminal whose master side `master` is (a [`Pty::writer`] or
/// [`Pty::reader`] handle works as well); the program gets `SIGWINCH`.
pub(crate) fn resize_terminal(master: BorrowedFd<'_>, size: PtySize) -> Result<(), PtyError> {
    sys::unix::set_winsize(master, size.rows, size.cols).map_err(|source| PtyError::Resize {
        rows: size.rows,
        cols: size.cols,
        source,
    })
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl Default for PtySize {
    /// 24 × 80.
    fn default() -> Self {
        Self { rows: 24, cols: 80 }
    }
}

/// Why a pseudo-terminal could not be set up or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PtyError {
    /// The kernel would not open a pty pair (out of ptys, or `/dev/ptmx` missing).
    #[error("cannot open a pseudo-terminal pair")]
    Open(#[source] io::Error),
    /// The window size could not be set.
    #[error("cannot set the pseudo-terminal's size to {rows}x{cols}")]
    Resize {
        /// Requested rows.
        rows: u16,
        /// Requested columns.
        cols: u16,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The program could not be started.
    #[error("cannot start {program} in a pseudo-terminal")]
    Spawn {
        /// The program, as given to the command.
        program: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The master descriptor could not be duplicated for a reader or writer.
    #[error("cannot duplicate the pseudo-terminal's master descriptor")]
    Duplicate(#[source] io::Error),
}

/// Opens a pseudo-terminal pair, `(master, slave)`, both ends close-on-exec from the start (on
/// Linux atomically: `posix_openpt(O_CLOEXEC)` and `TIOCGPTPEER`). [`Pty::spawn`] uses it; it
/// is public for programs and tests that put a terminal somewhere else (a client's standard
/// input, say).
///
/// # Errors
///
/// The system call that failed.
pub fn open_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::os::open_pty()
}

/// A program running in a pseudo-terminal, and the terminal's master side.
#[derive(Debug)]
pub struct Pty {
    master: OwnedFd,
    child: Child,
}

impl Pty {
    /// Spawns `cmd` in a new pseudo-terminal of `size`.
    ///
    /// The command is consumed: its copies of the slave descriptor are closed once the program
    /// has started, so only the program holds the terminal and the master sees its end.
    pub fn spawn(mut cmd: Command, size: PtySize) -> Result<Self, PtyError> {
        let (master, slave) = open_pair().map_err(PtyError::Open)?;
        sys::unix::set_winsize(master.as_fd(), size.rows, size.cols).map_err(|source| {
            PtyError::Resize {
                rows: size.rows,
                cols: size.cols,
                source,
            }
        })?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let spawn_error = |source| PtyError::Spawn {
            program: program.clone(),
            source,
        };
        let stdin = slave.try_clone().map_err(spawn_error)?;
        let stdout = slave.try_clone().map_err(spawn_error)?;
        cmd.stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(slave));
        sys::unix::control_terminal_in_child(&mut cmd);
        let child = cmd.spawn().map_err(spawn_error)?;
        drop(cmd);
        Ok(Self { master, child })
    }

    /// A handle that reads what the program prints.
    pub fn reader(&self) -> Result<File, PtyError> {
        self.master
            .try_clone()
            .map(File::from)
            .map_err(PtyError::Duplicate)
    }

    /// A handle that writes to the program's input (keystrokes).
    pub fn writer(&self) -> Result<File, PtyError> {
        self.reader()
    }

    /// Changes the terminal size (the program gets `SIGWINCH`).
    pub fn resize(&self, size: PtySize) -> Result<(), PtyError> {
        resize_terminal(self.master.as_fd(), size)
    }

    /// The program's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The program's process handle (to wait for it, or to kill it).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Splits into the master descriptor and the process handle.
    pub fn into_parts(self) -> (OwnedFd, Child) {
        (self.master, self.child)
    }
}

/// Whether a read error from the master means the program side has closed (Linux reports
/// `EIO` once every holder of the slave is gone and the buffered output has been read).
pub fn is_end_of_output(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EIO)
}

/// Sends `SIGHUP` to a child that has not been reaped (the terminal hung up).
pub(crate) fn hang_up(pid: u32) -> io::Result<()> {
    platform_primitives::process::signal(pid, libc::SIGHUP)
}
