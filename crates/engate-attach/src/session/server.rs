//! A dtach-like session server: one program in a pseudo-terminal, any number of clients over
//! a Unix socket, each attaching exactly once and resuming where it left.
//!
//! Threads:
//!
//! - the **pump** waits on the program's terminal and on every client's socket in one `poll`,
//!   as dtach's single loop does. It reads the program's output, emits every read as one chunk
//!   into the hub and writes it to every client that keeps up, itself and without blocking; it
//!   reads the clients' input without blocking and forwards it (keystrokes, window sizes) to
//!   the program, holding a client's keystrokes while the program's terminal is full. A
//!   keystroke and its echo thus cost no hand-off between server threads. At the end of the
//!   program's output it closes the hub and reaps the program;
//! - the **acceptor** takes connections on the socket (bound with `platform-primitives`'
//!   [`UdsBinder`]: mode set before it is reachable, stale sockets recovered, a live server
//!   refused); it waits for a connection or for the server's stop signal, so stopping does not
//!   depend on the socket file still being there;
//! - per client, a **writer** that reads the client's [`Hello`](super::ClientMsg), attaches,
//!   sends the snapshot, and takes the client over whenever the pump cannot write to it
//!   without blocking (its socket is full) or it needs more than a write (a resync, the end of
//!   the stream): it catches the client up from the hub, blocking as long as the client takes,
//!   coalescing what is ready into one write, then hands it back (the hand-off is
//!   [`super::handoff`], model-checked). It also sends a refusal when the pump finds a bad
//!   frame.
//!
//! A client cannot hang the server or grow its memory: the server keeps every connection it
//! owns and, on shutdown, shuts each one down from its side (both directions), so a writer
//! blocked on a client that stopped reading returns at once; an input frame is at most
//! [`MAX_INPUT`](super::wire::MAX_INPUT) bytes, checked on its header, and a client's socket is
//! not read while its keystrokes wait for the program, so a connection buffers at most one
//! such frame and one read. A bad hello or frame gets a
//! [`Refused`](super::wire::ServerMsg::Refused) message that says what was wrong, is logged with
//! `tracing` (target `engate_attach::session::server`), and the connection is closed.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use platform_primitives::uds::{BindError, SocketPath, UdsBinder};

use super::input::{End, INPUT_READ, InputConn, InputEnd, KeysWait, Served, TerminalKeys};
use super::outlet::{Drive, Outlet, Sink, TerminalOut};
use super::wire::{self, ClientMsg, Keys, ProgramExit, ServerMsg};
use crate::attach::{CloseReason, Event};
use crate::config::{AttachOptions, ConfigError, HubConfig};
use crate::hub::{EmitError, Hub, Producer, channel};
use crate::pty::{self, Pty, PtyError, PtySize};
use crate::snapshot::{SnapshotProvider, TailProvider};
use crate::sys;

/// How long a writer that owns its client waits for output before it gives the client back to
/// the pump (a writer that does not own it waits for a hand-over, a stop or its client's end,
/// with no timeout: each of those wakes it).
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a refused client has to take its refusal before its connection is shut down.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// A read of the program's output shorter than this is interactive: the pump goes back to
/// waiting instead of reading again at once.
const SHORT_READ: usize = 512;
/// The most reads of the program's output in a row before the pump looks at its clients'
/// input again.
const OUTPUT_BURST: usize = 16;
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
    take_terminals: bool,
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
            take_terminals: true,
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

    /// Whether clients may hand their terminal to the server, which then writes their output
    /// to it itself (terminal mode, see [`wire`](super::wire); on by default). Off, a terminal
    /// hello is refused and the client relays its output: for a server that must not open
    /// its clients' terminals.
    pub fn take_terminals(mut self, take: bool) -> Self {
        self.take_terminals = take;
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
#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    /// Every connection still open, to shut down on stop; a connection's threads hold the
    /// strong references, so a closed one is just a dead entry, pruned on the next accept.
    connections: Mutex<Vec<Weak<UnixStream>>>,
    exit: Mutex<Option<ProgramExit>>,
    next_client: AtomicU64,
    /// Every live client's output, for the pump to write while the client keeps up.
    outlets: parking_lot::Mutex<Vec<Arc<Outlet>>>,
    /// Every client's input, for the pump to forward; emptied when the pump ends.
    inputs: parking_lot::Mutex<Vec<Arc<InputConn>>>,
    /// The pump has ended (the program's output is over): a client's input is its writer's
    /// to drop.
    pump_done: AtomicBool,
    /// Written to (a byte) when `inputs` changes: the pump waits on its other end too.
    pump_wake: UnixStream,
}

