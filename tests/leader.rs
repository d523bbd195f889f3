//! Clients finding the leader: `ADVERTISE`, `--leader`, `--leader --watch` and `/leader`, against
//! a real etcd, real wrappers around `eae-test-child`, and real strangers on the lock (`etcdctl
//! lock`, `etcdctl elect`, a Go replica). "Leads" means "may be running its command": every
//! test that moves the lock proves from the children's CLOCK_MONOTONIC records that no line
//! names a successor before the old command's stop is recorded.

mod common;

use common::candidate::{wrapper_bin, CandidateBuilder};
use common::etcd::Etcd;
use common::old_replica::OldReplica;
use common::recipe::LockClient;
use common::records::{monotonic_ns, read_records, Kind, Record};
use common::scene::Scene;
use common::{clean_command, free_port, run, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TTL: u64 = 3;
const RENEW: &str = "2s";
const RETRY: &str = "250ms";
/// Deadline for anything that should happen within a few TTLs.
const T: Duration = Duration::from_secs(30);

fn cand(s: &Scene, id: &str) -> CandidateBuilder {
    s.candidate(id, TTL, RENEW, RETRY)
}

/// `etcd-await-election --leader` (and `extra`) on `lock`, configured as an observer is: no
/// identity.
fn leader_cmd(endpoints: &str, lock: &str, extra: &[&str]) -> Command {
    let mut c = clean_command(wrapper_bin());
    c.env("ETCD_AWAIT_ELECTION_LOCK_NAME", lock)
        .env("ETCD_AWAIT_ELECTION_ENDPOINTS", endpoints)
        .env("ETCD_AWAIT_ELECTION_RETRY_PERIOD", RETRY)
        .arg("--leader")
        .args(extra)
        .stdin(Stdio::null());
    c
}

/// One `--leader`: its exit code and its line.
fn ask(endpoints: &str, lock: &str) -> (i32, Value) {
    let r = run(leader_cmd(endpoints, lock, &[]), T);
    let line: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON line ({e}): {:?}; stderr {}",
            r.stdout, r.stderr
        )
    });
    assert_eq!(r.stdout.lines().count(), 1, "{:?}", r.stdout);
    (r.status.code().expect("an exit code"), line)
}

fn line(leader: &str, address: Option<&str>, revision: Option<i64>) -> Value {
    serde_json::json!({"leader": leader, "address": address, "revision": revision})
}

fn nobody() -> Value {
    serde_json::json!({"leader": null, "address": null, "revision": null})
}

/// `ETCD_AWAIT_ELECTION_LEADER_REVISION` as `id`'s child saw it (`--print-env` on its stdout).
fn revision_of(s: &mut Scene, id: &str) -> i64 {
    let c = s.cast.by_id(id);
    wait_for(T, &format!("{id}'s command's environment"), || {
        let out = c.stdout_text();
        let env = out.lines().find(|l| l.starts_with("env "))?.to_string();
        env.split_whitespace().nth(4)?.parse().ok()
    })
}

/// A line seen by [`Watcher`]: when it was read (CLOCK_MONOTONIC), and the child records the
/// log held at that moment.
struct Seen {
    ns: u64,
    line: Value,
    records: Vec<Record>,
}

/// `--leader --watch`, its lines collected by a thread as they arrive.
struct Watcher {
    child: Child,
    seen: Arc<Mutex<Vec<Seen>>>,
    stderr: PathBuf,
    _dir: common::TempDir,
}

