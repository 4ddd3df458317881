//! Where sessions live: one private directory per user, and per session a socket, a status
//! file and the clients' positions.
//!
//! The directory is `$XDG_RUNTIME_DIR/engate/`, or `/tmp/engate-$UID/` without it; it is
//! created with mode 0700 and refused if another user owns it or others may enter it. For a
//! session `NAME` it holds:
//!
//! | file | written by | what |
//! |---|---|---|
//! | `NAME.sock` | the server | the socket (mode 0600) |
//! | `NAME.info` | the server, when something changed (checked every 250 ms) | `key=value` lines: `pid`, `program_pid`, `command`, `started` (Unix seconds), `clients`, `bytes`, `status` (`running`, `exit N` or `signal N`) |
//! | `NAME.pos` | `engate attach` when it leaves | `epoch next`: where the terminal's copy of the output stops |
//! | `NAME.tail-pos` | `engate tail` | `epoch next`, the same for the tail |
//!
//! The status file is a sidecar rather than a wire message, so `engate list` neither attaches
//! nor counts as a client; it is replaced atomically (written aside, then renamed).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use engate_attach::Position;
use engate_attach::session::ProgramExit;

use crate::Failure;
use crate::sys;

/// The per-user directory of sessions.
#[derive(Debug)]
pub(crate) struct Sessions {
    dir: PathBuf,
}

impl Sessions {
    /// The directory, created if needed and checked to be private.
    pub(crate) fn open() -> Result<Self, Failure> {
        let uid = sys::user_id();
        let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(runtime) => PathBuf::from(runtime).join("engate"),
            None => PathBuf::from(format!("/tmp/engate-{uid}")),
        };
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Failure::from_io(
                    format!("cannot create the session directory {}", dir.display()),
                    &e,
                ));
            }
        }
        let meta = fs::symlink_metadata(&dir).map_err(|e| {
            Failure::from_io(
                format!("cannot inspect the session directory {}", dir.display()),
                &e,
            )
        })?;
        if !meta.is_dir() {
            return Err(Failure::new(format!(
                "the session directory {} is not a directory; remove it",
                dir.display()
            )));
        }
        if meta.uid() != uid {
            return Err(Failure::new(format!(
                "the session directory {} belongs to user {}, not to you ({uid}); remove it or set XDG_RUNTIME_DIR",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Failure::new(format!(
                "the session directory {} is open to other users (mode {:o}); run `chmod 700 {}`",
                dir.display(),
                meta.permissions().mode() & 0o777,
                dir.display()
            )));
        }
        Ok(Self { dir })
    }

    /// The session called `name`, which must be a plain file-name-safe word.
    pub(crate) fn session(&self, name: &str) -> Result<Session, Failure> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(Failure::new(format!(
                "invalid session name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
            )));
        }
        let file = |ext: &str| self.dir.join(format!("{name}.{ext}"));
        Ok(Session {
            name: name.to_owned(),
            socket: file("sock"),
            info: file("info"),
            pos: file("pos"),
            tail_pos: file("tail-pos"),
        })
    }

    /// The names of every session with a socket or a status file, sorted.
    pub(crate) fn names(&self) -> Result<Vec<String>, Failure> {
        let entries = fs::read_dir(&self.dir).map_err(|e| {
            Failure::from_io(
                format!("cannot read the session directory {}", self.dir.display()),
                &e,
            )
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stem = name
                    .strip_suffix(".sock")
                    .or_else(|| name.strip_suffix(".info"))?;
                Some(stem.to_owned())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Whether a session's server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A server accepts connections on the socket.
    Live,
    /// The socket file is there but nobody listens: its server died.
    Stale,
    /// There is no socket.
    Absent,
}

/// One session's files.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) name: String,
    pub(crate) socket: PathBuf,
    pub(crate) info: PathBuf,
    pos: PathBuf,
    tail_pos: PathBuf,
}

impl Session {
    /// Connects to the socket (sending nothing, so the server just sees a visitor leave).
    pub(crate) fn probe(&self) -> Probe {
        match UnixStream::connect(&self.socket) {
            Ok(_) => Probe::Live,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Probe::Absent,
            Err(_) => match fs::symlink_metadata(&self.socket) {
                Ok(_) => Probe::Stale,
                Err(_) => Probe::Absent,
            },
        }
    }

    /// Removes every file of a session whose server is gone.
    pub(crate) fn remove_files(&self) {
        for file in [&self.socket, &self.info, &self.pos, &self.tail_pos] {
            let _ = fs::remove_file(file);
        }
    }

    /// Removes the files a server leaves behind when it ends cleanly (its socket is
    /// unlinked by the server itself).
    pub(crate) fn remove_state(&self) {
        for file in [&self.info, &self.pos, &self.tail_pos] {
            let _ = fs::remove_file(file);
        }
    }

    /// The status file, if there is a readable one.
    pub(crate) fn read_info(&self) -> Option<Info> {
        Info::parse(&fs::read_to_string(&self.info).ok()?)
    }

    /// Replaces the status file.
    pub(crate) fn write_info(&self, info: &Info) -> io::Result<()> {
        write_atomically(&self.info, info.render().as_bytes())
    }

    /// Where the last `engate attach` left the terminal.
    pub(crate) fn attach_position(&self) -> Option<Position> {
        read_position(&self.pos)
    }

    /// Records where `engate attach` leaves the terminal (`None`: forgets it).
    pub(crate) fn save_attach_position(&self, position: Option<Position>) -> io::Result<()> {
        save_position(&self.pos, position)
    }

    /// Where the last `engate tail` stopped.
    pub(crate) fn tail_position(&self) -> Option<Position> {
        read_position(&self.tail_pos)
    }

    /// Records where `engate tail` stopped (`None`: forgets it).
    pub(crate) fn save_tail_position(&self, position: Option<Position>) -> io::Result<()> {
        save_position(&self.tail_pos, position)
    }
}

fn read_position(path: &Path) -> Option<Position> {
    let text = fs::read_to_string(path).ok()?;
    let (epoch, next) = text.trim().split_once(' ')?;
    Some(Position {
        epoch: epoch.parse().ok()?,
        next: next.parse().ok()?,
    })
}

fn save_position(path: &Path, position: Option<Position>) -> io::Result<()> {
    match position {
        Some(p) => write_atomically(path, format!("{} {}\n", p.epoch, p.next).as_bytes()),
        None => match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// Writes `bytes` beside `path` (mode 0600) and renames it over `path`, so readers see the
/// old or the new contents, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{}.tmp", std::process::id()));
    let aside = PathBuf::from(aside);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)?;
    file.write_all(bytes)?;
    drop(file);
    fs::rename(&aside, path).inspect_err(|_| {
        let _ = fs::remove_file(&aside);
    })
}

/// What the status file says about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Info {
    /// The server's process id.
    pub(crate) pid: u32,
    /// The program's process id.
    pub(crate) program_pid: u32,
    /// The program and its arguments, space-separated.
    pub(crate) command: String,
    /// When the session started, in Unix seconds.
    pub(crate) started: u64,
    /// Clients attached now.
    pub(crate) clients: usize,
    /// Bytes the program has written.
    pub(crate) bytes: u64,
    /// How the program ended, once it has.
    pub(crate) exit: Option<ProgramExit>,
}

