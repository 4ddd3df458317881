//! Firecracker-compatible page-fault handler mode.
//!
//! When Firecracker restores a snapshot with the `Uffd` memory backend, it maps guest memory
//! empty, registers it with a userfaultfd, connects to the handler's Unix stream socket and
//! sends **one** message: a JSON array of `GuestRegionUffdMapping`s with the uffd attached as
//! `SCM_RIGHTS`. It sends nothing else and never closes the socket. The handler then serves
//! the faults.
//!
//! # The handshake across Firecracker versions
//!
//! | versions       | region fields                                                        |
//! |----------------|----------------------------------------------------------------------|
//! | ≤ v1.6         | `base_host_virt_addr`, `size`, `offset`: no page size (host pages)   |
//! | v1.7 – v1.11   | + `page_size_kib`, whose value is in **bytes** despite its name      |
//! | ≥ v1.12        | + `page_size` (bytes); `page_size_kib` still sent, also in bytes     |
//!
//! All three are accepted ([`Handshake::generation`] says which one arrived); unknown fields
//! are ignored. A `page_size_kib` that is a valid page size in KiB (4 or 2048) is read as KiB,
//! since no valid page size in bytes is that small.
//!
//! # Failing closed
//!
//! The handler reads the handshake with no fixed buffer (up to [`HandlerConfig::max_handshake`])
//! under one deadline for the whole handshake ([`HandlerConfig::handshake_timeout`]), checks
//! every region against the source's length, alignment and overlap, takes the peer's identity
//! from `SO_PEERCRED` (and a pidfd), and serves the uffd with this crate's fault server.
//!
//! A VMM whose handshake is refused is **killed** (through its pidfd, so a recycled pid is
//! never hit) and the error, [`HandshakeError::Refused`], names its pid and the reason:
//! Firecracker touches guest memory while loading the snapshot, so a VMM left alive would hang
//! in `PUT /snapshot/load` with its API stuck. A fault that cannot be served correctly later
//! kills the VMM too; it is never handed wrong bytes.
//!
//! Handshakes run on their own threads (at most [`HandlerConfig::max_pending_handshakes`] at
//! once), so a slow or broken VMM never delays another's: [`FirecrackerHandler::accept`]
//! returns sessions in the order their handshakes complete.
//!
//! # Any page source
//!
//! [`FirecrackerHandler::bind`] serves a snapshot file; [`FirecrackerHandler::bind_with_source`]
//! serves any [`PageSource`] (a page server, a cache, a decompressor), and
//! [`serve_connection_with_source`] or [`Handshake::read`] take a connection accepted
//! elsewhere.
//!
//! ```no_run
//! use squib_host::firecracker::{FirecrackerHandler, HandlerConfig};
//!
//! let handler = FirecrackerHandler::bind(HandlerConfig::new("/run/uffd.sock", "mem.snap"))?;
//! let session = handler.accept()?;          // one VMM restoring from mem.snap
//! println!("serving pid {}", session.peer_pid());
//! session.wait()?;                           // until the VMM exits
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use platform_primitives::creds::{peer_credentials, peer_pidfd};
use platform_primitives::fdpass::recv_with_fds;
use platform_primitives::uds::{BindError, BoundSocket, UdsBinder};
use serde_json::Value;

use super::{FailTarget, Uffd, UffdError};
use crate::pager::{Pager, PagerConfig, PagerError, ServeError};
use crate::region::{HUGE_PAGE_SIZE, Region, RegionError, RegionSet, host_page_size};
use crate::source::{FilePageSource, PageSource, PageSourceError};
use crate::sys::linux as sys;

/// One region of a Firecracker handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRegionUffdMapping {
    /// Where the VMM mapped the region in its address space.
    pub base_host_virt_addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The region's offset in the snapshot file.
    pub offset: u64,
    /// Its page size in bytes (from `page_size` or `page_size_kib`; the host page size when
    /// neither is sent).
    pub page_size: usize,
}

impl GuestRegionUffdMapping {
    /// The pager region this mapping describes.
    pub fn region(&self) -> Region {
        Region::new(self.base_host_virt_addr, self.size)
            .offset(self.offset)
            .page_size(self.page_size)
    }
}

