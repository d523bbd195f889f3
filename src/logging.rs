//! Log output: level, and text or JSON lines, on stderr — through a path that never blocks the
//! caller.
//!
//! Every log call formats its line and hands it to a bounded queue; one writer thread drains the
//! queue into stderr. When stderr stops taking lines (a full pipe nobody reads, a stalled
//! journald, Ctrl-S on a terminal) only the writer thread blocks: the queue fills, further lines
//! are dropped and counted ([`dropped`], exported in `/metrics`), and the main thread goes on
//! enforcing its deadlines. The writer says how many lines were lost once stderr moves again.
//! Under systemd (`JOURNAL_STREAM` set) text lines carry no timestamp, since journald adds its
//! own. A message is written as one line whatever it holds, so that a value another client wrote
//! to etcd cannot forge lines or drive the terminal: the text format escapes every control
//! character in the whole message (as `{:?}` does), the JSON format escapes it as a JSON string,
//! and both cut it at [`MAX_MESSAGE`] bytes, saying how many were left out. This module does not
//! decide what is logged.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use crate::format::{cut, escaped, json_string, rfc3339};

/// Lines waiting for the writer at most; beyond that they are dropped. A few hundred bytes each.
const QUEUE: usize = 1024;
/// A message longer than this is cut: no line of ours needs more (a value from etcd in it is
/// shown at most [`crate::format::SHOWN`] bytes long).
const MAX_MESSAGE: usize = 8 * 1024;

/// Lines dropped because the queue was full (or the writer thread could not be started).
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines queued and not yet written: [`flush`] waits for this to reach zero.
static PENDING: AtomicU64 = AtomicU64::new(0);
/// Since when (ms after `EPOCH`, + 1) the writer has been inside a write to stderr; 0: it is not.
static WRITING_SINCE: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Log lines lost so far because stderr did not take them in time.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

struct Queued {
    filter: env_logger::Logger,
    json: bool,
    timestamps: bool,
    tx: SyncSender<String>,
}

/// Why logging could not be set up.
#[derive(Debug)]
pub enum Error {
    /// Not a log format we know (the value given).
    Format(String),
    /// The writer thread could not be started.
    Writer(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Error::Format(v) => write!(f, "{v:?} is not a log format (use text or json)"),
            Error::Writer(e) => write!(
                f,
                "cannot start the log writer thread ({e}); check the thread limit (ulimit -u)"
            ),
        }
    }
}

/// `level` is an `env_logger` filter (e.g. `debug` or `info,tonic=warn`); `None` falls back to
/// `RUST_LOG`, then `info`.
pub fn init(level: Option<&str>, format: Option<&str>) -> Result<(), Error> {
    let json = match format.map(str::trim) {
        None | Some("" | "text") => false,
        Some("json") => true,
        Some(other) => return Err(Error::Format(other.to_string())),
    };
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = level {
        b.parse_filters(level);
    }
    let filter = b.build();
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("log".into())
        .spawn(move || write_lines(rx))
        .map_err(Error::Writer)?;
    log::set_max_level(filter.filter());
    let logger = Queued {
        filter,
        json,
        timestamps: std::env::var_os("JOURNAL_STREAM").is_none(),
        tx,
    };
    // Only `main` sets a logger, once: a second call would leave the first in place, harmlessly.
    let _ = log::set_boxed_logger(Box::new(logger));
    Ok(())
}

/// Waits for the queued lines to be written (before exiting), but not once a write has been
/// stuck for `limit`: a stderr that does not take them must not keep the wrapper — and its lease
/// — alive. A writer that has merely not had a CPU yet (two busy cores: a config error's only
/// line was lost after 250 ms) is waited for up to 20 times as long.
pub fn flush(limit: Duration) {
    let until = Instant::now() + limit * 20;
    let limit = limit.as_millis() as u64;
    while PENDING.load(Ordering::SeqCst) > 0 && Instant::now() < until {
        let since = WRITING_SINCE.load(Ordering::SeqCst);
        if since != 0 && now_ms().saturating_sub(since) >= limit {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The writer thread: the only one that may block on stderr.
fn write_lines(rx: Receiver<String>) {
    let mut reported = 0;
    for line in rx {
        let mut err = std::io::stderr().lock();
        let lost = DROPPED.load(Ordering::Relaxed);
        if lost > reported {
            let _ = writeln!(
                err,
                "WARN  {} log line(s) dropped: stderr did not take them in time",
                lost - reported
            );
            reported = lost;
        }
        // A failing stderr (closed) loses the line; there is nowhere else to say so.
        WRITING_SINCE.store(now_ms(), Ordering::SeqCst);
        let _ = err.write_all(line.as_bytes());
        WRITING_SINCE.store(0, Ordering::SeqCst);
        PENDING.fetch_sub(1, Ordering::SeqCst);
    }
}

impl log::Log for Queued {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, r: &log::Record) {
        if !self.filter.matches(r) {
            return;
        }
        PENDING.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(self.format(r)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                PENDING.fetch_sub(1, Ordering::SeqCst);
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {}
}

impl Queued {
    fn format(&self, r: &log::Record) -> String {
        let msg = r.args().to_string();
        if self.json {
            return format!(
                "{{\"ts\":\"{}\",\"level\":\"{}\",\"target\":{},\"msg\":{}}}\n",
                rfc3339(SystemTime::now()),
                r.level().as_str().to_ascii_lowercase(),
                json_string(r.target()),
                json_string(&cut(&msg, MAX_MESSAGE))
            );
        }
        let msg = escaped(&msg, MAX_MESSAGE);
        let mut line = String::with_capacity(msg.len() + 64);
        if self.timestamps {
            line.push_str(&rfc3339(SystemTime::now()));
            line.push(' ');
        }
        let ours = r.target().starts_with(env!("CARGO_CRATE_NAME"));
        if ours {
            line.push_str(&format!("{:<5} {msg}\n", r.level()));
        } else {
            line.push_str(&format!("{:<5} {}: {msg}\n", r.level(), r.target()));
        }
        line
    }
}
