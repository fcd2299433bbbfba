//! Running a statement on any of the three databases: binding [`Arg`]s,
//! decoding each row into a typed value ([`FromRow`]) that fails loudly on
//! a NULL or a wrong type, and classifying errors through the database's
//! [`Dialect`](super::Dialect). The generic code in `sql/mod.rs` names no
//! sqlx type; the concrete pools and connections appear here and in each
//! database's own file.

use std::sync::Arc;

use bytes::Bytes;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, MySql, Postgres, Row as _, Sqlite};

use super::Dialect;
use crate::error::{Error, Result};

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    I64(i64),
    Bytes(&'a [u8]),
}

/// One result row, whatever the database. Getters fail on NULL unless they
/// say `opt`, and on a column of another type.
pub trait Row {
    fn i64(&self, i: usize) -> Result<i64>;
    fn opt_i64(&self, i: usize) -> Result<Option<i64>>;
    fn bytes(&self, i: usize) -> Result<Bytes>;
    fn opt_bytes(&self, i: usize) -> Result<Option<Bytes>>;
    /// How many columns the row has.
    fn len(&self) -> usize;
}

/// A value decoded from one row.
pub trait FromRow: Sized {
    fn from_row(row: &dyn Row) -> Result<Self>;
}

impl FromRow for i64 {
    fn from_row(row: &dyn Row) -> Result<i64> {
        row.i64(0)
    }
}

fn column_error(i: usize, e: sqlx::Error) -> Error {
    Error::Internal(format!("reading column {i}: {e}"))
}

macro_rules! impl_row {
    ($row:ty) => {
        impl Row for $row {
            fn i64(&self, i: usize) -> Result<i64> {
                self.try_get::<i64, _>(i).map_err(|e| column_error(i, e))
            }
            fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
                self.try_get::<Option<i64>, _>(i)
                    .map_err(|e| column_error(i, e))
            }
            fn bytes(&self, i: usize) -> Result<Bytes> {
                self.try_get::<Vec<u8>, _>(i)
                    .map(Bytes::from)
                    .map_err(|e| column_error(i, e))
            }
            fn opt_bytes(&self, i: usize) -> Result<Option<Bytes>> {
                self.try_get::<Option<Vec<u8>>, _>(i)
                    .map(|v| v.map(Bytes::from))
                    .map_err(|e| column_error(i, e))
            }
            fn len(&self) -> usize {
                self.columns().len()
            }
        }
    };
}
impl_row!(sqlx::sqlite::SqliteRow);
impl_row!(sqlx::postgres::PgRow);
impl_row!(sqlx::mysql::MySqlRow);

/// A connection pool of one database.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// A pooled connection of one database.
enum PoolConn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
    MySql(PoolConnection<MySql>),
}

/// An open transaction: a pooled connection on which BEGIN succeeded.
///
/// Transactions are driven with plain BEGIN / COMMIT / ROLLBACK statements
/// rather than sqlx's `Transaction`, so that a connection whose COMMIT or
/// ROLLBACK failed (a full disk, a broken link) is closed instead of going
/// back to the pool in an unknown state: the next transaction gets a fresh
/// connection. A transaction dropped while open (an error on the way) closes
/// its connection too, which rolls it back.
pub struct TxInner {
    conn: PoolConn,
    open: bool,
}

