#!/usr/bin/env bash
# Benchmarks Koine against etcd and kine, back to back on this machine, with
# `koine bench` (every answer verified), and writes docs/benchmarks.md.
#
#   scripts/bench.sh [--duration 5s] [--targets LIST] [--out FILE]
#   scripts/bench.sh --scale 10000,100000,1000000 [--targets LIST]
#
# --scale: how costs grow with the data set instead. For each target (default
# etcd-3.7, koine-sqlite, koine-postgres, koine-mariadb) and each size N, a
# fresh server is loaded with N keys of 256 bytes, each written H times (a
# history of N*H revisions, H = 10 capped at 2M revisions), then measured:
# the load itself (puts/s), get and create at 16 clients, a paginated list
# of one 1,000-key namespace at 16 clients, physical compaction of the whole
# history (revisions/s), 1,000 watchers on the loaded server, and RSS; then
# the server is stopped (SIGTERM) and started again on the same data, and
# the time until it answers a read (Koine: its key index rebuilt from the
# log) and its RSS then are recorded. Writes
# docs/scale.md and docs/scale.png (matplotlib, installed into a venv under
# target/ from PyPI on first use).
#
# Targets (default: all), each started alone on fresh data, measured, and
# stopped before the next:
#   etcd-3.7            etcd v3.7.3 built from the Go module proxy (the reference)
#   etcd-3.4            Debian's etcd-server (skipped when not installed)
#   koine-sqlite        Koine on its embedded default
#   koine-postgres      Koine on PostgreSQL, plain TCP; -tls: TLS to the database
#   koine-mariadb       Koine on MariaDB, plain TCP; -tls: TLS to the database
#   kine-sqlite, kine-postgres, kine-mariadb   kine v0.17.5 from the module proxy
#   koine-postgres-x2, koine-mariadb-x2, kine-postgres-x2, kine-mariadb-x2
#                       watch only: watchers on one instance, puts through a
#                       second instance on the same database
#   k8s-etcd, k8s-sqlite, k8s-postgres, k8s-mysql, k8s-kine-sqlite,
#   k8s-kine-postgres, k8s-kine-mysql
#                       a real kube-apiserver (+ controller-manager) on that
#                       storage: 10,000 ConfigMaps created by 32 client-go
#                       clients, then listed (conformance/cmd/e2e, check
#                       bench-configmaps)
# PostgreSQL and MariaDB are throwaway servers (scripts/lib/dbs.sh) offering
# TLS; nothing else runs during the measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/dbs.sh
source scripts/lib/proc.sh
source scripts/lib/conformance.sh

DUR=5s
TARGETS="etcd-3.7 etcd-3.4 koine-sqlite koine-postgres koine-postgres-tls koine-mariadb koine-mariadb-tls kine-sqlite kine-postgres kine-mariadb koine-postgres-x2 koine-mariadb-x2 kine-postgres-x2 kine-mariadb-x2 k8s-etcd k8s-sqlite k8s-postgres k8s-mysql k8s-kine-sqlite k8s-kine-postgres k8s-kine-mysql"
DOC=docs/benchmarks.md
SCALE=
TARGETS_GIVEN=
while [ $# -gt 0 ]; do
    case $1 in
        --duration) DUR=$2; shift 2 ;;
        --targets) TARGETS=${2//,/ }; TARGETS_GIVEN=1; shift 2 ;;
        --out) DOC=$2; shift 2 ;;
        --scale) SCALE=${2//,/ }; shift 2 ;;
        *) echo "usage: $0 [--duration 5s] [--targets a,b] [--out FILE] [--scale N,N]" >&2; exit 2 ;;
    esac
done
if [ -n "$SCALE" ]; then
    [ -n "$TARGETS_GIVEN" ] || TARGETS="etcd-3.7 koine-sqlite koine-postgres koine-mariadb"
    [ "$DOC" != docs/benchmarks.md ] || DOC=docs/scale.md
    PLOTENV=$ROOT/target/plotenv
    if ! "$PLOTENV/bin/python" -c "import matplotlib" 2>/dev/null; then
        log "installing matplotlib into $PLOTENV (PyPI)"
        python3 -m venv "$PLOTENV"
        "$PLOTENV/bin/pip" install --quiet matplotlib
    fi
fi