impl Shared {
    fn new(pump_wake: UnixStream) -> Self {
        Self {
            stop: AtomicBool::new(false),
            connections: Mutex::default(),
            exit: Mutex::default(),
            next_client: AtomicU64::new(0),
            outlets: parking_lot::Mutex::default(),
            inputs: parking_lot::Mutex::default(),
            pump_done: AtomicBool::new(false),
            pump_wake,
        }
    }

    /// Adds or removes a client's input (`add`: the client, `remove`: its id) and tells the
    /// pump.
    fn change_inputs(&self, change: impl FnOnce(&mut Vec<Arc<InputConn>>)) {
        change(&mut self.inputs.lock());
        // Non-blocking: a full pipe already wakes the pump.
        let _ = (&self.pump_wake).write(&[1]);
    }

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
        let input = pty.writer()?;
        // Non-blocking (for the reader too: they share the open file description): the pump
        // waits for the terminal in its loop, with everything else.
        platform_primitives::fd::set_nonblocking(input.as_fd(), true)
            .map_err(SessionError::Terminal)?;
        let (master, child) = pty.into_parts();
        drop(master);
        let program_pid = child.id();
        let unreaped: Unreaped = Arc::new(Mutex::new(Some(program_pid)));
        let (pump_wake, pump_woken) = UnixStream::pair().map_err(listen_error)?;
        pump_wake.set_nonblocking(true).map_err(listen_error)?;
        pump_woken.set_nonblocking(true).map_err(listen_error)?;
        let shared = Arc::new(Shared::new(pump_wake));

        let room = Waker::from(Arc::new(PumpWake(
            shared.pump_wake.try_clone().map_err(listen_error)?,
        )));
        let pump = {
            let io = Io {
                reader,
                program: input,
                producer,
                hub: hub.clone(),
                shared: Arc::clone(&shared),
                woken: pump_woken,
                room,
                chunk: config.read_chunk,
            };
            let (unreaped, shared) = (Arc::clone(&unreaped), Arc::clone(&shared));
            spawn("pump", move || {
                /// However the pump ends (by a panic too), once the hub is closed the clients
                /// that keep up are offered its end: their writers wait for nothing else.
                struct LastOffer(Arc<Shared>);
                impl Drop for LastOffer {
                    fn drop(&mut self) {
                        self.0.offer_all();
                    }
                }
                let _last = LastOffer(Arc::clone(&shared));
                io.run(child, &unreaped, &shared)
            })?
        };
        let clients = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let acceptor = Acceptor {
                listener,
                woken,
                hub: hub.clone(),
                shared: Arc::clone(&shared),
                clients: Arc::clone(&clients),
                hello_timeout: config.hello_timeout,
                take_terminals: config.take_terminals,
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

/// The pump: the program's terminal and every client's input, in one loop.
struct Io {
    /// The pty master, read for the program's output (non-blocking).
    reader: File,
    /// The pty master, written with the clients' keystrokes (the same open file, so
    /// non-blocking too).
    program: File,
    producer: Producer,
    hub: Hub,
    shared: Arc<Shared>,
    /// Readable when the clients' inputs changed, or room freed up for held-back output.
    woken: UnixStream,
    /// Left with the hub when an authority holds the output back: writes to the wake-up.
    room: Waker,
    /// The largest read of the program's output.
    chunk: usize,
}

/// Wakes the pump through its wake-up socket (the hub's producer waker).
struct PumpWake(UnixStream);

impl Wake for PumpWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Non-blocking: a full socket already wakes the pump.
        let _ = (&self.0).write(&[1]);
    }
}

/// The poll event that says a peer shut its side of a socket down (Linux; elsewhere only a
/// full close is seen, as a hang-up).
#[cfg(target_os = "linux")]
const PEER_SHUT: libc::c_short = libc::POLLRDHUP;
#[cfg(not(target_os = "linux"))]
const PEER_SHUT: libc::c_short = 0;

