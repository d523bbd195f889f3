//! Strangers on the lock: participants of etcd's own election recipe (`etcdctl lock`; the Go
//! tool's v0.1.x and `etcdctl elect` campaign the same way), and the job's own data under the
//! lock's prefix. A participant of the recipe waits only until every key under `LOCK/` created
//! before its own is gone, and never reads our holder record or yield request: whatever a
//! candidate of ours deletes there can start it. Every test runs a real etcd, real wrappers and a
//! real `etcdctl lock` around `eae-test-child`, and proves exclusion — counting the stranger's
//! command — from the children's CLOCK_MONOTONIC records.

mod common;

use common::candidate::{Candidate, CandidateBuilder};
use common::etcd::Etcd;
use common::invariant::Monitor;
use common::proxy::{Mode, Proxy};
use common::recipe::LockClient;
use common::records::Record;
use common::scene::Scene;
use common::wait_for;
use std::time::Duration;

const TTL: u64 = 3;
const RENEW: &str = "2s";
const RETRY: &str = "250ms";
/// Deadline for anything that should happen within a few TTLs.
const T: Duration = Duration::from_secs(30);
/// How long a stranger's command runs before it ends by itself.
const STRANGER_RUNS_MS: &str = "1500";

fn cand(s: &Scene, id: &str) -> CandidateBuilder {
    s.candidate(id, TTL, RENEW, RETRY)
}

/// `etcdctl lock` on the scene's lock, its command ending by itself after a while.
fn stranger(s: &Scene, id: &str) -> LockClient {
    LockClient::start(
        &s.etcd.endpoint(),
        &s.lock,
        id,
        &s.log,
        &["--exit-after", STRANGER_RUNS_MS],
    )
}

/// Waits until `n` keys stand under `LOCK/`.
fn wait_keys(etcd: &Etcd, lock: &str, n: usize) {
    wait_for(T, &format!("{n} keys under {lock}/"), || {
        let keys = etcd.get_prefix_keys(&format!("{lock}/"));
        if keys.len() != n {
            std::thread::sleep(Duration::from_millis(20));
        }
        (keys.len() == n).then_some(())
    });
}

/// The (first) start of `id`'s command.
fn start_of(mon: &Monitor, id: &str) -> Record {
    mon.wait_for_start_after(Some(id), 0, T)
}

fn end_of(mon: &Monitor, pid: u32) -> u64 {
    mon.wait_until_dead(pid, T)
}

/// Everyone in `order` runs, one after the other, each only once the one before has ended.
fn assert_in_turn(mon: &Monitor, order: &[&str]) {
    let mut last: Option<Record> = None;
    for id in order {
        let r = start_of(mon, id);
        if let Some(prev) = &last {
            let end = end_of(mon, prev.pid);
            assert!(
                end < r.ns,
                "{id} started before {}'s command ended:\n{}",
                prev.identity,
                mon.timeline()
            );
        }
        last = Some(r);
    }
    mon.assert_no_overlap();
}

fn ended(c: &mut Candidate) {
    c.signal(libc::SIGTERM);
    c.expect_exit(T);
}

/// Our leader, an `etcdctl lock` queued behind it, then a forcer of ours: the forcer never lets
/// the stranger start beside a command (on the old protocol it deleted the stranger's key, which
/// then ran as soon as the leader let go, beside the forcer). The stranger, queued first, runs
/// first; the forcer after it.
#[test]
fn a_forcer_never_starts_an_etcdctl_lock_queued_behind_the_leader() {
    let s = Scene::new("recipe", "rcp-force");
    let mut h = cand(&s, "h").args(&["--term-delay", "700"]).spawn();
    start_of(&s.mon, "h");
    wait_keys(&s.etcd, &s.lock, 1);
    let mut x = stranger(&s, "x");
    wait_keys(&s.etcd, &s.lock, 2);
    let mut f = cand(&s, "f").force(true).spawn();
    assert_in_turn(&s.mon, &["h", "x", "f"]);
    x.expect_exit(T);
    h.expect_exit(T);
    ended(&mut f);
    s.mon.assert_no_overlap();
}

