//! What went wrong with etcd, and whether retrying can help. Every error from etcd, TLS and the
//! connection is classified here into a [`Cause`]: transient (the server is unreachable, slow,
//! without a raft leader, busy: retrying cures it) or permanent (a certificate that cannot be
//! verified or is rejected, credentials or rights etcd refuses, a request etcd will always
//! refuse: only a changed configuration cures it), with the variable a user has to fix. It also
//! decides when a permanent failure ends the wrapper at start-up ([`Startup`]). It decides
//! nothing else: `etcd` makes the errors, `election` retries or gives up, `status` reports.
//!
//! The wrapper's own failures (no answer in time, a stream ended) are variants of
//! [`etcd::Error`]. etcd's are read from its gRPC code and words; tonic reports TLS failures under
//! whatever gRPC code the connection was in (`Unavailable`, `Unknown`, `Cancelled`), with rustls's
//! words only in the message or the error's sources, so TLS failures are recognised by those
//! words in the whole chain of causes.

use std::fmt;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::config;
use crate::etcd::{is_old_auth_revision, Error};
use crate::format::cut;

/// Why an etcd request failed. The first six are transient, the rest permanent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// No connection: refused, reset, closed, name not resolved.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// The member has no raft leader.
    NoLeader,
    /// The server is there but cannot serve now (leader changed, too many requests, ...).
    Unavailable,
    /// A watch or keep-alive stream ended, or was given up for a new connection.
    Interrupted,
    /// Anything not recognised: retried, as giving up on an unknown error could take a healthy
    /// fleet down.
    Other,
    /// The server's certificate does not verify against `CACERT`.
    ServerCertificate,
    /// The server's certificate is valid but not for the host named in `ENDPOINTS`.
    ServerName,
    /// The endpoint does not speak TLS although `CACERT` is set.
    NotTls,
    /// The server rejected our client certificate (or its absence).
    ClientCertificate,
    /// Another TLS handshake refusal (no common protocol version or cipher).
    Tls,
    /// etcd refuses the lease TTL.
    LeaseTtl,
    /// etcd refuses a request as invalid (e.g. too large).
    InvalidRequest,
    /// An answer larger than the client takes (4 MiB): a value under the lock's prefix bigger
    /// than etcd's default request limit allows, or a batch of watch events over such values.
    TooLarge,
    /// etcd allows fewer operations in one transaction (`--max-txn-ops`) than a candidate puts
    /// in one (`queue::with_identity` compares a page of the queue at once).
    TooManyOps,
    /// The etcd user has no rights on the lock's keys.
    PermissionDenied,
    /// Credentials are given but the server does not have authentication enabled.
    AuthNotEnabled,
    /// Wrong user name or password.
    Credentials,
}

impl Cause {
    /// Retrying cannot cure it: the configuration (ours or the server's) must change.
    pub fn permanent(self) -> bool {
        self >= Cause::ServerCertificate
    }

