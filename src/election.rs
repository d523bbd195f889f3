//! The election: etcd's campaign recipe, the lease kept alive, and resignation.
//!
//! This module owns everything that talks to etcd. It runs on its own thread, driving the async
//! `etcd-client` with a single-threaded tokio runtime, and reports to `main` over a channel:
//! renewals (with the send time of the keep-alive that succeeded), who leads, when this candidate
//! is elected, and when leadership is lost. It never touches the child process and it does not
//! decide when the child must stop: `main` enforces the renew deadline from the renewals reported
//! here, on a clock this thread cannot stall.
//!
//! The recipe is the one of etcd's `concurrency/election.go`, so `etcdctl elect -l LOCK` shows our
//! leader: a lease; the key `LOCK/<lease id in hex>` holding our identity, created only if absent;
//! the key with the lowest create revision under `LOCK/` leads; every other candidate watches the
//! deletion of its immediate predecessor only. Unlike Go's `Campaign`, we check that our own key
//! still exists before we lead, and requeue if it does not.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, GetResponse,
    Identity, KeyValue, PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchFilterType, WatchOptions,
};
use log::{debug, info, warn};
use tokio::sync::oneshot;

use crate::config::Config;

/// What the election thread tells `main`.
#[derive(Debug)]
pub enum Event {
    /// A keep-alive (or the grant) sent at `sent` succeeded: the lease lives until at least
    /// `sent + ttl` on the server.
    Renewed {
        sent: Instant,
        ttl: Duration,
    },
    /// The identity at the head of the queue, when known.
    Leader(Option<String>),
    /// etcd could not be reached; repeated only when the cause changes.
    Unreachable(String),
    Reachable,
    Elected {
        key: String,
        revision: i64,
    },
    /// Leadership is gone; the child must stop now.
    Lost(String),
    /// etcd refused us for good (e.g. credentials): retrying cannot help.
    Fatal(String),
    /// The lease is revoked (or could not be, and will expire): the next candidate may start.
    Resigned,
}

/// Lets `main` ask the election thread to give up its place, once.
pub struct Handle {
    resign: Option<oneshot::Sender<()>>,
}

impl Handle {
    pub fn resign(&mut self) {
        if let Some(tx) = self.resign.take() {
            let _ = tx.send(());
        }
    }
}

pub fn spawn(cfg: Config, tx: Sender<crate::Event>) -> std::io::Result<Handle> {
    let (resign_tx, resign_rx) = oneshot::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("election".into())
        .spawn(move || rt.block_on(run(cfg, tx, resign_rx)))?;
    Ok(Handle {
        resign: Some(resign_tx),
    })
}

/// Our place in the queue.
struct Seat {
    lease: i64,
    ttl: Duration,
    key: String,
    revision: i64,
}

enum Outcome {
    Lost(String),
    Fatal(String),
}

type Result<T> = std::result::Result<T, etcd_client::Error>;

struct Election {
    cfg: Rc<Config>,
    prefix: String,
    etcd: Etcd,
    tx: Sender<crate::Event>,
    lease: Option<i64>,
    failing: Option<String>,
}

async fn run(cfg: Config, tx: Sender<crate::Event>, mut resign: oneshot::Receiver<()>) {
    let send = |e| {
        let _ = tx.send(crate::Event::Election(e));
    };
    let client = match connect(&cfg).await {
        Ok(c) => c,
        Err(e) => return send(Event::Fatal(format!("cannot set up the etcd client: {e}"))),
    };
    let cfg = Rc::new(cfg);
    let mut el = Election {
        prefix: format!("{}/", cfg.lock_name),
        etcd: Etcd {
            cfg: cfg.clone(),
            client: Rc::new(RefCell::new(client)),
        },
        cfg,
        tx: tx.clone(),
        lease: None,
        failing: None,
    };
    let outcome = tokio::select! {
        biased;
        _ = &mut resign => None,
        o = el.elect_and_lead() => Some(o),
    };
    match outcome {
        Some(Outcome::Fatal(why)) => {
            el.resign().await;
            return send(Event::Fatal(why));
        }
        Some(Outcome::Lost(why)) => {
            send(Event::Lost(why));
            // `main` resigns once the child is gone; until then the lease must stay ours.
            let _ = resign.await;
        }
        None => {}
    }
    el.resign().await;
    send(Event::Resigned);
}

async fn connect(cfg: &Config) -> Result<Client> {
    let mut opts = ConnectOptions::new()
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
    Client::connect(&cfg.endpoints, Some(opts)).await
}

