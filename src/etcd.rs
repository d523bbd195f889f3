//! The gateway to etcd: the one way the election talks to it. It builds the client (endpoints,
//! TLS, credentials), bounds every request in time, replaces connections that failed, watches
//! for changes, and turns every failure into an [`Error`] of the wrapper's own. What an error
//! means (retry or give up) is `failure`'s concern; what the keys mean is the election's.
//!
//! Callers never hold a raw client: each method takes the current connection, applies the
//! request bound ([`op_timeout`]) and, on a failure that may be the connection's, drops it so
//! that the next request talks to the next member.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, GetResponse, Identity, LeaseGrantResponse,
    LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveResponse, TlsOptions, Txn, TxnResponse,
};
use log::debug;
use tokio::sync::Notify;

use crate::config::Config;

mod watch;

/// Why a request to etcd failed.
#[derive(Debug)]
pub enum Error {
    /// etcd, the connection or the TLS stack refused or failed it, in their own words.
    Etcd(etcd_client::Error),
    /// No answer within this bound: the connection may be blackholed.
    NoAnswer(Duration),
    /// A watch given up because its connection was replaced: nothing to log or wait for.
    Replaced,
    /// A watch or keep-alive stream ended, or etcd canceled it.
    Interrupted(String),
    /// The lease is gone (expired or revoked): not a failure to retry, an answer.
    LeaseGone,
    /// etcd's answer lacks what the request asked for.
    Malformed(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Error {
        let gone = match &e {
            etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
            etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
            _ => false,
        };
        if gone {
            Error::LeaseGone
        } else {
            Error::Etcd(e)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Etcd(e) => f.write_str(&describe(e)),
            Error::NoAnswer(limit) => write!(f, "no answer within {limit:?}"),
            Error::Replaced => f.write_str("connection replaced"),
            Error::Interrupted(why) => f.write_str(why),
            Error::LeaseGone => f.write_str("lease not found"),
            Error::Malformed(what) => write!(f, "etcd's answer lacks {what}"),
        }
    }
}

impl Error {
    /// A failure that may be the connection's rather than the request's: a timed-out request may
    /// mean a blackholed connection, a connection error one that tonic keeps reporting after the
    /// server is back, and a token issued before a change of etcd's users or roles (JWT tokens
    /// carry the auth revision) is refused until the client authenticates again, which a new
    /// connection does (etcd_client refreshes only an expired token).
    fn of_connection(&self) -> bool {
        match self {
            Error::Etcd(etcd_client::Error::TransportError(_)) | Error::NoAnswer(_) => true,
            Error::Etcd(etcd_client::Error::GRpcStatus(s)) => {
                s.code() == tonic::Code::Unavailable || is_old_auth_revision(s)
            }
            _ => false,
        }
    }
}

/// etcd's refusal of a token issued before the last change of its users or roles.
pub fn is_old_auth_revision(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::InvalidArgument
        && s.message().contains("revision of auth store is old")
}

/// The whole chain of causes: tonic's own message is only "transport error", and the useful
/// part (connection refused, unknown certificate issuer, ...) is in the sources.
fn describe(e: &etcd_client::Error) -> String {
    let mut out = match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    };
    // etcd_client::Error keeps its cause inside the variant, without `source()`.
    let mut source = match e {
        etcd_client::Error::TransportError(t) => std::error::Error::source(t),
        etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
        _ => None,
    };
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = cause.source();
    }
    out
}

async fn connect(cfg: &Config, endpoint: &str) -> std::result::Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new()
        .with_auto_token_refresh(true)
        // A member cut off from the raft leader fails requests and watches at once instead of
        // holding them: we move on to the next member.
        .with_require_leader(true)
        .with_connect_timeout(
            cfg.retry_period
                .clamp(Duration::from_secs(1), op_timeout(cfg)),
        )
        // etcd closes connections that ping more often than every 5 s (too_many_pings).
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(tls) = &cfg.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(t);
    }
    if let Some((user, password)) = &cfg.user {
        opts = opts.with_user(user, &password.0);
    }
    Client::connect([endpoint], Some(opts)).await
}

/// Builds a client once, without credentials (so no request is made), to reject at start-up a
/// TLS setup that can never work, such as a key that does not match its certificate.
pub fn check_tls(cfg: &Config) -> std::result::Result<(), String> {
    if cfg.tls.is_none() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let cfg = Config {
        user: None,
        ..cfg.clone()
    };
    rt.block_on(connect(&cfg, &cfg.endpoints[0]))
        .map(drop)
        .map_err(|e| describe(&e))
}

/// Bounds every unary request: a silent connection must turn into an error we can act on.
pub fn op_timeout(cfg: &Config) -> Duration {
    Duration::from_secs(cfg.lease_ttl as u64).clamp(Duration::from_secs(2), Duration::from_secs(5))
}

/// The connection, shared by the campaign and the keep-alive loop, built on first use (with etcd
/// authentication, building it is a request) and dropped by either when its connections fail:
/// a blackholed TCP connection is noticed only by our timeouts, and tonic would keep sending on
/// it until its HTTP/2 ping fails.
#[derive(Clone)]
pub struct Etcd {
    cfg: Rc<Config>,
    /// The bound of one request.
    limit: Duration,
    client: Rc<RefCell<Option<Client>>>,
    /// Held while a client is built: two requests finding none build one, not two (with
    /// authentication, each build is a request, and each failed one moves to the next member).
    building: Rc<tokio::sync::Mutex<()>>,
    /// Index into the endpoints of the member the next client talks to.
    member: Rc<Cell<usize>>,
    /// Wakes watches still running on the dropped client's connections.
    replaced: Rc<Notify>,
    /// How many clients were dropped so far: a watch kept open between waits (a `Follow`)
    /// was made on a replaced connection if this moved since.
    replacements: Rc<Cell<u64>>,
}

