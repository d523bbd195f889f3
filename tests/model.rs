//! The exclusion protocol checked exhaustively with `stateright` (the model, its timing
//! assumptions and the map from its actions to the code are in `model/protocol.rs`): the old
//! protocol (`src/election.rs` before issue 9) has the counterexamples of issue 9's holes 1, 2,
//! 3 and 6; the new one, as `src/` implements it, keeps one command at a time in every
//! reachable state through a crash (with a revoke left in flight), a cut-off, a failed request
//! and an operator's delete beside a forcer, twins and adoption, and among strangers (clients of
//! etcd's own recipe on the same lock) queued anywhere. Its findings on the way are below, each
//! with what closed it. Two holes are left: a Go replica that outlives its fence (finding 2)
//! and, among strangers, a candidate key deleted by hand, which releases the strangers behind
//! it while its holder still runs: no protocol of ours can close that one. Paths print with `--nocapture`.

mod model {
    pub mod protocol;
}

use model::protocol::{
    Action, Protocol, Spec, State, Variant, DEPOSED, GAVE_WAY, HANDED, TO_FORCER, TO_STRANGER,
};
use stateright::{Checker, HasDiscoveries, Model};
use std::time::Instant;

const SAFE: &str = "one command at a time";

fn wrapper(identity: u8) -> Spec {
    Spec {
        identity,
        force: false,
        go: false,
        stranger: false,
    }
}

fn forcer(identity: u8) -> Spec {
    Spec {
        identity,
        force: true,
        go: false,
        stranger: false,
    }
}

fn go(identity: u8) -> Spec {
    Spec {
        identity,
        force: false,
        go: true,
        stranger: false,
    }
}

fn stranger(identity: u8) -> Spec {
    Spec {
        identity,
        force: false,
        go: false,
        stranger: true,
    }
}

fn model(variant: Variant, procs: Vec<Spec>) -> Protocol {
    Protocol {
        variant,
        procs,
        crashes: 0,
        quits: 0,
        deletes: 0,
        cuts: 0,
        stucks: 0,
        errors: 0,
        revoke_in_flight: false,
        delete_keys: true,
        delete_records: true,
    }
}

const OLD: Variant = Variant::Old { legacy_lock: false };
const OLD_LEGACY: Variant = Variant::Old { legacy_lock: true };

/// Explores every reachable state; returns the counterexample to [`SAFE`], if any. Exploring
/// all of them, it also asserts that the paths that matter were explored: `reaches` beside
/// those every configuration of its kind reaches.
fn explore(
    name: &str,
    m: Protocol,
    stop_at_failure: bool,
    reaches: &[&'static str],
) -> Option<String> {
    let start = Instant::now();
    let mut builder = m.clone().checker().threads(1);
    if stop_at_failure {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    let checker = builder.spawn_bfs().join();
    let found = checker
        .discovery(SAFE)
        .map(|path| describe(&m, path.into_vec()));
    eprintln!(
        "{name}: {} states ({} unique), depth {}, {:.1?}{}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        start.elapsed(),
        if found.is_some() {
            ", counterexample:"
        } else {
            ""
        }
    );
    if let Some(path) = &found {
        eprintln!("{path}");
    }
    if !stop_at_failure {
        let new = m.variant == Variant::New;
        let force = m.procs.iter().any(|p| p.force);
        let ours = m.procs.iter().any(|p| !p.force && !p.go && !p.stranger);
        // A fence only for a holder without a candidate key.
        let keyless = m.procs.iter().any(|p| p.go) || (m.deletes > 0 && m.delete_keys);
        let expected = [
            ("someone leads", true),
            ("a forcer leads", force),
            (DEPOSED, new && force && keyless),
            (HANDED, new),
            (GAVE_WAY, new && force && ours),
        ];
        let expected = expected
            .iter()
            .filter(|(_, e)| *e)
            .map(|(p, _)| *p)
            .chain(reaches.iter().copied());
        for property in expected {
            assert!(
                checker.discovery(property).is_some(),
                "{name}: never reached: {property}"
            );
        }
    }
    found
}

fn describe(m: &Protocol, path: Vec<(State, Option<Action>)>) -> String {
    let mut out = format!("  init: {}\n", path[0].0);
    for (step, (_, action)) in path.iter().enumerate() {
        if let (Some(a), Some((next, _))) = (action, path.get(step + 1)) {
            out.push_str(&format!(
                "  {:>2}. {:<34} → {next}\n",
                step + 1,
                m.format_action(a)
            ));
        }
    }
    out
}

fn assert_holds(name: &str, m: Protocol) {
    assert_holds_reaching(name, m, &[]);
}

fn assert_holds_reaching(name: &str, m: Protocol, reaches: &[&'static str]) {
    if let Some(path) = explore(name, m, false, reaches) {
        panic!("{name}: two commands at once:\n{path}");
    }
}

fn assert_hole(name: &str, m: Protocol) {
    assert!(
        explore(name, m, true, &[]).is_some(),
        "{name}: the model found no overlap where the issue measured one"
    );
}

#[test]
fn new_protocol_holds_through_a_crash_and_a_cut_off() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(1), forcer(2)]);
    m.crashes = 1;
    m.cuts = 1;
    assert_holds("new: 2 wrappers + forcer, 1 crash, 1 cut", m);
}

