//! Firecracker-compatible page-fault handler mode.
//!
//! When Firecracker restores a snapshot with the `Uffd` memory backend, it maps guest memory
//! empty, registers it with a userfaultfd, connects to the handler's Unix stream socket and
//! sends **one** message: a JSON array of `GuestRegionUffdMapping`s
//! (`base_host_virt_addr`, `size`, `offset`, and `page_size` — or `page_size_kib` in older
//! versions) with the uffd attached as `SCM_RIGHTS`. It sends nothing else and never closes the
//! socket. The handler then serves the faults from the snapshot file.
//!
//! This handler reads the handshake with no fixed buffer (up to a configured limit), accepts
//! both page-size field names, checks every region against the snapshot's length, alignment and
//! overlap, takes the peer's identity from `SO_PEERCRED` (and a pidfd where the kernel has one),
//! and serves the uffd with the fault server of this crate. If a fault cannot be served
//! correctly, it fails closed: the VMM is killed, never handed wrong bytes.
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

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use platform_primitives::creds::{peer_credentials, peer_pidfd};
use platform_primitives::fdpass::recv_with_fds;
use platform_primitives::uds::{BindError, BoundSocket, UdsBinder};
use serde_json::Value;

use super::{FailTarget, Uffd, UffdError};
use crate::pager::{Pager, PagerConfig, PagerError, ServeError};
use crate::region::{HUGE_PAGE_SIZE, Region, RegionError, RegionSet, host_page_size};
use crate::source::{FilePageSource, PageSourceError};

/// One region of a Firecracker handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRegionUffdMapping {
    /// Where the VMM mapped the region in its address space.
    pub base_host_virt_addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The region's offset in the snapshot file.
    pub offset: u64,
    /// Its page size in bytes (from `page_size`, or `page_size_kib` × 1024).
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

/// Why a handshake was refused or a session could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The handler socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Accepting or reading the connection failed (including the handshake timeout).
    #[error("cannot {op} on the handler socket")]
    Io {
        /// The step.
        op: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
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
}

/// Settings of a [`FirecrackerHandler`].
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Where to listen (Firecracker's `mem_backend.backend_path`).
    pub socket: PathBuf,
    /// The snapshot memory file.
    pub snapshot: PathBuf,
    /// Pager settings for each session.
    pub pager: PagerConfig,
    /// How long a connected VMM may take to send its handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest handshake accepted, in bytes. Default 1 MiB.
    pub max_handshake: usize,
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
        }
    }
}

/// A listening handler. See the [module docs](self).
#[derive(Debug)]
pub struct FirecrackerHandler {
    listener: BoundSocket<UnixListener>,
    config: HandlerConfig,
}

impl FirecrackerHandler {
    /// Binds the handler socket (mode 0600; a live handler at the path is an error, a stale
    /// socket is replaced).
    pub fn bind(config: HandlerConfig) -> Result<Self, HandshakeError> {
        let listener = UdsBinder::new("squib-host handler").bind_listener(&config.socket)?;
        Ok(Self { listener, config })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.config.socket
    }

    /// Waits for one VMM, takes its handshake and starts serving it.
    pub fn accept(&self) -> Result<Session, HandshakeError> {
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|source| HandshakeError::Io {
                op: "accept",
                source,
            })?;
        serve_connection(conn, &self.config)
    }
}

/// A VMM being served.
#[derive(Debug)]
pub struct Session {
    pager: Pager,
    mappings: Vec<GuestRegionUffdMapping>,
    peer_pid: u32,
    server: JoinHandle<Result<(), ServeError>>,
    /// Kept open: Firecracker never closes its end, and neither does the handler.
    _conn: UnixStream,
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

    /// Stops serving and waits for the server thread.
    pub fn shutdown(self) -> Result<(), ServeError> {
        self.pager.request_shutdown();
        self.wait()
    }
}

