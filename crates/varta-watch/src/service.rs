//! Services by name: which service an agent belongs to, and what to do about it.
//!
//! The kernel attests a pid; an operator thinks in services. When an agent registers, its
//! identity is read from `/proc/<pid>/comm` (the command name) and `/proc/<pid>/cgroup` (its
//! control group, and from that its systemd unit: the deepest `*.service` or `*.scope`
//! component of the path). [`ServiceRule`]s — from the daemon's config file — match agents by
//! unit, cgroup path prefix or command name, and give each service its own stall threshold,
//! hooks, and a signal sent through the agent's pidfd when it stalls (like systemd's
//! `WatchdogSignal=`), with flap control: at most [`SignalPolicy::limit`] signals per
//! [`SignalPolicy::window`] per service.
//!
//! The parsing here is portable (and unit-tested on real-format samples); only
//! [`Identity::of_process`] reads `/proc`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What is known of an agent's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The command name (`/proc/<pid>/comm`, at most 15 bytes).
    pub comm: Option<String>,
    /// The control group path (the unified hierarchy's, else systemd's named v1 hierarchy's).
    pub cgroup: Option<String>,
    /// The systemd unit, from the control group path.
    pub unit: Option<String>,
}

impl Identity {
    /// Reads the identity of process `pid` from `/proc`. What cannot be read stays `None`
    /// (the process may already be gone).
    pub fn of_process(pid: u32) -> Identity {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|c| c.trim_end_matches('\n').to_owned())
            .filter(|c| !c.is_empty());
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|text| cgroup_path(&text));
        Identity::new(comm, cgroup)
    }

    /// An identity from a command name and a cgroup path (the unit is derived from the path).
    pub fn new(comm: Option<String>, cgroup: Option<String>) -> Identity {
        let unit = cgroup
            .as_deref()
            .and_then(unit_of_cgroup)
            .map(str::to_owned);
        Identity { comm, cgroup, unit }
    }
}

/// The control group path in the text of `/proc/<pid>/cgroup`.
///
/// Each line is `hierarchy-id:controllers:path`. The unified (v2) hierarchy's line,
/// `0::/system.slice/foo.service`, is preferred; on a v1 or hybrid system without one,
/// systemd's own named hierarchy (`1:name=systemd:/system.slice/foo.service`); else the first
/// line with a path.
pub fn cgroup_path(text: &str) -> Option<String> {
    let mut named_systemd = None;
    let mut first = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            // A v1-only system may still list an empty unified line ("0::/"): keep looking
            // for a more telling one.
            if path != "/" {
                return Some(path.to_owned());
            }
            first.get_or_insert(path);
            continue;
        }
        if controllers.split(',').any(|c| c == "name=systemd") {
            named_systemd = Some(path);
        }
        if first.is_none() || first == Some("/") {
            first = Some(path);
        }
    }
    named_systemd.or(first).map(str::to_owned)
}

/// The systemd unit a control group belongs to: the deepest path component ending in
/// `.service` or `.scope` (`/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service`
/// is `foo.service`; a delegated subgroup `/system.slice/foo.service/worker` is `foo.service`).
pub fn unit_of_cgroup(path: &str) -> Option<&str> {
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
}

/// Which agents a rule covers. Every criterion given must hold; a rule with none matches
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    /// The systemd unit, exactly (`nginx.service`).
    pub unit: Option<String>,
    /// A control group path prefix, whole components (`/system.slice/nginx.service` covers
    /// `/system.slice/nginx.service/worker`, not `/system.slice/nginx.service2`).
    pub cgroup: Option<String>,
    /// The command name, exactly as `/proc/<pid>/comm` has it (at most 15 bytes).
    pub command: Option<String>,
}

