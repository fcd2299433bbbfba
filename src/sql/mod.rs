//! Persistence over sqlx. The engine (`mvcc/`) talks to the database only
//! through [`Db`] (the pools) and [`DbTx`] (one open transaction), whose
//! methods are its small transactional interface: read and lock the meta
//! row, append to the log, read the log by position (values, changes in a
//! revision span), delete compacted rows by position, leases, auth,
//! alarms. Nothing here is read by key: the engine's key index is in
//! memory.
//!
//! The logic here is the same for every database. What differs lives in
//! one file per database behind the [`Dialect`] trait (`sqlite.rs`,
//! `postgres.rs`, `mysql.rs`); statements are written once in `queries.rs`
//! with that dialect's fragments spliced in; `exec.rs` binds and decodes.

mod dialect;
mod exec;
pub mod mysql;
mod nodelay;
pub mod postgres;
mod queries;
pub mod sqlite;

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::types::{KeyValue, LeaseId, Rev, Revision};
pub use dialect::{Dialect, DialectSql, LeaderSession};
use exec::{Arg, FromRow, Pool, Row, TxInner};
use queries::{Many, Q, Queries};

/// Rows at most per multi-row INSERT into the log.
const LOG_CHUNK_ROWS: usize = 32;
/// Most log positions read or deleted by one statement.
const BY_POSITION: usize = 64;
/// Bytes at most per multi-row INSERT (below MySQL's max_allowed_packet).
const LOG_CHUNK_BYTES: usize = 4 << 20;

/// TLS to the database (kine's `--ca-file/--cert-file/--key-file`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    pub skip_verify: bool,
}

tokio::task_local! {
    /// Where [`retry_connect`] reports why the database is not available
    /// yet, when its caller set it: the client port's start-up answers
    /// (`serve::serve_while_starting`) give it as their reason.
    pub static NOT_CONNECTED: tokio::sync::watch::Sender<String>;
}

/// Retries `attempt` with backoff until it succeeds, logging each failure
/// without the DSN (it may hold a password).
pub async fn retry_connect<T, F, Fut>(target: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut delay = std::time::Duration::from_millis(250);
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => {
                let error = redact_error(&e);
                tracing::warn!(%target, %error, retry_in = ?delay, "database not reachable, retrying");
                let _ = NOT_CONNECTED.try_with(|reason| {
                    reason.send_replace(format!("database not reachable: {error}"))
                });
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// An error's text with anything that looks like a URL's credentials
/// removed.
pub fn redact_error(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    match (text.find("://"), text.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}://***{}", &text[..start], &text[at..]),
        _ => text,
    }
}

/// A connected database: its dialect, a pool for reads and one for the
/// writer.
#[derive(Clone)]
pub struct Db {
    dialect: Arc<dyn Dialect>,
    queries: Arc<Queries>,
    read: Pool,
    write: Pool,
}

/// One change to append to the log.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub revision: Revision,
    /// Position within the revision.
    pub sub: i64,
    pub kv: KeyValue,
    pub deleted: bool,
    /// The key's previous `mod_revision` (0: none).
    pub prev_revision: Revision,
}

impl LogRow {
    /// The row's position in the log.
    pub fn rev(&self) -> Rev {
        Rev {
            main: self.revision,
            sub: self.sub,
        }
    }
}

/// The store's counters as read from the meta row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub revision: Revision,
    pub compact_revision: Revision,
}

/// The auth store's row: its revision, whether auth is on, the users and
/// roles (an encoded `AuthSnapshot`, empty when there are none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRow {
    pub revision: i64,
    pub enabled: bool,
    pub state: Bytes,
}

impl FromRow for AuthRow {
    fn from_row(r: &dyn Row) -> Result<AuthRow> {
        Ok(AuthRow {
            revision: r.i64(0)?,
            enabled: r.i64(1)? != 0,
            state: r.bytes(2)?,
        })
    }
}

/// Pages through the log up to `upto` in (revision, sub) order, inside one
/// transaction (HashKV, Snapshot and `koine import` read it this way).
/// What they read is the history as compaction leaves it once compaction
/// has removed its rows (`compacted_to` reaching the compact revision):
/// the engine sees to that first, and `koine import` drops what
/// compaction would itself.
pub struct HistoryPager {
    upto: Revision,
    after: (Revision, i64),
    done: bool,
}

