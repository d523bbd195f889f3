//! Leadership follows health, and a candidate that must not wait: against a real etcd, with real
//! health checks (a shell command testing for a flag file the test creates and removes, or an
//! HTTP server in the test). A sick leader hands over to a healthy waiter with zero overlap (from
//! the children's own records) and rejoins once healthy; with nobody healthy waiting it leads on;
//! a sick waiter leaves the queue and never leads; a hanging check is killed with its group; a
//! candidate with `WAIT_TIMEOUT` gives up (exit 73) leaving nothing in etcd, or leads when the
//! lock is free; a candidate without health settings shows nothing new.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::candidate::{wrapper_bin, Candidate, CandidateBuilder};
use common::records::Kind;
use common::scene::Scene;
use common::{free_port, http, metric, wait_for, wait_until};

/// Deadline for things that should happen "soon".
const T: Duration = Duration::from_secs(20);
const TTL: u64 = 3;
const RENEW: &str = "2s";
const RETRY: &str = "200ms";
/// The exit code of a candidate that did not lead within `WAIT_TIMEOUT`.
const WAIT_TIMEOUT_CODE: i32 = 73;

const HEALTH_CMD: &str = "ETCD_AWAIT_ELECTION_HEALTH_CMD";
const HEALTH_URL: &str = "ETCD_AWAIT_ELECTION_HEALTH_URL";
const WAIT_TIMEOUT: &str = "ETCD_AWAIT_ELECTION_WAIT_TIMEOUT";

/// A candidate with a status port, whose health check is "the file `flag` does not exist",
/// checked every 500 ms, unhealthy after 2 failures, healthy again after 2 passes.
fn checked(s: &Scene, id: &str, check: &str) -> CandidateBuilder {
    s.candidate(id, TTL, RENEW, RETRY)
        .status_port(free_port())
        .env(HEALTH_CMD, check)
        .env("ETCD_AWAIT_ELECTION_HEALTH_INTERVAL", "500ms")
        .env("ETCD_AWAIT_ELECTION_HEALTH_TIMEOUT", "500ms")
        .env("ETCD_AWAIT_ELECTION_HEALTH_FALL", "2")
        .env("ETCD_AWAIT_ELECTION_HEALTH_RISE", "2")
}

fn flag_check(flag: &Path) -> String {
    format!("test ! -e '{}'", flag.display())
}

fn flag(s: &Scene, id: &str) -> PathBuf {
    s.log.with_file_name(format!("{id}.sick"))
}

fn sicken(flag: &Path) {
    std::fs::write(flag, b"").expect("create the flag file");
}

fn heal(flag: &Path) {
    std::fs::remove_file(flag).expect("remove the flag file");
}

/// The identities queued under the lock, in key order.
fn queue(s: &Scene) -> Vec<String> {
    s.etcd
        .get_prefix_keys(&format!("{}/", s.lock))
        .into_iter()
        .filter_map(|k| s.etcd.get(&k))
        .collect()
}

fn wait_queue(s: &Scene, want: &[&str]) {
    wait_until(T, &format!("the queue to be {want:?}"), || {
        let mut q = queue(s);
        q.sort();
        q == want
    });
}

fn status(c: &Candidate) -> String {
    http("GET", &c.status_url("/"), Duration::from_secs(5)).map_or_else(String::new, |r| r.1)
}

fn metrics(c: &Candidate) -> String {
    http("GET", &c.status_url("/metrics"), Duration::from_secs(5)).map_or_else(String::new, |r| r.1)
}

fn health_metric(c: &Candidate, name: &str) -> u64 {
    metric(&metrics(c), &format!("etcd_await_election_{name}")).unwrap_or(0)
}

fn wait_healthy(c: &Candidate, healthy: bool) {
    let want = format!("\"healthy\":{healthy}");
    wait_until(T, &format!("{} to report {want}", c.identity()), || {
        status(c).contains(&want)
    });
}

/// Waits until `c` has run `n` more health checks: a bound counted in checks, not in time.
fn wait_checks(c: &Candidate, n: u64) {
    let from = health_metric(c, "health_checks_total");
    wait_until(T, &format!("{n} more checks of {}", c.identity()), || {
        health_metric(c, "health_checks_total") >= from + n
    });
}

fn starts_of(s: &Scene, id: &str) -> usize {
    s.mon.starts().iter().filter(|r| r.identity == id).count()
}

