//! A tiny dtach-like session server and tail client built on engate-attach.
//!
//! ```text
//! # serve a program in a pty on a Unix socket (until it exits and a key is pressed)
//! cargo run -p engate-attach --example session_server -- serve /tmp/s.sock -- top -b
//! # print what it shows, resuming where the previous run stopped if it can
//! cargo run -p engate-attach --example session_server -- tail /tmp/s.sock
//! ```
//!
//! The socket is bound by `platform-primitives`' `UdsBinder` (mode 0600 before it is
//! reachable, a stale socket from a crashed server replaced, a live one refused). The tail
//! client writes through a `Follower` (each byte once; a resync after falling behind is
//! reported on stderr) and keeps its position in `<socket>.pos`, so a second `tail` resumes
//! exactly. It exits with the program's status once the program has ended.

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

use engate_attach::session::{Applied, Follower, SessionClient, SessionConfig, SessionServer};
use engate_attach::{Policy, Position};

fn usage() -> Box<dyn Error> {
    "usage: session_server serve <socket> -- <program> [args...] | tail <socket>".into()
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let socket = args.get(1).ok_or_else(usage)?;
            let rest = args.iter().skip(2).skip_while(|a| *a == "--");
            let mut rest = rest.cloned();
            let program = rest.next().ok_or_else(usage)?;
            serve(Path::new(socket), &program, rest.collect())
        }
        Some("tail") => tail(Path::new(args.get(1).ok_or_else(usage)?)),
        _ => Err(usage()),
    }
}

fn serve(socket: &Path, program: &str, args: Vec<String>) -> Result<(), Box<dyn Error>> {
    let mut server = SessionServer::start(SessionConfig::new(socket, program).args(args))?;
    eprintln!("serving `{program}` at {}", server.socket_path().display());
    let status = server.wait_program()?;
    let m = server.hub().metrics();
    eprintln!(
        "{program} exited ({status}); {} bytes, {} attaches (mean {:.2?}), duplicates delivered {}",
        m.head, m.attaches, m.attach_latency_mean, m.duplicates_delivered
    );
    eprintln!("still serving the final output; press Enter to stop");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    server.shutdown();
    Ok(())
}

fn position_file(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".pos");
    PathBuf::from(p)
}

fn tail(socket: &Path) -> Result<(), Box<dyn Error>> {
    let saved = std::fs::read_to_string(position_file(socket))
        .ok()
        .and_then(|s| {
            let (e, n) = s.trim().split_once(' ')?;
            Some(Position {
                epoch: e.parse().ok()?,
                next: n.parse().ok()?,
            })
        });
    let mut client = SessionClient::connect(socket, Policy::Resync, saved)?;
    let mut follower = saved.map_or_else(Follower::new, Follower::resume_at);
    let mut out = std::io::stdout().lock();
    loop {
        let msg = client.next_message()?;
        let resyncs = follower.resyncs();
        let applied = follower.apply(&msg, &mut out)?;
        out.flush()?;
        if follower.resyncs() > resyncs {
            eprintln!(
                "[resynced: fell behind; {:?} skipped]",
                follower.skipped().last()
            );
        }
        if let Some(p) = follower.position() {
            std::fs::write(position_file(socket), format!("{} {}", p.epoch, p.next))?;
        }
        match applied {
            Applied::Continue | Applied::Detached => {}
            Applied::Refused => return Err(format!("refused: {msg:?}").into()),
            Applied::Closed(_) => {
                if let Some(exit) = follower.exit_status() {
                    eprintln!("[the program ended: {exit}]");
                    std::process::exit(exit.shell_status());
                }
                return Ok(());
            }
        }
    }
}
