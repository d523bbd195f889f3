//! Leading: reporting that we lead, watching what can end it (our key, the holder record, a
//! forcer's request to yield), and, when we resign, handing the record to whoever is next in the
//! transaction that deletes our key. The keep-alive loop (`session`) reports the rest; `main`
//! decides when the child stops.

use std::future::Future;

use etcd_client::{Compare, CompareOp, Event as WatchEvent, KeyValue, PutOptions, Txn, TxnOp};
use log::{debug, info};

use super::queue::{Seat, Snapshot, Successor};
use super::scan;
use super::{Election, Event, Outcome};
use crate::etcd::Result;
use crate::format::Foreign;

/// Whom a leader hands the record to, read while it leads so that the hand-over needs no read.
pub enum Heir {
    /// The first candidate behind us (with its value, the identity the record will hold, and
    /// its address).
    Next(Option<Successor>),
    /// The forcer that asked us to yield, and nobody else: a candidate queued between us goes
    /// back in line behind it. `None`: it has no key any more; the lease is only revoked.
    Forcer(Option<Successor>),
}

impl Election {
    /// Leads until leadership is lost: the keep-alive loop ends, or `hold` sees our place go.
    pub(super) async fn lead(
        &mut self,
        seat: &Seat,
        keepalive: impl Future<Output = String> + Unpin,
    ) -> Outcome {
        self.pace.set(crate::timing::Role::Leading);
        self.elected = true;
        // Elected first: `main` starts the command before it takes in the rest.
        (self.report)(Event::Elected {
            key: seat.key.clone(),
            revision: seat.revision,
            lease: seat.lease,
        });
        (self.report)(Event::Leader(Some(crate::leader::Leader {
            identity: self.cfg.identity.clone().into_bytes(),
            address: self.cfg.advertise.clone(),
            revision: Some(seat.revision),
        })));
        tokio::select! {
            why = keepalive => Outcome::Lost(why),
            why = Box::pin(self.hold(seat)) => Outcome::Lost(why),
        }
    }

    /// Returns why leadership ended: our key or the holder record deleted or taken, or a forcer
    /// asking us to yield.
    async fn hold(&mut self, seat: &Seat) -> String {
        loop {
            let snap = match self.leader_snapshot(seat).await {
                Ok(snap) => snap,
                Err(e) => {
                    self.retry.failed(&e);
                    self.retry.pause().await;
                    continue;
                }
            };
            if let Some(why) = self.still_leading(seat, &snap).await {
                return why;
            }
            (self.report)(Event::Successor(snap.behind.is_some()));
            self.retry.reachable();
            if let Err(e) = self.await_change(&snap, seat).await {
                if !matches!(e, crate::etcd::Error::Replaced) {
                    self.retry.failed(&e);
                    self.retry.pause().await;
                }
            }
        }
    }

    /// Why leadership ended, if `snap` shows it did.
    async fn still_leading(&mut self, seat: &Seat, snap: &Snapshot) -> Option<String> {
        match seat.holds(snap.own.as_ref()) {
            None => return Some("our key was deleted (deposed)".to_string()),
            Some(false) => {
                self.forget_seat();
                return Some(format!(
                    "our key was adopted by another process under {} {:?} (a twin)",
                    crate::config::IDENTITY,
                    self.cfg.identity
                ));
            }
            Some(true) => {}
        }
        if snap.holder_lease() != Some(seat.lease) {
            let holder = &self.keys.holder;
            return Some(format!(
                "the holder record {holder} was deleted or taken (deposed)"
            ));
        }
        let request = snap.yield_request.as_ref();
        let y = request.filter(|y| y.lease() != seat.lease)?;
        // The request stands until the forcer leads: a candidate queued between us sees it and
        // goes back in line. The record goes to the forcer, and to nobody else.
        let forcer = Successor::read(&self.etcd, &self.keys, y.lease()).await;
        self.heir = Heir::Forcer(forcer.unwrap_or_else(|e| {
            debug!("reading the forcer's key: {e}");
            None
        }));
        Some(format!(
            "{:?} asked us to yield (force acquire)",
            Foreign(y.value())
        ))
    }