impl Watcher {
    fn start(endpoints: &str, lock: &str, log: &Path) -> Watcher {
        let dir = common::TempDir::new("watcher");
        let stderr = dir.join("stderr");
        let mut child = leader_cmd(endpoints, lock, &["--watch"])
            .env("ETCD_AWAIT_ELECTION_LOG_LEVEL", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("spawn --leader --watch");
        let out = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (into, log) = (seen.clone(), log.to_path_buf());
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                let ns = monotonic_ns();
                let records = read_records(&log);
                let line = serde_json::from_str(&l).unwrap_or(Value::String(l));
                into.lock().unwrap().push(Seen { ns, line, records });
            }
        });
        Watcher {
            child,
            seen,
            stderr,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.line.clone())
            .collect()
    }

    /// Waits for the `n`th line (from 1) and returns it with when it arrived and the records.
    fn nth(&self, n: usize) -> (u64, Value, Vec<Record>) {
        wait_for(T, &format!("line {n} of --leader --watch"), || {
            let seen = self.seen.lock().unwrap();
            seen.get(n - 1)
                .map(|s| (s.ns, s.line.clone(), s.records.clone()))
        })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM: it must exit 0, promptly.
    fn stop(mut self) {
        assert!(common::signal_pid(self.child.id(), libc::SIGTERM));
        let st = common::wait_child(&mut self.child, T).expect("--watch exits on SIGTERM");
        assert_eq!(st.code(), Some(0), "{}", self.stderr());
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- --leader --watch stderr ----\n{}", self.stderr());
        }
        common::kill_and_wait(&mut self.child);
    }
}

/// The child record of `kind` for `pid`, if `records` holds it.
fn record(records: &[Record], kind: Kind, pid: u32) -> Option<&Record> {
    records.iter().find(|r| r.kind == kind && r.pid == pid)
}

/// `--leader` with nobody, then a leader advertising an address, then one advertising none;
/// `--leader` needs no identity, and its revision is the one the leader's command got.
#[test]
fn leader_prints_the_holder_its_address_and_revision() {
    let mut s = Scene::new("leader-once", "leader-once");
    let ep = s.etcd.endpoint();
    assert_eq!(ask(&ep, &s.lock), (3, nobody()));
    let a = cand(&s, "a")
        .env("ETCD_AWAIT_ELECTION_ADVERTISE", "http://127.0.0.1:8080/a")
        .args(&["--print-env"]);
    s.spawn(a);
    s.mon.wait_for_start(Some("a"), T);
    let rev = revision_of(&mut s, "a");
    let addr = Some("http://127.0.0.1:8080/a");
    assert_eq!(ask(&ep, &s.lock), (0, line("a", addr, Some(rev))));
    // Readable with etcdctl, bound to the leader's lease, beside the record.
    let shown = s
        .etcd
        .etcdctl(&["get", &s.lock, &format!("{}\u{1}", s.lock)]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains(&format!("{}\0address\nhttp://127.0.0.1:8080/a\n", s.lock)),
        "{shown:?}"
    );
    s.cast.by_id("a").signal(libc::SIGTERM);
    s.cast.by_id("a").expect_exit(T);
    assert_eq!(ask(&ep, &s.lock), (3, nobody()));
    s.spawn(cand(&s, "b").args(&["--print-env"]));
    s.mon.wait_for_start(Some("b"), T);
    let rev = revision_of(&mut s, "b");
    assert_eq!(ask(&ep, &s.lock), (0, line("b", None, Some(rev))));
    // Gone with b's lease: no stale address under the record.
    assert!(!String::from_utf8_lossy(
        &s.etcd
            .etcdctl(&["get", &s.lock, &format!("{}\u{1}", s.lock)])
            .stdout
    )
    .contains("address"));
}

