"""From the raw results to the summary rows, detail rows and explanatory sections of
BENCHMARKS.md: every figure's reading, target and verdict."""

from . import costreport, fleetreport, soakreport
from .base import stats
from .markdown import kib_mib, ratio, verdict, write_report


PLOTS_DIR = "benchmarks"  # beside BENCHMARKS.md


def ok(x):
    return isinstance(x, (list, dict)) and not (isinstance(x, dict) and "error" in x)


def err(x):
    return x.get("error") if isinstance(x, dict) else None


def report(out, R, meta):
    """Summary table, detail table and sections from the raw results."""
    g = R.get
    summary, rows, sections = [], [], []

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

    # --- handovers, etcd's data dir on tmpfs and on disk
    H = {}  # (variant, storage) -> stats
    for storage in ("tmpfs", "disk"):
        for v in ("exit_ours", "exit_etcdctl", "exit_ours_nolegacy", "sigterm_ours"):
            H[v, storage] = st(f"handover_{v}_{storage}", "handover_ms")
        ho, hp, so = H["exit_ours", storage], H["exit_etcdctl", storage], H["sigterm_ours", storage]
        on = f"etcd data on {storage}"
        rows += [(f"handover, command exits (next start − old stop), {on}", "ours", ho),
                 (f"handover, command exits (next start − old stop), {on}", "etcdctl lock", hp),
                 (f"handover, command exits, `ETCD_AWAIT_ELECTION_LEGACY_LOCK=false`, {on}",
                  "ours", H["exit_ours_nolegacy", storage]),
                 (f"handover, wrapper SIGTERM (next start − old stop), {on}", "ours", so),
                 (f"wrapper SIGTERM → old command's stop, {on}", "ours",
                  st(f"handover_sigterm_ours_{storage}", "signal_to_stop_ms"))]
        summary.append([f"Handover when the leader's command exits, {on}, p50 / p95",
                        p50p95(ho) if ho else failed(f"handover_exit_ours_{storage}"),
                        p50p95(hp) if hp else failed(f"handover_exit_etcdctl_{storage}"),
                        ratio(ho, hp), "p50 ≤ 20 ms and below etcdctl lock's",
                        verdict(ho and hp and ho["p50"] <= 20 and ho["p50"] < hp["p50"])])
        summary.append([f"Handover when the leader's wrapper gets SIGTERM (next start − old "
                        f"stop), {on}, p50 / p95 (peer: its command-exit handover, as it never "
                        "hands over on SIGTERM)",
                        p50p95(so) if so else failed(f"handover_sigterm_ours_{storage}"),
                        p50p95(hp) if hp else "–", ratio(so, hp),
                        "p50 ≤ 30 ms and below etcdctl lock's",
                        verdict(so and hp and so["p50"] <= 30 and so["p50"] < hp["p50"])])
    ho, hp = H["exit_ours", "tmpfs"], H["exit_etcdctl", "tmpfs"]
    hod, hpd = H["exit_ours", "disk"], H["exit_etcdctl", "disk"]

    # --- etcdctl lock on SIGTERM
    sp = g("handover_sigterm_etcdctl")
    if ok(sp):
        obs = sp.get("observations", [])
        n = len(obs)
        kept = sum(o["command_alive_after_2s"] and not o["command_got_term"] for o in obs)
        nxt = sum(o["next_started_within_2s"] for o in obs)
        summary.append(["`etcdctl lock` when its process gets SIGTERM (etcd data on tmpfs)",
                        "hands over (above)",
                        f"no handover: SIGTERM ignored while the command runs ({kept}/{n} "
                        f"rounds: command untouched 2 s later, successor started in {nxt}/{n})",
                        "–", "–", "–"])
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

    # --- force switchover
    sw, swp = st("switchover_ours", "gap_ms"), st("switchover_etcdctl", "gap_ms")
    rows += [("force switchover, holder of ours yields (forcer start − old stop)", "ours", sw),
             ("force switchover: forcer launched → old command's stop", "ours",
              st("switchover_ours", "request_to_stop_ms")),
             ("force switchover, holder that never yields (`etcdctl lock`, its command ended by "
              "hand 200 ms in): not deposed, waited for until its lease ended", "ours", swp)]
    swo = g("switchover_ours")
    summary.append(["Force acquire: old command's stop → forcer's start, p50 / p95 (the old "
                    "design waited the deposed lease's TTL: 3 s here, 15 s at the defaults)",
                    p50p95(sw) if sw else failed("switchover_ours"),
                    p50p95(swp) if swp else failed("switchover_etcdctl"), "–",
                    "p50 < 50 ms, old command ends by its SIGTERM handler",
                    verdict(sw and sw["p50"] < 50 and ok(swo)
                            and swo["stopped_by_term"] == len(swo["gap_ms"]))])

    # --- --leader --watch
    lw = st("leader_watch", "line_after_start_ms")
    lws = st("leader_watch", "line_after_old_stop_ms")
    rows += [("`--leader --watch`: new leader's line − its command's start (negative: before)",
              "ours", lw),
             ("`--leader --watch`: new leader's line − old command's stop", "ours", lws)]
    summary.append(["`--leader --watch` after a handover on wrapper SIGTERM: the new leader's "
                    "line − its command's start, p50 / p95 (never before the old command's stop)",
                    p50p95(lw) if lw else failed("leader_watch"), "–", "–",
                    "p95 ≤ 50 ms, every line after the old stop",
                    verdict(lw and lws and lw["p95"] <= 50 and lws["min"] > 0)])

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
              "etcdctl lock", st("failover_etcdctl", "expiry_to_start_ms")),
             ("failover: successor's start − (lease's last renewal + TTL); renewal time from the "
              "wrapper's `/metrics`", "ours", st("failover_ours", "renewal_to_start_minus_ttl_ms")),
             ("failover: successor's start − (lease's last renewal + TTL); renewal time from the "
              "lease's remaining TTL in whole seconds (the renewal may be up to 1 s later: an "
              "upper bound)", "etcdctl lock",
              st("failover_etcdctl", "renewal_to_start_minus_ttl_ms"))]
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
its own cost is closer to its `Pss`/`RssAnon`. The waiter next in line (the one measured) holds
such a guardian too, forked ahead of its command so that a handover waits for no `fork`: one per
lock, the others hold none. `command` is `eae-test-child` (same for both).
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

    # --- what a lock costs etcd
    c = g("cost")
    if ok(c):
        summary += costreport.summary_rows(c)
        sections.append(("What a lock costs etcd", costreport.section(c)))
    elif c is not None:
        summary.append(["etcd messages a minute, 1 leader + 20 waiters on one lock",
                        failed("cost"), failed("cost"), "–", "≤ 1.1 × etcdctl lock's", "–"])

    # --- fleets
    summary += fleetreport.summary_rows(R)
    rows += fleetreport.detail_rows(R)
    fs = fleetreport.section(R)
    if fs:
        sections.append(("Fleets", fs))

    # --- soak
    summary.append(soakreport.summary_row(meta["soak"]))
    sections.append(("Soak", soakreport.section(meta["soak"])))

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
    sections.append(("Critical path of a handover", f"""
From the old command's exit to the new command's `execve`, with the default configuration
(ours {ho['p50'] if ho else 0:.1f} / {hod['p50'] if hod else 0:.1f} ms p50, etcd's data on tmpfs / disk;
`etcdctl lock` {hp['p50'] if hp else 0:.1f} / {hpd['p50'] if hpd else 0:.1f} ms):

| step | ours | `etcdctl lock` |
|---|---|---|
| old leader learns the exit | SIGCHLD → signal thread → main (2 thread wake-ups); `waitpid`, group empty (`kill(-pgid, 0)`), guardian let go | `cmd.Wait()` returns |
| old leader lets go | main → election thread (1 wake-up); **one `Txn`**: compares our key, the record (our lease) and the successor's key (never put again), deletes our key, binds the record `LOCK` to the successor's lease: **1 round trip, 1 raft commit** (1 WAL fsync on disk) | `Unlock`: **one `DeleteRange`: 1 round trip, 1 raft commit** |
| successor learns it | the record's put, on its watch (same commit) | the key's delete, on its watch |
| successor decides | from the event alone: the record bound to its lease and put over an existing one (version > 1: only a holder does that, once its group is empty); no read, no lease to wait for; election thread → main (1 wake-up) | **one `Get`** (keys with a lower create revision): **1 round trip** |
| successor starts | renew deadline checked (no keep-alive now: the leader's pace counts from the last renewal); guardian forked already (when it became next); `clone(CLONE_VM \| CLONE_VFORK)`, `setpgid`, death signal, pid to the guardian, `execve` | `fork`/`exec` (Go: `CLONE_VFORK`) |
| off the path | the old leader reads its key and revokes its lease (a second commit), the new one's first leader-pace renewal | `Close`: revoke |

In all: ours 1 round trip and 1 commit, 3 thread wake-ups; `etcdctl lock` 2 round trips and
1 commit. Taken off our path for this figure, each measured: the leader's read of its successor
(it keeps the successor from its one watch over the lock's range), the successor's read after the
watch event, its wait for the old lease's revoke (a second commit, and 2–8 ms of polling), its
own write of the record (the hand-over writes it), the keep-alive and confirmation read at the
instant of election, the guardian's `fork` (done ahead) and the command's `fork`: std's
`Command` forks whenever a step runs before the exec, and copying the wrapper's page tables
cost 0.4–1.2 ms a handover on this VM (one interleaved run, 60 rounds each, tmpfs / disk: with
the fork 6.2 / 6.7 ms, with the clone 5.8 / 5.5 ms, etcdctl lock 6.5 / 6.4 ms). Exclusion keeps
only what costs no round trip: the hand-over's compares, the group check, the guardian.

Where the time goes, from timestamps taken at each step in a build instrumented for it (30
handovers, etcd on tmpfs, p50): the old command's exit until `main` has its SIGCHLD 0.5 ms (most
of it the command's own exit), `main` to the hand-over request sent 0.25 ms (reaping, the group
check, the wake-up of the election thread), the transaction 1.4–1.7 ms, the watch event to
`main` 0.13 ms, the clone until the command's `execve` is under way 0.9 ms (the kernel's
`execve` on this VM: Python's `posix_spawn` of `/bin/true` takes 0.65 ms), the new command's
own start-up until its first record 1.2 ms. The thread hand-offs the design keeps cost about
0.4 ms in all on a quiet machine; etcdctl's extra round trip costs more than that.
"""))
    sections.append(("What limits the figures", f"""
- **Handover**: see the critical path above. Ours and `etcdctl lock` pay one raft commit each;
  etcdctl adds a round trip, we add thread hops that cost less: the margin is under a
  millisecond, so on two shared cores a busy moment can still put a single run's medians the
  other way round; the tails (p95) move more than the medians.
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
- **Memory**: a statically linked Rust binary with a single-threaded tokio runtime: 5 threads
  (main, signals, election, log writer, and the alarm that waits on a `CLOCK_BOOTTIME` timerfd). Most of `VmRSS` is the binary's own mapped text.
"""))
    write_report(out, R, dict(meta, summary=summary, detail_rows=rows, sections=sections))
