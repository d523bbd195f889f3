//! The smallest grant, with etcd authentication on: readwrite on the range `[LOCK, LOCK\x01)`
//! (the holder record and the yield request) and on the prefix `LOCK/` (the candidates' keys),
//! as the README states it. With it, everything works: election, hand-over, force acquire and
//! yield, restart adoption, and fencing a Go replica, without a single request refused. With any
//! piece of it missing, the candidate ends at start-up with 77 naming the right refused, before
//! it ever joins, and its command never starts. Proving the rights changes nothing in etcd and
//! disturbs no leader. An observer with the README's read-only grant reads who leads
//! (`--leader`).

mod common;
#[path = "common/pki.rs"]
mod pki;

use common::candidate::{Candidate, CandidateBuilder};
use common::etcd::{assert_success, json_uint, Etcd, EtcdBuilder};
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
    auth_etcd_with(Etcd::builder(), users)
}

fn auth_etcd_with(builder: EtcdBuilder, users: &[(&str, Vec<Grant>)]) -> Etcd {
    let etcd = builder.start();
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

/// The lines of the README's `sh` block after `heading`, but its first (which a user edits to set
/// `LOCK`, `ROLE` and `ETCD_USER`): the lines a user pastes, literally.
fn readme_grant(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = &readme[readme.find(heading).expect(heading)..];
    let block = &section[section.find("```sh\n").expect("an sh block") + "```sh\n".len()..];
    let block = &block[..block.find("```").expect("the block's end")];
    block.lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// Pastes `lines` into `shell` as root, with `LOCK`, `ROLE` and `ETCD_USER` set, and the
/// fixture's `etcdctl` (`EAE_ETCDCTL_BIN`, as `tests/common/etcd.rs` picks it) as `etcdctl`.
fn paste(etcd: &Etcd, shell: &str, lines: &str, lock: &str, role: &str, user: &str) -> String {
    let ctl = std::env::var("EAE_ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into());
    let mut cmd = common::clean_command(shell);
    cmd.arg("-c")
        .arg(format!(
            "etcdctl() {{ command \"$EAE_CTL\" \"$@\"; }}\n{lines}"
        ))
        .env("EAE_CTL", ctl)
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", etcd.endpoint())
        .env("ETCDCTL_USER", ROOT)
        .env("ETCDCTL_COMMAND_TIMEOUT", "30s")
        .env("LOCK", lock)
        .env("ROLE", role)
        .env("ETCD_USER", user);
    let run = common::run(cmd, T);
    format!("{}{}", run.stdout, run.stderr)
}

/// The README's grant lines, pasted literally into `sh` and `bash` for lock names the
/// configuration accepts (spaces, quotes, `%`, a backslash, unicode, a leading `/`, a leading
/// `-`): each candidate, with that grant alone, leads. A name the shell lines do not pass to
/// etcdctl as it is (`-x` read as an option) leaves the user without the grant, and the
/// candidate ends with 77.
#[test]
fn the_readmes_grant_pasted_into_a_shell_lets_a_candidate_lead() {
    let names = [
        "my job",
        "it's \"quoted\"",
        "50%s%d",
        "back\\slash",
        "ünïcødé-ジョブ",
        "/abs/app",
        "-leading-dash",
    ];
    let users: Vec<String> = (0..names.len()).map(|i| format!("u{i}")).collect();
    let observers: Vec<String> = (0..names.len()).map(|i| format!("o{i}")).collect();
    let etcd = auth_etcd(
        &users
            .iter()
            .chain(&observers)
            .map(|u| (u.as_str(), vec![]))
            .collect::<Vec<_>>(),
    );
    let candidate_lines = readme_grant("### The grant a candidate needs");
    let observer_lines = readme_grant("An observer that only reads who leads");
    let dir = TempDir::new("rights-readme");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut cands = Vec::new();
    for (i, (lock, user)) in names.iter().zip(&users).enumerate() {
        let shell = ["sh", "bash"][i % 2];
        let out = paste(&etcd, shell, &candidate_lines, lock, &format!("r{i}"), user);
        let id = format!("c{i}");
        cands.push((
            candidate(&etcd, &id, user, lock, &log).spawn(),
            id,
            *lock,
            out,
        ));
    }
    for (c, id, lock, out) in &mut cands {
        let started = common::wait_for(T, &format!("{id} to start or exit"), || {
            if mon.starts().iter().any(|r| r.identity == *id) {
                Some(true)
            } else {
                c.wait_timeout(Duration::from_millis(50)).map(|_| false)
            }
        });
        assert!(
            started,
            "lock {lock:?}: the README's lines did not grant what a candidate needs\n\
             pasted, etcdctl said:\n{out}\nthe candidate said:\n{}",
            c.stderr_text()
        );
    }
    // The observer's lines: its user reads who holds the record, and the candidates' keys.
    for (i, (_, id, lock, _)) in cands.iter().enumerate() {
        let (user, shell) = (&observers[i], ["bash", "sh"][i % 2]);
        let out = paste(&etcd, shell, &observer_lines, lock, &format!("or{i}"), user);
        let creds = format!("{user}:{SECRET}");
        let prefix = format!("{lock}/");
        let record = etcd.etcdctl(&["--user", &creds, "get", "--", lock]);
        let queue = etcd.etcdctl(&["--user", &creds, "get", "--prefix", "--", &prefix]);
        let said = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            record.status.success() && queue.status.success() && said(&queue).contains(id),
            "lock {lock:?}: the README's observer lines do not let it read\npasted: {out}\n\
             record: {record:?}\nqueue: {queue:?}"
        );
        assert!(said(&record).contains(id), "{record:?}");
    }
}

/// Client-certificate authentication: etcd takes the user from the certificate's CN
/// (`elector`), and no USERNAME or password is given. With the smallest grant it leads; on a
/// lock it has no grant for, it ends at start-up with 77 naming the right refused.
#[test]
fn a_client_certificate_user_with_the_smallest_grant_leads() {
    const LOCK: &str = "rights-cn";
    let pki = pki::Pki::generate();
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let (scert, skey) = (pki.path("server.pem"), pki.path("server.key"));
    let etcd = Etcd::builder()
        .client_scheme("https")
        .args(&["--cert-file", &scert, "--key-file", &skey])
        .args(&["--client-cert-auth", "--trusted-ca-file", &ca])
        .etcdctl_args(&["--cacert", &ca, "--cert", &cert, "--key", &key])
        .start();
    let ok = |args: &[&str]| assert_success(&etcd.etcdctl(args), &format!("etcdctl {args:?}"));
    ok(&["user", "add", ROOT, "--interactive=false"]);
    ok(&["role", "add", "root"]);
    ok(&["user", "grant-role", "root", "root"]);
    ok(&["role", "add", "elector-role"]);
    for grant in smallest(LOCK) {
        let mut args = vec!["role", "grant-permission", "elector-role"];
        args.extend(grant.iter().map(String::as_str));
        ok(&args);
    }
    ok(&["user", "add", "elector:unused-pw-0", "--interactive=false"]);
    ok(&["user", "grant-role", "elector", "elector-role"]);
    ok(&["auth", "enable"]);
    let dir = TempDir::new("rights-cn");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let by_cert = |id: &str, lock: &str| {
        Candidate::new(id)
            .lock(lock)
            .endpoints(&format!("https://{}", etcd.endpoint()))
            .lease(3)
            .renew("2s")
            .retry("300ms")
            .log(&log)
            .env("ETCD_AWAIT_ELECTION_CACERT", &ca)
            .env("ETCD_AWAIT_ELECTION_CERT", &cert)
            .env("ETCD_AWAIT_ELECTION_KEY", &key)
    };
    let a = by_cert("a", LOCK).spawn();
    mon.wait_for_start(Some("a"), T);
    let mut other = by_cert("other", "rights-cn-elsewhere").spawn();
    let code = other.expect_exit(GRACE + EXIT_SLACK).code();
    let stderr = other.stderr_text();
    assert_eq!(code, Some(REFUSED), "{stderr}");
    assert!(
        stderr.contains(r#"the user of the client certificate may not read the range ["rights-cn-elsewhere", "rights-cn-elsewhere\u{1}")"#),
        "{stderr}"
    );
    assert!(
        mon.starts().iter().all(|r| r.identity == "a"),
        "{}",
        mon.timeline()
    );
    assert_nothing_refused(&[&a]);
}

/// A right revoked while running is retried, as documented: a standby whose role is revoked
/// stays in line (no exit, its command never started), `/healthz` 503 naming the variables; its
/// rights restored, it leads when the leader (another user, untouched) steps down.
#[test]
fn a_right_revoked_from_a_standby_is_retried_not_fatal() {
    const LOCK: &str = "rights-revoked";
    let etcd = auth_etcd(&[("leader", smallest(LOCK)), ("standby", smallest(LOCK))]);
    let dir = TempDir::new("rights-revoked");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut a = candidate(&etcd, "a", "leader", LOCK, &log).spawn();
    let ra = mon.wait_for_start(Some("a"), T);
    let port = common::free_port();
    let mut b = candidate(&etcd, "b", "standby", LOCK, &log)
        .status_port(port)
        .spawn();
    common::wait_until(T, "b to queue", || queue(&etcd, LOCK).len() == 2);
    let root = |args: &[&str]| {
        let mut all = vec!["--user", ROOT];
        all.extend(args);
        assert_success(&etcd.etcdctl(&all), &format!("etcdctl {args:?}"));
    };
    root(&["user", "revoke-role", "standby", "standby-role"]);
    let healthz = || common::http("GET", &b.status_url("/healthz"), Duration::from_secs(2));
    let (_, body) = common::wait_for(T, "b's /healthz to fail", || {
        healthz().filter(|(code, _)| *code == 503)
    });
    assert!(body.contains("ETCD_AWAIT_ELECTION_USERNAME"), "{body}");
    // Three lease TTLs (3 s): a standby ending on a permanent failure would have done so.
    let ended = b.wait_timeout(Duration::from_secs(9));
    assert!(ended.is_none(), "b ended {ended:?}:\n{}", b.stderr_text());
    root(&["user", "grant-role", "standby", "standby-role"]);
    assert!(a.signal(libc::SIGTERM));
    mon.wait_for_start_after(Some("b"), ra.ns, T);
    a.expect_exit(T);
    mon.assert_no_overlap();
}

/// An ES256 key pair for etcd's JWT tokens, made with openssl in `dir`: (private, public).
fn jwt_keys(dir: &Path) -> (String, String) {
    let (key, public) = (dir.join("jwt.key"), dir.join("jwt.pub"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let (k, p) = (key.to_string_lossy(), public.to_string_lossy());
    run(&[
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
        "-out",
        &k,
    ]);
    run(&["ec", "-in", &k, "-pubout", "-out", &p]);
    (k.into_owned(), p.into_owned())
}

/// With JWT tokens, which carry the auth revision they were issued at, any change of a user or a
/// role makes etcd refuse every request made with an older token ("revision of auth store is
/// old") until the client authenticates again. A leader must not lose its place to an unrelated
/// role being added, and the hand-over after it must work.
#[test]
fn an_auth_change_under_jwt_tokens_costs_no_leader_its_place() {
    const LOCK: &str = "rights-jwt";
    let dir = TempDir::new("rights-jwt");
    let (key, public) = jwt_keys(dir.path());
    let token = format!("jwt,pub-key={public},priv-key={key},sign-method=ES256,ttl=10m");
    let builder = Etcd::builder().args(&["--auth-token", &token]);
    let etcd = auth_etcd_with(builder, &[("elector", smallest(LOCK))]);
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut a = candidate(&etcd, "a", "elector", LOCK, &log).spawn();
    let ra = mon.wait_for_start(Some("a"), T);
    let mut b = candidate(&etcd, "b", "elector", LOCK, &log).spawn();
    common::wait_until(T, "b to queue", || queue(&etcd, LOCK).len() == 2);
    let out = etcd.etcdctl(&["--user", ROOT, "role", "add", "unrelated"]);
    assert_success(&out, "etcdctl role add unrelated");
    // Three lease TTLs (3 s): a leader whose renewals stopped counting has stopped by then.
    let ended = a.wait_timeout(Duration::from_secs(9));
    assert!(ended.is_none(), "a ended {ended:?}:\n{}", a.stderr_text());
    assert!(a.signal(libc::SIGTERM));
    mon.wait_for_start_after(Some("b"), ra.ns, T);
    a.expect_exit(T);
    assert!(b.signal(libc::SIGTERM));
    b.expect_exit(T);
    mon.assert_no_overlap();
}