/// The same with a leader cut off from etcd, which cannot answer the forcer: on the old protocol
/// the forcer deposed it by deleting its key, and the stranger behind it started while the
/// leader's command still ran. Now the leader's key goes only with its lease, after its command.
#[test]
fn a_forcer_never_starts_an_etcdctl_lock_beside_a_cut_off_leader() {
    let s = Scene::new("recipe", "rcp-cut");
    let proxy = Proxy::start(&s.etcd.endpoint());
    let mut h = cand(&s, "h")
        .endpoints(&proxy.endpoint())
        .args(&["--ignore-term"])
        .spawn();
    start_of(&s.mon, "h");
    wait_keys(&s.etcd, &s.lock, 1);
    let mut x = stranger(&s, "x");
    wait_keys(&s.etcd, &s.lock, 2);
    proxy.set_mode(Mode::Blackhole);
    let mut f = cand(&s, "f").force(true).spawn();
    assert_in_turn(&s.mon, &["h", "x", "f"]);
    x.expect_exit(T);
    h.expect_exit(T);
    proxy.set_mode(Mode::Pass);
    ended(&mut f);
    s.mon.assert_no_overlap();
}

/// An `etcdctl lock` holds the lock, a second one and a waiter of ours queue, then a forcer of
/// ours: the forcer cannot make a stranger yield, so it waits; it never deletes a stranger's key
/// (on the old protocol the second stranger then ran beside the first).
#[test]
fn a_forcer_waits_for_etcdctl_lock_holders_and_never_starts_them_early() {
    let s = Scene::new("recipe", "rcp-holder");
    let mut x1 = stranger(&s, "x1");
    start_of(&s.mon, "x1");
    let mut x2 = stranger(&s, "x2");
    wait_keys(&s.etcd, &s.lock, 2);
    let mut w = cand(&s, "w").spawn();
    wait_keys(&s.etcd, &s.lock, 3);
    let mut f = cand(&s, "f").force(true).spawn();
    assert_in_turn(&s.mon, &["x1", "x2", "f"]);
    x1.expect_exit(T);
    x2.expect_exit(T);
    ended(&mut f);
    assert_in_turn(&s.mon, &["f", "w"]);
    ended(&mut w);
    s.mon.assert_no_overlap();
}

/// Our leader's command exits with an `etcdctl lock` queued next and a waiter of ours behind it:
/// the hand-over binds the record to the stranger's lease, which runs at once; our waiter waits
/// until it has let go.
#[test]
fn a_hand_over_to_an_etcdctl_lock_keeps_our_waiter_waiting() {
    let s = Scene::new("recipe", "rcp-handover");
    let mut a = cand(&s, "a").args(&["--exit-after", "2000"]).spawn();
    let ra = start_of(&s.mon, "a");
    let mut x = stranger(&s, "x");
    wait_keys(&s.etcd, &s.lock, 2);
    let mut w = cand(&s, "w").spawn();
    wait_keys(&s.etcd, &s.lock, 3);
    assert!(end_of(&s.mon, ra.pid) > 0);
    assert_in_turn(&s.mon, &["a", "x", "w"]);
    a.expect_exit(T);
    x.expect_exit(T);
    ended(&mut w);
    s.mon.assert_no_overlap();
}

/// Puts keys `name(i)` for `i` in `0..n`, values of `size` bytes, no lease (the job's own
/// data), `per_txn` to a transaction.
fn put_keys(endpoint: &str, n: usize, size: usize, per_txn: usize, name: impl Fn(usize) -> String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("connect to etcd");
        let value = vec![b'x'; size];
        for first in (0..n).step_by(per_txn) {
            let ops: Vec<etcd_client::TxnOp> = (first..n.min(first + per_txn))
                .map(|i| etcd_client::TxnOp::put(name(i), value.clone(), None))
                .collect();
            c.txn(etcd_client::Txn::new().and_then(ops))
                .await
                .expect("put the job's data");
        }
    });
}

/// `n` values of `size` bytes under `prefix`.
fn put_data(endpoint: &str, prefix: &str, n: usize, size: usize, per_txn: usize) {
    put_keys(endpoint, n, size, per_txn, |i| format!("{prefix}{i:05}"));
}

