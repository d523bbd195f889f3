//! The election: etcd's campaign recipe, the lease kept alive, and resignation.
//!
//! This module owns the recipe; `queue` owns the layout of the lock's keys, `force` the request
//! to yield, `adopt` what a restart finds under its identity, and `etcd` the connection. It runs
//! on its own thread, driving the async `etcd-client` with a single-threaded tokio runtime, and
//! reports to `main` over a channel: renewals (with the send time of the keep-alive that
//! succeeded), who leads, when this candidate is elected, and when leadership is lost. It never
//! touches the child process and it does not decide when the child must stop: `main` enforces the
//! renew deadline from the renewals reported here, on a clock this thread cannot stall.
//!
//! The recipe is the one of etcd's `concurrency/election.go`, so `etcdctl elect -l LOCK` shows our
//! leader: a lease; the key `LOCK/<lease id in hex>` holding our identity, created only if absent;
//! the oldest candidate key leads; every other candidate watches the deletion of its immediate
//! predecessor only. Three rules make it hold against other actors on the lock, and all live in
//! etcd, not in this process's memory:
//!
//! 1. A key vanishing is not its holder having stopped. Whoever runs the command holds the record
//!    `LOCK`, bound to its lease, which it revokes only once its command's group is empty. The head
//!    of the queue takes the record only if it is absent, and starts only then; a lease it saw
//!    ahead of it must be gone as well (keys deleted by hand). A leader whose group is empty hands
//!    the record to the next candidate (or to the forcer that asked it to yield) in the
//!    transaction that deletes its key, and the next
//!    starts on seeing it, without waiting for any lease: a handover costs one write.
//! 2. Nobody deletes a key but its own. Participants of etcd's own recipe on the lock (`etcdctl
//!    lock`) start once every key created before theirs is gone: a candidate's key goes only when
//!    that candidate cannot be running, or never ran.
//! 3. A renewal counts only if etcd can still commit and we still hold our place: each keep-alive
//!    is confirmed by a linearizable read of our key (and, leading, of the record). A member that
//!    answers keep-alives with a stalled raft loop (etcd-io/etcd#15247) cannot answer that read.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, Event as WatchEvent, EventType, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp, TxnOpResponse,
};
use log::{debug, info, warn};
use tokio::sync::{oneshot, Notify};

use crate::adopt::{self, Adoption};
use crate::clock::Boot;
use crate::config::Config;
use crate::etcd::{
    first_change, next_events, op_timeout, timed, wait_changed, wait_range_changed, Etcd, Result,
};
use crate::failure::{classify, is_lease_not_found, is_replaced, Cause, Failure, Startup};
use crate::force;
use crate::format::Foreign;
use crate::queue::{self, is_handed_over, unchanged, Candidate, Keys, Seat, Snapshot};
use crate::rights;
use crate::scan;

/// What the election thread tells `main`.
#[derive(Debug)]
pub enum Event {
    /// A keep-alive (or the grant) sent at `sent` succeeded and was confirmed: the lease was reset
    /// to its full granted `ttl` and lives until at least `sent + ttl` on the server.
    Renewed { sent: Boot, ttl: Duration },
    /// The identity at the head of the queue, when known.
    Leader(Option<String>),
    /// Our predecessor holds the record: we are next, and may be handed it at any moment.
    Next,
    /// An etcd request failed (`renewal`: a keep-alive).
    Failed { renewal: bool, failure: Failure },
    /// etcd answers again after failures.
    Reachable,
    Elected {
        key: String,
        revision: i64,
        lease: i64,
    },
    /// Leadership is gone; the child must stop now.
    Lost(String),
    /// A permanent failure at start-up (see `failure::Startup`): retrying cannot help.
    Fatal(String),
    /// Another live candidate renews a key under our identity: nothing was started.
    Twin(String),
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

enum Turn {
    Lead,
    /// Our key is gone: join again.
    Rejoin,
    /// A forcer goes first: join again behind it. A forcer ourselves, we do not ask again in
    /// this life (the first request stands).
    GiveWay,
    /// Another process with our identity adopted our key.
    Adopted,
}

enum Outcome {
    Lost(String),
    Fatal(String),
    Twin(String),
}

/// What became of our lease when we resigned.
enum Revoked {
    Yes,
    /// Our key was put again by a twin: the lease is its own now.
    Adopted,
    /// Our key was put again, then deleted, and the record is bound to our lease: see
    /// `Election::revoke`.
    Recorded,
}

/// Whom a leader hands the record to, read while it leads so that the hand-over needs no read.
enum Heir {
    /// The first candidate behind us (with its value, the identity the record will hold).
    Next(Option<KeyValue>),
    /// The forcer that asked us to yield, and nobody else: a candidate queued between us goes
    /// back in line behind it. `None`: it has no key any more; the lease is only revoked.
    Forcer(Option<KeyValue>),
}

/// How often the lease is renewed: a waiter at the lease's pace, a leader at its renew deadline's.
pub struct Pace {
    leading: Cell<bool>,
    changed: Notify,
}

impl Pace {
    fn set(&self, leading: bool) {
        if self.leading.replace(leading) != leading {
            self.changed.notify_one();
        }
    }

