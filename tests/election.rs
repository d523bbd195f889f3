//! The election against a real etcd: one leader at a time (checked by the invariant monitor on
//! the children's CLOCK_MONOTONIC records), what the leader's command and the status endpoint
//! see, and every way leadership passes on: the command exits, the wrapper is signalled, the
//! wrapper is SIGKILLed (the lease must expire first), a restarted leader takes its place back,
//! force acquire, a command that cannot start. Clean exits leave nothing behind in etcd.

mod common;

use common::candidate::{Candidate, CandidateBuilder};
use common::etcd::{assert_success, json_uint, Etcd};
use common::invariant::Monitor;
use common::records::{monotonic_ns, Kind, Record};
use common::scene::Scene;
use common::{free_port, wait_for, wait_until};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Deadline for things that should happen "soon" (process start, election, exit).
const T: Duration = Duration::from_secs(15);
/// Lease TTL of the candidates, in seconds; the keep-alive runs every TTL/3.
const TTL: u64 = 3;
const RENEW: &str = "2s";
/// Retry period of the candidates.
const RETRY: &str = "200ms";
/// A handover that does not wait for a lease to expire.
const FAST: Duration = Duration::from_secs(1);

/// This file's helpers on a [`Scene`] (one etcd, one record log watched by a monitor, one lock
/// name).
trait ElectionScene {
    fn cand(&self, id: &str) -> CandidateBuilder;
    fn keys(&self) -> Vec<String>;
    fn queue(&self) -> Vec<(String, String)>;
    fn wait_queued(&self, n: usize);
    fn start_of(&self, c: &Candidate) -> Record;
    fn start_within(&self, c: &Candidate, timeout: Duration) -> Record;
    fn record_of(&self, kind: Kind, pid: u32) -> Record;
    fn starts_of(&self, id: &str) -> usize;
    fn create_revision(&self, key: &str) -> Option<i64>;
    fn leases(&self) -> Vec<u64>;
}

impl ElectionScene for Scene {
    /// A candidate on this scene's etcd and lock, with short timings (override as needed).
    fn cand(&self, id: &str) -> CandidateBuilder {
        self.candidate(id, TTL, RENEW, RETRY)
    }

    /// Keys of the election (`<lock>/...`), in key order.
    fn keys(&self) -> Vec<String> {
        self.etcd.get_prefix_keys(&format!("{}/", self.lock))
    }

    /// `(key, identity)` of every candidate in the queue.
    fn queue(&self) -> Vec<(String, String)> {
        self.keys()
            .into_iter()
            .filter_map(|k| self.etcd.get(&k).map(|v| (k, v)))
            .collect()
    }

    /// Wait until `n` candidates have joined the queue.
    fn wait_queued(&self, n: usize) {
        wait_until(T, &format!("{n} keys under {}/", self.lock), || {
            self.keys().len() == n
        });
    }

    /// The next (not yet returned) start record of `c`'s identity; on timeout the panic shows
    /// the wrapper's own log lines.
    fn start_of(&self, c: &Candidate) -> Record {
        self.start_within(c, T)
    }

    fn start_within(&self, c: &Candidate, timeout: Duration) -> Record {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.mon.wait_for_start(Some(c.identity()), timeout)
        }));
        r.unwrap_or_else(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{msg}\n{}", wrapper_log(c))
        })
    }

    /// The record of `kind` written by `pid`, waiting for it.
    fn record_of(&self, kind: Kind, pid: u32) -> Record {
        self.mon
            .wait_for_record(&format!("{kind:?} record of {pid}"), T, |r| {
                r.kind == kind && r.pid == pid
            })
    }

    fn starts_of(&self, id: &str) -> usize {
        self.mon
            .starts()
            .iter()
            .filter(|r| r.identity == id)
            .count()
    }

    /// Create revision of `key`, `None` if it does not exist.
    fn create_revision(&self, key: &str) -> Option<i64> {
        let out = self.etcd.etcdctl(&["get", key, "-w", "json"]);
        assert_success(&out, "etcdctl get -w json");
        json_uint(
            &String::from_utf8_lossy(&out.stdout),
            "\"create_revision\":",
        )
    }

    /// Ids of the live leases.
    fn leases(&self) -> Vec<u64> {
        let out = self.etcd.etcdctl(&["lease", "list"]);
        assert_success(&out, "etcdctl lease list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| u64::from_str_radix(l.trim(), 16).ok())
            .collect()
    }
}