#[test]
fn new_protocol_holds_through_a_revoke_left_in_flight_and_an_error() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(1), forcer(2)]);
    m.crashes = 1;
    m.revoke_in_flight = true;
    m.errors = 1;
    assert_holds(
        "new: 2 wrappers + forcer, 1 crash with its revoke in flight, 1 failed request",
        m,
    );
}

#[test]
fn old_hole_1_force_with_a_waiter_queued() {
    assert_hole(
        "old hole 1",
        model(OLD, vec![wrapper(0), wrapper(1), forcer(2)]),
    );
}

#[test]
fn old_hole_2_forcer_restarts_during_its_wait() {
    let mut m = model(OLD, vec![wrapper(0), forcer(1)]);
    m.crashes = 1;
    assert_hole("old hole 2", m);
}

#[test]
fn old_hole_3_out_of_band_delete() {
    let mut m = model(OLD, vec![wrapper(0), wrapper(1)]);
    m.deletes = 1;
    assert_hole("old hole 3", m);
    let mut m = model(OLD_LEGACY, vec![wrapper(0), wrapper(1)]);
    m.deletes = 1;
    assert_holds("old hole 3 with the legacy lock on", m);
}

#[test]
fn old_hole_6_member_renews_but_cannot_commit() {
    let mut m = model(OLD, vec![wrapper(0), wrapper(1)]);
    m.stucks = 1;
    assert_hole("old hole 6", m);
}

// Findings the model made on the new protocol while it was built, each closed in `src/` but
// finding 2 (a residual for mixed fleets with the Go tool, documented in the README). The
// switches that showed each hole beside its change are gone with the protocols they modelled
// (see this file's history); each test checks the configuration that found it.

/// Finding 1, closed: twins could share a lease once one adopted the other's key, since nothing
/// in etcd tells a dead previous life from a twin cut off from etcd. Closed in `src/` by three
/// changes, checked here together: `take_record` guarded by our key's mod revision (the put
/// again makes a twin's fail), `resign` never revoking a key put again by another process, and
/// an adopter of a life that held the record starting no earlier than a full TTL after its put
/// again (the other life's renewals stop counting there).
#[test]
fn new_finding_1_twins_sharing_an_adopted_lease() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(0), wrapper(1)]);
    m.cuts = 1;
    assert_holds("new finding 1 closed: twins, 1 cut", m.clone());
    m.crashes = 1;
    m.revoke_in_flight = true;
    assert_holds("new finding 1 closed: twins, 1 cut, 1 crash in flight", m);
}

/// Finding 2, open: a Go replica is stopped only by the revoke of its lease after the fence; if
/// that revoke does not land before the fence expires (forcer dead, cut off or stalled: `src/`
/// retries it, then renews the fence, which the model does not show), whoever did not read the
/// Go lease starts while the Go replica stops. Mixed fleets with the Go tool only.
#[test]
fn new_finding_2_fence_expires_before_the_go_replica_is_revoked() {
    let m = model(Variant::New, vec![go(0), wrapper(1), forcer(2)]);
    assert_hole("new finding 2 (a Go replica outlives the fence)", m);
}

/// Finding 3, closed: the seen set lived in one call of `wait_turn`, so an operator's delete of
/// a deposal in `LOCK` let the forcer start (its read of the runner not counted, a failed
/// request forgetting the set, a record found already ours led at once) while the deposed
/// holder still stopped. Closed in `src/` by the seen set living with the seat (the forcer's
/// runner in it, awaited whenever the record was not handed over), and since "safe among
/// strangers" a holder with a key is no longer deposed at all: it is waited for.
#[test]
fn new_finding_3_operator_deletes_beside_a_forcer() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(1), forcer(2)]);
    m.deletes = 1;
    m.errors = 1;
    assert_holds(
        "new finding 3 closed: 2 wrappers + forcer, 1 delete, 1 error",
        m,
    );
}

