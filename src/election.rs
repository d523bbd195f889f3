//! The election: etcd's campaign recipe, the lease kept alive, and resignation.
//!
//! This module owns the recipe; `etcd` owns the connection. It runs on its own thread, driving
//! the async `etcd-client` with a single-threaded tokio runtime, and reports to `main` over a
//! channel: renewals (with the send time of the keep-alive that succeeded), who leads, when this
//! candidate is elected, and when leadership is lost. It never touches the child process and it does not
//! decide when the child must stop: `main` enforces the renew deadline from the renewals reported
//! here, on a clock this thread cannot stall.
//!
//! The recipe is the one of etcd's `concurrency/election.go`, so `etcdctl elect -l LOCK` shows our
//! leader: a lease; the key `LOCK/<lease id in hex>` holding our identity, created only if absent;
//! the key with the lowest create revision under `LOCK/` leads; every other candidate watches the
//! deletion of its immediate predecessor only. Unlike Go's `Campaign`, we check that our own key
//! still exists before we lead, and requeue if it does not.
//!
//! For a rolling upgrade from the Go `etcd-await-election`, whose lock is the plain key `LOCK`
//! (created if absent, bound to its lease, polled), the winner of the queue also takes `LOCK`
//! the same way before it leads, waits for its deletion while an old replica holds it, and counts
//! its deletion while leading as being deposed.

use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, GetResponse, KeyValue, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse,
};
use log::{debug, info, warn};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::etcd::{
    describe, fatal, is_lease_not_found, is_replaced, kind, op_timeout, timed, wait_deleted, Etcd,
    Result,
};

/// What the election thread tells `main`.
#[derive(Debug)]
pub enum Event {
    /// A keep-alive (or the grant) sent at `sent` succeeded: the lease was reset to its full
    /// granted `ttl` and lives until at least `sent + ttl` on the server.
    Renewed { sent: Instant, ttl: Duration },
    /// The identity at the head of the queue, when known.
    Leader(Option<String>),
    /// An etcd request failed (`renewal`: a keep-alive).
    Failed { renewal: bool, kind: &'static str },
    /// etcd answers again after failures.
    Reachable,
    Elected {
        key: String,
        revision: i64,
        lease: i64,
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

struct Election {
    cfg: Rc<Config>,
    prefix: String,
    etcd: Etcd,
    tx: Sender<crate::Event>,
    lease: Option<i64>,
    /// Causes already logged since etcd last answered: a flapping cause (TLS alerts race the
    /// connection close) is logged once, not on every retry.
    failing: Vec<String>,
}

async fn run(cfg: Config, tx: Sender<crate::Event>, mut resign: oneshot::Receiver<()>) {
    let cfg = Rc::new(cfg);
    let mut el = Election {
        prefix: format!("{}/", cfg.lock_name),
        etcd: Etcd::new(cfg.clone()),
        cfg,
        tx,
        lease: None,
        failing: Vec::new(),
    };
    let outcome = tokio::select! {
        biased;
        _ = &mut resign => None,
        o = el.elect_and_lead() => Some(o),
    };
    match outcome {
        Some(Outcome::Fatal(why)) => {
            el.resign().await;
            return el.send(Event::Fatal(why));
        }
        Some(Outcome::Lost(why)) => {
            el.send(Event::Lost(why));
            // `main` resigns once the child is gone; until then the lease must stay ours.
            let _ = resign.await;
        }
        None => {}
    }
    el.resign().await;
    el.send(Event::Resigned);
}

impl Election {
    /// Our identity at `key`, bound to `lease`, only if the key does not exist; else reads it.
    fn put_if_absent(&self, key: &str, lease: i64) -> Txn {
        Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.cfg.identity.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)])
    }

    fn send(&self, e: Event) {
        let _ = self.tx.send(crate::Event::Election(e));
    }

