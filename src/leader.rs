//! Who leads, as clients see it: the JSON line that `--leader` prints and `/leader` answers, and
//! the `--leader` mode itself (`--watch`: a line at start and on every change, until SIGTERM or
//! SIGINT).
//!
//! What "leads" means, and how it is read from etcd, is `election::observe`'s; this module owns
//! the line, the retries and the exit codes. The mode runs the reader on a thread of its own
//! with a single-threaded tokio runtime, as the election does, while the main thread waits for
//! it or for a signal (blocked since start-up, see `signals`).

use std::io::Write as _;
use std::sync::mpsc;
use std::time::Duration;

use log::{error, info, warn};

use crate::config::Config;
use crate::election::Observer;
use crate::etcd;
use crate::exit;
use crate::failure;
use crate::format::{cut, json_string};

/// Who leads: the identity (the holder record's value), the address it advertises, and the
/// fencing revision its command got, where there are ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// As the record holds it: anybody with write access to the lock chose it. Shown escaped
    /// (`format::Foreign`) in logs and the status, JSON-escaped in the line.
    pub identity: Vec<u8>,
    pub address: Option<String>,
    pub revision: Option<i64>,
}

/// Strings longer than this are cut (saying how much was left out): a value anybody with write
/// access to the lock chose must not make a line of megabytes.
const MAX_STRING: usize = 4096;

/// `{"leader":...,"address":...,"revision":...}`, with `null` for what is not known; nobody
/// leading is all three `null`.
pub fn json_line(leader: Option<&Leader>) -> String {
    let string = |s: &str| json_string(&cut(s, MAX_STRING));
    let identity = leader.map(|l| string(&String::from_utf8_lossy(&l.identity)));
    let address = leader.and_then(|l| l.address.as_deref()).map(string);
    let revision = leader.and_then(|l| l.revision).map(|r| r.to_string());
    let null = || "null".to_string();
    format!(
        r#"{{"leader":{},"address":{},"revision":{}}}"#,
        identity.unwrap_or_else(null),
        address.unwrap_or_else(null),
        revision.unwrap_or_else(null),
    )
}

/// The leader's address when it is an http(s) URL fit for a `Location:` header (what `/leader`
/// redirects to).
pub fn url(leader: &Leader) -> Option<&str> {
    let a = leader.address.as_deref()?;
    let fit = a.len() <= crate::config::MAX_ADVERTISE
        && !a.chars().any(|c| c.is_control() || c.is_whitespace());
    let web = a.starts_with("http://") || a.starts_with("https://");
    (fit && web).then_some(a)
}

/// Reads failed this many times in a row: `--leader` gives up.
const ATTEMPTS: u32 = 3;

/// After a watch broke while etcd still answers reads: a pause before watching again, so that a
/// watch etcd keeps refusing cannot spin.
const REWATCH: Duration = Duration::from_millis(100);

enum Msg {
    Signal(i32),
    Done(i32),
}

/// Runs `--leader` (`watch`: `--leader --watch`); returns the exit code.
pub fn run(cfg: Config, watch: bool) -> i32 {
    let (tx, rx) = mpsc::channel();
    let started = signals_to(&tx).and_then(|()| reader(cfg, watch, tx));
    if let Err(e) = started {
        error!("cannot start --leader: {e}");
        return exit::INTERNAL;
    }
    loop {
        match rx.recv_timeout(LOOK) {
            Ok(Msg::Signal(libc::SIGTERM | libc::SIGINT)) => return exit::WITHDRAWN,
            // No child to forward to: the rest changes nothing (none kills us by default).
            Ok(Msg::Signal(_)) => {}
            Ok(Msg::Done(code)) => return code,
            Err(mpsc::RecvTimeoutError::Timeout) if reader_gone() => return exit::WITHDRAWN,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return exit::INTERNAL,
        }
    }
}

/// How often `--leader --watch` looks whether anybody still reads its lines.
const LOOK: Duration = Duration::from_secs(1);