impl Matcher {
    /// Whether the identity satisfies every criterion given.
    pub fn matches(&self, id: &Identity) -> bool {
        if self.unit.is_none() && self.cgroup.is_none() && self.command.is_none() {
            return false;
        }
        let unit_ok = self
            .unit
            .as_ref()
            .is_none_or(|u| id.unit.as_ref() == Some(u));
        let command_ok = self
            .command
            .as_ref()
            .is_none_or(|c| id.comm.as_ref() == Some(c));
        let cgroup_ok = self.cgroup.as_ref().is_none_or(|prefix| {
            let prefix = prefix.trim_end_matches('/');
            id.cgroup.as_deref().is_some_and(|path| {
                prefix.is_empty()
                    || path == prefix
                    || path
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        });
        unit_ok && command_ok && cgroup_ok
    }
}

/// A signal sent to a stalled agent through its pidfd, with flap control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalPolicy {
    /// The signal number (`libc::SIGUSR1`, …).
    pub signal: i32,
    /// At most this many signals per [`SignalPolicy::window`] per service.
    pub limit: u32,
    /// The flap-control window.
    pub window: Duration,
}

/// One service: a name, which agents it covers, and what applies to them.
#[derive(Debug, Clone, Default)]
pub struct ServiceRule {
    /// The name metrics, events and hooks (`VARTA_SERVICE`) call it by.
    pub name: String,
    /// Which agents it covers.
    pub matcher: Matcher,
    /// Its stall threshold (an agent's own `WATCHDOG_USEC=` still wins).
    pub threshold: Option<Duration>,
    /// Its hooks, instead of the global ones for the events they name.
    pub hooks: crate::hook::Hooks,
    /// The signal sent on a stall.
    pub signal: Option<SignalPolicy>,
}

/// What an agent is labelled with.
#[derive(Debug, Clone, Default)]
pub struct Label {
    /// The matching rule's index, if a rule matched.
    pub rule: Option<usize>,
    /// The service name: the rule's, else the unit, else the command name, else `unknown`.
    pub service: String,
    /// What its process was found to be.
    pub identity: Identity,
}

/// Per-service counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Stalls of its agents.
    pub stalls: u64,
    /// Signals sent to its stalled agents.
    pub signals: u64,
    /// Signals not sent: flap control.
    pub signals_limited: u64,
    /// Signals that failed (the agent exited, or no pidfd).
    pub signals_failed: u64,
}

/// The decision on a stalled agent's signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalDecision {
    /// No signal configured for its service.
    None,
    /// Send this signal.
    Send(i32),
    /// Flap control: the service had its share of signals in the window.
    Limited(i32),
}

/// The service rules and every agent's label.
#[derive(Debug, Default)]
pub struct Services {
    rules: Vec<ServiceRule>,
    counters: Vec<ServiceCounters>,
    sent: Vec<VecDeque<Instant>>,
    labels: HashMap<u32, Label>,
}

