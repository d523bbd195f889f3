//! The exclusion protocol checked exhaustively with `stateright` (the model, its timing
//! assumptions and the map from its actions to the code are in `model/protocol.rs`): the old
//! protocol (`src/election.rs` before issue 9) has the counterexamples of issue 9's holes 1, 2,
//! 3 and 6; the new one keeps one command at a time in every reachable state through a crash
//! (with a revoke left in flight) and a cut-off beside a forcer, and has the counterexamples
//! listed as findings below, each beside the change the model shows closes it. Among
//! strangers (clients of etcd's own recipe on the same lock) the new protocol lets a stranger
//! run beside a forcer; changes 1 and 2 of "safe among strangers" close that only while the
//! forcer remembers and forces one stranger out (findings 5 and 6); a forcer that deletes no
//! key closes both. A key deleted by hand releases the strangers behind it whatever we do: with
//! an operator's delete of a key the model fails, as expected, and without it holds. Paths
//! print with `--nocapture`.

mod model {
    pub mod protocol;
}

use model::protocol::{Action, Adoption, Protocol, Spec, State, Variant, Waiters, DEPOSED, HANDED};
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
        adoption: Adoption::Remaining,
        remember: true,
        trust_hand_over: true,
        waiters: Waiters::Deleted,
        depose_in_place: false,
        adopted_revoke_waits: false,
        delete_keys: true,
    }
}

const OLD: Variant = Variant::Old { legacy_lock: false };
const OLD_LEGACY: Variant = Variant::Old { legacy_lock: true };

/// Explores every reachable state; returns the counterexample to [`SAFE`], if any.
fn explore(name: &str, m: Protocol, stop_at_failure: bool) -> Option<String> {
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
        // Not vacuous: the paths that matter are explored.
        let force = m.procs.iter().any(|p| p.force);
        let fence = force && m.variant == Variant::New;
        let handed = m.variant == Variant::New && m.trust_hand_over;
        for (property, expected) in [
            ("someone leads", true),
            ("a forcer leads", force),
            (DEPOSED, fence),
            (HANDED, handed),
        ] {
            assert!(
                !expected || checker.discovery(property).is_some(),
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
    if let Some(path) = explore(name, m, false) {
        panic!("{name}: two commands at once:\n{path}");
    }
}

fn assert_hole(name: &str, m: Protocol) {
    assert!(
        explore(name, m, true).is_some(),
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

// Findings the model made on the new protocol while it was built. Findings 1 and 3 are closed
// in `src/` (the model's defaults follow the code); each test shows the overlap its change
// removes, or that it holds with it. Finding 2 stays open: a residual for mixed fleets with the
// Go tool, documented in the README.

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

/// Finding 3, closed (`remember` is the model's default, as `src/` does it): the seen set lived
/// in one call of `wait_turn`: the forcer's reads do not count
/// (the runner's lease it saw is not awaited), a failed request forgets it, and a record found
/// already ours (taken before the failure) is led with at once. So one out-of-band delete of
/// the deposal in `LOCK` lets the forcer start while the holder it deposed still stops. Closed
/// when the seen set lives with the seat and is awaited in both cases; closed as well, without
/// it, by a deposal that keeps the holder's key (`depose_in_place`): that key keeps the forcer
/// in line until the holder lets go.
#[test]
fn new_finding_3_delete_of_the_deposal() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(1), forcer(2)]);
    m.deletes = 1;
    m.remember = false;
    m.depose_in_place = false;
    assert_hole("new finding 3 (an operator deletes the deposal)", m.clone());
    m.depose_in_place = true;
    assert_holds(
        "new finding 3, the deposal keeps the holder's key (seen set forgotten)",
        m.clone(),
    );
    m.depose_in_place = false;
    m.remember = true;
    m.errors = 1;
    assert_holds(
        "new finding 3, the seen set kept with the seat (+ 1 error)",
        m,
    );
}

/// Finding 4, open in `src/`: twins and a forcer. A live twin cut off while it leads looks dead;
/// the other adopts its key (and waits to lead, as finding 1's change makes it). When a forcer
/// deposes the lease they share, one of them revokes it while the cut-off one's command still
/// runs, and the forcer starts: the adopter going back in line (its key deleted by the deposal,
/// or, with the deposal in place, the deposal bound to its lease) revokes at once, and the life
/// whose key was adopted, healed, no longer sees that it was once the deposal deleted the key.
/// Closed by the deposal keeping the key (`depose_in_place`) with an adopter revoking no
/// earlier than it could lead (`adopted_revoke_waits`); either alone is not enough.
#[test]
fn new_finding_4_twins_revoke_a_deposed_lease_still_in_use() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(0), forcer(1)]);
    m.cuts = 1;
    assert_hole("new finding 4 (twins + forcer, 1 cut)", m.clone());
    m.adopted_revoke_waits = true;
    assert_hole("new finding 4, the adopter's revoke waits alone", m.clone());
    m.adopted_revoke_waits = false;
    m.depose_in_place = true;
    assert_hole("new finding 4, deposal in place alone", m.clone());
    m.adopted_revoke_waits = true;
    assert_holds("new finding 4 closed: twins + forcer, 1 cut", m);
}

