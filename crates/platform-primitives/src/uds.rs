//! Binding a Unix socket at a filesystem path the way a daemon needs it.
//!
//! A path is a shared, persistent name: a crashed predecessor leaves its socket inode behind, a
//! second instance may be starting at the same moment, an operator may have put a regular file
//! there, and `bind(2)` creates the inode with the mode the process umask dictates. [`UdsBinder`]
//! settles each case:
//!
//! - **Mode before reachability.** The socket is bound inside a private staging directory
//!   (mode 0700) next to the target, `chmod`ed there, and only then hard-linked to the target
//!   path. No peer can reach it before its mode is final, and the process umask is never
//!   changed. `link(2)` fails with `EEXIST` instead of replacing whatever is at the path.
//! - **A live listener wins.** If a connect to the occupant succeeds, the bind fails with
//!   [`BindError::AlreadyRunning`] ("another `<daemon>` is already running at `<path>`").
//! - **A stale socket is replaced.** If nobody is bound to the occupant, it is unlinked and the
//!   new socket linked in its place, all under an exclusive `flock` of the directory: two
//!   instances recovering the same path at once cannot unlink each other's fresh socket, so
//!   exactly one wins. (Processes that remove sockets without this lock are outside that
//!   guarantee.)
//! - **Anything else is left alone.** A regular file, directory or symlink at the path yields
//!   [`BindError::NotASocket`]; it is never removed.
//! - **Durability.** The parent directory is fsync'd after the bind and after a stale
//!   recovery; failures are counted (see [`drain_dir_fsync_failures`]) rather than failing the
//!   bind, since the socket works either way.
//! - **Cleanup.** Dropping the [`BoundSocket`] unlinks the path only if it still names the inode
//!   this bind created, so a newer instance's socket is never removed.
//!
//! ```
//! use platform_primitives::uds::{BindError, UdsBinder};
//!
//! let path = std::env::temp_dir().join(format!("pp-uds-doc-{}.sock", std::process::id()));
//! let binder = UdsBinder::new("demo-daemon").mode(0o660);
//! let first = binder.bind_listener(&path)?;
//! let second = binder.bind_listener(&path).unwrap_err();
//! assert!(matches!(second, BindError::AlreadyRunning { .. }));
//! assert!(second.to_string().contains("another demo-daemon is already running at"));
//! drop(first);
//! assert!(!path.exists());
//! # Ok::<(), BindError>(())
//! ```

use std::fs::{self, File};
use std::io;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::unix::{Probe, flock, fsync, max_socket_path_len, probe_socket};

/// How many times a bind re-examines an occupied path before giving up.
const MAX_RECOVERY_ATTEMPTS: u32 = 4;

static DIR_FSYNC_FAILURES: AtomicU64 = AtomicU64::new(0);
static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Returns how many parent-directory fsyncs have failed in this process since the last call,
/// and resets the count.
///
/// A failed directory fsync does not fail the bind (the socket is usable), but it means the
/// directory entry may not survive a power loss; daemons export this as a metric.
pub fn drain_dir_fsync_failures() -> u64 {
    DIR_FSYNC_FAILURES.swap(0, Ordering::Relaxed)
}

