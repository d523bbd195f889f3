"""Planned handovers: the leader's command exits or its wrapper gets SIGTERM, and force
switchovers."""

import os
import signal
import subprocess
import time

from .base import MS, now_ns
from .childlog import ChildLog
from .procs import alive, kill_child_pid, stop_proc


def handover(bench, tool, rounds, how, legacy=None):
    """how = 'exit': the leader's command exits; 'sigterm': its wrapper gets SIGTERM."""
    lock = bench.lockname(f"handover-{how}-{tool}")
    cl = ChildLog(os.path.join(bench.work, f"{lock}.records"))
    ident = "c0"
    cur = bench.launch(tool, ident, lock, cl, legacy=legacy)
    r = cl.wait("start", ident, 20)
    if not r:
        raise RuntimeError(f"{tool}: first candidate never started")
    samples, term_to_stop, observations = [], [], []
    cur_pid = r[2]
    for i in range(1, rounds + 1):
        base = bench.settle_watchers()
        nident = f"c{i}"
        nxt = bench.launch(tool, nident, lock, cl, legacy=legacy)
        if not bench.wait_queued(lock, 2, base):
            raise RuntimeError(f"{tool}: candidate {nident} never queued")
        t0 = now_ns()
        if how == "exit":
            os.kill(cur_pid, signal.SIGTERM)  # the command itself ends (exit 143)
        else:
            cur.send_signal(signal.SIGTERM)
        if how == "sigterm" and tool == "etcdctl":
            # etcdctl lock ignores SIGTERM while its command runs: watch for 2 s.
            time.sleep(2.0)
            cl.poll()
            obs = {
                "command_got_term": bool(cl.find("term", ident, t0)),
                "command_alive_after_2s": alive(cur_pid),
                "etcdctl_alive_after_2s": cur.poll() is None,
                "next_started_within_2s": bool(cl.find("start", nident)),
            }
            observations.append(obs)
            os.kill(cur_pid, signal.SIGTERM)  # end the command by hand to go on
        stop = cl.wait("stop", ident, 10, after=t0)
        start = cl.wait("start", nident, 15)
        if not (stop and start):
            raise RuntimeError(f"{tool}: handover {i} did not happen")
        samples.append((start[3] - stop[3]) / MS)
        term_to_stop.append((stop[3] - t0) / MS)
        try:
            rc = cur.wait(10)
        except subprocess.TimeoutExpired:
            rc = "hung"
            cur.kill()
        if i == 1 or rc not in (143, 0, 1):
            bench.notes.setdefault(f"handover-{how}-{tool}-exit-codes", set()).add(str(rc))
        cur, ident, cur_pid = nxt, nident, start[2]
    kill_child_pid(cur_pid, signal.SIGTERM)
    stop_proc(cur)
    return {"handover_ms": samples, "signal_to_stop_ms": term_to_stop,
            "observations": observations}


def switchover(bench, rounds, holder_tool, ttl=3):
    """A forcing candidate of ours takes over from a holder: one of ours (asked to yield: it
    stops its command through its SIGTERM handler) or `etcdctl lock` (never answers, and is not
    deposed, as its key is not ours to delete: waited for until its lease ends; its command is
    ended by hand, since etcdctl never stops it). The old design waited the deposed lease's TTL."""
    out = {"gap_ms": [], "request_to_stop_ms": [], "stopped_by_term": 0}
    for i in range(rounds):
        lock = bench.lockname(f"switchover-{holder_tool}")
        cl = ChildLog(os.path.join(bench.work, f"{lock}.records"))
        holder = bench.launch(holder_tool, "h", lock, cl, ttl=ttl, renew="2s", retry="1s")
        rh = cl.wait("start", "h", 20)
        if not rh:
            raise RuntimeError(f"switchover {i}: holder never started")
        t0 = now_ns()
        forcer = bench.launch("ours", "f", lock, cl, ttl=ttl, renew="2s", retry="1s",
                             force=True)
        if holder_tool == "etcdctl":
            # etcdctl lock never yields: its command is ended by hand once fenced out.
            time.sleep(0.2)
            kill_child_pid(rh[2], signal.SIGTERM)
        stop = cl.wait("stop", "h", 15)
        start = cl.wait("start", "f", 2 * ttl + 10)
        if not (stop and start):
            raise RuntimeError(f"switchover {i}: did not happen")
        out["gap_ms"].append((start[3] - stop[3]) / MS)
        out["request_to_stop_ms"].append((stop[3] - t0) / MS)
        out["stopped_by_term"] += bool(cl.find("term", "h", t0))
        kill_child_pid(start[2], signal.SIGTERM)
        stop_proc(forcer)
        stop_proc(holder)
    return out

