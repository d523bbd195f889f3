//! Randomized churn against the one promise: at no instant do two candidates' commands run at
//! once. Candidates (each behind its own fault [`Proxy`]) on one etcd are SIGKILLed,
//! SIGTERMed and restarted, their links blackholed, reset and healed, and etcd is frozen
//! briefly, at random; the invariant [`Monitor`] is checked all along. At the end everything is
//! healed and exactly one leader must emerge and stay.
//!
//! `soak_short` runs in `make test` for a fixed 20 s. `soak_long` (`make soak`, ignored
//! otherwise) runs for `EAE_SOAK_SECONDS` (default 300). `EAE_SOAK_SEED` replays a seed (the
//! sequence of decisions, not the exact timing).
//!
//! Each restart of a slot runs the same wrapper identity (so the wrapper adopts the key its
//! previous life left), but the test child logs a per-incarnation identity `sN.G`, so an old
//! incarnation's command still running when the next one starts counts as an overlap too.
//!
//! The long soak also brings the other actors on the lock: slots restarted as forcers
//! (`FORCE_ACQUIRE`, with the others queued), forcers SIGKILLed or SIGTERMed and restarted at
//! once with their identity, an operator's `etcdctl del` of the leader's key or of any
//! candidate's, and twins: a second wrapper with a live slot's identity, which must refuse (exit
//! 76) without running its command (its child logs `sN.tK`, so running would be an overlap).

mod common;

use common::candidate::{kill_logged_test_children, Candidate};
use common::etcd::Etcd;
use common::invariant::{compute_overlaps, Monitor};
use common::proxy::{Mode, Proxy};
use common::records::monotonic_ns;
use common::TempDir;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const LEASE_S: u64 = 3;
const LEASE: Duration = Duration::from_secs(LEASE_S);
const RENEW: &str = "2s";
const RETRY: &str = "250ms";
const LOCK: &str = "eae-soak";

#[test]
fn soak_short() {
    // Fixed on purpose: the Makefile exports EAE_SOAK_SECONDS=300 to every target.
    soak(Duration::from_secs(20), 3, false);
}

#[test]
#[ignore = "long soak: `make soak` (EAE_SOAK_SECONDS, default 300)"]
fn soak_long() {
    let secs = std::env::var("EAE_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(300);
    soak(Duration::from_secs(secs), 4, true);
}

/// xorshift64*: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }
}

fn seed() -> u64 {
    if let Some(s) = std::env::var("EAE_SOAK_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return s.max(1);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)).max(1)
}

struct Slot {
    id: String,
    proxy: Proxy,
    cand: Option<Candidate>,
    generation: u32,
    /// Whether the running incarnation has `FORCE_ACQUIRE` on.
    forcer: bool,
}

/// The wrapper's exit code for an identity in use by another live candidate.
const EXIT_TWIN: i32 = 76;

/// The soak's world. Drop order: the reaper's safety net last-but-one, etcd and the temp dir
/// last. On a panic it dumps the action log, the timeline and every wrapper's stderr.
struct World {
    slots: Vec<Slot>,
    /// Wrappers that exited (or were killed): kept for their stderr.
    graveyard: Vec<Candidate>,
    mon: Monitor,
    reaper: Reaper,
    actions: Vec<String>,
    etcd: Etcd,
    log: PathBuf,
    _dir: TempDir,
}

/// SIGKILLs every logged test child still alive: per-incarnation child identities differ from
/// the wrapper identity, so `Candidate`'s own clean-up does not find them by name.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        kill_logged_test_children(&self.0, None);
    }
}

impl World {
    fn act(&mut self, what: String) {
        let line = format!("[{}] {what}", self.mon.rel(monotonic_ns()));
        self.actions.push(line);
    }

    fn spawn(&mut self, i: usize, rng: &mut Rng) {
        self.spawn_as(i, rng, false);
    }

    fn spawn_as(&mut self, i: usize, rng: &mut Rng, forcer: bool) {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        slot.forcer = forcer;
        let child_id = format!("{}.{}", slot.id, slot.generation);
        let variants: [&[&str]; 4] = [
            &[],
            &["--ignore-term"],
            &["--fork", "1"],
            &["--fork", "1", "--ignore-term"],
        ];
        let extra = rng.pick(&variants).unwrap();
        let cand = Candidate::new(&slot.id)
            .lock(LOCK)
            .endpoints(&slot.proxy.endpoint())
            .lease(LEASE_S)
            .renew(RENEW)
            .retry(RETRY)
            .log(&self.log)
            .args(&["--id", &child_id])
            .args(extra)
            .force(forcer)
            .spawn();
        slot.cand = Some(cand);
        let role = if forcer { " as a forcer" } else { "" };
        self.act(format!("start {child_id} {extra:?}{role}"));
    }

