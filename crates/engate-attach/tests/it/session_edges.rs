//! The session server's edges: clients that stop reading, a socket path that is gone, bad
//! hellos and bad frames, oversized frames, against the real server, real sockets, real
//! programs in real ptys and real client processes. Every wait has a deadline: a server that
//! would hang fails the test, and the test then unblocks it so the run goes on.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engate_attach::session::wire::{self, ClientMsg, ServerMsg};
use engate_attach::session::{SessionClient, SessionConfig, SessionServer};
use engate_attach::{HubConfig, Policy};
use platform_primitives::process;

use crate::support::{TempDir, attached, have, sh_session, skip};

/// How long a shutdown may take, whatever the clients do.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(2);

/// The environment variable that turns this test binary into a helper process.
const CHILD_ROLE: &str = "ENGATE_IT_CHILD_ROLE";
/// The socket the helper process serves or connects to.
const CHILD_SOCKET: &str = "ENGATE_IT_CHILD_SOCKET";
/// What a helper process prints once it is ready (then, for a server, its pid).
const READY: &str = "helper-ready";

/// Shuts `server` down on another thread and reports how long it took, or `None` if it had not
/// returned within [`SHUTDOWN_LIMIT`]; in that case `unblock` runs (it makes the hung server
/// return, so the test fails instead of hanging) and the thread is joined.
fn timed_shutdown(server: SessionServer, unblock: impl FnOnce()) -> Option<Duration> {
    let (done, finished) = mpsc::channel();
    let started = Instant::now();
    let thread = std::thread::spawn(move || {
        server.shutdown();
        let _ = done.send(started.elapsed());
    });
    match finished.recv_timeout(SHUTDOWN_LIMIT) {
        Ok(took) => {
            thread.join().expect("shutdown thread");
            Some(took)
        }
        Err(_) => {
            unblock();
            let late = finished.recv_timeout(Duration::from_secs(30));
            eprintln!("shutdown returned only once unblocked: {late:?}");
            None
        }
    }
}

fn hello(policy: Policy) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_client(
        &ClientMsg::Hello {
            policy,
            resume: None,
            terminal: None,
        },
        &mut frame,
    );
    frame
}

/// Connects a raw stream and sends a hello.
fn raw_client(socket: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.write_all(&hello(Policy::Resync)).expect("hello");
    stream
}

/// Waits until the server's writer for a client that does not read has filled the socket
/// buffers: the hub's metrics show the program running on while the client lags.
fn wait_for_output(server: &SessionServer, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.hub().metrics().emitted_bytes < bytes {
        assert!(Instant::now() < deadline, "the program produced no output");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Time for the writer to fill the socket buffers and block in its write.
    std::thread::sleep(Duration::from_millis(300));
}

/// A client that sent its hello and never reads: the server's writer blocks on a full socket.
/// Shutdown must still return promptly.
#[test]
fn shutdown_returns_promptly_with_a_client_that_never_reads() {
    if !have("shutdown_with_a_client_that_never_reads", &["yes"]) {
        return;
    }
    let dir = TempDir::new("never-reads");
    let socket = dir.path().join("yes.sock");
    let server = SessionServer::start(SessionConfig::new(&socket, "yes")).expect("start");
    let stream = raw_client(&socket);
    wait_for_output(&server, 8 << 20);
    let took = timed_shutdown(server, move || drop(stream));
    let took = took.expect("shutdown hung while a client did not read");
    assert!(took < SHUTDOWN_LIMIT, "{took:?}");
}

/// Starts this test binary as a helper process playing `role` against `socket`; returns it and
/// its stdout once it printed [`READY`] (the rest of the line is returned too).
fn helper(role: &str, socket: &Path) -> (Child, BufReader<ChildStdout>, String) {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "session_edges::helper_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROLE, role)
        .env(CHILD_SOCKET, socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the helper process");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = tx.send(None);
                return out;
            }
            // libtest prints the test's name on the same line first.
            if let Some((_, rest)) = line.trim_end().split_once(READY) {
                let _ = tx.send(Some(rest.trim().to_owned()));
                return out;
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(rest)) => (child, reader.join().expect("reader"), rest),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the {role} helper did not get ready: {other:?}");
        }
    }
}

