//! The keeper: a small parent process that holds what must outlive the pager.
//!
//! It binds the control API socket, starts the pager process, and keeps a copy of every live
//! session's userfaultfd, VMM pidfd and VMM connection. When the pager process dies — killed,
//! crashed, or exiting to make way for a new binary — the keeper starts it again and hands
//! every session back; the VMMs' faults wait in their userfaultfds meanwhile (a userfaultfd
//! with an open descriptor anywhere never resolves faults by itself). Sessions whose VMM has
//! exited are dropped.
//!
//! Under systemd (`NOTIFY_SOCKET` and `INVOCATION_ID` set) every kept session's descriptors
//! also go to the service's file-descriptor store (`FDSTORE=1`, named `s.<session>.<n>`; the
//! unit sets `FileDescriptorStoreMax=`), and its description to
//! `<state-dir>/kept/<session>.json`. If the
//! keeper itself dies, systemd restarts the service and passes the stored descriptors back
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`): the new keeper rebuilds every session from them and its
//! pager adopts them, so the VMs survive even that. An ended session is removed from the store
//! (`FDSTOREREMOVE=1`).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use platform_primitives::creds::pidfd_pid;
use platform_primitives::notify::{SelfNotify, take_listen_fds};
use platform_primitives::signals::SignalSet;
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
    /// The service manager's descriptor store, under systemd.
    store: Option<FdStore>,
}

/// systemd's file-descriptor store for the kept sessions, and the descriptions beside it.
struct FdStore {
    notify: SelfNotify,
    /// `<state-dir>/kept`: one `<session>.json` per stored session.
    dir: PathBuf,
}

impl FdStore {
    fn names(id: &str, count: usize) -> impl Iterator<Item = String> + '_ {
        (0..count).map(move |n| format!("s.{id}.{n}"))
    }

    /// Stores a session's descriptors (one message each: a name covers every descriptor of
    /// its message) after writing its description.
    fn keep(&self, id: &str, kept: &Kept) {
        if !self.describe(id, kept) {
            return;
        }
        for (name, fd) in Self::names(id, kept.fds.len()).zip(&kept.fds) {
            let message = format!("FDSTORE=1\nFDNAME={name}");
            if let Err(e) = self
                .notify
                .send_with_fds(&message, &[std::os::fd::AsFd::as_fd(fd)])
            {
                tracing::warn!(session = id, error = %e, "the descriptor store refused a descriptor");
            }
        }
    }

    /// Writes the session's description beside its stored descriptors (atomically).
    fn describe(&self, id: &str, kept: &Kept) -> bool {
        let path = self.dir.join(format!("{id}.json"));
        let aside = self.dir.join(format!(".{id}.json.new"));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&aside, kept.meta.to_string()))
            .and_then(|()| std::fs::rename(&aside, &path));
        if let Err(e) = &written {
            tracing::warn!(session = id, path = %path.display(), error = %e,
                "cannot record the session for the descriptor store; it will not survive a keeper restart");
        }
        written.is_ok()
    }

    fn forget(&self, id: &str, count: usize) {
        for name in Self::names(id, count) {
            let _ = self.notify.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
    }

    /// The sessions in descriptors systemd passed back, with their recorded descriptions.
    fn restore(&self, fds: Vec<(String, OwnedFd)>) -> BTreeMap<String, Kept> {
        let mut by_session: BTreeMap<String, BTreeMap<usize, OwnedFd>> = BTreeMap::new();
        for (name, fd) in fds {
            let parsed = name
                .strip_prefix("s.")
                .and_then(|rest| rest.rsplit_once('.'))
                .and_then(|(id, n)| Some((id.to_owned(), n.parse::<usize>().ok()?)));
            match parsed {
                Some((id, n)) => {
                    by_session.entry(id).or_default().insert(n, fd);
                }
                None => tracing::warn!(name, "a stored descriptor that is not a session's; closed"),
            }
        }
        let mut kept = BTreeMap::new();
        for (id, fds) in by_session {
            let path = self.dir.join(format!("{id}.json"));
            let meta = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let complete = fds.keys().copied().eq(0..fds.len()) && matches!(fds.len(), 1 | 3);
            match meta {
                Some(meta) if complete && meta["id"] == id.as_str() => {
                    tracing::info!(session = id, "restored from the descriptor store");
                    kept.insert(
                        id,
                        Kept {
                            meta,
                            fds: fds.into_values().collect(),
                        },
                    );
                }
                _ => {
                    tracing::warn!(session = id, path = %path.display(),
                        "stored descriptors without a usable description; dropped");
                    self.forget(&id, fds.len());
                }
            }
        }
        kept
    }
}

impl Keeper {
    pub(crate) fn bind(
        binary: PathBuf,
        args: Vec<String>,
        api_path: &std::path::Path,
        state_dir: &std::path::Path,
    ) -> Result<Self, String> {
        // Taken first: nothing else may own descriptors 3.. when they are claimed.
        let passed = take_listen_fds().map_err(|e| format!("cannot take LISTEN_FDS: {e}"))?;
        // The descriptor store is systemd's: another supervisor on NOTIFY_SOCKET (varta-watch,
        // say) would only be sent descriptors it closes, and would take the keeper for an agent
        // that then falls silent. systemd sets INVOCATION_ID for every unit it runs.
        let under_systemd = std::env::var_os("INVOCATION_ID").is_some_and(|id| !id.is_empty());
        let notify = if under_systemd {
            SelfNotify::from_env().transpose()
        } else {
            Ok(None)
        };
        let store = match notify {
            Ok(notify) => notify.map(|notify| FdStore {
                notify,
                dir: state_dir.join("kept"),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable; no descriptor store");
                None
            }
        };
        let kept = match &store {
            Some(store) => store.restore(passed),
            None => BTreeMap::new(),
        };
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
            kept,
            store,
        })
    }

    /// Runs the pager, restarting it whenever it ends, until the keeper is killed. With
    /// `restart_signal` (`--restart on-signal`), a pager that died is restarted only when one
    /// of those signals arrives (an upgrade restarts at once either way).
    pub(crate) fn run(mut self, restart_signal: Option<SignalSet>) -> Result<(), String> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            let (mut child, vault) = self.start()?;
            if let Some(signals) = &restart_signal {
                // A signal sent while a pager was running asks for nothing.
                while signals
                    .wait_timeout(Duration::ZERO)
                    .map_err(|e| e.to_string())?
                    .is_some()
                {}
            }
            let upgrade = self.serve(&mut child, &vault);
            let status = child.wait().map_err(|e| e.to_string())?;
            if upgrade {
                tracing::info!(%status, "pager exited for an upgrade; starting the new binary");
                backoff = Duration::from_millis(50);
                continue;
            }
            if let Some(signals) = &restart_signal {
                tracing::warn!(%status, sessions = self.kept.len(),
                    "pager exited; waiting for SIGUSR1 to start a new one");
                while signals
                    .wait_timeout(Duration::from_secs(60))
                    .map_err(|e| e.to_string())?
                    .is_none()
                {
                    tracing::warn!(
                        sessions = self.kept.len(),
                        "still no pager: their guests wait; send SIGUSR1 to start one"
                    );
                }
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
            // The descriptors systemd passed were the keeper's.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
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
        let store = &self.store;
        self.kept.retain(|id, k| {
            let live = k.meta["waiting"] == true
                || k.fds
                    .get(1)
                    .is_some_and(|p| matches!(pidfd_pid(p), Ok(Some(_))));
            if !live && let Some(store) = store {
                store.forget(id, k.fds.len());
            }
            live
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
                    let kept = Kept {
                        meta: meta.clone(),
                        fds: msg.fds,
                    };
                    if let Some(store) = &self.store {
                        if let Some(old) = self.kept.get(id) {
                            store.forget(id, old.fds.len());
                        }
                        store.keep(id, &kept);
                    }
                    self.kept.insert(id.to_owned(), kept);
                }
            }
            Some("forget") => {
                if let Some(id) = msg.body["id"].as_str()
                    && let Some(old) = self.kept.remove(id)
                    && let Some(store) = &self.store
                {
                    store.forget(id, old.fds.len());
                }
            }
            // A change to a kept session's description (a drain asked for).
            Some("note") => {
                if let (Some(id), Some(set)) =
                    (msg.body["id"].as_str(), msg.body["set"].as_object())
                    && let Some(kept) = self.kept.get_mut(id)
                {
                    for (key, value) in set {
                        kept.meta[key] = value.clone();
                    }
                    if let Some(store) = &self.store {
                        store.describe(id, kept);
                    }
                }
            }
            Some("upgrade") => return true,
            other => tracing::warn!(?other, "unknown message from the pager"),
        }
        false
    }
}
