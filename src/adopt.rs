//! What a starting candidate finds under its own identity: the key of a dead previous life,
//! which it adopts so that a restarted leader is not queued behind itself, or the key of a live
//! twin (a second candidate given the same identity), which it refuses.
//!
//! Nothing in etcd tells the two apart but time: a live candidate renews its lease at least
//! every third of its TTL, a dead one never again. So the remaining TTL is watched (etcd reports
//! whole seconds) until it rises (renewed: a twin) or shows no renewal for longer than a
//! keep-alive period (dead). That wait also lets a revoke the previous life sent in its last
//! moments land before we take its lease over. Leases of ours are never revoked here: one we do
//! not adopt expires by itself.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use log::info;

use crate::clock::Boot;
use crate::config::Config;
use crate::etcd::{op_timeout, timed, Result};
use crate::queue::{self, Keys, Seat};
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

pub async fn previous_life(c: &mut Client, keys: &Keys, cfg: &Config) -> Result<Adoption> {
    let t = op_timeout(cfg);
    let ours = queue::with_identity(c, keys, &cfg.identity, t).await?;
    let mut adopted = None;
    for kv in ours {
        let granted = match liveness(c, kv.lease, t).await? {
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
        if adopted.is_some() || !usable {
            continue;
        }
        // Renewed first, as the grant does for a new lease: `main` times the renew deadline
        // from a renewal.
        let sent = Boot::now();
        timed(t, c.lease_keep_alive(kv.lease)).await?;
        // Put again, unchanged but for its mod revision: should the previous life be alive after
        // all (a twin cut off from etcd), it sees that and lets go without revoking the lease.
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let again = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision,
            )])
            .and_then([TxnOp::put(
                key.as_str(),
                cfg.identity.as_str(),
                Some(PutOptions::new().with_lease(kv.lease)),
            )]);
        let resp = timed(t, c.txn(again)).await?;
        if !resp.succeeded() {
            continue;
        }
        // It may have been running the command (whether or not the record still says so: an
        // operator may have deleted it). Alive after all and cut off, it stops it before its
        // lease could expire as its last counted renewal left it; its renewals stop counting at
        // our put again: a full TTL from now is past that.
        let expiry = Instant::now() + Duration::from_secs(granted.unsigned_abs() + 1);
        info!(
            "adopting {key} left by our previous life (lease {:x}); leading no earlier than a TTL \
             from now",
            kv.lease,
        );
        adopted = Some(Adoption::Adopted {
            seat: Seat {
                lease: kv.lease,
                ttl: Duration::from_secs(granted as u64),
                key,
                revision: kv.create_revision,
                mod_revision: resp.header().map_or(0, |h| h.revision()),
                not_before: Some(expiry),
            },
            sent,
        });
    }
    Ok(adopted.unwrap_or(Adoption::Nothing))
}

/// Watches a lease's remaining TTL once a second until it tells a live holder from a dead one.
async fn liveness(c: &mut Client, lease: i64, t: Duration) -> Result<Life> {
    let start = Instant::now();
    let mut last = None;
    loop {
        let r = timed(t, c.lease_time_to_live(lease, None)).await?;
        let (granted, left) = (r.granted_ttl(), r.ttl());
        if left < 0 {
            return Ok(Life::Gone);
        }
        // Whole seconds, rounded down: without a renewal it never rises.
        if last.is_some_and(|prev| left > prev) {
            return Ok(Life::Twin);
        }
        // Unrenewed for longer than any keep-alive period of ours (a third of the TTL), with a
        // second for the rounding and one for a retried keep-alive.
        let period = granted / 3 + 2;
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
