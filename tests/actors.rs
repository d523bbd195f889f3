//! Other actors on the lock against the one promise: at no instant do two candidates' commands
//! run at once. Forcers (with waiters queued, restarting mid-wait, cooperating holders for a
//! graceful switchover), an operator deleting the leader's key by hand, twins (two live
//! candidates with one identity), a neighbouring election whose name extends ours, and an etcd
//! raft leader whose disk stalls. Every test runs a real etcd on loopback and real wrappers
//! around `eae-test-child`, and proves exclusion from the children's CLOCK_MONOTONIC records
//! with the invariant [`Monitor`]. The holders' commands stop slowly or ignore SIGTERM (as real
//! services do), so a successor that starts too early is caught overlapping them.

mod common;

use common::candidate::{Candidate, CandidateBuilder};
use common::etcd::{json_uint, Cluster, Etcd};
use common::invariant::{Monitor, Proc};
use common::old_replica::OldReplica;
use common::proxy::{Mode, Proxy};
use common::records::{monotonic_ns, Kind, Record};
use common::scene::{Cast, Scene};
use common::{wait_for, wait_until, TempDir};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Lease TTL (seconds), renew deadline and retry period of every candidate unless a test says
/// otherwise. RETRY_PERIOD is also how long a forcer waits for the holder's answer.
const TTL: u64 = 3;
const RENEW: &str = "2s";
const RETRY: &str = "250ms";
/// Deadline for anything that should happen within a few TTLs.
const T: Duration = Duration::from_secs(20);
/// A handover that needs no lease to expire: a watch, a revoke.
const FAST: Duration = Duration::from_secs(2);
/// The wrapper's exit code for "this identity is in use by another live candidate".
const EXIT_TWIN: i32 = 76;
/// The wrapper's "leadership lost" exit code.
const EXIT_LOST: i32 = 75;
/// How long a slow holder's command takes to stop after SIGTERM.
const SLOW_STOP_MS: &str = "700";

/// One key as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kv {
    key: String,
    value: String,
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
}

fn base64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().take_while(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64: {s:?}")) as u32;
        bits = bits << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The keys of an `etcdctl get -w json` answer (keys and values are base64 there).
fn parse_kvs(out: &Output, what: &str) -> Vec<Kv> {
    common::etcd::assert_success(out, what);
    let s = String::from_utf8_lossy(&out.stdout);
    let Some(at) = s.find("\"kvs\":[") else {
        return Vec::new();
    };
    let quoted = |seg: &str, field: &str| -> String {
        seg.find(field).map_or(String::new(), |i| {
            let rest = &seg[i + field.len()..];
            base64(&rest[..rest.find('"').unwrap_or(rest.len())])
        })
    };
    s[at..]
        .split("{\"key\":\"")
        .skip(1)
        .map(|seg| Kv {
            key: base64(&seg[..seg.find('"').unwrap_or(seg.len())]),
            value: quoted(seg, "\"value\":\""),
            create_revision: json_uint(seg, "\"create_revision\":").unwrap_or(0),
            mod_revision: json_uint(seg, "\"mod_revision\":").unwrap_or(0),
            lease: json_uint(seg, "\"lease\":").unwrap_or(0),
        })
        .collect()
}

/// Something `etcdctl` can be run against: one server or a cluster.
trait Etcdctl {
    fn ctl(&self, args: &[&str]) -> Output;

    /// Every key starting with `prefix`.
    fn under(&self, prefix: &str) -> Vec<Kv> {
        let out = self.ctl(&["get", "--prefix", prefix, "-w", "json"]);
        parse_kvs(&out, &format!("etcdctl get --prefix {prefix}"))
    }

    /// The candidates of `lock`, oldest first: only keys of the layout `<lock>/<hex of their
    /// own lease>` (a neighbouring lock's keys are not candidates).
    fn queue(&self, lock: &str) -> Vec<Kv> {
        let mut q: Vec<Kv> = self
            .under(&format!("{lock}/"))
            .into_iter()
            .filter(|kv| kv.lease != 0 && kv.key == format!("{lock}/{:x}", kv.lease))
            .collect();
        q.sort_by_key(|kv| kv.create_revision);
        q
    }

    /// Wait until a candidate key of `lock` holds `identity`; returns it.
    fn wait_queued(&self, lock: &str, identity: &str) -> Kv {
        wait_for(T, &format!("{identity} queued on {lock}"), || {
            let kv = self.queue(lock).into_iter().find(|kv| kv.value == identity);
            if kv.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            kv
        })
    }

    /// `etcdctl del KEY`, as an operator would.
    fn del(&self, key: &str) {
        let out = self.ctl(&["del", key]);
        common::etcd::assert_success(&out, &format!("etcdctl del {key}"));
    }
}

impl Etcdctl for Etcd {
    fn ctl(&self, args: &[&str]) -> Output {
        self.etcdctl(args)
    }
}

impl Etcdctl for Cluster {
    fn ctl(&self, args: &[&str]) -> Output {
        self.etcdctl(args)
    }
}

/// A candidate with this file's timings on the scene's etcd and record log, for `lock`.
fn cand(s: &Scene, id: &str, lock: &str) -> CandidateBuilder {
    s.candidate(id, TTL, RENEW, RETRY).lock(lock)
}

/// The newest logged process with this pid.
fn proc_of(mon: &Monitor, pid: u32) -> Proc {
    mon.procs()
        .into_iter()
        .rev()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("no logged process {pid}"))
}

fn starts_of(mon: &Monitor, identity: &str) -> Vec<Record> {
    mon.starts()
        .into_iter()
        .filter(|r| r.identity == identity)
        .collect()
}

/// The moment `pid` stopped running: its `stop` record, else its observed death (waits for it).
fn end_of(mon: &Monitor, pid: u32) -> u64 {
    let death = mon.wait_until_dead(pid, T);
    proc_of(mon, pid).stop_ns.unwrap_or(death)
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// `(p50, p95)` of `v`, in milliseconds.
fn percentiles(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.95))
}

