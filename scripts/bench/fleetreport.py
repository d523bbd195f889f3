"""Fleets in BENCHMARKS.md, from fleet.py's results: ours next to `etcdctl lock` per fleet size,
the summary rows and their targets, what limited a fleet on this machine and what the measured
costs per candidate say about a size that did not fit, and what a 3-member etcd would change."""

from . import headroom
from .base import stats
from .markdown import kib_mib, verdict

# The fleets' result keys (+ "_ours", "_etcdctl"), in the order the table shows them.
SIZES = ("fleet_1k", "fleet_5k", "fleet_many")
TOOLS = (("ours", "ours"), ("etcdctl", "etcdctl lock"))


def usable(f):
    return isinstance(f, dict) and "error" not in f


def what(f):
    return (f"{f['asked']:,} candidates on one lock" if f["locks"] == 1 else
            f"{f['locks']} locks × {f['per_lock']} candidates")


def per_cand(f):
    """What one candidate costs, measured over the fleet at rest."""
    n = f["candidates"]
    w = f["wrappers"]
    return {"etcd_cpu_pct": f["rest_etcd_cpu_pct"] / n,
            "requests_per_min": sum(f["rest_requests_per_s"].values()) * 60 / n,
            "etcd_rss_kib": max(0, f["etcd_rss_kib_rest"] - f["etcd_rss_kib_before"]) / n,
            "etcd_heap_kib": max(0, (f.get("etcd_heap_live_kib_rest") or 0)
                                 - (f.get("etcd_heap_live_kib_before") or 0)) / n,
            "pss_kib": w["Pss"] / n, "threads": w["Threads"] / n,
            "host_cpu_pct": f["rest_candidates_cpu_pct"] / n}


def per_handover(f):
    """etcd's messages a handover, by method, the renewals of the time the handovers took off
    (at the rate of the rest before them)."""
    n, el, rest = len(f["handover_ms"]), f["handovers_s"], f["rest_requests_per_s"]
    out = {k: (v - rest.get(k, 0) * el) / n for k, v in f["handovers_messages"].items()}
    return {k: v for k, v in sorted(out.items()) if v >= 0.5}


def fmt_handover(f):
    m = per_handover(f)
    return f"{sum(m.values()):,.0f} (" + ", ".join(f"{k} {v:,.0f}" for k, v in m.items()) + ")"


def rest_cell(f):
    rq = f["rest_requests_per_s"]
    cell = (f"etcd {f['rest_etcd_cpu_pct']:.1f}% of a core, {kib_mib(f['etcd_rss_kib_rest'])}; "
            f"{sum(rq.values()):.0f} requests/s ("
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(rq.items())) + ")")
    if f["candidates"] < f["asked"]:
        cell = (f"**{f['candidates']:,} of {f['asked']:,}** (stopped {short(f)}): " + cell
                + f"; × {f['asked'] / f['candidates']:.2f} for {f['asked']:,}: "
                + extrapolated(f))
    return cell


def extrapolated(f):
    p, n = per_cand(f), f["asked"]
    return (f"etcd {p['etcd_cpu_pct'] * n:.0f}% of a core, "
            f"{kib_mib(f['etcd_rss_kib_before'] + p['etcd_rss_kib'] * n)}, "
            f"{p['requests_per_min'] * n / 60:.0f} requests/s")


def short(f):
    """What stopped a fleet short of its size ("by ..."), from the readings taken then."""
    lim = f.get("limited") or {}
    if lim.get("limit") == "tasks":
        return (f"by the machine's tasks: {lim['tasks']:,} threads running, "
                f"{lim['task_cap']:,} the most (kernel.pid_max {lim['pid_max']:,}), "
                f"{lim['reserve']:,} left to the machine's other users")
    if lim.get("limit") == "memory":
        return (f"by memory: MemAvailable {kib_mib(lim['mem_available_kib'])}, "
                f"{kib_mib(lim['reserve_kib'])} left to the machine's other users")
    if lim.get("limit") == "cpu":
        return (f"by the CPU the candidates use at rest: "
                f"{lim['per_candidate_pct']:.3f}% of a core each, "
                f"{lim['projected_pct']:.0f}% for those started, over the "
                f"{lim['budget_pct']:.0f}% the bench lets them take of the machine")
    if lim.get("limit") == "start-up time":
        return (f"by the start-up's time budget, {lim['budget_s']:.0f} s: the joins had "
                f"slowed to {lim['last_rate_per_s']:.0f} a second (each join costs etcd more "
                "the longer the queue)")
    return "by nothing recorded"