impl Etcd {
    pub fn new(cfg: Rc<Config>) -> Etcd {
        Etcd {
            limit: op_timeout(&cfg),
            cfg,
            client: Rc::new(RefCell::new(None)),
            building: Rc::new(tokio::sync::Mutex::new(())),
            member: Rc::new(Cell::new(0)),
            replaced: Rc::new(Notify::new()),
            replacements: Rc::new(Cell::new(0)),
        }
    }

    /// The bound of one request.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// The same connection, each request bounded by `limit` instead: for requests that share a
    /// bound of their own ([`Etcd::within`]), such as a renewal and its confirmation.
    pub fn bounded(&self, limit: Duration) -> Etcd {
        Etcd {
            limit,
            ..self.clone()
        }
    }

    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<GetOptions>,
    ) -> Result<GetResponse> {
        let key = key.into();
        self.call(|mut c| async move { c.get(key, opts).await })
            .await
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.call(|mut c| async move { c.txn(txn).await }).await
    }

    pub async fn grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        self.call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await
    }

    /// Renews a lease once.
    pub async fn renew(&self, lease: i64) -> Result<()> {
        self.call(|mut c| async move { c.lease_keep_alive(lease).await.map(drop) })
            .await
    }

    /// Opens a keep-alive stream for a lease; it was renewed once on the way (etcd_client sends a
    /// keep-alive and checks its answer).
    pub async fn keep_alive(&self, lease: i64) -> Result<KeepAlive> {
        let (keeper, stream) = self
            .call(|mut c| async move { c.lease_keep_alive(lease).await })
            .await?;
        Ok(KeepAlive { keeper, stream })
    }

    /// What is left of a lease (`None`: gone, expired or revoked).
    pub async fn time_to_live(&self, lease: i64) -> Result<Option<LeaseTimeToLiveResponse>> {
        let ttl = self.call(|mut c| async move { c.lease_time_to_live(lease, None).await });
        match ttl.await {
            Ok(r) if r.ttl() >= 0 => Ok(Some(r)),
            Ok(_) | Err(Error::LeaseGone) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Revokes a lease ([`Error::LeaseGone`]: it was gone already).
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        self.call(|mut c| async move { c.lease_revoke(lease).await.map(drop) })
            .await
    }

    /// `f` on the current connection, within the request bound.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let request = async { Ok(f(self.client().await?).await?) };
        self.within(self.limit(), request).await
    }

    /// `f` within `limit`, with the bookkeeping of a failure: for requests made of several (a
    /// renewal and its confirmation) that share one bound.
    pub async fn within<T>(
        &self,
        limit: Duration,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let r = match tokio::time::timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(Error::NoAnswer(limit)),
        };
        r.inspect_err(|e| self.after_failure(e))
    }

    /// A client of one member at a time. tonic's balancer would spread requests over all
    /// endpoints, but it cannot tell a blackholed member (TCP accepted, nothing answered) from
    /// a healthy one and keeps choosing it; a wrapper makes a request every few seconds and
    /// needs failover, not balance. After a failure, the next client talks to the next member.
    async fn client(&self) -> Result<Client> {
        let existing = self.client.borrow().clone();
        if let Some(c) = existing {
            return Ok(c);
        }
        let _building = self.building.lock().await;
        let existing = self.client.borrow().clone();
        if let Some(c) = existing {
            return Ok(c);
        }
        let endpoints = &self.cfg.endpoints;
        let endpoint = &endpoints[self.member.get() % endpoints.len()];
        let connecting = async { Ok(connect(&self.cfg, endpoint).await?) };
        let bound = op_timeout(&self.cfg);
        let c = match tokio::time::timeout(bound, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(self.next_member(e)),
            Err(_) => return Err(self.next_member(Error::NoAnswer(bound))),
        };
        debug!("talking to etcd at {endpoint}");
        *self.client.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    fn next_member(&self, e: Error) -> Error {
        self.member.set(self.member.get() + 1);
        e
    }

    /// Starts afresh after a failure that may be the connection's.
    fn after_failure(&self, e: &Error) {
        if e.of_connection() && self.client.borrow_mut().take().is_some() {
            debug!("dropping etcd connections after: {e}");
            self.member.set(self.member.get() + 1);
            self.replacements.set(self.replacements.get() + 1);
            self.replaced.notify_waiters();
        }
    }
}

/// A lease's keep-alive stream, one renewal in flight at a time.
pub struct KeepAlive {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl KeepAlive {
    /// Renews once; returns the TTL etcd reset the lease to (seconds). Unbounded: the caller
    /// bounds it with the confirmation that follows ([`Etcd::within`]).
    pub async fn renew(&mut self) -> Result<i64> {
        self.keeper.keep_alive().await?;
        match self.stream.message().await? {
            Some(r) if r.ttl() > 0 => Ok(r.ttl()),
            Some(_) => Err(Error::LeaseGone),
            None => Err(Error::Interrupted("keep-alive stream ended".into())),
        }
    }
}
