//! A hostile review of issue 22 (leadership follows health; try-lock), against a real etcd with
//! real candidates: health checks that flap every interval while several candidates compete, a
//! try-once forcer, and what the try-lock leaves in etcd. Each test proves its point from the
//! children's own records and from etcd, not from log lines.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::candidate::CandidateBuilder;
use common::scene::Scene;
use common::{free_port, wait_until};

const T: Duration = Duration::from_secs(20);
const TTL: u64 = 3;
const RENEW: &str = "2s";
const RETRY: &str = "200ms";
const WAIT_TIMEOUT: &str = "ETCD_AWAIT_ELECTION_WAIT_TIMEOUT";

/// The identities queued under the lock.
fn queue(s: &Scene) -> Vec<String> {
    s.etcd
        .get_prefix_keys(&format!("{}/", s.lock))
        .into_iter()
        .filter_map(|k| s.etcd.get(&k))
        .collect()
}

/// A try-once forcer (`FORCE_ACQUIRE` with `WAIT_TIMEOUT=0`) would ask the leader to yield and
/// then withdraw, leaving the lock with nobody running: the combination is refused at start-up
/// (exit 78, naming both variables), before anything reaches etcd, and the leader runs on.
#[test]
fn a_try_once_forcer_does_not_stop_the_leader_and_walk_away() {
    let mut s = Scene::new("health-review", "try-once-forcer");
    let a = s.spawn(s.candidate("a", TTL, RENEW, RETRY));
    let ra = s.mon.wait_for_start(Some("a"), T);

    s.mark("c forces, trying once");
    let mut c = s
        .candidate("c", TTL, RENEW, RETRY)
        .force(true)
        .env(WAIT_TIMEOUT, "0")
        .spawn();
    let st = c.expect_exit(T);
    let err = c.stderr_text();
    assert_eq!(st.code(), Some(78), "{err}");
    assert!(
        err.contains(WAIT_TIMEOUT) && err.contains("ETCD_AWAIT_ELECTION_FORCE_ACQUIRE"),
        "the refusal must name both variables:\n{err}"
    );
    assert!(
        s.mon.starts().iter().all(|r| r.identity != "c"),
        "c started its command"
    );
    // Nothing of c's in etcd (its key, its yield request, its lease), and a runs on.
    assert_eq!(queue(&s), vec!["a".to_string()]);
    assert_eq!(s.etcd.lease_count(), 1, "a lease besides a's");
    assert_eq!(
        s.mon.running(),
        vec![("a".to_string(), ra.pid)],
        "a was stopped:\n{}",
        s.cast[a].stderr_text()
    );
}

/// FALL=RISE=1, a check that flips on every run, three candidates: whatever the hand-overs, no
/// two commands ever run at once, and nothing is left in etcd once all are stopped.
#[test]
fn flapping_checks_never_run_two_commands_at_once() {
    flap("flap", &[]);
}

/// As above, with commands that ignore SIGTERM: each hand-over ends in SIGKILL at the kill
/// deadline, and the next command still starts only after.
#[test]
fn flapping_checks_with_commands_ignoring_sigterm_never_overlap() {
    flap("flap-ignore-term", &["--ignore-term"]);
}

/// A check that passes and fails in turn, counting its runs in `count`; with `sick`, it fails
/// while that file exists.
fn alternating(count: &Path, sick: Option<&Path>) -> String {
    let sick = sick.map_or_else(String::new, |p| {
        format!("test ! -e '{}' || exit 1; ", p.display())
    });
    format!(
        "{sick}f='{}'; n=$(cat \"$f\" 2>/dev/null || echo 0); echo $((n+1)) > \"$f\"; \
         test $((n % 2)) -eq 0",
        count.display()
    )
}

/// A candidate whose every check decides (FALL=RISE=1).
fn flapper(s: &Scene, id: &str, check: &str, interval: &str, timeout: &str) -> CandidateBuilder {
    s.candidate(id, TTL, RENEW, RETRY)
        .env("ETCD_AWAIT_ELECTION_HEALTH_CMD", check)
        .env("ETCD_AWAIT_ELECTION_HEALTH_INTERVAL", interval)
        .env("ETCD_AWAIT_ELECTION_HEALTH_TIMEOUT", timeout)
        .env("ETCD_AWAIT_ELECTION_HEALTH_FALL", "1")
        .env("ETCD_AWAIT_ELECTION_HEALTH_RISE", "1")
}

fn flap(lock: &str, args: &[&str]) {
    let mut s = Scene::new("health-review", lock);
    let dir = s.log.parent().expect("the scene's dir").to_path_buf();
    for id in ["a", "b", "c"] {
        // Passes and fails in turn, each candidate from its own counter.
        let check = alternating(&dir.join(format!("{id}.n")), None);
        s.spawn(
            flapper(&s, id, &check, "150ms", "100ms")
                .args(args)
                .status_port(free_port()),
        );
    }
    s.mark("flapping");
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        s.mon.assert_no_overlap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let starts = s.mon.starts().len();
    assert!(
        starts >= 3,
        "only {starts} starts: the flaps handed nothing over"
    );
    s.mark("all stopped");
    for c in s.cast.iter_mut() {
        assert!(c.signal(libc::SIGTERM), "{} is gone", c.identity());
    }
    if args.contains(&"--ignore-term") {
        // A wrapper waits for a command that ignores the SIGTERM it forwarded, as an init does
        // (README): the operator kills what still runs, a command started by a hand-over that
        // was under way included.
        wait_until(T, "every wrapper gone", || {
            common::candidate::kill_logged_test_children(&s.log, None);
            s.cast.iter_mut().all(|c| !c.is_running())
        });
    }
    for c in s.cast.iter_mut() {
        let st = c.expect_exit(T);
        assert!(st.code().is_some(), "{} died by a signal", c.identity());
    }
    s.mon.assert_no_overlap();
    wait_until(T, "nothing left in etcd", || {
        queue(&s).is_empty() && s.etcd.lease_count() == 0
    });
}

/// A check still running when the wrapper exits (SIGTERM while out of the queue: exit 0) goes
/// with it: the wrapper leaves no process of its own behind.
#[test]
fn a_hanging_check_does_not_outlive_the_wrapper() {
    hanging_check("check-outlives", libc::SIGTERM);
}

/// As above, the wrapper killed (SIGKILL): it can do nothing, and its check still goes with it.
#[test]
fn a_hanging_check_dies_with_a_killed_wrapper() {
    hanging_check("check-outlives-kill", libc::SIGKILL);
}

fn hanging_check(lock: &str, sig: i32) {
    use std::os::unix::process::ExitStatusExt;
    let nap = format!("4242.{}{sig}", std::process::id());
    let naps = common::Leftovers(format!("sleep\0{nap}"));
    let s = Scene::new("health-review", lock);
    let mut a = s
        .candidate("a", TTL, RENEW, RETRY)
        .env("ETCD_AWAIT_ELECTION_HEALTH_CMD", &format!("sleep {nap}"))
        .env("ETCD_AWAIT_ELECTION_HEALTH_INTERVAL", "60s")
        .env("ETCD_AWAIT_ELECTION_HEALTH_TIMEOUT", "60s")
        .spawn();
    wait_until(T, "the first check to run", || {
        !common::procfs::alive_with_cmdline(&naps.0).is_empty()
    });
    assert!(a.signal(sig));
    let st = a.expect_exit(T);
    if sig == libc::SIGKILL {
        assert_eq!(st.signal(), Some(sig), "{}", a.stderr_text());
    } else {
        assert_eq!(st.code(), Some(0), "{}", a.stderr_text());
    }
    let until = Instant::now() + Duration::from_secs(10);
    while !common::procfs::alive_with_cmdline(&naps.0).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = common::procfs::alive_with_cmdline(&naps.0);
    assert!(
        left.is_empty(),
        "the wrapper exited 10 s ago; its health check {left:?} still runs"
    );
}

