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
//!
//! Agents are packed into 44 bytes each (plus 8 for the pid index and 8 for the deadline
//! heap): times are 32-bit millisecond ticks (rebased every ~12 days of uptime), and the last
//! nonce is kept modulo 2³², so a frame whose nonce jumps more than 2³¹ ahead reads as a replay
//! (senders count up by one).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::event::{CriticalReason, Event, Protocol};
use crate::notify::{Notification, Watchdog};
use crate::pid_index::PidIndex;
use crate::vlp::{Frame, Status};

/// The longest silence limit, grace or extension honoured (about 6.2 days): internal times are
/// 32-bit millisecond ticks, and deadlines must stay comparable.
pub const MAX_LIMIT: Duration = Duration::from_millis(1 << 29);

/// Ticks past this are rebased (every ~12 days of uptime), keeping all ticks in 32 bits.
const REBASE_AT: u64 = 1 << 31;
/// How far back a rebase keeps time: a silence longer than this reads as this long.
const REBASE_KEEP: u64 = 1 << 30;

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
    /// Silence after which an agent is stalled, unless it set its own (1 ms ..= [`MAX_LIMIT`]).
    pub timeout: Duration,
    /// Extra allowance on a new agent's first deadline (at most [`MAX_LIMIT`]).
    pub startup_grace: Duration,
    /// Stall after this many missed beats of the agent's learned interval (capped by
    /// `timeout`), once at least three intervals have been seen.
    pub missed_beats: Option<u32>,
    /// Most agents tracked at once; memory for them is reserved up front.
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

    fn bits(self) -> u16 {
        match self {
            Self::Starting => 0,
            Self::Ready => 1,
            Self::Reloading => 2,
            Self::Stopping => 3,
        }
    }

    fn from_bits(bits: u16) -> Self {
        match bits & 3 {
            0 => Self::Starting,
            1 => Self::Ready,
            2 => Self::Reloading,
            _ => Self::Stopping,
        }
    }
}

// Layout of `Agent::flags`.
const F_NOTIFY: u16 = 1 << 0;
const F_PHASE_SHIFT: u16 = 1; // two bits
const F_HEALTH_SHIFT: u16 = 3; // two bits
const F_STALLED: u16 = 1 << 5;
const F_QUEUED: u16 = 1 << 6;
const F_HAS_NONCE: u16 = 1 << 7;
const F_INTERVALS_SHIFT: u16 = 8; // two bits, saturating at 3

/// What the observer knows about one agent, packed into 44 bytes: times are 32-bit
/// millisecond ticks of the tracker, state lives in bit flags, and the `STATUS=` text (rare,
/// notify senders only) is kept beside the table.
#[derive(Debug)]
pub struct Agent {
    pid: u32,
    uid: u32,
    last_seen: u32,
    deadline: u32,
    queued_at: u32,
    /// `WATCHDOG_USEC=` in ms; 0 = none.
    own_limit: u32,
    /// Low 32 bits of the last accepted nonce (compared with wrapping arithmetic).
    nonce: u32,
    tokens: f32,
    beats: u32,
    /// Learned beat interval in ms (exponential average), saturating; 0 = unknown.
    interval: u16,
    flags: u16,
    pidfd: Option<OwnedFd>,
}

const _: () = assert!(std::mem::size_of::<Agent>() == 44);

impl Agent {
    /// Kernel-attested pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kernel-attested uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// How it talks.
    pub fn protocol(&self) -> Protocol {
        if self.flags & F_NOTIFY != 0 {
            Protocol::Notify
        } else {
            Protocol::Vlp
        }
    }

    /// Lifecycle phase.
    pub fn phase(&self) -> Phase {
        Phase::from_bits(self.flags >> F_PHASE_SHIFT)
    }

    /// Last reported health.
    pub fn health(&self) -> Status {
        match (self.flags >> F_HEALTH_SHIFT) & 3 {
            0 => Status::Ok,
            1 => Status::Degraded,
            _ => Status::Critical,
        }
    }

    /// Heartbeats accepted (wraps after 2³² beats).
    pub fn beats(&self) -> u32 {
        self.beats
    }

    /// Whether it is currently stalled.
    pub fn is_stalled(&self) -> bool {
        self.flags & F_STALLED != 0
    }