log "building koine (release), etcd and kine"
cargo build --release --bin koine
KOINE=$ROOT/target/release/koine
(cd "$MOD" && go build -o "$OUT/bin/" ./cmd/etcd github.com/k3s-io/kine)
if [[ " $TARGETS " == *" k8s-"* ]]; then
    log "building kube-apiserver, kube-controller-manager, kubectl and the e2e driver"
    (cd "$MOD" && go build -o "$OUT/bin/" ./cmd/e2e k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
fi
ETCD37=$OUT/bin/etcd
KINE=$OUT/bin/kine

WORK=$(mktemp -d /tmp/koine-bench.XXXXXX)
SERVERS=()
stop_servers() {
    local p
    for p in "${SERVERS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${SERVERS[@]}"; do wait "$p" 2>/dev/null || true; done
    SERVERS=()
}
cleanup() { stop_servers; dbs_stop_all; rm -rf "$WORK"; }
trap cleanup EXIT

log "starting PostgreSQL and MariaDB (with TLS offered)"
pg_start PG tls
maria_start MY tls
PG_BASE=${PG%/kubernetes*}
MY_BASE=${MY%/kubernetes}
MY_HOSTPORT=${MY_BASE#mysql://root@}
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
n=0

# rss PID: resident set size in MiB.
rss() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# up PORT: waits until an etcd client gets an answer from 127.0.0.1:PORT.
up() {
    for _ in $(seq 300); do
        "$KOINE" bench --endpoint "http://127.0.0.1:$1" --workload count --clients 1 --keys 0 \
            --duration 1ms >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    return 1
}

# restart KIND PORT [ENDPOINT]: stops the server (SIGTERM, as a service
# manager would) and starts it again on the same data and port; sets
# STOP_SECS to the seconds it took to exit, RESTART_SECS to the seconds
# until it answered a read.
restart() {
    local t0 t1
    t0=$(date +%s.%N)
    kill -TERM "${SERVERS[0]}"
    wait "${SERVERS[0]}" 2>/dev/null || true
    SERVERS=()
    t1=$(date +%s.%N)
    STOP_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    t0=$(date +%s.%N)
    start "$@"
    t1=$(date +%s.%N)
    RESTART_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}

# start KIND PORT [ENDPOINT]: one server; its pid in SERVERS.
start() {
    local kind=$1 port=$2 ep=${3:-} peer
    case $kind in
        etcd-3.7 | etcd-3.4)
            peer=$(free_port)
            "$([ "$kind" = etcd-3.7 ] && echo "$ETCD37" || echo etcd)" --data-dir "$WORK/etcd-$port" \
                --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
                --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
                --initial-cluster "default=http://127.0.0.1:$peer" --log-level error \
                >"$WORK/$kind-$port.log" 2>&1 &
            ;;
        koine)
            "$KOINE" --listen-address "127.0.0.1:$port" --endpoint "$ep" --log-level warn \
                >"$WORK/koine-$port.log" 2>&1 &
            ;;
        kine)
            "$KINE" --listen-address "127.0.0.1:$port" --endpoint "$ep" --metrics-bind-address 0 \
                >"$WORK/kine-$port.log" 2>&1 &
            ;;
    esac
    SERVERS+=($!)
    up "$port"
}

# endpoint TARGET: the datastore endpoint of a Koine or kine target (a
# database of its own).
endpoint() {
    local db=bench_$((n += 1))
    case $1 in
        koine-sqlite) echo "sqlite://$WORK/$db.db" ;;
        kine-sqlite) echo "sqlite://$WORK/$db.db" ;;
        koine-postgres*) echo "$PG_BASE/$db?sslmode=$([[ $1 == *-tls ]] && echo require || echo disable)" ;;
        kine-postgres*) echo "$PG_BASE/$db?sslmode=disable" ;;
        koine-mariadb*) echo "$MY_BASE/$db?ssl-mode=$([[ $1 == *-tls ]] && echo REQUIRED || echo DISABLED)" ;;
        kine-mariadb*) echo "mysql://root@tcp($MY_HOSTPORT)/$db" ;;
    esac
}

# bench LABEL PORT WORKLOAD CLIENTS [ARGS…]: one measurement, a JSON line.
bench() {
    local label=$1 port=$2 wl=$3 cl=$4
    shift 4
    "$KOINE" bench --endpoint "http://127.0.0.1:$port" --workload "$wl" --clients "$cl" \
        --duration "$DUR" --label "$label" --json ${CPU_PIDS:+--cpu-pids "$CPU_PIDS"} "$@" \
        2>>"$WORK/bench.err" >>"$RESULTS" ||
        echo "{\"label\":\"$label\",\"workload\":\"$wl\",\"failed\":true}" >>"$RESULTS"
}

# scale TARGET: the --scale measurements of one target, a fresh server per
# size.
scale() {
    local t=$1 keys history port server
    for keys in $SCALE; do
        history=$((2000000 / keys))
        history=$((history > 10 ? 10 : history < 1 ? 1 : history))
        port=$(free_port)
        log "$t, $keys keys x $history"
        case $t in
            etcd-*) server=("$t" "$port") ;;
            *) server=("${t%%-*}" "$port" "$(endpoint "$t")") ;;
        esac
        start "${server[@]}"
        local args=(--keys "$keys" --history "$history" --value-size 256 --list-keys 1000)
        bench "$t@$keys" "$port" load 1 "${args[@]}"
        bench "$t@$keys" "$port" get 16 "${args[@]}"
        bench "$t@$keys" "$port" create 16 "${args[@]}"
        bench "$t@$keys" "$port" list 16 "${args[@]}"
        bench "$t@$keys" "$port" compact 1 "${args[@]}"
        bench "$t@$keys" "$port" watch 1 "${args[@]}" --watchers 1000 --watch-rate 20
        echo "{\"label\":\"$t@$keys\",\"workload\":\"rss\",\"after_mib\":$(rss "${SERVERS[0]}")}" >>"$RESULTS"
        restart "${server[@]}"
        echo "{\"label\":\"$t@$keys\",\"workload\":\"restart\",\"seconds\":$RESTART_SECS,\"stop_seconds\":$STOP_SECS,\"after_mib\":$(rss "${SERVERS[0]}")}" >>"$RESULTS"
        stop_servers
    done
}

