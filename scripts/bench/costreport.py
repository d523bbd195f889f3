"""The cost of a lock to etcd in BENCHMARKS.md, from cost.py's results: in all and by role
(the leader, the waiter next in line, a waiter further back), ours next to `etcdctl lock`; the
summary rows, their targets and the section that explains them."""

from .cost import SIZES, TTL
from .markdown import verdict

ROLES = (
    ("leader", "the leader alone", "a lock of 1"),
    ("next", "the waiter next in line", f"a lock of {SIZES[1]} − a lock of 1"),
    ("back", "a waiter further back",
     f"(a lock of {SIZES[-1]} − a lock of {SIZES[1]}) / {SIZES[-1] - SIZES[1]}"),
)


def per_min(group):
    return {k: v * 60 / group["window_s"] for k, v in group["messages"].items()}


def minus(a, b, n=1):
    """(a − b) / n by method, methods that come to nothing left out."""
    out = {k: (a.get(k, 0) - b.get(k, 0)) / n for k in sorted(set(a) | set(b))}
    return {k: v for k, v in out.items() if abs(v) >= 0.05}


def figures(c):
    """{tool: {"total", "leader", "next", "back", "waiter": {method: messages a minute}}};
    "waiter" is the mean of all the waiters of the big lock (for `etcdctl lock`, whose waiters
    are all alike, the figure its waiter is compared by)."""
    G = {(g["tool"], g["size"]): per_min(g) for g in c["groups"]}
    one, two, big = SIZES
    out = {}
    for tool in {t for t, _ in G}:
        out[tool] = {"total": G[tool, big], "leader": G[tool, one],
                     "next": minus(G[tool, two], G[tool, one]),
                     "back": minus(G[tool, big], G[tool, two], big - two),
                     "waiter": minus(G[tool, big], G[tool, one], big - one)}
    return out


def total(x):
    return sum(x.values())


def fmt(x, digits=1):
    return (f"{total(x):.{digits}f}: " + ", ".join(f"{k} {v:.1f}" for k, v in x.items())
            if x else "none")


def summary_rows(c):
    """The summary rows: the big lock in all (per candidate), then each role."""
    F = figures(c)
    o, p = F["ours"], F["etcdctl"]
    n = SIZES[-1]
    pw = total(p["waiter"])
    rows = [[f"etcd messages a minute, 1 leader + {n - 1} waiters on one lock at the defaults "
             f"(TTL {TTL} s for both; ours: renew deadline 10 s), {c['window_s']:.0f} s window: "
             "in all (a candidate's share)",
             f"{fmt(o['total'])} ({total(o['total']) / n:.1f} a candidate)",
             f"{fmt(p['total'])} ({total(p['total']) / n:.1f} a candidate)",
             f"{total(o['total']) / total(p['total']):.2f}×", "≤ 1.1 × etcdctl lock's",
             verdict(total(o["total"]) <= 1.1 * total(p["total"]))]]
    # Two decimals: the leader's target is met or missed by less than a tenth.
    targets = {"leader": (f"≤ 2 × etcdctl lock's waiter ({2 * pw:.2f})",
                          lambda x: x <= 2 * pw),
               "back": (f"≤ etcdctl lock's waiter ({pw:.2f})", lambda x: x <= pw)}
    for role, what, how in ROLES:
        peer = p["waiter"] if role == "back" else p[role]
        target, met = targets.get(role, ("–", None))
        rows.append([f"… {what} ({how}; etcdctl lock: "
                     + ("the mean of its 20 waiters" if role == "back" else how) + ")",
                     fmt(o[role], 2), fmt(peer, 2),
                     f"{total(o[role]) / total(peer):.2f}×" if total(peer) else "–", target,
                     verdict(met(total(o[role]))) if met else "–"])
    return rows


def section(c):
    F = figures(c)
    o, p = F["ours"], F["etcdctl"]
    one, two, big = SIZES
    lines = ["| tool | lock of | window | messages received by etcd, by gRPC method | a minute |",
             "|---|---|---|---|---|"]
    for g in c["groups"]:
        lines.append(f"| {'ours' if g['tool'] == 'ours' else 'etcdctl lock'} | {g['size']} | "
                     f"{g['window_s']:.2f} s | "
                     + (", ".join(f"{k} {v:.0f}" for k, v in sorted(g["messages"].items()))
                        or "none")
                     + f" | {total(per_min(g)):.1f} |")
    reopened = [f"{g['tool']} × {g['size']}: {g['streams_opened']}" for g in c["groups"]
                if g["streams_opened"]]
    check = total(o["leader"]) + total(o["next"]) + (big - two) * total(o["back"])
    return "\n".join(lines) + f"""

Each lock ran on an etcd of its own (etcd counts messages per member, not per client), all six
at once over one {c['window_s']:.0f} s window (a whole multiple of every period below, 22.5 s
between a waiter's confirmed keep-alives included, so that each periodic sender of ours is
counted whole); `grpc_server_msg_received_total` deltas by `grpc_method`
(a unary request is one message, a keep-alive on the `LeaseKeepAlive` stream one message). The
roles come from the differences: the leader is the lock of {one}, the waiter next in line the lock
of {two} minus the lock of {one}, a waiter further back the lock of {big} minus the lock of {two},
over {big - two}. Ours adds up: {total(o['leader']):.1f} + {total(o['next']):.1f} +
{big - two} × {total(o['back']):.2f} = {check:.1f} a minute (measured: {total(o['total']):.1f}).
Streams opened during the window (a reconnection would show here):
{'; '.join(reopened) if reopened else 'none'}.

Why: a waiter of ours queued behind others only keeps its place, with a keep-alive every TTL/2 =
7.5 s, one in `WAITER_CONFIRMS_ONE_IN` (`src/timing.rs`) of them confirmed by a linearizable
`Txn` read, so that one talking to a member whose raft loop is stalled (it answers keep-alives but
not reads: etcd-io/etcd#15247) finds out and moves to another ({fmt(o['back'])} a minute
measured). The waiter next in line, which may be handed the lock at any moment, and the leader
renew every min(TTL/3, renew deadline/2) = 5 s, each renewal counted only once such a read has
confirmed our key ({fmt(o['leader'])} a minute). `etcdctl lock --ttl 15` keeps its session's
lease alive every TTL/3 = 5 s, its leader and its waiters alike, with no read; Go's client
schedules each keep-alive TTL/3 after the previous answer and sends it on its next 500 ms send
tick, so its period is a little over 5 s: {total(p['waiter']):.2f} a minute per waiter here. So
per lock ours pays for two leader-pace renewals with their reads (the leader and the next in
line) and {'less' if total(o['back']) < total(p['waiter']) else 'no less'} than `etcdctl lock` for
every other waiter: a lock of ours costs etcd no more than
`etcdctl lock`'s from {next_even(o, p)} candidates up, and more below that (a pair of
candidates: {total(o['leader']) + total(o['next']):.1f} against
{total(p['leader']) + total(p['waiter']):.1f} a minute). The watches are long-lived streams that
cost etcd nothing at rest (gRPC-level HTTP/2 pings are not messages).
"""


def next_even(o, p):
    """The least lock size at which ours costs etcd no more than `etcdctl lock`."""
    lead = total(o["leader"]) + total(o["next"])
    peer = total(p["leader"]) + total(p["waiter"])
    for n in range(2, 10_000):
        if lead + (n - 2) * total(o["back"]) <= peer + (n - 2) * total(p["waiter"]):
            return n
    return "no size"
