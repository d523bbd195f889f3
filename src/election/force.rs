//! Force acquire: a preferred candidate takes the lock from its holder, and still never starts
//! while the holder's command may run, nor lets anybody else start.
//!
//! The forcer asks; it never deletes a key that is not its own and never revokes a lease that is
//! not its own (but a Go replica's, below). In one transaction it puts the yield request
//! (`queue::Keys::yield_request`, bound to its own lease), and it leaves the request standing
//! until it leads. Deleting anybody's key would start participants of etcd's own recipe
//! (`etcdctl lock`, `etcdctl elect`, client-go's `concurrency`, the Go tool's v0.1.x): they wait
//! only until every key created before theirs is gone, and never read our record or request.
//!
//! A holder of ours that sees the request stops its command as for any loss of leadership
//! (SIGTERM, SIGKILL at its kill deadline) while renewing its lease, then hands the record to the
//! forcer in the transaction that deletes its key: the forcer starts within milliseconds once
//! nobody is queued between them. Candidates of ours queued between them go back in line behind
//! the forcer when they find the record handed to a candidate behind them, or the request
//! standing and no record; a participant of etcd's recipe queued between them runs first, and the
//! forcer waits for it like any candidate. A holder that does not answer (`etcdctl lock`, an older
//! version, a wrapper cut off from etcd, which stops by its renew deadline) is waited for: its
//! key and the record go with its lease, never before.
//!
//! A Go replica holds the record without a candidate key and learns of its deposal only from its
//! lease: the record is re-bound to a fence lease nobody renews, of its TTL plus a second, and its
//! lease revoked. A holder of ours whose key an operator deleted gets the same.
//!
//! Two forcers: the first request stands, and a forcer that finds another's request waits in
//! line as a plain candidate.

use std::time::Instant;

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use log::{info, warn};

use super::queue::{self, identity_of, unchanged, Keys, Seat, Snapshot};
use crate::config::Config;
use crate::etcd::{Error, Etcd, Result};
use crate::format::Foreign;

/// Puts the yield request unless another forcer's stands, and fences out a holder without a
/// candidate key. Returns the lease of whoever it asked, if anybody: the campaign then waits for
/// the holder record and the queue ahead as any candidate does, and for that lease to be gone.
pub async fn request_yield(
    etcd: &Etcd,
    keys: &Keys,
    cfg: &Config,
    seat: &Seat,
) -> Result<Option<i64>> {
    loop {
        let snap = Snapshot::read(etcd, keys, seat).await?;
        if snap.own.is_none() {
            return Ok(None);
        }
        let Some(runner) = runner(etcd, keys, seat, &snap).await? else {
            return Ok(None);
        };
        match &snap.yield_request {
            Some(y) if y.lease() != seat.lease => {
                info!(
                    "force acquire: {:?} asked first; waiting in line",
                    Foreign(y.value())
                );
                return Ok(None);
            }
            // Our request (or our previous life's) stands.
            Some(_) => {
                if !runner.keyed {
                    fence(etcd, keys, cfg, seat, &snap, &runner).await?;
                }
                return Ok(Some(runner.lease));
            }
            None => {}
        }
        let ask = Txn::new()
            // No request was pending in this snapshot (`None` above).
            .when(unchanged_since(keys, seat, &snap))
            .and_then([TxnOp::put(
                keys.yield_request.clone(),
                cfg.identity.as_str(),
                Some(PutOptions::new().with_lease(seat.lease)),
            )]);
        if etcd.txn(ask).await?.succeeded() {
            warn!(
                "force acquire: asked {:?} to yield",
                Foreign(runner.identity.as_bytes())
            );
        }
    }
}

/// Whoever runs the command, or may: the lease bound to the holder record (or, with no record,
/// the head of the queue), its identity, and whether it has a candidate key.
struct Runner {
    lease: i64,
    identity: String,
    keyed: bool,
}