fn record_of(s: &Scene, kind: Kind, pid: u32) -> u64 {
    s.mon
        .wait_for_record(&format!("{kind:?} of {pid}"), T, |r| {
            r.kind == kind && r.pid == pid
        })
        .ns
}

fn expect_code(c: &mut Candidate, code: i32) {
    let st = c.expect_exit(T);
    assert_eq!(
        st.code(),
        Some(code),
        "{} exited {st:?}:\n{}",
        c.identity(),
        c.stderr_text()
    );
}

#[test]
fn a_sick_leader_hands_over_to_a_healthy_waiter_and_rejoins_once_healthy() {
    let mut s = Scene::new("health", "handover");
    let (fa, fb) = (flag(&s, "a"), flag(&s, "b"));
    let a = s.spawn(checked(&s, "a", &flag_check(&fa)));
    let ra = s.mon.wait_for_start(Some("a"), T);
    let b = s.spawn(checked(&s, "b", &flag_check(&fb)));
    wait_queue(&s, &["a", "b"]);
    wait_healthy(&s.cast[b], true);

    s.mark("a turns sick");
    sicken(&fa);
    // Stopped as on SIGTERM: the child sees TERM and writes its stop.
    record_of(&s, Kind::Term, ra.pid);
    let stop_a = record_of(&s, Kind::Stop, ra.pid);
    let rb = s.mon.wait_for_start(Some("b"), T);
    assert!(rb.ns > stop_a, "b started before a's command stopped");
    s.mon.assert_no_overlap();
    // a's wrapper stays, out of the queue, and says it is sick.
    wait_queue(&s, &["b"]);
    assert!(
        s.cast[a].is_running(),
        "a's wrapper exited:\n{}",
        s.cast[a].stderr_text()
    );
    wait_healthy(&s.cast[a], false);
    assert!(health_metric(&s.cast[a], "health_transitions_total") >= 1);
    assert!(health_metric(&s.cast[a], "health_check_failures_total") >= 2);
    assert_eq!(health_metric(&s.cast[a], "healthy"), 0);

    s.mark("a heals");
    heal(&fa);
    wait_queue(&s, &["a", "b"]);
    wait_healthy(&s.cast[a], true);
    // Back in line behind b, which leads on.
    assert_eq!(s.mon.running_identities(), vec!["b".to_string()]);
    assert_eq!(starts_of(&s, "a"), 1);
    s.mon.assert_no_overlap();
}

#[test]
fn both_sick_the_leader_leads_on_and_a_sick_waiter_never_leads() {
    let mut s = Scene::new("health", "both-sick");
    let (fa, fb) = (flag(&s, "a"), flag(&s, "b"));
    let a = s.spawn(checked(&s, "a", &flag_check(&fa)));
    let ra = s.mon.wait_for_start(Some("a"), T);
    let b = s.spawn(checked(&s, "b", &flag_check(&fb)));
    wait_queue(&s, &["a", "b"]);

    s.mark("b turns sick: it leaves the queue");
    sicken(&fb);
    wait_queue(&s, &["a"]);
    assert!(s.cast[b].is_running());
    s.mark("a turns sick: nobody healthy waits, it leads on");
    sicken(&fa);
    wait_healthy(&s.cast[a], false);
    wait_checks(&s.cast[a], 4);
    assert_eq!(s.mon.running(), vec![("a".to_string(), ra.pid)]);
    let said = s.cast[a]
        .stderr_text()
        .matches("no other candidate waits")
        .count();
    assert_eq!(said, 1, "said once:\n{}", s.cast[a].stderr_text());

    s.mark("a's wrapper is stopped: b, sick, must not lead");
    assert!(s.cast[a].signal(libc::SIGTERM));
    expect_code(&mut s.cast[a], 143);
    wait_checks(&s.cast[b], 4);
    assert_eq!(starts_of(&s, "b"), 0, "b led while sick");

    s.mark("b heals: it joins and leads");
    heal(&fb);
    s.mon.wait_for_start(Some("b"), T);
    s.mon.assert_no_overlap();
}

