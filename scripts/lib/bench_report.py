"""Turns scripts/bench.sh's results (JSON lines/arrays from `koine bench
--json`, plus RSS records) into docs/benchmarks.md on stdout.

    python3 scripts/lib/bench_report.py RESULTS DURATION
"""

import json
import platform
import subprocess
import sys

REF = "etcd-3.7"
# (workload, clients) rows of the throughput tables, in order.
ROWS = [("create", 1), ("create", 16), ("create", 64), ("update", 16), ("update", 64),
        ("get", 16), ("get", 64), ("list", 1), ("list", 16), ("count", 16), ("lease", 16),
        ("mixed", 16), ("mixed", 64)]
KOINE = ["koine-sqlite", "koine-postgres", "koine-postgres-tls", "koine-mariadb", "koine-mariadb-tls"]
KINE_OF = {"koine-sqlite": "kine-sqlite", "koine-postgres": "kine-postgres",
           "koine-postgres-tls": "kine-postgres", "koine-mariadb": "kine-mariadb",
           "koine-mariadb-tls": "kine-mariadb"}
# The targets of the engine issue: (workload, clients, minimum ratio to
# etcd on SQLite, on PostgreSQL/MariaDB). Against kine on the same
# database: 3x at 16 and 64 clients, 2x at 1.
TARGETS = [
    ("create", (1, 16, 64), 1.0, 0.8),
    ("update", (16, 64), 1.0, 0.8),
    ("get", (16, 64), 2.0, 1.5),
    ("list", (1, 16), 2.0, 1.5),
    ("count", (16,), 5.0, 3.0),
    ("lease", (16,), 1.0, 0.8),
    ("mixed", (16, 64), 1.2, 0.8),
]
# mixed: p99 at most this times etcd's (SQLite, PostgreSQL/MariaDB).
MIXED_P99 = (1.0, 1.5)
# bytes written per update: at most this times etcd's.
DISK = (1.0, 2.0)


def kine_target(clients):
    return 2.0 if clients == 1 else 3.0


