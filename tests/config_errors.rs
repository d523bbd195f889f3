//! An invalid configuration is refused before anything runs: exit 78 (EX_CONFIG), exactly one
//! line on stderr naming the variable at fault, and the command is never started. A valid
//! configuration whose status endpoint cannot be bound is the wrapper's own failure (70), also
//! before the command starts and before the election is joined.

mod common;

use common::candidate::wrapper_bin;
use common::etcd::Etcd;
use common::{free_port, TempDir};
use std::net::TcpListener;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

const LOCK: &str = "ETCD_AWAIT_ELECTION_LOCK_NAME";
const IDENTITY: &str = "ETCD_AWAIT_ELECTION_IDENTITY";
const ENDPOINTS: &str = "ETCD_AWAIT_ELECTION_ENDPOINTS";
const STATUS: &str = "ETCD_AWAIT_ELECTION_STATUS_ENDPOINT";
const LEASE: &str = "ETCD_AWAIT_ELECTION_LEASE_DURATION";
const RENEW: &str = "ETCD_AWAIT_ELECTION_RENEW_DEADLINE";
const RETRY: &str = "ETCD_AWAIT_ELECTION_RETRY_PERIOD";
const CERT: &str = "ETCD_AWAIT_ELECTION_CERT";
const KEY: &str = "ETCD_AWAIT_ELECTION_KEY";
const CACERT: &str = "ETCD_AWAIT_ELECTION_CACERT";
const FORCE: &str = "ETCD_AWAIT_ELECTION_FORCE_ACQUIRE";

/// Long enough for a wrongly accepted config to show (it would try to join an election).
const TIMEOUT: Duration = Duration::from_secs(10);

struct Outcome {
    status: ExitStatus,
    stderr: String,
    /// Whether the command ran (it would have created a marker file).
    ran: bool,
}