#[test]
fn a_hanging_check_is_killed_with_its_group_and_fails() {
    // Unique to this run: the checks' grandchildren are counted by it. Dropped after the scene,
    // so after the wrapper that could start another.
    let nap = format!("987.{}", std::process::id());
    let naps = common::Leftovers(format!("sleep\0{nap}"));
    let mut s = Scene::new("health", "hanging");
    let fa = flag(&s, "a");
    let check = format!("if test -e '{}'; then sleep {nap}; fi", fa.display());
    let a = s.spawn(checked(&s, "a", &check).env("ETCD_AWAIT_ELECTION_HEALTH_TIMEOUT", "300ms"));
    let ra = s.mon.wait_for_start(Some("a"), T);
    wait_healthy(&s.cast[a], true);

    s.mark("a's check hangs");
    sicken(&fa);
    wait_healthy(&s.cast[a], false);
    let renewals = health_metric(&s.cast[a], "renewals_total");
    wait_checks(&s.cast[a], 5);
    // Each hanging check was killed, its grandchild `sleep` too, before the next one started.
    let alive = common::procfs::alive_with_cmdline(&naps.0);
    assert!(alive.len() <= 1, "hanging checks alive: {alive:?}");
    // Meanwhile the lease was renewed and the command ran on (nobody waits).
    assert!(health_metric(&s.cast[a], "renewals_total") > renewals);
    assert_eq!(s.mon.running(), vec![("a".to_string(), ra.pid)]);

    s.mark("b comes: a hands over");
    s.spawn(s.candidate("b", TTL, RENEW, RETRY));
    let stop_a = record_of(&s, Kind::Stop, ra.pid);
    let rb = s.mon.wait_for_start(Some("b"), T);
    assert!(rb.ns > stop_a);
    s.mon.assert_no_overlap();
    heal(&fa);
    wait_until(T, "no hanging check left", || {
        common::procfs::alive_with_cmdline(&naps.0).is_empty()
    });
}

/// A service's health endpoint: 200 while `up`, else 503.
fn serve(up: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 1024];
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.read(&mut buf);
            let line = if up.load(Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Sick"
            };
            let _ = write!(conn, "HTTP/1.1 {line}\r\nContent-Length: 0\r\n\r\n");
        }
    });
    port
}

#[test]
fn a_url_check_follows_the_service_answer() {
    let mut s = Scene::new("health", "url");
    let up = Arc::new(AtomicBool::new(true));
    let url = format!("http://127.0.0.1:{}/healthz", serve(up.clone()));
    let a = s.spawn(
        checked(&s, "a", "true")
            .env(HEALTH_CMD, "")
            .env(HEALTH_URL, &url),
    );
    let ra = s.mon.wait_for_start(Some("a"), T);
    wait_healthy(&s.cast[a], true);
    s.spawn(s.candidate("b", TTL, RENEW, RETRY));
    wait_queue(&s, &["a", "b"]);

    s.mark("the service answers 503");
    up.store(false, Ordering::SeqCst);
    let stop_a = record_of(&s, Kind::Stop, ra.pid);
    let rb = s.mon.wait_for_start(Some("b"), T);
    assert!(rb.ns > stop_a);
    wait_queue(&s, &["b"]);
    s.mon.assert_no_overlap();
    up.store(true, Ordering::SeqCst);
    wait_queue(&s, &["a", "b"]);
}

#[test]
fn try_lock_gives_up_when_the_lock_is_held() {
    let mut s = Scene::new("health", "try-held");
    s.spawn(s.candidate("a", TTL, RENEW, RETRY));
    s.mon.wait_for_start(Some("a"), T);
    wait_queue(&s, &["a"]);
    let leases = s.etcd.lease_count();

    s.mark("c tries once");
    let mut c = s
        .candidate("c", TTL, RENEW, RETRY)
        .env(WAIT_TIMEOUT, "0")
        .spawn();
    expect_code(&mut c, WAIT_TIMEOUT_CODE);
    s.mark("d waits 1.5 s");
    let t0 = Instant::now();
    let mut d = s
        .candidate("d", TTL, RENEW, RETRY)
        .env(WAIT_TIMEOUT, "1500ms")
        .spawn();
    wait_queue(&s, &["a", "d"]);
    expect_code(&mut d, WAIT_TIMEOUT_CODE);
    assert!(t0.elapsed() >= Duration::from_millis(1500));
    // Withdrawn, never started: nothing of theirs is left in etcd.
    assert_eq!(starts_of(&s, "c") + starts_of(&s, "d"), 0);
    assert_eq!(queue(&s), vec!["a".to_string()]);
    assert_eq!(s.etcd.lease_count(), leases);
}

