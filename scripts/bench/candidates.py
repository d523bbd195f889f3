"""Starting candidates (ours or `etcdctl lock`, each running eae-test-child) on a lock, and
waiting until one is queued: what every scenario is built from."""

import itertools
import os
import subprocess
import time

from .base import CHILD, EAE, ETCDCTL
from .procs import PROCS

_locks = itertools.count(1)  # lock names (and their log files) are unique across etcds


class Bench:
    """The candidates of one etcd; `notes` (odd exit codes) is shared by all of a run's."""

    def __init__(self, workdir, etcd, notes):
        self.work = workdir
        self.etcd = etcd
        self.notes = notes

    def lockname(self, what):
        return f"bench-{what}-{next(_locks)}"

    def env(self, childlog):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_AWAIT_ELECTION_")
               and not k.startswith("ETCDCTL_")}
        env["EAE_TEST_LOG"] = childlog.path
        return env

    def launch(self, tool, ident, lock, childlog, ttl=None, renew=None, endpoint=None,
               child_args=(), retry=None, legacy=None, force=False, status=None):
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
            if status:
                env["ETCD_AWAIT_ELECTION_STATUS_ENDPOINT"] = status
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

