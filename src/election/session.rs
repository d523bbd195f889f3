//! The session: our lease, as etcd's `concurrency/session.go` keeps one. It is kept alive at the
//! pace of our role (`timing::Role`): queued behind others, by keep-alives that only keep our
//! place (one in `WAITER_CONFIRMS_ONE_IN` confirmed, to find a stalled member); next in line or
//! leading, each renewal counted only once a linearizable read confirms it. It is revoked when we resign, unless another process may be using it. It does not decide
//! who leads (`campaign`) nor when the child stops (`main`, from the renewals reported here).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use log::{debug, info, warn};
use tokio::sync::Notify;

use super::queue::{Keys, Seat};
use super::{Election, Event, Report};
use crate::clock::Boot;
use crate::etcd::{Error, Etcd, KeepAlive, Result};
use crate::failure::classify;
use crate::timing::{keep_alive_period, renewal_bound, Role, WAITER_CONFIRMS_ONE_IN};

/// Our role, which sets how the lease is renewed (see `timing::Role`).
pub struct Pace {
    role: Cell<Role>,
    changed: Notify,
}

impl Pace {
    pub fn new() -> Pace {
        Pace {
            role: Cell::new(Role::Waiting),
            changed: Notify::new(),
        }
    }

    pub fn set(&self, role: Role) {
        if self.role.replace(role) != role {
            self.changed.notify_one();
        }
    }

    fn role(&self) -> Role {
        self.role.get()
    }
}

/// A renewal sent at `sent` succeeded with this TTL (seconds, as etcd reports it).
pub fn renewed(report: &Report, sent: Boot, ttl: i64) {
    report(Event::Renewed {
        sent,
        ttl: Duration::from_secs(ttl.max(0) as u64),
    });
}

/// What became of our lease when we resigned.
enum Revoked {
    Yes,
    /// Our key was put again by a twin: the lease is its own now.
    Adopted,
    /// Our key was put again, then deleted, and the record is bound to our lease: see
    /// `Election::revoke`.
    Recorded,
}

impl Election {
    pub(super) fn keeper(&self, seat: &Seat) -> Keeper {
        Keeper {
            etcd: self.etcd.clone(),
            keys: self.keys.clone(),
            lease: seat.lease,
            own: seat.key.clone(),
            mod_revision: seat.mod_revision,
            ttl: seat.ttl,
            pace: self.pace.clone(),
            report: self.report.clone(),
            renew_deadline: self.cfg.renew_deadline,
            retry_period: self.cfg.retry_period,
            bare: Cell::new(0),
        }
    }

    /// Our lease is another process's now (a twin adopted our key), or gone: never revoke it.
    pub(super) fn forget_seat(&mut self) {
        self.seat = None;
    }

    /// Leadership lost: `main` resigns once the child's group is empty; until then the lease
    /// stays ours (and with it the record that keeps everyone else waiting).
    pub(super) async fn renew_until(&self, resign: impl std::future::Future<Output = ()>) {
        let mut resign = std::pin::pin!(resign);
        let Some(seat) = &self.seat else {
            return resign.await;
        };
        let renew = Box::pin(keep_alive(self.keeper(seat)));
        tokio::select! {
            _ = &mut resign => {}
            _ = renew => resign.await,
        }
    }

