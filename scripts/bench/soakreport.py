"""The soak in BENCHMARKS.md, from target/bench/soak.json as `make soak` leaves it (another run's
file: read here, never written; the bench does not run the soak): its handovers and overlaps, and
how each resident wrapper's memory, file descriptors and threads went from start to end. Schema:
{"seconds", "seed", "handovers", "overlaps", "starts", "actors": {name: count}, "residents":
[{"role", "identity", "samples": [{"t_s", "rss_kib", "fds", "threads"}]}], "git"}."""

import json
import os

from .base import ROOT
from .markdown import verdict

SOAK = os.path.join(ROOT, "target", "bench", "soak.json")
FIELDS = (("rss_kib", "RSS (KiB)"), ("fds", "fds"), ("threads", "threads"))
# Drift as the soak itself judges it (tests/soak/residents.rs, which fails the soak beyond it):
# the baseline is the first sample after a warm-up of a tenth of the run (a minute at most), the
# end the least of the last END_SAMPLES, and the end may exceed the baseline by SPARE at most.
WARMUP_SHARE, WARMUP_MAX_S = 0.1, 60
END_SAMPLES = 3
SPARE = {"rss_kib": 2048, "fds": 2, "threads": 2}


def load(path=SOAK):
    """The soak's results, None when there are none, {"error": why} when they cannot be read."""
    try:
        with open(path) as f:
            s = json.load(f)
        for r in s["residents"]:
            if not r["samples"]:
                raise ValueError(f"resident {r['identity']} has no samples")
        return s
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"error": f"{os.path.relpath(path, ROOT)}: {e!r}"}


def span(samples, field):
    xs = [x[field] for x in samples]
    return xs[0], xs[-1], max(xs)


def drift(s, r):
    """{field: (baseline, end)} of one resident, as the soak judges it."""
    warm = min(s["seconds"] * WARMUP_SHARE, WARMUP_MAX_S)
    after = [x for x in r["samples"] if x["t_s"] >= warm] or r["samples"]
    last = after[-END_SAMPLES:]
    return {f: (after[0][f], min(x[f] for x in last)) for f, _ in FIELDS}


def drifted(s):
    """What of each resident ended beyond its baseline and the spare."""
    return [f"{r['identity']} {f} {base} → {end}" for r in s["residents"]
            for f, (base, end) in drift(s, r).items() if end > base + SPARE[f]]


def summary_row(s):
    what = "Soak (`make soak`): overlaps among the handovers; residents' drift"
    target = ("no overlap; per resident, the end within +2 fds, +2 threads, +2 MiB of the "
              "baseline after the warm-up (the soak's own rule)")
    if s is None:
        return [what, "not run (no target/bench/soak.json)", "–", "–", target, "–"]
    if "error" in s:
        return [what, f"unreadable: {s['error']}", "–", "–", target, "–"]
    bad = drifted(s)
    return [f"Soak (`make soak`, {s['seconds'] / 60:.0f} min, git {s['git']}): overlaps among "
            "the handovers; residents' drift",
            f"{s['overlaps']} overlaps in {s['handovers']:,} handovers; "
            + ("no drift" if not bad else "drift: " + "; ".join(bad)),
            "–", "–", target, verdict(s["overlaps"] == 0 and not bad)]


def section(s):
    if s is None:
        return ("Not run: there is no `target/bench/soak.json` (`make soak` writes it; "
                "`make bench` reads it and does not run the soak).")
    if "error" in s:
        return f"Not shown: {s['error']}."
    head = ("| resident | role | samples (over) | "
            + " | ".join(f"{name} start / end / max" for _, name in FIELDS)
            + " | baseline → end (RSS KiB, fds, threads) |")
    lines = [head, "|---" * (4 + len(FIELDS)) + "|"]
    tot = {field: [0, 0, 0] for field, _ in FIELDS}
    for r in s["residents"]:
        cells = []
        for field, _ in FIELDS:
            sp = span(r["samples"], field)
            cells.append(" / ".join(f"{x:,}" for x in sp))
            tot[field] = [a + b for a, b in zip(tot[field], sp)]
        ss = r["samples"]
        d = drift(s, r)
        lines.append(f"| `{r['identity']}` | {r['role']} | {len(ss)} "
                     f"({ss[-1]['t_s'] - ss[0]['t_s']:.0f} s) | " + " | ".join(cells) + " | "
                     + ", ".join(f"{d[f][0]:,} → {d[f][1]:,}" for f, _ in FIELDS) + " |")
    lines.append("| all residents (maxima summed) | | | "
                 + " | ".join(" / ".join(f"{x:,}" for x in tot[field]) for field, _ in FIELDS)
                 + " | |")
    actors = ", ".join(f"{name} × {n}" for name, n in sorted(s["actors"].items()))
    return "\n".join(lines) + f"""

`make soak` at git {s['git']}: {s['seconds']:.0f} s (seed {s['seed']}), {s['handovers']:,}
handovers, {s['starts']:,} command starts, {s['overlaps']} overlaps (two commands running at
once); the actors around the residents: {actors or 'none'}. A resident is a wrapper that lives
through the whole soak; its samples are `/proc` readings (`VmRSS`, open file descriptors,
threads) at the times shown. Drift is judged as the soak judges it (`tests/soak/residents.rs`,
which fails the soak beyond it): from the first sample after a warm-up of a tenth of the run (a
minute at most) to the least of the last {END_SAMPLES}, at most {SPARE['fds']} more fds,
{SPARE['threads']} more threads and {SPARE['rss_kib'] // 1024} MiB more RSS.
"""
