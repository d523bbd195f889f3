//! The lock's keys in etcd, and what they say: who is in the queue, who holds the lock, and who
//! asked the holder to yield.
//!
//! This module owns the layout; the campaign and the leader own the recipe that moves through
//! it, `force` the request to yield, `scan` the reading of the queue past other keys, `observe`
//! the reading of who leads. Four kinds of keys, in two ranges (`Keys::record_end`, `Keys::end`):
//!
//! - **Candidate keys** `LOCK/<hex lease id>`, bound to that lease, holding the identity: etcd's
//!   election recipe, so `etcdctl elect -l LOCK` names our leader and `etcdctl lock` interoperates.
//!   Only a key of exactly this form whose name is its own lease counts: a neighbouring lock
//!   `LOCK/cron` puts keys (`LOCK/cron/<hex>`) and a record (`LOCK/cron`) under the same prefix, and
//!   they are not candidates of ours.
//! - **The holder record** `LOCK`, bound to the lease of whoever may be running the command (the
//!   Go tool's lock key, with the same meaning, so old replicas respect it). It is bound to the
//!   holder's lease, and a holder revokes its lease only once its command's group is empty, so
//!   the record vanishes only when its holder can no longer run: a candidate key vanishing says
//!   nothing of the kind (an operator's `etcdctl del`). Whoever finds it bound to another lease
//!   waits. A forcer fencing a holder without a candidate key (a Go replica) re-binds it to a
//!   fence lease nobody renews, which outlives what the fenced holder may still run.
//! - **The yield request** `LOCK\0yield`, bound to a forcer's lease until it leads. No valid lock
//!   name contains a control character, so no lock's key has this name, and it lies outside
//!   `LOCK/`, where `etcdctl elect` and `etcdctl lock` never look.
//! - **The advertised addresses** (`ADVERTISE`): `LOCK\0address`, the holder's, bound to the
//!   holder's lease and written in the transaction that makes it the holder (taken, or handed
//!   over: then absent if the heir advertises none); and `LOCK\0address/<hex lease id>`, each
//!   advertising candidate's own, bound to its lease and created with its key, from which a
//!   leader handing the record over copies its heir's. The address counts only while its lease
//!   is the record's: a fence re-binds the record, and a holder record taken after an operator
//!   deleted the old one leaves the old address bound to the old lease.
//!
//! Whatever else lives under the prefix (the job's own data, another client's keys) is not ours
//! to download: every read of the queue is keys only, a page at a time, and values are read one
//! key at a time where they are needed (the identity shown, the one a record is handed to), or
//! compared by etcd (a restart looking for its previous life).

use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use super::scan;
use crate::etcd::{Error, Etcd, Result};

/// The names of one lock's keys.
pub struct Keys {
    /// `LOCK/`: the candidates' prefix.
    pub prefix: String,
    /// `LOCK`: the holder record.
    pub holder: String,
    /// `LOCK\0yield`: a forcer's request to the holder.
    pub yield_request: Vec<u8>,
    /// `LOCK\0address`: the address the holder advertises.
    pub address: Vec<u8>,
    /// The end of the range `[LOCK\0address, address_end)`: the holder's address and every
    /// candidate's (`LOCK\0address/<hex>`).
    pub address_end: Vec<u8>,
    /// The end of the range `[LOCK, holder_end)`: the record and the holder's address, which a
    /// hand-over writes in one transaction, and no other key of this lock or any other (no lock
    /// name holds a control character).
    pub holder_end: Vec<u8>,
    /// The end of the candidates' range `[LOCK/, end)` (which also holds neighbours' keys such
    /// as `LOCK/cron/...`, which a reader filters out).
    pub end: Vec<u8>,
    /// The end of the range `[LOCK, record_end)`: the record and the yield request, and no key
    /// of any other lock (no lock name holds a control character). Between it and the prefix
    /// lie other locks' keys (`LOCK-x`): the lock's keys are these two ranges, not one.
    pub record_end: Vec<u8>,
}

