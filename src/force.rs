//! Force acquire: a preferred candidate takes the lock from its holder, and still never starts
//! while the holder's command may run.
//!
//! The forcer asks; it never revokes a lease that is not its own. In one transaction it puts the
//! yield request (`queue::Keys::yield_request`, bound to its own lease) and deletes the keys of
//! the candidates waiting between the holder and itself, so that they go back in line behind it
//! all at once, never one at a time. The holder's own key stays until the holder lets go, so
//! `etcdctl elect -l` keeps naming it while its command stops.
//!
//! A holder of ours acknowledges by deleting the request, stops its command as for any loss of
//! leadership (SIGTERM, SIGKILL at its kill deadline) while renewing its lease, then revokes it:
//! the forcer, now at the head of the queue, takes the record within milliseconds. A holder that
//! does not acknowledge within `RETRY_PERIOD` (an older version, `etcdctl lock`, a wrapper cut off
//! from etcd) is deposed: its key deleted, and the record bound to the holder's own lease, so that
//! every candidate (the forcer too, restarted or not) waits until that lease is gone. A Go replica,
//! which holds the record without a key, is fenced out for its TTL and a second instead.
//!
//! Two forcers: the first request stands, and a forcer that finds another's pending request
//! waits in line as a plain candidate.

use std::time::Instant;

use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use log::{info, warn};

use crate::config::Config;
use crate::etcd::{op_timeout, timed, wait_changed, Etcd, Result};
use crate::failure::is_lease_not_found;
use crate::queue::{identity_of, key_of, unchanged, Keys, Seat, Snapshot};

/// Returns once the holder acknowledged, was deposed, or there was nobody to depose, with the
/// lease of whoever it asked: the campaign then waits for the holder record as any candidate
/// does, and for that lease to be gone.
pub async fn request_yield(
    etcd: &Etcd,
    keys: &Keys,
    cfg: &Config,
    seat: &Seat,
) -> Result<Option<i64>> {
    let t = op_timeout(cfg);
    let mut asked: Option<Instant> = None;
    let mut runner_lease = None;
    loop {
        let mut c = etcd.client().await?;
        let snap = Snapshot::read(&mut c, keys, seat, false, t).await?;
        if snap.own.is_none() {
            return Ok(runner_lease);
        }
        let ours = |kv: &KeyValue| kv.lease() == seat.lease;
        match &snap.yield_request {
            Some(y) if !ours(y) => {
                info!(
                    "force acquire: {:?} asked first; waiting in line",
                    identity_of(y)
                );
                return Ok(runner_lease);
            }
            // Our request (or our previous life's) is pending.
            Some(_) => {
                asked.get_or_insert_with(Instant::now);
            }
            // Asked, and the request is gone: the holder acknowledged.
            None if asked.is_some() => return Ok(runner_lease),
            None => {}
        }
        // Who runs the command, or may: the lease bound to the record, else the head of the queue.
        let runner = match &snap.holder {
            Some(h) if ours(h) => return Ok(runner_lease),
            // Deposed already (by us, before a restart, or by another forcer): wait as anyone.
            Some(h) if is_deposal(h) => return Ok(runner_lease),
            Some(h) => Runner {
                lease: h.lease(),
                identity: identity_of(h),
                key: snap
                    .ahead
                    .iter()
                    .find(|kv| kv.lease() == h.lease())
                    .cloned(),
            },
            None => match snap.ahead.first() {
                Some(head) => Runner {
                    lease: head.lease(),
                    identity: identity_of(head),
                    key: Some(head.clone()),
                },
                None => return Ok(runner_lease),
            },
        };
        runner_lease = Some(runner.lease);
        let Some(since) = asked else {
            let waiting: Vec<&KeyValue> = snap
                .ahead
                .iter()
                .filter(|kv| kv.lease() != runner.lease)
                .collect();
            let mut ops = vec![TxnOp::put(
                keys.yield_request.clone(),
                cfg.identity.as_str(),
                Some(PutOptions::new().with_lease(seat.lease)),
            )];
            ops.extend(waiting.iter().map(|kv| TxnOp::delete(kv.key(), None)));
            let txn = Txn::new()
                // No request was pending in this snapshot (`None` above).
                .when(unchanged_since(keys, seat, &snap))
                .and_then(ops);
            if timed(t, c.txn(txn)).await?.succeeded() {
                warn!(
                    "force acquire: asked {:?} to yield; {} waiting candidate(s) ahead of us go back in line",
                    runner.identity,
                    waiting.len()
                );
                asked = Some(Instant::now());
            }
            continue;
        };
        let bound = since + cfg.retry_period;
        // Nobody to ask (a Go replica holds the record without a key of ours), or no answer.
        if runner.key.is_none() || Instant::now() >= bound {
            depose(&mut c, keys, cfg, seat, &snap, &runner).await?;
            continue;
        }
        let from = snap.revision + 1;
        let runner_key = runner.key.as_ref().map_or(&[][..], |kv| kv.key());
        let _ = tokio::time::timeout_at(bound.into(), async {
            tokio::select! {
                r = wait_changed(etcd, &keys.yield_request, from) => r,
                r = wait_changed(etcd, keys.holder.as_bytes(), from) => r,
                r = wait_changed(etcd, runner_key, from) => r,
            }
        })
        .await;
    }
}