impl Services {
    /// A table for `rules` (the first rule that matches an agent wins).
    pub fn new(rules: Vec<ServiceRule>) -> Services {
        Services {
            counters: vec![ServiceCounters::default(); rules.len()],
            sent: vec![VecDeque::new(); rules.len()],
            rules,
            labels: HashMap::new(),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[ServiceRule] {
        &self.rules
    }

    /// Labels agent `pid` from its identity and returns its rule, if one matched.
    pub fn classify(&mut self, pid: u32, identity: Identity) -> Option<&ServiceRule> {
        let rule = self.rules.iter().position(|r| r.matcher.matches(&identity));
        let service = match rule {
            Some(i) => self.rules[i].name.clone(),
            None => identity
                .unit
                .clone()
                .or_else(|| identity.comm.clone())
                .unwrap_or_else(|| "unknown".to_owned()),
        };
        self.labels.insert(
            pid,
            Label {
                rule,
                service,
                identity,
            },
        );
        rule.map(|i| &self.rules[i])
    }

    /// Agent `pid`'s label, if it was classified.
    pub fn label(&self, pid: u32) -> Option<&Label> {
        self.labels.get(&pid)
    }

    /// Agent `pid`'s rule, if one matched.
    pub fn rule_of(&self, pid: u32) -> Option<&ServiceRule> {
        self.labels
            .get(&pid)
            .and_then(|l| l.rule)
            .map(|i| &self.rules[i])
    }

    /// Forgets agent `pid` (it exited or was evicted).
    pub fn forget(&mut self, pid: u32) {
        self.labels.remove(&pid);
    }

    /// Counts a stall of `pid` and decides on its signal (flap control counts it as sent).
    pub fn on_stall(&mut self, pid: u32, now: Instant) -> SignalDecision {
        let Some(i) = self.labels.get(&pid).and_then(|l| l.rule) else {
            return SignalDecision::None;
        };
        self.counters[i].stalls += 1;
        let Some(policy) = self.rules[i].signal else {
            return SignalDecision::None;
        };
        let sent = &mut self.sent[i];
        while sent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= policy.window)
        {
            sent.pop_front();
        }
        if sent.len() >= policy.limit as usize {
            self.counters[i].signals_limited += 1;
            return SignalDecision::Limited(policy.signal);
        }
        sent.push_back(now);
        SignalDecision::Send(policy.signal)
    }

    /// Records the outcome of a signal decided by [`Services::on_stall`].
    pub fn signal_result(&mut self, pid: u32, sent: bool) {
        if let Some(i) = self.labels.get(&pid).and_then(|l| l.rule) {
            if sent {
                self.counters[i].signals += 1;
            } else {
                self.counters[i].signals_failed += 1;
            }
        }
    }

    /// Each rule's name and counters, in rule order.
    pub fn counters(&self) -> impl Iterator<Item = (&str, &ServiceCounters)> {
        self.rules
            .iter()
            .map(|r| r.name.as_str())
            .zip(self.counters.iter())
    }

    /// How many tracked agents each service name has.
    pub fn agents_per_service(&self) -> Vec<(&str, usize)> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for label in self.labels.values() {
            *counts.entry(label.service.as_str()).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort();
        counts
    }
}

/// A signal's number from its name (`SIGUSR1`, `USR1`, `sigusr1`) or number (`10`).
pub fn signal_from_name(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, number)| *number)
}

/// A signal's name (`SIGUSR1`), or its number as text.
pub fn signal_name(signal: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, n)| *n == signal)
        .map_or_else(|| signal.to_string(), |(name, _)| format!("SIG{name}"))
}

