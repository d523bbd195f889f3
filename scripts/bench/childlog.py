"""The records eae-test-child appends (start, term, stop with CLOCK_MONOTONIC nanoseconds): the
commands' own view of every handover."""

import time

from .procs import PROCS



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