/// Try once (`WAIT_TIMEOUT=0`) with etcd unreachable: the try fails, so the candidate gives up
/// as it does with `WAIT_TIMEOUT=1ms`, instead of retrying for ever.
#[test]
fn try_once_with_etcd_unreachable_gives_up() {
    let s = Scene::new("health-review", "try-once-down");
    // A port reserved for this test, on which nothing listens.
    let dead = format!("127.0.0.1:{}", free_port());
    let mut c = s
        .candidate("c", TTL, RENEW, RETRY)
        .endpoints(&dead)
        .env(WAIT_TIMEOUT, "0")
        .spawn();
    let st = c.wait_timeout(Duration::from_secs(30));
    assert!(
        st.is_some(),
        "WAIT_TIMEOUT=0 still waiting after 30 s:\n{}",
        c.stderr_text()
    );
    assert_eq!(st.and_then(|s| s.code()), Some(73), "{}", c.stderr_text());
}

fn health_checks(c: &common::candidate::Candidate) -> u64 {
    common::http("GET", &c.status_url("/metrics"), Duration::from_secs(5))
        .and_then(|r| common::metric(&r.1, "etcd_await_election_health_checks_total"))
        .unwrap_or(0)
}

/// A sick leader with nobody waiting leads on (README). A try-once candidate (`WAIT_TIMEOUT=0`)
/// that passes by is not somebody waiting: it must not make the leader stop its command and
/// stand aside, only to withdraw itself a moment later and leave nobody running.
#[test]
fn a_try_once_candidate_does_not_unseat_a_sick_leader() {
    let mut s = Scene::new("health-review", "try-once-sick-leader");
    let sick = s.log.with_file_name("a.sick");
    // A roomy lease: what is checked is that nobody unseats a, and a renewal lost to a loaded
    // machine at TTL 3 (two attempts of 500 ms) would (seen in `make test` at a load of 10).
    let a = s.spawn(
        s.candidate("a", 10, "6s", RETRY)
            .status_port(free_port())
            .env(
                "ETCD_AWAIT_ELECTION_HEALTH_CMD",
                &format!("test ! -e '{}'", sick.display()),
            )
            .env("ETCD_AWAIT_ELECTION_HEALTH_INTERVAL", "300ms")
            .env("ETCD_AWAIT_ELECTION_HEALTH_TIMEOUT", "250ms")
            .env("ETCD_AWAIT_ELECTION_HEALTH_FALL", "1"),
    );
    let ra = s.mon.wait_for_start(Some("a"), T);
    s.mark("a turns sick, nobody waits: it leads on");
    std::fs::write(&sick, b"").expect("create the flag file");
    wait_until(T, "a to report \"healthy\":false", || {
        common::http("GET", &s.cast[a].status_url("/"), Duration::from_secs(5))
            .is_some_and(|r| r.1.contains("\"healthy\":false"))
    });

    s.mark("c tries once");
    let mut c = s
        .candidate("c", TTL, RENEW, RETRY)
        .env(WAIT_TIMEOUT, "0")
        .spawn();
    let st = c.expect_exit(T);
    assert_eq!(st.code(), Some(73), "{}", c.stderr_text());
    // Some checks later, a's command still runs: nobody else could have taken over.
    let from = health_checks(&s.cast[a]);
    wait_until(T, "4 more checks of a", || {
        health_checks(&s.cast[a]) >= from + 4
    });
    assert_eq!(
        s.mon.running(),
        vec![("a".to_string(), ra.pid)],
        "a try-once candidate made the sick leader stop, then withdrew: nobody runs"
    );
}

