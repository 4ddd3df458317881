//! `engate attach` (a terminal on a session) and `engate tail` (its output, non-interactive).
//!
//! Attach hands its terminal to the session's server (terminal mode): the server writes the
//! output to it and reads the keys from it, up to the detach key, so neither passes through
//! this process. A server that cannot take the terminal is relayed through instead: the
//! terminal thread then waits on standard input and on the session in one loop, as dtach
//! does, keystrokes going to the program until the detach key and the output through a
//! [`Follower`], which writes each byte to the terminal once and remembers the position
//! written up to. Either way the terminal thread reads the session's messages (where the
//! terminal stands, the detach, the program's end), and the main thread waits for signals
//! (taken with `sigwait` by a signal thread, never by a handler, and passed on through an
//! event pipe): window changes, `SIGCONT`, `SIGTSTP` (the client lets the terminal go, stops,
//! and attaches again when continued), a signal that ends the attach, and the end of the
//! terminal thread. On the way out the position is saved beside the socket, so the next
//! attach from this user asks the server for exactly the bytes it missed; when the server no
//! longer holds them (or with `--redraw`), it gets the screen redrawn instead.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engate_attach::session::wire::{self, ServerMsg};
use engate_attach::session::{
    Applied, ClientError, Follower, ProgramExit, SessionClient, SessionReader, SessionWriter,
};
use engate_attach::{Policy, Position};

use crate::store::{Probe, Session};
use crate::term::{self, RawMode};
use crate::{Failure, daemon, sys};

/// How long the server has to put the attach on the terminal handed to it (a snapshot, or the
/// bytes missed) and say so.
const FIRST_ANSWER: Duration = Duration::from_secs(10);
/// How long a leaving client waits for the terminal thread to finish what it was writing.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How often `tail` looks at signals and saves its position while no output comes.
const TAIL_TICK: Duration = Duration::from_millis(200);

/// The `attach` command's options.
#[derive(Debug)]
pub(crate) struct AttachOptions {
    /// Start the session with this program if it does not exist (`-A`, `--create`).
    pub(crate) create: Option<Vec<std::ffi::OsString>>,
    /// The byte that detaches (`-e`).
    pub(crate) detach_key: u8,
    /// Send no input and no size (`-r`, `--read-only`).
    pub(crate) read_only: bool,
    /// Ask for a redraw of the screen instead of the missed bytes (`--redraw`).
    pub(crate) redraw: bool,
}

/// How the output side ended.
#[derive(Debug)]
enum OutputEnd {
    /// The program ended (with this status, if the server said).
    Finished(Option<ProgramExit>),
    /// The server refused the client.
    Refused(String),
    /// The connection ended without an end of stream.
    Lost(String),
    /// The terminal could not be written.
    Terminal(io::Error),
    /// The server read the detach key (it reads the keys itself).
    Detached,
}

/// Why the client leaves.
#[derive(Debug)]
enum Leave {
    Detached,
    Output(OutputEnd),
    Signal(libc::c_int),
    /// `SIGTSTP`: the client lets the terminal go, stops, and attaches again when continued.
    Suspended,
}

/// Parses a detach key: `^X` (control-X, `^?` is DEL), or one ASCII character.
pub(crate) fn parse_key(spec: &str) -> Option<u8> {
    match spec.as_bytes() {
        [b'^', b'?'] => Some(0x7f),
        [b'^', c] if c.is_ascii_alphabetic() || b"@[\\]^_".contains(c) => {
            Some(c.to_ascii_uppercase() & 0x1f)
        }
        [c] if c.is_ascii() => Some(*c),
        _ => None,
    }
}

/// Shows a detach key the way `-e` takes it.
fn show_key(key: u8) -> String {
    match key {
        0x7f => "^?".into(),
        k if k < 0x20 => format!("^{}", char::from(k | 0x40)),
        k => char::from(k).to_string(),
    }
}

