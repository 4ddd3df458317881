//! The agent side: a [`Beacon`] sends VLP frames to an observer, and
//! [`install_panic_hook`] makes a panicking process send the terminal Critical frame first,
//! so the observer reports `Critical` at once instead of waiting for the silence to time out.
//!
//! ```no_run
//! use std::time::Duration;
//! use varta_watch::beacon::{Beacon, install_panic_hook};
//! use varta_watch::vlp::Status;
//!
//! let path = "/run/varta-watch/observer.sock";
//! install_panic_hook(path)?;
//! let mut beacon = Beacon::connect(path)?;
//! loop {
//!     // ... one unit of work ...
//!     beacon.beat()?;
//!     std::thread::sleep(Duration::from_millis(500));
//! #   break;
//! }
//! beacon.set_status(Status::Degraded);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::vlp::{Frame, Status, TERMINAL_NONCE};

/// Sends heartbeats for this process.
#[derive(Debug)]
pub struct Beacon {
    socket: UnixDatagram,
    /// Where to reconnect when the observer restarts (its new socket is a new inode).
    path: Option<PathBuf>,
    pid: u32,
    nonce: u64,
    status: Status,
    payload: u32,
    epoch: Instant,
}

impl Beacon {
    /// Connects to the observer socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let socket = UnixDatagram::unbound()?;
        socket.connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach the varta-watch observer at {}: {e}",
                    path.display()
                ),
            )
        })?;
        Ok(Self {
            socket,
            path: Some(path.to_owned()),
            pid: std::process::id(),
            nonce: 0,
            status: Status::Ok,
            payload: 0,
            epoch: Instant::now(),
        })
    }

    /// The health reported by the following beats.
    pub fn set_status(&mut self, status: Status) {
        self.status = status;
    }

    /// The opaque context carried by the following beats.
    pub fn set_payload(&mut self, payload: u32) {
        self.payload = payload;
    }

    /// The frame the next [`beat`](Self::beat) sends.
    pub fn next_frame(&self) -> Frame {
        Frame {
            status: self.status,
            pid: self.pid,
            timestamp: (self.epoch.elapsed().as_nanos() as u64).min(u64::MAX - 1),
            nonce: next_nonce(self.nonce),
            payload: self.payload,
        }
    }

    /// Sends one heartbeat.
    ///
    /// If the observer restarted (its socket is gone or refuses), reconnects to the path once
    /// and retries, so agents outlive observer restarts.
    pub fn beat(&mut self) -> io::Result<()> {
        let frame = self.next_frame();
        self.send(&frame.encode())?;
        self.nonce = frame.nonce;
        Ok(())
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.socket.send(bytes) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::NotFound
                        | io::ErrorKind::NotConnected
                ) && self.path.is_some() =>
            {
                let socket = UnixDatagram::unbound()?;
                if let Some(path) = &self.path {
                    socket.connect(path)?;
                }
                self.socket = socket;
                self.socket.send(bytes).map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the terminal Critical frame: this process is going down.
    pub fn send_terminal(&mut self) -> io::Result<()> {
        let frame = Frame {
            status: Status::Critical,
            nonce: TERMINAL_NONCE,
            ..self.next_frame()
        };
        self.send(&frame.encode())
    }
}

impl Beacon {
    /// Beats every `interval` on a thread of its own until the returned handle is dropped.
    ///
    /// A beat from a separate thread proves that the process is alive and scheduled, not that
    /// its work loop makes progress: where there is a loop, prefer calling
    /// [`beat`](Self::beat) from it. Send errors (observer restarting, queue full) are counted
    /// and the next beat is tried on schedule.
    pub fn spawn(mut self, interval: Duration) -> io::Result<BeaconThread> {
        let (stop, stopped) = mpsc::channel::<()>();
        let failures = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&failures);
        let handle = std::thread::Builder::new()
            .name("varta-beacon".into())
            .spawn(move || {
                loop {
                    if self.beat().is_err() {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    match stopped.recv_timeout(interval) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => break,
                    }
                }
            })?;
        Ok(BeaconThread {
            stop: Some(stop),
            handle: Some(handle),
            failures,
        })
    }
}

