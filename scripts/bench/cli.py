"""The run: options, which scenarios run how many rounds, the etcd they run against, cleanup
of everything started here on any exit, and results.json (the report's only input)."""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import failover, fleet, footprint, handover
from .base import CHILD, EAE, ETCD, ETCDCTL, MUSL, ROOT, log
from .candidates import Bench
from .etcd import Etcd
from .procs import PROCS
from .report import report


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        etcdv = subprocess.run([ETCD, "--version"], capture_output=True, text=True).stdout
        etcdv = re.search(r"etcd Version: (\S+)", etcdv).group(1)
    except Exception:  # noqa: BLE001
        etcdv = "?"
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            rev += " (src/ modified)"
    except Exception:  # noqa: BLE001
        rev = "?"
    return {"nproc": os.cpu_count(), "model": model, "kernel": platform.release(),
            "etcd": etcdv, "rev": rev, "python": platform.python_version()}


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def build():
    log("cargo build --release --bins")
    subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--quick", action="store_true", help="few rounds, for trying the script")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    ap.add_argument("--only", default="", help="comma-separated scenarios to run")
    ap.add_argument("--report-only", action="store_true",
                    help="only rewrite --out from target/bench/results.json")
    args = ap.parse_args()
    if args.report_only:
        with open(os.path.join(ROOT, "target", "bench", "results.json")) as f:
            saved = json.load(f)
        report(args.out, saved["results"], saved["meta"])
        return

    state = {"etcd": None, "workdir": None}

    def on_signal(sig, _frame):
        # Clean up right here rather than unwinding: an exception raised at an arbitrary
        # point (inside subprocess or urllib internals) is not guaranteed to reach us.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        log(f"signal {sig}: stopping everything started here")
        e = state["etcd"]
        PROCS.kill_all(e.proc if e else None)
        if e:
            e.stop()
        PROCS.kill_all()
        if state["workdir"] and not args.keep:
            shutil.rmtree(state["workdir"], ignore_errors=True)
        os._exit(128 + sig)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    if not args.no_build:
        build()
    for p in (EAE, CHILD, ETCD, ETCDCTL):
        if not os.access(p, os.X_OK):
            sys.exit(f"bench: missing {p}")
    if not shutil.which("hyperfine"):
        sys.exit("bench: hyperfine missing (scripts/install-deps.sh --bench)")

    q = args.quick
    N = {"handover": 5 if q else 30, "sigterm_peer": 2 if q else 5, "failover": 3 if q else 12,
         "failover_peer": 2 if q else 6, "partition": 2 if q else 5, "partition_peer": 1 if q else 3,
         "launch": 5 if q else 20, "idle_window": 5 if q else 20, "scale": 20 if q else 100,
         "scale_handovers": 3 if q else 10, "hyperfine_runs": 100 if q else 500,
         "switchover": 3 if q else 12, "switchover_peer": 1 if q else 3}
    only = set(filter(None, args.only.split(",")))

    def want(x):
        return not only or x in only

    workdir = tempfile.mkdtemp(prefix="eae-bench-")
    etcd = None
    t_start = time.monotonic()
    load_before = loadavg()
    R = {}
    try:
        log(f"work dir {workdir}; load average {load_before}")
        state["workdir"] = workdir
        etcd = Etcd(workdir)
        state["etcd"] = etcd
        log(f"etcd on {etcd.endpoint}")
        B = Bench(args, workdir, etcd)

        def run(key, what, fn, *a):
            log(what)
            try:
                R[key] = fn(*a)
            except Exception as e:  # noqa: BLE001  (one broken scenario must not end the run)
                log(f"{key} FAILED: {e!r}")
                R[key] = {"error": repr(e)}
            PROCS.kill_all(etcd.proc)

        if want("overhead"):
            run("overhead", "exec overhead (hyperfine)", footprint.overhead, B, N["hyperfine_runs"])
        if want("launch"):
            for tool in ("direct", "ours", "etcdctl"):
                run(f"launch_{tool}", f"launch -> start: {tool}", footprint.launch_to_start, B, tool,
                    N["launch"])
        if want("handover"):
            for tool in ("ours", "etcdctl"):
                run(f"handover_exit_{tool}", f"handover on command exit: {tool}", handover.handover, B,
                    tool, N["handover"], "exit")
            run("handover_exit_ours_nolegacy", "handover on command exit: ours, legacy lock off",
                handover.handover, B, "ours", N["handover"], "exit", False)
        if want("sigterm"):
            run("handover_sigterm_ours", "handover on wrapper SIGTERM: ours", handover.handover, B,
                "ours", N["handover"], "sigterm")
            run("handover_sigterm_etcdctl", "handover on wrapper SIGTERM: etcdctl", handover.handover, B,
                "etcdctl", N["sigterm_peer"], "sigterm")
        if want("switchover"):
            run("switchover_ours", "force switchover: holder of ours yields", handover.switchover, B,
                N["switchover"], "ours")
            run("switchover_etcdctl", "force switchover: etcdctl lock holder fenced out",
                handover.switchover, B, N["switchover_peer"], "etcdctl")
        if want("memory"):
            for tool in ("ours", "etcdctl"):
                run(f"memory_{tool}", f"memory: {tool}", footprint.memory, B, tool)
        if want("idle"):
            # defaults: ours TTL 15 s / renew deadline 10 s (keep-alive every 3.3 s);
            # etcdctl lock --ttl=10 (keep-alive every TTL/3 = 3.3 s)
            for tool, ttl in (("ours", None), ("etcdctl", None)):
                run(f"idle_{tool}", f"idle requests: {tool}", footprint.idle_requests, B, tool, ttl,
                    N["idle_window"])
        if want("failover"):
            run("failover_ours", "failover after SIGKILL: ours", failover.failover, B, "ours",
                N["failover"])
            run("failover_etcdctl", "failover after SIGKILL: etcdctl", failover.failover, B, "etcdctl",
                N["failover_peer"])
        if want("partition"):
            run("partition_ours", "partition: ours", failover.partition, B, "ours", N["partition"])
            run("partition_etcdctl", "partition: etcdctl", failover.partition, B, "etcdctl",
                N["partition_peer"])
        if want("scale"):
            run("scale", f"scale: {N['scale']} candidates", fleet.scale, B, N["scale"],
                N["scale_handovers"])
        R["notes"] = {k: sorted(v) for k, v in B.notes.items()}
        R["sizes"] = {}
        for name, p in (("host", EAE), ("musl", MUSL), ("etcdctl", ETCDCTL)):
            if os.path.exists(p):
                st = os.stat(p)
                R["sizes"][name] = {"bytes": st.st_size, "mtime": time.strftime(
                    "%Y-%m-%d %H:%M", time.localtime(st.st_mtime)), "path": os.path.relpath(p, ROOT)
                    if p.startswith(ROOT) else p}
    finally:
        PROCS.kill_all(etcd.proc if etcd else None)
        if etcd:
            etcd.stop()
        PROCS.kill_all()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    meta = {"machine": machine(), "tmpfs": etcd.on_tmpfs, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "duration_s": time.monotonic() - t_start, "load_before": load_before,
            "load_after": loadavg()}
    os.makedirs(os.path.join(ROOT, "target", "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target", "bench", "results.json"), "w") as f:
        json.dump({"meta": meta, "results": R}, f, indent=1, default=str)
    report(args.out, R, meta)
    log(f"wrote {args.out}")
