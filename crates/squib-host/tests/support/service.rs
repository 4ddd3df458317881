//! A running `squib-host serve` for the service tests and benches: start it, call its API,
//! and kill it (keeper and pager) when done.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use workspace_tests::firecracker::http;

/// A running service (the keeper and its pager); killed when dropped.
pub(crate) struct Service {
    keeper: Child,
    pub(crate) api: PathBuf,
}

impl Service {
    /// Starts `binary serve` with its API and state under `root/name`.
    pub(crate) fn start(binary: &str, root: &Path, name: &str) -> Result<Self, String> {
        Self::start_with_env(binary, root, name, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    pub(crate) fn start_with_env(
        binary: &str,
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

    /// Waits until the API answers; returns the pager process's pid.
    pub(crate) fn wait_up(&self, limit: Duration) -> Result<u32, String> {
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

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        http(&self.api, method, path, body, Duration::from_secs(10))
    }

    pub(crate) fn ok(&self, method: &str, path: &str, body: &str) -> Result<Value, String> {
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
