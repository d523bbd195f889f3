//! The rights a candidate needs on etcd, and their proof before it joins the election.
//!
//! etcd grants a lease without any right on keys, so a user short of a right would otherwise
//! find out only after joining, when failures are retried (a right revoked while running must
//! not take a fleet down): it would retry for ever. Every right a candidate will use is
//! therefore proven first, on the lock's two ranges (`queue::Keys`): read on the record's
//! range `[LOCK, LOCK\x01)` and the candidates' prefix `LOCK/` (snapshots, scans, watches, and
//! the lease look-ups etcd allows only to readers of a lease's keys), write on the record
//! `LOCK`, the yield request `LOCK\0yield` and the prefix (our key; a lease revoked needs
//! write on every key bound to it, and ours are all there; a fenced Go replica's lease holds
//! only the record), and the advertised addresses `[LOCK\0address, LOCK\0address0)` (every
//! candidate's, whether it advertises or not: a leader publishes its heir's address when it
//! hands the record over). A feature that uses another key or range adds its right to
//! [`needed`].
//!
//! The proof changes nothing: a transaction whose one compare can never hold (a create
//! revision below 0) carries a request of each right in its branch. etcd checks the rights of
//! every request in both branches before it evaluates the compare (`checkTxnAuth`), and a
//! transaction that writes nothing makes no revision, no event, and wakes no watch. All rights
//! are proven at once; only when etcd refuses is each tried alone, to name the one refused.
//!
//! This module knows which rights, not what a refusal means: the error it returns is etcd's
//! own (permission denied), with the refused right added to its words, and `failure` decides
//! (permanent: the wrapper ends at start-up).

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use tonic::Code;

use super::queue::Keys;
use crate::config::Config;
use crate::etcd::{Error, Etcd, Result};
use crate::format::Foreign;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// One right: an access to a key, or to the range `[key, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Right {
    access: Access,
    key: Vec<u8>,
    end: Option<Vec<u8>>,
    /// What the wrapper keeps there.
    what: &'static str,
}

/// Every right a candidate uses, reads first: a write's proof compares its key, which needs
/// read.
fn needed(keys: &Keys) -> Vec<Right> {
    let right = |access, key: &[u8], end: Option<&[u8]>, what| Right {
        access,
        key: key.to_vec(),
        end: end.map(<[u8]>::to_vec),
        what,
    };
    let (record, prefix) = (keys.holder.as_bytes(), keys.prefix.as_bytes());
    let (record_end, end) = (Some(&keys.record_end[..]), Some(&keys.end[..]));
    vec![
        right(
            Access::Read,
            record,
            record_end,
            "the holder record, the yield request and the advertised addresses",
        ),
        right(Access::Read, prefix, end, "the candidates' keys"),
        right(Access::Write, record, None, "the holder record"),
        right(
            Access::Write,
            &keys.yield_request,
            None,
            "the yield request",
        ),
        right(Access::Write, prefix, end, "the candidates' keys"),
        right(
            Access::Write,
            &keys.address,
            Some(&keys.address_end),
            "the advertised addresses",
        ),
    ]
}

impl Right {
    /// A request that needs exactly this right.
    fn request(&self) -> TxnOp {
        match (self.access, &self.end) {
            (Access::Read, None) => TxnOp::get(self.key.clone(), None),
            (Access::Read, Some(end)) => TxnOp::get(
                self.key.clone(),
                Some(GetOptions::new().with_range(end.clone())),
            ),
            (Access::Write, None) => TxnOp::put(self.key.clone(), "", None),
            (Access::Write, Some(end)) => TxnOp::delete(
                self.key.clone(),
                Some(DeleteOptions::new().with_range(end.clone())),
            ),
        }
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access = match self.access {
            Access::Read => "read",
            Access::Write => "write",
        };
        let key = Foreign(&self.key);
        match &self.end {
            None => write!(f, "{access} the key {key:?}"),
            Some(end) => write!(f, "{access} the range [{key:?}, {:?})", Foreign(end)),
        }?;
        write!(f, " ({})", self.what)
    }
}