/// The runner to ask, if any: nobody when the record is ours or a deposal's, or the queue ahead
/// of us is empty.
async fn runner(etcd: &Etcd, keys: &Keys, seat: &Seat, snap: &Snapshot) -> Result<Option<Runner>> {
    if let Some(h) = &snap.holder {
        // Ours, or deposed already (by us, before a restart, or by another forcer).
        if h.lease() == seat.lease || is_deposal(h) {
            return Ok(None);
        }
        let keyed = queue::key_of_lease(etcd, keys, h.lease()).await?.is_some();
        return Ok(Some(Runner {
            lease: h.lease(),
            identity: identity_of(h),
            keyed,
        }));
    }
    let Some(head) = &snap.head else {
        return Ok(None);
    };
    if head.lease == seat.lease {
        return Ok(None);
    }
    let identity = queue::with_value(etcd, &head.key)
        .await?
        .map_or_else(String::new, |kv| identity_of(&kv));
    Ok(Some(Runner {
        lease: head.lease,
        identity,
        keyed: true,
    }))
}

/// Guards a forcer's transaction: our key, the holder record and the yield request as `snap`
/// read them.
fn unchanged_since(keys: &Keys, seat: &Seat, snap: &Snapshot) -> [Compare; 3] {
    [
        Compare::create_revision(seat.key.as_str(), CompareOp::Equal, seat.revision),
        unchanged(keys.holder.as_str(), snap.holder.as_ref()),
        unchanged(keys.yield_request.clone(), snap.yield_request.as_ref()),
    ]
}

/// Marks the holder record of a fenced holder: its value is no identity, and a forcer that finds
/// it knows a deposal is in progress.
const DEPOSED: &str = " (deposed by ";

fn is_deposal(kv: &KeyValue) -> bool {
    identity_of(kv).contains(DEPOSED)
}

/// The identity of the holder a fenced record names (its command may still run), if it is one.
pub fn deposed_holder(kv: &KeyValue) -> Option<String> {
    let value = identity_of(kv);
    value
        .split_once(DEPOSED)
        .map(|(holder, _)| holder.to_string())
}

/// Fences out a holder without a candidate key (a Go replica, or one of ours whose key an
/// operator deleted), which learns of its deposal only from its lease: the record is re-bound to
/// a fence lease nobody renews, of its TTL plus a second, and its lease revoked. No key under the
/// prefix changes, so no participant of etcd's recipe is released.
async fn fence(
    etcd: &Etcd,
    keys: &Keys,
    cfg: &Config,
    seat: &Seat,
    snap: &Snapshot,
    runner: &Runner,
) -> Result<()> {
    // Whatever the holder's value held, the record stays an identity's size.
    let holder = crate::format::cut(&runner.identity, crate::format::SHOWN);
    let record = format!("{holder}{DEPOSED}{})", cfg.identity);
    let Some(ttl) = etcd.time_to_live(runner.lease).await? else {
        // Gone meanwhile, and the record with it.
        return Ok(());
    };
    // A second above its full TTL: etcd reports whole seconds, and what is left of a lease can
    // read 0 with most of a second to go.
    let granted = ttl.granted_ttl() + 1;
    let fence = etcd.grant(granted).await?;
    let txn = Txn::new()
        .when(unchanged_since(keys, seat, snap))
        .and_then([TxnOp::put(
            keys.holder.as_str(),
            record,
            Some(PutOptions::new().with_lease(fence.id())),
        )]);
    if !etcd.txn(txn).await?.succeeded() {
        // Changed under us: the fence lease is ours and unused.
        let _ = etcd.revoke(fence.id()).await;
        return Ok(());
    }
    // The Go replica stops only once its lease is revoked: retried until it is, then the fence
    // renewed, so that it counts from the revoke, not from the grant.
    let until = Instant::now() + std::time::Duration::from_secs(granted as u64);
    while let Err(e) = etcd.revoke(runner.lease).await {
        if matches!(e, Error::LeaseGone) || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(cfg.retry_period.min(etcd.limit())).await;
    }
    let _ = etcd.renew(fence.id()).await;
    warn!(
        "force acquire: {:?} holds {} without a candidate key (a Go replica): its lease revoked, \
         the lock fenced for {granted}s",
        Foreign(runner.identity.as_bytes()),
        keys.holder,
    );
    Ok(())
}