impl HistoryPager {
    const PAGE: i64 = 1000;

    pub fn new(upto: Revision) -> HistoryPager {
        HistoryPager {
            upto,
            after: (0, -1),
            done: false,
        }
    }

    /// The next page; empty once the history is read.
    pub async fn next(&mut self, tx: &mut DbTx) -> Result<Vec<HashedRow>> {
        if self.done {
            return Ok(Vec::new());
        }
        let page = tx.hash_page(self.upto, self.after, Self::PAGE).await?;
        match page.last() {
            Some(r) if page.len() as i64 == Self::PAGE => self.after = (r.revision, r.sub),
            _ => self.done = true,
        }
        Ok(page)
    }
}

/// One logged change as a hash reads it (and as `koine import` carries
/// it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedRow {
    pub revision: Revision,
    pub sub: i64,
    pub key: Bytes,
    pub create_revision: Revision,
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
    pub deleted: bool,
}

impl FromRow for HashedRow {
    fn from_row(r: &dyn Row) -> Result<HashedRow> {
        Ok(HashedRow {
            revision: r.i64(0)?,
            sub: r.i64(1)?,
            key: r.bytes(2)?,
            create_revision: r.i64(3)?,
            version: r.i64(4)?,
            lease: r.i64(5)?,
            value: r.bytes(6)?,
            deleted: r.i64(7)? != 0,
        })
    }
}

/// A raised alarm: the member that raised it and etcd's alarm type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlarmRow {
    pub member_id: i64,
    pub alarm: i64,
}

impl FromRow for AlarmRow {
    fn from_row(r: &dyn Row) -> Result<AlarmRow> {
        Ok(AlarmRow {
            member_id: r.i64(0)?,
            alarm: r.i64(1)?,
        })
    }
}

/// A token's user and the milliseconds it has left (database clock).
struct TokenRow(Bytes, i64);

impl FromRow for TokenRow {
    fn from_row(r: &dyn Row) -> Result<TokenRow> {
        Ok(TokenRow(r.bytes(0)?, r.i64(1)?))
    }
}

/// A lease row; `remaining_ms` is measured on the database clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRow {
    pub id: LeaseId,
    pub ttl: i64,
    pub remaining_ms: i64,
}

struct MetaAndStamp(Meta, i64);

impl FromRow for MetaAndStamp {
    fn from_row(r: &dyn Row) -> Result<MetaAndStamp> {
        Ok(MetaAndStamp(Meta::from_row(r)?, r.i64(2)?))
    }
}

impl FromRow for Meta {
    fn from_row(r: &dyn Row) -> Result<Meta> {
        Ok(Meta {
            revision: r.i64(0)?,
            compact_revision: r.i64(1)?,
        })
    }
}

impl FromRow for LeaseRow {
    fn from_row(r: &dyn Row) -> Result<LeaseRow> {
        Ok(LeaseRow {
            id: r.i64(0)?,
            ttl: r.i64(1)?,
            remaining_ms: r.i64(2)?,
        })
    }
}

impl FromRow for LogRow {
    /// Columns: revision, sub, k, create_revision, version, lease, value,
    /// deleted, prev_revision; a scan without values leaves the value out
    /// (eight columns). Columns after these are not looked at.
    fn from_row(r: &dyn Row) -> Result<LogRow> {
        let revision = r.i64(0)?;
        let (value, rest) = if r.len() >= 9 {
            (r.bytes(6)?, 7)
        } else {
            (Bytes::new(), 6)
        };
        Ok(LogRow {
            revision,
            sub: r.i64(1)?,
            kv: KeyValue {
                key: r.bytes(2)?,
                create_revision: r.i64(3)?,
                mod_revision: revision,
                version: r.i64(4)?,
                lease: r.i64(5)?,
                value,
            },
            deleted: r.i64(rest)? != 0,
            prev_revision: r.i64(rest + 1)?,
        })
    }
}