/// Bounds every unary request: a silent connection must turn into an error we can act on.
fn op_timeout(cfg: &Config) -> Duration {
    Duration::from_secs(cfg.lease_ttl as u64).clamp(Duration::from_secs(2), Duration::from_secs(5))
}

async fn timed<T>(limit: Duration, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(etcd_client::Error::Internal(format!(
            "no answer within {limit:?}"
        ))),
    }
}

impl Election {
    fn send(&self, e: Event) {
        let _ = self.tx.send(crate::Event::Election(e));
    }

    fn client(&self) -> Client {
        self.etcd.client()
    }

    async fn elect_and_lead(&mut self) -> Outcome {
        loop {
            let seat = match self.join().await {
                Ok(s) => s,
                Err(e) => match self.backoff(e).await {
                    Ok(()) => continue,
                    Err(fatal) => return fatal,
                },
            };
            let keepalive = keep_alive(self.etcd.clone(), seat.lease, seat.ttl, self.tx.clone());
            tokio::pin!(keepalive);
            let turn = tokio::select! {
                why = &mut keepalive => {
                    info!("lost our place in the queue ({why}); joining again");
                    continue;
                }
                r = self.wait_turn(&seat) => r,
            };
            match turn {
                Ok(true) => {}
                Ok(false) => {
                    info!(
                        "our key {} was deleted while we waited; joining again",
                        seat.key
                    );
                    self.resign().await;
                    continue;
                }
                Err(e) => match self.backoff(e).await {
                    Ok(()) => continue,
                    Err(fatal) => return fatal,
                },
            }
            self.send(Event::Leader(Some(self.cfg.identity.clone())));
            self.send(Event::Elected {
                key: seat.key.clone(),
                revision: seat.revision,
            });
            return tokio::select! {
                why = &mut keepalive => Outcome::Lost(why),
                why = self.watch_own_key(&seat) => Outcome::Lost(why),
            };
        }
    }

