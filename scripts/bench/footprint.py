"""What one wrapper costs the host: launch to command start, memory, and the exec overhead when
no election is configured (what it costs etcd: cost)."""

import json
import os
import shutil
import signal
import subprocess
import time

from .base import CHILD, EAE, MS, MUSL, now_ns
from .childlog import ChildLog
from .procs import PROCS, children_of, kill_child_pid, proc_status, stop_proc


def launch_to_start(bench, tool, rounds):
    out = []
    for i in range(rounds):
        lock = bench.lockname(f"launch-{tool}")
        cl = ChildLog(os.path.join(bench.work, f"{lock}.records"))
        t0 = now_ns()
        if tool == "direct":
            p = PROCS.spawn([CHILD, "--id", "x", "--exit-after", "0"], env=bench.env(cl),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            p = bench.launch(tool, "x", lock, cl, child_args=("--exit-after", "0"))
        r = cl.wait("start", "x", 15)
        if r:
            out.append((r[3] - t0) / MS)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            stop_proc(p, signal.SIGKILL)
        time.sleep(0.05)
    return out


def memory(bench, tool):
    lock = bench.lockname(f"memory-{tool}")
    cl = ChildLog(os.path.join(bench.work, f"{lock}.records"))
    a = bench.launch(tool, "a", lock, cl)
    ra = cl.wait("start", "a", 20)
    base = bench.settle_watchers()
    b = bench.launch(tool, "b", lock, cl)
    bench.wait_queued(lock, 2, base)
    time.sleep(3)
    res = {"leading": proc_status(a.pid), "waiting": proc_status(b.pid),
           "command": proc_status(ra[2])}
    others = [k for k in children_of(a.pid) if k != ra[2]]
    if others:
        res["guardian"] = proc_status(others[0])
        res["guardian"]["count"] = len(others)
    kill_child_pid(ra[2], signal.SIGTERM)
    rb = cl.wait("start", "b", 15)
    stop_proc(a)
    if rb:
        kill_child_pid(rb[2], signal.SIGTERM)
    stop_proc(b)
    return res


def overhead(bench, runs):
    true = shutil.which("true") or "/bin/true"
    jf = os.path.join(bench.work, "hyperfine.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_AWAIT_ELECTION_")}
    subprocess.run(
        ["hyperfine", "-N", "--warmup", "50", "--runs", str(runs), "--export-json", jf,
         "--style", "none", f"{EAE} {true}", true]
        + ([f"{MUSL} {true}"] if os.access(MUSL, os.X_OK) else []),
        check=True, env=env, stdout=subprocess.DEVNULL)
    with open(jf) as f:
        res = json.load(f)["results"]
    return [{"command": r["command"], "times_ms": [t * 1000 for t in r["times"]],
             "mean_ms": r["mean"] * 1000, "stddev_ms": r["stddev"] * 1000} for r in res]
