//! Persistence over sqlx. The engine (`mvcc/`) talks to the database only
//! through [`Db`] (pools) and [`DbTx`] (one open transaction), whose methods
//! are the small transactional interface of DESIGN decision 6: read the meta
//! row, get, range, count, upsert, delete, append to the log, leases.
//!
//! SQL is written once with `?` placeholders; [`queries`] renders it per
//! dialect (placeholders, upsert syntax, row locks, the database clock). Each
//! dialect module only connects and runs migrations.

mod exec;
pub mod mysql;
pub mod postgres;
mod queries;
pub mod sqlite;

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::mvcc::types::{KeyRange, KeyValue, LeaseId, Revision};
pub use exec::{Arg, Col, Pool, TxInner, Val};
pub use queries::{Dialect, Many, Q, Queries};

/// Rows at most per multi-row INSERT into the log.
const LOG_CHUNK_ROWS: usize = 32;
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

/// A connected database: a pool for reads and one for the writer.
#[derive(Clone)]
pub struct Db {
    pub dialect: Dialect,
    queries: Arc<Queries>,
    read: Pool,
    write: Pool,
}

/// One change to append to the log.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub revision: Revision,
    pub sub: i64,
    pub kv: KeyValue,
    pub deleted: bool,
    pub prev_revision: Revision,
}

/// The store's counters as read from the meta row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub revision: Revision,
    pub compact_revision: Revision,
}

/// A lease row; `remaining_ms` is measured on the database clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRow {
    pub id: LeaseId,
    pub ttl: i64,
    pub remaining_ms: i64,
}

/// A logged change as read back for watchers.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    pub row: LogRow,
    pub prev: Option<KeyValue>,
}

impl Db {
    pub fn new(dialect: Dialect, read: Pool, write: Pool) -> Db {
        Db {
            dialect,
            queries: Arc::new(Queries::new(dialect)),
            read,
            write,
        }
    }

    /// Opens a transaction for the writer, holding the database's write lock
    /// where the dialect has one (SQLite `BEGIN IMMEDIATE`).
    pub async fn begin_write(&self) -> Result<DbTx> {
        let inner = self.write.begin_write().await?;
        Ok(DbTx {
            inner,
            q: self.queries.clone(),
        })
    }

    /// Opens a read-only transaction whose statements all see one snapshot.
    pub async fn begin_read(&self) -> Result<DbTx> {
        let inner = self.read.begin_read().await?;
        Ok(DbTx {
            inner,
            q: self.queries.clone(),
        })
    }

    /// Size of the database in bytes, as far as the dialect can tell.
    pub async fn size_bytes(&self) -> Result<i64> {
        let mut tx = self.begin_read().await?;
        let rows = tx.fetch(Q::DbSize, &[], &[Col::I64]).await?;
        tx.commit().await?;
        Ok(rows.first().map_or(0, Val::i64))
    }

    /// Live keys in `range` at the current revision together with the meta
    /// row, in one statement (hence one snapshot, no transaction).
    pub async fn range_with_meta(
        &self,
        range: &KeyRange,
        limit: Option<i64>,
    ) -> Result<(Meta, Vec<KeyValue>)> {
        const COLS: [Col; 8] = [
            Col::I64,
            Col::I64,
            Col::Bytes,
            Col::I64,
            Col::I64,
            Col::I64,
            Col::I64,
            Col::Bytes,
        ];
        let (bounded, mut args) = range_args(range);
        args.push(Arg::I64(limit.unwrap_or(i64::MAX)));
        let q = if bounded {
            Q::KvRangeWithMeta
        } else {
            Q::KvRangeWithMetaOpen
        };
        let rows = self.read.fetch(self.queries.get(q), &args, &COLS).await?;
        let mut meta = None;
        let mut kvs = Vec::with_capacity(rows.len() / COLS.len());
        let mut it = rows.into_iter();
        while let (Some(rev), Some(compact)) = (it.next(), it.next()) {
            meta.get_or_insert(Meta {
                revision: rev.i64(),
                compact_revision: compact.i64(),
            });
            // No live key in the range: the LEFT JOIN's NULL row.
            match next_kv(&mut it)? {
                Some(kv) if kv.create_revision > 0 => kvs.push(kv),
                _ => {}
            }
        }
        let meta = meta.ok_or_else(|| Error::Internal("koine_meta row missing".into()))?;
        Ok((meta, kvs))
    }

