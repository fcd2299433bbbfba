//! Running a statement on any of the three databases: binding [`Arg`]s,
//! decoding each row into a typed value ([`FromRow`]) that fails loudly on
//! a NULL or a wrong type, and classifying errors through the database's
//! [`Dialect`](super::Dialect). The generic code in `sql/mod.rs` names no
//! sqlx type; the concrete pools and connections appear here and in each
//! database's own file.

use std::sync::Arc;

use bytes::Bytes;
use sqlx::{AssertSqlSafe, MySql, Postgres, Row as _, Sqlite, Transaction};

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

/// An open transaction of one database.
pub enum TxInner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
    MySql(Transaction<'static, MySql>),
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

fn decode<R: Row, T: FromRow>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.iter().map(|r| T::from_row(r)).collect()
}

impl Pool {
    /// Begins a transaction with `begin` (the dialect's BEGIN statement).
    pub async fn begin(&self, begin: &'static str, d: &dyn Dialect) -> Result<TxInner> {
        let tx = match self {
            Pool::Sqlite(p) => p.begin_with(begin).await.map(TxInner::Sqlite),
            Pool::Postgres(p) => p.begin_with(begin).await.map(TxInner::Postgres),
            Pool::MySql(p) => p.begin_with(begin).await.map(TxInner::MySql),
        };
        tx.map_err(|e| d.error(e))
    }

    /// Runs one statement outside any explicit transaction (a single
    /// statement always reads one snapshot).
    pub async fn fetch<T: FromRow>(
        &self,
        sql: &Arc<str>,
        args: &[Arg<'_>],
        d: &dyn Dialect,
    ) -> Result<Vec<T>> {
        match self {
            Pool::Sqlite(p) => decode(
                bound!(sql, args)
                    .fetch_all(p)
                    .await
                    .map_err(|e| d.error(e))?,
            ),
            Pool::Postgres(p) => decode(
                bound!(sql, args)
                    .fetch_all(p)
                    .await
                    .map_err(|e| d.error(e))?,
            ),
            Pool::MySql(p) => decode(
                bound!(sql, args)
                    .fetch_all(p)
                    .await
                    .map_err(|e| d.error(e))?,
            ),
        }
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
        let done = match self {
            TxInner::Sqlite(tx) => bound!(sql, args)
                .execute(&mut **tx)
                .await
                .map(|r| r.rows_affected()),
            TxInner::Postgres(tx) => bound!(sql, args)
                .execute(&mut **tx)
                .await
                .map(|r| r.rows_affected()),
            TxInner::MySql(tx) => bound!(sql, args)
                .execute(&mut **tx)
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
        match self {
            TxInner::Sqlite(tx) => decode(
                bound!(sql, args)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(|e| d.error(e))?,
            ),
            TxInner::Postgres(tx) => decode(
                bound!(sql, args)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(|e| d.error(e))?,
            ),
            TxInner::MySql(tx) => decode(
                bound!(sql, args)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(|e| d.error(e))?,
            ),
        }
    }

    pub async fn commit(self, d: &dyn Dialect) -> Result<()> {
        let done = match self {
            TxInner::Sqlite(tx) => tx.commit().await,
            TxInner::Postgres(tx) => tx.commit().await,
            TxInner::MySql(tx) => tx.commit().await,
        };
        done.map_err(|e| d.error(e))
    }

    pub async fn rollback(self, d: &dyn Dialect) -> Result<()> {
        let done = match self {
            TxInner::Sqlite(tx) => tx.rollback().await,
            TxInner::Postgres(tx) => tx.rollback().await,
            TxInner::MySql(tx) => tx.rollback().await,
        };
        done.map_err(|e| d.error(e))
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

    /// Runs `sql` and returns its first column, a BIGINT (NULL: `None`).
    pub async fn query_i64(&mut self, sql: &'static str) -> Result<Option<i64>, sqlx::Error> {
        match self {
            Conn::Postgres(c) => sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(c).await,
            Conn::MySql(c) => sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(c).await,
        }
    }
}
