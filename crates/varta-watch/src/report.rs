//! Renderings of an observer's state: Prometheus text metrics and the JSON status snapshot
//! that `varta-watch status` prints.

use std::fmt::Write as _;

use platform_primitives::prom::Exposition;

use crate::event::json_string;
use crate::hook::HookRunner;
use crate::observer::Observer;
use crate::service::Services;

/// What the daemon counts beside the observer: its event stream's write failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounters {
    /// Failed writes of the event stream (each retried later).
    pub event_write_errors: u64,
    /// Event lines given up after the retry backlog filled.
    pub events_dropped: u64,
}

/// What the daemon holds beside the observer, for the renderings.
#[derive(Debug, Clone, Copy)]
pub struct DaemonView<'a> {
    /// The event stream's counters.
    pub sink: &'a SinkCounters,
    /// The hook runner, if hooks are configured.
    pub hooks: Option<&'a HookRunner>,
    /// Service labels and rules.
    pub services: Option<&'a Services>,
}

/// The service label of agent `pid` (`unknown` when it was never classified).
fn service_of<'a>(view: &DaemonView<'a>, pid: u32) -> &'a str {
    view.services
        .and_then(|s| s.label(pid))
        .map_or("unknown", |l| l.service.as_str())
}

/// Prometheus text exposition (format 0.0.4) of the observer's counters and every agent.
pub fn metrics(observer: &Observer, view: &DaemonView<'_>) -> String {
    let sink = view.sink;
    let tracker = observer.tracker();
    let c = observer.counters();
    let t = observer.tracker().counters();
    let counters: [(&str, &str, u64); 24] = [
        ("varta_datagrams_total", "Datagrams received.", c.datagrams),
        (
            "varta_batches_total",
            "recvmmsg calls that returned data.",
            c.batches,
        ),
        ("varta_frames_total", "Valid VLP frames.", c.frames),
        (
            "varta_notifications_total",
            "Valid sd_notify messages.",
            c.notifications,
        ),
        (
            "varta_decode_errors_total",
            "Datagrams that were neither.",
            c.decode_errors,
        ),
        (
            "varta_auth_failures_total",
            "Datagrams refused for their sender's identity.",
            c.auth_failures,
        ),
        (
            "varta_truncated_total",
            "Datagrams longer than the receive buffer.",
            c.truncated,
        ),
        (
            "varta_control_truncated_total",
            "Datagrams whose control data did not fit.",
            c.control_truncated,
        ),
        (
            "varta_fds_closed_total",
            "Descriptors attached to datagrams, closed on receipt.",
            c.fds_closed,
        ),
        (
            "varta_global_rate_limited_total",
            "Datagrams dropped by the global rate limit.",
            c.global_rate_limited,
        ),
        (
            "varta_suspends_total",
            "Machine suspends detected.",
            c.suspends,
        ),
        (
            "varta_no_pidfd_total",
            "Datagrams for which no pidfd could be had (usually a full descriptor table).",
            c.no_pidfd,
        ),
        (
            "varta_polled_exits_total",
            "Exits of agents without a pidfd, noticed by polling.",
            c.polled_exits,
        ),
        (
            "varta_decode_reports_suppressed_total",
            "Decode errors left out of the event stream by its rate limit.",
            c.decode_reports_suppressed,
        ),
        (
            "varta_event_write_errors_total",
            "Failed writes of the event stream (retried).",
            sink.event_write_errors,
        ),
        (
            "varta_events_dropped_total",
            "Event lines given up after the retry backlog filled.",
            sink.events_dropped,
        ),
        ("varta_beats_total", "Heartbeats accepted.", t.beats),
        ("varta_stalls_total", "Stalls declared.", t.stalls),
        (
            "varta_recoveries_total",
            "Stalled agents that spoke again.",
            t.recoveries,
        ),
        ("varta_exits_total", "Agent exits observed.", t.exits),
        (
            "varta_evictions_total",
            "Agents evicted to make room.",
            t.evictions,
        ),
        (
            "varta_rejections_total",
            "New agents refused: table full.",
            t.rejections,
        ),
        (
            "varta_rate_limited_total",
            "Datagrams dropped by per-agent rate limits.",
            t.rate_limited,
        ),
        (
            "varta_stale_nonces_total",
            "VLP frames ignored for a nonce that did not advance.",
            t.stale_nonces,
        ),
    ];
    let mut page = Exposition::with_capacity(1024 + tracker.len() * 256);
    for (name, help, value) in counters {
        page.counter(name, help).value(value);
    }
    let stalled = tracker.agents().filter(|a| a.is_stalled()).count();
    page.gauge("varta_agents", "Agents tracked.")
        .value(tracker.len());
    page.gauge("varta_agents_stalled", "Agents currently stalled.")
        .value(stalled);
    page.gauge(
        "varta_agents_polled",
        "Agents watched for exit by polling (no pidfd could be had).",
    )
    .value(observer.polled_agents());

    let now = observer.now();
    let mut agents: Vec<_> = tracker.agents().collect();
    agents.sort_by_key(|a| a.pid());
    let mut silent = page.gauge(
        "varta_agent_silent_seconds",
        "Time since the agent last spoke.",
    );
    for a in &agents {
        silent.sample(
            &[
                ("service", &service_of(view, a.pid())),
                ("pid", &a.pid()),
                ("protocol", &a.protocol().as_str()),
                ("phase", &a.phase().as_str()),
                ("health", &a.health().as_str()),
            ],
            tracker.silent_for(a, now),
        );
    }
    let mut stalled = page.gauge("varta_agent_stalled", "Whether the agent is stalled.");
    for a in &agents {
        stalled.sample(
            &[("service", &service_of(view, a.pid())), ("pid", &a.pid())],
            a.is_stalled(),
        );
    }
    let mut beats = page.counter(
        "varta_agent_beats_total",
        "Heartbeats accepted from the agent.",
    );
    for a in &agents {
        beats.sample(
            &[("service", &service_of(view, a.pid())), ("pid", &a.pid())],
            a.beats(),
        );
    }
    if let Some(hooks) = view.hooks {
        let h = hooks.counters();
        for (name, help, value) in [
            ("varta_hooks_started_total", "Hooks started.", h.started),
            (
                "varta_hooks_failed_total",
                "Hooks that could not be started.",
                h.failed,
            ),
            (
                "varta_hooks_unsuccessful_total",
                "Hooks that exited unsuccessfully.",
                h.unsuccessful,
            ),
            (
                "varta_hooks_timed_out_total",
                "Hooks stopped at --hook-timeout.",
                h.timed_out,
            ),
            (
                "varta_hooks_dropped_total",
                "Hooks dropped: the queue was full.",
                h.dropped,
            ),
            (
                "varta_hooks_debounced_total",
                "Hooks not run: the same event of the agent ran one within --hook-debounce.",
                h.debounced,
            ),
        ] {
            page.counter(name, help).value(value);
        }
        page.gauge("varta_hooks_running", "Hooks running.")
            .value(hooks.running());
        page.gauge("varta_hooks_queued", "Hooks waiting for a slot.")
            .value(hooks.queued());
    }
    if let Some(services) = view.services {
        let mut per_service = page.gauge("varta_service_agents", "Agents tracked per service.");
        for (service, n) in services.agents_per_service() {
            per_service.sample(&[("service", &service)], n);
        }
        type Get = fn(&crate::service::ServiceCounters) -> u64;
        let per_rule: [(&str, &str, Get); 4] = [
            (
                "varta_service_stalls_total",
                "Stalls of the service's agents.",
                |c| c.stalls,
            ),
            (
                "varta_service_signals_total",
                "Signals sent to the service's stalled agents.",
                |c| c.signals,
            ),
            (
                "varta_service_signals_limited_total",
                "Signals not sent: flap control.",
                |c| c.signals_limited,
            ),
            (
                "varta_service_signals_failed_total",
                "Signals that could not be sent.",
                |c| c.signals_failed,
            ),
        ];
        for (name, help, get) in per_rule {
            let mut family = page.counter(name, help);
            for (service, counters) in services.counters() {
                family.sample(&[("service", &service)], get(counters));
            }
        }
    }
    page.into_string()
}

