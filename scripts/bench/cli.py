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

from . import __doc__ as USAGE
from . import cost, failover, fleet, footprint, handover, observe, plots, soakreport
from .base import CHILD, EAE, ETCD, ETCDCTL, MUSL, ROOT, log
from .candidates import Bench
from .etcd import Etcd
from .procs import PROCS
from .report import PLOTS_DIR, report

RESULTS = os.path.join(ROOT, "target", "bench", "results.json")


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


# The handover scenarios run on both etcds, in chunks, alternating between tools and storages, so
# that a change in the machine's load falls on all of them alike:
# (result key, what, tool, how, legacy lock) -> key_tmpfs, key_disk.
HANDOVERS = {
    "handover": [
        ("handover_exit_ours", "handover on command exit: ours", "ours", "exit", None),
        ("handover_exit_etcdctl", "handover on command exit: etcdctl", "etcdctl", "exit", None),
        ("handover_exit_ours_nolegacy", "handover on command exit: ours, legacy lock off", "ours",
         "exit", False),
    ],
    "sigterm": [
        ("handover_sigterm_ours", "handover on wrapper SIGTERM: ours", "ours", "sigterm", None),
    ],
}
STORAGES = ("tmpfs", "disk")
SCENARIOS = ("overhead", "launch", "handover", "sigterm", "switchover", "leader-watch", "memory",
             "cost", "failover", "partition", "fleet-1k", "fleet-5k", "fleet-many")
FLEET_SCENARIOS = {"fleet-1k", "fleet-5k", "fleet-many"}


