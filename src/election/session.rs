//! The session: our lease, as etcd's `concurrency/session.go` keeps one. It is kept alive at a
//! waiter's pace or a leader's, each renewal counted only once a linearizable read confirms it,
//! and revoked when we resign, unless another process may be using it. It does not decide who
//! leads (`campaign`) nor when the child stops (`main`, from the renewals reported here).

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

/// How often the lease is renewed: a waiter at the lease's pace, a leader at its renew deadline's.
pub struct Pace {
    leading: Cell<bool>,
    changed: Notify,
}

impl Pace {
    pub fn new() -> Pace {
        Pace {
            leading: Cell::new(false),
            changed: Notify::new(),
        }
    }

    pub fn set(&self, leading: bool) {
        if self.leading.replace(leading) != leading {
            self.changed.notify_one();
        }
    }

    fn period(&self, ttl: Duration, renew_deadline: Duration) -> Duration {
        crate::timing::keep_alive_period(self.leading.get(), ttl, renew_deadline)
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
        Ok(own && (!self.pace.leading.get() || record))
    }

    fn period(&self) -> Duration {
        self.pace.period(self.ttl, self.renew_deadline)
    }

    /// Reports a renewal sent at `sent`, if its confirmation counted.
    fn counted(&self, sent: Boot, ttl: i64, confirmed: bool) {
        if confirmed {
            renewed(&self.report, sent, ttl);
        } else {
            let lease = self.lease;
            debug!("renewal of lease {lease:x} not counted: our key or the record is gone");
        }
    }

    fn failed(&self, e: &Error) {
        debug!("keep-alive: {e}");
        (self.report)(Event::Failed {
            renewal: true,
            failure: classify(e),
        });
    }

    /// Opens the keep-alive stream, renewing once, and confirms that renewal. Returns the stream
    /// and when that renewal was sent.
    async fn open(&self) -> Result<(KeepAlive, Instant)> {
        let (sent, boot) = (Instant::now(), Boot::now());
        // One bound for both, the period: not one for each.
        let (period, etcd) = (self.period(), self.etcd.bounded(self.period()));
        let attempt = async {
            let stream = etcd.keep_alive(self.lease).await?;
            Ok((stream, self.confirm(&etcd).await?))
        };
        let (stream, confirmed) = etcd.within(period, attempt).await?;
        // `keep_alive` already sent one keep-alive and checked its answer.
        self.counted(boot, self.ttl.as_secs() as i64, confirmed);
        Ok((stream, sent))
    }

    /// Renews on the stream at the pace, from the renewal sent at `last`, until a renewal fails.
    async fn renew_on(&self, stream: &mut KeepAlive, mut last: Instant) -> Error {
        loop {
            loop {
                let due = last + self.period();
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => break,
                    // Elected: at the leader's pace from here on, counted from the last renewal
                    // (at once if that is overdue), not at once: a handover is no time for it.
                    _ = self.pace.changed.notified() => {}
                }
            }
            let boot = Boot::now();
            last = Instant::now();
            let (period, etcd) = (self.period(), self.etcd.bounded(self.period()));
            let renewal = async { Ok((stream.renew().await?, self.confirm(&etcd).await?)) };
            match etcd.within(period, renewal).await {
                Ok((ttl, confirmed)) => self.counted(boot, ttl, confirmed),
                Err(e) => return e,
            }
        }
    }
}

/// Keeps the lease alive, one keep-alive in flight at a time so that each success is matched to
/// its send time. Returns only when the lease is gone.
///
/// A keep-alive unanswered (or unconfirmed) for a period is given up and retried on a fresh
/// connection: one lost answer must not cost the leadership.
pub async fn keep_alive(k: Keeper) -> String {
    let expired = || format!("lease {:x} expired", k.lease);
    loop {
        let (mut stream, sent) = match k.open().await {
            Ok(opened) => opened,
            Err(Error::LeaseGone) => return expired(),
            Err(e) => {
                k.failed(&e);
                // Renewing is urgent: the renew deadline runs. Retry well within a period.
                tokio::time::sleep(k.retry_period.min(k.period() / 4)).await;
                continue;
            }
        };
        match k.renew_on(&mut stream, sent).await {
            Error::LeaseGone => return expired(),
            e => k.failed(&e),
        }
    }
}