    /// The label of the `cause` dimension in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Unreachable => "unreachable",
            Cause::Timeout => "timeout",
            Cause::NoLeader => "no_leader",
            Cause::Unavailable => "unavailable",
            Cause::Interrupted => "interrupted",
            Cause::Other => "other",
            Cause::ServerCertificate => "server_certificate",
            Cause::ServerName => "server_name",
            Cause::NotTls => "not_tls",
            Cause::ClientCertificate => "client_certificate",
            Cause::Tls => "tls",
            Cause::LeaseTtl => "lease_ttl",
            Cause::InvalidRequest => "invalid_request",
            Cause::TooLarge => "too_large",
            Cause::TooManyOps => "too_many_ops",
            Cause::PermissionDenied => "permission_denied",
            Cause::AuthNotEnabled => "auth_not_enabled",
            Cause::Credentials => "credentials",
        }
    }

    /// For a permanent cause: the variables to fix, and what is wrong.
    fn remedy(self) -> Option<(String, &'static str)> {
        use config::{
            CACERT, CERT, ENDPOINTS, IDENTITY, KEY, LEASE_DURATION, LOCK_NAME, PASSWORD, USERNAME,
        };
        let (vars, what): (&[&str], _) = match self {
            Cause::ServerCertificate => (
                &[CACERT],
                "the etcd server's certificate cannot be verified with this CA",
            ),
            Cause::ServerName => (
                &[ENDPOINTS],
                "the etcd server's certificate is not valid for this host name",
            ),
            Cause::NotTls => (&[ENDPOINTS, CACERT], "the endpoint does not speak TLS"),
            Cause::ClientCertificate => (
                &[CERT, KEY],
                "the etcd server rejected our client certificate (missing, expired or not \
                 signed by a CA it trusts)",
            ),
            Cause::Tls => (
                &[CACERT, CERT, KEY],
                "the etcd server refused the TLS handshake",
            ),
            Cause::LeaseTtl => (&[LEASE_DURATION], "etcd refuses this lease TTL"),
            Cause::InvalidRequest => (&[LOCK_NAME, IDENTITY], "etcd refuses our request"),
            Cause::TooLarge => (
                &[LOCK_NAME],
                "a value under the lock's prefix (another client's key, or the job's data) is \
                 too large for one answer: keep large values out of the lock's key range",
            ),
            Cause::TooManyOps => (
                &[ENDPOINTS],
                "the etcd server allows fewer operations in one transaction (its --max-txn-ops) \
                 than the 64 a candidate needs (etcd's default is 128)",
            ),
            Cause::PermissionDenied => (
                &[USERNAME, LOCK_NAME],
                "the etcd user has no read/write permission on the lock's key range",
            ),
            Cause::AuthNotEnabled => (
                &[USERNAME, PASSWORD],
                "credentials are given but authentication is not enabled on the etcd server",
            ),
            Cause::Credentials => (&[USERNAME, PASSWORD], "etcd refused our credentials"),
            _ => return None,
        };
        Some((vars.join("/"), what))
    }
}

/// One failed request: its cause and etcd's (or the TLS stack's) own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub cause: Cause,
    pub detail: String,
}

