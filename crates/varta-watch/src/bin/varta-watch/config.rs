//! The daemon's optional config file (`--config`, TOML): services by name, each with its own
//! threshold, hooks and stall signal.
//!
//! ```toml
//! [[service]]
//! name = "web"                  # the label in events, metrics and $VARTA_SERVICE
//! unit = "nginx.service"        # match: systemd unit, cgroup path prefix and/or command
//! # cgroup = "/system.slice/nginx.service"
//! # command = "nginx"          # /proc/<pid>/comm, at most 15 bytes
//! threshold = "10s"             # instead of --threshold (WATCHDOG_USEC= still wins)
//! on_stall = "logger web stalled"   # instead of --on-stall (also on_exit, on_critical)
//! signal = "SIGABRT"            # sent through the pidfd when an agent stalls
//! signal_limit = 3              # at most 3 signals ...
//! signal_window = "10m"         # ... per 10 minutes for the whole service (flap control)
//! ```
//!
//! The first service that matches an agent wins. Every error names the file and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use varta_watch::daemon::Hooks;
use varta_watch::service::{Matcher, ServiceRule, SignalPolicy, signal_from_name};

use crate::linux::{parse_duration, parse_positive_duration};

/// Signals per window when `signal_limit` is not given.
const DEFAULT_SIGNAL_LIMIT: u32 = 3;
/// The flap-control window when `signal_window` is not given.
const DEFAULT_SIGNAL_WINDOW: Duration = Duration::from_secs(600);
/// The longest command name the kernel keeps (`TASK_COMM_LEN` - 1).
const COMM_MAX: usize = 15;

const SERVICE_KEYS: [&str; 11] = [
    "name",
    "unit",
    "cgroup",
    "command",
    "threshold",
    "on_stall",
    "on_exit",
    "on_critical",
    "signal",
    "signal_limit",
    "signal_window",
];

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("the config file {} is not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key is unknown, missing or has a value that cannot work.
    #[error("the config file {}: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which key, and what is wrong with it.
        what: String,
    },
}

/// Reads the service rules from `path`.
pub(crate) fn load(path: &Path) -> Result<Vec<ServiceRule>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        Parse::Syntax(message) => ConfigError::Syntax {
            path: path.to_owned(),
            message,
        },
        Parse::Invalid(what) => ConfigError::Invalid {
            path: path.to_owned(),
            what,
        },
    })
}

enum Parse {
    Syntax(String),
    Invalid(String),
}

fn parse(text: &str) -> Result<Vec<ServiceRule>, Parse> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| Parse::Syntax(e.to_string().trim_end().to_owned()))?;
    if let Some(key) = table.keys().find(|k| *k != "service") {
        return Err(Parse::Invalid(format!(
            "unknown key '{key}' (the file holds [[service]] tables)"
        )));
    }
    let Some(services) = table.get("service") else {
        return Ok(Vec::new());
    };
    let services = services.as_array().ok_or_else(|| {
        Parse::Invalid("'service' must be an array of tables: write [[service]]".into())
    })?;
    let mut rules: Vec<ServiceRule> = Vec::with_capacity(services.len());
    for (i, service) in services.iter().enumerate() {
        let table = service.as_table().ok_or_else(|| {
            Parse::Invalid(format!("service #{}: must be a table ([[service]])", i + 1))
        })?;
        let rule = parse_service(table).map_err(|what| {
            let who = match table.get("name").and_then(toml::Value::as_str) {
                Some(name) => format!("service #{} ('{name}')", i + 1),
                None => format!("service #{}", i + 1),
            };
            Parse::Invalid(format!("{who}: {what}"))
        })?;
        if rules.iter().any(|r| r.name == rule.name) {
            return Err(Parse::Invalid(format!(
                "service #{}: name '{}' is used by an earlier service",
                i + 1,
                rule.name
            )));
        }
        rules.push(rule);
    }
    Ok(rules)
}

