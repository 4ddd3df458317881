//! A dtach-like session server: one program in a pseudo-terminal, any number of clients over
//! a Unix socket, each attaching exactly once and resuming where it left.
//!
//! Threads, all blocking I/O:
//!
//! - the **pump** reads the pty master and emits every read as one chunk into the hub; at the
//!   end of the program's output it closes the hub and reaps the program;
//! - the **acceptor** takes connections on the socket (bound with `platform-primitives`'
//!   [`UdsBinder`]: mode set before it is reachable, stale sockets recovered, a live server
//!   refused);
//! - per client, a **writer** that attaches with the client's [`Hello`](super::ClientMsg) and
//!   forwards snapshot and events, coalescing what is ready into one write, and a **reader**
//!   that forwards the client's input to the program and notices the client leaving.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use platform_primitives::uds::{BindError, SocketPath, UdsBinder};

use super::wire::{self, ClientMsg, ServerMsg};
use crate::attach::Event;
use crate::config::{AttachOptions, ConfigError, HubConfig};
use crate::hub::{Hub, Producer, channel};
use crate::pty::{self, Pty, PtyError, PtySize, resize_terminal};
use crate::snapshot::{Snapshot, SnapshotProvider, TailProvider};

/// How long a writer waits for events before it looks at the stop and client-gone flags.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

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
    size: PtySize,
    hub: HubConfig,
    snapshot: SnapshotMode,
    read_chunk: usize,
    mode: u32,
}

