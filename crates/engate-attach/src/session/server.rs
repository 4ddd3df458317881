//! A dtach-like session server: one program in a pseudo-terminal, any number of clients over
//! a Unix socket, each attaching exactly once and resuming where it left.
//!
//! Threads, all blocking I/O:
//!
//! - the **pump** reads the pty master and emits every read as one chunk into the hub, then
//!   writes it to every client that keeps up, itself and without blocking (as dtach's single
//!   loop does: a keystroke's echo wakes no other server thread); at the end of the program's
//!   output it closes the hub and reaps the program;
//! - the **acceptor** takes connections on the socket (bound with `platform-primitives`'
//!   [`UdsBinder`]: mode set before it is reachable, stale sockets recovered, a live server
//!   refused); it waits for a connection or for the server's stop signal, so stopping does not
//!   depend on the socket file still being there;
//! - per client, a **writer** that attaches with the client's [`Hello`](super::ClientMsg),
//!   sends the snapshot, and takes the client over whenever the pump cannot write to it
//!   without blocking (its socket is full) or it needs more than a write (a resync, the end of
//!   the stream): it catches the client up from the hub, blocking as long as the client takes,
//!   coalescing what is ready into one write, then hands it back (the hand-off is
//!   [`super::handoff`], model-checked); and a **reader** that forwards the client's input to
//!   the program and notices the client leaving.
//!
//! A client cannot hang the server or grow its memory: the server keeps every connection it
//! owns and, on shutdown, shuts each one down from its side (both directions), so a writer
//! blocked on a client that stopped reading returns at once; an input frame is at most
//! [`MAX_INPUT`](super::wire::MAX_INPUT) bytes, checked on its header, so a connection buffers
//! at most one such frame and one read. A bad hello or frame gets a
//! [`Refused`](super::wire::ServerMsg::Refused) message that says what was wrong, is logged with
//! `tracing` (target `engate_attach::session::server`), and the connection is closed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use platform_primitives::uds::{BindError, SocketPath, UdsBinder};

use super::outlet::Outlet;
use super::wire::{self, ClientMsg, ProgramExit, ServerMsg, WireError};
use crate::attach::{CloseReason, Event};
use crate::config::{AttachOptions, ConfigError, HubConfig};
use crate::hub::{Hub, Producer, channel};
use crate::pty::{self, Pty, PtyError, PtySize, resize_terminal};
use crate::snapshot::{Snapshot, SnapshotProvider, TailProvider};
use crate::sys;

/// How long a writer that owns its client waits for output before it gives the client back to
/// the pump (a writer that does not own it waits for a hand-over, a stop or its client's end,
/// with no timeout: each of those wakes it).
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a refused client has to take its refusal before its connection is shut down.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a client's input thread, waiting for the program to take its keystrokes, looks
/// whether it should give up (server stopping, program gone, client gone).
const INPUT_POLL: Duration = Duration::from_millis(50);
/// A pty read shorter than this is interactive output: the pump waits before reading again.
const SHORT_READ: usize = 512;
/// How long the acceptor rests when the process is out of descriptors, before trying again.
const EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

/// What new clients start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotMode {
    /// The last `bytes` bytes of output, verbatim ([`TailProvider`]).
    Tail {
        /// How many bytes to keep.
        bytes: usize,
    },
    /// The current screen, redrawn (`ScreenProvider`, feature `screen`), sized like the pty.
    #[cfg(feature = "screen")]
    Screen,
}

/// What to run and where to serve it. Build with [`SessionConfig::new`] and the setters.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    socket: PathBuf,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_removed: Vec<OsString>,
    size: PtySize,
    hub: HubConfig,
    snapshot: SnapshotMode,
    read_chunk: usize,
    mode: u32,
    hello_timeout: Duration,
}

