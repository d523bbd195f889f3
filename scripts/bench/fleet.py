"""Many candidates on one etcd."""

import os
import signal
import subprocess
import time

from .base import MS, now_ns
from .childlog import ChildLog
from .etcd import delta
from .procs import kill_child_pid, proc_status


def scale(bench, candidates, handovers):
    lock = bench.lockname("scale")
    cl = ChildLog(os.path.join(bench.work, f"{lock}.records"))
    procs = {}
    for i in range(candidates):
        ident = f"s{i:03d}"
        procs[ident] = bench.launch("ours", ident, lock, cl)
        time.sleep(0.03)
    deadline = time.monotonic() + 60
    while bench.etcd.count(lock + "/") < candidates and time.monotonic() < deadline:
        time.sleep(0.1)
    queued = bench.etcd.count(lock + "/")
    # everyone's watch up: candidates-1 predecessor watches (+ the leader's own)
    while bench.etcd.watchers() < candidates - 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)
    cl.poll()
    starts = [r for r in cl.recs if r[0] == "start"]
    if len(starts) != 1:
        raise RuntimeError(f"scale: {len(starts)} commands started, expected 1")
    cur = starts[0]
    rss = [proc_status(p.pid).get("VmRSS", 0) for p in procs.values()]
    samples, reqs, keepalives = [], [], []
    for i in range(handovers):
        m0 = bench.etcd.metrics()
        t0 = now_ns()
        os.kill(cur[2], signal.SIGTERM)
        stop = cl.wait("stop", cur[1], 10, after=t0)
        nxt = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not nxt:
            cl.poll()
            nxt = next((r for r in cl.recs if r[0] == "start" and r[3] > t0), None)
            time.sleep(0.002)
        if not (stop and nxt):
            raise RuntimeError(f"scale: handover {i} did not happen")
        try:
            procs[cur[1]].wait(10)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)
        m1 = bench.etcd.metrics()
        dt = (now_ns() - t0) / 1e9
        cl.poll()
        extra = [r for r in cl.recs if r[0] == "start" and r[3] > t0 and r[1] != nxt[1]]
        if extra:
            raise RuntimeError(f"scale: more than one successor started: {extra}")
        samples.append((nxt[3] - stop[3]) / MS)
        d = delta(m1, m0, skip=("LeaseKeepAlive",))
        reqs.append(d)
        keepalives.append((delta(m1, m0).get("LeaseKeepAlive", 0), dt))
        cur = nxt
    t_stop = time.monotonic()
    kill_child_pid(cur[2], signal.SIGTERM)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    totals = {}
    for d in reqs:
        for k, v in d.items():
            totals[k] = totals.get(k, 0) + v
    return {"candidates": candidates, "queued": queued, "handover_ms": samples,
            "requests_per_handover": [sum(d.values()) for d in reqs],
            "requests_by_method_avg": {k: v / len(reqs) for k, v in totals.items()},
            "keepalives_per_s_background": keepalives,
            "rss_kib_waiting": rss, "teardown_s": time.monotonic() - t_stop}