/// Stop a candidate that leads or waits with SIGTERM and wait for it to exit.
fn term_and_wait(c: &mut Candidate) -> Option<i32> {
    c.signal(libc::SIGTERM);
    c.expect_exit(T).code()
}

// ------------------------------------------------------------------------------------------
// 1. Force acquire with a waiter queued.

/// A holder whose command stops slowly (or ignores SIGTERM: killed at its deadline), a waiter,
/// then a forcer: the forcer leads only once the holder's command is gone, the waiter never runs
/// beside either of them (it goes back in line behind the forcer), 20 times over in one etcd.
#[test]
fn force_acquire_with_a_waiter_queued_never_overlaps_20_times() {
    let s = Scene::new("actors", "act-force");
    let mut gaps = Vec::new();
    for i in 0..20 {
        let lock = format!("act-force-{i}");
        let (h, w, f) = (format!("h{i}"), format!("w{i}"), format!("f{i}"));
        let slow: &[&str] = if i % 2 == 0 {
            &["--ignore-term"]
        } else {
            &["--term-delay", SLOW_STOP_MS]
        };
        let mut cast = Cast::default();
        let ch = cast.add(cand(&s, &h, &lock).args(slow));
        let rh = s.mon.wait_for_start(Some(&h), T);
        let cw = cast.add(cand(&s, &w, &lock));
        s.etcd.wait_queued(&lock, &w);
        let cf = cast.add(cand(&s, &f, &lock).force(true));
        let rf = s.mon.wait_for_start(Some(&f), T);
        s.mon.assert_no_overlap();
        let h_end = end_of(&s.mon, rh.pid);
        assert!(
            h_end < rf.ns,
            "round {i}: the forcer started {:.1} ms before the holder's command ended:\n{}",
            ms(h_end as i128 - rf.ns as i128),
            s.mon.timeline()
        );
        assert!(
            starts_of(&s.mon, &w).is_empty(),
            "round {i}: the waiter ran:\n{}",
            s.mon.timeline()
        );
        gaps.push(ms(rf.ns as i128 - h_end as i128));
        let h_code = cast[ch].expect_exit(T).code();
        assert!(cast[cw].is_running(), "round {i}: the waiter exited");

        // The waiter is back in line behind the forcer: it leads once the forcer is gone.
        // 143: its command ended by our SIGTERM. 75 (leadership lost) is an end as good: with
        // a 2 s renew deadline, an etcd slowed down by two busy cores can miss a renewal
        // (flake hunt, run 9); the monitor proves that nothing overlapped either way.
        let ended = [Some(143), Some(EXIT_LOST)];
        let code = term_and_wait(&mut cast[cf]);
        assert!(ended.contains(&code), "round {i}: forcer exited {code:?}");
        let rw = s.mon.wait_for_start(Some(&w), T);
        let f_end = end_of(&s.mon, rf.pid);
        assert!(f_end < rw.ns, "round {i}: waiter before forcer ended");
        let code = term_and_wait(&mut cast[cw]);
        assert!(ended.contains(&code), "round {i}: waiter exited {code:?}");
        s.mon.assert_no_overlap();
        eprintln!(
            "round {i} ({slow:?}): holder end -> forcer start {:.1} ms, holder exit {h_code:?}",
            gaps[i]
        );
    }
    s.mon.assert_no_overlap();
    let (p50, p95) = percentiles(&gaps);
    eprintln!("force with a waiter, 20 rounds: 0 overlaps; holder end -> forcer start p50 {p50:.1} ms p95 {p95:.1} ms");
}

/// Two forcers at once against a slow holder, with a waiter queued: the first request stands,
/// the second forcer waits in line as a plain candidate; one command at a time throughout, and
/// everyone gets a turn.
#[test]
fn two_forcers_at_once_take_turns_without_overlap() {
    let lock = "act-two-forcers";
    let s = Scene::new("actors", lock);
    let mut cast = Cast::default();
    cast.add(cand(&s, "h", lock).args(&["--term-delay", SLOW_STOP_MS]));
    let rh = s.mon.wait_for_start(Some("h"), T);
    cast.add(cand(&s, "w", lock));
    s.etcd.wait_queued(lock, "w");
    cast.add(cand(&s, "f1", lock).force(true));
    cast.add(cand(&s, "f2", lock).force(true));
    let first = s.mon.wait_for_start_after(None, rh.ns, T);
    s.mon.assert_no_overlap();
    assert!(
        first.identity.starts_with('f'),
        "a forcer leads after the holder, not {}:\n{}",
        first.identity,
        s.mon.timeline()
    );
    assert!(end_of(&s.mon, rh.pid) < first.ns);
    // Everyone else gets a turn, one at a time.
    let mut last = first;
    for _ in 0..2 {
        let i = cast
            .iter()
            .position(|c| c.identity() == last.identity)
            .unwrap();
        assert_eq!(term_and_wait(&mut cast[i]), Some(143), "{}", last.identity);
        let next = s.mon.wait_for_start_after(None, last.ns, T);
        assert!(end_of(&s.mon, last.pid) < next.ns);
        s.mon.assert_no_overlap();
        last = next;
    }
    let mut order: Vec<String> = s.mon.starts().into_iter().map(|r| r.identity).collect();
    eprintln!("two forcers: order {order:?}");
    order.sort();
    assert_eq!(order, ["f1", "f2", "h", "w"], "each ran once");
    s.mon.assert_no_overlap();
}

/// A Go replica holding `lock` (the record without a candidate key), and its command's start.
fn go_replica_holds(s: &Scene, lock: &str) -> (OldReplica, Record) {
    let old = OldReplica::start(
        &s.etcd.endpoint(),
        lock,
        "old",
        TTL as i64,
        Duration::from_millis(500),
        false,
        &s.log,
    );
    old.wait_acquired(T);
    let ro = s.mon.wait_for_start(Some("old"), T);
    (old, ro)
}