/// `engate attach`: returns the process's exit status.
pub(crate) fn attach(session: &Session, options: &AttachOptions) -> Result<i32, Failure> {
    if std::env::var_os("ENGATE").is_some_and(|s| s == session.socket.as_os_str()) {
        return Err(Failure::new(format!(
            "this terminal is inside session {} already; attaching would feed it its own output",
            session.name
        )));
    }
    // Blocked before any thread starts, so the signal thread alone takes them.
    let signals = sys::block_signals(&[
        libc::SIGWINCH,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGCONT,
        libc::SIGTSTP,
    ])?;
    match (session.probe(), &options.create) {
        (Probe::Live, _) => {}
        (_, Some(program)) => {
            daemon::start(session, program, term::size().unwrap_or_default())?;
        }
        (Probe::Stale, None) => {
            return Err(Failure::new(format!(
                "session {} is not running (its server is gone; stale socket {}); `engate list` cleans it up",
                session.name,
                session.socket.display()
            )));
        }
        (Probe::Absent, None) => {
            return Err(Failure::new(format!(
                "no session {} (no socket {}); start it with `engate new {} PROGRAM` or `engate attach -A {}`",
                session.name,
                session.socket.display(),
                session.name,
                session.name
            )));
        }
    }
    let mut resume = if options.redraw {
        None
    } else {
        session.attach_position()
    };
    let (events, signal_events) =
        io::pipe().map_err(|e| Failure::from_io("cannot create the event pipe", &e))?;
    std::thread::Builder::new()
        .name("engate-signals".into())
        .spawn(move || {
            let mut out = signal_events;
            while let Ok(signal) = signals.wait() {
                if out.write_all(&[signal as u8]).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Failure::from_io("cannot start the signal thread", &e))?;
    // Raw before the server may write to the terminal.
    let raw = RawMode::enter()
        .map_err(|e| Failure::from_io("cannot put the terminal in raw mode", &e))?;
    let (leave, position) = loop {
        let (leave, position) = attach_once(session, options, resume, raw.as_ref(), &events)?;
        if !matches!(leave, Leave::Suspended) {
            break (leave, position);
        }
        // Suspended (SIGTSTP): the server has let the terminal go, the shell gets it back as
        // it was; when continued the client attaches again from where the terminal stood.
        let _ = session.save_attach_position(position);
        if let Some(raw) = &raw {
            let mut stdout = io::stdout().lock();
            let _ = stdout.write_all(term::RESET_MODES);
            let _ = stdout.flush();
            drop(stdout);
            raw.pause();
        }
        sys::stop_self();
        // A signal that came while stopped (SIGTERM, SIGHUP) ends the attach before it
        // starts again.
        if let Some(signal) = pending_signal(&events) {
            break (Leave::Signal(signal), position);
        }
        if let Some(raw) = &raw {
            raw.reapply();
        }
        resume = position;
    };
    let finished = matches!(leave, Leave::Output(OutputEnd::Finished(_)));
    // A finished session's offsets mean nothing to its successor of the same name.
    let _ = session.save_attach_position(if finished { None } else { position });

    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(term::RESET_MODES);
    let _ = stdout.flush();
    drop(stdout);
    drop(raw);
    let name = &session.name;
    match leave {
        Leave::Detached | Leave::Output(OutputEnd::Detached) => {
            eprintln!("\r\n[engate: detached from {name}]");
            Ok(0)
        }
        Leave::Signal(signal) => {
            eprintln!("\r\n[engate: left {name} on signal {signal}]");
            Ok(128 + signal)
        }
        Leave::Output(OutputEnd::Finished(exit)) => {
            match exit {
                Some(exit) => eprintln!("\r\n[engate: {name} ended: {exit}]"),
                None => eprintln!("\r\n[engate: {name} ended]"),
            }
            Ok(exit.map_or(0, ProgramExit::shell_status))
        }
        Leave::Output(OutputEnd::Refused(why)) => Err(Failure::new(format!(
            "session {name} refused the client: {why}"
        ))),
        Leave::Output(OutputEnd::Lost(why)) => Err(Failure::new(format!(
            "lost session {name} ({}): {why}",
            session.socket.display()
        ))),
        Leave::Output(OutputEnd::Terminal(e)) => Err(Failure::from_io(
            format!("left session {name}: cannot write to the terminal"),
            &e,
        )),
        // Handled by the loop above.
        Leave::Suspended => Ok(0),
    }
}

/// One attachment, from connecting to leaving: how it ended and where the terminal stands.
fn attach_once(
    session: &Session,
    options: &AttachOptions,
    resume: Option<Position>,
    raw: Option<&RawMode>,
    events: &io::PipeReader,
) -> Result<(Leave, Option<Position>), Failure> {
    // The terminal goes to the server when the output goes to it; its keys too when they come
    // from the same terminal.
    let hand_over = (raw.is_some() && io::stdout().is_terminal()).then(|| {
        if sys::same_terminal(io::stdin().as_fd(), io::stdout().as_fd()) {
            wire::Keys::Read {
                detach: options.detach_key,
                read_only: options.read_only,
            }
        } else {
            wire::Keys::Sent
        }
    });
    let (client, start) = connect(session, resume, hand_over).inspect_err(|_| {
        if hand_over.is_some() {
            // The server may have drawn part of the screen before it failed.
            let mut stdout = io::stdout().lock();
            let _ = stdout.write_all(term::RESET_MODES);
            let _ = stdout.flush();
        }
    })?;
    let server_reads_keys = matches!(start, Some((_, wire::Keys::Read { .. })));
    let start = start.map_or(resume, |(at, _)| Some(at));
    let (reader, writer) = client.into_split();
    let reader_socket = reader.as_fd().try_clone_to_owned().ok();
    // Readable once the terminal thread has ended (its end is dropped), whichever way.
    let (ended, ended_in) =
        io::pipe().map_err(|e| Failure::from_io("cannot create the event pipe", &e))?;

    let writer = Mutex::new(Some(writer));
    let sends_size = raw.is_some() && !options.read_only;
    let resize = Arc::new(AtomicBool::new(false));
    // Never waits for the terminal thread (which may be stuck sending keys to a program that
    // does not read them): if it is sending, it sends the size once done.
    let resize_session = |writer: &Mutex<Option<SessionWriter>>| {
        if !sends_size {
            return;
        }
        match writer.try_lock() {
            Ok(mut writer) => {
                if let Some(writer) = writer.as_mut() {
                    send_size(writer);
                }
            }
            Err(_) => resize.store(true, Ordering::Relaxed),
        }
    };
    resize_session(&writer);

    let writer = Arc::new(writer);
    let position = Arc::new(Mutex::new(start));
    let end = Arc::new(Mutex::new(None::<Leave>));
    let io = {
        let (writer, position, end) =
            (Arc::clone(&writer), Arc::clone(&position), Arc::clone(&end));
        let keys = Keys {
            detach: options.detach_key,
            read_only: options.read_only,
            resize: Arc::clone(&resize),
            server_reads: server_reads_keys,
        };
        std::thread::Builder::new()
            .name("engate-io".into())
            .spawn(move || {
                // Dropped on every way out, a panic included: the main thread sees the end.
                let _ended = ended_in;
                let outcome = relay(reader, &writer, keys, start, &position);
                *end.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
            })
            .map_err(|e| Failure::from_io("cannot start the terminal thread", &e))?
    };

    // A duplicate of the connection's socket, to shut it down however this attachment ends:
    // a terminal thread stuck sending keys then fails at once, and the server lets the
    // terminal go (a suspended client must leave no attachment behind).
    let socket = reader_socket;
    let leave = match wait_signals(raw, &writer, events, &ended, &resize_session) {
        Some(signal) => {
            // Polite, unless the terminal thread is stuck sending keys: the server ends the
            // stream (saying where the terminal stands), and the terminal thread sees it close.
            let taken = writer.try_lock().ok().and_then(|mut w| w.take());
            if let Some(writer) = taken {
                let _ = writer.set_write_timeout(Some(DRAIN_LIMIT));
                writer.detach();
                let _ = sys::wait_readable([Some(ended.as_fd())], Some(DRAIN_LIMIT));
            }
            // The terminal thread may have ended on its own meanwhile (the program ended,
            // the detach key): that outcome stands. (Any other end is the detach's doing.)
            let outcome = end.lock().unwrap_or_else(|e| e.into_inner()).take();
            match (outcome, signal) {
                (
                    Some(
                        outcome @ (Leave::Detached
                        | Leave::Output(OutputEnd::Detached | OutputEnd::Finished(_))),
                    ),
                    _,
                ) => outcome,
                (_, libc::SIGTSTP) => Leave::Suspended,
                (_, signal) => Leave::Signal(signal),
            }
        }
        None => end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Leave::Output(OutputEnd::Lost(
                "the terminal thread stopped".into(),
            ))),
    };
    if let Some(socket) = &socket {
        sys::shut_down(socket.as_fd());
        // A thread that was stuck sending ends now (one stuck writing to a stopped terminal
        // may not: it is not waited for beyond this).
        let _ = sys::wait_readable([Some(ended.as_fd())], Some(DRAIN_LIMIT));
    }
    // Not joined: a thread stuck writing to a stopped terminal must not keep the client.
    drop(io);
    let position = *position.lock().unwrap_or_else(|e| e.into_inner());
    Ok((leave, position))
}

/// A signal that ends the attach, among those that came meanwhile (without waiting).
fn pending_signal(events: &io::PipeReader) -> Option<libc::c_int> {
    while let Ok([true]) = sys::wait_readable([Some(events.as_fd())], Some(Duration::ZERO)) {
        let mut got = [0u8; 1];
        if (&*events).read(&mut got).unwrap_or(0) == 0 {
            return None;
        }
        match got[0] as libc::c_int {
            libc::SIGWINCH | libc::SIGCONT | libc::SIGTSTP => {}
            signal => return Some(signal),
        }
    }
    None
}

/// Connects to the session, handing it the terminal when `hand_over` says who reads the
/// keys: the server then writes the output to the terminal itself, as tmux's does, and no
/// byte of it passes through this process (nor the keys, with [`wire::Keys::Read`]). A server that
/// cannot take the terminal (or predates terminal mode) refuses it, and the client connects
/// again and relays. Returns the connection and, if the server took the terminal, where the
/// terminal starts and who reads the keys.
fn connect(
    session: &Session,
    resume: Option<Position>,
    hand_over: Option<wire::Keys>,
) -> Result<(SessionClient, Option<(Position, wire::Keys)>), Failure> {
    let cannot = |e: &ClientError| {
        Failure::from_error(format!("cannot attach to session {}", session.name), e)
    };
    if let Some(keys) = hand_over {
        let stdout = io::stdout();
        let mut client = SessionClient::connect_terminal(
            &session.socket,
            Policy::Resync,
            resume,
            stdout.as_fd(),
            keys,
        )
        .map_err(|e| cannot(&e))?;
        client
            .set_read_timeout(Some(FIRST_ANSWER))
            .map_err(|e| cannot(&e))?;
        match client.next_message() {
            Ok(ServerMsg::Shown(at)) => {
                client.set_read_timeout(None).map_err(|e| cannot(&e))?;
                return Ok((client, Some((at, keys))));
            }
            // Not taken: relayed instead (a refusal of the attach itself comes again).
            Ok(ServerMsg::Refused(_)) => {}
            Ok(other) => {
                return Err(Failure::new(format!(
                    "cannot attach to session {}: the server answered the terminal with {other:?}",
                    session.name
                )));
            }
            Err(e) => return Err(cannot(&e)),
        }
    }
    let client =
        SessionClient::connect(&session.socket, Policy::Resync, resume).map_err(|e| cannot(&e))?;
    Ok((client, None))
}

/// What the terminal thread needs to know of the keys.
#[derive(Debug)]
struct Keys {
    /// The byte that detaches.
    detach: u8,
    /// Keys are not sent (the detach key still works).
    read_only: bool,
    /// The window changed while the terminal thread was sending: it sends the new size.
    resize: Arc<AtomicBool>,
    /// The server reads the keys from the terminal itself: the client does not read them.
    server_reads: bool,
}

/// The terminal thread: keystrokes to the session and the session's output to the terminal,
/// in one loop, as dtach does (a keystroke and its echo cost no hand-off between threads),
/// until the stream ends or the client detaches.
fn relay(
    mut reader: SessionReader,
    writer: &Mutex<Option<SessionWriter>>,
    keys: Keys,
    resume: Option<Position>,
    position: &Mutex<Option<Position>>,
) -> Leave {
    // Unbuffered copies of the standard descriptors: what poll says is there is what a read
    // gets, and a batch of output is one write.
    let mut terminal = match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => return Leave::Output(OutputEnd::Terminal(e)),
    };
    // No standard input (closed), or the server reads it: nothing to send.
    let mut stdin = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .filter(|_| !keys.server_reads)
        .map(File::from);
    let mut output = Output {
        follower: resume.map_or_else(Follower::new, Follower::resume_at),
        batch: Vec::with_capacity(BATCH),
    };
    // Once detached: until when the output the server sent before is still shown.
    let mut detached: Option<Instant> = None;
    let mut buf = [0u8; 4096];
    loop {
        if keys.resize.swap(false, Ordering::Relaxed)
            && let Some(writer) = writer.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
        {
            send_size(writer);
        }
        let left = match detached {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) => Some(left),
                None => return Leave::Detached,
            },
            None => None,
        };
        let keys_fd = stdin
            .as_ref()
            .filter(|_| detached.is_none())
            .map(File::as_fd);
        let ready = sys::wait_readable([keys_fd, Some(reader.as_fd())], left);
        let [key_ready, output_ready] = match ready {
            Ok(r) => r,
            Err(e) => return Leave::Output(OutputEnd::Lost(format!("poll failed: {e}"))),
        };
        if key_ready && let Some(input) = stdin.as_mut() {
            let n = match input.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // Input is over (a pipe, not a terminal): keep showing the output.
                    stdin = None;
                    0
                }
                Ok(n) => n,
            };
            let typed = &buf[..n];
            let (send, detach) = match typed.iter().position(|&b| b == keys.detach) {
                Some(at) => (&typed[..at], true),
                None => (typed, false),
            };
            let mut writer = writer.lock().unwrap_or_else(|e| e.into_inner());
            if !keys.read_only
                && !send.is_empty()
                && let Some(writer) = writer.as_mut()
            {
                // A failed send means the connection is ending; the output says why.
                let _ = writer.send_input(send);
            }
            if detach && let Some(writer) = writer.take() {
                // Polite: the server ends the stream; what it sent before is still shown,
                // for at most DRAIN_LIMIT (also if the server does not take the detach).
                let _ = writer.set_write_timeout(Some(DRAIN_LIMIT));
                writer.detach();
                let deadline = Instant::now() + DRAIN_LIMIT;
                detached = Some(deadline);
                let _ = reader.set_read_timeout(Some(DRAIN_LIMIT));
            }
        }
        if output_ready {
            match output.relay(&mut reader, &mut terminal, position) {
                None => {}
                Some(_) if detached.is_some() => return Leave::Detached,
                Some(OutputEnd::Detached) => return Leave::Detached,
                Some(end) => return Leave::Output(end),
            }
        }
    }
}