    /// The newest committed revision and the compact revision.
    pub async fn meta(&self) -> Result<Meta> {
        let mut tx = self.begin_read().await?;
        let meta = tx.read_meta().await?;
        tx.commit().await?;
        Ok(meta)
    }

    /// Tries to become the leader (the one instance that expires leases
    /// and compacts). SQLite has a single writer process: always leader.
    pub async fn try_leader(&self) -> Result<Option<LeaderSession>> {
        match &self.write {
            Pool::Sqlite(_) => Ok(Some(LeaderSession::Always)),
            Pool::Postgres(p) => {
                let mut conn = p.acquire().await?.detach();
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(727265001)")
                    .fetch_one(&mut conn)
                    .await?;
                Ok(got.then_some(LeaderSession::Postgres(conn)))
            }
            Pool::MySql(p) => {
                let mut conn = p.acquire().await?.detach();
                let got: Option<i64> =
                    sqlx::query_scalar("SELECT GET_LOCK(CONCAT('koine_leader:', DATABASE()), 0)")
                        .fetch_one(&mut conn)
                        .await?;
                Ok((got == Some(1)).then_some(LeaderSession::MySql(conn)))
            }
        }
    }

    /// A LISTEN connection for revision notifications (PostgreSQL only).
    pub async fn listener(&self) -> Result<Option<sqlx::postgres::PgListener>> {
        match &self.read {
            Pool::Postgres(p) => {
                let mut l = sqlx::postgres::PgListener::connect_with(p).await?;
                l.listen(postgres::CHANNEL).await?;
                Ok(Some(l))
            }
            _ => Ok(None),
        }
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// Holds the leader lock while it lives (a dedicated connection).
pub enum LeaderSession {
    Always,
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
}

impl LeaderSession {
    /// False once the lock's connection is gone (and with it the lock).
    pub async fn alive(&mut self) -> bool {
        match self {
            LeaderSession::Always => true,
            LeaderSession::Postgres(c) => sqlx::query("SELECT 1").execute(c).await.is_ok(),
            LeaderSession::MySql(c) => sqlx::query("SELECT 1").execute(c).await.is_ok(),
        }
    }
}

/// An open transaction.
pub struct DbTx {
    inner: TxInner,
    q: Arc<Queries>,
}

const KV_COLS: [Col; 6] = [
    Col::Bytes,
    Col::I64,
    Col::I64,
    Col::I64,
    Col::I64,
    Col::Bytes,
];

/// Takes one key-value (six columns in `KV_COLS` order) off `vals`,
/// moving the bytes out; `None` when `vals` is exhausted.
fn next_kv(vals: &mut impl Iterator<Item = Val>) -> Result<Option<KeyValue>> {
    let Some(key) = vals.next() else {
        return Ok(None);
    };
    let mut next = || {
        vals.next()
            .ok_or_else(|| Error::Internal("short row".into()))
    };
    Ok(Some(KeyValue {
        key: key.bytes(),
        create_revision: next()?.i64(),
        mod_revision: next()?.i64(),
        version: next()?.i64(),
        lease: next()?.i64(),
        value: next()?.bytes(),
    }))
}

fn kvs_from(vals: Vec<Val>) -> Result<Vec<KeyValue>> {
    let mut out = Vec::with_capacity(vals.len() / KV_COLS.len());
    let mut it = vals.into_iter();
    while let Some(kv) = next_kv(&mut it)? {
        out.push(kv);
    }
    Ok(out)
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
        self.inner.commit().await
    }

    pub async fn rollback(self) -> Result<()> {
        self.inner.rollback().await
    }

    async fn fetch(&mut self, q: Q, args: &[Arg<'_>], cols: &[Col]) -> Result<Vec<Val>> {
        let sql = self.q.get(q);
        self.inner.fetch(sql, args, cols).await
    }

    async fn exec(&mut self, q: Q, args: &[Arg<'_>]) -> Result<u64> {
        let sql = self.q.get(q);
        self.inner.exec(sql, args).await
    }

    /// Reads the meta row, locking it for the rest of a write transaction.
    pub async fn lock_meta(&mut self) -> Result<Meta> {
        self.meta(Q::MetaLock).await
    }

    /// Reads the meta row without locking.
    pub async fn read_meta(&mut self) -> Result<Meta> {
        self.meta(Q::MetaRead).await
    }

    async fn meta(&mut self, q: Q) -> Result<Meta> {
        let v = self.fetch(q, &[], &[Col::I64, Col::I64]).await?;
        match v.as_slice() {
            [rev, compact] => Ok(Meta {
                revision: rev.i64(),
                compact_revision: compact.i64(),
            }),
            _ => Err(Error::Internal("koine_meta row missing".into())),
        }
    }

    pub async fn cluster_id(&mut self) -> Result<u64> {
        let v = self.fetch(Q::ClusterId, &[], &[Col::I64]).await?;
        Ok(v.first().map_or(0, Val::i64) as u64)
    }

    pub async fn set_revision(&mut self, revision: Revision) -> Result<()> {
        self.exec(Q::MetaSetRevision, &[Arg::I64(revision)]).await?;
        Ok(())
    }

    /// Tells other instances about a new revision (PostgreSQL NOTIFY, sent
    /// at commit); a no-op elsewhere, where they poll.
    pub async fn notify(&mut self, revision: Revision) -> Result<()> {
        if self.q.dialect() == Dialect::Postgres {
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
        let v = self.fetch(Q::KvGet, &[Arg::Bytes(key)], &KV_COLS).await?;
        Ok(kvs_from(v)?.pop())
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
        kvs_from(self.fetch(q, &args, &KV_COLS).await?)
    }

    pub async fn count_current(&mut self, range: &KeyRange) -> Result<i64> {
        if range.is_empty() {
            return Ok(0);
        }
        let (bounded, args) = range_args(range);
        let q = if bounded { Q::KvCount } else { Q::KvCountOpen };
        Ok(self.fetch(q, &args, &[Col::I64]).await?[0].i64())
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
        let unchanged = kvs_from(self.fetch(q, &args, &KV_COLS).await?)?;
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
        kvs_from(self.fetch(q, &args, &KV_COLS).await?)
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
        let unchanged = self.fetch(q, &args, &[Col::I64]).await?[0].i64();
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
            self.inner.exec(&sql, &args).await?;
        }
        Ok(())
    }

    /// Deletes many current-state rows.
    pub async fn delete_many(&mut self, keys: &[&Bytes]) -> Result<()> {
        for chunk in chunks(keys, |k| k.len() + 8) {
            let args: Vec<Arg<'_>> = chunk.iter().map(|k| Arg::Bytes(k)).collect();
            let sql = self.q.many(Many::KvDelete, chunk.len());
            self.inner.exec(&sql, &args).await?;
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
            self.inner.exec(&sql, &args).await?;
        }
        Ok(())
    }

    /// Changes with revision in `(after, upto]`, in order, each with the
    /// version it replaced. At most `limit` rows; a revision is never split
    /// unless it alone exceeds the limit.
    pub async fn changes(
        &mut self,
        after: Revision,
        upto: Revision,
        limit: i64,
    ) -> Result<Vec<LoggedChange>> {
        const COLS: [Col; 15] = [
            Col::I64,
            Col::I64,
            Col::Bytes,
            Col::I64,
            Col::I64,
            Col::I64,
            Col::Bytes,
            Col::I64,
            Col::I64,
            // prev: create, mod, version, lease, value (NULL when absent)
            Col::I64,
            Col::I64,
            Col::I64,
            Col::I64,
            Col::Bytes,
            Col::I64,
        ];
        let v = self
            .fetch(
                Q::LogChanges,
                &[Arg::I64(after), Arg::I64(upto), Arg::I64(limit)],
                &COLS,
            )
            .await?;
        let mut out = Vec::with_capacity(v.len() / COLS.len());
        for row in v.chunks_exact(COLS.len()) {
            let key = row[2].clone().bytes();
            let prev = (!row[14].is_null()).then(|| KeyValue {
                key: key.clone(),
                create_revision: row[9].i64(),
                mod_revision: row[10].i64(),
                version: row[11].i64(),
                lease: row[12].i64(),
                value: row[13].clone().bytes(),
            });
            out.push(LoggedChange {
                row: LogRow {
                    revision: row[0].i64(),
                    sub: row[1].i64(),
                    kv: KeyValue {
                        key,
                        create_revision: row[3].i64(),
                        mod_revision: row[0].i64(),
                        version: row[4].i64(),
                        lease: row[5].i64(),
                        value: row[6].clone().bytes(),
                    },
                    deleted: row[7].i64() != 0,
                    prev_revision: row[8].i64(),
                },
                prev,
            });
        }
        Ok(out)
    }

    pub async fn lease_get(&mut self, id: LeaseId) -> Result<Option<LeaseRow>> {
        let v = self
            .fetch(
                Q::LeaseGet,
                &[Arg::I64(id)],
                &[Col::I64, Col::I64, Col::I64],
            )
            .await?;
        Ok(v.chunks_exact(3).next().map(|r| LeaseRow {
            id: r[0].i64(),
            ttl: r[1].i64(),
            remaining_ms: r[2].i64(),
        }))
    }

    pub async fn lease_list(&mut self) -> Result<Vec<LeaseRow>> {
        let v = self
            .fetch(Q::LeaseList, &[], &[Col::I64, Col::I64, Col::I64])
            .await?;
        Ok(v.chunks_exact(3)
            .map(|r| LeaseRow {
                id: r[0].i64(),
                ttl: r[1].i64(),
                remaining_ms: r[2].i64(),
            })
            .collect())
    }

    /// Ids of leases whose expiry has passed on the database clock.
    pub async fn leases_expired(&mut self, limit: i64) -> Result<Vec<LeaseId>> {
        let v = self
            .fetch(Q::LeaseExpired, &[Arg::I64(limit)], &[Col::I64])
            .await?;
        Ok(v.iter().map(Val::i64).collect())
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
        kvs_from(self.fetch(Q::KvByLease, &[Arg::I64(id)], &KV_COLS).await?)
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
        let tombstones = self
            .exec(
                Q::LogCompactTombstones,
                &[Arg::I64(from), Arg::I64(to), Arg::I64(compact)],
            )
            .await?;
        self.exec(Q::MetaSetCompactedTo, &[Arg::I64(to - 1)])
            .await?;
        Ok(superseded + tombstones)
    }

    /// Revision up to which the log has been physically compacted.
    pub async fn compacted_to(&mut self) -> Result<Revision> {
        let v = self.fetch(Q::MetaCompactedTo, &[], &[Col::I64]).await?;
        Ok(v.first().map_or(0, Val::i64))
    }
}

impl Val {
    pub fn i64(&self) -> i64 {
        match self {
            Val::I64(v) => *v,
            _ => 0,
        }
    }

    pub fn bytes(self) -> Bytes {
        match self {
            Val::Bytes(b) => Bytes::from(b),
            _ => Bytes::new(),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }
}
