//! The campaign: waiting for our turn once we have a seat. We lead when no candidate key is ahead
//! of ours, the holder record is ours (taken where absent, or handed to us by the holder before
//! us), and every lease seen ahead of us is gone. Meanwhile we watch only what can change that,
//! or our pace: our own key, our predecessor's, and the record once our predecessor holds it (or
//! the key before our predecessor's until then; the record all along where we answer `/leader`).
//! A forcer first asks the holder to yield (`force`).

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, Event as WatchEvent, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp,
};
use log::{debug, info};

use super::force;
use super::observe;
use super::queue::{self, is_handed_over, unchanged, Candidate, Seat, Snapshot};
use super::{Election, Event};
use crate::etcd::{Etcd, Result};
use crate::format::Foreign;
use crate::leader::Leader;
use crate::timing::Role;

/// How a campaign ended.
pub enum Turn {
    Lead,
    /// Our key is gone: join again.
    Rejoin,
    /// A forcer goes first: join again behind it. A forcer ourselves, we do not ask again in
    /// this life (the first request stands).
    GiveWay,
    /// Another process with our identity adopted our key.
    Adopted,
}

impl Election {
    /// Asks the holder to yield if we force the lock (once a life), then waits for our turn.
    pub(super) async fn campaign(&mut self, seat: &Seat) -> Result<Turn> {
        if self.cfg.force_acquire && !self.gave_way {
            let (etcd, keys, cfg) = (&self.etcd, &self.keys, &self.cfg);
            let runner = Box::pin(force::request_yield(etcd, keys, cfg, seat)).await?;
            self.seen.extend(runner);
        }
        Box::pin(self.wait_turn(seat)).await
    }

    /// Waits until we may lead: no candidate key ahead of ours, the holder record ours, and every
    /// lease seen ahead of us gone.
    async fn wait_turn(&mut self, seat: &Seat) -> Result<Turn> {
        let mut reported = None;
        let mut shown = Shown::default();
        loop {
            let snap = Snapshot::read(&self.etcd, &self.keys, seat).await?;
            if let Some(turn) = standing(seat, &snap) {
                return Ok(turn);
            }
            self.pace.set(self.role(&snap));
            let holder = snap.holder.as_ref().filter(|h| h.lease() != seat.lease);
            let leader = match holder {
                Some(h) => Some(observe::of_record(
                    h,
                    snap.address.as_ref(),
                    revision_of(&snap, h.lease()),
                )),
                None => shown.head(&self.etcd, snap.head.as_ref()).await?,
            };
            (self.report)(Event::Leader(leader));
            if snap.pred.is_some() || holder.is_some() {
                (self.report)(Event::Queued);
            }
            let turn = if let Some(pred) = &snap.pred {
                self.wait_for_pred(seat, &snap, pred).await?
            } else if let Some(h) = holder {
                self.wait_for_holder(&snap, h, &mut reported).await?
            } else {
                self.take_turn(seat, &snap).await?
            };
            if let Some(turn) = turn {
                return Ok(turn);
            }
        }
    }