/// A Go replica holds the lock (the record without a candidate key), one of ours waits, one of
/// ours forces: the replica is fenced out, and nobody starts until its command is gone.
#[test]
fn force_acquire_against_a_go_replica_with_a_waiter_queued() {
    let lock = "act-force-go";
    let s = Scene::new("actors", lock);
    let (old, ro) = go_replica_holds(&s, lock);
    let mut cast = Cast::default();
    let cw = cast.add(cand(&s, "w", lock));
    s.etcd.wait_queued(lock, "w");
    cast.add(cand(&s, "f", lock).force(true));
    let first = s.mon.wait_for_start_after(None, ro.ns, T);
    s.mon.assert_no_overlap();
    let o_end = end_of(&s.mon, ro.pid);
    assert!(
        o_end < first.ns,
        "{} started {:.1} ms before the Go replica's command ended:\n{}",
        first.identity,
        ms(o_end as i128 - first.ns as i128),
        s.mon.timeline()
    );
    assert_eq!(first.identity, "f", "the forcer leads first");
    assert!(cast[cw].is_running());
    eprintln!(
        "Go replica fenced out: its command ended, f started {:.1} ms later",
        ms(first.ns as i128 - o_end as i128)
    );
    let st = old.wait_done(T);
    assert!(st.error.is_none(), "{st:#?}");
    s.mon.assert_no_overlap();
}

/// As above with two waiters: the second, further back, watches its predecessor and the key
/// before it, not the record, while the record is re-bound to a fence and then goes. Both go
/// back in line behind the forcer and run after it, one at a time: nobody waits forever for a
/// change of the record it no longer watches.
#[test]
fn force_acquire_against_a_go_replica_with_two_waiters_queued_all_run() {
    let lock = "act-force-go2";
    let s = Scene::new("actors", lock);
    let (old, ro) = go_replica_holds(&s, lock);
    let mut cast = Cast::default();
    let run = ["--exit-after", "300"];
    cast.add(cand(&s, "w1", lock).args(&run));
    s.etcd.wait_queued(lock, "w1");
    cast.add(cand(&s, "w2", lock).args(&run));
    s.etcd.wait_queued(lock, "w2");
    cast.add(cand(&s, "f", lock).force(true).args(&run));
    let first = s.mon.wait_for_start_after(None, ro.ns, T);
    assert_eq!(first.identity, "f", "the forcer leads first");
    for id in ["w1", "w2"] {
        wait_for(T, &format!("{id} to run"), || {
            (!starts_of(&s.mon, id).is_empty()).then_some(())
        });
    }
    for c in cast.iter_mut() {
        c.expect_exit(T);
    }
    s.mon.assert_no_overlap();
    let st = old.wait_done(T);
    assert!(st.error.is_none(), "{st:#?}");
}

// ------------------------------------------------------------------------------------------
// 2. A forcer that restarts during its wait.

/// How the holder resists a force acquire.
#[derive(Clone, Copy, Debug)]
enum Holder {
    /// One of ours, answering, but its command ignores SIGTERM: it runs until its kill deadline.
    Stubborn,
    /// One of ours cut off from etcd (blackholed): it cannot answer, and stops by its renew
    /// deadline.
    CutOff,
}

/// A forcer is SIGKILLed (or SIGTERMed) while it waits for the holder to stop, and comes back
/// with the same identity: neither life starts its command while the holder's still runs.
fn forcer_restarts(holder: Holder, sig: i32) {
    let lock = "act-restart";
    let s = Scene::new("actors", lock);
    let proxy = Proxy::start(&s.etcd.endpoint());
    let mut cast = Cast::default();
    let ch = cast.add(
        cand(&s, "h", lock)
            .endpoints(&proxy.endpoint())
            .args(&["--ignore-term"]),
    );
    let rh = s.mon.wait_for_start(Some("h"), T);
    s.etcd.wait_queued(lock, "h");
    let yield_key = format!("{lock}\0yield");

    if let Holder::CutOff = holder {
        proxy.set_mode(Mode::Blackhole);
    }
    let cf = cast.add(cand(&s, "f", lock).force(true).args(&["--id", "f.1"]));
    // The forcer is waiting: the holder was asked (its command got SIGTERM), or, cut off, the
    // request stands.
    match holder {
        Holder::Stubborn => {
            s.mon
                .wait_for_record("SIGTERM to the holder's command", T, |r| {
                    r.kind == Kind::Term && r.pid == rh.pid
                });
        }
        // Cut off, it cannot answer: the request stands (its key stays: deleting it would
        // start a participant of etcd's recipe queued behind it).
        Holder::CutOff => wait_until(T, "the forcer's request to yield", || {
            let asked = s.etcd.under(lock).iter().any(|kv| kv.key == yield_key);
            if !asked {
                std::thread::sleep(Duration::from_millis(20));
            }
            asked
        }),
    }
    let restart = monotonic_ns();
    assert!(
        proc_of(&s.mon, rh.pid).end_ns().is_none(),
        "the holder's command already ended: the restart must come during the wait:\n{}",
        s.mon.timeline()
    );
    cast[cf].signal(sig);
    cast[cf].expect_exit(T);
    eprintln!("[{}] forcer stopped by signal {sig}", s.mon.rel(restart));
    cast.add(cand(&s, "f", lock).force(true).args(&["--id", "f.2"]));

    let next = s.mon.wait_for_start_after(None, restart, T);
    s.mon.assert_no_overlap();
    let h_end = end_of(&s.mon, rh.pid);
    assert!(
        h_end < next.ns,
        "{} started {:.1} ms before the holder's command ended:\n{}",
        next.identity,
        ms(h_end as i128 - next.ns as i128),
        s.mon.timeline()
    );
    assert!(starts_of(&s.mon, "f.1").is_empty(), "the first life ran");
    let h_code = cast[ch].expect_exit(T).code();
    if let Holder::CutOff = holder {
        assert_eq!(h_code, Some(EXIT_LOST), "the cut-off holder");
    }
    proxy.set_mode(Mode::Pass);
    // Settle: whoever leads keeps leading, nobody beside it.
    let pid = next.pid;
    s.mon
        .assert_undisturbed(pid, FAST, "after the restart", String::new);
    eprintln!(
        "{holder:?} holder (exit {h_code:?}), forcer restarted by signal {sig}: {} started {:.1} ms after the holder's command ended",
        next.identity,
        ms(next.ns as i128 - h_end as i128)
    );
}