impl Info {
    fn render(&self) -> String {
        let status = match self.exit {
            None => "running".to_owned(),
            Some(ProgramExit::Code(c)) => format!("exit {c}"),
            Some(ProgramExit::Signal(s)) => format!("signal {s}"),
        };
        // One line per key: a newline in the command would start a bogus key.
        let command = self.command.replace(['\n', '\r'], " ");
        format!(
            "pid={}\nprogram_pid={}\ncommand={command}\nstarted={}\nclients={}\nbytes={}\nstatus={status}\n",
            self.pid, self.program_pid, self.started, self.clients, self.bytes
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        };
        let exit = match get("status")?.split_once(' ') {
            None => None,
            Some(("exit", n)) => Some(ProgramExit::Code(n.parse().ok()?)),
            Some(("signal", n)) => Some(ProgramExit::Signal(n.parse().ok()?)),
            Some(_) => return None,
        };
        Some(Self {
            pid: get("pid")?.parse().ok()?,
            program_pid: get("program_pid")?.parse().ok()?,
            command: get("command")?.to_owned(),
            started: get("started")?.parse().ok()?,
            clients: get("clients")?.parse().ok()?,
            bytes: get("bytes")?.parse().ok()?,
            exit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_flattens_newlines() {
        for exit in [
            None,
            Some(ProgramExit::Code(3)),
            Some(ProgramExit::Signal(9)),
        ] {
            let info = Info {
                pid: 10,
                program_pid: 11,
                command: "sh -c 'echo a'".into(),
                started: 1_700_000_000,
                clients: 2,
                bytes: 12345,
                exit,
            };
            assert_eq!(Info::parse(&info.render()), Some(info));
        }
        let odd = Info {
            pid: 1,
            program_pid: 2,
            command: "a\nstatus=exit 9".into(),
            started: 0,
            clients: 0,
            bytes: 0,
            exit: None,
        };
        let back = Info::parse(&odd.render()).expect("parses");
        assert_eq!(back.exit, None);
        assert_eq!(back.command, "a status=exit 9");
        assert_eq!(Info::parse("pid=1\n"), None);
    }
}