/// The job's own data under the lock's prefix, as the README's fencing example keeps it: 32 MiB
/// in 256 keys, a value near etcd's request limit (1.5 MiB), a key whose name looks like a
/// candidate's but has no lease, and more data written while a candidate leads. Every read of
/// the queue is keys only, so candidates lead and hand over as without it (on the old protocol,
/// every read fetched all of it, exceeded the client's 4 MiB message limit and was retried
/// forever: nobody ever led).
#[test]
fn the_jobs_data_under_the_prefix_does_not_stop_the_election() {
    let s = Scene::new("recipe", "rcp-data");
    let ep = s.etcd.endpoint();
    let data = format!("{}/data/", s.lock);
    put_data(&ep, &data, 256, 128 << 10, 8);
    put_data(
        &ep,
        &format!("{}/data/big-", s.lock),
        1,
        (1 << 20) + (400 << 10),
        1,
    );
    s.etcd.put(&format!("{}/dead", s.lock), "not a candidate");
    let mut a = cand(&s, "a").spawn();
    let ra = start_of(&s.mon, "a");
    let mut b = cand(&s, "b").spawn();
    wait_for(T, "b queued", || {
        let n = s.etcd.get_prefix_keys(&format!("{}/", s.lock)).len();
        (n == 256 + 1 + 1 + 2).then_some(())
    });
    // Written while a leads: its watch sees the writes, its reads do not fetch them.
    put_data(&ep, &format!("{}/data/late-", s.lock), 16, 512 << 10, 2);
    ended(&mut a);
    let rb = start_of(&s.mon, "b");
    assert!(end_of(&s.mon, ra.pid) < rb.ns, "{}", s.mon.timeline());
    ended(&mut b);
    s.mon.assert_no_overlap();
    let left = s.etcd.get_prefix_keys(&format!("{}/", s.lock)).len();
    assert_eq!(
        left,
        256 + 1 + 1 + 16,
        "the data is untouched, no candidate key is left"
    );
}

/// Transactions etcd has answered (every read of the queue, every confirmation of a renewal).
fn txns(etcd: &Etcd) -> f64 {
    etcd.handled(&["Txn"])
}

/// The job writing its data under the prefix while a candidate leads does not make the leader
/// read: 400 writes, each its own revision, cost it no more transactions than its renewals do
/// meanwhile (on the old protocol each batch of events woke its watch and it read the queue
/// again).
#[test]
fn the_jobs_writes_under_the_prefix_do_not_wake_the_leader() {
    let s = Scene::new("recipe", "rcp-writes");
    let mut a = cand(&s, "a").spawn();
    start_of(&s.mon, "a");
    wait_keys(&s.etcd, &s.lock, 1);
    let before = txns(&s.etcd);
    let t0 = std::time::Instant::now();
    put_data(&s.etcd.endpoint(), &format!("{}/data/", s.lock), 400, 64, 1);
    let elapsed = t0.elapsed();
    // Our own 400 writes are transactions too.
    let spent = txns(&s.etcd) - before - 400.0;
    // A confirmation of a renewal every third of the renew deadline (2 s), and a few to spare.
    let renewals = (elapsed.as_secs_f64() / (2.0 / 3.0)).ceil() + 4.0;
    assert!(
        spent <= renewals,
        "{spent} transactions during 400 writes in {elapsed:?}: the leader reads on the job's \
         writes"
    );
    ended(&mut a);
}

/// 30000 keys of the job's data in one branch (`LOCK/data/...`) and a neighbour's keys in another
/// (`LOCK/cron/...`): a candidate joining and leading passes over each branch in one step, a few
/// reads in all (an earlier version paged through them by create revision, a range etcd serves
/// only by loading the whole prefix: a lone candidate took 22 s to lead, etcd busy all along).
#[test]
fn thirty_thousand_keys_of_data_cost_a_candidate_a_few_reads() {
    let s = Scene::new("recipe", "rcp-many");
    let ep = s.etcd.endpoint();
    put_data(&ep, &format!("{}/data/", s.lock), 30_000, 8, 100);
    put_data(&ep, &format!("{}/cron/", s.lock), 1_000, 8, 100);
    let before = s.etcd.handled(&["Range", "Txn"]);
    let mut a = cand(&s, "a").spawn();
    start_of(&s.mon, "a");
    let reads = s.etcd.handled(&["Range", "Txn"]) - before;
    ended(&mut a);
    assert!(
        reads <= 30.0,
        "{reads} reads to join and lead beside 31000 keys of others"
    );
}

