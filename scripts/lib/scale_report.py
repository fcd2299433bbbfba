"""Turns `scripts/bench.sh --scale` results into docs/scale.md (stdout) and
a plot of throughput and p99 latency against the number of keys.

    python scripts/lib/scale_report.py RESULTS DURATION PNG

Labels are TARGET@KEYS; needs matplotlib (bench.sh installs it in a venv).
"""

import os
import platform
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_report import load, machine  # noqa: E402

# (workload, what its ops are, title in the plot).
WORKLOADS = [
    ("load", "puts/s", "loading the keys"),
    ("get", "ops/s", "get, 16 clients"),
    ("create", "ops/s", "create, 16 clients"),
    ("list", "lists/s", "list of a 1,000-key namespace, 16 clients"),
    ("compact", "revisions/s", "physical compaction of the history"),
    ("watch", "events", "1,000 watchers, 20 puts/s"),
]


def main():
    rows = load(sys.argv[1])
    dur, png = sys.argv[2], sys.argv[3]
    by, rss, restart, targets, sizes = {}, {}, {}, [], set()
    for r in rows:
        target, _, keys = r["label"].partition("@")
        keys = int(keys)
        sizes.add(keys)
        if target not in targets:
            targets.append(target)
        if r["workload"] == "rss":
            rss[(target, keys)] = r["after_mib"]
        elif r["workload"] == "restart":
            restart[(target, keys)] = r
        elif not r.get("failed"):
            by[(target, keys, r["workload"])] = r
    sizes = sorted(sizes)

    cpu, model = machine()
    print("# How costs grow with the data set\n")
    print(f"Produced by `scripts/bench.sh --scale {','.join(map(str, sizes))}` on a {cpu}-core"
          f" machine ({model}, {platform.platform()}). For each server and size N, a fresh"
          " server is loaded with N keys of 256 bytes, each written H times (H = 10, capped"
          " at 2,000,000 revisions: "
          + ", ".join(f"{n:,} keys x {max(1, min(10, 2_000_000 // n))}" for n in sizes)
          + f"), then measured for {dur} per workload with `koine bench` (every answer"
          " checked): get and create at 16 clients, a paginated list (limit 500, pinned"
          " revision) of the first 1,000 keys as one namespace, physical compaction of the"
          " whole history to the current revision, and 1,000 watchers receiving 20 puts/s."
          " RSS is read after all of it. Then the server is stopped (SIGTERM) and started"
          " again on the same data: the time until it answers a read (Koine builds its key"
          " index from the log first) and its RSS then. Databases as in benchmarks.md.\n")
    print(f"![throughput and p99 against keys]({os.path.basename(png)})\n")
    for w, unit, title in WORKLOADS:
        heading = {"watch": "p50 / p99 ms", "load": f"{unit}, time", "compact": f"{unit}, time"}
        print(f"## {title} ({heading.get(w, unit + ', p99 ms')})\n")
        print("| keys | " + " | ".join(targets) + " |")
        print("|---|" + "---|" * len(targets))
        for n in sizes:
            cells = []
            for t in targets:
                r = by.get((t, n, w))
                if r is None:
                    cells.append("—")
                elif w == "watch":
                    cells.append(f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}")
                elif w in ("load", "compact"):
                    cells.append(f"{r['ops_per_sec']:,.0f} ({r['seconds']:.1f} s)")
                else:
                    cells.append(f"{r['ops_per_sec']:,.1f}, {r['p99_ms']:.1f}")
            print(f"| {n:,} | " + " | ".join(cells) + " |")
        print()
    print("## RSS after the run (MiB)\n")
    print("| keys | " + " | ".join(targets) + " |")
    print("|---|" + "---|" * len(targets))
    for n in sizes:
        print(f"| {n:,} | " + " | ".join(
            f"{rss[(t, n)]:.0f}" if (t, n) in rss else "—" for t in targets) + " |")
    print("\n## Restart on the loaded data: seconds to stop (SIGTERM until exit), "
          "seconds until a read answers, RSS then (MiB)\n")
    print("| keys | " + " | ".join(targets) + " |")
    print("|---|" + "---|" * len(targets))
    for n in sizes:
        print(f"| {n:,} | " + " | ".join(
            f"{restart[(t, n)].get('stop_seconds', float('nan')):.2f} s, "
            f"{restart[(t, n)]['seconds']:.2f} s, {restart[(t, n)]['after_mib']:.0f}"
            if (t, n) in restart else "—" for t in targets) + " |")

    fig, axes = plt.subplots(2, 4, figsize=(18, 8.5))
    panels = [("get", "ops_per_sec", "get ops/s"), ("create", "ops_per_sec", "create ops/s"),
              ("list", "ops_per_sec", "namespace lists/s"),
              ("compact", "ops_per_sec", "compacted revisions/s"),
              ("get", "p99_ms", "get p99 ms"), ("create", "p99_ms", "create p99 ms"),
              ("list", "p99_ms", "namespace list p99 ms"), (None, None, "RSS after, MiB")]
    for ax, (w, field, title) in zip(axes.flat, panels):
        for t in targets:
            xs, ys = [], []
            for n in sizes:
                v = rss.get((t, n)) if w is None else by.get((t, n, w), {}).get(field)
                if v is not None:
                    xs.append(n)
                    ys.append(v)
            ax.plot(xs, ys, marker="o", label=t)
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("keys")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=80)


if __name__ == "__main__":
    main()
