//! Security of the wrapper against a real etcd (3.4, and 3.5 under `make test`) on loopback: TLS
//! server verification, mutual TLS, the ways a TLS setup goes wrong (unknown CA, missing/expired
//! client certificate, a key that does not match its certificate), etcd user authentication
//! (password from the environment or a file, wrong password, no rights on the lock, credentials
//! for a server without authentication, the password never logged), what a permanent failure
//! does at start-up (ends the wrapper after the grace, naming the variable) and after joining
//! (a retrying standby, unhealthy), and the status endpoint under a flood of good and malformed
//! requests.
//!
//! In every failure case the command must never start, and the wrapper must say why on stderr.

mod common;
#[path = "common/pki.rs"]
mod pki;

use common::candidate::{Candidate, CandidateBuilder};
use common::etcd::{assert_success, Etcd};
use common::invariant::Monitor;
use common::{free_port, TempDir};
use pki::Pki;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);
/// How long a misconfigured candidate gets to (wrongly) start its command.
const NEVER: Duration = Duration::from_secs(3);

const CERT: &str = "ETCD_AWAIT_ELECTION_CERT";
const KEY: &str = "ETCD_AWAIT_ELECTION_KEY";
const CACERT: &str = "ETCD_AWAIT_ELECTION_CACERT";
const USERNAME: &str = "ETCD_AWAIT_ELECTION_USERNAME";
const PASSWORD: &str = "ETCD_AWAIT_ELECTION_PASSWORD";
const PASSWORD_FILE: &str = "ETCD_AWAIT_ELECTION_PASSWORD_FILE";

/// Exit code of the wrapper on a permanent etcd failure at start-up (`exit::REFUSED` in src/exit.rs).
const REFUSED: i32 = 77;
/// The start-up grace before a permanent failure ends the wrapper (`failure::grace`), for
/// retry periods up to 1.6 s.
const GRACE: Duration = Duration::from_secs(5);
/// How long after the grace the wrapper may take to see the cause and exit: a rejected client
/// certificate shows as a closed connection on some attempts (etcd's alert races the close after
/// the TLS 1.3 handshake), so a few retries may pass before one names it.
const EXIT_SLACK: Duration = Duration::from_secs(10);

/// etcd serving clients over TLS with `server.pem`; with `client_auth`, it also demands a client
/// certificate signed by `ca.pem`.
fn tls_etcd(pki: &Pki, client_auth: bool) -> Etcd {
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let mut args = vec!["--cert-file", &cert, "--key-file", &key];
    if client_auth {
        args.extend(["--client-cert-auth", "--trusted-ca-file", &ca]);
    }
    let (ccert, ckey) = (pki.path("client.pem"), pki.path("client.key"));
    let mut ctl = vec!["--cacert", &ca];
    if client_auth {
        ctl.extend(["--cert", &ccert, "--key", &ckey]);
    }
    Etcd::builder()
        .client_scheme("https")
        .args(&args)
        .etcdctl_args(&ctl)
        .start()
}

/// A candidate with short timings, logging its child's records to `log`.
fn candidate(id: &str, lock: &str, endpoints: &str, log: &std::path::Path) -> CandidateBuilder {
    Candidate::new(id)
        .lock(lock)
        .endpoints(endpoints)
        .lease(3)
        .renew("2s")
        .retry("300ms")
        .log(log)
}

/// Waits [`NEVER`] and checks that no command ever started and the wrapper is still trying (or
/// has exited); returns the wrapper's stderr.
fn never_starts(c: &mut Candidate, mon: &Monitor) -> String {
    std::thread::sleep(NEVER);
    let stderr = c.stderr_text();
    assert!(
        mon.starts().is_empty(),
        "{} started its command although it must not lead:\n{}\nstderr:\n{stderr}",
        c.identity(),
        mon.timeline()
    );
    stderr
}