/// A permanent failure names the variables to fix first, like a configuration error.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cause.remedy() {
            Some((vars, what)) => write!(f, "{vars}: {what} ({})", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

/// The most of a failure's words kept: etcd's own are a line, and whatever answers at an
/// endpoint (a proxy, a stranger) must not fill the status and the logs (which escape it).
const MAX_DETAIL: usize = 1024;

pub fn classify(e: &Error) -> Failure {
    let text = e.to_string();
    Failure {
        cause: cause_of(e, &text),
        detail: cut(&text, MAX_DETAIL).into_owned(),
    }
}

fn cause_of(e: &Error, text: &str) -> Cause {
    if let Some(tls) = tls_cause(text) {
        return tls;
    }
    let message = |m: &str| text.contains(m);
    let connection = || {
        [
            "onnection refused",
            "onnection reset",
            "connection closed",
            "broken pipe",
            "error trying to connect",
            "dns error",
            "failed to lookup",
        ]
        .iter()
        .any(|m| text.contains(m))
    };
    let status = match e {
        Error::NoAnswer(_) => return Cause::Timeout,
        Error::Replaced | Error::Interrupted(_) => return Cause::Interrupted,
        Error::LeaseGone | Error::Malformed(_) => return Cause::Other,
        Error::Etcd(etcd_client::Error::GRpcStatus(s)) => s,
        Error::Etcd(etcd_client::Error::WatchError(_))
        | Error::Etcd(etcd_client::Error::LeaseKeepAliveError(_)) => return Cause::Interrupted,
        Error::Etcd(etcd_client::Error::TransportError(_))
        | Error::Etcd(etcd_client::Error::IoError(_)) => return Cause::Unreachable,
        Error::Etcd(_) => return Cause::Other,
    };
    match status.code() {
        Code::OutOfRange if message("lease TTL") => Cause::LeaseTtl,
        Code::OutOfRange if message("message length too large") => Cause::TooLarge,
        Code::InvalidArgument | Code::FailedPrecondition
            if message("authentication failed")
                || message("user name is empty")
                || message("user name not found") =>
        {
            Cause::Credentials
        }
        Code::FailedPrecondition if message("authentication is not enabled") => {
            Cause::AuthNotEnabled
        }
        // Our token predates a change of etcd's users or roles: a new connection authenticates
        // again.
        _ if is_old_auth_revision(status) => Cause::Unavailable,
        Code::InvalidArgument if message("too many operations in txn request") => Cause::TooManyOps,
        Code::InvalidArgument => Cause::InvalidRequest,
        Code::PermissionDenied => Cause::PermissionDenied,
        Code::Unavailable if message("no leader") => Cause::NoLeader,
        Code::DeadlineExceeded => Cause::Timeout,
        _ if connection() => Cause::Unreachable,
        Code::Unavailable | Code::ResourceExhausted => Cause::Unavailable,
        _ => Cause::Other,
    }
}

/// rustls's words for a TLS failure, wherever tonic put them.
fn tls_cause(text: &str) -> Option<Cause> {
    if let Some(rest) = text.split("invalid peer certificate: ").nth(1) {
        return Some(if rest.starts_with("NotValidForName") {
            Cause::ServerName
        } else {
            Cause::ServerCertificate
        });
    }
    if let Some(alert) = text.split("received fatal alert: ").nth(1) {
        let certificate = [
            "BadCertificate",
            "CertificateRequired",
            "UnknownCA",
            "CertificateExpired",
            "CertificateRevoked",
            "CertificateUnknown",
            "UnsupportedCertificate",
            "AccessDenied",
        ];
        return Some(if certificate.iter().any(|c| alert.starts_with(c)) {
            Cause::ClientCertificate
        } else {
            Cause::Tls
        });
    }
    if text.contains("received corrupt message") {
        return Some(Cause::NotTls);
    }
    text.contains("peer is incompatible").then_some(Cause::Tls)
}

/// A permanent failure ends the wrapper only at start-up: before it ever joined the election,
/// and once a grace has passed that rides out a server still starting (or a certificate still
/// being issued). Once joined, the same failures are retried: a certificate rotated on the
/// servers must not take a fleet down.
pub struct Startup {
    since: Instant,
    grace: Duration,
    joined: bool,
    /// The last permanent failure seen while not joined.
    permanent: Option<Failure>,
}

impl Startup {
    pub fn new(retry_period: Duration) -> Startup {
        Startup {
            since: Instant::now(),
            grace: grace(retry_period),
            joined: false,
            permanent: None,
        }
    }

    /// etcd granted our lease and queued our key: the configuration works.
    pub fn joined(&mut self) {
        self.joined = true;
        self.permanent = None;
    }

    pub fn has_joined(&self) -> bool {
        self.joined
    }

    /// Notes a failure; returns why to give up, if it is time to. A permanent cause seen once
    /// counts even if later attempts fail otherwise: a rejected client certificate often shows
    /// only as a closed connection (with TLS 1.3 the server's alert races the close).
    pub fn give_up(&mut self, f: &Failure) -> Option<String> {
        if self.joined {
            return None;
        }
        if f.cause.permanent() {
            self.permanent = Some(f.clone());
        }
        let waited = self.since.elapsed();
        if waited < self.grace {
            return None;
        }
        self.permanent.as_ref().map(|p| {
            format!(
                "{p}; giving up at start-up after {:.1}s without joining the election",
                waited.as_secs_f64()
            )
        })
    }
}

/// The start-up grace: 5 s, or three retry periods if that is longer.
pub fn grace(retry_period: Duration) -> Duration {
    retry_period.saturating_mul(3).max(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> Error {
        Error::Etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
            code, message,
        )))
    }

    fn cause(e: Error) -> Cause {
        classify(&e).cause
    }

    // Texts as tonic and etcd 3.4/3.5 report them (see tests/security.rs).

    #[test]
    fn too_few_operations_allowed_names_etcds_setting() {
        let e = status(
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        let f = classify(&e);
        assert_eq!(f.cause, Cause::TooManyOps);
        assert!(f.cause.permanent());
        assert!(f.to_string().contains("--max-txn-ops"), "{f}");
    }

    #[test]
    fn an_answer_too_large_names_the_lock() {
        let e = status(
            Code::OutOfRange,
            "Error, decoded message length too large: found 5242960 bytes, the limit is: \
             4194304 bytes",
        );
        let f = classify(&e);
        assert_eq!(f.cause, Cause::TooLarge);
        assert!(f.cause.permanent());
        assert!(f.to_string().starts_with(config::LOCK_NAME), "{f}");
    }

    #[test]
    fn unreachable() {
        for e in [
            status(
                Code::Unavailable,
                "error trying to connect: tcp connect error: Connection refused (os error 111)",
            ),
            status(
                Code::Cancelled,
                "operation was canceled: transport error: connection closed",
            ),
            status(
                Code::Unknown,
                "transport error: connection error: stream closed because of a broken pipe",
            ),
            status(
                Code::Unavailable,
                "error trying to connect: dns error: failed to lookup",
            ),
        ] {
            assert_eq!(cause(e), Cause::Unreachable);
        }
    }

    #[test]
    fn timeout() {
        assert_eq!(
            cause(Error::NoAnswer(Duration::from_secs(2))),
            Cause::Timeout
        );
        assert_eq!(
            cause(status(
                Code::DeadlineExceeded,
                "etcdserver: request timed out"
            )),
            Cause::Timeout
        );
    }

    #[test]
    fn no_leader() {
        let e = status(Code::Unavailable, "etcdserver: no leader");
        assert_eq!(cause(e), Cause::NoLeader);
    }

    #[test]
    fn unavailable() {
        for e in [
            status(Code::Unavailable, "etcdserver: leader changed"),
            status(Code::ResourceExhausted, "etcdserver: too many requests"),
        ] {
            assert_eq!(cause(e), Cause::Unavailable);
        }
    }

    #[test]
    fn a_server_message_is_kept_bounded() {
        let long = format!("etcdserver: no leader\n{}", "x".repeat(1 << 20));
        let f = classify(&status(Code::Unavailable, &long));
        assert_eq!(f.cause, Cause::NoLeader);
        assert!(f.detail.len() < 2 * MAX_DETAIL, "{}", f.detail.len());
        assert!(f.detail.ends_with(" bytes left out)"), "{}", f.detail);
    }

    #[test]
    fn interrupted() {
        assert_eq!(cause(Error::Replaced), Cause::Interrupted);
        assert_eq!(
            cause(Error::Interrupted("watch stream ended".into())),
            Cause::Interrupted
        );
    }

    #[test]
    fn unknown_errors_are_retried() {
        let e = status(Code::Internal, "something new");
        assert_eq!(cause(e), Cause::Other);
        // A compacted watch revision is OutOfRange too, and only needs a new read.
        let e = status(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert!(!cause(e).permanent());
        let e = status(Code::Unauthenticated, "etcdserver: invalid auth token");
        assert!(!cause(e).permanent(), "the client refreshes its token");
    }

    #[test]
    fn server_certificate() {
        let e = status(
            Code::Unavailable,
            "invalid peer certificate: UnknownIssuer: transport error",
        );
        let f = classify(&e);
        assert_eq!(f.cause, Cause::ServerCertificate);
        let line = f.to_string();
        assert!(
            line.starts_with("ETCD_AWAIT_ELECTION_CACERT: ") && line.contains("UnknownIssuer"),
            "{line}"
        );
        let e = status(Code::Unavailable, "invalid peer certificate: Expired");
        assert_eq!(cause(e), Cause::ServerCertificate);
    }

    #[test]
    fn server_name() {
        let e = status(
            Code::Unavailable,
            "invalid peer certificate: NotValidForNameContext { expected: .. }",
        );
        assert_eq!(cause(e), Cause::ServerName);
    }

    #[test]
    fn not_tls() {
        let e = status(
            Code::Unavailable,
            "received corrupt message of type InvalidContentType",
        );
        assert_eq!(cause(e), Cause::NotTls);
    }

    #[test]
    fn client_certificate() {
        // Refused within the handshake (etcd 3.5.1's older Go), or after it when the alert wins
        // the race with the close (3.4.23, 3.5.34, 3.6.15).
        let e = status(
            Code::Unavailable,
            "received fatal alert: BadCertificate: transport error",
        );
        assert_eq!(cause(e), Cause::ClientCertificate);
        // Current 3.5 and 3.6 name the problem; Debian's 3.4 says BadCertificate for any.
        for alert in [
            "BadCertificate",
            "CertificateExpired",
            "CertificateRequired",
            "UnknownCA",
        ] {
            let e = status(
                Code::Unknown,
                &format!("transport error: connection error: received fatal alert: {alert}"),
            );
            let f = classify(&e);
            assert_eq!(f.cause, Cause::ClientCertificate, "{alert}");
            assert!(
                f.to_string()
                    .starts_with("ETCD_AWAIT_ELECTION_CERT/ETCD_AWAIT_ELECTION_KEY: "),
                "{f}"
            );
        }
    }

    #[test]
    fn tls() {
        let e = status(Code::Unknown, "received fatal alert: HandshakeFailure");
        assert_eq!(cause(e), Cause::Tls);
    }

    #[test]
    fn lease_ttl() {
        let e = status(Code::OutOfRange, "etcdserver: too large lease TTL");
        let f = classify(&e);
        assert_eq!(f.cause, Cause::LeaseTtl);
        assert!(f.to_string().contains("ETCD_AWAIT_ELECTION_LEASE_DURATION"));
    }

    #[test]
    fn an_old_token_is_transient() {
        let e = status(
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        );
        assert_eq!(cause(e), Cause::Unavailable);
    }

    #[test]
    fn invalid_request() {
        let e = status(Code::InvalidArgument, "etcdserver: request is too large");
        assert_eq!(cause(e), Cause::InvalidRequest);
    }

    #[test]
    fn permission_denied() {
        let e = status(Code::PermissionDenied, "etcdserver: permission denied");
        assert_eq!(cause(e), Cause::PermissionDenied);
    }

    #[test]
    fn auth_not_enabled() {
        let e = status(
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        );
        assert_eq!(cause(e), Cause::AuthNotEnabled);
    }

    #[test]
    fn credentials() {
        for e in [
            status(
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            status(Code::FailedPrecondition, "etcdserver: user name not found"),
        ] {
            let f = classify(&e);
            assert_eq!(f.cause, Cause::Credentials);
            assert!(f.to_string().starts_with(
                "ETCD_AWAIT_ELECTION_USERNAME/ETCD_AWAIT_ELECTION_PASSWORD: etcd refused"
            ));
        }
    }

    #[test]
    fn lease_not_found_is_an_answer() {
        let e = etcd_client::Error::GRpcStatus(tonic::Status::new(
            Code::NotFound,
            "etcdserver: requested lease not found",
        ));
        assert!(matches!(Error::from(e), Error::LeaseGone));
    }

    #[test]
    fn startup_gives_up_only_after_the_grace_and_before_joining() {
        let permanent = classify(&status(Code::PermissionDenied, "permission denied"));
        let transient = classify(&status(Code::Unavailable, "etcdserver: no leader"));
        let mut s = Startup::new(Duration::from_millis(100));
        assert_eq!(s.give_up(&permanent), None, "within the grace");
        s.since -= s.grace;
        // Seen once, it still counts when the next attempt fails otherwise.
        let why = s.give_up(&transient).expect("gives up after the grace");
        assert!(why.starts_with("ETCD_AWAIT_ELECTION_USERNAME"), "{why}");
        s.joined();
        assert_eq!(s.give_up(&permanent), None, "once joined, retried");
        let mut only_transient = Startup::new(Duration::from_millis(100));
        only_transient.since -= only_transient.grace;
        assert_eq!(only_transient.give_up(&transient), None);
    }

    #[test]
    fn grace_is_five_seconds_or_three_retry_periods() {
        assert_eq!(grace(Duration::from_millis(300)), Duration::from_secs(5));
        assert_eq!(grace(Duration::from_secs(2)), Duration::from_secs(6));
    }
}