impl PoolConn {
    /// Runs a statement of transaction control (simple protocol, no
    /// arguments).
    async fn control(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        match self {
            PoolConn::Sqlite(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(drop),
            PoolConn::Postgres(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(drop),
            PoolConn::MySql(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(drop),
        }
    }

    fn close_on_drop(&mut self) {
        match self {
            PoolConn::Sqlite(c) => c.close_on_drop(),
            PoolConn::Postgres(c) => c.close_on_drop(),
            PoolConn::MySql(c) => c.close_on_drop(),
        }
    }
}

/// A connection taken out of its pool for good (the leader lock lives as
/// long as it does).
pub enum Conn {
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
}

macro_rules! bound {
    ($sql:expr, $args:expr) => {{
        let mut q = sqlx::query(AssertSqlSafe($sql.clone()));
        for a in $args {
            q = match *a {
                Arg::I64(v) => q.bind(v),
                Arg::Bytes(b) => q.bind(b),
            };
        }
        q
    }};
}

/// Connections tried for one request when they turn out [`broken`]: more
/// than a pool holds, so that a database restart, which breaks every idle
/// connection at once, costs the next request nothing but time.
const RETRIES: usize = 20;

/// Whether a statement's error means its connection is unusable: the link
/// broke, or the server ended the session (PostgreSQL's backends send
/// "terminating connection" 57P01 when the server goes down), which the
/// dialect classifies as the database being unavailable.
fn broken(e: &Error) -> bool {
    matches!(e, Error::Unavailable(_))
}

fn decode<R: Row, T: FromRow>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.iter().map(|r| T::from_row(r)).collect()
}

impl Pool {
    /// Takes a connection from the pool. Pools hand out idle connections
    /// without testing them first (a test is a round trip to the database
    /// per request), so a connection the database dropped while it was
    /// idle shows as a [`broken`] error on its first statement; callers
    /// retry on another connection ([`RETRIES`]).
    async fn acquire(&self, d: &dyn Dialect) -> Result<PoolConn> {
        let conn = match self {
            Pool::Sqlite(p) => p.acquire().await.map(PoolConn::Sqlite),
            Pool::Postgres(p) => p.acquire().await.map(PoolConn::Postgres),
            Pool::MySql(p) => p.acquire().await.map(PoolConn::MySql),
        };
        conn.map_err(|e| d.error(e))
    }

    /// Begins a transaction with `begin` (the dialect's BEGIN statement).
    pub async fn begin(&self, begin: &'static str, d: &dyn Dialect) -> Result<TxInner> {
        let mut tries = 0;
        loop {
            // Open from before BEGIN is sent: if this future is dropped
            // (a request timeout) while BEGIN is in flight, the database
            // may still run it, and the connection must not go back to
            // the pool inside a transaction — dropping `tx` closes it.
            let mut tx = TxInner {
                conn: self.acquire(d).await?,
                open: true,
            };
            match tx.conn.control(begin).await {
                Ok(()) => return Ok(tx),
                Err(e) => {
                    let e = d.error(e);
                    tries += 1;
                    if !(broken(&e) && tries < RETRIES) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Runs one statement outside any explicit transaction (a single
    /// statement always reads one snapshot). Only for reads: a statement
    /// that failed on a broken connection is run again on another.
    pub async fn fetch<T: FromRow>(
        &self,
        sql: &Arc<str>,
        args: &[Arg<'_>],
        d: &dyn Dialect,
    ) -> Result<Vec<T>> {
        let mut tries = 0;
        loop {
            let mut conn = self.acquire(d).await?;
            let rows = match &mut conn {
                PoolConn::Sqlite(c) => bound!(sql, args).fetch_all(&mut **c).await.map(decode),
                PoolConn::Postgres(c) => bound!(sql, args).fetch_all(&mut **c).await.map(decode),
                PoolConn::MySql(c) => bound!(sql, args).fetch_all(&mut **c).await.map(decode),
            };
            match rows {
                Ok(rows) => return rows,
                Err(e) => {
                    let e = d.error(e);
                    tries += 1;
                    if broken(&e) {
                        conn.close_on_drop();
                    }
                    if !(broken(&e) && tries < RETRIES) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Runs `sql` (statements separated by `;`) outside any transaction.
    pub async fn run(&self, sql: &'static str, d: &dyn Dialect) -> Result<()> {
        let mut conn = self.acquire(d).await?;
        conn.control(sql).await.map_err(|e| d.error(e))
    }

    pub async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
            Pool::MySql(p) => p.close().await,
        }
    }
}

impl TxInner {
    pub async fn exec(&mut self, sql: &Arc<str>, args: &[Arg<'_>], d: &dyn Dialect) -> Result<u64> {
        let done = match &mut self.conn {
            PoolConn::Sqlite(c) => bound!(sql, args)
                .execute(&mut **c)
                .await
                .map(|r| r.rows_affected()),
            PoolConn::Postgres(c) => bound!(sql, args)
                .execute(&mut **c)
                .await
                .map(|r| r.rows_affected()),
            PoolConn::MySql(c) => bound!(sql, args)
                .execute(&mut **c)
                .await
                .map(|r| r.rows_affected()),
        };
        done.map_err(|e| d.error(e))
    }

    pub async fn fetch<T: FromRow>(
        &mut self,
        sql: &Arc<str>,
        args: &[Arg<'_>],
        d: &dyn Dialect,
    ) -> Result<Vec<T>> {
        match &mut self.conn {
            PoolConn::Sqlite(c) => decode(
                bound!(sql, args)
                    .fetch_all(&mut **c)
                    .await
                    .map_err(|e| d.error(e))?,
            ),
            PoolConn::Postgres(c) => decode(
                bound!(sql, args)
                    .fetch_all(&mut **c)
                    .await
                    .map_err(|e| d.error(e))?,
            ),
            PoolConn::MySql(c) => decode(
                bound!(sql, args)
                    .fetch_all(&mut **c)
                    .await
                    .map_err(|e| d.error(e))?,
            ),
        }
    }

    pub async fn commit(self, d: &dyn Dialect) -> Result<()> {
        self.end("COMMIT", d).await
    }

    pub async fn rollback(self, d: &dyn Dialect) -> Result<()> {
        self.end("ROLLBACK", d).await
    }

    /// Ends the transaction with `sql`; on failure the connection's state
    /// is unknown, and it is closed rather than reused.
    async fn end(mut self, sql: &'static str, d: &dyn Dialect) -> Result<()> {
        let done = self.conn.control(sql).await;
        if done.is_ok() {
            self.open = false;
        }
        done.map_err(|e| d.error(e))
    }
}

impl Drop for TxInner {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

impl Conn {
    /// Whether the connection still answers.
    pub async fn ping(&mut self) -> bool {
        match self {
            Conn::Postgres(c) => sqlx::query("SELECT 1").execute(c).await.is_ok(),
            Conn::MySql(c) => sqlx::query("SELECT 1").execute(c).await.is_ok(),
        }
    }
}
