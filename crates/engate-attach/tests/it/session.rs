//! The session server end to end: a real program in a real pty, clients over a real Unix
//! socket bound with platform-primitives, attaching, detaching and resuming at random moments.

use std::time::{Duration, Instant};

use engate_attach::pty::PtySize;
use engate_attach::session::wire::ServerMsg;
use engate_attach::session::{
    Applied, ClientError, SessionClient, SessionConfig, SessionError, SessionServer, SnapshotMode,
    Transcript,
};
use engate_attach::{HubConfig, Policy, SnapshotKind};
use platform_primitives::uds::BindError;

use crate::support::{TempDir, attached, have, sh_session};

/// A small xorshift generator: random moments without a dependency; the seed is printed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("random seed {seed:#x}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn seq_output(n: u32) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| format!("{i}\r\n").into_bytes())
        .collect()
}

/// A client that attaches, reads a random number of messages, detaches (politely or by just
/// closing), waits a random moment and resumes from its position, until the stream closes.
fn flaky_client(socket: std::path::PathBuf, seed: u64) -> Result<(Transcript, u32), ClientError> {
    let mut rng = Rng(seed | 1);
    let mut transcript = Transcript::new();
    let mut connections = 0;
    std::thread::sleep(Duration::from_millis(rng.below(40)));
    loop {
        connections += 1;
        let mut client = SessionClient::connect(&socket, Policy::Resync, transcript.position())?;
        client.set_read_timeout(Some(Duration::from_secs(30)))?;
        let budget = 1 + rng.below(120);
        for _ in 0..budget {
            if let Applied::Closed(_) = transcript.apply(&client.next_message()?) {
                return Ok((transcript, connections));
            }
        }
        if rng.below(2) == 0 {
            client.detach();
        } else {
            drop(client);
        }
        std::thread::sleep(Duration::from_millis(rng.below(8)));
    }
}

