#!/usr/bin/env python3
"""Benchmarks of etcd-await-election against a real etcd, next to `etcdctl lock`.

    scripts/bench.py [--out BENCHMARKS.md] [--quick] [--no-build] [--keep]

Starts a throwaway single-node etcd on loopback (ports by the protocol of tests/common/ports.rs,
data dir on /dev/shm when available, --heartbeat-interval 100 --election-timeout 1000 so a 2 s
lease TTL is allowed),
runs every scenario against it with the release build of etcd-await-election and with
etcd's own `etcdctl lock NAME CMD...`, and writes the figures to BENCHMARKS.md (and the raw
samples to target/bench/results.json).

Every command under test is `target/release/eae-test-child` (tests/support/child.rs): it
appends `start|term|stop <identity> <pid> <CLOCK_MONOTONIC ns>` to $EAE_TEST_LOG, so handover
times are measured between two records written by the commands themselves, and the script's
own timestamps (time.clock_gettime_ns(CLOCK_MONOTONIC)) are on the same clock.

Only the Python standard library is used. Everything started here (etcd, wrappers, etcdctl,
commands, the TCP proxy) is stopped on exit, on an exception, on Ctrl-C and on SIGTERM/SIGHUP.
"""

import argparse
import base64
import fcntl
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EAE = os.path.join(ROOT, "target", "release", "etcd-await-election")
CHILD = os.path.join(ROOT, "target", "release", "eae-test-child")
MUSL = os.path.join(ROOT, "target", "x86_64-unknown-linux-musl", "release", "etcd-await-election")
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
MS = 1e6  # ns per ms


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


PORT_LOCK_DIR = "/tmp/etcd-await-election-ports"
_port_locks = []  # open lock files: each port stays reserved until this process exits


def free_port():
    """A loopback port by the machine-wide protocol of tests/common/ports.rs and scripts/ports.sh:
    outside the kernel's ephemeral range (no client connection can take it as its source port),
    locked with flock under PORT_LOCK_DIR while we live, and bindable right now."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    lo, hi = max(1024, low // 2), low
    if hi - lo < 1024:
        lo, hi = high + 1, 65536
    if hi - lo < 1024:
        raise RuntimeError(f"ip_local_port_range {low} {high} leaves no room for test ports")
    os.makedirs(PORT_LOCK_DIR, exist_ok=True)
    try:
        os.chmod(PORT_LOCK_DIR, 0o1777)
    except OSError:
        pass
    start = random.randrange(hi - lo)
    for i in range(hi - lo):
        port = lo + (start + i) % (hi - lo)
        path = os.path.join(PORT_LOCK_DIR, str(port))
        try:
            f = open(path, "a")
        except OSError:
            try:
                f = open(path)  # read-only locks too: another user's lock file
            except OSError:
                continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
        except OSError:
            f.close()
            continue
        _port_locks.append(f)
        return port
    raise RuntimeError(f"no free port in {lo}..{hi} (all locked under {PORT_LOCK_DIR} or bound)")


def b64(s):
    return base64.b64encode(s.encode()).decode()


def prefix_end(p):
    return p[:-1] + chr(ord(p[-1]) + 1)


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


# --------------------------------------------------------------------------- processes


class Procs:
    """Everything we started, so that it can all be stopped whatever happens."""

    def __init__(self):
        self.popens = []
        self.pids = set()  # command pids seen in logs (they may be orphaned)
        self.lock = threading.Lock()

    def spawn(self, argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(argv, **kw)
        with self.lock:
            self.popens.append(p)
        return p

    def note_pid(self, pid):
        self.pids.add(pid)

    def reap(self):
        with self.lock:
            self.popens = [p for p in self.popens if p.poll() is None]

    def kill_all(self, etcd=None):
        for p in list(self.popens):
            if p is not etcd and p.poll() is None:
                try:
                    p.kill()
                except OSError:
                    pass
        for pid in list(self.pids):
            kill_child_pid(pid, signal.SIGKILL)
        for p in list(self.popens):
            if p is not etcd:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        self.reap()


PROCS = Procs()


def is_test_child(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"eae-test-child" in f.read()
    except OSError:
        return False


def alive(pid):
    """Running (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def kill_child_pid(pid, sig):
    if is_test_child(pid) and alive(pid):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def stop_proc(p, sig=signal.SIGTERM, timeout=8):
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        except OSError:
            pass
    return p.returncode


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                    out[k] = int(v.split()[0])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1])
    except OSError:
        pass
    return out