/// The wrapper's own log lines (not its dependencies' debug output), for failure messages.
fn wrapper_log(c: &Candidate) -> String {
    let text = c.stderr_text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("etcd_await_election"))
        .collect();
    format!(
        "log of candidate {}:\n{}",
        c.identity(),
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// `b` happened after `a`, and less than `within` after it.
fn assert_soon_after(a_ns: u64, b_ns: u64, within: Duration, what: &str, mon: &Monitor) {
    assert!(
        b_ns > a_ns && b_ns - a_ns < within.as_nanos() as u64,
        "{what}: {:.1} ms (must be in (0, {within:?})); timeline:\n{}",
        (b_ns as f64 - a_ns as f64) / 1e6,
        mon.timeline()
    );
}

fn expect_code(c: &mut Candidate, code: i32, timeout: Duration) {
    let st = c.expect_exit(timeout);
    assert_eq!(
        st.code(),
        Some(code),
        "candidate {} exit status {st:?}; stderr:\n{}",
        c.identity(),
        c.stderr_text()
    );
}

/// What `--print-env` printed: `(identity, pid, leader key, leader revision)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaderEnv {
    identity: String,
    pid: u32,
    key: String,
    revision: i64,
}

fn leader_env(c: &Candidate, pid: u32) -> LeaderEnv {
    wait_for(T, &format!("env line of {pid}"), || {
        c.stdout_text().lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["env", id, p, key, rev] if p.parse() == Ok(pid) => Some(LeaderEnv {
                    identity: id.to_string(),
                    pid,
                    key: key.to_string(),
                    revision: rev
                        .parse()
                        .unwrap_or_else(|_| panic!("LEADER_REVISION {rev:?} is not a number")),
                }),
                _ => None,
            }
        })
    })
}

/// The status endpoint's JSON fields of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    status: String,
    phase: String,
    leader: String,
    identity: String,
    lock: String,
    since: String,
}

fn json_str(body: &str, field: &str) -> Option<String> {
    let pat = format!("\"{field}\":\"");
    let rest = &body[body.find(&pat)? + pat.len()..];
    Some(rest[..rest.find('"')?].to_string())
}

fn status(c: &Candidate) -> Option<Status> {
    let (_, body) = common::http("GET", &c.status_url("/"), Duration::from_secs(2))?;
    Some(Status {
        status: json_str(&body, "status")?,
        phase: json_str(&body, "phase")?,
        leader: json_str(&body, "leader")?,
        identity: json_str(&body, "identity")?,
        lock: json_str(&body, "lock")?,
        since: json_str(&body, "since")?,
    })
}

/// The status a candidate should report while `leader` leads `lock`.
fn status_matches(c: &Candidate, leader: &str, lock: &str) -> Result<(), String> {
    let s = status(c).ok_or_else(|| format!("no status from {}", c.identity()))?;
    let phase = if c.identity() == leader {
        "running"
    } else {
        "awaiting"
    };
    let ok = s.status == "ok"
        && s.phase == phase
        && s.leader == leader
        && s.identity == c.identity()
        && s.lock == lock
        && s.since.ends_with('Z');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: {s:?}, expected phase {phase} leader {leader}",
            c.identity()
        ))
    }
}

/// `etcdctl elect -l LOCK`, its stdout lines delivered on a channel; killed on drop.
struct Observer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Observer {
    fn start(etcd: &Etcd, lock: &str) -> Observer {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.endpoint()))
            .args(["elect", "-l", lock])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl elect -l");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Observer { child, lines }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(T)
            .expect("a line from etcdctl elect -l")
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        common::kill_and_wait(&mut self.child);
    }
}