impl SessionConfig {
    /// Serve `program` on the Unix socket at `socket`. Defaults: a 24 × 80 terminal with
    /// `TERM=xterm-256color`, the default [`HubConfig`], a 64 KiB tail snapshot, reads of up to
    /// 64 KiB, socket mode 0o600.
    pub fn new(socket: impl Into<PathBuf>, program: impl Into<OsString>) -> Self {
        Self {
            socket: socket.into(),
            program: program.into(),
            args: Vec::new(),
            env: vec![("TERM".into(), "xterm-256color".into())],
            size: PtySize::default(),
            hub: HubConfig::default(),
            snapshot: SnapshotMode::Tail { bytes: 64 << 10 },
            read_chunk: 64 << 10,
            mode: 0o600,
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

/// A running session server. Dropping it shuts it down (see [`shutdown`](Self::shutdown)).
#[derive(Debug)]
pub struct SessionServer {
    hub: Hub,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    unreaped: Unreaped,
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
            SnapshotMode::Screen => Box::new(crate::screen::ScreenProvider::new(
                config.size.rows,
                config.size.cols,
            )),
        };
        let (producer, hub) = channel(config.hub.clone(), provider)?;
        let bound = UdsBinder::new("engate session server")
            .mode(config.mode)
            .bind_listener(&config.socket)?;
        let socket = bound.path().to_owned();
        let (listener, path_guard) = bound.into_parts();

        let mut cmd = Command::new(&config.program);
        cmd.args(&config.args);
        for (k, v) in &config.env {
            cmd.env(k, v);
        }
        let pty = Pty::spawn(cmd, config.size)?;
        let reader = pty.reader()?;
        let input = Arc::new(pty.writer()?);
        let (master, child) = pty.into_parts();
        drop(master);
        let unreaped: Unreaped = Arc::new(Mutex::new(Some(child.id())));

        let pump = {
            let unreaped = Arc::clone(&unreaped);
            let chunk = config.read_chunk;
            spawn("pump", move || {
                pump(reader, producer, child, unreaped, chunk)
            })?
        };
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (hub, stop, clients) = (hub.clone(), Arc::clone(&stop), Arc::clone(&clients));
            spawn("acceptor", move || {
                accept(listener, hub, input, stop, clients)
            })?
        };
        Ok(Self {
            hub,
            socket,
            stop,
            unreaped,
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

    /// Stops accepting, hangs up the program if it still runs, disconnects every client and
    /// joins all threads.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor out of accept().
        let _ = UnixStream::connect(&self.socket);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
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
    chunk: usize,
) -> io::Result<ExitStatus> {
    let mut buf = vec![0u8; chunk];
    let result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                // A read never exceeds the budget-sized chunk limit unless the configuration
                // is smaller than one read; split in that case.
                let data = Bytes::copy_from_slice(&buf[..n]);
                if let Err(e) = emit_all(&mut producer, data) {
                    break Err(io::Error::other(e));
                }
            }
            Err(e) if pty::is_end_of_output(&e) => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    drop(producer);
    let mut pid = unreaped.lock().unwrap_or_else(|e| e.into_inner());
    *pid = None;
    drop(pid);
    let status = child.wait()?;
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

fn accept(
    listener: UnixListener,
    hub: Hub,
    input: Arc<File>,
    stop: Arc<AtomicBool>,
    clients: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let (hub, input, stop) = (hub.clone(), Arc::clone(&input), Arc::clone(&stop));
        let handle = std::thread::Builder::new()
            .name("engate-client".into())
            .spawn(move || serve_client(stream, hub, input, stop));
        if let Ok(handle) = handle {
            let mut list = clients.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|h| !h.is_finished());
            list.push(handle);
        }
    }
}

/// Reads until one client message is complete; returns it and any bytes after it.
fn read_hello(stream: &mut UnixStream) -> Option<(ClientMsg, Vec<u8>)> {
    stream.set_read_timeout(Some(HELLO_TIMEOUT)).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if let Some((msg, used)) = wire::decode_client(&buf).ok()? {
            stream.set_read_timeout(None).ok()?;
            return Some((msg, buf.split_off(used)));
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn write_snapshot(out: &mut impl Write, frame: &mut Vec<u8>, s: &Snapshot) -> io::Result<()> {
    frame.clear();
    wire::encode_server(&ServerMsg::Snapshot(s.clone()), frame);
    out.write_all(frame)
}

fn serve_client(mut stream: UnixStream, hub: Hub, input: Arc<File>, stop: Arc<AtomicBool>) {
    let Some((ClientMsg::Hello { policy, resume }, rest)) = read_hello(&mut stream) else {
        return;
    };
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut out = BufWriter::with_capacity(64 << 10, write_half);
    let mut frame = Vec::with_capacity(64);
    let attach = hub.attach_with(AttachOptions::new().policy(policy));
    let subscribed = match resume {
        Some(p) => attach.resume(p),
        None => attach.subscribe(),
    };
    let subscribed = match subscribed {
        Ok(s) => s,
        Err(e) => {
            wire::encode_server(&ServerMsg::Refused(e.to_string()), &mut frame);
            let _ = out.write_all(&frame).and_then(|()| out.flush());
            return;
        }
    };
    let Ok(synced) = subscribed
        .try_replay(|s| write_snapshot(&mut out, &mut frame, s).and_then(|()| out.flush()))
    else {
        return;
    };
    let mut live = synced.live();

    let gone = Arc::new(AtomicBool::new(false));
    let reader = {
        let (gone, input, hub) = (Arc::clone(&gone), Arc::clone(&input), hub.clone());
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        std::thread::Builder::new()
            .name("engate-client-input".into())
            .spawn(move || forward_input(read_half, rest, &input, &hub, &gone))
    };

    let mut pending = false;
    let result: io::Result<()> = loop {
        if stop.load(Ordering::SeqCst) || gone.load(Ordering::SeqCst) {
            break Ok(());
        }
        let event = if pending {
            live.try_next()
        } else {
            live.next_timeout(POLL_INTERVAL)
        };
        frame.clear();
        let written = match event {
            Event::Empty => {
                if pending {
                    pending = false;
                    out.flush()
                } else {
                    Ok(())
                }
            }
            Event::Item(item) => {
                pending = true;
                wire::encode_item_header(&item, &mut frame);
                out.write_all(&frame)
                    .and_then(|()| out.write_all(&item.bytes))
            }
            Event::Gap { from, to } => {
                pending = true;
                let epoch = live.position().epoch;
                wire::encode_server(&ServerMsg::Gap { epoch, from, to }, &mut frame);
                out.write_all(&frame)
            }
            Event::Resync(history) => {
                pending = true;
                history.replay(|s| write_snapshot(&mut out, &mut frame, s))
            }
            Event::Closed(reason) => {
                wire::encode_server(&ServerMsg::Closed(reason), &mut frame);
                break out.write_all(&frame).and_then(|()| out.flush());
            }
        };
        if let Err(e) = written {
            break Err(e);
        }
    };
    drop(result);
    drop(live);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Ok(reader) = reader {
        let _ = reader.join();
    }
}

/// Forwards the client's input frames to the program, and its terminal size to the program's
/// terminal and the snapshot provider, until the client leaves.
fn forward_input(
    mut stream: UnixStream,
    mut buf: Vec<u8>,
    mut input: &File,
    hub: &Hub,
    gone: &AtomicBool,
) {
    let mut chunk = [0u8; 4096];
    'outer: loop {
        loop {
            match wire::decode_client(&buf) {
                Ok(Some((ClientMsg::Input(bytes), used))) => {
                    buf.drain(..used);
                    if input.write_all(&bytes).is_err() {
                        break 'outer;
                    }
                }
                Ok(Some((ClientMsg::Resize(size), used))) => {
                    buf.drain(..used);
                    // The provider first: the program redraws only once it learns the size.
                    hub.resize_provider(size.rows, size.cols);
                    // It fails only once the program has closed its terminal, when the size no
                    // longer matters.
                    let _ = resize_terminal(input.as_fd(), size);
                }
                Ok(Some((ClientMsg::Detach | ClientMsg::Hello { .. }, _))) | Err(_) => {
                    break 'outer;
                }
                Ok(None) => break,
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    gone.store(true, Ordering::SeqCst);
}
