"""Unplanned handovers: the leader's wrapper SIGKILLed, or cut off from etcd by the proxy."""

import os
import random
import re
import signal
import subprocess
import time
import urllib.request

from .base import MS, now_ns
from .childlog import ChildLog
from .ports import free_port
from .procs import alive, kill_child_pid, stop_proc
from .proxy import Proxy


def last_renewal_ns(bench, tool, status, lease):
    """When the leader's lease was last renewed, on our clock, and how uncertain that is (ns). Ours
    says it on /metrics (the send time of its last successful keep-alive, to the ms); for
    `etcdctl lock` only etcd's remaining TTL tells, in whole seconds, truncated: the renewal was
    at now − (granted − remaining) or up to 1 s later."""
    if tool == "ours":
        t0 = now_ns()
        with urllib.request.urlopen(f"http://{status}/metrics", timeout=2) as r:
            text = r.read().decode()
        t = (t0 + now_ns()) // 2
        age = re.search(r"^etcd_await_election_seconds_since_renewal (\S+)$", text, re.M)
        return (t - int(float(age.group(1)) * 1e9), 1_000_000) if age else (None, None)
    t0 = now_ns()
    r = bench.etcd.post("/v3/lease/timetolive", {"ID": lease})
    t = (t0 + now_ns()) // 2
    return t - (int(r["grantedTTL"]) - int(r["TTL"])) * 1_000_000_000, 1_000_000_000


def failover(bench, tool, rounds, ttl=2):
    """Also each round's timeline, relative to the kill: the lease's last renewal before it, when
    etcd deleted the leader's key (as polled), the old command's death, the new one's start."""
    out = {"failover_minus_ttl_ms": [], "kill_to_start_ms": [], "old_cmd_gone_ms": [],
           "old_cmd_survived": 0, "granted_ttl": None, "expiry_minus_ttl_ms": [],
           "expiry_to_start_ms": [], "renewal_to_start_minus_ttl_ms": [], "timeline": []}
    for i in range(rounds):
        # Random phase of the new leader's keep-alives against etcd's 500 ms lessor tick:
        # without it every round starts a fixed delay after the previous expiry, and both
        # being 500 ms periodic, the phase (and the figure) would be the same each round.
        time.sleep(random.uniform(0, 0.5))
        lock = bench.lockname(f"failover-{tool}")
        cl = ChildLog(os.path.join(bench.work, f"{lock}.records"))
        renew = "1s" if tool == "ours" else None
        status = f"127.0.0.1:{free_port()}" if tool == "ours" else None
        a = bench.launch(tool, "a", lock, cl, ttl=ttl, renew=renew, status=status)
        ra = cl.wait("start", "a", 20)
        if not ra:
            raise RuntimeError(f"{tool}: leader never started")
        base = bench.settle_watchers()
        b = bench.launch(tool, "b", lock, cl, ttl=ttl, renew=renew)
        if not bench.wait_queued(lock, 2, base):
            raise RuntimeError(f"{tool}: waiter never queued")
        if out["granted_ttl"] is None:
            out["granted_ttl"] = bench.etcd.granted_ttl(lock + "/")
        time.sleep(random.uniform(0, 0.7))  # random phase against the keep-alives
        first = min(bench.etcd.keys(lock + "/"), key=lambda kv: int(kv["create_revision"]))
        renewed, window = last_renewal_ns(bench, tool, status, first["lease"])
        t0 = now_ns()
        a.kill()
        gone = expired = None
        while now_ns() - t0 < 6e9 and not (expired and (gone or now_ns() - t0 > 1e9)):
            if not gone and not alive(ra[2]):
                gone = now_ns()
            if not expired and now_ns() - t0 > 1e9:  # etcd's view: the leader key deleted
                keys = [kv["key"] for kv in bench.etcd.keys(lock + "/")]
                if first["key"] not in keys:
                    expired = now_ns()
            time.sleep(0.001 if not gone else 0.003)
        if gone:
            out["old_cmd_gone_ms"].append((gone - t0) / MS)
        else:
            out["old_cmd_survived"] += 1
        rb = cl.wait("start", "b", 15)
        if expired and rb:
            out["expiry_minus_ttl_ms"].append((expired - t0) / MS - ttl * 1000)
            out["expiry_to_start_ms"].append((rb[3] - expired) / MS)
        if rb:
            out["kill_to_start_ms"].append((rb[3] - t0) / MS)
            out["failover_minus_ttl_ms"].append((rb[3] - t0) / MS - ttl * 1000)
            if renewed:
                out["renewal_to_start_minus_ttl_ms"].append((rb[3] - renewed) / MS - ttl * 1000)

        def rel(t):
            return (t - t0) / MS if t else None

        out["timeline"].append({"last_renewal_ms": rel(renewed),
                                "renewal_window_ms": window / MS if window else None,
                                "old_cmd_gone_ms": rel(gone),
                                "key_deleted_ms": rel(expired),
                                "new_start_ms": rel(rb[3] if rb else None)})
        kill_child_pid(ra[2], signal.SIGKILL)
        a.wait(5)
        if rb:
            kill_child_pid(rb[2], signal.SIGTERM)
        stop_proc(b)
    return out


def partition(bench, tool, rounds, ttl=2):
    out = {"cut_to_old_stop_ms": [], "cut_to_new_start_ms": [], "gap_ms": [],
           "old_never_stopped": 0, "old_exit_codes": []}
    for i in range(rounds):
        time.sleep(random.uniform(0, 0.5))  # random keep-alive phase, see failover()
        lock = bench.lockname(f"partition-{tool}")
        cl = ChildLog(os.path.join(bench.work, f"{lock}.records"))
        proxy = Proxy(bench.etcd.cport)
        try:
            renew = "1s" if tool == "ours" else None
            a = bench.launch(tool, "a", lock, cl, ttl=ttl, renew=renew, retry="500ms",
                            endpoint=f"127.0.0.1:{proxy.port}")
            ra = cl.wait("start", "a", 20)
            if not ra:
                raise RuntimeError(f"{tool}: leader behind the proxy never started")
            base = bench.settle_watchers()
            b = bench.launch(tool, "b", lock, cl, ttl=ttl, renew=renew, retry="500ms")
            if not bench.wait_queued(lock, 2, base):
                raise RuntimeError(f"{tool}: waiter never queued")
            time.sleep(random.uniform(0.2, 0.9))
            t0 = now_ns()
            proxy.blackhole()
            rb = cl.wait("start", "b", 15)
            stop = cl.wait("stop", "a", 6 if tool == "ours" else 0.5, after=t0)
            if stop:
                out["cut_to_old_stop_ms"].append((stop[3] - t0) / MS)
            else:
                out["old_never_stopped"] += 1
            if rb:
                out["cut_to_new_start_ms"].append((rb[3] - t0) / MS)
                if stop:
                    out["gap_ms"].append((rb[3] - stop[3]) / MS)
            if tool == "ours":
                try:
                    out["old_exit_codes"].append(a.wait(8))
                except subprocess.TimeoutExpired:
                    out["old_exit_codes"].append("running")
            kill_child_pid(ra[2], signal.SIGKILL)
            stop_proc(a, signal.SIGKILL)
            if rb:
                kill_child_pid(rb[2], signal.SIGTERM)
            stop_proc(b)
        finally:
            proxy.close()
    return out