/// The reader of our lines is gone (the other end of a pipe closed, as `| head -1` does):
/// nothing printed can be read any more, and a line may not come for hours to find it out.
fn reader_gone() -> bool {
    let mut out = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd of ours, and no wait.
    let n = unsafe { libc::poll(&mut out, 1, 0) };
    n > 0 && out.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

fn signals_to(tx: &mpsc::Sender<Msg>) -> std::io::Result<()> {
    crate::signals::spawn(tx.clone(), Msg::Signal)
}

fn reader(cfg: Config, watch: bool, tx: mpsc::Sender<Msg>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("leader".into())
        .spawn(move || {
            let retry = cfg.retry_period;
            let observer = Observer::new(cfg);
            let code = rt.block_on(async {
                if watch {
                    Box::pin(follow(&observer, retry)).await
                } else {
                    Box::pin(once(&observer, retry)).await
                }
            });
            let _ = tx.send(Msg::Done(code));
        })?;
    Ok(())
}

/// Prints the line; `Err`: stdout is closed or full for good.
fn print(leader: Option<&Leader>) -> Result<(), std::io::Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", json_line(leader))?;
    out.flush()
}

/// One read, retried [`ATTEMPTS`] times; 0 when someone leads, 3 when nobody does.
async fn once(observer: &Observer, retry: Duration) -> i32 {
    for attempt in 1..=ATTEMPTS {
        match observer.read().await {
            Ok(reading) => {
                let code = match reading.leader {
                    Some(_) => exit::WITHDRAWN,
                    None => exit::NOBODY,
                };
                return match print(reading.leader.as_ref()) {
                    Ok(()) => code,
                    Err(e) => unwritable(&e),
                };
            }
            Err(e) if permanent(&e) => return refused(&e),
            Err(e) if attempt < ATTEMPTS => {
                warn!("reading who leads: {e}; again in {retry:?}");
                tokio::time::sleep(retry).await;
            }
            Err(e) => {
                error!("reading who leads: {e}; gave up after {ATTEMPTS} attempts");
            }
        }
    }
    exit::UNREADABLE
}

/// A line at start and on every change, for ever: failures are retried every `retry`, but for a
/// permanent one before the first line (nothing would ever be printed).
async fn follow(observer: &Observer, retry: Duration) -> i32 {
    let mut shown: Option<Option<Leader>> = None;
    let mut failing = false;
    loop {
        let reading = match observer.read().await {
            Ok(reading) => reading,
            Err(e) if shown.is_none() && permanent(&e) => return refused(&e),
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!("reading who leads: {e}; retrying every {retry:?}");
                }
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        if std::mem::replace(&mut failing, false) {
            info!("etcd answers again");
        }
        if shown.as_ref() != Some(&reading.leader) {
            if let Err(e) = print(reading.leader.as_ref()) {
                return unwritable(&e);
            }
            shown = Some(reading.leader);
        }
        // From the next revision: the one read is printed, and a watch from it would be a watch
        // in the past, woken by that very change on etcd's next 100 ms sync, to read again.
        if let Err(e) = observer.wait(reading.revision + 1).await {
            if !matches!(e, etcd::Error::Replaced) {
                warn!("watching who leads: {e}; reading again");
                tokio::time::sleep(REWATCH).await;
            }
        }
    }
}

fn permanent(e: &etcd::Error) -> bool {
    failure::classify(e).cause.permanent()
}

fn refused(e: &etcd::Error) -> i32 {
    error!("reading who leads: etcd refuses us: {e}");
    exit::REFUSED
}

fn unwritable(e: &std::io::Error) -> i32 {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // Its reader is gone: nothing left to do.
        return exit::WITHDRAWN;
    }
    error!("cannot write the leader's line to stdout: {e}");
    exit::INTERNAL
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(address: Option<&str>) -> Leader {
        Leader {
            identity: b"a\"b\n".to_vec(),
            address: address.map(str::to_string),
            revision: Some(7),
        }
    }

    #[test]
    fn lines() {
        assert_eq!(
            json_line(None),
            r#"{"leader":null,"address":null,"revision":null}"#
        );
        assert_eq!(
            json_line(Some(&leader(Some("10.0.0.5:5432")))),
            r#"{"leader":"a\"b\u000a","address":"10.0.0.5:5432","revision":7}"#
        );
        let long = "x".repeat(1 << 20);
        assert!(json_line(Some(&leader(Some(&long)))).len() < 2 * MAX_STRING);
    }

    #[test]
    fn only_http_urls_are_redirected_to() {
        assert_eq!(url(&leader(Some("http://a:1/"))), Some("http://a:1/"));
        assert_eq!(url(&leader(Some("https://a/x"))), Some("https://a/x"));
        for not in [
            "10.0.0.5:5432",
            "ftp://a",
            "http://a/\r\nX: y",
            "http://a b",
        ] {
            assert_eq!(url(&leader(Some(not))), None, "{not:?}");
        }
        assert_eq!(url(&leader(None)), None);
    }
}
