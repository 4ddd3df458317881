//! A running `squib-host serve` (squib-host's pager service) for the suites that use it:
//! start it, call its control API, and kill it (keeper and pager) when done.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::firecracker::http;

/// A running service (the keeper and its pager); killed when dropped.
#[derive(Debug)]
pub struct Service {
    keeper: Child,
    /// The control API's socket.
    pub api: PathBuf,
}

impl Service {
    /// Starts `binary serve` with its API and state under `root/name` and waits (10 s at
    /// most) until the API answers.
    ///
    /// # Errors
    ///
    /// The spawn failure, or an API that did not answer in time.
    pub fn start(binary: impl AsRef<OsStr>, root: &Path, name: &str) -> Result<Self, String> {
        Self::start_with_env(binary, root, name, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub fn start_with_env(
        binary: impl AsRef<OsStr>,
        root: &Path,
        name: &str,
        env: &[(&str, &Path)],
    ) -> Result<Self, String> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let api = dir.join("api.sock");
        let keeper = Command::new(binary)
            .arg("serve")
            .arg("--api")
            .arg(&api)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let service = Self { keeper, api };
        service.wait_up(Duration::from_secs(10))?;
        Ok(service)
    }

    /// A service started by the caller (`keeper` runs `squib-host serve --api API …`), waited
    /// for as [`start`](Self::start) does; killed when dropped.
    ///
    /// # Errors
    ///
    /// An API that did not answer within 10 s.
    pub fn from_child(keeper: Child, api: PathBuf) -> Result<Self, String> {
        let service = Self { keeper, api };
        service.wait_up(Duration::from_secs(10))?;
        Ok(service)
    }

    /// The keeper's (the main process's) pid.
    pub fn keeper_pid(&self) -> u32 {
        self.keeper.id()
    }

    /// Waits until the API answers; returns the pager process's pid.
    ///
    /// # Errors
    ///
    /// No answer within `limit`, or an answer without the pid.
    pub fn wait_up(&self, limit: Duration) -> Result<u32, String> {
        let start = Instant::now();
        loop {
            if let Ok((200, body)) = self.call("GET", "/", "") {
                let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                return v["pid"]
                    .as_u64()
                    .map(|p| p as u32)
                    .ok_or(format!("no pid in {body}"));
            }
            if start.elapsed() > limit {
                return Err(format!("the service did not answer within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request to the control API: the status code and the body.
    ///
    /// # Errors
    ///
    /// Connection or protocol failures (10 s deadline).
    pub fn call(&self, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
        http(&self.api, method, path, body, Duration::from_secs(10))
    }

    /// Bytes the current pager process has read from storage (page-cache hits not counted).
    ///
    /// # Errors
    ///
    /// The API did not answer or gave no figure.
    pub fn storage_read_bytes(&self) -> Result<u64, String> {
        self.ok("GET", "/", "")?["storage_read_bytes"]
            .as_u64()
            .ok_or_else(|| "the service reported no storage_read_bytes".to_owned())
    }

    /// A request that must succeed (2xx): its JSON body (`Null` when empty).
    ///
    /// # Errors
    ///
    /// The failure, or the status and body of a refusal.
    pub fn ok(&self, method: &str, path: &str, body: &str) -> Result<Value, String> {
        match self.call(method, path, body)? {
            (200..=299, text) if text.is_empty() => Ok(Value::Null),
            (200..=299, text) => serde_json::from_str(&text).map_err(|e| e.to_string()),
            (code, text) => Err(format!("{method} {path}: {code} {text}")),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok((200, body)) = self.call("GET", "/", "")
            && let Ok(v) = serde_json::from_str::<Value>(&body)
            && let Some(pid) = v["pid"].as_u64()
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.keeper.kill();
        let _ = self.keeper.wait();
    }
}