/// A hand-over seen by `--watch`: the old command takes a second to stop, and the new leader's
/// line arrives only once that stop is recorded, with the heir's own address (published by the
/// old leader in the hand-over). Then nobody. SIGTERM ends the watcher with 0.
#[test]
fn watch_sees_a_hand_over_only_after_the_old_command_stopped() {
    let mut s = Scene::new("leader-watch", "leader-watch");
    let a = cand(&s, "a")
        .env("ETCD_AWAIT_ELECTION_ADVERTISE", "http://127.0.0.1:8080/a")
        .args(&["--term-delay", "1000", "--print-env"]);
    s.spawn(a);
    let a_start = s.mon.wait_for_start(Some("a"), T);
    let b = cand(&s, "b")
        .env("ETCD_AWAIT_ELECTION_ADVERTISE", "10.0.0.2:5432")
        .args(&["--print-env"]);
    s.spawn(b);
    wait_queued(&s.etcd, &s.lock, 2);
    let w = Watcher::start(&s.etcd.endpoint(), &s.lock, &s.log);
    let a_rev = revision_of(&mut s, "a");
    let (_, first, _) = w.nth(1);
    assert_eq!(
        first,
        line("a", Some("http://127.0.0.1:8080/a"), Some(a_rev))
    );
    s.mark("SIGTERM a");
    s.cast.by_id("a").signal(libc::SIGTERM);
    let (at, second, records) = w.nth(2);
    let b_rev = revision_of(&mut s, "b");
    assert_eq!(second, line("b", Some("10.0.0.2:5432"), Some(b_rev)));
    let stop = record(&records, Kind::Stop, a_start.pid);
    assert!(
        stop.is_some_and(|r| r.ns < at),
        "b printed before a's command stopped:\n{}",
        s.mon.timeline()
    );
    let b_start = s.mon.wait_for_start(Some("b"), T);
    eprintln!(
        "b's line {}",
        if at >= b_start.ns {
            format!(
                "{:.1} ms after b's command started",
                (at - b_start.ns) as f64 / 1e6
            )
        } else {
            format!(
                "{:.1} ms before b's command started",
                (b_start.ns - at) as f64 / 1e6
            )
        }
    );
    s.cast.by_id("b").signal(libc::SIGTERM);
    let (_, third, _) = w.nth(3);
    assert_eq!(third, nobody());
    s.cast.by_id("b").expect_exit(T);
    assert_eq!(w.lines().len(), 3, "{:?}", w.lines());
    s.mon.assert_no_overlap();
    w.stop();
}

/// An idle `--watch` asks etcd nothing: it watches from past the revision it read, so that
/// etcd's history at that revision (the change it just printed) does not wake it to read again,
/// and again, every 100 ms (etcd's sync loop catching up a watch made in the past).
#[test]
fn an_idle_watch_reads_nothing() {
    let mut s = Scene::new("leader-idle", "leader-idle");
    // Renewed every 5 s: at most one confirmation in the window.
    s.spawn(s.candidate("a", 15, "10s", RETRY));
    s.mon.wait_for_start(Some("a"), T);
    let w = Watcher::start(&s.etcd.endpoint(), &s.lock, &s.log);
    let (_, first, _) = w.nth(1);
    assert_eq!(first["leader"], "a");
    let before = s.etcd.handled(&["Range", "Txn"]);
    std::thread::sleep(Duration::from_secs(3));
    let reads = s.etcd.handled(&["Range", "Txn"]) - before;
    assert!(reads <= 2.0, "{reads} reads in 3 s of a lock at rest");
    assert_eq!(w.lines().len(), 1, "{:?}", w.lines());
    w.stop();
}

/// `--watch` across an etcd restart and a compaction of the history it would resume from: it
/// keeps printing every change.
#[test]
fn watch_survives_an_etcd_restart_and_compaction() {
    let mut s = Scene::new("leader-restart", "leader-restart");
    let w = Watcher::start(&s.etcd.endpoint(), &s.lock, &s.log);
    assert_eq!(w.nth(1).1, nobody());
    // Leases that outlast a slow restart: the leader does not change by itself.
    let patient = |s: &Scene, id: &str| s.candidate(id, 10, "8s", RETRY);
    s.spawn(patient(&s, "a"));
    s.mon.wait_for_start(Some("a"), T);
    assert_eq!(w.nth(2).1["leader"], "a");
    s.spawn(patient(&s, "b"));
    wait_queued(&s.etcd, &s.lock, 2);
    s.mark("etcd restarts");
    s.etcd.restart();
    s.cast.by_id("a").signal(libc::SIGTERM);
    s.mon.wait_for_start(Some("b"), T);
    assert_eq!(w.nth(3).1["leader"], "b");
    // Compacted up to now: a watch resumed from an older revision would be refused.
    s.mark("compaction");
    let rev = etcd_revision(&s.etcd);
    common::etcd::assert_success(
        &s.etcd.etcdctl(&["compaction", &rev.to_string()]),
        "compaction",
    );
    s.cast.by_id("b").signal(libc::SIGTERM);
    assert_eq!(w.nth(4).1, nobody());
    s.spawn(cand(&s, "c"));
    assert_eq!(w.nth(5).1["leader"], "c");
    assert_eq!(w.lines().len(), 5, "{:?}", w.lines());
    w.stop();
}