/// Not a test of its own: the entry point of the helper processes the tests above start (a
/// client that can be stopped with SIGSTOP, a server whose memory can be measured). Run
/// without the helper environment it returns at once.
#[test]
fn helper_process() {
    let (Some(role), Some(socket)) = (std::env::var_os(CHILD_ROLE), std::env::var_os(CHILD_SOCKET))
    else {
        return;
    };
    let socket = PathBuf::from(socket);
    match role.to_str() {
        // A normal client: attaches and reads everything, until it is stopped or killed.
        Some("client") => {
            let mut client =
                SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
            println!("{READY}");
            while client.next_message().is_ok() {}
        }
        // A server running `cat`, until its stdin closes.
        Some("server") => {
            let server = SessionServer::start(SessionConfig::new(&socket, "cat")).expect("start");
            println!("{READY} {}", std::process::id());
            let mut rest = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut rest);
            server.shutdown();
        }
        other => panic!("unknown helper role {other:?}"),
    }
}

/// A real client process, attached and then stopped with SIGSTOP (a suspended `attach`):
/// shutdown must still return promptly.
#[test]
fn shutdown_returns_promptly_with_a_stopped_client_process() {
    if !have("shutdown_with_a_stopped_client_process", &["yes"]) {
        return;
    }
    let dir = TempDir::new("stopped");
    let socket = dir.path().join("yes.sock");
    let server = SessionServer::start(SessionConfig::new(&socket, "yes")).expect("start");
    let (mut client, _out, _) = helper("client", &socket);
    wait_for_output(&server, 1 << 20);
    // The client has not been waited for (here or below): its pid is still its own.
    process::signal(client.id(), libc::SIGSTOP).expect("stop the client");
    wait_for_output(&server, server.hub().metrics().emitted_bytes + (8 << 20));
    let pid = client.id();
    let took = timed_shutdown(server, || {
        let _ = process::signal(pid, libc::SIGKILL);
    });
    process::signal(client.id(), libc::SIGKILL).expect("kill the client");
    let _ = client.wait();
    let took = took.expect("shutdown hung while a client process was stopped");
    assert!(took < SHUTDOWN_LIMIT, "{took:?}");
}

/// The socket file was removed (by a cleanup script, say): shutdown must not depend on
/// connecting to it.
#[test]
fn shutdown_returns_promptly_when_the_socket_file_is_gone() {
    if !have("shutdown_when_the_socket_file_is_gone", &["cat"]) {
        return;
    }
    let dir = TempDir::new("gone");
    let socket = dir.path().join("cat.sock");
    let server = SessionServer::start(SessionConfig::new(&socket, "cat")).expect("start");
    // A second name for the socket, so a hung server can be unblocked.
    let spare = dir.path().join("spare.sock");
    std::fs::hard_link(&socket, &spare).expect("link the socket");
    std::fs::remove_file(&socket).expect("remove the socket file");
    let took = timed_shutdown(server, || {
        let _ = UnixStream::connect(&spare);
    });
    let took = took.expect("shutdown hung with the socket file gone");
    assert!(took < SHUTDOWN_LIMIT, "{took:?}");
}