/// Poll entries before the clients': the program's terminal, then the wake-up.
const PROGRAM: usize = 0;
const WOKEN: usize = 1;
const CLIENTS: usize = 2;

impl Io {
    /// Emits the output read and not yet emitted, in order, writing each chunk to the clients
    /// that keep up; stops (leaving the rest queued) where an authority client holds the
    /// stream back.
    fn emit_stalled(&mut self, stalled: &mut VecDeque<Bytes>) {
        while let Some(front) = stalled.front_mut() {
            match self.producer.try_emit_or_wake(front.clone(), &self.room) {
                Ok(_) => {
                    stalled.pop_front();
                    self.shared.offer_all();
                }
                // Only if the configured read is larger than the budget: split.
                Err(EmitError::ChunkTooLarge { budget, .. }) => {
                    let rest = front.split_off(budget);
                    stalled.insert(1, rest);
                }
                // The hub wakes the pump once the authority has freed room.
                Err(EmitError::WouldBlock { .. }) => return,
            }
        }
    }

    /// Reads the program's output into the hub and writes it to the clients that keep up, and
    /// forwards the clients' input to the program, until the output ends; then reaps the
    /// program and closes the hub.
    fn run(
        mut self,
        mut child: std::process::Child,
        unreaped: &Unreaped,
        shared: &Shared,
    ) -> io::Result<ExitStatus> {
        let result = self.serve();
        // Nobody forwards input any more: the clients' inputs are let go (their writers drop
        // their own from now on).
        shared.pump_done.store(true, Ordering::SeqCst);
        shared.inputs.lock().clear();
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
        // Closes the hub; the clients that keep up are offered its end once the pump's
        // thread has dropped `self` (see `LastOffer`).
        drop(self.producer);
        let status = status?;
        result.map(|()| status)
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut output = vec![0u8; self.chunk];
        let mut scratch = vec![0u8; INPUT_READ];
        let mut clients: Vec<Arc<InputConn>> = Vec::new();
        // Refused connections, shut down at the deadline if their writer has not closed them.
        let mut refused: Vec<(Instant, Arc<UnixStream>)> = Vec::new();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut pending: Vec<bool> = Vec::new();
        // Output read but not yet emitted: an authority client (Policy::Block) holds the
        // stream back. The program's terminal is not read meanwhile, and the emit is tried
        // again when the hub says there is room (through the wake-up), while the clients'
        // input goes on being forwarded.
        let mut stalled: VecDeque<Bytes> = VecDeque::new();
        // The program's terminal hung up while output was stalled: not polled (it would
        // report the hang-up at once, every time) until the output flows again.
        let mut program_gone = false;
        let entry = |fd: RawFd, events| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        loop {
            fds.clear();
            pending.clear();
            pending.extend(clients.iter().map(|c| c.has_pending()));
            let mut program_events = if stalled.is_empty() { libc::POLLIN } else { 0 };
            if pending.contains(&true) {
                program_events |= libc::POLLOUT;
            }
            // A negative descriptor is left out by poll.
            let program_fd = if program_gone || program_events == 0 {
                -1
            } else {
                self.reader.as_raw_fd()
            };
            fds.push(entry(program_fd, program_events));
            fds.push(entry(self.woken.as_raw_fd(), libc::POLLIN));
            // Two entries per client: its socket, and its terminal if the server reads its
            // keys (else left out).
            for client in &clients {
                // A client whose keystrokes wait is not read (unless its keys come from its
                // terminal, see `reads_socket`); its hang-up is still reported, unless it has
                // hung up already (its keystrokes are still delivered).
                let (fd, events) = match (client.reads_socket(), client.hung_up()) {
                    (true, _) => (client.stream.as_raw_fd(), libc::POLLIN),
                    (false, true) => (-1, 0),
                    // A client that shuts its side down (a detach) is seen too (Linux).
                    (false, false) => (client.stream.as_raw_fd(), PEER_SHUT),
                };
                fds.push(entry(fd, events));
                let keys = match client.keys_wait() {
                    KeysWait::Read(tty) if !client.hung_up() => tty,
                    _ => -1,
                };
                fds.push(entry(keys, libc::POLLIN));
            }
            let timeout = if refused.is_empty() {
                None
            } else {
                let now = Instant::now();
                refused.retain(|(deadline, stream)| {
                    let due = *deadline <= now;
                    if due {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    }
                    !due
                });
                refused
                    .iter()
                    .map(|(deadline, _)| deadline.saturating_duration_since(now))
                    .min()
            };
            match sys::unix::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let program = fds[PROGRAM].revents;
            if !stalled.is_empty() {
                if program & (libc::POLLHUP | libc::POLLERR) != 0 {
                    program_gone = true;
                }
                self.emit_stalled(&mut stalled);
                if stalled.is_empty() {
                    program_gone = false;
                }
            } else if program & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                // Output in full flow is read again at once, up to a burst, before the loop
                // looks at the clients' input again (a Ctrl-C during `cat` waits that long).
                for _ in 0..OUTPUT_BURST {
                    match self.reader.read(&mut output) {
                        Ok(0) => return Ok(()),
                        Ok(n) => {
                            stalled.push_back(Bytes::copy_from_slice(&output[..n]));
                            self.emit_stalled(&mut stalled);
                            if !stalled.is_empty() {
                                break;
                            }
                            if n < SHORT_READ {
                                // Interactive output: the next read would find nothing.
                                break;
                            }
                        }
                        Err(e) if pty::is_end_of_output(&e) => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            let writable = program & libc::POLLOUT != 0;
            let mut finished = false;
            let mut end = |client: &InputConn, served| {
                if let Served::Done(how) = served {
                    if matches!(how, End::Refused(_)) {
                        let deadline = Instant::now() + REFUSAL_TIMEOUT;
                        refused.push((deadline, Arc::clone(&client.stream)));
                    }
                    client.finish(how);
                    finished = true;
                }
            };
            let entries = fds[CLIENTS..].chunks(2);
            for ((client, entry), waits) in clients.iter().zip(entries).zip(&pending) {
                let (fd, keys) = (entry[0], entry[1]);
                if keys.revents != 0 {
                    let served = client.serve_keys(&self.program, &self.hub, &mut scratch);
                    if served != Served::Again {
                        end(client, served);
                        continue;
                    }
                }
                let readable = fd.revents & libc::POLLIN != 0;
                let hung_up =
                    fd.revents & (PEER_SHUT | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
                if readable || (*waits && writable) {
                    end(
                        client,
                        client.serve(&self.program, &self.hub, readable, &mut scratch),
                    );
                } else if hung_up && *waits {
                    // Its output ends now; its keystrokes are still delivered, then what is
                    // left in its socket.
                    client.hang_up_waiting();
                } else if hung_up {
                    end(client, Served::Done(End::Left));
                }
            }
            if fds[WOKEN].revents != 0 {
                let mut drained = [0u8; 64];
                while matches!((&self.woken).read(&mut drained), Ok(n) if n > 0) {}
                clients = self.shared.inputs.lock().clone();
                // What arrived with a new client's hello is forwarded now: no more may come.
                for client in clients.iter().filter(|c| c.take_fresh()) {
                    end(
                        client,
                        client.serve(&self.program, &self.hub, false, &mut scratch),
                    );
                }
            }
            if finished {
                let done: Vec<u64> = clients
                    .iter()
                    .filter(|c| c.end.gone.load(Ordering::SeqCst))
                    .map(|c| c.id)
                    .collect();
                self.shared
                    .change_inputs(|inputs| inputs.retain(|i| !done.contains(&i.id)));
            }
            clients.retain(|c| !c.end.gone.load(Ordering::SeqCst));
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
    shared: Arc<Shared>,
    clients: Arc<Mutex<Vec<JoinHandle<()>>>>,
    hello_timeout: Duration,
    take_terminals: bool,
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
            shared: Arc::clone(&self.shared),
            take_terminals: self.take_terminals,
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
    shared: Arc<Shared>,
    /// Whether it may hand its terminal over.
    take_terminals: bool,
}

/// Why the hello did not come.
enum NoHello {
    /// The client left (or the connection failed) before sending one.
    Left,
    /// The client sent something else, or nothing in time; the text says what.
    Refuse(String),
}

/// The client's hello.
struct Hello {
    policy: crate::config::Policy,
    resume: Option<crate::snapshot::Position>,
    /// The terminal it hands over (terminal mode): `Some` if it asked to, with who reads the
    /// keys and the descriptor if one came.
    terminal: Option<(Keys, Option<OwnedFd>)>,
    /// The bytes that followed the hello.
    rest: Vec<u8>,
}

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

    /// Reads until the hello is complete, within `timeout`, with the descriptor a terminal
    /// hello carries. Any other descriptor that comes is closed.
    fn read_hello(&self, timeout: Duration) -> Result<Hello, NoHello> {
        let deadline = Instant::now() + timeout;
        let mut buf = Vec::with_capacity(HELLO_READ);
        let mut chunk = [0u8; HELLO_READ];
        // The first descriptor that came; at most one is taken per read, the rest are closed
        // by the kernel.
        let mut fd: Option<OwnedFd> = None;
        loop {
            let tag = buf.first().copied();
            match wire::decode_client(&buf) {
                Ok(Some((
                    ClientMsg::Hello {
                        policy,
                        resume,
                        terminal,
                    },
                    used,
                ))) => {
                    self.stream
                        .set_read_timeout(None)
                        .map_err(|_| NoHello::Left)?;
                    return Ok(Hello {
                        policy,
                        resume,
                        terminal: terminal.map(|keys| (keys, fd)),
                        rest: buf.split_off(used),
                    });
                }
                Err(e) => return Err(NoHello::Refuse(format!("invalid hello: {e}"))),
                // Another frame, complete or not: refused without waiting for its payload.
                _ if tag.is_some_and(|t| t != b'H' && t != b'T') => {
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
            match platform_primitives::fdpass::recv_with_fds(&*self.stream, &mut chunk, 1) {
                Ok(got) if got.len == 0 => return Err(NoHello::Left),
                Ok(got) => {
                    buf.extend_from_slice(&chunk[..got.len]);
                    // Extra descriptors are dropped (closed) here.
                    for received in got.fds {
                        fd.get_or_insert(received);
                    }
                }
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

    /// Where the client's output goes (its socket, or the terminal it handed over) and where
    /// its keys come from (its socket, or that terminal); the refusal if the terminal cannot
    /// be used.
    fn sink(
        &self,
        terminal: Option<(Keys, Option<OwnedFd>)>,
        resume: Option<crate::snapshot::Position>,
    ) -> Result<(Sink, Option<TerminalKeys>), String> {
        let Some((keys, fd)) = terminal else {
            return Ok((Sink::Frames, None));
        };
        let Some(fd) = fd else {
            return Err("a terminal hello came without the terminal's descriptor".into());
        };
        if !self.take_terminals {
            return Err("this server does not take terminals (relay the output)".into());
        }
        // The client's descriptor is closed once the terminal is opened anew (or not).
        let cannot = |e: io::Error| format!("cannot use the terminal handed over: {e}");
        let tty = Arc::new(sys::unix::reopen_terminal(fd.as_fd()).map_err(cannot)?);
        let keys = match keys {
            Keys::Sent => None,
            Keys::Read { detach, read_only } => Some(TerminalKeys {
                tty: Arc::clone(&tty),
                detach,
                read_only,
            }),
        };
        Ok((
            Sink::Terminal(Box::new(TerminalOut::new(tty, resume))),
            keys,
        ))
    }

    fn serve(self, hello_timeout: Duration) {
        let mut hello = match self.read_hello(hello_timeout) {
            Ok(hello) => hello,
            Err(NoHello::Refuse(why)) => return self.refuse(&why),
            Err(NoHello::Left) => {
                tracing::debug!(client = self.id, "a session client left before its hello");
                return;
            }
        };
        let terminal = hello.terminal.take();
        tracing::debug!(
            client = self.id,
            policy = ?hello.policy,
            resume = ?hello.resume,
            terminal = terminal.is_some(),
            "a session client attaches"
        );
        let (mut drive, keys) = match self.sink(terminal, hello.resume) {
            Ok((sink, keys)) => (Drive::new(sink), keys),
            Err(why) => return self.refuse(&why),
        };
        let attach = self
            .hub
            .attach_with(AttachOptions::new().policy(hello.policy));
        let subscribed = match hello.resume {
            Some(p) => attach.resume(p),
            None => attach.subscribe(),
        };
        let subscribed = match subscribed {
            Ok(s) => s,
            Err(e) => return self.refuse(&format!("attach refused: {e}")),
        };
        // The attach's snapshot: a terminal-mode client that leaves meanwhile (its terminal
        // stuck) is let go with where its terminal stands.
        let terminal_mode = drive.is_terminal();
        let give_up = || self.shared.stopping() || (terminal_mode && self.peer_left());
        let replayed = subscribed.try_replay(|s| {
            drive.put(&ServerMsg::Snapshot(s.clone()));
            match drive.flush(&self.stream, &give_up) {
                Ok(true) => Ok(()),
                Ok(false) => Err(io::Error::other("the client left during its snapshot")),
                Err(e) => Err(e),
            }
        });
        let synced = match replayed {
            Ok(synced) => synced,
            Err(e) => {
                if let Some(shown) = drive.shown() {
                    let _ = self.send_control(&[ServerMsg::Shown(shown)]);
                }
                tracing::debug!(
                    client = self.id,
                    error = %e,
                    "a session client left during its snapshot"
                );
                self.discard_unread();
                let _ = self.stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        if drive.is_terminal() {
            // The attach is on the terminal: the client knows the server took it.
            let shown = drive.shown().unwrap_or(synced.position());
            if self.send_control(&[ServerMsg::Shown(shown)]).is_err() {
                return;
            }
        }
        // Registered before it drains: output emitted from here on is offered to it.
        let outlet = Arc::new(Outlet::new(synced.live(), drive, Arc::clone(&self.stream)));
        self.shared.outlets.lock().push(Arc::clone(&outlet));
        // Its input is forwarded by the pump from now on.
        let input = Arc::new(InputConn::new(
            self.id,
            Arc::clone(&self.stream),
            Arc::clone(&outlet),
            hello.rest,
            keys,
        ));
        self.shared
            .change_inputs(|inputs| inputs.push(Arc::clone(&input)));
        let ending = self.write_output(&outlet, &input.end);
        // Nobody writes to the client any more; a terminal learns where it stands, whatever
        // ended its output (an error included: the terminal hung up, say).
        outlet.take();
        let shown = outlet.drive().shown();
        let (last, result) = match ending {
            Ok(last) => (last, Ok(())),
            Err(e) => (Vec::new(), Err(e)),
        };
        if let Some(shown) = shown {
            let mut msgs = vec![ServerMsg::Shown(shown)];
            msgs.extend(last);
            let _ = self.send_control(&msgs);
        }
        // The subscription and the terminal are let go now, even while the pump still holds
        // the outlet (keystrokes that wait).
        outlet.close();
        self.shared
            .outlets
            .lock()
            .retain(|o| !Arc::ptr_eq(o, &outlet));
        // The client's input is the pump's to end: it reads what the client sent before it
        // left (keystrokes included, also those still waiting for the program), then sees
        // the connection end (it is shut down below) and lets the client go. Once the pump
        // has ended, nobody will: the writer drops it.
        if self.shared.pump_done.load(Ordering::SeqCst) {
            self.shared
                .change_inputs(|inputs| inputs.retain(|i| !Arc::ptr_eq(i, &input)));
        }
        if let Err(e) = result {
            tracing::debug!(client = self.id, error = %e, "a session client's connection failed");
        }
        drop(outlet);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        tracing::debug!(client = self.id, "a session client left");
    }

    /// Reads (a little of) what the client sent and nobody will read, so that closing the
    /// connection gives it the end of the stream rather than a reset.
    fn discard_unread(&self) {
        let mut unread = [0u8; 4096];
        for _ in 0..16 {
            match sys::unix::recv_now(self.stream.as_fd(), &mut unread) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Whether a terminal-mode client has left: it shut its socket down (or closed it). In
    /// terminal mode the socket carries no output, so a client that stops sending is leaving.
    fn peer_left(&self) -> bool {
        sys::unix::peer_left(self.stream.as_fd())
    }

    /// Sends messages on the socket (in terminal mode, the ones that do not go to the
    /// terminal). They are small and the socket carries nothing else then, so the write does
    /// not wait for long; a client that never reads is shut down on stop.
    fn send_control(&self, msgs: &[ServerMsg]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(64);
        for msg in msgs {
            wire::encode_server(msg, &mut frame);
        }
        (&*self.stream).write_all(&frame)
    }
}

impl Client {
    /// The writer thread's loop: while it owns the client it writes the output, blocking as
    /// long as the client takes (and the server runs); caught up, it leaves the writing to the
    /// pump and waits to be handed the client back. Ends when the stream closes, the client
    /// leaves or is refused, or the server stops. In terminal mode it returns the messages
    /// that end the client's stream (the caller sends them after `Shown`); with frames it
    /// writes them itself.
    fn write_output(&self, outlet: &Outlet, end: &InputEnd) -> io::Result<Vec<ServerMsg>> {
        let left = || end.gone.load(Ordering::SeqCst) || end.output_done.load(Ordering::SeqCst);
        let leaving = || left() || self.shared.stopping();
        // A terminal-mode client that left shows on its socket before the pump reads it.
        let terminal_mode = outlet.drive_any().is_terminal();
        let give_up = || leaving() || (terminal_mode && self.peer_left());
        loop {
            if left() {
                return self.leave(outlet, end);
            }
            if self.shared.stopping() {
                return Ok(Vec::new());
            }
            if !outlet.wait_owned(leaving) {
                continue;
            }
            let mut drive = outlet.drive();
            // What the pump (or the last round) left unwritten goes first.
            if !drive.flush(&self.stream, &give_up)? {
                if !leaving() {
                    // The client went away before the pump saw it: it is done.
                    return Ok(Vec::new());
                }
                continue;
            }
            match drive.next_event(POLL_INTERVAL) {
                None => return Ok(Vec::new()),
                Some(Event::Empty) => {
                    drop(drive);
                    outlet.release();
                }
                Some(Event::Closed(reason)) => {
                    let exit = match reason {
                        CloseReason::Finished => self.shared.exit(),
                        CloseReason::Overrun { .. } => None,
                    };
                    let mut last: Vec<ServerMsg> =
                        exit.map(ServerMsg::Exited).into_iter().collect();
                    last.push(ServerMsg::Closed(reason));
                    let stopping = || self.shared.stopping() || (terminal_mode && self.peer_left());
                    if drive.is_terminal() {
                        // The end of the output on the terminal first, then the news on the
                        // socket, after where the terminal stands.
                        drive.flush(&self.stream, &stopping)?;
                        return Ok(last);
                    }
                    for msg in &last {
                        drive.put(msg);
                    }
                    return drive.flush(&self.stream, &stopping).map(|_| Vec::new());
                }
                Some(event) => {
                    // Written with what else is ready, on the next turn.
                    drive.put_event(event);
                    drive.fill();
                }
            }
        }
    }

    /// The client left, or is refused: a refusal is sent after whatever output was left
    /// (so frames stay whole); a terminal gets what was left for a moment, and the client
    /// learns where its terminal stands (and that its detach key was read).
    fn leave(&self, outlet: &Outlet, end: &InputEnd) -> io::Result<Vec<ServerMsg>> {
        outlet.take();
        let refusal = end.refusal.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut drive = outlet.drive();
        // Bounded: a client that does not read does not hold this thread (the pump also
        // shuts a refused connection down after a moment).
        let deadline = Instant::now() + REFUSAL_TIMEOUT;
        let give_up = || Instant::now() >= deadline || self.shared.stopping();
        let terminal_gone = || give_up() || self.peer_left();
        match (refusal, drive.is_terminal()) {
            (Some(why), false) => {
                drive.put(&ServerMsg::Refused(why));
                drive.flush(&self.stream, &give_up).map(|_| Vec::new())
            }
            (Some(why), true) => Ok(vec![ServerMsg::Refused(why)]),
            (None, false) => Ok(Vec::new()),
            (None, true) => {
                drive.flush(&self.stream, &terminal_gone)?;
                Ok(if end.detached.load(Ordering::SeqCst) {
                    vec![ServerMsg::Detached]
                } else {
                    Vec::new()
                })
            }
        }
    }
}
