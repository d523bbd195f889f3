//! The status endpoint under a flood of idle connections: 64 clients that connect, send nothing
//! and reconnect as soon as they are dropped cannot starve a liveness probe, and the wrapper's
//! threads and memory stay bounded meanwhile.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::candidate::Candidate;
use common::etcd::Etcd;
use common::wait_until;

const CLIENTS: usize = 64;
const PROBES: usize = 20;

/// `Threads` and `VmRSS` (KiB) of `pid`, from `/proc/PID/status`.
fn threads_and_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the status"))
    };
    (field("Threads:"), field("VmRSS:"))
}

#[test]
fn idle_connections_cannot_starve_healthz() {
    let etcd = Etcd::start();
    let port = common::free_port();
    // At the default lease: the flood's 64 threads load the machine, and a renewal they delay
    // past a short lease's overdue mark would make /healthz answer 503, rightly, but this test
    // is about being answered.
    let mut c = Candidate::new("flooded")
        .lock("flood")
        .endpoints(&etcd.endpoint())
        .status_port(port)
        .spawn();
    let healthz = c.status_url("/healthz");
    // Leading, its command started: every thread of the wrapper is up before they are counted.
    let root = c.status_url("/");
    wait_until(Duration::from_secs(10), "the candidate leading", || {
        common::http("GET", &root, Duration::from_secs(1))
            .is_some_and(|(code, body)| code == 200 && body.contains(r#""phase":"running""#))
    });
    let (threads_before, _) = threads_and_rss(c.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, connects) = (stop.clone(), connects.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    connects.fetch_add(1, Ordering::Relaxed);
                    // Idle until the server drops us (or the test ends), then straight back.
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "the flood to fill the slots",
        || connects.load(Ordering::Relaxed) >= CLIENTS as u64,
    );

    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    let mut missed = Vec::new();
    for _ in 0..PROBES {
        let t = Instant::now();
        let got = common::http("GET", &healthz, Duration::from_secs(1));
        let took = t.elapsed();
        match got {
            Some((200, _)) if took <= Duration::from_secs(1) => {
                answered += 1;
                slowest = slowest.max(took);
            }
            Some((code, body)) => missed.push(format!("{code} {body} after {took:?}")),
            None => missed.push(format!("no answer after {took:?}")),
        }
    }
    let (threads, rss_kib) = threads_and_rss(c.pid());
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().expect("a flood client panicked");
    }
    eprintln!(
        "{answered}/{PROBES} probes answered within 1 s (slowest {slowest:?}) under {} connects; \
         wrapper threads {threads_before} -> {threads}, rss {rss_kib} KiB",
        connects.load(Ordering::Relaxed)
    );
    assert!(
        answered * 100 >= PROBES * 95,
        "only {answered}/{PROBES} probes answered within 1 s: {missed:?}"
    );
    assert_eq!(threads, threads_before, "the flood added threads");
    assert!(rss_kib < 64 * 1024, "rss {rss_kib} KiB under the flood");
    assert!(c.is_running());
}