/// Which Firecracker handshake generation a handshake's fields belong to (see the
/// [module docs](self)).
///
/// Ordered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum HandshakeGeneration {
    /// Firecracker ≤ v1.6: no page-size field; host pages.
    NoPageSize,
    /// Firecracker v1.7 – v1.11: `page_size_kib` only (in bytes).
    PageSizeKib,
    /// Firecracker ≥ v1.12: `page_size` in bytes.
    PageSize,
}

/// Why a handshake was refused or a session could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The handler socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Accepting or reading the connection failed.
    #[error("cannot {op} on the handler socket")]
    Io {
        /// The step.
        op: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The whole handshake did not arrive within the deadline.
    #[error("the VMM sent {received} bytes but no complete handshake within {limit:?}")]
    Timeout {
        /// The configured [`HandlerConfig::handshake_timeout`].
        limit: Duration,
        /// Bytes received by then.
        received: usize,
    },
    /// The peer closed the connection before a complete handshake arrived.
    #[error("the VMM closed the connection after {received} bytes, before a complete handshake")]
    Closed {
        /// Bytes received.
        received: usize,
    },
    /// The handshake exceeds the configured limit.
    #[error("handshake larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The handshake is not valid JSON.
    #[error("handshake is not valid JSON")]
    Json {
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON does not have the expected shape.
    #[error("handshake region {index}: {reason}")]
    Schema {
        /// Index of the region in the array (0 for a top-level problem).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A region failed the size, alignment or overlap checks.
    #[error("handshake region {index} is invalid")]
    Region {
        /// Index of the region.
        index: usize,
        /// The check that failed.
        #[source]
        source: RegionError,
    },
    /// No userfaultfd came with the handshake.
    #[error("the handshake carried no userfaultfd (expected exactly one SCM_RIGHTS descriptor)")]
    MissingFd,
    /// More than one descriptor came with the handshake (all were closed).
    #[error("the handshake carried {count} descriptors; expected exactly one userfaultfd")]
    ExtraFds {
        /// Descriptors received (at least; the kernel may have closed more).
        count: usize,
    },
    /// The snapshot could not be opened.
    #[error(transparent)]
    Snapshot(#[from] PageSourceError),
    /// The received descriptor could not be used as a userfaultfd.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// The fault server could not be started.
    #[error(transparent)]
    Pager(#[from] PagerError),
    /// The handshake of the VMM with pid `pid` was refused for the reason in the source; the
    /// VMM was killed (`killed`), unless it is this very process or killing was turned off
    /// ([`HandlerConfig::kill_on_refusal`]).
    #[error(
        "refused the handshake of VMM pid {pid} ({})",
        if *killed { "the VMM was killed" } else { "the VMM was left running" }
    )]
    Refused {
        /// The peer's pid (`SO_PEERCRED`).
        pid: u32,
        /// Whether the VMM was sent `SIGKILL`.
        killed: bool,
        /// Why the handshake was refused.
        #[source]
        reason: Box<HandshakeError>,
    },
}

impl HandshakeError {
    /// The reason a handshake was refused: the inner error of [`Refused`](Self::Refused), or
    /// this error itself.
    pub fn reason(&self) -> &HandshakeError {
        match self {
            Self::Refused { reason, .. } => reason,
            other => other,
        }
    }
}

/// Settings of a [`FirecrackerHandler`].
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Where to listen (Firecracker's `mem_backend.backend_path`).
    pub socket: PathBuf,
    /// The snapshot memory file (unused by [`FirecrackerHandler::bind_with_source`]).
    pub snapshot: PathBuf,
    /// Pager settings for each session.
    pub pager: PagerConfig,
    /// How long a connected VMM may take to send its whole handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest handshake accepted, in bytes. Default 1 MiB.
    pub max_handshake: usize,
    /// Handshakes read at once; further VMMs wait in the listen backlog. Default 64.
    pub max_pending_handshakes: usize,
    /// Kill a VMM whose handshake is refused (it would otherwise hang in its snapshot load).
    /// Default true.
    pub kill_on_refusal: bool,
}

impl HandlerConfig {
    /// Defaults for a socket path and a snapshot file.
    pub fn new(socket: impl Into<PathBuf>, snapshot: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            snapshot: snapshot.into(),
            pager: PagerConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            max_handshake: 1 << 20,
            max_pending_handshakes: 64,
            kill_on_refusal: true,
        }
    }
}

/// Where a handler's sessions get their pages.
#[derive(Debug, Clone)]
enum SourceSpec {
    /// [`HandlerConfig::snapshot`], opened for each session.
    File,
    /// One source shared by every session.
    Shared(Arc<dyn PageSource>),
}

impl SourceSpec {
    fn open(&self, config: &HandlerConfig) -> Result<Arc<dyn PageSource>, HandshakeError> {
        Ok(match self {
            Self::File => Arc::new(FilePageSource::open(&config.snapshot)?),
            Self::Shared(source) => Arc::clone(source),
        })
    }
}

/// Handshakes completed by their threads, waiting for [`FirecrackerHandler::accept`].
#[derive(Debug)]
struct Completed {
    queue: Mutex<VecDeque<Result<Session, HandshakeError>>>,
    running: AtomicUsize,
    /// Signalled whenever a handshake completes.
    efd: OwnedFd,
}

/// A listening handler. See the [module docs](self).
#[derive(Debug)]
pub struct FirecrackerHandler {
    listener: BoundSocket<UnixListener>,
    config: HandlerConfig,
    source: SourceSpec,
    completed: Arc<Completed>,
}

impl FirecrackerHandler {
    /// Binds the handler socket for a snapshot file (mode 0600; a live handler at the path is
    /// an error, a stale socket is replaced).
    pub fn bind(config: HandlerConfig) -> Result<Self, HandshakeError> {
        Self::bind_spec(config, SourceSpec::File)
    }

    /// Binds the handler socket; every session serves its faults from `source`.
    pub fn bind_with_source(
        config: HandlerConfig,
        source: Arc<dyn PageSource>,
    ) -> Result<Self, HandshakeError> {
        Self::bind_spec(config, SourceSpec::Shared(source))
    }

    fn bind_spec(config: HandlerConfig, source: SourceSpec) -> Result<Self, HandshakeError> {
        let listener = UdsBinder::new("squib-host handler").bind_listener(&config.socket)?;
        let io = |op| move |source| HandshakeError::Io { op, source };
        listener
            .socket()
            .set_nonblocking(true)
            .map_err(io("make the listener non-blocking"))?;
        let efd = sys::eventfd().map_err(io("create an eventfd"))?;
        Ok(Self {
            listener,
            config,
            source,
            completed: Arc::new(Completed {
                queue: Mutex::new(VecDeque::new()),
                running: AtomicUsize::new(0),
                efd,
            }),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.config.socket
    }

    /// Waits for the next VMM whose handshake completes and returns its session, or the
    /// refusal of a handshake that failed (see [`HandshakeError::Refused`]; call again for the
    /// next VMM).
    pub fn accept(&self) -> Result<Session, HandshakeError> {
        loop {
            if let Some(done) = self.accept_timeout(Duration::from_secs(3600))? {
                return Ok(done);
            }
        }
    }

    /// Like [`accept`](Self::accept), waiting at most `timeout`: `Ok(None)` when no handshake
    /// completed by then (those under way carry on).
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<Session>, HandshakeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(done) = crate::sync::lock_std(&self.completed.queue).pop_front() {
                return done.map(Some);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // At the cap, further VMMs wait in the listen backlog until a handshake ends.
            let room = self.completed.running.load(Ordering::Acquire)
                < self.config.max_pending_handshakes.max(1);
            let fds = [self.completed.efd.as_fd(), self.listener.socket().as_fd()];
            let n = if room { 2 } else { 1 };
            let ready =
                sys::poll_readable(&fds[..n], Some(left)).map_err(|source| HandshakeError::Io {
                    op: "poll for connections",
                    source,
                })?;
            if ready & 1 != 0 {
                sys::eventfd_drain(self.completed.efd.as_fd());
            }
            if ready & 2 != 0 {
                self.start_handshake()?;
            }
        }
    }

    /// Accepts one connection and reads its handshake on a thread of its own.
    fn start_handshake(&self) -> Result<(), HandshakeError> {
        let conn = match self.listener.socket().accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(source) => {
                return Err(HandshakeError::Io {
                    op: "accept",
                    source,
                });
            }
        };
        let (config, source, completed) = (
            self.config.clone(),
            self.source.clone(),
            Arc::clone(&self.completed),
        );
        completed.running.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name("squib-handshake".into())
            .spawn(move || {
                let result = source
                    .open(&config)
                    .and_then(|src| serve_connection_with_source(conn, &config, src));
                crate::sync::lock_std(&completed.queue).push_back(result);
                completed.running.fetch_sub(1, Ordering::AcqRel);
                let _ = sys::eventfd_signal(completed.efd.as_fd());
            });
        spawned.map(drop).map_err(|source| {
            self.completed.running.fetch_sub(1, Ordering::AcqRel);
            HandshakeError::Io {
                op: "start a handshake thread",
                source,
            }
        })
    }
}

/// A VMM being served.
#[derive(Debug)]
pub struct Session {
    pager: Pager,
    mappings: Vec<GuestRegionUffdMapping>,
    generation: HandshakeGeneration,
    peer_pid: u32,
    server: JoinHandle<Result<(), ServeError>>,
    /// The VMM's pidfd (a copy of the server's), to kill it on request.
    pidfd: Option<OwnedFd>,
    /// Kept open: Firecracker never closes its end, and neither does the handler.
    _conn: Option<UnixStream>,
}

impl Session {
    /// The pager serving this VMM (stats, working set).
    pub fn pager(&self) -> &Pager {
        &self.pager
    }

    /// The regions from the handshake.
    pub fn mappings(&self) -> &[GuestRegionUffdMapping] {
        &self.mappings
    }

    /// Which handshake generation the VMM spoke.
    pub fn generation(&self) -> HandshakeGeneration {
        self.generation
    }

    /// The VMM's pid, from `SO_PEERCRED`.
    pub fn peer_pid(&self) -> u32 {
        self.peer_pid
    }

    /// Whether the server stopped (the VMM exited, was killed, or shutdown was requested).
    pub fn is_finished(&self) -> bool {
        self.server.is_finished()
    }

    /// Waits until the server stops: the VMM exited, or a fault failed closed.
    pub fn wait(self) -> Result<(), ServeError> {
        self.server.join().unwrap_or_else(|_| {
            Err(ServeError::Io {
                op: "join the fault server (it panicked)",
                source: io::Error::other("fault server panicked"),
            })
        })
    }

    /// Kills the VMM (`SIGKILL`, through its pidfd when there is one): for a session that
    /// must end while its guest still runs, which would otherwise freeze on its next fault.
    pub fn kill_vmm(&self) -> io::Result<()> {
        match &self.pidfd {
            Some(fd) => platform_primitives::process::pidfd_signal(fd.as_fd(), libc::SIGKILL),
            None => platform_primitives::process::signal(self.peer_pid, libc::SIGKILL),
        }
    }

    /// Stops serving and waits for the server thread.
    pub fn shutdown(self) -> Result<(), ServeError> {
        self.pager.request_shutdown();
        self.wait()
    }
}

/// The peer of a handler connection, identified by the kernel.
#[derive(Debug)]
struct Peer {
    pid: u32,
    pidfd: Option<OwnedFd>,
}

impl Peer {
    fn of(conn: &UnixStream) -> Result<Self, HandshakeError> {
        let creds = peer_credentials(conn).map_err(|source| HandshakeError::Io {
            op: "read peer credentials (SO_PEERCRED)",
            source,
        })?;
        Ok(Self {
            pid: creds.pid,
            pidfd: peer_pidfd(conn).ok(),
        })
    }

    /// Refuses the handshake: kills the peer (unless it is this process) and wraps the reason.
    fn refuse(self, config: &HandlerConfig, reason: HandshakeError) -> HandshakeError {
        let ourselves = self.pid == std::process::id();
        let killed = config.kill_on_refusal && !ourselves && {
            let sent = match &self.pidfd {
                Some(fd) => platform_primitives::process::pidfd_signal(fd.as_fd(), libc::SIGKILL),
                None => platform_primitives::process::signal(self.pid, libc::SIGKILL),
            };
            if let Err(e) = &sent {
                tracing::error!(pid = self.pid, error = %e, "cannot kill the refused VMM");
            }
            sent.is_ok()
        };
        tracing::warn!(
            pid = self.pid,
            killed,
            reason = %platform_primitives::error::chain(&reason),
            "refused a Firecracker handshake"
        );
        HandshakeError::Refused {
            pid: self.pid,
            killed,
            reason: Box::new(reason),
        }
    }
}

/// Takes the handshake on an accepted connection and starts serving its uffd from
/// `config.snapshot`. A refused handshake kills the peer ([`HandshakeError::Refused`]).
pub fn serve_connection(
    conn: UnixStream,
    config: &HandlerConfig,
) -> Result<Session, HandshakeError> {
    let peer = Peer::of(&conn)?;
    match SourceSpec::File.open(config) {
        Ok(source) => serve_peer(conn, peer, config, source),
        Err(reason) => Err(peer.refuse(config, reason)),
    }
}

/// Takes the handshake on an accepted connection and starts serving its uffd from `source`.
/// A refused handshake kills the peer ([`HandshakeError::Refused`]).
pub fn serve_connection_with_source(
    conn: UnixStream,
    config: &HandlerConfig,
    source: Arc<dyn PageSource>,
) -> Result<Session, HandshakeError> {
    let peer = Peer::of(&conn)?;
    serve_peer(conn, peer, config, source)
}

fn serve_peer(
    conn: UnixStream,
    peer: Peer,
    config: &HandlerConfig,
    source: Arc<dyn PageSource>,
) -> Result<Session, HandshakeError> {
    Accepted::read(conn, peer, config, source.len_hint())?.serve(source, config)
}

/// Reads and checks the handshake on an accepted connection against a source of
/// `source_len` bytes, without serving it yet: the step a pager service takes to keep copies of
/// the VMM's descriptors ([`Accepted::duplicate`]) before it serves ([`Accepted::serve`]). A
/// refused handshake kills the peer ([`HandshakeError::Refused`]).
pub fn accept_handshake(
    conn: UnixStream,
    config: &HandlerConfig,
    source_len: Option<u64>,
) -> Result<Accepted, HandshakeError> {
    let peer = Peer::of(&conn)?;
    Accepted::read(conn, peer, config, source_len)
}

/// A VMM whose handshake was read and checked, not yet served.
#[derive(Debug)]
pub struct Accepted {
    mappings: Vec<GuestRegionUffdMapping>,
    generation: HandshakeGeneration,
    uffd: OwnedFd,
    peer: Peer,
    conn: UnixStream,
}

/// Copies of the descriptors that keep a VMM's restore alive, for a process that outlives the
/// pager (see [`Session::adopt`]).
#[derive(Debug)]
pub struct VmmFds {
    /// The VMM's userfaultfd.
    pub uffd: OwnedFd,
    /// A pidfd of the VMM.
    pub pidfd: OwnedFd,
    /// The handler connection (Firecracker never closes it; keeping it open keeps the VMM's
    /// view unchanged).
    pub conn: OwnedFd,
}

impl Accepted {
    fn read(
        conn: UnixStream,
        peer: Peer,
        config: &HandlerConfig,
        source_len: Option<u64>,
    ) -> Result<Self, HandshakeError> {
        let read = Handshake::read(&conn, config.handshake_timeout, config.max_handshake)
            .and_then(|h| h.check(source_len).map(|()| h));
        match read {
            Ok(h) => {
                let (mappings, generation, uffd) = h.into_parts();
                Ok(Self {
                    mappings,
                    generation,
                    uffd,
                    peer,
                    conn,
                })
            }
            Err(reason) => Err(peer.refuse(config, reason)),
        }
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.peer.pid
    }

    /// The regions from the handshake.
    pub fn mappings(&self) -> &[GuestRegionUffdMapping] {
        &self.mappings
    }

    /// Copies of the uffd, a pidfd and the connection (`EINVAL` if the kernel gave no pidfd).
    pub fn duplicate(&self) -> io::Result<VmmFds> {
        let pidfd =
            self.peer.pidfd.as_ref().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "no pidfd of the VMM")
            })?;
        Ok(VmmFds {
            uffd: self.uffd.try_clone()?,
            pidfd: pidfd.try_clone()?,
            conn: OwnedFd::from(self.conn.try_clone()?),
        })
    }

    /// Starts serving the VMM from `source`. A pager that cannot start kills the VMM.
    pub fn serve(
        self,
        source: Arc<dyn PageSource>,
        config: &HandlerConfig,
    ) -> Result<Session, HandshakeError> {
        let started = (|| {
            let uffd = Uffd::from_owned_fd(self.uffd)?;
            let pager = Pager::new(source, config.pager.clone());
            for m in &self.mappings {
                pager.register(m.region()).map_err(PagerError::from)?;
            }
            Ok((pager, uffd))
        })();
        let (pager, uffd) = match started {
            Ok(parts) => parts,
            Err(reason) => return Err(self.peer.refuse(config, reason)),
        };
        let pid = self.peer.pid;
        let pidfd = self.peer.pidfd.as_ref().and_then(|fd| fd.try_clone().ok());
        let server = super::spawn_server_for(
            &pager,
            uffd,
            FailTarget::Peer {
                pid,
                pidfd: self.peer.pidfd,
            },
        )?;
        Ok(Session {
            pager,
            mappings: self.mappings,
            generation: self.generation,
            peer_pid: pid,
            server,
            pidfd,
            _conn: Some(self.conn),
        })
    }
}