#[test]
fn forcer_sigkilled_while_a_stubborn_holder_stops_restarts_without_overlap() {
    forcer_restarts(Holder::Stubborn, libc::SIGKILL);
}

#[test]
fn forcer_sigtermed_while_a_stubborn_holder_stops_restarts_without_overlap() {
    forcer_restarts(Holder::Stubborn, libc::SIGTERM);
}

#[test]
fn forcer_sigkilled_while_a_cut_off_holder_stops_restarts_without_overlap() {
    forcer_restarts(Holder::CutOff, libc::SIGKILL);
}

#[test]
fn forcer_sigtermed_while_a_cut_off_holder_stops_restarts_without_overlap() {
    forcer_restarts(Holder::CutOff, libc::SIGTERM);
}

// ------------------------------------------------------------------------------------------
// 3. An out-of-band delete of the leader's key.

/// An operator deletes the leader's key with `etcdctl del` while a waiter queues (or none does);
/// a newcomer joins after the delete. Nobody starts until the old command has stopped.
fn out_of_band_delete(legacy: bool, waiter: bool) {
    let lock = format!("act-del-{legacy}-{waiter}");
    let s = Scene::new("actors", &lock);
    let legacy = legacy.to_string();
    let c = |id: &str| cand(&s, id, &lock).env("ETCD_AWAIT_ELECTION_LEGACY_LOCK", &legacy);
    let mut cast = Cast::default();
    let ca = cast.add(c("a").args(&["--ignore-term"]));
    let ra = s.mon.wait_for_start(Some("a"), T);
    if waiter {
        cast.add(c("b"));
        s.etcd.wait_queued(&lock, "b");
    }
    let head = s.etcd.queue(&lock).remove(0);
    assert_eq!(head.value, "a");

    let del = monotonic_ns();
    s.etcd.del(&head.key);
    eprintln!("[{}] etcdctl del {}", s.mon.rel(del), head.key);
    cast.add(c("c"));
    s.etcd.wait_queued(&lock, "c");

    let first = if waiter { "b" } else { "c" };
    let next = s.mon.wait_for_start(Some(first), T);
    s.mon.assert_no_overlap();
    let a_end = end_of(&s.mon, ra.pid);
    assert!(
        a_end < next.ns,
        "{first} started {:.1} ms before a's command ended (the delete was {:.1} ms before):\n{}",
        ms(a_end as i128 - next.ns as i128),
        ms(next.ns as i128 - del as i128),
        s.mon.timeline()
    );
    assert_eq!(cast[ca].expect_exit(T).code(), Some(EXIT_LOST));
    if waiter {
        assert!(starts_of(&s.mon, "c").is_empty(), "c ran beside b");
        let b = cast.iter().position(|x| x.identity() == "b").unwrap();
        assert_eq!(term_and_wait(&mut cast[b]), Some(143));
        let rc = s.mon.wait_for_start(Some("c"), T);
        assert!(end_of(&s.mon, next.pid) < rc.ns);
    }
    s.mon.assert_no_overlap();
    eprintln!(
        "legacy {legacy}, waiter {waiter}: delete -> a's command ended {:.1} ms -> {first} started {:.1} ms later",
        ms(a_end as i128 - del as i128),
        ms(next.ns as i128 - a_end as i128)
    );
}

#[test]
fn out_of_band_delete_of_the_leader_key_without_legacy_lock() {
    out_of_band_delete(false, true);
}

#[test]
fn out_of_band_delete_of_the_leader_key_with_legacy_lock() {
    out_of_band_delete(true, true);
}

#[test]
fn out_of_band_delete_then_a_newcomer_without_legacy_lock() {
    out_of_band_delete(false, false);
}

#[test]
fn out_of_band_delete_then_a_newcomer_with_legacy_lock() {
    out_of_band_delete(true, false);
}

/// An operator deletes the key of a waiter (behind the one next in line, and the one next in
/// line): each joins again at once, not once the line moves ahead of it, so a twin started just
/// after finds its key and refuses instead of queueing (and later leading) as a stranger.
#[test]
fn a_waiters_deleted_key_is_put_back_at_once_and_a_twin_refuses() {
    let lock = "act-del-waiter";
    let s = Scene::new("actors", lock);
    let mut cast = Cast::default();
    cast.add(cand(&s, "a", lock));
    s.mon.wait_for_start(Some("a"), T);
    for id in ["b", "c"] {
        cast.add(cand(&s, id, lock));
        s.etcd.wait_queued(lock, id);
    }
    for id in ["c", "b"] {
        let old = s.etcd.queue(lock).into_iter().find(|k| k.value == id);
        let old = old.expect("its key").key;
        s.etcd.del(&old);
        // Generous: it takes one watch event and one read; the line ahead never moves here.
        wait_until(
            FAST,
            &format!("{id} back in the queue under a new key"),
            || {
                let q = s.etcd.queue(lock);
                q.iter().any(|k| k.value == id && k.key != old)
            },
        );
        let mut twin = cand(&s, id, lock).spawn();
        assert_eq!(
            twin.expect_exit(T).code(),
            Some(EXIT_TWIN),
            "the twin of {id} did not refuse"
        );
    }
    assert_eq!(
        starts_of(&s.mon, "b").len() + starts_of(&s.mon, "c").len(),
        0
    );
    s.mon.assert_no_overlap();
}