fn parse_service(table: &toml::Table) -> Result<ServiceRule, String> {
    if let Some(key) = table.keys().find(|k| !SERVICE_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key '{key}' (known: {})",
            SERVICE_KEYS.join(", ")
        ));
    }
    let name = string(table, "name")?.ok_or("missing key 'name'")?;
    if name.is_empty() {
        return Err("'name' is empty".into());
    }
    let matcher = Matcher {
        unit: string(table, "unit")?,
        cgroup: string(table, "cgroup")?,
        command: string(table, "command")?,
    };
    if matcher.unit.is_none() && matcher.cgroup.is_none() && matcher.command.is_none() {
        return Err("give at least one of unit, cgroup or command to match agents by".into());
    }
    if let Some(command) = &matcher.command
        && command.len() > COMM_MAX
    {
        return Err(format!(
            "command '{command}' is longer than the {COMM_MAX} bytes the kernel keeps of a \
             command name (/proc/PID/comm) and would never match; use its first {COMM_MAX}"
        ));
    }
    if let Some(cgroup) = &matcher.cgroup
        && !cgroup.starts_with('/')
    {
        return Err(format!(
            "cgroup '{cgroup}' must be an absolute path like /system.slice/foo.service"
        ));
    }
    let threshold = duration(table, "threshold", true)?;
    let hooks = Hooks {
        on_stall: string(table, "on_stall")?,
        on_exit: string(table, "on_exit")?,
        on_critical: string(table, "on_critical")?,
    };
    let signal = match string(table, "signal")? {
        None => {
            for key in ["signal_limit", "signal_window"] {
                if table.contains_key(key) {
                    return Err(format!("'{key}' needs 'signal'"));
                }
            }
            None
        }
        Some(name) => {
            let signal = signal_from_name(&name).ok_or_else(|| {
                format!("signal '{name}' is not a signal name like SIGUSR1 or SIGABRT")
            })?;
            let limit = match table.get("signal_limit") {
                None => DEFAULT_SIGNAL_LIMIT,
                Some(v) => v
                    .as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| {
                        let got = v
                            .as_integer()
                            .map_or_else(|| format!("a {}", v.type_str()), |n| n.to_string());
                        format!(
                            "signal_limit must be a whole number of signals, at least 1 (got {got})"
                        )
                    })?,
            };
            let window = duration(table, "signal_window", true)?.unwrap_or(DEFAULT_SIGNAL_WINDOW);
            Some(SignalPolicy {
                signal,
                limit,
                window,
            })
        }
    };
    Ok(ServiceRule {
        name,
        matcher,
        threshold,
        hooks,
        signal,
    })
}

fn string(table: &toml::Table, key: &str) -> Result<Option<String>, String> {
    match table.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "'{key}' must be a string, not a {}",
            other.type_str()
        )),
    }
}

fn duration(table: &toml::Table, key: &str, positive: bool) -> Result<Option<Duration>, String> {
    let Some(text) = string(table, key)? else {
        return Ok(None);
    };
    let parsed = if positive {
        parse_positive_duration(&text)
    } else {
        parse_duration(&text)
    };
    parsed.map(Some).map_err(|e| format!("{key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_service_parses() {
        let rules = match parse(
            r#"
[[service]]
name = "web"
unit = "nginx.service"
cgroup = "/system.slice/nginx.service"
command = "nginx"
threshold = "10s"
on_stall = "logger stalled"
signal = "SIGABRT"
signal_limit = 2
signal_window = "5m"

[[service]]
name = "db"
command = "postgres"
"#,
        ) {
            Ok(rules) => rules,
            Err(Parse::Syntax(e) | Parse::Invalid(e)) => panic!("{e}"),
        };
        assert_eq!(rules.len(), 2);
        let web = &rules[0];
        assert_eq!(web.threshold, Some(Duration::from_secs(10)));
        assert_eq!(
            web.signal,
            Some(SignalPolicy {
                signal: libc::SIGABRT,
                limit: 2,
                window: Duration::from_secs(300)
            })
        );
        assert_eq!(web.hooks.on_stall.as_deref(), Some("logger stalled"));
        assert_eq!(rules[1].signal, None);
        assert_eq!(rules[1].threshold, None);
    }
}
