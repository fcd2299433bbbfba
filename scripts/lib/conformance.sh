# What the scripts driving the Go harness share (source from the repository
# root): where things go, how Go builds, how the koine binary is found.
#
#   ROOT, OUT (target/conformance), MOD (the conformance/ Go module)
#   log MESSAGE      a section header on stderr
#   koine_bin        sets and exports KOINE_BIN (default target/debug/koine,
#                    built with cargo if missing), an absolute path

ROOT=$PWD
OUT=$ROOT/target/conformance
MOD=$ROOT/conformance
export GOFLAGS=-mod=readonly
export CGO_ENABLED=1
mkdir -p "$OUT/bin" "$OUT/results"

log() { printf '\n== %s\n' "$*" >&2; }

koine_bin() {
    KOINE_BIN=${KOINE_BIN:-$ROOT/target/debug/koine}
    if [ ! -x "$KOINE_BIN" ]; then
        log "building koine"
        cargo build --bin koine
    fi
    KOINE_BIN=$(realpath "$KOINE_BIN")
    export KOINE_BIN
}