/// The wrapper's `etcd: <cause>; retrying every ...` lines.
fn etcd_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("etcd: ") && l.contains("retrying every"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// CACERT alone verifies the server; `https://host:port` and bare `host:port` (https implied by
/// the TLS configuration) both work.
#[test]
fn tls_server_verified_with_cacert_alone() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, false);
    let dir = TempDir::new("sec-tls");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let ca = pki.path("ca.pem");
    let _a = candidate(
        "https",
        "tls-a",
        &format!("https://{}", etcd.endpoint()),
        &log,
    )
    .env(CACERT, &ca)
    .spawn();
    let _b = candidate("bare", "tls-b", &etcd.endpoint(), &log)
        .env(CACERT, &ca)
        .spawn();
    mon.wait_for_start(Some("https"), T);
    mon.wait_for_start(Some("bare"), T);
    assert_eq!(etcd.get("tls-a").as_deref(), Some("https"));
    assert_eq!(etcd.get("tls-b").as_deref(), Some("bare"));
}

/// With `--client-cert-auth`, CERT+KEY+CACERT lead; CACERT alone is a permanent failure: the
/// wrapper ends at start-up after the grace, naming CERT/KEY, and its command never starts.
#[test]
fn mutual_tls_requires_the_client_certificate() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true);
    let dir = TempDir::new("sec-mtls");
    let log = dir.join("log");
    let ok_log = dir.join("ok-log");
    let ok_mon = Monitor::start(&ok_log);
    let mon = Monitor::start(&log);
    let _ok = candidate("mtls", "mtls-a", &etcd.endpoint(), &ok_log)
        .env(CACERT, &pki.path("ca.pem"))
        .env(CERT, &pki.path("client.pem"))
        .env(KEY, &pki.path("client.key"))
        .spawn();
    let t0 = Instant::now();
    let mut anon = candidate("anon", "mtls-b", &etcd.endpoint(), &log)
        .env(CACERT, &pki.path("ca.pem"))
        .spawn();
    ok_mon.wait_for_start(Some("mtls"), T);
    ends_at_start_up(
        &mut anon,
        t0,
        &mon,
        "ETCD_AWAIT_ELECTION_CERT/ETCD_AWAIT_ELECTION_KEY",
    );
    assert_eq!(etcd.get("mtls-b"), None);
    assert_eq!(etcd.get("mtls-a").as_deref(), Some("mtls"));
}

/// Asserts that `c`, spawned just after `t0`, ended with [`REFUSED`] after the start-up grace
/// (not before: a server still starting is given time) and soon after it, with one error line
/// that names `var` first, without ever starting its command. Returns that line.
fn ends_at_start_up(c: &mut Candidate, t0: Instant, mon: &Monitor, var: &str) -> String {
    let status = c.expect_exit(GRACE + EXIT_SLACK);
    let took = t0.elapsed();
    let stderr = c.stderr_text();
    eprintln!("=== {} ended after {took:?}:\n{stderr}", c.identity());
    assert_eq!(status.code(), Some(REFUSED), "stderr:\n{stderr}");
    assert!(took >= GRACE, "gave up after {took:?}, within the grace");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "stderr:\n{stderr}");
    assert!(
        errors[0].contains(&format!("ERROR {var}: ")) && errors[0].contains("giving up"),
        "the error must name {var} first: {}",
        errors[0]
    );
    assert!(mon.starts().is_empty(), "{}", mon.timeline());
    errors[0].to_string()
}

/// Some `etcd: ...; retrying` warning names `what`.
fn assert_named(stderr: &str, what: &str) {
    let errs = etcd_errors(stderr);
    assert!(
        errs.iter().any(|l| l.contains(what)),
        "no etcd error names {what:?}:\n{stderr}"
    );
}

