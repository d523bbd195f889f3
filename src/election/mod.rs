//! The election: etcd's campaign recipe, the lease kept alive, and resignation.
//!
//! It runs on its own thread, driving the async `etcd-client` (through the `etcd` gateway) with a
//! single-threaded tokio runtime, and reports to `main` over a channel: renewals (with the send
//! time of the keep-alive that succeeded), who leads, when this candidate is elected, and when
//! leadership is lost. It never touches the child process and it does not decide when the child
//! must stop: `main` enforces the renew deadline from the renewals reported here, on a clock this
//! thread cannot stall.
//!
//! # Rooms
//!
//! This file holds the thread, its events and the loop of one life: join, campaign, lead, resign.
//! Each step has its room:
//!
//! - `join`: a seat in the queue, adopted from a dead previous life (`adopt`) or a new lease
//!   and our key; before the first, every right on etcd a candidate uses proven (`rights`).
//! - `session`: the lease: kept alive at its pace, each renewal confirmed, revoked on resigning.
//! - `campaign`: waiting for our turn: the predecessor, the holder, the record taken or handed.
//! - `force`: a forcer's request to the holder to yield.
//! - `leading`: watching our place while we lead, and handing the record over.
//! - `retry`: failures logged once, reported, retried, or fatal at start-up.
//! - `queue`: the layout of the lock's keys and one snapshot of them; `scan`: reading every
//!   candidate past whatever else lives under the prefix.
//! - `observe`: who leads, read by an observer (`--leader`), which never writes.
//!
//! The recipe is the one of etcd's `concurrency/election.go`, so `etcdctl elect -l LOCK` shows our
//! leader: a lease; the key `LOCK/<lease id in hex>` holding our identity, created only if absent;
//! the oldest candidate key leads; every other candidate watches the deletion of its immediate
//! predecessor only. Three rules make it hold against other actors on the lock, and all live in
//! etcd, not in this process's memory:
//!
//! 1. A key vanishing is not its holder having stopped. Whoever runs the command holds the record
//!    `LOCK`, bound to its lease, which it revokes only once its command's group is empty. The head
//!    of the queue takes the record only if it is absent, and starts only then; a lease it saw
//!    ahead of it must be gone as well (keys deleted by hand). A leader whose group is empty hands
//!    the record to the next candidate (or to the forcer that asked it to yield) in the
//!    transaction that deletes its key, and the next
//!    starts on seeing it, without waiting for any lease: a handover costs one write.
//! 2. Nobody deletes a key but its own. Participants of etcd's own recipe on the lock (`etcdctl
//!    lock`) start once every key created before theirs is gone: a candidate's key goes only when
//!    that candidate cannot be running, or never ran.
//! 3. A renewal counts only if etcd can still commit and we still hold our place: each keep-alive
//!    is confirmed by a linearizable read of our key (and, leading, of the record). A member that
//!    answers keep-alives with a stalled raft loop (etcd-io/etcd#15247) cannot answer that read.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use log::info;
use tokio::sync::oneshot;

use crate::clock::Boot;
use crate::config::Config;
use crate::etcd::Etcd;
use crate::failure::Failure;

mod adopt;
mod campaign;
mod force;
mod join;
mod leading;
mod observe;
mod queue;
mod retry;
mod rights;
mod scan;
mod session;

pub use observe::Observer;

use campaign::Turn;
use leading::Heir;
use queue::{Keys, Seat};
use retry::Retry;
use session::Pace;

/// What the election thread tells `main`.
#[derive(Debug)]
pub enum Event {
    /// A keep-alive (or the grant) sent at `sent` succeeded and was confirmed: the lease was reset
    /// to its full granted `ttl` and lives until at least `sent + ttl` on the server.
    Renewed { sent: Boot, ttl: Duration },
    /// Who leads (the holder, or the head of the queue), when known.
    Leader(Option<crate::leader::Leader>),
    /// Our predecessor holds the record: we are next, and may be handed it at any moment.
    Next,
    /// An etcd request failed (`renewal`: a keep-alive).
    Failed { renewal: bool, failure: Failure },
    /// etcd answers again after failures.
    Reachable,
    Elected {
        key: String,
        revision: i64,
        lease: i64,
    },
    /// Leadership is gone; the child must stop now.
    Lost(String),
    /// A permanent failure at start-up (see `failure::Startup`): retrying cannot help.
    Fatal(String),
    /// Another live candidate renews a key under our identity: nothing was started.
    Twin(String),
    /// The lease is revoked (or could not be, and will expire): the next candidate may start.
    Resigned,
}

/// Where the events go: `main`'s channel, each wrapped in `main`'s own event type.
type Report = Rc<dyn Fn(Event)>;

