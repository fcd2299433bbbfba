#!/usr/bin/env bash
# Runs Koine's whole test suite, installing what it needs first: Debian's
# etcd-server and etcd-client (the real etcd and etcdctl the tests compare
# against), protobuf-compiler (the etcd-client crate's build needs protoc),
# the PostgreSQL and MariaDB server binaries and PgBouncer (the tests start
# throwaway servers of their own in temp dirs; no running service is
# needed).
#
# Then: formatting and lints (Rust and Go), the Rust unit and integration
# tests, and Kubernetes as the judge (scripts/kubernetes.sh, built from the
# Go module proxy at the versions conformance/go.mod pins):
#   - k8s.io/apiserver's storage test suite on real etcd (the baseline) and
#     on Koine with SQLite, PostgreSQL and MariaDB: every test that passes on
#     etcd must pass on Koine;
#   - a real kube-apiserver and kube-controller-manager on Koine (SQLite),
#     driven by kubectl and client-go;
#   - the same control plane moved, live, from kine (SQLite, PostgreSQL) to
#     Koine, from Koine to etcd 3.6 and back, from SQLite to PostgreSQL
#     (docs/migration.md), and the snapshot/import tests that need etcd 3.6,
#     3.7 and kine built;
# and the robustness test (scripts/robustness.sh, 20 s per backend): clients
# on hot keys under faults, histories checked for linearizability and the
# watch guarantees, on SQLite, PostgreSQL ×3 and MariaDB ×3.
#
#   ./scripts/test.sh              everything
#   KOINE_TEST_KUBERNETES=0 ./scripts/test.sh    the Rust suite only (no Go)
#   ./scripts/test.sh -- NAME      extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
{ [ -x /usr/sbin/mariadbd ] || [ -x /usr/sbin/mysqld ]; } || need+=(mariadb-server)
[ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
command -v openssl >/dev/null || need+=(openssl)
# The JSON gateway tests talk to it with curl.
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
[ "${1:-}" = "--" ] && shift

cargo fmt --check
cargo clippy --all-targets -- -D warnings
if [ "${KOINE_TEST_KUBERNETES:-1}" != 0 ]; then
    command -v go >/dev/null || { echo "Go (1.26+) is needed for the Kubernetes tests" >&2; exit 1; }
    unformatted=$(gofmt -l conformance)
    [ -z "$unformatted" ] || { echo "gofmt: $unformatted" >&2; exit 1; }
fi
cargo test --all-targets "$@"
if [ "${KOINE_TEST_KUBERNETES:-1}" != 0 ]; then
    ./scripts/kubernetes.sh storage etcd sqlite postgres mysql
    ./scripts/kubernetes.sh e2e --backend sqlite
    # A running control plane moved between datastores (docs/migration.md).
    # The workload checks run first, on kine: their objects are moved too.
    ./scripts/kubernetes.sh e2e --backend kine-sqlite -checks configmaps-secrets,namespace-deletion,deployment,crd,migrate \
        -crd-objects 1000 -migrate-path koine-sqlite,etcd36,koine-sqlite
    ./scripts/kubernetes.sh e2e --backend kine-postgres -checks configmaps-secrets,deployment,migrate \
        -migrate-path koine-sqlite,koine-postgres
    # The tests that need what the Go side built: Koine's snapshots
    # restored by etcd 3.6 and 3.7, kine's databases imported
    # (tests/it/migrate.rs), and etcd 3.7 as the reference for the auth
    # rules etcd 3.5+ changed (tests/it/security.rs).
    ETCD36_DIR=$PWD/target/conformance/etcd36 ETCD37_DIR=$PWD/target/conformance/bin \
        KINE_BIN=$PWD/target/conformance/bin/kine \
        cargo test --test it -- --ignored migrate:: security::etcd37::
    ./scripts/robustness.sh --duration 20s
fi