    /// `etcdctl del` of the leader's key (the oldest under the prefix) or of any candidate's.
    fn delete_a_key(&mut self, rng: &mut Rng) -> bool {
        let prefix = format!("{LOCK}/");
        let mut args = vec!["get", "--prefix", "--keys-only", prefix.as_str()];
        let head = rng.below(2) == 0;
        if head {
            args.extend(["--sort-by=CREATE", "--order=ASCEND", "--limit=1"]);
        }
        let out = self.etcd.etcdctl(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let keys: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        let Some(key) = rng.pick(&keys) else {
            return false;
        };
        let ok = self.etcd.etcdctl(&["del", key]).status.success();
        let which = if head { "the leader's" } else { "a" };
        self.act(format!("etcdctl del {key} ({which} key): ok={ok}"));
        ok
    }

    /// A second wrapper with the identity of live slot `i` (reaching etcd directly): it must
    /// refuse with [`EXIT_TWIN`] and never run its command. Waits for its verdict while checking
    /// the invariant; nothing else happens meanwhile. Returns whether it refused.
    fn twin(&mut self, i: usize, twins: u64) -> bool {
        let child_id = format!("{}.t{twins}", self.slots[i].id);
        let mut twin = Candidate::new(&self.slots[i].id)
            .lock(LOCK)
            .endpoints(&self.etcd.endpoint())
            .lease(LEASE_S)
            .renew(RENEW)
            .retry(RETRY)
            .log(&self.log)
            .args(&["--id", &child_id])
            .spawn();
        self.act(format!("twin {child_id} of a live {}", self.slots[i].id));
        let until = Instant::now() + Duration::from_secs(15);
        while twin.is_running() && Instant::now() < until {
            self.watch(Duration::from_millis(50));
        }
        let exit = twin.exit_status().and_then(|st| st.code());
        self.act(format!("twin {child_id} exit {exit:?}"));
        self.collect_exited();
        let refused = exit == Some(EXIT_TWIN);
        // Refusing is owed only while the original lives on: if it died meanwhile, the twin may
        // join as a plain candidate. Either way it never ran beside anyone (checked above).
        if !refused && self.slots[i].cand.is_none() && twin.is_running() {
            self.slots[i].cand = Some(twin);
            self.slots[i].forcer = false;
            return false;
        }
        assert!(
            refused,
            "the twin {child_id} of a live {} did not refuse: exit {exit:?}",
            self.slots[i].id
        );
        self.graveyard.push(twin);
        true
    }

    /// Move wrappers that exited to the graveyard.
    fn collect_exited(&mut self) {
        for i in 0..self.slots.len() {
            let exited = self.slots[i].cand.as_mut().is_some_and(|c| !c.is_running());
            if exited {
                let c = self.slots[i].cand.take().unwrap();
                let line = format!(
                    "wrapper {} (gen {}) exited: {:?}",
                    self.slots[i].id,
                    self.slots[i].generation,
                    c.exit_status()
                );
                self.act(line);
                self.graveyard.push(c);
            }
        }
    }

    fn live(&mut self) -> Vec<usize> {
        self.collect_exited();
        (0..self.slots.len())
            .filter(|&i| self.slots[i].cand.is_some())
            .collect()
    }

    fn dead(&mut self) -> Vec<usize> {
        self.collect_exited();
        (0..self.slots.len())
            .filter(|&i| self.slots[i].cand.is_none())
            .collect()
    }

    /// The slot whose command runs now, if any.
    fn leader_slot(&self) -> Option<usize> {
        let running = self.mon.running();
        let (id, _) = running.first()?;
        let slot = id.split('.').next()?;
        self.slots.iter().position(|s| s.id == slot)
    }

    fn check(&self) {
        let ov = self.mon.overlaps();
        if !ov.is_empty() {
            // assert_no_overlap renders the timeline and panics; the World's Drop adds the rest.
            self.mon.assert_no_overlap();
            panic!("overlaps: {ov:?}");
        }
    }

    /// Sleep `d` while checking the invariant every 20 ms.
    fn watch(&self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            self.check();
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    /// A live candidate to hurt: the leader half the time.
    fn pick_target(&mut self, rng: &mut Rng) -> Option<usize> {
        let live = self.live();
        match self.leader_slot() {
            Some(l) if rng.below(2) == 0 && live.contains(&l) => Some(l),
            _ => rng.pick(&live),
        }
    }

    fn step(&mut self, rng: &mut Rng, stats: &mut Stats, actors: bool) {
        match rng.below(if actors { 22 } else { 16 }) {
            0..=2 => {
                if let Some(i) = self.pick_target(rng) {
                    let c = self.slots[i].cand.as_mut().unwrap();
                    c.kill9();
                    stats.kill9 += 1;
                    let line = format!("kill -9 wrapper {}", self.slots[i].id);
                    self.act(line);
                }
            }
            3..=4 => {
                if let Some(i) = self.pick_target(rng) {
                    let sig = if rng.below(3) == 0 {
                        libc::SIGINT
                    } else {
                        libc::SIGTERM
                    };
                    self.slots[i].cand.as_mut().unwrap().signal(sig);
                    stats.term += 1;
                    let line = format!("signal {sig} to wrapper {}", self.slots[i].id);
                    self.act(line);
                }
            }
            5..=7 => {
                let dead = self.dead();
                if let Some(i) = rng.pick(&dead) {
                    self.spawn(i, rng);
                    stats.starts += 1;
                }
            }
            8..=9 => {
                let i = rng.below(self.slots.len() as u64) as usize;
                let mode = if rng.below(3) == 0 {
                    Mode::Reset
                } else {
                    Mode::Blackhole
                };
                self.slots[i].proxy.set_mode(mode);
                stats.cuts += 1;
                let line = format!("proxy of {}: {mode:?}", self.slots[i].id);
                self.act(line);
            }
            10..=12 => {
                let cut: Vec<usize> = (0..self.slots.len())
                    .filter(|&i| self.slots[i].proxy.mode() != Mode::Pass)
                    .collect();
                if let Some(i) = rng.pick(&cut) {
                    self.slots[i].proxy.set_mode(Mode::Pass);
                    let line = format!("proxy of {}: Pass", self.slots[i].id);
                    self.act(line);
                }
            }
            13 => {
                // Mostly short, sometimes past the renew deadline, rarely past the TTL.
                let d = match rng.below(6) {
                    0 => rng.range_ms(2_000, 4_000),
                    1 | 2 => rng.range_ms(800, 2_000),
                    _ => rng.range_ms(100, 800),
                };
                self.act(format!("pause etcd for {d:?}"));
                self.etcd.pause();
                self.watch(d);
                self.etcd.resume();
                self.act("resume etcd".into());
                stats.pauses += 1;
            }
            16 | 17 => {
                let dead = self.dead();
                if let Some(i) = rng.pick(&dead) {
                    self.spawn_as(i, rng, true);
                    stats.forces += 1;
                }
            }
            18 => {
                let live = self.live();
                let forcers: Vec<usize> =
                    live.into_iter().filter(|&i| self.slots[i].forcer).collect();
                if let Some(i) = rng.pick(&forcers) {
                    let c = self.slots[i].cand.as_mut().unwrap();
                    let how = if rng.below(2) == 0 {
                        c.kill9();
                        "kill -9".to_string()
                    } else {
                        // Let it withdraw (or stop its command) before the next life starts.
                        c.signal(libc::SIGTERM);
                        let st = c.wait_timeout(2 * LEASE);
                        format!("SIGTERM ({st:?})")
                    };
                    let line = format!("{how} forcer {}; restarting it", self.slots[i].id);
                    self.act(line);
                    if self.slots[i].cand.as_mut().unwrap().is_running() {
                        // Still stopping a stubborn command: it comes back another time.
                        return;
                    }
                    self.graveyard.push(self.slots[i].cand.take().unwrap());
                    self.spawn_as(i, rng, true);
                    stats.forcer_restarts += 1;
                }
            }
            19 | 20 if self.delete_a_key(rng) => stats.deletes += 1,
            21 => {
                let live = self.live();
                let passing: Vec<usize> = live
                    .into_iter()
                    .filter(|&i| self.slots[i].proxy.mode() == Mode::Pass)
                    .collect();
                if let Some(i) = rng.pick(&passing) {
                    if self.twin(i, stats.twins) {
                        stats.twins_refused += 1;
                    }
                    stats.twins += 1;
                }
            }
            _ => {}
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("---- soak actions ----");
        for a in &self.actions {
            eprintln!("{a}");
        }
        eprintln!("---- monitor timeline ----\n{}", self.mon.timeline());
        let all = self
            .graveyard
            .iter()
            .chain(self.slots.iter().filter_map(|s| s.cand.as_ref()));
        for c in all {
            eprintln!(
                "---- stderr of wrapper {} (pid {}, exit {:?}) ----\n{}",
                c.identity(),
                c.pid(),
                c.exit_status(),
                c.stderr_text()
            );
        }
    }
}

#[derive(Default)]
struct Stats {
    steps: u64,
    kill9: u64,
    term: u64,
    starts: u64,
    cuts: u64,
    pauses: u64,
    forces: u64,
    forcer_restarts: u64,
    deletes: u64,
    twins: u64,
    twins_refused: u64,
}

/// Longest span between `from` and `to` with no logged process alive.
fn longest_gap(intervals: &mut [(u64, u64)], from: u64, to: u64) -> Duration {
    intervals.sort();
    let mut covered_to = from;
    let mut longest = 0;
    for &(s, e) in intervals.iter() {
        if s > covered_to {
            longest = longest.max(s - covered_to);
        }
        covered_to = covered_to.max(e);
    }
    if to > covered_to {
        longest = longest.max(to - covered_to);
    }
    Duration::from_nanos(longest)
}

/// `actors`: also force acquires, forcer restarts, out-of-band deletes and twins.
fn soak(duration: Duration, n: usize, actors: bool) {
    let seed = seed();
    println!("soak: seed {seed} (replay with EAE_SOAK_SEED={seed}), {duration:?}, {n} candidates");
    let mut rng = Rng(seed);
    let etcd = Etcd::start();
    let dir = TempDir::new("soak");
    let log = dir.join("children.log");
    let mon = Monitor::start(&log);
    let slots = (0..n)
        .map(|i| Slot {
            id: format!("s{i}"),
            proxy: Proxy::start(&etcd.endpoint()),
            cand: None,
            generation: 0,
            forcer: false,
        })
        .collect();
    let mut w = World {
        slots,
        graveyard: Vec::new(),
        mon,
        reaper: Reaper(log.clone()),
        actions: Vec::new(),
        etcd,
        log,
        _dir: dir,
    };
    let mut stats = Stats::default();
    for i in 0..n {
        w.spawn(i, &mut rng);
    }

    let end = Instant::now() + duration;
    while Instant::now() < end {
        w.step(&mut rng, &mut stats, actors);
        stats.steps += 1;
        let pause = rng.range_ms(150, 700);
        w.watch(pause);
    }

    // Heal everything, bring every slot back, and demand exactly one leader, for good.
    w.act("heal everything".into());
    for s in &w.slots {
        s.proxy.set_mode(Mode::Pass);
    }
    for i in w.dead() {
        w.spawn(i, &mut rng);
    }
    // Whatever was decided before the heal (a leader whose renew deadline passed stops its
    // command by its last renewal + TTL - margin) plays out within a TTL: let it, then judge.
    w.watch(LEASE);
    let healed = Instant::now();
    // Worst case: a lease renewed just before the heal must expire (TTL), a stubborn command
    // needs its SIGKILL, then the queue moves: bounded by a few TTLs.
    let bound = 4 * LEASE + Duration::from_secs(10);
    let running = loop {
        w.check();
        let r = w.mon.running();
        let ids: HashSet<String> = r
            .iter()
            .map(|(id, _)| id.split('.').next().unwrap().to_string())
            .collect();
        if ids.len() == 1 {
            break r;
        }
        // A wrapper still stopping its command at the heal exits with "lost": bring it back.
        for i in w.dead() {
            w.spawn(i, &mut rng);
        }
        assert!(
            healed.elapsed() < bound,
            "no single leader within {bound:?} of healing everything; running: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let settled = healed.elapsed();
    // By life (`s1.3`), not by pid: a command started with `--fork` records its child's start a
    // moment after its own.
    let lives: HashSet<String> = running.iter().map(|(id, _)| id.clone()).collect();
    let stable_until = Instant::now() + 2 * LEASE;
    while Instant::now() < stable_until {
        w.check();
        let now: HashSet<String> = w.mon.running().into_iter().map(|(id, _)| id).collect();
        assert_eq!(now, lives, "the leader changed after everything was healed");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.check();

    let procs = w.mon.procs();
    let now = monotonic_ns();
    let terms: HashSet<&str> = procs.iter().map(|p| p.identity.as_str()).collect();
    let mut intervals: Vec<(u64, u64)> = procs
        .iter()
        .map(|p| (p.start_ns, p.end_ns().unwrap_or(now)))
        .collect();
    let first = intervals.iter().map(|i| i.0).min().unwrap_or(now);
    let gap = longest_gap(&mut intervals, first, now);
    let overlaps = compute_overlaps(&procs, now).len();
    let mut report = String::new();
    let _ = write!(
        report,
        "soak report: seed={seed} duration={duration:?} steps={} overlaps={overlaps} \
         handovers={} (distinct leaderships) longest_leaderless_gap={:.3}s \
         settled_after_heal={:.3}s kill9={} signals={} restarts={} cuts={} etcd_pauses={} \
         forces={} forcer_restarts={} deletes={} twins={} (refused {})",
        stats.steps,
        terms.len(),
        gap.as_secs_f64(),
        settled.as_secs_f64(),
        stats.kill9,
        stats.term,
        stats.starts,
        stats.cuts,
        stats.pauses,
        stats.forces,
        stats.forcer_restarts,
        stats.deletes,
        stats.twins,
        stats.twins_refused,
    );
    println!("{report}");
    assert_eq!(overlaps, 0);
    assert!(
        terms.len() >= 2,
        "the churn never moved leadership: {report}"
    );
    let _ = &w.reaper;
}