/// Why a socket could not be bound at a path. Every variant names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A live socket already serves the path: another instance of the daemon is running.
    #[error("another {daemon} is already running at {}", path.display())]
    AlreadyRunning {
        /// The daemon name given to [`UdsBinder::new`].
        daemon: String,
        /// The contested path.
        path: PathBuf,
    },
    /// The path is occupied by something that is not a socket; it was left untouched.
    #[error("{}: path exists and is not a socket; remove it or choose another path", path.display())]
    NotASocket {
        /// The occupied path.
        path: PathBuf,
    },
    /// The path cannot name a socket (no file name, or a NUL byte).
    #[error("{} cannot be a socket path: {reason}", path.display())]
    InvalidPath {
        /// The rejected path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path (or the staging name next to it) does not fit in `sockaddr_un`.
    #[error("socket path {} is too long: binding needs {needed} bytes, the limit is {max}", path.display())]
    PathTooLong {
        /// The requested path.
        path: PathBuf,
        /// The bytes the longest path used by the bind takes.
        needed: usize,
        /// The platform's limit.
        max: usize,
    },
    /// The directory that should hold the socket is missing or unusable.
    #[error("cannot use directory {} for socket {}", dir.display(), path.display())]
    ParentDirectory {
        /// The parent directory.
        dir: PathBuf,
        /// The requested socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A step of the bind failed at the OS level.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// The step, phrased to precede the path.
        op: &'static str,
        /// The path the step worked on.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Other processes kept replacing the path while it was being recovered.
    #[error("{} kept changing while a stale socket was being recovered ({attempts} attempts); retry", path.display())]
    Contended {
        /// The contested path.
        path: PathBuf,
        /// How many times the path was re-examined.
        attempts: u32,
    },
}

impl BindError {
    /// The `io::ErrorKind` this error maps to: `AddrInUse` for every "the path is taken" case.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::AlreadyRunning { .. } | Self::NotASocket { .. } | Self::Contended { .. } => {
                io::ErrorKind::AddrInUse
            }
            Self::InvalidPath { .. } | Self::PathTooLong { .. } => io::ErrorKind::InvalidInput,
            Self::ParentDirectory { source, .. } | Self::Io { source, .. } => source.kind(),
        }
    }

    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

impl From<BindError> for io::Error {
    fn from(err: BindError) -> Self {
        io::Error::new(err.kind(), err)
    }
}

/// Socket types [`UdsBinder`] can bind. Sealed: implemented for the std Unix socket types.
pub trait Bindable: Sized + sealed::Sealed {
    /// Whether peers reach it with a stream connect (else a datagram connect).
    const STREAM: bool;
    /// Binds a new socket of this type at `path` (and listens, for a listener).
    fn bind_at(path: &Path) -> io::Result<Self>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::os::unix::net::UnixDatagram {}
    impl Sealed for std::os::unix::net::UnixListener {}
}

impl Bindable for UnixDatagram {
    const STREAM: bool = false;
    fn bind_at(path: &Path) -> io::Result<Self> {
        UnixDatagram::bind(path)
    }
}

impl Bindable for UnixListener {
    const STREAM: bool = true;
    fn bind_at(path: &Path) -> io::Result<Self> {
        UnixListener::bind(path)
    }
}

/// Binds Unix sockets at paths for a named daemon. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct UdsBinder {
    daemon: String,
    mode: u32,
}

impl UdsBinder {
    /// A binder for `daemon` (used in "another `<daemon>` is already running" errors), with the
    /// default mode 0o600.
    pub fn new(daemon: impl Into<String>) -> Self {
        Self {
            daemon: daemon.into(),
            mode: 0o600,
        }
    }

    /// Sets the permission bits the socket has before any peer can reach it.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }

