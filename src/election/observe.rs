//! Who leads, as an observer reads it (`--leader`): reads and watches only, so the README's
//! read-only grant suffices, and nothing an observer does can move the election.
//!
//! "Leads" means "may be running its command". That is whoever the holder record `LOCK` is
//! bound to (see `queue`): a holder of ours keeps it until its command's group is empty, and
//! hands it over only then, so a successor is never named while the old command may run. A
//! record fenced by a forcer (`force`) still names the fenced holder: its command may run until
//! the fence lease expires. With no record, the head of the queue leads, as `etcdctl elect -l`
//! says: a participant of etcd's own recipe (`etcdctl lock`, `etcdctl elect`) runs as soon as it
//! is the oldest key, and writes no record. This module does not print anything; `leader` does.

use std::rc::Rc;

use etcd_client::{Event as WatchEvent, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};

use super::force;
use super::queue::{identity_of, Candidate, Keys};
use super::scan;
use crate::config::Config;
use crate::etcd::{Error, Etcd, Result};
use crate::leader::Leader;

/// Reads who leads one lock.
pub struct Observer {
    etcd: Etcd,
    keys: Keys,
}

/// Who led at `revision`.
pub struct Reading {
    pub revision: i64,
    pub leader: Option<Leader>,
}

impl Observer {
    pub fn new(cfg: Config) -> Observer {
        let keys = Keys::new(&cfg.lock_name);
        Observer {
            etcd: Etcd::new(Rc::new(cfg)),
            keys,
        }
    }

    /// Who leads now: the record, the holder's address and the queue in one read, and what they
    /// name (the holder's key, the head's identity) read at that same revision.
    pub async fn read(&self) -> Result<Reading> {
        let keys = &self.keys;
        let ops = [
            TxnOp::get(keys.holder.as_str(), None),
            TxnOp::get(keys.address.clone(), None),
            scan::first_page(keys),
        ];
        let resp = self.etcd.txn(Txn::new().and_then(ops)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
            _ => None,
        });
        let mut next = || gets.next().ok_or(Error::Malformed("a read of the leader"));
        let (record, address) = (next()?.into_iter().next(), next()?.into_iter().next());
        let first = next()?;
        let leader = match record {
            Some(h) => {
                let keyed = self.at(&keys.candidate_key(h.lease()), revision).await?;
                let key = keyed.filter(|kv| kv.lease() == h.lease());
                Some(of_record(
                    &h,
                    address.as_ref(),
                    key.map(|k| k.create_revision()),
                ))
            }
            None => {
                let queue = scan::candidates(&self.etcd, keys, first, revision).await?;
                self.head(queue.first(), revision).await?
            }
        };
        Ok(Reading { revision, leader })
    }

    /// With no record, the head of the queue: its value is its identity, its key's create
    /// revision the one etcd's recipe fences with, and its address the one it advertises (a
    /// candidate of ours, about to take the record: the line does not change when it does).
    async fn head(&self, head: Option<&Candidate>, revision: i64) -> Result<Option<Leader>> {
        let Some(head) = head else { return Ok(None) };
        let at = || Some(GetOptions::new().with_revision(revision));
        let ops = [
            TxnOp::get(head.key.clone(), at()),
            TxnOp::get(self.keys.address_of(head.lease), at()),
        ];
        let resp = self.etcd.txn(Txn::new().and_then(ops)).await?;
        let mut gets = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(mut g) => {
                g.take_kvs().into_iter().find(|kv| kv.lease() == head.lease)
            }
            _ => None,
        });
        let (kv, address) = (gets.next().flatten(), gets.next().flatten());
        Ok(kv.map(|kv| Leader {
            identity: kv.value().to_vec(),
            address: address.as_ref().map(identity_of),
            revision: Some(head.create_revision),
        }))
    }

    /// A key as it was at `revision`.
    async fn at(&self, key: &str, revision: i64) -> Result<Option<KeyValue>> {
        let opts = GetOptions::new().with_revision(revision);
        let mut resp = self.etcd.get(key, Some(opts)).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Waits, from `from` on, for a change that can change who leads: the record, the holder's
    /// address, a candidate key (the head, when nobody holds the record). An error means the
    /// watch broke (etcd restarted, the history compacted): read again.
    pub async fn wait(&self, from: i64) -> Result<()> {
        let keys = &self.keys;
        let relevant = |e: &WatchEvent| {
            e.kv().is_some_and(|kv| {
                kv.key() == keys.address || keys.concerns(kv, e.event_type(), &keys.holder)
            })
        };
        let (etcd, record, prefix) = (&self.etcd, keys.holder.as_bytes(), keys.prefix.as_bytes());
        let ranges = [(record, &keys.record_end[..]), (prefix, &keys.end[..])];
        Box::pin(etcd.wait_range_changed(&ranges, from, &relevant)).await
    }
}

/// Who the holder record names: its value (the part before the fence's mark when a forcer
/// fenced it: that holder may still run), the address published for its lease, and the create
/// revision of its candidate key (the `ETCD_AWAIT_ELECTION_LEADER_REVISION` its command got;
/// `None` for a holder without one, such as a Go replica, which was given none).
pub fn of_record(holder: &KeyValue, address: Option<&KeyValue>, revision: Option<i64>) -> Leader {
    if let Some(fenced) = force::deposed_holder(holder) {
        return Leader {
            identity: fenced.into_bytes(),
            address: None,
            revision: None,
        };
    }
    let address = address.filter(|a| a.lease() == holder.lease() && holder.lease() != 0);
    Leader {
        identity: holder.value().to_vec(),
        address: address.map(identity_of),
        revision,
    }
}
