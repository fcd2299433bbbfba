#!/usr/bin/env bash
# The docker-compose.yml HA topology as processes on loopback: one
# PostgreSQL and three Koine instances (127.0.0.1:23791-23793).
#
#   scripts/ha-demo.sh            start everything; Ctrl-C stops it
#   scripts/ha-demo.sh --check    start, then show clients continuing while
#                                 an instance is killed (-9); exit 0 on success
#
# Environment: KOINE_BIN (default: target/release/koine, built if missing),
# KOINE_HA_DSN (use this PostgreSQL instead of starting a throwaway one),
# KOINE_HA_BASE_PORT (default 23791).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${KOINE_BIN:-target/release/koine}
BASE=${KOINE_HA_BASE_PORT:-23791}
WORK=$(mktemp -d /tmp/koine-ha-demo.XXXXXX)
PIDS=()
PG_DATA=""

cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        kill -9 "$(head -1 "$PG_DATA/postmaster.pid")" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x "$BIN" ]; then
    cargo build --release --bin koine
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -n "${KOINE_HA_DSN:-}" ]; then
    DSN=$KOINE_HA_DSN
else
    # A throwaway PostgreSQL in $WORK (initdb refuses root: run as postgres).
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    PG_DATA=$WORK/pg
    AS=""
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$WORK"
        AS="setpriv --reuid=postgres --regid=postgres --init-groups"
    fi
    $AS "$PGBIN/initdb" -D "$PG_DATA" -U postgres --auth=trust --no-sync >"$WORK/initdb.log" 2>&1
    PGPORT=$(free_port)
    $AS "$PGBIN/postgres" -D "$PG_DATA" -p "$PGPORT" -h 127.0.0.1 -k "$WORK" >"$WORK/pg.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PGPORT" -q && break
        sleep 0.1
    done
    DSN="postgres://postgres@127.0.0.1:$PGPORT/kubernetes?sslmode=disable"
fi

ENDPOINTS=()
KOINE_PIDS=()
for i in 1 2 3; do
    port=$((BASE + i - 1))
    "$BIN" --listen-address "127.0.0.1:$port" --endpoint "$DSN" --name "koine-$i" \
        --log-level info >"$WORK/koine-$i.log" 2>&1 &
    PIDS+=($!)
    KOINE_PIDS+=($!)
    ENDPOINTS+=("127.0.0.1:$port")
done
ALL=$(IFS=,; echo "${ENDPOINTS[*]}")
export ETCDCTL_API=3
for e in "${ENDPOINTS[@]}"; do
    for _ in $(seq 100); do
        etcdctl --endpoints "$e" endpoint health >/dev/null 2>&1 && break
        sleep 0.1
    done
done
echo "Koine HA demo: PostgreSQL + 3 Koine instances at $ALL"

if [ "${1:-}" != "--check" ]; then
    echo "try: ETCDCTL_API=3 etcdctl --endpoints $ALL put hello world"
    wait
    exit 0
fi

fail() { echo "FAIL: $*" >&2; for f in "$WORK"/koine-*.log; do echo "== $f"; tail -5 "$f"; done >&2; exit 1; }

# Writes through one instance are read through the others.
etcdctl --endpoints "${ENDPOINTS[0]}" put demo/a 1 >/dev/null || fail "put via koine-1"
[ "$(etcdctl --endpoints "${ENDPOINTS[1]}" get demo/a --print-value-only)" = "1" ] || fail "read via koine-2"
# A watch on koine-3 sees a write made through koine-2.
etcdctl --endpoints "${ENDPOINTS[2]}" watch demo/w >"$WORK/watch.out" 2>/dev/null &
WATCH=$!
PIDS+=($WATCH)
sleep 0.5
etcdctl --endpoints "${ENDPOINTS[1]}" put demo/w seen >/dev/null || fail "put via koine-2"
for _ in $(seq 50); do grep -q seen "$WORK/watch.out" && break; sleep 0.1; done
grep -q seen "$WORK/watch.out" || fail "watch on koine-3 missed a write via koine-2"
echo "ok: writes, reads and watches cross instances"

# Kill koine-1 (-9): a client given all three endpoints keeps working.
kill -9 "${KOINE_PIDS[0]}"
for i in $(seq 1 20); do
    etcdctl --endpoints "$ALL" --command-timeout=3s put "demo/after/$i" "$i" >/dev/null 2>&1 \
        || fail "put $i after killing koine-1"
done
n=$(etcdctl --endpoints "${ENDPOINTS[2]}" get demo/after/ --prefix --keys-only | grep -c .)
[ "$n" = "20" ] || fail "expected 20 keys after the kill, got $n"
echo "ok: koine-1 killed, clients continued on koine-2 and koine-3 (20/20 writes)"