/// Waits until `n` candidates stand in the queue, so that the leader has an heir.
fn wait_queued(etcd: &Etcd, lock: &str, n: usize) {
    wait_for(T, &format!("{n} keys under {lock}/"), || {
        (etcd.get_prefix_keys(&format!("{lock}/")).len() == n).then_some(())
    });
}

fn etcd_revision(etcd: &Etcd) -> u64 {
    let out = etcd.etcdctl(&["get", "-w", "json", "any"]);
    common::etcd::assert_success(&out, "etcdctl get -w json");
    common::etcd::json_uint(&String::from_utf8_lossy(&out.stdout), "\"revision\":")
        .expect("etcd's revision")
}

/// `--watch` on a three-member cluster whose member it talks to is killed: it moves on and
/// prints the next change.
#[test]
fn watch_survives_the_loss_of_its_member() {
    let mut s = Scene::cluster("leader-member", "leader-member", 3);
    let eps = s.etcd.endpoints().join(",");
    let w = Watcher::start(&eps, &s.lock, &s.log);
    assert_eq!(w.nth(1).1, nobody());
    let a = s.candidate_on(&eps, "a");
    s.spawn(a);
    s.mon.wait_for_start(Some("a"), T);
    assert_eq!(w.nth(2).1["leader"], "a");
    s.mark("member 0 killed");
    s.etcd.kill_member(0);
    s.spawn(s.candidate_on(&eps, "b"));
    wait_for(T, "b queued", || {
        let out = s
            .etcd
            .etcdctl(&["get", "--prefix", "--keys-only", &format!("{}/", s.lock)]);
        let keys = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        (keys == 2).then_some(())
    });
    s.cast.by_id("a").signal(libc::SIGTERM);
    s.mon.wait_for_start(Some("b"), T);
    assert_eq!(w.nth(3).1["leader"], "b");
    assert_eq!(w.lines().len(), 3, "{:?}", w.lines());
    w.stop();
}

trait OnCluster {
    fn candidate_on(&self, eps: &str, id: &str) -> CandidateBuilder;
}

impl OnCluster for Scene<common::etcd::Cluster> {
    fn candidate_on(&self, eps: &str, id: &str) -> CandidateBuilder {
        common::candidate::Candidate::new(id)
            .endpoints(eps)
            .lock(&self.lock)
            // Leases that outlast the loss of a member: the leader does not change by itself.
            .lease(10)
            .renew("8s")
            .retry(RETRY)
            .log(&self.log)
    }
}

/// Strangers on the lock are named by their value: `etcdctl lock` (an empty value) and `etcdctl
/// elect` (its proposal), with their key's revision; a Go replica holding the record, without a
/// revision (it was given none).
#[test]
fn leader_names_strangers_by_their_value() {
    let s = Scene::new("leader-strangers", "leader-strangers");
    let ep = s.etcd.endpoint();
    let mut lock = LockClient::start(&ep, &s.lock, "x", &s.log, &["--exit-after", "3000"]);
    s.mon.wait_for_start(Some("x"), T);
    let (code, l) = ask(&ep, &s.lock);
    assert_eq!(
        (code, &l["leader"], &l["address"]),
        (0, &Value::from(""), &Value::Null)
    );
    assert!(l["revision"].as_i64().is_some_and(|r| r > 0), "{l}");
    lock.expect_exit(T);
    let mut elect = Reaped(elect(&s.etcd, &s.lock, "the-proposal"));
    let elect = &mut elect.0;
    let l = wait_for(T, "etcdctl elect leading", || {
        let (code, l) = ask(&ep, &s.lock);
        (code == 0).then_some(l)
    });
    assert_eq!(l["leader"], "the-proposal", "{l}");
    assert!(l["revision"].as_i64().is_some_and(|r| r > 0), "{l}");
    // SIGTERM: it resigns (SIGKILL would leave its key for its session's 60 s).
    assert!(common::signal_pid(elect.id(), libc::SIGTERM));
    common::wait_child(elect, T).expect("etcdctl elect exits on SIGTERM");
    wait_for(T, "nobody", || (ask(&ep, &s.lock).0 == 3).then_some(()));
    let go = OldReplica::start(
        &ep,
        &s.lock,
        "go",
        3,
        Duration::from_millis(200),
        false,
        &s.log,
    );
    s.mon.wait_for_start(Some("go"), T);
    assert_eq!(ask(&ep, &s.lock), (0, line("go", None, None)));
    drop(go);
}

