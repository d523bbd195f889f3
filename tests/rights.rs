//! The smallest grant, with etcd authentication on: readwrite on the range `[LOCK, LOCK\x01)`
//! (the holder record and the yield request) and on the prefix `LOCK/` (the candidates' keys),
//! as the README states it. With it, everything works: election, hand-over, force acquire and
//! yield, restart adoption, and fencing a Go replica, without a single request refused. With any
//! piece of it missing, the candidate ends at start-up with 77 naming the right refused, before
//! it ever joins, and its command never starts. Proving the rights changes nothing in etcd and
//! disturbs no leader. An observer with the README's read-only grant reads who leads
//! (`--leader`).

mod common;

use common::candidate::{Candidate, CandidateBuilder};
use common::etcd::{assert_success, json_uint, Etcd};
use common::invariant::Monitor;
use common::old_replica::OldReplica;
use common::TempDir;
use std::path::Path;
use std::time::Duration;

/// Deadline for things that should happen "soon" (a start, a hand-over, an exit).
const T: Duration = Duration::from_secs(30);
/// The start-up grace (`failure::grace`) and what a permanent failure may take beyond it.
const GRACE: Duration = Duration::from_secs(5);
const EXIT_SLACK: Duration = Duration::from_secs(10);

const USERNAME: &str = "ETCD_AWAIT_ELECTION_USERNAME";
const PASSWORD: &str = "ETCD_AWAIT_ELECTION_PASSWORD";
const ROOT: &str = "root:root-pw-0000";
const SECRET: &str = "s3cr3t-Pa55-7e1d9";
/// Exit codes of the wrapper (src/exit.rs).
const REFUSED: i32 = 77;
const TWIN: i32 = 76;

/// One `etcdctl role grant-permission ROLE ...` line, after the role.
type Grant = Vec<String>;

/// `[LOCK, LOCK\x01)`: the record and the yield request (`"$(printf 'LOCK\001')"` in a shell).
fn record_range(lock: &str, perm: &str) -> Grant {
    vec![perm.into(), lock.into(), format!("{lock}\u{1}")]
}

/// The prefix `LOCK/`: the candidates' keys.
fn prefix(lock: &str, perm: &str) -> Grant {
    vec![perm.into(), "--prefix=true".into(), format!("{lock}/")]
}

/// The README's grant for a candidate.
fn smallest(lock: &str) -> Vec<Grant> {
    vec![record_range(lock, "readwrite"), prefix(lock, "readwrite")]
}

/// etcd with authentication on: `root`, and for each entry a user of that name (password
/// [`SECRET`]) whose role holds exactly those grants.
fn auth_etcd(users: &[(&str, Vec<Grant>)]) -> Etcd {
    let etcd = Etcd::start();
    let ok = |args: &[&str]| assert_success(&etcd.etcdctl(args), &format!("etcdctl {args:?}"));
    ok(&["user", "add", ROOT, "--interactive=false"]);
    ok(&["role", "add", "root"]);
    ok(&["user", "grant-role", "root", "root"]);
    for (user, grants) in users {
        let role = format!("{user}-role");
        ok(&["role", "add", &role]);
        for grant in grants {
            let mut args = vec!["role", "grant-permission", &role];
            args.extend(grant.iter().map(String::as_str));
            ok(&args);
        }
        let pw = format!("{user}:{SECRET}");
        ok(&["user", "add", &pw, "--interactive=false"]);
        ok(&["user", "grant-role", user, &role]);
    }
    ok(&["auth", "enable"]);
    etcd
}

fn candidate(etcd: &Etcd, id: &str, user: &str, lock: &str, log: &Path) -> CandidateBuilder {
    Candidate::new(id)
        .lock(lock)
        .endpoints(&etcd.endpoint())
        .lease(3)
        .renew("2s")
        .retry("300ms")
        .log(log)
        .env(USERNAME, user)
        .env(PASSWORD, SECRET)
}

