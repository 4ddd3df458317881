//! The program's system calls, all in one place: terminal modes and window size, blocking
//! signals (through platform-primitives' `SignalSet`), starting a new session in a child, sending signals, and waiting for
//! descriptors. The modules above this one are safe code.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use platform_primitives::signals::SignalSet;
use platform_primitives::threads::PreThreadAttestation;

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

/// Blocks `signals` in every thread, proving first that no other thread exists yet (a mask
/// set after threads started would leave them taking the signals).
pub(crate) fn block_signals(signals: &[libc::c_int]) -> Result<SignalSet, crate::Failure> {
    let single = PreThreadAttestation::new()
        .map_err(|e| crate::Failure::new(format!("cannot block signals: {e}")))?;
    SignalSet::block(&single, signals)
        .map_err(|e| crate::Failure::from_io("cannot block signals", &e))
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

/// Stops this process as a suspended job stops: `SIGTSTP` with its default action, let
/// through to this thread alone (the signal thread waits for it otherwise). The kernel
/// discards it in an orphaned process group, where nobody could continue the client, as it
/// does for any program. Returns once the process is continued.
pub(crate) fn stop_self() {
    // SAFETY: a zeroed sigset_t is a valid value for sigemptyset to initialise.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t that outlives the call.
    unsafe { libc::sigemptyset(&raw mut set) };
    // SAFETY: as above; SIGTSTP is a valid signal number.
    unsafe { libc::sigaddset(&raw mut set, libc::SIGTSTP) };
    let mask = |how| {
        // SAFETY: `set` is an initialised sigset_t; only this thread's mask changes.
        unsafe { libc::pthread_sigmask(how, &raw const set, std::ptr::null_mut()) };
    };
    mask(libc::SIG_UNBLOCK);
    // SAFETY: raise sends SIGTSTP to this thread, which now lets it through: its default
    // action stops the process until it is continued.
    unsafe { libc::raise(libc::SIGTSTP) };
    mask(libc::SIG_BLOCK);
}

/// Shuts a socket down both ways (whoever else holds a descriptor of it).
pub(crate) fn shut_down(socket: BorrowedFd<'_>) {
    // SAFETY: `socket` is borrowed for the call; shutdown only changes the socket's state.
    unsafe {
        libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Whether `a` and `b` are the same terminal (standard input and output on one tty).
pub(crate) fn same_terminal(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    let device = |fd: BorrowedFd<'_>| {
        // SAFETY: a zeroed `stat` is a valid value for fstat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is borrowed for the call; `st` is a valid stat that outlives it.
        let rc = unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) };
        (rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFCHR).then_some(st.st_rdev)
    };
    device(a).is_some_and(|d| device(b) == Some(d))
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

#[cfg(test)]
impl Modes {
    /// Whether these modes echo typed characters (cooked mode does, raw mode does not).
    pub(crate) fn echoes(&self) -> bool {
        self.0.c_lflag & libc::ECHO != 0
    }
}

/// A real pseudo-terminal put on this process's standard input, for the raw-mode tests.
#[cfg(test)]
pub(crate) mod test_terminal {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};

    /// While it lives, descriptor 0 is the slave side of a new pty; the old descriptor 0 comes
    /// back on drop.
    pub(crate) struct StdinTerminal {
        _master: OwnedFd,
        saved_stdin: OwnedFd,
    }

    impl StdinTerminal {
        pub(crate) fn new() -> io::Result<Self> {
            let (master, slave) = engate_attach::pty::open_pair()?;
            let saved_stdin = io::stdin().as_fd().try_clone_to_owned()?;
            // SAFETY: both descriptors are open; dup2 replaces descriptor 0 atomically.
            if unsafe { libc::dup2(slave.as_raw_fd(), 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self {
                _master: master,
                saved_stdin,
            })
        }
    }

    impl Drop for StdinTerminal {
        fn drop(&mut self) {
            // SAFETY: both descriptors are open; dup2 puts the old standard input back.
            unsafe { libc::dup2(self.saved_stdin.as_raw_fd(), 0) };
        }
    }
}