    fn period(&self, ttl: Duration, renew_deadline: Duration) -> Duration {
        crate::timing::keep_alive_period(self.leading.get(), ttl, renew_deadline)
    }
}

struct Election {
    cfg: Rc<Config>,
    keys: Rc<Keys>,
    etcd: Etcd,
    tx: Sender<crate::Event>,
    seat: Option<Seat>,
    /// Leases that may have run the command before us, seen in this seat's campaign (by the
    /// forcer too): their keys vanishing proves nothing, so they must be gone before we lead.
    seen: BTreeSet<i64>,
    /// We took (or were handed) the record: resigning hands it on.
    elected: bool,
    /// We went back in line behind a forcer: as a forcer, we do not ask again.
    gave_way: bool,
    /// Leading: whom the record goes to when we resign, as last read.
    heir: Heir,
    pace: Rc<Pace>,
    /// Causes already logged since etcd last answered: a flapping cause (TLS alerts race the
    /// connection close) is logged once, not on every retry.
    failing: Vec<Cause>,
    startup: Startup,
}

async fn run(cfg: Config, tx: Sender<crate::Event>, mut resign: oneshot::Receiver<()>) {
    let retry_period = cfg.retry_period;
    let cfg = Rc::new(cfg);
    let mut el = Election {
        keys: Rc::new(Keys::new(&cfg.lock_name)),
        etcd: Etcd::new(cfg.clone()),
        cfg,
        tx,
        seat: None,
        seen: BTreeSet::new(),
        elected: false,
        gave_way: false,
        heir: Heir::Next(None),
        pace: Rc::new(Pace {
            leading: Cell::new(false),
            changed: Notify::new(),
        }),
        failing: Vec::new(),
        startup: Startup::new(retry_period),
    };
    let outcome = tokio::select! {
        biased;
        _ = &mut resign => None,
        o = Box::pin(el.elect_and_lead()) => Some(o),
    };
    match outcome {
        Some(Outcome::Fatal(why)) => {
            el.resign().await;
            return el.send(Event::Fatal(why));
        }
        Some(Outcome::Twin(why)) => return el.send(Event::Twin(why)),
        Some(Outcome::Lost(why)) => {
            el.send(Event::Lost(why));
            // `main` resigns once the child's group is empty; until then the lease stays ours
            // (and with it the record that keeps everyone else waiting).
            match &el.seat {
                Some(seat) => {
                    let renew = Box::pin(keep_alive(el.keeper(seat)));
                    tokio::select! {
                        _ = &mut resign => {}
                        _ = renew => { let _ = resign.await; }
                    }
                }
                None => {
                    let _ = resign.await;
                }
            }
        }
        None => {}
    }
    el.resign().await;
    el.send(Event::Resigned);
}

impl Election {
    fn send(&self, e: Event) {
        let _ = self.tx.send(crate::Event::Election(e));
    }

    async fn client(&self) -> Result<Client> {
        self.etcd.client().await
    }

    fn keeper(&self, seat: &Seat) -> Keeper {
        Keeper {
            etcd: self.etcd.clone(),
            keys: self.keys.clone(),
            lease: seat.lease,
            own: seat.key.clone(),
            mod_revision: seat.mod_revision,
            ttl: seat.ttl,
            pace: self.pace.clone(),
            tx: self.tx.clone(),
        }
    }

    async fn elect_and_lead(&mut self) -> Outcome {
        loop {
            self.pace.set(false);
            let seat = match self.join().await {
                Ok(Some(s)) => s,
                Ok(None) => return Outcome::Twin(self.twin()),
                Err(e) => match self.backoff(e).await {
                    Ok(()) => continue,
                    Err(fatal) => return fatal,
                },
            };
            // Boxed, as the other large futures here: in a debug build their nested states
            // would overflow the thread's stack.
            let mut keepalive = Box::pin(keep_alive(self.keeper(&seat)));
            let turn = tokio::select! {
                why = &mut keepalive => {
                    info!("lost our place in the queue ({why}); joining again");
                    self.seat = None;
                    continue;
                }
                r = Box::pin(async {
                    if self.cfg.force_acquire && !self.gave_way {
                        let (etcd, keys, cfg) = (&self.etcd, &self.keys, &self.cfg);
                        let runner = Box::pin(force::request_yield(etcd, keys, cfg, &seat)).await?;
                        self.seen.extend(runner);
                    }
                    Box::pin(self.wait_turn(&seat)).await
                }) => r,
            };
            match turn {
                Ok(Turn::Lead) => {}
                Ok(Turn::GiveWay) => {
                    self.gave_way = true;
                    self.resign().await;
                    continue;
                }
                Ok(Turn::Rejoin) => {
                    self.resign().await;
                    continue;
                }
                // Our lease is another process's now: never revoke it.
                Ok(Turn::Adopted) => return Outcome::Twin(self.twin()),
                Err(e) => match self.backoff(e).await {
                    Ok(()) => continue,
                    Err(fatal) => return fatal,
                },
            }
            self.pace.set(true);
            self.elected = true;
            // Elected first: `main` starts the command before it takes in the rest.
            self.send(Event::Elected {
                key: seat.key.clone(),
                revision: seat.revision,
                lease: seat.lease,
            });
            self.send(Event::Leader(Some(self.cfg.identity.clone())));
            return tokio::select! {
                why = &mut keepalive => Outcome::Lost(why),
                why = Box::pin(self.watch_own_key(&seat)) => Outcome::Lost(why),
            };
        }
    }

