//! Throwaway PostgreSQL and MariaDB servers for the SQL-backend tests,
//! started from the Debian packages' binaries (no Docker), each in its own
//! temp dir, listening on a free port on 127.0.0.1 and on a unix socket
//! inside that dir. The system services on 5432/3306 are never touched.
//! A missing binary or a server that will not start fails loudly, with its
//! log; nothing is skipped.
//!
//! `cargo test` ends with `exit()`, which runs no destructors of statics (the
//! shared servers live in statics), and Ctrl-C runs none at all, so no server
//! may rely on `Drop` to die: every process (initdb and install-db too) runs
//! under a small bash watchdog that kills it, and removes its temp dir, once
//! the test process is gone. `Drop` still kills dedicated servers at once.
//! Only a SIGKILL of the watchdog itself can leak a server.
//!
//! Speed settings keep `kill()` an honest crash test: they give up
//! durability against an OS crash only, never against the server process
//! dying, so a commit that was acknowledged survives `kill()` + `restart()`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tempfile::TempDir;

use crate::harness::free_port;

/// Kills process `$1` and its direct children: Postgres backends notice a
/// dead postmaster only lazily, and a crash test wants them gone now. `STOP`
/// first so no child is forked between listing and killing.
const KILL_TREE: &str = r#"kill_tree() { kill -STOP "$1" 2>/dev/null; kill -9 "$1" $(ps -o pid= --ppid "$1") 2>/dev/null; true; }"#;

/// The watchdog (`$1` test pid, `$2` temp dir, then the command). The
/// command gets its own session so a Ctrl-C to the test's process group
/// does not reach it, and the watchdog ignores it: it must outlive the test
/// process to clean up after it. Otherwise it exits with the command's
/// status as soon as the command ends, which is how `kill()` knows.
const WATCHDOG: &str = r#"
test=$1 dir=$2; shift 2
setsid "$@" </dev/null & c=$!
echo $c > "$dir/server.pid"
trap '' INT TERM HUP
while kill -0 "$test" 2>/dev/null && kill -0 $c 2>/dev/null; do sleep 0.2; done
if ! kill -0 "$test" 2>/dev/null; then kill_tree $c; sleep 1; rm -rf -- "$dir"; exit 1; fi
wait $c
"#;

/// A server process (`argv`) under the watchdog; its files live in `dir`.
struct Supervised {
    what: &'static str,
    dir: TempDir,
    argv: Vec<String>,
    watchdog: Option<Child>,
}

impl Supervised {
    fn new(what: &'static str) -> Supervised {
        let dir = tempfile::Builder::new()
            .prefix(&format!("koine-{what}-"))
            .tempdir();
        let dir = dir.expect("tempdir");
        // Command lines are built with split_whitespace.
        assert!(!dir.path().to_string_lossy().contains(char::is_whitespace));
        Supervised {
            what,
            dir,
            argv: Vec::new(),
            watchdog: None,
        }
    }