/// Reads server messages until a refusal (its text), the end of the connection or the
/// deadline (an error saying what came instead).
fn refusal(stream: &mut UnixStream, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut seen = Vec::new();
    loop {
        while let Some((msg, used)) =
            wire::decode_server(&buf).map_err(|e| format!("invalid frame: {e}"))?
        {
            buf.drain(..used);
            match msg {
                ServerMsg::Refused(why) => return Ok(why),
                other => seen.push(format!("{other:?}").chars().take(60).collect::<String>()),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no refusal within {limit:?}; saw {seen:?}"));
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("closed without a refusal; saw {seen:?}")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{e}; saw {seen:?}")),
        }
    }
}

fn input_header(len: u32) -> Vec<u8> {
    let mut frame = vec![b'i'];
    frame.extend_from_slice(&len.to_le_bytes());
    frame
}

/// Each kind of bad hello and bad frame gets a refusal whose text names what was wrong, and
/// the server goes on serving well-behaved clients.
#[test]
fn each_bad_hello_or_frame_is_refused_with_its_reason() {
    if !have("each_bad_hello_or_frame_is_refused", &["cat"]) {
        return;
    }
    let dir = TempDir::new("bad-frames");
    let socket = dir.path().join("cat.sock");
    let config = SessionConfig::new(&socket, "cat").hello_timeout(Duration::from_millis(300));
    let server = SessionServer::start(config).expect("start");
    let ok_hello = hello(Policy::Resync);
    let mut bad_policy = ok_hello.clone();
    bad_policy[1] = 9;
    let mut bad_resume_flag = ok_hello.clone();
    bad_resume_flag[2] = 7;
    let mut bad_resize = vec![b'W'];
    bad_resize.extend_from_slice(&0u16.to_le_bytes());
    bad_resize.extend_from_slice(&80u16.to_le_bytes());
    let mut input = Vec::new();
    wire::encode_client(&ClientMsg::Input("x".into()), &mut input);
    let after_hello = |frame: &[u8]| [ok_hello.as_slice(), frame].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "an unknown first frame",
            b"GET / HTTP/1.1\r\n".to_vec(),
            "0x47",
        ),
        ("input before the hello", input.clone(), "hello"),
        ("a hello with a bad policy", bad_policy, "policy"),
        (
            "a hello with a bad resume flag",
            bad_resume_flag,
            "has_resume",
        ),
        (
            "half a hello, then silence",
            ok_hello[..5].to_vec(),
            "no hello within",
        ),
        (
            "an unknown frame after the hello",
            after_hello(b"Z"),
            "0x5a",
        ),
        (
            "an input frame over the limit",
            after_hello(&input_header(1 << 20)),
            "1048576",
        ),
        ("a resize to zero rows", after_hello(&bad_resize), "rows"),
        ("a second hello", after_hello(&ok_hello), "second hello"),
    ];
    let mut failures = Vec::new();
    for (what, bytes, expect) in &cases {
        let mut stream = UnixStream::connect(&socket).expect("connect");
        stream.write_all(bytes).expect("send");
        match refusal(&mut stream, Duration::from_secs(5)) {
            Ok(why) if why.contains(expect) => eprintln!("{what}: refused: {why}"),
            Ok(why) => failures.push(format!("{what}: reason {why:?} lacks {expect:?}")),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    // Still serving: a good client gets its snapshot.
    let mut good = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert!(matches!(good.next_message(), Ok(ServerMsg::Snapshot(_))));
    drop(server);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Resident memory of process `pid` in bytes (Linux `/proc`).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// A client announces a 64 MiB keystroke frame and sends 48 MiB of it: the server refuses
/// it with a reason as soon as it reads the header, and its memory does not grow by the
/// announced size (measured on a real server process).
#[test]
fn an_oversized_input_frame_is_refused_without_growing_the_servers_memory() {
    if !cfg!(target_os = "linux") {
        skip(
            "an_oversized_input_frame",
            "resident memory is read from Linux /proc",
        );
        return;
    }
    if !have("an_oversized_input_frame", &["cat"]) {
        return;
    }
    let dir = TempDir::new("huge-frame");
    let socket = dir.path().join("cat.sock");
    let (mut server, _out, pid) = helper("server", &socket);
    let pid: u32 = pid.parse().expect("the server's pid");
    let before = rss(pid).expect("rss");
    let mut stream = raw_client(&socket);
    let mut writer = stream.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        let mut sent = 0usize;
        let _ = writer.set_write_timeout(Some(Duration::from_secs(20)));
        if writer.write_all(&input_header(64 << 20)).is_ok() {
            let block = vec![b'k'; 1 << 20];
            while sent < 48 << 20 && writer.write_all(&block).is_ok() {
                sent += block.len();
            }
        }
        sent
    });
    let refused = refusal(&mut stream, Duration::from_secs(20));
    let sent = sender.join().expect("sender");
    let after = rss(pid).expect("rss");
    drop(stream);
    drop(server.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            panic!("the server process did not shut down");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "server rss {} KiB -> {} KiB; the client got {sent} bytes in; {refused:?}",
        before >> 10,
        after >> 10
    );
    let why = refused.expect("the oversized frame is refused");
    assert!(why.contains("67108864"), "{why}");
    assert!(
        after < before + (8 << 20),
        "the server grew from {before} to {after} bytes"
    );
}