// ------------------------------------------------------------------------------------------
// 4. Twins.

/// A second live candidate with the identity of a leader (or of a waiter) refuses with
/// [`EXIT_TWIN`] and never starts its command; the first one is undisturbed.
fn twin(of_leader: bool) {
    let lock = format!("act-twin-{of_leader}");
    let s = Scene::new("actors", &lock);
    let mut cast = Cast::default();
    let leader = if of_leader {
        None
    } else {
        Some(cast.add(cand(&s, "l", &lock)))
    };
    if leader.is_some() {
        s.mon.wait_for_start(Some("l"), T);
    }
    cast.add(cand(&s, "twin", &lock).args(&["--id", "twin.1"]));
    let first = s.etcd.wait_queued(&lock, "twin");
    let r1 = of_leader.then(|| s.mon.wait_for_start(Some("twin.1"), T));

    let c2 = cast.add(cand(&s, "twin", &lock).args(&["--id", "twin.2"]));
    let started = Instant::now();
    // Until it gives its verdict, the twin never runs beside the first one.
    let code = loop {
        s.mon.assert_no_overlap();
        if let Some(st) = cast[c2].wait_timeout(Duration::from_millis(20)) {
            break st.code();
        }
        assert!(
            started.elapsed() < T,
            "the twin is still undecided after {T:?}"
        );
    };
    assert_eq!(
        code,
        Some(EXIT_TWIN),
        "the twin's exit; stderr:\n{}",
        cast[c2].stderr_text()
    );
    eprintln!("twin refused after {:?}", started.elapsed());
    assert!(starts_of(&s.mon, "twin.2").is_empty(), "the twin ran");
    let q = s.etcd.queue(&lock);
    assert!(q.contains(&first), "the first one's key changed: {q:?}");
    assert_eq!(
        q.iter().filter(|kv| kv.value == "twin").count(),
        1,
        "one key for the identity: {q:?}"
    );
    if let Some(r1) = r1 {
        s.mon
            .assert_undisturbed(r1.pid, FAST, "the first twin", String::new);
    }
    if let Some(l) = leader {
        assert_eq!(term_and_wait(&mut cast[l]), Some(143));
        s.mon.wait_for_start(Some("twin.1"), T);
    }
    s.mon.assert_no_overlap();
}

#[test]
fn twin_of_a_live_leader_refuses_and_never_runs() {
    twin(true);
}

#[test]
fn twin_of_a_live_waiter_refuses_and_never_runs() {
    twin(false);
}

/// A SIGKILLed leader restarted with its identity is its own dead previous life: it adopts its
/// key and leads again before the candidates queued behind it.
#[test]
fn dead_previous_life_is_adopted_and_leads_before_the_waiters() {
    // A TTL long enough that a dead life is told from a live one well before its lease expires.
    let (ttl, renew) = (6, "4s");
    let lock = "act-adopt";
    let s = Scene::new("actors", lock);
    let mut cast = Cast::default();
    let c = |id: &str| s.candidate(id, ttl, renew, RETRY);
    let ca = cast.add(c("a").args(&["--id", "a.1"]));
    let r1 = s.mon.wait_for_start(Some("a.1"), T);
    let key = s.etcd.wait_queued(lock, "a");
    cast.add(c("b"));
    s.etcd.wait_queued(lock, "b");
    cast.add(c("c"));
    s.etcd.wait_queued(lock, "c");

    cast[ca].kill9();
    s.mon.wait_until_dead(r1.pid, T);
    let restart = monotonic_ns();
    cast.add(c("a").args(&["--id", "a.2"]));
    let next = s.mon.wait_for_start_after(None, restart, T);
    assert_eq!(
        next.identity,
        "a.2",
        "the restarted leader must lead before the waiters:\n{}",
        s.mon.timeline()
    );
    let q = s.etcd.queue(lock);
    // The same place: key, lease and create revision (its value may be put again).
    let place = |kv: &Kv| (kv.key.clone(), kv.lease, kv.create_revision);
    assert_eq!(
        q.first().map(place),
        Some(place(&key)),
        "adopted: the same key leads: {q:?}"
    );
    s.mon
        .assert_undisturbed(next.pid, FAST, "the adopter", String::new);
    eprintln!(
        "dead previous life adopted: a.2 started {:.1} ms after the restart",
        ms(next.ns as i128 - restart as i128)
    );
}

/// A previous life's lease that leaves less than a second above the new life's renew deadline is
/// not adopted: led with, its kill budget would be 50 ms, and SIGKILL would follow SIGTERM by as
/// little. It expires by itself, the new life leads on a lease of its own, and when etcd then
/// stalls, its command gets SIGTERM at least half a second before SIGKILL.
#[test]
fn a_previous_life_too_short_for_the_renew_deadline_is_not_adopted() {
    let lock = "act-adopt-margin";
    let s = Scene::new("actors", lock);
    let mut cast = Cast::default();
    let first = cast.add(s.candidate("a", 6, "4s", RETRY).args(&["--id", "a.1"]));
    let r1 = s.mon.wait_for_start(Some("a.1"), T);
    let old = s.etcd.wait_queued(lock, "a");
    cast[first].kill9();
    s.mon.wait_until_dead(r1.pid, T);
    // Valid on its own (12 s − 5.9 s), but the old 6 s lease would leave 0.1 s.
    let second = s
        .candidate("a", 12, "5900ms", RETRY)
        .args(&["--id", "a.2", "--ignore-term"]);
    cast.add(second);
    let r2 = s.mon.wait_for_start(Some("a.2"), T);
    let q = s.etcd.queue(lock);
    assert!(
        q.iter().all(|kv| kv.lease != old.lease),
        "the 6 s lease was adopted: {q:?}"
    );

    s.etcd.pause();
    let death = s.mon.wait_until_dead(r2.pid, T);
    s.etcd.resume();
    let p = proc_of(&s.mon, r2.pid);
    let term = *p
        .term_ns
        .first()
        .unwrap_or_else(|| panic!("no SIGTERM before the SIGKILL: {p:?}"));
    let grace = Duration::from_nanos(death.saturating_sub(term));
    assert!(
        grace >= Duration::from_millis(500),
        "SIGKILL {grace:?} after SIGTERM (at least half a second is promised):\n{}",
        s.mon.timeline()
    );
    eprintln!("etcd stalled: SIGKILL {grace:?} after SIGTERM");
}

