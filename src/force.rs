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
//! does not acknowledge within `RETRY_PERIOD` (a Go replica, an older version, a wrapper cut off
//! from etcd) is fenced out: its key is deleted and the holder record re-bound to a fresh lease
//! of the holder's TTL plus a second that nobody renews, so every candidate (the forcer too,
//! restarted or not) waits until the deposed holder can no longer be running.
//!
//! Two forcers: the first request stands, and a forcer that finds another's pending request
//! waits in line as a plain candidate.

use std::time::Instant;

use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use log::{info, warn};

use crate::config::Config;
use crate::etcd::{op_timeout, timed, wait_changed, Etcd, Result};
use crate::queue::{identity_of, key_of, unchanged, Keys, Seat, Snapshot};

/// Returns once the holder acknowledged, was fenced out, or there was nobody to depose; the
/// campaign then waits for the holder record as any candidate does.
pub async fn request_yield(etcd: &Etcd, keys: &Keys, cfg: &Config, seat: &Seat) -> Result<()> {
    let t = op_timeout(cfg);
    let mut asked: Option<Instant> = None;
    loop {
        let mut c = etcd.client().await?;
        let snap = Snapshot::read(&mut c, keys, seat, t).await?;
        if snap.own.is_none() {
            return Ok(());
        }
        let ours = |kv: &KeyValue| kv.lease() == seat.lease;
        match &snap.yield_request {
            Some(y) if !ours(y) => {
                info!(
                    "force acquire: {:?} asked first; waiting in line",
                    identity_of(y)
                );
                return Ok(());
            }
            // Our request (or our previous life's) is pending.
            Some(_) => {
                asked.get_or_insert_with(Instant::now);
            }
            // Asked, and the request is gone: the holder acknowledged.
            None if asked.is_some() => return Ok(()),
            None => {}
        }
        // Who runs the command, or may: the lease bound to the record, else the head of the queue.
        let runner = match &snap.holder {
            Some(h) if ours(h) => return Ok(()),
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
                None => return Ok(()),
            },
        };
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
                .when([
                    Compare::create_revision(seat.key.as_str(), CompareOp::Equal, seat.revision),
                    unchanged(keys.holder.as_str(), snap.holder.as_ref()),
                    unchanged(keys.yield_request.clone(), None),
                ])
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
            fence(&mut c, keys, cfg, seat, &snap, &runner).await?;
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

/// Deposes a holder that did not yield: its key deleted, the record re-bound to a lease that
/// outlives whatever the holder may still run, and our request withdrawn, in one transaction.
async fn fence(
    c: &mut Client,
    keys: &Keys,
    cfg: &Config,
    seat: &Seat,
    snap: &Snapshot,
    runner: &Runner,
) -> Result<()> {
    let t = op_timeout(cfg);
    let ttl = timed(t, c.lease_time_to_live(runner.lease, None)).await?;
    if ttl.ttl() < 0 {
        // Gone meanwhile: its keys with it. Read again.
        return Ok(());
    }
    // A second above its full TTL: its holder renewed at most then, and etcd reports whole
    // seconds. Never what is left of it, which can read 0 with most of a second to go.
    let granted = ttl.granted_ttl() + 1;
    let fence = timed(t, c.lease_grant(granted, None)).await?;
    let mut ops = vec![
        TxnOp::put(
            keys.holder.as_str(),
            format!("{} (deposed by {})", runner.identity, cfg.identity),
            Some(PutOptions::new().with_lease(fence.id())),
        ),
        TxnOp::delete(keys.yield_request.clone(), None),
    ];
    ops.extend(runner.key.iter().map(|kv| TxnOp::delete(kv.key(), None)));
    let txn = Txn::new()
        .when([
            Compare::create_revision(seat.key.as_str(), CompareOp::Equal, seat.revision),
            unchanged(keys.holder.as_str(), snap.holder.as_ref()),
            unchanged(keys.yield_request.clone(), snap.yield_request.as_ref()),
        ])
        .and_then(ops);
    if !timed(t, c.txn(txn)).await?.succeeded() {
        // Changed under us: the fence lease is ours and unused.
        let _ = timed(t, c.lease_revoke(fence.id())).await;
        return Ok(());
    }
    // Counted from now, not from the grant: the transaction may have taken a while to commit.
    let _ = timed(t, c.lease_keep_alive(fence.id())).await;
    if runner.key.is_none() {
        // A Go replica (or a holder whose key was deleted by hand) learns it lost the lock from
        // its lease: the fence already holds everybody back until it can no longer be running.
        let _ = timed(t, c.lease_revoke(runner.lease)).await;
    }
    warn!(
        "force acquire: {:?} ({}) did not yield within {:?}: deposed; the lock is fenced for {granted}s",
        runner.identity,
        runner.key.as_ref().map_or_else(|| keys.holder.clone(), key_of),
        cfg.retry_period,
    );
    Ok(())
}