def table(columns, cell):
    """One row per (workload, clients) of ROWS; `columns` are (title, key)
    pairs, and `cell(key, workload, clients)` fills a cell."""
    print("| workload | clients | " + " | ".join(t for t, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for (w, c) in ROWS:
        print("| %s | %d | %s |" % (w, c, " | ".join(cell(k, w, c) for _, k in columns)))


def kubernetes_level(k8s):
    """The k8s-* targets: a real kube-apiserver on each storage."""
    print("\n## At the Kubernetes level\n")
    print("A real kube-apiserver and kube-controller-manager (Kubernetes 1.37, built from the Go"
          " module proxy) on each storage; 32 client-go clients create 10,000 ConfigMaps (1 KiB"
          " of data each) in one namespace, then they are listed: paginated (limit 500,"
          " consistent, as `kubectl get` does; median of 3) and in one request from the"
          " apiserver's watch cache (resourceVersion 0). conformance/cmd/e2e, check"
          " bench-configmaps; every create must succeed and every list return every object.\n")
    print("| storage | create 10,000 (s) | creates/s | create p50 / p99 ms | paginated list (s) |"
          " cached list (s) |")
    print("|---|---|---|---|---|---|")
    ref = k8s.get("k8s-etcd", {}).get("create_seconds")
    for l, r in k8s.items():
        if r.get("failed"):
            print("| %s | failed | | | | |" % l[4:])
            continue
        vs = " (%.2fx etcd)" % (ref / r["create_seconds"]) if ref and l != "k8s-etcd" else ""
        print("| %s | %.1f | %.0f%s | %.1f / %.1f | %.2f | %.2f |" % (
            l[4:], r["create_seconds"], r["creates_per_second"], vs, r["create_p50_ms"],
            r["create_p99_ms"], r["list_paginated_seconds"], r["list_cache_seconds"]))


def machine():
    """(cores, CPU model) of this machine, for the reports' first line."""
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu, model


def load(path):
    rows, text, dec, i = [], open(path).read(), json.JSONDecoder(), 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        obj, i = dec.raw_decode(text, i)
        rows.extend(obj if isinstance(obj, list) else [obj])
    return rows


def main():
    rows = load(sys.argv[1])
    dur = sys.argv[2]
    by = {}
    rss = {}
    disk = {}
    failed = set()
    labels = []
    k8s = {}
    for r in rows:
        if r["workload"] == "k8s":
            k8s[r["label"]] = r
            continue
        if r["label"] not in labels:
            labels.append(r["label"])
        if r.get("failed"):
            failed.add((r["label"], r["workload"]))
        elif r["workload"] == "rss":
            rss[r["label"]] = r
        elif r["workload"] == "disk":
            disk[r["label"]] = r
        else:
            by[(r["label"], r["workload"], r["clients"])] = r
    main_labels = [l for l in labels if not l.endswith("-x2")]

    def ops(label, w, c):
        r = by.get((label, w, c))
        return r["ops_per_sec"] if r and not r["errors"] else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    cpu, model = machine()
    print("# Benchmarks\n")
    print(f"Produced by `scripts/bench.sh --duration {dur}` on a {cpu}-core machine ({model},"
          f" {platform.platform()}); every figure is one {dur} run of `koine bench`, which"
          " checks every answer it gets. Servers run one at a time, each on fresh data, the load"
          " generator beside them on loopback. etcd 3.7.3 and kine v0.17.5 are built from the Go"
          " module proxy by the script; etcd 3.4 is Debian's. PostgreSQL and MariaDB are"
          " throwaway local servers (scripts/lib/dbs.sh: fsync off for PostgreSQL,"
          " innodb_flush_log_at_trx_commit=2 for MariaDB); `-tls` columns connect to them over"
          " TLS. Numbers drift between runs on shared machines: compare columns of one run.\n")
    print("Workloads, shaped like kube-apiserver's: create = Txn(mod==0 → put 1 KiB); update ="
          " get + Txn(mod==seen → put, else get); get = one key; list = paginated list of 10,000"
          " keys (limit 500, pinned revision), in lists/s; count = count-only over the 10,000"
          " keys; lease = grant + put with it; mixed = 20% create, 50% update, 10%"
          " delete-if-unchanged, 15% get, 5% list; watch = 100 watchers, 100 puts/s, latency"
          " from sending the put to each watcher receiving it.\n")
    print("How the costs grow with the number of keys and the length of the history (10k to 1M"
          " keys): [scale.md](scale.md), made by `scripts/bench.sh --scale`.\n")

    def throughput(l, w, c):
        r = by.get((l, w, c))
        if (l, w) in failed or r is None:
            return "failed" if (l, w) in failed else "-"
        cell = "%.0f" % r["ops_per_sec"] if r["ops_per_sec"] >= 10 else "%.1f" % r["ops_per_sec"]
        q = ratio(ops(l, w, c), ops(REF, w, c))
        if l != REF and q is not None:
            cell += " (%.2f)" % q
        if r["errors"]:
            cell += " (%d errors)" % r["errors"]
        return cell

    def against_kine(pair, w, c):
        q = ratio(ops(pair[0], w, c), ops(pair[1], w, c))
        return "%.1fx" % q if q is not None else "-"

    def latency(l, w, c):
        r = by.get((l, w, c))
        return "%.1f / %.1f" % (r["p50_ms"], r["p99_ms"]) if r else "-"

    print(f"## Throughput (ops/s; in brackets the ratio to {REF})\n")
    table([(l, l) for l in main_labels], throughput)
    pairs = [(k, KINE_OF[k]) for k in KOINE if k in main_labels and KINE_OF[k] in main_labels]
    if pairs:
        print("\n## Koine against kine on the same database (ratio of ops/s)\n")
        table([(f"{k} / {v}", (k, v)) for k, v in pairs], against_kine)
    print("\n## Latency p50 / p99 (ms)\n")
    table([(l, l) for l in main_labels], latency)
    if any(r.get("cpu_us_per_op") for r in by.values()):
        print("\n## CPU per operation (µs)\n")
        print("User + system CPU time of the server process, and of its database server (every"
              " PostgreSQL process; MariaDB's), over each measurement, divided by the operations"
              " answered: `server` or `server + database`. The load generator's own CPU is not"
              " counted; it shares the machine's cores with the server.\n")

        def cpu(label, w, c):
            r = by.get((label, w, c))
            us = (r or {}).get("cpu_us_per_op") or []
            if not us:
                return "-"
            if len(us) == 1:
                return "%.0f" % us[0]
            return "%.0f + %.0f" % (us[0], sum(us[1:]))
        table([(l, l) for l in main_labels], cpu)
    print("\n## Watch delivery latency (100 watchers, 100 puts/s)\n")
    print("| setup | events | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for l in labels:
        r = by.get((l, "watch", 100))
        if r:
            print("| %s | %d | %.2f | %.2f | %d |" % (l, r["ops"], r["p50_ms"], r["p99_ms"], r["errors"]))
        elif (l, "watch") in failed:
            print("| %s | failed | | | |" % l)
    print("\n`-x2`: watchers on one instance, puts through a second instance on the same database"
          " (Koine on PostgreSQL: LISTEN/NOTIFY; Koine on MariaDB: polling, `--poll-interval`;"
          " kine: its 1 s poll, shortened by its own inserts only).")

    if rss:
        print("\n## Memory (resident set, MiB)\n")
        print("| server | idle, after start | after the whole run above |")
        print("|---|---|---|")
        for l in main_labels:
            if l in rss:
                print("| %s | %.0f | %.0f |" % (l, rss[l]["idle_mib"], rss[l]["after_mib"]))

    if disk:
        print("\n## Bytes written to disk per update (16 clients, 1 KiB values)\n")
        print("`write_bytes` of `/proc/PID/io` over the update run at 16 clients: the server's,"
              " and its database server's (every PostgreSQL process; MariaDB's), divided by the"
              " updates answered.\n")
        ref = disk.get(REF)
        ref_b = ref["server_bytes"] / ref["updates"] if ref and ref["updates"] else None
        print("| server | updates | server bytes / update | database bytes / update | total, ratio to %s |" % REF)
        print("|---|---|---|---|---|")
        for l in main_labels:
            r = disk.get(l)
            if not r or not r["updates"]:
                continue
            srv, db = r["server_bytes"] / r["updates"], r["db_bytes"] / r["updates"]
            q = " (%.2fx)" % ((srv + db) / ref_b) if ref_b else ""
            print("| %s | %d | %.0f | %.0f | %.0f%s |" % (l, r["updates"], srv, db, srv + db, q))

    if k8s:
        kubernetes_level(k8s)

    print(f"\n## Against the targets, this run\n")
    print(f"Ratios to {REF} (SQLite target / PostgreSQL-MariaDB target) and to kine on the same"
          " database; ✔ met, ✘ not met.\n")
    cols = [k for k in KOINE if k in main_labels]
    print("| workload | clients | target | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for (w, levels, sq, db) in TARGETS:
        for c in levels:
            kn = kine_target(c)
            cells = []
            for k in cols:
                sqlite = k == "koine-sqlite"
                want = sq if sqlite else db
                q = ratio(ops(k, w, c), ops(REF, w, c))
                qk = ratio(ops(k, w, c), ops(KINE_OF[k], w, c))
                if q is None:
                    cells.append("-")
                    continue
                ok = q >= want and (qk is None or qk >= kn)
                extra = ""
                if w == "mixed":
                    mine, ref = by.get((k, w, c)), by.get((REF, w, c))
                    if mine and ref:
                        limit = MIXED_P99[0 if sqlite else 1] * ref["p99_ms"]
                        ok = ok and mine["p99_ms"] <= limit
                        extra = ", p99 %.0f vs %.0f ms" % (mine["p99_ms"], ref["p99_ms"])
                kine = "; kine %.1fx" % qk if qk is not None else ""
                cells.append("%s %.2fx%s%s" % ("✔" if ok else "✘", q, kine, extra))
            print("| %s | %d | %.1fx / %.1fx, kine %.0fx | %s |" % (w, c, sq, db, kn, " | ".join(cells)))
    ref_disk = disk.get(REF)
    if ref_disk and ref_disk["updates"]:
        ref_b = ref_disk["server_bytes"] / ref_disk["updates"]
        cells = []
        for k in cols:
            r = disk.get(k)
            if not r or not r["updates"] or not ref_b:
                cells.append("-")
                continue
            q = (r["server_bytes"] + r["db_bytes"]) / r["updates"] / ref_b
            want = DISK[0 if k == "koine-sqlite" else 1]
            cells.append("%s %.2fx" % ("✔" if q <= want else "✘", q))
        print("| bytes written per update | 16 | ≤ %.0fx / ≤ %.0fx etcd's | %s |"
              % (DISK[0], DISK[1], " | ".join(cells)))
    ref_watch = by.get((REF, "watch", 100))
    if ref_watch:
        cells = []
        for k in cols:
            r = by.get((k, "watch", 100))
            if not r:
                cells.append("-")
                continue
            limit = ref_watch["p99_ms"] + 1 if k == "koine-sqlite" else 10
            cells.append("%s %.1f ms" % ("✔" if r["p99_ms"] <= limit else "✘", r["p99_ms"]))
        print("| watch p99 | 100 | SQLite ≤ etcd + 1 ms (%.1f), others < 10 ms | %s |"
              % (ref_watch["p99_ms"] + 1, " | ".join(cells)))
    for l in labels:
        if l.startswith("koine") and l.endswith("-x2"):
            r = by.get((l, "watch", 100))
            if r:
                print("\nAcross instances (%s): watch p99 %.1f ms — %s (target < 50 ms)."
                      % (l, r["p99_ms"], "met" if r["p99_ms"] < 50 else "not met"))


if __name__ == "__main__":
    main()