/// A candidate that trusts an unrelated CA refuses the server's certificate: it says so once
/// while it retries within the grace, then ends naming CACERT.
#[test]
fn unknown_server_ca_ends_the_wrapper_at_start_up() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, false);
    let dir = TempDir::new("sec-wrongca");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let t0 = Instant::now();
    let mut c = candidate("wrongca", "wrongca", &etcd.endpoint(), &log)
        .env(CACERT, &pki.path("other-ca.pem"))
        .spawn();
    let line = ends_at_start_up(&mut c, t0, &mon, "ETCD_AWAIT_ELECTION_CACERT");
    assert!(
        line.contains("invalid peer certificate: UnknownIssuer"),
        "{line}"
    );
    let stderr = c.stderr_text();
    assert_named(&stderr, "invalid peer certificate: UnknownIssuer");
    assert_eq!(
        etcd_errors(&stderr).len(),
        1,
        "logged more than once:\n{stderr}"
    );
    assert_eq!(etcd.get("wrongca"), None);
}

/// An expired client certificate is refused by etcd: the wrapper ends at start-up naming
/// CERT/KEY. Debian's etcd 3.4 (older Go) answers every client-certificate failure with a
/// bad_certificate alert, so the client cannot learn that it is expired; current 3.5 and 3.6
/// builds say so.
#[test]
fn expired_client_certificate_ends_the_wrapper_at_start_up() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true);
    let dir = TempDir::new("sec-expired");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let t0 = Instant::now();
    let mut c = candidate("expired", "expired", &etcd.endpoint(), &log)
        .env(CACERT, &pki.path("ca.pem"))
        .env(CERT, &pki.path("expired.pem"))
        .env(KEY, &pki.path("expired.key"))
        .spawn();
    let line = ends_at_start_up(
        &mut c,
        t0,
        &mon,
        "ETCD_AWAIT_ELECTION_CERT/ETCD_AWAIT_ELECTION_KEY",
    );
    assert!(
        line.contains("received fatal alert: BadCertificate")
            || line.contains("received fatal alert: CertificateExpired"),
        "{line}"
    );
    assert_eq!(etcd.get("expired"), None);
}

/// Once it has joined the election, the same kind of fault keeps the wrapper running as a
/// retrying standby (a certificate rotated on the servers must not take a fleet down), but
/// `/healthz` turns 503 naming the variable, the metrics count the cause, and the log says it
/// once. The fault: the member it talks to dies, and the only other endpoint is a server whose
/// certificate comes from another CA. When the first member is back, it is healthy again.
#[test]
fn permanent_failure_after_joining_keeps_a_retrying_unhealthy_standby() {
    let pki = Pki::generate();
    let foreign = Pki::generate();
    let mut etcd = tls_etcd(&pki, false);
    let stranger = tls_etcd(&foreign, false);
    let dir = TempDir::new("sec-rotated");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let ca = pki.path("ca.pem");
    let _leader = candidate("leader", "rotated", &etcd.endpoint(), &log)
        .env(CACERT, &ca)
        .spawn();
    mon.wait_for_start(Some("leader"), T);
    let port = free_port();
    let endpoints = format!("{},{}", etcd.endpoint(), stranger.endpoint());
    let mut standby = candidate("standby", "rotated", &endpoints, &log)
        .env(CACERT, &ca)
        .status_port(port)
        .spawn();
    common::wait_until(T, "the standby to queue", || {
        etcd.get_prefix_keys("rotated/").len() == 2
    });
    assert_eq!(
        http_get(port, "/healthz", Duration::from_secs(2)).map(|(c, _)| c),
        Some(200)
    );
    etcd.kill();
    let failing = Instant::now();
    let (code, body) = common::wait_for(T, "/healthz to name CACERT", || {
        http_get(port, "/healthz", Duration::from_secs(1))
            .filter(|(code, body)| *code == 503 && body.contains("ETCD_AWAIT_ELECTION_CACERT"))
    });
    eprintln!(
        "healthz {code} {:?} after the fault: {body}",
        failing.elapsed()
    );
    // Retried well past the start-up grace, still running, never started.
    std::thread::sleep(GRACE + Duration::from_secs(2));
    assert!(standby.is_running(), "stderr:\n{}", standby.stderr_text());
    assert_eq!(
        http_get(port, "/healthz", Duration::from_secs(1)).map(|(c, _)| c),
        Some(503)
    );
    let (_, metrics) = http_get(port, "/metrics", Duration::from_secs(1)).expect("/metrics");
    let labels = r#"{cause="server_certificate",permanent="true"}"#;
    let counted = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("etcd_await_election_etcd_errors_total{labels} "))?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    assert!(counted >= 2, "retried and counted by cause:\n{metrics}");
    assert!(
        metrics.contains(&format!(
            "etcd_await_election_etcd_permanent_failure{labels} 1"
        )),
        "{metrics}"
    );
    let stderr = standby.stderr_text();
    let told: Vec<&str> = etcd_errors(&stderr)
        .into_iter()
        .filter(|l| l.contains("ETCD_AWAIT_ELECTION_CACERT"))
        .collect();
    assert_eq!(told.len(), 1, "said once per cause:\n{stderr}");
    // The other CA has the same name as ours (as a rotated CA would): found, but its
    // signature does not verify.
    assert!(told[0].contains("BadSignature"), "{}", told[0]);
    assert!(
        mon.starts().iter().all(|s| s.identity == "leader"),
        "{}",
        mon.timeline()
    );
    // The member is back: etcd answers, healthy again.
    etcd.restart();
    common::wait_until(T, "/healthz to recover", || {
        http_get(port, "/healthz", Duration::from_secs(1)).is_some_and(|(c, _)| c == 200)
    });
    assert!(standby.is_running());
}