/// Keys of the job's data whose names look like candidate keys (hex, no lease), written again
/// and again while a candidate leads: a put that is not bound to the lease its name says is no
/// candidate, and does not wake the leader.
#[test]
fn the_jobs_writes_of_hex_named_keys_do_not_wake_the_leader() {
    let s = Scene::new("recipe", "rcp-hex");
    let mut a = cand(&s, "a").spawn();
    start_of(&s.mon, "a");
    wait_keys(&s.etcd, &s.lock, 1);
    let before = txns(&s.etcd);
    let t0 = std::time::Instant::now();
    put_keys(&s.etcd.endpoint(), 400, 8, 1, |i| {
        format!("{}/{:x}", s.lock, 0xabc000 + i % 8)
    });
    let elapsed = t0.elapsed();
    let spent = txns(&s.etcd) - before - 400.0;
    let renewals = (elapsed.as_secs_f64() / (2.0 / 3.0)).ceil() + 4.0;
    ended(&mut a);
    assert!(
        spent <= renewals,
        "{spent} transactions during 400 writes of hex-named data keys in {elapsed:?}: the \
         leader reads the queue on the job's writes"
    );
}

/// A forcer that asks for the lock while our head of the queue still waits for a stranger's
/// lease (its key deleted by hand while its command ran) goes first: the head does not start its
/// command only to stop it at once (and leave, as a wrapper leads once in its life), but goes
/// back in line behind the forcer, and runs after it. (Seen in the test below under load.)
#[test]
fn a_forcer_asking_while_the_head_waits_for_a_lease_goes_first() {
    let s = Scene::new("recipe", "rcp-wait-force");
    let _x = LockClient::start(
        &s.etcd.endpoint(),
        &s.lock,
        "x",
        &s.log,
        &["--exit-after", "3000"],
    );
    start_of(&s.mon, "x");
    let mut w = cand(&s, "w").args(&["--exit-after", "600"]).spawn();
    wait_keys(&s.etcd, &s.lock, 2);
    // Leases are numbered in order: the first key is the stranger's.
    let keys = s.etcd.get_prefix_keys(&format!("{}/", s.lock));
    s.etcd.etcdctl(&["del", &keys[0]]);
    wait_for(T, "w holding the record", || {
        (s.etcd.get(&s.lock).as_deref() == Some("w")).then_some(())
    });
    let mut f = cand(&s, "f")
        .force(true)
        .args(&["--exit-after", "600"])
        .spawn();
    assert_in_turn(&s.mon, &["x", "f", "w"]);
    for c in [&mut w, &mut f] {
        c.expect_exit(T);
    }
    s.mon.assert_no_overlap();
    let w_starts = s.mon.starts().iter().filter(|r| r.identity == "w").count();
    assert_eq!(w_starts, 1, "{}", s.mon.timeline());
}

/// Our leader stopping slowly, an `etcdctl lock` queued behind it, a waiter of ours, a forcer
/// SIGKILLed while the leader stops for it and restarted, another `etcdctl lock` behind them all:
/// nobody's command beside another's, and everybody runs in the end (each command ends by itself
/// after a while). (From a review that tried to break the forcer's protocol.)
#[test]
fn a_forcer_killed_mid_hand_over_among_strangers_and_waiters() {
    let s = Scene::new("recipe", "rcp-mix");
    let short = |id: &str| {
        LockClient::start(
            &s.etcd.endpoint(),
            &s.lock,
            id,
            &s.log,
            &["--exit-after", "600"],
        )
    };
    let mut h = cand(&s, "h").args(&["--term-delay", "700"]).spawn();
    let rh = start_of(&s.mon, "h");
    wait_keys(&s.etcd, &s.lock, 1);
    let _x1 = short("x1");
    wait_keys(&s.etcd, &s.lock, 2);
    let mut w = cand(&s, "w").args(&["--exit-after", "600"]).spawn();
    wait_keys(&s.etcd, &s.lock, 3);
    let mut f1 = cand(&s, "f").force(true).args(&["--id", "f.1"]).spawn();
    s.mon.wait_for_record("SIGTERM to h's command", T, |r| {
        r.kind == common::records::Kind::Term && r.pid == rh.pid
    });
    f1.kill9();
    let mut f2 = cand(&s, "f")
        .force(true)
        .args(&["--id", "f.2", "--exit-after", "600"])
        .spawn();
    let _x2 = short("x2");
    for id in ["x1", "w", "f.2", "x2"] {
        start_of(&s.mon, id);
    }
    s.mon.wait_until_all_dead(T);
    s.mon.assert_no_overlap();
    for c in [&mut h, &mut w, &mut f2] {
        c.expect_exit(T);
    }
    assert!(
        s.mon.starts().iter().all(|r| r.identity != "f.1"),
        "the killed forcer ran"
    );
}
