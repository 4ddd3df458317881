//! Linux calls: an epoll set, a process-wide "stop requested" flag set from SIGTERM/SIGINT, and
//! moving a descriptor to a fixed number in a hook's child process.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// An epoll instance. Registered descriptors are identified by a `u64` token.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` was just created and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        })
    }

    /// Watches `fd` for readability, reporting `token`.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event; both descriptors are open for the call.
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &raw mut ev,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits up to `timeout` and returns the tokens of the ready descriptors. A signal ends the
    /// wait early with no tokens.
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<impl Iterator<Item = u64> + '_> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // Round up so a sub-millisecond deadline is not a busy loop.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        // SAFETY: `events` is a writable array of `len` epoll_event structs.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        let n = if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            0
        } else {
            n as usize
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM and SIGINT set the stop flag instead of killing the process. Installed
/// without `SA_RESTART`, so a blocking `epoll_wait` returns at once.
pub(crate) fn install_stop_signals() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: sigaction is plain old data; all-zero is an empty mask with no flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; `action`
        // is a valid sigaction and the old action is not requested.
        let rc = unsafe { libc::sigaction(sig, &raw const action, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGTERM or SIGINT has arrived since [`install_stop_signals`].
pub(crate) fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Arranges for `fd` to be open as descriptor `target` (without close-on-exec) in the child
/// `cmd` spawns.
pub(crate) fn pass_fd_as(cmd: &mut Command, fd: RawFd, target: RawFd) {
    let action = move || {
        // `fd` is open in the child (inherited from the parent, which keeps it open until
        // spawn returns). dup2 clears close-on-exec on `target`; when `fd == target` the flag
        // has to be cleared explicitly.
        let rc = if fd == target {
            // fcntl itself, not platform_primitives::fd::set_cloexec: this runs between fork
            // and exec, where only async-signal-safe calls are allowed, and that function's
            // contract does not promise to stay one. Clearing every descriptor flag is what
            // dup2 does for `target` too.
            // SAFETY: fcntl is async-signal-safe and takes an integer argument here.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
        } else {
            // SAFETY: dup2 is async-signal-safe; both numbers are valid descriptor numbers.
            unsafe { libc::dup2(fd, target) }
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions, allocating nothing.
    unsafe { cmd.pre_exec(action) };
}

/// The first socket passed by socket activation (`LISTEN_PID` = this process, `LISTEN_FDS` ≥ 1,
/// taken with `platform-primitives`' [`take_listen_fds`]), checked to be a Unix datagram socket.
/// `Ok(None)` when the process was not socket-activated. Any further descriptor passed is
/// closed: the daemon serves one socket.
///
/// [`take_listen_fds`]: platform_primitives::notify::take_listen_fds
pub(crate) fn take_listen_socket() -> io::Result<Option<std::os::unix::net::UnixDatagram>> {
    let mut passed = platform_primitives::notify::take_listen_fds()?.into_iter();
    let Some((name, fd)) = passed.next() else {
        return Ok(None);
    };
    let option = |name| platform_primitives::fd::socket_option(fd.as_fd(), name);
    if option(libc::SO_TYPE)? != libc::SOCK_DGRAM || option(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the socket passed as LISTEN_FDS descriptor 3 ({name}) is not a Unix datagram socket"
            ),
        ));
    }
    Ok(Some(fd.into()))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the (old soft, new soft) pair.
pub(crate) fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one needs no
        // privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((old, limit.rlim_cur))
}

/// A pidfd of process `pid` (`pidfd_open(2)`, Linux 5.3), close-on-exec.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and touches no memory; a non-negative result is
    // a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just installed this descriptor for us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether `SO_PASSCRED` is on for a socket.
pub(crate) fn passcred_enabled(socket: BorrowedFd<'_>) -> io::Result<bool> {
    platform_primitives::fd::socket_option(socket, libc::SO_PASSCRED).map(|on| on != 0)
}

/// The real, effective, saved and filesystem uids of process `pid`, from `/proc/<pid>/status`.
pub(crate) fn process_uids(pid: u32) -> io::Result<[u32; 4]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid: line"))?;
    let mut uids = [0u32; 4];
    let mut words = line.split_whitespace();
    for uid in &mut uids {
        *uid = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad Uid: line"))?;
    }
    Ok(uids)
}

/// The start time (clock ticks after boot) and state letter of process `pid`, from
/// `/proc/<pid>/stat`. Together with the pid, the start time names one process: a recycled pid
/// has a later start time.
pub(crate) fn process_start(pid: u32) -> io::Result<(u64, u8)> {
    let stat = std::fs::read(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = stat
        .iter()
        .rposition(|&b| b == b')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ')' in stat"))?;
    let text = std::str::from_utf8(rest)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "stat is not UTF-8"))?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    let state = fields.first().and_then(|s| s.bytes().next());
    let start = fields.get(19).and_then(|s| s.parse::<u64>().ok());
    match (start, state) {
        (Some(start), Some(state)) => Ok((start, state)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short stat line",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn own_process_has_a_start_time_our_uids_and_a_live_pidfd() {
        let me = std::process::id();
        let (start, state) = process_start(me).expect("stat");
        assert!(start > 0);
        assert!(matches!(state, b'R' | b'S'), "{}", state as char);
        let uids = process_uids(me).expect("uids");
        // SAFETY: getuid cannot fail and touches no memory.
        assert_eq!(uids[0], unsafe { libc::getuid() });
        let pidfd = pidfd_open(me).expect("pidfd_open");
        assert!(platform_primitives::process::pidfd_alive(pidfd.as_fd()));
    }
}