def summary_rows(R):
    rows = []
    for key in SIZES:
        ours, peer = R.get(f"{key}_ours"), R.get(f"{key}_etcdctl")
        if ours is None and peer is None:
            continue
        f = ours if usable(ours) else peer if usable(peer) else None
        title = what(f) if f else key

        def cell(x, fn):
            if x is None:
                return "not run"
            return fn(x) if usable(x) else f"failed: {x.get('error')}"

        both = usable(ours) and usable(peer)
        po, pp = (per_cand(ours), per_cand(peer)) if both else (None, None)
        rows.append([
            f"Fleet, {title}, at rest ({f['rest_window_s']:.0f} s; etcd on disk, TTL 15 s for "
            "both): etcd's CPU and RSS, requests/s" if f else f"Fleet, {title}",
            cell(ours, rest_cell), cell(peer, rest_cell),
            (f"CPU {po['etcd_cpu_pct'] / pp['etcd_cpu_pct']:.2f}×, requests "
             f"{po['requests_per_min'] / pp['requests_per_min']:.2f}× (a candidate's)"
             if both and pp["etcd_cpu_pct"] else "–"),
            "etcd CPU and requests a candidate ≤ etcdctl lock's" if both else "–",
            verdict(po["etcd_cpu_pct"] <= pp["etcd_cpu_pct"]
                    and po["requests_per_min"] <= pp["requests_per_min"]) if both else "–"])

        def hand(x):
            s = stats(x["handover_ms"])
            return (f"{s['p50']:.1f} / {s['p95']:.1f} ms, max {s['max']:.0f} ms (n = {s['n']}); "
                    f"etcd messages a handover {fmt_handover(x)}; never two commands at once "
                    f"(checked); {x['candidates']:,} started in {x['launch_s']:.0f} s")

        so = stats(ours["handover_ms"]) if usable(ours) else None
        sp = stats(peer["handover_ms"]) if usable(peer) else None
        rows.append([f"Fleet, {title}: handover p50 / p95 (command exits → successor's start); "
                     "start-up", cell(ours, hand), cell(peer, hand),
                     f"{so['p50'] / sp['p50']:.2f}×" if so and sp else "–", "p50 ≤ 50 ms",
                     verdict(so["p50"] <= 50) if so else "–"])
    return rows


def detail_rows(R):
    """(scenario, tool, stats) of every fleet's handovers."""
    return [(f"fleet: handover with {what(f)} on one etcd (on disk)", name,
             stats(f["handover_ms"]))
            for key in SIZES for tool, name in TOOLS
            if usable(f := R.get(f"{key}_{tool}"))]