    fn dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Spawns `argv` under the watchdog, output appended to file `log`.
    fn spawn(&self, argv: &[String], log: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file(log));
        let log = log.expect("log file");
        Command::new("bash")
            .arg("-c")
            .arg(format!("{KILL_TREE}\n{WATCHDOG}"))
            .args(["watchdog", &std::process::id().to_string(), &self.dir()])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn bash")
    }

    /// Runs a one-off setup command (initdb, install-db) to completion.
    async fn setup(&self, cmd: String) {
        let argv = words(&cmd);
        let mut child = self.spawn(&argv, "init.log");
        match wait_exit(&mut child, Duration::from_secs(120)).await {
            Some(status) if status.success() => {}
            status => self.fail(&format!("{argv:?} failed: {status:?}")),
        }
    }

    /// Starts the server and waits until `dsn` answers a ping as a `C`.
    async fn launch<C: Connection>(&mut self, dsn: &str) {
        self.launch_until(|| probe::<C>(dsn)).await;
    }

    /// Starts the server and waits until `ready` answers Ok.
    async fn launch_until<F, Fut>(&mut self, ready: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let _ = std::fs::remove_file(self.file("server.pid"));
        self.watchdog = Some(self.spawn(&self.argv, "server.log"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let Err(err) = ready().await else {
                return;
            };
            if self
                .watchdog
                .as_mut()
                .is_some_and(|w| !matches!(w.try_wait(), Ok(None)))
            {
                self.fail(&format!("server exited during startup ({err})"));
            }
            if Instant::now() > deadline {
                self.fail(&format!("not ready after 60 s: {err}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's pid, written by the watchdog right after forking it.
    fn pid(&self) -> Option<String> {
        let pid = std::fs::read_to_string(self.file("server.pid")).ok()?;
        Some(pid.trim().to_owned()).filter(|p| !p.is_empty())
    }

    fn kill_now(&self) {
        if let Some(pid) = self.pid() {
            let script = format!("{KILL_TREE}\nkill_tree \"$1\"");
            let _ = Command::new("bash")
                .arg("-c")
                .arg(script)
                .args(["_", &pid])
                .status();
        }
    }

    /// Sends `signal` to the server and its direct children (SIGSTOP makes
    /// a database that accepts connections but never answers).
    fn signal_tree(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let script =
                format!("kill -{signal} \"$1\" $(ps -o pid= --ppid \"$1\") 2>/dev/null; true");
            let _ = Command::new("bash")
                .arg("-c")
                .arg(script)
                .args(["_", &pid])
                .status();
        }
    }

    /// SIGKILLs the server and returns once it is dead (watchdog exited).
    async fn kill(&mut self) {
        let Some(mut watchdog) = self.watchdog.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pid().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill_now();
        if wait_exit(&mut watchdog, Duration::from_secs(10))
            .await
            .is_none()
        {
            self.fail("still running 10 s after kill -9");
        }
    }

    fn fail(&self, why: &str) -> ! {
        let mut log = String::new();
        for name in ["init.log", "server.log"] {
            if let Ok(text) = std::fs::read_to_string(self.file(name)) {
                let tail = &text[text.floor_char_boundary(text.len().saturating_sub(6000))..];
                log.push_str(&format!("--- {name} ---\n{tail}\n"));
            }
        }
        panic!("{} in {}: {why}\n{log}", self.what, self.dir());
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            self.kill_now();
            // Reap it off-thread: it exits within a fraction of a second.
            std::thread::spawn(move || watchdog.wait());
        }
    }
}

/// Waits (without blocking the runtime) for `child` to exit.
async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Connects to `dsn` as a `C` (PgConnection or MySqlConnection) and pings.
async fn probe<C: Connection>(dsn: &str) -> Result<(), String> {
    let attempt = async {
        let mut c = C::connect(dsn).await?;
        c.ping().await?;
        c.close().await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn first_existing(candidates: &[&str]) -> String {
    let found = candidates.iter().find(|p| Path::new(p).exists());
    found
        .unwrap_or_else(|| panic!("none of {candidates:?} exists"))
        .to_string()
}

/// Runs `make` on a thread of its own with a runtime of its own, so a
/// shared server is not tied to (or cancelled with) the runtime of whichever
/// test happened to start it. Blocks the caller for the server's startup.
fn on_own_runtime<T: Send + 'static, F: Future<Output = T> + 'static>(make: fn() -> F) -> T {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        rt.expect("runtime").block_on(make())
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A unique database name per call in this test process.
fn fresh_db_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("koine_t_{}_{n}", std::process::id())
}

/// A throwaway PostgreSQL server in a temp dir.
pub struct Postgres {
    pub port: u16,
    server: Supervised,
}

impl Postgres {
    /// Starts a new dedicated server: initdb (trust auth, C locale so text
    /// sorts bytewise) and postgres on a free port. initdb and postgres
    /// refuse to run as root, so as root they run as the `postgres` user via
    /// `setpriv`, which execs (unlike `runuser`, which forks), so the pid
    /// the watchdog records is the postmaster's. `fsync=off` and
    /// `full_page_writes=off` only matter on an OS crash; `synchronous_commit`
    /// stays on: turning it off would lose acknowledged commits on `kill()`.
    pub async fn start() -> Postgres {
        let bin = pg_bin_dir();
        let mut server = Supervised::new("postgres");
        let mut as_pg = "";
        if is_root() {
            let chown = Command::new("chown")
                .arg("postgres:postgres")
                .arg(server.dir())
                .status();
            assert!(
                chown.is_ok_and(|s| s.success()),
                "chown to user postgres failed"
            );
            as_pg = "setpriv --reuid=postgres --regid=postgres --init-groups";
        }
        let (dir, data) = (server.dir(), server.file("data"));
        let initdb = format!("{as_pg} {bin}/initdb -D {data} -U postgres --auth=trust");
        server
            .setup(format!("{initdb} --no-sync -E UTF8 --locale=C"))
            .await;

        let port = free_port();
        server.argv = words(&format!(
            "{as_pg} {bin}/postgres -D {data} -p {port} -h 127.0.0.1 -k {dir} \
             -c fsync=off -c full_page_writes=off -c max_connections=300"
        ));
        let mut pg = Postgres { port, server };
        pg.restart().await;
        pg
    }

    /// DSN for database `db` on this server, as user postgres (no password).
    pub fn dsn(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// SIGKILLs the postmaster and its children; returns once they are dead.
    pub async fn kill(&mut self) {
        self.server.kill().await;
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.server.signal_tree("STOP");
    }

    /// Undoes `pause` (SIGCONT).
    pub fn resume(&self) {
        self.server.signal_tree("CONT");
    }

    /// Starts the server again, same port and data dir (killing it first if
    /// it is running); returns once it answers queries.
    pub async fn restart(&mut self) {
        self.server.kill().await;
        let dsn = self.dsn("postgres");
        self.server.launch::<sqlx::PgConnection>(&dsn).await;
    }
}

/// The newest installed PostgreSQL's bin dir (`/usr/lib/postgresql/<v>/bin`).
fn pg_bin_dir() -> String {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten();
    let mut found: Vec<(u32, PathBuf)> = versions
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    found.sort();
    let (_, bin) = found
        .pop()
        .expect("no /usr/lib/postgresql/<v>/bin/postgres: install postgresql");
    bin.display().to_string()
}

/// The PostgreSQL server shared by all tests of this binary, started on
/// first use (blocking the caller) and never stopped: the watchdog kills it
/// and removes its files after the test process exits.
pub fn shared_postgres() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(|| on_own_runtime(Postgres::start))
}

/// A DSN for a fresh, unique, not yet created database on the shared server.
pub async fn fresh_postgres_dsn() -> String {
    shared_postgres().dsn(&fresh_db_name())
}

/// PgBouncer (Debian's) in front of the shared PostgreSQL server, in a temp
/// dir: every database name passes through to the server (`* =`), trust
/// authentication, and otherwise PgBouncer's defaults — among them its
/// refusal of startup parameters it does not know, such as sqlx's
/// `extra_float_digits`.
pub struct PgBouncer {
    pub port: u16,
    _server: Supervised,
}

impl PgBouncer {
    /// Starts PgBouncer in `pool_mode` (`session` or `transaction`) in
    /// front of `pg`. PgBouncer refuses to run as root, so as root it runs
    /// as the `postgres` user (as the server does).
    pub async fn start(pg: &Postgres, pool_mode: &str) -> PgBouncer {
        let bin = first_existing(&["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]);
        let mut server = Supervised::new("pgbouncer");
        let port = free_port();
        let dir = server.dir();
        std::fs::write(server.file("userlist.txt"), "\"postgres\" \"\"\n").expect("userlist");
        // Idle server connections close after a few seconds: the tests'
        // databases come and go, and PostgreSQL's connection limit is shared.
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={pg_port}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {dir}/userlist.txt\n\
             pool_mode = {pool_mode}\nmax_client_conn = 5000\ndefault_pool_size = 100\n\
             server_idle_timeout = 5\nlog_connections = 0\nlog_disconnections = 0\n",
            pg_port = pg.port,
        );
        std::fs::write(server.file("pgbouncer.ini"), ini).expect("pgbouncer.ini");
        let mut as_pg = "";
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir])
                .status();
            assert!(
                chown.is_ok_and(|s| s.success()),
                "chown to user postgres failed"
            );
            as_pg = "setpriv --reuid=postgres --regid=postgres --init-groups";
        }
        server.argv = words(&format!("{as_pg} {bin} {dir}/pgbouncer.ini"));
        server
            .launch_until(|| async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await;
        PgBouncer {
            port,
            _server: server,
        }
    }

    /// DSN for database `db` through this PgBouncer, as user postgres.
    pub fn dsn(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }
}

/// PgBouncer in session pooling mode in front of the shared PostgreSQL
/// server, shared by all tests of this binary.
pub fn shared_pgbouncer() -> &'static PgBouncer {
    static SHARED: OnceLock<PgBouncer> = OnceLock::new();
    SHARED.get_or_init(|| on_own_runtime(|| PgBouncer::start(shared_postgres(), "session")))
}

/// A DSN for a fresh database reached through the shared PgBouncer.
pub async fn fresh_pgbouncer_dsn() -> String {
    shared_pgbouncer().dsn(&fresh_db_name())
}

/// A throwaway MariaDB server in a temp dir.
pub struct MariaDb {
    pub port: u16,
    server: Supervised,
}

/// Run at every server start: root may log in over TCP from 127.0.0.1 with
/// no password (install-db's root@localhost may be unix_socket-only, and
/// `--skip-name-resolve` stops 127.0.0.1 from matching "localhost").
const MARIADB_INIT: &str = "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
";

impl MariaDb {
    /// Starts a new dedicated server. `--no-defaults` keeps the system's
    /// /etc/mysql config out; character set and collation are then set to
    /// what Debian's config gives, so tests see a typical install.
    /// `innodb_flush_log_at_trx_commit=2` writes the log at every commit
    /// (survives `kill()`) but fsyncs once a second; `max_connect_errors` is
    /// huge so aborted connections in fault tests never block 127.0.0.1.
    pub async fn start() -> MariaDb {
        let mariadbd = first_existing(&["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]);
        let install_db =
            first_existing(&["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"]);
        let mut server = Supervised::new("mariadb");
        let (dir, data) = (server.dir(), server.file("data"));
        let user = if is_root() { "--user=root" } else { "" };
        std::fs::write(server.file("init.sql"), MARIADB_INIT).expect("write init.sql");
        server
            .setup(format!(
                "{install_db} --no-defaults --datadir={data} {user} --skip-test-db \
                 --auth-root-authentication-method=normal --innodb-log-file-size=16M"
            ))
            .await;

        let port = free_port();
        server.argv = words(&format!(
            "{mariadbd} --no-defaults --datadir={data} {user} --port={port} \
             --bind-address=127.0.0.1 --socket={dir}/mysqld.sock --skip-name-resolve \
             --init-file={dir}/init.sql --skip-log-bin --performance-schema=0 \
             --innodb-flush-log-at-trx-commit=2 --innodb-doublewrite=0 \
             --innodb-log-file-size=16M --max-connections=500 --max-connect-errors=1000000 \
             --max-allowed-packet=64M --character-set-server=utf8mb4 \
             --collation-server=utf8mb4_general_ci"
        ));
        let mut db = MariaDb { port, server };
        db.restart().await;
        db
    }

    /// DSN for database `db` on this server, as root (no password).
    pub fn dsn(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    /// SIGKILLs the server; returns once it is dead.
    pub async fn kill(&mut self) {
        self.server.kill().await;
    }

    /// Starts the server again, same port and data dir (killing it first if
    /// it is running); returns once it answers queries.
    pub async fn restart(&mut self) {
        self.server.kill().await;
        let dsn = self.dsn("mysql");
        self.server.launch::<sqlx::MySqlConnection>(&dsn).await;
    }
}

/// The MariaDB server shared by all tests of this binary (see
/// [`shared_postgres`]).
pub fn shared_mariadb() -> &'static MariaDb {
    static SHARED: OnceLock<MariaDb> = OnceLock::new();
    SHARED.get_or_init(|| on_own_runtime(MariaDb::start))
}

/// A DSN for a fresh, unique, not yet created database on the shared server.
pub async fn fresh_mariadb_dsn() -> String {
    shared_mariadb().dsn(&fresh_db_name())
}

/// Per backend: a committed row survives kill -9 + restart while
/// connections fail meanwhile; the shared server is one server whose fresh
/// DSNs differ and name databases that can be created and used.
macro_rules! db_tests {
    ($mod:ident, $server:ident, $shared:ident, $fresh:ident, $conn:ty, $root:literal, $current:literal) => {
        mod $mod {
            use super::*;

            #[tokio::test]
            async fn kill_restart() {
                let t = Instant::now();
                let mut server = $server::start().await;
                eprintln!("{} started in {:?}", stringify!($server), t.elapsed());
                let dsn = server.dsn($root);
                let mut c = <$conn>::connect(&dsn).await.expect("connect");
                let create = sqlx::query("CREATE TABLE t (v INT)").execute(&mut c).await;
                create.expect("create");
                let insert = sqlx::query("INSERT INTO t VALUES (42)")
                    .execute(&mut c)
                    .await;
                insert.expect("insert");

                server.kill().await;
                let old = sqlx::query("SELECT 1").execute(&mut c).await;
                assert!(old.is_err(), "old connection still works after kill");
                assert!(
                    <$conn>::connect(&dsn).await.is_err(),
                    "connected after kill"
                );

                let t = Instant::now();
                server.restart().await;
                eprintln!("{} restarted in {:?}", stringify!($server), t.elapsed());
                let mut c = <$conn>::connect(&dsn).await.expect("connect after restart");
                let v: Result<i32, _> = sqlx::query_scalar("SELECT v FROM t")
                    .fetch_one(&mut c)
                    .await;
                assert_eq!(v.expect("select after restart"), 42);
            }

            #[tokio::test]
            async fn shared_fresh_db() {
                let t = Instant::now();
                let server = $shared();
                eprintln!("{} ready in {:?}", stringify!($shared), t.elapsed());
                assert!(std::ptr::eq(server, $shared()));
                let (a, b) = ($fresh().await, $fresh().await);
                assert_ne!(a, b);
                let name = a.rsplit('/').next().unwrap().split('?').next().unwrap();
                let mut root = <$conn>::connect(&server.dsn($root)).await.expect("root");
                let create = sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"));
                sqlx::query(create)
                    .execute(&mut root)
                    .await
                    .expect("create database");
                let mut c = <$conn>::connect(&a).await.expect("connect fresh db");
                let db: Result<String, _> = sqlx::query_scalar($current).fetch_one(&mut c).await;
                assert_eq!(db.expect("current database"), name);
            }
        }
    };
}

#[rustfmt::skip]
db_tests!(postgres, Postgres, shared_postgres, fresh_postgres_dsn, sqlx::PgConnection,
          "postgres", "SELECT current_database()");
#[rustfmt::skip]
db_tests!(mariadb, MariaDb, shared_mariadb, fresh_mariadb_dsn, sqlx::MySqlConnection,
          "mysql", "SELECT DATABASE()");
