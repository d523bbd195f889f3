//! The HTTP status endpoint (`/`, `/healthz`, `/readyz`, `/leader`, `/metrics`), answered from
//! memory.
//!
//! `main` is the only writer of the [`Snapshot`]; the server thread only reads a copy of it, so a
//! flood of requests costs no etcd request and cannot delay the election. This module does not
//! know how the snapshot's facts are learned. Every string it writes goes through one function
//! per format, [`string`] for JSON and [`label`] for metric labels, which escape it and cut it at
//! [`MAX_STRING`] bytes: some (the leader, a server's error message) come from outside.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::clock::Boot;
use crate::failure::{Cause, Failure};
use crate::format::{cut, escaped, json_string, rfc3339, Foreign};
use crate::http;
use crate::leader::{self, Leader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Awaiting,
    Running,
    Stopping,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Awaiting => "awaiting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub identity: String,
    pub lock: String,
    /// How long a leader may go without a counted renewal before `/healthz` says so (see
    /// `timing::renewal_overdue`), for the TTL of the last one.
    pub renewal_overdue: Duration,
    pub retry_period: Duration,
    pub phase: Phase,
    pub since: SystemTime,
    /// Who leads, as this candidate last saw it (see `election::Event::Leader`).
    pub leader: Option<Leader>,
    pub lease_id: Option<i64>,
    pub revision: Option<i64>,
    /// Wall time for people, boottime (suspends included, as the lease counts) for ages.
    pub last_renewal: Option<(SystemTime, Boot)>,
    /// Since when etcd has been failing us, if it is.
    pub failing_since: Option<Instant>,
    /// The last permanent failure, until etcd answers again: neither a transient failure (a
    /// rejected client certificate often shows as a closed connection) nor a successful
    /// keep-alive (renewing needs no rights on the lock) clears it.
    pub permanent: Option<Failure>,
    pub transitions: u64,
    pub renewals: u64,
    pub renewal_failures: u64,
    pub child_starts: u64,
    pub child_exit_code: Option<i32>,
    pub etcd_errors: BTreeMap<Cause, u64>,
    /// Only with a health check configured.
    pub health: Option<Health>,
}

/// The health check's counts, and its verdict once there is one.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub healthy: Option<bool>,
    pub checks: u64,
    pub failures: u64,
    pub transitions: u64,
}

#[derive(Clone)]
pub struct Shared(Arc<Mutex<Snapshot>>);

