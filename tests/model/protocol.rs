//! The exclusion protocol as a state machine for the `stateright` model checker: candidates
//! (wrappers of ours, replicas of the Go tool, strangers: clients of etcd's own recipe), etcd
//! (leases, candidate keys in create-revision order, the holder record `LOCK` (H here), the
//! yield request `LOCK\0yield` (Y)) and the environment (crashes, cut-offs, a member that renews
//! but cannot commit, an operator deleting keys). Two variants: [`Variant::Old`] is
//! `src/election.rs` before issue 9 (commit d8293d8: force revokes and deletes the keys ahead
//! one at a time and waits in memory; a waiter starts once its predecessor key is gone; H only
//! as the legacy lock), [`Variant::New`] is the protocol as `src/` implements it since "safe
//! among strangers": H always; the forcer deletes no key, only puts Y, which stands until it
//! leads; a holder that sees Y hands H to the forcer, one that does not answer is waited for;
//! waiters of ours between them step back themselves; a fence only for a holder without a
//! candidate key; hand-over to the next key; adoption put again, waiting out the previous
//! life's lease (an adopted seat resigning before then leaves it to expire); a resign that
//! leaves a lease the record is bound to once its key, put again by another, is gone; renewals
//! confirmed. No switch changes NEW: the proposals the model weighed on the way are in
//! the history of `tests/model.rs` (findings 3 to 7). `delete_keys` and `delete_records` narrow the
//! operator's deletes.
//!
//! A **stranger** (`etcdctl lock`, `etcdctl elect`, client-go's `concurrency`, the Go tool
//! v0.1.x) grants a lease, creates `LOCK/<its lease hex>` (a candidate key to us), waits until
//! no key with a smaller create revision exists, runs, then deletes its key and revokes its
//! lease. It reads neither H nor Y, and in the worst case (3.4-era clients, every
//! `Election.Campaign`) it runs even if its own key was deleted meanwhile (by hand). Used once:
//! each stranger is one run of such a client.
//!
//! # Granularity
//! Every action is one etcd request (read, txn, grant, revoke, ...) or one local step of a
//! wrapper (start or stop of its command). Consecutive requests are merged into one action only
//! where what they read cannot change in between in a way that matters: a read and the txn
//! after it are merged when the txn's compares guard what was read (`take_record`'s are not
//! enough, so it is its own step), and "no key with a lower create revision" and "a lease is
//! gone" never become false again once true. Watches are not modelled as such: a candidate may
//! re-read at any time (a spurious wake-up), and a leader may notice a change as late as it
//! likes; a watch from the read's revision + 1 gives no more than that for safety. The one
//! decision taken on a watch event without a read, the hand-over's (`wait_turn`'s fast path),
//! is modelled as such: `handed`, set by the hand-over itself.
//!
//! # Time
//! Time is not counted; it enters only as enabling conditions, each the model of one deadline:
//! - **Renew deadline** (timing.rs `Renewal::kill_at`, `leading`; machine.rs `on_deadline`, `lead`):
//!   a wrapper kills its command before the lease it renewed can expire on the server (counted
//!   on `CLOCK_BOOTTIME`, as the server counts it), and starts it only with a
//!   counted renewal within the renew deadline (`fresh`). So a lease's `Expire` is enabled only
//!   when nobody renews it AND every wrapper holding it has its command stopped (and is not
//!   about to start one). A renewal counts (election/session.rs `Keeper::confirm`) only if a
//!   linearizable read after it finds our key unchanged and, leading, H bound to our lease;
//!   without one, `Deadline` (leading) or `Stale` (not yet) may happen at any time. A member that
//!   answers keep-alives but cannot commit (`Net::Stuck`, etcd-io/etcd#15247) breaks the
//!   premise in OLD: the keep-alive answer counts, so the lease expires on the majority while
//!   the command runs on; in NEW the read cannot be answered, so a stuck member is a cut-off
//!   and is not modelled separately. A holder that does not answer a yield request (cut off)
//!   is waited for: its key and H go with its lease.
//! - **Fence** (election/force.rs `fence`): only a holder without a candidate key (a Go replica, or ours
//!   whose key was deleted by hand) is deposed: H re-bound to a fence lease of its TTL + 1 s,
//!   marked deposed, then its own lease revoked (`RevokeRunner`, retried) and the fence renewed
//!   once after it. The fence may expire once the deposed command can no longer run: a Go
//!   replica stops within a third of its TTL + 2 s of the revoke, a wrapper of ours before its
//!   lease could expire and never starts again (its renewals stopped counting with its key).
//!   Until the revoke of a Go replica lands, nothing the fence does stops it: its fence may
//!   expire at any time. A fence not renewed after the revoke (the forcer dead or cut off in
//!   between) counts from its grant: the model assumes the revoke landed within a second of it.
//! - **Force's wait in memory** (OLD `depose_ahead_of`'s `sleep_until`): the deposed leases'
//!   TTL after their revoke; the deposed commands are dead by then (their last renewal was
//!   before the revoke). `SleepDone` is enabled once no wrapper holding a lease it revoked runs
//!   its command.
//! - **Strangers**: a stranger renews its lease while it waits and runs, so its lease expires
//!   only once it crashed, and its command stops with it. It is never cut off: one cut off runs
//!   on after its lease, a hole of its own that no protocol of ours can close. Its lease
//!   revoked by our fence (only a keyless runner's, and a stranger's key is deleted only by
//!   hand) does not stop it either.
//! - **Adoption** (NEW election/adopt.rs): a lease is adopted once seen unrenewed for half of its
//!   TTL plus 2 s; a revoke its previous life left in flight has landed by then (and one sent later
//!   lands within milliseconds: before the adopter's next step on that lease). The adopter
//!   leads, and revokes the lease, no earlier than that lease would have expired as seen
//!   (`Seat::not_before`, whether or not H names it: an operator may have deleted it): after
//!   the previous life's kill deadline and renew deadline; resigning before then (`Leave`), it
//!   revokes nothing: the lease, renewed at the adoption, expires no earlier. A live twin that
//!   is cut off is not renewing either: nothing in etcd tells it from a dead life. Its `resign`
//!   (healed) never revokes the lease once its key was put again, nor once its key is gone, H
//!   bound to the lease, and the first change of its key after its own put was a put (the
//!   adopter may lead with it; `Proc::overtaken`). Its key deleted straight after its own put
//!   (no put between), it revokes: nobody else holds the lease, or, adopted, it is past
//!   `not_before`. A history `src/` cannot read (compacted, no answer) leaves the lease too:
//!   never a revoke, so not modelled.
//!
//! # Map: model action → code
//! | action | OLD (d8293d8) | NEW (src/) |
//! |---|---|---|
//! | `Join`: adopt a key of our identity, else grant + put-if-absent key | election.rs `Election::join`, `adopt`, `create` | election/join.rs `Election::join`, `create` |
//! | `Observe`: twin (exit 76) or dead previous life; `Adopt`: keep-alive, put again; leads and revokes no earlier than `not_before`, H or not; resigning before it: `Leave` | — (adopts at once, revokes other keys of ours) | election/adopt.rs `previous_life`, `liveness` |
//! | `Check`: one read and the decision: a key ahead: wait for it; none, H bound to another lease: `GiveWay` if that lease has a candidate key, else wait for H; no H: `GiveWay` if another's Y stands, else `Take`; H ours: `GiveWay` if another's Y stands, else lead (handed, its version above 1: at once, the seen set cleared; else `AwaitGone`, and `Check` again if it had leases to wait for), our Y withdrawn. Or, next in line, not a forcer, our key never put again: the hand-over's watch event alone (`handed`: lead at once). `Take`; `AwaitGone` | election.rs `wait_turn`, `take_legacy_lock` | election/campaign.rs `wait_turn`, `handed_to`, `take_turn`, `settle`, `take_record`, `await_lease_gone`; election/queue.rs `key_of_lease`, `Snapshot::read`, `Seat::holds`, `is_handed_over` |
//! | `GiveWay` (the outcome of `Check`): resign, join again behind; a forcer does not ask again in this life (`gave_way`) | — | election/campaign.rs `Turn::GiveWay`; election/mod.rs `elect_and_lead` |
//! | `Force`: read; nobody to ask (H ours or a fence, or we head the queue) or another's Y: a plain candidate; no Y: put Y bound to our lease (guarded: our key's create revision, H and Y as read), read again; our Y: the runner's lease seen, then `Check`s | election.rs `depose_ahead_of` (its read) | election/force.rs `request_yield`, `runner`; election/campaign.rs `campaign` (`seen`) |
//! | `Force` with our Y and a runner without a candidate key (the fence): H re-bound to a fence lease marked deposed (same guards); `RevokeRunner` | — | election/force.rs `fence` |
//! | `Depose` (revoke one key ahead) / `SleepDone` | election.rs `depose_ahead_of` (loop, `sleep_until`) | — |
//! | `LeaseLost`: lease gone → join again | election.rs `keep_alive`, `elect_and_lead` | election/session.rs `keep_alive`; election/mod.rs `elect_and_lead` |
//! | `StartCmd` (or resign: not renewed within the renew deadline) | main.rs `Wrapper::lead`, supervisor.rs `spawn` | machine.rs `Wrapper::lead`, supervisor.rs `spawn`, after a renewal that counts if the last one was too old |
//! | `Notice`: own key deleted or adopted, H gone or bound to another lease (renewals stop counting then) | election.rs `watch_own_key` | election/leading.rs `hold`, `still_leading`; election/session.rs `Keeper::confirm` |
//! | `Yield`: none of that, and another's Y: stop; the heir is that forcer (its key, if it has one) | — | election/leading.rs `still_leading` (`Heir::Forcer`) |
//! | `Quit`: the command exits by itself, or the wrapper gets SIGTERM | main.rs `on_child_exit`, `stop` | machine.rs `on_child_exit`, `stop` |
//! | `Deadline` / `Stale`: no counted renewal within the renew deadline | main.rs `Wrapper::on_deadline` → `stop` | machine.rs `Wrapper::on_deadline` → `stop`, with election/session.rs `Keeper::confirm` |
//! | `CmdExit`: SIGTERM handled, or SIGKILL at the kill deadline | main.rs `on_child_exit`, `on_deadline`, `kill_at` | machine.rs `on_child_exit`, `on_deadline`; timing.rs `kill_at` |
//! | `HandOver`: own key deleted and H bound to the heir's lease, one txn guarded by our key's mod revision, H bound to our lease and the heir's key never put again; the heir: the forcer that asked (none if it had no key: nothing), else the first key behind ours (a stranger's too) | — | election/leading.rs `hand_over`, `hand_to`, `Heir` |
//! | `Revoke` (resign; an adopted seat not before its `not_before`): one read of our key and H, then the revoke unless our key was put again by another process (`Adopted`) or is gone with H bound to our lease and its first change after our own last put a put (`Recorded`; a delete: revoked) / `Leave` (an adopted seat before `not_before`: nothing revoked, the lease and key expire) / `Abandon` (give up; the lease expires) | election.rs `Election::resign` | election/session.rs `Election::resign`, `revoke`, `Revoked`; etcd/watch.rs `first_change`; election/queue.rs `Seat::holds` |
//! | `Crash`: SIGKILL, the guardian kills the command at once (a stranger's command stops with it) | supervisor.rs (guardian) | same |
//! | `GPoll` / `GNotice`: Go replica | tests/common/old_replica.rs | same |
//! | `Join` (stranger): grant, create `LOCK/<its lease hex>` | client-go `concurrency.NewSession`, `Mutex.Lock` / `Election.Campaign` (the put) | same |
//! | `SWait` (stranger): no key older than its own left, its own key there or not | client-go `waitDeletes` (3.4-era `Mutex.Lock`, every `Election.Campaign`: no check of its own key) | same |
//! | `SDone` (its command ends) / `SUnlock` (delete its key) / `SClose` (revoke its lease) | etcdctl `lock` with a command: `Mutex.Unlock`, then `Session.Close` | same |
//! | `Expire`, `DeliverRevoke`, `DeleteKey` / `DeleteH` / `DeleteY` | etcd; an operator's `etcdctl del` | same |