#[test]
fn try_lock_leads_when_the_lock_is_free() {
    let s = Scene::new("health", "try-free");
    let mut c = s
        .candidate("c", TTL, RENEW, RETRY)
        .env(WAIT_TIMEOUT, "0")
        .args(&["--exit-after", "300", "--exit-code", "5"])
        .spawn();
    expect_code(&mut c, 5);
    assert_eq!(starts_of(&s, "c"), 1);
    assert!(queue(&s).is_empty());
    assert_eq!(s.etcd.lease_count(), 0);
}

#[test]
fn without_health_settings_nothing_new_shows() {
    let s = Scene::new("health", "none");
    let a = s
        .candidate("a", TTL, RENEW, RETRY)
        .status_port(free_port())
        .spawn();
    s.mon.wait_for_start(Some("a"), T);
    let body = wait_for(T, "a's status", || {
        Some(status(&a)).filter(|b| b.contains("running"))
    });
    assert!(!body.contains("healthy"), "{body}");
    let m = metrics(&a);
    assert!(
        !m.contains("election_health") && !m.contains("healthy"),
        "{m}"
    );
}

/// Each setting has its flag, and is checked before anything is asked of etcd (exit 78, naming
/// the variable).
#[test]
fn health_settings_are_checked_at_start_up() {
    let run = |args: &[&str]| {
        let out = common::clean_command(wrapper_bin())
            .args([
                "--lock-name",
                "l",
                "--identity",
                "i",
                "--endpoints",
                "127.0.0.1:1",
            ])
            .args(args)
            .arg("true")
            .output()
            .expect("run the wrapper");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--health-cmd", "true", "--health-fall", "0"]);
    assert_eq!(code, Some(78));
    assert!(err.contains("ETCD_AWAIT_ELECTION_HEALTH_FALL"), "{err}");
    let (code, err) = run(&["--health-url", "https://h/"]);
    assert_eq!(code, Some(78));
    assert!(err.contains("ETCD_AWAIT_ELECTION_HEALTH_URL"), "{err}");
    let (code, err) = run(&["--health-timeout", "1s"]);
    assert_eq!(code, Some(78));
    assert!(err.contains("ETCD_AWAIT_ELECTION_HEALTH_TIMEOUT"), "{err}");
    let (code, err) = run(&["--wait-timeout", "never"]);
    assert_eq!(code, Some(78));
    assert!(err.contains("ETCD_AWAIT_ELECTION_WAIT_TIMEOUT"), "{err}");
}

/// Trying once reads the lock before it puts a key: the job's own data under the prefix is no
/// candidate, and does not make the lock look taken.
#[test]
fn try_lock_leads_past_the_jobs_data_under_the_prefix() {
    let s = Scene::new("health", "try-free-data");
    s.etcd.put(&format!("{}/data/x", s.lock), "the job's");
    let mut c = s
        .candidate("c", TTL, RENEW, RETRY)
        .env(WAIT_TIMEOUT, "0")
        .args(&["--exit-after", "300", "--exit-code", "5"])
        .spawn();
    expect_code(&mut c, 5);
    assert_eq!(starts_of(&s, "c"), 1);
    assert_eq!(s.etcd.lease_count(), 0);
}

/// SIGTERM to a leader's wrapper, then the leader turns sick while its command still stops
/// (it takes 2 s after TERM) and a healthy candidate waits: the wrapper still exits with its
/// command's code once it stopped, rather than taking the stop for a hand-over for health and
/// standing aside (found by `make test`: the flapping forcer's wrapper never exited).
#[test]
fn sigterm_then_sickness_still_ends_the_wrapper() {
    let mut s = Scene::new("health", "term-then-sick");
    let (fa, fb) = (flag(&s, "a"), flag(&s, "b"));
    let a = s.spawn(checked(&s, "a", &flag_check(&fa)).args(&["--term-delay", "2000"]));
    let ra = s.mon.wait_for_start(Some("a"), T);
    let b = s.spawn(checked(&s, "b", &flag_check(&fb)));
    wait_queue(&s, &["a", "b"]);
    wait_healthy(&s.cast[b], true);
    s.mark("a gets SIGTERM, then turns sick");
    assert!(s.cast[a].signal(libc::SIGTERM));
    record_of(&s, Kind::Term, ra.pid);
    sicken(&fa);
    let status = s.cast[a].expect_exit(T);
    assert_eq!(status.code(), Some(143), "{}", s.cast[a].stderr_text());
    let stop_a = record_of(&s, Kind::Stop, ra.pid);
    let rb = s.mon.wait_for_start(Some("b"), T);
    assert!(rb.ns > stop_a, "b started before a's command stopped");
    s.mon.assert_no_overlap();
}