impl Session {
    /// Takes over a VMM that another pager process was serving, from copies of its
    /// descriptors ([`Accepted::duplicate`]) and its regions.
    ///
    /// The new pager knows nothing of what was installed: missing pages are served as they
    /// fault, and installs over present pages are refused by the kernel (`EEXIST`), so nothing
    /// is installed twice. Every region is woken first (`UFFDIO_WAKE`): a fault the old process
    /// read but never served is raised again, for this pager to serve.
    pub fn adopt(
        mappings: Vec<GuestRegionUffdMapping>,
        fds: VmmFds,
        source: Arc<dyn PageSource>,
        pager_config: PagerConfig,
    ) -> Result<Self, HandshakeError> {
        let pid = platform_primitives::creds::pidfd_pid(&fds.pidfd)
            .map_err(|source| HandshakeError::Io {
                op: "read the VMM's pid from its pidfd",
                source,
            })?
            .ok_or_else(|| HandshakeError::Io {
                op: "adopt the VMM",
                source: io::Error::new(io::ErrorKind::NotFound, "the VMM has exited"),
            })?;
        let uffd = Uffd::from_owned_fd(fds.uffd)?;
        let pager = Pager::new(source, pager_config);
        for m in &mappings {
            pager.register(m.region()).map_err(PagerError::from)?;
        }
        for m in &mappings {
            uffd.wake(m.base_host_virt_addr, m.size)?;
        }
        let pidfd = fds.pidfd.try_clone().ok();
        let server = super::spawn_server_for(
            &pager,
            uffd,
            FailTarget::Peer {
                pid,
                pidfd: Some(fds.pidfd),
            },
        )?;
        Ok(Self {
            pager,
            mappings,
            generation: HandshakeGeneration::PageSize,
            peer_pid: pid,
            server,
            pidfd,
            _conn: Some(UnixStream::from(fds.conn)),
        })
    }
}