impl Keys {
    pub fn new(lock: &str) -> Keys {
        Keys {
            prefix: format!("{lock}/"),
            holder: lock.to_string(),
            yield_request: format!("{lock}\0yield").into_bytes(),
            address: format!("{lock}\0address").into_bytes(),
            address_end: format!("{lock}\0address0").into_bytes(),
            holder_end: format!("{lock}\0address\0").into_bytes(),
            // `/` + 1: past every key under the prefix.
            end: format!("{lock}0").into_bytes(),
            // `\0` + 1: past every key `LOCK\0...`.
            record_end: format!("{lock}\u{1}").into_bytes(),
        }
    }

    /// A candidate key of this lock: `LOCK/<hex>` where the hex is the key's own lease.
    pub fn is_candidate(&self, kv: &KeyValue) -> bool {
        kv.lease() != 0
            && kv.key().strip_prefix(self.prefix.as_bytes()) == Some(hex(kv.lease()).as_bytes())
    }

    /// Whether a change of `kv` can change what a leader holding `own` decides: its key, the
    /// record, the yield request, or a candidate key (put: bound to the lease its name says;
    /// deleted: named like one, as a deletion carries no lease). The job's own data cannot.
    pub fn concerns(&self, kv: &KeyValue, change: EventType, own: &str) -> bool {
        let key = kv.key();
        let named = || {
            key.strip_prefix(self.prefix.as_bytes())
                .is_some_and(|rest| {
                    !rest.is_empty() && rest.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                })
        };
        key == self.holder.as_bytes()
            || key == self.yield_request
            || key == own.as_bytes()
            || match change {
                EventType::Put => self.is_candidate(kv),
                EventType::Delete => named(),
            }
    }

    pub fn candidate_key(&self, lease: i64) -> String {
        format!("{}{}", self.prefix, hex(lease))
    }

    /// `LOCK\0address/<hex lease>`: the address the candidate of `lease` advertises.
    pub fn address_of(&self, lease: i64) -> Vec<u8> {
        let mut key = self.address.clone();
        key.extend_from_slice(format!("/{}", hex(lease)).as_bytes());
        key
    }

    /// The holder's address, put for `lease` (or deleted when it advertises none): in the
    /// transaction that makes that lease the holder's.
    pub fn publish(&self, address: Option<&[u8]>, lease: i64) -> TxnOp {
        match address {
            Some(a) => TxnOp::put(
                self.address.clone(),
                a,
                Some(PutOptions::new().with_lease(lease)),
            ),
            None => TxnOp::delete(self.address.clone(), None),
        }
    }
}

fn hex(lease: i64) -> String {
    format!("{lease:x}")
}

/// Our place in the queue.
#[derive(Clone, Debug)]
pub struct Seat {
    pub lease: i64,
    /// The TTL etcd granted.
    pub ttl: Duration,
    pub key: String,
    pub revision: i64,
    /// Our key's mod revision: another process adopting it (a twin) puts it again.
    pub mod_revision: i64,
    /// Adopted from a previous life that may have been running the command: not before then.
    pub not_before: Option<Instant>,
}

impl Seat {
    /// Our key, still ours: present, with our create revision, and not adopted by anybody else.
    pub fn holds(&self, own: Option<&KeyValue>) -> Option<bool> {
        own.map(|kv| kv.mod_revision() == self.mod_revision && kv.lease() == self.lease)
    }
}

/// At most this many keys compared in one transaction: etcd refuses more operations than its
/// `--max-txn-ops` (128 by default; below 64, `failure` names it).
const CHUNK: usize = 64;

/// A candidate key as a keys-only read gives it: where it stands, not who it is. Its identity, a
/// value anybody with write access to the prefix chose, is read only where it is needed
/// ([`with_value`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub key: Vec<u8>,
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
}