/// An authority client: Policy::Block, reading with stalls, so the program cannot outrun it
/// and the other clients' attaches land while output is still flowing.
fn slow_authority(socket: std::path::PathBuf) -> Result<Transcript, ClientError> {
    let mut transcript = Transcript::new();
    let mut client = SessionClient::connect(&socket, Policy::Block, None)?;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut n = 0u64;
    loop {
        if let Applied::Closed(_) = transcript.apply(&client.next_message()?) {
            return Ok(transcript);
        }
        n += 1;
        if n.is_multiple_of(4) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn every_client_rebuilds_the_programs_output_exactly_across_detach_and_resume() {
    if !have(
        "every_client_rebuilds_the_programs_output_exactly_across_detach_and_resume",
        &["seq"],
    ) {
        return;
    }
    const N: u32 = 200_000;
    let dir = TempDir::new("seq");
    let socket = dir.path().join("session.sock");
    let config = SessionConfig::new(&socket, "seq")
        .args(["1", &N.to_string()])
        // A small ring, so the flaky clients really fall behind and resync, and the authority
        // really holds the program back; a tail that covers the whole output, so every
        // snapshot lets a client rebuild all of it.
        .hub(HubConfig::new().budget_bytes(64 << 10))
        .snapshot(SnapshotMode::Tail { bytes: 2 << 20 })
        .read_chunk(4096);
    let mut server = SessionServer::start(config).expect("start the session server");
    let started = Instant::now();

    let authority = {
        let socket = socket.clone();
        std::thread::spawn(move || slow_authority(socket))
    };
    let mut rng = Rng::seeded();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (socket, seed) = (socket.clone(), rng.below(u64::MAX));
            std::thread::spawn(move || flaky_client(socket, seed))
        })
        .collect();

    let status = server.wait_program().expect("the program ran");
    assert!(status.success(), "seq failed: {status}");
    let expected = seq_output(N);
    let authority = authority
        .join()
        .expect("authority thread")
        .expect("authority");
    assert_eq!(authority.base(), 0);
    assert!(
        authority.bytes() == expected,
        "the authority's bytes differ"
    );
    assert_eq!(
        authority.snapshots(),
        1,
        "an authority never needs a resync"
    );
    let mut total_connections = 0;
    for c in clients {
        let (t, connections) = c.join().expect("client thread").expect("client");
        total_connections += connections;
        assert_eq!(t.base(), 0, "the tail snapshot covers the whole output");
        assert_eq!(
            t.bytes().len(),
            expected.len(),
            "no byte missing or repeated"
        );
        assert!(
            t.bytes() == expected,
            "a client's bytes differ from seq's output"
        );
        assert_eq!(t.duplicates_delivered(), 0);
        assert!(t.gaps().is_empty(), "{:?}", t.gaps());
    }
    let m = server.hub().metrics();
    eprintln!(
        "{} connections in {:?}; {m:?}",
        total_connections + 1,
        started.elapsed()
    );
    assert_eq!(
        (m.duplicates_delivered, m.unannounced_gaps),
        (0, 0),
        "{m:?}"
    );
    assert!(m.attaches >= 5);
    server.shutdown();
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

/// A fresh 24 × 80 terminal emulator.
#[cfg(feature = "screen")]
fn terminal() -> vt100::Parser {
    let (rows, cols) = (vt100::Parser::DEFAULT_ROWS, vt100::Parser::DEFAULT_COLS);
    vt100::Parser::new(rows, cols, 0)
}

/// Feeds server messages to a terminal emulator; false once the stream closed.
#[cfg(feature = "screen")]
fn apply_screen(parser: &mut vt100::Parser, msg: &ServerMsg) -> bool {
    match msg {
        ServerMsg::Snapshot(s) => {
            assert_eq!(s.kind(), SnapshotKind::State);
            *parser = terminal();
            parser.process(s.bytes());
            true
        }
        ServerMsg::Item(item) => {
            parser.process(&item.bytes);
            true
        }
        ServerMsg::Exited(_) => true,
        ServerMsg::Closed(_) => false,
        other => panic!("unexpected message {other:?}"),
    }
}

/// Reads messages into `parser` until `done` holds for its screen, or the output is quiet.
#[cfg(feature = "screen")]
fn read_until(
    client: &mut SessionClient,
    parser: &mut vt100::Parser,
    done: impl Fn(&vt100::Screen) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    loop {
        assert!(
            Instant::now() < deadline,
            "screen never matched:\n{}",
            parser.screen().contents()
        );
        match client.next_message() {
            Ok(msg) => {
                if !apply_screen(parser, &msg) {
                    return;
                }
            }
            // Quiet for a moment: the program has drawn what it had to.
            Err(ClientError::Io { .. }) if done(parser.screen()) => return,
            Err(ClientError::Io { .. }) => {}
            Err(e) => panic!("client: {e}"),
        }
    }
}

/// A real full-screen program (`less`) behind the screen provider: a client attaching late
/// gets a redraw of the current screen whose size does not depend on the history, and its
/// screen equals that of a client that saw the drawing live.
#[cfg(feature = "screen")]
#[test]
fn screen_snapshot_redraws_a_full_screen_program() {
    if !have("screen_snapshot_redraws_a_full_screen_program", &["less"]) {
        return;
    }
    let dir = TempDir::new("less");
    let file = dir.path().join("lines.txt");
    let text: String = (1..=3000)
        .map(|i| format!("line {i:05} of the file\n"))
        .collect();
    std::fs::write(&file, text).expect("write the file");
    let socket = dir.path().join("less.sock");
    // Lots of history first (seq), then the full-screen program takes over the terminal.
    let script = format!("seq 1 50000; exec less '{}'", file.display());
    let config = SessionConfig::new(&socket, "/bin/sh")
        .args(["-c", &script])
        .env("LESSHISTFILE", "-")
        .env("LESS", "")
        .size(PtySize { rows: 24, cols: 80 })
        .snapshot(SnapshotMode::Screen);
    let server = SessionServer::start(config).expect("start the session server");

    let mut early = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
    let mut screen_early = terminal();
    read_until(&mut early, &mut screen_early, |s| {
        s.contents().contains("line 00001") && s.alternate_screen()
    });
    early.send_input(b"G").expect("input");
    read_until(&mut early, &mut screen_early, |s| {
        s.contents().contains("line 03000")
    });

    let history = server.hub().metrics().emitted_bytes;
    let mut late = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
    late.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let first = late.next_message().expect("snapshot");
    let ServerMsg::Snapshot(snapshot) = &first else {
        panic!("expected a snapshot first, got {first:?}");
    };
    assert!(history > 288_000, "the history is long: {history} bytes");
    assert!(
        snapshot.bytes().len() < 8 << 10,
        "the redraw costs the screen ({} bytes), not the history ({history})",
        snapshot.bytes().len()
    );
    let mut screen_late = terminal();
    apply_screen(&mut screen_late, &first);
    let (a, b) = (screen_early.screen(), screen_late.screen());
    assert_eq!(b.contents(), a.contents());
    assert_eq!(b.cursor_position(), a.cursor_position());
    assert!(b.alternate_screen() && a.alternate_screen());
    assert!(b.contents().contains("line 03000"));

    // The late client drives the program too: both screens follow it to the end.
    late.send_input(b"g").expect("input");
    read_until(&mut late, &mut screen_late, |s| {
        s.contents().contains("line 00001")
    });
    read_until(&mut early, &mut screen_early, |s| {
        s.contents().contains("line 00001")
    });
    assert_eq!(
        screen_late.screen().contents(),
        screen_early.screen().contents()
    );
    late.send_input(b"q").expect("input");
    read_until(&mut late, &mut screen_late, |s| !s.alternate_screen());
    read_until(&mut early, &mut screen_early, |s| !s.alternate_screen());
    assert_eq!(
        screen_late.screen().contents(),
        screen_early.screen().contents()
    );
    drop(server);
}

/// A client's resize reaches the program's real terminal: `stty size` run by the program
/// reports the size the client sent.
#[test]
fn a_client_resize_reaches_the_programs_terminal() {
    let dir = TempDir::new("resize");
    let socket = dir.path().join("resize.sock");
    let config = SessionConfig::new(&socket, "/bin/sh")
        .args(["-c", "stty size; read line; stty size; read line"])
        .size(PtySize { rows: 24, cols: 80 });
    let server = SessionServer::start(config).expect("start the session server");
    let mut client = SessionClient::connect(&socket, Policy::Resync, None).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut transcript = Transcript::new();
    let mut read_until = |client: &mut SessionClient, text: &str| {
        while !String::from_utf8_lossy(transcript.bytes()).contains(text) {
            let msg = client.next_message().expect("message");
            assert!(
                !matches!(transcript.apply(&msg), Applied::Closed(_)),
                "closed before {text:?}: {:?}",
                String::from_utf8_lossy(transcript.bytes())
            );
        }
    };
    read_until(&mut client, "24 80");
    client
        .send_resize(PtySize {
            rows: 40,
            cols: 100,
        })
        .expect("resize");
    client.send_input(b"\n").expect("input");
    read_until(&mut client, "40 100");
    client.send_input(b"\n").expect("input");
    drop(server);
}

#[test]
fn a_second_authority_is_refused_and_a_second_server_is_not_started() {
    if !have(
        "a_second_authority_is_refused_and_a_second_server_is_not_started",
        &["cat"],
    ) {
        return;
    }
    let dir = TempDir::new("refuse");
    let socket = dir.path().join("cat.sock");
    let server = SessionServer::start(SessionConfig::new(&socket, "cat")).expect("start");
    let mut first = SessionClient::connect(&socket, Policy::Block, None).expect("connect");
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let snapshot = first.next_message().expect("snapshot");
    assert!(matches!(snapshot, ServerMsg::Snapshot(_)));
    let mut t = Transcript::new();
    t.apply(&snapshot);
    let mut second = SessionClient::connect(&socket, Policy::Block, None).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    match second.next_message().expect("answer") {
        ServerMsg::Refused(why) => assert!(why.contains("max_blocking"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Input goes to the program; the terminal echoes it and cat repeats it.
    first.send_input(b"hello\n").expect("input");
    while !t.bytes().ends_with(b"hello\r\nhello\r\n") {
        let msg = first.next_message().expect("output");
        t.apply(&msg);
    }
    let err = SessionServer::start(SessionConfig::new(&socket, "cat")).unwrap_err();
    assert!(
        matches!(err, SessionError::Bind(BindError::AlreadyRunning { .. })),
        "{err:?}"
    );
    drop(server);
    assert!(!socket.exists());
}

/// A client that stops reading while output pours out is handed from the pty reader (which
/// writes to clients that keep up) to its own writer thread, which catches it up when it reads
/// again: both clients get every byte exactly once, the reading one is not held back by the
/// other (it has the whole burst before the other reads again), and the stalled one gets the
/// whole burst while the program, quiet, still runs (nothing is left in a buffer until the
/// stream's end flushes it).
#[test]
fn a_client_that_stops_reading_is_caught_up_while_the_others_are_not_held_back() {
    if !have(
        "a_client_that_stops_reading_is_caught_up_while_the_others_are_not_held_back",
        &["seq"],
    ) {
        return;
    }
    const LINES: u32 = 200_000;
    let dir = TempDir::new("engate-handoff");
    let socket = dir.path().join("s.sock");
    // Nothing is printed before both clients are attached (the program waits for a line),
    // and after the burst the program waits again, quiet.
    let script = format!("read x; seq 1 {LINES}; echo burst-done; read y");
    let server = sh_session(&socket, &script);
    let connect = || attached(&socket);
    fn read_until(client: &mut SessionClient, t: &mut Transcript, who: &str) {
        while !t.bytes().ends_with(b"burst-done\r\n") {
            let msg = client
                .next_message()
                .unwrap_or_else(|e| panic!("{who}: no more output before the burst's end: {e}"));
            assert!(
                matches!(t.apply(&msg), Applied::Continue),
                "{who}: ended early"
            );
        }
    }
    let mut reading = connect();
    let mut stalled = connect();
    let mut stalled_transcript = Transcript::new();
    // The stalled client takes its (empty) snapshot, then reads nothing until the reading
    // client has the whole burst.
    let snapshot = stalled.next_message().expect("snapshot");
    assert!(matches!(
        stalled_transcript.apply(&snapshot),
        Applied::Continue
    ));
    let (done, finished) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut transcript = Transcript::new();
        reading.send_input(b"go\n").expect("input");
        read_until(&mut reading, &mut transcript, "the reading client");
        let _ = done.send(());
        (reading, transcript)
    });
    finished
        .recv_timeout(Duration::from_secs(20))
        .expect("the reading client was held back by the one that stopped reading");
    let (mut reading, mut reading_transcript) = reader.join().expect("reading client");
    // The program still runs, printing nothing: the stalled client must get the whole burst.
    read_until(&mut stalled, &mut stalled_transcript, "the stalled client");
    reading.send_input(b"\n").expect("input");
    for (client, transcript) in [
        (&mut reading, &mut reading_transcript),
        (&mut stalled, &mut stalled_transcript),
    ] {
        while let Applied::Continue = transcript.apply(&client.next_message().expect("message")) {}
    }
    let mut expected = b"go\r\n".to_vec();
    expected.extend_from_slice(&seq_output(LINES));
    expected.extend_from_slice(b"burst-done\r\n\r\n");
    for (who, transcript) in [
        ("the client that kept reading", &reading_transcript),
        ("the client that stalled", &stalled_transcript),
    ] {
        assert_eq!(
            transcript.bytes().len(),
            expected.len(),
            "{who} got a different amount of output"
        );
        assert!(
            transcript.bytes() == expected.as_slice(),
            "{who} got different bytes"
        );
    }
    assert_eq!(server.hub().metrics().duplicates_delivered, 0);
    server.shutdown();
}

/// Output the pump could not send (its client's socket full) goes out before anything
/// emitted later, also when nothing follows it for a while: a client that stops reading while
/// its socket fills with small, spaced-out lines (each one handed to its writer thread in turn)
/// and then reads again gets every line once, in order.
#[test]
fn output_left_unsent_by_the_pump_goes_out_first_even_when_the_program_pauses() {
    if !have(
        "output_left_unsent_by_the_pump_goes_out_first_even_when_the_program_pauses",
        &["seq"],
    ) {
        return;
    }
    const BULK: u32 = 23_000;
    const TICKS: u32 = 240;
    let dir = TempDir::new("engate-unsent");
    let socket = dir.path().join("s.sock");
    // About 120 KB at once (most of what a Unix socket holds), then short lines with pauses
    // longer than the writer's wait for more output: the socket fills up on a line.
    let script = format!(
        "read x; seq 1 {BULK}; i=0; while [ $i -lt {TICKS} ]; do echo tick-$i; sleep 0.025; \
         i=$((i+1)); done; echo ticks-done; read y"
    );
    let server = sh_session(&socket, &script);
    let mut client = attached(&socket);
    let mut transcript = Transcript::new();
    let snapshot = client.next_message().expect("snapshot");
    assert!(matches!(transcript.apply(&snapshot), Applied::Continue));
    client.send_input(b"go\n").expect("input");
    // Not reading while the bulk and the first few seconds of lines come.
    std::thread::sleep(Duration::from_secs(4));
    while !transcript.bytes().ends_with(b"ticks-done\r\n") {
        let msg = client
            .next_message()
            .expect("the lines, whole, until the last one");
        assert!(matches!(transcript.apply(&msg), Applied::Continue));
    }
    client.send_input(b"\n").expect("input");
    while let Applied::Continue = transcript.apply(&client.next_message().expect("message")) {}
    let mut expected = b"go\r\n".to_vec();
    expected.extend_from_slice(&seq_output(BULK));
    for i in 0..TICKS {
        expected.extend_from_slice(format!("tick-{i}\r\n").as_bytes());
    }
    expected.extend_from_slice(b"ticks-done\r\n\r\n");
    assert!(
        transcript.gaps().is_empty(),
        "gaps in the stream: {:?}",
        transcript.gaps()
    );
    assert_eq!(transcript.bytes().len(), expected.len());
    assert!(transcript.bytes() == expected.as_slice(), "different bytes");
    server.shutdown();
}