#[test]
fn one_leader_among_three() {
    let s = Scene::new("election", "three");
    let cands: Vec<Candidate> = ["a", "b", "c"]
        .iter()
        .map(|id| s.cand(id).status_port(free_port()).spawn())
        .collect();
    let first = s.mon.wait_for_start(None, T);
    let leader = first.identity.clone();
    s.wait_queued(3);
    wait_for(T, "every status endpoint to agree on the leader", || {
        cands
            .iter()
            .all(|c| status_matches(c, &leader, "three").is_ok())
            .then_some(())
    });

    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(
            s.mon.running(),
            vec![(leader.clone(), first.pid)],
            "exactly the first leader's child must run; timeline:\n{}",
            s.mon.timeline()
        );
        for c in &cands {
            if let Err(e) = status_matches(c, &leader, "three") {
                panic!("{e}");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.mon.starts().len(), 1, "{}", s.mon.timeline());
    s.mon.assert_no_overlap();
    // The head of the queue in etcd is the leader.
    let queue = s.queue();
    let head = queue
        .iter()
        .min_by_key(|(k, _)| s.create_revision(k))
        .unwrap();
    assert_eq!(head.1, leader, "{queue:?}");
    let mut ids: Vec<&str> = queue.iter().map(|(_, v)| v.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
}

#[test]
fn leader_env_names_key_and_revision() {
    let s = Scene::new("election", "env-lock");
    let mut a = s.cand("a").args(&["--print-env"]).spawn();
    let ra = s.start_of(&a);
    let b = s.cand("b").args(&["--print-env"]).spawn();
    s.wait_queued(2);

    let ea = leader_env(&a, ra.pid);
    assert_eq!(ea.identity, "a");
    let hex = ea
        .key
        .strip_prefix("env-lock/")
        .unwrap_or_else(|| panic!("LEADER_KEY {:?} is not under env-lock/", ea.key));
    let lease = u64::from_str_radix(hex, 16)
        .unwrap_or_else(|_| panic!("LEADER_KEY {:?} does not end in a hex lease id", ea.key));
    assert_eq!(format!("{lease:x}"), hex, "lower-case hex without padding");
    assert!(s.leases().contains(&lease), "lease {hex} is not live");
    assert_eq!(s.etcd.get(&ea.key).as_deref(), Some("a"));
    assert_eq!(s.create_revision(&ea.key), Some(ea.revision));

    assert!(a.signal(libc::SIGTERM));
    expect_code(&mut a, 143, T);
    let rb = s.start_of(&b);
    let eb = leader_env(&b, rb.pid);
    assert_eq!(eb.identity, "b");
    assert!(
        eb.key.starts_with("env-lock/") && eb.key != ea.key,
        "{eb:?}"
    );
    assert!(
        eb.revision > ea.revision,
        "revision must grow: {ea:?} then {eb:?}"
    );
    assert_eq!(s.etcd.get(&eb.key).as_deref(), Some("b"));
    assert_eq!(s.create_revision(&eb.key), Some(eb.revision));
    assert_eq!(
        s.etcd.get(&ea.key),
        None,
        "the old leader's key must be gone"
    );
    s.mon.assert_no_overlap();
}

#[test]
fn etcdctl_elect_sees_our_leader() {
    let s = Scene::new("election", "observed");
    let mut a = s.cand("a").args(&["--print-env"]).spawn();
    let ra = s.start_of(&a);
    let b = s.cand("b").args(&["--print-env"]).spawn();
    s.wait_queued(2);
    let ea = leader_env(&a, ra.pid);

    let obs = Observer::start(&s.etcd, "observed");
    assert_eq!(obs.next_line(), ea.key);
    assert_eq!(obs.next_line(), "a");

    // It follows the handover too.
    assert!(a.signal(libc::SIGTERM));
    expect_code(&mut a, 143, T);
    let rb = s.start_of(&b);
    let eb = leader_env(&b, rb.pid);
    assert_eq!(obs.next_line(), eb.key);
    assert_eq!(obs.next_line(), "b");
    s.mon.assert_no_overlap();
}

#[test]
fn handover_when_the_command_exits() {
    let s = Scene::new("election", "cmd-exit");
    let mut a = s
        .cand("a")
        .args(&["--exit-after", "1500", "--exit-code", "7"])
        .spawn();
    let ra = s.start_of(&a);
    let mut b = s.cand("b").spawn();
    s.wait_queued(2);
    assert!(
        s.mon.running() == vec![("a".to_string(), ra.pid)],
        "precondition: b must queue while a's command still runs; timeline:\n{}",
        s.mon.timeline()
    );

    expect_code(&mut a, 7, T);
    let stop_a = s.record_of(Kind::Stop, ra.pid);
    let rb = s.start_of(&b);
    assert_soon_after(stop_a.ns, rb.ns, FAST, "a's stop to b's start", &s.mon);
    s.mon.assert_no_overlap();
    assert!(b.is_running());
    assert_eq!(s.starts_of("a"), 1);
}

/// The leader's wrapper gets `sig`: it forwards it, exits with the child's status, resigns, and
/// the follower starts at once.
fn handover_on_signal(lock: &str, sig: i32, code: i32) {
    let s = Scene::new("election", lock);
    let mut a = s.cand("a").spawn();
    let ra = s.start_of(&a);
    let b = s.cand("b").spawn();
    s.wait_queued(2);

    assert!(a.signal(sig));
    expect_code(&mut a, code, T);
    let end_a = if sig == libc::SIGTERM {
        // Forwarded: the child saw it and exited by itself.
        s.record_of(Kind::Term, ra.pid);
        s.record_of(Kind::Stop, ra.pid).ns
    } else {
        // The test child does not handle SIGINT: the default action killed it.
        s.mon.wait_until_dead(ra.pid, T)
    };
    let rb = s.start_of(&b);
    assert_soon_after(end_a, rb.ns, FAST, "a's end to b's start", &s.mon);
    s.mon.assert_no_overlap();
    assert_eq!(s.starts_of("a"), 1);
}

#[test]
fn handover_on_sigterm() {
    handover_on_signal("sigterm", libc::SIGTERM, 143);
}

#[test]
fn handover_on_sigint() {
    handover_on_signal("sigint", libc::SIGINT, 130);
}

#[test]
fn sigkilled_leader_hands_over_only_after_lease_expiry() {
    let s = Scene::new("election", "kill9");
    let mut a = s.cand("a").args(&["--print-env"]).spawn();
    let ra = s.start_of(&a);
    let ea = leader_env(&a, ra.pid);
    let b = s.cand("b").spawn();
    s.wait_queued(2);

    let t_kill = monotonic_ns();
    a.kill9();
    let death = s.mon.wait_until_dead(ra.pid, Duration::from_secs(5));
    assert!(
        death - t_kill < 1_000_000_000,
        "the child must die with its wrapper: {:.1} ms",
        ms(death - t_kill)
    );
    assert_eq!(
        s.etcd.get(&ea.key).as_deref(),
        Some("a"),
        "nobody revoked the killed leader's lease: its key must still be there"
    );

    let rb = s.start_within(&b, Duration::from_secs(TTL + 5));
    let waited = rb.ns - t_kill;
    // The last keep-alive was at most one keep-alive period (at most TTL/3) before the kill, so
    // the lease lives at least TTL - TTL/3 after it; etcd expires leases within about half a
    // second after their time.
    let min = Duration::from_millis(TTL * 1000 * 2 / 3 - 200);
    let max = Duration::from_secs(TTL + 3);
    assert!(
        waited >= min.as_nanos() as u64 && waited < max.as_nanos() as u64,
        "b started {:.1} ms after the kill; expected within [{min:?}, {max:?}); timeline:\n{}",
        ms(waited),
        s.mon.timeline()
    );
    assert_eq!(s.etcd.get(&ea.key), None);
    s.mon.assert_no_overlap();
}

#[test]
fn restarted_leader_takes_its_place_back() {
    let s = Scene::new("election", "restart");
    let mut a = s.cand("a").args(&["--print-env"]).spawn();
    let ra = s.start_of(&a);
    let ea = leader_env(&a, ra.pid);
    let mut b = s.cand("b").spawn();
    s.wait_queued(2);

    let t_kill = monotonic_ns();
    a.kill9();
    let a2 = s.cand("a").args(&["--print-env"]).spawn();
    let ra2 = s.start_of(&a2);
    let death = s.mon.wait_until_dead(ra.pid, T);
    assert!(
        ra2.ns > death,
        "the new child started before the old one died; timeline:\n{}",
        s.mon.timeline()
    );
    // It held the lock, so it may have been running: a previous life cut off from etcd (or a
    // twin) stops its command only before its lease could expire as its last counted renewal
    // left it, and its renewals stop counting when the key is put again. The restarted leader
    // keeps the lease alive (nobody else starts) and leads a TTL and a second after adopting it.
    let back = ra2.ns - t_kill;
    let (min, max) = (
        Duration::from_secs(TTL + 1),
        Duration::from_secs(3 * TTL + 3),
    );
    assert!(
        back >= min.as_nanos() as u64 && back < max.as_nanos() as u64,
        "the restarted leader is back {:.1} ms after the kill; expected within [{min:?}, {max:?})",
        ms(back)
    );
    let ea2 = leader_env(&a2, ra2.pid);
    assert_eq!(
        (ea2.key.as_str(), ea2.revision),
        (ea.key.as_str(), ea.revision),
        "the restarted leader adopts its old key"
    );

    // Past the time the old lease would have expired without renewal, b still never ran.
    let until = t_kill + Duration::from_secs(TTL + 1).as_nanos() as u64;
    while monotonic_ns() < until {
        assert_eq!(
            s.starts_of("b"),
            0,
            "b ran; timeline:\n{}",
            s.mon.timeline()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        s.starts_of("b"),
        0,
        "b ran; timeline:\n{}",
        s.mon.timeline()
    );
    assert!(b.is_running());
    assert_eq!(s.mon.running(), vec![("a".to_string(), ra2.pid)]);
    assert_eq!(s.etcd.get(&ea.key).as_deref(), Some("a"));
    s.mon.assert_no_overlap();
}

#[test]
fn force_acquire_deposes_the_leader() {
    let s = Scene::new("election", "force");
    let mut a = s.cand("a").lease(2).renew("1s").spawn();
    let ra = s.start_of(&a);
    s.wait_queued(1);

    let t_force = monotonic_ns();
    let mut c = s
        .cand("c")
        .lease(2)
        .renew("1s")
        .force(true)
        .args(&["--print-env"])
        .spawn();
    expect_code(&mut a, 75, T);
    assert!(
        a.stderr_text().contains("leadership lost"),
        "stderr:\n{}",
        a.stderr_text()
    );
    let stop_a = s.record_of(Kind::Stop, ra.pid);
    // a is deposed; c holds the seat it joined with while it waits out a's lease.
    let seat = wait_for(T, "c alone in the queue", || match s.queue().as_slice() {
        [(key, id)] if id == "c" => Some(key.clone()),
        _ => None,
    });

    // c must lead now; it must not give up instead.
    wait_until(T, "c to start its command or exit", || {
        s.starts_of("c") > 0 || !c.is_running()
    });
    if let Some(st) = c.exit_status() {
        panic!(
            "the force-acquiring candidate exited with {st:?} instead of leading; {}\ntimeline:\n{}",
            wrapper_log(&c),
            s.mon.timeline()
        );
    }
    let rc = s.start_of(&c);
    assert!(
        rc.ns > stop_a.ns,
        "c started before a stopped; timeline:\n{}",
        s.mon.timeline()
    );
    s.mon.assert_no_overlap();
    let ec = leader_env(&c, rc.pid);
    assert_eq!(
        ec.key,
        seat,
        "c must lead with the seat it took (its lease kept alive while it waited), not after \
         losing it and joining again; {}",
        wrapper_log(&c)
    );
    let queue = s.queue();
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0].1, "c");
    eprintln!(
        "force acquire: a stopped {:.1} ms and c started {:.1} ms after c was launched",
        ms(stop_a.ns - t_force),
        ms(rc.ns - t_force)
    );
}

#[test]
fn command_not_found_as_leader_releases_at_once() {
    let s = Scene::new("election", "notfound");
    let mut z = s.cand("z").spawn();
    let rz = s.start_of(&z);
    let mut a = s.cand("a").command("/nonexistent/eae-no-such-cmd").spawn();
    s.wait_queued(2);
    let b = s.cand("b").spawn();
    s.wait_queued(3);

    assert!(z.signal(libc::SIGTERM));
    expect_code(&mut z, 143, T);
    expect_code(&mut a, 127, T);
    assert!(
        a.stderr_text().contains("/nonexistent/eae-no-such-cmd"),
        "stderr:\n{}",
        a.stderr_text()
    );
    let stop_z = s.record_of(Kind::Stop, rz.pid);
    let rb = s.start_of(&b);
    // a's whole turn fits in the handover: it revoked its lease instead of letting it expire.
    assert_soon_after(stop_z.ns, rb.ns, FAST, "z's stop to b's start", &s.mon);
    s.mon.assert_no_overlap();
    let queue = s.queue();
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0].1, "b");
    drop(b);
}

