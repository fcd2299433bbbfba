# What the benchmark scripts read of a process from /proc (source this file).

# written PID...: bytes the processes, and their children (PostgreSQL's
# backends and background writers, each in a session of its own), have
# sent to storage (/proc/PID/io).
written() {
    local top pid total=0 b
    for top in "$@"; do
        for pid in $(ps -o pid= --ppid "$top" 2>/dev/null) "$top"; do
            b=$(awk '/^write_bytes/ { print $2 }' "/proc/$pid/io" 2>/dev/null || echo 0)
            total=$((total + ${b:-0}))
        done
    done
    echo "$total"
}
