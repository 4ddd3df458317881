//! The unit files shipped in `systemd/`: they carry what running under systemd needs, and
//! `systemd-analyze verify` accepts them without a warning (where the tool exists; systemd
//! need not be PID 1 for it).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{BIN, TempDir, output_within, skip, which};

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
/// Where the shipped service expects the binary; the test points it at the one just built.
const INSTALLED_BIN: &str = "/usr/local/bin/varta-watch";

fn unit(name: &str) -> String {
    let path = Path::new(UNITS).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The settings the README's how-to relies on.
#[test]
fn unit_files_carry_notify_watchdog_runtime_dir_limits_and_credentials() {
    let service = unit("varta-watch.service");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "RuntimeDirectory=varta-watch",
        "RuntimeDirectoryPreserve=yes",
        "LimitNOFILE=",
        "Requires=varta-watch.socket",
    ] {
        assert!(
            service.lines().any(|l| l.starts_with(line)),
            "varta-watch.service lacks {line}"
        );
    }
    assert!(
        service.contains(INSTALLED_BIN),
        "ExecStart runs {INSTALLED_BIN}"
    );
    let socket = unit("varta-watch.socket");
    for line in [
        "ListenDatagram=/run/varta-watch/observer.sock",
        "PassCredentials=yes",
    ] {
        assert!(
            socket.lines().any(|l| l.starts_with(line)),
            "varta-watch.socket lacks {line}"
        );
    }
    assert!(
        service.contains("--socket /run/varta-watch/observer.sock"),
        "the service names the socket unit's path"
    );
}

/// `systemd-analyze verify` on copies of both units whose ExecStart runs the binary just
/// built: no error, and no warning about either file (unknown keys are only warnings).
#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let Some(analyze) = which("systemd-analyze") else {
        return skip("systemd-analyze verify", "systemd-analyze is not installed");
    };
    let dir = TempDir::new("units");
    for name in ["varta-watch.service", "varta-watch.socket"] {
        let text = unit(name).replace(INSTALLED_BIN, BIN);
        std::fs::write(dir.join(name), text).expect("copy unit");
    }
    let out = output_within(
        Command::new(analyze)
            .arg("verify")
            .arg(dir.join("varta-watch.socket"))
            .arg(dir.join("varta-watch.service")),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {err}");
    let about_ours: Vec<&str> = err.lines().filter(|l| l.contains("varta-watch")).collect();
    assert!(about_ours.is_empty(), "warnings: {about_ours:#?}");
}
