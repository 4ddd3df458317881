//! Terminal mode: a client hands its terminal to the server, which writes the program's output
//! to it itself. Real ptys stand for the clients' terminals (the test reads their master side,
//! as a terminal emulator would); the server, its program and the sockets are real.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use engate_attach::Policy;
use engate_attach::Position;
use engate_attach::session::wire::{self, ClientMsg, Keys, ServerMsg};
use engate_attach::session::{
    ClientError, SessionClient, SessionConfig, SessionReader, SessionServer, SessionWriter,
    Transcript,
};

use crate::support::{TempDir, sh_session};

/// A terminal for a client: the master side (what the terminal shows is read there) and the
/// slave side in raw mode (what a client in raw mode hands over).
fn terminal() -> (File, OwnedFd) {
    let (master, slave) = engate_attach::pty::open_pair().expect("a pty pair");
    // SAFETY: a zeroed termios is a valid value to be filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `slave` is open for the call; `t` is a valid termios that outlives it.
    assert_eq!(unsafe { libc::tcgetattr(slave.as_raw_fd(), &raw mut t) }, 0);
    // SAFETY: cfmakeraw only rewrites the flags of the termios it is given.
    unsafe { libc::cfmakeraw(&raw mut t) };
    // SAFETY: as for tcgetattr; tcsetattr only reads `t`.
    let set = unsafe { libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &raw const t) };
    assert_eq!(set, 0);
    (File::from(master), slave)
}

/// Reads what the terminal shows until `want` bytes have come or nothing more comes for
/// `quiet` (within 30 s in all).
fn read_terminal(master: &mut File, want: usize, quiet: Duration) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while got.len() < want && Instant::now() < deadline {
        let mut entry = [libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `entry` is one valid pollfd for the call.
        let ready = unsafe { libc::poll(entry.as_mut_ptr(), 1, quiet.as_millis() as i32) };
        if ready <= 0 {
            break;
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// What `seq 1 n` prints through a pty, after the echo of the newline typed to start it.
fn seq_output(n: u32) -> Vec<u8> {
    let mut out = b"\r\n".to_vec();
    for i in 1..=n {
        out.extend_from_slice(format!("{i}\r\n").as_bytes());
    }
    out
}

/// The paths in this process's descriptor table that are `path` (Linux `/proc`).
fn open_copies(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|p| p == path))
                .count()
        })
        .unwrap_or(0)
}

/// The terminal's path, through `/proc` (Linux).
fn tty_path(fd: &OwnedFd) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("the pty's path")
}

/// A client handing `terminal` over to the server at `socket`, whose reads wait at most 10 s.
fn handing_over(socket: &Path, terminal: BorrowedFd<'_>, keys: Keys) -> SessionClient {
    let client = SessionClient::connect_terminal(socket, Policy::Resync, None, terminal, keys)
        .expect("connect with the terminal");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    client
}

/// The next message, which must say where the terminal stands.
fn shown_at(client: &mut SessionClient) -> Position {
    match next(client) {
        ServerMsg::Shown(at) => at,
        other => panic!("expected where the terminal stands, got {other:?}"),
    }
}

fn next(client: &mut SessionClient) -> ServerMsg {
    client.next_message().expect("a message from the server")
}

#[test]
fn the_server_writes_the_output_to_the_terminal_handed_to_it_and_says_where_it_ends() {
    let dir = TempDir::new("term-whole");
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "read go; seq 1 30000");
    let (mut master, slave) = terminal();
    let mut client = handing_over(&socket, slave.as_fd(), Keys::Sent);
    let start = shown_at(&mut client);
    assert_eq!(start.next, 0, "nothing was printed before the attach");
    client.send_input(b"\n").expect("start the program");
    let expected = seq_output(30000);
    let shown = read_terminal(&mut master, expected.len(), Duration::from_secs(5));
    assert!(
        shown == expected,
        "the terminal shows the program's output exactly: {} bytes of {}, first difference at {:?}",
        shown.len(),
        expected.len(),
        shown.iter().zip(&expected).position(|(a, b)| a != b)
    );
    let mut rest = Vec::new();
    loop {
        let msg = next(&mut client);
        let closed = matches!(msg, ServerMsg::Closed(_));
        rest.push(msg);
        if closed {
            break;
        }
    }
    let end = Position {
        epoch: start.epoch,
        next: expected.len() as u64,
    };
    assert_eq!(
        rest,
        vec![
            ServerMsg::Shown(end),
            ServerMsg::Exited(engate_attach::session::ProgramExit::Code(0)),
            ServerMsg::Closed(engate_attach::CloseReason::Finished),
        ],
        "no output on the socket: where the terminal ends, the exit, the end"
    );
    assert!(
        read_terminal(&mut master, 1, Duration::from_millis(200)).is_empty(),
        "nothing is written to the terminal after the end"
    );
    drop(client);
    server.shutdown();
    assert_eq!(
        open_copies(&tty_path(&slave)),
        1,
        "the server closed its copies of the terminal (only the test's own is left)"
    );
}