/// `etcdctl elect LOCK PROPOSAL`: campaigns, and leads until killed.
fn elect(etcd: &Etcd, lock: &str, proposal: &str) -> Child {
    let etcdctl = std::env::var("EAE_ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into());
    Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoint()))
        .args(["elect", lock, proposal])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run etcdctl elect")
}

/// Kills `etcdctl elect` if a test failed before it ended it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        common::kill_and_wait(&mut self.0);
    }
}

/// A forcer fencing a Go replica: while the fence stands the replica's command may run, and the
/// watcher names the replica; the forcer only once the replica's command has stopped.
#[test]
fn watch_names_a_fenced_holder_until_its_command_stopped() {
    let mut s = Scene::new("leader-fence", "leader-fence");
    let ep = s.etcd.endpoint();
    let go = OldReplica::start(
        &ep,
        &s.lock,
        "go",
        3,
        Duration::from_millis(200),
        false,
        &s.log,
    );
    let go_start = s.mon.wait_for_start(Some("go"), T);
    let w = Watcher::start(&ep, &s.lock, &s.log);
    assert_eq!(w.nth(1).1, line("go", None, None));
    s.mark("forcer starts");
    s.spawn(cand(&s, "f").force(true));
    let f_start = s.mon.wait_for_start(Some("f"), T);
    let (at, l, records) = w.nth(2);
    assert_eq!(l["leader"], "f", "{:?}", w.lines());
    let stop = s
        .mon
        .death_ns(go_start.pid)
        .or_else(|| record(&records, Kind::Stop, go_start.pid).map(|r| r.ns));
    assert!(
        stop.is_some_and(|ns| ns < at),
        "f printed before go's command stopped:\n{}",
        s.mon.timeline()
    );
    assert!(f_start.ns > stop.unwrap_or(u64::MAX));
    assert_eq!(w.lines().len(), 2, "{:?}", w.lines());
    drop(go);
    w.stop();
}

