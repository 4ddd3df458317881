//! The daemon proper (Linux): flags, the observer loop, metrics and control servers.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use platform_primitives::clock::ClockSource;
use platform_primitives::uds::{BoundSocket, UdsBinder};
use varta_watch::beacon::Beacon;
use varta_watch::daemon::{
    HookRunner, Hooks, SelfNotify, install_stop_signals, stop_requested, take_activated_socket,
};
use varta_watch::tracker::{EvictionPolicy, RateLimit, TrackerConfig};
use varta_watch::vlp::Status;
use varta_watch::{Event, Observer, ObserverConfig, report};

/// One observer for the liveness of many local processes.
#[derive(Debug, Parser)]
#[command(name = "varta-watch", version, about)]
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
    /// Silence after which an agent is stalled (e.g. 500ms, 5s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    threshold: Duration,
    /// Permission bits of the socket, in octal.
    #[arg(long, value_parser = parse_mode, default_value = "600")]
    socket_mode: u32,
    /// Accept reports only from this uid (repeatable; default: anyone who can write the socket).
    #[arg(long = "allow-uid")]
    allow_uid: Vec<u32>,
    /// Where to write JSON-lines events: a file (appended) or - for stdout.
    #[arg(long, default_value = "-")]
    events: String,
    /// Also write an event for every heartbeat (verbose).
    #[arg(long)]
    log_beats: bool,
    /// The clock deadlines run on: monotonic (stops during suspend) or boottime.
    #[arg(long, value_enum, default_value_t = Clock::Monotonic)]
    clock: Clock,
    /// Most agents tracked at once.
    #[arg(long, default_value_t = 256)]
    capacity: usize,
    /// Which agents may be dropped when the table is full.
    #[arg(long, value_enum, default_value_t = Eviction::Strict)]
    eviction: Eviction,
    /// Extra allowance on a new agent's first deadline.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    startup_grace: Duration,
    /// Stall after this many missed beats of an agent's learned interval (capped by --threshold).
    #[arg(long)]
    missed_beats: Option<u32>,
    /// Per-agent datagrams per second (0: unlimited); Critical datagrams always pass.
    #[arg(long, default_value_t = 100.0)]
    rate_limit: f64,
    /// Datagrams per second over all agents (default: unlimited).
    #[arg(long)]
    global_rate_limit: Option<f64>,
    /// Command run (by /bin/sh) when an agent stalls; gets VARTA_PID, VARTA_EVENT,
    /// VARTA_SILENT_MS and the agent's pidfd as descriptor 3 (VARTA_PIDFD).
    #[arg(long)]
    on_stall: Option<String>,
    /// Command run when an agent exits.
    #[arg(long)]
    on_exit: Option<String>,
    /// Command run when an agent reports itself critical.
    #[arg(long)]
    on_critical: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (loopback addresses only).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Serve the status snapshot on this Unix socket (for `varta-watch status`).
    #[arg(long)]
    control: Option<PathBuf>,
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

fn parse_duration(text: &str) -> Result<Duration, String> {
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
            eprintln!("varta-watch: {err}");
            ExitCode::FAILURE
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
            per_agent_limit: (args.rate_limit > 0.0).then_some(RateLimit {
                rate: args.rate_limit,
                burst: args.rate_limit * 2.0,
            }),
        },
        clock: match args.clock {
            Clock::Monotonic => ClockSource::Monotonic,
            Clock::Boottime => ClockSource::Boottime,
        },
        allow_uids: (!args.allow_uid.is_empty()).then(|| args.allow_uid.clone()),
        global_limit: args
            .global_rate_limit
            .map(|rate| RateLimit { rate, burst: rate }),
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

    let mut sink: Box<dyn Write> = if args.events == "-" {
        Box::new(io::stdout())
    } else {
        Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.events)
                .map_err(|e| format!("cannot open the event file {}: {e}", args.events))?,
        )
    };
    let mut hooks = HookRunner::new(Hooks {
        on_stall: args.on_stall.clone(),
        on_exit: args.on_exit.clone(),
        on_critical: args.on_critical.clone(),
    });

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
            if matches!(event, Event::Beat { .. }) && !args.log_beats {
                continue;
            }
            writeln!(sink, "{}", event.to_json(ts_ms))?;
            let pidfd = event.pid().and_then(|pid| observer.pidfd(pid));
            if let Err(e) = hooks.run(&event, pidfd) {
                eprintln!(
                    "varta-watch: hook for {} failed to start: {e}",
                    event.name()
                );
            }
        }
        sink.flush()?;
        hooks.reap();
        while let Ok(request) = inbox.try_recv() {
            let _ = match request {
                Request::Metrics(reply) => reply.send(report::metrics(&observer)),
                Request::Status(reply) => reply.send(report::status_json(&observer)),
            };
        }
        if let Some(n) = &mut notify {
            n.ping_if_due()?;
        }
    }
    if let Some(n) = &notify {
        let _ = n.send("STOPPING=1");
    }
    tracing::info!(agents = observer.tracker().len(), "stopping on signal");
    Ok(())
}

fn ask(
    requests: &mpsc::Sender<Request>,
    make: fn(mpsc::Sender<String>) -> Request,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    requests.send(make(tx)).ok()?;
    rx.recv_timeout(Duration::from_secs(5)).ok()
}

fn serve_metrics(listener: TcpListener, requests: mpsc::Sender<Request>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        // Read the whole request head (request line and headers): closing a TCP socket with
        // unread bytes makes the kernel reset the connection, and the client loses the reply.
        let mut line = String::new();
        let mut reader = BufReader::new(&mut stream);
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let mut header = String::new();
        while matches!(reader.read_line(&mut header), Ok(n) if n > 0) && header.trim_end() != "" {
            header.clear();
        }
        drop(reader);
        let response = if line.starts_with("GET /metrics ") {
            match ask(&requests, Request::Metrics) {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
            }
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        let _ = stream.write_all(response.as_bytes());
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

fn serve_control(listener: UnixListener, requests: mpsc::Sender<Request>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        if BufReader::new(&mut stream).read_line(&mut line).is_err() {
            continue;
        }
        let reply = match line.trim() {
            "status" => ask(&requests, Request::Status)
                .unwrap_or_else(|| "{\"error\":\"observer busy\"}".to_owned()),
            other => format!("{{\"error\":\"unknown request {other:?}\"}}"),
        };
        let _ = stream.write_all(reply.as_bytes());
    }
}
