//! A page server and its client: snapshot bytes from another process or another host.
//!
//! The protocol is this crate's own (it is *not* Firecracker's, which sends no per-page
//! requests): a request is `<u64 offset><u64 len>` little-endian; a reply is `<u32 status><u64
//! len>` and then `len` bytes when the status is 0. A server answers the requests of one
//! connection in order ([`serve_pages`]), over a Unix or a TCP stream.
//!
//! [`PageServerSource`] is the client. It keeps **two lanes**, each its own connection: demand
//! fetches (a thread is waiting) and background fetches (population, prewarm), so a fault never
//! queues behind a multi-megabyte background chunk. Every request has a deadline
//! ([`PageServerConfig::request_timeout`]); a lane whose request failed or timed out drops its
//! connection (its stream may be mid-reply) and reconnects on its next request: at once the
//! first time, then with a doubling backoff while the server stays unreachable. A failed
//! request is an error the pager retries and, if it keeps failing, fails closed: nothing wrong
//! or zero-filled is ever installed.
//!
//! ```no_run
//! use squib_host::{PageServerAddr, PageServerConfig, PageServerSource, Pager, PagerConfig};
//!
//! let source = PageServerSource::connect_to(
//!     PageServerAddr::Tcp("10.0.0.7:7070".into()),
//!     PageServerConfig::default(),
//! )?
//! .with_len(256 << 20);
//! let pager = Pager::new(source, PagerConfig::default());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::source::{PageRequest, PageSource, PageSourceError};

/// Status a page server sends before the bytes of a successful reply.
const STATUS_OK: u32 = 0;
/// Status of a refused request.
const STATUS_REFUSED: u32 = 1;
/// Largest request a page server answers (64 MiB).
const MAX_SERVED: u64 = 64 << 20;

/// Where a page server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageServerAddr {
    /// A Unix stream socket.
    Unix(PathBuf),
    /// A TCP address, `host:port`.
    Tcp(String),
}

impl fmt::Display for PageServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// Deadlines and reconnection of a [`PageServerSource`].
#[derive(Debug, Clone)]
pub struct PageServerConfig {
    /// The whole of one request, from sending it to the last byte of the reply. Default 3 s
    /// (below the pager's default fetch timeout, so a stalled request is retried in time).
    pub request_timeout: Duration,
    /// Connecting (TCP). Default 2 s.
    pub connect_timeout: Duration,
    /// Wait before the second reconnection attempt in a row; doubled for each further one.
    /// The first attempt after a failure is immediate. Default 10 ms.
    pub reconnect_backoff: Duration,
    /// Longest wait between reconnection attempts. Default 1 s.
    pub reconnect_backoff_max: Duration,
}

impl Default for PageServerConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            reconnect_backoff: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(addr: &PageServerAddr, timeout: Duration) -> io::Result<Self> {
        match addr {
            PageServerAddr::Unix(path) => UnixStream::connect(path).map(Self::Unix),
            PageServerAddr::Tcp(host) => {
                let mut last = None;
                for a in std::net::ToSocketAddrs::to_socket_addrs(host.as_str())? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            // Requests are small and latency-bound.
                            s.set_nodelay(true)?;
                            return Ok(Self::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| io::Error::other("the address resolved to nothing")))
            }
        }
    }

    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Self::Unix(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
            Self::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
        }
    }

    /// Reads exactly `buf.len()` bytes by `deadline`.
    fn read_exact_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the page server did not answer in time",
                ));
            }
            self.set_timeouts(left)?;
            let n = match self {
                Self::Unix(s) => s.read(&mut buf[done..]),
                Self::Tcp(s) => s.read(&mut buf[done..]),
            };
            match n {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the page server did not answer in time",
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_all_by(&mut self, buf: &[u8], deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.set_timeouts(left.max(Duration::from_millis(1)))?;
        match self {
            Self::Unix(s) => s.write_all(buf),
            Self::Tcp(s) => s.write_all(buf),
        }
    }
}