/// Many clients flooding input at a program that does not read it (its terminal in raw mode,
/// so the terminal holds the input rather than dropping it): each connection's buffered
/// memory is bounded (the server stops reading; the clients block), and shutdown still
/// returns promptly.
#[test]
fn clients_flooding_input_are_held_back_and_shutdown_is_prompt() {
    if !have("clients_flooding_input", &["sleep", "stty"]) {
        return;
    }
    let dir = TempDir::new("flood");
    let socket = dir.path().join("sleep.sock");
    let config = SessionConfig::new(&socket, "/bin/sh")
        .args(["-c", "stty raw -echo; echo raw; exec sleep 1000"])
        .hub(HubConfig::new());
    let server = SessionServer::start(config).expect("start");
    wait_for_output(&server, 3);
    let mut frame = Vec::new();
    wire::encode_client(&ClientMsg::Input(vec![b'k'; 60 << 10].into()), &mut frame);
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let mut stream = raw_client(&socket);
            stream
                .set_write_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            let frame = frame.clone();
            std::thread::spawn(move || {
                let mut sent = 0usize;
                while sent < 32 << 20 && stream.write_all(&frame).is_ok() {
                    sent += frame.len();
                }
                (stream, sent)
            })
        })
        .collect();
    let streams: Vec<_> = flooders
        .into_iter()
        .map(|t| t.join().expect("flooder"))
        .collect();
    for (_, sent) in &streams {
        assert!(
            *sent < 8 << 20,
            "a client got {sent} bytes of input in to a program that reads none"
        );
    }
    let took = timed_shutdown(server, move || drop(streams));
    let took = took.expect("shutdown hung with clients flooding input");
    assert!(took < SHUTDOWN_LIMIT, "{took:?}");
}

/// Reads messages until the stream closes (within `limit`); returns them.
fn read_to_close(client: &mut SessionClient, limit: Duration) -> Vec<ServerMsg> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no Closed within {limit:?}");
        client.set_read_timeout(Some(left)).expect("timeout");
        let msg = client.next_message().expect("message");
        let closed = matches!(msg, ServerMsg::Closed(_));
        seen.push(msg);
        if closed {
            return seen;
        }
    }
}

