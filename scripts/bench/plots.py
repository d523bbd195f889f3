"""The pictures beside BENCHMARKS.md, drawn with matplotlib from the raw results: the handover
latency distributions (ours and `etcdctl lock`'s, etcd on tmpfs and on disk) and the timeline of
the SIGKILL failovers. matplotlib comes from target/pydeps (scripts/install-deps.sh --bench)."""

import os
import sys

from .base import ROOT

PYDEPS = os.path.join(ROOT, "target", "pydeps")
TOOLS = (("ours", "etcd-await-election", "tab:blue"), ("etcdctl", "etcdctl lock", "tab:orange"))
STORAGE_STYLE = {"tmpfs": "-", "disk": "--"}


def missing():
    """Import matplotlib now, before anything runs: None if it can draw, else why not (the run
    goes on without pictures, and the report says so: an offline machine cannot install it)."""
    if PYDEPS not in sys.path:
        sys.path.insert(0, PYDEPS)
    os.environ["MPLBACKEND"] = "Agg"
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError as e:
        return (f"matplotlib cannot be imported ({e}); scripts/install-deps.sh --bench installs "
                "it (python3 -m pip install --target target/pydeps matplotlib), which needs the "
                "package index")
    return None


def draw(outdir, R):
    """Draw what the results hold; returns (caption, path) of each file written."""
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    written = []
    for name, fn, caption in (
            ("handover.png", handover, "Handover latency distributions, ours and etcdctl lock's, "
             "etcd's data dir on tmpfs and on disk"),
            ("failover-timeline.png", failover_timeline, "Timeline of the SIGKILL failovers: "
             "last renewal, lease expiry, key deleted, new command's start")):
        fig = fn(plt, R)
        if fig is None:
            continue
        path = os.path.join(outdir, name)
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        written.append((caption, path))
    return written


def samples(R, key, field):
    x = R.get(key)
    return x.get(field) if isinstance(x, dict) and isinstance(x.get(field), list) else None


def handover(plt, R):
    """ECDF of next command's start − old command's stop, per tool and storage."""
    curves = []
    for storage, style in STORAGE_STYLE.items():
        for tool, label, color in TOOLS:
            xs = samples(R, f"handover_exit_{tool}_{storage}", "handover_ms")
            if xs:
                curves.append((sorted(xs), f"{label}, etcd data on {storage}", color, style))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for xs, label, color, style in curves:
        n = len(xs)
        p50 = xs[(n - 1) // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
        ax.step([xs[0]] + xs, [0] + [(i + 1) / n for i in range(n)], where="post", color=color,
                linestyle=style, label=f"{label} (p50 {p50:.1f} ms, n={n})")
    # Log scale: one slow round (the machine is shared) would squeeze the rest into a corner.
    ax.set_xscale("log")
    ax.set_xlabel("handover: next command's start − old command's exit (ms, log scale)")
    ax.set_ylabel("fraction of handovers ≤ x")
    ax.set_title("Handover when the leader's command exits (defaults)")
    ax.axhline(0.5, color="grey", linewidth=0.5)
    lo, hi = min(c[0][0] for c in curves) / 1.2, max(c[0][-1] for c in curves) * 1.2
    ax.set_xlim(lo, hi)
    ticks = [t * 10 ** e for e in range(-1, 5) for t in (1, 2, 5) if lo <= t * 10 ** e <= hi]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8,
              frameon=False)
    return fig


def failover_timeline(plt, R):
    """One row per SIGKILL round, everything relative to the kill."""
    rows = []
    for tool, label, _ in TOOLS:
        x = R.get(f"failover_{tool}")
        if isinstance(x, dict) and x.get("timeline"):
            ttl = (x.get("granted_ttl") or 2) * 1000
            rows += [(f"{label} {i + 1}", ttl, r) for i, r in enumerate(x["timeline"])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.8))
    marks = (("last_renewal_ms", "lease's last renewal", "o", "tab:blue"),
             ("expected", "last renewal + TTL (lease expires)", "|", "black"),
             ("key_deleted_ms", "key deleted by etcd (polled)", "x", "tab:red"),
             ("old_cmd_gone_ms", "old command dead", "v", "tab:grey"),
             ("new_start_ms", "new command's start", "^", "tab:green"))
    seen = set()
    for y, (_, ttl, r) in enumerate(rows):
        r = dict(r, expected=r["last_renewal_ms"] + ttl
                 if r.get("last_renewal_ms") is not None else None)
        xs = [v for k, v in r.items() if v is not None and k != "renewal_window_ms"]
        ax.plot([min(xs + [0]), max(xs)], [y, y], color="lightgrey", linewidth=1, zorder=1)
        span = r.get("renewal_window_ms") or 0
        for key, label, marker, color in marks:
            if r.get(key) is None:
                continue
            if key in ("last_renewal_ms", "expected") and span >= 100:
                # Known only to a window (etcd's whole-second TTL): drawn as a bar across it.
                ax.barh([y], [span], left=[r[key]], height=0.5, color=color, alpha=0.3,
                        zorder=2, label=None if key in seen else label)
            else:
                ax.scatter([r[key]], [y], marker=marker, color=color, zorder=3, s=40 if
                           marker == "|" else 25, label=None if key in seen else label)
            seen.add(key)
    ttl = rows[0][1]
    ax.axvline(0, color="black", linewidth=0.8)
    ax.text(0, len(rows) - 0.4, " SIGKILL", fontsize=8, va="bottom")
    ax.axvline(ttl, color="black", linewidth=0.5, linestyle=":")
    ax.text(ttl, len(rows) - 0.4, f" kill + TTL ({ttl / 1000:.0f} s)", fontsize=8, va="bottom")
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows], fontsize=7)
    ax.set_ylim(-0.7, len(rows) + 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("ms after the leader's wrapper was SIGKILLed")
    ax.set_title(f"Failover after SIGKILL (TTL {ttl / 1000:.0f} s). Last renewal: ours from its "
                 "/metrics; etcdctl lock's from the lease's remaining TTL, whole seconds (a bar "
                 "over the 1 s it may lie in)", fontsize=9, pad=42)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    return fig