/// One Firecracker handshake: its regions and the userfaultfd that came with them.
#[derive(Debug)]
pub struct Handshake {
    mappings: Vec<GuestRegionUffdMapping>,
    generation: HandshakeGeneration,
    uffd: OwnedFd,
}

impl Handshake {
    /// Reads one handshake from `conn`: bytes until they form one complete JSON value, at most
    /// `max_bytes`, all within `timeout`, with exactly one descriptor. The regions are parsed
    /// and checked for alignment and overlap; [`check`](Self::check) checks them against a
    /// source's length. Descriptors received with a refused handshake are closed.
    pub fn read(
        conn: &UnixStream,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Self, HandshakeError> {
        let (json, uffd) = read_message(conn, timeout, max_bytes)?;
        let (mappings, generation) = parse_regions(&json, None)?;
        Ok(Self {
            mappings,
            generation,
            uffd,
        })
    }

    /// The regions, in the order the VMM sent them.
    pub fn mappings(&self) -> &[GuestRegionUffdMapping] {
        &self.mappings
    }

    /// Which Firecracker generation the fields belong to.
    pub fn generation(&self) -> HandshakeGeneration {
        self.generation
    }

    /// Checks every region against a source of `source_len` bytes (`None`: unknown length).
    pub fn check(&self, source_len: Option<u64>) -> Result<(), HandshakeError> {
        let mut set = RegionSet::new();
        for (index, m) in self.mappings.iter().enumerate() {
            set.insert(m.region(), source_len)
                .map_err(|source| HandshakeError::Region { index, source })?;
        }
        Ok(())
    }

    /// The regions, the generation and the userfaultfd.
    pub fn into_parts(self) -> (Vec<GuestRegionUffdMapping>, HandshakeGeneration, OwnedFd) {
        (self.mappings, self.generation, self.uffd)
    }
}

/// Reads until the bytes form one complete JSON value; returns them and the one descriptor.
fn read_message(
    conn: &UnixStream,
    timeout: Duration,
    max_bytes: usize,
) -> Result<(Vec<u8>, OwnedFd), HandshakeError> {
    let deadline = Instant::now() + timeout;
    let mut json = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = || HandshakeError::Timeout {
            limit: timeout,
            received: json.len(),
        };
        if left.is_zero() {
            return Err(timed_out());
        }
        conn.set_read_timeout(Some(left))
            .map_err(|source| HandshakeError::Io {
                op: "set the handshake deadline",
                source,
            })?;
        let got = match recv_with_fds(conn, &mut buf, 4) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out());
            }
            Err(source) => {
                return Err(HandshakeError::Io {
                    op: "receive the handshake",
                    source,
                });
            }
        };
        fds.extend(got.fds);
        if got.control_truncated || fds.len() > 1 {
            return Err(HandshakeError::ExtraFds {
                count: fds.len() + usize::from(got.control_truncated),
            });
        }
        if got.len == 0 {
            return Err(HandshakeError::Closed {
                received: json.len(),
            });
        }
        json.extend_from_slice(&buf[..got.len]);
        if json.len() > max_bytes {
            return Err(HandshakeError::TooLarge { limit: max_bytes });
        }
        match serde_json::from_slice::<Value>(&json) {
            Ok(_) => break,
            Err(e) if e.is_eof() => continue,
            Err(source) => return Err(HandshakeError::Json { source }),
        }
    }
    let fd = fds.pop().ok_or(HandshakeError::MissingFd)?;
    Ok((json, fd))
}

