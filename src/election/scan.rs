//! Every candidate of one lock, read past whatever else lives under its prefix.
//!
//! The prefix `LOCK/` is shared: the job's own data (`LOCK/data/...`, the README's fencing
//! example), a neighbouring lock's keys, anybody's values. A candidate key has a name of one
//! shape, `LOCK/` followed by lowercase hex digits (the key's own lease), so the scan goes
//! through the prefix in key order, a page of keys (names only, never values) at a time, and
//! leaps over every branch whose names cannot have that shape: at the first key `LOCK/da` +
//! `t`..., the whole branch `LOCK/dat` is passed over in one step. Its cost follows the number
//! of candidates, not the number or size of other keys.
//!
//! Pages are read in key order without a revision filter or a sort, the one kind of range etcd
//! serves from its index a page at a time: a range sorted by create revision, or filtered on it,
//! loads every key of the prefix before it applies a limit. All pages are read at the revision
//! of the first, so the scan shows one state of the queue. This module only reads; `queue`
//! decides what the candidates found mean.

use etcd_client::{GetOptions, KeyValue, TxnOp};

use super::queue::{Candidate, Keys};
use crate::etcd::{Etcd, Result};

/// Keys per page: names only, a few KiB.
const PAGE: i64 = 128;

/// The request for the first page, to put into a transaction that reads the rest of a snapshot.
pub fn first_page(keys: &Keys) -> TxnOp {
    TxnOp::get(keys.prefix.as_str(), Some(page(keys)))
}

fn page(keys: &Keys) -> GetOptions {
    GetOptions::new()
        .with_range(keys.end.clone())
        .with_keys_only()
        .with_limit(PAGE)
}

/// Every candidate, oldest first: from `first` (the first page, read at `revision`) on.
pub async fn candidates(
    etcd: &Etcd,
    keys: &Keys,
    first: Vec<KeyValue>,
    revision: i64,
) -> Result<Vec<Candidate>> {
    let mut found = Vec::new();
    let mut kvs = first;
    loop {
        let next = sift(keys, &kvs, &mut found);
        let Some(from) = next else { break };
        let opts = page(keys).with_revision(revision);
        kvs = etcd.get(from, Some(opts)).await?.take_kvs();
    }
    found.sort_by_key(|cand| cand.create_revision);
    Ok(found)
}

/// Every candidate now, oldest first, with the revision it was read at.
pub async fn all(etcd: &Etcd, keys: &Keys) -> Result<(i64, Vec<Candidate>)> {
    let mut resp = etcd.get(keys.prefix.as_str(), Some(page(keys))).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let found = candidates(etcd, keys, resp.take_kvs(), revision).await?;
    Ok((revision, found))
}

/// Adds the candidates of one page to `found`; returns where the next page starts, if anywhere.
/// Keys of a branch passed over that are in this page anyway are skipped, not read again.
fn sift(keys: &Keys, kvs: &[KeyValue], found: &mut Vec<Candidate>) -> Option<Vec<u8>> {
    let prefix = keys.prefix.as_bytes();
    let mut skip: Option<Vec<u8>> = None;
    for kv in kvs {
        if skip.as_deref().is_some_and(|to| kv.key() < to) {
            continue;
        }
        let rest = kv.key().strip_prefix(prefix).unwrap_or_default();
        let hex = rest.iter().take_while(|b| is_hex(**b)).count();
        if hex == rest.len() {
            found.extend(Candidate::of(keys, kv));
            continue;
        }
        // `LOCK/` + `rest[..=hex]`: every name in this branch has something else than a hex
        // digit at this place. Go on past the whole branch (or stop: past the lock's range).
        skip = Some(past(&kv.key()[..prefix.len() + hex + 1], &keys.end)?);
    }
    let last = kvs.last().filter(|_| kvs.len() as i64 == PAGE)?;
    let next = [last.key(), &[0]].concat();
    Some(skip.map_or(next.clone(), |to| to.max(next)))
}

/// The first key after every key that starts with `branch`, if it is still within the lock.
fn past(branch: &[u8], end: &[u8]) -> Option<Vec<u8>> {
    let mut next = branch.to_vec();
    while let Some(&b) = next.last() {
        if b < 0xff {
            *next.last_mut()? += 1;
            return (next.as_slice() < end).then_some(next);
        }
        next.pop();
    }
    None
}

fn is_hex(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_is_passed_over_whole() {
        let keys = Keys::new("app");
        assert_eq!(
            past(b"app/dat", &keys.end).as_deref(),
            Some(&b"app/dau"[..])
        );
        assert_eq!(past(b"app/", &keys.end).as_deref(), None);
        assert_eq!(past(b"app/\xff", &keys.end).as_deref(), None);
        assert_eq!(
            past(b"app/a\xff", &keys.end).as_deref(),
            Some(&b"app/b"[..])
        );
    }
}