/// `/leader` on a candidate that waits: 307 to the leader's http address; `/` shows it as
/// `leader_address`; once the leader advertises a non-URL address, 200 with the line, also on a
/// candidate queued behind the new leader, which the hand-over did not wake to lead.
#[test]
fn status_leader_redirects_to_the_leader() {
    let mut s = Scene::new("leader-status", "leader-status");
    let (pa, pb, pc, pd) = (free_port(), free_port(), free_port(), free_port());
    let a = cand(&s, "a")
        .status_port(pa)
        .env("ETCD_AWAIT_ELECTION_ADVERTISE", "http://127.0.0.1:8080/a");
    s.spawn(a);
    s.mon.wait_for_start(Some("a"), T);
    let b = cand(&s, "b")
        .status_port(pb)
        .env("ETCD_AWAIT_ELECTION_ADVERTISE", "10.0.0.2:5432");
    s.spawn(b);
    wait_queued(&s.etcd, &s.lock, 2);
    s.spawn(cand(&s, "c").status_port(pc));
    wait_queued(&s.etcd, &s.lock, 3);
    s.spawn(cand(&s, "d").status_port(pd));
    wait_queued(&s.etcd, &s.lock, 4);
    let head = wait_for(T, "b's /leader naming a", || {
        let (head, _) = get(pb, "/leader")?;
        head.contains("http://127.0.0.1:8080/a").then_some(head)
    });
    assert!(head.starts_with("HTTP/1.1 307 "), "{head}");
    assert!(
        head.contains("\r\nLocation: http://127.0.0.1:8080/a\r\n"),
        "{head}"
    );
    let (_, body) = get(pb, "/").expect("b's /");
    assert!(
        body.contains(r#""leader_address":"http://127.0.0.1:8080/a""#),
        "{body}"
    );
    s.cast.by_id("a").signal(libc::SIGTERM);
    s.mon.wait_for_start(Some("b"), T);
    let (head, body) = wait_for(T, "b's /leader naming b", || {
        get(pb, "/leader").filter(|(_, body)| body.contains(r#""leader":"b""#))
    });
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let l: Value = serde_json::from_str(&body).expect("a JSON line");
    assert_eq!(l["address"], "10.0.0.2:5432");
    let (head, c_body) = wait_for(T, "c's /leader naming b", || {
        get(pc, "/leader").filter(|(_, body)| body.contains(r#""leader":"b""#))
    });
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(c_body, body);
    let (_, d_body) = wait_for(T, "d's /leader naming b", || {
        get(pd, "/leader").filter(|(_, body)| body.contains(r#""leader":"b""#))
    });
    assert_eq!(d_body, body);
}

/// `(head, body)` of `GET path` on the status port, without following a redirect.
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((head.to_string() + "\r\n", body.to_string()))
}

/// A network namespace of our own to move the virtual IP in (`unshare -n`, as root, else
/// `unshare -rn`), held by a process that sleeps in it; `Err(why)` where the machine allows none.
struct Netns {
    holder: Child,
    /// `nsenter` and its flags, to run a command in it.
    enter: Vec<String>,
}

impl Netns {
    fn new() -> Result<Netns, String> {
        let mut last = String::new();
        for flags in ["-n", "-rn"] {
            match Netns::try_with(flags) {
                Ok(ns) => return Ok(ns),
                Err(why) => last = format!("unshare {flags}: {why}"),
            }
        }
        Err(last)
    }

    fn try_with(flags: &str) -> Result<Netns, String> {
        let mut holder = Command::new("unshare")
            .args([
                flags,
                "sh",
                "-c",
                "ip link set lo up && echo ready && exec sleep 600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut ready = String::new();
        let out = holder.stdout.take().expect("stdout");
        let _ = BufReader::new(out).read_line(&mut ready);
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let pid = holder.id().to_string();
        // Never act on the host's own namespace: only once the holder is in a new one.
        if ready.trim() != "ready" || ns(&pid).is_none() || ns(&pid) == ns("self") {
            common::kill_and_wait(&mut holder);
            let mut err = String::new();
            if let Some(mut e) = holder.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("no namespace of its own ({})", err.trim()));
        }
        let mut enter = vec!["nsenter".to_string(), "-t".into(), pid, "-n".into()];
        if flags == "-rn" {
            enter.extend(["-U".into(), "--preserve-credentials".into()]);
        }
        Ok(Netns { holder, enter })
    }

    /// The addresses of `lo` in the namespace.
    fn addresses(&self) -> String {
        let out = Command::new(&self.enter[0])
            .args(&self.enter[1..])
            .args(["ip", "-o", "addr", "show", "dev", "lo"])
            .output()
            .expect("nsenter ip addr");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        common::kill_and_wait(&mut self.holder);
    }
}

/// `examples/leader-notify.sh` end to end: `--leader --watch` runs the notify script on every
/// change (MASTER, BACKUP, NONE, with leader, address and revision), and `examples/move-vip.sh`
/// moves a virtual IP in a network namespace of the test's own where the machine allows one
/// (else the test says so and checks the script's runs alone).
#[test]
fn leader_notify_example_moves_a_virtual_ip() {
    let mut s = Scene::new("leader-notify", "leader-notify");
    let dir = common::TempDir::new("leader-notify");
    let runs = dir.join("runs");
    let netns = Netns::new();
    let vip = "10.200.0.1";
    let moves = match &netns {
        Ok(ns) => format!(
            "VIP={vip}/32 DEV=lo {} sh {}/examples/move-vip.sh \"$@\"",
            ns.enter.join(" "),
            env!("CARGO_MANIFEST_DIR")
        ),
        Err(why) => {
            eprintln!("NO NETWORK NAMESPACE here ({why}): running leader-notify.sh without moving an address");
            "true".to_string()
        }
    };
    let notify = dir.join("notify");
    std::fs::write(
        &notify,
        format!("#!/bin/sh\necho \"$*\" >> {}\n{moves}\n", runs.display()),
    )
    .expect("write the notify script");
    std::fs::set_permissions(&notify, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the notify script");
    let bin_dir = Path::new(wrapper_bin())
        .parent()
        .expect("the wrapper's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut consumer = clean_command(&format!(
        "{}/examples/leader-notify.sh",
        env!("CARGO_MANIFEST_DIR")
    ));
    let consumer = consumer
        .arg(&notify)
        .env("PATH", path)
        .env("ETCD_AWAIT_ELECTION_IDENTITY", "a")
        .env("ETCD_AWAIT_ELECTION_LOCK_NAME", &s.lock)
        .env("ETCD_AWAIT_ELECTION_ENDPOINTS", s.etcd.endpoint())
        .env("ETCD_AWAIT_ELECTION_RETRY_PERIOD", RETRY)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("run leader-notify.sh");
    let group = Group(consumer);
    let ran = |n: usize| {
        wait_for(T, &format!("{n} runs of the notify script"), || {
            let text = std::fs::read_to_string(&runs).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            (lines.len() >= n).then_some(lines)
        })
    };
    assert_eq!(ran(1), ["NONE   "]);
    let has_vip = |ns: &Netns| ns.addresses().contains(&format!("inet {vip}/32"));
    s.spawn(
        cand(&s, "a")
            .env("ETCD_AWAIT_ELECTION_ADVERTISE", "10.0.0.1:5432")
            .args(&["--print-env"]),
    );
    s.mon.wait_for_start(Some("a"), T);
    let a_rev = revision_of(&mut s, "a");
    assert_eq!(ran(2)[1], format!("MASTER a 10.0.0.1:5432 {a_rev}"));
    if let Ok(ns) = &netns {
        wait_for(T, "the VIP on a", || has_vip(ns).then_some(()));
    }
    s.spawn(cand(&s, "b").args(&["--print-env"]));
    wait_queued(&s.etcd, &s.lock, 2);
    s.cast.by_id("a").signal(libc::SIGTERM);
    s.mon.wait_for_start(Some("b"), T);
    let b_rev = revision_of(&mut s, "b");
    assert_eq!(ran(3)[2], format!("BACKUP b  {b_rev}"));
    if let Ok(ns) = &netns {
        wait_for(T, "the VIP gone", || (!has_vip(ns)).then_some(()));
    }
    s.cast.by_id("b").signal(libc::SIGTERM);
    assert_eq!(ran(4)[3], "NONE   ");
    assert!(
        !Command::new("ip")
            .args(["-o", "addr"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(vip))
            .unwrap_or(false),
        "the VIP reached the host's own namespace"
    );
    drop(group);
    assert_eq!(ran(4).len(), 4);
}

/// The consumer's process group (the shell, `etcd-await-election --leader --watch`, a script
/// run): SIGTERM, then SIGKILL, on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        // SAFETY: kill(2) on the group this test created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        if common::wait_child(&mut self.0, Duration::from_secs(5)).is_none() {
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

/// Review of issue 21: `etcd-await-election --leader --watch | head -1` must end once `head`
/// has its line and closes the pipe, also while the leader does not change (a shell waits for
/// the whole pipeline).
#[test]
fn watch_ends_when_its_reader_closes_stdout() {
    let s = Scene::new("leader-epipe", "leader-epipe");
    let mut child = leader_cmd(&s.etcd.endpoint(), &s.lock, &["--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn --leader --watch");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("its first line");
    assert_eq!(serde_json::from_str::<Value>(&first).ok(), Some(nobody()));
    drop(out);
    let ended = common::wait_child(&mut child, T);
    common::kill_and_wait(&mut child);
    assert!(
        ended.is_some(),
        "--leader --watch still runs {T:?} after its reader closed the pipe"
    );
}