/// A [`Beacon`] beating on its own thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct BeaconThread {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
    failures: Arc<AtomicU64>,
}

impl BeaconThread {
    /// Beats that could not be sent.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

impl Drop for BeaconThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Nonces start at 1, increase strictly, and wrap from `u64::MAX - 1` to 0 (`u64::MAX` is the
/// terminal nonce).
fn next_nonce(last: u64) -> u64 {
    if last >= TERMINAL_NONCE - 1 {
        0
    } else {
        last + 1
    }
}

static PANIC_BEACON: OnceLock<std::sync::Mutex<Beacon>> = OnceLock::new();

/// Installs a panic hook that sends the terminal Critical frame to the observer at `path`
/// before running the previous hook. The socket is connected now, so the hook allocates
/// nothing and opens nothing while panicking. Installing twice keeps the first socket.
pub fn install_panic_hook(path: impl AsRef<Path>) -> io::Result<()> {
    let beacon = Beacon::connect(path)?;
    if PANIC_BEACON.set(std::sync::Mutex::new(beacon)).is_err() {
        return Ok(());
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(lock) = PANIC_BEACON.get()
            && let Ok(mut beacon) = lock.try_lock()
        {
            let _ = beacon.send_terminal();
        }
        previous(info);
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_start_at_one_and_wrap_below_the_terminal_value() {
        assert_eq!(next_nonce(0), 1);
        assert_eq!(next_nonce(41), 42);
        assert_eq!(next_nonce(TERMINAL_NONCE - 2), TERMINAL_NONCE - 1);
        assert_eq!(next_nonce(TERMINAL_NONCE - 1), 0);
    }

    #[test]
    fn beats_are_valid_frames_with_advancing_nonces() {
        let (rx, tx) = UnixDatagram::pair().expect("pair");
        let mut beacon = Beacon {
            socket: tx,
            path: None,
            pid: std::process::id(),
            nonce: 0,
            status: Status::Ok,
            payload: 7,
            epoch: Instant::now(),
        };
        beacon.beat().expect("beat");
        beacon.set_status(Status::Degraded);
        beacon.beat().expect("beat");
        beacon.send_terminal().expect("terminal");
        let mut buf = [0u8; 64];
        let mut frames = Vec::new();
        for _ in 0..3 {
            let n = rx.recv(&mut buf).expect("recv");
            frames.push(Frame::decode(&buf[..n]).expect("valid frame"));
        }
        assert_eq!(
            (frames[0].nonce, frames[0].status, frames[0].payload),
            (1, Status::Ok, 7)
        );
        assert_eq!((frames[1].nonce, frames[1].status), (2, Status::Degraded));
        assert!(frames[2].is_terminal() && frames[2].status == Status::Critical);
        assert!(frames[1].timestamp >= frames[0].timestamp);
    }

    #[test]
    fn spawned_beacon_beats_on_schedule_and_stops_on_drop() {
        let (rx, tx) = UnixDatagram::pair().expect("pair");
        let beacon = Beacon {
            socket: tx,
            path: None,
            pid: std::process::id(),
            nonce: 0,
            status: Status::Ok,
            payload: 0,
            epoch: Instant::now(),
        };
        let thread = beacon.spawn(Duration::from_millis(10)).expect("spawn");
        std::thread::sleep(Duration::from_millis(120));
        drop(thread);
        rx.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        let mut nonces = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            nonces.push(Frame::decode(&buf[..n]).expect("frame").nonce);
        }
        assert!(
            (3..=14).contains(&nonces.len()),
            "{} beats in 120 ms at 10 ms",
            nonces.len()
        );
        assert!(nonces.windows(2).all(|w| w[1] == w[0] + 1), "{nonces:?}");
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            rx.recv(&mut buf).is_err(),
            "no beat after the handle is dropped"
        );
    }
}
