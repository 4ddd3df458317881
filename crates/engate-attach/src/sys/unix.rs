//! POSIX calls shared by Linux and macOS: the terminal window size, making a child the leader
//! of a new session with the pseudo-terminal as its controlling terminal, signals, and waiting
//! for descriptors to become readable.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// Sets the window size of the terminal behind `fd` (either side of a pty pair).
pub(crate) fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is a valid open descriptor for the duration of the call; TIOCSWINSZ reads a
    // `winsize`, and `size` is an initialized one that outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ as _, &raw const size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the spawned child the leader of a new session whose controlling terminal is its
/// standard input (the pty's slave side, which the caller has set as stdin).
pub(crate) fn control_terminal_in_child(cmd: &mut Command) {
    let setup = || {
        // SAFETY: setsid takes no arguments and is async-signal-safe; it runs in the forked
        // child before exec, where only async-signal-safe calls are allowed.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: descriptor 0 is the pty slave (set up by `Command` before this hook runs);
        // TIOCSCTTY takes an integer argument. ioctl is async-signal-safe.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY as _, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls setsid and ioctl, both async-signal-safe, and touches no
    // memory shared with the parent, as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(setup);
    }
}

/// Waits until at least one of `fds` is readable (or hung up, or in error), or `timeout`
/// passes (`None`: no limit). Returns, for each descriptor, whether it is ready; all false
/// on a timeout.
pub(crate) fn wait_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    wait(fds, libc::POLLIN, timeout)
}

fn wait<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let mut polled = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    });
    // Every descriptor in `polled` is borrowed for the call.
    poll(&mut polled, timeout)?;
    Ok(polled.map(|p| p.revents != 0))
}

/// Sends what the socket `fd` takes now, without waiting even if the socket blocks
/// (`MSG_DONTWAIT`): a `WouldBlock` error if it takes nothing. A closed peer is an error, never
/// a `SIGPIPE` (`MSG_NOSIGNAL` on Linux; on macOS the process ignores it, as Rust programs do).
pub(crate) fn send_now(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    const FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    const FLAGS: libc::c_int = libc::MSG_DONTWAIT;
    // SAFETY: `bytes` is valid for reads of its length for the duration of the call, and `fd`
    // is borrowed for it.
    let n = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), FLAGS) };
    // A negative count is the error; anything else fits a usize.
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Receives what the socket `fd` holds now, without waiting even if the socket blocks
/// (`MSG_DONTWAIT`): a `WouldBlock` error if nothing is there, 0 at its end.
pub(crate) fn recv_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call, and `fd`
    // is borrowed for it.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `poll(2)` over `fds` for up to `timeout` (`None`: no limit); the number of ready entries.
/// The caller keeps every descriptor in `fds` open for the call (a closed one is reported
/// `POLLNVAL`, never unsafe).
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let timeout = poll_timeout(timeout);
    let count = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fds` is a valid, initialized slice of `count` pollfd structures that outlives
    // the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout) };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// `poll`'s timeout argument: -1 for none, else milliseconds rounded up (a deadline a fraction
/// of a millisecond away waits that millisecond rather than not at all).
fn poll_timeout(timeout: Option<Duration>) -> libc::c_int {
    timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
    })
}

/// Opens the terminal behind `fd` anew: its own open file description, non-blocking and
/// close-on-exec, never made the caller's controlling terminal. What a client hands over
/// keeps its modes (`O_NONBLOCK` is a property of the open file description, shared by every
/// descriptor of it), and the opened file is checked to be the same device as `fd`.
pub(crate) fn reopen_terminal(fd: BorrowedFd<'_>) -> io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;

    // SAFETY: `fd` is borrowed for the call; isatty only inspects it.
    if unsafe { libc::isatty(fd.as_raw_fd()) } != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the descriptor is not a terminal",
        ));
    }
    let mut name = [0u8; 256];
    // SAFETY: `name` is valid for writes of its length; ttyname_r writes a NUL-terminated path
    // of at most that length or fails.
    let rc = unsafe { libc::ttyname_r(fd.as_raw_fd(), name.as_mut_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&name[..end]));
    // Names that stand for some terminal rather than one: opened here, each would be another
    // terminal than the one handed over (this process's own, a console, a new pty).
    if ALIASES
        .iter()
        .any(|alias| path == std::path::Path::new(alias))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} names no single terminal (hand over the terminal itself)",
                path.display()
            ),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    let given = std::fs::File::from(fd.try_clone_to_owned()?).metadata()?;
    let opened = file.metadata()?;
    if given.rdev() != opened.rdev() {
        return Err(io::Error::other(format!(
            "{} is not the terminal that was handed over",
            path.display()
        )));
    }
    // This process's own controlling terminal: from a background process group, reading it
    // would stop the whole server (SIGTTIN), so the client relays instead. tcgetsid answers
    // only for the caller's controlling terminal.
    // SAFETY: `file` is open for the call; tcgetsid only inspects it.
    if unsafe { libc::tcgetsid(file.as_raw_fd()) } >= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is the session server's own controlling terminal",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// Terminal names that stand for another terminal depending on who opens them.
const ALIASES: [&str; 4] = ["/dev/tty", "/dev/ptmx", "/dev/console", "/dev/pts/ptmx"];

/// Whether the peer of the socket `fd` has shut down its writing side or closed (Linux:
/// `POLLRDHUP`; elsewhere only a full close, `POLLHUP`, is seen), without reading.
pub(crate) fn peer_left(fd: BorrowedFd<'_>) -> bool {
    #[cfg(target_os = "linux")]
    const EVENTS: libc::c_short = libc::POLLRDHUP;
    #[cfg(not(target_os = "linux"))]
    const EVENTS: libc::c_short = 0;
    let mut entry = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: EVENTS,
        revents: 0,
    }];
    matches!(poll(&mut entry, Some(Duration::ZERO)), Ok(1))
        && entry[0].revents & (EVENTS | libc::POLLHUP | libc::POLLERR) != 0
}