/// The terminal stops taking output (nobody reads it) while the program prints on; the client
/// detaches. The server gives up on the terminal within a second, says exactly how far the
/// terminal got (a write cut short counts to the byte), and a client that resumes there gets
/// the rest: nothing lost, nothing twice.
#[test]
fn a_stuck_terminal_detached_resumes_exactly_where_it_stopped() {
    let dir = TempDir::new("term-stuck");
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "read go; seq 1 200000; exec sleep 60");
    let (mut master, slave) = terminal();
    let client = handing_over(&socket, slave.as_fd(), Keys::Sent);
    let (mut reader, mut writer) = client.into_split();
    let start = match reader.next_message().expect("first message") {
        ServerMsg::Shown(p) => p,
        other => panic!("expected Shown first, got {other:?}"),
    };
    writer.send_input(b"\n").expect("start the program");
    let expected = seq_output(200000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.hub().metrics().emitted_bytes < expected.len() as u64 {
        assert!(Instant::now() < deadline, "the program printed everything");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The server waits on the full terminal now.
    std::thread::sleep(Duration::from_millis(100));
    let detached = Instant::now();
    writer.detach();
    let shown = match reader.next_message().expect("where the terminal stands") {
        ServerMsg::Shown(p) => p,
        other => panic!("expected Shown on detach, got {other:?}"),
    };
    assert!(
        matches!(reader.next_message(), Err(ClientError::Disconnected)),
        "the server closes the connection after saying where the terminal stands"
    );
    let took = detached.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a stuck terminal does not hold the detach: {took:?}"
    );
    assert_eq!(shown.epoch, start.epoch);
    let on_terminal = read_terminal(&mut master, usize::MAX, Duration::from_millis(300));
    assert!(
        !on_terminal.is_empty() && on_terminal.len() < expected.len(),
        "the terminal got part of the output: {} of {} bytes",
        on_terminal.len(),
        expected.len()
    );
    assert_eq!(
        shown.next,
        on_terminal.len() as u64,
        "the position is what the terminal took, to the byte"
    );
    assert_eq!(on_terminal[..], expected[..on_terminal.len()]);

    let mut again = SessionClient::connect(&socket, Policy::Resync, Some(shown)).expect("resume");
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut transcript = Transcript::resume_at(shown);
    while transcript.base() + (transcript.bytes().len() as u64) < expected.len() as u64 {
        transcript.apply(&again.next_message().expect("the rest"));
    }
    assert_eq!(transcript.base(), shown.next, "resumed exactly");
    assert!(transcript.gaps().is_empty(), "{:?}", transcript.gaps());
    assert_eq!(transcript.duplicates_delivered(), 0);
    assert!(
        transcript.bytes() == &expected[on_terminal.len()..],
        "the rest follows the terminal's bytes exactly"
    );
    assert!(
        read_terminal(&mut master, 1, Duration::from_millis(200)).is_empty(),
        "the server wrote nothing to the terminal after it said where it stands"
    );
    assert_eq!(
        open_copies(&tty_path(&slave)),
        1,
        "the detached client's terminal is closed by the server"
    );
    drop(again);
    server.shutdown();
}