def main():
    ap = argparse.ArgumentParser(description=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--quick", action="store_true",
                    help="few rounds and small fleets, no 5000-candidate fleets (unless --only "
                    "names fleet-5k): for trying the script")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    ap.add_argument("--only", default="", help="comma-separated scenarios to run: "
                    f"{', '.join(SCENARIOS)} (fleet = {', '.join(sorted(FLEET_SCENARIOS))})")
    ap.add_argument("--report-only", action="store_true",
                    help="only rewrite --out (and its plots) from target/bench/results.json")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    if "fleet" in only:
        only |= FLEET_SCENARIOS - ({"fleet-5k"} if args.quick else set())
    if only - set(SCENARIOS) - {"fleet"}:
        ap.error(f"--only: no scenario {', '.join(sorted(only - set(SCENARIOS) - {'fleet'}))}")
    no_plots = plots.missing()
    if no_plots:
        log(f"no pictures: {no_plots}")
    if args.report_only:
        with open(RESULTS) as f:
            saved = json.load(f)
        write(args.out, saved["results"], saved["meta"], no_plots)
        return

    etcds = []
    workdir = None

    def cleanup():
        PROCS.kill_all(spare=[e.proc for e in etcds])
        for e in etcds:
            e.stop()
        PROCS.kill_all()
        if workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    def on_signal(sig, _frame):
        # Clean up right here rather than unwinding: an exception raised at an arbitrary
        # point (inside subprocess or urllib internals) is not guaranteed to reach us.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        log(f"signal {sig}: stopping everything started here")
        cleanup()
        os._exit(128 + sig)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    # Read before the build, not after the run: the sources may change while it runs, and the
    # figures are those of the binaries built now.
    built = machine()
    if not args.no_build:
        build()
    for p in (EAE, CHILD, ETCD, ETCDCTL):
        if not os.access(p, os.X_OK):
            sys.exit(f"bench: missing {p}")
    if not shutil.which("hyperfine"):
        sys.exit("bench: hyperfine missing (scripts/install-deps.sh --bench)")

    q = args.quick
    N = {"handover": 6 if q else 40, "handover_chunks": 2 if q else 4,
         "sigterm_peer": 2 if q else 5, "failover": 3 if q else 12,
         "failover_peer": 2 if q else 6, "partition": 2 if q else 5, "partition_peer": 1 if q else 3,
         "launch": 5 if q else 20, "cost_window": 45 if q else 180,
         "hyperfine_runs": 100 if q else 500,
         "switchover": 3 if q else 12, "switchover_peer": 1 if q else 3,
         "leader_watch": 5 if q else 30,
         "fleet_1k": 100 if q else 1000, "fleet_5k": 5000, "fleet_locks": 20 if q else 200,
         "fleet_per_lock": 5, "fleet_handovers": 3 if q else 8,
         # Whole multiples of every renewal period at TTL 15 s (5 s, 7.5 s; etcdctl's 5 s and a
         # little): each periodic sender is counted whole, give or take its drift.
         "fleet_window": 15 if q else 30,
         # Start-up of one fleet, at most: a join costs etcd more the longer the queue (a
         # 5,000 fleet of either tool would take 10 min and more here); the report says so.
         "fleet_startup_s": 180}

    def want(x):
        if x == "fleet-5k" and q and x not in only:
            return False
        return not only or x in only

    workdir = tempfile.mkdtemp(prefix="eae-bench-")
    t_start = time.monotonic()
    load_before = loadavg()
    notes = {}
    R = {}

    def start_etcd(storage, name):
        e = Etcd(workdir, storage, name)
        etcds.append(e)
        R.setdefault("storage", {})[name] = {"storage": storage, "fs": e.fs}
        log(f"etcd {name} on {e.endpoint}, data dir {e.data} ({e.fs})")
        return e

    def stop_etcd(e):
        PROCS.kill_all(spare=[x.proc for x in etcds])
        e.stop()
        etcds.remove(e)

    def run(key, what, fn, *a):
        log(what)
        try:
            got = fn(*a)
        except Exception as e:  # noqa: BLE001  (one broken scenario must not end the run)
            log(f"{key} FAILED: {e!r}")
            got = {"error": repr(e)}
        PROCS.kill_all(spare=[x.proc for x in etcds])
        return got

    try:
        log(f"work dir {workdir}; load average {load_before}")
        B = {"tmpfs": Bench(workdir, start_etcd("tmpfs", "tmpfs"), notes)}
        T = B["tmpfs"]
        if want("handover") or want("sigterm"):
            B["disk"] = Bench(workdir, start_etcd("disk", "disk"), notes)

        if want("overhead"):
            R["overhead"] = run("overhead", "exec overhead (hyperfine)", footprint.overhead, T,
                                N["hyperfine_runs"])
        if want("launch"):
            for tool in ("direct", "ours", "etcdctl"):
                R[f"launch_{tool}"] = run(f"launch_{tool}", f"launch -> start: {tool}",
                                          footprint.launch_to_start, T, tool, N["launch"])
        variants = [v for k, vs in HANDOVERS.items() if want(k) for v in vs]
        chunks = N["handover_chunks"]
        for chunk in range(chunks):
            for storage in STORAGES:
                for key, what, tool, how, legacy in variants:
                    k = f"{key}_{storage}"
                    if isinstance(R.get(k), dict) and "error" in R[k]:
                        continue
                    got = run(k, f"{what} ({storage}, {chunk + 1}/{chunks})", handover.handover,
                              B[storage], tool, N["handover"] // chunks, how, legacy)
                    if "error" in got:
                        R[k] = got
                        continue
                    for field, xs in got.items():
                        R.setdefault(k, {}).setdefault(field, []).extend(xs)
        if want("sigterm"):
            R["handover_sigterm_etcdctl"] = run(
                "handover_sigterm_etcdctl", "handover on wrapper SIGTERM: etcdctl",
                handover.handover, T, "etcdctl", N["sigterm_peer"], "sigterm")
        if want("switchover"):
            R["switchover_ours"] = run("switchover_ours", "force switchover: holder of ours yields",
                                       handover.switchover, T, N["switchover"], "ours")
            R["switchover_etcdctl"] = run(
                "switchover_etcdctl", "force switchover: etcdctl lock holder fenced out",
                handover.switchover, T, N["switchover_peer"], "etcdctl")
        if want("leader-watch"):
            R["leader_watch"] = run("leader_watch", "--leader --watch following handovers",
                                    observe.leader_watch, T, N["leader_watch"])
        if want("memory"):
            for tool in ("ours", "etcdctl"):
                R[f"memory_{tool}"] = run(f"memory_{tool}", f"memory: {tool}", footprint.memory,
                                          T, tool)
        if want("cost"):
            started = []

            def cost_etcd(name):
                started.append(start_etcd("tmpfs", name))
                return started[-1]

            R["cost"] = run("cost", "what a lock costs etcd, by role (ours and etcdctl lock, "
                            f"TTL {cost.TTL} s, {N['cost_window']} s window)", cost.cost, workdir,
                            cost_etcd, notes, N["cost_window"])
            for e in started:
                stop_etcd(e)
        if want("failover"):
            R["failover_ours"] = run("failover_ours", "failover after SIGKILL: ours",
                                     failover.failover, T, "ours", N["failover"])
            R["failover_etcdctl"] = run("failover_etcdctl", "failover after SIGKILL: etcdctl",
                                        failover.failover, T, "etcdctl", N["failover_peer"])
        if want("partition"):
            R["partition_ours"] = run("partition_ours", "partition: ours", failover.partition, T,
                                      "ours", N["partition"])
            R["partition_etcdctl"] = run("partition_etcdctl", "partition: etcdctl",
                                         failover.partition, T, "etcdctl", N["partition_peer"])
        # Each fleet gets an etcd of its own (on disk, as in production): its CPU and memory
        # are the fleet's alone. Ours and etcdctl lock's in turn, size by size.
        for scenario, tool, locks, per_lock in (
                ("fleet-1k", "ours", 1, N["fleet_1k"]), ("fleet-1k", "etcdctl", 1, N["fleet_1k"]),
                ("fleet-5k", "ours", 1, N["fleet_5k"]), ("fleet-5k", "etcdctl", 1, N["fleet_5k"]),
                ("fleet-many", "ours", N["fleet_locks"], N["fleet_per_lock"])):
            if want(scenario):
                k = f"{scenario.replace('-', '_')}_{tool}"
                e = start_etcd("disk", k)
                R[k] = run(k, f"fleet: {locks} lock(s) x {per_lock} candidates, {tool}",
                           fleet.fleet, Bench(workdir, e, notes), tool, locks, per_lock,
                           N["fleet_handovers"], N["fleet_window"], N["fleet_startup_s"])
                stop_etcd(e)
        R["notes"] = {k: sorted(v) for k, v in notes.items()}
        R["sizes"] = {}
        for name, p in (("host", EAE), ("musl", MUSL), ("etcdctl", ETCDCTL)):
            if os.path.exists(p):
                st = os.stat(p)
                R["sizes"][name] = {"bytes": st.st_size, "mtime": time.strftime(
                    "%Y-%m-%d %H:%M", time.localtime(st.st_mtime)), "path": os.path.relpath(p, ROOT)
                    if p.startswith(ROOT) else p}
    finally:
        cleanup()
        if args.keep:
            log(f"kept {workdir}")

    meta = {"machine": built, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "duration_s": time.monotonic() - t_start, "load_before": load_before,
            "load_after": loadavg()}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"meta": meta, "results": R}, f, indent=1, default=str)
    write(args.out, R, meta, no_plots)


def write(out, R, meta, no_plots):
    """BENCHMARKS.md and, beside it, its plots (unless `no_plots` says why they cannot be
    drawn); the soak's results are read as they are now."""
    here = os.path.dirname(os.path.abspath(out))
    drawn = [] if no_plots else plots.draw(os.path.join(here, PLOTS_DIR), R)
    for _, path in drawn:
        log(f"drew {path}")
    report(out, R, dict(meta, plots=[(c, os.path.relpath(p, here)) for c, p in drawn],
                        no_plots=no_plots, soak=soakreport.load()))
    log(f"wrote {out}")