/// Changes of a span of revisions, with the compaction counters read in
/// the same statement (so in the same snapshot).
#[derive(Debug, Default)]
pub struct Changes {
    pub rows: Vec<LogRow>,
    /// The compact revision, and up to where compaction removed what it
    /// drops (`None` when the span held no row).
    pub compact: Option<(Revision, Revision)>,
}

struct ChangeRow(LogRow, Revision, Revision);

impl FromRow for ChangeRow {
    fn from_row(r: &dyn Row) -> Result<ChangeRow> {
        Ok(ChangeRow(LogRow::from_row(r)?, r.i64(9)?, r.i64(10)?))
    }
}

/// A value and the position it was read at.
struct Valued(Rev, Bytes);

impl FromRow for Valued {
    fn from_row(r: &dyn Row) -> Result<Valued> {
        Ok(Valued(
            Rev {
                main: r.i64(0)?,
                sub: r.i64(1)?,
            },
            r.bytes(2)?,
        ))
    }
}

/// Arguments naming log positions, for the statements that take them in
/// `(revision = ? AND sub = ?) OR …` form.
fn position_args(revs: &[Rev]) -> Vec<Arg<'static>> {
    revs.iter()
        .flat_map(|r| [Arg::I64(r.main), Arg::I64(r.sub)])
        .collect()
}

/// `items` in runs of at most `BY_POSITION`, each padded with its first
/// item to a power of two: statements that take a list are then prepared
/// in few distinct sizes.
fn padded_chunks<T: Copy>(items: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    items.chunks(BY_POSITION).map(|chunk| {
        let mut padded = chunk.to_vec();
        padded.resize(chunk.len().next_power_of_two(), chunk[0]);
        padded
    })
}