/// Lets `main` ask the election thread to give up its place, once.
pub struct Handle {
    resign: Option<oneshot::Sender<()>>,
}

impl Handle {
    pub fn resign(&mut self) {
        if let Some(tx) = self.resign.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the election thread; its events reach `tx` as `wrap(event)`.
pub fn spawn<E: Send + 'static>(
    cfg: Config,
    tx: Sender<E>,
    wrap: fn(Event) -> E,
) -> std::io::Result<Handle> {
    let (resign_tx, resign_rx) = oneshot::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("election".into())
        .spawn(move || {
            let report: Report = Rc::new(move |e| {
                let _ = tx.send(wrap(e));
            });
            rt.block_on(run(Election::new(cfg, report), resign_rx))
        })?;
    Ok(Handle {
        resign: Some(resign_tx),
    })
}

/// How a life in the election ended, before resigning.
enum Outcome {
    Lost(String),
    Fatal(String),
    Twin(String),
}

struct Election {
    cfg: Rc<Config>,
    keys: Rc<Keys>,
    etcd: Etcd,
    report: Report,
    /// Our place in the queue and its lease (`session`), while we have one.
    seat: Option<Seat>,
    pace: Rc<Pace>,
    /// Leases that may have run the command before us, seen in this seat's campaign (by the
    /// forcer too): their keys vanishing proves nothing, so they must be gone before we lead.
    seen: BTreeSet<i64>,
    /// We went back in line behind a forcer: as a forcer, we do not ask again.
    gave_way: bool,
    /// We took (or were handed) the record: resigning hands it on (`leading`).
    elected: bool,
    /// Leading: whom the record goes to when we resign, as last read.
    heir: Heir,
    retry: Retry,
}

async fn run(mut el: Election, mut resign: oneshot::Receiver<()>) {
    let outcome = tokio::select! {
        biased;
        _ = &mut resign => None,
        o = Box::pin(el.elect_and_lead()) => Some(o),
    };
    match outcome {
        Some(Outcome::Fatal(why)) => {
            el.resign().await;
            return (el.report)(Event::Fatal(why));
        }
        Some(Outcome::Twin(why)) => return (el.report)(Event::Twin(why)),
        Some(Outcome::Lost(why)) => {
            (el.report)(Event::Lost(why));
            el.renew_until(&mut resign).await;
        }
        None => {}
    }
    el.resign().await;
    (el.report)(Event::Resigned);
}

impl Election {
    fn new(cfg: Config, report: Report) -> Election {
        let cfg = Rc::new(cfg);
        Election {
            keys: Rc::new(Keys::new(&cfg.lock_name)),
            etcd: Etcd::new(cfg.clone()),
            retry: Retry::new(&cfg, report.clone()),
            cfg,
            report,
            seat: None,
            pace: Rc::new(Pace::new()),
            seen: BTreeSet::new(),
            gave_way: false,
            elected: false,
            heir: Heir::Next(None),
        }
    }

    /// Joins, campaigns and leads until leadership is lost, joining again whenever our place is.
    async fn elect_and_lead(&mut self) -> Outcome {
        loop {
            self.pace.set(false);
            let seat = match self.join().await {
                Ok(Some(seat)) => seat,
                Ok(None) => return Outcome::Twin(self.twin()),
                Err(e) => match self.retry.backoff(e).await {
                    Ok(()) => continue,
                    Err(why) => return Outcome::Fatal(why),
                },
            };
            // Boxed, as the other large futures here: in a debug build their nested states
            // would overflow the thread's stack.
            let mut keepalive = Box::pin(session::keep_alive(self.keeper(&seat)));
            let turn = tokio::select! {
                why = &mut keepalive => {
                    info!("lost our place in the queue ({why}); joining again");
                    self.forget_seat();
                    continue;
                }
                turn = Box::pin(self.campaign(&seat)) => turn,
            };
            match turn {
                Ok(Turn::Lead) => return self.lead(&seat, keepalive).await,
                Ok(Turn::GiveWay) => {
                    self.gave_way = true;
                    self.resign().await;
                }
                Ok(Turn::Rejoin) => self.resign().await,
                // Our lease is another process's now: never revoke it.
                Ok(Turn::Adopted) => return Outcome::Twin(self.twin()),
                Err(e) => {
                    if let Err(why) = self.retry.backoff(e).await {
                        return Outcome::Fatal(why);
                    }
                }
            }
        }
    }

    fn twin(&mut self) -> String {
        self.forget_seat();
        format!(
            "{} {:?} is in use by another live candidate (it renews, or adopted, a key under this \
             identity); give every candidate its own identity",
            crate::config::IDENTITY,
            self.cfg.identity
        )
    }
}