impl Shared {
    pub fn new(identity: &str, lock: &str, renewal_overdue: Duration, retry: Duration) -> Shared {
        Shared(Arc::new(Mutex::new(Snapshot {
            identity: identity.to_string(),
            lock: lock.to_string(),
            renewal_overdue,
            retry_period: retry,
            phase: Phase::Awaiting,
            since: SystemTime::now(),
            leader: None,
            lease_id: None,
            revision: None,
            last_renewal: None,
            failing_since: None,
            permanent: None,
            transitions: 0,
            renewals: 0,
            renewal_failures: 0,
            child_starts: 0,
            child_exit_code: None,
            etcd_errors: BTreeMap::new(),
            health: None,
        })))
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// An etcd request failed (`renewal`: a keep-alive).
    pub fn etcd_failed(&self, failure: Failure, renewal: bool) {
        self.update(|s| {
            *s.etcd_errors.entry(failure.cause).or_default() += 1;
            s.renewal_failures += u64::from(renewal);
            s.failing_since.get_or_insert_with(Instant::now);
            if failure.cause.permanent() {
                s.permanent = Some(failure);
            }
        });
    }

    /// etcd answers again after failures.
    pub fn etcd_answered(&self) {
        self.update(|s| {
            s.failing_since = None;
            s.permanent = None;
        });
    }

    fn get(&self) -> Snapshot {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Binds at once, so a bad or busy address is reported before the election starts; requests
/// are answered by [`crate::http`] from a copy of the snapshot.
pub fn serve(addr: &str, snapshot: Shared) -> Result<(), String> {
    http::serve(addr, move |method, target| {
        reply(method, target, &snapshot.get())
    })
}

const JSON: &str = "application/json";

/// A string longer than this is cut, saying how many bytes were left out.
const MAX_STRING: usize = 4096;

/// A JSON string of at most [`MAX_STRING`] bytes of `s`.
fn string(s: &str) -> String {
    json_string(&cut(s, MAX_STRING))
}

/// A metric label's value: control characters escaped (as `{:?}` does) and cut as [`string`],
/// then quoted as the Prometheus text format wants (`\` and `"` escaped).
fn label(s: &str) -> String {
    let shown = escaped(s, MAX_STRING);
    format!("\"{}\"", shown.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `/leader`: 307 to the leader's address when it is an http(s) URL, else 200 with the line
/// `--leader` prints; 503 when nobody leads (or this candidate does not know yet).
fn reply(method: &str, path: &str, s: &Snapshot) -> http::Answer {
    if path != "/leader" || !matches!(method, "GET" | "HEAD") {
        return answer(method, path, s).into();
    }
    let body = leader::json_line(s.leader.as_ref());
    match &s.leader {
        None => (503, JSON, body).into(),
        Some(l) => match leader::url(l) {
            Some(url) => http::Answer {
                location: Some(url.to_string()),
                ..(307, JSON, body).into()
            },
            None => (200, JSON, body).into(),
        },
    }
}

fn answer(method: &str, path: &str, s: &Snapshot) -> (u16, &'static str, String) {
    let known = matches!(path, "/" | "/healthz" | "/readyz" | "/leader" | "/metrics");
    if !known {
        return (404, JSON, r#"{"error":"not found"}"#.into());
    }
    if !matches!(method, "GET" | "HEAD") {
        return (405, JSON, r#"{"error":"method not allowed"}"#.into());
    }
    match path {
        "/" => (200, JSON, to_json(s)),
        "/healthz" => match health_problem(s) {
            None => (200, JSON, r#"{"status":"ok"}"#.into()),
            Some(why) => (
                503,
                JSON,
                format!(r#"{{"status":"failing","reason":{}}}"#, string(&why)),
            ),
        },
        "/readyz" if s.phase == Phase::Running => (200, JSON, r#"{"status":"leading"}"#.into()),
        "/readyz" => (503, JSON, r#"{"status":"not leading"}"#.into()),
        _ => (200, "text/plain; version=0.0.4", metrics(s)),
    }
}

/// Failing: a permanent etcd failure (at once: retrying will not cure it), etcd unreachable for
/// longer than the retry period, no counted renewal for longer than `timing::renewal_overdue`
/// while leading, or the command's group being stopped (leadership lost, or the command exited
/// and its leftovers are being stopped: either way the wrapper is ending).
fn health_problem(s: &Snapshot) -> Option<String> {
    if let Some(f) = &s.permanent {
        return Some(format!("etcd refuses us: {f}"));
    }
    if let Some(t) = s.failing_since.filter(|t| t.elapsed() > s.retry_period) {
        return Some(format!(
            "etcd failing for {:.1}s",
            t.elapsed().as_secs_f64()
        ));
    }
    match s.phase {
        Phase::Stopping => Some("stopping the command's process group".into()),
        Phase::Running => {
            let age = s.last_renewal.map(|(_, t)| t.elapsed());
            age.filter(|a| *a > s.renewal_overdue)
                .map(|a| format!("no lease renewal for {:.1}s", a.as_secs_f64()))
        }
        Phase::Awaiting => None,
    }
}

fn to_json(s: &Snapshot) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "null".into());
    // Added only with a health check: without one, the document is as it always was.
    let health = s.health.as_ref().map_or_else(String::new, |h| {
        let healthy = opt(h.healthy.map(|b| b.to_string()));
        format!(r#","healthy":{healthy}"#)
    });
    let mut json = format!(
        concat!(
            r#"{{"status":"ok","phase":"{}","leader":{},"identity":{},"lock":{},"#,
            r#""lease_id":{},"revision":{},"since":"{}","last_renewal":{},"leader_address":{}}}"#
        ),
        s.phase.as_str(),
        // Shown as the logs show it (escaped, cut): `/leader` gives the value as it is.
        string(
            &s.leader
                .as_ref()
                .map_or("unknown".into(), |l| { Foreign(&l.identity).to_string() })
        ),
        string(&s.identity),
        string(&s.lock),
        opt(s.lease_id.map(|l| string(&format!("{l:x}")))),
        opt(s.revision.map(|r| r.to_string())),
        rfc3339(s.since),
        opt(s.last_renewal.map(|(t, _)| string(&rfc3339(t)))),
        opt(s
            .leader
            .as_ref()
            .and_then(|l| l.address.as_deref())
            .map(string)),
    );
    json.insert_str(json.len() - 1, &health);
    json
}

/// One metric: its name after the prefix, its type, its help, and its samples (labels, value).
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

fn one(name: &'static str, kind: &'static str, help: &'static str, v: String) -> Metric {
    let samples = vec![(String::new(), v)];
    Metric {
        name,
        kind,
        help,
        samples,
    }
}

fn metrics(s: &Snapshot) -> String {
    let mut out = String::new();
    let health = s.health.as_ref().map(health_metrics).unwrap_or_default();
    for m in command_metrics(s)
        .into_iter()
        .chain(health)
        .chain(etcd_metrics(s))
    {
        let name = m.name;
        let _ = writeln!(out, "# HELP etcd_await_election_{name} {}", m.help);
        let _ = writeln!(out, "# TYPE etcd_await_election_{name} {}", m.kind);
        for (labels, value) in m.samples {
            let _ = writeln!(out, "etcd_await_election_{name}{labels} {value}");
        }
    }
    out
}

/// Leadership, renewals and the command.
fn command_metrics(s: &Snapshot) -> Vec<Metric> {
    let mut v = vec![
        one(
            "leader",
            "gauge",
            "1 while this instance runs the command.",
            u8::from(s.phase == Phase::Running).to_string(),
        ),
        one(
            "leadership_transitions_total",
            "counter",
            "Times this instance became leader.",
            s.transitions.to_string(),
        ),
        one(
            "renewals_total",
            "counter",
            "Successful lease renewals.",
            s.renewals.to_string(),
        ),
        one(
            "renewal_failures_total",
            "counter",
            "Failed lease keep-alive attempts.",
            s.renewal_failures.to_string(),
        ),
    ];
    v.extend(s.last_renewal.map(|(_, t)| {
        one(
            "seconds_since_renewal",
            "gauge",
            "Seconds since the send time of the last successful renewal.",
            format!("{:.3}", t.elapsed().as_secs_f64()),
        )
    }));
    v.push(one(
        "child_starts_total",
        "counter",
        "Times the command was started.",
        s.child_starts.to_string(),
    ));
    v.extend(s.child_exit_code.map(|code| {
        one(
            "child_exit_code",
            "gauge",
            "Exit code of the command's last run (128+N for signal N).",
            code.to_string(),
        )
    }));
    v
}

/// The health check's, when there is one.
fn health_metrics(h: &Health) -> Vec<Metric> {
    vec![
        one(
            "healthy",
            "gauge",
            "1 while the health check says healthy (0 before its first verdict).",
            u8::from(h.healthy == Some(true)).to_string(),
        ),
        one(
            "health_checks_total",
            "counter",
            "Health checks run.",
            h.checks.to_string(),
        ),
        one(
            "health_check_failures_total",
            "counter",
            "Health checks failed (a timeout included).",
            h.failures.to_string(),
        ),
        one(
            "health_transitions_total",
            "counter",
            "Times the verdict changed (HEALTH_FALL failures or HEALTH_RISE passes in a row).",
            h.transitions.to_string(),
        ),
    ]
}

/// etcd's failures, and the log's.
fn etcd_metrics(s: &Snapshot) -> Vec<Metric> {
    let errors = s.etcd_errors.iter();
    let refused = s.permanent.iter();
    vec![
        Metric {
            name: "etcd_errors_total",
            kind: "counter",
            help: "Failed etcd requests, by cause; permanent ones need a configuration change.",
            samples: errors
                .map(|(cause, n)| (cause_labels(*cause), n.to_string()))
                .collect(),
        },
        one(
            "log_lines_dropped_total",
            "counter",
            "Log lines dropped because stderr did not take them in time.",
            crate::logging::dropped().to_string(),
        ),
        Metric {
            name: "etcd_permanent_failure",
            kind: "gauge",
            help: "1 from a permanent etcd failure until etcd answers again (/healthz names what \
                   to fix).",
            samples: refused
                .map(|f| (cause_labels(f.cause), "1".to_string()))
                .collect(),
        },
    ]
}

fn cause_labels(cause: Cause) -> String {
    format!(
        "{{cause={},permanent={}}}",
        label(cause.label()),
        label(&cause.permanent().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let s = Shared::new(
            "me",
            "lock",
            Duration::from_secs(10),
            Duration::from_secs(2),
        );
        s.get()
    }

    #[test]
    fn compatible_json() {
        let (code, _, body) = answer("GET", "/", &snapshot());
        assert_eq!(code, 200);
        assert!(
            body.starts_with(r#"{"status":"ok","phase":"awaiting","leader":"unknown","#),
            "{body}"
        );
    }

    #[test]
    fn routes() {
        let s = snapshot();
        assert_eq!(answer("GET", "/nope", &s).0, 404);
        assert_eq!(answer("POST", "/", &s).0, 405);
        assert_eq!(answer("GET", "/readyz", &s).0, 503);
        assert_eq!(answer("GET", "/healthz", &s).0, 200);
        let mut leading = s.clone();
        leading.phase = Phase::Running;
        leading.last_renewal = Some((SystemTime::now(), Boot::now()));
        assert_eq!(answer("GET", "/readyz", &leading).0, 200);
        assert_eq!(answer("GET", "/healthz", &leading).0, 200);
        let (_, _, m) = answer("GET", "/metrics", &leading);
        assert!(m.contains("\netcd_await_election_leader 1\n"), "{m}");
    }

    #[test]
    fn strings_are_escaped_and_cut_in_both_formats() {
        assert_eq!(label("a\nb\"c\\\u{1b}"), r#""a\\nb\"c\\\\u{1b}""#);
        assert!(label(&"x".repeat(1 << 20)).ends_with(" bytes left out)\""));
        let mut s = snapshot();
        s.leader = Some(Leader {
            identity: format!("a\nb{}", "x".repeat(1 << 20)).into_bytes(),
            address: Some("x".repeat(1 << 20)),
            revision: None,
        });
        let (_, _, body) = answer("GET", "/", &s);
        assert!(body.len() < 3 * MAX_STRING, "{}", body.len());
        assert!(body.contains(r#""leader":"a\\nb"#), "{body}");
        assert!(!body.chars().any(char::is_control), "{body}");
    }

    #[test]
    fn leader_redirects_to_an_http_address_else_answers_the_line() {
        let mut s = snapshot();
        let r = reply("GET", "/leader", &s);
        assert_eq!(
            (r.code, r.body.as_str()),
            (503, leader::json_line(None).as_str())
        );
        let at = |address: &str| Leader {
            identity: b"b".to_vec(),
            address: Some(address.into()),
            revision: Some(9),
        };
        s.leader = Some(at("http://10.0.0.5:8080/"));
        let r = reply("GET", "/leader", &s);
        assert_eq!(r.code, 307);
        assert_eq!(r.location.as_deref(), Some("http://10.0.0.5:8080/"));
        let (_, _, body) = answer("GET", "/", &s);
        assert!(
            body.contains(r#""leader_address":"http://10.0.0.5:8080/""#),
            "{body}"
        );
        s.leader = Some(at("10.0.0.5:5432"));
        let r = reply("GET", "/leader", &s);
        assert_eq!((r.code, r.location), (200, None));
        assert_eq!(
            r.body,
            r#"{"leader":"b","address":"10.0.0.5:5432","revision":9}"#
        );
        assert_eq!(reply("POST", "/leader", &s).code, 405);
    }

    #[test]
    fn unhealthy_when_etcd_fails_longer_than_the_retry_period() {
        let mut s = snapshot();
        s.failing_since = Some(Instant::now() - Duration::from_secs(3));
        assert_eq!(answer("GET", "/healthz", &s).0, 503);
    }

    #[test]
    fn a_permanent_failure_is_unhealthy_at_once_and_counted_by_cause() {
        let shared = Shared::new(
            "me",
            "lock",
            Duration::from_secs(10),
            Duration::from_secs(2),
        );
        let refused = Failure {
            cause: Cause::ServerCertificate,
            detail: "invalid peer certificate: UnknownIssuer".into(),
        };
        shared.etcd_failed(refused.clone(), false);
        shared.etcd_failed(refused, false);
        let s = shared.get();
        let (code, _, body) = answer("GET", "/healthz", &s);
        assert_eq!(code, 503);
        assert!(body.contains("ETCD_AWAIT_ELECTION_CACERT"), "{body}");
        let (_, _, m) = answer("GET", "/metrics", &s);
        let labels = r#"{cause="server_certificate",permanent="true"}"#;
        assert!(
            m.contains(&format!(
                "\netcd_await_election_etcd_errors_total{labels} 2\n"
            )),
            "{m}"
        );
        assert!(
            m.contains(&format!(
                "\netcd_await_election_etcd_permanent_failure{labels} 1\n"
            )),
            "{m}"
        );
        // A transient failure next does not hide it; only an answer from etcd does.
        shared.etcd_failed(
            Failure {
                cause: Cause::Unreachable,
                detail: "connection closed".into(),
            },
            false,
        );
        assert_eq!(answer("GET", "/healthz", &shared.get()).0, 503);
        shared.etcd_answered();
        assert_eq!(answer("GET", "/healthz", &shared.get()).0, 200);
        let (_, _, m) = answer("GET", "/metrics", &shared.get());
        assert!(!m.contains("etcd_permanent_failure{"), "{m}");
    }
}