/// The statements reading the values at `revs` ([`padded_chunks`]), with
/// their arguments.
fn value_reads<'r>(
    q: &'r Queries,
    revs: &'r [Rev],
) -> impl Iterator<Item = (Arc<str>, Vec<Arg<'static>>)> + 'r {
    padded_chunks(revs).map(|chunk| (q.many(Many::Values, chunk.len()), position_args(&chunk)))
}

/// The single value of a one-row, one-column result.
fn one<T>(mut rows: Vec<T>, what: &str) -> Result<T> {
    match rows.len() {
        1 => Ok(rows.remove(0)),
        n => Err(Error::Internal(format!("{what}: {n} rows, expected one"))),
    }
}

impl Db {
    pub fn new(dialect: Arc<dyn Dialect>, read: Pool, write: Pool) -> Db {
        Db {
            queries: Arc::new(Queries::new(dialect.sql())),
            dialect,
            read,
            write,
        }
    }

    pub fn dialect(&self) -> &dyn Dialect {
        &*self.dialect
    }

    /// Opens a transaction for the writer, holding the database's write lock
    /// where the dialect has one (SQLite `BEGIN IMMEDIATE`).
    pub async fn begin_write(&self) -> Result<DbTx> {
        let inner = self
            .write
            .begin(self.dialect.sql().begin_write, &*self.dialect)
            .await?;
        Ok(self.tx(inner))
    }

    /// Opens a read-only transaction whose statements all see one snapshot.
    pub async fn begin_read(&self) -> Result<DbTx> {
        let inner = self
            .read
            .begin(self.dialect.sql().begin_read, &*self.dialect)
            .await?;
        Ok(self.tx(inner))
    }

    fn tx(&self, inner: TxInner) -> DbTx {
        DbTx {
            inner,
            q: self.queries.clone(),
            dialect: self.dialect.clone(),
        }
    }

    async fn fetch<T: FromRow>(&self, q: Q, args: &[Arg<'_>]) -> Result<Vec<T>> {
        let sql = statement(&self.queries, q)?;
        self.read.fetch(sql, args, &*self.dialect).await
    }

    /// Size of the database in bytes, as far as the dialect can tell.
    pub async fn size_bytes(&self) -> Result<i64> {
        one(self.fetch(Q::DbSize, &[]).await?, "size query")
    }

    /// The newest committed revision and the compact revision (one
    /// statement: no transaction needed).
    pub async fn meta(&self) -> Result<Meta> {
        one(self.fetch(Q::MetaRead, &[]).await?, "koine_meta")
    }

    /// The meta row and the auth stamp ([`Db::auth_stamp`]), in one
    /// statement.
    pub async fn meta_and_auth_stamp(&self) -> Result<(Meta, i64)> {
        let MetaAndStamp(meta, stamp) = one(
            self.fetch(Q::MetaAndAuthStamp, &[]).await?,
            "koine_meta, koine_auth",
        )?;
        Ok((meta, stamp))
    }

    /// The auth store as committed.
    pub async fn auth(&self) -> Result<AuthRow> {
        one(self.fetch(Q::AuthRead, &[]).await?, "koine_auth")
    }

    /// The raised alarms.
    pub async fn alarms(&self) -> Result<Vec<AlarmRow>> {
        self.fetch(Q::AlarmList, &[]).await
    }

    /// etcd's Defragment: gives freed space back to the file system
    /// (SQLite VACUUM, PostgreSQL VACUUM FULL, MySQL OPTIMIZE TABLE). It
    /// takes the writer's connection (SQLite) or the tables' locks, so
    /// writes wait meanwhile, as they do for etcd's.
    pub async fn defragment(&self) -> Result<()> {
        self.write
            .run(self.dialect.sql().defragment, &*self.dialect)
            .await
    }

    /// The auth store's revision and enabled flag as one number
    /// (`revision * 2 + enabled`), polled to notice other instances'
    /// changes.
    pub async fn auth_stamp(&self) -> Result<i64> {
        one(self.fetch(Q::AuthRevision, &[]).await?, "koine_auth")
    }

    /// A token's user and the milliseconds it has left, if it exists.
    pub async fn token(&self, token: &[u8]) -> Result<Option<(Bytes, i64)>> {
        let row: Option<TokenRow> = self.fetch(Q::TokenGet, &[Arg::Bytes(token)]).await?.pop();
        Ok(row.map(|TokenRow(user, left)| (user, left)))
    }

    /// The token of the key index checkpoint the database matches (0:
    /// none).
    pub async fn checkpoint_token(&self) -> Result<i64> {
        one(self.fetch(Q::CheckpointGet, &[]).await?, "koine_meta")
    }

    /// Records the token of the checkpoint just written (0 forgets it).
    pub async fn set_checkpoint_token(&self, token: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        tx.exec(Q::CheckpointSet, &[Arg::I64(token)]).await?;
        tx.commit().await
    }

    /// The cluster id chosen when the database was created.
    pub async fn cluster_id(&self) -> Result<u64> {
        let id: i64 = one(self.fetch(Q::ClusterId, &[]).await?, "koine_meta")?;
        Ok(id as u64)
    }

    /// The values at `revs` (distinct), in as few statements as the size
    /// of each allows; positions compaction removed are left out.
    pub async fn values(&self, revs: &[Rev]) -> Result<Vec<(Rev, Bytes)>> {
        let mut out = Vec::with_capacity(revs.len());
        for (sql, args) in value_reads(&self.queries, revs) {
            let rows: Vec<Valued> = self.read.fetch(&sql, &args, &*self.dialect).await?;
            out.extend(rows.into_iter().map(|Valued(r, v)| (r, v)));
        }
        Ok(out)
    }

    /// The changes with revision in `(after, upto]`, in order, without
    /// their values (one statement: the rows never change).
    pub async fn scan(&self, after: Revision, upto: Revision) -> Result<Vec<LogRow>> {
        self.fetch(Q::LogScan, &[Arg::I64(after), Arg::I64(upto)])
            .await
    }

    /// The changes with revision in `(after, upto]`, in order, with their
    /// values, and the compaction counters of the same snapshot.
    pub async fn changes(&self, after: Revision, upto: Revision) -> Result<Changes> {
        let rows: Vec<ChangeRow> = self
            .fetch(Q::LogChanges, &[Arg::I64(after), Arg::I64(upto)])
            .await?;
        let compact = rows.first().map(|r| (r.1, r.2));
        Ok(Changes {
            rows: rows.into_iter().map(|r| r.0).collect(),
            compact,
        })
    }

    /// Revision up to which compaction removed what it drops from the log.
    pub async fn compacted_to(&self) -> Result<Revision> {
        one(self.fetch(Q::MetaCompactedTo, &[]).await?, "koine_meta")
    }

    /// How many rows the log holds.
    pub async fn log_rows(&self) -> Result<u64> {
        Ok(one::<i64>(self.fetch(Q::LogCount, &[]).await?, "koine_log")? as u64)
    }

    /// A lease, if it exists.
    pub async fn lease(&self, id: LeaseId) -> Result<Option<LeaseRow>> {
        Ok(self.fetch(Q::LeaseGet, &[Arg::I64(id)]).await?.pop())
    }

    /// How many leases there are.
    pub async fn leases_count(&self) -> Result<u64> {
        Ok(one::<i64>(self.fetch(Q::LeaseCount, &[]).await?, "koine_lease")? as u64)
    }

    /// Empties the store for `koine import` and marks it as being imported
    /// into (revision 0, which the server refuses to start on). The auth
    /// state blob stays until the import writes its own, but is off.
    pub async fn wipe_for_import(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        tx.lock_meta().await?;
        for q in [
            Q::ImportStart,
            Q::ImportWipeLog,
            Q::ImportWipeLease,
            Q::ImportWipeBatch,
            Q::ImportWipeTokens,
            Q::ImportWipeAlarms,
        ] {
            tx.exec(q, &[]).await?;
        }
        tx.auth_update(&AuthRow {
            revision: 1,
            enabled: false,
            state: Bytes::new(),
        })
        .await?;
        tx.commit().await
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// Statement `q`, which every database has unless said otherwise.
fn statement(queries: &Queries, q: Q) -> Result<&Arc<str>> {
    queries
        .get(q)
        .ok_or_else(|| Error::Internal(format!("no statement {q:?} for this database")))
}

/// An open transaction.
pub struct DbTx {
    inner: TxInner,
    q: Arc<Queries>,
    dialect: Arc<dyn Dialect>,
}

/// A log row's size, as the chunking of multi-row statements counts it.
fn log_row_size(r: &LogRow) -> usize {
    r.kv.key.len() + r.kv.value.len() + 64
}

/// The arguments of a multi-row insert of `rows` into the log.
fn log_args(rows: &[LogRow]) -> Vec<Arg<'_>> {
    let mut args = Vec::with_capacity(rows.len() * 9);
    for r in rows {
        args.extend([
            Arg::I64(r.revision),
            Arg::I64(r.sub),
            Arg::Bytes(&r.kv.key),
            Arg::I64(r.kv.create_revision),
            Arg::I64(r.kv.version),
            Arg::I64(r.kv.lease),
            Arg::Bytes(&r.kv.value),
            Arg::I64(i64::from(r.deleted)),
            Arg::I64(r.prev_revision),
        ]);
    }
    args
}

/// Splits `items` into runs of at most `LOG_CHUNK_ROWS` items and about
/// `LOG_CHUNK_BYTES` bytes, for multi-row statements.
fn chunks<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < items.len() && end - start < LOG_CHUNK_ROWS {
            let s = size(&items[end]);
            if end > start && bytes + s > LOG_CHUNK_BYTES {
                break;
            }
            bytes += s;
            end += 1;
        }
        out.push(&items[start..end]);
        start = end;
    }
    out
}

impl DbTx {
    pub async fn commit(self) -> Result<()> {
        self.inner.commit(&*self.dialect).await
    }

    pub async fn rollback(self) -> Result<()> {
        self.inner.rollback(&*self.dialect).await
    }

    async fn fetch<T: FromRow>(&mut self, q: Q, args: &[Arg<'_>]) -> Result<Vec<T>> {
        let sql = statement(&self.q, q)?;
        self.inner.fetch(sql, args, &*self.dialect).await
    }

    async fn exec(&mut self, q: Q, args: &[Arg<'_>]) -> Result<u64> {
        let sql = statement(&self.q, q)?;
        self.inner.exec(sql, args, &*self.dialect).await
    }

    /// Reads the meta row, locking it for the rest of a write transaction.
    pub async fn lock_meta(&mut self) -> Result<Meta> {
        one(self.fetch(Q::MetaLock, &[]).await?, "koine_meta")
    }

    /// Reads the meta row without locking.
    pub async fn read_meta(&mut self) -> Result<Meta> {
        one(self.fetch(Q::MetaRead, &[]).await?, "koine_meta")
    }

    /// Records the batch being committed under its id, with the revision
    /// after it.
    pub async fn record_batch(&mut self, id: i64, revision: Revision) -> Result<()> {
        self.exec(Q::BatchInsert, &[Arg::I64(id), Arg::I64(revision)])
            .await?;
        Ok(())
    }

    /// The revision recorded for batch `id`, if it committed.
    pub async fn batch(&mut self, id: i64) -> Result<Option<Revision>> {
        Ok(self.fetch(Q::BatchGet, &[Arg::I64(id)]).await?.pop())
    }

    /// Writes the meta row unchanged: a write that proves the database
    /// takes writes (health checks).
    pub async fn touch_meta(&mut self) -> Result<()> {
        self.exec(Q::MetaTouch, &[]).await?;
        Ok(())
    }

    /// The auth store, read inside this (write) transaction.
    pub async fn auth(&mut self) -> Result<AuthRow> {
        one(self.fetch(Q::AuthRead, &[]).await?, "koine_auth")
    }

    pub async fn auth_update(&mut self, row: &AuthRow) -> Result<()> {
        self.exec(
            Q::AuthUpdate,
            &[
                Arg::I64(row.revision),
                Arg::I64(row.enabled as i64),
                Arg::Bytes(&row.state),
            ],
        )
        .await?;
        Ok(())
    }

    /// Up to `limit` log rows up to `upto` after position `(rev, sub)`, in
    /// order.
    pub async fn hash_page(
        &mut self,
        upto: Revision,
        after: (Revision, i64),
        limit: i64,
    ) -> Result<Vec<HashedRow>> {
        self.fetch(
            Q::LogHashPage,
            &[
                Arg::I64(upto),
                Arg::I64(after.0),
                Arg::I64(after.0),
                Arg::I64(after.1),
                Arg::I64(limit),
            ],
        )
        .await
    }

    /// The raised alarms, inside this transaction.
    pub async fn alarms(&mut self) -> Result<Vec<AlarmRow>> {
        self.fetch(Q::AlarmList, &[]).await
    }

    pub async fn alarm_insert(&mut self, a: AlarmRow) -> Result<()> {
        self.exec(Q::AlarmInsert, &[Arg::I64(a.member_id), Arg::I64(a.alarm)])
            .await?;
        Ok(())
    }

    pub async fn alarm_delete(&mut self, a: AlarmRow) -> Result<()> {
        self.exec(Q::AlarmDelete, &[Arg::I64(a.member_id), Arg::I64(a.alarm)])
            .await?;
        Ok(())
    }

    pub async fn token_insert(&mut self, token: &[u8], user: &[u8], ttl_ms: i64) -> Result<()> {
        self.exec(
            Q::TokenInsert,
            &[Arg::Bytes(token), Arg::Bytes(user), Arg::I64(ttl_ms)],
        )
        .await?;
        Ok(())
    }

    pub async fn token_touch(&mut self, token: &[u8], ttl_ms: i64) -> Result<()> {
        self.exec(Q::TokenTouch, &[Arg::I64(ttl_ms), Arg::Bytes(token)])
            .await?;
        Ok(())
    }

    /// Removes the tokens of `user`, or every token (`None`), and those
    /// that have expired.
    pub async fn tokens_delete(&mut self, user: Option<&[u8]>) -> Result<()> {
        match user {
            Some(u) => self.exec(Q::TokenDeleteUser, &[Arg::Bytes(u)]).await?,
            None => self.exec(Q::TokenDeleteAll, &[]).await?,
        };
        self.exec(Q::TokenPrune, &[]).await?;
        Ok(())
    }

    pub async fn set_revision(&mut self, revision: Revision) -> Result<()> {
        self.exec(Q::MetaSetRevision, &[Arg::I64(revision)]).await?;
        Ok(())
    }

    /// Tells other instances about a new revision, at commit, where the
    /// database can (PostgreSQL NOTIFY); elsewhere they poll.
    pub async fn notify(&mut self, revision: Revision) -> Result<()> {
        if self.dialect.sql().notify.is_some() {
            self.exec(Q::Notify, &[Arg::I64(revision)]).await?;
        }
        Ok(())
    }

    pub async fn set_compact_revision(&mut self, revision: Revision) -> Result<()> {
        self.exec(Q::MetaSetCompact, &[Arg::I64(revision)]).await?;
        Ok(())
    }

    /// Appends rows to the log in as few statements as the size limits allow.
    pub async fn append_log(&mut self, rows: &[LogRow]) -> Result<()> {
        for chunk in chunks(rows, log_row_size) {
            let sql = self.q.many(Many::Insert, chunk.len());
            self.inner
                .exec(&sql, &log_args(chunk), &*self.dialect)
                .await?;
        }
        Ok(())
    }

    /// Writes a batch that made revisions: its log rows, the store
    /// revision they reach, the batch's row (if `batch`) and the
    /// notification to other instances, in as few round trips as the
    /// database allows (PostgreSQL: one for the last rows and the rest).
    pub async fn write_batch(
        &mut self,
        rows: &[LogRow],
        revision: Revision,
        batch: Option<i64>,
    ) -> Result<()> {
        let sql = self.dialect.sql();
        match (sql.writes_in_one_statement, batch) {
            (true, Some(id)) if !rows.is_empty() => {
                let chunks = chunks(rows, log_row_size);
                let (last, before) = chunks.split_last().expect("rows");
                for chunk in before {
                    self.append_log(chunk).await?;
                }
                let mut args = log_args(last);
                args.extend([
                    Arg::I64(revision),
                    Arg::I64(id),
                    Arg::I64(revision),
                    Arg::I64(revision),
                ]);
                let sql = self.q.many(Many::Finish, last.len());
                self.inner.exec(&sql, &args, &*self.dialect).await?;
            }
            _ => {
                self.append_log(rows).await?;
                // Where the log's rowid is its position, its last row
                // gives the revision, unless compaction can remove that
                // row: a tombstone (`queries::meta_revision`). One page
                // less per commit.
                if !sql.log_rowid || rows.iter().any(|r| r.deleted) || rows.is_empty() {
                    self.set_revision(revision).await?;
                }
                self.notify(revision).await?;
                if let Some(id) = batch {
                    self.record_batch(id, revision).await?;
                }
            }
        }
        Ok(())
    }

    /// The values at `revs` (distinct), read inside this transaction;
    /// positions compaction removed are left out.
    pub async fn values(&mut self, revs: &[Rev]) -> Result<Vec<(Rev, Bytes)>> {
        let mut out = Vec::with_capacity(revs.len());
        for (sql, args) in value_reads(&self.q, revs) {
            let rows: Vec<Valued> = self.inner.fetch(&sql, &args, &*self.dialect).await?;
            out.extend(rows.into_iter().map(|Valued(r, v)| (r, v)));
        }
        Ok(out)
    }

    pub async fn lease_get(&mut self, id: LeaseId) -> Result<Option<LeaseRow>> {
        Ok(self.fetch(Q::LeaseGet, &[Arg::I64(id)]).await?.pop())
    }

    pub async fn lease_list(&mut self) -> Result<Vec<LeaseRow>> {
        self.fetch(Q::LeaseList, &[]).await
    }

    /// Ids of leases whose expiry has passed on the database clock.
    pub async fn leases_expired(&mut self, limit: i64) -> Result<Vec<LeaseId>> {
        self.fetch(Q::LeaseExpired, &[Arg::I64(limit)]).await
    }

    /// Creates a lease expiring `ttl` seconds from now (database clock).
    pub async fn lease_insert(&mut self, id: LeaseId, ttl: i64) -> Result<()> {
        self.exec(
            Q::LeaseInsert,
            &[
                Arg::I64(id),
                Arg::I64(ttl),
                Arg::I64(ttl.saturating_mul(1000)),
            ],
        )
        .await?;
        Ok(())
    }

    /// Grants lease `id` of `ttl` seconds from now (database clock) unless
    /// it exists; answers whether it was granted (one statement).
    pub async fn lease_grant(&mut self, id: LeaseId, ttl: i64) -> Result<bool> {
        let inserted = self
            .exec(
                Q::LeaseInsertNew,
                &[
                    Arg::I64(id),
                    Arg::I64(ttl),
                    Arg::I64(ttl.saturating_mul(1000)),
                ],
            )
            .await?;
        Ok(inserted == 1)
    }

    /// Which of `ids` (distinct) exist, in one statement per
    /// [`padded_chunks`] run.
    pub async fn leases_existing(&mut self, ids: &[LeaseId]) -> Result<Vec<LeaseId>> {
        let mut found = Vec::new();
        for chunk in padded_chunks(ids) {
            let args: Vec<Arg<'_>> = chunk.iter().map(|id| Arg::I64(*id)).collect();
            let sql = self.q.many(Many::LeasesIn, chunk.len());
            found.extend(self.inner.fetch::<i64>(&sql, &args, &*self.dialect).await?);
        }
        Ok(found)
    }

    /// Restarts a lease's countdown from its TTL.
    pub async fn lease_refresh(&mut self, id: LeaseId) -> Result<()> {
        self.exec(Q::LeaseRefresh, &[Arg::I64(id)]).await?;
        Ok(())
    }

    pub async fn lease_delete(&mut self, id: LeaseId) -> Result<()> {
        self.exec(Q::LeaseDelete, &[Arg::I64(id)]).await?;
        Ok(())
    }

    /// Deletes the changes of the given keys made at the given revisions
    /// (found by revision, then key among that revision's rows).
    pub async fn delete_versions(&mut self, versions: &[(Revision, &[u8])]) -> Result<u64> {
        let mut removed = 0;
        for chunk in versions.chunks(BY_POSITION) {
            let sql = self.q.many(Many::DeleteVersions, chunk.len());
            let args: Vec<Arg<'_>> = chunk
                .iter()
                .flat_map(|(rev, key)| [Arg::I64(*rev), Arg::Bytes(key)])
                .collect();
            removed += self.inner.exec(&sql, &args, &*self.dialect).await?;
        }
        Ok(removed)
    }

    /// Deletes every log row with revision in `[from, to]`.
    pub async fn delete_span(&mut self, from: Revision, to: Revision) -> Result<u64> {
        self.exec(Q::LogDeleteSpan, &[Arg::I64(from), Arg::I64(to)])
            .await
    }

    /// Deletes the log rows at `revs` (compaction removing what no read
    /// can reach). Returns the number of rows removed.
    pub async fn delete_rows(&mut self, revs: &[Rev]) -> Result<u64> {
        let mut removed = 0;
        for chunk in revs.chunks(BY_POSITION) {
            let sql = self.q.many(Many::Delete, chunk.len());
            removed += self
                .inner
                .exec(&sql, &position_args(chunk), &*self.dialect)
                .await?;
        }
        Ok(removed)
    }

    /// Records that the log holds no row compaction to `compact` removes
    /// up to `revision`, and forgets the batches below `compact`.
    pub async fn set_compacted_to(&mut self, revision: Revision, compact: Revision) -> Result<()> {
        self.exec(Q::BatchPrune, &[Arg::I64(compact)]).await?;
        self.exec(Q::MetaSetCompactedTo, &[Arg::I64(revision)])
            .await?;
        Ok(())
    }

    /// `koine import`'s last step: the store's revisions (the log is
    /// compacted to the compact revision already).
    pub async fn finish_import(&mut self, revision: Revision, compact: Revision) -> Result<()> {
        self.exec(
            Q::ImportFinish,
            &[Arg::I64(revision), Arg::I64(compact), Arg::I64(compact)],
        )
        .await?;
        Ok(())
    }

    /// Revision up to which the log has been physically compacted.
    pub async fn compacted_to(&mut self) -> Result<Revision> {
        one(self.fetch(Q::MetaCompactedTo, &[]).await?, "koine_meta")
    }
}
