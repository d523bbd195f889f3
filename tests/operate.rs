//! What an operator relies on without reading the source: the status endpoints, options that
//! win over the environment, `--help`/`--version`, and the log formats.

mod common;

use std::process::Command;
use std::time::Duration;

use common::candidate::{wrapper_bin, Candidate};
use common::etcd::Etcd;
use common::invariant::Monitor;
use common::{free_port, http, metric, wait_for, wait_until, TempDir};

fn get(c: &Candidate, path: &str) -> (u16, String) {
    wait_for(Duration::from_secs(5), &format!("GET {path}"), || {
        http("GET", &c.status_url(path), Duration::from_secs(2))
    })
}

#[test]
fn status_endpoints_on_leader_and_follower() {
    let etcd = Etcd::start();
    let dir = TempDir::new("operate-status");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let spawn = |id: &str| {
        Candidate::new(id)
            .lock("operate")
            .endpoints(&etcd.endpoint())
            .lease(3)
            .renew("2s")
            .retry("300ms")
            .status_port(free_port())
            .log(&log)
            .spawn()
    };
    let a = spawn("a");
    mon.wait_for_start(Some("a"), Duration::from_secs(10));
    let b = spawn("b");
    wait_until(Duration::from_secs(5), "b sees a as leader", || {
        get(&b, "/").1.contains(r#""leader":"a""#)
    });

    assert_eq!(get(&a, "/readyz").0, 200);
    assert_eq!(get(&b, "/readyz").0, 503);
    assert_eq!(get(&a, "/healthz"), (200, r#"{"status":"ok"}"#.to_string()));
    assert_eq!(get(&b, "/healthz").0, 200);

    let (code, body) = get(&a, "/");
    assert_eq!(code, 200);
    assert!(
        body.starts_with(r#"{"status":"ok","phase":"running","leader":"a","identity":"a","#),
        "{body}"
    );
    for field in [r#""lease_id":""#, r#""revision":"#, r#""last_renewal":""#] {
        assert!(body.contains(field), "{field} missing in {body}");
    }

    let (_, m) = get(&a, "/metrics");
    assert!(m.contains("\netcd_await_election_leader 1\n"), "{m}");
    assert!(
        m.contains("\netcd_await_election_leadership_transitions_total 1\n"),
        "{m}"
    );
    assert!(
        m.contains("\netcd_await_election_child_starts_total 1\n"),
        "{m}"
    );
    let renewals = metric(&m, "etcd_await_election_renewals_total")
        .unwrap_or_else(|| panic!("no renewals_total in {m}"));
    assert!(renewals >= 1, "{m}");
    let (_, m) = get(&b, "/metrics");
    assert!(m.contains("\netcd_await_election_leader 0\n"), "{m}");

    assert_eq!(get(&a, "/nope").0, 404);
    let post = http("POST", &a.status_url("/"), Duration::from_secs(2)).expect("an answer to POST");
    assert_eq!(post.0, 405);
    mon.assert_no_overlap();
}

/// A paused etcd: the leader's `/healthz` turns 503 once half the renew deadline passed without
/// a renewal, and back to 200 after etcd resumes, the command untouched all along.
#[test]
fn healthz_follows_renewals() {
    let etcd = Etcd::start();
    let dir = TempDir::new("operate-health");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let a = Candidate::new("a")
        .lock("health")
        .endpoints(&etcd.endpoint())
        .lease(8)
        .renew("6s")
        .retry("300ms")
        .status_port(free_port())
        .log(&log)
        .spawn();
    mon.wait_for_start(Some("a"), Duration::from_secs(10));
    assert_eq!(get(&a, "/healthz").0, 200);

    etcd.pause();
    wait_until(
        Duration::from_secs(5),
        "healthz 503 while etcd is paused",
        || get(&a, "/healthz").0 == 503,
    );
    let (_, body) = get(&a, "/healthz");
    assert!(body.contains(r#""status":"failing""#), "{body}");
    etcd.resume();
    wait_until(Duration::from_secs(5), "healthz 200 after resume", || {
        get(&a, "/healthz").0 == 200
    });
    assert_eq!(mon.starts().len(), 1, "{}", mon.timeline());
    assert_eq!(mon.running_identities(), ["a"]);
}

#[test]
fn options_win_over_the_environment() {
    let etcd = Etcd::start();
    let dir = TempDir::new("operate-options");
    let log = dir.join("log");
    let mon = Monitor::start(&log);
    let port = free_port();
    let mut cmd = Command::new(wrapper_bin());
    cmd.env("ETCD_AWAIT_ELECTION_IDENTITY", "from-env")
        .env("ETCD_AWAIT_ELECTION_LOCK_NAME", "env-lock")
        .env("EAE_TEST_LOG", &log)
        .args(["--identity", "from-flag", "--lock-name=flag-lock"])
        .args(["--endpoints", &etcd.endpoint(), "--lease-duration", "3"])
        .args(["--renew-deadline", "2s", "--retry-period=300ms"])
        .args(["--status-endpoint", &format!("127.0.0.1:{port}"), "--"])
        .args([common::records::child_bin(), "--exit-after", "300"]);
    let status = cmd.status().expect("run the wrapper");
    assert!(status.success(), "{status:?}");
    // The child inherits the environment, not the options: its records carry the env identity.
    let start = mon.wait_for_start(None, Duration::from_secs(1));
    assert_eq!(start.identity, "from-env");
    assert!(etcd.get_prefix_keys("env-lock").is_empty());
    assert!(etcd.get_prefix_keys("flag-lock").is_empty());
    assert_eq!(etcd.lease_count(), 0);
    let out = Command::new(wrapper_bin())
        .env("ETCD_AWAIT_ELECTION_IDENTITY", "x")
        .args(["--lock-name", "l", "--endpoints", "nonsense", "true"])
        .output()
        .expect("run the wrapper");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ETCD_AWAIT_ELECTION_ENDPOINTS"));
}

#[test]
fn help_and_version() {
    let help = Command::new(wrapper_bin())
        .arg("--help")
        .output()
        .expect("run");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for var in [
        "LOCK_NAME",
        "IDENTITY",
        "ENDPOINTS",
        "STATUS_ENDPOINT",
        "LEASE_DURATION",
        "RENEW_DEADLINE",
        "RETRY_PERIOD",
        "CERT",
        "KEY",
        "CACERT",
        "USERNAME",
        "PASSWORD_FILE",
        "FORCE_ACQUIRE",
        "LEGACY_LOCK",
        "LOG_LEVEL",
        "LOG_FORMAT",
    ] {
        assert!(
            text.contains(&format!("ETCD_AWAIT_ELECTION_{var}")),
            "{var} missing"
        );
    }
    for code in ["75", "77", "78", "126", "127"] {
        assert!(
            text.contains(&format!("  {code} ")),
            "exit code {code} missing"
        );
    }
    assert!(text.contains("Example:"));
    let version = Command::new(wrapper_bin())
        .arg("--version")
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!(
            "etcd-await-election {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            env!("EAE_GIT_COMMIT")
        )
    );
    let bad = Command::new(wrapper_bin())
        .args(["--no-such-option", "true"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(64));
}

/// One config error, rendered three ways.
#[test]
fn log_formats() {
    let run = |envs: &[(&str, &str)]| {
        let out = Command::new(wrapper_bin())
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env("ETCD_AWAIT_ELECTION_LOCK_NAME", "l")
            .envs(envs.iter().copied())
            .arg("true")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(78));
        String::from_utf8_lossy(&out.stderr).trim_end().to_string()
    };
    let text = run(&[]);
    assert!(
        text.starts_with("20") && text.contains("Z ERROR ETCD_AWAIT_ELECTION_IDENTITY:"),
        "{text}"
    );
    let journald = run(&[("JOURNAL_STREAM", "8:1234")]);
    assert!(
        journald.starts_with("ERROR ETCD_AWAIT_ELECTION_IDENTITY:"),
        "{journald}"
    );
    let json = run(&[("ETCD_AWAIT_ELECTION_LOG_FORMAT", "json")]);
    assert!(json.starts_with(r#"{"ts":""#), "{json}");
    assert!(
        json.contains(r#""level":"error""#) && json.ends_with('}') && !json.contains('\n'),
        "{json}"
    );
    let out = Command::new(wrapper_bin())
        .env("ETCD_AWAIT_ELECTION_LOG_FORMAT", "xml")
        .arg("true")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ETCD_AWAIT_ELECTION_LOG_FORMAT"));
}