const SIGNALS: [(&str, i32); 14] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A pure cgroup v2 system (systemd ≥ 247 defaults): one `0::` line.
    #[test]
    fn unified_hierarchy_names_the_service() {
        let text = "0::/system.slice/nginx.service\n";
        assert_eq!(
            cgroup_path(text).as_deref(),
            Some("/system.slice/nginx.service")
        );
        let id = Identity::new(Some("nginx".into()), cgroup_path(text));
        assert_eq!(id.unit.as_deref(), Some("nginx.service"));
    }

    /// A user service under the user manager, and a delegated subgroup of a service.
    #[test]
    fn nested_units_resolve_to_the_deepest_unit() {
        assert_eq!(
            unit_of_cgroup("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
            Some("foo.service")
        );
        assert_eq!(
            unit_of_cgroup("/system.slice/foo.service/worker"),
            Some("foo.service")
        );
        assert_eq!(
            unit_of_cgroup("/user.slice/user-1000.slice/session-3.scope"),
            Some("session-3.scope")
        );
        assert_eq!(unit_of_cgroup("/"), None);
        assert_eq!(unit_of_cgroup("/docker/0123abcd"), None);
    }

    /// A hybrid system (cgroup v1 controllers, systemd's named hierarchy, an empty unified
    /// line), as `/proc/self/cgroup` shows it on such hosts.
    #[test]
    fn hybrid_hierarchy_uses_systemds_named_hierarchy() {
        let text = "\
12:pids:/system.slice/sshd.service
11:memory:/system.slice/sshd.service
10:cpu,cpuacct:/system.slice/sshd.service
4:devices:/system.slice/sshd.service
1:name=systemd:/system.slice/sshd.service
0::/
";
        assert_eq!(
            cgroup_path(text).as_deref(),
            Some("/system.slice/sshd.service")
        );
        // A hybrid host whose unified hierarchy is populated prefers it.
        let text = "1:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n";
        assert_eq!(
            cgroup_path(text).as_deref(),
            Some("/system.slice/a.service")
        );
    }

    /// A v1-only system without systemd (a container): the first path is all there is.
    #[test]
    fn v1_without_systemd_takes_the_first_path() {
        let text = "5:cpuset:/docker/0123abcd\n4:memory:/docker/0123abcd\n";
        assert_eq!(cgroup_path(text).as_deref(), Some("/docker/0123abcd"));
        assert_eq!(cgroup_path("").as_deref(), None);
        assert_eq!(cgroup_path("garbage\n").as_deref(), None);
    }

    /// This process's own cgroup file parses, whatever this machine runs.
    #[test]
    fn own_cgroup_file_parses() {
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let path = cgroup_path(&text).expect("a cgroup path");
        assert!(path.starts_with('/'), "{path}");
        let id = Identity::of_process(std::process::id());
        assert_eq!(id.cgroup.as_deref(), Some(path.as_str()));
        assert!(id.comm.is_some());
    }

    #[test]
    fn matchers_need_every_criterion_and_whole_cgroup_components() {
        let id = Identity::new(
            Some("nginx".into()),
            Some("/system.slice/nginx.service/worker".into()),
        );
        let m = |unit: Option<&str>, cgroup: Option<&str>, command: Option<&str>| Matcher {
            unit: unit.map(Into::into),
            cgroup: cgroup.map(Into::into),
            command: command.map(Into::into),
        };
        assert!(m(Some("nginx.service"), None, None).matches(&id));
        assert!(m(None, Some("/system.slice/nginx.service"), None).matches(&id));
        assert!(m(None, Some("/system.slice/"), Some("nginx")).matches(&id));
        assert!(!m(None, Some("/system.slice/nginx.serv"), None).matches(&id));
        assert!(!m(Some("nginx.service"), None, Some("httpd")).matches(&id));
        assert!(!m(None, None, None).matches(&id));
    }

    #[test]
    fn flap_control_limits_signals_per_window() {
        let mut services = Services::new(vec![ServiceRule {
            name: "web".into(),
            matcher: Matcher {
                command: Some("web".into()),
                ..Matcher::default()
            },
            signal: Some(SignalPolicy {
                signal: libc::SIGUSR1,
                limit: 2,
                window: Duration::from_secs(10),
            }),
            ..ServiceRule::default()
        }]);
        let web = Identity::new(Some("web".into()), None);
        for pid in 1..=3 {
            assert!(services.classify(pid, web.clone()).is_some());
        }
        assert!(
            services
                .classify(4, Identity::new(Some("db".into()), None))
                .is_none()
        );
        assert_eq!(services.label(4).map(|l| l.service.as_str()), Some("db"));
        let t0 = Instant::now();
        assert_eq!(
            services.on_stall(1, t0),
            SignalDecision::Send(libc::SIGUSR1)
        );
        assert_eq!(
            services.on_stall(2, t0),
            SignalDecision::Send(libc::SIGUSR1)
        );
        assert_eq!(
            services.on_stall(3, t0),
            SignalDecision::Limited(libc::SIGUSR1)
        );
        assert_eq!(services.on_stall(4, t0), SignalDecision::None);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            services.on_stall(3, later),
            SignalDecision::Send(libc::SIGUSR1)
        );
        let (_, c) = services.counters().next().expect("web");
        assert_eq!((c.stalls, c.signals_limited), (4, 1));
    }

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(signal_from_name("SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(signal_from_name("usr2"), Some(libc::SIGUSR2));
        assert_eq!(signal_from_name("9"), Some(libc::SIGKILL));
        assert_eq!(signal_from_name("SIGBOGUS"), None);
        assert_eq!(signal_from_name("0"), None);
        assert_eq!(signal_name(libc::SIGABRT), "SIGABRT");
    }
}
