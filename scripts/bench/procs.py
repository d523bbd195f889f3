"""Every process started here (so it can all be stopped whatever happens), and what /proc says
about a process: alive or not, its memory, its children."""

import os
import signal
import subprocess
import threading



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

    def kill_all(self, spare=()):
        """SIGKILL everything but the processes in `spare` (the etcds, between scenarios)."""
        for p in list(self.popens):
            if p not in spare and p.poll() is None:
                try:
                    p.kill()
                except OSError:
                    pass
        for pid in list(self.pids):
            kill_child_pid(pid, signal.SIGKILL)
        for p in list(self.popens):
            if p not in spare:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        self.reap()
        # A dead command's pid may be reused, by someone else's eae-test-child too.
        self.pids = {pid for pid in self.pids if alive(pid)}


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


def cpu_s(pid):
    """CPU time the process has used (utime + stime), in seconds; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids
