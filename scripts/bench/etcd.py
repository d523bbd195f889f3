"""The throwaway single-member etcd the scenarios run against, and its HTTP gateway: key reads,
leases and the Prometheus counters the request figures are diffed from."""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

from .base import ETCD
from .ports import free_port
from .procs import PROCS, cpu_s, stop_proc


# What a request of the script's own may take: an etcd under a fleet of thousands, on a machine
# shared with other runs, answers a read in seconds at times; that is not a failure of the run.
TIMEOUT_S = 30


def b64(s):
    return base64.b64encode(s.encode()).decode()


def prefix_end(p):
    return p[:-1] + chr(ord(p[-1]) + 1)



def fs_type(path):
    """The type of the file system `path` is on (its longest mount point in /proc/mounts)."""
    path, best, kind = os.path.realpath(path), "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            _, mnt, fstype = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, fstype
    return kind


class Etcd:
    """storage "tmpfs": data dir on /dev/shm, where a raft write's fsync costs nothing; "disk": in
    the work dir, which must be on a disk file system (every commit on the handover's path pays a
    flush there, as in production)."""

    def __init__(self, workdir, storage, name):
        base = "/dev/shm" if storage == "tmpfs" else workdir
        self.data = tempfile.mkdtemp(prefix=f"eae-bench-etcd-{name}-", dir=base)
        self.storage = storage
        self.fs = fs_type(self.data)
        if (self.fs == "tmpfs") != (storage == "tmpfs"):
            shutil.rmtree(self.data, ignore_errors=True)
            raise RuntimeError(f"etcd's {storage} data dir {self.data} is on {self.fs} "
                               "(for disk, point TMPDIR at a disk file system)")
        self.cport, self.pport = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{self.cport}"
        self.url = f"http://{self.endpoint}"
        self.logf = open(os.path.join(workdir, f"etcd-{name}.log"), "wb")
        peer = f"http://127.0.0.1:{self.pport}"
        self.proc = PROCS.spawn(
            [
                ETCD, "--name", "bench", "--data-dir", self.data,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"bench={peer}",
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                "--logger", "zap", "--log-level", "warn",
                # For `live_heap_kib`: nothing else reads the pprof handlers.
                "--enable-pprof",
            ],
            stdout=self.logf, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 20
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if json.load(r).get("health") in ("true", True):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.logf.flush()
                with open(self.logf.name, errors="replace") as f:
                    tail = "".join(f.readlines()[-20:])
                raise RuntimeError(f"etcd did not start on {self.endpoint}; etcd.log ends:\n{tail}")
            time.sleep(0.05)

    def post(self, path, body):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            return json.load(r)

    def count(self, prefix):
        r = self.post("/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                       "count_only": True})
        return int(r.get("count", 0))

    def keys(self, prefix):
        r = self.post("/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return r.get("kvs", [])

    def granted_ttl(self, prefix):
        for kv in self.keys(prefix):
            lease = kv.get("lease")
            if lease and lease != "0":
                r = self.post("/v3/lease/timetolive", {"ID": lease})
                return int(r.get("grantedTTL", 0))
        return None

    def live_heap_kib(self):
        """The Go heap etcd holds live: its HeapAlloc right after a garbage collection that the
        heap profile's `gc=1` forces. /metrics gives only figures that also count what the last
        collection has not yet freed, which after a burst of requests is most of the heap."""
        url = self.url + "/debug/pprof/heap?gc=1&debug=1"
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            m = re.search(r"^# HeapAlloc = (\d+)$", r.read().decode(errors="replace"), re.M)
        return int(m.group(1)) / 1024 if m else None

    def metrics(self):
        """{(metric, method): value} for the gRPC server counters, plus the watcher gauge."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=TIMEOUT_S) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = re.match(r'^(grpc_server_(?:msg_received|handled|started)_total)\{(.*)\} (\S+)$',
                         line)
            if m:
                meth = re.search(r'grpc_method="([^"]+)"', m.group(2)).group(1)
                key = (m.group(1), meth)
                out[key] = out.get(key, 0) + float(m.group(3))
            elif line.startswith("etcd_debugging_mvcc_watcher_total "):
                out[("watchers", "")] = float(line.split()[1])
        return out

    def watchers(self):
        return self.metrics().get(("watchers", ""), 0)

    def cpu_s(self):
        """CPU time etcd has used (utime + stime), in seconds."""
        return cpu_s(self.proc.pid)

    def stop(self):
        stop_proc(self.proc, signal.SIGTERM, 10)
        self.logf.close()
        shutil.rmtree(self.data, ignore_errors=True)


def delta(m1, m0, metric="grpc_server_msg_received_total", skip=()):
    out = {}
    for (name, meth), v in m1.items():
        if name == metric and meth not in skip:
            d = v - m0.get((name, meth), 0)
            if d:
                out[meth] = d
    return out
