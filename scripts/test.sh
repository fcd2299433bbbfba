#!/usr/bin/env bash
# Runs Koine's whole test suite, installing what it needs first: Debian's
# etcd-server and etcd-client (the real etcd and etcdctl the tests compare
# against), protobuf-compiler (the etcd-client crate's build needs protoc),
# and the PostgreSQL and MariaDB server binaries (the tests start throwaway
# servers of their own in temp dirs; no running service is needed).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
{ [ -x /usr/sbin/mariadbd ] || [ -x /usr/sbin/mysqld ]; } || need+=(mariadb-server)
python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets "$@"