// ------------------------------------------------------------------------------------------
// 5. Neighbouring elections.

/// Locks `app` and `app/cron`, one identity in both: the `app` wrapper neither adopts nor revokes
/// the `app/cron` key, `app` candidates do not queue behind `app/cron` keys, and each lock keeps
/// its own exclusion.
#[test]
fn neighbouring_elections_app_and_app_cron_do_not_interfere() {
    let s = Scene::new("actors", "app");
    let cron_dir = TempDir::new("actors-cron");
    let cron_log = cron_dir.join("records");
    let cron_mon = Monitor::start(&cron_log);
    let cron = |id: &str| cand(&s, id, "app/cron").log(&cron_log);
    let mut cast = Cast::default();
    cast.add(cron("hostA").args(&["--id", "cronA", "--term-delay", SLOW_STOP_MS]));
    let rca = cron_mon.wait_for_start(Some("cronA"), T);
    let cron_key = s.etcd.wait_queued("app/cron", "hostA");
    let ccb = cast.add(cron("hostB").args(&["--id", "cronB"]));
    s.etcd.wait_queued("app/cron", "hostB");
    let cron_keys = s.etcd.under("app/cron");

    // Queued behind the app/cron keys, appA would never start: they are renewed while the cron
    // lock runs. (Its time to start is not bounded here: it includes spawning the wrapper, which
    // took 2.5 s once on a loaded machine.)
    let caa = cast.add(cand(&s, "hostA", "app").args(&["--id", "appA"]));
    let raa = s.mon.wait_for_start(Some("appA"), T);
    cast.add(cand(&s, "hostB", "app").args(&["--id", "appB"]));
    s.etcd.wait_queued("app", "hostB");
    // appA is not queued behind the app/cron keys, nor holding one of them.
    let app_q = s.etcd.queue("app");
    assert_eq!(
        app_q.iter().map(|kv| kv.value.as_str()).collect::<Vec<_>>(),
        ["hostA", "hostB"],
        "app's queue: {app_q:?}"
    );
    assert!(app_q.iter().all(|kv| kv.lease != cron_key.lease));

    // appA hands over to appB through the app queue alone, not held back by app/cron keys.
    let t1 = monotonic_ns();
    assert_eq!(term_and_wait(&mut cast[caa]), Some(143));
    let rab = s.mon.wait_for_start(Some("appB"), T);
    assert!(
        Duration::from_nanos(rab.ns - t1) < FAST,
        "appB took {:?}",
        Duration::from_nanos(rab.ns - t1)
    );
    assert!(end_of(&s.mon, raa.pid) < rab.ns);

    // The cron lock never noticed: cronA runs undisturbed, cronB waits, the keys are the same.
    cron_mon.assert_undisturbed(rca.pid, FAST, "cronA", String::new);
    assert_eq!(
        s.etcd.under("app/cron"),
        cron_keys,
        "app/cron's keys changed"
    );
    s.mon.assert_no_overlap();

    // And the cron lock still hands over on its own, with its own exclusion.
    let ca = cast.iter().position(|c| c.identity() == "hostA").unwrap();
    cast[ca].signal(libc::SIGTERM);
    let rcb = cron_mon.wait_for_start(Some("cronB"), T);
    assert!(end_of(&cron_mon, rca.pid) < rcb.ns);
    assert!(cast[ccb].is_running());
    cron_mon.assert_no_overlap();
    s.mon.assert_no_overlap();
}

// ------------------------------------------------------------------------------------------
// 6. A stuck etcd raft leader.

/// Remote ports of the established TCP connections of process `pid`.
fn connected_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state (01 = established), ..., inode (the tenth field).
            if f.len() > 9 && f[3] == "01" && inodes.iter().any(|i| i == f[9]) {
                if let Some(port) = f[2].rsplit(':').next() {
                    ports.extend(u16::from_str_radix(port, 16).ok());
                }
            }
        }
    }
    ports.sort();
    ports.dedup();
    ports
}

/// `strace` holding every `fdatasync` of a process for 25 s: its raft loop stalls on the WAL.
/// Dropping it detaches (SIGTERM: strace lets its tracees go on).
struct StallDisk {
    child: Child,
    dir: TempDir,
}

impl StallDisk {
    fn attach(pid: u32) -> StallDisk {
        let dir = TempDir::new("strace");
        let err = std::fs::File::create(dir.join("stderr")).expect("strace stderr");
        let child = Command::new("strace")
            .args(["-f", "-e", "trace=fdatasync"])
            .args(["-e", "inject=fdatasync:delay_enter=25000000"])
            .arg("-o")
            .arg(dir.join("trace"))
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn strace (Debian package strace)");
        let s = StallDisk { child, dir };
        wait_until(T, "strace to attach", || {
            let text = std::fs::read_to_string(s.dir.join("stderr")).unwrap_or_default();
            text.contains("attached")
        });
        s
    }
}

impl Drop for StallDisk {
    fn drop(&mut self) {
        common::signal_pid(self.child.id(), libc::SIGTERM);
        if common::wait_child(&mut self.child, Duration::from_secs(5)).is_none() {
            common::kill_and_wait(&mut self.child);
        }
    }
}