    /// A leader's read: the snapshot, and the value of a new successor (the identity the record
    /// will hold once handed to it), read now so that the hand-over needs no read.
    async fn leader_snapshot(&mut self, seat: &Seat) -> Result<Snapshot> {
        let snap = Snapshot::read(&self.etcd, &self.keys, seat).await?;
        let known = match &self.heir {
            Heir::Next(Some(heir)) => snap.behind.as_ref().is_some_and(|b| {
                b.key == heir.kv.key() && b.mod_revision == heir.kv.mod_revision()
            }),
            _ => false,
        };
        if !known {
            let next = match &snap.behind {
                Some(b) => Successor::read(&self.etcd, &self.keys, b.lease).await?,
                None => None,
            };
            self.heir = Heir::Next(next);
        }
        Ok(snap)
    }

    /// Watches (one per range of the lock) for our key, the record, a yield request and who
    /// queues behind us; what else lives under the prefix (the job's own data) changes nothing we
    /// read, and does not wake us.
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
        let ranges = [(record, &keys.record_end[..]), (prefix, &keys.end[..])];
        Box::pin(etcd.wait_range_changed(&ranges, from, &relevant)).await
    }

    /// In one transaction, our key deleted and the record bound to our heir's lease: its watch
    /// fires, it reads the record already its own, and starts without a write of its own and
    /// without waiting for our lease (see `queue::is_handed_over`). Only while our key and the
    /// record are still ours and the heir still waits: to the forcer that asked us to yield, or
    /// to the successor last seen while leading, else (gone, or none then) to the one read now.
    pub(super) async fn hand_over(&mut self, seat: &Seat) -> Result<()> {
        let next = match std::mem::replace(&mut self.heir, Heir::Next(None)) {
            Heir::Forcer(forcer) => return self.hand_to_any(seat, forcer).await,
            Heir::Next(next) => next,
        };
        if let Some(next) = next {
            if self.hand_to(seat, &next).await? {
                return Ok(());
            }
        }
        let (_, queue) = scan::all(&self.etcd, &self.keys).await?;
        let next = match queue.iter().find(|b| b.create_revision > seat.revision) {
            Some(b) => Successor::read(&self.etcd, &self.keys, b.lease).await?,
            None => None,
        };
        self.hand_to_any(seat, next).await
    }

    async fn hand_to_any(&self, seat: &Seat, next: Option<Successor>) -> Result<()> {
        if let Some(next) = next {
            self.hand_to(seat, &next).await?;
        }
        Ok(())
    }

    /// The heir's address is published with the record: its own, as it advertised it when it
    /// joined, and unchanged since (else the hand-over waits for a new read).
    async fn hand_to(&self, seat: &Seat, heir: &Successor) -> Result<bool> {
        let (keys, next) = (&self.keys, &heir.kv);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(seat.key.as_str(), CompareOp::Equal, seat.mod_revision),
                Compare::lease(keys.holder.as_str(), CompareOp::Equal, seat.lease),
                // Never put again since it was created (by a twin adopting it): then its
                // creator may lead on seeing this transaction alone (see `campaign`).
                Compare::mod_revision(next.key(), CompareOp::Equal, next.create_revision()),
                heir.address_unchanged(keys),
            ])
            .and_then([
                TxnOp::delete(seat.key.as_str(), None),
                TxnOp::put(
                    keys.holder.as_str(),
                    next.value(),
                    Some(PutOptions::new().with_lease(next.lease())),
                ),
                keys.publish(heir.address.as_ref().map(KeyValue::value), next.lease()),
            ]);
        let handed = self.etcd.txn(txn).await?.succeeded();
        if handed {
            info!("handed {} to {:?}", keys.holder, Foreign(next.value()));
        }
        Ok(handed)
    }
}
