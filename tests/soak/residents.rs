//! The residents: two wrappers that live through the whole soak, never killed, restarted or cut,
//! on a lock of their own on the soak's etcd: one leads from start to end, the other waits behind
//! it from start to end. This module owns starting them, checking that they stay so (the
//! leader's command runs on, the waiter's never starts, neither wrapper exits), sampling their
//! footprint (`VmRSS`, open descriptors, threads) and the verdict that it stayed flat. The churn
//! on the contested lock is `soak.rs`'s; the residents only live beside it.
//!
//! Why not on the contested lock: a wrapper leads at most once in its life. Deposed (a forcer's
//! yield request, its key or the holder record deleted, a freeze past its renew deadline) or its
//! command done, it exits. A resident there would end at the first forcer or delete to meet it
//! while leading, and a resident waiter reaches the head within a minute as the keys ahead of it
//! go. On their own lock they share the rest with the churn: etcd and its load, and every freeze
//! (each one times their requests out: their connection is dropped and made again, their watches
//! too). What they repeat for an hour is what any long-lived wrapper repeats: renewals, each
//! confirmed by a read, and reconnections. Not what a waiter on a busy lock repeats besides: a
//! read of the holder record at each hand-over (the churn's wrappers live too briefly for a leak
//! there to show).

use crate::common::candidate::Candidate;
use crate::common::etcd::Etcd;
use crate::common::invariant::Monitor;
use crate::common::procfs::{footprint, Footprint};
use crate::common::wait_until;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const LOCK: &str = "eae-soak-residents";
/// The defaults (15 s, 10 s): what users run, and a renew deadline no freeze of the soak (4 s at
/// most) comes near, so the leader is never deposed.
const LEASE_S: u64 = 15;
const RENEW: &str = "10s";
/// As the churn's: back on etcd a quarter of a second after a freeze, not two.
const RETRY: &str = "250ms";
const LEADER: &str = "r-lead";
const WAITER: &str = "r-wait";

/// What a resident may hold at the end above its first sample after the warm-up, whatever the
/// run's length: a leak of one per renewal passes these within the short soak's 20 s, one per
/// reconnection within the long soak's first minutes.
/// Descriptors: a resident holds a dozen (its stdio, the runtime's epolls, eventfd and timerfd,
/// its etcd connection, its guardian's pipe and pidfd, its command's pidfd while it leads), the
/// same number from its first second to its last in every run so far. A moment's one more (a
/// connection being made beside the one a freeze broke) is gone by the next sample, so it
/// cannot be in all of the last ones; 2 is for something opened once, late, beside its rest.
const SPARE_FDS: u64 = 2;
/// Threads: its five (main, log writer, signals, alarm, election) from first to last, none
/// started per event; 2 is for one started once, late, twice over.
const SPARE_THREADS: u64 = 2;
/// Memory: of a resident's 4 MiB of `VmRSS`, 0.7 to 0.8 MiB is its own (`RssAnon`), the rest
/// its mapped binary and libc; code first run late (the first freeze, the first long one) and the
/// allocator keeping what a burst freed add tens of KiB (+20 and +28 KiB in 5 minutes). 2 MiB
/// more than the baseline is over twice all its private memory: only a leak grows that far.
const SPARE_RSS_KIB: u64 = 2048;
/// "At the end" is the least of the last samples: a leak never shrinks, a moment's peak (a
/// connection being replaced as the sample is taken) does.
const END_SAMPLES: usize = 3;

struct Resident {
    role: &'static str,
    cand: Candidate,
    samples: Vec<(f64, Footprint)>,
}

pub struct Residents {
    leader: Resident,
    waiter: Resident,
    mon: Monitor,
    t0: Instant,
    warmup: Duration,
    every: Duration,
    next: Instant,
}

/// The baseline, the end and whether the end stays within the spares.
pub struct Verdict {
    pub role: &'static str,
    pub baseline: Footprint,
    pub end: Footprint,
    pub samples: usize,
}

impl Verdict {
    pub fn flat(&self) -> bool {
        self.end.fds <= self.baseline.fds + SPARE_FDS
            && self.end.threads <= self.baseline.threads + SPARE_THREADS
            && self.end.rss_kib <= self.baseline.rss_kib + SPARE_RSS_KIB
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (b, e) = (self.baseline, self.end);
        write!(
            f,
            "resident {}: VmRSS {} -> {} KiB (spare {SPARE_RSS_KIB}), fds {} -> {} (spare \
             {SPARE_FDS}), threads {} -> {} (spare {SPARE_THREADS}), {} samples",
            self.role, b.rss_kib, e.rss_kib, b.fds, e.fds, b.threads, e.threads, self.samples
        )
    }
}