impl Candidate {
    pub fn of(keys: &Keys, kv: &KeyValue) -> Option<Candidate> {
        keys.is_candidate(kv).then(|| Candidate {
            key: kv.key().to_vec(),
            lease: kv.lease(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }
}

/// One linearizable read of everything a candidate decides on, at one revision.
pub struct Snapshot {
    pub revision: i64,
    /// The candidate created last before ours: the one we wait for.
    pub pred: Option<Candidate>,
    /// The one created last before our predecessor: once it goes, our predecessor heads the
    /// queue, and we are next.
    pub before_pred: Option<Candidate>,
    /// The oldest candidate: the head of the queue.
    pub head: Option<Candidate>,
    /// Our own key, if it still exists with our create revision (keys only).
    pub own: Option<KeyValue>,
    pub holder: Option<KeyValue>,
    pub yield_request: Option<KeyValue>,
    /// The holder's advertised address (`LOCK\0address`), as the key is.
    pub address: Option<KeyValue>,
    /// The first candidate created after ours: whom a leader hands the record to.
    pub behind: Option<Candidate>,
}

impl Snapshot {
    pub async fn read(etcd: &Etcd, keys: &Keys, seat: &Seat) -> Result<Snapshot> {
        let ops = vec![
            scan::first_page(keys),
            TxnOp::get(seat.key.as_str(), Some(GetOptions::new().with_keys_only())),
            TxnOp::get(keys.holder.as_str(), None),
            TxnOp::get(keys.yield_request.clone(), None),
            TxnOp::get(keys.address.clone(), None),
        ];
        let resp = etcd.txn(Txn::new().and_then(ops)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
            _ => None,
        });
        let mut next = || {
            gets.next()
                .ok_or(Error::Malformed("a read of the snapshot"))
        };
        let first = next()?;
        let own = next()?
            .into_iter()
            .find(|kv| kv.create_revision() == seat.revision);
        let holder = next()?.into_iter().next();
        let yield_request = next()?.into_iter().next();
        let address = next()?.into_iter().next();
        let queue = scan::candidates(etcd, keys, first, revision).await?;
        let ahead = |cand: &&Candidate| cand.create_revision < seat.revision;
        Ok(Snapshot {
            revision,
            pred: queue.iter().rfind(ahead).cloned(),
            before_pred: queue.iter().rev().filter(ahead).nth(1).cloned(),
            head: queue.iter().find(ahead).cloned(),
            own,
            holder,
            yield_request,
            address,
            behind: queue
                .iter()
                .find(|cand| cand.create_revision > seat.revision)
                .cloned(),
        })
    }

    /// The lease bound to the holder record, if any.
    pub fn holder_lease(&self) -> Option<i64> {
        self.holder.as_ref().map(KeyValue::lease)
    }
}

/// A key as it is now, with its value (`None`: gone). One key: its value is bounded by etcd's
/// request size, whatever else the prefix holds.
pub async fn with_value(etcd: &Etcd, key: &[u8]) -> Result<Option<KeyValue>> {
    Ok(etcd.get(key, None).await?.take_kvs().into_iter().next())
}

/// The candidate key of the lease `lease`, with its value, if it has one (a Go replica, or a
/// holder whose key was deleted, has none).
pub async fn key_of_lease(etcd: &Etcd, keys: &Keys, lease: i64) -> Result<Option<KeyValue>> {
    let key = keys.candidate_key(lease);
    Ok(with_value(etcd, key.as_bytes())
        .await?
        .filter(|kv| kv.lease() == lease))
}

/// A candidate to hand the record to: its key with its value (the identity the record will
/// hold), and its advertised address key, if any.
#[derive(Clone, Debug)]
pub struct Successor {
    pub kv: KeyValue,
    pub address: Option<KeyValue>,
}

impl Successor {
    /// The candidate of `lease`, read in one request with its address.
    pub async fn read(etcd: &Etcd, keys: &Keys, lease: i64) -> Result<Option<Successor>> {
        let ops = [
            TxnOp::get(keys.candidate_key(lease), None),
            TxnOp::get(keys.address_of(lease), None),
        ];
        let resp = etcd.txn(Txn::new().and_then(ops)).await?;
        let mut gets = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().find(|kv| kv.lease() == lease),
            _ => None,
        });
        let (kv, address) = (gets.next().flatten(), gets.next().flatten());
        Ok(kv.map(|kv| Successor { kv, address }))
    }

    /// Compares that the heir's address key is as read: the hand-over publishes it.
    pub fn address_unchanged(&self, keys: &Keys) -> Compare {
        unchanged(keys.address_of(self.kv.lease()), self.address.as_ref())
    }
}

