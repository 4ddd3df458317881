//! The daemon proper (Linux): flags, the observer loop, metrics and control servers.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use platform_primitives::clock::ClockSource;
use platform_primitives::uds::{BoundSocket, UdsBinder};
use varta_watch::beacon::Beacon;
use varta_watch::daemon::{
    HookConfig, HookRunner, Hooks, SelfNotify, install_stop_signals, stop_requested,
    take_activated_socket,
};
use varta_watch::event::json_string;
use varta_watch::service::{Identity, ServiceRule, Services, SignalDecision, signal_name};
use varta_watch::tracker::{EvictionPolicy, RateLimit, TrackerConfig};
use varta_watch::vlp::Status;
use varta_watch::{Event, Observer, ObserverConfig, report};

/// One observer for the liveness of many local processes.
#[derive(Debug, Parser)]
#[command(name = "varta-watch", version = env!("CARGO_PKG_VERSION"), about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a running daemon's status snapshot (JSON) from its control socket.
    Status {
        /// The daemon's control socket.
        #[arg(long)]
        control: PathBuf,
    },
    /// Send VLP heartbeats for this process until killed (or --count beats).
    Beacon {
        /// The observer's socket.
        #[arg(long)]
        socket: PathBuf,
        /// Time between beats.
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        interval: Duration,
        /// Stop after this many beats.
        #[arg(long)]
        count: Option<u64>,
        /// Health to report: ok, degraded or critical.
        #[arg(long, value_enum, default_value_t = Health::Ok)]
        status: Health,
        /// Send the terminal Critical frame after the last beat (as a panicking agent does).
        #[arg(long)]
        terminal: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Health {
    Ok,
    Degraded,
    Critical,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Where to bind the observer's datagram socket (point NOTIFY_SOCKET here).
    #[arg(long, default_value = "/run/varta-watch/observer.sock")]
    socket: PathBuf,
    /// Silence after which an agent is stalled (e.g. 500ms, 5s, 2m; more than zero).
    #[arg(long, value_parser = parse_positive_duration, default_value = "5s")]
    threshold: Duration,
    /// Permission bits of the socket, in octal.
    #[arg(long, value_parser = parse_mode, default_value = "600")]
    socket_mode: u32,
    /// Accept reports only from this uid (repeatable; default: anyone who can write the socket).
    #[arg(long = "allow-uid")]
    allow_uid: Vec<u32>,
    /// Where to write JSON-lines events: a file (appended) or - for stdout. A failed write is
    /// logged and retried (up to 1 MiB of events are kept), never fatal.
    #[arg(long, default_value = "-")]
    events: String,
    /// Also write an event for every heartbeat (verbose).
    #[arg(long)]
    log_beats: bool,
    /// The clock deadlines run on: monotonic (stops during suspend) or boottime.
    #[arg(long, value_enum, default_value_t = Clock::Monotonic)]
    clock: Clock,
    /// Most agents tracked at once (1 to 1048576).
    #[arg(long, value_parser = parse_capacity, default_value_t = 256)]
    capacity: usize,
    /// Which agents may be dropped when the table is full.
    #[arg(long, value_enum, default_value_t = Eviction::Strict)]
    eviction: Eviction,
    /// Extra allowance on a new agent's first deadline.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    startup_grace: Duration,
    /// Stall after this many missed beats of an agent's learned interval (capped by --threshold).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    missed_beats: Option<u32>,
    /// Per-agent datagrams per second, fractions allowed (0.5: one every 2 s; 0: unlimited).
    /// Bursts of twice the rate (at least one datagram) pass. Critical datagrams always pass.
    #[arg(long, value_parser = parse_rate, allow_negative_numbers = true, default_value_t = 100.0)]
    rate_limit: f64,
    /// Datagrams per second over all agents, fractions allowed (0 or absent: unlimited).
    /// Bursts of the rate (at least one datagram) pass. Critical datagrams always pass.
    #[arg(long, value_parser = parse_rate, allow_negative_numbers = true)]
    global_rate_limit: Option<f64>,
    /// Command run (by /bin/sh) when an agent stalls; gets VARTA_PID, VARTA_EVENT,
    /// VARTA_SILENT_MS, the agent's pidfd as descriptor 3 (VARTA_PIDFD), VARTA_SERVICE (and
    /// VARTA_UNIT, VARTA_COMM when known), PATH, HOME and LANG, and nothing else of the
    /// daemon's environment. Its output is logged, never mixed into the events.
    #[arg(long)]
    on_stall: Option<String>,
    /// Command run when an agent exits.
    #[arg(long)]
    on_exit: Option<String>,
    /// Command run when an agent reports itself critical.
    #[arg(long)]
    on_critical: Option<String>,
    /// Hooks running at once, at most (1 to 1024); more wait in the queue.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024), default_value_t = 4)]
    hook_concurrency: u32,
    /// Hooks waiting for a slot, at most (0 to 65536); more are dropped, counted and warned
    /// about.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=65536), default_value_t = 256)]
    hook_queue: u32,
    /// A hook still running after this gets SIGTERM (with everything it started: its process
    /// group), and SIGKILL 5 s later.
    #[arg(long, value_parser = parse_positive_duration, default_value = "30s")]
    hook_timeout: Duration,
    /// The same event of the same agent runs its hook at most once per this window (0s: every
    /// time).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    hook_debounce: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (loopback addresses only).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Serve the status snapshot on this Unix socket (for `varta-watch status`).
    #[arg(long)]
    control: Option<PathBuf>,
    /// A TOML file of services: per-service thresholds, hooks and a stall signal, matched by
    /// systemd unit, cgroup path or command name (see the README).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Diagnostics on stderr at this level and above (events go to --events regardless).
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Clock {
    Monotonic,
    Boottime,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Eviction {
    Strict,
    Balanced,
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 500ms, 5s or 2m"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{text}' (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("'{text}': {e}"))
}

pub(crate) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("must be more than zero (an agent would stall the moment it spoke)".into());
    }
    Ok(d)
}

fn parse_capacity(text: &str) -> Result<usize, String> {
    const MAX: usize = 1 << 20;
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{text}' is not a number of agents from 1 to {MAX}"
        )),
    }
}