impl SessionConfig {
    /// Serve `program` on the Unix socket at `socket`. Defaults: a 24 × 80 terminal with
    /// `TERM=xterm-256color`, the default [`HubConfig`], a 64 KiB tail snapshot, reads of up to
    /// 64 KiB, socket mode 0o600, 5 s for a new connection to send its hello.
    pub fn new(socket: impl Into<PathBuf>, program: impl Into<OsString>) -> Self {
        Self {
            socket: socket.into(),
            program: program.into(),
            args: Vec::new(),
            env: vec![("TERM".into(), "xterm-256color".into())],
            env_removed: Vec::new(),
            size: PtySize::default(),
            hub: HubConfig::default(),
            snapshot: SnapshotMode::Tail { bytes: 64 << 10 },
            read_chunk: 64 << 10,
            mode: 0o600,
            hello_timeout: Duration::from_secs(5),
        }
    }

    /// Adds arguments for the program.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Keeps an environment variable of the server from the program (for example the
    /// server's own `NOTIFY_SOCKET`, so the program cannot report in the server's name).
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env_removed.push(key);
        self
    }

    /// The terminal size.
    pub fn size(mut self, size: PtySize) -> Self {
        self.size = size;
        self
    }

    /// The hub's budget and limits.
    pub fn hub(mut self, hub: HubConfig) -> Self {
        self.hub = hub;
        self
    }

    /// What new clients start from.
    pub fn snapshot(mut self, mode: SnapshotMode) -> Self {
        self.snapshot = mode;
        self
    }

    /// The largest single read from the pty (one chunk), at least 1 byte.
    pub fn read_chunk(mut self, bytes: usize) -> Self {
        self.read_chunk = bytes.max(1);
        self
    }

    /// The socket's permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// How long a new connection has to send its hello before it is refused.
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }
}

