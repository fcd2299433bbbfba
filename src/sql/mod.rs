//! Persistence over sqlx. The engine (`mvcc/`) talks to the database only
//! through [`Db`] (the pools) and [`DbTx`] (one open transaction), whose
//! methods are its small transactional interface: read and lock the meta
//! row, get, range and count live keys (now or at a past revision), write
//! current-state rows, append to the log, read the log, leases, compaction.
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
use crate::types::{KeyRange, KeyValue, LeaseId, Revision};
pub use dialect::{Dialect, DialectSql, LeaderSession};
use exec::{Arg, FromRow, Pool, Row, TxInner};
use queries::{Many, Q, Queries};

/// Rows at most per multi-row INSERT into the log.
const LOG_CHUNK_ROWS: usize = 32;
/// Most keys read by one `get_many` statement.
const GET_MANY: usize = 64;
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
                tracing::warn!(%target, error = %redact_error(&e), retry_in = ?delay, "database not reachable, retrying");
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

/// Pages through the history up to `upto` as compaction to `compact`
/// leaves it (HashKV, Snapshot and `koine import` read it this way), in
/// (revision, sub) order, inside one transaction.
pub struct HistoryPager {
    upto: Revision,
    compact: Revision,
    after: (Revision, i64),
    done: bool,
}

impl HistoryPager {
    const PAGE: i64 = 1000;

    pub fn new(upto: Revision, compact: Revision) -> HistoryPager {
        HistoryPager {
            upto,
            compact,
            after: (0, -1),
            done: false,
        }
    }

