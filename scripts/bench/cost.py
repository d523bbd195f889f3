"""What a lock costs etcd at rest, ours next to `etcdctl lock` at the same lease TTL: the gRPC
messages etcd receives from a leader and 20 waiters at the defaults, in all and by role (the
leader, the waiter next in line, a waiter further back). Not the latency of anything, and not the
wrappers' own memory (footprint) or a fleet's (fleet).

etcd counts messages per member, not per client, so the roles are told apart by lock size: every
size runs on an etcd of its own, all of them at once over the same window (a change in the
machine's load falls on every group alike). The leader alone is a lock of one candidate; the
waiter next in line is a lock of two minus the lock of one; a waiter further back is the lock of
21 minus the lock of two, divided by 19."""

import os
import signal
import time

from .candidates import Bench
from .childlog import ChildLog
from .etcd import delta
from .procs import kill_child_pid, stop_proc

TTL = 15  # ours' default lease (renew deadline 10 s); `etcdctl lock --ttl` set to the same
SIZES = (1, 2, 21)  # candidates on the lock: the leader alone, + the next in line, + 19 behind
TOOLS = ("ours", "etcdctl")
# Join-time requests and the first renewals are through: nothing but the periodic ones remain.
SETTLE_S = 2.0


def queue_up(bench, tool, size):
    """A leader whose command runs, then `size - 1` waiters queued one after another in order
    (each one's key in and its watch up before the next is started)."""
    lock = bench.lockname(f"cost-{tool}-{size}")
    cl = ChildLog(os.path.join(bench.work, f"{lock}.records"))
    ttl = TTL if tool == "etcdctl" else None  # ours: its defaults, TTL 15 s included
    procs = [bench.launch(tool, "c00", lock, cl, ttl=ttl)]
    if not cl.wait("start", "c00", 20):
        raise RuntimeError(f"cost, {tool} x {size}: the leader never started")
    for i in range(1, size):
        base = bench.settle_watchers()
        procs.append(bench.launch(tool, f"c{i:02d}", lock, cl, ttl=ttl))
        if not bench.wait_queued(lock, i + 1, base):
            raise RuntimeError(f"cost, {tool} x {size}: waiter {i} never queued")
    return cl, procs


def cost(workdir, start_etcd, notes, window):
    """Every (tool, size) group on its own fresh etcd (`start_etcd(name)`), queued one group
    after another, then one window over all of them at once. Returns, per group, the messages
    etcd received by gRPC method over its window, and the streams opened in it (none expected:
    a stream opened in the window is a reconnection, and its messages are not periodic)."""
    groups = {}
    try:
        for tool in TOOLS:
            for size in SIZES:
                bench = Bench(workdir, start_etcd(f"cost-{tool}-{size}"), notes)
                groups[tool, size] = (bench, *queue_up(bench, tool, size))
        time.sleep(SETTLE_S)
        before = {k: (b.etcd.metrics(), time.monotonic()) for k, (b, _, _) in groups.items()}
        time.sleep(window)
        out = {"ttl": TTL, "window_s": window, "groups": []}
        for (tool, size), (bench, cl, _) in groups.items():
            m0, t0 = before[tool, size]
            m1, el = bench.etcd.metrics(), time.monotonic() - t0
            cl.poll()
            starts = [r for r in cl.recs if r[0] == "start"]
            if len(starts) != 1 or any(r[0] == "stop" for r in cl.recs):
                raise RuntimeError(f"cost, {tool} x {size}: the leader changed during the window")
            out["groups"].append({
                "tool": tool, "size": size, "window_s": el,
                "messages": delta(m1, m0),
                "streams_opened": delta(m1, m0, "grpc_server_started_total",
                                        skip=("Range", "Txn", "Put", "DeleteRange", "LeaseGrant",
                                              "LeaseRevoke", "LeaseTimeToLive"))})
        return out
    finally:
        for _, cl, procs in groups.values():
            for p in reversed(procs[1:]):  # the waiters first: no handover on the way out
                stop_proc(p)
            # `etcdctl lock` ignores SIGTERM while its command runs: the command goes first.
            cl.poll()
            for r in cl.recs:
                if r[0] == "start":
                    kill_child_pid(r[2], signal.SIGTERM)
            stop_proc(procs[0])