/// While one and the same TLS misconfiguration persists, the wrapper logs each cause once, not
/// on every retry. A rejected client certificate makes the cause flap: with TLS 1.3 the client
/// finishes its handshake before the server checks the certificate, and etcd's "bad
/// certificate" alert races the connection close, so some attempts see only "connection
/// closed". Each distinct cause is logged once per failing episode.
#[test]
fn rejected_client_certificate_is_reported_once_per_cause() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true);
    let dir = TempDir::new("sec-flap");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut anon = candidate("anon", "flap-a", &etcd.endpoint(), &log)
        .env(CACERT, &pki.path("ca.pem"))
        .spawn();
    let mut expired = candidate("expired", "flap-b", &etcd.endpoint(), &log)
        .env(CACERT, &pki.path("ca.pem"))
        .env(CERT, &pki.path("expired.pem"))
        .env(KEY, &pki.path("expired.key"))
        .spawn();
    let a = never_starts(&mut anon, &mon);
    let e = expired.stderr_text();
    assert!(anon.is_running() && expired.is_running());
    for (who, stderr) in [("no client certificate", &a), ("expired certificate", &e)] {
        let errs = etcd_errors(stderr);
        // Compare causes, not lines: each line starts with its own timestamp.
        let mut distinct: Vec<&str> = errs
            .iter()
            .filter_map(|l| l.split("etcd: ").nth(1))
            .collect();
        distinct.sort();
        distinct.dedup();
        assert!(!errs.is_empty(), "{who}: nothing logged:\n{stderr}");
        assert_eq!(
            errs.len(),
            distinct.len(),
            "{who}: a cause was logged more than once in {NEVER:?}:\n{}",
            errs.join("\n")
        );
    }
}

/// CERT with the KEY of another certificate.
#[test]
fn certificate_key_mismatch_is_refused() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true);
    let dir = TempDir::new("sec-mismatch");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let mut c = candidate("mismatch", "mismatch", &etcd.endpoint(), &log)
        .env(CACERT, &pki.path("ca.pem"))
        .env(CERT, &pki.path("client.pem"))
        .env(KEY, &pki.path("server.key"))
        .spawn();
    // Caught at start-up: a key that does not match its certificate can never work, so the
    // wrapper exits with the configuration code instead of retrying forever.
    let status = c
        .wait_timeout(Duration::from_secs(5))
        .expect("the wrapper exits at start-up");
    let stderr = c.stderr_text();
    assert_eq!(status.code(), Some(78), "stderr:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        line.contains("KeyMismatch") && line.contains("ETCD_AWAIT_ELECTION_KEY"),
        "{line}"
    );
    assert!(mon.starts().is_empty(), "the command must never start");
    assert_eq!(etcd.get("mismatch"), None);
}

