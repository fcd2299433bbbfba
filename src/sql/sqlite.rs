//! SQLite: the embedded default. One writer connection (`BEGIN IMMEDIATE`,
//! WAL, `synchronous=FULL` so an acknowledged write survives power loss) and a
//! small pool of readers that see committed snapshots. One process owns the
//! file (it holds an exclusive lock on `<file>.lock` while it runs), so it is
//! always the leader and nobody else writes: no row locks, no
//! notifications, and the engine may keep current state in memory.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::Db;
use super::dialect::{self, Dialect, DialectSql, LeaderSession, Notifications};
use super::exec::Pool;
use crate::error::{Error, Result};

pub const SQL: DialectSql = DialectSql {
    name: "SQLite",
    numbered_placeholders: false,
    log_rowid: true,
    begin_write: "BEGIN IMMEDIATE",
    begin_read: "BEGIN",
    now_ms: "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    // BEGIN IMMEDIATE already holds the database's single write lock.
    lock_meta: "",
    defragment: "VACUUM; PRAGMA wal_checkpoint(TRUNCATE)",
    db_size: "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
    notify: None,
    writes_in_one_statement: false,
    insert_new: ("INSERT", " ON CONFLICT DO NOTHING"),
    poll_interval: std::time::Duration::from_millis(100),
    sole_writer: true,
};

#[derive(Default)]
struct Sqlite {
    /// Set once SQLite reports the file corrupt.
    corrupt: std::sync::atomic::AtomicBool,
    /// The lock file this process holds while it owns the database.
    _owner: Option<std::fs::File>,
    /// The database file (none in memory).
    path: Option<PathBuf>,
}

/// SQLite's result codes (the primary code of an extended one is its low
/// byte).
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_FULL: i64 = 13;
const SQLITE_NOTADB: i64 = 26;

impl Dialect for Sqlite {
    fn sql(&self) -> &'static DialectSql {
        &SQL
    }

    fn error(&self, e: sqlx::Error) -> Error {
        let code = match &e {
            sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i64>().ok()),
            _ => None,
        };
        match code.map(|c| c & 0xff) {
            Some(SQLITE_FULL) => Error::NoSpace(e),
            Some(SQLITE_CORRUPT | SQLITE_NOTADB) => {
                self.corrupt
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Error::Corrupt(e)
            }
            // A file on a local disk is never "unreachable".
            _ => dialect::classify(e, |_| false),
        }
    }

    fn fault(&self) -> Option<String> {
        self.corrupt
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| "SQLite reported the database file corrupt".to_string())
    }

    fn try_leader(&self) -> BoxFuture<'_, Result<Option<LeaderSession>>> {
        Box::pin(async { Ok(Some(LeaderSession::sole())) })
    }

    fn notifications(&self) -> BoxFuture<'_, Result<Option<Box<dyn Notifications>>>> {
        Box::pin(async { Ok(None) })
    }

    fn checkpoint_path(&self) -> Option<PathBuf> {
        let mut name = self.path.as_ref()?.as_os_str().to_owned();
        name.push(".index");
        Some(name.into())
    }
}

/// Where and how to open the SQLite file, parsed from a kine-style DSN.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub journal_mode: SqliteJournalMode,
    pub synchronous: SqliteSynchronous,
    pub busy_timeout: Duration,
}

impl SqliteConfig {
    /// Parses `sqlite://path?params`, `sqlite:path` or a bare path. Accepts
    /// go-sqlite3's `_journal_mode`, `_busy_timeout` (ms), `_synchronous`,
    /// and ignores the other go-sqlite3 parameters kine users pass
    /// (`_txlock`, `_stmt_cache_size`, `cache`, …).
    pub fn parse(dsn: &str) -> anyhow::Result<SqliteConfig> {
        let rest = dsn
            .strip_prefix("sqlite://")
            .or_else(|| dsn.strip_prefix("sqlite:"))
            .unwrap_or(dsn);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            anyhow::bail!("sqlite endpoint has no file path");
        }
        let mut cfg = SqliteConfig {
            path: PathBuf::from(path),
            journal_mode: SqliteJournalMode::Wal,
            synchronous: SqliteSynchronous::Full,
            busy_timeout: Duration::from_secs(30),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "_journal_mode" | "_journal" => {
                    cfg.journal_mode = SqliteJournalMode::from_str(v)
                        .map_err(|_| anyhow::anyhow!("invalid _journal_mode {v:?}"))?;
                }
                "_synchronous" | "_sync" => {
                    cfg.synchronous = SqliteSynchronous::from_str(v)
                        .map_err(|_| anyhow::anyhow!("invalid _synchronous {v:?}"))?;
                }
                "_busy_timeout" | "_timeout" => {
                    let ms: u64 = v
                        .parse()
                        .map_err(|_| anyhow::anyhow!("invalid _busy_timeout {v:?}"))?;
                    cfg.busy_timeout = Duration::from_millis(ms);
                }
                other => tracing::debug!(parameter = other, "ignoring sqlite DSN parameter"),
            }
        }
        Ok(cfg)
    }
}

