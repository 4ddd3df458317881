//! The `engate` program, driven the way a person uses it: a real tmux runs `engate attach` in
//! a pane, types into the shell inside the session with `send-keys`, reads the screen with
//! `capture-pane`, detaches with the key, comes back, resizes the window and exits the shell.
//! `list`, `kill`, `tail` and stale sockets are checked against the real binary too.
//!
//! Every test has its own session directory (`XDG_RUNTIME_DIR` is a temp dir) and its own
//! tmux server (`tmux -L`), killed at the end. Every wait polls with a deadline; a test that
//! needs tmux skips, saying so, where it is not installed.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{TempDir, have};

const ENGATE: &str = env!("CARGO_BIN_EXE_engate");
/// How long any one thing may take to show up.
const PATIENCE: Duration = Duration::from_secs(15);
/// How long one tmux or engate command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);

/// Waits for `child` with a deadline; kills it and panics if it is late.
fn wait_with_deadline(mut child: Child, what: &str, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "{what} did not finish within {limit:?}; stdout {:?} stderr {:?}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Runs `cmd` to the end with a deadline (output read by the OS into files, so a full pipe
/// cannot stall it).
fn run(mut cmd: Command, what: &str) -> Output {
    let dir = TempDir::new("cli-out");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut output = wait_with_deadline(child, what, COMMAND_LIMIT);
    output.stdout = std::fs::read(&out).expect("read stdout");
    output.stderr = std::fs::read(&err).expect("read stderr");
    output
}

/// Polls `probe` until it returns `Some`, or panics after [`PATIENCE`] with `describe()`.
fn eventually<T>(
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {PATIENCE:?}; {}", describe());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A session directory and the `engate` commands run against it.
struct Engate {
    runtime: TempDir,
}

impl Engate {
    fn new(tag: &str) -> Self {
        Self {
            runtime: TempDir::new(tag),
        }
    }

    fn dir(&self) -> PathBuf {
        self.runtime.path().join("engate")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(ENGATE);
        cmd.env("XDG_RUNTIME_DIR", self.runtime.path())
            .env_remove("ENGATE")
            .env("TERM", "xterm-256color");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        run(cmd, &format!("engate {}", args.join(" ")))
    }

    /// `engate list`'s standard output.
    fn list(&self) -> String {
        let out = self.run(&["list"]);
        assert!(out.status.success(), "engate list: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the session's server is gone and its files are cleaned up.
    fn wait_gone(&self, name: &str) {
        let socket = self.dir().join(format!("{name}.sock"));
        let info = self.dir().join(format!("{name}.info"));
        eventually(
            &format!("session {name} ends"),
            || (!socket.exists() && !info.exists()).then_some(()),
            || format!("list: {}", self.list()),
        );
    }
}

impl Drop for Engate {
    fn drop(&mut self) {
        // Whatever a failed test left running: end its servers.
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(session) = name.strip_suffix(".sock") {
                let _ = self.run(&["kill", session]);
            }
        }
    }
}

/// A tmux server of our own with one 80 × 24 window running `sh`.
struct Tmux {
    socket_name: String,
}

impl Tmux {
    fn start(test: &str, engate: &Engate) -> Option<Self> {
        if !have(test, &["tmux"]) {
            return None;
        }
        let socket_name = format!("engate-it-{}-{test}", std::process::id());
        let tmux = Self { socket_name };
        let mut cmd = tmux.command();
        // A clean, predictable environment for the shell in the pane.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", engate.runtime.path())
            .env("XDG_RUNTIME_DIR", engate.runtime.path())
            .env("TERM", "xterm-256color")
            .env("SHELL", "/bin/sh")
            .args(["new-session", "-d", "-x", "80", "-y", "24", "-s", "t", "sh"]);
        let out = run(cmd, "tmux new-session");
        assert!(out.status.success(), "tmux new-session: {out:?}");
        Some(tmux)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket_name, "-f", "/dev/null"]);
        cmd
    }

    fn tmux(&self, args: &[&str]) -> String {
        let mut cmd = self.command();
        cmd.args(args);
        let out = run(cmd, &format!("tmux {}", args.join(" ")));
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `line` and Enter.
    fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", line]);
        self.tmux(&["send-keys", "-t", "t", "Enter"]);
    }

    /// Presses a key by tmux's name for it (`C-\`, `C-a`).
    fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "t", key]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "t"])
    }

    /// Waits until the screen satisfies `ok`, and returns it.
    fn wait_screen(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        eventually(
            what,
            || {
                let s = self.screen();
                ok(&s).then_some(s)
            },
            || format!("the screen:\n{}", self.screen()),
        )
    }

    /// Clears the pane's screen and its history, so what shows next is new.
    fn clear(&self) {
        self.type_line("clear");
        self.wait_screen("the screen clears", |s| {
            s.trim().is_empty() || s.trim() == "#" || s.trim() == "$"
        });
        self.tmux(&["clear-history", "-t", "t"]);
    }

    /// The pid of the pane's shell.
    fn pane_pid(&self) -> u32 {
        self.tmux(&["display-message", "-p", "-t", "t", "#{pane_pid}"])
            .trim()
            .parse()
            .expect("pane pid")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let mut cmd = self.command();
        cmd.arg("kill-server");
        let _ = run(cmd, "tmux kill-server");
    }
}

