"""What the machine has left for a fleet: tasks (every thread takes a pid, up to kernel.pid_max
and kernel.threads-max, and a user's RLIMIT_NPROC unless root), memory (MemAvailable) and CPU (the
candidates' own at rest). A fleet stops growing where it would leave less than a reserve for the
machine's other users (other engineers build and test here at the same time: a fork that fails
for lack of a pid, or two cores taken by idle Go runtimes, breaks their run, not ours). Reads
/proc only; starts nothing."""

import os
import resource
import time

from .procs import cpu_s

PID_RESERVE = 8192  # tasks left free for everyone else
MEM_RESERVE_KIB = 4 << 20  # MemAvailable left free: 4 GiB, a release build's link and more
# The most of the machine's CPU the candidates may use at rest, doing nothing but waiting: beyond
# it etcd and everyone else starve (2,000 idle `etcdctl lock` processes took a core of two here,
# and the machine's load went to hundreds).
CPU_SHARE = 3 / 8


def _read(path):
    with open(path) as f:
        return f.read()


def now():
    """The machine's tasks and memory at this moment, and the limits they run into."""
    tasks = int(_read("/proc/loadavg").split()[3].split("/")[1])
    mem = {}
    for line in _read("/proc/meminfo").splitlines():
        k, _, v = line.partition(":")
        if k in ("MemTotal", "MemAvailable"):
            mem[k] = int(v.split()[0])
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if nproc == resource.RLIM_INFINITY or os.geteuid() == 0:
        nproc = None  # the kernel does not hold root to it
    return {"tasks": tasks, "pid_max": int(_read("/proc/sys/kernel/pid_max")),
            "threads_max": int(_read("/proc/sys/kernel/threads-max")),
            "rlimit_nproc": nproc,
            "mem_total_kib": mem["MemTotal"], "mem_available_kib": mem["MemAvailable"]}


def exhausted():
    """None while there is room for one more candidate; else what ran out, with the readings."""
    h = now()
    task_cap = min(x for x in (h["pid_max"], h["threads_max"], h["rlimit_nproc"]) if x)
    if h["tasks"] >= task_cap - PID_RESERVE:
        return dict(h, limit="tasks", reserve=PID_RESERVE, task_cap=task_cap)
    if h["mem_available_kib"] <= MEM_RESERVE_KIB:
        return dict(h, limit="memory", reserve_kib=MEM_RESERVE_KIB)
    return None


class IdleCpu:
    """What the candidates cost the host's CPU at rest, measured while the fleet grows: the
    utime + stime, since the last look, of the candidates that were already started at the look
    before (past their start-up), per candidate."""

    def __init__(self):
        self.base = None  # (time, pids, their CPU seconds then)
        self.started = 0  # candidates started at the last look

    def look(self, pids):
        """`pids`: every candidate started so far, in order. Returns the share of one core a
        settled candidate used since the last look (None the first time)."""
        now = time.monotonic()
        per = None
        if self.base and self.base[1]:
            t0, settled, cpu0 = self.base
            per = (sum(map(cpu_s, settled)) - cpu0) / (now - t0) / len(settled)
        settled = pids[:self.started]
        self.base, self.started = (now, settled, sum(map(cpu_s, settled))), len(pids)
        return per

    @staticmethod
    def budget():
        """Cores the candidates may use at rest."""
        return CPU_SHARE * (os.cpu_count() or 1)