/// The program's exit status reaches the clients: an `Exited` message right before `Closed`,
/// to a client attached when the program ends and to one that attaches afterwards, for an
/// exit code and for a signal.
#[test]
fn the_programs_exit_status_reaches_every_client() {
    use engate_attach::session::{Applied, ProgramExit, Transcript};
    for (script, expected) in [
        ("read line; exit 7", ProgramExit::Code(7)),
        (
            "read line; kill -TERM $$",
            ProgramExit::Signal(libc::SIGTERM),
        ),
    ] {
        let dir = TempDir::new("exit");
        let socket = dir.path().join("sh.sock");
        let config = SessionConfig::new(&socket, "/bin/sh").args(["-c", script]);
        let mut server = SessionServer::start(config).expect("start");
        let mut early = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
        early
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        assert!(matches!(early.next_message(), Ok(ServerMsg::Snapshot(_))));
        assert_eq!(server.program_exit(), None);
        early.send_input(b"\n").expect("input");
        let seen = read_to_close(&mut early, Duration::from_secs(10));
        let n = seen.len();
        assert_eq!(
            seen[n.saturating_sub(2)..],
            [
                ServerMsg::Exited(expected),
                ServerMsg::Closed(engate_attach::CloseReason::Finished)
            ],
            "{script}"
        );
        assert_eq!(early.exit_status(), Some(expected));
        let status = server.wait_program().expect("the program ran");
        assert_eq!(ProgramExit::from(status), expected);
        assert_eq!(server.program_exit(), Some(expected));

        // A client that attaches after the end learns it too, through a transcript.
        let mut late = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
        let mut transcript = Transcript::new();
        for msg in read_to_close(&mut late, Duration::from_secs(10)) {
            if let Applied::Closed(_) = transcript.apply(&msg) {
                break;
            }
        }
        assert_eq!(transcript.exit_status(), Some(expected));
        assert_eq!(
            expected.shell_status(),
            match expected {
                ProgramExit::Code(c) => c,
                ProgramExit::Signal(s) => 128 + s,
            }
        );
        server.shutdown();
    }
}

/// A split client: one thread reads the program's output while another sends keys, over one
/// connection; the writing half detaching ends the reading half's stream.
#[test]
fn a_split_client_reads_and_writes_from_two_threads() {
    if !have("a_split_client", &["cat"]) {
        return;
    }
    let dir = TempDir::new("split");
    let socket = dir.path().join("cat.sock");
    let server = SessionServer::start(SessionConfig::new(&socket, "cat")).expect("start");
    let client = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
    let (mut reader, mut writer) = client.into_split();
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    const LINES: usize = 200;
    let reading = std::thread::spawn(move || {
        let mut transcript = engate_attach::session::Transcript::new();
        // The terminal echoes each line and cat repeats it: each line arrives twice, the
        // echo of a line possibly before cat's copy of the previous one.
        let want: usize = (0..LINES).map(|i| 2 * format!("line {i}\r\n").len()).sum();
        while transcript.bytes().len() < want {
            let msg = reader.next_message().expect("output");
            transcript.apply(&msg);
        }
        let text = String::from_utf8_lossy(transcript.bytes()).into_owned();
        let mut lines: Vec<&str> = text.split_terminator("\r\n").collect();
        lines.sort_unstable();
        let mut expected: Vec<String> = (0..LINES)
            .flat_map(|i| [format!("line {i}"), format!("line {i}")])
            .collect();
        expected.sort_unstable();
        assert_eq!(lines, expected);
        reader
    });
    let writing = std::thread::spawn(move || {
        for i in 0..LINES {
            writer
                .send_input(format!("line {i}\n").as_bytes())
                .expect("input");
            std::thread::sleep(Duration::from_millis(1));
        }
        writer
    });
    let writer = writing.join().expect("writer thread");
    let mut reader = reading.join().expect("reader thread");
    writer.detach();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the stream did not end after detach"
        );
        match reader.next_message() {
            Ok(_) => {}
            Err(engate_attach::session::ClientError::Disconnected) => break,
            Err(e) => panic!("after detach: {e}"),
        }
    }
    drop(server);
}

