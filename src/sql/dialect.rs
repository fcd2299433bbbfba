//! What differs between SQLite, PostgreSQL and MySQL/MariaDB, behind one
//! small trait. Each database implements it in its own file (`sqlite.rs`,
//! `postgres.rs`, `mysql.rs`), which holds all of that database's
//! differences: its SQL fragments, how transactions begin, the leader lock,
//! the change feed, error classification and the size query. The shared
//! persistence logic (`sql/mod.rs`, `queries.rs`, `exec.rs`) asks the
//! trait and names no database.

use futures::future::BoxFuture;

use super::exec::Conn;
use crate::error::{Error, Result};

pub trait Dialect: Send + Sync + 'static {
    /// The SQL fragments the shared statements are built from.
    fn sql(&self) -> &'static DialectSql;

    /// Classifies a driver error: `Error::Unavailable` when the database is
    /// unreachable, going away or refusing connections (the request may be
    /// retried elsewhere), `Error::NoSpace` for a full disk,
    /// `Error::Corrupt` for damaged data, `Error::Database` otherwise.
    fn error(&self, e: sqlx::Error) -> Error;

    /// A lasting fault the database has reported (corruption), which
    /// health checks report until Koine is restarted on repaired data.
    fn fault(&self) -> Option<String> {
        None
    }

    /// Tries to become the leader, the one instance that expires leases and
    /// compacts in the background. `Ok(None)`: another instance is.
    fn try_leader(&self) -> BoxFuture<'_, Result<Option<LeaderSession>>>;

    /// A stream of "another instance committed" wake-ups, where the
    /// database can push them (PostgreSQL LISTEN); `None` where instances
    /// only poll.
    fn notifications(&self) -> BoxFuture<'_, Result<Option<Box<dyn Notifications>>>>;

    /// Where this instance may keep a checkpoint of its key index between
    /// runs: beside a database file only it uses (SQLite); `None`
    /// elsewhere.
    fn checkpoint_path(&self) -> Option<std::path::PathBuf> {
        None
    }
}

/// SQL text that differs per database, spliced into the statements of
/// `queries.rs`.
#[derive(Debug)]
pub struct DialectSql {
    /// For logs.
    pub name: &'static str,
    /// PostgreSQL numbers its placeholders (`$1, $2, …`); the others take
    /// `?`, which is what the shared statements are written with.
    pub numbered_placeholders: bool,
    /// The log's rows are found by their rowid, `revision * 2^24 + sub`
    /// (SQLite, `migrations/sqlite/0009`): the table is its only B-tree,
    /// with no second one for its `(revision, sub)` key.
    pub log_rowid: bool,
    /// Begins a write transaction holding whatever the database needs held
    /// (SQLite: the write lock at once, so no writer ever waits mid-way).
    pub begin_write: &'static str,
    /// Begins a read-only transaction whose statements share one snapshot.
    pub begin_read: &'static str,
    /// The database clock in milliseconds since the epoch (lease expiry is
    /// measured on it, so every instance agrees).
    pub now_ms: &'static str,
    /// Appended to the meta row's SELECT in a write transaction: the row
    /// lock that serialises writers and makes revisions dense.
    pub lock_meta: &'static str,
    /// Gives freed space back (etcd's Defragment): run outside any
    /// transaction, on the writer's connection.
    pub defragment: &'static str,
    /// The database's size in bytes.
    pub db_size: &'static str,
    /// Sent in each write transaction that made a revision, so other
    /// instances wake at commit (`?`: the revision); `None`: they poll.
    pub notify: Option<&'static str>,
    /// An INSERT that skips a row whose key exists instead of failing
    /// (which would abort a PostgreSQL transaction): what goes before
    /// `INTO` and what goes after the values.
    pub insert_new: (&'static str, &'static str),
    /// Data-modifying `WITH` (PostgreSQL): a batch's last log rows, the
    /// meta row, the batch row and the notification go in one statement,
    /// one round trip.
    pub writes_in_one_statement: bool,
    /// How often instances look for each other's commits unless
    /// `--poll-interval` says otherwise.
    pub poll_interval: std::time::Duration,
    /// Only this process writes the database (the SQLite file is locked to
    /// it), so the engine's memory is current without asking it (no read
    /// fence).
    pub sole_writer: bool,
}

/// The shared part of every dialect's error classification: connection
/// failures are `Unavailable` whatever the database; `unavailable_code`
/// names the database's own codes that mean the same.
pub fn classify(e: sqlx::Error, unavailable_code: impl Fn(&str) -> bool) -> Error {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::Unavailable(e),
        sqlx::Error::Database(db) if db.code().as_deref().is_some_and(unavailable_code) => {
            Error::Unavailable(e)
        }
        _ => Error::Database(e),
    }
}

/// Holds the leader lock while it lives: a connection of its own on
/// PostgreSQL and MySQL (the lock dies with it); nothing on SQLite, where
/// one process owns the file.
pub struct LeaderSession {
    conn: Option<Conn>,
}

impl LeaderSession {
    /// The single-process case: always the leader.
    pub fn sole() -> LeaderSession {
        LeaderSession { conn: None }
    }

    /// The session of a lock attempt that answered `got` (1: taken): it
    /// keeps the connection `keep` detaches from the pool, since the lock
    /// lives as long as that connection. A refused attempt holds nothing,
    /// so its connection stays in the pool: a follower asks every second,
    /// and closing and reopening a connection each time (a TLS handshake
    /// and a server process or thread) stalled its other queries.
    pub fn taken(got: Option<i64>, keep: impl FnOnce() -> Conn) -> Option<LeaderSession> {
        (got == Some(1)).then(|| LeaderSession { conn: Some(keep()) })
    }

    /// False once the lock's connection is gone (and with it the lock).
    pub async fn alive(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => c.ping().await,
        }
    }
}

/// Wake-ups sent by other instances' commits.
pub trait Notifications: Send {
    /// Waits for the next one; an error means the connection broke (the
    /// caller keeps polling meanwhile).
    fn recv(&mut self) -> BoxFuture<'_, Result<()>>;
}