/// Why a session server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The socket could not be bound (another server is running there, say).
    #[error("cannot serve the session socket")]
    Bind(#[from] BindError),
    /// The program could not be started in a pseudo-terminal.
    #[error("cannot run the session's program")]
    Pty(#[from] PtyError),
    /// The hub configuration is invalid.
    #[error("invalid hub configuration for the session")]
    Hub(#[from] ConfigError),
    /// The socket could not be set up for the acceptor (non-blocking mode, its stop signal).
    #[error("cannot prepare the session socket at {}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The program's terminal could not be set up for non-blocking I/O.
    #[error("cannot set up the session program's terminal")]
    Terminal(#[source] io::Error),
    /// A server thread could not be started.
    #[error("cannot start the session's {role} thread")]
    Thread {
        /// Which thread.
        role: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// The program's pid while it has not been reaped, so a hang-up never hits a reused pid.
type Unreaped = Arc<Mutex<Option<u32>>>;

/// What the server's threads share: the stop flag, the connections to shut down when
/// stopping, and how the program ended.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// Every connection still open, to shut down on stop; a connection's threads hold the
    /// strong references, so a closed one is just a dead entry, pruned on the next accept.
    connections: Mutex<Vec<Weak<UnixStream>>>,
    exit: Mutex<Option<ProgramExit>>,
    next_client: AtomicU64,
    /// Every live client's output, for the pump to write while the client keeps up.
    outlets: parking_lot::Mutex<Vec<Arc<Outlet>>>,
}

impl Shared {
    /// Records a new connection; shuts it down at once if the server is stopping.
    fn register(&self, stream: &Arc<UnixStream>) {
        let mut list = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(stream));
        // Read under the lock `stop_connections` takes: either it sees this connection, or
        // this sees the stop.
        if self.stop.load(Ordering::SeqCst) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Shuts every open connection down, both directions: blocked writes and reads return.
    fn stop_connections(&self) {
        let list = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        self.stop.store(true, Ordering::SeqCst);
        for stream in list.iter().filter_map(Weak::upgrade) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        drop(list);
        // Writers waiting for their client to be handed over look at the stop flag.
        for outlet in self.outlets.lock().iter() {
            outlet.wake();
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn exit(&self) -> Option<ProgramExit> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pump's side after each emit: every client that keeps up gets the new output now,
    /// from this thread.
    fn offer_all(&self) {
        for outlet in self.outlets.lock().iter() {
            outlet.offer();
        }
    }
}

/// A running session server. Dropping it shuts it down (see [`shutdown`](Self::shutdown)).
#[derive(Debug)]
pub struct SessionServer {
    hub: Hub,
    socket: PathBuf,
    shared: Arc<Shared>,
    /// Shut down to wake the acceptor (its peer becomes readable).
    wake: UnixStream,
    unreaped: Unreaped,
    program_pid: u32,
    pump: Option<JoinHandle<io::Result<ExitStatus>>>,
    acceptor: Option<JoinHandle<()>>,
    clients: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _path: SocketPath,
}

impl SessionServer {
    /// Binds the socket, starts the program in a pty and starts serving.
    pub fn start(config: SessionConfig) -> Result<Self, SessionError> {
        let provider: Box<dyn SnapshotProvider> = match config.snapshot {
            SnapshotMode::Tail { bytes } => Box::new(TailProvider::new(bytes)),
            #[cfg(feature = "screen")]
            SnapshotMode::Screen => Box::new(
                super::screen_thread::ThreadedScreen::new(config.size.rows, config.size.cols)
                    .map_err(|source| SessionError::Thread {
                        role: "screen parser",
                        source,
                    })?,
            ),
        };
        let (producer, hub) = channel(config.hub.clone(), provider)?;
        let bound = UdsBinder::new("engate session server")
            .mode(config.mode)
            .bind_listener(&config.socket)?;
        let socket = bound.path().to_owned();
        let (listener, path_guard) = bound.into_parts();
        let listen_error = |source| SessionError::Listen {
            path: socket.clone(),
            source,
        };
        // Non-blocking, so a connection that vanished between the wake-up and `accept` does
        // not block the acceptor.
        listener.set_nonblocking(true).map_err(listen_error)?;
        let (wake, woken) = UnixStream::pair().map_err(listen_error)?;

        let mut cmd = Command::new(&config.program);
        cmd.args(&config.args);
        for k in &config.env_removed {
            cmd.env_remove(k);
        }
        for (k, v) in &config.env {
            cmd.env(k, v);
        }
        let pty = Pty::spawn(cmd, config.size)?;
        let reader = pty.reader()?;
        let input = Arc::new(pty.writer()?);
        // Non-blocking (for the reader too: they share the open file description), so a
        // client's keystrokes to a program that does not read them wait with a deadline and
        // never hold up shutdown.
        platform_primitives::fd::set_nonblocking(input.as_fd(), true)
            .map_err(SessionError::Terminal)?;
        let (master, child) = pty.into_parts();
        drop(master);
        let program_pid = child.id();
        let unreaped: Unreaped = Arc::new(Mutex::new(Some(program_pid)));
        let shared = Arc::new(Shared::default());

        let pump = {
            let (unreaped, shared) = (Arc::clone(&unreaped), Arc::clone(&shared));
            let chunk = config.read_chunk;
            spawn("pump", move || {
                pump(reader, producer, child, unreaped, &shared, chunk)
            })?
        };
        let clients = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let acceptor = Acceptor {
                listener,
                woken,
                hub: hub.clone(),
                input,
                shared: Arc::clone(&shared),
                clients: Arc::clone(&clients),
                hello_timeout: config.hello_timeout,
            };
            spawn("acceptor", move || acceptor.run())?
        };
        Ok(Self {
            hub,
            socket,
            shared,
            wake,
            unreaped,
            program_pid,
            pump: Some(pump),
            acceptor: Some(acceptor),
            clients,
            _path: path_guard,
        })
    }

    /// The hub the program's output goes through (metrics, in-process attaches).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The socket path clients connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Waits for the program to exit and all its output to be in the hub; returns its status.
    /// Clients keep being served (they can still attach and read the end of the output).
    pub fn wait_program(&mut self) -> io::Result<ExitStatus> {
        match self.pump.take() {
            Some(pump) => pump
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the pump thread panicked"))),
            None => Err(io::Error::other("the program was already waited for")),
        }
    }

    /// The program's process id (it may have ended; see [`program_exit`](Self::program_exit)).
    pub fn program_pid(&self) -> u32 {
        self.program_pid
    }

    /// How the program ended, once it has (`None` while it runs). Clients learn it too, as
    /// [`ServerMsg::Exited`] before their stream closes.
    pub fn program_exit(&self) -> Option<ProgramExit> {
        self.shared.exit()
    }

    /// Stops accepting, hangs up the program if it still runs, disconnects every client and
    /// joins all threads. It returns promptly whatever the clients do (a client that stopped
    /// reading is shut down from the server's side) and whether or not the socket file is
    /// still there.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        // Every connection is shut down before any thread is joined: a writer blocked on a
        // client that does not read would otherwise hold up the join, and a blocking-policy
        // writer the pump.
        self.shared.stop_connections();
        let _ = self.wake.shutdown(std::net::Shutdown::Both);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        // Connections accepted before the acceptor stopped are all registered by now.
        self.shared.stop_connections();
        if let Some(pid) = *self.unreaped.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = pty::hang_up(pid);
        }
        if let Some(p) = self.pump.take() {
            let _ = p.join();
        }
        let clients = std::mem::take(&mut *self.clients.lock().unwrap_or_else(|e| e.into_inner()));
        for c in clients {
            let _ = c.join();
        }
    }
}

impl Drop for SessionServer {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn spawn<T: Send + 'static>(
    role: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, SessionError> {
    std::thread::Builder::new()
        .name(format!("engate-{role}"))
        .spawn(f)
        .map_err(|source| SessionError::Thread { role, source })
}

/// Reads the program's output into the hub until it ends, then closes the hub and reaps it.
fn pump(
    mut reader: File,
    mut producer: Producer,
    mut child: std::process::Child,
    unreaped: Unreaped,
    shared: &Shared,
    chunk: usize,
) -> io::Result<ExitStatus> {
    let mut buf = vec![0u8; chunk];
    // After a short read (a keystroke's echo, a prompt) the next read would almost always find
    // nothing: wait for more first instead of paying for that empty read.
    let mut wait_first = false;
    let result = loop {
        if wait_first {
            wait_first = false;
            if let Err(e) = sys::unix::wait_readable([reader.as_fd()], None)
                && e.kind() != io::ErrorKind::Interrupted
            {
                break Err(e);
            }
        }
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                wait_first = n < SHORT_READ;
                // A read never exceeds the budget-sized chunk limit unless the configuration
                // is smaller than one read; split in that case.
                let data = Bytes::copy_from_slice(&buf[..n]);
                if let Err(e) = emit_all(&mut producer, data) {
                    break Err(io::Error::other(e));
                }
                shared.offer_all();
            }
            Err(e) if pty::is_end_of_output(&e) => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = sys::unix::wait_readable([reader.as_fd()], None)
                    && e.kind() != io::ErrorKind::Interrupted
                {
                    break Err(e);
                }
            }
            Err(e) => break Err(e),
        }
    };
    let mut pid = unreaped.lock().unwrap_or_else(|e| e.into_inner());
    *pid = None;
    drop(pid);
    // Reaped before the hub closes, so every client's `Closed` can follow the exit status.
    let status = child.wait();
    if let Ok(status) = &status {
        let exit = ProgramExit::from(*status);
        tracing::debug!(%exit, "the session's program ended");
        *shared.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(exit);
    }
    drop(producer);
    // Clients that kept up learn of the end from here too.
    shared.offer_all();
    let status = status?;
    result.map(|()| status)
}

fn emit_all(producer: &mut Producer, mut data: Bytes) -> Result<(), crate::hub::EmitError> {
    loop {
        match producer.emit(data.clone()) {
            Ok(_) => return Ok(()),
            Err(crate::hub::EmitError::ChunkTooLarge { budget, .. }) => {
                let rest = data.split_off(budget);
                producer.emit(data)?;
                data = rest;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The acceptor thread's state: the listener, the stop signal's receiving end, and what each
/// client thread gets.
struct Acceptor {
    listener: UnixListener,
    /// Readable once the server stops (its peer was shut down).
    woken: UnixStream,
    hub: Hub,
    input: Arc<File>,
    shared: Arc<Shared>,
    clients: Arc<Mutex<Vec<JoinHandle<()>>>>,
    hello_timeout: Duration,
}

impl Acceptor {
    fn run(self) {
        loop {
            if self.shared.stopping() {
                return;
            }
            let ready = sys::unix::wait_readable([self.listener.as_fd(), self.woken.as_fd()], None);
            match ready {
                Ok([_, true]) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot wait for session clients; no longer accepting");
                    return;
                }
            }
            self.accept_ready();
        }
    }

    /// Accepts every connection that is waiting.
    fn accept_ready(&self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.serve(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors (or memory): the connection stays queued; rest a
                    // moment rather than spin, unless the server stops meanwhile.
                    tracing::warn!(error = %e, "cannot accept a session client");
                    let _ = sys::unix::wait_readable([self.woken.as_fd()], Some(EXHAUSTED_PAUSE));
                    return;
                }
            }
        }
    }

    fn serve(&self, stream: UnixStream) {
        let id = self.shared.next_client.fetch_add(1, Ordering::Relaxed);
        // Accepted sockets inherit O_NONBLOCK on macOS (not on Linux); the client threads
        // block.
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!(client = id, error = %e, "cannot set up a session client's socket");
            return;
        }
        let stream = Arc::new(stream);
        self.shared.register(&stream);
        let client = Client {
            id,
            stream,
            hub: self.hub.clone(),
            input: Arc::clone(&self.input),
            shared: Arc::clone(&self.shared),
        };
        let hello_timeout = self.hello_timeout;
        let handle = std::thread::Builder::new()
            .name("engate-client".into())
            .spawn(move || client.serve(hello_timeout));
        match handle {
            Ok(handle) => {
                let mut list = self.clients.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|h| !h.is_finished());
                list.push(handle);
            }
            Err(e) => {
                tracing::warn!(client = id, error = %e, "cannot start a session client's thread")
            }
        }
    }
}

