# Throwaway database servers for the scripts (source this file), started
# from the Debian packages' binaries in a temp dir of their own, on a free
# port of 127.0.0.1, owned by this shell: `dbs_stop_all` (run it from an
# EXIT trap) kills them and removes their files. The same settings as the
# Rust tests' tests/it/dbs.rs: fast, but an acknowledged commit survives
# the server process being killed.
#
#   pg_start VAR [tls]      start PostgreSQL; VAR=<DSN of database "kubernetes">
#   maria_start VAR [tls]   start MariaDB;    VAR=<DSN of database "kubernetes">
#   dbs_stop_all
#
# With `tls` the server also offers TLS (a self-signed certificate made in
# its directory); the DSN returned still asks for plain TCP, and a client
# asks for TLS in its own DSN (sslmode=require, ssl-mode=REQUIRED).

DBS_DIRS=()
DBS_PIDS=()

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

dbs_stop_all() {
    local p d
    for p in "${DBS_PIDS[@]}"; do
        kill -9 "$p" $(ps -o pid= --ppid "$p" 2>/dev/null) 2>/dev/null || true
    done
    for d in "${DBS_DIRS[@]}"; do rm -rf -- "$d"; done
    DBS_PIDS=()
    DBS_DIRS=()
}

# self_signed DIR: server.crt and server.key for 127.0.0.1 in DIR.
self_signed() {
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=127.0.0.1 \
        -keyout "$1/server.key" -out "$1/server.crt" 2>/dev/null
    chmod 600 "$1/server.key"
}

# pg_start VAR [tls]: PostgreSQL with trust auth as user postgres.
pg_start() {
    local bin dir port as="" tls=()
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$bin/postgres" ] || { echo "no PostgreSQL server binaries: install postgresql" >&2; return 1; }
    dir=$(mktemp -d /tmp/koine-pg.XXXXXX)
    DBS_DIRS+=("$dir")
    if [ "${2:-}" = tls ]; then
        self_signed "$dir"
        tls=(-c ssl=on -c "ssl_cert_file=$dir/server.crt" -c "ssl_key_file=$dir/server.key")
    fi
    if [ "$(id -u)" -eq 0 ]; then
        chown -R postgres:postgres "$dir"
        as="setpriv --reuid=postgres --regid=postgres --init-groups"
    fi
    $as "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    port=$(free_port)
    setsid $as "$bin/postgres" -D "$dir/data" -p "$port" -h 127.0.0.1 -k "$dir" \
        -c fsync=off -c full_page_writes=off -c max_connections=500 "${tls[@]}" \
        >"$dir/server.log" 2>&1 </dev/null &
    DBS_PIDS+=($!)
    disown $! # killed by dbs_stop_all, never waited for: no job noise
    for _ in $(seq 300); do
        "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q && break
        sleep 0.1
    done
    "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q || { cat "$dir/server.log" >&2; return 1; }
    printf -v "$1" '%s' "postgres://postgres@127.0.0.1:$port/kubernetes?sslmode=disable"
}

# maria_start VAR [tls]: MariaDB with root allowed from 127.0.0.1 without password.
maria_start() {
    local mariadbd install dir port user="" tls=()
    mariadbd=$(ls /usr/sbin/mariadbd /usr/sbin/mysqld 2>/dev/null | head -1)
    install=$(ls /usr/bin/mariadb-install-db /usr/bin/mysql_install_db 2>/dev/null | head -1)
    [ -n "$mariadbd" ] && [ -n "$install" ] || { echo "no MariaDB server binaries: install mariadb-server" >&2; return 1; }
    dir=$(mktemp -d /tmp/koine-maria.XXXXXX)
    DBS_DIRS+=("$dir")
    [ "$(id -u)" -eq 0 ] && user="--user=root"
    if [ "${2:-}" = tls ]; then
        self_signed "$dir"
        tls=(--ssl-cert="$dir/server.crt" --ssl-key="$dir/server.key")
    fi
    cat >"$dir/init.sql" <<'SQL'
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
SQL
    "$install" --no-defaults --datadir="$dir/data" $user --skip-test-db \
        --auth-root-authentication-method=normal --innodb-log-file-size=16M \
        >"$dir/init.log" 2>&1 || { cat "$dir/init.log" >&2; return 1; }
    port=$(free_port)
    setsid "$mariadbd" --no-defaults --datadir="$dir/data" $user --port="$port" \
        --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" --skip-name-resolve \
        --init-file="$dir/init.sql" --skip-log-bin --performance-schema=0 \
        --innodb-flush-log-at-trx-commit=2 --innodb-doublewrite=0 \
        --innodb-log-file-size=16M --max-connections=1000 --max-connect-errors=1000000 \
        --max-allowed-packet=64M --character-set-server=utf8mb4 \
        --collation-server=utf8mb4_general_ci "${tls[@]}" >"$dir/server.log" 2>&1 </dev/null &
    DBS_PIDS+=($!)
    disown $! # killed by dbs_stop_all, never waited for: no job noise
    for _ in $(seq 600); do
        python3 - "$port" <<'PY' 2>/dev/null && break
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5)
# A MySQL server speaks first: a handshake packet means it is accepting.
assert len(s.recv(4)) == 4
PY
        sleep 0.1
    done
    # The init file runs before the server accepts connections.
    printf -v "$1" '%s' "mysql://root@127.0.0.1:$port/kubernetes"
}