/// The shell line that attaches (creating the session with `sh` and a recognisable prompt),
/// then prints the exit status.
fn attach_line(extra: &str, name: &str) -> String {
    let program = if extra.contains("-A") {
        " -- env PS1='in$ ' sh"
    } else {
        ""
    };
    format!("{ENGATE} attach {extra} {name}{program}; echo \"rc=$?\"")
}

/// The `engate attach` process among `pid`'s descendants (Linux `/proc`).
fn attach_client_under(pid: u32) -> Option<u32> {
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let mut words = cmdline.split(|&b| b == 0);
        if words.next() == Some(ENGATE.as_bytes()) && words.next() == Some(b"attach") {
            return Some(p);
        }
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        queue.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    None
}

/// Whether a line of `screen` is the prompt `prompt` alone (the command line that set the
/// prompt contains it too, and shows before the session does).
fn prompts(screen: &str, prompt: &str) -> bool {
    count_lines(screen, prompt) > 0
}

/// Lines of `screen` that are exactly `line` (after trailing blanks).
fn count_lines(screen: &str, line: &str) -> usize {
    screen.lines().filter(|l| l.trim_end() == line).count()
}

#[test]
fn attach_detach_resume_redraw_resize_and_exit_status_in_tmux() {
    let engate = Engate::new("cli-tmux");
    let Some(tmux) = Tmux::start(
        "attach_detach_resume_redraw_resize_and_exit_status_in_tmux",
        &engate,
    ) else {
        return;
    };
    let before = engate.runtime.path().join("tty-before");
    tmux.type_line(&format!("stty -g > {}", before.display()));
    tmux.type_line(&attach_line("-A", "work"));
    tmux.wait_screen("the shell in the session prompts", |s| prompts(s, "in$"));

    // Private directory and socket.
    let dir_mode = std::fs::metadata(engate.dir())
        .expect("session dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let sock_mode = std::fs::metadata(engate.dir().join("work.sock"))
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(sock_mode & 0o777, 0o600);

    tmux.type_line("echo hello-$((6*7))");
    tmux.wait_screen("the command runs in the session", |s| {
        count_lines(s, "hello-42") == 1
    });
    // Output that arrives while detached: the exact bytes come back on re-attach.
    tmux.type_line("(sleep 1; echo late-$((7*7))) &");
    tmux.wait_screen("the background job starts", |s| s.contains("in$ (sleep 1"));
    tmux.key("C-\\");
    let s = tmux.wait_screen("detaching prints the status", |s| s.contains("rc=0"));
    assert!(s.contains("[engate: detached from work]"), "{s}");

    // The outer terminal is exactly as before: raw mode undone.
    tmux.type_line(&format!(
        "stty -g | cmp - {} && echo SAME-TTY",
        before.display()
    ));
    tmux.wait_screen("the terminal modes are restored after detaching", |s| {
        count_lines(s, "SAME-TTY") == 1
    });
    let list = eventually(
        "list shows the detached session",
        || {
            let l = engate.list();
            l.lines()
                .any(|r| {
                    r.starts_with("work ")
                        && r.contains("running")
                        && r.split_whitespace().nth(5) == Some("0")
                })
                .then_some(l)
        },
        || engate.list(),
    );
    assert!(list.starts_with("NAME"), "{list}");
    assert!(list.contains("env PS1=in$  sh"), "{list}");
    // Wait for the late line to be written inside the session (its byte count grows past it).
    std::thread::sleep(Duration::from_millis(1200));

    // Re-attach on a cleared screen: only the missed bytes are replayed, not a redraw.
    tmux.clear();
    tmux.type_line(&attach_line("", "work"));
    let s = tmux.wait_screen("the missed output is replayed", |s| {
        count_lines(s, "late-49") == 1
    });
    assert!(
        !s.contains("hello-42"),
        "an exact resume replays only what was missed, not the screen:\n{s}"
    );
    tmux.key("C-\\");
    tmux.wait_screen("detached again", |s| s.contains("rc=0"));

    // With --redraw, the screen comes back as it is in the session.
    tmux.clear();
    tmux.type_line(&attach_line("--redraw", "work"));
    let s = tmux.wait_screen("the screen is redrawn", |s| {
        // The job printed after the prompt that followed it.
        count_lines(s, "hello-42") == 1 && count_lines(s, "in$ late-49") == 1
    });
    assert!(s.contains("in$ echo hello-$((6*7))"), "{s}");

    // The program's terminal follows the window.
    tmux.tmux(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    tmux.type_line("stty size");
    tmux.wait_screen("the session's terminal is resized", |s| {
        count_lines(s, "30 100") == 1
    });

    // The shell's exit status becomes attach's.
    tmux.type_line("exit 3");
    let s = tmux.wait_screen("attach ends with the program", |s| s.contains("rc=3"));
    assert!(s.contains("[engate: work ended: exit status 3]"), "{s}");
    tmux.type_line(&format!(
        "stty -g | cmp - {} && echo SAME-TTY-2",
        before.display()
    ));
    tmux.wait_screen(
        "the terminal modes are restored at the program's end",
        |s| count_lines(s, "SAME-TTY-2") == 1,
    );
    // The server leaves once its last client has seen the end.
    engate.wait_gone("work");
}

#[test]
fn detach_key_option_read_only_and_signals_in_tmux() {
    let engate = Engate::new("cli-keys");
    let Some(tmux) = Tmux::start("detach_key_option_read_only_and_signals_in_tmux", &engate) else {
        return;
    };
    let before = engate.runtime.path().join("tty-before");
    tmux.type_line(&format!("stty -g > {}", before.display()));
    // -e ^a: Ctrl-\ is then an ordinary key (it reaches the program), Ctrl-A detaches.
    tmux.type_line(&attach_line("-A -e ^a", "keys"));
    tmux.wait_screen("the session's shell prompts", |s| prompts(s, "in$"));
    tmux.type_line("echo first-$((2+3))");
    tmux.wait_screen("the command runs", |s| count_lines(s, "first-5") == 1);
    tmux.key("C-a");
    tmux.wait_screen("Ctrl-A detaches", |s| {
        s.contains("[engate: detached from keys]") && s.contains("rc=0")
    });

    // Read-only: the screen is shown, keys do not reach the program; the detach key works.
    tmux.clear();
    tmux.type_line(&format!("{ENGATE} attach -r --redraw keys; echo \"rc=$?\""));
    tmux.wait_screen("the read-only client redraws", |s| {
        count_lines(s, "first-5") == 1
    });
    tmux.type_line("echo typed-$((3+4))");
    std::thread::sleep(Duration::from_millis(500));
    tmux.key("C-\\");
    tmux.wait_screen("the read-only client detaches", |s| s.contains("rc=0"));
    tmux.clear();
    tmux.type_line(&format!("{ENGATE} attach --redraw keys; echo \"rc=$?\""));
    let s = tmux.wait_screen("a writing client redraws", |s| {
        count_lines(s, "first-5") == 1
    });
    assert!(
        !s.contains("typed-7"),
        "read-only keys reached the program:\n{s}"
    );

    // A SIGTERM to the client: it leaves with 128 + 15 and the terminal restored.
    let shell = tmux.pane_pid();
    if Path::new(&format!("/proc/{shell}/task/{shell}/children")).exists() {
        let client = eventually(
            "the attach client runs under the pane's shell",
            || attach_client_under(shell),
            || "no `engate attach` process under the pane".into(),
        );
        let status = Command::new("kill")
            .args(["-TERM", &client.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let s = tmux.wait_screen("the client leaves on SIGTERM", |s| s.contains("rc=143"));
        assert!(s.contains("[engate: left keys on signal 15]"), "{s}");
        tmux.type_line(&format!(
            "stty -g | cmp - {} && echo SAME-TTY",
            before.display()
        ));
        tmux.wait_screen("the terminal modes are restored after SIGTERM", |s| {
            count_lines(s, "SAME-TTY") == 1
        });
    } else {
        eprintln!("skip part: no /proc children lists (not Linux): the SIGTERM check needs them");
        tmux.key("C-\\");
    }
    // The session outlived its clients.
    assert!(engate.list().lines().any(|l| l.starts_with("keys ")));
    let out = engate.run(&["kill", "keys"]);
    assert!(out.status.success(), "{out:?}");
    engate.wait_gone("keys");
}

#[test]
fn list_kill_stale_sockets_and_errors() {
    let engate = Engate::new("cli-list");
    let out = engate.run(&["new", "k1", "--", "sleep", "60"]);
    assert!(out.status.success(), "engate new: {out:?}");
    let list = engate.list();
    let row = list
        .lines()
        .find(|l| l.starts_with("k1 "))
        .unwrap_or_else(|| panic!("k1 listed: {list}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // NAME PID PROGRAM... CLIENTS AGE BYTES STATUS
    assert_eq!(cells[2..4], ["sleep", "60"], "{row}");
    let server: u32 = cells[1].parse().expect("pid");
    assert!(Path::new(&format!("/proc/{server}")).exists() || !Path::new("/proc").exists());
    assert_eq!(cells[4], "0", "no client: {row}");
    assert_eq!(cells.last(), Some(&"running"), "{row}");

    // A second `new` of the same name is refused, naming the session.
    let out = engate.run(&["new", "k1", "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("session k1 already exists"), "{err}");

    let out = engate.run(&["kill", "k1"]);
    assert!(out.status.success(), "kill: {out:?}");
    engate.wait_gone("k1");
    assert!(!engate.list().contains("k1"));

    // A socket nobody serves (its server died): `list` removes it and says so.
    let stale = engate.dir().join("st.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let out = engate.run(&["list"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("removed session st") && err.contains("st.sock"),
        "{err}"
    );
    assert!(!stale.exists(), "the stale socket is gone");

    // Errors name the session and the path.
    let out = engate.run(&["attach", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let path = engate.dir().join("nosuch.sock");
    assert!(
        err.contains("no session nosuch") && err.contains(&*path.to_string_lossy()),
        "{err}"
    );
    let out = engate.run(&["kill", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
    let out = engate.run(&["new", "../x", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid session name"));
    let out = engate.run(&["new", "bad", "--", "/nonexistent/program"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("session bad did not start"), "{err}");
    assert!(err.contains("/nonexistent/program"), "{err}");
}

/// `line-N` tokens in order of appearance.
fn line_numbers(bytes: &[u8]) -> Vec<u32> {
    let text = String::from_utf8_lossy(bytes);
    text.split("line-")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn tail_resumes_by_offset_and_exits_with_the_program() {
    let engate = Engate::new("cli-tail");
    let script = "i=0; while [ $i -lt 40 ]; do echo line-$i; i=$((i+1)); sleep 0.05; done; exit 4";
    let out = engate.run(&["new", "tl", "--", "sh", "-c", script]);
    assert!(out.status.success(), "engate new: {out:?}");

    // The first tail is stopped part way (SIGTERM), saving its position.
    let first_out = engate.runtime.path().join("tail-1");
    let mut cmd = engate.command();
    cmd.args(["tail", "tl"])
        .stdin(Stdio::null())
        .stdout(File::create(&first_out).expect("file"))
        .stderr(Stdio::inherit());
    let first = cmd.spawn().expect("tail");
    eventually(
        "the first tail sees some lines",
        || (line_numbers(&std::fs::read(&first_out).ok()?).len() >= 5).then_some(()),
        || format!("{:?}", std::fs::read_to_string(&first_out)),
    );
    let _ = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status();
    let status = wait_with_deadline(first, "the first tail", COMMAND_LIMIT).status;
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "SIGTERM ends a tail with 143"
    );
    std::thread::sleep(Duration::from_millis(300));

    // The second tail resumes exactly: no redraw, no line twice, none missing; it exits with
    // the program's status.
    let second = engate.run(&["tail", "tl"]);
    assert_eq!(second.status.code(), Some(4), "{second:?}");
    let mut all = std::fs::read(&first_out).expect("first output");
    let first_lines = line_numbers(&all).len();
    all.extend_from_slice(&second.stdout);
    assert_eq!(
        line_numbers(&all),
        (0..40).collect::<Vec<_>>(),
        "first tail {:?}, second {:?}",
        String::from_utf8_lossy(&std::fs::read(&first_out).unwrap_or_default()),
        String::from_utf8_lossy(&second.stdout)
    );
    assert!(first_lines < 40, "the first tail stopped part way");
    assert!(
        !second.stdout.starts_with(b"\x1b["),
        "an exact resume starts with the missed bytes, not a redraw: {:?}",
        String::from_utf8_lossy(&second.stdout)
    );
    engate.wait_gone("tl");
}

/// The detach key works, within a bounded time, even when the session's program reads no
/// input and a paste is still waiting in the server (which then does not read the client's
/// socket, so the detach frame is not taken): the client leaves after showing what it could.
#[test]
fn detach_is_prompt_while_a_paste_waits_for_a_program_that_does_not_read() {
    let engate = Engate::new("cli-deaf");
    let Some(tmux) = Tmux::start(
        "detach_is_prompt_while_a_paste_waits_for_a_program_that_does_not_read",
        &engate,
    ) else {
        return;
    };
    let out = engate.run(&[
        "new",
        "deaf",
        "--",
        "sh",
        "-c",
        "stty raw -echo; echo deaf-ready; exec sleep 600",
    ]);
    assert!(out.status.success(), "{out:?}");
    tmux.type_line(&attach_line("", "deaf"));
    tmux.wait_screen("the program is ready", |s| s.contains("deaf-ready"));
    // 100 KB of keys the program never reads: more than its terminal takes, less than the
    // client's connection holds (so the client itself does not block sending them).
    let paste = engate.runtime.path().join("paste");
    std::fs::write(&paste, "x".repeat(100_000)).expect("paste file");
    tmux.tmux(&["load-buffer", &paste.display().to_string()]);
    tmux.tmux(&["paste-buffer", "-t", "t"]);
    std::thread::sleep(Duration::from_millis(500));
    let pressed = Instant::now();
    tmux.key("C-\\");
    tmux.wait_screen("the client detaches", |s| {
        s.contains("[engate: detached from deaf]") && s.contains("rc=0")
    });
    assert!(
        pressed.elapsed() < Duration::from_secs(6),
        "detaching took {:?}",
        pressed.elapsed()
    );
    let out = engate.run(&["kill", "deaf"]);
    assert!(out.status.success(), "{out:?}");
    engate.wait_gone("deaf");
}

/// The session's server dies (SIGKILL) under an attached client: the client leaves at once,
/// says it lost the session and fails, and the terminal's modes are put back.
#[test]
fn an_attached_client_survives_its_server_being_killed() {
    let engate = Engate::new("cli-server-killed");
    let Some(tmux) = Tmux::start(
        "an_attached_client_survives_its_server_being_killed",
        &engate,
    ) else {
        return;
    };
    let before = engate.runtime.path().join("tty-before");
    tmux.type_line(&format!("stty -g > {}", before.display()));
    tmux.type_line(&attach_line("-A", "doomed"));
    tmux.wait_screen("the session's shell prompts", |s| prompts(s, "in$"));
    let list = engate.list();
    let server: u32 = list
        .lines()
        .find(|l| l.starts_with("doomed "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no server pid for doomed in:\n{list}"));
    let status = Command::new("kill")
        .args(["-KILL", &server.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let s = tmux.wait_screen("the client leaves with an error", |s| s.contains("rc=1"));
    assert!(s.contains("lost session doomed"), "{s}");
    tmux.type_line(&format!(
        "stty -g | cmp - {} && echo SAME-TTY",
        before.display()
    ));
    tmux.wait_screen("the terminal modes are restored", |s| {
        count_lines(s, "SAME-TTY") == 1
    });
}

/// The descriptors of process `pid` that are open on `path` (Linux `/proc`).
fn open_on(pid: u32, path: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|p| p == Path::new(path)))
                .count()
        })
        .unwrap_or(0)
}

/// The attached terminal is handed to the session's server, which writes the output to it
/// itself (no byte goes through the client): the server holds the pane's terminal while the
/// client is attached, and lets go of it when the client detaches.
#[test]
fn the_server_writes_to_the_attached_terminal_and_lets_go_on_detach() {
    let engate = Engate::new("cli-handover");
    let Some(tmux) = Tmux::start(
        "the_server_writes_to_the_attached_terminal_and_lets_go_on_detach",
        &engate,
    ) else {
        return;
    };
    if !Path::new("/proc/self/fd").exists() {
        eprintln!("skip: no /proc (not Linux): the server's descriptors cannot be looked at");
        return;
    }
    let pane_tty = tmux.tmux(&["display-message", "-p", "-t", "t", "#{pane_tty}"]);
    let pane_tty = pane_tty.trim();
    tmux.type_line(&attach_line("-A", "handed"));
    tmux.wait_screen("the session's shell prompts", |s| prompts(s, "in$"));
    let list = engate.list();
    let server: u32 = list
        .lines()
        .find(|l| l.starts_with("handed "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no server pid for handed in:\n{list}"));
    assert_eq!(
        open_on(server, pane_tty),
        1,
        "the server holds the attached terminal {pane_tty}"
    );
    tmux.type_line("echo handed-$((20+22))");
    tmux.wait_screen("the output shows", |s| count_lines(s, "handed-42") == 1);
    tmux.key("C-\\");
    tmux.wait_screen("the client detaches", |s| {
        s.contains("[engate: detached from handed]") && s.contains("rc=0")
    });
    eventually(
        "the server lets go of the terminal",
        || (open_on(server, pane_tty) == 0).then_some(()),
        || format!("the server still holds {pane_tty}"),
    );
    // Back, from where it left: only what is new is written.
    tmux.clear();
    tmux.type_line(&format!("{ENGATE} attach handed; echo \"rc=$?\""));
    tmux.type_line("echo back-$((1+1))");
    let s = tmux.wait_screen("the shell answers again", |s| count_lines(s, "back-2") == 1);
    assert_eq!(
        count_lines(&s, "handed-42"),
        0,
        "resumed, not replayed:\n{s}"
    );
    tmux.type_line("exit 3");
    tmux.wait_screen("exit ends the attach with the status", |s| {
        s.contains("rc=3")
    });
}

/// A server that does not take terminals (as one that predates terminal mode) refuses the
/// terminal; `engate attach` then relays the output itself, and everything works as before.
#[test]
fn attach_relays_the_output_when_the_server_takes_no_terminal() {
    use engate_attach::session::{SessionConfig, SessionServer};

    let engate = Engate::new("cli-relay");
    let Some(tmux) = Tmux::start(
        "attach_relays_the_output_when_the_server_takes_no_terminal",
        &engate,
    ) else {
        return;
    };
    std::fs::create_dir_all(engate.dir()).expect("session directory");
    std::fs::set_permissions(engate.dir(), std::fs::Permissions::from_mode(0o700))
        .expect("session directory mode");
    let socket = engate.dir().join("relayed.sock");
    let server = SessionServer::start(
        SessionConfig::new(&socket, "env")
            .args(["PS1=in$ ", "sh"])
            .take_terminals(false),
    )
    .expect("start a server that takes no terminals");
    tmux.type_line(&format!("{ENGATE} attach relayed; echo \"rc=$?\""));
    tmux.type_line("echo relayed-$((40+2))");
    tmux.wait_screen("the relayed output shows", |s| {
        count_lines(s, "relayed-42") == 1
    });
    tmux.key("C-\\");
    tmux.wait_screen("the client detaches", |s| {
        s.contains("[engate: detached from relayed]") && s.contains("rc=0")
    });
    tmux.clear();
    tmux.type_line(&format!("{ENGATE} attach relayed; echo \"rc=$?\""));
    tmux.type_line("echo again-$((3*3))");
    let s = tmux.wait_screen("the shell answers again", |s| {
        count_lines(s, "again-9") == 1
    });
    assert_eq!(
        count_lines(&s, "relayed-42"),
        0,
        "resumed, not replayed:\n{s}"
    );
    tmux.type_line("exit 4");
    tmux.wait_screen("exit ends the attach with the status", |s| {
        s.contains("rc=4")
    });
    server.shutdown();
}

/// `engate serve` in the background of the very terminal that then attaches: the server must
/// not take its own controlling terminal (reading it from a background process group would
/// stop the server with SIGTTIN); the client relays instead and everything works.
#[test]
fn attach_from_the_terminal_of_a_background_server_relays() {
    let engate = Engate::new("cli-bg-serve");
    let Some(tmux) = Tmux::start(
        "attach_from_the_terminal_of_a_background_server_relays",
        &engate,
    ) else {
        return;
    };
    tmux.type_line(&format!(
        "{ENGATE} serve bg -- env PS1='bg$ ' sh & sleep 1; {ENGATE} attach bg; echo \"rc=$?\""
    ));
    tmux.wait_screen("the session's shell prompts", |s| prompts(s, "bg$"));
    tmux.type_line("echo bg-$((2*21))");
    tmux.wait_screen("the keys reach the session", |s| {
        count_lines(s, "bg-42") == 1
    });
    tmux.key("C-\\");
    tmux.wait_screen("the client detaches", |s| {
        s.contains("[engate: detached from bg]") && s.contains("rc=0")
    });
    let out = engate.run(&["kill", "bg"]);
    assert!(out.status.success(), "{out:?}");
    engate.wait_gone("bg");
}

/// `SIGTSTP` to an attached client (job control from another shell): the client lets the
/// terminal go — the program's output no longer lands on the shell that gets the terminal
/// back — and attaches again when continued, from where its terminal stood.
#[test]
fn a_suspended_client_lets_the_terminal_go_and_comes_back() {
    let engate = Engate::new("cli-suspend");
    let Some(tmux) = Tmux::start(
        "a_suspended_client_lets_the_terminal_go_and_comes_back",
        &engate,
    ) else {
        return;
    };
    let out = engate.run(&[
        "new",
        "ticks",
        "--",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.1; done",
    ]);
    assert!(out.status.success(), "{out:?}");
    tmux.type_line(&format!("{ENGATE} attach ticks"));
    tmux.wait_screen("the ticks show", |s| s.contains("tick-"));
    let shell = tmux.pane_pid();
    if !Path::new(&format!("/proc/{shell}/task/{shell}/children")).exists() {
        eprintln!("skip: no /proc children lists (not Linux): the client cannot be found");
        return;
    }
    let client = eventually(
        "the attach client runs under the pane's shell",
        || attach_client_under(shell),
        || "no `engate attach` process under the pane".into(),
    );
    let status = Command::new("kill")
        .args(["-TSTP", &client.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    eventually(
        "the client stops",
        || {
            let stat = std::fs::read_to_string(format!("/proc/{client}/stat")).ok()?;
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            (state == "T").then_some(())
        },
        || "the client did not stop".into(),
    );
    tmux.clear();
    std::thread::sleep(Duration::from_millis(1000));
    let s = tmux.screen();
    assert!(
        !s.contains("tick-"),
        "the session's output landed on the shell while the client was stopped:\n{s}"
    );
    tmux.type_line("fg");
    let s = tmux.wait_screen("the ticks show again", |s| s.contains("tick-"));
    // Resumed where the terminal stood: the ticks printed while stopped come now, each once.
    let numbers: Vec<u32> = s
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("tick-")?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "every tick once, in order: {numbers:?}"
    );
    tmux.key("C-\\");
    tmux.wait_screen("the client detaches", |s| {
        s.contains("[engate: detached from ticks]")
    });
    let out = engate.run(&["kill", "ticks"]);
    assert!(out.status.success(), "{out:?}");
    engate.wait_gone("ticks");
}

/// The voluntary context switches of the thread named `name` in process `pid` (Linux).
fn thread_switches(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok());
    }
    None
}

/// An authority client (policy Block) that stops reading holds the program's output back;
/// the server's pump then sleeps until the authority frees room (it is woken by the hub, not
/// by a timer), and the output flows again as soon as the authority leaves.
#[test]
fn a_pump_held_back_by_an_authority_sleeps_until_room_frees_up() {
    use engate_attach::Policy;
    use engate_attach::session::wire::{self, ClientMsg};
    use std::io::Write;

    if !Path::new("/proc/self/task").exists() {
        eprintln!(
            "skip: a_pump_held_back_by_an_authority_sleeps_until_room_frees_up: no /proc (not Linux)"
        );
        return;
    }
    let engate = Engate::new("cli-authority");
    let out = engate.run(&["new", "flood", "--", "seq", "1", "1000000000"]);
    assert!(out.status.success(), "{out:?}");
    let server: u32 = engate
        .list()
        .lines()
        .find(|l| l.starts_with("flood "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|pid| pid.parse().ok())
        .expect("the server's pid");
    let socket = engate.dir().join("flood.sock");
    let authority = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    let mut hello = Vec::new();
    wire::encode_client(
        &ClientMsg::Hello {
            policy: Policy::Block,
            resume: None,
            terminal: None,
        },
        &mut hello,
    );
    (&authority).write_all(&hello).expect("hello");
    // Held back: the pump's thread stops making progress.
    let bytes = || {
        let list = engate.list();
        list.lines()
            .find(|l| l.starts_with("flood "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = bytes();
        std::thread::sleep(Duration::from_millis(600));
        if bytes() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the authority never held the output back"
        );
    }
    let first = thread_switches(server, "engate-pump").expect("the pump thread");
    std::thread::sleep(Duration::from_millis(500));
    let second = thread_switches(server, "engate-pump").expect("the pump thread");
    assert!(
        second - first < 10,
        "the held-back pump woke {} times in 500 ms",
        second - first
    );
    drop(authority);
    let held = bytes();
    eventually(
        "the output flows again once the authority is gone",
        || (bytes() != held).then_some(()),
        || format!("list: {}", engate.list()),
    );
    let out = engate.run(&["kill", "flood"]);
    assert!(out.status.success(), "{out:?}");
    engate.wait_gone("flood");
}