/// One connection and what serving it needs.
struct Client {
    /// Names the connection in the log.
    id: u64,
    stream: Arc<UnixStream>,
    hub: Hub,
    input: Arc<File>,
    shared: Arc<Shared>,
}

/// How a client's input ended, as the input thread tells its writer.
#[derive(Debug, Default)]
struct InputEnd {
    /// The client left, or must be disconnected.
    gone: AtomicBool,
    /// Why the client is disconnected, to send it before closing.
    refusal: Mutex<Option<String>>,
}

/// Why the hello did not come.
enum NoHello {
    /// The client left (or the connection failed) before sending one.
    Left,
    /// The client sent something else, or nothing in time; the text says what.
    Refuse(String),
}

/// The client's hello: its policy, where to resume, and the bytes that followed it.
type Hello = (
    crate::config::Policy,
    Option<crate::snapshot::Position>,
    Vec<u8>,
);

/// The largest read while waiting for a hello: a hello is 19 bytes, so what follows it and is
/// read with it stays small.
const HELLO_READ: usize = 256;

impl Client {
    /// Sends `why` as a refusal, logs it and closes the connection.
    fn refuse(&self, why: &str) {
        tracing::warn!(client = self.id, reason = why, "refused a session client");
        let mut frame = Vec::with_capacity(why.len() + 3);
        wire::encode_server(&ServerMsg::Refused(why.to_owned()), &mut frame);
        // Bounded: a client that does not read its refusal does not hold this thread.
        let _ = self.stream.set_write_timeout(Some(REFUSAL_TIMEOUT));
        let _ = (&*self.stream).write_all(&frame);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Reads until the hello is complete, within `timeout`.
    fn read_hello(&self, timeout: Duration) -> Result<Hello, NoHello> {
        let deadline = Instant::now() + timeout;
        let mut buf = Vec::with_capacity(HELLO_READ);
        let mut chunk = [0u8; HELLO_READ];
        loop {
            let tag = buf.first().copied();
            match wire::decode_client(&buf) {
                Ok(Some((ClientMsg::Hello { policy, resume }, used))) => {
                    self.stream
                        .set_read_timeout(None)
                        .map_err(|_| NoHello::Left)?;
                    return Ok((policy, resume, buf.split_off(used)));
                }
                Err(e) => return Err(NoHello::Refuse(format!("invalid hello: {e}"))),
                // Another frame, complete or not: refused without waiting for its payload.
                _ if tag.is_some_and(|t| t != b'H') => {
                    let tag = char::from(tag.unwrap_or_default());
                    return Err(NoHello::Refuse(format!(
                        "expected a hello first, got a frame with tag {tag:?}"
                    )));
                }
                Ok(_) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let no_hello = || NoHello::Refuse(format!("no hello within {timeout:?}"));
            if left.is_zero() {
                return Err(no_hello());
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|_| NoHello::Left)?;
            match (&*self.stream).read(&mut chunk) {
                Ok(0) => return Err(NoHello::Left),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(no_hello());
                }
                Err(_) => return Err(NoHello::Left),
            }
        }
    }

    fn serve(self, hello_timeout: Duration) {
        let (policy, resume, rest) = match self.read_hello(hello_timeout) {
            Ok(hello) => hello,
            Err(NoHello::Refuse(why)) => return self.refuse(&why),
            Err(NoHello::Left) => {
                tracing::debug!(client = self.id, "a session client left before its hello");
                return;
            }
        };
        tracing::debug!(
            client = self.id,
            ?policy,
            ?resume,
            "a session client attaches"
        );
        let mut out = BufWriter::with_capacity(64 << 10, &*self.stream);
        let mut frame = Vec::with_capacity(64);
        let attach = self.hub.attach_with(AttachOptions::new().policy(policy));
        let subscribed = match resume {
            Some(p) => attach.resume(p),
            None => attach.subscribe(),
        };
        let subscribed = match subscribed {
            Ok(s) => s,
            Err(e) => {
                drop(out);
                return self.refuse(&format!("attach refused: {e}"));
            }
        };
        let Ok(synced) = subscribed
            .try_replay(|s| write_snapshot(&mut out, &mut frame, s).and_then(|()| out.flush()))
        else {
            return;
        };
        // Registered before it drains: output emitted from here on is offered to it.
        let outlet = Arc::new(Outlet::new(synced.live(), Arc::clone(&self.stream)));
        self.shared.outlets.lock().push(Arc::clone(&outlet));
        let end = Arc::new(InputEnd::default());
        let (writer_done, writer_gone) = mpsc::channel::<()>();
        let reader = {
            let input = InputForwarder {
                id: self.id,
                stream: Arc::clone(&self.stream),
                input: Arc::clone(&self.input),
                hub: self.hub.clone(),
                end: Arc::clone(&end),
                shared: Arc::clone(&self.shared),
                outlet: Arc::clone(&outlet),
            };
            std::thread::Builder::new()
                .name("engate-client-input".into())
                .spawn(move || input.run(rest, &writer_gone))
        };
        let result = if reader.is_err() {
            tracing::warn!(
                client = self.id,
                "cannot start a session client's input thread"
            );
            Ok(())
        } else {
            self.write_output(&outlet, &mut out, &mut frame, &end)
        };
        outlet.take();
        self.shared
            .outlets
            .lock()
            .retain(|o| !Arc::ptr_eq(o, &outlet));
        if let Err(e) = result {
            tracing::debug!(client = self.id, error = %e, "a session client's connection failed");
        }
        drop(out);
        drop(outlet);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        drop(writer_done);
        if let Ok(reader) = reader {
            let _ = reader.join();
        }
        tracing::debug!(client = self.id, "a session client left");
    }
}

impl Client {
    /// The writer thread's loop: while it owns the client it writes the output, blocking as
    /// long as the client takes; caught up, it leaves the writing to the pump and waits to be
    /// handed the client back. Ends when the stream closes, the client leaves or is refused, or
    /// the server stops.
    fn write_output(
        &self,
        outlet: &Outlet,
        out: &mut BufWriter<&UnixStream>,
        frame: &mut Vec<u8>,
        end: &InputEnd,
    ) -> io::Result<()> {
        // Output written into `out` and not yet flushed.
        let mut pending = false;
        loop {
            if end.gone.load(Ordering::SeqCst) {
                let refusal = end.refusal.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(why) = refusal {
                    outlet.take();
                    frame.clear();
                    wire::encode_server(&ServerMsg::Refused(why), frame);
                    // After whatever the pump left unwritten, so frames stay whole.
                    let _ = outlet.drive().take_left(out)?;
                    return out.write_all(frame).and_then(|()| out.flush());
                }
                return Ok(());
            }
            if self.shared.stopping() {
                return Ok(());
            }
            let leaving = || end.gone.load(Ordering::SeqCst) || self.shared.stopping();
            if !outlet.wait_owned(leaving) {
                continue;
            }
            let mut drive = outlet.drive();
            let event = match drive.take_left(out)? {
                Some(event) => event,
                None if pending => drive.live.try_next(),
                None => drive.live.next_timeout(POLL_INTERVAL),
            };
            frame.clear();
            match event {
                Event::Empty => {
                    if pending {
                        pending = false;
                        out.flush()?;
                    }
                    drop(drive);
                    outlet.release();
                }
                Event::Item(item) => {
                    pending = true;
                    wire::encode_item_header(&item, frame);
                    out.write_all(frame)?;
                    out.write_all(&item.bytes)?;
                }
                Event::Gap { from, to } => {
                    pending = true;
                    let epoch = drive.live.position().epoch;
                    wire::encode_server(&ServerMsg::Gap { epoch, from, to }, frame);
                    out.write_all(frame)?;
                }
                Event::Resync(history) => {
                    pending = true;
                    history.replay(|s| write_snapshot(out, frame, s))?;
                }
                Event::Closed(reason) => {
                    if let (CloseReason::Finished, Some(exit)) = (reason, self.shared.exit()) {
                        wire::encode_server(&ServerMsg::Exited(exit), frame);
                    }
                    wire::encode_server(&ServerMsg::Closed(reason), frame);
                    return out.write_all(frame).and_then(|()| out.flush());
                }
            }
        }
    }
}

fn write_snapshot(out: &mut impl Write, frame: &mut Vec<u8>, s: &Snapshot) -> io::Result<()> {
    frame.clear();
    wire::encode_server(&ServerMsg::Snapshot(s.clone()), frame);
    out.write_all(frame)
}

/// A client's input thread: forwards its input frames to the program, and its terminal size
/// to the program's terminal and the snapshot provider, until the client leaves or sends a
/// bad frame.
struct InputForwarder {
    id: u64,
    stream: Arc<UnixStream>,
    input: Arc<File>,
    hub: Hub,
    end: Arc<InputEnd>,
    shared: Arc<Shared>,
    /// Woken when the input ends, so a writer waiting for its client notices.
    outlet: Arc<Outlet>,
}

/// The most a connection's input buffer holds: one whole input frame and one read.
const INPUT_BUFFER: usize = 5 + wire::MAX_INPUT + INPUT_READ;
/// The largest read of a client's input.
const INPUT_READ: usize = 16 << 10;

impl InputForwarder {
    /// `buf` holds what arrived with the hello; `writer_gone` is closed once the writer is
    /// done with the connection.
    fn run(self, buf: Vec<u8>, writer_gone: &mpsc::Receiver<()>) {
        let refusal = self.forward(buf, writer_gone);
        if let Some(why) = &refusal {
            tracing::warn!(
                client = self.id,
                reason = why.as_str(),
                "refused a session client"
            );
        }
        let refused = refusal.is_some();
        *self.end.refusal.lock().unwrap_or_else(|e| e.into_inner()) = refusal;
        self.end.gone.store(true, Ordering::SeqCst);
        self.outlet.wake();
        if refused {
            // The writer sends the refusal after what it has pending; if the client does not
            // read, the connection is shut down from here after a moment, which ends the
            // writer's blocked write.
            let _ = writer_gone.recv_timeout(REFUSAL_TIMEOUT);
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Forwards until the client leaves (`None`) or must be refused (the reason).
    fn forward(&self, mut buf: Vec<u8>, writer_gone: &mpsc::Receiver<()>) -> Option<String> {
        buf.reserve_exact(INPUT_BUFFER.saturating_sub(buf.len()));
        let input = &*self.input;
        let mut chunk = vec![0u8; INPUT_READ];
        loop {
            loop {
                match wire::decode_client(&buf) {
                    Ok(Some((ClientMsg::Input(bytes), used))) => {
                        buf.drain(..used);
                        if !self.write_input(&bytes, writer_gone) {
                            return None;
                        }
                    }
                    Ok(Some((ClientMsg::Resize(size), used))) => {
                        buf.drain(..used);
                        // The provider first: the program redraws only once it learns the
                        // size.
                        self.hub.resize_provider(size.rows, size.cols);
                        // It fails only once the program has closed its terminal, when the
                        // size no longer matters.
                        let _ = resize_terminal(input.as_fd(), size);
                    }
                    Ok(Some((ClientMsg::Detach, _))) => {
                        tracing::debug!(client = self.id, "a session client detaches");
                        return None;
                    }
                    Ok(Some((ClientMsg::Hello { .. }, _))) => {
                        return Some("a second hello on one connection".into());
                    }
                    Err(e) => return Some(invalid_frame(&e)),
                    Ok(None) => break,
                }
            }
            // `buf` holds less than one frame, and a frame's length was checked on its
            // header: it stays within INPUT_BUFFER.
            debug_assert!(buf.len() < 5 + wire::MAX_INPUT);
            // Waits in poll, not in the read: a read blocked on the socket is also woken each
            // time the client takes output (the socket's space frees up), a context switch for
            // nothing on every echo; poll wakes for input (or the end) only.
            match sys::unix::wait_readable([self.stream.as_fd()], None) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
            match (&*self.stream).read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }
}

impl InputForwarder {
    /// Writes `bytes` to the program's terminal, waiting while it is full; false if the
    /// bytes cannot go (the program closed its terminal, the server stops, or the client's
    /// writer is gone; the client learns the first from the stream's end).
    fn write_input(&self, mut bytes: &[u8], writer_gone: &mpsc::Receiver<()>) -> bool {
        let mut input = &*self.input;
        while !bytes.is_empty() {
            match input.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let give_up = self.shared.stopping()
                        || self.shared.exit().is_some()
                        || matches!(
                            writer_gone.try_recv(),
                            Err(mpsc::TryRecvError::Disconnected)
                        );
                    if give_up {
                        return false;
                    }
                    let _ = sys::unix::wait_writable(input.as_fd(), INPUT_POLL);
                }
                Err(_) => return false,
            }
        }
        true
    }
}

fn invalid_frame(e: &WireError) -> String {
    format!("invalid frame: {e}")
}