    fn twin(&mut self) -> String {
        self.seat = None;
        format!(
            "{} {:?} is in use by another live candidate (it renews, or adopted, a key under this \
             identity); give every candidate its own identity",
            crate::config::IDENTITY,
            self.cfg.identity
        )
    }

    /// Takes a seat: adopts the key a dead previous life left under our identity (so a restarted
    /// leader is not queued behind itself), or grants a lease and creates our key. `None`: a live
    /// twin renews a key under our identity.
    async fn join(&mut self) -> Result<Option<Seat>> {
        let mut c = self.client().await?;
        if !self.startup.has_joined() {
            rights::prove(&mut c, &self.keys, &self.cfg).await?;
        }
        if let Some(seat) = self.seat.clone() {
            // After a failure: the seat of this life, if it still holds, is ours without the
            // look a previous life gets (which would stop renewing it meanwhile).
            let keys_only = GetOptions::new().with_keys_only();
            let own = timed(
                op_timeout(&self.cfg),
                c.get(seat.key.as_str(), Some(keys_only)),
            )
            .await?;
            if seat.holds(own.kvs().first()) == Some(true) {
                self.reachable();
                return Ok(Some(seat));
            }
            self.resign().await;
        }
        self.seen.clear();
        let seat = match adopt::previous_life(&mut c, &self.keys, &self.cfg).await? {
            Adoption::Twin => return Ok(None),
            Adoption::Adopted { seat, sent } => {
                report_renewal(&self.tx, sent, seat.ttl.as_secs() as i64);
                seat
            }
            Adoption::Nothing => self.create(&mut c).await?,
        };
        self.seat = Some(seat.clone());
        self.startup.joined();
        self.reachable();
        Ok(Some(seat))
    }

    async fn create(&mut self, c: &mut Client) -> Result<Seat> {
        let t = op_timeout(&self.cfg);
        let sent = Boot::now();
        let grant = timed(t, c.lease_grant(self.cfg.lease_ttl, None)).await?;
        let ttl = Duration::from_secs(grant.ttl() as u64);
        let key = self.keys.candidate_key(grant.id());
        // Owned from here on, so that a failure below still revokes it.
        self.seat = Some(Seat {
            lease: grant.id(),
            ttl,
            key: key.clone(),
            revision: 0,
            mod_revision: 0,
            not_before: None,
        });
        let put = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.cfg.identity.as_str(),
                Some(PutOptions::new().with_lease(grant.id())),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = timed(t, c.txn(put)).await?;
        let (revision, mod_revision) = match resp.op_responses().first() {
            Some(TxnOpResponse::Get(g)) if !resp.succeeded() => g
                .kvs()
                .first()
                .map_or((0, 0), |kv| (kv.create_revision(), kv.mod_revision())),
            _ => {
                let r = resp.header().map_or(0, |h| h.revision());
                (r, r)
            }
        };
        // The grant counts as a renewal only once our key exists: see `Keeper::confirm`.
        report_renewal(&self.tx, sent, grant.ttl());
        debug!("joined as {key} at revision {revision}, lease ttl {ttl:?}");
        Ok(Seat {
            lease: grant.id(),
            ttl,
            key,
            revision,
            mod_revision,
            not_before: None,
        })
    }