/// Datagrams per second: finite and not negative (0 means unlimited).
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "'{text}' is not a rate: datagrams per second, 0 or more (0: unlimited)"
        )),
    }
}

/// A token bucket for `rate` datagrams a second (0: none), whose burst holds at least one
/// datagram so that rates below one a second admit one datagram every `1/rate` seconds.
fn bucket(rate: f64, burst_seconds: f64) -> Option<RateLimit> {
    (rate > 0.0).then(|| RateLimit {
        rate,
        burst: (rate * burst_seconds).max(1.0),
    })
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{text}' is not an octal mode like 600 or 660"))
}

pub(super) fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Status { control }) => print_status(&control),
        Some(Command::Beacon {
            socket,
            interval,
            count,
            status,
            terminal,
        }) => run_beacon(&socket, interval, count, status, terminal),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A config file that cannot work is a usage error, as a bad flag is.
            let code = if err.downcast_ref::<crate::config::ConfigError>().is_some() {
                2
            } else {
                1
            };
            // The whole chain: an error's source holds the OS cause.
            eprintln!("varta-watch: {}", platform_primitives::error::chain(&*err));
            ExitCode::from(code)
        }
    }
}

fn print_status(control: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut stream = UnixStream::connect(control).map_err(|e| {
        format!(
            "cannot connect to the control socket {}: {e}",
            control.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"status\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    println!("{reply}");
    Ok(())
}

fn run_beacon(
    socket: &std::path::Path,
    interval: Duration,
    count: Option<u64>,
    health: Health,
    terminal: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut beacon = Beacon::connect(socket)?;
    beacon.set_status(match health {
        Health::Ok => Status::Ok,
        Health::Degraded => Status::Degraded,
        Health::Critical => Status::Critical,
    });
    let mut sent = 0;
    let mut failing = false;
    while count.is_none_or(|n| sent < n) {
        // An agent outlives its observer: report the first failure of a run, keep beating.
        match beacon.beat() {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                eprintln!("varta-watch beacon: {e}; retrying every {interval:?}");
                failing = true;
            }
            Err(_) => {}
        }
        sent += 1;
        std::thread::sleep(interval);
    }
    if terminal {
        beacon.send_terminal()?;
    }
    Ok(())
}

/// What a server thread asks the event loop for.
enum Request {
    Metrics(mpsc::Sender<String>),
    Status(mpsc::Sender<String>),
}

fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    // A config file that cannot work stops the daemon before it binds anything.
    let rules: Vec<ServiceRule> = match &args.config {
        Some(path) => crate::config::load(path)?,
        None => Vec::new(),
    };
    // Before any thread exists: signal dispositions and the activation environment.
    install_stop_signals()?;
    let activated = take_activated_socket()?;
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(match args.log_level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        })
        .init();
    // Every agent watched through a pidfd holds a descriptor: use all the system allows.
    match varta_watch::daemon::raise_fd_limit() {
        Ok((old, new)) if new > old => {
            tracing::info!(from = old, to = new, "raised the descriptor limit");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    if let Some(socket) = &activated {
        match varta_watch::daemon::passes_credentials(socket) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                socket = %args.socket.display(),
                "the socket passed by socket activation lacks SO_PASSCRED: datagrams queued \
                 before varta-watch started carry no sender credentials and are dropped \
                 (auth_failure, reason no_credentials). Add PassCredentials=yes to the .socket \
                 unit; turning it on now for later datagrams"
            ),
            Err(e) => tracing::warn!("cannot read SO_PASSCRED of the activated socket: {e}"),
        }
    }
    if activated.is_none() {
        create_socket_dir(&args.socket, args.socket_mode)?;
    }
    if let Some(control) = &args.control {
        create_socket_dir(control, args.socket_mode)?;
    }

    let config = ObserverConfig {
        socket_mode: args.socket_mode,
        tracker: TrackerConfig {
            timeout: args.threshold,
            startup_grace: args.startup_grace,
            missed_beats: args.missed_beats,
            capacity: args.capacity,
            eviction: match args.eviction {
                Eviction::Strict => EvictionPolicy::Strict,
                Eviction::Balanced => EvictionPolicy::Balanced,
            },
            per_agent_limit: bucket(args.rate_limit, 2.0),
        },
        clock: match args.clock {
            Clock::Monotonic => ClockSource::Monotonic,
            Clock::Boottime => ClockSource::Boottime,
        },
        allow_uids: (!args.allow_uid.is_empty()).then(|| args.allow_uid.clone()),
        global_limit: args.global_rate_limit.and_then(|rate| bucket(rate, 1.0)),
        ..ObserverConfig::new(&args.socket)
    };
    let activated_socket = activated.is_some();
    let mut observer = match activated {
        Some(socket) => Observer::from_socket(socket, config)?,
        None => Observer::bind(config)?,
    };
    tracing::info!(
        socket = %args.socket.display(),
        activated = activated_socket,
        threshold = ?args.threshold,
        capacity = args.capacity,
        "observing"
    );

    let mut sink = EventSink::open(&args.events)?;
    let mut hooks = HookRunner::with_config(
        Hooks {
            on_stall: args.on_stall.clone(),
            on_exit: args.on_exit.clone(),
            on_critical: args.on_critical.clone(),
        },
        HookConfig {
            concurrency: args.hook_concurrency as usize,
            queue: args.hook_queue as usize,
            timeout: args.hook_timeout,
            debounce: args.hook_debounce,
            ..HookConfig::default()
        },
    );

    let mut services = Services::new(rules);
    if !services.rules().is_empty() {
        tracing::info!(services = services.rules().len(), "service rules loaded");
    }

    let (requests, inbox) = mpsc::channel::<Request>();
    if let Some(addr) = args.metrics_addr {
        if !addr.ip().is_loopback() {
            return Err(format!("--metrics-addr {addr} is not a loopback address").into());
        }
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        let requests = requests.clone();
        std::thread::spawn(move || serve_metrics(listener, requests));
    }
    let _control: Option<BoundSocket<UnixListener>> = match &args.control {
        Some(path) => {
            let bound = UdsBinder::new("varta-watch control")
                .mode(args.socket_mode)
                .bind_listener(path)?;
            let listener = bound.socket().try_clone()?;
            let requests = requests.clone();
            std::thread::spawn(move || serve_control(listener, requests));
            Some(bound)
        }
        None => None,
    };
    drop(requests);

    let mut notify = SelfNotify::from_env().transpose()?;
    if let Some(n) = &notify {
        n.send("READY=1\nSTATUS=observing")?;
    }
    let mut events = Vec::new();
    while !stop_requested() {
        observer.poll(Duration::from_millis(50), &mut events)?;
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for event in events.drain(..) {
            handle_event(
                &event,
                ts_ms,
                args.log_beats,
                &mut observer,
                &mut services,
                &mut hooks,
                &mut sink,
            );
        }
        sink.flush();
        hooks.tick();
        let view = report::DaemonView {
            sink: &sink.counters,
            hooks: Some(&hooks),
            services: Some(&services),
        };
        while let Ok(request) = inbox.try_recv() {
            let _ = match request {
                Request::Metrics(reply) => reply.send(report::metrics(&observer, &view)),
                Request::Status(reply) => reply.send(report::status_json(&observer, &view)),
            };
        }
        if let Some(n) = &mut notify {
            n.ping_if_due()?;
        }
    }
    sink.flush();
    if let Some(n) = &notify {
        let _ = n.send("STOPPING=1");
    }
    tracing::info!(agents = observer.tracker().len(), "stopping on signal");
    Ok(())
}