/// Whoever may be running the command: the lease bound to the holder record (or, with no record,
/// the head of the queue), its identity, and its candidate key if it has one.
struct Runner {
    lease: i64,
    identity: String,
    key: Option<KeyValue>,
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

/// Marks the holder record of a deposed holder: its value is no identity, and a forcer that finds
/// it knows a deposal is in progress.
const DEPOSED: &str = " (deposed by ";

fn is_deposal(kv: &KeyValue) -> bool {
    identity_of(kv).contains(DEPOSED)
}

/// Deposes a holder that did not yield, in one transaction: its candidate key deleted (what an
/// older wrapper notices), our request withdrawn, and the record bound to the holder's own lease,
/// so that it vanishes exactly when that lease does: revoked by the holder once its command
/// stopped, or expired.
///
/// A Go replica has no candidate key and learns of its deposal only from its lease: the record is
/// re-bound to a fence lease nobody renews, of its TTL plus a second, and its lease revoked.
async fn depose(
    c: &mut Client,
    keys: &Keys,
    cfg: &Config,
    seat: &Seat,
    snap: &Snapshot,
    runner: &Runner,
) -> Result<()> {
    let t = op_timeout(cfg);
    let record = format!("{}{DEPOSED}{})", runner.identity, cfg.identity);
    let guard = unchanged_since(keys, seat, snap);
    let withdraw = TxnOp::delete(keys.yield_request.clone(), None);
    if let Some(key) = &runner.key {
        let txn = Txn::new().when(guard).and_then([
            TxnOp::put(
                keys.holder.as_str(),
                record,
                Some(PutOptions::new().with_lease(runner.lease)),
            ),
            TxnOp::delete(key.key(), None),
            withdraw,
        ]);
        if timed(t, c.txn(txn)).await?.succeeded() {
            warn!(
                "force acquire: {:?} ({}) did not yield within {:?}: deposed; waiting for its lease to end",
                runner.identity,
                key_of(key),
                cfg.retry_period,
            );
        }
        return Ok(());
    }
    let ttl = timed(t, c.lease_time_to_live(runner.lease, None)).await?;
    if ttl.ttl() < 0 {
        // Gone meanwhile, and the record with it. Read again.
        return Ok(());
    }
    // A second above its full TTL: etcd reports whole seconds, and what is left of a lease can
    // read 0 with most of a second to go.
    let granted = ttl.granted_ttl() + 1;
    let fence = timed(t, c.lease_grant(granted, None)).await?;
    let txn = Txn::new().when(guard).and_then([
        TxnOp::put(
            keys.holder.as_str(),
            record,
            Some(PutOptions::new().with_lease(fence.id())),
        ),
        withdraw,
    ]);
    if !timed(t, c.txn(txn)).await?.succeeded() {
        // Changed under us: the fence lease is ours and unused.
        let _ = timed(t, c.lease_revoke(fence.id())).await;
        return Ok(());
    }
    // The Go replica stops only once its lease is revoked: retried until it is, then the fence
    // renewed, so that it counts from the revoke, not from the grant.
    let until = Instant::now() + std::time::Duration::from_secs(granted as u64);
    while let Err(e) = timed(t, c.lease_revoke(runner.lease)).await {
        if is_lease_not_found(&e) || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(cfg.retry_period.min(t)).await;
    }
    let _ = timed(t, c.lease_keep_alive(fence.id())).await;
    warn!(
        "force acquire: {:?} holds {} without a candidate key (a Go replica): its lease revoked, \
         the lock fenced for {granted}s",
        runner.identity, keys.holder,
    );
    Ok(())
}