/// The proposed changes together, against twins and a forcer at once.
#[test]
fn new_protocol_with_the_changes_holds_for_twins_and_a_forcer() {
    let mut m = model(Variant::New, vec![wrapper(0), wrapper(0), forcer(1)]);
    m.adoption = Adoption::Off;
    m.remember = true;
    m.cuts = 1;
    m.errors = 1;
    assert_holds(
        "new with the changes: twins + forcer, 1 cut, 1 error",
        m.clone(),
    );
    assert_holds(
        "new with the changes: twins + forcer, 1 crash in flight",
        crash_in_flight_instead(m),
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
/// forcer, and a crash with its revoke in flight. (A delete together with a forcer's crash is the
/// documented third-party hole, hand-over or not.)
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

// Strangers: clients of etcd's own recipe on the same lock (issue "Safe among strangers", item
// 1). A stranger waits only until no key older than its own remains, its own key deleted or not,
// and never reads `LOCK` or the yield request.

/// Changes 1 and 2 as proposed: forced-out leases awaited, deposal in place.
fn changes_1_2(procs: Vec<Spec>) -> Protocol {
    let mut m = model(Variant::New, procs);
    m.waiters = Waiters::Awaited;
    m.depose_in_place = true;
    m
}

/// What the model shows holds among strangers: the forcer deletes no key (our waiters step back
/// themselves), the deposal in place, and an adopter's revoke no earlier than it could lead.
fn among_strangers(procs: Vec<Spec>) -> Protocol {
    let mut m = model(Variant::New, procs);
    m.waiters = Waiters::StepBack;
    m.depose_in_place = true;
    m.adopted_revoke_waits = true;
    m
}

/// `src/` as it is: a stranger queued between our leader and a forcer has its key deleted by
/// the forcer's request; it runs as soon as the leader's key goes (hand-over or deposal), beside
/// the forcer. Either change alone leaves one of the two paths open: without change 2 the
/// deposal deletes the leader's key, which releases the stranger while the leader stops;
/// without change 1 the forcer, handed the record, starts while the stranger runs.
#[test]
fn strangers_overlap_without_changes_1_and_2() {
    let procs = || vec![wrapper(0), stranger(1), forcer(2)];
    assert_hole("strangers: src/", model(Variant::New, procs()));
    let mut m = model(Variant::New, procs());
    m.waiters = Waiters::Awaited;
    assert_hole("strangers: change 1 alone", m);
    let mut m = model(Variant::New, procs());
    m.depose_in_place = true;
    assert_hole("strangers: change 2 alone", m);
}

/// Changes 1 and 2 hold as long as the forcer lives, keeps its seat and forces at most one
/// stranger out.
#[test]
fn strangers_changes_1_and_2_hold_while_the_forcer_remembers() {
    let mut m = changes_1_2(vec![wrapper(0), stranger(1), forcer(2)]);
    m.quits = 1;
    m.errors = 1;
    assert_holds("strangers, changes 1-2: 1 quit, 1 error", m);
    let mut m = changes_1_2(vec![wrapper(0), stranger(1), forcer(2), wrapper(3)]);
    m.quits = 1;
    assert_holds("strangers, changes 1-2: + a second wrapper, 1 quit", m);
}

/// Finding 5, open with changes 1-2: the forced-out leases live in the forcer's memory. A
/// forcer that crashes (restarted or not) or loses its lease (cut off, then joining again)
/// forgets the stranger it released; the waiter it sent back in line (or the forcer itself,
/// with its new seat) takes the record and starts while the stranger runs.
#[test]
fn strangers_finding_5_the_forcer_forgets_whom_it_forced_out() {
    let mut m = changes_1_2(vec![wrapper(0), stranger(1), forcer(2)]);
    m.crashes = 1;
    assert_hole("strangers finding 5: changes 1-2, the forcer crashes", m);
    let mut m = changes_1_2(vec![wrapper(0), stranger(1), forcer(2)]);
    m.cuts = 1;
    m.quits = 1;
    assert_hole("strangers finding 5: changes 1-2, the forcer is cut off", m);
}

/// Finding 6, open with changes 1-2: two strangers forced out both run once the keys older
/// than theirs are gone, at once: strangers order themselves by their keys alone, so no wait
/// of ours can help once those keys are deleted.
#[test]
fn strangers_finding_6_two_strangers_forced_out_run_together() {
    let m = changes_1_2(vec![wrapper(0), stranger(1), stranger(3), forcer(2)]);
    assert_hole(
        "strangers finding 6: changes 1-2, two strangers forced out",
        m,
    );
}

/// Findings 5 and 6 closed: the forcer's request deletes no key (a waiter of ours steps back
/// itself on reading it; a stranger keeps its place, and the forcer waits for it), beside the
/// deposal in place and finding 4's change. Checked with strangers ahead and behind, a
/// forcer's crash (its revoke in flight) and cut-off, and a failed request.
#[test]
fn strangers_hold_when_the_forcer_deletes_no_key() {
    let mut m = among_strangers(vec![wrapper(0), stranger(1), forcer(2)]);
    m.quits = 1;
    m.crashes = 1;
    m.revoke_in_flight = true;
    assert_holds("strangers, no key deleted: 1 quit, 1 crash in flight", m);
    let mut m = among_strangers(vec![wrapper(0), stranger(1), forcer(2)]);
    m.quits = 1;
    m.cuts = 1;
    m.errors = 1;
    assert_holds("strangers, no key deleted: 1 quit, 1 cut, 1 error", m);
    let mut m = among_strangers(vec![wrapper(0), stranger(1), stranger(3), forcer(2)]);
    m.quits = 1;
    assert_holds("strangers, no key deleted: two strangers, 1 quit", m);
    let mut m = among_strangers(vec![stranger(1), wrapper(0), forcer(2)]);
    m.quits = 1;
    m.crashes = 1;
    assert_holds(
        "strangers, no key deleted: a stranger first, 1 quit, 1 crash",
        m,
    );
}

/// A key deleted by hand releases the strangers behind it while its holder still runs: no
/// protocol of ours can prevent that. It is the only way left: an operator deleting `LOCK` or
/// the yield request does not.
#[test]
fn strangers_are_released_only_by_a_key_deleted_by_hand() {
    let mut m = among_strangers(vec![wrapper(0), stranger(1), forcer(2)]);
    m.quits = 1;
    m.deletes = 1;
    assert_hole("strangers: an operator deletes a key", m.clone());
    m.delete_keys = false;
    m.errors = 1;
    assert_holds(
        "strangers, no key deleted: an operator deletes LOCK or the request, 1 error",
        m,
    );
}