/// Runs the wrapper with exactly `vars` as its `ETCD_AWAIT_ELECTION_*` environment, around a
/// command that creates a marker file.
fn run_with(vars: &[(&str, &str)]) -> Outcome {
    let dir = TempDir::new("cfgerr");
    let marker = dir.join("marker");
    let mut cmd = common::clean_command(wrapper_bin());
    cmd.envs(vars.iter().copied())
        .args(["sh", "-c", r#"touch "$0""#])
        .arg(&marker)
        .stdin(Stdio::null());
    let r = common::run(cmd, TIMEOUT);
    Outcome {
        status: r.status,
        stderr: r.stderr,
        ran: Path::new(&marker).exists(),
    }
}

/// A valid base (endpoint where nothing listens: a config error must be found before any
/// connection is tried) with `changes` applied; `None` removes a variable.
fn base_with(changes: &[(&'static str, Option<&str>)]) -> Vec<(&'static str, String)> {
    let mut vars: Vec<(&'static str, String)> = vec![
        (LOCK, "cfg-lock".into()),
        (IDENTITY, "cfg-me".into()),
        (ENDPOINTS, format!("127.0.0.1:{}", free_port())),
    ];
    for (k, v) in changes {
        vars.retain(|(name, _)| name != k);
        if let Some(v) = v {
            vars.push((k, v.to_string()));
        }
    }
    vars
}

/// Asserts: exit 78, one stderr line naming `var` as the culprit, command not started.
fn assert_config_error(vars: &[(&str, String)], var: &str) {
    let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = run_with(&borrowed);
    let ctx = format!("vars {vars:?}; stderr:\n{}", o.stderr);
    assert_eq!(
        o.status.code(),
        Some(78),
        "exit status {:?}; {ctx}",
        o.status
    );
    assert!(!o.ran, "the command must not run; {ctx}");
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected exactly one line; {ctx}");
    assert!(
        lines[0].contains(&format!("{var}:")),
        "the message must name {var} as the variable at fault; {ctx}"
    );
}

fn check(changes: &[(&'static str, Option<&str>)], var: &str) {
    assert_config_error(&base_with(changes), var);
}

#[test]
fn missing_required_variables() {
    check(&[(IDENTITY, None)], IDENTITY);
    check(&[(LOCK, None)], LOCK);
    check(&[(ENDPOINTS, None)], ENDPOINTS);
    // Blank counts as missing.
    check(&[(IDENTITY, Some("   "))], IDENTITY);
    check(&[(LOCK, Some(""))], LOCK);
    // Any single election variable switches to election mode, which then needs the rest.
    assert_config_error(&[(LEASE, "5".into())], LOCK);
    assert_config_error(&[(FORCE, "true".into())], LOCK);
    assert_config_error(
        &[(LOCK, "l".into()), (ENDPOINTS, "127.0.0.1:2379".into())],
        IDENTITY,
    );
}

#[test]
fn bad_lease_duration() {
    // The last two are above etcd's maximum TTL (9000000000 s), which etcd would refuse.
    for bad in ["abc", "0", "1.5", "-3", "9000000001", "99999999999"] {
        check(&[(LEASE, Some(bad))], LEASE);
    }
}

/// A control character would be written raw into the text log (a newline forges a line) and
/// into etcd's keys; the one error line shows it escaped.
#[test]
fn control_characters_in_names() {
    for bad in ["a\nINFO forged line", "a\rb", "red\u{1b}[31m", "a\u{7f}b"] {
        check(&[(IDENTITY, Some(bad))], IDENTITY);
        check(&[(LOCK, Some(bad))], LOCK);
    }
}

/// Keys are `LOCK_NAME/<lease>`: a trailing `/` or an empty segment is refused; one leading
/// `/` (`/app`) is a usual etcd key and accepted (`a_lock_name_with_a_leading_slash_leads`).
#[test]
fn malformed_lock_names() {
    for bad in ["a/", "/", "a//b", "//a", "/a/"] {
        check(&[(LOCK, Some(bad))], LOCK);
    }
}

#[test]
fn bad_renew_deadline() {
    check(&[(RENEW, Some("abc"))], RENEW);
    check(&[(RENEW, Some("0"))], RENEW);
    // Must be below the lease duration: equal or above is refused.
    check(&[(LEASE, Some("3")), (RENEW, Some("3"))], RENEW);
    check(&[(LEASE, Some("3")), (RENEW, Some("3000ms"))], RENEW);
    check(&[(LEASE, Some("3")), (RENEW, Some("5s"))], RENEW);
    // Against the default lease duration (15 s).
    check(&[(RENEW, Some("20"))], RENEW);
}

/// The kill budget (what is left between the renew deadline and the lease's expiry) must be at
/// least a second, more than an etcd heartbeat: less is refused, not silently shrunk.
#[test]
fn kill_budget_below_one_second_is_refused() {
    check(&[(LEASE, Some("3")), (RENEW, Some("2500ms"))], RENEW);
    check(&[(LEASE, Some("2")), (RENEW, Some("1500ms"))], RENEW);
    check(&[(LEASE, Some("5")), (RENEW, Some("4.1s"))], RENEW);
    check(&[(RENEW, Some("14500ms"))], RENEW);
}

#[test]
fn bad_retry_period() {
    check(&[(RETRY, Some("0"))], RETRY);
    check(&[(RETRY, Some("soon"))], RETRY);
}

/// RETRY_PERIOD is 100 ms to 5 minutes: just below and just above are refused, and so are the
/// two values once accepted (the first spun a core and stormed etcd while it was down, the second
/// aborted the wrapper on an overflow, leaving its lease and keys behind).
#[test]
fn retry_period_out_of_range() {
    for bad in [
        "99ms",
        "99.999999999ms",
        "300.000000001s",
        "300001ms",
        "5.01m",
        "0.000001ms",
        "10000000000000000000",
    ] {
        check(&[(RETRY, Some(bad))], RETRY);
    }
}

/// RENEW_DEADLINE is at least a second (and a second below the lease duration, above).
#[test]
fn renew_deadline_below_one_second() {
    for bad in ["999ms", "999.999999999ms", "0.5"] {
        check(&[(RENEW, Some(bad))], RENEW);
    }
    check(&[(LEASE, Some("2")), (RENEW, Some("1000.000001ms"))], RENEW);
}

/// LEASE_DURATION is 2 to 9000000000 seconds; a lease of 1 s leaves no renew deadline, and the
/// message says so of the lease, not of the renew deadline.
#[test]
fn lease_duration_out_of_range() {
    check(&[(LEASE, Some("1"))], LEASE);
    check(&[(LEASE, Some("1")), (RENEW, Some("1s"))], LEASE);
    check(&[(LEASE, Some("9000000001")), (RENEW, Some("1s"))], LEASE);
    check(&[(LEASE, Some("99999999999999999999999"))], LEASE);
}

/// Every bound itself is accepted: against a real etcd, the command runs and the wrapper
/// resigns (no lease left behind, not even one of 285 years).
#[test]
fn durations_at_their_bounds_are_accepted() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let bounds = [
        ("2", "1s", "100ms"),
        ("2", "1000ms", "0.1s"),
        ("15", "14s", "5m"),
        ("15", "14000ms", "300"),
        ("9000000000", "8999999999", "300000ms"),
    ];
    for (i, (lease, renew, retry)) in bounds.into_iter().enumerate() {
        let lock = format!("cfg-bounds-{i}");
        let vars = [
            (LOCK, lock.as_str()),
            (IDENTITY, "cfg-me"),
            (ENDPOINTS, ep.as_str()),
            (LEASE, lease),
            (RENEW, renew),
            (RETRY, retry),
        ];
        let o = run_with(&vars);
        let ctx = format!("{vars:?}; stderr:\n{}", o.stderr);
        assert_eq!(o.status.code(), Some(0), "{:?}; {ctx}", o.status);
        assert!(o.ran, "the command must run; {ctx}");
    }
    assert_eq!(etcd.lease_count(), 0, "every wrapper revoked its lease");
}

#[test]
fn malformed_endpoints() {
    for bad in [
        "localhost",
        "a:99999",
        "ftp://x:1",
        "127.0.0.1:2379,",
        "a b:1",
        "https://127.0.0.1:2379",
    ] {
        check(&[(ENDPOINTS, Some(bad))], ENDPOINTS);
    }
}

#[test]
fn tls_file_errors() {
    let dir = TempDir::new("cfg-tls");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    let missing = dir.join("missing-ca.pem");
    let missing = missing.to_str().unwrap();

    // CERT without KEY: KEY is the one missing.
    check(&[(CERT, Some(not_pem))], KEY);
    check(&[(KEY, Some(not_pem))], CERT);
    check(&[(CACERT, Some(missing))], CACERT);
    check(&[(CACERT, Some(not_pem))], CACERT);
}

#[test]
fn bad_force_acquire() {
    check(&[(FORCE, Some("maybe"))], FORCE);
}

#[test]
fn bad_status_endpoint() {
    check(&[(STATUS, Some("nonsense"))], STATUS);
    check(&[(STATUS, Some("localhost:8080"))], STATUS);
    check(&[(STATUS, Some("127.0.0.1:70000"))], STATUS);
}

#[test]
fn status_endpoint_in_use_is_an_internal_error() {
    let etcd = Etcd::start();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let ep = etcd.endpoint();
    let vars = [
        (LOCK, "cfg-busy"),
        (IDENTITY, "cfg-me"),
        (ENDPOINTS, ep.as_str()),
        (LEASE, "2"),
        (RENEW, "1s"),
        (STATUS, addr.as_str()),
    ];
    let o = run_with(&vars);
    let ctx = format!("stderr:\n{}", o.stderr);
    assert_eq!(o.status.code(), Some(70), "{:?}; {ctx}", o.status);
    assert!(!o.ran, "the command must not run; {ctx}");
    assert!(
        o.stderr.contains(STATUS) && o.stderr.contains(&addr),
        "the message must name {STATUS} and the address; {ctx}"
    );
    // The wrapper gave up before joining the election.
    assert!(etcd.get_prefix_keys("cfg-busy").is_empty());
    assert_eq!(etcd.lease_count(), 0);
    drop(busy);
}

/// Existing locks named like `/app` keep working: the command runs under the key `/app/<lease>`.
#[test]
fn a_lock_name_with_a_leading_slash_leads() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let vars = [
        (LOCK, "/cfg-app"),
        (IDENTITY, "cfg-me"),
        (ENDPOINTS, ep.as_str()),
        (LEASE, "3"),
        (RENEW, "2s"),
    ];
    let o = run_with(&vars);
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", o.stderr);
    assert!(o.ran, "stderr:\n{}", o.stderr);
    assert!(o.stderr.contains("leading as /cfg-app/"), "{}", o.stderr);
}