def table(F):
    """The fleets side by side: [(column title, result)]."""
    def row(name, fn):
        return f"| {name} | " + " | ".join(fn(f) for _, f in F) + " |"

    def hs(f):
        s = stats(f["handover_ms"])
        return f"{s['p50']:.1f} / {s['p95']:.1f} / {s['max']:.1f} ms (n = {s['n']})"

    def pc(f):
        return per_cand(f)

    return "\n".join([
        "| | " + " | ".join(c for c, _ in F) + " |", "|---" * (len(F) + 1) + "|",
        row("candidates started (of those asked)",
            lambda f: f"{f['candidates']:,} of {f['asked']:,}"
            + ("" if f["candidates"] == f["asked"] else f" (stopped {short(f)})")),
        row("start-up: all joined, a few at a time",
            lambda f: f"{f['launch_s']:.1f} s, {f['in_flight']} at a time "
                      f"({f['candidates'] / f['launch_s']:.0f}/s; etcd used "
                      f"{f['launch_etcd_cpu_s']:.1f} s of CPU)"),
        row("handover p50 / p95 / max (command exits → successor's start)", hs),
        row("etcd messages a handover (the renewals meanwhile taken off)", fmt_handover),
        row("commands running per lock: never two at once (the commands' records), one after "
            "start-up and after each handover", lambda f: "checked"),
        row("etcd CPU at rest (utime + stime over the window)",
            lambda f: f"{f['rest_etcd_cpu_pct']:.1f}% of one core "
                      f"({pc(f)['etcd_cpu_pct'] * 10:.3f}‰ a candidate)"),
        row("etcd VmRSS: fresh → at rest (a candidate's share)",
            lambda f: f"{kib_mib(f['etcd_rss_kib_before'])} → "
                      f"{kib_mib(f['etcd_rss_kib_rest'])} ({pc(f)['etcd_rss_kib']:.0f} KiB)"),
        row("etcd's Go heap live (right after a garbage collection): fresh → at rest (a "
            "candidate's share; what of the VmRSS the candidates hold, the rest is what start-up "
            "left, not yet given back)",
            lambda f: f"{kib_mib(f['etcd_heap_live_kib_before'])} → "
                      f"{kib_mib(f['etcd_heap_live_kib_rest'])} ({pc(f)['etcd_heap_kib']:.0f} KiB)"
            if f.get("etcd_heap_live_kib_rest") and f.get("etcd_heap_live_kib_before")
            else "not measured"),
        row("etcd requests at rest, a second",
            lambda f: ", ".join(f"{k} {v:.1f}" for k, v in sorted(
                f["rest_requests_per_s"].items()))
            + f" ({sum(f['rest_requests_per_s'].values()):.0f} in all)"),
        row("… a candidate's, a minute", lambda f: ", ".join(
            f"{k} {v * 60 / f['candidates']:.2f}"
            for k, v in sorted(f["rest_requests_per_s"].items()))),
        row("the candidates' own CPU at rest (utime + stime, all of them)",
            lambda f: f"{f['rest_candidates_cpu_pct']:.2f}% of one core"),
        row("candidates' processes (+ guardians), threads",
            lambda f: f"{f['wrappers']['processes']:,}, {f['wrappers']['Threads']:,} "
                      f"({pc(f)['threads']:.1f} a candidate)"),
        row("candidates' total VmRSS / Pss (Pss a candidate)",
            lambda f: f"{f['wrappers']['VmRSS'] / 2**20:.2f} GiB / "
                      f"{f['wrappers']['Pss'] / 2**20:.2f} GiB "
                      f"({pc(f)['pss_kib'] / 1024:.2f} MiB)"),
        row("machine at rest: threads running / MemAvailable",
            lambda f: f"{f['headroom_rest']['tasks']:,} of pid_max "
                      f"{f['headroom_rest']['pid_max']:,} / "
                      f"{kib_mib(f['headroom_rest']['mem_available_kib'])}"),
        row("teardown (SIGTERM to all; each revokes its lease)",
            lambda f: f"{f['teardown_s']:.1f} s")])


def limits(F):
    """What limited the fleets here, measured, and what a size that did not fit would need."""
    out = []
    for col, f in F:
        p = per_cand(f)
        h = f["headroom_rest"]
        need = p["threads"] * f["asked"]
        line = (f"- {col}: {p['threads']:.1f} threads and {p['pss_kib'] / 1024:.2f} MiB Pss a "
                f"candidate (measured at rest); {f['asked']:,} of them need "
                f"{need:,.0f} threads (of pid_max {h['pid_max']:,} for the whole machine, "
                f"{h['pid_max'] - headroom.PID_RESERVE:,} with the reserve), "
                f"{p['pss_kib'] * f['asked'] / 2**20:.1f} GiB and, at rest, "
                f"{p['host_cpu_pct'] * f['asked']:.0f}% of a core of their own.")
        if f["candidates"] < f["asked"]:
            line += (f" It stopped at {f['candidates']:,}, {short(f)}; the "
                     f"figures for {f['asked']:,} are the measured ones per candidate × "
                     f"{f['asked']:,}: {extrapolated(f)}.")
        out.append(line)
    return "\n".join(out)