impl Residents {
    /// Starts the leader, waits for its command, then the waiter, queued behind it. Sampling
    /// begins: every `duration`/30 (at least 0.5 s, at most 10 s), the baseline the first sample
    /// after a warm-up of `duration`/10, at most a minute (their connection made, their watches
    /// set, their first renewal at most a few seconds away).
    pub fn start(etcd: &Etcd, dir: &Path, duration: Duration) -> Residents {
        let log = dir.join("residents.log");
        let mon = Monitor::start(&log);
        let spawn = |id: &str| {
            Candidate::new(id)
                .lock(LOCK)
                .endpoints(&etcd.endpoint())
                .lease(LEASE_S)
                .renew(RENEW)
                .retry(RETRY)
                .log(&log)
                .spawn()
        };
        let leader = spawn(LEADER);
        mon.wait_for_start(Some(LEADER), Duration::from_secs(30));
        let waiter = spawn(WAITER);
        let prefix = format!("{LOCK}/");
        wait_until(
            Duration::from_secs(30),
            "the resident waiter queued",
            || etcd.get_prefix_keys(&prefix).len() == 2,
        );
        let every = (duration / 30).clamp(Duration::from_millis(500), Duration::from_secs(10));
        let resident = |role, cand| Resident {
            role,
            cand,
            samples: Vec::new(),
        };
        let t0 = Instant::now();
        Residents {
            leader: resident("leader", leader),
            waiter: resident("waiter", waiter),
            mon,
            t0,
            warmup: (duration / 10).min(Duration::from_secs(60)),
            every,
            next: t0,
        }
    }

    /// Takes a sample of both if one is due, after checking that they are as they should be.
    pub fn sample_if_due(&mut self) {
        if Instant::now() >= self.next {
            self.sample();
        }
    }

    /// Checks both, then samples both now.
    pub fn sample(&mut self) {
        self.check();
        let t = self.t0.elapsed().as_secs_f64();
        for r in [&mut self.leader, &mut self.waiter] {
            let pid = r.cand.pid();
            let fp = footprint(pid).unwrap_or_else(|| panic!("resident {} gone", r.role));
            r.samples.push((t, fp));
        }
        self.next = Instant::now() + self.every;
    }

    /// Both wrappers alive, the leader's command the only one ever started on their lock, and
    /// still running.
    fn check(&mut self) {
        for r in [&mut self.leader, &mut self.waiter] {
            assert!(
                r.cand.is_running(),
                "resident {} ({}) exited: {:?}",
                r.role,
                r.cand.identity(),
                r.cand.exit_status()
            );
        }
        self.mon.assert_no_overlap();
        let lives: Vec<(String, u32)> = self
            .mon
            .procs()
            .iter()
            .map(|p| (p.identity.clone(), p.pid))
            .collect();
        let running = self.mon.running();
        assert!(
            lives.len() == 1 && running == lives && lives[0].0 == LEADER,
            "on the residents' lock, only {LEADER}'s command may ever start, and it runs on: \
             started {lives:?}, running {running:?}\n{}",
            self.mon.timeline()
        );
    }

    /// Each resident's baseline and end. Panics if a warm-up left fewer than `END_SAMPLES`
    /// samples after it.
    pub fn verdicts(&self) -> Vec<Verdict> {
        [&self.leader, &self.waiter]
            .into_iter()
            .map(|r| {
                let warm = self.warmup.as_secs_f64();
                let after: Vec<Footprint> = r
                    .samples
                    .iter()
                    .filter(|(t, _)| *t >= warm)
                    .map(|&(_, fp)| fp)
                    .collect();
                assert!(
                    after.len() > END_SAMPLES,
                    "resident {}: {} samples after the {warm} s warm-up",
                    r.role,
                    after.len()
                );
                let last = &after[after.len() - END_SAMPLES..];
                let least = |f: fn(&Footprint) -> u64| last.iter().map(f).min().unwrap_or(0);
                Verdict {
                    role: r.role,
                    baseline: after[0],
                    end: Footprint {
                        rss_kib: least(|f| f.rss_kib),
                        fds: least(|f| f.fds),
                        threads: least(|f| f.threads),
                    },
                    samples: r.samples.len(),
                }
            })
            .collect()
    }

    /// The `residents` of `soak.json`: every sample of each.
    pub fn to_json(&self) -> Value {
        [&self.leader, &self.waiter]
            .into_iter()
            .map(|r| {
                let samples: Vec<Value> = r
                    .samples
                    .iter()
                    .map(|(t, fp)| {
                        json!({"t_s": t, "rss_kib": fp.rss_kib, "fds": fp.fds, "threads": fp.threads})
                    })
                    .collect();
                json!({"role": r.role, "identity": r.cand.identity(), "samples": samples})
            })
            .collect()
    }

    /// The last lines of each resident's stderr, for a failure's dump.
    pub fn stderr_tails(&self) -> String {
        [&self.leader, &self.waiter]
            .into_iter()
            .map(|r| {
                let text = r.cand.stderr_text();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "---- last lines of resident {} ({}, pid {}) ----\n{}\n",
                    r.role,
                    r.cand.identity(),
                    r.cand.pid(),
                    lines[lines.len().saturating_sub(100)..].join("\n")
                )
            })
            .collect()
    }
}
