"""Where the binaries are, the clock every timestamp is taken on, logging and the statistics
every figure is made of."""

import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where cargo builds, CARGO_TARGET_DIR honoured: scripts/target-dir.sh, as for make and the scripts.
BUILD = subprocess.run([os.path.join(ROOT, "scripts", "target-dir.sh")], check=True,
                       stdout=subprocess.PIPE, text=True).stdout.strip()
EAE = os.path.join(BUILD, "release", "etcd-await-election")
CHILD = os.path.join(BUILD, "release", "eae-test-child")
MUSL = os.path.join(BUILD, "x86_64-unknown-linux-musl", "release", "etcd-await-election")
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
MS = 1e6  # ns per ms


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)




def stats(xs):
    xs = sorted(xs)
    if not xs:
        return None

    def pct(p):
        # nearest-rank percentile
        k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
        return xs[k]

    return {
        "n": len(xs),
        "p50": statistics.median(xs),
        "p95": pct(95),
        "min": xs[0],
        "max": xs[-1],
    }