/// The JSON status snapshot: every agent with its phase, health, silence and `STATUS=` text,
/// and the counters.
pub fn status_json(observer: &Observer, view: &DaemonView<'_>) -> String {
    let sink = view.sink;
    let now = observer.now();
    let tracker = observer.tracker();
    let mut agents: Vec<_> = tracker.agents().collect();
    agents.sort_by_key(|a| a.pid());
    let mut out = String::from("{\"agents\":[");
    for (i, a) in agents.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"pid\":{},\"service\":", a.pid());
        json_string(&mut out, service_of(view, a.pid()));
        if let Some(label) = view.services.and_then(|s| s.label(a.pid())) {
            for (key, value) in [
                ("unit", &label.identity.unit),
                ("comm", &label.identity.comm),
            ] {
                if let Some(value) = value {
                    let _ = write!(out, ",\"{key}\":");
                    json_string(&mut out, value);
                }
            }
        }
        let _ = write!(
            out,
            ",\"uid\":{},\"protocol\":\"{}\",\"phase\":\"{}\",\"health\":\"{}\",\"stalled\":{},\"silent_ms\":{},\"beats\":{},\"limit_ms\":{},\"status\":",
            a.uid(),
            a.protocol().as_str(),
            a.phase().as_str(),
            a.health().as_str(),
            a.is_stalled(),
            tracker.silent_for(a, now).as_millis(),
            a.beats(),
            a.limit(tracker.config()).as_millis(),
        );
        match tracker.status_text(a.pid()) {
            Some(text) => json_string(&mut out, text),
            None => out.push_str("null"),
        }
        out.push('}');
    }
    let c = observer.counters();
    let t = observer.tracker().counters();
    let _ = write!(
        out,
        "],\"counters\":{{\"datagrams\":{},\"frames\":{},\"notifications\":{},\"decode_errors\":{},\"auth_failures\":{},\"truncated\":{},\"fds_closed\":{},\"global_rate_limited\":{},\"rate_limited\":{},\"stalls\":{},\"recoveries\":{},\"exits\":{},\"evictions\":{},\"rejections\":{},\"no_pidfd\":{},\"polled_agents\":{},\"polled_exits\":{},\"decode_reports_suppressed\":{},\"event_write_errors\":{},\"events_dropped\":{}}}}}",
        c.datagrams,
        c.frames,
        c.notifications,
        c.decode_errors,
        c.auth_failures,
        c.truncated,
        c.fds_closed,
        c.global_rate_limited,
        t.rate_limited,
        t.stalls,
        t.recoveries,
        t.exits,
        t.evictions,
        t.rejections,
        c.no_pidfd,
        observer.polled_agents(),
        c.polled_exits,
        c.decode_reports_suppressed,
        sink.event_write_errors,
        sink.events_dropped
    );
    if let Some(hooks) = view.hooks {
        let h = hooks.counters();
        // Inside the counters object: drop its closing brace, add, close again.
        out.truncate(out.len() - 2);
        let _ = write!(
            out,
            ",\"hooks_started\":{},\"hooks_failed\":{},\"hooks_unsuccessful\":{},\"hooks_timed_out\":{},\"hooks_dropped\":{},\"hooks_debounced\":{},\"hooks_running\":{},\"hooks_queued\":{}}}}}",
            h.started,
            h.failed,
            h.unsuccessful,
            h.timed_out,
            h.dropped,
            h.debounced,
            hooks.running(),
            hooks.queued()
        );
    }
    out
}