def children_of(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


# --------------------------------------------------------------------------- etcd


class Etcd:
    def __init__(self, workdir):
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else workdir
        self.data = tempfile.mkdtemp(prefix="eae-bench-etcd-", dir=base)
        self.on_tmpfs = base == "/dev/shm"
        self.cport, self.pport = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{self.cport}"
        self.url = f"http://{self.endpoint}"
        self.logf = open(os.path.join(workdir, "etcd.log"), "wb")
        peer = f"http://127.0.0.1:{self.pport}"
        self.proc = PROCS.spawn(
            [
                ETCD, "--name", "bench", "--data-dir", self.data,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"bench={peer}",
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                "--logger", "zap", "--log-level", "warn",
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
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def count(self, prefix):
        r = self.post("/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                       "count_only": True})
        return int(r.get("count", 0))

    def keys(self, prefix):
        r = self.post("/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return r.get("kvs", [])

    def put(self, key, value):
        self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def delete(self, key):
        self.post("/v3/kv/deleterange", {"key": b64(key)})

    def granted_ttl(self, prefix):
        for kv in self.keys(prefix):
            lease = kv.get("lease")
            if lease and lease != "0":
                r = self.post("/v3/lease/timetolive", {"ID": lease})
                return int(r.get("grantedTTL", 0))
        return None

    def metrics(self):
        """{(metric, method): value} for the gRPC server counters, plus the watcher gauge."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
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


# --------------------------------------------------------------------------- command log


class ChildLog:
    """The records of eae-test-child: (kind, identity, pid, ns)."""

    def __init__(self, path):
        self.path = path
        open(path, "a").close()
        self.off = 0
        self.recs = []

    def poll(self):
        with open(self.path) as f:
            f.seek(self.off)
            data = f.read()
        end = data.rfind("\n") + 1
        self.off += len(data[:end].encode())
        for line in data[:end].splitlines():
            kind, ident, pid, ns = line.split()
            self.recs.append((kind, ident, int(pid), int(ns)))
            if kind == "start":
                PROCS.note_pid(int(pid))

    def find(self, kind, ident=None, after=0):
        for r in self.recs:
            if r[0] == kind and (ident is None or r[1] == ident) and r[3] >= after:
                return r
        return None

    def wait(self, kind, ident=None, timeout=10.0, after=0):
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            r = self.find(kind, ident, after)
            if r or time.monotonic() > deadline:
                return r
            time.sleep(0.002)


# --------------------------------------------------------------------------- TCP proxy


class Proxy:
    """Loopback TCP proxy to etcd; `blackhole()` keeps connections open but drops all bytes
    both ways (and accepts new connections only to drop their bytes too), like a cable cut."""

    def __init__(self, upstream_port):
        self.up = upstream_port
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = free_port()
        self.ls.bind(("127.0.0.1", self.port))
        self.ls.listen(64)
        self.holed = False
        self.closed = False
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.up))
            except OSError:
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()

    def _pump(self, a, b):
        peer = {a: b, b: a}
        try:
            while not self.closed:
                r, _, _ = select.select([a, b], [], [], 0.2)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    if not self.holed:
                        peer[s].sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def blackhole(self):
        self.holed = True

    def close(self):
        self.closed = True
        try:
            self.ls.close()
        except OSError:
            pass
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- candidates


class Bench:
    def __init__(self, args, workdir, etcd):
        self.args = args
        self.work = workdir
        self.etcd = etcd
        self.n = 0
        self.results = {}
        self.notes = {}

    def lockname(self, what):
        self.n += 1
        return f"bench-{what}-{self.n}"

    def env(self, childlog):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_AWAIT_ELECTION_")
               and not k.startswith("ETCDCTL_")}
        env["EAE_TEST_LOG"] = childlog.path
        return env

    def launch(self, tool, ident, lock, childlog, ttl=None, renew=None, endpoint=None,
               child_args=(), retry=None, legacy=None, force=False):
        endpoint = endpoint or self.etcd.endpoint
        env = self.env(childlog)
        err = open(os.path.join(self.work, f"{lock}-{ident}.log"), "ab")
        cmd = [CHILD, "--id", ident, *child_args]
        if tool == "ours":
            env.update({
                "ETCD_AWAIT_ELECTION_LOCK_NAME": lock,
                "ETCD_AWAIT_ELECTION_IDENTITY": ident,
                "ETCD_AWAIT_ELECTION_ENDPOINTS": endpoint,
            })
            if ttl:
                env["ETCD_AWAIT_ELECTION_LEASE_DURATION"] = str(ttl)
            if renew:
                env["ETCD_AWAIT_ELECTION_RENEW_DEADLINE"] = renew
            if retry:
                env["ETCD_AWAIT_ELECTION_RETRY_PERIOD"] = retry
            if legacy is not None:
                env["ETCD_AWAIT_ELECTION_LEGACY_LOCK"] = "true" if legacy else "false"
            if force:
                env["ETCD_AWAIT_ELECTION_FORCE_ACQUIRE"] = "true"
            argv = [EAE, "--", *cmd]
        else:
            argv = [ETCDCTL, "--endpoints", endpoint, "lock"]
            if ttl:
                argv.append(f"--ttl={ttl}")
            argv += ["--", lock, *cmd]  # cobra would parse the command's flags otherwise
        p = PROCS.spawn(argv, env=env, stdout=err, stderr=subprocess.STDOUT)
        err.close()
        return p

    def wait_queued(self, lock, count, base_watchers, timeout=15):
        """Until `count` keys are queued under LOCK/ and a new watch is up (the waiter's)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.etcd.count(lock + "/") >= count and self.etcd.watchers() >= base_watchers + 1:
                # A watch that starts at a past revision (etcdctl lock's does) is "unsynced"
                # until etcd's watch sync loop runs, every 100 ms: events in between are
                # delivered late. A long-waiting candidate is past that, so wait it out.
                time.sleep(0.3)
                return True
            time.sleep(0.01)
        return False

    def settle_watchers(self, pause=0.3):
        time.sleep(pause)
        return self.etcd.watchers()

    # ------------------------------------------------------------------ handover (exit)

    def handover(self, tool, rounds, how, legacy=None):
        """how = 'exit': the leader's command exits; 'sigterm': its wrapper gets SIGTERM."""
        lock = self.lockname(f"handover-{how}-{tool}")
        cl = ChildLog(os.path.join(self.work, f"{lock}.records"))
        ident = "c0"
        cur = self.launch(tool, ident, lock, cl, legacy=legacy)
        r = cl.wait("start", ident, 20)
        if not r:
            raise RuntimeError(f"{tool}: first candidate never started")
        samples, term_to_stop, observations = [], [], []
        cur_pid = r[2]
        for i in range(1, rounds + 1):
            base = self.settle_watchers()
            nident = f"c{i}"
            nxt = self.launch(tool, nident, lock, cl, legacy=legacy)
            if not self.wait_queued(lock, 2, base):
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
                self.notes.setdefault(f"handover-{how}-{tool}-exit-codes", set()).add(str(rc))
            cur, ident, cur_pid = nxt, nident, start[2]
        kill_child_pid(cur_pid, signal.SIGTERM)
        stop_proc(cur)
        return {"handover_ms": samples, "signal_to_stop_ms": term_to_stop,
                "observations": observations}

    # ------------------------------------------------------------------ force switchover

    def switchover(self, rounds, holder_tool, ttl=3):
        """A forcing candidate of ours takes over from a holder: one of ours (asked to yield: it
        stops its command through its SIGTERM handler) or `etcdctl lock` (never answers: it is
        deposed after RETRY_PERIOD and waited for until its lease ends; its command is ended by
        hand, since etcdctl never stops it). The old design waited the deposed lease's TTL."""
        out = {"gap_ms": [], "request_to_stop_ms": [], "stopped_by_term": 0}
        for i in range(rounds):
            lock = self.lockname(f"switchover-{holder_tool}")
            cl = ChildLog(os.path.join(self.work, f"{lock}.records"))
            holder = self.launch(holder_tool, "h", lock, cl, ttl=ttl, renew="2s", retry="1s")
            rh = cl.wait("start", "h", 20)
            if not rh:
                raise RuntimeError(f"switchover {i}: holder never started")
            t0 = now_ns()
            forcer = self.launch("ours", "f", lock, cl, ttl=ttl, renew="2s", retry="1s",
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

    # ------------------------------------------------------------------ failover (SIGKILL)

    def failover(self, tool, rounds, ttl=2):
        out = {"failover_minus_ttl_ms": [], "kill_to_start_ms": [], "old_cmd_gone_ms": [],
               "old_cmd_survived": 0, "granted_ttl": None, "expiry_minus_ttl_ms": [],
               "expiry_to_start_ms": []}
        for i in range(rounds):
            # Random phase of the new leader's keep-alives against etcd's 500 ms lessor tick:
            # without it every round starts a fixed delay after the previous expiry, and both
            # being 500 ms periodic, the phase (and the figure) would be the same each round.
            time.sleep(random.uniform(0, 0.5))
            lock = self.lockname(f"failover-{tool}")
            cl = ChildLog(os.path.join(self.work, f"{lock}.records"))
            renew = "1s" if tool == "ours" else None
            a = self.launch(tool, "a", lock, cl, ttl=ttl, renew=renew)
            ra = cl.wait("start", "a", 20)
            if not ra:
                raise RuntimeError(f"{tool}: leader never started")
            base = self.settle_watchers()
            b = self.launch(tool, "b", lock, cl, ttl=ttl, renew=renew)
            if not self.wait_queued(lock, 2, base):
                raise RuntimeError(f"{tool}: waiter never queued")
            if out["granted_ttl"] is None:
                out["granted_ttl"] = self.etcd.granted_ttl(lock + "/")
            time.sleep(random.uniform(0, 0.7))  # random phase against the keep-alives
            first = min(self.etcd.keys(lock + "/"), key=lambda kv: int(kv["create_revision"]))
            t0 = now_ns()
            a.kill()
            gone = expired = None
            while now_ns() - t0 < 6e9 and not (expired and (gone or now_ns() - t0 > 1e9)):
                if not gone and not alive(ra[2]):
                    gone = now_ns()
                if not expired and now_ns() - t0 > 1e9:  # etcd's view: the leader key deleted
                    keys = [kv["key"] for kv in self.etcd.keys(lock + "/")]
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
            kill_child_pid(ra[2], signal.SIGKILL)
            a.wait(5)
            if rb:
                kill_child_pid(rb[2], signal.SIGTERM)
            stop_proc(b)
        return out

    # ------------------------------------------------------------------ partition

    def partition(self, tool, rounds, ttl=2):
        out = {"cut_to_old_stop_ms": [], "cut_to_new_start_ms": [], "gap_ms": [],
               "old_never_stopped": 0, "old_exit_codes": []}
        for i in range(rounds):
            time.sleep(random.uniform(0, 0.5))  # random keep-alive phase, see failover()
            lock = self.lockname(f"partition-{tool}")
            cl = ChildLog(os.path.join(self.work, f"{lock}.records"))
            proxy = Proxy(self.etcd.cport)
            try:
                renew = "1s" if tool == "ours" else None
                a = self.launch(tool, "a", lock, cl, ttl=ttl, renew=renew, retry="500ms",
                                endpoint=f"127.0.0.1:{proxy.port}")
                ra = cl.wait("start", "a", 20)
                if not ra:
                    raise RuntimeError(f"{tool}: leader behind the proxy never started")
                base = self.settle_watchers()
                b = self.launch(tool, "b", lock, cl, ttl=ttl, renew=renew, retry="500ms")
                if not self.wait_queued(lock, 2, base):
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

    # ------------------------------------------------------------------ launch to start

    def launch_to_start(self, tool, rounds):
        out = []
        for i in range(rounds):
            lock = self.lockname(f"launch-{tool}")
            cl = ChildLog(os.path.join(self.work, f"{lock}.records"))
            t0 = now_ns()
            if tool == "direct":
                p = PROCS.spawn([CHILD, "--id", "x", "--exit-after", "0"], env=self.env(cl),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            else:
                p = self.launch(tool, "x", lock, cl, child_args=("--exit-after", "0"))
            r = cl.wait("start", "x", 15)
            if r:
                out.append((r[3] - t0) / MS)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                stop_proc(p, signal.SIGKILL)
            time.sleep(0.05)
        return out

    # ------------------------------------------------------------------ memory

    def memory(self, tool):
        lock = self.lockname(f"memory-{tool}")
        cl = ChildLog(os.path.join(self.work, f"{lock}.records"))
        a = self.launch(tool, "a", lock, cl)
        ra = cl.wait("start", "a", 20)
        base = self.settle_watchers()
        b = self.launch(tool, "b", lock, cl)
        self.wait_queued(lock, 2, base)
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

    # ------------------------------------------------------------------ idle requests

    def idle_requests(self, tool, ttl, window):
        lock = self.lockname(f"idle-{tool}")
        cl = ChildLog(os.path.join(self.work, f"{lock}.records"))
        # A leader that costs etcd nothing: a candidate key of the layout the wrappers count
        # (`LOCK/<hex of its own lease>`) on a long lease nobody renews during the window.
        lease = int(self.etcd.post("/v3/lease/grant", {"TTL": 3600})["ID"])
        holder = f"{lock}/{lease:x}"
        self.etcd.post("/v3/kv/put", {"key": b64(holder), "value": b64("placeholder-leader"),
                                      "lease": str(lease)})
        base = self.settle_watchers(0.1)
        w = self.launch(tool, "w", lock, cl, ttl=ttl)
        if not self.wait_queued(lock, 2, base):
            raise RuntimeError(f"{tool}: idle waiter never queued")
        time.sleep(1.0)
        m0 = self.etcd.metrics()
        t0 = time.monotonic()
        time.sleep(window)
        m1 = self.etcd.metrics()
        el = time.monotonic() - t0
        stop_proc(w)
        self.etcd.post("/v3/lease/revoke", {"ID": str(lease)})
        got = delta(m1, m0)
        return {"window_s": el, "ttl": ttl,
                "per_min": {k: v * 60 / el for k, v in got.items()},
                "stream_opens": delta(m1, m0, "grpc_server_started_total",
                                      skip=("Range", "Txn", "Put", "DeleteRange",
                                            "LeaseGrant", "LeaseRevoke", "LeaseTimeToLive"))}

    # ------------------------------------------------------------------ scale

    def scale(self, candidates, handovers):
        lock = self.lockname("scale")
        cl = ChildLog(os.path.join(self.work, f"{lock}.records"))
        procs = {}
        for i in range(candidates):
            ident = f"s{i:03d}"
            procs[ident] = self.launch("ours", ident, lock, cl)
            time.sleep(0.03)
        deadline = time.monotonic() + 60
        while self.etcd.count(lock + "/") < candidates and time.monotonic() < deadline:
            time.sleep(0.1)
        queued = self.etcd.count(lock + "/")
        # everyone's watch up: candidates-1 predecessor watches (+ the leader's own)
        while self.etcd.watchers() < candidates - 1 and time.monotonic() < deadline:
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
            m0 = self.etcd.metrics()
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
            m1 = self.etcd.metrics()
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

    # ------------------------------------------------------------------ exec overhead

    def overhead(self, runs):
        true = shutil.which("true") or "/bin/true"
        jf = os.path.join(self.work, "hyperfine.json")
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


# --------------------------------------------------------------------------- report


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


def fmt(x, unit="ms", digits=1):
    if x is None:
        return "–"
    return f"{x:.{digits}f} {unit}".strip()


def srow(s, digits=1):
    if not s:
        return "– | – | – | – | 0"
    return " | ".join(f"{s[k]:.{digits}f}" for k in ("p50", "p95", "min", "max")) + f" | {s['n']}"


def ratio(a, b):
    if not a or not b or b["p50"] <= 0:
        return "–"
    return f"{a['p50'] / b['p50']:.2f}×"


def verdict(ok):
    return "✅" if ok else "❌"


def write_report(path, R, meta):
    M = meta["machine"]
    L = []
    w = L.append
    w("# Benchmarks\n")
    w("Generated by `make bench` (`scripts/bench.py`); do not edit by hand — rerun it. "
      "Raw samples: `target/bench/results.json`.\n")
    w("## Machine and versions\n")
    w(f"- CPU: {M['nproc']} × {M['model']}; kernel {M['kernel']}")
    w(f"- etcd {M['etcd']} (single member on loopback, `--heartbeat-interval 100 "
      f"--election-timeout 1000`, data dir on {'tmpfs (/dev/shm)' if meta['tmpfs'] else 'disk'})")
    w(f"- etcd-await-election git {M['rev']}, `cargo build --release` (host target, glibc); "
      f"peer: `etcdctl lock` {M['etcd']}")
    w(f"- Date {meta['date']}; run took {meta['duration_s']:.0f} s; load average "
      f"{meta['load_before']} before, {meta['load_after']} after (1/5/15 min).")
    w("- Two cores run etcd, the candidates and this script together, and nothing isolates them "
      "from other load on the machine (see the load averages): tails (p95/max) move from run "
      "to run more than medians do, so medians are the figures to read.\n")

    w("## Summary\n")
    w("| Figure | etcd-await-election | etcdctl lock | ratio (ours/peer) | target | met |")
    w("|---|---|---|---|---|---|")
    for row in meta["summary"]:
        w("| " + " | ".join(row) + " |")
    w("")

    w("## Method\n")
    w("""- The command under test is always `target/release/eae-test-child`, for both tools. It
  writes `start`/`term`/`stop` records with `CLOCK_MONOTONIC` nanoseconds; the script's own
  timestamps (`time.clock_gettime_ns(CLOCK_MONOTONIC)`, taken just before `kill(2)` or
  `fork`) use the same clock.
- **Handover on exit**: a leader and one queued candidate (queued = its key exists under
  `LOCK/` and etcd's watcher gauge `etcd_debugging_mvcc_watcher_total` went up by one); the
  script SIGTERMs the leader's *command* (it writes `stop` and exits 143); figure = next
  command's `start` − old command's `stop`. A fresh candidate joins for every round.
  Ours with defaults (TTL 15 s, legacy lock on); `etcdctl lock` with its default `--ttl=10`.
- **Handover on SIGTERM**: same, but SIGTERM goes to the leader's *wrapper* (our wrapper
  forwards it to the command); figure = next `start` − old `stop`; also SIGTERM → old `stop`.
- **Failover after SIGKILL**: TTL 2 s for both (ours: renew deadline 1 s); SIGKILL to the
  leader's wrapper at a random phase of the keep-alive cycle; figure = next `start` − kill −
  granted TTL. The lease expires `TTL` after its *last renewal*, which preceded the kill by up
  to one keep-alive period (ours: min(TTL, renew deadline)/3 = 0.5 s; etcdctl: TTL/3), and etcd's
  lessor checks expiry every 500 ms: the expected window is about [−period, +500 ms].
  Each round starts after a random 0–500 ms pause, or the keep-alive phase would lock to the
  lessor's tick (the previous round ended on it). To split etcd's part from the tool's, the
  script polls etcd for the leader's key from 1 s after the kill (Range over HTTP, every
  ~3–5 ms): key deleted − kill − TTL is etcd's part, successor start − key deleted the tool's.
  We also time the old command's death (polling `/proc/PID/stat` every ms).
- **Partition**: the leader talks to etcd through a TCP proxy in the script; at the cut the
  proxy keeps the connections open but drops every byte both ways. TTL 2 s, renew deadline
  1 s, retry period 500 ms; the waiter talks to etcd directly. Figures: cut → old command's
  `stop`, cut → new command's `start`, and the gap between them (positive = no overlap).
- **Overhead without election**: `hyperfine -N --warmup 50` of `etcd-await-election true` vs
  `true` (no `ETCD_AWAIT_ELECTION_*` variable set: the wrapper just `exec`s).
- **Launch → start**: uncontended lock, time from just before `Popen` to the command's `start`
  record. "direct" is the command itself spawned by the script (the fork/exec floor).
- **Memory**: `VmRSS`, `RssAnon`, `Pss` (smaps_rollup) and `Threads` from `/proc/PID/` 3 s after
  a waiter queued behind a leader; the leading wrapper's guardian (a `fork` of the wrapper
  that only waits on a pipe) is reported separately: its `VmRSS` counts pages shared
  copy-on-write with the wrapper, `Pss` splits them.
- **Idle requests**: a placeholder key without a lease holds the head of `LOCK/` (a leader that
  costs etcd nothing); one candidate waits behind it; we diff etcd's
  `grpc_server_msg_received_total` by `grpc_method` over the window (for unary methods one
  message = one request; for streams, one message = one keep-alive or one watch create/cancel).
- **Scale**: N of our candidates on one lock (started 30 ms apart); the leader's command is
  SIGTERMed; figure = successor's `start` − old `stop`; requests per handover = all gRPC
  messages received by etcd from the SIGTERM until 0.5 s after the old wrapper exited, minus the
  background `LeaseKeepAlive` stream (reported separately). We also check that exactly one
  command started per handover.
""")

    w("## Details\n")
    w("All times in ms.\n")
    w("| Scenario | tool | p50 | p95 | min | max | n |")
    w("|---|---|---|---|---|---|---|")
    for name, tool, s in meta["detail_rows"]:
        w(f"| {name} | {tool} | {srow(s)} |")
    w("")
    for title, body in meta["sections"]:
        w(f"### {title}\n")
        w(body.strip() + "\n")
    with open(path, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")


# --------------------------------------------------------------------------- main


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
            run("overhead", "exec overhead (hyperfine)", B.overhead, N["hyperfine_runs"])
        if want("launch"):
            for tool in ("direct", "ours", "etcdctl"):
                run(f"launch_{tool}", f"launch -> start: {tool}", B.launch_to_start, tool,
                    N["launch"])
        if want("handover"):
            for tool in ("ours", "etcdctl"):
                run(f"handover_exit_{tool}", f"handover on command exit: {tool}", B.handover,
                    tool, N["handover"], "exit")
            run("handover_exit_ours_nolegacy", "handover on command exit: ours, legacy lock off",
                B.handover, "ours", N["handover"], "exit", False)
        if want("sigterm"):
            run("handover_sigterm_ours", "handover on wrapper SIGTERM: ours", B.handover,
                "ours", N["handover"], "sigterm")
            run("handover_sigterm_etcdctl", "handover on wrapper SIGTERM: etcdctl", B.handover,
                "etcdctl", N["sigterm_peer"], "sigterm")
        if want("switchover"):
            run("switchover_ours", "force switchover: holder of ours yields", B.switchover,
                N["switchover"], "ours")
            run("switchover_etcdctl", "force switchover: etcdctl lock holder fenced out",
                B.switchover, N["switchover_peer"], "etcdctl")
        if want("memory"):
            for tool in ("ours", "etcdctl"):
                run(f"memory_{tool}", f"memory: {tool}", B.memory, tool)
        if want("idle"):
            # defaults: ours TTL 15 s / renew deadline 10 s (keep-alive every 3.3 s);
            # etcdctl lock --ttl=10 (keep-alive every TTL/3 = 3.3 s)
            for tool, ttl in (("ours", None), ("etcdctl", None)):
                run(f"idle_{tool}", f"idle requests: {tool}", B.idle_requests, tool, ttl,
                    N["idle_window"])
        if want("failover"):
            run("failover_ours", "failover after SIGKILL: ours", B.failover, "ours",
                N["failover"])
            run("failover_etcdctl", "failover after SIGKILL: etcdctl", B.failover, "etcdctl",
                N["failover_peer"])
        if want("partition"):
            run("partition_ours", "partition: ours", B.partition, "ours", N["partition"])
            run("partition_etcdctl", "partition: etcdctl", B.partition, "etcdctl",
                N["partition_peer"])
        if want("scale"):
            run("scale", f"scale: {N['scale']} candidates", B.scale, N["scale"],
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


def ok(x):
    return isinstance(x, (list, dict)) and not (isinstance(x, dict) and "error" in x)


def err(x):
    return x.get("error") if isinstance(x, dict) else None


def kib_mib(k):
    return f"{k / 1024:.1f} MiB" if k is not None else "–"


def report(out, R, meta):
    """Summary table, detail table and sections from the raw results."""
    g = R.get
    summary, rows, sections = [], [], []
    S = {}  # name -> stats

    def st(key, *path):
        x = g(key)
        if not ok(x):
            return None
        for p in path:
            x = x.get(p) if isinstance(x, dict) else None
        return stats(x) if isinstance(x, list) else None

    def p50p95(s):
        return f"{s['p50']:.1f} / {s['p95']:.1f} ms" if s else "–"

    def failed(key):
        return f"failed: {err(g(key))}" if err(g(key)) else "–"

    # --- handover on exit
    ho, hp = st("handover_exit_ours", "handover_ms"), st("handover_exit_etcdctl", "handover_ms")
    rows += [("handover, command exits (next start − old stop)", "ours", ho),
             ("handover, command exits (next start − old stop)", "etcdctl lock", hp),
             ("handover, command exits, `ETCD_AWAIT_ELECTION_LEGACY_LOCK=false`", "ours",
              st("handover_exit_ours_nolegacy", "handover_ms"))]
    summary.append(["Handover when the leader's command exits, p50 / p95",
                    p50p95(ho) if ho else failed("handover_exit_ours"),
                    p50p95(hp) if hp else failed("handover_exit_etcdctl"),
                    ratio(ho, hp), "p50 ≤ 20 ms", verdict(ho and ho["p50"] <= 20)])

    # --- handover on SIGTERM
    so = st("handover_sigterm_ours", "handover_ms")
    sso = st("handover_sigterm_ours", "signal_to_stop_ms")
    sp = g("handover_sigterm_etcdctl")
    rows += [("handover, wrapper SIGTERM (next start − old stop)", "ours", so),
             ("wrapper SIGTERM → old command's stop", "ours", sso)]
    peer_txt = "–"
    if ok(sp):
        obs = sp.get("observations", [])
        n = len(obs)
        kept = sum(o["command_alive_after_2s"] and not o["command_got_term"] for o in obs)
        nxt = sum(o["next_started_within_2s"] for o in obs)
        peer_txt = (f"no handover: SIGTERM ignored while the command runs ({kept}/{n} rounds: "
                    f"command untouched 2 s later, successor started in {nxt}/{n})")
        rows.append(("etcdctl: handover once the command was then ended by hand", "etcdctl lock",
                     stats(sp["handover_ms"])))
        sections.append(("etcdctl lock on SIGTERM", f"""
`etcdctl lock NAME CMD` catches SIGINT/SIGTERM (`signal.Notify`) only to cancel a `Lock()` still
in progress; once the command runs, `cmd.Run()` is simply waited for, the signal is not passed on,
and the lock is released (`Unlock`, a delete of its key) only when the command exits by itself.
Observed in {n} rounds, 2 s after SIGTERM to `etcdctl`: command got SIGTERM in
{sum(o['command_got_term'] for o in obs)}/{n}; command still running in
{sum(o['command_alive_after_2s'] for o in obs)}/{n}; `etcdctl` still running in
{sum(o['etcdctl_alive_after_2s'] for o in obs)}/{n}; successor started in {nxt}/{n}.
When the command was then SIGTERMed directly, the successor started
{p50p95(stats(sp['handover_ms']))} (p50 / p95) after the command's exit. Exit code of `etcdctl`
afterwards: {', '.join(R.get('notes', {}).get('handover-sigterm-etcdctl-exit-codes', ['?']))}
(a command killed by a signal makes `etcdctl` report an error). Its SIGKILL behaviour is worse: see failover.
"""))
    summary.append(["Handover when the leader's wrapper gets SIGTERM (next start − old stop), "
                    "p50 / p95", p50p95(so) if so else failed("handover_sigterm_ours"), peer_txt,
                    "–", "p50 ≤ 30 ms", verdict(so and so["p50"] <= 30)])

    # --- force switchover
    sw, swp = st("switchover_ours", "gap_ms"), st("switchover_etcdctl", "gap_ms")
    rows += [("force switchover, holder of ours yields (forcer start − old stop)", "ours", sw),
             ("force switchover: forcer launched → old command's stop", "ours",
              st("switchover_ours", "request_to_stop_ms")),
             ("force switchover, holder that never yields (`etcdctl lock`, its command ended by "
              "hand 200 ms in): deposed, waited for until its lease ended", "ours", swp)]
    swo = g("switchover_ours")
    summary.append(["Force acquire: old command's stop → forcer's start, p50 / p95 (the old "
                    "design waited the deposed lease's TTL: 3 s here, 15 s at the defaults)",
                    p50p95(sw) if sw else failed("switchover_ours"),
                    p50p95(swp) if swp else failed("switchover_etcdctl"), "–",
                    "p50 < 50 ms, old command ends by its SIGTERM handler",
                    verdict(sw and sw["p50"] < 50 and ok(swo)
                            and swo["stopped_by_term"] == len(swo["gap_ms"]))])

    # --- failover
    fo, fp = st("failover_ours", "failover_minus_ttl_ms"), st("failover_etcdctl",
                                                              "failover_minus_ttl_ms")
    go = st("failover_ours", "old_cmd_gone_ms")
    rows += [("failover after SIGKILL − TTL (2 s)", "ours", fo),
             ("failover after SIGKILL − TTL (2 s)", "etcdctl lock", fp),
             ("SIGKILL of wrapper → old command dead", "ours", go),
             ("failover: leader key deleted by etcd − kill − TTL (etcd's part; 3–5 ms polling)",
              "ours", st("failover_ours", "expiry_minus_ttl_ms")),
             ("failover: leader key deleted by etcd − kill − TTL (etcd's part; 3–5 ms polling)",
              "etcdctl lock", st("failover_etcdctl", "expiry_minus_ttl_ms")),
             ("failover: key deleted → successor's command start (the tool's part)", "ours",
              st("failover_ours", "expiry_to_start_ms")),
             ("failover: key deleted → successor's command start (the tool's part)",
              "etcdctl lock", st("failover_etcdctl", "expiry_to_start_ms"))]
    fpo = g("failover_etcdctl")
    eo = st("failover_ours", "expiry_to_start_ms")
    surv = (f"; old command survived the SIGKILL in {fpo['old_cmd_survived']}/"
            f"{fpo['old_cmd_survived'] + len(fpo['old_cmd_gone_ms'])} rounds (orphaned, "
            f"still running beside the new leader)") if ok(fpo) else ""
    fog = g("failover_ours")
    summary.append(["Failover after the leader's wrapper is SIGKILLed, minus granted TTL "
                    f"({fog.get('granted_ttl') if ok(fog) else '?'} s), p50 / p95 "
                    "(negative: the lease was last renewed before the kill)",
                    (p50p95(fo) + (f"; of which after etcd deleted the key: "
                                   f"{eo['p50']:.1f} ms p50" if eo else "")
                     + (f"; old command killed by the guardian {go['p50']:.1f} ms after the "
                        f"SIGKILL (p50)" if go else "")) if fo else
                    failed("failover_ours"),
                    (p50p95(fp) + surv) if fp else failed("failover_etcdctl"),
                    "–", "≤ 250 ms", verdict(fo and fo["p50"] <= 250)
                    + (" (p50; max " + f"{fo['max']:.0f} ms" + ")" if fo and fo["max"] > 250 else "")])

    # --- partition
    pco, pno, pgo = (st("partition_ours", k) for k in
                     ("cut_to_old_stop_ms", "cut_to_new_start_ms", "gap_ms"))
    pnp = st("partition_etcdctl", "cut_to_new_start_ms")
    rows += [("partition: cut → old command stopped", "ours", pco),
             ("partition: cut → new command started", "ours", pno),
             ("partition: old stop → new start (gap, > 0 = no overlap)", "ours", pgo),
             ("partition: cut → new command started", "etcdctl lock", pnp)]
    pp = g("partition_etcdctl")
    po = g("partition_ours")
    summary.append(["Partition (TTL 2 s, renew deadline 1 s): cut → old command stopped; "
                    "cut → new started, p50",
                    (f"{pco['p50']:.0f} ms; {pno['p50']:.0f} ms (gap ≥ {pgo['min']:.0f} ms, "
                     f"never overlapping)" if pco and pno and pgo else failed("partition_ours")),
                    (f"never stopped ({pp['old_never_stopped']}/{pp['old_never_stopped'] + len(pp['cut_to_old_stop_ms'])} rounds); "
                     f"{pnp['p50']:.0f} ms: both run at once" if ok(pp) and pnp else
                     failed("partition_etcdctl")),
                    "–", "(no target)", "–"])

    # --- overhead
    ov = g("overhead")
    if ok(ov) and len(ov) >= 2:
        wr, tr = ov[:2]
        sw, stt = stats(wr["times_ms"]), stats(tr["times_ms"])
        rows += [("`etcd-await-election true` (exec only)", "ours", sw),
                 ("`true`", "–", stt)]
        extra = sw["p50"] - stt["p50"]
        if len(ov) == 3:
            sm = stats(ov[2]["times_ms"])
            rows.append(("`etcd-await-election true`, static musl binary", "ours", sm))
            summary.append(["Overhead without election, static musl binary (the shipped one): "
                            "`etcd-await-election true` − `true`, hyperfine medians",
                            f"+{sm['p50'] - stt['p50']:.2f} ms ({sm['p50']:.2f} vs "
                            f"{stt['p50']:.2f} ms)", "n/a", "–", "≤ 1 ms",
                            verdict(sm["p50"] - stt["p50"] <= 1)])
        summary.append(["Overhead without election, host build (glibc, dynamically linked)",
                        f"+{extra:.2f} ms ({sw['p50']:.2f} vs {stt['p50']:.2f} ms; means "
                        f"{wr['mean_ms']:.2f} vs {tr['mean_ms']:.2f} ms)", "n/a", "–", "≤ 1 ms",
                        verdict(extra <= 1) + ("" if extra <= 1 else " (dynamic loader; see "
                                                "below)")])
    else:
        summary.append(["Overhead without election", failed("overhead"), "n/a", "–", "≤ 1 ms",
                        "–"])

    # --- launch
    lo, lp, ld = st("launch_ours"), st("launch_etcdctl"), st("launch_direct")
    rows += [("launch → command start, uncontended", "ours", lo),
             ("launch → command start, uncontended", "etcdctl lock", lp),
             ("launch → command start, no wrapper (spawn floor)", "direct", ld)]
    summary.append(["Launch → command start, uncontended, p50 / p95",
                    p50p95(lo) if lo else failed("launch_ours"),
                    p50p95(lp) if lp else failed("launch_etcdctl"), ratio(lo, lp), "p50 ≤ 30 ms",
                    verdict(lo and lo["p50"] <= 30)])

    # --- memory
    mo, mp = g("memory_ours"), g("memory_etcdctl")
    if ok(mo) and ok(mp):
        wo, lo_, gd = mo["waiting"], mo["leading"], mo.get("guardian", {})
        summary.append(["Memory, VmRSS (threads): waiting / leading wrapper (+ guardian)",
                        f"{kib_mib(wo.get('VmRSS'))} ({wo.get('Threads')}) / "
                        f"{kib_mib(lo_.get('VmRSS'))} ({lo_.get('Threads')}) + guardian "
                        f"{kib_mib(gd.get('VmRSS'))} (Pss {kib_mib(gd.get('Pss'))})",
                        f"{kib_mib(mp['waiting'].get('VmRSS'))} ({mp['waiting'].get('Threads')}) / "
                        f"{kib_mib(mp['leading'].get('VmRSS'))} ({mp['leading'].get('Threads')})",
                        f"{wo['VmRSS'] / mp['waiting']['VmRSS']:.2f}× / "
                        f"{(lo_['VmRSS'] + gd.get('VmRSS', 0)) / mp['leading']['VmRSS']:.2f}×",
                        "≤ 6 MiB",
                        verdict(max(wo["VmRSS"], lo_["VmRSS"] + gd.get("VmRSS", 0)) <= 6 * 1024)])
        mrows = ["| process | VmRSS | RssAnon | RssFile | Pss | Threads |", "|---|---|---|---|---|---|"]
        for tool, m in (("ours", mo), ("etcdctl lock", mp)):
            for role in ("waiting", "leading", "guardian", "command"):
                if role in m:
                    x = m[role]
                    mrows.append(f"| {tool} {role} | {x.get('VmRSS', '–')} KiB | "
                                 f"{x.get('RssAnon', '–')} KiB | {x.get('RssFile', '–')} KiB | "
                                 f"{x.get('Pss', '–')} KiB | {x.get('Threads', '–')} |")
        sections.append(("Memory", "\n".join(mrows) + """

Most of our wrapper's RSS is file-backed (the mapped binary and libc), shared between instances;
`RssAnon` is its private memory. The guardian is a `fork` of the wrapper that only blocks in
`read(2)` on a pipe: its `VmRSS` counts pages it still shares copy-on-write with the wrapper, so
its own cost is closer to its `Pss`/`RssAnon`. `command` is `eae-test-child` (same for both).
"""))
    else:
        summary.append(["Memory", failed("memory_ours"), failed("memory_etcdctl"), "–", "≤ 6 MiB",
                        "–"])

    # --- size
    sz = g("sizes", {})
    musl = sz.get("musl")
    summary.append(["Binary size, static musl release (`make release`)",
                    (f"{musl['bytes'] / 2**20:.2f} MiB ({musl['bytes']} B, built {musl['mtime']})"
                     if musl else "not built (run `make release`)"),
                    (f"{sz['etcdctl']['bytes'] / 2**20:.1f} MiB (Debian etcdctl, Go, "
                     f"not stripped)" if "etcdctl" in sz else "–"),
                    (f"{musl['bytes'] / sz['etcdctl']['bytes']:.2f}×" if musl and "etcdctl" in sz
                     else "–"),
                    "≤ 3 MiB", verdict(musl and musl["bytes"] <= 3 * 2**20) if musl else "–"])

    # --- idle
    io, ip = g("idle_ours"), g("idle_etcdctl")
    if ok(io) and ok(ip):
        def fmt_idle(x):
            return ", ".join(f"{k} {v:.1f}" for k, v in sorted(x["per_min"].items())) or "none"
        only_ka = set(io["per_min"]) <= {"LeaseKeepAlive"}
        tot_o, tot_p = sum(io["per_min"].values()), sum(ip["per_min"].values())
        summary.append([f"etcd requests per idle waiting candidate per minute "
                        f"({io['window_s']:.0f} s window)",
                        f"{fmt_idle(io)} (TTL 15 s, renew deadline 10 s)",
                        f"{fmt_idle(ip)} (--ttl 10)",
                        f"{tot_o / tot_p:.2f}×" if tot_p else "–",
                        "only LeaseKeepAlive", verdict(only_ka)])
    else:
        summary.append(["Idle requests per minute", failed("idle_ours"), failed("idle_etcdctl"),
                        "–", "only LeaseKeepAlive", "–"])

    # --- scale
    sc = g("scale")
    if ok(sc):
        ss = stats(sc["handover_ms"])
        rows.append((f"handover with {sc['candidates']} waiting candidates", "ours", ss))
        rq = sc["requests_per_handover"]
        by = ", ".join(f"{k} {v:.1f}" for k, v in sorted(sc["requests_by_method_avg"].items()))
        kas = sc["keepalives_per_s_background"]
        ka = sum(k for k, _ in kas) / max(1e-9, sum(d for _, d in kas))
        summary.append([f"Scale: {sc['candidates']} candidates on one lock: handover p50 / p95; "
                        "etcd requests per handover",
                        f"{p50p95(ss)}; {min(rq):.0f}–{max(rq):.0f} requests ({by})", "not run",
                        "–", "p50 ≤ 50 ms, O(1) requests",
                        verdict(ss["p50"] <= 50 and max(rq) <= 10)])
        rss = sc["rss_kib_waiting"]
        sections.append(("Scale", f"""
{sc['candidates']} wrappers queued ({sc['queued']} keys under `LOCK/`), RSS per waiting wrapper
{min(rss) / 1024:.1f}–{max(rss) / 1024:.1f} MiB (VmRSS, mostly shared file pages). Exactly one
command started per handover (checked). Requests etcd received per handover (excluding the
keep-alive stream): {', '.join(f'{x:.0f}' for x in rq)}; by method on average: {by}. That is
the old leader's `LeaseRevoke`, and for the successor only: the `Txn` that reads head /
predecessor / own key, the `Txn` that takes the legacy lock key (`ETCD_AWAIT_ELECTION_LEGACY_LOCK`,
on by default), the `Txn` that checks its own key (and the legacy key) before watching them, and
the two watch creates on those keys — the other {sc['candidates'] - 2} waiters send
nothing: each watches only its predecessor's key. With the legacy lock off it would be one `Txn`
and one watch fewer. Background keep-alives over all handover windows
({sum(d for _, d in kas):.1f} s in all; they come in bursts, so short windows are noisy):
{ka:.1f}/s for {sc['candidates'] - 1} candidates (each renews every min(TTL, renew
deadline)/3 = 3.3 s: expected {(sc['candidates'] - 1) / 3.33:.1f}/s). Teardown (SIGTERM to
all, each withdraws by revoking its lease): {sc['teardown_s']:.1f} s.
"""))
    else:
        summary.append(["Scale", failed("scale"), "not run", "–", "p50 ≤ 50 ms, O(1) requests",
                        "–"])

    if ok(io) and ok(ip):
        sections.append(("Idle requests", f"""
Per minute, by gRPC method (`grpc_server_msg_received_total` deltas over
{io['window_s']:.1f} s): ours {fmt_idle(io)}; etcdctl lock {fmt_idle(ip)}. Both renew every
3.3 s with their default settings (ours: min(TTL 15 s, renew deadline 10 s)/3; etcdctl: TTL
10 s/3), i.e. 18 keep-alives a minute; the watch on the predecessor is one long-lived stream that
costs etcd nothing while idle (gRPC-level HTTP/2 pings, every 10 s for ours, are not requests).
A window that is not a multiple of the period catches one renewal more or less: ±{60 / io['window_s']:.0f}/min.
"""))
    if ok(pp) and ok(po):
        sections.append(("Partition", f"""
Ours: the leader behind the blackholed proxy stops its command when no renewal succeeded for the
renew deadline (1 s after the last successful renewal, i.e. {pco['min'] if pco else 0:.0f}–{pco['max'] if pco else 0:.0f} ms
after the cut depending on the keep-alive phase); its lease expires on the server 2 s after the
last renewal, and etcd's lessor notices within its 500 ms check interval, so the waiter starts
{pno['min'] if pno else 0:.0f}–{pno['max'] if pno else 0:.0f} ms after the cut. Exit codes of the cut-off wrapper:
{po['old_exit_codes']} (75 = leadership lost).
etcdctl lock never stops its command when its session is lost while the command runs (it only
watches `session.Done()` when run without a command): the old command was still running in
{pp['old_never_stopped']} of {pp['old_never_stopped'] + len(pp['cut_to_old_stop_ms'])} rounds when the new one started.
"""))

    if sz:
        sections.append(("Binary sizes", "\n".join(
            f"- {k}: `{v['path']}` {v['bytes']} B ({v['bytes'] / 2**20:.2f} MiB), built {v['mtime']}"
            for k, v in sz.items()) + """

The static binary is the one `make release` left in `target/`; `make bench` does not rebuild it
(it times the host release build, which runs the same code).
"""))
    sections.append(("What limits the figures", f"""
- **Handover** (ours {ho['p50'] if ho else 0:.1f} ms p50): after the command exits the wrapper
  kills and waits for the rest of its process group, releases the guardian, revokes its lease
  (one raft commit; etcd's data dir is on tmpfs here, so no fsync cost — on a real disk add one
  fsync, typically 1–10 ms), etcd delivers the delete event to the successor's watch, which then
  does one read `Txn` and one write `Txn` (the legacy lock key: a second commit) and fork/execs
  the command (+ the guardian fork). `etcdctl lock` ({hp['p50'] if hp else 0:.1f} ms) does the same kind of work
  (its `Unlock` deletes the key, the successor's watch fires, one `Get`, exec), so the two are
  on par once the successor has waited a while. One difference shows only when the successor
  has just queued: `etcdctl lock` watches its predecessor from a *past* revision, which puts the
  watch in etcd's "unsynced" group until the watch sync loop runs (every 100 ms), so a handover
  in that window took 30–50 ms p50 in an earlier run; ours watches from the read's revision + 1
  (a future revision) and is synced at once. The script waits 300 ms after a candidate queued.
- **Exec overhead without election**: the wrapper parses its options and environment and
  `execve`s the command — `strace` shows nothing else (about 90 system calls in all, most of
  them the loader's; the only file it opens itself is `/proc/self/maps`, read by glibc's
  `pthread_getattr_np` for Rust's main-thread stack guard). The cost is one extra `execve` of
  a 2.3 MiB binary plus, for the host build, the dynamic loader (libgcc_s and libc mapped,
  relocated, initialised), so it scales with the machine's speed at the time (`true` alone
  took {stt['p50'] if ok(ov) else 0:.2f} ms in this run; on this shared VM it varied between 0.6 and 0.9 ms from run
  to run, and the host build's overhead with it, between +0.75 and +1.4 ms). The static
  build, which is what ships, skips the loader and stays under 1 ms. Not a wrapper
  inefficiency.
- **Failover after SIGKILL** is set by etcd, not by the wrapper: the lease lives until TTL
  after its last renewal, and etcd 3.4's lessor looks for expired leases only every 500 ms, so
  the key goes between −(keep-alive period) and +500 ms around kill + TTL (ours renews every
  0.33 s with TTL 2 s / renew deadline 1 s; `etcdctl lock`'s client every 1 s: its
  TTL/3 = 0.67 s rounded up to its 500 ms send tick). Successor start − key deletion, the
  tool's own part, is {eo['p50'] if eo else 0:.1f} ms p50 for ours. So the ≤ 250 ms target holds for the median
  but cannot hold for every sample: up to 500 ms is etcd's lessor granularity.
- **Partition**: the cut-off leader stops its command exactly at the renew deadline after its
  last successful renewal (1 s here); the successor cannot start before the lease expires
  (TTL 2 s after the same renewal, + up to 500 ms lessor granularity), so the gap between them
  is TTL − renew deadline ± lessor granularity, by design.
- **Launch → start** ({lo['p50'] if lo else 0:.1f} ms p50 vs a {ld['p50'] if ld else 0:.1f} ms spawn floor): process start, the
  tokio runtime and the HTTP/2 connection, then the sequential requests of joining — a `Range`
  (adopt a key left by a previous life), `LeaseGrant`, the create `Txn`, the legacy-lock cleanup
  `Txn`, the keep-alive stream, the `Txn` of `wait_turn` and the legacy lock `Txn` — each a
  loopback round trip, three of them raft commits.
- **Memory**: a statically linked Rust binary with a single-threaded tokio runtime: 3 threads
  (main, signals, election). Most of `VmRSS` is the binary's own mapped text.
"""))
    write_report(out, R, dict(meta, summary=summary, detail_rows=rows, sections=sections))


if __name__ == "__main__":
    main()