/// Finding 4, closed: twins and a forcer. A live twin cut off while it leads looks dead; the
/// other adopts its key (and waits to lead, as finding 1's change makes it). When the forcer
/// deposed the lease they share, the adopter, going back in line, revoked it at once while the
/// cut-off twin's command still ran, and the forcer started. Closed in `src/` by no deposal of
/// a holder with a key, and by an adopter revoking no earlier than it could lead
/// (`Seat::not_before`, also when it gives way or its key is deleted).
#[test]
fn new_finding_4_twins_and_a_forcer() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(0), forcer(1)]);
    m.cuts = 1;
    m.errors = 1;
    assert_holds(
        "new finding 4 closed: twins + forcer, 1 cut, 1 error",
        m.clone(),
    );
    assert_holds(
        "new finding 4 closed: twins + forcer, 1 crash in flight",
        crash_in_flight_instead(m),
    );
}

/// Finding 7, closed: twins (two candidates given one identity) and an operator's delete. One
/// twin is cut off; the other sees its lease unrenewed and adopts its key. (a) The operator
/// deleted `LOCK` under the first twin, which leads or is stopping: the adopter found no
/// record, so it did not wait for that life's lease, took the record and started while the
/// first twin's command still ran. (b) The operator deleted the shared key while the adopter
/// leads: the first twin, healed, read its key gone and went back in line; `resign` could not
/// tell a deleted key from its own, revoked the lease the adopter leads with, joined again,
/// took the record and started while the adopter's command still stopped. Closed in `src/` by
/// every adopted seat waiting out the previous life's lease, record or not (election/adopt.rs
/// `previous_life`: `not_before`, which `lead` waits for and `resign` before it answers by
/// leaving the lease to expire), and by `revoke` leaving a lease the record is bound to once
/// our key is gone and etcd's history has another's put as its first change after our own put
/// (election/session.rs `Revoked::Recorded`, etcd/watch.rs `first_change`; a delete first:
/// revoked). Without either rule (a revoke whatever the history; an adopted seat revoking before `not_before`)
/// the first configuration below fails. Checked once and holding since cd1c106, left out for
/// time (27 s to 2.5 min each): their key deleted with a quit; twins + forcer, 1 cut, 1 delete;
/// twins + wrapper, 1 delete with 2 cuts, or with 1 cut and 1 crash in flight.
#[test]
fn new_finding_7_twins_and_an_operator_delete() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(0), wrapper(1)]);
    m.cuts = 1;
    m.deletes = 1;
    m.errors = 1;
    assert_holds(
        "new finding 7 closed: twins + wrapper, 1 cut, 1 delete, 1 error",
        m,
    );
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(0), wrapper(1)]);
    m.cuts = 1;
    m.deletes = 1;
    m.quits = 1;
    m.delete_keys = false;
    assert_holds(
        "new finding 7a closed: twins + wrapper, 1 cut, LOCK deleted, 1 quit",
        m,
    );
}

/// The same processes, with one crash that leaves its revoke in flight as the only fault.
fn crash_in_flight_instead(mut m: Protocol) -> Protocol {
    (m.cuts, m.deletes, m.errors) = (0, 0, 0);
    m.crashes = 1;
    m.revoke_in_flight = true;
    m
}

/// Issue 12: a record handed over (put over the giver's, bound to our lease) is led at once,
/// without waiting for the giver's lease or any other lease seen ahead: only the holder puts the
/// record over to another lease, and only once its command's group is empty. Checked with
/// leaders quitting (the hand-over path), beside an operator deleting a key or the record, a
/// forcer, and a crash with its revoke in flight.
#[test]
fn new_hand_over_is_led_at_once() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(1), wrapper(2)]);
    m.quits = 2;
    m.deletes = 1;
    assert_holds(
        "hand-over led at once: 3 wrappers, 2 quits, 1 delete",
        m.clone(),
    );
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(1), forcer(2)]);
    m.quits = 1;
    m.deletes = 1;
    m.errors = 1;
    assert_holds(
        "hand-over led at once: 2 wrappers + forcer, 1 quit, 1 delete, 1 error",
        m.clone(),
    );
    assert_holds(
        "hand-over led at once: 2 wrappers + forcer, 1 quit, 1 crash in flight",
        crash_in_flight_instead(m),
    );
}

// Strangers: clients of etcd's own recipe on the same lock (issue "Safe among strangers"). A
// stranger waits only until no key older than its own remains, its own key deleted or not, and
// never reads `LOCK` or the yield request. Findings 5 and 6 were on the protocol before it:
// the forcer's request deleted the keys waiting between the holder and it, which released a
// stranger among them at once (beside the holder, or beside the forcer handed the record); its
// proposed changes 1 (the forced-out leases awaited) and 2 (the deposal keeping the holder's
// key) closed that only while the forcer remembered (finding 5: a forcer crashed or cut off
// forgot whom it released) and forced one stranger out (finding 6: two forced out run
// together). `src/` now deletes no key: the forcer only asks, our waiters step back
// themselves, a stranger keeps its place and is waited for. The tests below check the
// configurations of findings 5 and 6 among others.