    /// Waits until we may lead: no candidate key ahead of ours, the holder record ours, and every
    /// lease seen ahead of us gone.
    async fn wait_turn(&mut self, seat: &Seat) -> Result<Turn> {
        let t = op_timeout(&self.cfg);
        let mut reported = None;
        let mut shown = Shown::default();
        loop {
            let mut c = self.client().await?;
            let snap = Snapshot::read(&mut c, &self.keys, seat, t).await?;
            match seat.holds(snap.own.as_ref()) {
                None => {
                    info!(
                        "our key {} was deleted while we waited; joining again",
                        seat.key
                    );
                    return Ok(Turn::Rejoin);
                }
                Some(false) => return Ok(Turn::Adopted),
                Some(true) => {}
            }
            let holder = snap.holder.as_ref().filter(|h| h.lease() != seat.lease);
            let leader = match holder {
                Some(h) => Some(Foreign(h.value()).to_string()),
                None => shown.head(&mut c, snap.head.as_ref(), t).await?,
            };
            self.send(Event::Leader(leader));
            if let Some(pred) = &snap.pred {
                match self.wait_for_pred(seat, &snap, pred).await? {
                    Some(turn) => return Ok(turn),
                    None => continue,
                }
            }
            if let Some(h) = holder {
                match self
                    .wait_for_holder(&mut c, &snap, h, &mut reported)
                    .await?
                {
                    Some(turn) => return Ok(turn),
                    None => continue,
                }
            }
            if let Some(y) = snap
                .yield_request
                .as_ref()
                .filter(|y| y.lease() != seat.lease)
            {
                if snap.holder.is_none() {
                    // A forcer behind us asked for the lock before we took it: we go back in
                    // line behind it rather than start only to be asked to yield at once.
                    info!(
                        "{:?} forces the lock; going back in line",
                        Foreign(y.value())
                    );
                    return Ok(Turn::GiveWay);
                }
            }
            if snap.holder.is_none() && !self.take_record(&mut c, seat, &snap).await? {
                continue;
            }
            self.settle(&mut c, seat, &snap).await?;
            return Ok(lead(seat).await);
        }
    }

    /// Waits for the candidate ahead of us to go (`None`: read again), or leads on the record
    /// handed over by it.
    async fn wait_for_pred(
        &mut self,
        seat: &Seat,
        snap: &Snapshot,
        pred: &Candidate,
    ) -> Result<Option<Turn>> {
        self.seen.insert(pred.lease);
        debug!("waiting for {} to go", String::from_utf8_lossy(&pred.key));
        let from = snap.revision + 1;
        let fast = snap.holder_lease() == Some(pred.lease)
            && seat.mod_revision == seat.revision
            && !self.cfg.force_acquire;
        if !fast {
            wait_changed(&self.etcd, &pred.key, from).await?;
            return Ok(None);
        }
        // Our predecessor holds the record: its hand-over re-binds the record to us in the
        // transaction that deletes its key, and that transaction also found our key never put
        // again since we created it (not adopted by a twin). Seen on the record's watch, that is
        // all a read would tell. (A forcer has its request to withdraw: it reads.)
        self.send(Event::Next);
        let events = next_events(&self.etcd, self.keys.holder.as_bytes(), from).await?;
        if events.last().is_some_and(|e| handed_to(seat, e)) {
            self.seen.clear();
            return Ok(Some(lead(seat).await));
        }
        Ok(None)
    }

    /// Nothing is queued ahead of us and the record is bound to another lease: goes back in line
    /// behind a forcer handed the lock, or waits for the record to change (`None`: read again).
    async fn wait_for_holder(
        &mut self,
        c: &mut Client,
        snap: &Snapshot,
        h: &KeyValue,
        reported: &mut Option<i64>,
    ) -> Result<Option<Turn>> {
        if self.holder_key(c, h.lease()).await?.is_some() {
            // Nothing is queued ahead of us, so its key is behind ours: a forcer was handed the
            // lock. We go back in line behind it.
            info!(
                "{:?} was handed the lock over our place (force acquire); going back in line",
                Foreign(h.value())
            );
            return Ok(Some(Turn::GiveWay));
        }
        self.seen.insert(h.lease());
        if reported.replace(h.lease()) != Some(h.lease()) {
            info!(
                "{:?} (an old etcd-await-election, or a holder whose key is gone) holds {} \
                 (lease {:x}); waiting for it to stop and let go",
                Foreign(h.value()),
                self.keys.holder,
                h.lease()
            );
        }
        wait_changed(&self.etcd, self.keys.holder.as_bytes(), snap.revision + 1).await?;
        Ok(None)
    }

    /// The record is ours: whoever we saw ahead must be gone (unless it was handed to us), and a
    /// request to yield we made is withdrawn.
    async fn settle(&mut self, c: &mut Client, seat: &Seat, snap: &Snapshot) -> Result<()> {
        if snap.holder.as_ref().is_some_and(is_handed_over) {
            // Handed to us: only its holder puts the record over to another lease, and only once
            // its command's group is empty; whoever was queued between us let go of its own key
            // after its command (etcd's recipe) or went back in line without running (ours).
            self.seen.clear();
        } else {
            // Taken by us (maybe before a failed request): a key vanishing proves nothing, so
            // whoever we saw ahead must be gone.
            self.seen.remove(&seat.lease);
            for lease in self.seen.clone() {
                self.await_lease_gone(c, lease).await?;
            }
        }
        if snap.holder.is_some() {
            if let Some(y) = snap
                .yield_request
                .as_ref()
                .filter(|y| y.lease() == seat.lease)
            {
                let withdraw = Txn::new()
                    .when([unchanged(self.keys.yield_request.clone(), Some(y))])
                    .and_then([TxnOp::delete(self.keys.yield_request.clone(), None)]);
                timed(op_timeout(&self.cfg), c.txn(withdraw)).await?;
            }
        }
        Ok(())
    }