/// A candidate on the cluster's members `eps` (comma-separated, in the order it tries them).
fn on_members(id: &str, lock: &str, eps: &str, log: &Path) -> CandidateBuilder {
    Candidate::new(id)
        .lock(lock)
        .endpoints(eps)
        .lease(TTL)
        .renew(RENEW)
        .retry(RETRY)
        .log(log)
}

/// Stalls the disk of member `l`, the raft leader (checked), and waits until the others elected a
/// new leader. The stall holds while the returned value lives.
fn stall_raft_leader(cluster: &Cluster, l: usize) -> StallDisk {
    assert_eq!(cluster.raft_leader_index(), l, "the raft leader moved");
    let stuck_id = member_status(cluster, l).0.expect("the leader's member id");
    let stall = StallDisk::attach(cluster.member(l).pid().expect("leader runs"));
    // One write: the leader's raft loop blocks in fdatasync on it.
    let _ = cluster
        .member(l)
        .etcdctl(&["--command-timeout", "2s", "put", "act-stall", "x"]);
    let f = (0..3).find(|&i| i != l).unwrap();
    wait_until(T, "a new raft leader among the others", || {
        let (me, leader) = member_status(cluster, f);
        me.is_some() && leader.is_some_and(|id| id != 0 && id != stuck_id)
    });
    stall
}

/// The raft leader's disk stalls (etcd-io/etcd#15247: it keeps answering keep-alives while the
/// others elect a new leader and expire the lease). The wrapper talking to it must not keep its
/// command running beside the follower's: it moves to a member that can commit and keeps its
/// lease there, or stops its command before the follower starts. `only_that_member`: the
/// leader's wrapper knows no other endpoint, so only the second way is open to it.
fn stuck_raft_leader(only_that_member: bool) {
    let lock = "act-stuck";
    let cluster = Cluster::start(3);
    let dir = TempDir::new("actors-stuck");
    let log = dir.join("records");
    let mon = Monitor::start(&log);
    let l = cluster.raft_leader_index();
    let eps = cluster.endpoints();
    let others: Vec<String> = (0..3).filter(|&i| i != l).map(|i| eps[i].clone()).collect();
    let a_eps = if only_that_member {
        eps[l].clone()
    } else {
        format!("{},{}", eps[l], others.join(","))
    };
    let b_eps = format!("{},{}", others.join(","), eps[l]);
    let c = |id: &str, eps: &str| on_members(id, lock, eps, &log);
    let mut cast = Cast::default();
    let ca = cast.add(c("a", &a_eps));
    let ra = mon.wait_for_start(Some("a"), T);
    cast.add(c("b", &b_eps));
    cluster.wait_queued(lock, "b");
    let leader_port = cluster.member(l).client_port();
    wait_until(T, "a to talk to the raft leader only", || {
        connected_ports(cast[ca].pid()) == [leader_port]
    });
    let stalled = monotonic_ns();
    eprintln!("[{}] member m{l} (raft leader) stalls", mon.rel(stalled));
    let _stall = stall_raft_leader(&cluster, l);
    eprintln!(
        "[{}] a new raft leader was elected",
        mon.rel(monotonic_ns())
    );
    // Several TTLs of the stall: the lease can expire under the new raft leader meanwhile.
    let until = Instant::now() + Duration::from_secs(3 * TTL);
    while Instant::now() < until {
        mon.assert_no_overlap();
        std::thread::sleep(Duration::from_millis(20));
    }
    mon.assert_no_overlap();
    let b_starts = starts_of(&mon, "b");
    let a = proc_of(&mon, ra.pid);
    match b_starts.first() {
        Some(rb) => {
            let a_end = a.end_ns().expect("a ended before b started");
            assert!(a_end < rb.ns, "a's command ran on after b started");
            eprintln!(
                "stuck raft leader: a's command ended {:.1} ms after the stall, b started {:.1} ms after that",
                ms(a_end as i128 - stalled as i128),
                ms(rb.ns as i128 - a_end as i128)
            );
        }
        None => {
            // a kept a lease renewed through a working member: the safe outcome too.
            assert!(
                !only_that_member,
                "b never started, yet a has no other member"
            );
            assert!(
                connected_ports(cast[ca].pid()) != [leader_port],
                "a still leads through the stuck member alone"
            );
            eprintln!(
                "stuck raft leader: a kept leading ({}), b waits",
                if a.end_ns().is_none() {
                    "still running"
                } else {
                    "stopped"
                }
            );
        }
    }
    if only_that_member {
        assert!(!b_starts.is_empty(), "b never took over from a cut-off a");
    }
    // The stall ends: what the stuck member still had queued plays out (its stale lessor may
    // revoke the new leader's lease: the command stops, the wrapper exits "lost"). Restarted as
    // a supervisor would, the candidates settle on one leader, alone.
    drop(_stall);
    let until = Instant::now() + Duration::from_secs(2 * TTL);
    while Instant::now() < until {
        mon.assert_no_overlap();
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, (id, eps)) in [("a", &a_eps), ("b", &b_eps)].into_iter().enumerate() {
        if let Some(st) = cast[i].wait_timeout(Duration::ZERO) {
            eprintln!("after the stall: {id} exited {st:?}; restarting it");
            cast.add(c(id, eps));
        }
    }
    wait_until(T, "exactly one of a and b running after the stall", || {
        mon.assert_no_overlap();
        mon.running_identities().len() == 1
    });
    mon.assert_no_overlap();
}

/// `(own member id, raft leader id)` as member `i` reports them (`None` when it does not answer).
fn member_status(cluster: &Cluster, i: usize) -> (Option<u64>, Option<u64>) {
    let out = cluster.member(i).etcdctl(&[
        "--command-timeout",
        "500ms",
        "endpoint",
        "status",
        "-w",
        "json",
    ]);
    let s = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return (None, None);
    }
    (
        json_uint(&s, "\"member_id\":"),
        json_uint(&s, "\"leader\":"),
    )
}