// ---------------------------------------------------------------------------------------------
// etcd authentication
// ---------------------------------------------------------------------------------------------

const ROOT: &str = "root:root-pw-0000";
const USER: &str = "elector";
const SECRET: &str = "s3cr3t-Pa55-7e1d9";

/// etcd with authentication on: `root`, and `elector` (password [`SECRET`]) whose only right is
/// readwrite on the key range `<lock>`..`<lock>\xff`: the plain key `<lock>` (the legacy lock)
/// and `<lock>/...` (the election). Leases need no permission in etcd 3.4.
fn auth_etcd(lock: &str) -> Etcd {
    let etcd = Etcd::start();
    let user = format!("{USER}:{SECRET}");
    let steps: [&[&str]; 8] = [
        &["user", "add", ROOT, "--interactive=false"],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "elector-role"],
        &[
            "role",
            "grant-permission",
            "elector-role",
            "readwrite",
            "--prefix=true",
            lock,
        ],
        &["user", "add", &user, "--interactive=false"],
        &["user", "grant-role", USER, "elector-role"],
        &["auth", "enable"],
    ];
    for args in steps {
        assert_success(&etcd.etcdctl(args), &format!("etcdctl {args:?}"));
    }
    etcd
}

/// `etcdctl get --print-value-only` as root.
fn root_get(etcd: &Etcd, key: &str) -> Option<String> {
    let out = etcd.etcdctl(&["--user", ROOT, "get", "--print-value-only", key]);
    assert_success(&out, &format!("etcdctl get {key}"));
    let s = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    (!s.is_empty()).then_some(s)
}