/// The most output written to the terminal in one go.
const BATCH: usize = 256 << 10;

/// The output side of the terminal thread.
struct Output {
    follower: Follower,
    /// What the messages already received add, written to the terminal in one go.
    batch: Vec<u8>,
}

impl Output {
    /// Takes the next message and those already behind it, writes what they add to the
    /// terminal and records the position written up to; how the output ended, if it did.
    fn relay(
        &mut self,
        reader: &mut SessionReader,
        terminal: &mut File,
        position: &Mutex<Option<Position>>,
    ) -> Option<OutputEnd> {
        let mut msg = match reader.next_message() {
            Ok(msg) => msg,
            Err(ClientError::Disconnected) => {
                return Some(OutputEnd::Lost("the server closed the connection".into()));
            }
            Err(e) => return Some(OutputEnd::Lost(platform_primitives::error::chain(&e))),
        };
        // Every message already received is shown before the loop waits again (poll does not
        // see what is buffered), a batch of at most BATCH bytes at a time.
        loop {
            self.batch.clear();
            let (applied, next) = loop {
                let applied = match self.follower.apply(&msg, &mut self.batch) {
                    Ok(applied) => applied,
                    Err(e) => return Some(OutputEnd::Terminal(e)),
                };
                if !matches!(applied, Applied::Continue) {
                    break (applied, None);
                }
                match reader.next_buffered() {
                    Ok(Some(next)) if self.batch.len() >= BATCH => break (applied, Some(next)),
                    Ok(Some(next)) => msg = next,
                    // A decoding error comes back from `next_message` on the next turn.
                    Ok(None) | Err(_) => break (applied, None),
                }
            };
            if let Err(e) = terminal.write_all(&self.batch) {
                return Some(OutputEnd::Terminal(e));
            }
            // Recorded only once written: a later attach resumes after what the terminal
            // shows.
            if let Some(p) = self.follower.position() {
                *position.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            }
            match applied {
                Applied::Continue => {}
                Applied::Closed(_) => {
                    return Some(OutputEnd::Finished(self.follower.exit_status()));
                }
                Applied::Detached => return Some(OutputEnd::Detached),
                Applied::Refused => {
                    return Some(OutputEnd::Refused(match msg {
                        ServerMsg::Refused(why) => why,
                        other => format!("{other:?}"),
                    }));
                }
            }
            match next {
                Some(next) => msg = next,
                None => return None,
            }
        }
    }
}

