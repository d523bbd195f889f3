"""From the raw results to the summary rows, detail rows and explanatory sections of
BENCHMARKS.md: every figure's reading, target and verdict."""

from .base import stats
from .markdown import kib_mib, ratio, verdict, write_report


def ok(x):
    return isinstance(x, (list, dict)) and not (isinstance(x, dict) and "error" in x)


def err(x):
    return x.get("error") if isinstance(x, dict) else None


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