    /// Gives up our place: a leader hands the record to the next candidate (see `hand_over`),
    /// then the lease is revoked, retrying on failure: until it is revoked the next candidate
    /// waits a whole TTL. Gives up once the lease would have expired anyway (or after 8 s, within
    /// `main`'s backstop).
    ///
    /// `main` asks for this only once the command's process group is empty.
    pub(super) async fn resign(&mut self) {
        let Some(seat) = self.seat.take() else {
            return;
        };
        if std::mem::take(&mut self.elected) {
            if let Err(e) = self.hand_over(&seat).await {
                debug!("handing over: {e}");
            }
        }
        let lease = seat.lease;
        // Adopted from a previous life: should it be alive after all and cut off, it shares this
        // lease and may run its command until then. Left to expire: no earlier than that, as we
        // renewed it when we adopted it.
        if seat.not_before.is_some_and(|t| Instant::now() < t) {
            return warn!(
                "lease {lease:x}, adopted from a previous life that may still be stopping, left \
                 to expire"
            );
        }
        let give_up = Instant::now() + crate::timing::resign_budget(seat.ttl);
        loop {
            let e = match self.revoke(&seat).await {
                Ok(Revoked::Yes) => return info!("resigned: revoked lease {lease:x}"),
                Ok(Revoked::Adopted) => {
                    return warn!("our key was adopted by a twin: lease {lease:x} left to it")
                }
                Ok(Revoked::Recorded) => {
                    return warn!(
                        "our key was put again before it was deleted, and {} is bound to our \
                         lease: a twin that adopted our place may lead with it; lease {lease:x} \
                         left to expire",
                        self.keys.holder
                    )
                }
                Err(Error::LeaseGone) => return,
                Err(e) => e,
            };
            if Instant::now() + self.cfg.retry_period >= give_up {
                return warn!("could not revoke lease {lease:x} ({e}); it expires by itself");
            }
            debug!("revoking lease {lease:x}: {e}; retrying");
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Revokes our lease, unless another process may be using it: a twin that adopted our key
    /// (put it again), or, our key gone and the record bound to our lease, one that adopted it
    /// before somebody deleted it: it may lead with the lease, which must not end under it. Then
    /// the lease expires by itself, as a vanished holder's does.
    async fn revoke(&self, seat: &Seat) -> Result<Revoked> {
        let [own, holder] = read_keys(&self.etcd, [&seat.key, &self.keys.holder]).await?;
        let holds = if seat.mod_revision == 0 {
            // Our key's creation was cut short (resigned, or failed, in the middle): ours if it
            // was created and never put again since (a twin adopting it puts it again).
            own.as_ref()
                .map(|kv| kv.lease() == seat.lease && kv.version() == 1)
        } else {
            seat.holds(own.as_ref())
        };
        match holds {
            Some(false) => return Ok(Revoked::Adopted),
            None if holder.is_some_and(|h| h.lease() == seat.lease) => {
                // Deleted straight after our own put (an operator's `etcdctl del`): nobody
                // adopted it, nobody else uses our lease. Put again first (or not known): a
                // twin's too.
                let from = seat.mod_revision + 1;
                let change = self.etcd.first_change(seat.key.as_bytes(), from).await?;
                if change != Some(EventType::Delete) {
                    return Ok(Revoked::Recorded);
                }
            }
            _ => {}
        }
        self.etcd.revoke(seat.lease).await?;
        Ok(Revoked::Yes)
    }
}

/// Two keys (names, leases and revisions only) read at one revision.
async fn read_keys(etcd: &Etcd, keys: [&str; 2]) -> Result<[Option<KeyValue>; 2]> {
    // Keys only: whatever value anybody put there is not ours to download.
    let get = |key: &str| TxnOp::get(key, Some(GetOptions::new().with_keys_only()));
    let resp = etcd.txn(Txn::new().and_then(keys.map(get))).await?;
    let kv = |i: usize| match resp.op_responses().get(i) {
        Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
        _ => None,
    };
    Ok([kv(0), kv(1)])
}

/// What the keep-alive loop needs: our lease, and the keys that must still be ours for a renewal
/// to count.
pub struct Keeper {
    etcd: Etcd,
    keys: Rc<Keys>,
    lease: i64,
    own: String,
    mod_revision: i64,
    ttl: Duration,
    pace: Rc<Pace>,
    report: Report,
    renew_deadline: Duration,
    retry_period: Duration,
    /// Keep-alives answered and not confirmed since the last one that was.
    bare: Cell<u32>,
}

impl Keeper {
    /// A linearizable read, after a keep-alive was answered: that etcd can still commit (a
    /// member with a stalled raft loop answers keep-alives but not this), and that our key (and,
    /// leading, the holder record) is still bound to our lease. A renewal that fails this check
    /// does not count: a deposed leader's lease must not seem fresh.
    async fn confirm(&self, etcd: &Etcd) -> Result<bool> {
        let [own, holder] = read_keys(etcd, [&self.own, &self.keys.holder]).await?;
        let own =
            own.is_some_and(|o| o.lease() == self.lease && o.mod_revision() == self.mod_revision);
        let record = holder.is_some_and(|h| h.lease() == self.lease);
        Ok(own && (self.pace.role() != Role::Leading || record))
    }

    fn period(&self) -> Duration {
        keep_alive_period(self.pace.role(), self.ttl, self.renew_deadline)
    }

    /// After a keep-alive sent at `sent` was answered (the lease reset to `ttl`): a renewal of a
    /// role that counts is confirmed, then reported (`main` counts it), and so is a waiter's
    /// every `WAITER_CONFIRMS_ONE_IN`th; the others are reported as only keeping our place.
    /// Returns whether it was checked by a read, counted or not: one that did not count (our key
    /// or the record gone) is not retried at once, as the campaign or `leading` ends on that.
    async fn settle(&self, etcd: &Etcd, role: Role, sent: Boot, ttl: i64) -> Result<bool> {
        let bare = self.bare.get() + 1;
        if !role.counts() && bare < WAITER_CONFIRMS_ONE_IN {
            self.bare.set(bare);
            (self.report)(Event::KeptAlive { sent });
            return Ok(false);
        }
        self.bare.set(0);
        if self.confirm(etcd).await? {
            renewed(&self.report, sent, ttl);
        } else {
            let lease = self.lease;
            debug!("renewal of lease {lease:x} not counted: our key or the record is gone");
        }
        Ok(true)
    }

    /// One bound for a renewal and its confirmation (not one for each), and the client bound by
    /// it.
    fn bounded(&self, role: Role) -> (Duration, Etcd) {
        let bound = renewal_bound(role, self.ttl, self.renew_deadline);
        (bound, self.etcd.bounded(bound))
    }

    fn failed(&self, e: &Error) {
        debug!("keep-alive: {e}");
        (self.report)(Event::Failed {
            renewal: true,
            failure: classify(e),
        });
    }

    /// Opens the keep-alive stream, renewing once. Returns the stream, when that renewal was
    /// sent, and whether it was one that counts.
    async fn open(&self) -> Result<(KeepAlive, Instant, bool)> {
        let (sent, boot, role) = (Instant::now(), Boot::now(), self.pace.role());
        let (bound, etcd) = self.bounded(role);
        let attempt = async {
            // `keep_alive` already sent one keep-alive and checked its answer.
            let stream = etcd.keep_alive(self.lease).await?;
            let ttl = self.ttl.as_secs() as i64;
            Ok((stream, self.settle(&etcd, role, boot, ttl).await?))
        };
        let (stream, counts) = etcd.within(bound, attempt).await?;
        Ok((stream, sent, counts))
    }

    /// Waits until the next renewal is due: a period after the last one, or at once when we now
    /// need one that counts and the last one did not.
    async fn due(&self, last: Instant, counted: bool) {
        loop {
            let due = if self.pace.role().counts() && !counted {
                Instant::now()
            } else {
                last + self.period()
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => return,
                // Elected, or next in line: at that pace from here on, counted from the last
                // renewal (at once if that is overdue), not at once: a handover is no time
                // for it.
                _ = self.pace.changed.notified() => {}
            }
        }
    }

    /// Renews on the stream at the pace, from the renewal sent at `last` (`counted`: one that
    /// counts), until a renewal fails.
    async fn renew_on(
        &self,
        stream: &mut KeepAlive,
        mut last: Instant,
        mut counted: bool,
    ) -> Error {
        loop {
            self.due(last, counted).await;
            let (boot, role) = (Boot::now(), self.pace.role());
            last = Instant::now();
            let (bound, etcd) = self.bounded(role);
            let renewal = async {
                let ttl = stream.renew().await?;
                self.settle(&etcd, role, boot, ttl).await
            };
            match etcd.within(bound, renewal).await {
                Ok(counts) => counted = counts,
                Err(e) => return e,
            }
        }
    }
}

/// Keeps the lease alive, one keep-alive in flight at a time so that each success is matched to
/// its send time. Returns only when the lease is gone.
///
/// A keep-alive unanswered (or unconfirmed) for half a period is given up and retried on a fresh
/// connection: one lost answer must not cost the leadership.
pub async fn keep_alive(k: Keeper) -> String {
    let expired = || format!("lease {:x} expired", k.lease);
    loop {
        let (mut stream, sent, counted) = match k.open().await {
            Ok(opened) => opened,
            Err(Error::LeaseGone) => return expired(),
            Err(e) => {
                k.failed(&e);
                // Renewing is urgent: the renew deadline runs. Retry well within a period.
                tokio::time::sleep(k.retry_period.min(k.period() / 4)).await;
                continue;
            }
        };
        match k.renew_on(&mut stream, sent, counted).await {
            Error::LeaseGone => return expired(),
            e => k.failed(&e),
        }
    }
}