use stateright::{Model, Property};
use std::fmt;

/// The property that the fence is explored: `LOCK` holds a fence while the command of the
/// holder it deposed still runs.
pub const DEPOSED: &str = "LOCK holds a deposal while the deposed command runs";

/// The property that the hand-over fast path is explored: a command runs, started on a record
/// handed over, while the giver's lease still lives (it revokes it after the hand-over).
pub const HANDED: &str = "a handed record is led before the giver's lease is gone";

/// A waiter of ours stepped back behind a forcer (`Turn::GiveWay`).
pub const GAVE_WAY: &str = "a waiter gives way to a forcer";

/// A leader handed the record to the forcer that asked it to yield, with a stranger queued
/// between them.
pub const TO_FORCER: &str = "the record is handed to a forcer over a stranger's key";

/// A leader handed the record to a stranger queued next (which never reads it).
pub const TO_STRANGER: &str = "the record is handed to a stranger";

/// A lease, by its index in [`State::leases`].
pub type L = u8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Old { legacy_lock: bool },
    New,
}

/// One process slot: a wrapper of ours (restartable), a Go replica or a stranger (used once).
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub identity: u8,
    pub force: bool,
    pub go: bool,
    /// A client of etcd's own recipe (`etcdctl lock`, `etcdctl elect`, client-go's
    /// `concurrency`, the Go tool v0.1.x): it never reads H nor Y.
    pub stranger: bool,
}

/// The model: which protocol, who takes part, and how many faults of each kind.
#[derive(Clone, Debug)]
pub struct Protocol {
    pub variant: Variant,
    pub procs: Vec<Spec>,
    pub crashes: u8,
    /// A leader's command ends by itself, or its wrapper is told to stop (SIGTERM): `Quit`.
    pub quits: u8,
    pub deletes: u8,
    pub cuts: u8,
    pub stucks: u8,
    /// Failed requests in a campaign (a timeout, a reset connection): `Retry`.
    pub errors: u8,
    /// A wrapper killed while resigning may leave its revoke in flight, landing later.
    pub revoke_in_flight: bool,
    /// The operator's deletes may hit candidate keys (`DeleteKey`).
    pub delete_keys: bool,
    /// The operator's deletes may hit `LOCK` and `LOCK\0yield` (`DeleteH`, `DeleteY`).
    pub delete_records: bool,
}

/// Whom a leader hands the record to (election/leading.rs `Heir`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Heir {
    /// The first candidate key behind ours at the hand-over.
    Next,
    /// The forcer that asked us to yield: the lease of its key, if it had one when we read it
    /// (`None`: nobody; the lease is only revoked).
    Forcer(Option<L>),
}