/// Takes the handshake on an accepted connection and starts serving its uffd from
/// `config.snapshot`.
pub fn serve_connection(
    conn: UnixStream,
    config: &HandlerConfig,
) -> Result<Session, HandshakeError> {
    let creds = peer_credentials(&conn).map_err(|source| HandshakeError::Io {
        op: "read peer credentials (SO_PEERCRED)",
        source,
    })?;
    let pidfd = peer_pidfd(&conn).ok();
    let (json, fd) = read_handshake(&conn, config)?;
    let source = FilePageSource::open(&config.snapshot)?;
    let mappings = parse_handshake(&json, source.len())?;
    let uffd = Uffd::from_owned_fd(fd)?;
    let pager = Pager::new(source, config.pager.clone());
    for m in &mappings {
        pager.register(m.region()).map_err(PagerError::from)?;
    }
    let server = super::spawn_server_for(
        &pager,
        uffd,
        FailTarget::Peer {
            pid: creds.pid,
            pidfd,
        },
    )?;
    Ok(Session {
        pager,
        mappings,
        peer_pid: creds.pid,
        server,
        _conn: conn,
    })
}

/// Reads until the bytes form one complete JSON value; returns them and the one descriptor.
fn read_handshake(
    conn: &UnixStream,
    config: &HandlerConfig,
) -> Result<(Vec<u8>, OwnedFd), HandshakeError> {
    conn.set_read_timeout(Some(config.handshake_timeout))
        .map_err(|source| HandshakeError::Io {
            op: "set the handshake timeout",
            source,
        })?;
    let mut json = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut extra = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let got = recv_with_fds(conn, &mut buf, 4).map_err(|source| HandshakeError::Io {
            op: "receive the handshake",
            source,
        })?;
        extra |= got.control_truncated;
        fds.extend(got.fds);
        if got.len == 0 {
            return Err(HandshakeError::Closed {
                received: json.len(),
            });
        }
        json.extend_from_slice(&buf[..got.len]);
        if json.len() > config.max_handshake {
            return Err(HandshakeError::TooLarge {
                limit: config.max_handshake,
            });
        }
        match serde_json::from_slice::<Value>(&json) {
            Ok(_) => break,
            Err(e) if e.is_eof() => continue,
            Err(source) => return Err(HandshakeError::Json { source }),
        }
    }
    if extra || fds.len() > 1 {
        return Err(HandshakeError::ExtraFds {
            count: fds.len() + usize::from(extra),
        });
    }
    let fd = fds.pop().ok_or(HandshakeError::MissingFd)?;
    Ok((json, fd))
}

/// Parses and checks a handshake against a snapshot of `snapshot_len` bytes.
pub fn parse_handshake(
    json: &[u8],
    snapshot_len: u64,
) -> Result<Vec<GuestRegionUffdMapping>, HandshakeError> {
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
        let page_size = match (field("page_size")?, field("page_size_kib")?) {
            (Some(bytes), _) => bytes,
            (None, Some(kib)) => kib
                .checked_mul(1024)
                .ok_or_else(|| schema("`page_size_kib` overflows".into()))?,
            (None, None) => return Err(schema("missing `page_size` (or `page_size_kib`)".into())),
        };
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
        set.insert(mapping.region(), Some(snapshot_len))
            .map_err(|source| HandshakeError::Region { index, source })?;
        out.push(mapping);
    }
    Ok(out)
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
    fn bad_handshakes_are_typed_errors() {
        let ps = host_page_size();
        type Expect = fn(&HandshakeError) -> bool;
        let cases: [(&str, Expect); 8] = [
            ("{", |e| matches!(e, HandshakeError::Json { .. })),
            ("{}", |e| matches!(e, HandshakeError::Schema { .. })),
            ("[]", |e| matches!(e, HandshakeError::Schema { .. })),
            (
                r#"[{"base_host_virt_addr":1048576,"size":4096,"offset":0}]"#,
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
