#!/usr/bin/env bash
# Robustness test of Koine, in the style of etcd's tests/robustness
# (conformance/cmd/robustness explains what is run and checked): clients
# on a few hot keys while Koine, the database and the connections between
# them fail; the history is checked for linearizability (porcupine) and
# the watch guarantees.
#
#   scripts/robustness.sh [--duration 20s] [--backend sqlite|postgres|mysql|all]
#                         [-- extra flags for the robustness program]
#
# Backends: sqlite (one Koine), postgres and mysql (three Koine on one
# throwaway PostgreSQL / MariaDB server, which the program starts, kills
# and freezes itself, run twice: clients reading through the instance they
# write through, then through another one); default: all three, one after
# another. Reports go to target/conformance/results/robustness-<backend>.json
# (-cross.json for the second run). The exit status is non-zero if any run
# failed.
#
# Environment: KOINE_BIN (default target/debug/koine, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/conformance.sh

duration=20s
backend=all
extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --duration) duration=$2; shift 2 ;;
        --backend) backend=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'
            exit 0
            ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $backend in
    all) backends=(sqlite postgres mysql) ;;
    sqlite | postgres | mysql) backends=("$backend") ;;
    *) echo "--backend sqlite|postgres|mysql|all" >&2; exit 2 ;;
esac

koine_bin

log "building the robustness test"
(cd "$MOD" && go build -o "$OUT/bin/" ./cmd/robustness)

rc=0
for b in "${backends[@]}"; do
    instances=1
    [ "$b" = sqlite ] || instances=3
    log "robustness: $b, $instances instance(s), $duration"
    "$OUT/bin/robustness" -backend "$b" -instances "$instances" -duration "$duration" \
        -koine-bin "$KOINE_BIN" -report "$OUT/results/robustness-$b.json" \
        ${extra[@]+"${extra[@]}"} || rc=1
    if [ "$instances" -gt 1 ]; then
        log "robustness: $b, $instances instance(s), reads through another instance, $duration"
        "$OUT/bin/robustness" -backend "$b" -instances "$instances" -duration "$duration" \
            -cross-reads -koine-bin "$KOINE_BIN" -report "$OUT/results/robustness-$b-cross.json" \
            ${extra[@]+"${extra[@]}"} || rc=1
    fi
done
exit $rc