/// One connection and its reconnection state.
#[derive(Debug, Default)]
struct Lane {
    stream: Option<Stream>,
    /// Consecutive failed requests or connection attempts.
    failures: u32,
    /// No reconnection attempt before this.
    retry_at: Option<Instant>,
}

/// A client of a page server, with a demand lane and a background lane (two connections),
/// a deadline on every request, and reconnection with backoff.
#[derive(Debug)]
pub struct PageServerSource {
    /// `None` for a source made from a connected stream: it cannot reconnect.
    addr: Option<PageServerAddr>,
    config: PageServerConfig,
    demand: Mutex<Lane>,
    background: Mutex<Lane>,
    len: Option<u64>,
}

impl PageServerSource {
    /// Connects to the page server on the Unix socket at `path`, with default deadlines.
    pub fn connect(path: impl Into<PathBuf>) -> Result<Self, PageSourceError> {
        Self::connect_to(
            PageServerAddr::Unix(path.into()),
            PageServerConfig::default(),
        )
    }

    /// Connects both lanes to the page server at `addr`.
    pub fn connect_to(
        addr: PageServerAddr,
        config: PageServerConfig,
    ) -> Result<Self, PageSourceError> {
        let open = |addr: &PageServerAddr| {
            Stream::connect(addr, config.connect_timeout).map_err(|source| PageSourceError::Open {
                path: PathBuf::from(addr.to_string()),
                source,
            })
        };
        let demand = open(&addr)?;
        let background = open(&addr)?;
        Ok(Self {
            addr: Some(addr),
            config,
            demand: Mutex::new(Lane {
                stream: Some(demand),
                ..Lane::default()
            }),
            background: Mutex::new(Lane {
                stream: Some(background),
                ..Lane::default()
            }),
            len: None,
        })
    }

    /// Wraps an already connected Unix stream. Both lanes share it (requests are serialized)
    /// and it is not reconnected: prefer [`connect_to`](Self::connect_to).
    pub fn from_stream(conn: UnixStream) -> Self {
        Self {
            addr: None,
            config: PageServerConfig::default(),
            demand: Mutex::new(Lane {
                stream: Some(Stream::Unix(conn)),
                ..Lane::default()
            }),
            background: Mutex::new(Lane::default()),
            len: None,
        }
    }

    /// Tells the pager how long the remote snapshot is (for region size checks).
    pub fn with_len(mut self, len: u64) -> Self {
        self.len = Some(len);
        self
    }

    /// Where the server is, when known.
    pub fn addr(&self) -> Option<&PageServerAddr> {
        self.addr.as_ref()
    }

    fn request(&self, lane: &Mutex<Lane>, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        let io_err = |source| PageSourceError::Io {
            offset: req.offset,
            len: req.len,
            source,
        };
        let mut lane = lane.lock().unwrap_or_else(|p| p.into_inner());
        if lane.stream.is_none() {
            self.reconnect(&mut lane).map_err(io_err)?;
        }
        let deadline = Instant::now() + self.config.request_timeout;
        let stream = lane.stream.as_mut().ok_or_else(|| {
            io_err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no connection to the page server",
            ))
        })?;
        match exchange(stream, req, deadline) {
            Ok(reply) => {
                lane.failures = 0;
                reply
            }
            Err(e) => {
                // The stream may be mid-reply: never reuse it.
                lane.stream = None;
                lane.failures = lane.failures.saturating_add(1);
                Err(io_err(e))
            }
        }
    }

    /// Opens a new connection for `lane`, unless the backoff says to wait.
    fn reconnect(&self, lane: &mut Lane) -> io::Result<()> {
        let Some(addr) = &self.addr else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the page-server connection was lost and this source cannot reconnect \
                 (made with from_stream)",
            ));
        };
        let now = Instant::now();
        if let Some(at) = lane.retry_at
            && now < at
        {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "reconnecting to the page server at {addr} in {:?}",
                    at - now
                ),
            ));
        }
        match Stream::connect(addr, self.config.connect_timeout) {
            Ok(stream) => {
                lane.stream = Some(stream);
                lane.retry_at = None;
                Ok(())
            }
            Err(e) => {
                lane.failures = lane.failures.saturating_add(1);
                let doublings = lane.failures.saturating_sub(1).min(16);
                let wait = self
                    .config
                    .reconnect_backoff
                    .saturating_mul(1 << doublings)
                    .min(self.config.reconnect_backoff_max);
                lane.retry_at = Some(now + wait);
                tracing::warn!(%addr, error = %e, retry_in = ?wait, "page server unreachable");
                Err(e)
            }
        }
    }
}