    /// The next page; empty once the history is read.
    pub async fn next(&mut self, tx: &mut DbTx) -> Result<Vec<HashedRow>> {
        if self.done {
            return Ok(Vec::new());
        }
        let page = tx
            .hash_page(self.upto, self.compact, self.after, Self::PAGE)
            .await?;
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

/// A logged change as read back for watchers, with the version it
/// replaced.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    pub row: LogRow,
    pub prev: Option<KeyValue>,
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

/// The six key-value columns `k, create_revision, mod_revision, version,
/// lease, value` starting at column `at`.
fn kv_at(r: &dyn Row, at: usize) -> Result<KeyValue> {
    Ok(KeyValue {
        key: r.bytes(at)?,
        create_revision: r.i64(at + 1)?,
        mod_revision: r.i64(at + 2)?,
        version: r.i64(at + 3)?,
        lease: r.i64(at + 4)?,
        value: r.bytes(at + 5)?,
    })
}

impl FromRow for KeyValue {
    fn from_row(r: &dyn Row) -> Result<KeyValue> {
        kv_at(r, 0)
    }
}

/// A row of the meta-joined current read: the counters, and a live key
/// unless the range holds none (the LEFT JOIN's NULL row).
struct MetaAndKv(Meta, Option<KeyValue>);

impl FromRow for MetaAndKv {
    fn from_row(r: &dyn Row) -> Result<MetaAndKv> {
        let meta = Meta::from_row(r)?;
        let kv = match r.opt_bytes(2)? {
            Some(_) => Some(kv_at(r, 2)?),
            None => None,
        };
        Ok(MetaAndKv(meta, kv))
    }
}

impl FromRow for LoggedChange {
    /// Columns: revision, sub, k, create_revision, version, lease, value,
    /// deleted, prev_revision, then the previous row's create_revision,
    /// revision, version, lease, value (all NULL when there is none).
    fn from_row(r: &dyn Row) -> Result<LoggedChange> {
        let revision = r.i64(0)?;
        let key = r.bytes(2)?;
        let prev = match r.opt_i64(10)? {
            Some(prev_mod) => Some(KeyValue {
                key: key.clone(),
                create_revision: r.i64(9)?,
                mod_revision: prev_mod,
                version: r.i64(11)?,
                lease: r.i64(12)?,
                value: r.bytes(13)?,
            }),
            None => None,
        };
        Ok(LoggedChange {
            row: LogRow {
                revision,
                sub: r.i64(1)?,
                kv: KeyValue {
                    key,
                    create_revision: r.i64(3)?,
                    mod_revision: revision,
                    version: r.i64(4)?,
                    lease: r.i64(5)?,
                    value: r.bytes(6)?,
                },
                deleted: r.i64(7)? != 0,
                prev_revision: r.i64(8)?,
            },
            prev,
        })
    }
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

    /// The cluster id chosen when the database was created.
    pub async fn cluster_id(&self) -> Result<u64> {
        let id: i64 = one(self.fetch(Q::ClusterId, &[]).await?, "koine_meta")?;
        Ok(id as u64)
    }

    /// Live keys in `range` at the current revision together with the meta
    /// row, in one statement (hence one snapshot, no transaction); `None`
    /// where the dialect reads a range faster through a snapshot
    /// transaction (a single key is one statement everywhere).
    pub async fn range_with_meta(
        &self,
        range: &KeyRange,
        limit: Option<i64>,
    ) -> Result<Option<(Meta, Vec<KeyValue>)>> {
        let rows: Vec<MetaAndKv> = if let Some(key) = range.single() {
            self.fetch(Q::KvGetWithMeta, &[Arg::Bytes(key)]).await?
        } else if !self.dialect.sql().joined_current_reads || range.is_empty() {
            return Ok(None);
        } else {
            let (bounded, mut args) = range_args(range);
            args.push(Arg::I64(limit.unwrap_or(i64::MAX)));
            let q = if bounded {
                Q::KvRangeWithMeta
            } else {
                Q::KvRangeWithMetaOpen
            };
            self.fetch(q, &args).await?
        };
        let meta = rows
            .first()
            .map(|r| r.0)
            .ok_or_else(|| Error::Internal("koine_meta row missing".into()))?;
        let kvs = rows.into_iter().filter_map(|r| r.1).collect();
        Ok(Some((meta, kvs)))
    }

    /// How many rows the log holds.
    pub async fn log_rows(&self) -> Result<u64> {
        Ok(one::<i64>(self.fetch(Q::LogCount, &[]).await?, "koine_log")? as u64)
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
            Q::ImportWipeKv,
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

/// Arguments for the bounded and unbounded forms of a range query.
fn range_args(range: &KeyRange) -> (bool, Vec<Arg<'_>>) {
    match &range.end {
        Some(end) => (true, vec![Arg::Bytes(&range.start), Arg::Bytes(end)]),
        None => (false, vec![Arg::Bytes(&range.start)]),
    }
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

    /// Up to `limit` rows of the history up to `upto` as compaction to
    /// `compact` leaves it, after position `(rev, sub)`, in order.
    pub async fn hash_page(
        &mut self,
        upto: Revision,
        compact: Revision,
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
                Arg::I64(compact),
                Arg::I64(compact),
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

    /// The live version of `key`, if any.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.fetch(Q::KvGet, &[Arg::Bytes(key)]).await?.pop())
    }

    /// The current versions of `keys` (distinct), in one statement per
    /// `GET_MANY` keys; absent keys are left out. Statement sizes are
    /// rounded up to a power of two (the list padded with its first key)
    /// so that few distinct statements are prepared.
    pub async fn get_many(&mut self, keys: &[Bytes]) -> Result<Vec<KeyValue>> {
        let mut found = Vec::new();
        for chunk in keys.chunks(GET_MANY) {
            let size = chunk.len().next_power_of_two();
            let mut args: Vec<Arg<'_>> = chunk.iter().map(|k| Arg::Bytes(k)).collect();
            args.resize(size, Arg::Bytes(&chunk[0]));
            let sql = self.q.many(Many::KvGetIn, size);
            found.extend(
                self.inner
                    .fetch::<KeyValue>(&sql, &args, &*self.dialect)
                    .await?,
            );
        }
        Ok(found)
    }

    /// Live keys in `range`, ascending, at most `limit` (`None` = all).
    pub async fn range_current(
        &mut self,
        range: &KeyRange,
        limit: Option<i64>,
    ) -> Result<Vec<KeyValue>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let (bounded, mut args) = range_args(range);
        args.push(Arg::I64(limit.unwrap_or(i64::MAX)));
        let q = if bounded { Q::KvRange } else { Q::KvRangeOpen };
        self.fetch(q, &args).await
    }

    pub async fn count_current(&mut self, range: &KeyRange) -> Result<i64> {
        if range.is_empty() {
            return Ok(0);
        }
        let (bounded, args) = range_args(range);
        let q = if bounded { Q::KvCount } else { Q::KvCountOpen };
        one(self.fetch(q, &args).await?, "count")
    }

    /// Keys live at `revision` in `range`, ascending, at most `limit`. Only
    /// valid for revisions not below the physically compacted point.
    ///
    /// A key's state at R is its current version if that is not newer than
    /// R; otherwise it changed after R, and its newest log row at or below
    /// R says what it was. The second set is small for the recent pinned
    /// revisions paginated lists use, so this is about as cheap as a
    /// current read.
    pub async fn range_at(
        &mut self,
        range: &KeyRange,
        revision: Revision,
        limit: Option<i64>,
    ) -> Result<Vec<KeyValue>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let (bounded, mut args) = range_args(range);
        args.push(Arg::I64(revision));
        args.push(Arg::I64(limit.unwrap_or(i64::MAX)));
        let q = if bounded {
            Q::KvUnchanged
        } else {
            Q::KvUnchangedOpen
        };
        let unchanged: Vec<KeyValue> = self.fetch(q, &args).await?;
        let changed = self.changed_at(range, revision).await?;
        // Merge two key-ordered, disjoint lists.
        let mut out = Vec::with_capacity(unchanged.len() + changed.len());
        let (mut a, mut b) = (
            unchanged.into_iter().peekable(),
            changed.into_iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.key <= y.key => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            out.extend(next);
            if limit.is_some_and(|n| out.len() as i64 >= n) {
                break;
            }
        }
        Ok(out)
    }

    /// State at `revision` of the keys in `range` changed after it.
    async fn changed_at(&mut self, range: &KeyRange, revision: Revision) -> Result<Vec<KeyValue>> {
        let mut args = vec![Arg::I64(revision)];
        args.extend(range_args(range).1);
        args.push(Arg::I64(revision));
        let q = if range.end.is_some() {
            Q::LogChangedAt
        } else {
            Q::LogChangedAtOpen
        };
        self.fetch(q, &args).await
    }

    pub async fn count_at(&mut self, range: &KeyRange, revision: Revision) -> Result<i64> {
        if range.is_empty() {
            return Ok(0);
        }
        let (bounded, mut args) = range_args(range);
        args.push(Arg::I64(revision));
        let q = if bounded {
            Q::KvUnchangedCount
        } else {
            Q::KvUnchangedCountOpen
        };
        let unchanged: i64 = one(self.fetch(q, &args).await?, "count")?;
        Ok(unchanged + self.changed_at(range, revision).await?.len() as i64)
    }

    /// Writes many current-state rows in as few statements as the size
    /// limits allow (keys must be distinct).
    pub async fn upsert_many(&mut self, kvs: &[&KeyValue]) -> Result<()> {
        for chunk in chunks(kvs, |kv| kv.key.len() + kv.value.len() + 48) {
            let mut args = Vec::with_capacity(chunk.len() * 6);
            for kv in chunk {
                args.extend([
                    Arg::Bytes(&kv.key),
                    Arg::I64(kv.create_revision),
                    Arg::I64(kv.mod_revision),
                    Arg::I64(kv.version),
                    Arg::I64(kv.lease),
                    Arg::Bytes(&kv.value),
                ]);
            }
            let sql = self.q.many(Many::KvUpsert, chunk.len());
            self.inner.exec(&sql, &args, &*self.dialect).await?;
        }
        Ok(())
    }

    /// Deletes many current-state rows.
    pub async fn delete_many(&mut self, keys: &[&Bytes]) -> Result<()> {
        for chunk in chunks(keys, |k| k.len() + 8) {
            let args: Vec<Arg<'_>> = chunk.iter().map(|k| Arg::Bytes(k)).collect();
            let sql = self.q.many(Many::KvDelete, chunk.len());
            self.inner.exec(&sql, &args, &*self.dialect).await?;
        }
        Ok(())
    }

    /// Appends rows to the log in as few statements as the size limits allow.
    pub async fn append_log(&mut self, rows: &[LogRow]) -> Result<()> {
        for chunk in chunks(rows, |r| r.kv.key.len() + r.kv.value.len() + 64) {
            let mut args = Vec::with_capacity(chunk.len() * 9);
            for r in chunk {
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
            let sql = self.q.many(Many::LogInsert, chunk.len());
            self.inner.exec(&sql, &args, &*self.dialect).await?;
        }
        Ok(())
    }

    /// Changes with revision in `(after, upto]`, in order, each with the
    /// version it replaced (while compaction has not removed it).
    pub async fn changes(&mut self, after: Revision, upto: Revision) -> Result<Vec<LoggedChange>> {
        self.fetch(Q::LogChanges, &[Arg::I64(after), Arg::I64(upto)])
            .await
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

    /// Restarts a lease's countdown from its TTL.
    pub async fn lease_refresh(&mut self, id: LeaseId) -> Result<()> {
        self.exec(Q::LeaseRefresh, &[Arg::I64(id)]).await?;
        Ok(())
    }

    pub async fn lease_delete(&mut self, id: LeaseId) -> Result<()> {
        self.exec(Q::LeaseDelete, &[Arg::I64(id)]).await?;
        Ok(())
    }

    /// Live keys attached to a lease, ascending.
    pub async fn keys_with_lease(&mut self, id: LeaseId) -> Result<Vec<KeyValue>> {
        self.fetch(Q::KvByLease, &[Arg::I64(id)]).await
    }

    /// Deletes log rows made unreachable by a compaction at `compact`, for
    /// revisions in `[from, to)`. Returns the number of rows removed.
    pub async fn compact_step(
        &mut self,
        compact: Revision,
        from: Revision,
        to: Revision,
    ) -> Result<u64> {
        let superseded = self
            .exec(
                Q::LogCompactSuperseded,
                &[Arg::I64(from), Arg::I64(to), Arg::I64(compact)],
            )
            .await?;
        // Before the tombstones go: they are what supersedes older rows.
        let older = self
            .exec(
                Q::LogCompactOlder,
                &[
                    Arg::I64(from),
                    Arg::I64(from),
                    Arg::I64(to),
                    Arg::I64(compact),
                ],
            )
            .await?;
        let tombstones = self
            .exec(
                Q::LogCompactTombstones,
                &[Arg::I64(from), Arg::I64(to), Arg::I64(compact)],
            )
            .await?;
        self.exec(Q::BatchPrune, &[Arg::I64(compact)]).await?;
        self.exec(Q::MetaSetCompactedTo, &[Arg::I64(to - 1)])
            .await?;
        Ok(superseded + older + tombstones)
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