/// A tail that falls behind is resynced by the server: the follower writes each byte it
/// gets once, and what it wrote is exactly the program's output minus the ranges it reports
/// skipped (the `session_server tail` example is built on it).
#[test]
fn a_follower_that_falls_behind_writes_the_output_exactly_minus_what_it_skipped() {
    use engate_attach::session::{Applied, Follower, SnapshotMode};
    if !have("a_follower_that_falls_behind", &["seq"]) {
        return;
    }
    const N: u32 = 300_000;
    let dir = TempDir::new("follow");
    let socket = dir.path().join("seq.sock");
    let config = SessionConfig::new(&socket, "seq")
        .args(["1", &N.to_string()])
        .hub(HubConfig::new().budget_bytes(64 << 10))
        .snapshot(SnapshotMode::Tail { bytes: 16 << 10 })
        .read_chunk(4096);
    let server = SessionServer::start(config).expect("start");
    let mut client = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut follower = Follower::new();
    let mut out = Vec::new();
    let mut messages = 0u64;
    loop {
        let msg = client.next_message().expect("message");
        messages += 1;
        // A slow reader at first, so the program outruns it and it is resynced.
        if messages < 40 {
            std::thread::sleep(Duration::from_millis(15));
        }
        if follower.apply(&msg, &mut out).expect("write") != Applied::Continue {
            break;
        }
    }
    let expected: Vec<u8> = (1..=N)
        .flat_map(|i| format!("{i}\r\n").into_bytes())
        .collect();
    assert!(follower.resyncs() >= 1, "the follower was never resynced");
    assert!(!follower.skipped().is_empty());
    let mut rebuilt = Vec::new();
    let mut at = 0usize;
    for &(from, to) in follower.skipped() {
        rebuilt.extend_from_slice(&expected[at..from as usize]);
        at = to as usize;
    }
    rebuilt.extend_from_slice(&expected[at..]);
    assert!(
        out == rebuilt,
        "wrote {} bytes, expected {}",
        out.len(),
        rebuilt.len()
    );
    drop(server);
}

/// A keystroke reaches the program while its output pours out: the pump, which reads the
/// program's output and the clients' input in one loop, does not let a program that never
/// stops writing starve the input. Ctrl-C to `yes` ends it (SIGINT from its terminal).
#[test]
fn a_keystroke_reaches_a_program_whose_output_never_stops() {
    use engate_attach::session::ProgramExit;
    if !have(
        "a_keystroke_reaches_a_program_whose_output_never_stops",
        &["yes"],
    ) {
        return;
    }
    let dir = TempDir::new("flood-interrupt");
    let socket = dir.path().join("yes.sock");
    let server = SessionServer::start(SessionConfig::new(&socket, "yes")).expect("start");
    let mut client = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
    let limit = Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    let (mut received, mut interrupted) = (0usize, false);
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the program did not end within {limit:?} of Ctrl-C ({received} bytes of output)"
        );
        client.set_read_timeout(Some(left)).expect("timeout");
        match client.next_message().expect("message") {
            ServerMsg::Item(item) => received += item.bytes.len(),
            ServerMsg::Closed(reason) => break reason,
            _ => {}
        }
        if !interrupted && received >= 1 << 20 {
            // The output is in full flow: now the key.
            client.send_input(b"\x03").expect("Ctrl-C");
            interrupted = true;
        }
    };
    assert!(interrupted, "the program ended before the key was sent");
    assert_eq!(end, engate_attach::CloseReason::Finished);
    assert_eq!(
        client.exit_status(),
        Some(ProgramExit::Signal(libc::SIGINT))
    );
    server.shutdown();
}

/// Ends the test process if the test is still running after `limit`: a server wedged by the
/// defect a test looks for would otherwise hang the test while it unwinds (dropping the server
/// shuts it down, which waits for the wedged thread).
struct Watchdog {
    _done: mpsc::Sender<()>,
}

impl Watchdog {
    fn new(test: &'static str, limit: Duration) -> Self {
        let (done, finished) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
                eprintln!("{test}: still running after {limit:?}: the server is wedged");
                std::process::exit(101);
            }
        });
        Self { _done: done }
    }
}

