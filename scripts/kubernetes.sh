#!/usr/bin/env bash
# Kubernetes as the judge of Koine (docs/kubernetes.md explains each part).
#
#   scripts/kubernetes.sh build                 build the Go side: storage test
#                                               binaries (etcd, Koine, kine
#                                               variants), etcd, kube-apiserver,
#                                               kube-controller-manager, kubectl
#                                               and the e2e driver
#   scripts/kubernetes.sh storage [BACKEND...]  run k8s.io/apiserver's storage
#                                               tests (pkg/storage/etcd3/... and
#                                               pkg/storage/cacher/...) on each
#                                               backend: sqlite postgres mysql
#                                               (Koine), etcd (embedded, the
#                                               baseline), kine-sqlite,
#                                               kine-postgres, kine-mysql;
#                                               default: all of them
#   scripts/kubernetes.sh e2e --backend B [--instances 3] [-checks a,b]
#                                               a real control plane on backend
#                                               B (sqlite|postgres|mysql|etcd,
#                                               or kine-sqlite|kine-postgres|
#                                               kine-mysql for measurements),
#                                               driven by kubectl and client-go;
#                                               --instances 3 puts three Koine
#                                               on one database (postgres,
#                                               mysql) behind one apiserver
#
# Versions are pinned in conformance/go.mod (k8s.io/apiserver v0.37.2,
# k8s.io/kubernetes v1.37.2, kine v0.17.5, etcd v3.7.3); everything is built
# from the Go module proxy into target/conformance/. Storage results go to
# target/conformance/results/<backend>.json (go test -json) and a summary
# table to target/conformance/results/summary.md; control-plane results to
# target/conformance/results/e2e-<backend>.json.
#
# Environment: KOINE_BIN (default target/debug/koine, built if missing),
# STORAGE_RUN (a -test.run regexp), STORAGE_TIMEOUT (default 30m per binary).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/conformance.sh
source scripts/lib/dbs.sh

# The two trees of the suite; each builds into a directory of its own, since
# both hold packages named metrics and testing.
STORAGE_TREES=(etcd3 cacher)
ALL_BACKENDS=(etcd sqlite postgres mysql kine-sqlite kine-postgres kine-mysql)

# The storage suite is built from a copy of k8s.io/apiserver (go refuses
# overlays of files in the module cache): the module at the version
# conformance/go.mod pins, checked by the go command against go.sum, copied
# to $OUT/apiserver and used through a generated go.mod (-modfile) that
# replaces k8s.io/apiserver with the copy. All three variants are built the
# same way; only the overlay differs.
prepare_apiserver() {
    local version dir
    version=$(cd "$MOD" && go list -m -f '{{.Version}}' k8s.io/apiserver)
    dir=$(cd "$MOD" && go mod download -json "k8s.io/apiserver@$version" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    if [ ! -f "$OUT/apiserver/.version" ] || [ "$(cat "$OUT/apiserver/.version")" != "$version" ]; then
        rm -rf "$OUT/apiserver"
        cp -r "$dir" "$OUT/apiserver"
        chmod -R u+w "$OUT/apiserver"
        echo "$version" >"$OUT/apiserver/.version"
    fi
    cp "$MOD/go.mod" "$OUT/storage.mod"
    cp "$MOD/go.sum" "$OUT/storage.sum"
    (cd "$MOD" && go mod edit -modfile="$OUT/storage.mod" -replace "k8s.io/apiserver=$OUT/apiserver")
}

# Writes an overlay for `go test -overlay` that swaps the apiserver's
# testserver for conformance/testserver/$1 (and, for kine, patches two test
# files the way kine's own CI does). An empty overlay for the baseline.
write_overlay() {
    local variant=$1 file=$2 apiserver=$OUT/apiserver patched
    case $variant in
        etcd) echo '{"Replace": {}}' >"$file" ;;
        koine)
            cat >"$file" <<JSON
{"Replace": {
  "$apiserver/pkg/storage/etcd3/testserver/test_server.go": "$MOD/testserver/koine/test_server.go"
}}
JSON
            ;;
        kine)
            # kine starts at revision 2 (its compact key) and is slower to
            # compact than the test's 100 ms allows: the two patches kine's
            # CI applies (scripts/test-helpers in kine's repository).
            patched=$OUT/overlay/kine
            mkdir -p "$patched"
            sed 's|NewTooLargeResourceVersionError(uint64(102), 1, 0)|NewTooLargeResourceVersionError(uint64(102), 2, 0)|' \
                "$apiserver/pkg/storage/etcd3/watcher_test.go" >"$patched/watcher_test.go"
            sed 's|waitTimeout = 100 \* waitDelay|waitTimeout = 500 * waitDelay|' \
                "$apiserver/pkg/storage/etcd3/compact_test.go" >"$patched/compact_test.go"
            cat >"$file" <<JSON
{"Replace": {
  "$apiserver/pkg/storage/etcd3/testserver/test_server.go": "$MOD/testserver/kine/test_server.go",
  "$apiserver/pkg/storage/etcd3/watcher_test.go": "$patched/watcher_test.go",
  "$apiserver/pkg/storage/etcd3/compact_test.go": "$patched/compact_test.go"
}}
JSON
            ;;
    esac
}

