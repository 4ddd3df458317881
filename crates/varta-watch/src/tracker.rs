//! The agent table and its deadlines: pure policy, no I/O, driven by explicit timestamps.
//!
//! Each heartbeat costs O(1): a hash lookup and a few field updates that move the agent's
//! deadline forward. Deadlines live in a min-heap that is corrected lazily: an entry is only
//! looked at when it comes due, and if the agent has spoken since, it is re-queued at its new
//! deadline. So the heap holds about one entry per agent, a stall is found the moment its
//! deadline passes (no scan of all agents per poll), and an agent that beats a thousand times
//! per timeout costs one heap operation per timeout, not a thousand.
//!
//! An agent's silence limit is, in order of precedence: its own `WATCHDOG_USEC=`, else
//! `missed_beats` × its observed beat interval (when configured and learned), capped by the
//! global timeout, else the global timeout. A new agent gets `startup_grace` on top of its
//! first deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use crate::event::{CriticalReason, Event, Protocol};
use crate::notify::{Notification, Watchdog};
use crate::vlp::{Frame, Status, TERMINAL_NONCE};

/// Which agents may be dropped when the table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvictionPolicy {
    /// Only agents stalled for more than ten times their limit.
    #[default]
    Strict,
    /// Any stalled agent, the longest silent first.
    Balanced,
}

/// A per-sender token bucket: `rate` datagrams per second, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained datagrams per second.
    pub rate: f64,
    /// Largest burst.
    pub burst: f64,
}

/// Tracking policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerConfig {
    /// Silence after which an agent is stalled, unless it set its own.
    pub timeout: Duration,
    /// Extra allowance on a new agent's first deadline.
    pub startup_grace: Duration,
    /// Stall after this many missed beats of the agent's learned interval (capped by
    /// `timeout`), once at least three intervals have been seen.
    pub missed_beats: Option<u32>,
    /// Most agents tracked at once.
    pub capacity: usize,
    /// Who may be dropped when full.
    pub eviction: EvictionPolicy,
    /// Per-agent rate limit (Critical and terminal datagrams are never limited).
    pub per_agent_limit: Option<RateLimit>,
}

impl Default for TrackerConfig {
    /// 5 s timeout, no grace, 256 agents, strict eviction, 100 datagrams/s per agent.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            startup_grace: Duration::ZERO,
            missed_beats: None,
            capacity: 256,
            eviction: EvictionPolicy::Strict,
            per_agent_limit: Some(RateLimit {
                rate: 100.0,
                burst: 200.0,
            }),
        }
    }
}

/// The kernel-attested identity of a datagram's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
}

/// Where an agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Seen, no `READY=1` yet (VLP agents stay here: VLP has no readiness).
    Starting,
    /// `READY=1` received.
    Ready,
    /// `RELOADING=1` received.
    Reloading,
    /// `STOPPING=1` received: not watched for stalls any more.
    Stopping,
}

impl Phase {
    /// The lowercase name used in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Reloading => "reloading",
            Self::Stopping => "stopping",
        }
    }
}

/// What the observer knows about one agent.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Kernel-attested pid.
    pub pid: u32,
    /// Kernel-attested uid.
    pub uid: u32,
    /// How it talks.
    pub protocol: Protocol,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Last reported health.
    pub health: Status,
    /// Latest `STATUS=` text.
    pub status_text: Option<String>,
    /// Heartbeats accepted.
    pub beats: u64,
    /// Datagrams dropped by its rate limit.
    pub rate_limited: u64,
    /// When it first spoke.
    pub first_seen: Duration,
    /// When it last spoke.
    pub last_seen: Duration,
    /// Since when it is stalled, if it is.
    pub stalled_since: Option<Duration>,
    own_timeout: Option<Duration>,
    deadline: Duration,
    queued_at: Option<Duration>,
    interval: Option<Duration>,
    intervals_seen: u32,
    last_nonce: Option<u64>,
    tokens: f64,
    tokens_at: Duration,
}

impl Agent {
    /// Whether it is currently stalled.
    pub fn is_stalled(&self) -> bool {
        self.stalled_since.is_some()
    }