    /// Its current silence limit.
    pub fn limit(&self, config: &TrackerConfig) -> Duration {
        Duration::from_millis(u64::from(self.limit_ms(config)))
    }

    fn limit_ms(&self, config: &TrackerConfig) -> u32 {
        if self.own_limit != 0 {
            return self.own_limit;
        }
        let timeout = ms(config.timeout);
        match config.missed_beats {
            Some(n) if self.interval != 0 && self.intervals_seen() >= 3 => {
                u32::from(self.interval).saturating_mul(n).clamp(1, timeout)
            }
            _ => timeout,
        }
    }

    fn intervals_seen(&self) -> u16 {
        (self.flags >> F_INTERVALS_SHIFT) & 3
    }

    fn set_phase(&mut self, phase: Phase) {
        self.flags = (self.flags & !(3 << F_PHASE_SHIFT)) | (phase.bits() << F_PHASE_SHIFT);
    }

    fn set_health(&mut self, status: Status) {
        let bits = match status {
            Status::Ok => 0,
            Status::Degraded => 1,
            Status::Critical => 2,
        };
        self.flags = (self.flags & !(3 << F_HEALTH_SHIFT)) | (bits << F_HEALTH_SHIFT);
    }

    fn set(&mut self, flag: u16, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }
}

/// A duration as whole milliseconds, at least 1 and at most [`MAX_LIMIT`].
fn ms(d: Duration) -> u32 {
    d.min(MAX_LIMIT).as_millis().max(1) as u32
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
    slab: Vec<Agent>,
    index: PidIndex,
    deadlines: BinaryHeap<Reverse<(u32, u32)>>,
    status_texts: HashMap<u32, Box<str>>,
    epoch: Duration,
    counters: TrackerCounters,
}

impl Tracker {
    /// An empty table with room for `config.capacity` agents reserved.
    pub fn new(config: TrackerConfig) -> Self {
        let capacity = config.capacity.clamp(1, 1 << 20);
        Self {
            slab: Vec::with_capacity(capacity),
            index: PidIndex::with_capacity(capacity),
            deadlines: BinaryHeap::with_capacity(capacity),
            status_texts: HashMap::new(),
            epoch: Duration::ZERO,
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
        let slot = self.slot(pid)?;
        Some(&self.slab[slot as usize])
    }

    /// Every agent, in no particular order.
    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.slab.iter()
    }

    /// How many agents are tracked.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether no agent is tracked.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// How long `agent` has been silent at `now`.
    pub fn silent_for(&self, agent: &Agent, now: Duration) -> Duration {
        Duration::from_millis(self.ticks(now).saturating_sub(u64::from(agent.last_seen)))
    }

    /// The agent's latest `STATUS=` text.
    pub fn status_text(&self, pid: u32) -> Option<&str> {
        self.status_texts.get(&pid).map(|s| &**s)
    }

    /// Keeps `pidfd` with the agent (closed when the agent leaves the table).
    pub fn attach_pidfd(&mut self, pid: u32, pidfd: OwnedFd) {
        if let Some(slot) = self.slot(pid) {
            self.slab[slot as usize].pidfd = Some(pidfd);
        }
    }

    /// Gives agent `pid` a silence limit of its own (a per-service threshold), as
    /// `WATCHDOG_USEC=` does; a later `WATCHDOG_USEC=` from the agent replaces it. The agent's
    /// current deadline moves to its last beat plus the new limit (plus the startup grace if
    /// it has spoken only once).
    pub fn set_limit(&mut self, pid: u32, limit: Duration) {
        let Some(slot) = self.slot(pid) else {
            return;
        };
        let grace = grace_ms(&self.config);
        let agent = &mut self.slab[slot as usize];
        agent.own_limit = ms(limit);
        let grace = if agent.beats <= 1 { grace } else { 0 };
        agent.deadline = agent.last_seen + agent.own_limit + grace;
        // An earlier deadline needs its own heap entry; a later one is found by re-queueing.
        if agent.flags & F_QUEUED == 0 || agent.queued_at > agent.deadline {
            agent.queued_at = agent.deadline;
            agent.set(F_QUEUED, true);
            self.deadlines.push(Reverse((agent.deadline, agent.pid)));
        }
    }