/// Keys under `LOCK/`, read as root.
fn queue(etcd: &Etcd, lock: &str) -> Vec<String> {
    let prefix = format!("{lock}/");
    let out = etcd.etcdctl(&["--user", ROOT, "get", "--prefix", "--keys-only", &prefix]);
    assert_success(&out, "etcdctl get --prefix");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// etcd's current revision, read as root.
fn revision(etcd: &Etcd) -> u64 {
    let out = etcd.etcdctl(&["--user", ROOT, "get", "-w", "json", "any"]);
    assert_success(&out, "etcdctl get -w json");
    json_uint(&String::from_utf8_lossy(&out.stdout), "\"revision\":").expect("a revision")
}

/// Live leases, listed as root.
fn leases(etcd: &Etcd) -> String {
    let out = etcd.etcdctl(&["--user", ROOT, "lease", "list"]);
    assert_success(&out, "etcdctl lease list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Nothing the candidates asked was refused: no request, no watch.
fn assert_nothing_refused(cands: &[&Candidate]) {
    for c in cands {
        let stderr = c.stderr_text();
        assert!(
            !stderr.contains("permission denied"),
            "{} was refused a request:\n{stderr}",
            c.identity()
        );
    }
}

/// With the smallest grant: a leads, b queues; c forces (a yields, b goes back in line behind
/// c); c resigns and hands over to b; b, SIGKILLed and restarted, adopts its own key and leads
/// again. Never two commands at once, and etcd refuses nothing (with the old single watch over
/// `[LOCK, LOCK0)`, every leader's watch was refused).
#[test]
fn the_smallest_grant_elects_hands_over_forces_and_adopts() {
    const LOCK: &str = "rights-ok";
    let observer = vec![record_range(LOCK, "read"), prefix(LOCK, "read")];
    let etcd = auth_etcd(&[("elector", smallest(LOCK)), ("observer", observer)]);
    let dir = TempDir::new("rights-ok");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    // Each advertises an address: taken, handed over and adopted with the record.
    let cand = |id: &str| {
        candidate(&etcd, id, "elector", LOCK, &log).env(
            "ETCD_AWAIT_ELECTION_ADVERTISE",
            &format!("{id}.example:5432"),
        )
    };

    let mut a = cand("a").spawn();
    let ra = mon.wait_for_start(Some("a"), T);
    let mut b = cand("b").spawn();
    common::wait_until(T, "b to queue", || queue(&etcd, LOCK).len() == 2);

    let mut c = cand("c").force(true).spawn();
    let rc = mon.wait_for_start(Some("c"), T);
    assert!(mon.wait_until_dead(ra.pid, T) < rc.ns, "{}", mon.timeline());
    a.expect_exit(T);
    mon.assert_no_overlap();

    assert!(c.signal(libc::SIGTERM));
    let rb = mon.wait_for_start_after(Some("b"), rc.ns, T);
    assert_eq!(c.expect_exit(T).code(), Some(143), "{}", c.stderr_text());
    let held = queue(&etcd, LOCK);
    assert_eq!(held.len(), 1, "b's key alone: {held:?}");

    b.kill9();
    let b2 = cand("b").spawn();
    mon.wait_for_start_after(Some("b"), rb.ns, T);
    assert_eq!(
        queue(&etcd, LOCK),
        held,
        "the restarted b adopts its own key"
    );
    mon.assert_no_overlap();
    assert_nothing_refused(&[&a, &b, &c, &b2]);
    let mut ask = common::clean_command(common::candidate::wrapper_bin());
    ask.env("ETCD_AWAIT_ELECTION_LOCK_NAME", LOCK)
        .env("ETCD_AWAIT_ELECTION_ENDPOINTS", etcd.endpoint())
        .env(USERNAME, "observer")
        .env(PASSWORD, SECRET)
        .arg("--leader");
    let r = common::run(ask, T);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(
        r.stdout
            .starts_with(r#"{"leader":"b","address":"b.example:5432","revision":"#),
        "{}",
        r.stdout
    );
}

/// With the smallest grant, a forcer fences a Go replica (which holds the record `LOCK` with
/// the Go tool's own grant, readwrite on that key): the replica's lease is revoked (write on
/// `LOCK`, the one key bound to it), ours leads once the replica's command is gone.
#[test]
fn the_smallest_grant_fences_a_go_replica() {
    const LOCK: &str = "rights-fence";
    let go_grant = vec![vec!["readwrite".to_string(), LOCK.to_string()]];
    let etcd = auth_etcd(&[("elector", smallest(LOCK)), ("go", go_grant)]);
    let dir = TempDir::new("rights-fence");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let old = OldReplica::start_as(&etcd.endpoint(), LOCK, "old-0", 3, ("go", SECRET), &log);
    old.wait_acquired(T);
    let ro = mon.wait_for_start(Some("old-0"), T);

    let ours = candidate(&etcd, "new-0", "elector", LOCK, &log)
        .force(true)
        .spawn();
    let st = old.wait_done(T);
    assert!(st.error.is_none(), "{st:#?}");
    let rn = mon.wait_for_start(Some("new-0"), T);
    let old_end = mon.wait_until_dead(ro.pid, T);
    assert!(old_end < rn.ns, "{}", mon.timeline());
    mon.assert_no_overlap();
    assert_nothing_refused(&[&ours]);
}

/// Each piece of the smallest grant missing, one candidate (and user, and lock) each, among
/// them the issue's case, the grant of `etcdctl lock` (the prefix alone): each ends at start-up
/// with 77, one error line naming USERNAME/LOCK_NAME, the user, and the right refused; its
/// command never starts (its record file is never created), and nothing is left in etcd: no
/// lease, no revision.
#[test]
fn each_missing_piece_of_the_grant_ends_the_candidate_at_start_up() {
    let cases: [(&str, &str, Vec<Grant>, String); 5] = [
        (
            "prefix-only",
            "miss-record",
            vec![prefix("miss-record", "readwrite")],
            r#"may not read the range ["miss-record", "miss-record\u{1}")"#.into(),
        ),
        (
            "record-only",
            "miss-prefix",
            vec![record_range("miss-prefix", "readwrite")],
            r#"may not read the range ["miss-prefix/", "miss-prefix0")"#.into(),
        ),
        (
            "record-read",
            "miss-record-w",
            vec![
                record_range("miss-record-w", "read"),
                prefix("miss-record-w", "readwrite"),
            ],
            r#"may not write the key "miss-record-w" (the holder record)"#.into(),
        ),
        (
            "yield-read",
            "miss-yield",
            vec![
                record_range("miss-yield", "read"),
                vec!["readwrite".into(), "miss-yield".into()],
                prefix("miss-yield", "readwrite"),
            ],
            r#"may not write the key "miss-yield\u{0}yield" (the yield request)"#.into(),
        ),
        (
            "prefix-read",
            "miss-prefix-w",
            vec![
                record_range("miss-prefix-w", "readwrite"),
                prefix("miss-prefix-w", "read"),
            ],
            r#"may not write the range ["miss-prefix-w/", "miss-prefix-w0")"#.into(),
        ),
    ];
    let users: Vec<(&str, Vec<Grant>)> = cases
        .iter()
        .map(|(user, _, grants, _)| (*user, grants.clone()))
        .collect();
    let etcd = auth_etcd(&users);
    let dir = TempDir::new("rights-missing");
    let before = revision(&etcd);
    let mut cands: Vec<_> = cases
        .iter()
        .map(|(user, lock, _, _)| {
            let log = dir.join(&format!("{user}.log"));
            let c = candidate(&etcd, user, user, lock, &log).spawn();
            (c, log)
        })
        .collect();
    for ((c, log), (user, _, _, refused)) in cands.iter_mut().zip(&cases) {
        let code = c.expect_exit(GRACE + EXIT_SLACK).code();
        let stderr = c.stderr_text();
        assert_eq!(code, Some(REFUSED), "{user}:\n{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{user}:\n{stderr}");
        let line = errors[0];
        eprintln!("{user}: {line}");
        assert!(
            line.contains("ERROR ETCD_AWAIT_ELECTION_USERNAME/ETCD_AWAIT_ELECTION_LOCK_NAME: ")
                && line.contains(&format!("user {user:?} {refused}"))
                && line.contains("giving up at start-up"),
            "{user}: the error must name the variables, the user and {refused:?}:\n{line}"
        );
        assert!(!log.exists(), "{user}'s command started");
    }
    assert_eq!(revision(&etcd), before, "the candidates changed etcd");
    let leases = leases(&etcd);
    assert!(leases.contains("found 0 leases"), "{leases}");
}

/// Proving the rights writes nothing and wakes no leader: a twin of the leader (same identity)
/// proves its rights, finds the leader renewing, and exits 76 before it writes anything; etcd's
/// revision is what it was, and the leader's command runs on, never restarted.
#[test]
fn proving_the_rights_changes_nothing_and_disturbs_no_leader() {
    const LOCK: &str = "rights-quiet";
    let etcd = auth_etcd(&[("elector", smallest(LOCK))]);
    let dir = TempDir::new("rights-quiet");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut a = candidate(&etcd, "a", "elector", LOCK, &log).spawn();
    let ra = mon.wait_for_start(Some("a"), T);
    let before = revision(&etcd);
    let mut twin = candidate(&etcd, "a", "elector", LOCK, &log).spawn();
    assert_eq!(
        twin.expect_exit(T).code(),
        Some(TWIN),
        "{}",
        twin.stderr_text()
    );
    assert_eq!(revision(&etcd), before, "the twin changed etcd");
    assert_eq!(mon.starts().len(), 1, "{}", mon.timeline());
    assert!(mon.running().iter().any(|(_, pid)| *pid == ra.pid) && a.is_running());
    assert_nothing_refused(&[&a, &twin]);
}
