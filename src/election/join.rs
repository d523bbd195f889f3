//! Taking a seat in the queue: the seat this life already holds (after a failure), the key a
//! dead previous life left under our identity (`adopt`: a restarted leader is not queued behind
//! itself), or a new lease and our key `LOCK/<lease id in hex>`, created only if absent, as etcd's
//! `concurrency/election.go` campaigns.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use log::debug;

use super::adopt::{self, Adoption};
use super::queue::Seat;
use super::rights;
use super::session::renewed;
use super::Election;
use crate::clock::Boot;
use crate::etcd::Result;

impl Election {
    /// Takes a seat. `None`: a live twin renews a key under our identity.
    pub(super) async fn join(&mut self) -> Result<Option<Seat>> {
        if !self.retry.has_joined() {
            rights::prove(&self.etcd, &self.keys, &self.cfg).await?;
        }
        if let Some(seat) = self.seat.clone() {
            // After a failure: the seat of this life, if it still holds, is ours without the
            // look a previous life gets (which would stop renewing it meanwhile).
            let keys_only = GetOptions::new().with_keys_only();
            let own = self.etcd.get(seat.key.as_str(), Some(keys_only)).await?;
            if seat.holds(own.kvs().first()) == Some(true) {
                self.retry.reachable();
                return Ok(Some(seat));
            }
            self.resign().await;
        }
        self.seen.clear();
        let seat = match adopt::previous_life(&self.etcd, &self.keys, &self.cfg).await? {
            Adoption::Twin => return Ok(None),
            Adoption::Adopted { seat, sent } => {
                renewed(&self.report, sent, seat.ttl.as_secs() as i64);
                seat
            }
            Adoption::Nothing => self.create().await?,
        };
        self.seat = Some(seat.clone());
        self.retry.joined();
        self.retry.reachable();
        Ok(Some(seat))
    }

    /// A new lease, and our key bound to it.
    async fn create(&mut self) -> Result<Seat> {
        let sent = Boot::now();
        let grant = self.etcd.grant(self.cfg.lease_ttl).await?;
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
        let lease = Some(PutOptions::new().with_lease(grant.id()));
        let mut ops = vec![TxnOp::put(
            key.as_str(),
            self.cfg.identity.as_str(),
            lease.clone(),
        )];
        // Our address, for whoever hands us the record to publish with it (see `queue`).
        if let Some(address) = &self.cfg.advertise {
            let at = self.keys.address_of(grant.id());
            ops.push(TxnOp::put(at, address.as_str(), lease));
        }
        let put = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then(ops)
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self.etcd.txn(put).await?;
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
        renewed(&self.report, sent, grant.ttl());
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
}