    /// The pidfd kept for an agent.
    pub fn pidfd(&self, pid: u32) -> Option<&OwnedFd> {
        self.agent(pid)?.pidfd.as_ref()
    }

    /// The earliest time at which [`expire`](Self::expire) may have something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadlines
            .peek()
            .map(|Reverse((at, _))| self.epoch + Duration::from_millis(u64::from(*at)))
    }

    /// Heap bytes held by the table (slab, index, deadline heap and status texts).
    pub fn heap_bytes(&self) -> usize {
        self.slab.capacity() * std::mem::size_of::<Agent>()
            + self.index.heap_bytes()
            + self.deadlines.capacity() * std::mem::size_of::<Reverse<(u32, u32)>>()
            + self
                .status_texts
                .values()
                .map(|t| t.len() + 24)
                .sum::<usize>()
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
        let t = self.tick(now);
        let Some((slot, new)) = self.admit(t, sender, Protocol::Vlp, critical, events) else {
            return false;
        };
        let agent = &mut self.slab[slot];
        if frame.is_terminal() {
            agent.set_health(Status::Critical);
            events.push(Event::Critical {
                pid: sender.pid,
                reason: CriticalReason::TerminalFrame,
            });
            return new;
        }
        let nonce = frame.nonce as u32;
        if agent.flags & F_HAS_NONCE != 0 && (nonce.wrapping_sub(agent.nonce) as i32) <= 0 {
            self.counters.stale_nonces += 1;
            return new;
        }
        agent.nonce = nonce;
        agent.flags |= F_HAS_NONCE;
        let was = agent.health();
        agent.set_health(frame.status);
        if critical && was != Status::Critical {
            events.push(Event::Critical {
                pid: sender.pid,
                reason: CriticalReason::Status,
            });
        }
        self.beat(t, slot, Some(frame.status), events);
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
        let t = self.tick(now);
        let Some((slot, new)) = self.admit(t, sender, Protocol::Notify, trigger, events) else {
            return false;
        };
        if let Some(text) = &n.status {
            self.status_texts.insert(sender.pid, text.as_str().into());
        }
        let agent = &mut self.slab[slot];
        if let Some(timeout) = n.watchdog_timeout {
            agent.own_limit = ms(timeout);
        }
        if n.reloading {
            agent.set_phase(Phase::Reloading);
        }
        if n.ready {
            agent.set_phase(Phase::Ready);
            events.push(Event::Ready { pid: sender.pid });
        }
        if n.stopping {
            agent.set_phase(Phase::Stopping);
        }
        if trigger {
            agent.set_health(Status::Critical);
            events.push(Event::Critical {
                pid: sender.pid,
                reason: CriticalReason::WatchdogTrigger,
            });
        }
        // Any message proves the sender alive; only WATCHDOG=1 is reported as a beat.
        let ping = n.watchdog == Some(Watchdog::Ping);
        self.beat(t, slot, ping.then_some(Status::Ok), events);
        if let Some(extra) = n.extend_timeout {
            // Later than the queued entry is fine: the entry re-queues itself when it comes due.
            let agent = &mut self.slab[slot];
            agent.deadline = agent.deadline.max(t + ms(extra));
        }
        new
    }

    /// The agent's process exited.
    pub fn on_exit(&mut self, now: Duration, pid: u32, events: &mut Vec<Event>) {
        let t = self.tick(now);
        if let Some(agent) = self.remove(pid) {
            self.counters.exits += 1;
            events.push(Event::Exited {
                pid,
                expected: agent.phase() == Phase::Stopping,
                silent_for: Duration::from_millis(u64::from(t.saturating_sub(agent.last_seen))),
            });
        }
    }

    /// Declares every agent whose deadline has passed as stalled.
    pub fn expire(&mut self, now: Duration, events: &mut Vec<Event>) {
        let t = self.tick(now);
        while let Some(&Reverse((at, pid))) = self.deadlines.peek() {
            if at > t {
                break;
            }
            self.deadlines.pop();
            let Some(slot) = self.slot(pid) else {
                continue;
            };
            let agent = &mut self.slab[slot as usize];
            if agent.flags & F_QUEUED == 0 || agent.queued_at != at {
                continue; // superseded by a later entry for the same agent
            }
            agent.set(F_QUEUED, false);
            if agent.is_stalled() || agent.phase() == Phase::Stopping {
                continue;
            }
            if agent.deadline > t {
                agent.queued_at = agent.deadline;
                agent.set(F_QUEUED, true);
                self.deadlines.push(Reverse((agent.deadline, pid)));
                continue;
            }
            agent.set(F_STALLED, true);
            self.counters.stalls += 1;
            events.push(Event::Stalled {
                pid,
                silent_for: Duration::from_millis(u64::from(t.saturating_sub(agent.last_seen))),
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
        let t = self.tick(now);
        for agent in &mut self.slab {
            if !agent.is_stalled() {
                agent.last_seen = agent.last_seen.max(t);
                agent.deadline = t + agent.limit_ms(&self.config);
            }
        }
        events.push(Event::Resumed { suspended_for });
    }

    fn slot(&self, pid: u32) -> Option<u32> {
        let slab = &self.slab;
        self.index.get(pid, |s| slab[s as usize].pid)
    }

    /// Milliseconds since the tracker's epoch, without rebasing.
    fn ticks(&self, now: Duration) -> u64 {
        now.saturating_sub(self.epoch).as_millis() as u64
    }

    /// `now` as a tick, rebasing every stored tick first when the count nears 2³¹.
    fn tick(&mut self, now: Duration) -> u32 {
        let ticks = self.ticks(now);
        if ticks < REBASE_AT {
            return ticks as u32;
        }
        let shift = (ticks - REBASE_KEEP) as u32;
        self.epoch += Duration::from_millis(u64::from(shift));
        for a in &mut self.slab {
            a.last_seen = a.last_seen.saturating_sub(shift);
            a.deadline = a.deadline.saturating_sub(shift);
            a.queued_at = a.queued_at.saturating_sub(shift);
        }
        let entries = std::mem::take(&mut self.deadlines).into_vec();
        self.deadlines = entries
            .into_iter()
            .map(|Reverse((at, pid))| Reverse((at.saturating_sub(shift), pid)))
            .collect();
        REBASE_KEEP as u32
    }

    fn remove(&mut self, pid: u32) -> Option<Agent> {
        let slab = &self.slab;
        let slot = self.index.remove(pid, |s| slab[s as usize].pid)? as usize;
        let agent = self.slab.swap_remove(slot);
        if let Some(moved) = self.slab.get(slot) {
            let slab = &self.slab;
            // The moved agent's old slot no longer holds it: compare against its new one.
            let last = slab.len() as u32;
            self.index.relocate(moved.pid, slot as u32, |s| {
                if s == last {
                    moved.pid
                } else {
                    slab[s as usize].pid
                }
            });
        }
        self.status_texts.remove(&pid);
        Some(agent)
    }

    /// Finds or registers the sender's agent and applies its rate limit. `None` means drop
    /// the datagram (rate-limited or no room).
    fn admit(
        &mut self,
        t: u32,
        sender: Sender,
        protocol: Protocol,
        urgent: bool,
        events: &mut Vec<Event>,
    ) -> Option<(usize, bool)> {
        let mut new = false;
        let slot = match self.slot(sender.pid) {
            Some(slot) => slot as usize,
            None => {
                if self.slab.len() >= self.config.capacity && !self.make_room(t, events) {
                    self.counters.rejections += 1;
                    events.push(Event::Rejected { pid: sender.pid });
                    return None;
                }
                let deadline = t + ms(self.config.timeout) + grace_ms(&self.config);
                let mut agent = Agent {
                    pid: sender.pid,
                    uid: sender.uid,
                    last_seen: t,
                    deadline,
                    queued_at: deadline,
                    own_limit: 0,
                    nonce: 0,
                    tokens: self.config.per_agent_limit.map_or(0.0, |l| l.burst as f32),
                    beats: 0,
                    interval: 0,
                    flags: F_QUEUED,
                    pidfd: None,
                };
                agent.set(F_NOTIFY, protocol == Protocol::Notify);
                let slot = self.slab.len();
                self.slab.push(agent);
                let slab = &self.slab;
                self.index
                    .insert(sender.pid, slot as u32, |s| slab[s as usize].pid);
                self.deadlines.push(Reverse((deadline, sender.pid)));
                events.push(Event::Registered {
                    pid: sender.pid,
                    uid: sender.uid,
                    protocol,
                });
                new = true;
                slot
            }
        };
        let agent = &mut self.slab[slot];
        if let (Some(limit), false) = (self.config.per_agent_limit, urgent) {
            // Tokens refill from the last accepted datagram (`last_seen`).
            let elapsed = f64::from(t.saturating_sub(agent.last_seen)) / 1000.0;
            let tokens = (f64::from(agent.tokens) + elapsed * limit.rate).min(limit.burst);
            if tokens < 1.0 {
                self.counters.rate_limited += 1;
                return None;
            }
            agent.tokens = (tokens - 1.0) as f32;
        }
        Some((slot, new))
    }

    /// Records that the agent spoke: recovery, interval learning and the new deadline, plus a
    /// `Beat` event when `report` carries its status.
    fn beat(&mut self, t: u32, slot: usize, report: Option<Status>, events: &mut Vec<Event>) {
        let agent = &mut self.slab[slot];
        let first = agent.beats == 0;
        if !first {
            let gap = t.saturating_sub(agent.last_seen).min(u32::from(u16::MAX)) as u16;
            agent.interval = if agent.interval == 0 {
                gap.max(1)
            } else {
                // An exponential average with weight 1/8 for the newest gap.
                ((u32::from(agent.interval) * 7 + u32::from(gap)) / 8).max(1) as u16
            };
            let seen = (agent.intervals_seen() + 1).min(3);
            agent.flags = (agent.flags & !(3 << F_INTERVALS_SHIFT)) | (seen << F_INTERVALS_SHIFT);
        }
        if agent.is_stalled() {
            agent.set(F_STALLED, false);
            self.counters.recoveries += 1;
            events.push(Event::Recovered {
                pid: agent.pid,
                silent_for: Duration::from_millis(u64::from(t.saturating_sub(agent.last_seen))),
            });
        }
        agent.beats = agent.beats.wrapping_add(1);
        self.counters.beats += 1;
        agent.last_seen = t;
        // The first beat keeps the startup grace on top of the agent's own limit.
        let grace = if first { grace_ms(&self.config) } else { 0 };
        agent.deadline = t + agent.limit_ms(&self.config) + grace;
        // Queue an entry only if none is pending at or before the new deadline.
        if agent.flags & F_QUEUED == 0 || agent.queued_at > agent.deadline {
            agent.queued_at = agent.deadline;
            agent.set(F_QUEUED, true);
            self.deadlines.push(Reverse((agent.deadline, agent.pid)));
        }
        if let Some(status) = report {
            events.push(Event::Beat {
                pid: agent.pid,
                status,
            });
        }
    }

    /// Evicts one agent if the policy allows; returns whether room was made.
    fn make_room(&mut self, t: u32, events: &mut Vec<Event>) -> bool {
        let config = &self.config;
        let victim = self
            .slab
            .iter()
            .filter(|a| a.is_stalled())
            .filter_map(|a| {
                let silent = t.saturating_sub(a.last_seen);
                let allowed = match config.eviction {
                    EvictionPolicy::Strict => silent > a.limit_ms(config).saturating_mul(10),
                    EvictionPolicy::Balanced => true,
                };
                allowed.then_some((silent, a.pid))
            })
            .max()
            .map(|(_, pid)| pid);
        match victim {
            Some(pid) => {
                self.remove(pid);
                self.counters.evictions += 1;
                events.push(Event::Evicted { pid });
                true
            }
            None => false,
        }
    }
}

fn grace_ms(config: &TrackerConfig) -> u32 {
    if config.startup_grace.is_zero() {
        0
    } else {
        ms(config.startup_grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlp::TERMINAL_NONCE;

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
        let wrap = [TERMINAL_NONCE - 3, TERMINAL_NONCE - 1, 0, 1];
        for (i, nonce) in wrap.into_iter().enumerate() {
            t.on_frame(
                ms(1001 + i as u64),
                sender(8),
                &frame(8, nonce, Status::Ok),
                &mut ev,
            );
        }
        assert_eq!(t.counters().stale_nonces, 2);
        assert_eq!(t.agent(8).expect("agent").beats(), 4);
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