    /// Binds a datagram socket at `path`.
    pub fn bind_datagram(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<BoundSocket<UnixDatagram>, BindError> {
        self.bind(path)
    }

    /// Binds a listening stream socket at `path`.
    pub fn bind_listener(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<BoundSocket<UnixListener>, BindError> {
        self.bind(path)
    }

    /// Binds a socket of type `S` at `path`.
    pub fn bind<S: Bindable>(&self, path: impl AsRef<Path>) -> Result<BoundSocket<S>, BindError> {
        self.bind_with(path, |_| Ok(()))
    }

    /// Binds a socket of type `S` at `path`, running `setup` on it before any peer can reach
    /// it — for options that must hold for the very first datagram, such as asking the kernel
    /// to attach sender credentials (a datagram sent before `SO_PASSCRED` is set carries none).
    ///
    /// ```
    /// use std::os::unix::net::UnixDatagram;
    /// use platform_primitives::uds::UdsBinder;
    ///
    /// let path = std::env::temp_dir().join(format!("pp-setup-doc-{}.sock", std::process::id()));
    /// let bound = UdsBinder::new("doc").bind_with(&path, |socket: &UnixDatagram| {
    ///     socket.set_nonblocking(true)
    /// })?;
    /// # drop(bound);
    /// # Ok::<(), platform_primitives::uds::BindError>(())
    /// ```
    pub fn bind_with<S: Bindable>(
        &self,
        path: impl AsRef<Path>,
        setup: impl FnOnce(&S) -> io::Result<()>,
    ) -> Result<BoundSocket<S>, BindError> {
        let path = path.as_ref();
        let dir = parent_dir(path)?;
        let dir_handle = File::open(&dir).map_err(|source| BindError::ParentDirectory {
            dir: dir.clone(),
            path: path.to_owned(),
            source,
        })?;
        let staging = Staging::create(&dir, path)?;
        let staged = staging.socket_path();
        check_len(path, &staged)?;

        let socket =
            S::bind_at(&staged).map_err(|e| BindError::io("bind a socket at", &staged, e))?;
        setup(&socket).map_err(|e| BindError::io("set up the socket for", path, e))?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(self.mode))
            .map_err(|e| BindError::io("set the mode of", &staged, e))?;
        let meta = fs::symlink_metadata(&staged)
            .map_err(|e| BindError::io("inspect the socket at", &staged, e))?;

        if let Err(e) = fs::hard_link(&staged, path) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(BindError::io("link the socket into place at", path, e));
            }
            // Occupied. Recovery runs under an exclusive lock on the directory, so binders of
            // this crate never unlink a socket that another one has just put in place.
            let _lock = DirLock::acquire(&dir_handle)
                .map_err(|e| BindError::io("lock the directory", &dir, e))?;
            self.link_over_stale(path, &staged, S::STREAM, &dir_handle)?;
        }
        fsync_counted(&dir_handle);
        drop(staging);

        Ok(BoundSocket {
            socket,
            path: SocketPath {
                path: path.to_owned(),
                dev: meta.dev(),
                ino: meta.ino(),
            },
        })
    }

    /// With the directory locked: removes a stale socket at `path` and links `staged` there.
    /// Fails if the occupant is live or is not a socket.
    fn link_over_stale(
        &self,
        path: &Path,
        staged: &Path,
        stream: bool,
        dir: &File,
    ) -> Result<(), BindError> {
        for _ in 0..MAX_RECOVERY_ATTEMPTS {
            match fs::symlink_metadata(path) {
                Ok(meta) if !meta.file_type().is_socket() => {
                    return Err(BindError::NotASocket {
                        path: path.to_owned(),
                    });
                }
                Ok(_) => match probe_socket(path, stream) {
                    Ok(Probe::Live) => {
                        return Err(BindError::AlreadyRunning {
                            daemon: self.daemon.clone(),
                            path: path.to_owned(),
                        });
                    }
                    Ok(Probe::Stale) => match fs::remove_file(path) {
                        Ok(()) => fsync_counted(dir),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(BindError::io("remove the stale socket at", path, e)),
                    },
                    Ok(Probe::Gone) => {}
                    Err(e) => return Err(BindError::io("probe the existing socket at", path, e)),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(BindError::io("inspect the existing file at", path, e)),
            }
            match fs::hard_link(staged, path) {
                Ok(()) => return Ok(()),
                // Someone outside this crate's lock took the path meanwhile: look again.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(BindError::io("link the socket into place at", path, e)),
            }
        }
        Err(BindError::Contended {
            path: path.to_owned(),
            attempts: MAX_RECOVERY_ATTEMPTS,
        })
    }
}

/// An exclusive `flock` on a directory, released on drop.
struct DirLock<'a>(&'a File);

