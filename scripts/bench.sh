#!/usr/bin/env bash
# Benchmarks Koine on SQLite, PostgreSQL and MariaDB against etcd 3.4 in the
# same run, with `koine bench`, and writes docs/benchmarks.md.
#
#   scripts/bench.sh [DURATION]        (default 5s per measurement)
#
# PostgreSQL and MariaDB are the local services unless KOINE_BENCH_PG /
# KOINE_BENCH_MYSQL give other DSNs; each run uses a fresh database.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5s}
PG=${KOINE_BENCH_PG:-postgres://postgres@127.0.0.1:5432}
MY=${KOINE_BENCH_MYSQL:-mysql://root@127.0.0.1:3306}
cargo build --release --bin koine
BIN=target/release/koine
WORK=$(mktemp -d /tmp/koine-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
stamp=$(date +%s)

wait_up() { for _ in $(seq 200); do ETCDCTL_API=3 etcdctl --endpoints "$1" endpoint health >/dev/null 2>&1 && return; sleep 0.1; done; echo "$1 not up" >&2; exit 1; }

etcd --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:24000 --advertise-client-urls http://127.0.0.1:24000 \
    --listen-peer-urls http://127.0.0.1:24010 --initial-advertise-peer-urls http://127.0.0.1:24010 \
    --initial-cluster default=http://127.0.0.1:24010 --log-level error --logger zap >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
koine() { "$BIN" --listen-address "127.0.0.1:$1" --endpoint "$2" --log-level warn >"$WORK/koine-$1.log" 2>&1 & PIDS+=($!); }
koine 24001 "sqlite://$WORK/koine.db"
koine 24002 "$PG/koine_bench_$stamp?sslmode=disable"
koine 24003 "$MY/koine_bench_$stamp"
koine 24004 "$PG/koine_bench_x_$stamp?sslmode=disable"
koine 24005 "$PG/koine_bench_x_$stamp?sslmode=disable"
koine 24006 "$MY/koine_bench_x_$stamp"
koine 24007 "$MY/koine_bench_x_$stamp"
for p in 24000 24001 24002 24003 24004 24005 24006 24007; do wait_up "127.0.0.1:$p"; done

run() { # label endpoint workload clients [extra…]
    local label=$1 ep=$2 wl=$3 cl=$4; shift 4
    "$BIN" bench --endpoint "http://$ep" --workload "$wl" --clients "$cl" --duration "$DUR" \
        --label "$label" --json "$@" 2>/dev/null
}
{
    for t in "etcd-3.4 127.0.0.1:24000" "koine-sqlite 127.0.0.1:24001" "koine-postgres 127.0.0.1:24002" "koine-mariadb 127.0.0.1:24003"; do
        set -- $t
        run "$1" "$2" create 1,16,64
        run "$1" "$2" update 16,64
        run "$1" "$2" get 1,16,64
        run "$1" "$2" list 1,16
        run "$1" "$2" count 16
        run "$1" "$2" lease 16,64
        run "$1" "$2" mixed 16,64
        run "$1" "$2" watch 1 --watchers 100 --watch-rate 100
    done
    run "koine-postgres-2-instances" 127.0.0.1:24004 watch 1 --watchers 100 --watch-rate 100 --write-endpoint http://127.0.0.1:24005
    run "koine-mariadb-2-instances" 127.0.0.1:24006 watch 1 --watchers 100 --watch-rate 100 --write-endpoint http://127.0.0.1:24007
} >"$WORK/results.jsonl"

python3 - "$WORK/results.jsonl" "$DUR" <<'PY' >docs/benchmarks.md
import json, sys, subprocess, platform, os
rows = []
dec = json.JSONDecoder()
text = open(sys.argv[1]).read()
i = 0
while i < len(text):
    while i < len(text) and text[i].isspace(): i += 1
    if i >= len(text): break
    obj, i = dec.raw_decode(text, i)
    rows.extend(obj)
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print("# Benchmarks\n")
print("Produced by `scripts/bench.sh %s` (each figure one %s run of `koine bench`), on a %s-core"
      " machine (%s), all servers and the load generator on the same machine over loopback."
      " etcd is Debian's 3.4 measured in the same run. PostgreSQL 15 and MariaDB are the local"
      " services with default settings. Numbers drift between runs on shared machines; compare"
      " columns, not runs.\n" % (sys.argv[2], sys.argv[2], cpu, platform.platform()))
print("Workloads (kube-apiserver-shaped): create = Txn(mod==0 -> put 1 KiB);"
      " update = get + Txn(mod==seen -> put); get = single key; list = paginated list of 10,000 keys"
      " (limit 500, pinned revision), in lists/s; count = count-only over 10,000 keys; lease = grant + put"
      " with lease; mixed = 20% create, 50% update, 10% delete, 15% get, 5% list; watch = 100 watchers,"
      " 100 puts/s, latency from sending the put to each watcher receiving it.\n")
labels = []
for r in rows:
    if r["label"] not in labels: labels.append(r["label"])
keys = []
for r in rows:
    k = (r["workload"], r["clients"])
    if r["workload"] != "watch" and k not in keys: keys.append(k)
main = [l for l in labels if "instances" not in l]
print("## Throughput (ops/s)\n")
print("| workload | clients | " + " | ".join(main) + " |")
print("|---|---|" + "---|" * len(main))
by = {(r["label"], r["workload"], r["clients"]): r for r in rows}
for (w, c) in keys:
    cells = []
    for l in main:
        r = by.get((l, w, c))
        cells.append("%.0f" % r["ops_per_sec"] + (" (%d err)" % r["errors"] if r and r["errors"] else "") if r else "-")
    print("| %s | %d | %s |" % (w, c, " | ".join(cells)))
print("\n## Latency p50 / p99 (ms)\n")
print("| workload | clients | " + " | ".join(main) + " |")
print("|---|---|" + "---|" * len(main))
for (w, c) in keys:
    cells = []
    for l in main:
        r = by.get((l, w, c))
        cells.append("%.2f / %.2f" % (r["p50_ms"], r["p99_ms"]) if r else "-")
    print("| %s | %d | %s |" % (w, c, " | ".join(cells)))
print("\n## Watch delivery latency (100 watchers, 100 puts/s)\n")
print("| setup | events | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|")
for r in rows:
    if r["workload"] == "watch":
        print("| %s | %d | %.2f | %.2f | %d |" % (r["label"], r["ops"], r["p50_ms"], r["p99_ms"], r["errors"]))
print("\n`*-2-instances`: watchers on one Koine instance, puts through another instance on the same"
      " database (PostgreSQL: LISTEN/NOTIFY; MariaDB: polling every 100 ms, the `--poll-interval` default).")
PY
echo "wrote docs/benchmarks.md"