/// What a server will not take as a terminal is refused with the reason, the descriptor is
/// closed, and the same client can still attach the plain way.
#[test]
fn a_descriptor_that_is_not_a_usable_terminal_is_refused_and_closed() {
    let dir = TempDir::new("term-refused");
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "echo ready; exec sleep 60");

    // A pipe is no terminal.
    let (mut pipe_out, pipe_in) = io::pipe().expect("a pipe");
    let mut client = handing_over(&socket, pipe_in.as_fd(), Keys::Sent);
    match next(&mut client) {
        ServerMsg::Refused(why) => assert!(why.contains("not a terminal"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(client);
    drop(pipe_in);
    let mut rest = Vec::new();
    // Only an end of file once every copy of the write end is closed, the server's too.
    pipe_out.read_to_end(&mut rest).expect("the pipe ends");
    assert!(rest.is_empty());

    // A terminal hello without its descriptor.
    let mut raw = UnixStream::connect(&socket).expect("connect");
    let mut frame = Vec::new();
    wire::encode_client(
        &ClientMsg::Hello {
            policy: Policy::Resync,
            resume: None,
            terminal: Some(Keys::Sent),
        },
        &mut frame,
    );
    io::Write::write_all(&mut raw, &frame).expect("hello");
    raw.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer)
        .expect("the refusal, then the end");
    match wire::decode_server(&answer) {
        Ok(Some((ServerMsg::Refused(why), _))) => {
            assert!(why.contains("without the terminal's descriptor"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The plain way still works.
    let mut plain = crate::support::attached(&socket);
    assert!(matches!(next(&mut plain), ServerMsg::Snapshot(_)));
    drop(plain);
    server.shutdown();
}

/// A server told not to take terminals refuses them (the client then relays), and keeps no
/// copy of the terminal.
#[test]
fn a_server_that_takes_no_terminals_refuses_them_and_keeps_none() {
    let dir = TempDir::new("term-off");
    let socket = dir.path().join("s.sock");
    let server = SessionServer::start(
        SessionConfig::new(&socket, "sh")
            .args(["-c", "exec sleep 60"])
            .take_terminals(false),
    )
    .expect("start");
    let (_master, slave) = terminal();
    let mut client = handing_over(&socket, slave.as_fd(), Keys::Sent);
    match next(&mut client) {
        ServerMsg::Refused(why) => assert!(why.contains("does not take terminals"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(client);
    let path = tty_path(&slave);
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_copies(&path) > 1 {
        assert!(
            Instant::now() < deadline,
            "the server closed the terminal it refused"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.shutdown();
}

/// Types `keys` on the terminal (its master side, as a person at it would).
fn type_keys(master: &mut File, keys: &[u8]) {
    io::Write::write_all(master, keys).expect("type on the terminal");
}

/// A plain client resumed at `at` sends `line` and reads until `want` shows up; the output
/// since `at`.
fn resume_and_send(socket: &Path, at: Position, line: &[u8], want: &[u8]) -> Vec<u8> {
    let mut client = SessionClient::connect(socket, Policy::Resync, Some(at)).expect("resume");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    client.send_input(line).expect("send");
    let mut transcript = Transcript::resume_at(at);
    while !transcript.bytes().windows(want.len()).any(|w| w == want) {
        transcript.apply(&next(&mut client));
    }
    transcript.bytes().to_vec()
}

/// A session whose shell echoes each line it reads (`got:LINE`), and a client whose terminal
/// and keys the server took (`Keys::Read` with `detach`, `read_only`), past its first `Shown`:
/// the directory (the socket is `s.sock` in it), the server, the terminal's two sides and the
/// client.
fn echo_session_with_keys(
    tag: &str,
    detach: u8,
    read_only: bool,
) -> (TempDir, SessionServer, File, OwnedFd, SessionClient) {
    let dir = TempDir::new(tag);
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "while read l; do echo \"got:$l\"; done");
    let (master, slave) = terminal();
    let mut client = handing_over(&socket, slave.as_fd(), Keys::Read { detach, read_only });
    assert!(matches!(next(&mut client), ServerMsg::Shown(_)));
    (dir, server, master, slave, client)
}

/// With [`Keys::Read`] the server reads the keys from the terminal itself: typed keys reach
/// the program, the detach key ends the attach (what follows it in the same read is dropped),
/// and the server stops reading the terminal there.
#[test]
fn the_server_reads_the_keys_from_the_terminal_up_to_the_detach_key() {
    let (dir, server, mut master, slave, mut client) =
        echo_session_with_keys("term-keys", 0x1c, false);
    let socket = dir.path().join("s.sock");
    type_keys(&mut master, b"hello\r");
    let want = b"got:hello\r\n";
    let mut shown = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shown.windows(want.len()).any(|w| w == want) {
        assert!(
            Instant::now() < deadline,
            "the keys reached the program: {shown:?}"
        );
        shown.extend(read_terminal(&mut master, 1, Duration::from_secs(1)));
    }
    type_keys(&mut master, b"ab\x1cdropped\r");
    let at = shown_at(&mut client);
    assert_eq!(next(&mut client), ServerMsg::Detached);
    assert!(matches!(
        client.next_message(),
        Err(ClientError::Disconnected)
    ));
    // What is typed now stays on the terminal: the server reads it no more.
    type_keys(&mut master, b"later");
    std::thread::sleep(Duration::from_millis(100));
    let mut left = [0u8; 64];
    let n = io::Read::read(&mut File::from(slave.try_clone().expect("dup")), &mut left)
        .expect("the terminal still holds what was typed after the detach");
    assert_eq!(&left[..n], b"later");
    // The keys before the detach key reached the program; those after it in the same read
    // did not.
    let after = resume_and_send(&socket, at, b"\n", b"got:ab\r\n");
    assert!(
        !after.windows(7).any(|w| w == b"dropped"),
        "{}",
        String::from_utf8_lossy(&after)
    );
    server.shutdown();
}

/// Read-only: the server reads the terminal only for the detach key; nothing typed reaches
/// the program.
#[test]
fn read_only_keys_read_by_the_server_reach_nothing_but_the_detach_key_works() {
    let (dir, server, mut master, _slave, mut client) =
        echo_session_with_keys("term-ro", b'q', true);
    let socket = dir.path().join("s.sock");
    type_keys(&mut master, b"typed\r");
    std::thread::sleep(Duration::from_millis(200));
    type_keys(&mut master, b"q");
    let at = shown_at(&mut client);
    assert_eq!(next(&mut client), ServerMsg::Detached);
    assert!(
        read_terminal(&mut master, 1, Duration::from_millis(200)).is_empty(),
        "nothing typed reached the program, so nothing was echoed"
    );
    let after = resume_and_send(&socket, at, b"x\n", b"got:x\r\n");
    assert!(
        !after.windows(5).any(|w| w == b"typed"),
        "{}",
        String::from_utf8_lossy(&after)
    );
    server.shutdown();
}

/// The detach key typed behind a paste the program does not read yet: the server keeps
/// reading the terminal while the paste waits (up to a bound), so the client is let go at
/// once; the paste typed before the key still reaches the program, every byte once.
#[test]
fn the_detach_key_behind_a_waiting_paste_is_prompt_and_the_paste_still_arrives() {
    let dir = TempDir::new("term-paste");
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "stty raw -echo; echo ready; sleep 3; exec cat");
    let (mut master, slave) = terminal();
    let keys = Keys::Read {
        detach: 0x1c,
        read_only: false,
    };
    let mut client = handing_over(&socket, slave.as_fd(), keys);
    assert!(matches!(next(&mut client), ServerMsg::Shown(_)));
    // `ready\n`: the program's terminal is raw, so no carriage return.
    let ready = read_terminal(&mut master, 6, Duration::from_secs(5));
    assert_eq!(ready, b"ready\n");
    const PASTE: usize = 100_000;
    let mut typist = master.try_clone().expect("dup the terminal");
    let typing = std::thread::spawn(move || {
        type_keys(&mut typist, &vec![b'x'; PASTE]);
        type_keys(&mut typist, b"\x1c");
    });
    let pressed = Instant::now();
    let at = shown_at(&mut client);
    assert_eq!(next(&mut client), ServerMsg::Detached);
    let took = pressed.elapsed();
    assert_eq!(
        at.next, 6,
        "the program echoed nothing yet: it had not read the paste"
    );
    assert!(
        took < Duration::from_millis(1500),
        "the detach waited for the program to read the paste: {took:?}"
    );
    typing.join().expect("typing");
    // The program reads at last: the whole paste, once.
    let mut again = SessionClient::connect(&socket, Policy::Resync, Some(at)).expect("resume");
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut transcript = Transcript::resume_at(at);
    while transcript.bytes().iter().filter(|&&b| b == b'x').count() < PASTE {
        match again.next_message() {
            Ok(msg) => {
                transcript.apply(&msg);
            }
            Err(e) => panic!(
                "the paste reached the program: {} of {PASTE} keys came back ({e})",
                transcript.bytes().iter().filter(|&&b| b == b'x').count()
            ),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    again
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    while let Ok(msg) = again.next_message() {
        transcript.apply(&msg);
    }
    assert_eq!(
        transcript.bytes().iter().filter(|&&b| b == b'x').count(),
        PASTE,
        "every key of the paste reached the program once"
    );
    server.shutdown();
}

/// Waits until the server holds no copy of the terminal at `path` (the test's own is left).
fn wait_released(path: &Path, limit: Duration) -> Result<Duration, usize> {
    let start = Instant::now();
    loop {
        let copies = open_copies(path);
        if copies <= 1 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(copies);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The client's terminal hangs up (its master closes: an ssh link dropped) while the server
/// writes to it: the server stops, says where the terminal stood, and lets it go.
#[test]
fn a_terminal_that_hangs_up_still_gets_its_position_said() {
    let dir = TempDir::new("term-hup");
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "read go; exec seq 1 2000000");
    let (mut master, slave) = terminal();
    let path = tty_path(&slave);
    let mut client =
        SessionClient::connect_terminal(&socket, Policy::Resync, None, slave.as_fd(), Keys::Sent)
            .expect("attach with the terminal");
    drop(slave);
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let start = shown_at(&mut client);
    client.send_input(b"\n").expect("start the program");
    let seen = read_terminal(&mut master, 200_000, Duration::from_secs(5));
    assert!(seen.len() >= 200_000);
    drop(master);
    let mut said = None;
    loop {
        match client.next_message() {
            Ok(ServerMsg::Shown(p)) => said = Some(p),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(ClientError::Disconnected) => break,
            Err(e) => panic!("the server neither said nor closed: {e}"),
        }
    }
    let said = said.expect("the server said where the terminal stood when it hung up");
    assert_eq!(said.epoch, start.epoch);
    assert!(
        said.next >= seen.len() as u64,
        "at least what the terminal showed: {said:?} vs {}",
        seen.len()
    );
    wait_released(&path, Duration::from_secs(2)).expect("the server let the terminal go");
    server.shutdown();
}

/// A client whose keys wait for a program that does not read them hangs up: the server stops
/// writing to its terminal at once (the output must not land on the shell the client gave
/// back), and lets the terminal go, while the keys still wait for the program.
#[test]
fn a_client_gone_while_its_keys_wait_no_longer_gets_output_on_its_terminal() {
    keys_wait_then(|reader, writer| {
        drop(writer);
        drop(reader);
        None
    });
}

/// The same with a detach (the connection shut down on the client's side only, as a client
/// leaving on a signal does): seen although the server does not read the client's socket
/// while its keys wait.
#[test]
fn a_client_detaching_while_its_keys_wait_no_longer_gets_output_on_its_terminal() {
    keys_wait_then(|reader, writer| {
        writer.detach();
        // Kept open: only the detach says the client is leaving.
        Some(reader)
    });
}

/// A client pastes more keys than a program that does not read takes (with `Keys::Sent`),
/// then leaves by `leave`: the server stops writing to its terminal within a moment and lets
/// the terminal go.
fn keys_wait_then(leave: impl FnOnce(SessionReader, SessionWriter) -> Option<SessionReader>) {
    let dir = TempDir::new("term-gone");
    let socket = dir.path().join("s.sock");
    let server = sh_session(
        &socket,
        "stty raw -echo; while :; do echo tick; sleep 0.05; done",
    );
    let (mut master, slave) = terminal();
    let path = tty_path(&slave);
    let mut client = handing_over(&socket, slave.as_fd(), Keys::Sent);
    assert!(matches!(next(&mut client), ServerMsg::Shown(_)));
    let ticks = read_terminal(&mut master, 10, Duration::from_secs(5));
    assert!(ticks.starts_with(b"tick"), "{ticks:?}");
    // More keys than the program's terminal takes: they wait in the server.
    let (reader, mut writer) = client.into_split();
    writer.send_input(&[b'k'; 100_000]).expect("paste");
    std::thread::sleep(Duration::from_millis(200));
    let _kept = leave(reader, writer);
    let released = wait_released(&path, Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(100));
    read_terminal(&mut master, usize::MAX, Duration::from_millis(50));
    let after = read_terminal(&mut master, usize::MAX, Duration::from_millis(500));
    assert!(
        after.is_empty(),
        "the server still writes to a gone client's terminal: {:?}",
        String::from_utf8_lossy(&after)
    );
    released.expect("the server let the terminal go");
    server.shutdown();
}

/// The server reads the keys; a paste waits for a program that does not read it, and the
/// client leaves with a Detach frame (on SIGTERM, say): it is let go at once, with where its
/// terminal stands, and the server holds the terminal no more.
#[test]
fn a_detach_frame_behind_waiting_keys_is_prompt() {
    let dir = TempDir::new("term-detach-frame");
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "stty raw -echo; echo ready; exec sleep 60");
    let (mut master, slave) = terminal();
    let path = tty_path(&slave);
    let keys = Keys::Read {
        detach: 0x1c,
        read_only: false,
    };
    let client = handing_over(&socket, slave.as_fd(), keys);
    let (mut reader, writer) = client.into_split();
    assert!(matches!(reader.next_message(), Ok(ServerMsg::Shown(_))));
    assert_eq!(
        read_terminal(&mut master, 6, Duration::from_secs(5)),
        b"ready\n"
    );
    let mut typist = master.try_clone().expect("dup the terminal");
    let typing = std::thread::spawn(move || type_keys(&mut typist, &[b'p'; 100_000]));
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    writer.detach();
    match reader.next_message() {
        Ok(ServerMsg::Shown(p)) => assert_eq!(p.next, 6),
        other => panic!("expected Shown, got {other:?}"),
    }
    assert!(matches!(
        reader.next_message(),
        Err(ClientError::Disconnected)
    ));
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "the detach waited for the keys: {:?}",
        asked.elapsed()
    );
    wait_released(&path, Duration::from_secs(2)).expect("the server let the terminal go");
    // The typist may be blocked on a terminal nobody reads any more: the session's end
    // does not depend on it.
    server.shutdown();
    drop(master);
    drop(slave);
    let _ = typing.join();
}

/// A client whose terminal does not take the attach's redraw (a large tail snapshot, nobody
/// reading) leaves: the server gives up at once, says exactly how much of the snapshot the
/// terminal took, and a resume there gets the rest, nothing twice.
#[test]
fn a_client_leaving_during_its_snapshot_is_let_go_with_the_exact_position() {
    use engate_attach::session::SnapshotMode;
    let dir = TempDir::new("term-snapshot");
    let socket = dir.path().join("s.sock");
    let server = SessionServer::start(
        SessionConfig::new(&socket, "sh")
            .args(["-c", "seq 1 200000; exec sleep 60"])
            .snapshot(SnapshotMode::Tail { bytes: 1 << 20 }),
    )
    .expect("start");
    let total = seq_output(200000).len() - 2;
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.hub().metrics().emitted_bytes < total as u64 {
        assert!(Instant::now() < deadline, "the program printed everything");
        std::thread::sleep(Duration::from_millis(10));
    }
    let expected = &seq_output(200000)[2..];
    let (mut master, slave) = terminal();
    let path = tty_path(&slave);
    let client = handing_over(&socket, slave.as_fd(), Keys::Sent);
    let (mut reader, writer) = client.into_split();
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    writer.detach();
    let at = match reader.next_message() {
        Ok(ServerMsg::Shown(p)) => p,
        other => panic!("expected where the terminal stands, got {other:?}"),
    };
    let end = reader.next_message();
    assert!(matches!(end, Err(ClientError::Disconnected)), "{end:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let shown = read_terminal(&mut master, usize::MAX, Duration::from_millis(300));
    let from = total - (1 << 20);
    assert!(
        !shown.is_empty() && shown.len() < 1 << 20,
        "{}",
        shown.len()
    );
    assert_eq!(at.next, (from + shown.len()) as u64, "exact to the byte");
    assert!(shown == expected[from..from + shown.len()]);
    wait_released(&path, Duration::from_secs(2)).expect("the server let the terminal go");
    let mut again = SessionClient::connect(&socket, Policy::Resync, Some(at)).expect("resume");
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut transcript = Transcript::resume_at(at);
    while transcript.base() + (transcript.bytes().len() as u64) < total as u64 {
        transcript.apply(&next(&mut again));
    }
    assert_eq!(transcript.base(), at.next);
    assert!(transcript.bytes() == &expected[from + shown.len()..]);
    server.shutdown();
}

/// Names that stand for some terminal rather than one (`/dev/ptmx`, `/dev/tty`) are refused:
/// opened by the server they would be another terminal than the client's.
#[test]
fn a_terminal_alias_is_refused() {
    let dir = TempDir::new("term-alias");
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "exec sleep 60");
    // A pty master resolves to /dev/ptmx: opened again, a new pty.
    let (master, _slave) = engate_attach::pty::open_pair().expect("a pty pair");
    let mut client = handing_over(&socket, master.as_fd(), Keys::Sent);
    match next(&mut client) {
        ServerMsg::Refused(why) => assert!(why.contains("/dev/ptmx"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    server.shutdown();
}

/// The server stops promptly whatever a terminal does: here one that never takes its output,
/// with the writer waiting on it.
#[test]
fn shutdown_is_prompt_with_a_terminal_that_takes_nothing() {
    let dir = TempDir::new("term-shutdown");
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "read go; exec seq 1 2000000");
    let (_master, slave) = terminal();
    let path = tty_path(&slave);
    let mut client = handing_over(&socket, slave.as_fd(), Keys::Sent);
    assert!(matches!(next(&mut client), ServerMsg::Shown(_)));
    client.send_input(b"\n").expect("start the program");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.hub().metrics().emitted_bytes < 1 << 20 {
        assert!(Instant::now() < deadline, "the program printed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    server.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert_eq!(open_copies(&path), 1, "the server closed the terminal");
}

/// Descriptors a client sends along with its frames (after the hello) are closed by the
/// server's side: none stays open.
#[test]
fn descriptors_sent_with_frames_are_not_kept() {
    let dir = TempDir::new("term-fds");
    let socket = dir.path().join("s.sock");
    let server = sh_session(&socket, "exec cat > /dev/null");
    let (mut pipe_out, pipe_in) = io::pipe().expect("a pipe");
    let stream = UnixStream::connect(&socket).expect("connect");
    let mut hello = Vec::new();
    wire::encode_client(
        &ClientMsg::Hello {
            policy: Policy::Resync,
            resume: None,
            terminal: None,
        },
        &mut hello,
    );
    io::Write::write_all(&mut &stream, &hello).expect("hello");
    std::thread::sleep(Duration::from_millis(100));
    let mut frame = Vec::new();
    wire::encode_client(
        &ClientMsg::Input(bytes::Bytes::from_static(b"x")),
        &mut frame,
    );
    for _ in 0..3 {
        platform_primitives::fdpass::send_with_fds(&stream, &frame, &[pipe_in.as_fd()])
            .expect("a frame with a descriptor");
    }
    drop(pipe_in);
    // The read end sees the end of file only once every copy of the write end is closed,
    // the server's too.
    let mut entry = [libc::pollfd {
        fd: pipe_out.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `entry` is one valid pollfd for the call.
    let ready = unsafe { libc::poll(entry.as_mut_ptr(), 1, 5000) };
    assert_eq!(ready, 1, "a copy of the descriptor is still open somewhere");
    let mut rest = Vec::new();
    pipe_out.read_to_end(&mut rest).expect("the pipe ends");
    assert!(rest.is_empty());
    drop(stream);
    server.shutdown();
}

/// Clients that attach after the program has ended (they get its end and leave) leave no
/// descriptor behind in the server, which goes on serving.
#[test]
fn clients_of_an_ended_program_leave_nothing_open() {
    let dir = TempDir::new("term-ended");
    let socket = dir.path().join("s.sock");
    let mut server = sh_session(&socket, "echo done");
    server.wait_program().expect("the program ends");
    let open_fds = || std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    let visit = || {
        let mut client = crate::support::attached(&socket);
        while !matches!(next(&mut client), ServerMsg::Closed(_)) {}
    };
    visit();
    std::thread::sleep(Duration::from_millis(100));
    let before = open_fds();
    for _ in 0..20 {
        visit();
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = open_fds();
    // Other tests run in this process: a little noise either way, never one per client.
    assert!(
        after < before + 10,
        "{before} descriptors before, {after} after 20 clients"
    );
    server.shutdown();
}