/// A stranger between our leader and a forcer: the leader hands the record to the forcer over
/// the stranger's key, the stranger runs when the leader's key goes, and the forcer starts once
/// the stranger's key is gone. Through a crash of anybody (the forcer restarting mid-wait and
/// adopting its seat, its revoke in flight), a cut-off leader (waited for) and a failed request.
#[test]
fn strangers_between_a_holder_and_a_forcer() {
    let mut m = model(Variant::New, vec![wrapper(0), stranger(1), forcer(2)]);
    m.quits = 1;
    m.crashes = 1;
    m.revoke_in_flight = true;
    assert_holds_reaching(
        "strangers: wrapper, stranger, forcer; 1 quit, 1 crash in flight",
        m,
        &[TO_FORCER],
    );
    let mut m = model(Variant::New, vec![wrapper(0), stranger(1), forcer(2)]);
    m.quits = 1;
    m.cuts = 1;
    m.errors = 1;
    assert_holds_reaching(
        "strangers: wrapper, stranger, forcer; 1 quit, 1 cut, 1 error",
        m,
        &[TO_FORCER],
    );
    let mut m = model(Variant::New, vec![wrapper(0), stranger(1), forcer(2)]);
    m.crashes = 2;
    assert_holds_reaching(
        "strangers: wrapper, stranger, forcer; 2 crashes",
        m,
        &[TO_FORCER],
    );
}

/// Two strangers between (finding 6's configuration), a waiter of ours between a stranger and
/// the forcer (it steps back once the stranger is done), and a stranger queued first.
#[test]
fn strangers_queued_anywhere() {
    let mut m = model(
        Variant::New,
        vec![wrapper(0), stranger(1), stranger(3), forcer(2)],
    );
    m.quits = 1;
    assert_holds_reaching("strangers: two strangers between, 1 quit", m, &[TO_FORCER]);
    let mut m = model(
        Variant::New,
        vec![wrapper(0), stranger(1), wrapper(3), forcer(2)],
    );
    m.quits = 1;
    assert_holds_reaching(
        "strangers: a stranger and a waiter between, 1 quit",
        m,
        &[TO_FORCER],
    );
    let mut m = model(Variant::New, vec![stranger(1), wrapper(0), forcer(2)]);
    m.quits = 1;
    m.crashes = 1;
    assert_holds("strangers: a stranger first, 1 quit, 1 crash", m);
}

/// A leader with a stranger next hands it the record (the stranger never reads it); our waiter
/// behind waits for the stranger's key, then for its lease, and a forcer behind asks it in vain
/// and waits as well.
#[test]
fn strangers_handed_the_record() {
    let mut m = model(Variant::New, vec![wrapper(0), stranger(1), wrapper(2)]);
    m.quits = 2;
    m.crashes = 1;
    assert_holds_reaching(
        "strangers: handed to a stranger, 2 quits, 1 crash",
        m,
        &[TO_STRANGER],
    );
    let mut m = model(Variant::New, vec![wrapper(0), stranger(1), forcer(2)]);
    m.quits = 1;
    m.errors = 1;
    assert_holds_reaching(
        "strangers: handed to a stranger, forcer behind, 1 quit, 1 error",
        m,
        &[TO_STRANGER],
    );
}

/// Twins and a forcer with a stranger between: an adopter that gives way or is handed over
/// never revokes the shared lease before the cut-off twin's command could have stopped.
#[test]
fn strangers_beside_twins_and_a_forcer() {
    let mut m = model(
        Variant::New,
        vec![wrapper(0), wrapper(0), stranger(1), forcer(2)],
    );
    m.cuts = 1;
    assert_holds("strangers: twins, stranger, forcer; 1 cut", m);
}

/// A key deleted by hand releases the strangers behind it while its holder still runs: no
/// protocol of ours can prevent that. It is the only way left: an operator deleting `LOCK` or
/// the yield request does not.
#[test]
fn strangers_are_released_only_by_a_key_deleted_by_hand() {
    let mut m = model(Variant::New, vec![wrapper(0), stranger(1), forcer(2)]);
    m.quits = 1;
    m.deletes = 1;
    assert_hole("strangers: an operator deletes a key", m.clone());
    m.delete_keys = false;
    m.errors = 1;
    assert_holds(
        "strangers: an operator deletes LOCK or the request, 1 quit, 1 error",
        m,
    );
}