/// The main thread, while the terminal thread relays: applies window changes and `SIGCONT`,
/// until the terminal thread ends (`None`) or another signal comes (that signal).
fn wait_signals(
    raw: Option<&RawMode>,
    writer: &Mutex<Option<SessionWriter>>,
    events: &io::PipeReader,
    ended: &io::PipeReader,
    resize: &dyn Fn(&Mutex<Option<SessionWriter>>),
) -> Option<libc::c_int> {
    loop {
        match sys::wait_readable([Some(events.as_fd()), Some(ended.as_fd())], None) {
            Ok([_, true]) => return None,
            Ok([true, false]) => {}
            Ok([false, false]) => continue,
            Err(_) => return None,
        }
        // One at a time: a signal behind the one that ends this attachment stays for the
        // next (a SIGTERM behind a SIGTSTP, say).
        let mut got = [0u8; 1];
        if (&*events).read(&mut got).unwrap_or(0) == 0 {
            return None;
        }
        match got[0] as libc::c_int {
            libc::SIGWINCH => resize(writer),
            libc::SIGCONT => {
                if let Some(raw) = raw {
                    raw.reapply();
                }
                resize(writer);
            }
            signal => return Some(signal),
        }
    }
}

/// Sends the terminal's size, if it has one.
fn send_size(writer: &mut SessionWriter) {
    if let Some(size) = term::size() {
        let _ = writer.send_resize(size);
    }
}