/// FALL=RISE=1 flapping checks, a forcer among them: each time the forcer rejoins it asks the
/// holder to yield. Whatever exits, no two commands ever run at once.
#[test]
fn a_flapping_forcer_never_runs_beside_another_command() {
    let mut s = Scene::new("health-review", "flap-forcer");
    let dir = s.log.parent().expect("the scene's dir").to_path_buf();
    for id in ["a", "b", "c"] {
        let check = alternating(&dir.join(format!("{id}.n")), None);
        s.spawn(
            flapper(&s, id, &check, "200ms", "150ms")
                .force(id == "a")
                .args(&["--term-delay", "100"]),
        );
    }
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        s.mon.assert_no_overlap();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s.mon.starts().len() >= 2, "nothing was handed over");
    for c in s.cast.iter_mut() {
        c.signal(libc::SIGTERM);
    }
    for c in s.cast.iter_mut() {
        c.expect_exit(T);
    }
    s.mon.assert_no_overlap();
}

/// A candidate whose check flips on every run (FALL=RISE=1) behind a leader: it is asked to
/// resign while it may still be joining. Once it stays sick, none of its keys may be left in
/// the queue ("a waiting candidate that turns unhealthy leaves the queue (its key goes)"), and
/// the next healthy candidate leads when the leader stops.
#[test]
fn a_flapping_waiter_leaves_no_key_behind() {
    let mut s = Scene::new("health-review", "flap-waiter");
    let x = s.spawn(s.candidate("x", TTL, RENEW, RETRY));
    s.mon.wait_for_start(Some("x"), T);
    let dir = s.log.parent().expect("the scene's dir").to_path_buf();
    let (count, sick) = (dir.join("c.n"), dir.join("c.sick"));
    let check = alternating(&count, Some(&sick));
    let c = s.spawn(flapper(&s, "c", &check, "150ms", "100ms").status_port(free_port()));
    s.mark("c flaps behind x");
    wait_until(T, "60 checks of c", || health_checks(&s.cast[c]) >= 60);
    s.mark("c stays sick");
    std::fs::write(&sick, b"").expect("create the flag file");
    wait_until(T, "c's keys to go", || {
        !queue(&s).contains(&"c".to_string())
    });
    s.mark("b waits; x stops");
    s.spawn(s.candidate("b", TTL, RENEW, RETRY));
    wait_until(T, "b in the queue", || queue(&s).contains(&"b".to_string()));
    assert!(s.cast[x].signal(libc::SIGTERM));
    s.mon.wait_for_start(Some("b"), T);
    s.mon.assert_no_overlap();
}

/// Candidates whose checks flip on every run (FALL=RISE=1, every 150 ms), each healthy half the
/// time, and one without a check: when the leader stops, one of them leads. A life cut short
/// while joining must not leave a key that its own later lives keep alive at the head of the
/// queue, so that nobody leads.
#[test]
fn flapping_waiters_do_not_wedge_the_lock() {
    let mut s = Scene::new("health-review", "flap-wedge");
    let x = s.spawn(s.candidate("x", TTL, RENEW, RETRY));
    s.mon.wait_for_start(Some("x"), T);
    let dir = s.log.parent().expect("the scene's dir").to_path_buf();
    let mut flappers = Vec::new();
    for id in ["c", "d"] {
        let check = alternating(&dir.join(format!("{id}.n")), None);
        let flapper = flapper(&s, id, &check, "150ms", "100ms").status_port(free_port());
        flappers.push(s.spawn(flapper));
    }
    s.mark("c and d flap behind x");
    for &i in &flappers {
        wait_until(T, "40 checks", || health_checks(&s.cast[i]) >= 40);
    }
    s.spawn(s.candidate("b", TTL, RENEW, RETRY));
    wait_until(T, "b in the queue", || queue(&s).contains(&"b".to_string()));
    s.mark("x stops");
    assert!(s.cast[x].signal(libc::SIGTERM));
    s.cast[x].expect_exit(T);
    s.mon.wait_for_record("a start after x's", T, |r| {
        r.kind == common::records::Kind::Start && r.identity != "x"
    });
    s.mon.assert_no_overlap();
}
