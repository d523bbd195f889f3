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
//! This file holds the thread, its events and its lives: out of the queue until `main` asks it to
//! join, then one life (join, campaign, lead) until `main` asks it to resign, then out again; a
//! candidate standing aside while unhealthy lives again later.
//! Each step has its room:
//!
//! - `join`: a seat in the queue, adopted from a dead previous life (`adopt`) or a new lease
//!   and our key; before the first, every right on etcd a candidate uses proven (`rights`).
//! - `session`: the lease: kept alive at the pace of our role, renewals confirmed where they
//!   count, revoked on resigning.
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
//!    transaction that deletes its key, and the next starts on seeing it, without waiting for
//!    any lease: a handover costs one write.
//! 2. Nobody deletes a key but its own. Participants of etcd's own recipe on the lock (`etcdctl
//!    lock`) start once every key created before theirs is gone: a candidate's key goes only when
//!    that candidate cannot be running, or never ran.
//! 3. A renewal counts only if etcd can still commit and we still hold our place: each keep-alive
//!    of the leader and of the candidate next in line is confirmed by a linearizable read of our
//!    key (and, leading, of the record). A member that answers keep-alives with a stalled raft
//!    loop (etcd-io/etcd#15247) cannot answer that read. The others' keep-alives only keep their
//!    place, and count for nothing but for one in three, confirmed the same way: a candidate
//!    elected from there starts with its first confirmed renewal unless one is recent enough.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use log::info;
use tokio::sync::mpsc;

use crate::clock::Boot;
use crate::config::Config;
use crate::etcd::Etcd;
use crate::failure::Failure;
use crate::timing::Role;

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
use join::Joined;
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
    /// A waiter's keep-alive sent at `sent` succeeded: it keeps our place, unconfirmed, and does
    /// not count towards the renew deadline.
    KeptAlive { sent: Boot },
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
    /// Waiting: a candidate is queued ahead of us, or another lease holds the record.
    Queued,
    /// Leading: whether a candidate waits behind us (ours, or a stranger's: see `machine`).
    Successor(bool),
    /// The lease is revoked (or could not be, and will expire): the next candidate may start.
    /// The thread then waits, out of the queue, to be asked to join again.
    Resigned,
}

/// Where the events go: `main`'s channel, each wrapped in `main`'s own event type.
type Report = Rc<dyn Fn(Event)>;

/// What `main` asks of the election thread.
enum Order {
    /// Take a seat and campaign: one life, until resigning.
    Join,
    /// Give up our place (leading: once the command's group is empty); `Resigned` follows.
    Resign,
}

/// Lets `main` send the election thread into the queue, and out of it.
pub struct Handle {
    orders: mpsc::UnboundedSender<Order>,
}

impl Handle {
    /// Joins the queue: at start, or again after `Resigned`.
    pub fn join(&self) {
        let _ = self.orders.send(Order::Join);
    }

    pub fn resign(&self) {
        let _ = self.orders.send(Order::Resign);
    }
}

/// The election thread's stack.
const ELECTION_STACK: usize = 8 << 20;

/// Starts the election thread, out of the queue until [`Handle::join`]; its events reach `tx` as
/// `wrap(event)`.
pub fn spawn<E: Send + 'static>(
    cfg: Config,
    tx: Sender<E>,
    wrap: fn(Event) -> E,
) -> std::io::Result<Handle> {
    let (orders, orders_rx) = mpsc::unbounded_channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("election".into())
        // The recipe's futures nest deeply (a life, its campaign, a watch), and a debug build's
        // frames for them are large: the default 2 MiB overflowed. Only the pages used count.
        .stack_size(ELECTION_STACK)
        .spawn(move || {
            let report: Report = Rc::new(move |e| {
                let _ = tx.send(wrap(e));
            });
            rt.block_on(Box::pin(run(Election::new(cfg, report), orders_rx)))
        })?;
    Ok(Handle { orders })
}

/// How a life in the election ended, before resigning.
enum Outcome {
    Lost(String),
    Fatal(String),
    Twin(String),
    /// Trying once, the lock was taken: nothing was put.
    Busy,
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
    /// We led once: no longer trying once (`WAIT_TIMEOUT=0`).
    has_led: bool,
    /// Leading: whom the record goes to when we resign, as last read.
    heir: Heir,
    retry: Retry,
}

/// Lives, one per `Join`, until `main` is gone or a life ends for good.
async fn run(mut el: Election, mut orders: mpsc::UnboundedReceiver<Order>) {
    while joined(&el, &mut orders).await {
        if !el.live(&mut orders).await {
            return;
        }
    }
}

/// Out of the queue: waits to be asked to join (false: `main` is gone). Nothing is held, so a
/// request to resign is answered at once.
async fn joined(el: &Election, orders: &mut mpsc::UnboundedReceiver<Order>) -> bool {
    loop {
        match orders.recv().await {
            Some(Order::Join) => return true,
            Some(Order::Resign) => (el.report)(Event::Resigned),
            None => return false,
        }
    }
}

/// Until `main` asks us to resign (or is gone).
async fn resign_order(orders: &mut mpsc::UnboundedReceiver<Order>) {
    while let Some(order) = orders.recv().await {
        if let Order::Resign = order {
            return;
        }
    }
}

impl Election {
    /// One life: join, campaign, lead, until `main` asks us to resign; then resigns. False: the
    /// life ended for good (a fatal failure, a twin), and so does the thread.
    async fn live(&mut self, orders: &mut mpsc::UnboundedReceiver<Order>) -> bool {
        // A new life asks a holder to yield again, if we force.
        self.gave_way = false;
        if !self.retry.has_joined() {
            // The start-up grace counts from the first attempt to join, not from the start: a
            // health check may have kept us out of the queue until now.
            self.retry = Retry::new(&self.cfg, self.report.clone());
        }
        let outcome = tokio::select! {
            biased;
            _ = resign_order(orders) => None,
            o = Box::pin(self.elect_and_lead()) => Some(o),
        };
        match outcome {
            Some(Outcome::Fatal(why)) => {
                self.resign().await;
                (self.report)(Event::Fatal(why));
                return false;
            }
            Some(Outcome::Twin(why)) => {
                (self.report)(Event::Twin(why));
                return false;
            }
            Some(Outcome::Lost(why)) => {
                (self.report)(Event::Lost(why));
                self.renew_until(resign_order(orders)).await;
            }
            Some(Outcome::Busy) => {
                (self.report)(Event::Queued);
                resign_order(orders).await;
            }
            None => {}
        }
        self.resign().await;
        (self.report)(Event::Resigned);
        true
    }
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
            has_led: false,
            heir: Heir::Next(None),
        }
    }

    /// Joins, campaigns and leads until leadership is lost, joining again whenever our place is.
    async fn elect_and_lead(&mut self) -> Outcome {
        loop {
            self.pace.set(Role::Waiting);
            let seat = match self.join().await {
                Ok(Joined::Seat(seat)) => seat,
                Ok(Joined::Twin) => return Outcome::Twin(self.twin()),
                Ok(Joined::Busy) => return Outcome::Busy,
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
                Ok(Turn::Lead) => {
                    self.has_led = true;
                    return self.lead(&seat, keepalive).await;
                }
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