/// `engate tail`: writes the session's output to standard output as it comes, resuming
/// where the previous tail of this session stopped; returns the process's exit status.
pub(crate) fn tail(session: &Session) -> Result<i32, Failure> {
    let signals = sys::block_signals(&[libc::SIGTERM, libc::SIGHUP, libc::SIGINT])?;
    let caught = Arc::new(std::sync::atomic::AtomicI32::new(0));
    {
        let caught = Arc::clone(&caught);
        std::thread::Builder::new()
            .name("engate-signals".into())
            .spawn(move || {
                if let Ok(signal) = signals.wait() {
                    caught.store(signal, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .map_err(|e| Failure::from_io("cannot start the signal thread", &e))?;
    }
    let saved = session.tail_position();
    let connect_error =
        |e: ClientError| Failure::from_error(format!("cannot follow session {}", session.name), &e);
    let mut client =
        SessionClient::connect(&session.socket, Policy::Resync, saved).map_err(connect_error)?;
    client
        .set_read_timeout(Some(TAIL_TICK))
        .map_err(connect_error)?;
    let mut follower = saved.map_or_else(Follower::new, Follower::resume_at);
    let mut out = io::stdout().lock();
    let mut stored = saved;
    let store = |follower: &Follower, stored: &mut Option<Position>| {
        if follower.position() != *stored {
            *stored = follower.position();
            let _ = session.save_tail_position(*stored);
        }
    };
    loop {
        let signal = caught.load(std::sync::atomic::Ordering::SeqCst);
        if signal != 0 {
            store(&follower, &mut stored);
            return Ok(128 + signal);
        }
        let msg = match client.next_message() {
            Ok(msg) => msg,
            Err(ClientError::Io { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                store(&follower, &mut stored);
                continue;
            }
            Err(e) => {
                store(&follower, &mut stored);
                return Err(Failure::from_error(
                    format!(
                        "lost session {} ({})",
                        session.name,
                        session.socket.display()
                    ),
                    &e,
                ));
            }
        };
        let resyncs = follower.resyncs();
        let applied = follower
            .apply(&msg, &mut out)
            .and_then(|a| out.flush().map(|()| a))
            .map_err(|e| Failure::from_io("cannot write the output", &e))?;
        if follower.resyncs() > resyncs
            && let Some((from, to)) = follower.skipped().last()
        {
            eprintln!(
                "[engate: {} fell behind: bytes {from}..{to} skipped]",
                session.name
            );
        }
        match applied {
            // A detach comes only to a client that handed its terminal over.
            Applied::Continue | Applied::Detached => {}
            Applied::Refused => {
                return Err(Failure::new(format!(
                    "session {} refused the tail: {msg:?}",
                    session.name
                )));
            }
            Applied::Closed(_) => {
                let _ = session.save_tail_position(None);
                return Ok(follower.exit_status().map_or(0, ProgramExit::shell_status));
            }
        }
    }
}

/// Shows the detach key, for the usage text.
pub(crate) fn default_key_name() -> String {
    show_key(crate::DEFAULT_DETACH_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_like_dtach() {
        assert_eq!(parse_key("^\\"), Some(0x1c));
        assert_eq!(parse_key("^a"), Some(0x01));
        assert_eq!(parse_key("^A"), Some(0x01));
        assert_eq!(parse_key("^?"), Some(0x7f));
        assert_eq!(parse_key("q"), Some(b'q'));
        assert_eq!(parse_key("^1"), None);
        assert_eq!(parse_key(""), None);
        assert_eq!(parse_key("ab"), None);
        for key in [0x01, 0x1c, 0x7f, b'q'] {
            assert_eq!(parse_key(&show_key(key)), Some(key));
        }
    }
}