pub async fn connect(cfg: &SqliteConfig) -> anyhow::Result<Db> {
    if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let owner = lock_owner(&cfg.path)?;
    let opts = SqliteConnectOptions::new()
        .filename(&cfg.path)
        .create_if_missing(true)
        .journal_mode(cfg.journal_mode)
        .synchronous(cfg.synchronous)
        .busy_timeout(cfg.busy_timeout)
        .pragma("temp_store", "memory");
    // Page caches: 16 MiB for the writer (it appends and reads the pages it
    // appends to), 2 MiB for each of the readers (they read values by
    // position, and share the OS's cache of the file).
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        // No ping per acquire: exec.rs retries on a broken connection.
        .test_before_acquire(false)
        .connect_with(opts.clone().pragma("cache_size", "-16384"))
        .await?;
    sqlx::migrate!("migrations/sqlite").run(&write).await?;
    let read = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        // No ping per acquire: exec.rs retries on a broken connection.
        .test_before_acquire(false)
        .connect_with(opts.read_only(true).pragma("cache_size", "-2048"))
        .await?;
    tracing::info!(path = %cfg.path.display(), "opened SQLite database");
    Ok(Db::new(
        Arc::new(Sqlite {
            _owner: Some(owner),
            path: Some(cfg.path.clone()),
            ..Sqlite::default()
        }),
        Pool::Sqlite(read),
        Pool::Sqlite(write),
    ))
}

/// Takes the exclusive lock that makes this process the database's only
/// user (released by the kernel when the process ends, however it ends).
fn lock_owner(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the SQLite database {} is in use by another Koine process (it holds {})",
            path.display(),
            std::path::Path::new(&name).display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// A private in-memory database with Koine's schema, for the engine's unit
/// tests: one writer connection and one reader sharing its cache.
#[cfg(test)]
pub async fn memory() -> Db {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "file:koine-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let opts = SqliteConnectOptions::new()
        .filename(&name)
        .in_memory(true)
        .shared_cache(true);
    let pool = |n| {
        SqlitePoolOptions::new()
            .max_connections(n)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.clone())
    };
    let write = pool(1).await.expect("in-memory SQLite");
    sqlx::migrate!("migrations/sqlite")
        .run(&write)
        .await
        .expect("migrations");
    let read = pool(1).await.expect("in-memory SQLite");
    Db::new(
        Arc::new(Sqlite::default()),
        Pool::Sqlite(read),
        Pool::Sqlite(write),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kine_dsn_forms() {
        let c = SqliteConfig::parse(
            "sqlite://./db/state.db?_journal_mode=WAL&cache=shared&_busy_timeout=5000&_txlock=immediate&_stmt_cache_size=20",
        )
        .unwrap();
        assert_eq!(c.path, PathBuf::from("./db/state.db"));
        assert_eq!(c.busy_timeout, Duration::from_millis(5000));
        let c = SqliteConfig::parse("/tmp/x.db").unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/x.db"));
        assert!(SqliteConfig::parse("sqlite://?_journal_mode=WAL").is_err());
    }

    #[tokio::test]
    async fn one_process_at_a_time_owns_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SqliteConfig::parse(&dir.path().join("state.db").to_string_lossy()).unwrap();
        let first = connect(&cfg).await.expect("first owner");
        let refused = connect(&cfg).await.err().expect("second owner refused");
        assert!(
            refused
                .to_string()
                .contains("in use by another Koine process")
        );
        drop(first);
        connect(&cfg)
            .await
            .expect("free again once the owner is gone");
    }
}