    async fn client(&self) -> Result<Client> {
        self.etcd.client().await
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
                r = async {
                    // Deposing waits a TTL: inside this select!, so our own lease stays alive.
                    if self.cfg.force_acquire {
                        self.depose_ahead_of(&seat).await?;
                    }
                    self.wait_turn(&seat).await
                } => r,
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
                lease: seat.lease,
            });
            return tokio::select! {
                why = &mut keepalive => Outcome::Lost(why),
                why = self.watch_own_key(&seat) => Outcome::Lost(why),
            };
        }
    }

    /// Takes a seat: adopts the live key our previous life left under our identity (so a
    /// restarted leader is not queued behind itself), or grants a lease and creates our key.
    /// Then clears what the Go tool would clear at start: the legacy lock under our identity.
    async fn join(&mut self) -> Result<Seat> {
        let mut c = self.client().await?;
        let seat = match self.adopt(&mut c).await? {
            Some(seat) => seat,
            None => self.create(&mut c).await?,
        };
        self.lease = Some(seat.lease);
        self.reachable();
        if self.cfg.legacy_lock {
            let lock = self.cfg.lock_name.as_str();
            let stale = Txn::new()
                .when([
                    Compare::value(lock, CompareOp::Equal, self.cfg.identity.as_str()),
                    Compare::lease(lock, CompareOp::NotEqual, seat.lease),
                ])
                .and_then([TxnOp::delete(lock, None)]);
            if timed(op_timeout(&self.cfg), c.txn(stale))
                .await?
                .succeeded()
            {
                info!("deleted {lock} left under our identity by a previous life");
            }
        }
        Ok(seat)
    }

    async fn adopt(&mut self, c: &mut Client) -> Result<Option<Seat>> {
        let t = op_timeout(&self.cfg);
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
                // Renew it first, as the grant does for a new lease: `main` times the renew
                // deadline from a renewal, and what is left of the old life's TTL may be
                // shorter than that deadline.
                let sent = Instant::now();
                timed(t, c.lease_keep_alive(kv.lease())).await?;
                self.renewed(sent, ttl.granted_ttl());
                seat = Some(Seat {
                    lease: kv.lease(),
                    ttl: Duration::from_secs(ttl.granted_ttl() as u64),
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    revision: kv.create_revision(),
                });
            } else if ttl.ttl() > 0 {
                // A second key of ours (or one whose TTL no longer fits our renew deadline)
                // would only queue us behind ourselves.
                revoke(c, t, kv.lease()).await?;
            }
        }
        Ok(seat)
    }

    async fn create(&mut self, c: &mut Client) -> Result<Seat> {
        let t = op_timeout(&self.cfg);
        let sent = Instant::now();
        let grant = timed(t, c.lease_grant(self.cfg.lease_ttl, None)).await?;
        self.lease = Some(grant.id());
        self.renewed(sent, grant.ttl());
        let key = format!("{}{:x}", self.prefix, grant.id());
        let resp = timed(t, c.txn(self.put_if_absent(&key, grant.id()))).await?;
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
        Ok(Seat {
            lease: grant.id(),
            ttl: Duration::from_secs(grant.ttl() as u64),
            key,
            revision,
        })
    }

    async fn depose_ahead_of(&mut self, seat: &Seat) -> Result<()> {
        let t = op_timeout(&self.cfg);
        let c = &mut self.client().await?;
        let mut ahead = timed(
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
        .await?
        .take_kvs();
        if self.cfg.legacy_lock {
            let lock = timed(t, c.get(self.cfg.lock_name.as_str(), None)).await?;
            ahead.extend(
                lock.kvs()
                    .iter()
                    .filter(|kv| kv.lease() != seat.lease)
                    .cloned(),
            );
        }
        let mut until = Instant::now();
        for kv in &ahead {
            let mut granted = 0;
            if kv.lease() != 0 {
                let ttl = timed(t, c.lease_time_to_live(kv.lease(), None)).await?;
                if ttl.ttl() > 0 {
                    granted = ttl.granted_ttl();
                    revoke(c, t, kv.lease()).await?;
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
        loop {
            let mut c = self.client().await?;
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
                let Some((holder, revision)) = self.take_legacy_lock(&mut c, seat).await? else {
                    return Ok(true);
                };
                info!(
                    "{holder:?} (an old etcd-await-election) holds {}; waiting for it to go",
                    self.cfg.lock_name
                );
                self.send(Event::Leader(Some(holder)));
                wait_deleted(&self.etcd, self.cfg.lock_name.as_bytes(), revision + 1).await?;
                continue;
            };
            self.send(Event::Leader(head.kvs().first().map(identity_of)));
            debug!(
                "waiting for {} ({}) to go",
                String::from_utf8_lossy(pred.key()),
                identity_of(pred)
            );
            wait_deleted(&self.etcd, pred.key(), revision + 1).await?;
        }
    }

    /// With the legacy lock on: takes the plain key `LOCK` for our lease, as the Go tool would.
    /// Returns its holder and the read's revision when someone else has it.
    async fn take_legacy_lock(
        &mut self,
        c: &mut Client,
        seat: &Seat,
    ) -> Result<Option<(String, i64)>> {
        if !self.cfg.legacy_lock {
            return Ok(None);
        }
        let txn = self.put_if_absent(&self.cfg.lock_name, seat.lease);
        let resp = timed(op_timeout(&self.cfg), c.txn(txn)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(match resp.op_responses().first() {
            Some(TxnOpResponse::Get(g)) => g
                .kvs()
                .first()
                .filter(|kv| kv.lease() != seat.lease)
                .map(|kv| (identity_of(kv), revision)),
            _ => None,
        })
    }

    /// Returns why leadership ended: our key (or the legacy lock) was deleted. The keep-alive
    /// loop reports the rest.
    async fn watch_own_key(&mut self, seat: &Seat) -> String {
        let t = op_timeout(&self.cfg);
        let cfg = self.cfg.clone();
        let legacy = cfg.legacy_lock.then_some(cfg.lock_name.as_str());
        loop {
            let check = async {
                let mut ops = vec![TxnOp::get(seat.key.as_str(), None)];
                ops.extend(legacy.map(|l| TxnOp::get(l, None)));
                let r = timed(t, self.client().await?.txn(Txn::new().and_then(ops))).await?;
                let lost = r.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(g)
                        if g.kvs().first().is_none_or(|kv| kv.lease() != seat.lease) =>
                    {
                        Some(g)
                    }
                    _ => None,
                });
                Ok::<_, etcd_client::Error>((
                    lost.is_none(),
                    r.header().map_or(0, |h| h.revision()),
                ))
            };
            match check.await {
                Ok((false, _)) => return "our key was deleted (deposed)".to_string(),
                Ok((true, rev)) => {
                    self.reachable();
                    let legacy_gone = async {
                        match legacy {
                            Some(l) => wait_deleted(&self.etcd, l.as_bytes(), rev + 1).await,
                            None => std::future::pending().await,
                        }
                    };
                    let r = tokio::select! {
                        r = wait_deleted(&self.etcd, seat.key.as_bytes(), rev + 1) => r,
                        r = legacy_gone => r,
                    };
                    match r {
                        Err(e) if !is_replaced(&e) => {
                            self.note_failure(&e);
                            tokio::time::sleep(self.cfg.retry_period).await;
                        }
                        // Deleted, or a new connection: read again to tell which.
                        _ => {}
                    }
                }
                Err(e) => {
                    self.note_failure(&e);
                    tokio::time::sleep(self.cfg.retry_period).await;
                }
            }
        }
    }

    /// Revokes our lease, retrying on failure: until it is revoked the next candidate waits a
    /// whole TTL. Gives up once the lease would have expired anyway (or after 8 s, within
    /// `main`'s backstop).
    async fn resign(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let budget = Duration::from_secs(self.cfg.lease_ttl as u64).min(Duration::from_secs(8));
        let give_up = Instant::now() + budget;
        loop {
            let revoke = async {
                let mut c = self.client().await?;
                timed(op_timeout(&self.cfg), c.lease_revoke(lease)).await
            };
            let e = match revoke.await {
                Ok(_) => return info!("resigned: revoked lease {lease:x}"),
                Err(e) if is_lease_not_found(&e) => return,
                Err(e) => e,
            };
            if Instant::now() + self.cfg.retry_period >= give_up {
                return warn!("could not revoke lease {lease:x} ({e}); it expires by itself");
            }
            debug!("revoking lease {lease:x}: {e}; retrying");
            self.etcd.after_failure(&e);
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    fn renewed(&self, sent: Instant, ttl: i64) {
        report_renewal(&self.tx, sent, ttl);
    }

    fn reachable(&mut self) {
        if !self.failing.is_empty() {
            self.failing.clear();
            info!("etcd reachable again");
            self.send(Event::Reachable);
        }
    }

    fn note_failure(&mut self, e: &etcd_client::Error) {
        self.send(Event::Failed {
            renewal: false,
            kind: kind(e),
        });
        let cause = describe(e);
        if !self.failing.contains(&cause) && self.failing.len() < 8 {
            warn!("etcd: {cause}; retrying every {:?}", self.cfg.retry_period);
            self.failing.push(cause);
        }
        self.etcd.after_failure(e);
    }

    async fn backoff(&mut self, e: etcd_client::Error) -> std::result::Result<(), Outcome> {
        if let Some(why) = fatal(&e) {
            return Err(Outcome::Fatal(why));
        }
        if is_replaced(&e) {
            return Ok(());
        }
        self.note_failure(&e);
        tokio::time::sleep(self.cfg.retry_period).await;
        Ok(())
    }
}

/// Keeps the lease alive, one keep-alive in flight at a time so that each success is matched to
/// its send time. Returns only when the lease is gone.
///
/// The period is a third of the TTL or of the renew deadline, whichever is shorter, and a
/// keep-alive unanswered for a period is given up and retried on a fresh connection: one lost
/// answer must not cost the leadership.
async fn keep_alive(etcd: Etcd, lease: i64, ttl: Duration, tx: Sender<crate::Event>) -> String {
    let period = ttl.min(etcd.cfg.renew_deadline) / 3;
    let send = |sent: Instant, ttl: i64| report_renewal(&tx, sent, ttl);
    let failed = |e: &etcd_client::Error| {
        debug!("keep-alive: {e}");
        let _ = tx.send(crate::Event::Election(Event::Failed {
            renewal: true,
            kind: kind(e),
        }));
        etcd.after_failure(e);
    };
    loop {
        let sent = Instant::now();
        let attempt = async { timed(period, etcd.client().await?.lease_keep_alive(lease)).await };
        let (mut keeper, mut stream) = match attempt.await {
            Ok(ks) => ks,
            Err(e) if is_lease_not_found(&e) => return format!("lease {lease:x} expired"),
            Err(e) => {
                failed(&e);
                // Renewing is urgent: the renew deadline runs. Retry well within a period.
                tokio::time::sleep(etcd.cfg.retry_period.min(period / 4)).await;
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
                Ok(None) => {
                    failed(&etcd_client::Error::LeaseKeepAliveError(
                        "stream ended".into(),
                    ));
                    break;
                }
                Err(e) => {
                    failed(&e);
                    break;
                }
            }
        }
    }
}

/// Revokes a lease that may have expired (or been revoked) since it was read.
async fn revoke(c: &mut Client, t: Duration, lease: i64) -> Result<()> {
    match timed(t, c.lease_revoke(lease)).await {
        Err(e) if !is_lease_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

/// A renewal sent at `sent` succeeded with this TTL (seconds, as etcd reports it).
fn report_renewal(tx: &Sender<crate::Event>, sent: Instant, ttl: i64) {
    let _ = tx.send(crate::Event::Election(Event::Renewed {
        sent,
        ttl: Duration::from_secs(ttl.max(0) as u64),
    }));
}

fn identity_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.value()).into_owned()
}
