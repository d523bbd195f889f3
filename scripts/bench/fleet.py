"""Fleets: many of our candidates on one etcd (one lock with many candidates, or many locks with
a few each), at the defaults (TTL 15 s, renew deadline 10 s). What they cost etcd at rest (CPU,
memory, requests), what they cost the host (the wrappers' memory), how long starting them takes,
and the handover time among them; exactly one command per lock is checked throughout."""

import os
import signal
import subprocess
import time

from .base import MS, log, now_ns
from .childlog import ChildLog
from .etcd import delta
from .procs import alive, children_of, proc_status

# Candidates joining at once. Each join is a handful of requests, three of them raft commits
# (an fsync each on disk), plus a process start: more at a time only queues them on 2 cores.
IN_FLIGHT = 8


def running(cl):
    """{lock index: [identities whose command started and has not stopped]}."""
    cl.poll()
    up = {}
    for kind, ident, _, _ in cl.recs:
        lock = int(ident[1:4])
        if kind == "start":
            up.setdefault(lock, []).append(ident)
        elif kind == "stop" and ident in up.get(lock, []):
            up[lock].remove(ident)
    return up


def check_one_each(cl, locks, when):
    """By the commands' records, and by /proc: as many commands alive as there are locks."""
    up = running(cl)
    bad = {lk: ids for lk, ids in up.items() if len(ids) != 1}
    missing = [lk for lk in range(locks) if lk not in up]
    if bad or missing:
        raise RuntimeError(f"fleet, {when}: not exactly one command per lock: {bad or ''} "
                           f"{'no command on locks ' + str(missing[:10]) if missing else ''}")
    live = sum(alive(r[2]) for r in cl.recs if r[0] == "start")
    if live != locks:
        raise RuntimeError(f"fleet, {when}: {live} commands alive for {locks} locks")
    return {lk: ids[0] for lk, ids in up.items()}


def launch_all(bench, cl, prefix, locks, per_lock):
    """Starts every candidate, IN_FLIGHT at a time (joined = its key is in etcd), leaders first:
    the first round puts one candidate on every lock."""
    procs = {}
    total = locks * per_lock
    joined = 0

    def count_joined():
        # The range holds every joined candidate's key and each led lock's holder record.
        return bench.etcd.count(prefix) - min(locks, len(procs))

    for c in range(per_lock):
        for lk in range(locks):
            while len(procs) - joined >= IN_FLIGHT:
                joined = count_joined()
                if len(procs) - joined >= IN_FLIGHT:
                    time.sleep(0.01)
            ident = f"L{lk:03d}c{c:04d}"
            procs[ident] = bench.launch("ours", ident, f"{prefix}{lk:03d}", cl)
    deadline = time.monotonic() + 60 + total * 0.05
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
    return procs


def wrappers_memory(procs, commands):
    """Sum over the wrappers and their guardians (a leader's fork that is not its command)."""
    tot = {"VmRSS": 0, "Pss": 0, "Threads": 0, "processes": 0}
    pids = [p.pid for p in procs.values()]
    pids += [k for p in procs.values() for k in children_of(p.pid) if k not in commands]
    for pid in pids:
        s = proc_status(pid)
        for k in ("VmRSS", "Pss", "Threads"):
            tot[k] += s.get(k, 0)
        tot["processes"] += 1
    return tot


def fleet(bench, locks, per_lock, handovers, window):
    etcd = bench.etcd
    tag = bench.lockname(f"fleet-{locks}x{per_lock}")
    prefix = f"{tag}-"
    cl = ChildLog(os.path.join(bench.work, f"{tag}.records"))
    out = {"locks": locks, "per_lock": per_lock, "candidates": locks * per_lock,
           "in_flight": IN_FLIGHT,
           "etcd_rss_kib_before": proc_status(etcd.proc.pid).get("VmRSS")}
    t0, cpu0 = time.monotonic(), etcd.cpu_s()
    procs = launch_all(bench, cl, prefix, locks, per_lock)
    out["launch_s"] = time.monotonic() - t0
    out["launch_etcd_cpu_s"] = etcd.cpu_s() - cpu0
    log(f"fleet: {len(procs)} candidates joined in {out['launch_s']:.1f} s")
    time.sleep(5)  # the last joins' requests and the first keep-alives are through
    leaders = check_one_each(cl, locks, "after the launch")

    m0, cpu0, t0 = etcd.metrics(), etcd.cpu_s(), time.monotonic()
    time.sleep(window)
    m1, cpu1, el = etcd.metrics(), etcd.cpu_s(), time.monotonic() - t0
    out["rest_window_s"] = el
    out["rest_etcd_cpu_pct"] = (cpu1 - cpu0) / el * 100
    out["rest_requests_per_s"] = {k: v / el for k, v in delta(m1, m0).items()}
    out["etcd_rss_kib_rest"] = proc_status(etcd.proc.pid).get("VmRSS")
    commands = {r[2] for r in cl.recs if r[0] == "start"}
    out["wrappers"] = wrappers_memory(procs, commands)

    samples = []
    for i in range(handovers):
        lk = i % locks
        ident = leaders[lk]
        cur = next(r for r in cl.recs if r[0] == "start" and r[1] == ident)
        t0 = now_ns()
        os.kill(cur[2], signal.SIGTERM)
        stop = cl.wait("stop", ident, 10, after=t0)
        nxt = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not nxt:
            cl.poll()
            nxt = next((r for r in cl.recs if r[0] == "start" and r[3] > t0
                        and int(r[1][1:4]) == lk), None)
            time.sleep(0.002)
        if not (stop and nxt):
            raise RuntimeError(f"fleet: handover {i} on lock {lk} did not happen")
        samples.append((nxt[3] - stop[3]) / MS)
        try:
            procs[ident].wait(10)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"fleet: {ident}'s wrapper did not end after its command")
        time.sleep(0.5)
        leaders = check_one_each(cl, locks, f"after handover {i}")
    out["handover_ms"] = samples

    t0 = time.monotonic()  # a wrapper passes SIGTERM to its command, a waiter withdraws
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    out["teardown_s"] = time.monotonic() - t0
    return out