    /// The candidate key of this lease, if it has one (see `queue::key_of_lease`).
    async fn holder_key(&self, c: &mut Client, lease: i64) -> Result<Option<KeyValue>> {
        queue::key_of_lease(c, &self.keys, lease, op_timeout(&self.cfg)).await
    }

    /// Puts the holder record for our lease, if it is still absent, our key still ours and no
    /// forcer asked for the lock in between (a request of our own is withdrawn with it).
    async fn take_record(&mut self, c: &mut Client, seat: &Seat, snap: &Snapshot) -> Result<bool> {
        let keys = &self.keys;
        let mut ops = vec![TxnOp::put(
            keys.holder.as_str(),
            self.cfg.identity.as_str(),
            Some(PutOptions::new().with_lease(seat.lease)),
        )];
        if snap.yield_request.is_some() {
            ops.push(TxnOp::delete(keys.yield_request.clone(), None));
        }
        let txn = Txn::new()
            .when([
                // Not create revision: a twin that adopted our key put it again, and this
                // must then fail.
                Compare::mod_revision(seat.key.as_str(), CompareOp::Equal, seat.mod_revision),
                unchanged(keys.holder.as_str(), None),
                unchanged(keys.yield_request.clone(), snap.yield_request.as_ref()),
            ])
            .and_then(ops);
        Ok(timed(op_timeout(&self.cfg), c.txn(txn)).await?.succeeded())
    }