    /// Next in line when whoever is ahead of us goes next (or a holder we force asks to yield):
    /// our renewals must count then, so that we can start the moment we are handed the lock.
    fn role(&self, snap: &Snapshot) -> Role {
        let next = match &snap.pred {
            None => true,
            Some(pred) => {
                snap.holder_lease() == Some(pred.lease)
                    || snap.head.as_ref().is_some_and(|h| h.lease == pred.lease)
            }
        };
        if next || self.cfg.force_acquire {
            Role::Next
        } else {
            Role::Waiting
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
        let fast = snap.holder_lease() == Some(pred.lease)
            && seat.mod_revision == seat.revision
            && !self.cfg.force_acquire;
        if !fast {
            self.await_pred(seat, snap, pred).await?;
            return Ok(None);
        }
        let from = snap.revision + 1;
        // Our predecessor holds the record: its hand-over re-binds the record to us in the
        // transaction that deletes its key, and that transaction also found our key never put
        // again since we created it (not adopted by a twin). Seen on the record's watch, that is
        // all a read would tell. (A forcer has its request to withdraw: it reads.)
        (self.report)(Event::Next);
        // Our own key deleted (or put again by a twin) meanwhile: read again, to join again.
        let record = self.keys.holder.as_bytes();
        let keys = [record, seat.key.as_bytes()];
        let events = Box::pin(self.etcd.next_events(&keys, from)).await?;
        let last = events
            .last()
            .filter(|e| e.kv().is_some_and(|kv| kv.key() == record));
        if last.is_some_and(|e| handed_to(seat, e)) {
            self.seen.clear();
            return Ok(Some(ready(seat).await));
        }
        Ok(None)
    }

    /// Waits for our predecessor's key, or our own, to change (our own deleted by an operator:
    /// read again, to join again at once, not once the line moves), or for the key before our
    /// predecessor's to change (our predecessor then heads the queue: read again, to wait as
    /// the next one does). A hand-over further ahead wakes nobody but the two behind it, as in
    /// etcd's recipe, where it wakes one: but for a candidate that serves a status endpoint,
    /// which follows the record to answer `/leader`. Each watch is made once for the whole wait.
    async fn await_pred(&self, seat: &Seat, snap: &Snapshot, pred: &Candidate) -> Result<()> {
        let mut keys = vec![&pred.key[..], seat.key.as_bytes()];
        keys.extend(snap.before_pred.as_ref().map(|b| &b.key[..]));
        let changed = self.etcd.next_events(&keys, snap.revision + 1);
        let record = async {
            match self.cfg.status_endpoint {
                Some(_) => self.follow_record(seat, snap, pred).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = Box::pin(changed) => r.map(drop),
            r = Box::pin(record) => r,
        }
    }

    /// Follows the record while it changes hands ahead of our predecessor, and reports who leads
    /// (for `/leader` and the log) from the changes themselves: the record and the holder's
    /// address are written in one transaction, so that a change of hands costs a waiter one
    /// watch event, and a read of the new holder's key for its revision. Returns once the
    /// record is gone, or bound to our predecessor or to us: the whole queue then says what is
    /// next.
    async fn follow_record(&self, seat: &Seat, snap: &Snapshot, pred: &Candidate) -> Result<()> {
        let keys = &self.keys;
        let (record, end) = (keys.holder.as_bytes(), &keys.holder_end);
        let mut changes = self.etcd.follow(record, end, snap.revision + 1).await?;
        let (mut holder, mut address) = (snap.holder.clone(), snap.address.clone());
        loop {
            for e in changes.next().await? {
                let Some(kv) = e.kv() else { continue };
                let slot = if kv.key() == record {
                    &mut holder
                } else if kv.key() == keys.address {
                    &mut address
                } else {
                    continue;
                };
                *slot = (e.event_type() == EventType::Put).then(|| kv.clone());
            }
            let ahead = [pred.lease, seat.lease];
            let Some(h) = holder.as_ref().filter(|h| !ahead.contains(&h.lease())) else {
                return Ok(());
            };
            let revision = self.revision_shown(h.lease()).await?;
            let leader = observe::of_record(h, address.as_ref(), revision);
            (self.report)(Event::Leader(Some(leader)));
        }
    }

    /// The create revision of the candidate key of `lease` (the holder's), for `/leader`.
    /// `None` for a holder without one (a Go replica).
    async fn revision_shown(&self, lease: i64) -> Result<Option<i64>> {
        let key = self.keys.candidate_key(lease);
        let own = self.etcd.get(key, Some(GetOptions::new().with_keys_only()));
        Ok(own
            .await?
            .kvs()
            .first()
            .filter(|kv| kv.lease() == lease)
            .map(|kv| kv.create_revision()))
    }

    /// Nothing is queued ahead of us and the record is bound to another lease: goes back in line
    /// behind a forcer handed the lock, or waits for the record to change (`None`: read again).
    async fn wait_for_holder(
        &mut self,
        snap: &Snapshot,
        h: &KeyValue,
        reported: &mut Option<i64>,
    ) -> Result<Option<Turn>> {
        if queue::key_of_lease(&self.etcd, &self.keys, h.lease())
            .await?
            .is_some()
        {
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
        let from = snap.revision + 1;
        self.etcd
            .wait_changed(self.keys.holder.as_bytes(), from)
            .await?;
        Ok(None)
    }

    /// Nothing is queued ahead of us and nobody else holds the record: we go back in line behind
    /// a forcer that asked for the lock before our command started, or take the record (`None`:
    /// it changed meanwhile, read again) and lead.
    async fn take_turn(&mut self, seat: &Seat, snap: &Snapshot) -> Result<Option<Turn>> {
        let forcer = snap.yield_request.as_ref();
        if let Some(y) = forcer.filter(|y| y.lease() != seat.lease) {
            // Rather than start only to be asked to yield at once. Nothing runs: a record we
            // took goes with our lease as we leave the line.
            info!(
                "{:?} forces the lock; going back in line",
                Foreign(y.value())
            );
            return Ok(Some(Turn::GiveWay));
        }
        if snap.holder.is_none() && !self.take_record(seat, snap).await? {
            return Ok(None);
        }
        if self.settle(seat, snap).await? {
            // We waited for a lease seen ahead of us (up to its TTL): a forcer may have asked
            // for the lock meanwhile. Read again.
            return Ok(None);
        }
        Ok(Some(ready(seat).await))
    }

    /// The record is ours: whoever we saw ahead must be gone (unless it was handed to us), and a
    /// request to yield we made is withdrawn. True when we had to wait for a lease to end.
    async fn settle(&mut self, seat: &Seat, snap: &Snapshot) -> Result<bool> {
        let mut waited = false;
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
                waited |= await_lease_gone(&self.etcd, lease, self.cfg.retry_period).await?;
                // Gone for good: not awaited again when we read again.
                self.seen.remove(&lease);
            }
        }
        if snap.holder.is_some() {
            let request = snap.yield_request.as_ref();
            if let Some(y) = request.filter(|y| y.lease() == seat.lease) {
                let withdraw = Txn::new()
                    .when([unchanged(self.keys.yield_request.clone(), Some(y))])
                    .and_then([TxnOp::delete(self.keys.yield_request.clone(), None)]);
                self.etcd.txn(withdraw).await?;
            }
        }
        Ok(waited)
    }

    /// Puts the holder record for our lease, if it is still absent, our key still ours and no
    /// forcer asked for the lock in between (a request of our own is withdrawn with it).
    async fn take_record(&mut self, seat: &Seat, snap: &Snapshot) -> Result<bool> {
        let keys = &self.keys;
        let mut ops = vec![TxnOp::put(
            keys.holder.as_str(),
            self.cfg.identity.as_str(),
            Some(PutOptions::new().with_lease(seat.lease)),
        )];
        if snap.yield_request.is_some() {
            ops.push(TxnOp::delete(keys.yield_request.clone(), None));
        }
        let address = self.cfg.advertise.as_deref().map(str::as_bytes);
        ops.push(keys.publish(address, seat.lease));
        let txn = Txn::new()
            .when([
                // Not create revision: a twin that adopted our key put it again, and this
                // must then fail.
                Compare::mod_revision(seat.key.as_str(), CompareOp::Equal, seat.mod_revision),
                unchanged(keys.holder.as_str(), None),
                unchanged(keys.yield_request.clone(), snap.yield_request.as_ref()),
            ])
            .and_then(ops);
        Ok(self.etcd.txn(txn).await?.succeeded())
    }
}

/// Whether our key is still ours (`None`), and if not, how the campaign ends.
fn standing(seat: &Seat, snap: &Snapshot) -> Option<Turn> {
    match seat.holds(snap.own.as_ref()) {
        None => {
            info!(
                "our key {} was deleted while we waited; joining again",
                seat.key
            );
            Some(Turn::Rejoin)
        }
        Some(false) => Some(Turn::Adopted),
        Some(true) => None,
    }
}

/// Waits until `lease` is gone (its holder revoked it, or it expired): a key of it deleted by
/// hand leaves its holder running until it notices. True when it was not gone at once.
async fn await_lease_gone(etcd: &Etcd, lease: i64, retry_period: Duration) -> Result<bool> {
    // A holder whose key was deleted revokes its lease once its command has stopped: look again
    // soon, then less often.
    let mut pause = Duration::from_millis(2);
    let most = retry_period.min(Duration::from_millis(100));
    let mut waited = false;
    while etcd.time_to_live(lease).await?.is_some() {
        waited = true;
        if pause == most {
            debug!("lease {lease:x} seen ahead of us still lives; waiting for it to end");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(most);
    }
    Ok(waited)
}

/// The create revision of the candidate key of `lease`, when the snapshot holds it.
fn revision_of(snap: &Snapshot, lease: i64) -> Option<i64> {
    [&snap.head, &snap.pred]
        .into_iter()
        .flatten()
        .find(|c| c.lease == lease)
        .map(|c| c.create_revision)
}

/// The head of the queue as last shown (when no record names who runs): its identity is read only
/// when the head changes, and kept as shown (see `Foreign`).
#[derive(Default)]
struct Shown {
    head: Option<(Vec<u8>, Option<Leader>)>,
}

impl Shown {
    async fn head(&mut self, etcd: &Etcd, head: Option<&Candidate>) -> Result<Option<Leader>> {
        let Some(head) = head else {
            return Ok(None);
        };
        if let Some((key, identity)) = &self.head {
            if *key == head.key {
                return Ok(identity.clone());
            }
        }
        let identity = queue::with_value(etcd, &head.key).await?.map(|kv| Leader {
            identity: kv.value().to_vec(),
            address: None,
            revision: Some(head.create_revision),
        });
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
async fn ready(seat: &Seat) -> Turn {
    if let Some(t) = seat.not_before {
        tokio::time::sleep_until(t.into()).await;
    }
    Turn::Lead
}
