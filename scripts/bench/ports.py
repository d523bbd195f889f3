"""Loopback ports for etcd and the proxy, reserved by the machine-wide protocol the tests use."""

import fcntl
import os
import random
import socket


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