    /// Its current silence limit.
    pub fn limit(&self, config: &TrackerConfig) -> Duration {
        if let Some(own) = self.own_timeout {
            return own;
        }
        match (config.missed_beats, self.interval) {
            (Some(n), Some(interval)) if self.intervals_seen >= 3 => {
                interval.saturating_mul(n).min(config.timeout)
            }
            _ => config.timeout,
        }
    }
}

/// Counters of what the tracker decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackerCounters {
    /// Heartbeats accepted.
    pub beats: u64,
    /// Stalls declared.
    pub stalls: u64,
    /// Recoveries.
    pub recoveries: u64,
    /// Exits observed.
    pub exits: u64,
    /// Agents evicted to make room.
    pub evictions: u64,
    /// New agents refused because the table was full.
    pub rejections: u64,
    /// Datagrams dropped by per-agent rate limits.
    pub rate_limited: u64,
    /// VLP frames ignored for a nonce that did not advance (replays).
    pub stale_nonces: u64,
}

/// The agent table. See the [module docs](self).
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    agents: HashMap<u32, Agent>,
    deadlines: BinaryHeap<Reverse<(Duration, u32)>>,
    counters: TrackerCounters,
}

impl Tracker {
    /// An empty table.
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            agents: HashMap::with_capacity(config.capacity.min(1 << 16)),
            deadlines: BinaryHeap::new(),
            counters: TrackerCounters::default(),
            config,
        }
    }

    /// The policy in force.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// What was decided so far.
    pub fn counters(&self) -> &TrackerCounters {
        &self.counters
    }

    /// One agent.
    pub fn agent(&self, pid: u32) -> Option<&Agent> {
        self.agents.get(&pid)
    }

    /// Every agent, in no particular order.
    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    /// How many agents are tracked.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is tracked.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The earliest time at which [`expire`](Self::expire) may have something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// A VLP frame from `sender` (whose pid the caller has matched against the frame).
    /// Returns whether the agent is newly registered (so the caller can attach its pidfd).
    pub fn on_frame(
        &mut self,
        now: Duration,
        sender: Sender,
        frame: &Frame,
        events: &mut Vec<Event>,
    ) -> bool {
        let critical = frame.status == Status::Critical;
        let Some((agent, new)) = self.admit(now, sender, Protocol::Vlp, critical, events) else {
            return false;
        };
        if frame.is_terminal() {
            agent.health = Status::Critical;
            events.push(Event::Critical {
                pid: sender.pid,
                reason: CriticalReason::TerminalFrame,
            });
            return new;
        }
        if let Some(last) = agent.last_nonce {
            let advances = frame.nonce > last || (last == TERMINAL_NONCE - 1 && frame.nonce == 0);
            if !advances {
                self.counters.stale_nonces += 1;
                return new;
            }
        }
        agent.last_nonce = Some(frame.nonce);
        let was = agent.health;
        agent.health = frame.status;
        if critical && was != Status::Critical {
            events.push(Event::Critical {
                pid: sender.pid,
                reason: CriticalReason::Status,
            });
        }
        self.beat(now, sender.pid, Some(frame.status), events);
        new
    }

    /// An sd_notify message from `sender`. Returns whether the agent is newly registered.
    pub fn on_notify(
        &mut self,
        now: Duration,
        sender: Sender,
        n: &Notification,
        events: &mut Vec<Event>,
    ) -> bool {
        let trigger = n.watchdog == Some(Watchdog::Trigger);
        let Some((agent, new)) = self.admit(now, sender, Protocol::Notify, trigger, events) else {
            return false;
        };
        if let Some(text) = &n.status {
            agent.status_text = Some(text.clone());
        }
        if let Some(timeout) = n.watchdog_timeout {
            agent.own_timeout = Some(timeout);
        }
        if n.reloading {
            agent.phase = Phase::Reloading;
        }
        if n.ready {
            agent.phase = Phase::Ready;
            events.push(Event::Ready { pid: sender.pid });
        }
        if n.stopping {
            agent.phase = Phase::Stopping;
        }
        if trigger {
            agent.health = Status::Critical;
            events.push(Event::Critical {
                pid: sender.pid,
                reason: CriticalReason::WatchdogTrigger,
            });
        }
        // Any message proves the sender alive; only WATCHDOG=1 is reported as a beat.
        let ping = n.watchdog == Some(Watchdog::Ping);
        self.beat(now, sender.pid, ping.then_some(Status::Ok), events);
        if let (Some(extra), Some(agent)) = (n.extend_timeout, self.agents.get_mut(&sender.pid)) {
            // Later than the queued entry is fine: the entry re-queues itself when it comes due.
            agent.deadline = agent.deadline.max(now + extra);
        }
        new
    }

    /// The agent's process exited.
    pub fn on_exit(&mut self, now: Duration, pid: u32, events: &mut Vec<Event>) {
        if let Some(agent) = self.agents.remove(&pid) {
            self.counters.exits += 1;
            events.push(Event::Exited {
                pid,
                expected: agent.phase == Phase::Stopping,
                silent_for: now.saturating_sub(agent.last_seen),
            });
        }
    }

    /// Declares every agent whose deadline has passed as stalled.
    pub fn expire(&mut self, now: Duration, events: &mut Vec<Event>) {
        while let Some(&Reverse((at, pid))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(agent) = self.agents.get_mut(&pid) else {
                continue;
            };
            if agent.queued_at != Some(at) {
                continue; // superseded by a later entry for the same agent
            }
            agent.queued_at = None;
            if agent.is_stalled() || agent.phase == Phase::Stopping {
                continue;
            }
            if agent.deadline > now {
                agent.queued_at = Some(agent.deadline);
                self.deadlines.push(Reverse((agent.deadline, pid)));
                continue;
            }
            agent.stalled_since = Some(now);
            self.counters.stalls += 1;
            events.push(Event::Stalled {
                pid,
                silent_for: now.saturating_sub(agent.last_seen),
            });
        }
    }

    /// The machine was suspended for `suspended_for`: restart every deadline from `now`, so a
    /// resume does not make every agent look stalled. O(agents), once per resume.
    pub fn forgive_suspend(
        &mut self,
        now: Duration,
        suspended_for: Duration,
        events: &mut Vec<Event>,
    ) {
        for agent in self.agents.values_mut() {
            if !agent.is_stalled() {
                let limit = agent.limit(&self.config);
                agent.last_seen = agent.last_seen.max(now);
                agent.deadline = now + limit;
            }
        }
        events.push(Event::Resumed { suspended_for });
    }

    /// Finds or registers the sender's agent and applies its rate limit. `None` means drop
    /// the datagram (rate-limited or no room).
    fn admit(
        &mut self,
        now: Duration,
        sender: Sender,
        protocol: Protocol,
        urgent: bool,
        events: &mut Vec<Event>,
    ) -> Option<(&mut Agent, bool)> {
        let mut new = false;
        if !self.agents.contains_key(&sender.pid) {
            if self.agents.len() >= self.config.capacity && !self.make_room(now, events) {
                self.counters.rejections += 1;
                events.push(Event::Rejected { pid: sender.pid });
                return None;
            }
            let deadline = now + self.config.timeout + self.config.startup_grace;
            let burst = self.config.per_agent_limit.map_or(0.0, |l| l.burst);
            self.agents.insert(
                sender.pid,
                Agent {
                    pid: sender.pid,
                    uid: sender.uid,
                    protocol,
                    phase: Phase::Starting,
                    health: Status::Ok,
                    status_text: None,
                    beats: 0,
                    rate_limited: 0,
                    first_seen: now,
                    last_seen: now,
                    stalled_since: None,
                    own_timeout: None,
                    deadline,
                    queued_at: Some(deadline),
                    interval: None,
                    intervals_seen: 0,
                    last_nonce: None,
                    tokens: burst,
                    tokens_at: now,
                },
            );
            self.deadlines.push(Reverse((deadline, sender.pid)));
            events.push(Event::Registered {
                pid: sender.pid,
                uid: sender.uid,
                protocol,
            });
            new = true;
        }
        let agent = self.agents.get_mut(&sender.pid)?;
        if let (Some(limit), false) = (self.config.per_agent_limit, urgent) {
            let refill = now.saturating_sub(agent.tokens_at).as_secs_f64() * limit.rate;
            agent.tokens = (agent.tokens + refill).min(limit.burst);
            agent.tokens_at = now;
            if agent.tokens < 1.0 {
                agent.rate_limited += 1;
                self.counters.rate_limited += 1;
                return None;
            }
            agent.tokens -= 1.0;
        }
        Some((agent, new))
    }

    /// Records that the agent spoke: recovery, interval learning and the new deadline, plus a
    /// `Beat` event when `report` carries its status.
    fn beat(&mut self, now: Duration, pid: u32, report: Option<Status>, events: &mut Vec<Event>) {
        let Some(agent) = self.agents.get_mut(&pid) else {
            return;
        };
        let first = agent.beats == 0;
        if !first {
            let gap = now.saturating_sub(agent.last_seen);
            agent.interval = Some(match agent.interval {
                // An exponential average with weight 1/8 for the newest gap.
                Some(avg) => (avg * 7 + gap) / 8,
                None => gap,
            });
            agent.intervals_seen = agent.intervals_seen.saturating_add(1);
        }
        if agent.stalled_since.take().is_some() {
            self.counters.recoveries += 1;
            events.push(Event::Recovered {
                pid,
                silent_for: now.saturating_sub(agent.last_seen),
            });
        }
        agent.beats += 1;
        self.counters.beats += 1;
        agent.last_seen = now;
        let grace = if first {
            self.config.startup_grace
        } else {
            Duration::ZERO
        };
        agent.deadline = now + agent.limit(&self.config) + grace;
        // Queue an entry only if none is pending at or before the new deadline.
        match agent.queued_at {
            Some(at) if at <= agent.deadline => {}
            _ => {
                agent.queued_at = Some(agent.deadline);
                self.deadlines.push(Reverse((agent.deadline, pid)));
            }
        }
        if let Some(status) = report {
            events.push(Event::Beat { pid, status });
        }
    }

    /// Evicts one agent if the policy allows; returns whether room was made.
    fn make_room(&mut self, now: Duration, events: &mut Vec<Event>) -> bool {
        let config = &self.config;
        let victim = self
            .agents
            .values()
            .filter_map(|a| {
                let since = a.stalled_since?;
                let silent = now.saturating_sub(a.last_seen);
                let allowed = match config.eviction {
                    EvictionPolicy::Strict => silent > a.limit(config).saturating_mul(10),
                    EvictionPolicy::Balanced => true,
                };
                allowed.then_some((silent, since, a.pid))
            })
            .max()
            .map(|(_, _, pid)| pid);
        match victim {
            Some(pid) => {
                self.agents.remove(&pid);
                self.counters.evictions += 1;
                events.push(Event::Evicted { pid });
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config() -> TrackerConfig {
        TrackerConfig {
            timeout: S,
            per_agent_limit: None,
            ..TrackerConfig::default()
        }
    }

    fn frame(pid: u32, nonce: u64, status: Status) -> Frame {
        Frame {
            status,
            pid,
            timestamp: 0,
            nonce,
            payload: 0,
        }
    }

    fn sender(pid: u32) -> Sender {
        Sender { pid, uid: 1000 }
    }

    fn names(events: &[Event]) -> Vec<&'static str> {
        events.iter().map(Event::name).collect()
    }

    #[test]
    fn stall_is_declared_at_the_deadline_and_recovery_reports_the_silence() {
        let mut t = Tracker::new(config());
        let mut ev = Vec::new();
        assert!(t.on_frame(ms(0), sender(10), &frame(10, 1, Status::Ok), &mut ev));
        assert_eq!(names(&ev), ["registered", "beat"]);
        ev.clear();
        t.on_frame(ms(400), sender(10), &frame(10, 2, Status::Ok), &mut ev);
        t.expire(ms(1399), &mut ev);
        assert!(!t.agent(10).expect("agent").is_stalled(), "{ev:?}");
        t.expire(ms(1400), &mut ev);
        assert_eq!(
            ev.last(),
            Some(&Event::Stalled {
                pid: 10,
                silent_for: S
            })
        );
        ev.clear();
        t.on_frame(ms(2000), sender(10), &frame(10, 3, Status::Ok), &mut ev);
        assert_eq!(
            ev[0],
            Event::Recovered {
                pid: 10,
                silent_for: ms(1600)
            }
        );
        assert_eq!(t.counters().stalls, 1);
        assert_eq!(t.counters().recoveries, 1);
    }

    #[test]
    fn many_beats_cost_one_heap_entry_per_agent() {
        let mut t = Tracker::new(config());
        let mut ev = Vec::new();
        for pid in 2..102 {
            t.on_frame(ms(0), sender(pid), &frame(pid, 1, Status::Ok), &mut ev);
        }
        for step in 1..1000u64 {
            for pid in 2..102 {
                t.on_frame(
                    ms(step),
                    sender(pid),
                    &frame(pid, step + 1, Status::Ok),
                    &mut ev,
                );
            }
            t.expire(ms(step), &mut ev);
        }
        assert_eq!(
            t.deadlines.len(),
            100,
            "lazy deadlines must not grow per beat"
        );
        assert_eq!(t.counters().stalls, 0);
    }

    #[test]
    fn notify_lifecycle_with_own_timeout_extension_and_expected_exit() {
        let mut t = Tracker::new(config());
        let mut ev = Vec::new();
        let ready = Notification::parse(b"READY=1\nWATCHDOG_USEC=200000").expect("parse");
        t.on_notify(ms(0), sender(7), &ready, &mut ev);
        assert_eq!(names(&ev), ["registered", "ready"]);
        assert_eq!(t.agent(7).expect("agent").limit(t.config()), ms(200));
        // The shorter own timeout must win over the 1 s queued at registration.
        t.expire(ms(199), &mut ev);
        assert!(!t.agent(7).expect("agent").is_stalled());
        t.expire(ms(200), &mut ev);
        assert!(t.agent(7).expect("agent").is_stalled());
        ev.clear();
        let extend =
            Notification::parse(b"WATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000").expect("parse");
        t.on_notify(ms(300), sender(7), &extend, &mut ev);
        assert_eq!(names(&ev), ["recovered", "beat"]);
        t.expire(ms(3000), &mut ev);
        assert!(
            !t.agent(7).expect("agent").is_stalled(),
            "extension honoured"
        );
        let stopping = Notification::parse(b"STOPPING=1").expect("parse");
        t.on_notify(ms(3000), sender(7), &stopping, &mut ev);
        t.expire(ms(60_000), &mut ev);
        assert!(
            !t.agent(7).expect("agent").is_stalled(),
            "stopping agents are not watched"
        );
        ev.clear();
        t.on_exit(ms(60_000), 7, &mut ev);
        assert!(matches!(
            ev[0],
            Event::Exited {
                pid: 7,
                expected: true,
                ..
            }
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn startup_grace_extends_only_the_first_deadline() {
        let mut t = Tracker::new(TrackerConfig {
            startup_grace: ms(500),
            ..config()
        });
        let mut ev = Vec::new();
        t.on_frame(ms(0), sender(5), &frame(5, 1, Status::Ok), &mut ev);
        t.expire(ms(1499), &mut ev);
        assert!(!t.agent(5).expect("agent").is_stalled());
        t.expire(ms(1500), &mut ev);
        assert!(t.agent(5).expect("agent").is_stalled());
        t.on_frame(ms(1600), sender(5), &frame(5, 2, Status::Ok), &mut ev);
        t.expire(ms(2600), &mut ev);
        assert!(
            t.agent(5).expect("agent").is_stalled(),
            "no grace after the first beat"
        );
    }

    #[test]
    fn missed_beats_rule_uses_the_learned_interval() {
        let mut t = Tracker::new(TrackerConfig {
            missed_beats: Some(3),
            ..config()
        });
        let mut ev = Vec::new();
        for (i, at) in [0, 100, 200, 300, 400].into_iter().enumerate() {
            t.on_frame(
                ms(at),
                sender(9),
                &frame(9, i as u64 + 1, Status::Ok),
                &mut ev,
            );
        }
        assert_eq!(t.agent(9).expect("agent").limit(t.config()), ms(300));
        t.expire(ms(699), &mut ev);
        assert!(!t.agent(9).expect("agent").is_stalled());
        t.expire(ms(700), &mut ev);
        assert!(t.agent(9).expect("agent").is_stalled());
    }

    #[test]
    fn replayed_nonces_do_not_keep_an_agent_alive() {
        let mut t = Tracker::new(config());
        let mut ev = Vec::new();
        t.on_frame(ms(0), sender(3), &frame(3, 5, Status::Ok), &mut ev);
        t.on_frame(ms(900), sender(3), &frame(3, 5, Status::Ok), &mut ev);
        t.on_frame(ms(950), sender(3), &frame(3, 4, Status::Ok), &mut ev);
        assert_eq!(t.counters().stale_nonces, 2);
        t.expire(ms(1000), &mut ev);
        assert!(t.agent(3).expect("agent").is_stalled());
        // Wrap-around from u64::MAX - 1 to 0 is an advance.
        t.on_frame(
            ms(1001),
            sender(3),
            &frame(3, TERMINAL_NONCE - 1, Status::Ok),
            &mut ev,
        );
        t.on_frame(ms(1002), sender(3), &frame(3, 0, Status::Ok), &mut ev);
        assert_eq!(t.counters().stale_nonces, 2);
    }

    #[test]
    fn critical_and_terminal_frames_pass_the_rate_limit() {
        let mut t = Tracker::new(TrackerConfig {
            per_agent_limit: Some(RateLimit {
                rate: 1.0,
                burst: 1.0,
            }),
            ..config()
        });
        let mut ev = Vec::new();
        t.on_frame(ms(0), sender(4), &frame(4, 1, Status::Ok), &mut ev);
        t.on_frame(ms(1), sender(4), &frame(4, 2, Status::Ok), &mut ev);
        assert_eq!(t.counters().rate_limited, 1);
        t.on_frame(ms(2), sender(4), &frame(4, 3, Status::Critical), &mut ev);
        t.on_frame(
            ms(3),
            sender(4),
            &frame(4, TERMINAL_NONCE, Status::Critical),
            &mut ev,
        );
        let critical: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Critical { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            critical,
            [CriticalReason::Status, CriticalReason::TerminalFrame]
        );
        assert_eq!(t.counters().rate_limited, 1);
    }

    #[test]
    fn full_table_evicts_per_policy_or_rejects() {
        let small = |eviction| TrackerConfig {
            capacity: 2,
            eviction,
            ..config()
        };
        let mut ev = Vec::new();
        // Strict: a stall of less than 10x the limit protects the agent.
        let mut t = Tracker::new(small(EvictionPolicy::Strict));
        t.on_frame(ms(0), sender(2), &frame(2, 1, Status::Ok), &mut ev);
        t.on_frame(ms(0), sender(3), &frame(3, 1, Status::Ok), &mut ev);
        t.expire(ms(2000), &mut ev);
        t.on_frame(ms(2000), sender(4), &frame(4, 1, Status::Ok), &mut ev);
        assert_eq!(ev.last(), Some(&Event::Rejected { pid: 4 }));
        t.on_frame(ms(11_000), sender(4), &frame(4, 1, Status::Ok), &mut ev);
        assert!(ev.iter().any(|e| matches!(e, Event::Evicted { .. })));
        assert!(t.agent(4).is_some());
        // Balanced: any stalled agent, the longest silent first.
        let mut t = Tracker::new(small(EvictionPolicy::Balanced));
        ev.clear();
        t.on_frame(ms(0), sender(2), &frame(2, 1, Status::Ok), &mut ev);
        t.on_frame(ms(500), sender(3), &frame(3, 1, Status::Ok), &mut ev);
        t.expire(ms(2000), &mut ev);
        t.on_frame(ms(2000), sender(4), &frame(4, 1, Status::Ok), &mut ev);
        assert!(ev.contains(&Event::Evicted { pid: 2 }), "{ev:?}");
        assert_eq!(t.counters().evictions, 1);
    }

    #[test]
    fn a_resume_restarts_deadlines_instead_of_firing_them() {
        let mut t = Tracker::new(config());
        let mut ev = Vec::new();
        t.on_frame(ms(0), sender(6), &frame(6, 1, Status::Ok), &mut ev);
        // Boottime clock: 60 s passed while suspended.
        t.forgive_suspend(ms(60_000), ms(59_900), &mut ev);
        t.expire(ms(60_000), &mut ev);
        assert!(!t.agent(6).expect("agent").is_stalled());
        t.expire(ms(61_000), &mut ev);
        assert!(t.agent(6).expect("agent").is_stalled());
    }
}
