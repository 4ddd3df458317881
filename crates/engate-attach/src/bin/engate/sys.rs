//! The program's system calls, all in one place: terminal modes and window size, blocking and
//! waiting for signals, starting a new session in a child, sending signals, and waiting for
//! descriptors. The modules above this one are safe code.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// A terminal's modes, as `tcgetattr` reports them.
#[derive(Clone, Copy)]
pub(crate) struct Modes(libc::termios);

impl std::fmt::Debug for Modes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Modes { .. }")
    }
}

impl Modes {
    /// The modes of the terminal behind `fd`.
    pub(crate) fn get(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let mut t = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: `fd` is open for the call; tcgetattr writes one `termios` through the
        // pointer, which points at writable memory of that size.
        if unsafe { libc::tcgetattr(fd.as_raw_fd(), t.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: tcgetattr succeeded, so it initialized the structure.
        Ok(Self(unsafe { t.assume_init() }))
    }

    /// These modes made raw: no echo, no line editing, no signals from keys, 8-bit bytes.
    pub(crate) fn raw(&self) -> Self {
        let mut t = self.0;
        // SAFETY: cfmakeraw only rewrites the flag fields of the `termios` it is given, which
        // is a valid, initialized local.
        unsafe { libc::cfmakeraw(&raw mut t) };
        Self(t)
    }

    /// Applies these modes to the terminal behind `fd` once pending output is written.
    pub(crate) fn set(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: `fd` is open for the call; tcsetattr reads one initialized `termios`.
        if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSADRAIN, &raw const self.0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The size of the terminal behind `fd`: (rows, columns).
pub(crate) fn window_size(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut size = MaybeUninit::<libc::winsize>::zeroed();
    // SAFETY: `fd` is open for the call; TIOCGWINSZ writes one `winsize` through the pointer,
    // which points at writable memory of that size.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ as _, size.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero is a valid `winsize`, and the ioctl succeeded.
    let size = unsafe { size.assume_init() };
    Ok((size.ws_row, size.ws_col))
}

/// Proof that no other thread exists yet, for [`Signals::block`]; a clear error otherwise
/// (a signal mask set after threads started would leave them taking the signals).
pub(crate) fn single_threaded()
-> Result<platform_primitives::threads::PreThreadAttestation, crate::Failure> {
    platform_primitives::threads::PreThreadAttestation::new()
        .map_err(|e| crate::Failure::new(format!("cannot block signals: {e}")))
}

/// A set of signals blocked in the calling thread (and every thread it starts afterwards), to
/// be taken one at a time with [`wait`](Self::wait) instead of by a handler.
#[derive(Clone, Copy)]
pub(crate) struct Signals(libc::sigset_t);

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signals { .. }")
    }
}

impl Signals {
    /// Blocks `signals` in the calling thread. It must run before any other thread exists, so
    /// that none of them takes the signals either: the attestation is the proof. Children
    /// started with `std::process::Command` begin with an empty mask again.
    pub(crate) fn block(
        _single_threaded: &platform_primitives::threads::PreThreadAttestation,
        signals: &[libc::c_int],
    ) -> io::Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initializes the set it is given.
        if unsafe { libc::sigemptyset(set.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sigemptyset succeeded, so the set is initialized.
        let mut set = unsafe { set.assume_init() };
        for &signal in signals {
            // SAFETY: `set` is an initialized signal set; `signal` is a signal number.
            if unsafe { libc::sigaddset(&raw mut set, signal) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `set` is initialized; the old mask is not asked for.
        let rc =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Self(set))
    }

    /// Waits for one of the signals to be delivered and returns its number.
    pub(crate) fn wait(&self) -> io::Result<libc::c_int> {
        let mut signal = 0;
        // SAFETY: the set is initialized and `signal` is a writable integer.
        let rc = unsafe { libc::sigwait(&raw const self.0, &raw mut signal) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(signal)
    }
}

/// Makes the spawned child the leader of a new session with no controlling terminal, so the
/// terminal it was started from can neither stop it nor hang it up.
pub(crate) fn new_session_in_child(cmd: &mut Command) {
    let setup = || {
        // SAFETY: setsid takes no arguments and is async-signal-safe; it runs in the forked
        // child before exec.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls setsid, which is async-signal-safe, and touches no memory
    // shared with the parent, as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(setup);
    }
}

/// Points standard input, output and error at `null` (`/dev/null`), letting go of whatever
/// they were (the pipes `engate new` waits on).
pub(crate) fn redirect_stdio(null: BorrowedFd<'_>) -> io::Result<()> {
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: `null` is open for the call; dup2 replaces the standard descriptor, which
        // this process owns and which `std::io`'s handles keep using by number.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The real user id of this process.
pub(crate) fn user_id() -> u32 {
    // SAFETY: getuid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// Waits until at least one of `fds` is readable (or hung up), or `timeout` passes (`None`:
/// no limit). Returns, for each descriptor, whether it is ready.
pub(crate) fn wait_readable<const N: usize>(
    fds: [Option<BorrowedFd<'_>>; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    // A negative descriptor is ignored by poll: that leaves a slot out.
    let mut polled = fds.map(|fd| libc::pollfd {
        fd: fd.map_or(-1, |fd| fd.as_raw_fd()),
        events: libc::POLLIN,
        revents: 0,
    });
    let timeout = timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `polled` is an initialized array of `N` pollfd structures that outlives the
    // call, and `N` is its length; every descriptor in it is borrowed for the call.
    let rc = unsafe { libc::poll(polled.as_mut_ptr(), N as libc::nfds_t, timeout) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(e);
    }
    Ok(polled.map(|p| p.revents != 0))
}