/// Every candidate whose value is `identity` (a restart looking for its previous life), oldest
/// first. etcd compares the values: nobody's value is read, however large.
///
/// Every candidate joining asks this of the whole queue, so each question is a transaction of
/// compares alone, which etcd serves as a read (one with a nested transaction counts as a write:
/// a raft entry, written to the log and kept in the member's memory, for every page of the queue
/// at every join). A page of keys is asked at once whether none holds `identity`, the usual
/// answer; only the keys of a page where one may are asked one by one.
pub async fn with_identity(etcd: &Etcd, keys: &Keys, identity: &str) -> Result<Vec<Candidate>> {
    let (_, all) = scan::all(etcd, keys).await?;
    let mut found = Vec::new();
    for chunk in all.chunks(CHUNK) {
        if holds(etcd, chunk, |c| differs(c, identity)).await? {
            continue;
        }
        for cand in chunk {
            if holds(etcd, std::slice::from_ref(cand), |c| same(c, identity)).await? {
                found.push(cand.clone());
            }
        }
    }
    Ok(found)
}

/// Whether every compare `of` the candidates holds, asked as a read. etcd fails a value compare
/// on a missing key: a key gone since the scan holds no value and is no previous life.
async fn holds(
    etcd: &Etcd,
    cands: &[Candidate],
    of: impl Fn(&Candidate) -> Vec<Compare>,
) -> Result<bool> {
    let compares: Vec<Compare> = cands.iter().flat_map(of).collect();
    Ok(etcd.txn(Txn::new().when(compares)).await?.succeeded())
}

fn differs(cand: &Candidate, value: &str) -> Vec<Compare> {
    vec![Compare::value(cand.key.clone(), CompareOp::NotEqual, value)]
}

/// `cand` holds `value`, unchanged since the scan.
fn same(cand: &Candidate, value: &str) -> Vec<Compare> {
    vec![
        Compare::value(cand.key.clone(), CompareOp::Equal, value),
        Compare::mod_revision(cand.key.clone(), CompareOp::Equal, cand.mod_revision),
    ]
}

/// Compares that `kv` (as read) is unchanged, or that the key is absent when `kv` is `None`.
pub fn unchanged(key: impl Into<Vec<u8>>, kv: Option<&KeyValue>) -> Compare {
    match kv {
        Some(kv) => Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision()),
        None => Compare::create_revision(key, CompareOp::Equal, 0),
    }
}

/// The holder record, found bound to our lease, was handed to us: put over an existing record
/// (its version above 1) rather than created where it was absent, as `take_record` does. Nothing
/// else puts it over to a lease with a candidate key: a fence binds it to the fence's own lease.
pub fn is_handed_over(holder: &KeyValue) -> bool {
    holder.version() > 1
}

pub fn identity_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.value()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yield_request_is_no_lock_key_and_outside_the_prefix() {
        let k = Keys::new("app");
        assert!(!k.yield_request.starts_with(k.prefix.as_bytes()));
        assert_ne!(k.yield_request, k.holder.as_bytes());
        assert_eq!(k.candidate_key(0xabc), "app/abc");
    }

    #[test]
    fn the_lock_ranges_hold_every_key_of_the_lock_and_no_neighbours() {
        let k = Keys::new("app");
        let record = k.holder.as_bytes().to_vec()..k.record_end.clone();
        let prefix = k.prefix.as_bytes().to_vec()..k.end.clone();
        let ours = |key: &[u8]| record.contains(&key.to_vec()) || prefix.contains(&key.to_vec());
        assert!(record.contains(&k.holder.as_bytes().to_vec()));
        assert!(record.contains(&k.yield_request));
        assert!(record.contains(&k.address));
        assert!(record.contains(&k.address_of(i64::MAX)));
        let holder = k.holder.as_bytes().to_vec()..k.holder_end.clone();
        assert!(holder.contains(&k.address) && holder.contains(&k.holder.as_bytes().to_vec()));
        assert!(!holder.contains(&k.address_of(1)) && !holder.contains(&k.yield_request));
        let addresses = k.address.clone()..k.address_end.clone();
        assert!(addresses.contains(&k.address_of(i64::MAX)));
        assert!(!addresses.contains(&k.yield_request));
        assert!(prefix.contains(&k.candidate_key(i64::MAX).into_bytes()));
        for neighbour in [
            &b"app0"[..],
            b"ap",
            b"app-x",
            b"app.x",
            b"app\x01",
            b"appx",
            b"apq",
        ] {
            assert!(!ours(neighbour), "{}", String::from_utf8_lossy(neighbour));
        }
    }
}