build_storage() {
    local variant dir tree variants=("$@")
    [ ${#variants[@]} -gt 0 ] || variants=(etcd koine kine)
    prepare_apiserver
    for variant in "${variants[@]}"; do
        dir=$OUT/storage/$variant
        write_overlay "$variant" "$OUT/overlay-$variant.json"
        for tree in "${STORAGE_TREES[@]}"; do
            log "building storage tests: $tree ($variant)"
            mkdir -p "$dir/$tree"
            (cd "$MOD" && go test -c -modfile="$OUT/storage.mod" -overlay "$OUT/overlay-$variant.json" \
                -o "$dir/$tree/" "k8s.io/apiserver/pkg/storage/$tree/...")
        done
    done
}

# etcd 3.6 (server and etcdutl), the release the snapshot tests restore
# Koine's snapshots with beside the 3.7 this module pins: the same two
# commands of this module (cmd/etcd, cmd/etcdutl) built against a go.mod of
# their own, generated here, that requires etcd at ETCD36_VERSION (pinned;
# `go get` resolves the rest from those releases' own go.mod files).
ETCD36_VERSION=v3.6.16
build_etcd36() {
    local modfile=$OUT/etcd36/go.mod
    mkdir -p "$OUT/etcd36"
    if [ ! -f "$modfile" ] || ! grep -q "go.etcd.io/etcd/server/v3 $ETCD36_VERSION" "$modfile"; then
        printf 'module koine.local/conformance\n\ngo 1.26.5\n' >"$modfile"
        rm -f "$OUT/etcd36/go.sum"
        (cd "$MOD" && go get -modfile="$modfile" \
            "go.etcd.io/etcd/server/v3@$ETCD36_VERSION" "go.etcd.io/etcd/etcdutl/v3@$ETCD36_VERSION")
    fi
    log "building etcd and etcdutl $ETCD36_VERSION"
    (cd "$MOD" && go build -modfile="$modfile" -o "$OUT/etcd36/" ./cmd/etcd ./cmd/etcdutl)
}

build_bins() {
    mkdir -p "$OUT/bin"
    build_etcd36
    log "building etcd, etcdutl, kine, kube-apiserver, kube-controller-manager, kubectl, e2e"
    (cd "$MOD" && go build -o "$OUT/bin/" \
        ./cmd/etcd ./cmd/etcdutl ./cmd/e2e github.com/k3s-io/kine \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kubectl)
}

# run_storage BACKEND: runs every storage test binary of the backend's
# variant, one after another, recording go test -json events.
run_storage() {
    local backend=$1 variant dsn="" bin pkg json rc=0
    case $backend in
        etcd) variant=etcd ;;
        sqlite | postgres | mysql) variant=koine ;;
        kine-*) variant=kine ;;
        *) echo "unknown backend $backend" >&2; return 2 ;;
    esac
    case $backend in
        postgres | kine-postgres) pg_start dsn ;;
        mysql | kine-mysql) maria_start dsn ;;
    esac
    mkdir -p "$OUT/results"
    json=$OUT/results/$backend.json
    : >"$json"
    for bin in "$OUT/storage/$variant"/*/*.test; do
        pkg=$(basename "$(dirname "$bin")")/$(basename "$bin" .test)
        log "storage tests: $pkg on $backend"
        # kine's DSNs: its PostgreSQL and MySQL drivers read these forms.
        local kine_dsn=$dsn
        [ "$backend" = kine-mysql ] && kine_dsn=$(echo "$dsn" | sed -E 's|mysql://([^@]*)@([^/]*)/|mysql://\1@tcp(\2)/|')
        (
            cd "$(mktemp -d)"
            KOINE_TEST_DSN=$dsn KINE_ENDPOINT=$kine_dsn \
                "$bin" -test.v=test2json -test.count=1 -test.timeout="${STORAGE_TIMEOUT:-30m}" \
                ${STORAGE_RUN:+-test.run "$STORAGE_RUN"} 2>&1 |
                go tool test2json -p "$pkg" -t
        ) >>"$json" || rc=1
    done
    dbs_stop_all
    return $rc
}

# run_e2e --backend B [--instances N] [e2e flags...]: a real control plane
# on B (conformance/cmd/e2e does the work; for postgres and mysql a
# throwaway server is started here). Report: $OUT/results/e2e-B.json.
run_e2e() {
    local backend="" instances=1 dsn="" rest=()
    while [ $# -gt 0 ]; do
        case $1 in
            --backend) backend=$2; shift 2 ;;
            --instances) instances=$2; shift 2 ;;
            *) rest+=("$1"); shift ;;
        esac
    done
    case $backend in
        sqlite | etcd | kine-sqlite) ;;
        postgres | kine-postgres) pg_start dsn ;;
        mysql | kine-mysql) maria_start dsn ;;
        *) echo "e2e: --backend sqlite|postgres|mysql|etcd|kine-sqlite|kine-postgres|kine-mysql" >&2; return 2 ;;
    esac
    mkdir -p "$OUT/results"
    local suffix=$backend
    [ "$instances" -gt 1 ] && suffix=$backend-x$instances
    log "control plane on $backend ($instances instance(s))"
    "$OUT/bin/e2e" -backend "$backend" ${dsn:+-dsn "$dsn"} -instances "$instances" \
        -koine-bin "$KOINE_BIN" -bin-dir "$OUT/bin" -etcd36-dir "$OUT/etcd36" \
        -report "$OUT/results/e2e-$suffix.json" "${rest[@]}"
}

summarize() {
    python3 "$ROOT/scripts/lib/gotest_summary.py" "$OUT/results" "$@"
}

cmd=${1:-}
shift || true
trap dbs_stop_all EXIT
case $cmd in
    build)
        build_storage
        build_bins
        ;;
    build-storage) build_storage "$@" ;;
    build-bins) build_bins ;;
    build-etcd36) build_etcd36 ;;
    storage)
        koine_bin
        backends=("$@")
        [ ${#backends[@]} -gt 0 ] || backends=("${ALL_BACKENDS[@]}")
        # Build the variants these backends need (go's cache makes a
        # rebuild of an unchanged variant quick).
        variants=()
        for b in "${backends[@]}"; do
            case $b in etcd) v=etcd ;; kine-*) v=kine ;; *) v=koine ;; esac
            [[ " ${variants[*]} " == *" $v "* ]] || variants+=("$v")
        done
        build_storage "${variants[@]}"
        for b in "${backends[@]}"; do run_storage "$b" || true; done
        summarize "${backends[@]}"
        ;;
    e2e)
        koine_bin
        build_bins
        run_e2e "$@"
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'
        exit 2
        ;;
esac
