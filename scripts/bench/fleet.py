"""Fleets: many candidates on one etcd (one lock with many candidates, or many locks with a few
each), ours or `etcdctl lock`, at the same lease TTL (15 s: our default, renew deadline 10 s;
`etcdctl lock --ttl 15`). What they cost etcd at rest (CPU, memory, requests), what they cost the
host (the candidates' memory, threads and CPU), how long starting them takes, and the handover
time among them and what it costs etcd; one command per lock, never two, is checked throughout.
A fleet grows only while the machine has room for it (headroom) and its start-up keeps within a
budget: where it stops short, what stopped it is recorded with it."""

import os
import signal
import subprocess
import time

from . import headroom
from .base import MS, log, now_ns
from .childlog import ChildLog
from .etcd import delta
from .procs import alive, children_of, cpu_s, kill_child_pid, proc_status

TTL = 15
# Candidates joining at once. Each join is a handful of requests, three of them raft commits
# (an fsync each on disk), plus a process start: more at a time only queues them on 2 cores.
IN_FLIGHT = 8
PROGRESS = 500  # candidates between two logs of the start-up's pace
CPU_EVERY = 200  # candidates between two looks at what the settled ones cost the CPU at rest
# How long a lock may be without a command (after the start-up, after a handover) before the run
# calls it broken: a leader whose hand-over does not go through in time leaves its successor to
# wait for its lease to expire (TTL, and the leader's 10 s resign budget before it gives up),
# and an etcd serving thousands answers late.
SETTLE_S = 2 * TTL + 15


def running(cl):
    """{lock index: [identities whose command started and has not stopped]}, from the commands'
    records in the order of their timestamps; two commands of one lock running at once end the
    run here."""
    cl.poll()
    up = {}
    for kind, ident, _, ns in sorted(cl.recs, key=lambda r: r[3]):
        lock = up.setdefault(int(ident[1:4]), [])
        if kind == "start":
            if lock:
                raise RuntimeError(f"fleet: {ident} started while {lock} ran (at {ns} ns)")
            lock.append(ident)
        elif kind == "stop" and ident in lock:
            lock.remove(ident)
    return up


def check_one_each(cl, locks, when):
    """Within SETTLE_S, exactly one command running per lock by the commands' records, and as
    many alive by /proc; never two at once (running)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        up = running(cl)
        missing = [lk for lk in range(locks) if not up.get(lk)]
        live = sum(alive(r[2]) for r in cl.recs if r[0] == "start")
        if not missing and live == locks:
            return {lk: ids[0] for lk, ids in up.items()}
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet, {when}: no command on locks {missing[:10]}, "
                               f"{live} alive for {locks} locks, {SETTLE_S} s on")
        time.sleep(0.05)


def cpu_spent(idle, procs, n):
    """Every CPU_EVERY candidates: what stops the fleet if its candidates at rest would use more
    of the machine's CPU than headroom allows, or None."""
    if n % CPU_EVERY:
        return None
    per = idle.look([p.pid for p in procs.values()])
    if per is None or per * n <= idle.budget():
        return None
    return {"limit": "cpu", "per_candidate_pct": per * 100, "projected_pct": per * n * 100,
            "budget_pct": idle.budget() * 100}


def late(spent, budget, rate):
    """What stops the fleet once its start-up has taken `budget` seconds, or None."""
    if spent <= budget:
        return None
    return {"limit": "start-up time", "budget_s": budget, "last_rate_per_s": rate}


def launch_all(bench, tool, cl, prefix, locks, per_lock, budget):
    """Starts the candidates, IN_FLIGHT at a time (joined = its key is in etcd), leaders first:
    the first round puts one candidate on every lock. Stops early, once every lock has its
    leader, when the machine runs out of room (headroom: pids, memory, or the CPU the settled
    candidates use at rest, times all of them), or when starting them has taken `budget`
    seconds. Returns the candidates' processes and what stopped it (None: all
    started), and logs the pace every PROGRESS candidates (the join rate falls as a queue
    grows)."""
    procs = {}
    joined = 0
    short = None
    # Ours keeps a holder record beside each led lock's keys; etcdctl lock keeps none.
    records = 1 if tool == "ours" else 0
    t0 = last = time.monotonic()
    n_last = 0
    idle = headroom.IdleCpu()

    def count_joined():
        return bench.etcd.count(prefix) - records * min(locks, len(procs))

    for n in range(locks * per_lock):
        c, lk = divmod(n, locks)
        while len(procs) - joined >= IN_FLIGHT:
            joined = count_joined()
            if len(procs) - joined >= IN_FLIGHT:
                time.sleep(0.01)
        if n >= locks:
            now = time.monotonic()
            short = (headroom.exhausted() or cpu_spent(idle, procs, n)
                     or late(now - t0, budget, (n - n_last) / (now - last)))
            if short:
                log(f"fleet: stopped at {n} candidates: {short}")
                break
        if n and n % PROGRESS == 0:
            now = time.monotonic()
            log(f"fleet: {n} started, {joined} joined, {now - t0:.0f} s "
                f"({PROGRESS / (now - last):.0f}/s lately)")
            last, n_last = now, n
        ident = f"L{lk:03d}c{c:04d}"
        procs[ident] = bench.launch(tool, ident, f"{prefix}{lk:03d}", cl,
                                    ttl=TTL if tool == "etcdctl" else None)
    total = len(procs)
    deadline = time.monotonic() + 60 + total * 0.1
    while count_joined() < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet: {count_joined()} of {total} candidates joined")
        time.sleep(0.05)
    # Everyone's watch up: a waiter watches its predecessor's key.
    while bench.etcd.watchers() < total - locks:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet: {bench.etcd.watchers()} watchers for {total - locks} "
                               "waiters")
        time.sleep(0.05)
    return procs, short