/// Whether process `pid` has ended (a zombie not reaped yet, or gone), from `/proc`.
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// An authority client (Policy::Block) that stops reading holds the program's output back, as
/// it asked. Meanwhile another client's keystroke still reaches the program (Ctrl-C ends it
/// while its output is held back), and once the authority leaves, the output flows again and
/// the stream ends with the program's status: nothing is wedged, and shutdown is prompt.
#[test]
fn an_authority_that_stops_reading_then_leaves_wedges_nothing() {
    use engate_attach::session::ProgramExit;
    if !cfg!(target_os = "linux") {
        skip(
            "an_authority_that_stops_reading_then_leaves_wedges_nothing",
            "reads process states from /proc (Linux)",
        );
        return;
    }
    if !have(
        "an_authority_that_stops_reading_then_leaves_wedges_nothing",
        &["seq"],
    ) {
        return;
    }
    let _watchdog = Watchdog::new(
        "an_authority_that_stops_reading_then_leaves_wedges_nothing",
        Duration::from_secs(60),
    );
    let dir = TempDir::new("authority-leaves");
    let socket = dir.path().join("seq.sock");
    let server = SessionServer::start(
        SessionConfig::new(&socket, "seq")
            .args(["1", "1000000000"])
            .hub(HubConfig::new().budget_bytes(256 << 10)),
    )
    .expect("start");
    let authority = UnixStream::connect(&socket).expect("connect");
    (&authority)
        .write_all(&hello(Policy::Block))
        .expect("hello");
    // Held back: the output stops growing (the program blocks on its full terminal).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = server.hub().metrics().emitted_bytes;
        std::thread::sleep(Duration::from_millis(300));
        if before > 0 && server.hub().metrics().emitted_bytes == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the authority never held the program back"
        );
    }
    let mut other = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
    other.send_input(b"\x03").expect("Ctrl-C");
    let pid = server.program_pid();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ended(pid) {
        assert!(
            Instant::now() < deadline,
            "the keystroke did not reach the program while the authority held its output back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(authority);
    let seen = read_to_close(&mut other, Duration::from_secs(10));
    assert!(
        matches!(seen.last(), Some(ServerMsg::Closed(_))),
        "the stream did not end once the authority left"
    );
    assert_eq!(other.exit_status(), Some(ProgramExit::Signal(libc::SIGINT)));
    let took = timed_shutdown(server, || {});
    assert!(took.is_some(), "shutdown hung");
}

/// Keystrokes a client sent before hanging up reach the program even if its terminal could not
/// take them yet: a paste followed by closing the connection is not cut short.
#[test]
fn keystrokes_sent_before_a_hang_up_still_reach_the_program() {
    use engate_attach::session::{Applied, Transcript};
    if !have(
        "keystrokes_sent_before_a_hang_up_still_reach_the_program",
        &["head", "stty", "sleep"],
    ) {
        return;
    }
    const PASTE: usize = 100_000;
    let dir = TempDir::new("paste-hang-up");
    let socket = dir.path().join("sh.sock");
    let out = dir.path().join("pasted");
    // The program reads nothing for a second: the paste waits in the server meanwhile.
    let script = format!(
        "stty raw -echo; echo ready; sleep 1; head -c {PASTE} > '{}'",
        out.display()
    );
    let server = sh_session(&socket, &script);
    let mut client = attached(&socket);
    let mut transcript = Transcript::new();
    while !transcript.bytes().windows(5).any(|w| w == b"ready") {
        let msg = client.next_message().expect("the program's first line");
        assert!(matches!(transcript.apply(&msg), Applied::Continue));
    }
    let paste: Vec<u8> = (0..PASTE).map(|i| b'a' + (i % 26) as u8).collect();
    client.send_input(&paste).expect("paste");
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::fs::read(&out).unwrap_or_default();
        if got.len() == PASTE {
            assert!(got == paste, "the program got other bytes than the paste");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the program got {} of the {PASTE} bytes pasted before the client hung up",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
}