#[test]
fn stuck_raft_leader_does_not_keep_a_command_running_beside_the_next() {
    stuck_raft_leader(false);
}

#[test]
fn stuck_raft_leader_as_the_only_endpoint_stops_the_command_before_the_next_starts() {
    stuck_raft_leader(true);
}

/// A waiter queued behind others talks to the raft leader when its disk stalls: that member
/// still answers its keep-alives (etcd-io/etcd#15247) while the other members elect a new leader
/// and would expire its lease. It must move to a member that can commit and keep its place, so
/// that when the two ahead of it leave during the stall, it takes its turn then, not once the
/// stall ends (a command nobody runs meanwhile).
#[test]
fn waiter_talking_to_a_stuck_raft_leader_keeps_its_place_and_takes_its_turn() {
    let lock = "act-stuck-waiter";
    let cluster = Cluster::start(3);
    let dir = TempDir::new("actors-stuck-waiter");
    let log = dir.join("records");
    let mon = Monitor::start(&log);
    let l = cluster.raft_leader_index();
    let eps = cluster.endpoints();
    let others: Vec<String> = (0..3).filter(|&i| i != l).map(|i| eps[i].clone()).collect();
    let healthy = others.join(",");
    let c_eps = format!("{},{healthy}", eps[l]);
    let c = |id: &str, eps: &str| on_members(id, lock, eps, &log);
    let mut cast = Cast::default();
    let ca = cast.add(c("a", &healthy));
    mon.wait_for_start(Some("a"), T);
    let cb = cast.add(c("b", &healthy));
    cluster.wait_queued(lock, "b");
    let cc = cast.add(c("c", &c_eps));
    cluster.wait_queued(lock, "c");
    let leader_port = cluster.member(l).client_port();
    wait_until(T, "c to talk to the raft leader only", || {
        connected_ports(cast[cc].pid()) == [leader_port]
    });
    let stalled = Instant::now();
    let stall = stall_raft_leader(&cluster, l);
    // Two TTLs under the new raft leader: a lease kept alive only on the stuck member ends.
    std::thread::sleep(Duration::from_secs(2 * TTL));
    // 75 is an end as good: the raft election may outlast a's 2 s renew deadline.
    let ended = [Some(143), Some(EXIT_LOST)];
    let code = term_and_wait(&mut cast[ca]);
    assert!(ended.contains(&code), "a exited {code:?}");
    mon.wait_for_start(Some("b"), T);
    let code = term_and_wait(&mut cast[cb]);
    assert!(ended.contains(&code), "b exited {code:?}");
    // The stall holds fdatasync for 25 s: c must lead well before it ends.
    let left = Duration::from_secs(25).saturating_sub(stalled.elapsed() + Duration::from_secs(3));
    assert!(
        left > Duration::from_secs(4),
        "too slow to get here: {left:?} of the stall left"
    );
    mon.wait_for_start(Some("c"), left);
    drop(stall);
    mon.assert_no_overlap();
}

// ------------------------------------------------------------------------------------------
// 7. Graceful switchover.

/// With a cooperating holder (ours) a forcer asks it to yield: the old command ends through its
/// SIGTERM handler and the forcer's starts within milliseconds. Ten forcers in a row, each
/// deposing the previous one.
#[test]
fn graceful_switchover_is_fast_and_ends_the_old_command_through_sigterm() {
    let lock = "act-switch";
    let s = Scene::new("actors", lock);
    let mut cast = Cast::default();
    let mut prev = cast.add(cand(&s, "s0", lock));
    let mut prev_start = s.mon.wait_for_start(Some("s0"), T);
    s.etcd.wait_queued(lock, "s0");
    let mut gaps = Vec::new();
    let mut slowest = (0.0, String::new());
    for i in 1..=10 {
        let id = format!("s{i}");
        let next = cast.add(cand(&s, &id, lock).force(true));
        let r = s.mon.wait_for_start(Some(&id), T);
        s.mon.wait_until_dead(prev_start.pid, T);
        let old = proc_of(&s.mon, prev_start.pid);
        let stop = old
            .stop_ns
            .unwrap_or_else(|| panic!("round {i}: no stop record: {old:?}"));
        assert!(
            old.term_ns.first().is_some_and(|&t| t <= stop),
            "round {i}: the old command did not end through its SIGTERM handler: {old:?}"
        );
        assert!(stop < r.ns, "round {i}: overlap:\n{}", s.mon.timeline());
        gaps.push(ms(r.ns as i128 - stop as i128));
        let code = cast[prev].expect_exit(T).code();
        if gaps[i - 1] > slowest.0 {
            let text = |c: &Candidate| format!("---- {} ----\n{}", c.identity(), c.stderr_text());
            slowest = (gaps[i - 1], text(&cast[prev]) + &text(&cast[next]));
        }
        eprintln!(
            "switchover {i}: old stop -> new start {:.1} ms, old wrapper exit {code:?}",
            gaps[i - 1]
        );
        s.mon.assert_no_overlap();
        (prev, prev_start) = (next, r);
    }
    let (p50, p95) = percentiles(&gaps);
    eprintln!(
        "graceful switchover over {} rounds: p50 {p50:.1} ms, p95 {p95:.1} ms",
        gaps.len()
    );
    eprintln!(
        "the slowest ({:.1} ms), as the two wrappers saw it:\n{}",
        slowest.0, slowest.1
    );
    // Behaviour, not speed (BENCHMARKS.md has the figure: milliseconds on a quiet machine): the
    // old design waited out the deposed lease's TTL (3 s) in every round. With both cores
    // loaded by other work a round took up to 400 ms, a holder slow to acknowledge included.
    assert!(
        p50 < 1000.0,
        "switchover gap p50 {p50:.1} ms: as slow as waiting out the lease (gaps {gaps:?})"
    );
    s.mon.assert_no_overlap();
}