    /// Waits until `lease` is gone (its holder revoked it, or it expired): a key of it deleted
    /// by hand leaves its holder running until it notices.
    async fn await_lease_gone(&mut self, c: &mut Client, lease: i64) -> Result<()> {
        // A holder whose key was deleted revokes its lease once its command has stopped: look
        // again soon, then less often.
        let mut pause = Duration::from_millis(2);
        let most = self.cfg.retry_period.min(Duration::from_millis(100));
        loop {
            match timed(op_timeout(&self.cfg), c.lease_time_to_live(lease, None)).await {
                Ok(r) if r.ttl() >= 0 => {}
                Err(e) if !is_lease_not_found(&e) => return Err(e),
                _ => return Ok(()),
            }
            if pause == most {
                debug!("lease {lease:x} seen ahead of us still lives; waiting for it to end");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(most);
        }
    }

    /// Returns why leadership ended: our key or the holder record deleted or taken, or a forcer
    /// asking us to yield. The keep-alive loop reports the rest.
    async fn watch_own_key(&mut self, seat: &Seat) -> String {
        let keys = self.keys.clone();
        loop {
            let snap = match self.leader_snapshot(seat).await {
                Ok(snap) => snap,
                Err(e) => {
                    self.note_failure(&e);
                    tokio::time::sleep(self.cfg.retry_period).await;
                    continue;
                }
            };
            match seat.holds(snap.own.as_ref()) {
                None => return "our key was deleted (deposed)".to_string(),
                Some(false) => {
                    // Our lease is another process's now: stop, and never revoke it.
                    self.seat = None;
                    return format!(
                        "our key was adopted by another process under {} {:?} (a twin)",
                        crate::config::IDENTITY,
                        self.cfg.identity
                    );
                }
                Some(true) => {}
            }
            if snap.holder_lease() != Some(seat.lease) {
                return format!(
                    "the holder record {} was deleted or taken (deposed)",
                    keys.holder
                );
            }
            if let Some(y) = snap
                .yield_request
                .as_ref()
                .filter(|y| y.lease() != seat.lease)
            {
                // The request stands until the forcer leads: a candidate queued between us sees
                // it and goes back in line. The record goes to the forcer, and to nobody else.
                let forcer = match self.client().await {
                    Ok(mut c) => self.holder_key(&mut c, y.lease()).await,
                    Err(e) => Err(e),
                };
                self.heir = Heir::Forcer(forcer.unwrap_or_else(|e| {
                    debug!("reading the forcer's key: {e}");
                    None
                }));
                return format!("{:?} asked us to yield (force acquire)", Foreign(y.value()));
            }
            self.reachable();
            if let Err(e) = self.await_change(&snap, seat).await {
                if !is_replaced(&e) {
                    self.note_failure(&e);
                    tokio::time::sleep(self.cfg.retry_period).await;
                }
            }
        }
    }

    /// A leader's read: the snapshot, and the value of a new successor (the identity the record
    /// will hold once handed to it), read now so that the hand-over needs no read.
    async fn leader_snapshot(&mut self, seat: &Seat) -> Result<Snapshot> {
        let t = op_timeout(&self.cfg);
        let mut c = self.client().await?;
        let snap = Snapshot::read(&mut c, &self.keys, seat, t).await?;
        let known = match &self.heir {
            Heir::Next(Some(kv)) => snap
                .behind
                .as_ref()
                .is_some_and(|b| b.key == kv.key() && b.mod_revision == kv.mod_revision()),
            _ => false,
        };
        if !known {
            let next = match &snap.behind {
                Some(b) => queue::with_value(&mut c, &b.key, t).await?,
                None => None,
            };
            self.heir = Heir::Next(next);
        }
        Ok(snap)
    }

    /// Watches (one per range of the lock) for our key, the record, a yield request and who
    /// queues behind us; what else
    /// lives under the prefix (the job's own data) changes nothing we read, and does not wake us.
    async fn await_change(&self, snap: &Snapshot, seat: &Seat) -> Result<()> {
        let keys = &self.keys;
        let relevant = |e: &WatchEvent| {
            e.kv()
                .is_some_and(|kv| keys.concerns(kv, e.event_type(), &seat.key))
        };
        // The lock's two ranges, not the one from `LOCK` to the prefix's end: other locks' keys
        // lie between them, and the smallest grant does not cover those (see `rights`).
        let (etcd, from) = (&self.etcd, snap.revision + 1);
        let (record, prefix) = (keys.holder.as_bytes(), keys.prefix.as_bytes());
        tokio::select! {
            r = Box::pin(wait_range_changed(etcd, record, &keys.record_end, from, &relevant)) => r,
            r = Box::pin(wait_range_changed(etcd, prefix, &keys.end, from, &relevant)) => r,
        }
    }

    /// Gives up our place: a leader hands the record to the next candidate (see `hand_over`),
    /// then the lease is revoked, retrying on failure: until it is revoked the next candidate
    /// waits a whole TTL. Gives up once the lease would have expired anyway (or after 8 s, within
    /// `main`'s backstop).
    ///
    /// `main` asks for this only once the command's process group is empty.
    async fn resign(&mut self) {
        let Some(seat) = self.seat.take() else {
            return;
        };
        if std::mem::take(&mut self.elected) {
            if let Err(e) = self.hand_over(&seat).await {
                debug!("handing over: {e}");
            }
        }
        let lease = seat.lease;
        // Adopted from a previous life: should it be alive after all and cut off, it shares this
        // lease and may run its command until then. Left to expire: no earlier than that, as we
        // renewed it when we adopted it.
        if seat.not_before.is_some_and(|t| Instant::now() < t) {
            return warn!(
                "lease {lease:x}, adopted from a previous life that may still be stopping, left \
                 to expire"
            );
        }
        let budget = crate::timing::resign_budget(seat.ttl);
        let give_up = Instant::now() + budget;
        loop {
            let e = match self.revoke(&seat).await {
                Ok(Revoked::Yes) => return info!("resigned: revoked lease {lease:x}"),
                Ok(Revoked::Adopted) => {
                    return warn!("our key was adopted by a twin: lease {lease:x} left to it")
                }
                Ok(Revoked::Recorded) => {
                    return warn!(
                        "our key was put again before it was deleted, and {} is bound to our \
                         lease: a twin that adopted our place may lead with it; lease {lease:x} \
                         left to expire",
                        self.keys.holder
                    )
                }
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

    /// Revokes our lease, unless another process may be using it: a twin that adopted our key
    /// (put it again), or, our key gone and the record bound to our lease, one that adopted it
    /// before somebody deleted it: it may lead with the lease, which must not end under it. Then
    /// the lease expires by itself, as a vanished holder's does.
    async fn revoke(&self, seat: &Seat) -> Result<Revoked> {
        let t = op_timeout(&self.cfg);
        let mut c = self.client().await?;
        let keys_only = || Some(GetOptions::new().with_keys_only());
        let read = Txn::new().and_then([
            TxnOp::get(seat.key.as_str(), keys_only()),
            TxnOp::get(self.keys.holder.as_str(), keys_only()),
        ]);
        let resp = timed(t, c.txn(read)).await?;
        let kv = |i: usize| match resp.op_responses().get(i) {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
            _ => None,
        };
        match seat.holds(kv(0).as_ref()) {
            Some(false) => return Ok(Revoked::Adopted),
            None if kv(1).is_some_and(|h| h.lease() == seat.lease) => {
                // Deleted straight after our own put (an operator's `etcdctl del`): nobody
                // adopted it, nobody else uses our lease. Put again first (or not known): a
                // twin's too.
                let from = seat.mod_revision + 1;
                let change = first_change(&self.etcd, seat.key.as_bytes(), from).await?;
                if change != Some(EventType::Delete) {
                    return Ok(Revoked::Recorded);
                }
            }
            _ => {}
        }
        timed(t, c.lease_revoke(seat.lease)).await?;
        Ok(Revoked::Yes)
    }

    /// In one transaction, our key deleted and the record bound to our heir's lease: its watch
    /// fires, it reads the record already its own, and starts without a write of its own and
    /// without waiting for our lease (see `queue::is_handed_over`). Only while our key and the
    /// record are still ours and the heir still waits: to the forcer that asked us to yield, or
    /// to the successor last seen while leading, else (gone, or none then) to the one read now.
    async fn hand_over(&mut self, seat: &Seat) -> Result<()> {
        let t = op_timeout(&self.cfg);
        let mut c = self.client().await?;
        let next = match std::mem::replace(&mut self.heir, Heir::Next(None)) {
            Heir::Forcer(forcer) => return self.hand_to_any(&mut c, seat, forcer).await,
            Heir::Next(next) => next,
        };
        if let Some(next) = next {
            if self.hand_to(&mut c, seat, &next).await? {
                return Ok(());
            }
        }
        let (_, queue) = scan::all(&mut c, &self.keys, t).await?;
        let next = match queue.iter().find(|b| b.create_revision > seat.revision) {
            Some(b) => queue::with_value(&mut c, &b.key, t).await?,
            None => None,
        };
        self.hand_to_any(&mut c, seat, next).await
    }

    async fn hand_to_any(&self, c: &mut Client, seat: &Seat, next: Option<KeyValue>) -> Result<()> {
        if let Some(next) = next {
            self.hand_to(c, seat, &next).await?;
        }
        Ok(())
    }

    async fn hand_to(&self, c: &mut Client, seat: &Seat, next: &KeyValue) -> Result<bool> {
        let keys = &self.keys;
        let txn = Txn::new()
            .when([
                Compare::mod_revision(seat.key.as_str(), CompareOp::Equal, seat.mod_revision),
                Compare::lease(keys.holder.as_str(), CompareOp::Equal, seat.lease),
                // Never put again since it was created (by a twin adopting it): then its
                // creator may lead on seeing this transaction alone (see `wait_turn`).
                Compare::mod_revision(next.key(), CompareOp::Equal, next.create_revision()),
            ])
            .and_then([
                TxnOp::delete(seat.key.as_str(), None),
                TxnOp::put(
                    keys.holder.as_str(),
                    next.value(),
                    Some(PutOptions::new().with_lease(next.lease())),
                ),
            ]);
        let handed = timed(op_timeout(&self.cfg), c.txn(txn)).await?.succeeded();
        if handed {
            info!("handed {} to {:?}", keys.holder, Foreign(next.value()));
        }
        Ok(handed)
    }

    fn reachable(&mut self) {
        if !self.failing.is_empty() {
            self.failing.clear();
            info!("etcd reachable again");
            self.send(Event::Reachable);
        }
    }

    fn note_failure(&mut self, e: &etcd_client::Error) {
        let failure = classify(e);
        if !self.failing.contains(&failure.cause) {
            warn!(
                "etcd: {failure}; retrying every {:?}",
                self.cfg.retry_period
            );
            self.failing.push(failure.cause);
        }
        self.send(Event::Failed {
            renewal: false,
            failure,
        });
        self.etcd.after_failure(e);
    }

    async fn backoff(&mut self, e: etcd_client::Error) -> std::result::Result<(), Outcome> {
        if is_replaced(&e) {
            return Ok(());
        }
        if let Some(why) = self.startup.give_up(&classify(&e)) {
            return Err(Outcome::Fatal(why));
        }
        self.note_failure(&e);
        tokio::time::sleep(self.cfg.retry_period).await;
        Ok(())
    }
}

/// The head of the queue as last shown (when no record names who runs): its identity is read only
/// when the head changes, and kept as shown (see `Foreign`).
#[derive(Default)]
struct Shown {
    head: Option<(Vec<u8>, Option<String>)>,
}

impl Shown {
    async fn head(
        &mut self,
        c: &mut Client,
        head: Option<&Candidate>,
        t: Duration,
    ) -> Result<Option<String>> {
        let Some(head) = head else {
            return Ok(None);
        };
        if let Some((key, identity)) = &self.head {
            if *key == head.key {
                return Ok(identity.clone());
            }
        }
        let identity = queue::with_value(c, &head.key, t)
            .await?
            .map(|kv| Foreign(kv.value()).to_string());
        self.head = Some((head.key.clone(), identity.clone()));
        Ok(identity)
    }
}

/// The record put over to our lease: handed to us (see `queue::is_handed_over`).
fn handed_to(seat: &Seat, e: &WatchEvent) -> bool {
    e.event_type() == EventType::Put
        && e.kv()
            .is_some_and(|h| h.lease() == seat.lease && is_handed_over(h))
}

/// Our turn: at once, or for a seat adopted from a previous life that held the record, once that
/// life's lease would have expired.
async fn lead(seat: &Seat) -> Turn {
    if let Some(t) = seat.not_before {
        tokio::time::sleep_until(t.into()).await;
    }
    Turn::Lead
}

/// What the keep-alive loop needs: our lease, and the keys that must still be ours for a renewal
/// to count.
struct Keeper {
    etcd: Etcd,
    keys: Rc<Keys>,
    lease: i64,
    own: String,
    mod_revision: i64,
    ttl: Duration,
    pace: Rc<Pace>,
    tx: Sender<crate::Event>,
}

impl Keeper {
    /// A linearizable read, after a keep-alive was answered: that etcd can still commit (a
    /// member with a stalled raft loop answers keep-alives but not this), and that our key (and,
    /// leading, the holder record) is still bound to our lease. A renewal that fails this check
    /// does not count: a deposed leader's lease must not seem fresh.
    async fn confirm(&self, c: &mut Client) -> Result<bool> {
        // Keys only: whatever value anybody put there is not ours to download twice a period.
        let keys_only = || Some(GetOptions::new().with_keys_only());
        let txn = Txn::new().and_then([
            TxnOp::get(self.own.as_str(), keys_only()),
            TxnOp::get(self.keys.holder.as_str(), keys_only()),
        ]);
        let resp = c.txn(txn).await?;
        let kv = |i: usize| match resp.op_responses().get(i) {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
            _ => None,
        };
        let own =
            kv(0).is_some_and(|o| o.lease() == self.lease && o.mod_revision() == self.mod_revision);
        let record = kv(1).is_some_and(|h| h.lease() == self.lease);
        Ok(own && (!self.pace.leading.get() || record))
    }
}

/// Keeps the lease alive, one keep-alive in flight at a time so that each success is matched to
/// its send time. Returns only when the lease is gone.
///
/// A keep-alive unanswered (or unconfirmed) for a period is given up and retried on a fresh
/// connection: one lost answer must not cost the leadership.
async fn keep_alive(k: Keeper) -> String {
    let (lease, rd) = (k.lease, k.etcd.cfg.renew_deadline);
    let failed = |e: &etcd_client::Error| {
        debug!("keep-alive: {e}");
        let _ = k.tx.send(crate::Event::Election(Event::Failed {
            renewal: true,
            failure: classify(e),
        }));
        k.etcd.after_failure(e);
    };
    let counted = |sent: Boot, ttl: i64, ok: bool| {
        if ok {
            report_renewal(&k.tx, sent, ttl);
        } else {
            debug!("renewal of lease {lease:x} not counted: our key or the record is gone");
        }
    };
    loop {
        let period = k.pace.period(k.ttl, rd);
        let (sent, boot) = (Instant::now(), Boot::now());
        let attempt = async {
            let mut c = k.etcd.client().await?;
            let ks = c.lease_keep_alive(lease).await?;
            let ok = k.confirm(&mut c).await?;
            Ok((ks, ok))
        };
        let mut last = sent;
        let (mut keeper, mut stream) = match timed(period, attempt).await {
            Ok((ks, ok)) => {
                // `lease_keep_alive` already sent one keep-alive and checked its answer.
                counted(boot, k.ttl.as_secs() as i64, ok);
                ks
            }
            Err(e) if is_lease_not_found(&e) => return format!("lease {lease:x} expired"),
            Err(e) => {
                failed(&e);
                // Renewing is urgent: the renew deadline runs. Retry well within a period.
                tokio::time::sleep(k.etcd.cfg.retry_period.min(period / 4)).await;
                continue;
            }
        };
        loop {
            loop {
                let due = last + k.pace.period(k.ttl, rd);
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => break,
                    // Elected: at the leader's pace from here on, counted from the last renewal
                    // (at once if that is overdue), not at once: a handover is no time for it.
                    _ = k.pace.changed.notified() => {}
                }
            }
            let period = k.pace.period(k.ttl, rd);
            let (sent, boot) = (Instant::now(), Boot::now());
            last = sent;
            let answer = timed(period, async {
                keeper.keep_alive().await?;
                let r = stream.message().await?;
                let ok = k.confirm(&mut k.etcd.client().await?).await?;
                Ok((r, ok))
            })
            .await;
            match answer {
                Ok((Some(r), ok)) if r.ttl() > 0 => counted(boot, r.ttl(), ok),
                Ok((Some(_), _)) => return format!("lease {lease:x} expired"),
                Ok((None, _)) => {
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

/// A renewal sent at `sent` succeeded with this TTL (seconds, as etcd reports it).
pub fn report_renewal(tx: &Sender<crate::Event>, sent: Boot, ttl: i64) {
    let _ = tx.send(crate::Event::Election(Event::Renewed {
        sent,
        ttl: Duration::from_secs(ttl.max(0) as u64),
    }));
}
