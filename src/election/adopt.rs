//! What a starting candidate finds under its own identity: the key of a dead previous life,
//! which it adopts so that a restarted leader is not queued behind itself, or the key of a live
//! twin (a second candidate given the same identity), which it refuses.
//!
//! Nothing in etcd tells the two apart but time: a live candidate renews its lease at its role's
//! pace (`timing::longest_period`: a leader's when the record is bound to the lease, else at most
//! a waiter's), a dead one never again. So the remaining TTL is watched (etcd reports
//! whole seconds) until it rises (renewed: a twin) or shows no renewal for longer than a
//! keep-alive period (dead). That wait also lets a revoke the previous life sent in its last
//! moments land before we take its lease over. Leases of ours are never revoked here: one we do
//! not adopt expires by itself.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use log::info;

use super::queue::{self, Candidate, Keys, Seat};
use crate::clock::Boot;
use crate::config::Config;
use crate::etcd::{Etcd, Result};
use crate::timing;

pub enum Adoption {
    /// A previous life's seat, renewed at `sent`.
    Adopted {
        seat: Seat,
        sent: Boot,
    },
    /// A live candidate renews a key under our identity.
    Twin,
    Nothing,
}

enum Life {
    /// Unrenewed for longer than a keep-alive period.
    Dead {
        granted: i64,
    },
    Twin,
    Gone,
}

pub async fn previous_life(etcd: &Etcd, keys: &Keys, cfg: &Config) -> Result<Adoption> {
    let ours = queue::with_identity(etcd, keys, &cfg.identity).await?;
    let mut adopted = None;
    for cand in ours {
        // The record read once: a life that takes it meanwhile renews at once (see `session`).
        let leading = queue::with_value(etcd, keys.holder.as_bytes())
            .await?
            .is_some_and(|h| h.lease() == cand.lease);
        let granted = match liveness(etcd, cand.lease, leading).await? {
            Life::Twin => return Ok(Adoption::Twin),
            Life::Gone => continue,
            Life::Dead { granted } => granted,
        };
        // A TTL that leaves less than the margin above our renew deadline cannot be led with
        // (the kill budget would shrink below half a second): it expires by itself.
        let usable = timing::leaves_margin(
            Duration::from_secs(granted.unsigned_abs()),
            cfg.renew_deadline,
        );
        if adopted.is_none() && usable {
            adopted = adopt(etcd, keys, cfg, &cand, granted).await?;
        }
    }
    Ok(adopted.unwrap_or(Adoption::Nothing))
}

/// Takes over a dead previous life's seat, unless its key changed meanwhile.
async fn adopt(
    etcd: &Etcd,
    keys: &Keys,
    cfg: &Config,
    cand: &Candidate,
    granted: i64,
) -> Result<Option<Adoption>> {
    // Renewed first, as the grant does for a new lease: `main` times the renew deadline from a
    // renewal.
    let sent = Boot::now();
    etcd.renew(cand.lease).await?;
    // Put again, unchanged but for its mod revision: should the previous life be alive after all
    // (a twin cut off from etcd), it sees that and lets go without revoking the lease.
    let key = String::from_utf8_lossy(&cand.key).into_owned();
    let again = Txn::new()
        .when([Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            cand.mod_revision,
        )])
        .and_then(advertised(keys, cfg, cand.lease, &key));
    let resp = etcd.txn(again).await?;
    if !resp.succeeded() {
        return Ok(None);
    }
    // It may have been running the command (whether or not the record still says so: an
    // operator may have deleted it). Alive after all and cut off, it stops it before its lease
    // could expire as its last counted renewal left it; its renewals stop counting at our put
    // again: a full TTL from now is past that.
    let expiry = Instant::now() + Duration::from_secs(granted.unsigned_abs() + 1);
    info!(
        "adopting {key} left by our previous life (lease {:x}); leading no earlier than a TTL \
         from now",
        cand.lease,
    );
    let seat = Seat {
        lease: cand.lease,
        ttl: Duration::from_secs(granted as u64),
        key,
        revision: cand.create_revision,
        mod_revision: resp.header().map_or(0, |h| h.revision()),
        not_before: Some(expiry),
    };
    Ok(Some(Adoption::Adopted { seat, sent }))
}

/// Our key put again, and the address this life advertises in place of the previous life's:
/// ours, and the holder's if the record is still bound to the lease.
fn advertised(keys: &Keys, cfg: &Config, lease: i64, key: &str) -> Vec<TxnOp> {
    let bound = Some(PutOptions::new().with_lease(lease));
    let address = cfg.advertise.as_deref().map(str::as_bytes);
    let ours = match address {
        Some(a) => TxnOp::put(keys.address_of(lease), a, bound.clone()),
        None => TxnOp::delete(keys.address_of(lease), None),
    };
    let holding = Compare::lease(keys.holder.as_str(), CompareOp::Equal, lease);
    vec![
        TxnOp::put(key, cfg.identity.as_str(), bound),
        ours,
        TxnOp::txn(
            Txn::new()
                .when([holding])
                .and_then([keys.publish(address, lease)]),
        ),
    ]
}

/// Watches a lease's remaining TTL once a second until it tells a live holder from a dead one,
/// `leading` or not.
async fn liveness(etcd: &Etcd, lease: i64, leading: bool) -> Result<Life> {
    let start = Instant::now();
    let mut last = None;
    loop {
        let Some(r) = etcd.time_to_live(lease).await? else {
            return Ok(Life::Gone);
        };
        let (granted, left) = (r.granted_ttl(), r.ttl());
        // Whole seconds, rounded down: without a renewal it never rises.
        if last.is_some_and(|prev| left > prev) {
            return Ok(Life::Twin);
        }
        // Unrenewed for longer than its role's keep-alive period, rounded up, + 1 s: `left`
        // rounded down makes `granted - left` the time since the last renewal rounded up, so
        // reaching `period` proves only more than `period - 1`. One more second of margin would
        // leave a lease of 3 s (period 1 + 2) no time at all to be told dead before it ends.
        // A twin whose renewal failed meanwhile may pass for dead: it then finds its key put
        // again and exits without running anything.
        let longest = timing::longest_period(Duration::from_secs(granted.unsigned_abs()), leading);
        let period = longest.as_millis().div_ceil(1000) as i64 + 2;
        if granted - left >= period {
            return Ok(Life::Dead { granted });
        }
        // A lease that never decays is renewed faster than we can see: a twin as well.
        if start.elapsed() > Duration::from_secs(period as u64 + 1) {
            return Ok(Life::Twin);
        }
        if last.is_none() {
            info!("a key under our identity holds lease {lease:x}: telling a previous life from a live twin");
        }
        last = Some(left);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