/// One event: label (a new agent is classified and given its service's threshold), write,
/// signal (a stalled agent of a service with `signal`), run hooks, forget (a departed agent).
fn handle_event(
    event: &Event,
    ts_ms: u128,
    log_beats: bool,
    observer: &mut Observer,
    services: &mut Services,
    hooks: &mut HookRunner,
    sink: &mut EventSink,
) {
    let pid = event.pid();
    if let (Event::Registered { .. }, Some(pid)) = (event, pid) {
        let threshold = services
            .classify(pid, Identity::of_process(pid))
            .and_then(|rule| rule.threshold);
        if let Some(threshold) = threshold {
            observer.set_agent_limit(pid, threshold);
        }
    }
    if !matches!(event, Event::Beat { .. }) || log_beats {
        let mut line = event.to_json(ts_ms);
        if let Some(label) = pid.and_then(|pid| services.label(pid)) {
            line.pop(); // the closing brace
            line.push_str(",\"service\":");
            json_string(&mut line, &label.service);
            if matches!(event, Event::Registered { .. }) {
                let id = &label.identity;
                for (key, value) in [
                    ("unit", &id.unit),
                    ("cgroup", &id.cgroup),
                    ("comm", &id.comm),
                ] {
                    if let Some(value) = value {
                        line.push_str(&format!(",\"{key}\":"));
                        json_string(&mut line, value);
                    }
                }
            }
            line.push('}');
        }
        sink.push(&line);
    }
    let Some(pid) = pid else {
        return;
    };
    if matches!(event, Event::Stalled { .. }) {
        let (signal, result, error) = match services.on_stall(pid, Instant::now()) {
            SignalDecision::None => (None, "", None),
            SignalDecision::Limited(signal) => (Some(signal), "flap_limited", None),
            SignalDecision::Send(signal) => match observer.signal_agent(pid, signal) {
                Ok(()) => {
                    services.signal_result(pid, true);
                    (Some(signal), "sent", None)
                }
                Err(e) => {
                    services.signal_result(pid, false);
                    (Some(signal), "failed", Some(e.to_string()))
                }
            },
        };
        if let Some(signal) = signal {
            let service = services
                .label(pid)
                .map_or("unknown", |l| l.service.as_str());
            let name = signal_name(signal);
            match (result, &error) {
                ("sent", _) => tracing::info!(pid, service, "stalled: sent {name}"),
                ("flap_limited", _) => tracing::warn!(
                    pid,
                    service,
                    "stalled: {name} not sent, the service had its signal_limit within its \
                     signal_window (flap control)"
                ),
                (_, e) => tracing::warn!(pid, service, "stalled: cannot send {name}: {e:?}"),
            }
            let mut line =
                format!("{{\"ts_ms\":{ts_ms},\"event\":\"signal\",\"pid\":{pid},\"service\":");
            json_string(&mut line, service);
            line.push_str(&format!(",\"signal\":\"{name}\",\"result\":\"{result}\""));
            if let Some(e) = &error {
                line.push_str(",\"error\":");
                json_string(&mut line, e);
            }
            line.push('}');
            sink.push(&line);
        }
    }
    let command = services
        .rule_of(pid)
        .and_then(|rule| rule.hooks.for_event(event))
        .or_else(|| hooks.hooks().for_event(event))
        .map(str::to_owned);
    if let Some(command) = command {
        let mut labels = Vec::new();
        if let Some(label) = services.label(pid) {
            labels.push(("VARTA_SERVICE", label.service.as_str()));
            if let Some(unit) = &label.identity.unit {
                labels.push(("VARTA_UNIT", unit.as_str()));
            }
            if let Some(comm) = &label.identity.comm {
                labels.push(("VARTA_COMM", comm.as_str()));
            }
        }
        hooks.submit(event, &command, observer.pidfd(pid), &labels);
    }
    if matches!(
        event,
        Event::Exited { .. } | Event::Evicted { .. } | Event::Rejected { .. }
    ) {
        services.forget(pid);
    }
}

