//! Real pseudo-terminals: a program's exact output through the terminal, end of output,
//! input, window size and the controlling terminal.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use engate_attach::pty::{Pty, PtyError, PtySize, is_end_of_output};

use crate::support::have;

/// Reads the master until the program's side closes (or `limit` passes).
fn read_to_end(pty: &Pty, limit: Duration) -> Vec<u8> {
    let mut reader = pty.reader().expect("reader");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < limit, "no end of output after {limit:?}");
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if is_end_of_output(&e) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read from the pty: {e}"),
        }
    }
    out
}

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script]);
    cmd
}

#[test]
fn program_output_arrives_exactly_and_ends() {
    if !have("program_output_arrives_exactly_and_ends", &["seq"]) {
        return;
    }
    let mut cmd = Command::new("seq");
    cmd.args(["1", "20000"]);
    let mut pty = Pty::spawn(cmd, PtySize::default()).expect("spawn");
    let out = read_to_end(&pty, Duration::from_secs(20));
    let expected: Vec<u8> = (1..=20000)
        .flat_map(|i| format!("{i}\r\n").into_bytes())
        .collect();
    assert_eq!(out.len(), expected.len());
    assert!(out == expected, "the terminal's output differs from seq's");
    assert!(pty.child_mut().wait().expect("wait").success());
}

#[test]
fn the_program_has_the_pty_as_controlling_terminal_with_our_size() {
    if !have(
        "the_program_has_the_pty_as_controlling_terminal",
        &["sh", "stty"],
    ) {
        return;
    }
    let size = PtySize {
        rows: 33,
        cols: 101,
    };
    let pty = Pty::spawn(sh("stty size; echo ok > /dev/tty"), size).expect("spawn");
    let out = read_to_end(&pty, Duration::from_secs(20));
    assert_eq!(out, b"33 101\r\nok\r\n");
}

#[test]
fn input_reaches_the_program_and_resize_is_seen() {
    if !have(
        "input_reaches_the_program_and_resize_is_seen",
        &["sh", "stty"],
    ) {
        return;
    }
    let pty = Pty::spawn(
        sh("read line; echo \"got $line\"; stty size"),
        PtySize::default(),
    )
    .expect("spawn");
    pty.resize(PtySize {
        rows: 40,
        cols: 120,
    })
    .expect("resize");
    pty.writer()
        .expect("writer")
        .write_all(b"ping\n")
        .expect("write");
    let out = read_to_end(&pty, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out);
    // The terminal echoes the input line, then the program answers.
    assert_eq!(text, "ping\r\ngot ping\r\n40 120\r\n");
}

#[test]
fn a_missing_program_is_named_in_the_error() {
    let err = Pty::spawn(
        Command::new("/nonexistent/engate-program"),
        PtySize::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PtyError::Spawn { .. }));
    assert!(
        err.to_string().contains("/nonexistent/engate-program"),
        "{err}"
    );
}
