#!/usr/bin/env bash
# A/B comparison of Koine builds: the before/after figures of a performance
# change. Each round starts every build in turn on fresh data (a new SQLite
# file, or a new database on one throwaway PostgreSQL / MariaDB server) and
# runs `koine bench` against it; builds alternate round by round, so drift
# of a shared machine hits both alike. Reports ops/s, p50 / p99, the
# server's CPU time per operation (from /proc, user + system) and the bytes
# it wrote to disk per operation (/proc/PID/io write_bytes; SQLite's
# writes are the server's, a database server's are not counted).
#
#   scripts/ab.sh [--db sqlite|postgres|mariadb] [--rounds N]
#                 [--workload W[,W..]] [--clients C[,C..]] [--duration 5s]
#                 BUILD_A BUILD_B [BUILD..] [-- extra koine bench flags]
#
# A BUILD is a koine binary (copy target/release/koine aside before you
# change the code). Example:
#   cp target/release/koine /tmp/koine-before   # ... change, cargo build --release
#   scripts/ab.sh --workload create,update --clients 16,64 /tmp/koine-before target/release/koine
set -euo pipefail
cd "$(dirname "$0")/.."

db=sqlite rounds=3 workload=create,update,get clients=16 duration=5s
builds=() extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --db) db=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --workload) workload=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) builds+=("$1"); shift ;;
    esac
done
[ ${#builds[@]} -ge 2 ] || { echo "usage: scripts/ab.sh [options] BUILD_A BUILD_B [..]" >&2; exit 2; }
for b in "${builds[@]}"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
bench=${KOINE_BENCH:-${builds[0]}}

. scripts/lib/dbs.sh
. scripts/lib/proc.sh
work=$(mktemp -d /tmp/koine-ab.XXXXXX)
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null
    dbs_stop_all
    rm -rf "$work"
}
trap cleanup EXIT

case "$db" in
sqlite) ;;
postgres) pg_start base_dsn ;;
mariadb) maria_start base_dsn ;;
*) echo "--db is sqlite, postgres or mariadb" >&2; exit 2 ;;
esac

# dsn N: a fresh database for run N.
dsn() {
    case "$db" in
    sqlite) echo "sqlite://$work/run$1.db" ;;
    *) echo "${base_dsn/\/kubernetes/\/ab$1}" ;;
    esac
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "| round | build | workload | clients | ops/s | p50 ms | p99 ms | server CPU µs/op | server bytes written/op |"
echo "|---|---|---|---|---|---|---|---|---|"
run=0
for round in $(seq "$rounds"); do
    for b in "${builds[@]}"; do
        run=$((run + 1))
        port=$(free_port)
        "$b" --listen-address "127.0.0.1:$port" --endpoint "$(dsn $run)" --log-level warn \
            >"$work/server$run.log" 2>&1 &
        server=$!
        for _ in $(seq 100); do
            curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
            sleep 0.1
        done
        for w in ${workload//,/ }; do
            for c in ${clients//,/ }; do
                t0=$(cpu_ticks "$server") w0=$(written "$server")
                out=$("$bench" bench --endpoint "http://127.0.0.1:$port" --workload "$w" \
                    --clients "$c" --duration "$duration" --json "${extra[@]}" 2>"$work/bench.err") || { cat "$work/bench.err" >&2; exit 1; }
                t1=$(cpu_ticks "$server") w1=$(written "$server")
                python3 - "$round" "$b" "$t0" "$t1" "$(getconf CLK_TCK)" "$out" "$w0" "$w1" <<'PY'
import json, sys
rnd, build, t0, t1, hz, out, w0, w1 = sys.argv[1:]
for r in json.loads(out):
    cpu_us = (int(t1) - int(t0)) / int(hz) * 1e6
    ops = max(r["ops"], 1)
    print("| %s | %s | %s | %s | %.0f | %.2f | %.2f | %.0f | %.0f |" % (
        rnd, build, r["workload"], r["clients"], r["ops_per_sec"],
        r["p50_ms"], r["p99_ms"], cpu_us / ops, (int(w1) - int(w0)) / ops))
PY
            done
        done
        kill "$server"
        wait "$server" 2>/dev/null || true
        server=""
    done
done