impl<'a> DirLock<'a> {
    fn acquire(dir: &'a File) -> io::Result<Self> {
        flock(dir.as_fd(), true)?;
        Ok(Self(dir))
    }
}

impl Drop for DirLock<'_> {
    fn drop(&mut self) {
        let _ = flock(self.0.as_fd(), false);
    }
}

fn parent_dir(path: &Path) -> Result<PathBuf, BindError> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(BindError::InvalidPath {
            path: path.to_owned(),
            reason: "it contains a NUL byte",
        });
    }
    if path.file_name().is_none() {
        return Err(BindError::InvalidPath {
            path: path.to_owned(),
            reason: "it has no file name",
        });
    }
    Ok(match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    })
}

fn check_len(path: &Path, staged: &Path) -> Result<(), BindError> {
    let max = max_socket_path_len();
    let needed = path.as_os_str().len().max(staged.as_os_str().len());
    if needed > max {
        return Err(BindError::PathTooLong {
            path: path.to_owned(),
            needed,
            max,
        });
    }
    Ok(())
}

fn fsync_counted(dir: &File) {
    if fsync(dir.as_fd()).is_err() {
        DIR_FSYNC_FAILURES.fetch_add(1, Ordering::Relaxed);
    }
}

/// A private directory beside the target path where the socket is bound and moded before it
/// becomes reachable. Removed on drop.
#[derive(Debug)]
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(parent: &Path, target: &Path) -> Result<Self, BindError> {
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        // Short on purpose: the staged socket path must fit in sockaddr_un too.
        let dir = parent.join(format!(".uds-{:x}-{n:x}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
                    BindError::ParentDirectory {
                        dir: parent.to_owned(),
                        path: target.to_owned(),
                        source,
                    }
                }
                _ => BindError::io("create the staging directory", &dir, source),
            })?;
        let staging = Self { dir };
        // The umask may have removed owner bits from 0700; nobody else can enter either way.
        fs::set_permissions(&staging.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| BindError::io("set the mode of", &staging.dir, e))?;
        Ok(staging)
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.join("s")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.socket_path());
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The filesystem name of a bound socket. Dropping it unlinks the path if, and only if, the
/// path still names the inode created by the bind.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketPath {
    /// The path the socket was bound at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names this socket's inode.
    pub fn is_ours(&self) -> bool {
        fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == (self.dev, self.ino))
            .unwrap_or(false)
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        // A path removed or replaced by someone else is theirs now: nothing to do, no error.
        if self.is_ours() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A socket bound by [`UdsBinder`] together with its path, which is unlinked on drop.
///
/// Derefs to the socket. Use [`into_parts`](Self::into_parts) to hand the socket to an async
/// runtime while keeping the path guard alive.
#[derive(Debug)]
pub struct BoundSocket<S> {
    socket: S,
    path: SocketPath,
}

impl<S> BoundSocket<S> {
    /// The bound socket.
    pub fn socket(&self) -> &S {
        &self.socket
    }

    /// The path the socket was bound at.
    pub fn path(&self) -> &Path {
        self.path.path()
    }

    /// Splits into the socket and the guard that unlinks its path on drop.
    pub fn into_parts(self) -> (S, SocketPath) {
        (self.socket, self.path)
    }
}

impl<S> Deref for BoundSocket<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.socket
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn failed_directory_fsync_is_counted() {
        // fsync on a pipe fails with EINVAL: the counter must move.
        let (r, _w) = std::io::pipe().expect("pipe");
        let file = File::from(OwnedFd::from(r));
        let before = drain_dir_fsync_failures();
        fsync_counted(&file);
        assert_eq!(drain_dir_fsync_failures(), 1, "before: {before}");
        assert_eq!(drain_dir_fsync_failures(), 0, "draining resets the count");
    }

    #[test]
    fn path_without_file_name_is_rejected() {
        let err = UdsBinder::new("t").bind_datagram("/").unwrap_err();
        assert!(matches!(err, BindError::InvalidPath { .. }), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