/// A plain HTTP/1.1 GET; `None` when no complete answer arrives within `timeout`.
fn http_get(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// USERNAME+PASSWORD leads; USERNAME+PASSWORD_FILE (with a trailing newline) takes over when the
/// first resigns; the password appears neither in a trace-level log nor in the status endpoint.
#[test]
fn etcd_credentials_lead_and_are_never_logged() {
    const LOCK: &str = "auth-lock";
    let etcd = auth_etcd(LOCK);
    let dir = TempDir::new("sec-auth");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let pw_file = dir.join("password");
    std::fs::write(&pw_file, format!("{SECRET}\n")).unwrap();
    let port = free_port();
    let mut env_pw = candidate("env-pw", LOCK, &etcd.endpoint(), &log)
        .status_port(port)
        .env("RUST_LOG", "trace")
        .env(USERNAME, USER)
        .env(PASSWORD, SECRET)
        .spawn();
    let first = mon.wait_for_start(Some("env-pw"), T);
    let mut file_pw = candidate("file-pw", LOCK, &etcd.endpoint(), &log)
        .env("RUST_LOG", "trace")
        .env(USERNAME, USER)
        .env(PASSWORD_FILE, &pw_file.to_string_lossy())
        .spawn();
    assert_eq!(root_get(&etcd, LOCK).as_deref(), Some("env-pw"));
    // The second one queues (it can read and write the lock) without starting.
    common::wait_until(T, "file-pw to queue", || {
        etcd.etcdctl(&[
            "--user",
            ROOT,
            "get",
            "--prefix",
            "--keys-only",
            "auth-lock/",
        ])
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
            == 2
    });
    for path in ["/", "/healthz", "/readyz", "/metrics"] {
        let (code, body) = http_get(port, path, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("no answer on {path}"));
        assert!(code == 200, "{path}: {code} {body}");
        assert!(!body.contains(SECRET), "{path} shows the password: {body}");
    }
    assert!(env_pw.signal(libc::SIGTERM));
    let second = mon.wait_for_start(Some("file-pw"), T);
    assert!(second.ns > first.ns);
    assert_eq!(
        env_pw.expect_exit(T).code(),
        Some(143),
        "{}",
        env_pw.stderr_text()
    );
    assert!(file_pw.is_running());
    mon.assert_no_overlap();
    for c in [&env_pw, &file_pw] {
        let stderr = c.stderr_text();
        assert!(
            stderr.contains("DEBUG"),
            "{} did not log verbosely",
            c.identity()
        );
        assert!(
            !stderr.contains(SECRET),
            "{} logged the password:\n{}",
            c.identity(),
            stderr
                .lines()
                .filter(|l| l.contains(SECRET))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Refusals retrying cannot cure end the wrapper at start-up with 77 once the grace has passed,
/// with one error line naming the variables to fix and without the command: a wrong password,
/// an unknown user, a lock the user has no rights on.
#[test]
fn etcd_refusals_are_fatal() {
    const LOCK: &str = "auth-lock";
    let etcd = auth_etcd(LOCK);
    let dir = TempDir::new("sec-refused");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let wrong_pw = "wr0ng-Pa55-c0ffee";
    let cases = [
        (
            "wrong-pw",
            LOCK,
            USER,
            wrong_pw,
            "authentication failed, invalid user ID or password",
        ),
        (
            "no-user",
            LOCK,
            "nobody",
            SECRET,
            "authentication failed, invalid user ID or password",
        ),
        ("no-rights", "other-lock", USER, SECRET, "permission denied"),
    ];
    let started = Instant::now();
    let mut cands: Vec<(Candidate, &str, &str)> = cases
        .iter()
        .map(|(id, lock, user, pw, why)| {
            let c = candidate(id, lock, &etcd.endpoint(), &log)
                .env("RUST_LOG", "trace")
                .env(USERNAME, user)
                .env(PASSWORD, pw)
                .spawn();
            (c, *pw, *why)
        })
        .collect();
    for (c, pw, why) in &mut cands {
        let st = c.expect_exit(GRACE + EXIT_SLACK);
        let stderr = c.stderr_text();
        assert_eq!(st.code(), Some(REFUSED), "{}: {stderr}", c.identity());
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        eprintln!("{}: {errors:?}", c.identity());
        assert_eq!(errors.len(), 1, "{}: {stderr}", c.identity());
        assert!(
            errors[0].contains(*why) && errors[0].contains("ERROR ETCD_AWAIT_ELECTION_USERNAME"),
            "{}: error does not say {why:?}: {}",
            c.identity(),
            errors[0]
        );
        assert!(
            !stderr.contains(*pw),
            "{} logged the password",
            c.identity()
        );
    }
    eprintln!("refused within {:?}", started.elapsed());
    assert!(started.elapsed() >= GRACE);
    assert!(mon.starts().is_empty(), "{}", mon.timeline());
}

/// Credentials given to a server without authentication are a configuration mistake too (the
/// user believes the lock is protected): refused at start-up, naming USERNAME/PASSWORD.
#[test]
fn credentials_for_a_server_without_authentication_are_refused() {
    let etcd = Etcd::start();
    let dir = TempDir::new("sec-noauth");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let t0 = Instant::now();
    let mut c = candidate("noauth", "noauth", &etcd.endpoint(), &log)
        .env(USERNAME, USER)
        .env(PASSWORD, SECRET)
        .spawn();
    let line = ends_at_start_up(
        &mut c,
        t0,
        &mon,
        "ETCD_AWAIT_ELECTION_USERNAME/ETCD_AWAIT_ELECTION_PASSWORD",
    );
    assert!(line.contains("authentication is not enabled"), "{line}");
    assert!(!c.stderr_text().contains(SECRET));
    assert_eq!(etcd.lease_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// The status endpoint under load
// ---------------------------------------------------------------------------------------------

/// Sum of every sample of `name` in etcd's Prometheus metrics (served on the client URL).
fn etcd_counter(etcd: &Etcd, name: &str) -> f64 {
    // Through a real HTTP client: etcd sends its metrics chunked.
    let url = format!("http://127.0.0.1:{}/metrics", etcd.client_port());
    let (code, body) =
        common::http("GET", &url, Duration::from_secs(5)).expect("etcd /metrics answers");
    assert_eq!(code, 200);
    let prefix = format!("{name}{{");
    let samples: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(&prefix) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!samples.is_empty(), "etcd exports no {name}");
    samples.iter().sum()
}

/// Sends `req` on a fresh connection and reads whatever comes back (until close or 2 s).
fn send_raw(port: u16, req: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(req);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

/// A flood of requests (and malformed ones, and connections that never send anything) neither
/// restarts the command nor disturbs the lease, costs etcd nothing, and leaves the endpoint
/// answering.
#[test]
fn status_flood_does_not_disturb_leadership() {
    const LOCK: &str = "flood";
    const THREADS: usize = 4;
    const PER_THREAD: usize = 500;
    let etcd = Etcd::start();
    let dir = TempDir::new("sec-flood");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let port = free_port();
    let mut leader = candidate("leader", LOCK, &etcd.endpoint(), &log)
        .status_port(port)
        .env("RUST_LOG", "info")
        .spawn();
    let first = mon.wait_for_start(Some("leader"), T);
    let mut follower = candidate("follower", LOCK, &etcd.endpoint(), &log)
        .env("RUST_LOG", "info")
        .spawn();
    common::wait_until(T, "the follower to queue", || {
        etcd.get_prefix_keys(&format!("{LOCK}/")).len() == 2
    });

    // Connections that never send a byte, or stop halfway, held through the whole test.
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for partial in [&b"GET / HT"[..], b"GET / HTTP/1.1\r\nHost: x\r\n"] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(partial).unwrap();
        idle.push(s);
    }
    let rpcs = "grpc_server_msg_received_total";
    let before = etcd_counter(&etcd, rpcs);
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let paths = ["/", "/healthz", "/readyz", "/metrics", "/nope"];
                let mut ok = 0;
                for i in 0..PER_THREAD {
                    // Spread over 3 s, so that the lease is renewed during the flood.
                    let due = started + Duration::from_millis(6 * i as u64);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let path = paths[(i + t) % paths.len()];
                    if let Some((code, _)) = http_get(port, path, Duration::from_secs(2)) {
                        ok += usize::from(code == 200 || code == 503 || code == 404);
                    }
                }
                ok
            })
        })
        .collect();
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend(b"\r\n\r\n");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let malformed: [&[u8]; 5] = [
        &garbage,
        b"GET /\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nabc",
        &huge,
    ];
    let malformed: Vec<Vec<u8>> = malformed.iter().map(|m| m.to_vec()).collect();
    let odd = std::thread::spawn(move || {
        for (i, req) in malformed.iter().enumerate() {
            let answer = send_raw(port, req);
            eprintln!(
                "malformed #{i}: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(40)])
            );
        }
    });
    let ok: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let flood = started.elapsed();
    odd.join().unwrap();
    let after = etcd_counter(&etcd, rpcs);
    eprintln!(
        "{ok}/{} requests answered in {flood:?}; etcd received {} messages meanwhile",
        THREADS * PER_THREAD,
        after - before
    );

    // (c) Still answering promptly, with the idle connections still open.
    let t0 = Instant::now();
    let (code, body) =
        http_get(port, "/", Duration::from_secs(1)).expect("GET / answers after the flood");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""phase":"running""#), "{body}");
    assert!(
        ok >= THREADS * PER_THREAD * 9 / 10,
        "only {ok} of {} requests answered",
        THREADS * PER_THREAD
    );
    // (d) No etcd request per HTTP request: only keep-alives (one per TTL/3 s) and the
    // followers' watch, plus our own two /metrics reads.
    assert!(
        after - before < 50.0,
        "etcd received {} messages during {} HTTP requests",
        after - before,
        THREADS * PER_THREAD
    );
    // (a)+(b) One start ever, still leading, the follower never ran, nothing overlapped.
    assert!(leader.is_running() && follower.is_running());
    let starts = mon.starts();
    assert_eq!(starts, vec![first], "{}", mon.timeline());
    assert_eq!(mon.running_identities(), vec!["leader".to_string()]);
    assert_eq!(etcd.get(LOCK).as_deref(), Some("leader"));
    mon.assert_no_overlap();
    let stderr = leader.stderr_text();
    assert!(
        !stderr.contains("leadership lost") && !stderr.contains("WARN"),
        "{stderr}"
    );
    drop(idle);
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A leader with a status endpoint on `port`, its child running; returns (etcd, monitor,
/// candidate, temp dir) to keep alive.
fn leader_with_status(lock: &str, port: u16) -> (Etcd, Monitor, Candidate, TempDir) {
    let etcd = Etcd::start();
    let dir = TempDir::new(&format!("sec-{lock}"));
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let leader = candidate("leader", lock, &etcd.endpoint(), &log)
        .status_port(port)
        .env("RUST_LOG", "info")
        .spawn();
    mon.wait_for_start(Some("leader"), T);
    assert!(http_get(port, "/", Duration::from_secs(1)).is_some());
    (etcd, mon, leader, dir)
}

/// A client that pipelines requests and never reads the answers must not stall the endpoint for
/// everyone else (nor, of course, the election).
#[test]
fn status_endpoint_not_stalled_by_a_client_that_never_reads() {
    let port = free_port();
    let (_etcd, mon, mut leader, _dir) = leader_with_status("stuck", port);
    let mut stuck = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stuck
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let burst = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10_000);
    let mut pipelined = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) && stuck.write_all(&burst).is_ok() {
        pipelined += 10_000;
    }
    let answered = http_get(port, "/", Duration::from_secs(1));
    eprintln!(
        "pipelined {pipelined} requests in {:?}; other client answered: {}",
        t0.elapsed(),
        answered.is_some()
    );
    assert!(leader.is_running());
    assert_eq!(mon.starts().len(), 1, "{}", mon.timeline());
    // Whatever happened, closing the culprit's connection must free the endpoint.
    drop(stuck);
    let recovered = Instant::now();
    common::wait_until(T, "the status endpoint to answer again", || {
        http_get(port, "/", Duration::from_millis(500)).is_some()
    });
    eprintln!(
        "answering again {:?} after the culprit left",
        recovered.elapsed()
    );
    assert!(
        answered.is_some(),
        "GET / got no answer within 1 s while one client pipelined {pipelined} requests \
         without reading the answers"
    );
}

/// One endless header line must not make the wrapper's memory grow without bound.
#[test]
fn status_endpoint_memory_is_bounded_against_an_endless_header() {
    const SEND: usize = 8 << 20;
    let port = free_port();
    let (_etcd, mon, mut leader, _dir) = leader_with_status("endless", port);
    let rss_before = rss_kib(leader.pid());
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nX-Endless: ").unwrap();
    let chunk = vec![b'a'; 1 << 16];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < SEND && t0.elapsed() < Duration::from_secs(5) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = rss_kib(leader.pid());
    eprintln!(
        "endless header: sent {} KiB in {:?}; wrapper RSS {rss_before} KiB -> {rss_after} KiB",
        sent >> 10,
        t0.elapsed()
    );
    assert!(leader.is_running());
    assert_eq!(mon.starts().len(), 1, "{}", mon.timeline());
    assert!(
        http_get(port, "/", Duration::from_secs(1)).is_some(),
        "endpoint stalled"
    );
    assert!(
        rss_after < rss_before + 4 * 1024,
        "one endless header line of {} KiB grew the wrapper from {rss_before} KiB to \
         {rss_after} KiB",
        sent >> 10
    );
}
