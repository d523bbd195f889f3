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
use super::scan;
use super::session::renewed;
use super::Election;
use crate::clock::Boot;
use crate::etcd::Result;

/// What joining came to.
pub(super) enum Joined {
    Seat(Seat),
    /// A live twin renews a key under our identity.
    Twin,
    /// Trying once, the lock was taken: no key was put (it would pass for a waiter, and make a
    /// sick leader hand over to a candidate about to withdraw).
    Busy,
}

impl Election {
    /// Takes a seat.
    pub(super) async fn join(&mut self) -> Result<Joined> {
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
                return Ok(Joined::Seat(seat));
            }
            self.resign().await;
        }
        self.seen.clear();
        let seat = match adopt::previous_life(&self.etcd, &self.keys, &self.cfg).await? {
            Adoption::Twin => return Ok(Joined::Twin),
            Adoption::Adopted { seat, sent } => {
                renewed(&self.report, sent, seat.ttl.as_secs() as i64);
                seat
            }
            Adoption::Nothing if self.tries_once() => {
                let created = match self.free().await? {
                    Some(revision) => self.create(Some(revision)).await?,
                    None => None,
                };
                let Some(seat) = created else {
                    self.retry.reachable();
                    return Ok(Joined::Busy);
                };
                seat
            }
            Adoption::Nothing => match self.create(None).await? {
                Some(seat) => seat,
                None => return Err(crate::etcd::Error::Malformed("a seat")),
            },
        };
        self.seat = Some(seat.clone());
        self.retry.joined();
        self.retry.reachable();
        Ok(Joined::Seat(seat))
    }

    /// `WAIT_TIMEOUT=0`, never elected: a candidate that joins only a free lock.
    fn tries_once(&self) -> bool {
        self.cfg.wait_timeout.is_some_and(|w| w.is_zero()) && !self.has_led
    }

    /// The revision at which the lock was free (no candidate key, no record), if it was.
    async fn free(&self) -> Result<Option<i64>> {
        let keys_only = GetOptions::new().with_keys_only();
        let ops = [
            scan::first_page(&self.keys),
            TxnOp::get(self.keys.holder.as_str(), Some(keys_only)),
        ];
        let resp = self.etcd.txn(Txn::new().and_then(ops)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
            _ => None,
        });
        let (Some(first), Some(holder)) = (gets.next(), gets.next()) else {
            return Err(crate::etcd::Error::Malformed("a read of the lock"));
        };
        if !holder.is_empty() {
            return Ok(None);
        }
        let queue = scan::candidates(&self.etcd, &self.keys, first, revision).await?;
        Ok(queue.is_empty().then_some(revision))
    }

    /// Our key is created only if absent; trying once (`free`), only if the lock is still
    /// free: no record, and no key under the prefix created or changed since it was read free.
    fn conditions(&self, key: &str, free: Option<i64>) -> Vec<Compare> {
        let mut when = vec![Compare::create_revision(key, CompareOp::Equal, 0)];
        if let Some(revision) = free {
            let holder = self.keys.holder.as_str();
            when.push(Compare::create_revision(holder, CompareOp::Equal, 0));
            let prefix = self.keys.prefix.as_str();
            when.push(
                Compare::mod_revision(prefix, CompareOp::Less, revision + 1)
                    .with_range(self.keys.end.clone()),
            );
        }
        when
    }

    /// A new lease, and our key bound to it. With `free` (trying once: the revision at which the
    /// lock was read free), only if still no record stands and nothing under the prefix changed
    /// since (`None`: it did; the lease is left to revoke).
    async fn create(&mut self, free: Option<i64>) -> Result<Option<Seat>> {
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
            .when(self.conditions(&key, free))
            .and_then(ops)
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self.etcd.txn(put).await?;
        if free.is_some() && !resp.succeeded() {
            return Ok(None);
        }
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
        Ok(Some(Seat {
            lease: grant.id(),
            ttl,
            key,
            revision,
            mod_revision,
            not_before: None,
        }))
    }
}