/// Parses and checks a handshake against a snapshot of `snapshot_len` bytes.
pub fn parse_handshake(
    json: &[u8],
    snapshot_len: u64,
) -> Result<Vec<GuestRegionUffdMapping>, HandshakeError> {
    parse_regions(json, Some(snapshot_len)).map(|(mappings, _)| mappings)
}

/// The page size a region announces, in bytes, and the generation its fields belong to.
fn page_size_of(page_size: Option<u64>, page_size_kib: Option<u64>) -> (u64, HandshakeGeneration) {
    let valid = |bytes: u64| bytes == host_page_size() as u64 || bytes == HUGE_PAGE_SIZE as u64;
    match (page_size, page_size_kib) {
        (Some(bytes), _) => (bytes, HandshakeGeneration::PageSize),
        // Firecracker v1.7 – v1.11 send bytes under this name; a value that is only valid as
        // KiB is taken as KiB.
        (None, Some(v)) if !valid(v) && v.checked_mul(1024).is_some_and(valid) => {
            (v * 1024, HandshakeGeneration::PageSizeKib)
        }
        (None, Some(v)) => (v, HandshakeGeneration::PageSizeKib),
        (None, None) => (host_page_size() as u64, HandshakeGeneration::NoPageSize),
    }
}

fn parse_regions(
    json: &[u8],
    snapshot_len: Option<u64>,
) -> Result<(Vec<GuestRegionUffdMapping>, HandshakeGeneration), HandshakeError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|source| HandshakeError::Json { source })?;
    let Value::Array(items) = value else {
        return Err(HandshakeError::Schema {
            index: 0,
            reason: "expected a JSON array of regions".into(),
        });
    };
    if items.is_empty() {
        return Err(HandshakeError::Schema {
            index: 0,
            reason: "the array has no regions".into(),
        });
    }
    let mut set = RegionSet::new();
    let mut out = Vec::with_capacity(items.len());
    let mut generation = HandshakeGeneration::PageSize;
    for (index, item) in items.iter().enumerate() {
        let schema = |reason: String| HandshakeError::Schema { index, reason };
        let Value::Object(obj) = item else {
            return Err(schema("expected an object".into()));
        };
        let field = |name: &str| -> Result<Option<u64>, HandshakeError> {
            match obj.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| schema(format!("`{name}` is not an unsigned integer"))),
            }
        };
        let need = |name: &str| -> Result<u64, HandshakeError> {
            field(name)?.ok_or_else(|| schema(format!("missing `{name}`")))
        };
        let base = need("base_host_virt_addr")?;
        let size = need("size")?;
        let offset = need("offset")?;
        let (page_size, this_generation) =
            page_size_of(field("page_size")?, field("page_size_kib")?);
        // The oldest field set any region used names the generation.
        generation = generation.min(this_generation);
        let page_size = usize::try_from(page_size)
            .ok()
            .filter(|&p| p == host_page_size() || p == HUGE_PAGE_SIZE)
            .ok_or_else(|| {
                schema(format!(
                    "page size {page_size} is neither the host page size nor 2 MiB"
                ))
            })?;
        let mapping = GuestRegionUffdMapping {
            base_host_virt_addr: base,
            size,
            offset,
            page_size,
        };
        set.insert(mapping.region(), snapshot_len)
            .map_err(|source| HandshakeError::Region { index, source })?;
        out.push(mapping);
    }
    Ok((out, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_page_size_spellings_are_accepted() {
        let ps = host_page_size();
        let json = format!(
            r#"[{{"base_host_virt_addr":1048576,"size":{s},"offset":0,"page_size":{ps}}},
               {{"base_host_virt_addr":2097152,"size":{s},"offset":{s},"page_size_kib":{k}}}]"#,
            s = 4 * ps,
            k = ps / 1024
        );
        let m = parse_handshake(json.as_bytes(), 8 * ps as u64).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].page_size, ps);
        assert_eq!(m[1].offset, 4 * ps as u64);
    }

    #[test]
    fn every_generation_reads_the_page_size_in_bytes() {
        if host_page_size() != 4096 {
            return;
        }
        let region = |fields: &str| {
            format!(r#"[{{"base_host_virt_addr":2097152,"size":4194304,"offset":0{fields}}}]"#)
        };
        let cases = [
            ("", 4096, HandshakeGeneration::NoPageSize),
            (
                r#","page_size_kib":4096"#,
                4096,
                HandshakeGeneration::PageSizeKib,
            ),
            (
                r#","page_size_kib":2097152"#,
                HUGE_PAGE_SIZE,
                HandshakeGeneration::PageSizeKib,
            ),
            (
                r#","page_size":2097152,"page_size_kib":2097152"#,
                HUGE_PAGE_SIZE,
                HandshakeGeneration::PageSize,
            ),
            (
                r#","page_size":4096,"page_size_kib":4096,"dirty_tracking":{"x":[1]}"#,
                4096,
                HandshakeGeneration::PageSize,
            ),
        ];
        for (fields, page_size, generation) in cases {
            let json = region(fields);
            let (m, g) = parse_regions(json.as_bytes(), Some(8 << 20)).unwrap();
            assert_eq!((m[0].page_size, g), (page_size, generation), "{json}");
        }
    }

    #[test]
    fn bad_handshakes_are_typed_errors() {
        let ps = host_page_size();
        type Expect = fn(&HandshakeError) -> bool;
        let cases: [(&str, Expect); 8] = [
            ("{", |e| matches!(e, HandshakeError::Json { .. })),
            ("{}", |e| matches!(e, HandshakeError::Schema { .. })),
            ("[]", |e| matches!(e, HandshakeError::Schema { .. })),
            (
                r#"[{"base_host_virt_addr":1048576,"size":4096,"offset":0,"page_size":8192}]"#,
                |e| matches!(e, HandshakeError::Schema { .. }),
            ),
            (
                r#"[{"base_host_virt_addr":-1,"size":4096,"offset":0,"page_size":4096}]"#,
                |e| matches!(e, HandshakeError::Schema { .. }),
            ),
            (
                r#"[{"base_host_virt_addr":1048577,"size":4096,"offset":0,"page_size":4096}]"#,
                |e| matches!(e, HandshakeError::Region { .. }),
            ),
            (
                r#"[{"base_host_virt_addr":1048576,"size":1048576,"offset":0,"page_size":4096}]"#,
                |e| {
                    matches!(
                        e,
                        HandshakeError::Region {
                            source: RegionError::BeyondSource { .. },
                            ..
                        }
                    )
                },
            ),
            (
                r#"[{"base_host_virt_addr":1048576,"size":8192,"offset":0,"page_size":4096},
                    {"base_host_virt_addr":1052672,"size":4096,"offset":0,"page_size":4096}]"#,
                |e| {
                    matches!(
                        e,
                        HandshakeError::Region {
                            index: 1,
                            source: RegionError::Overlap { .. }
                        }
                    )
                },
            ),
        ];
        if ps != 4096 {
            return;
        }
        for (json, ok) in cases {
            let err = parse_handshake(json.as_bytes(), 64 * 1024).unwrap_err();
            assert!(ok(&err), "{json}: {err:?}");
        }
    }
}
