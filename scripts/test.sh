#!/usr/bin/env bash
# Runs Koine's whole test suite, installing what it needs first: Debian's
# etcd-server and etcd-client (the real etcd and etcdctl the tests compare
# against) and protobuf-compiler (the etcd-client crate's build needs protoc).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
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
