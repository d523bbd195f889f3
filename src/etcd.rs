//! The connection to etcd: building the client (endpoints, TLS, credentials), bounding every
//! request in time, replacing connections that failed, and watching for a change. What an
//! error means (retry or give up) is `failure`'s concern.
//!
//! It knows nothing of elections; `election` builds the recipe on top of it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, Event as WatchEvent, EventType, GetOptions, Identity,
    TlsOptions, WatchOptions,
};
use log::debug;
use tokio::sync::Notify;

use crate::config::Config;
use crate::failure::{describe, is_no_answer, no_answer, replaced};

pub type Result<T> = std::result::Result<T, etcd_client::Error>;

async fn connect(cfg: &Config, endpoint: &str) -> Result<Client> {
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

pub async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(no_answer(limit)),
    }
}

/// Waits for any change of `key` (deleted, or put again: a holder record re-bound to a fence),
/// watching from `from` so that a change between our read and the watch is not missed. An error
/// means the stream broke, or its connection was replaced (a watch on a dead connection would
/// otherwise wait for tonic's HTTP/2 ping to notice): the caller reads again.
pub async fn wait_changed(etcd: &Etcd, key: &[u8], from: i64) -> Result<()> {
    next_events(etcd, key, from).await.map(drop)
}

/// As [`wait_changed`], returning the changes seen (none when the key changed before the watch
/// was created: read it).
pub async fn next_events(etcd: &Etcd, key: &[u8], from: i64) -> Result<Vec<WatchEvent>> {
    wait_event(etcd, key, None, from, &|_| true).await
}

/// The kind of the first change of `key` at revision `from` or later, as etcd's history has it
/// (`None`: none within the request bound, or compacted away).
pub async fn first_change(etcd: &Etcd, key: &[u8], from: i64) -> Result<Option<EventType>> {
    let mut c = etcd.client().await?;
    let opts = WatchOptions::new().with_start_revision(from);
    let first = async {
        let mut stream = c.watch(key, Some(opts)).await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                return Ok(None);
            }
            if let Some(e) = resp.events().first() {
                return Ok(Some(e.event_type()));
            }
        }
        Ok(None)
    };
    match timed(op_timeout(&etcd.cfg), first).await {
        Err(e) if is_no_answer(&e) => Ok(None),
        r => r,
    }
}

/// Waits for a change of a key in `[key, end)` for which `relevant` holds, as [`wait_changed`]
/// does for one key, except that when the store moved on before the watch was created it returns
/// at once: the caller reads again. Changes of other keys in the range (the job's own data under
/// a lock's prefix) are passed over on the same stream.
pub async fn wait_range_changed(
    etcd: &Etcd,
    key: &[u8],
    end: &[u8],
    from: i64,
    relevant: &dyn Fn(&WatchEvent) -> bool,
) -> Result<()> {
    wait_event(etcd, key, Some(end), from, relevant)
        .await
        .map(drop)
}

async fn wait_event(
    etcd: &Etcd,
    key: &[u8],
    end: Option<&[u8]>,
    from: i64,
    relevant: &dyn Fn(&WatchEvent) -> bool,
) -> Result<Vec<WatchEvent>> {
    let new_connection = etcd.replaced.notified();
    let watch = async {
        let mut opts = WatchOptions::new().with_start_revision(from);
        if let Some(end) = end {
            opts = opts.with_range(end);
        }
        let mut c = etcd.client().await?;
        let mut stream = c.watch(key, Some(opts)).await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                return Err(etcd_client::Error::WatchError(format!(
                    "watch canceled: {}",
                    resp.cancel_reason()
                )));
            }
            let events = resp.events();
            if events.iter().any(relevant) {
                return Ok(events.to_vec());
            }
            // A watch that starts in the past is caught up by etcd's sync loop, every 100 ms:
            // when the store moved on before the watch was created, look at the key at once.
            let moved = resp.header().is_some_and(|h| h.revision() >= from);
            if resp.created() && moved {
                let changed = match end {
                    Some(_) => true,
                    None => changed_since(etcd, &mut c, key, from).await?,
                };
                if changed {
                    return Ok(Vec::new());
                }
            }
        }
        Err(etcd_client::Error::WatchError("watch stream ended".into()))
    };
    tokio::select! {
        r = watch => r,
        _ = new_connection => Err(replaced()),
    }
}

/// Whether `key` was put or deleted at revision `from` or later.
async fn changed_since(etcd: &Etcd, c: &mut Client, key: &[u8], from: i64) -> Result<bool> {
    let t = op_timeout(&etcd.cfg);
    let keys_only = || Some(GetOptions::new().with_keys_only());
    if let Some(kv) = timed(t, c.get(key, keys_only())).await?.kvs().first() {
        return Ok(kv.mod_revision() >= from);
    }
    // Gone now: was it there before `from`? (Compacted: assume it changed, and read again.)
    let before = GetOptions::new().with_keys_only().with_revision(from - 1);
    Ok(match timed(t, c.get(key, Some(before))).await {
        Ok(r) => !r.kvs().is_empty(),
        Err(_) => true,
    })
}

/// The client, shared by the campaign and the keep-alive loop, built on first use (with etcd
/// authentication, building it is a request) and dropped by either when its connections fail:
/// a blackholed TCP connection is noticed only by our timeouts, and tonic would keep sending on
/// it until its HTTP/2 ping fails.
#[derive(Clone)]
pub struct Etcd {
    pub cfg: Rc<Config>,
    client: Rc<RefCell<Option<Client>>>,
    /// Index into the endpoints of the member the next client talks to.
    member: Rc<Cell<usize>>,
    /// Wakes watches still running on the dropped client's connections.
    replaced: Rc<Notify>,
}

impl Etcd {
    pub fn new(cfg: Rc<Config>) -> Etcd {
        Etcd {
            cfg,
            client: Rc::new(RefCell::new(None)),
            member: Rc::new(Cell::new(0)),
            replaced: Rc::new(Notify::new()),
        }
    }

    /// A client of one member at a time. tonic's balancer would spread requests over all
    /// endpoints, but it cannot tell a blackholed member (TCP accepted, nothing answered) from
    /// a healthy one and keeps choosing it; a wrapper makes a request every few seconds and
    /// needs failover, not balance. After a failure, the next client talks to the next member.
    pub async fn client(&self) -> Result<Client> {
        let existing = self.client.borrow().clone();
        if let Some(c) = existing {
            return Ok(c);
        }
        let endpoints = &self.cfg.endpoints;
        let endpoint = &endpoints[self.member.get() % endpoints.len()];
        let c = match timed(op_timeout(&self.cfg), connect(&self.cfg, endpoint)).await {
            Ok(c) => c,
            Err(e) => {
                self.member.set(self.member.get() + 1);
                return Err(e);
            }
        };
        debug!("talking to etcd at {endpoint}");
        *self.client.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    pub fn after_failure(&self, e: &etcd_client::Error) {
        // A timed-out request may mean a blackholed connection; a connection error may be one
        // that tonic keeps reporting after the server is back. Either way: start afresh.
        let connection = match e {
            etcd_client::Error::TransportError(_) => true,
            etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::Unavailable,
            e => is_no_answer(e),
        };
        if connection {
            debug!("dropping etcd connections after: {e}");
            if self.client.borrow_mut().take().is_some() {
                self.member.set(self.member.get() + 1);
                self.replaced.notify_waiters();
            }
        }
    }
}