def cluster(F):
    """What a 3-member cluster changes, from the biggest fleets on one lock both tools ran whole
    (the same size, so that etcd's fixed costs weigh alike)."""
    whole = {(f["asked"], f["tool"]): f for _, f in F
             if f["locks"] == 1 and f["candidates"] == f["asked"]}
    sizes = [n for n, tool in whole if tool == "ours" and (n, "etcdctl") in whole]
    if not sizes:
        return ""
    big = {tool: whole[max(sizes), tool] for tool in ("ours", "etcdctl")}
    o, p = per_cand(big["ours"]), per_cand(big["etcdctl"])

    def cap(x):
        return 50 / x["etcd_cpu_pct"] if x["etcd_cpu_pct"] > 0 else float("inf")

    join_ms = big["ours"]["launch_etcd_cpu_s"] / big["ours"]["candidates"] * 1000

    return f"""
**What a 3-member etcd cluster would change.** At rest a candidate sends etcd nothing but its
keep-alives and, for ours, the linearizable `Txn` reads that confirm renewals
({o['requests_per_min']:.2f} messages a minute a candidate for ours,
{p['requests_per_min']:.2f} for `etcdctl lock`, in the fleets of {max(sizes):,} on one lock
above). Disk plays no part at rest (neither writes
to the WAL), so the cost is CPU and memory. In a 3-member cluster:
- Every keep-alive is the raft leader's work: only the leader's lessor renews, and a follower
  that gets a `LeaseKeepAlive` forwards it to the leader as an HTTP request on the peer port
  (etcd's `LeaseRenew`: "renewals don't go through raft; forward to leader manually"). With the
  clients spread over the members, two keep-alives in three cost a follower the message and an
  HTTP round trip, and the leader that request instead of a stream message. The keep-alive rate
  is what a cluster pays for at rest (figures above).
- A linearizable read (ours: the leader's and the next in line's with each renewal, every 5 s,
  and a waiter's with one keep-alive in three) needs a ReadIndex: the member asks the leader,
  which confirms its leadership with one heartbeat round to a quorum, shared by all the reads
  pending at that moment; the member then serves the read from its own store. They move work
  from the keep-alives to the heartbeat rounds, the more so with many locks of a few candidates
  each (two leader-pace readers a lock).
- A handover wakes our new leader and the candidate behind it, which reads the queue (a page of
  keys a request) to become next in line: {fmt_handover(big['ours'])} messages to etcd a handover
  in the fleet of {max(sizes):,} above, `etcdctl lock`'s {fmt_handover(big['etcdctl'])} (its
  successor alone acts). On a cluster that read is linearizable, and waits for a ReadIndex round
  of the leader's. A waiter serving a status endpoint also follows the record, and reads the new
  leader's key once a handover (not in these fleets).
- Memory: a client's connection, streams and watches live on the member it talks to (spread
  over three); every key and lease lives on all three.
- Writes (a join, a handover, a revoke) commit once a quorum has the entry: a round trip to a
  follower and its fsync (in parallel with the leader's) lengthen a handover by that.

Taking this run's single-member cost as the leader's (an upper bound for the work it keeps: here
one etcd also served every stream and shared 2 cores with the fleet itself), one core of the
leader, half of it kept free for raft, compaction and other clients, carries about
**{cap(o):,.0f} candidates of ours** ({o['etcd_cpu_pct'] * 10:.3f}‰ of a core each) and
**{cap(p):,.0f} of `etcdctl lock`** ({p['etcd_cpu_pct'] * 10:.3f}‰); if a forwarded keep-alive
cost the leader twice what a direct one does, two in three of them forwarded make it 5/3 of the
work: about {cap(o) * 3 / 5:,.0f} and {cap(p) * 3 / 5:,.0f}. etcd's memory grew by
{o['etcd_rss_kib']:.0f} KiB a candidate of ours and {p['etcd_rss_kib']:.0f} KiB one of `etcdctl lock`, of which
its Go heap holds live {o['etcd_heap_kib']:.0f} KiB and {p['etcd_heap_kib']:.0f} KiB (a lease, its keys and watches, a
client connection and its streams; the rest is what start-up left): spread over three members, it
binds well after the CPU. A mass restart costs joins ({join_ms:.1f} ms of etcd CPU a candidate of ours here, a few raft commits each; on a cluster each commit also
waits for a follower).
"""


def section(R):
    """The table of every fleet run, what limited them, and the 3-member paragraph."""
    F = []
    for key in SIZES:
        for tool, name in TOOLS:
            f = R.get(f"{key}_{tool}")
            if usable(f):
                F.append((f"{what(f)}: {name}", f))
    if not F:
        return None
    f = F[0][1]
    return (table(F) + "\n\n**What limits a fleet on this machine** "
            f"({f['headroom_rest']['mem_total_kib'] / 2**20:.1f} GiB; every thread takes a pid, "
            "up to kernel.pid_max). The bench stops a fleet from growing where it would leave "
            f"fewer than {headroom.PID_RESERVE:,} threads or "
            f"{headroom.MEM_RESERVE_KIB / 2**20:.0f} GiB of MemAvailable to the machine's other "
            "users, where its candidates at rest would take more than "
            f"{headroom.IdleCpu.budget() * 100:.0f}% of a core (measured on those already "
            f"started), or after {f['startup_budget_s']:.0f} s of start-up:\n\n"
            + limits(F) + "\n" + cluster(F))