/// Sends one request and reads its reply. The outer error means the stream is out of step;
/// the inner one is the server's answer.
fn exchange(
    stream: &mut Stream,
    req: &PageRequest,
    deadline: Instant,
) -> io::Result<Result<Bytes, PageSourceError>> {
    let mut msg = [0u8; 16];
    msg[..8].copy_from_slice(&req.offset.to_le_bytes());
    msg[8..].copy_from_slice(&(req.len as u64).to_le_bytes());
    stream.write_all_by(&msg, deadline)?;
    let mut head = [0u8; 12];
    stream.read_exact_by(&mut head, deadline)?;
    let status = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&head[4..]);
    let len = u64::from_le_bytes(len_bytes);
    if status != STATUS_OK {
        return Ok(Err(PageSourceError::Refused {
            offset: req.offset,
            len: req.len,
            status,
        }));
    }
    if len != req.len as u64 {
        if len > MAX_SERVED {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the page server announced a {len}-byte reply"),
            ));
        }
        // Drain what was announced so the connection stays in step, then refuse.
        let mut sink = vec![0u8; len as usize];
        stream.read_exact_by(&mut sink, deadline)?;
        return Ok(Err(PageSourceError::Short {
            offset: req.offset,
            wanted: req.len,
            got: len as usize,
        }));
    }
    let mut buf = BytesMut::zeroed(req.len);
    stream.read_exact_by(&mut buf, deadline)?;
    Ok(Ok(buf.freeze()))
}

impl PageSource for PageServerSource {
    fn fetch(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        self.request(&self.demand, req)
    }

    fn fetch_background(&self, req: &PageRequest) -> Result<Bytes, PageSourceError> {
        if self.addr.is_none() {
            // One shared stream: it lives in the demand lane.
            return self.request(&self.demand, req);
        }
        self.request(&self.background, req)
    }

    fn len_hint(&self) -> Option<u64> {
        self.len
    }
}

/// Answers page-server requests on `conn` (a Unix or TCP stream) from `source` until the peer
/// hangs up.
///
/// Each request is answered from `source.fetch`; a failed fetch is answered with status 1 and
/// no bytes, so the client sees [`PageSourceError::Refused`]. Requests above 64 MiB are
/// refused. Run one call per connection (a thread each): a client's demand and background
/// lanes are separate connections, and must not wait for each other.
pub fn serve_pages<S: Read + Write>(mut conn: S, source: &dyn PageSource) -> io::Result<()> {
    let mut msg = [0u8; 16];
    loop {
        match conn.read_exact(&mut msg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&msg[..8]);
        let offset = u64::from_le_bytes(word);
        word.copy_from_slice(&msg[8..]);
        let len = u64::from_le_bytes(word);
        let reply = if len > MAX_SERVED {
            None
        } else {
            source
                .fetch(&PageRequest {
                    addr: 0,
                    offset,
                    len: len as usize,
                    page_size: 0,
                })
                .ok()
        };
        let mut head = [0u8; 12];
        match reply {
            Some(bytes) => {
                head[4..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
                conn.write_all(&head)?;
                conn.write_all(&bytes)?;
            }
            None => {
                head[..4].copy_from_slice(&STATUS_REFUSED.to_le_bytes());
                conn.write_all(&head)?;
            }
        }
    }
}
