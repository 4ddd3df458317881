//! The keeper: a small parent process that holds what must outlive the pager.
//!
//! It binds the control API socket, starts the pager process, and keeps a copy of every live
//! session's userfaultfd, VMM pidfd and VMM connection. When the pager process dies — killed,
//! crashed, or exiting to make way for a new binary — the keeper starts it again and hands
//! every session back; the VMMs' faults wait in their userfaultfds meanwhile (a userfaultfd
//! with an open descriptor anywhere never resolves faults by itself). Sessions whose VMM has
//! exited are dropped.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use platform_primitives::creds::pidfd_pid;
use platform_primitives::uds::{SocketPath, UdsBinder};
use serde_json::{Value, json};

use crate::vault;

/// A session the keeper holds: its description and its descriptors (uffd, pidfd and
/// connection; or the listening socket of a session still waiting for its VMM).
struct Kept {
    meta: Value,
    fds: Vec<OwnedFd>,
}

pub(crate) struct Keeper {
    /// The binary to start as the pager (re-read from disk at every start, so replacing the
    /// file and asking for an upgrade runs the new one).
    binary: PathBuf,
    args: Vec<String>,
    api: UnixListener,
    /// Removes the API socket when the keeper ends.
    _api_path: SocketPath,
    kept: BTreeMap<String, Kept>,
}

impl Keeper {
    pub(crate) fn bind(
        binary: PathBuf,
        args: Vec<String>,
        api_path: &std::path::Path,
    ) -> Result<Self, String> {
        let bound = UdsBinder::new("squib-host")
            .bind_listener(api_path)
            .map_err(|e| format!("cannot bind the control API at {}: {e}", api_path.display()))?;
        // The path stays on disk across pager restarts; the keeper owns it for its lifetime.
        let (api, api_path) = bound.into_parts();
        Ok(Self {
            binary,
            args,
            api,
            _api_path: api_path,
            kept: BTreeMap::new(),
        })
    }

    /// Runs the pager, restarting it whenever it ends, until the keeper is killed.
    pub(crate) fn run(mut self) -> Result<(), String> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            let (mut child, vault) = self.start()?;
            let upgrade = self.serve(&mut child, &vault);
            let status = child.wait().map_err(|e| e.to_string())?;
            if upgrade {
                tracing::info!(%status, "pager exited for an upgrade; starting the new binary");
                backoff = Duration::from_millis(50);
                continue;
            }
            tracing::warn!(%status, sessions = self.kept.len(), "pager exited; restarting it");
            // A pager that dies at once again and again is not restarted in a tight loop.
            if started.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(50);
            }
        }
    }

    /// Starts the pager and hands it the API listener and every kept session.
    fn start(&mut self) -> Result<(Child, UnixDatagram), String> {
        let (ours, theirs) = UnixDatagram::pair().map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary)
            .arg("pager")
            .args(&self.args)
            // systemd's watchdog names the keeper (the main process); the pager is the one that
            // pings (NotifyAccess=all), so the interval is its own.
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let send = |body: &Value, fds: &[std::os::fd::BorrowedFd<'_>]| {
            vault::send(&ours, body, fds).map_err(|e| format!("cannot reach the pager: {e}"))
        };
        send(
            &json!({"op": "api"}),
            &[std::os::fd::AsFd::as_fd(&self.api)],
        )?;
        // Sessions whose VMM is gone are not handed over (waiting ones have no VMM yet).
        self.kept.retain(|_, k| {
            k.meta["waiting"] == true
                || k.fds
                    .get(1)
                    .is_some_and(|p| matches!(pidfd_pid(p), Ok(Some(_))))
        });
        for k in self.kept.values() {
            send(
                &json!({"op": "adopt", "session": k.meta}),
                &vault::borrow(&k.fds),
            )?;
        }
        send(&json!({"op": "end"}), &[])?;
        Ok((child, ours))
    }

    /// Keeps what the pager sends until it exits; returns whether it asked for an upgrade.
    fn serve(&mut self, child: &mut Child, vault: &UnixDatagram) -> bool {
        let mut upgrade = false;
        let mut buf = vault::buffer();
        loop {
            // A short wait: a dead pager is noticed (and replaced) within it.
            match vault::recv(vault, &mut buf, Some(Duration::from_millis(10))) {
                Ok(Some(msg)) => upgrade |= self.take(msg),
                Ok(None) => {}
                // The pager closed its end: it is exiting.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            if let Ok(Some(_)) = child.try_wait() {
                // Take what it sent just before it exited.
                while let Ok(Some(msg)) =
                    vault::recv(vault, &mut buf, Some(Duration::from_millis(1)))
                {
                    upgrade |= self.take(msg);
                }
                return upgrade;
            }
        }
    }

    /// Applies one message from the pager; returns whether it asks for an upgrade.
    fn take(&mut self, msg: vault::Message) -> bool {
        match msg.body["op"].as_str() {
            // A served session brings its uffd, pidfd and connection; one still waiting for
            // its VMM brings its listening socket.
            Some("keep") if matches!(msg.fds.len(), 1 | 3) => {
                let meta = msg.body["session"].clone();
                if let Some(id) = meta["id"].as_str() {
                    self.kept.insert(id.to_owned(), Kept { meta, fds: msg.fds });
                }
            }
            Some("forget") => {
                if let Some(id) = msg.body["id"].as_str() {
                    self.kept.remove(id);
                }
            }
            Some("upgrade") => return true,
            other => tracing::warn!(?other, "unknown message from the pager"),
        }
        false
    }
}
