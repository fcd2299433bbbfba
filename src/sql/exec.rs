//! Running a statement on any of the three databases: binding [`Arg`]s and
//! decoding columns into [`Val`]s. This is the only place that names the
//! concrete sqlx database types besides the dialect modules.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, MySql, Postgres, Row, Sqlite, Transaction};

use crate::error::Result;

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    I64(i64),
    Bytes(&'a [u8]),
}

/// The type of a result column.
#[derive(Debug, Clone, Copy)]
pub enum Col {
    I64,
    Bytes,
}

/// A decoded result value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Null,
    I64(i64),
    Bytes(Vec<u8>),
}

/// A connection pool of one dialect.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// An open transaction of one dialect.
pub enum TxInner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
    MySql(Transaction<'static, MySql>),
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

macro_rules! decode {
    ($rows:expr, $cols:expr) => {{
        let mut out = Vec::with_capacity($rows.len() * $cols.len());
        for row in &$rows {
            for (i, col) in $cols.iter().enumerate() {
                out.push(match col {
                    Col::I64 => row
                        .try_get::<Option<i64>, _>(i)?
                        .map_or(Val::Null, Val::I64),
                    Col::Bytes => row
                        .try_get::<Option<Vec<u8>>, _>(i)?
                        .map_or(Val::Null, Val::Bytes),
                });
            }
        }
        out
    }};
}

impl Pool {
    pub async fn begin_write(&self) -> Result<TxInner> {
        Ok(match self {
            Pool::Sqlite(p) => TxInner::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(p) => TxInner::Postgres(p.begin().await?),
            Pool::MySql(p) => TxInner::MySql(p.begin().await?),
        })
    }

    pub async fn begin_read(&self) -> Result<TxInner> {
        Ok(match self {
            Pool::Sqlite(p) => TxInner::Sqlite(p.begin().await?),
            Pool::Postgres(p) => TxInner::Postgres(
                p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?,
            ),
            Pool::MySql(p) => TxInner::MySql(
                p.begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await?,
            ),
        })
    }

    /// Runs one statement outside any explicit transaction (a single
    /// statement always reads one snapshot).
    pub async fn fetch(&self, sql: &Arc<str>, args: &[Arg<'_>], cols: &[Col]) -> Result<Vec<Val>> {
        Ok(match self {
            Pool::Sqlite(p) => {
                let rows = bound!(sql, args).fetch_all(p).await?;
                decode!(rows, cols)
            }
            Pool::Postgres(p) => {
                let rows = bound!(sql, args).fetch_all(p).await?;
                decode!(rows, cols)
            }
            Pool::MySql(p) => {
                let rows = bound!(sql, args).fetch_all(p).await?;
                decode!(rows, cols)
            }
        })
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
    pub async fn exec(&mut self, sql: &Arc<str>, args: &[Arg<'_>]) -> Result<u64> {
        Ok(match self {
            TxInner::Sqlite(tx) => bound!(sql, args).execute(&mut **tx).await?.rows_affected(),
            TxInner::Postgres(tx) => bound!(sql, args).execute(&mut **tx).await?.rows_affected(),
            TxInner::MySql(tx) => bound!(sql, args).execute(&mut **tx).await?.rows_affected(),
        })
    }

    pub async fn fetch(
        &mut self,
        sql: &Arc<str>,
        args: &[Arg<'_>],
        cols: &[Col],
    ) -> Result<Vec<Val>> {
        Ok(match self {
            TxInner::Sqlite(tx) => {
                let rows = bound!(sql, args).fetch_all(&mut **tx).await?;
                decode!(rows, cols)
            }
            TxInner::Postgres(tx) => {
                let rows = bound!(sql, args).fetch_all(&mut **tx).await?;
                decode!(rows, cols)
            }
            TxInner::MySql(tx) => {
                let rows = bound!(sql, args).fetch_all(&mut **tx).await?;
                decode!(rows, cols)
            }
        })
    }

    pub async fn commit(self) -> Result<()> {
        match self {
            TxInner::Sqlite(tx) => tx.commit().await?,
            TxInner::Postgres(tx) => tx.commit().await?,
            TxInner::MySql(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            TxInner::Sqlite(tx) => tx.rollback().await?,
            TxInner::Postgres(tx) => tx.rollback().await?,
            TxInner::MySql(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}