fn ask(
    requests: &mpsc::Sender<Request>,
    make: fn(mpsc::Sender<String>) -> Request,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    requests.send(make(tx)).ok()?;
    rx.recv_timeout(Duration::from_secs(5)).ok()
}

/// Most clients served at once by each of the metrics and control servers; more are answered
/// "busy" at once. Each client has [`CLIENT_TIMEOUT`] to send its request.
const MAX_CLIENTS: usize = 32;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves each accepted connection on its own thread, at most [`MAX_CLIENTS`] at once, so an
/// idle or slow client never delays another. `busy` answers a connection over the bound.
fn serve_concurrently<S: Send + 'static>(
    mut accept: impl FnMut() -> io::Result<S>,
    serve: impl Fn(S) + Send + Sync + 'static,
    busy: impl Fn(S),
) {
    let serve = Arc::new(serve);
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match accept() {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on an accept that fails.
                tracing::debug!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::AcqRel);
            busy(stream);
            continue;
        }
        let (serve, done) = (Arc::clone(&serve), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("varta-client".into())
            .spawn(move || {
                serve(stream);
                done.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve_metrics(listener: TcpListener, requests: mpsc::Sender<Request>) {
    serve_concurrently(
        || listener.accept().map(|(stream, _)| stream),
        move |stream| answer_metrics(stream, &requests),
        |mut stream| {
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        },
    );
}

fn answer_metrics(mut stream: TcpStream, requests: &mpsc::Sender<Request>) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    // Read the whole request head (request line and headers): closing a TCP socket with
    // unread bytes makes the kernel reset the connection, and the client loses the reply.
    let mut line = String::new();
    let mut reader = BufReader::new((&mut stream).take(16 * 1024));
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut header = String::new();
    while matches!(reader.read_line(&mut header), Ok(n) if n > 0) && header.trim_end() != "" {
        header.clear();
    }
    drop(reader);
    let response = if line.starts_with("GET /metrics ") {
        match ask(requests, Request::Metrics) {
            Some(body) => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                platform_primitives::prom::CONTENT_TYPE,
                body.len()
            ),
            None => {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            }
        }
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
    };
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn serve_control(listener: UnixListener, requests: mpsc::Sender<Request>) {
    serve_concurrently(
        || listener.accept().map(|(stream, _)| stream),
        move |stream| answer_control(stream, &requests),
        |mut stream| {
            let _ = stream.write_all(b"{\"error\":\"too many control clients\"}");
        },
    );
}

fn answer_control(mut stream: UnixStream, requests: &mpsc::Sender<Request>) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut line = String::new();
    if BufReader::new((&mut stream).take(1024))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let reply = match line.trim() {
        "status" => ask(requests, Request::Status)
            .unwrap_or_else(|| "{\"error\":\"observer busy\"}".to_owned()),
        other => format!("{{\"error\":\"unknown request {other:?}\"}}"),
    };
    let _ = stream.write_all(reply.as_bytes());
}

/// Creates the missing directories above a socket path: 0755 when the socket admits others
/// (they must reach it), else 0700. Existing directories are left as they are.
fn create_socket_dir(socket: &Path, socket_mode: u32) -> Result<(), String> {
    let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mode = if socket_mode & 0o077 != 0 {
        0o755
    } else {
        0o700
    };
    let missing: Vec<&Path> = parent.ancestors().take_while(|d| !d.exists()).collect();
    for dir in missing.into_iter().rev() {
        match DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => {
                // The umask may have narrowed the mode: set it exactly.
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(
                    |e| {
                        format!(
                            "cannot set the mode of the socket directory {}: {e}",
                            dir.display()
                        )
                    },
                )?;
                tracing::info!(dir = %dir.display(), mode = format!("{mode:o}"), "created the socket directory");
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "cannot create the socket directory {}: {e}",
                    dir.display()
                ));
            }
        }
    }
    Ok(())
}

