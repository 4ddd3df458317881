//! `squib-host serve`: a pager service for many Firecracker microVMs restored from snapshot
//! templates.
//!
//! ```text
//! squib-host serve --api /run/squib-host/api.sock [--state-dir /var/lib/squib-host]
//!                  [--cache-mib 1024]
//! ```
//!
//! The process started by that command is the *keeper* ([`keeper`]): it binds the control API
//! and starts the *pager* process ([`pager`]), which serves the API and the VMMs. The keeper
//! holds a copy of every live session's userfaultfd and VMM pidfd, so when the pager process
//! dies it starts a new one that takes every session over, and no VM notices beyond a pause.
//! `POST /upgrade` makes the pager hand over to whatever binary is at the keeper's path now.
//! With `--restart on-signal` the keeper does not restart a dead pager by itself: it waits for
//! `SIGUSR1`, so a supervisor (varta-watch's exit hook, say) decides when.
//!
//! The control API speaks HTTP/1.1 with JSON bodies on a Unix socket, as Firecracker's does:
//!
//! ```text
//! curl --unix-socket api.sock -X PUT localhost/templates/base -d '{"mem_file":"/snap/vm.mem"}'
//! curl --unix-socket api.sock -X PUT localhost/sessions/vm1 \
//!      -d '{"template":"base","socket":"/run/vm1/uffd.sock"}'
//! curl --unix-socket api.sock localhost/sessions
//! curl --unix-socket api.sock localhost/metrics
//! ```

#![deny(unsafe_code)]

#[cfg(target_os = "linux")]
mod http;
#[cfg(target_os = "linux")]
mod keeper;
#[cfg(target_os = "linux")]
mod pager;
#[cfg(target_os = "linux")]
mod vault;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: squib-host serve --api PATH [--state-dir DIR] [--cache-mib N] \
                     [--restart auto|on-signal]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("squib-host {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") | None => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(cmd @ ("serve" | "pager")) => match run(cmd, &args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("squib-host: {e}");
                ExitCode::from(1)
            }
        },
        Some(other) => {
            eprintln!("squib-host: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The flags both processes take.
struct Flags {
    api: Option<PathBuf>,
    state_dir: PathBuf,
    cache_mib: u64,
    /// Restart a dead pager at once (`auto`), or on `SIGUSR1` (`on-signal`).
    restart_on_signal: bool,
}

fn parse(args: &[String]) -> Result<Flags, String> {
    let mut flags = Flags {
        api: None,
        state_dir: PathBuf::from("/var/lib/squib-host"),
        cache_mib: 1024,
        restart_on_signal: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--api" => flags.api = Some(PathBuf::from(value()?)),
            "--state-dir" => flags.state_dir = PathBuf::from(value()?),
            "--cache-mib" => {
                let v = value()?;
                flags.cache_mib = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--cache-mib {v:?} is not a positive number"))?;
            }
            "--restart" => {
                flags.restart_on_signal = match value()?.as_str() {
                    "auto" => false,
                    "on-signal" => true,
                    v => {
                        return Err(format!(
                            "--restart {v:?}: expected `auto` or `on-signal`\n{USAGE}"
                        ));
                    }
                };
            }
            other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
        }
    }
    Ok(flags)
}

#[cfg(target_os = "linux")]
fn run(cmd: &str, args: &[String]) -> Result<(), String> {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    use platform_primitives::signals::SignalSet;
    use platform_primitives::threads::PreThreadAttestation;

    let flags = parse(args)?;
    // Blocked before anything starts a thread, so the keeper alone takes it.
    let restart_signal = if cmd == "serve" && flags.restart_on_signal {
        let single = PreThreadAttestation::new().map_err(|e| e.to_string())?;
        Some(
            SignalSet::block(&single, &[libc::SIGUSR1])
                .map_err(|e| format!("cannot block SIGUSR1: {e}"))?,
        )
    } else {
        None
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    if cmd == "serve" {
        let api = flags.api.ok_or(format!("--api is required\n{USAGE}"))?;
        let binary =
            std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let pass = vec![
            "--state-dir".to_owned(),
            flags.state_dir.display().to_string(),
            "--cache-mib".to_owned(),
            flags.cache_mib.to_string(),
        ];
        return keeper::Keeper::bind(binary, pass, &api, &flags.state_dir)?.run(restart_signal);
    }
    // The pager: its standard input is the keeper's end of the vault.
    let vault = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixDatagram::from)
        .map_err(|e| format!("no vault on standard input: {e}"))?;
    pager::Pager::run(
        pager::Options {
            state_dir: flags.state_dir,
            cache_budget: flags.cache_mib << 20,
        },
        vault,
    )
}

#[cfg(not(target_os = "linux"))]
fn run(_: &str, args: &[String]) -> Result<(), String> {
    parse(args)?;
    Err("the pager service needs Linux (userfaultfd)".into())
}
