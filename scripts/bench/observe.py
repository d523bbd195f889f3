"""Observers: `etcd-await-election --leader --watch` following planned handovers, and how soon
after the new leader's command starts its line arrives (negative: before; the record moves, then
the new leader starts)."""

import json
import os
import signal
import subprocess
import threading

from .base import EAE, MS, now_ns
from .childlog import ChildLog
from .procs import PROCS, kill_child_pid, stop_proc


class Watch:
    """A `--leader --watch` on LOCK, its lines stamped on CLOCK_MONOTONIC as they arrive."""

    def __init__(self, bench, lock):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_AWAIT_ELECTION_")}
        env.update({"ETCD_AWAIT_ELECTION_LOCK_NAME": lock,
                    "ETCD_AWAIT_ELECTION_ENDPOINTS": bench.etcd.endpoint})
        err = open(os.path.join(bench.work, f"{lock}-watch.log"), "ab")
        self.proc = PROCS.spawn([EAE, "--leader", "--watch"], env=env, stdout=subprocess.PIPE,
                                stderr=err)
        err.close()
        self.lines = []  # (ns, leader)
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            ns = now_ns()
            leader = json.loads(raw)["leader"]
            with self.cond:
                self.lines.append((ns, leader))
                self.cond.notify_all()

    def wait(self, leader, timeout=15):
        """When the line naming `leader` arrived (None: not within `timeout`)."""
        def found():
            return next((ns for ns, who in self.lines if who == leader), None)
        with self.cond:
            self.cond.wait_for(lambda: found() is not None, timeout)
            return found()


def leader_watch(bench, rounds):
    """Handovers on wrapper SIGTERM, followed by `--leader --watch`."""
    lock = bench.lockname("leader-watch")
    cl = ChildLog(os.path.join(bench.work, f"{lock}.records"))
    watch = Watch(bench, lock)
    ident = "c0"
    cur = bench.launch("ours", ident, lock, cl)
    r = cl.wait("start", ident, 20)
    if not (r and watch.wait(ident)):
        raise RuntimeError("the first candidate never started, or was never shown")
    out = {"line_after_start_ms": [], "line_after_old_stop_ms": []}
    for i in range(1, rounds + 1):
        base = bench.settle_watchers()
        nident = f"c{i}"
        nxt = bench.launch("ours", nident, lock, cl)
        if not bench.wait_queued(lock, 2, base):
            raise RuntimeError(f"candidate {nident} never queued")
        t0 = now_ns()
        cur.send_signal(signal.SIGTERM)
        stop = cl.wait("stop", ident, 10, after=t0)
        start = cl.wait("start", nident, 15)
        shown = watch.wait(nident)
        if not (stop and start and shown):
            raise RuntimeError(f"handover {i} did not happen, or was not shown")
        out["line_after_start_ms"].append((shown - start[3]) / MS)
        out["line_after_old_stop_ms"].append((shown - stop[3]) / MS)
        stop_proc(cur)
        cur, ident = nxt, nident
    kill_child_pid(start[2], signal.SIGTERM)
    stop_proc(cur)
    stop_proc(watch.proc)
    return out