/// A transaction that is never applied but needs every right of `rights`: `key` is never
/// created below revision 0.
fn proof(key: &[u8], rights: &[Right]) -> Txn {
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Less, 0)])
        .and_then(rights.iter().map(Right::request).collect::<Vec<_>>())
}

fn denied(e: &Error) -> Option<&tonic::Status> {
    match e {
        Error::Etcd(etcd_client::Error::GRpcStatus(s)) if s.code() == Code::PermissionDenied => {
            Some(s)
        }
        _ => None,
    }
}

/// Proves that the etcd user may do everything a candidate of this lock does. A refusal is
/// etcd's permission denied, naming the right refused and the grant needed.
pub async fn prove(etcd: &Etcd, keys: &Keys, cfg: &Config) -> Result<()> {
    let rights = needed(keys);
    let all = match etcd.txn(proof(keys.holder.as_bytes(), &rights)).await {
        Err(e) if denied(&e).is_some() => e,
        r => return r.map(drop),
    };
    for right in &rights {
        let alone = etcd.txn(proof(&right.key, std::slice::from_ref(right)));
        if let Err(e) = alone.await {
            return Err(match denied(&e) {
                Some(etcd) => refused(etcd, right, keys, cfg),
                None => e,
            });
        }
    }
    // Each granted alone, refused together: the grants changed in between. Proven next time.
    Err(all)
}

/// etcd's refusal, with the right refused, the user, and the grant a candidate needs.
fn refused(etcd: &tonic::Status, right: &Right, keys: &Keys, cfg: &Config) -> Error {
    let user = match &cfg.user {
        Some((name, _)) => format!("user {:?}", Foreign(name.as_bytes())),
        None => "the user of the client certificate".to_string(),
    };
    let etcd = etcd.message();
    Error::Etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
        Code::PermissionDenied,
        format!(
            "{etcd}: {user} may not {right}; a candidate needs readwrite on [{:?}, {:?}) and \
             on the prefix {:?} (see the README)",
            Foreign(keys.holder.as_bytes()),
            Foreign(&keys.record_end),
            Foreign(keys.prefix.as_bytes()),
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_right_lies_within_the_locks_two_ranges() {
        let k = Keys::new("app");
        let record = k.holder.as_bytes().to_vec()..k.record_end.clone();
        let prefix = k.prefix.as_bytes().to_vec()..k.end.clone();
        for r in needed(&k) {
            let end = r.end.clone();
            let within = |range: &std::ops::Range<Vec<u8>>| {
                range.contains(&r.key) && end.as_ref().is_none_or(|e| *e <= range.end)
            };
            assert!(within(&record) || within(&prefix), "{r}");
        }
    }

    #[test]
    fn reads_come_first_and_every_key_written_is_read() {
        let rights = needed(&Keys::new("app"));
        let reads = rights
            .iter()
            .take_while(|r| r.access == Access::Read)
            .count();
        let (read, written) = rights.split_at(reads);
        assert!(written.iter().all(|r| r.access == Access::Write));
        for w in written {
            let readable = read
                .iter()
                .any(|r| r.key <= w.key && r.end.as_ref().is_some_and(|end| w.key < *end));
            assert!(
                readable,
                "{w}: its proof compares a key not proven readable"
            );
        }
    }

    #[test]
    fn a_right_is_shown_escaped() {
        let k = Keys::new("app");
        let shown: Vec<String> = needed(&k).iter().map(ToString::to_string).collect();
        assert_eq!(
            shown[0],
            "read the range [\"app\", \"app\\u{1}\") (the holder record, the yield request and the advertised addresses)"
        );
        assert_eq!(
            shown[3],
            "write the key \"app\\u{0}yield\" (the yield request)"
        );
        assert_eq!(
            shown[4],
            "write the range [\"app/\", \"app0\") (the candidates' keys)"
        );
    }
}