/// A key's value and binding. `life`: the process slot that last put it (for a candidate key,
/// create or adoption: the mod revision a seat remembers; for `LOCK`, its taker or heir);
/// `again`: a candidate key put again (adopted: its mod revision is not its create revision);
/// `deposed`: `LOCK` marked as a fence by a forcer; `over`: `LOCK` put over an existing record
/// (its version above 1: a hand-over or a fence), not created where it was absent
/// (`take_record`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rec {
    pub lease: L,
    pub identity: u8,
    pub life: u8,
    pub again: bool,
    pub deposed: bool,
    pub over: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    pub alive: bool,
    /// A fence lease: the lease it deposed.
    pub fence_of: Option<L>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Net {
    Ok,
    /// Cut off from etcd: no request gets through, renewals fail.
    Cut,
    /// Connected to a member that answers keep-alives but cannot commit.
    Stuck,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    Revoke(L),
    DeleteLock,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pc {
    /// Not running (crashed or exited); may be started again.
    Down,
    Join,
    /// NEW: a key of our identity bound to this lease: a twin or a dead previous life?
    Observe(L),
    /// NEW: seen dead; next the keep-alive and the put again, guarded by the key's mod
    /// revision as read (`current`: nobody put it since).
    Adopting {
        lease: L,
        current: bool,
    },
    /// Forcing (NEW `request_yield`'s loop; OLD: about to read the keys ahead).
    Force,
    /// NEW, a holder without a key fenced: the fence txn committed; next the revoke of the
    /// holder's lease.
    FenceRevoke(L),
    /// OLD: revoking the keys ahead one at a time.
    Depose {
        todo: Vec<Item>,
        revoked: Vec<L>,
    },
    /// OLD: the in-memory wait of a TTL after the revokes.
    Sleep {
        revoked: Vec<L>,
    },
    Wait,
    /// NEW: `take_record`'s txn, after the read that found the record absent.
    Take,
    /// NEW: took the record; waiting for the leases it saw ahead to be gone.
    AwaitGone,
    /// Decided to lead; the command starts next.
    Ready,
    Leading,
    /// The command got SIGTERM and still runs (until it exits or the kill deadline).
    Stopping,
    /// The command is gone (or never ran); NEW: hand the record on (`hand_over`), then revoke
    /// our lease, then exit (or join again: a waiter going back in line).
    Resigning {
        rejoin: bool,
        hand_over: bool,
    },
    /// Refused (twin, exit 76) or a Go replica that finished: never starts again.
    Exited,
    /// Go replica: polling `LOCK` (H).
    GPoll,
    /// Stranger: waiting until no key created before its own remains (the leases of those
    /// still there; its own key may be gone).
    SWait(Vec<L>),
    /// Stranger: its command runs (it keeps renewing its lease).
    SRun,
    /// Stranger: its command is done; next it deletes its key (`Unlock`).
    SUnlock,
    /// Stranger: its key deleted; next it revokes its lease (the session's close).
    SClose,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proc {
    pub pc: Pc,
    pub net: Net,
    pub lease: Option<L>,
    /// NEW `wait_turn`'s seen set: leases seen bound to a predecessor key or to H, still alive
    /// (gone ones are dropped: gone is forever).
    pub seen: Vec<L>,
    /// NEW: led (took or was handed the record): resigning hands it on.
    pub elected: bool,
    /// NEW: our key was adopted by another process: our lease is not ours to revoke.
    pub disowned: bool,
    /// NEW: adopted a previous life (whether or not the record names it: an operator may have
    /// deleted it): lead, and revoke, no earlier than its lease would have expired
    /// (`Seat::not_before`), which is after that life's kill deadline.
    pub not_before: bool,
    /// NEW: our key was put again by another process (adopted) after our own last put, which
    /// etcd's history keeps after the key is deleted (`revoke`'s `first_change`: a put).
    pub overtaken: bool,
    /// NEW, adopting: the previous life renewed (healed) after we saw it unrenewed.
    pub stale: bool,
    /// Its last counted renewal is within the renew deadline (`main` starts the command only
    /// then, and stops it once not). True while renewals count; false once `Stale` (the renew
    /// deadline passes without one) happened.
    pub fresh: bool,
    /// Go replica: its watch saw H deleted.
    pub h_deleted: bool,
    /// NEW: went back in line behind a forcer; a forcer asks no more in this process's life.
    pub gave_way: bool,
    /// NEW, leading: whom the record goes to when we resign.
    pub heir: Heir,
    /// NEW, waiting next in line: the record was handed to us; the watch event (`wait_turn`'s
    /// fast path) is all we need to lead.
    pub handed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub leases: Vec<Lease>,
    /// Candidate keys `LOCK/<hex lease>` in create-revision order.
    pub keys: Vec<Rec>,
    /// The holder record `LOCK` (OLD: the legacy lock).
    pub h: Option<Rec>,
    /// The yield request `LOCK\0yield`.
    pub y: Option<Rec>,
    /// A revoke sent by a wrapper killed before the answer.
    pub in_flight: Option<L>,
    pub procs: Vec<Proc>,
    pub crashes: u8,
    pub quits: u8,
    pub deletes: u8,
    pub cuts: u8,
    pub stucks: u8,
    pub errors: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Start,
    Join,
    Observe,
    Adopt,
    Check,
    Take,
    AwaitGone,
    Force,
    RevokeRunner,
    Depose,
    SleepDone,
    LeaseLost,
    Retry,
    StartCmd,
    Notice,
    Yield,
    Quit,
    Deadline,
    Stale,
    CmdExit,
    HandOver,
    Revoke,
    Leave,
    Abandon,
    Crash,
    CrashMidRevoke,
    Cut,
    Stuck,
    Heal,
    GPoll,
    GNotice,
    SWait,
    SDone,
    SUnlock,
    SClose,
}

const OPS: [Op; 35] = [
    Op::Start,
    Op::Join,
    Op::Observe,
    Op::Adopt,
    Op::Check,
    Op::Take,
    Op::AwaitGone,
    Op::Force,
    Op::RevokeRunner,
    Op::Depose,
    Op::SleepDone,
    Op::LeaseLost,
    Op::Retry,
    Op::StartCmd,
    Op::Notice,
    Op::Yield,
    Op::Quit,
    Op::Deadline,
    Op::Stale,
    Op::CmdExit,
    Op::HandOver,
    Op::Revoke,
    Op::Leave,
    Op::Abandon,
    Op::Crash,
    Op::CrashMidRevoke,
    Op::Cut,
    Op::Stuck,
    Op::Heal,
    Op::GPoll,
    Op::GNotice,
    Op::SWait,
    Op::SDone,
    Op::SUnlock,
    Op::SClose,
];

/// A cheap filter on the local state before `step` (which works on a copy of the state):
/// the ops that can apply to a process at this point of its program.
fn may_apply(op: Op, p: &Proc) -> bool {
    let faults = matches!(
        op,
        Op::Crash | Op::CrashMidRevoke | Op::Cut | Op::Stuck | Op::Heal | Op::Stale
    );
    faults
        || match &p.pc {
            Pc::Down => op == Op::Start,
            Pc::Join => op == Op::Join,
            Pc::Observe(_) => op == Op::Observe,
            Pc::Adopting { .. } => op == Op::Adopt,
            Pc::Force => matches!(op, Op::Force | Op::LeaseLost | Op::Retry),
            Pc::FenceRevoke(_) => op == Op::RevokeRunner,
            Pc::Depose { .. } => matches!(op, Op::Depose | Op::LeaseLost),
            Pc::Sleep { .. } => matches!(op, Op::SleepDone | Op::LeaseLost),
            Pc::Wait => matches!(op, Op::Check | Op::LeaseLost | Op::Retry),
            Pc::Take => matches!(op, Op::Take | Op::LeaseLost | Op::Retry),
            Pc::AwaitGone => matches!(op, Op::AwaitGone | Op::LeaseLost | Op::Retry),
            Pc::Ready => op == Op::StartCmd,
            Pc::Leading => matches!(
                op,
                Op::Notice | Op::Yield | Op::Quit | Op::Deadline | Op::GNotice
            ),
            Pc::Stopping => op == Op::CmdExit,
            Pc::Resigning { .. } => {
                matches!(op, Op::HandOver | Op::Revoke | Op::Leave | Op::Abandon)
            }
            Pc::Exited => false,
            Pc::GPoll => op == Op::GPoll,
            Pc::SWait(_) => op == Op::SWait,
            Pc::SRun => op == Op::SDone,
            Pc::SUnlock => op == Op::SUnlock,
            Pc::SClose => op == Op::SClose,
        }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Proc(usize, Op),
    /// etcd expires a lease (enabled per the timing assumptions of the module doc).
    Expire(L),
    DeliverRevoke,
    /// An operator deletes the candidate key bound to this lease.
    DeleteKey(L),
    DeleteH,
    DeleteY,
}

impl Proc {
    fn fresh(pc: Pc) -> Proc {
        Proc {
            pc,
            net: Net::Ok,
            lease: None,
            seen: Vec::new(),
            elected: false,
            disowned: false,
            not_before: false,
            overtaken: false,
            stale: false,
            fresh: true,
            h_deleted: false,
            gave_way: false,
            heir: Heir::Next,
            handed: false,
        }
    }

    fn live(&self) -> bool {
        !matches!(self.pc, Pc::Down | Pc::Exited)
    }

    /// Runs its command, or is about to start it.
    fn runs(&self) -> bool {
        matches!(self.pc, Pc::Ready | Pc::Leading | Pc::Stopping | Pc::SRun)
    }

    fn command(&self) -> bool {
        matches!(self.pc, Pc::Leading | Pc::Stopping | Pc::SRun)
    }

    /// Sends keep-alives that reach the majority (a twin whose key was adopted still does).
    fn renews(&self) -> bool {
        self.live() && self.net == Net::Ok
    }

    fn see(&mut self, l: L) {
        if Some(l) != self.lease && !self.seen.contains(&l) {
            self.seen.push(l);
        }
    }
}

impl Rec {
    fn key(lease: L, identity: u8, life: usize) -> Rec {
        Rec {
            lease,
            identity,
            life: life as u8,
            again: false,
            deposed: false,
            over: false,
        }
    }
}

impl State {
    fn alive(&self, l: L) -> bool {
        self.leases[l as usize].alive
    }

    fn key_pos(&self, l: L) -> Option<usize> {
        self.keys.iter().position(|k| k.lease == l)
    }

    fn grant(&mut self, fence_of: Option<L>) -> L {
        self.leases.push(Lease {
            alive: true,
            fence_of,
        });
        (self.leases.len() - 1) as L
    }

    /// Every write to H; a deletion is what a Go replica's watch sees.
    fn set_h(&mut self, h: Option<Rec>) {
        let deleted = self.h.is_some() && h.is_none();
        self.h = h;
        for p in &mut self.procs {
            p.h_deleted |= deleted;
        }
    }

    /// Revoke or expiry: the lease and every key bound to it.
    fn end_lease(&mut self, l: L) {
        if !self.alive(l) {
            return;
        }
        self.leases[l as usize].alive = false;
        self.keys.retain(|k| k.lease != l);
        if self.h.is_some_and(|r| r.lease == l) {
            self.set_h(None);
        }
        if self.y.is_some_and(|r| r.lease == l) {
            self.y = None;
        }
    }

    fn holds(&self, l: L) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(move |p| p.lease == Some(l))
    }

    pub fn commands(&self) -> usize {
        self.procs.iter().filter(|p| p.command()).count()
    }

    /// Canonical form: leases renumbered in order of first reference, unreferenced ones
    /// dropped, gone ones dropped from the seen sets. Two states that differ only in lease
    /// numbering are one state.
    fn normalize(&mut self) {
        let leases = self.leases.clone();
        let keys: Vec<L> = self.keys.iter().map(|k| k.lease).collect();
        let never_put_again: Vec<L> = self
            .keys
            .iter()
            .filter(|k| !k.again)
            .map(|k| k.lease)
            .collect();
        for p in &mut self.procs {
            p.seen.retain(|&l| leases[l as usize].alive);
            // A forcer whose key is gone or was put again can never be handed the record.
            if let Heir::Forcer(Some(l)) = p.heir {
                if !never_put_again.contains(&l) {
                    p.heir = Heir::Forcer(None);
                }
            }
            if let Pc::SWait(ahead) = &mut p.pc {
                ahead.retain(|l| keys.contains(l));
            }
        }
        let mut map: Vec<Option<L>> = vec![None; leases.len()];
        let mut order: Vec<L> = Vec::new();
        self.visit(&mut |l: &mut L| {
            if map[*l as usize].is_none() {
                map[*l as usize] = Some(order.len() as L);
                order.push(*l);
            }
        });
        let mut i = 0;
        while i < order.len() {
            if let Some(d) = leases[order[i] as usize].fence_of {
                if map[d as usize].is_none() {
                    map[d as usize] = Some(order.len() as L);
                    order.push(d);
                }
            }
            i += 1;
        }
        self.visit(&mut |l: &mut L| *l = map[*l as usize].expect("mapped"));
        self.leases = order
            .iter()
            .map(|&o| {
                let mut lease = leases[o as usize];
                lease.fence_of = lease.fence_of.map(|d| map[d as usize].expect("mapped"));
                lease
            })
            .collect();
        for p in &mut self.procs {
            p.seen.sort_unstable();
            if let Pc::SWait(ahead) = &mut p.pc {
                ahead.sort_unstable();
            }
        }
    }

    fn visit(&mut self, f: &mut impl FnMut(&mut L)) {
        for k in &mut self.keys {
            f(&mut k.lease);
        }
        for r in self.h.iter_mut().chain(self.y.iter_mut()) {
            f(&mut r.lease);
        }
        if let Some(l) = &mut self.in_flight {
            f(l);
        }
        for p in &mut self.procs {
            if let Some(l) = &mut p.lease {
                f(l);
            }
            match &mut p.pc {
                Pc::Observe(l) | Pc::Adopting { lease: l, .. } | Pc::FenceRevoke(l) => f(l),
                Pc::Depose { todo, revoked } => {
                    for it in todo {
                        if let Item::Revoke(l) = it {
                            f(l);
                        }
                    }
                    revoked.iter_mut().for_each(&mut *f);
                }
                Pc::Sleep { revoked } => revoked.iter_mut().for_each(&mut *f),
                Pc::SWait(ahead) => ahead.iter_mut().for_each(&mut *f),
                _ => {}
            }
            p.seen.iter_mut().for_each(&mut *f);
            if let Heir::Forcer(Some(l)) = &mut p.heir {
                f(l);
            }
        }
    }
}

impl Protocol {
    fn new_variant(&self) -> bool {
        self.variant == Variant::New
    }

    fn legacy(&self) -> bool {
        matches!(self.variant, Variant::Old { legacy_lock: true })
    }

    /// A forcer asks (unless it gave way in this life), anybody else waits.
    fn campaign_pc(&self, s: &State, i: usize) -> Pc {
        if self.procs[i].force && !s.procs[i].gave_way {
            Pc::Force
        } else {
            Pc::Wait
        }
    }

    /// Leaves the campaign and joins again with fresh memory (no lease); what it gave way to is
    /// remembered by the process.
    fn rejoin(s: &mut State, i: usize) {
        let p = &mut s.procs[i];
        p.pc = Pc::Join;
        p.lease = None;
        p.seen.clear();
        p.elected = false;
        p.not_before = false;
        p.overtaken = false;
        p.heir = Heir::Next;
        p.handed = false;
    }

    /// After `resign`: join again, or exit.
    fn resigned(s: &mut State, i: usize, rejoin: bool, go: bool) {
        if rejoin {
            Self::rejoin(s, i);
        } else if go {
            s.procs[i].pc = Pc::Exited;
        } else {
            s.procs[i] = Proc::fresh(Pc::Down);
        }
    }

    /// `Turn::GiveWay`: resign, then join again behind the forcer.
    fn give_way(s: &mut State, i: usize) {
        s.procs[i].gave_way = true;
        s.procs[i].pc = Pc::Resigning {
            rejoin: true,
            hand_over: false,
        };
    }

    /// Its renewals count (`Keeper::confirm`): they reach the majority (OLD: a stuck member's
    /// answer counts too) and, NEW, its key is still its own (not deleted, not adopted) and,
    /// once it leads (or is about to: `Pace::leading`), the record is bound to its lease.
    fn counts(&self, s: &State, i: usize) -> bool {
        let p = &s.procs[i];
        let Some(l) = p.lease.filter(|&l| s.alive(l)) else {
            return false;
        };
        if !self.new_variant() {
            return p.live() && p.net != Net::Cut;
        }
        p.renews()
            && !p.disowned
            && Self::seat(s, i, l).is_some_and(|(_, ours)| ours)
            && (!p.runs() || s.h.is_some_and(|h| h.lease == l))
    }

    /// The lease a resigning wrapper revokes (`revoke`): none once it knows its key was adopted,
    /// else per one read of its key and the record: not if its key was put again by another
    /// process (`Revoked::Adopted`), nor if its key is gone, the record is bound to its lease
    /// and the first change of its key after its own put was another's put (`Revoked::Recorded`:
    /// a twin that adopted its place may lead with it).
    fn revokes(&self, s: &State, i: usize) -> Option<L> {
        let p = &s.procs[i];
        p.lease.filter(|&l| {
            s.alive(l)
                && !p.disowned
                && match s.key_pos(l) {
                    Some(k) => s.keys[k].life == i as u8,
                    None => !self.new_variant() || s.h.is_none_or(|h| h.lease != l) || !p.overtaken,
                }
        })
    }

    /// Adopted from a previous life, and before `not_before`: that life may still run its
    /// command (or start it, its renew deadline not yet passed).
    fn may_still_run(&self, s: &State, i: usize) -> bool {
        let Some(l) = s.procs[i].lease else {
            return false;
        };
        s.procs[i].not_before
            && s.procs
                .iter()
                .enumerate()
                .any(|(j, q)| j != i && q.lease == Some(l) && (q.runs() || q.fresh))
    }

    fn is_go(&self, s: &State, l: L) -> bool {
        s.procs
            .iter()
            .zip(&self.procs)
            .any(|(p, spec)| spec.go && p.lease == Some(l))
    }

    fn expire_enabled(&self, s: &State, l: L) -> bool {
        let lease = s.leases[l as usize];
        if !lease.alive {
            return false;
        }
        match lease.fence_of {
            None => {
                let old = !self.new_variant();
                s.holds(l)
                    .all(|p| !p.renews() && (!p.runs() || (old && p.net == Net::Stuck)))
            }
            Some(_) => self.fence_may_expire(s, l),
        }
    }

    /// A fence (a holder without a candidate key gets one: a Go replica, or one of ours whose
    /// key was deleted by hand) may expire once the deposed command can no longer run: a Go
    /// replica's lease was revoked after the fence's keep-alive, and it stops within a third of
    /// its TTL + 2 s, before the fence's TTL + 1 s (until that revoke lands nothing the fence
    /// does stops it); a wrapper of ours stops before its lease could expire. A fence of a
    /// fence lasts at least as long as the first.
    fn fence_may_expire(&self, s: &State, fence: L) -> bool {
        let f = s.leases[fence as usize];
        let Some(d) = f.fence_of else {
            return true;
        };
        if s.leases[d as usize].fence_of.is_some() {
            return self.fence_may_expire(s, d);
        }
        // Not running, and a wrapper of ours never again: its renew deadline passed since its
        // last counted renewal, which came before the deposal.
        (self.is_go(s, d) && s.alive(d))
            || s.procs
                .iter()
                .zip(&self.procs)
                .filter(|(p, _)| p.lease == Some(d))
                .all(|(p, spec)| !p.runs() && (spec.go || !p.fresh))
    }

    fn step(&self, s: &mut State, i: usize, op: Op) -> Option<()> {
        let spec = self.procs[i];
        let new = self.new_variant();
        let net_ok = s.procs[i].net == Net::Ok;
        let pc = s.procs[i].pc.clone();
        let own = s.procs[i].lease;
        match (op, pc) {
            (Op::Start, Pc::Down) if !spec.go => s.procs[i] = Proc::fresh(Pc::Join),
            (Op::Join, Pc::Join) if spec.stranger => Self::stranger_join(s, i, spec.identity),
            (Op::Join, Pc::Join) if net_ok => self.join(s, i),
            (Op::Observe, Pc::Observe(l)) if net_ok => {
                let renewed = s
                    .procs
                    .iter()
                    .enumerate()
                    .any(|(j, q)| j != i && q.lease == Some(l) && q.renews());
                let key = s.key_pos(l).map(|k| s.keys[k]);
                match key {
                    None => s.procs[i].pc = Pc::Join,
                    // Renewed by someone else: a twin. Exit 76, nothing started.
                    Some(_) if renewed => s.procs[i].pc = Pc::Exited,
                    // The observation window outlasts any revoke left in flight.
                    Some(_) if s.in_flight == Some(l) => return None,
                    Some(_) => {
                        s.procs[i].stale = false;
                        s.procs[i].pc = Pc::Adopting {
                            lease: l,
                            current: true,
                        };
                    }
                }
            }
            // A revoke in flight lands within milliseconds: before the keep-alive and the put
            // again, or before the adopter could start.
            (Op::Adopt, Pc::Adopting { lease, current })
                if net_ok && s.in_flight != Some(lease) =>
            {
                // The keep-alive, the put again (guarded by the mod revision read), the record.
                match s.key_pos(lease).filter(|_| current) {
                    Some(k) if s.alive(lease) => {
                        s.keys[k].life = i as u8;
                        s.keys[k].again = true;
                        for (j, q) in s.procs.iter_mut().enumerate() {
                            q.overtaken |= j != i && q.lease == Some(lease);
                        }
                        for q in &mut s.procs {
                            if let Pc::Adopting { lease: o, current } = &mut q.pc {
                                if *o == lease {
                                    *current = false;
                                }
                            }
                        }
                        let p = &mut s.procs[i];
                        p.lease = Some(lease);
                        // A full TTL from the put again: renewals of the other life stop
                        // counting there, so its kill deadline is before that.
                        p.not_before = true;
                        s.procs[i].pc = self.campaign_pc(s, i);
                    }
                    _ => {
                        self.create(s, i);
                        s.procs[i].pc = self.campaign_pc(s, i);
                    }
                }
            }
            (Op::LeaseLost, Pc::Wait | Pc::Force | Pc::Take | Pc::AwaitGone)
            | (Op::LeaseLost, Pc::Depose { .. } | Pc::Sleep { .. })
                if net_ok && own.is_some_and(|l| !s.alive(l)) =>
            {
                Self::rejoin(s, i)
            }
            // A failed request in the campaign (`backoff`, then `join`): this life's seat is
            // kept, with its seen set, if it still holds, else resigned; a forcer asks again.
            (Op::Retry, Pc::Wait | Pc::Force | Pc::Take | Pc::AwaitGone)
                if new && net_ok && s.errors > 0 =>
            {
                let l = own?;
                s.errors -= 1;
                s.procs[i].handed = false;
                s.procs[i].pc = if s.alive(l) && Self::seat(s, i, l).is_some_and(|(_, o)| o) {
                    self.campaign_pc(s, i)
                } else {
                    Pc::Resigning {
                        rejoin: true,
                        hand_over: false,
                    }
                };
            }
            (Op::Check, Pc::Wait) if net_ok => {
                if new {
                    self.wait_turn(s, i)?
                } else {
                    self.wait_turn_old(s, i)?
                }
            }
            // `main` starts the command only with a renewal within the renew deadline: a lease
            // that expired meanwhile is `LeaseLost`.
            (Op::Take, Pc::Take) if net_ok => self.take_record(s, i)?,
            // `settle`: the leases seen ahead gone, then a request of ours withdrawn.
            // Having waited for any, read again (`Check`): a forcer may have asked meanwhile.
            (Op::AwaitGone, Pc::AwaitGone) if net_ok && own.is_some_and(|l| s.alive(l)) => {
                if s.procs[i].seen.iter().any(|&l| s.alive(l)) {
                    return None;
                }
                if s.y.is_some_and(|y| Some(y.lease) == own) {
                    s.y = None;
                }
                s.procs[i].pc = if s.procs[i].seen.is_empty() {
                    Pc::Ready
                } else {
                    s.procs[i].seen.clear();
                    Pc::Wait
                };
            }
            (Op::Force, Pc::Force) if net_ok => {
                if new {
                    self.request_yield(s, i)?
                } else {
                    self.force_old(s, i)?
                }
            }
            // Retried until it lands (or the fence's TTL passed: given up cut off); the fence is
            // then renewed, which the model does not show (see "Fence").
            (Op::RevokeRunner, Pc::FenceRevoke(l)) => {
                if net_ok {
                    s.end_lease(l);
                }
                s.procs[i].pc = Pc::Wait;
            }
            (
                Op::Depose,
                Pc::Depose {
                    mut todo,
                    mut revoked,
                },
            ) if net_ok => {
                match todo.remove(0) {
                    Item::Revoke(l) => {
                        if s.alive(l) {
                            s.end_lease(l);
                            revoked.push(l);
                        }
                    }
                    Item::DeleteLock => s.set_h(None),
                }
                s.procs[i].pc = if todo.is_empty() {
                    Pc::Sleep { revoked }
                } else {
                    Pc::Depose { todo, revoked }
                };
            }
            (Op::SleepDone, Pc::Sleep { revoked }) => {
                if s.procs
                    .iter()
                    .any(|q| q.runs() && q.lease.is_some_and(|l| revoked.contains(&l)))
                {
                    return None;
                }
                s.procs[i].pc = Pc::Wait;
            }
            (Op::StartCmd, Pc::Ready) => {
                // An adopted previous life (the record may have been deleted under it): not
                // before its lease would have expired, which is after its kill deadline.
                if self.may_still_run(s, i) || s.in_flight == own {
                    return None;
                }
                // "elected, but the lease was not renewed within the renew deadline": NEW waits
                // for the next renewal and starts if it counts (merged into this step), else
                // (the lease or the record gone) resigns.
                if !s.procs[i].fresh && new && self.counts(s, i) {
                    s.procs[i].fresh = true;
                }
                s.procs[i].pc = if s.procs[i].fresh {
                    Pc::Leading
                } else {
                    Pc::Resigning {
                        rejoin: false,
                        hand_over: new && s.procs[i].elected && !s.procs[i].disowned,
                    }
                };
            }
            (Op::Notice, Pc::Leading) if net_ok && !spec.go => {
                let l = own?;
                let key = s.key_pos(l).map(|k| s.keys[k]);
                let adopted = new && key.is_some_and(|k| k.life != i as u8);
                let lost = !s.alive(l)
                    || key.is_none()
                    || adopted
                    || (self.legacy() && s.h.map(|r| r.lease) != Some(l))
                    || (new && s.h.is_none_or(|h| h.lease != l));
                if !lost {
                    return None;
                }
                s.procs[i].disowned = adopted;
                s.procs[i].pc = Pc::Stopping;
            }
            // The same read finds nothing of that, and another's request: the record goes to
            // that forcer (read now: its key, if it has one), and to nobody else. Y stands.
            (Op::Yield, Pc::Leading) if new && net_ok && !spec.go => {
                let l = own?;
                let y = s.y.filter(|y| y.lease != l)?;
                let held = s.alive(l)
                    && Self::seat(s, i, l).is_some_and(|(_, ours)| ours)
                    && s.h.is_some_and(|h| h.lease == l);
                if !held {
                    return None;
                }
                s.procs[i].heir = Heir::Forcer(s.key_pos(y.lease).map(|_| y.lease));
                s.procs[i].pc = Pc::Stopping;
            }
            (Op::Quit, Pc::Leading) if new && s.quits > 0 && !spec.go => {
                s.quits -= 1;
                s.procs[i].pc = Pc::Stopping;
            }
            // No counted renewal within the renew deadline.
            (Op::Deadline, Pc::Leading) if !spec.go && !self.counts(s, i) => {
                s.procs[i].fresh = false;
                s.procs[i].pc = Pc::Stopping;
            }
            (Op::Stale, pc)
                if !spec.go
                    && own.is_some()
                    && matches!(
                        pc,
                        Pc::Wait | Pc::Take | Pc::AwaitGone | Pc::Ready | Pc::Force
                    )
                    && s.procs[i].fresh
                    && !self.counts(s, i) =>
            {
                s.procs[i].fresh = false;
            }
            (Op::CmdExit, Pc::Stopping) => {
                let p = &mut s.procs[i];
                p.pc = Pc::Resigning {
                    rejoin: false,
                    hand_over: new && p.elected && !p.disowned,
                };
            }
            // Errors are only logged: on to the revoke either way.
            (
                Op::HandOver,
                Pc::Resigning {
                    rejoin,
                    hand_over: true,
                },
            ) => {
                if net_ok {
                    self.hand_over(s, i);
                }
                s.procs[i].heir = Heir::Next;
                s.procs[i].pc = Pc::Resigning {
                    rejoin,
                    hand_over: false,
                };
            }
            (
                Op::Revoke,
                Pc::Resigning {
                    rejoin,
                    hand_over: false,
                },
            ) if net_ok => {
                // `resign`: an adopted seat past `not_before` (else `Leave`), then `revoke`.
                if self.may_still_run(s, i) {
                    return None;
                }
                if let Some(l) = self.revokes(s, i) {
                    s.end_lease(l);
                }
                Self::resigned(s, i, rejoin, spec.go);
            }
            // `resign`: an adopted seat before `not_before` returns at once, no request sent.
            (
                Op::Leave,
                Pc::Resigning {
                    rejoin,
                    hand_over: false,
                },
            ) if s.procs[i].not_before => Self::resigned(s, i, rejoin, spec.go),
            (Op::Abandon, Pc::Resigning { rejoin, .. }) if !net_ok => {
                if rejoin {
                    Self::rejoin(s, i);
                } else {
                    s.procs[i] = Proc::fresh(Pc::Down);
                }
            }
            // A stranger's command is stopped with it; its lease expires, never used again.
            (Op::Crash, pc) if s.crashes > 0 && !spec.go && pc != Pc::Down && pc != Pc::Exited => {
                s.crashes -= 1;
                s.procs[i] = Proc::fresh(if spec.stranger { Pc::Exited } else { Pc::Down });
            }
            (
                Op::CrashMidRevoke,
                Pc::Resigning {
                    hand_over: false, ..
                },
            ) if self.revoke_in_flight
                && s.crashes > 0
                && net_ok
                && !self.may_still_run(s, i)
                && self.revokes(s, i).is_some() =>
            {
                s.crashes -= 1;
                s.in_flight = own;
                s.procs[i] = Proc::fresh(Pc::Down);
            }
            (Op::Cut, pc)
                if s.cuts > 0
                    && net_ok
                    && !spec.go
                    && !spec.stranger
                    && pc != Pc::Down
                    && pc != Pc::Exited =>
            {
                s.cuts -= 1;
                s.procs[i].net = Net::Cut;
            }
            (Op::Stuck, pc)
                if s.stucks > 0
                    && net_ok
                    && !spec.go
                    && !spec.stranger
                    && pc != Pc::Down
                    && pc != Pc::Exited =>
            {
                s.stucks -= 1;
                s.procs[i].net = Net::Stuck;
            }
            (Op::Heal, _) if !net_ok => {
                s.procs[i].net = Net::Ok;
                // Its renewals reach etcd again: an adopter that saw the lease unrenewed has a
                // stale view of when the previous life's command must have stopped.
                if let Some(l) = own {
                    for q in &mut s.procs {
                        if matches!(q.pc, Pc::Adopting { lease, .. } if lease == l) {
                            q.stale = true;
                        }
                    }
                }
            }
            (Op::GPoll, Pc::GPoll) => {
                let l = match own {
                    Some(l) => l,
                    None => {
                        let l = s.grant(None);
                        s.procs[i].lease = Some(l);
                        l
                    }
                };
                if s.h.is_none() {
                    s.set_h(Some(Rec::key(l, spec.identity, i)));
                    s.procs[i].h_deleted = false;
                    s.procs[i].pc = Pc::Leading;
                } else if own.is_some() {
                    return None;
                }
            }
            (Op::GNotice, Pc::Leading) if spec.go => {
                let l = own?;
                if !s.procs[i].h_deleted && s.alive(l) {
                    return None;
                }
                s.procs[i].pc = Pc::Stopping;
            }
            // `waitDeletes` found nothing older than its key: it runs, whether its key (or, in
            // the worst case, its lease) still exists or not.
            (Op::SWait, Pc::SWait(ahead)) if ahead.is_empty() => s.procs[i].pc = Pc::SRun,
            (Op::SDone, Pc::SRun) => s.procs[i].pc = Pc::SUnlock,
            (Op::SUnlock, Pc::SUnlock) => {
                let l = own?;
                s.keys.retain(|k| k.lease != l);
                s.procs[i].pc = Pc::SClose;
            }
            (Op::SClose, Pc::SClose) => {
                s.end_lease(own?);
                s.procs[i] = Proc::fresh(Pc::Exited);
            }
            _ => return None,
        }
        Some(())
    }

    fn join(&self, s: &mut State, i: usize) {
        let me = self.procs[i].identity;
        let mine: Vec<L> = s
            .keys
            .iter()
            .filter(|k| k.identity == me)
            .map(|k| k.lease)
            .collect();
        if self.new_variant() {
            if let Some(&l) = mine.first() {
                s.procs[i].pc = Pc::Observe(l);
                return;
            }
        } else if let Some((&l, rest)) = mine.split_first() {
            // OLD: adopt the first at once, revoke the others (even a live twin's).
            for &o in rest {
                s.end_lease(o);
            }
            s.procs[i].lease = Some(l);
        }
        let l = match s.procs[i].lease {
            Some(l) => l,
            None => self.create(s, i),
        };
        if self.legacy() && s.h.is_some_and(|r| r.identity == me && r.lease != l) {
            s.set_h(None);
        }
        s.procs[i].pc = self.campaign_pc(s, i);
    }

    /// A stranger's session and key (`LOCK/<its lease hex>`), and the keys created before it.
    fn stranger_join(s: &mut State, i: usize, identity: u8) {
        let ahead = s.keys.iter().map(|k| k.lease).collect();
        let l = s.grant(None);
        s.keys.push(Rec::key(l, identity, i));
        s.procs[i].lease = Some(l);
        s.procs[i].pc = Pc::SWait(ahead);
    }

    /// A lease granted and our key put on it (election/join.rs `Election::create`).
    fn create(&self, s: &mut State, i: usize) -> L {
        let l = s.grant(None);
        s.keys.push(Rec::key(l, self.procs[i].identity, i));
        s.procs[i].lease = Some(l);
        l
    }

    /// Our key as a seat sees it: `None` gone, `Some(false)` adopted by another process.
    fn seat(s: &State, i: usize, l: L) -> Option<(usize, bool)> {
        s.key_pos(l).map(|k| (k, s.keys[k].life == i as u8))
    }

    /// NEW `Election::wait_turn`, one read and what follows it (or, `handed`, the hand-over's
    /// watch event alone).
    fn wait_turn(&self, s: &mut State, i: usize) -> Option<()> {
        let l = s.procs[i].lease?;
        if !s.alive(l) {
            Self::rejoin(s, i);
            return Some(());
        }
        if std::mem::take(&mut s.procs[i].handed) {
            // The fast path: the hand-over's txn found our key never put again and deleted our
            // predecessor's; nothing else is read.
            s.procs[i].seen.clear();
            s.procs[i].elected = true;
            s.procs[i].pc = Pc::Ready;
            return Some(());
        }
        let pos = match Self::seat(s, i, l) {
            None => {
                s.procs[i].pc = Pc::Resigning {
                    rejoin: true,
                    hand_over: false,
                };
                return Some(());
            }
            // Our lease is another process's now: exit as a twin, never revoke it.
            Some((_, false)) => {
                s.procs[i].disowned = true;
                s.procs[i].pc = Pc::Exited;
                return Some(());
            }
            Some((pos, true)) => pos,
        };
        if pos > 0 {
            let pred = s.keys[pos - 1].lease;
            s.procs[i].see(pred);
            return Some(());
        }
        match s.h {
            // Its candidate key is behind ours: a forcer was handed the record over our place.
            Some(h) if h.lease != l && s.key_pos(h.lease).is_some() => Self::give_way(s, i),
            // A Go replica, a fence, a stranger that unlocked, ours whose key was deleted.
            Some(h) if h.lease != l => s.procs[i].see(h.lease),
            // Ours, but our command not started: another's request stands, we go back in line.
            Some(_) if s.y.is_some_and(|y| y.lease != l) => Self::give_way(s, i),
            // `settle`: handed (put over an existing record) at once, else once the leases seen
            // are gone (`AwaitGone` withdraws our request then).
            Some(h) => {
                s.procs[i].elected = true;
                if h.over {
                    s.procs[i].seen.clear();
                    if s.y.is_some_and(|y| y.lease == l) {
                        s.y = None;
                    }
                    s.procs[i].pc = Pc::Ready;
                } else {
                    s.procs[i].pc = Pc::AwaitGone;
                }
            }
            // A forcer behind us asked before we took the record.
            None if s.y.is_some_and(|y| y.lease != l) => Self::give_way(s, i),
            None => s.procs[i].pc = Pc::Take,
        }
        Some(())
    }

    /// NEW `take_record`: H for our lease if still absent, our key still ours (by its mod
    /// revision: not put again by a twin) and no other forcer's request; a request of ours
    /// withdrawn with it. Failed: read again.
    fn take_record(&self, s: &mut State, i: usize) -> Option<()> {
        let me = self.procs[i].identity;
        let l = s.procs[i].lease?;
        let ours = matches!(Self::seat(s, i, l), Some((_, true)));
        if ours && s.h.is_none() && s.y.is_none_or(|y| y.lease == l) {
            s.set_h(Some(Rec::key(l, me, i)));
            s.y = None;
            s.procs[i].elected = true;
            s.procs[i].pc = Pc::AwaitGone;
        } else {
            s.procs[i].pc = Pc::Wait;
        }
        Some(())
    }

    /// OLD `wait_turn` (with `take_legacy_lock`).
    fn wait_turn_old(&self, s: &mut State, i: usize) -> Option<()> {
        let me = self.procs[i].identity;
        let l = s.procs[i].lease?;
        if !s.alive(l) {
            Self::rejoin(s, i);
            return Some(());
        }
        let Some(pos) = s.key_pos(l) else {
            s.procs[i].pc = Pc::Resigning {
                rejoin: true,
                hand_over: false,
            };
            return Some(());
        };
        if pos > 0 {
            return None;
        }
        if self.legacy() {
            match s.h {
                None => s.set_h(Some(Rec::key(l, me, i))),
                Some(r) if r.lease == l => {}
                Some(_) => return None,
            }
        }
        s.procs[i].pc = Pc::Ready;
        Some(())
    }

    /// One pass of `force::request_yield`'s loop: a read, then the request txn (and read again),
    /// or, our request standing, the runner's lease seen and (a runner without a candidate key)
    /// the fence; then `wait_turn`.
    fn request_yield(&self, s: &mut State, i: usize) -> Option<()> {
        let me = self.procs[i].identity;
        let l = s.procs[i].lease?;
        if !s.alive(l) {
            Self::rejoin(s, i);
            return Some(());
        }
        let wait = |s: &mut State| {
            s.procs[i].pc = Pc::Wait;
            Some(())
        };
        let Some(pos) = s.key_pos(l) else {
            return wait(s);
        };
        let (runner, keyed) = match s.h {
            // Ours, or a fence (by us before a restart, or by another forcer).
            Some(h) if h.lease == l || h.deposed => return wait(s),
            Some(h) => (h, s.key_pos(h.lease).is_some()),
            None if pos > 0 => (s.keys[0], true),
            None => return wait(s),
        };
        match s.y {
            // Another forcer asked first: a plain candidate.
            Some(y) if y.lease != l => return wait(s),
            // Ours (or our previous life's): it stands.
            Some(_) => {}
            // Guarded by our key's create revision, H and Y as read.
            None => {
                s.y = Some(Rec::key(l, me, i));
                return Some(());
            }
        }
        s.procs[i].see(runner.lease);
        if keyed {
            return wait(s);
        }
        // A fence lease of the runner's TTL + 1 s, H re-bound to it (same guards), then the
        // revoke of the runner's lease.
        let f = s.grant(Some(runner.lease));
        s.set_h(Some(Rec {
            lease: f,
            identity: runner.identity,
            life: 0,
            again: false,
            deposed: true,
            over: true,
        }));
        s.procs[i].pc = Pc::FenceRevoke(runner.lease);
        Some(())
    }

    /// NEW `Election::hand_over`: our key deleted and the record bound to the heir's lease, in
    /// one txn guarded by our key (its mod revision), the record bound to our lease and the
    /// heir's key never put again.
    fn hand_over(&self, s: &mut State, i: usize) {
        let Some(l) = s.procs[i].lease else {
            return;
        };
        let Some((pos, true)) = Self::seat(s, i, l) else {
            return;
        };
        if s.h.is_none_or(|h| h.lease != l) {
            return;
        }
        let heir = match s.procs[i].heir {
            Heir::Forcer(f) => f.and_then(|f| s.key_pos(f)),
            Heir::Next => (pos + 1 < s.keys.len()).then_some(pos + 1),
        };
        let Some(next) = heir.map(|k| s.keys[k]).filter(|k| !k.again) else {
            return;
        };
        s.keys.remove(pos);
        s.set_h(Some(Rec {
            over: true,
            ..Rec::key(next.lease, next.identity, next.life as usize)
        }));
        // A candidate of ours (not a forcer: it reads) next in line watches the record, and
        // leads on this event alone.
        for (j, p) in s.procs.iter_mut().enumerate() {
            if p.lease == Some(next.lease)
                && next.life == j as u8
                && p.pc == Pc::Wait
                && !self.procs[j].force
            {
                p.handed = true;
            }
        }
    }

    /// OLD `depose_ahead_of`: read the keys ahead (and the legacy lock), then one at a time.
    fn force_old(&self, s: &mut State, i: usize) -> Option<()> {
        let l = s.procs[i].lease?;
        if !s.alive(l) {
            Self::rejoin(s, i);
            return Some(());
        }
        let Some(pos) = s.key_pos(l) else {
            s.procs[i].pc = Pc::Resigning {
                rejoin: true,
                hand_over: false,
            };
            return Some(());
        };
        let mut todo: Vec<Item> = s.keys[..pos]
            .iter()
            .map(|k| Item::Revoke(k.lease))
            .collect();
        if self.legacy() {
            if let Some(r) = s.h.filter(|r| r.lease != l) {
                todo.push(Item::Revoke(r.lease));
                todo.push(Item::DeleteLock);
            }
        }
        s.procs[i].pc = if todo.is_empty() {
            Pc::Sleep {
                revoked: Vec::new(),
            }
        } else {
            Pc::Depose {
                todo,
                revoked: Vec::new(),
            }
        };
        Some(())
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let procs = self
            .procs
            .iter()
            .map(|spec| Proc::fresh(if spec.go { Pc::GPoll } else { Pc::Join }))
            .collect();
        vec![State {
            leases: Vec::new(),
            keys: Vec::new(),
            h: None,
            y: None,
            in_flight: None,
            procs,
            crashes: self.crashes,
            quits: self.quits,
            deletes: self.deletes,
            cuts: self.cuts,
            stucks: self.stucks,
            errors: self.errors,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        // An overlap ends the path: counterexamples stop where the property fails.
        if s.commands() > 1 {
            return;
        }
        for (i, p) in s.procs.iter().enumerate() {
            for op in OPS.into_iter().filter(|&op| may_apply(op, p)) {
                actions.push(Action::Proc(i, op));
            }
        }
        for l in 0..s.leases.len() as L {
            if self.expire_enabled(s, l) {
                actions.push(Action::Expire(l));
            }
            if s.deletes > 0 && self.delete_keys && s.key_pos(l).is_some() {
                actions.push(Action::DeleteKey(l));
            }
        }
        if s.in_flight.is_some() {
            actions.push(Action::DeliverRevoke);
        }
        if s.deletes > 0 && self.delete_records {
            actions.push(Action::DeleteH);
            actions.push(Action::DeleteY);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Proc(i, op) => {
                self.step(&mut s, i, op)?;
                // Renewals flow whenever they count.
                for j in 0..s.procs.len() {
                    if self.counts(&s, j) {
                        s.procs[j].fresh = true;
                    }
                }
            }
            Action::Expire(l) => {
                if !self.expire_enabled(&s, l) {
                    return None;
                }
                s.end_lease(l);
            }
            Action::DeliverRevoke => {
                let l = s.in_flight.take()?;
                s.end_lease(l);
            }
            Action::DeleteKey(l) => {
                let pos = s.key_pos(l)?;
                s.deletes = s.deletes.checked_sub(1)?;
                s.keys.remove(pos);
            }
            Action::DeleteH => {
                s.h?;
                s.deletes = s.deletes.checked_sub(1)?;
                s.set_h(None);
            }
            Action::DeleteY => {
                s.y?;
                s.deletes = s.deletes.checked_sub(1)?;
                s.y = None;
            }
        }
        s.normalize();
        (s != *last).then_some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("one command at a time", |_, s: &State| s.commands() <= 1),
            Property::sometimes("someone leads", |_, s: &State| s.commands() == 1),
            Property::sometimes("a forcer leads", |m: &Protocol, s: &State| {
                s.procs
                    .iter()
                    .zip(&m.procs)
                    .any(|(p, spec)| spec.force && p.pc == Pc::Leading)
            }),
            Property::sometimes(HANDED, |_, s: &State| {
                s.h.filter(|h| h.over && !h.deposed).is_some_and(|h| {
                    s.holds(h.lease).any(Proc::command)
                        && s.procs.iter().any(|p| {
                            matches!(p.pc, Pc::Resigning { .. })
                                && p.lease.is_some_and(|l| l != h.lease && s.alive(l))
                        })
                })
            }),
            Property::sometimes(DEPOSED, |_, s: &State| {
                s.h.filter(|h| h.deposed).is_some_and(|h| {
                    let d = s.leases[h.lease as usize].fence_of.unwrap_or(h.lease);
                    s.holds(d).any(Proc::command)
                })
            }),
            Property::sometimes(GAVE_WAY, |_, s: &State| s.procs.iter().any(|p| p.gave_way)),
            Property::sometimes(TO_FORCER, |m: &Protocol, s: &State| {
                m.handed_to(s, |spec| spec.force).is_some_and(|h| {
                    let pos = s.key_pos(h.lease).unwrap_or(0);
                    s.keys[..pos]
                        .iter()
                        .any(|k| m.held_by(s, k.lease, |spec| spec.stranger))
                })
            }),
            Property::sometimes(TO_STRANGER, |m: &Protocol, s: &State| {
                m.handed_to(s, |spec| spec.stranger).is_some()
            }),
        ]
    }

    fn format_action(&self, action: &Action) -> String {
        match action {
            Action::Proc(i, op) => format!("{} {op:?}", self.name(*i)),
            other => format!("{other:?}"),
        }
    }
}

impl Protocol {
    /// The lease is held by a process of this kind.
    fn held_by(&self, s: &State, l: L, kind: impl Fn(&Spec) -> bool) -> bool {
        s.procs
            .iter()
            .zip(&self.procs)
            .any(|(p, spec)| kind(spec) && p.lease == Some(l))
    }

    /// H handed over (not a fence) to a process of this kind.
    fn handed_to(&self, s: &State, kind: impl Fn(&Spec) -> bool) -> Option<Rec> {
        s.h.filter(|h| h.over && !h.deposed && self.held_by(s, h.lease, kind))
    }

    pub fn name(&self, i: usize) -> String {
        let spec = self.procs[i];
        let kind = match (spec.go, spec.force, spec.stranger) {
            (true, _, _) => "go",
            (_, _, true) => "stranger",
            (_, true, _) => "forcer",
            _ => "wrapper",
        };
        format!("{kind}#{i}(id {})", spec.identity)
    }
}

impl fmt::Display for State {
    /// Leases are shown by their holder's identity (`L` of id 1 is `1`), fences as `fence(1)`:
    /// lease numbers change from state to state (see `normalize`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |l: L| -> String {
            let lease = self.leases[l as usize];
            let owner = self
                .keys
                .iter()
                .chain(self.h.iter())
                .find(|k| k.lease == l)
                .map_or("?".to_string(), |k| k.identity.to_string());
            match lease.fence_of {
                Some(_) => format!("fence({owner})"),
                None if !lease.alive => "gone".to_string(),
                None => owner,
            }
        };
        write!(f, "keys[")?;
        for k in &self.keys {
            let again = if k.again { "'" } else { "" };
            write!(f, " {}{again}", k.identity)?;
        }
        write!(f, " ]")?;
        if let Some(h) = self.h {
            let deposed = if h.deposed { "(deposed)" } else { "" };
            write!(f, " H={}{deposed}", name(h.lease))?;
        }
        if let Some(y) = self.y {
            write!(f, " Y={}", y.identity)?;
        }
        for (i, p) in self.procs.iter().enumerate() {
            let pc = match &p.pc {
                Pc::Depose { todo, .. } => format!("Depose({} left)", todo.len()),
                Pc::Sleep { revoked } => format!("Sleep({} revoked)", revoked.len()),
                Pc::FenceRevoke(_) => "FenceRevoke".to_string(),
                Pc::Observe(_) => "Observe".to_string(),
                Pc::Adopting { .. } => "Adopting".to_string(),
                Pc::SWait(ahead) => format!("SWait({} older)", ahead.len()),
                other => format!("{other:?}"),
            };
            write!(f, " | #{i} {pc}")?;
            if let Some(l) = p.lease {
                if !self.leases[l as usize].alive {
                    write!(f, " (lease gone)")?;
                }
            }
            if p.disowned {
                write!(f, " (key adopted)")?;
            }
            if p.overtaken {
                write!(f, " (key put by another)")?;
            }
            if p.gave_way {
                write!(f, " (gave way)")?;
            }
            if p.handed {
                write!(f, " (handed)")?;
            }
            if let Heir::Forcer(to) = p.heir {
                let to = to.map_or("nobody".to_string(), name);
                write!(f, " (heir: forcer {to})")?;
            }
            if p.net != Net::Ok {
                write!(f, " {:?}", p.net)?;
            }
        }
        Ok(())
    }
}