    /// Takes a seat: adopts the live key our previous life left under our identity (so a
    /// restarted leader is not queued behind itself), or grants a lease and creates our key.
    async fn join(&mut self) -> Result<Seat> {
        let t = op_timeout(&self.cfg);
        let mut c = self.client();
        let existing = timed(
            t,
            c.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut seat = None;
        for kv in existing.kvs() {
            if kv.value() != self.cfg.identity.as_bytes() || kv.lease() == 0 {
                continue;
            }
            let sent = Instant::now();
            let ttl = timed(t, c.lease_time_to_live(kv.lease(), None)).await?;
            let usable = ttl.ttl() > 0
                && Duration::from_secs(ttl.granted_ttl() as u64) > self.cfg.renew_deadline;
            if seat.is_none() && usable {
                info!(
                    "adopting {} left by our previous life (lease {:x}, {}s left)",
                    String::from_utf8_lossy(kv.key()),
                    kv.lease(),
                    ttl.ttl()
                );
                self.renewed(sent, ttl.ttl());
                seat = Some(Seat {
                    lease: kv.lease(),
                    ttl: Duration::from_secs(ttl.granted_ttl() as u64),
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    revision: kv.create_revision(),
                });
            } else if ttl.ttl() > 0 {
                timed(t, c.lease_revoke(kv.lease())).await?;
            }
        }
        if let Some(seat) = seat {
            self.lease = Some(seat.lease);
            self.reachable();
            return Ok(seat);
        }

        let sent = Instant::now();
        let grant = timed(t, c.lease_grant(self.cfg.lease_ttl, None)).await?;
        self.lease = Some(grant.id());
        self.renewed(sent, grant.ttl());
        let key = format!("{}{:x}", self.prefix, grant.id());
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.cfg.identity.as_str(),
                Some(PutOptions::new().with_lease(grant.id())),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = timed(t, c.txn(txn)).await?;
        let revision = match resp.op_responses().first() {
            Some(TxnOpResponse::Get(g)) if !resp.succeeded() => {
                g.kvs().first().map_or(0, |kv| kv.create_revision())
            }
            _ => resp.header().map_or(0, |h| h.revision()),
        };
        debug!(
            "joined as {key} at revision {revision}, lease ttl {}s",
            grant.ttl()
        );
        self.reachable();
        let seat = Seat {
            lease: grant.id(),
            ttl: Duration::from_secs(grant.ttl() as u64),
            key,
            revision,
        };
        if self.cfg.force_acquire {
            self.depose_ahead_of(&seat).await?;
        }
        Ok(seat)
    }

    /// Force acquire: remove every key ahead of ours and revoke its lease, so the holder stops
    /// even if it cannot see the deletion; then wait until it can no longer be running.
    ///
    /// The holder stops its command before `send time of its last successful keep-alive + TTL`.
    /// Any keep-alive that succeeded was sent before our revoke completed, so waiting the full
    /// granted TTL from the revoke is enough. The remaining TTL read before revoking is not: a
    /// keep-alive landing between the read and the revoke extends the holder's view past it.
    async fn depose_ahead_of(&mut self, seat: &Seat) -> Result<()> {
        let t = op_timeout(&self.cfg);
        let mut c = self.client();
        let ahead = timed(
            t,
            c.get(
                self.prefix.as_str(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_max_create_revision(seat.revision - 1),
                ),
            ),
        )
        .await?;
        let mut until = Instant::now();
        for kv in ahead.kvs() {
            let mut granted = 0;
            if kv.lease() != 0 {
                let ttl = timed(t, c.lease_time_to_live(kv.lease(), None)).await?;
                if ttl.ttl() > 0 {
                    granted = ttl.granted_ttl();
                    match timed(t, c.lease_revoke(kv.lease())).await {
                        Ok(_) => {}
                        Err(e) if is_lease_not_found(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            timed(t, c.delete(kv.key(), None)).await?;
            until = until.max(Instant::now() + Duration::from_secs(granted as u64));
            warn!(
                "force acquire: deposed {:?} ({}); starting no earlier than {granted}s from now",
                String::from_utf8_lossy(kv.value()),
                String::from_utf8_lossy(kv.key()),
            );
        }
        tokio::time::sleep_until(until.into()).await;
        Ok(())
    }

    /// Waits until no key is ahead of ours. `Ok(false)` when our own key is gone.
    async fn wait_turn(&mut self, seat: &Seat) -> Result<bool> {
        let t = op_timeout(&self.cfg);
        let mut c = self.client();
        loop {
            // One read, one revision: who leads, who is just ahead of us, and are we still here.
            let head = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1);
            let predecessor = GetOptions::new()
                .with_prefix()
                .with_max_create_revision(seat.revision - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1);
            let txn = Txn::new().and_then([
                TxnOp::get(self.prefix.as_str(), Some(head)),
                TxnOp::get(self.prefix.as_str(), Some(predecessor)),
                TxnOp::get(seat.key.as_str(), None),
            ]);
            let resp = timed(t, c.txn(txn)).await?;
            let revision = resp.header().map_or(0, |h| h.revision());
            let gets: Vec<GetResponse> = resp
                .op_responses()
                .into_iter()
                .filter_map(|r| match r {
                    TxnOpResponse::Get(g) => Some(g),
                    _ => None,
                })
                .collect();
            let [head, predecessor, own] = gets.as_slice() else {
                return Err(etcd_client::Error::Internal("short txn response".into()));
            };
            let ours = own
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == seat.revision);
            if !ours {
                return Ok(false);
            }
            let Some(pred) = predecessor.kvs().first() else {
                return Ok(true);
            };
            self.send(Event::Leader(head.kvs().first().map(identity_of)));
            debug!(
                "waiting for {} ({}) to go",
                String::from_utf8_lossy(pred.key()),
                identity_of(pred)
            );
            wait_deleted(&mut c, pred.key(), revision + 1).await?;
        }
    }

    /// Returns why leadership ended: our key was deleted. The keep-alive loop reports the rest.
    async fn watch_own_key(&mut self, seat: &Seat) -> String {
        let t = op_timeout(&self.cfg);
        loop {
            let mut c = self.client();
            let check = async {
                let r = timed(t, c.get(seat.key.as_str(), None)).await?;
                let here = r
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == seat.revision);
                Ok::<_, etcd_client::Error>((here, r.header().map_or(0, |h| h.revision())))
            };
            match check.await {
                Ok((false, _)) => return format!("our key {} was deleted", seat.key),
                Ok((true, rev)) => {
                    if let Err(e) = wait_deleted(&mut c, seat.key.as_bytes(), rev + 1).await {
                        self.note_failure(&e).await;
                        tokio::time::sleep(self.cfg.retry_period).await;
                    }
                }
                Err(e) => {
                    self.note_failure(&e).await;
                    tokio::time::sleep(self.cfg.retry_period).await;
                }
            }
        }
    }

    async fn resign(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let mut c = self.client();
        match timed(op_timeout(&self.cfg), c.lease_revoke(lease)).await {
            Ok(_) => info!("resigned: revoked lease {lease:x}"),
            Err(e) if is_lease_not_found(&e) => {}
            Err(e) => warn!("could not revoke lease {lease:x} ({e}); it expires by itself"),
        }
    }

    fn renewed(&self, sent: Instant, ttl: i64) {
        self.send(Event::Renewed {
            sent,
            ttl: Duration::from_secs(ttl.max(0) as u64),
        });
    }

    fn reachable(&mut self) {
        if self.failing.take().is_some() {
            info!("etcd reachable again");
            self.send(Event::Reachable);
        }
    }

    async fn note_failure(&mut self, e: &etcd_client::Error) {
        let cause = describe(e);
        if self.failing.as_deref() != Some(cause.as_str()) {
            warn!("etcd: {cause}; retrying every {:?}", self.cfg.retry_period);
            self.send(Event::Unreachable(cause.clone()));
            self.failing = Some(cause);
        }
        self.etcd.after_failure(e).await;
    }

    async fn backoff(&mut self, e: etcd_client::Error) -> std::result::Result<(), Outcome> {
        if let Some(why) = fatal(&e) {
            return Err(Outcome::Fatal(why));
        }
        self.note_failure(&e).await;
        tokio::time::sleep(self.cfg.retry_period).await;
        Ok(())
    }
}

/// Keeps the lease alive about every TTL/3, one keep-alive in flight at a time so that each
/// success is matched to its send time. Returns only when the lease is gone.
async fn keep_alive(etcd: Etcd, lease: i64, ttl: Duration, tx: Sender<crate::Event>) -> String {
    let period = ttl / 3;
    let send = |sent: Instant, ttl: i64| {
        let _ = tx.send(crate::Event::Election(Event::Renewed {
            sent,
            ttl: Duration::from_secs(ttl as u64),
        }));
    };
    loop {
        let mut c = etcd.client();
        let sent = Instant::now();
        let (mut keeper, mut stream) = match timed(period, c.lease_keep_alive(lease)).await {
            Ok(ks) => ks,
            Err(e) if is_lease_not_found(&e) => return format!("lease {lease:x} expired"),
            Err(e) => {
                debug!("keep-alive: {e}");
                etcd.after_failure(&e).await;
                tokio::time::sleep(etcd.cfg.retry_period.min(period)).await;
                continue;
            }
        };
        // `lease_keep_alive` already sent one keep-alive and checked its answer.
        send(sent, ttl.as_secs() as i64);
        loop {
            tokio::time::sleep(period).await;
            let sent = Instant::now();
            let answer = timed(period, async {
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match answer {
                Ok(Some(r)) if r.ttl() > 0 => send(sent, r.ttl()),
                Ok(Some(_)) => return format!("lease {lease:x} expired"),
                Ok(None) => break,
                Err(e) => {
                    debug!("keep-alive: {e}");
                    etcd.after_failure(&e).await;
                    break;
                }
            }
        }
    }
}

/// Waits for the deletion of `key`, watching from `from` so that a deletion between our read and
/// the watch is not missed. An error means the stream broke: the caller reads again.
async fn wait_deleted(c: &mut Client, key: &[u8], from: i64) -> Result<()> {
    let opts = WatchOptions::new()
        .with_start_revision(from)
        .with_filters([WatchFilterType::NoPut]);
    let mut stream = c.watch(key, Some(opts)).await?;
    while let Some(resp) = stream.message().await? {
        if resp.canceled() {
            return Err(etcd_client::Error::WatchError(format!(
                "watch canceled: {}",
                resp.cancel_reason()
            )));
        }
        if resp
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            return Ok(());
        }
    }
    Err(etcd_client::Error::WatchError("watch stream ended".into()))
}

/// The client, shared by the campaign and the keep-alive loop so that either can replace it
/// when its connections went silent: a blackholed TCP connection is noticed only by timeouts,
/// and tonic would keep sending on it until its HTTP/2 ping fails.
#[derive(Clone)]
struct Etcd {
    cfg: Rc<Config>,
    client: Rc<RefCell<Client>>,
}

impl Etcd {
    fn client(&self) -> Client {
        self.client.borrow().clone()
    }

    async fn after_failure(&self, e: &etcd_client::Error) {
        if !is_silent(e) {
            return;
        }
        debug!("dropping etcd connections that stopped answering");
        match timed(op_timeout(&self.cfg), connect(&self.cfg)).await {
            Ok(c) => *self.client.borrow_mut() = c,
            Err(e) => debug!("reconnect: {e}"),
        }
    }
}

fn identity_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.value()).into_owned()
}

/// A request that timed out: the connection may be blackholed, so it should be rebuilt.
fn is_silent(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::Internal(m) if m.starts_with("no answer"))
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        _ => false,
    }
}

fn fatal(e: &etcd_client::Error) -> Option<String> {
    match e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) =>
        {
            Some(format!("etcd refused us: {}", s.message()))
        }
        _ => None,
    }
}

fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}