def candidate_pids(procs, commands):
    """The candidates' processes: every wrapper (or etcdctl) and its forks that are not its
    command (a leader's or next-in-line's guardian)."""
    pids = [p.pid for p in procs.values()]
    return pids + [k for p in procs.values() for k in children_of(p.pid) if k not in commands]


def memory_of(pids):
    """Sums over the candidates' processes."""
    tot = {"VmRSS": 0, "Pss": 0, "Threads": 0, "processes": 0}
    for pid in pids:
        s = proc_status(pid)
        for k in ("VmRSS", "Pss", "Threads"):
            tot[k] += s.get(k, 0)
        tot["processes"] += 1
    return tot


def at_rest(etcd, cl, procs, window):
    """etcd's CPU, requests and memory, and the candidates' CPU and memory, over a window in
    which nothing but the periodic renewals happens."""
    commands = {r[2] for r in cl.recs if r[0] == "start"}
    pids = candidate_pids(procs, commands)
    m0, cpu0, own0, t0 = etcd.metrics(), etcd.cpu_s(), sum(map(cpu_s, pids)), time.monotonic()
    time.sleep(window)
    m1, cpu1, own1 = etcd.metrics(), etcd.cpu_s(), sum(map(cpu_s, pids))
    el = time.monotonic() - t0
    return {"rest_window_s": el,
            "rest_etcd_cpu_pct": (cpu1 - cpu0) / el * 100,
            "rest_requests_per_s": {k: v / el for k, v in delta(m1, m0).items()},
            "rest_candidates_cpu_pct": (own1 - own0) / el * 100,
            "etcd_rss_kib_rest": proc_status(etcd.proc.pid).get("VmRSS"),
            # What of that RSS the Go heap holds live (RSS also keeps what a burst left).
            "etcd_heap_live_kib_rest": etcd.live_heap_kib(),
            "wrappers": memory_of(pids)}


def handover(cl, procs, leaders, lk):
    """The leader of lock `lk` has its command SIGTERMed: how long until its successor's command
    starts (ms, from the commands' records)."""
    ident = leaders[lk]
    cur = next(r for r in cl.recs if r[0] == "start" and r[1] == ident)
    t0 = now_ns()
    os.kill(cur[2], signal.SIGTERM)
    stop = cl.wait("stop", ident, 10, after=t0)
    nxt = None
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and not nxt:
        cl.poll()
        nxt = next((r for r in cl.recs if r[0] == "start" and r[3] > t0
                    and int(r[1][1:4]) == lk), None)
        time.sleep(0.002)
    if not (stop and nxt):
        raise RuntimeError(f"fleet: the handover on lock {lk} did not happen")
    try:
        procs[ident].wait(SETTLE_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"fleet: {ident}'s wrapper did not end after its command")
    return (nxt[3] - stop[3]) / MS


def teardown(cl, procs):
    """SIGTERM to every candidate (ours passes it to its command, a waiter withdraws), then to
    the commands still running (`etcdctl lock` ignores SIGTERM while its command runs)."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    time.sleep(1)
    cl.poll()
    for r in cl.recs:
        if r[0] == "start":
            kill_child_pid(r[2], signal.SIGTERM)
    deadline = time.monotonic() + 30
    for p in procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def fleet(bench, tool, locks, per_lock, handovers, window, budget):
    etcd = bench.etcd
    tag = bench.lockname(f"fleet-{tool}-{locks}x{per_lock}")
    prefix = f"{tag}-"
    cl = ChildLog(os.path.join(bench.work, f"{tag}.records"))
    out = {"tool": tool, "ttl": TTL, "locks": locks, "per_lock": per_lock,
           "asked": locks * per_lock, "in_flight": IN_FLIGHT, "startup_budget_s": budget,
           "headroom_before": headroom.now(),
           "etcd_rss_kib_before": proc_status(etcd.proc.pid).get("VmRSS"),
           "etcd_heap_live_kib_before": etcd.live_heap_kib()}
    t0, cpu0 = time.monotonic(), etcd.cpu_s()
    procs = {}
    try:
        procs, out["limited"] = launch_all(bench, tool, cl, prefix, locks, per_lock, budget)
        out["candidates"] = len(procs)
        out["launch_s"] = time.monotonic() - t0
        out["launch_etcd_cpu_s"] = etcd.cpu_s() - cpu0
        log(f"fleet: {len(procs)} {tool} candidates joined in {out['launch_s']:.1f} s")
        time.sleep(5)  # the last joins' requests and the first keep-alives are through
        leaders = check_one_each(cl, locks, "after the launch")
        out.update(at_rest(etcd, cl, procs, window))
        out["headroom_rest"] = headroom.now()
        out["handover_ms"] = []
        m0, t1 = etcd.metrics(), time.monotonic()
        for i in range(handovers):
            out["handover_ms"].append(handover(cl, procs, leaders, i % locks))
            time.sleep(0.5)
            leaders = check_one_each(cl, locks, f"after handover {i}")
        # What the handovers cost etcd, with the renewals of the time they took (the report
        # takes the rest's rate off).
        out["handovers_s"] = time.monotonic() - t1
        out["handovers_messages"] = delta(etcd.metrics(), m0)
    finally:
        t0 = time.monotonic()
        teardown(cl, procs)
        out["teardown_s"] = time.monotonic() - t0
    return out