if [ -n "$SCALE" ]; then
    for t in $TARGETS; do scale "$t"; done
    cp "$RESULTS" "$OUT/results/scale.jsonl"
    "$PLOTENV/bin/python" scripts/lib/scale_report.py "$RESULTS" "$DUR" "${DOC%.md}.png" >"$DOC"
    log "wrote $DOC and ${DOC%.md}.png (raw results: $OUT/results/scale.jsonl)"
    exit 0
fi

CPU_PIDS=
for t in $TARGETS; do
    port=$(free_port)
    CPU_PIDS=
    case $t in
        etcd-3.4) command -v etcd >/dev/null || { log "$t: no Debian etcd, skipped"; continue; } ;;
    esac
    log "$t"
    case $t in
        k8s-*)
            backend=${t#k8s-}
            dsn=
            case $backend in
                *postgres) dsn="$PG_BASE/x?sslmode=disable" ;;
                *mysql) dsn="$MY_BASE/x" ;;
            esac
            "$OUT/bin/e2e" -backend "$backend" ${dsn:+-dsn "$dsn"} -koine-bin "$KOINE" \
                -bin-dir "$OUT/bin" -checks bench-configmaps -report "$WORK/$t.json" \
                >>"$WORK/bench.err" 2>&1 || true
            python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
c = next((c for c in r["checks"] if c["name"] == "bench-configmaps"), None)
ok = c is not None and c["status"] == "pass"
print(json.dumps(dict(label=sys.argv[2], workload="k8s", failed=not ok, **((c or {}).get("details") or {}))))' \
                "$WORK/$t.json" "$t" >>"$RESULTS" ||
                echo "{\"label\":\"$t\",\"workload\":\"k8s\",\"failed\":true}" >>"$RESULTS"
            continue
            ;;
        *-x2)
            kind=${t%%-*}
            ep=$(endpoint "${t%-x2}")
            port2=$(free_port)
            start "$kind" "$port" "$ep"
            start "$kind" "$port2" "$ep"
            bench "$t" "$port" watch 1 --write-endpoint "http://127.0.0.1:$port2"
            stop_servers
            continue
            ;;
        etcd-*) start "$t" "$port" ;;
        *) start "${t%%-*}" "$port" "$(endpoint "$t")" ;;
    esac
    sleep 2
    idle=$(rss "${SERVERS[0]}")
    case $t in
        *postgres*) dbpid=${DBS_PIDS[0]} ;;
        *mariadb*) dbpid=${DBS_PIDS[1]} ;;
        *) dbpid= ;;
    esac
    # CPU per operation: the server's, and its database server's.
    CPU_PIDS=${SERVERS[0]}${dbpid:+,$dbpid}
    bench "$t" "$port" create 1,16,64
    # Bytes written to disk per update (16 clients, 1 KiB values): the
    # server's, and its database server's.
    w0=$(written "${SERVERS[0]}") d0=$([ -n "$dbpid" ] && written "$dbpid" || echo 0)
    bench "$t" "$port" update 16
    w1=$(written "${SERVERS[0]}") d1=$([ -n "$dbpid" ] && written "$dbpid" || echo 0)
    # The last result: the update run above (one client level).
    ops=$(python3 -c 'import sys; sys.path.insert(0, "scripts/lib"); from bench_report import load
print(load(sys.argv[1])[-1].get("ops", 0))' "$RESULTS" 2>/dev/null || echo 0)
    echo "{\"label\":\"$t\",\"workload\":\"disk\",\"updates\":$ops,\"server_bytes\":$((w1 - w0)),\"db_bytes\":$((d1 - d0))}" >>"$RESULTS"
    bench "$t" "$port" update 64
    bench "$t" "$port" get 16,64
    bench "$t" "$port" list 1,16
    bench "$t" "$port" count 16
    bench "$t" "$port" lease 16
    bench "$t" "$port" mixed 16,64
    bench "$t" "$port" watch 1
    echo "{\"label\":\"$t\",\"workload\":\"rss\",\"idle_mib\":$idle,\"after_mib\":$(rss "${SERVERS[0]}")}" >>"$RESULTS"
    stop_servers
done

cp "$RESULTS" "$OUT/results/bench.jsonl"
python3 scripts/lib/bench_report.py "$RESULTS" "$DUR" >"$DOC"
log "wrote $DOC (raw results: $OUT/results/bench.jsonl)"