/// Where events go: stdout or an appended file. A failed write does not stop the daemon: the
/// unwritten lines wait in a bounded backlog and are retried on the next loop turn; the
/// failure is counted and logged (naming the file) at most every [`SINK_WARNING_INTERVAL`].
struct EventSink {
    name: String,
    out: Box<dyn Write>,
    pending: Vec<u8>,
    counters: report::SinkCounters,
    warned_at: Option<Instant>,
}

/// Unwritten event bytes kept for retrying; older lines are dropped past this.
const SINK_BACKLOG: usize = 1 << 20;
const SINK_WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl EventSink {
    fn open(events: &str) -> Result<Self, String> {
        let (name, out): (String, Box<dyn Write>) = if events == "-" {
            ("standard output".into(), Box::new(io::stdout()))
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(events)
                .map_err(|e| format!("cannot open the event file {events}: {e}"))?;
            (format!("the event file {events}"), Box::new(file))
        };
        Ok(Self {
            name,
            out,
            pending: Vec::with_capacity(64 * 1024),
            counters: report::SinkCounters::default(),
            warned_at: None,
        })
    }

    fn push(&mut self, line: &str) {
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        if self.pending.len() > SINK_BACKLOG {
            // Drop the oldest whole lines.
            let excess = self.pending.len() - SINK_BACKLOG;
            let cut = self.pending[excess..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.pending.len(), |i| excess + i + 1);
            let dropped = self.pending[..cut].iter().filter(|&&b| b == b'\n').count();
            self.counters.events_dropped += dropped as u64;
            self.pending.drain(..cut);
        }
    }

    /// Writes what is pending; on failure keeps the rest for the next call.
    fn flush(&mut self) {
        let mut written = 0;
        let result = loop {
            if written == self.pending.len() {
                break self.out.flush();
            }
            match self.out.write(&self.pending[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.pending.drain(..written);
        if let Err(e) = result {
            self.counters.event_write_errors += 1;
            if self
                .warned_at
                .is_none_or(|at| at.elapsed() >= SINK_WARNING_INTERVAL)
            {
                self.warned_at = Some(Instant::now());
                tracing::warn!(
                    errors = self.counters.event_write_errors,
                    pending_bytes = self.pending.len(),
                    "cannot write events to {}: {e}; retrying",
                    self.name
                );
            }
        }
    }
}