#[test]
fn clean_exits_leave_no_keys_or_leases() {
    let s = Scene::new("election", "clean");
    let mut a = s.cand("a").spawn();
    s.start_of(&a);
    s.wait_queued(1);
    let mut b = s.cand("b").args(&["--exit-after", "500"]).spawn();
    s.wait_queued(2);
    let mut c = s.cand("c").spawn();
    s.wait_queued(3);
    assert_eq!(s.etcd.lease_count(), 3);

    assert!(c.signal(libc::SIGTERM));
    expect_code(&mut c, 0, T);
    assert!(a.signal(libc::SIGTERM));
    expect_code(&mut a, 143, T);
    s.start_of(&b);
    expect_code(&mut b, 0, T);

    assert_eq!(s.keys(), Vec::<String>::new(), "keys left behind");
    assert_eq!(s.etcd.lease_count(), 0, "leases left behind");
    s.mon.wait_until_all_dead(T);
    s.mon.assert_no_overlap();
    assert_eq!(s.starts_of("c"), 0);
}

#[test]
fn signal_while_awaiting_withdraws() {
    let s = Scene::new("election", "withdraw");
    let a = s.cand("a").spawn();
    let ra = s.start_of(&a);
    s.wait_queued(1);
    let mut b = s.cand("b").spawn();
    s.wait_queued(2);
    let mut c = s.cand("c").spawn();
    s.wait_queued(3);
    assert_eq!(s.etcd.lease_count(), 3);

    let mut remaining = vec!["a", "b", "c"];
    for (cand, sig) in [(&mut b, libc::SIGTERM), (&mut c, libc::SIGINT)] {
        let t = Instant::now();
        assert!(cand.signal(sig));
        expect_code(cand, 0, Duration::from_secs(5));
        let took = t.elapsed();
        assert!(took < FAST, "{} took {took:?} to withdraw", cand.identity());
        remaining.retain(|id| *id != cand.identity());
        let mut ids: Vec<String> = s.queue().into_iter().map(|(_, v)| v).collect();
        ids.sort();
        assert_eq!(ids, remaining, "{}'s key must be gone", cand.identity());
        assert_eq!(s.etcd.lease_count(), remaining.len());
    }
    assert_eq!(s.mon.running(), vec![("a".to_string(), ra.pid)]);
    assert_eq!(s.mon.starts().len(), 1);
    drop(a);
}
