//! PostgreSQL: the database named in the DSN (default `kubernetes`, as kine)
//! is created on first start; writers serialise on the meta row
//! (`SELECT … FOR UPDATE`), readers use REPEATABLE READ snapshots, and every
//! write transaction NOTIFYs the other instances.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgSslMode};

use super::dialect::{self, Dialect, DialectSql, LeaderSession, Notifications};
use super::exec::{Conn, Pool};
use super::{Db, DbTls, retry_connect};
use crate::error::{Error, Result};

/// The NOTIFY channel carrying new revisions.
const CHANNEL: &str = "koine_revision";

pub const SQL: DialectSql = DialectSql {
    name: "PostgreSQL",
    numbered_placeholders: true,
    log_rowid: false,
    begin_write: "BEGIN",
    begin_read: "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    now_ms: "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    lock_meta: " FOR UPDATE",
    defragment: "VACUUM FULL koine_log, koine_batch, koine_lease, koine_auth_token",
    db_size: "SELECT CAST(pg_database_size(current_database()) AS BIGINT)",
    notify: Some("SELECT pg_notify('koine_revision', CAST(CAST(? AS BIGINT) AS TEXT))"),
    writes_in_one_statement: true,
    insert_new: ("INSERT", " ON CONFLICT DO NOTHING"),
    poll_interval: std::time::Duration::from_millis(100),
    sole_writer: false,
};

/// The advisory lock held by the leader (any constant shared by every
/// instance of one database; advisory locks are per database).
const LEADER_LOCK: &str =
    "SELECT CAST(CASE WHEN pg_try_advisory_lock(727265001) THEN 1 ELSE 0 END AS BIGINT)";

struct Postgres {
    pool: PgPool,
}

/// SQLSTATEs that mean "the database is going away or not there yet":
/// connection exceptions (class 08), admin/crash shutdown and "cannot
/// connect now" (57P01-57P03), too many connections (53300).
fn unavailable(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

impl Dialect for Postgres {
    fn sql(&self) -> &'static DialectSql {
        &SQL
    }

    fn error(&self, e: sqlx::Error) -> Error {
        dialect::classify(e, unavailable)
    }

    fn try_leader(&self) -> BoxFuture<'_, Result<Option<LeaderSession>>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
            let got = sqlx::query_scalar::<_, Option<i64>>(LEADER_LOCK)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.error(e))?;
            Ok(LeaderSession::taken(got, || Conn::Postgres(conn.detach())))
        })
    }

    fn notifications(&self) -> BoxFuture<'_, Result<Option<Box<dyn Notifications>>>> {
        Box::pin(async move {
            let mut l = PgListener::connect_with(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
            l.listen(CHANNEL).await.map_err(|e| self.error(e))?;
            Ok(Some(Box::new(Listener(l)) as Box<dyn Notifications>))
        })
    }
}

struct Listener(PgListener);

impl Notifications for Listener {
    fn recv(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.0
                .recv()
                .await
                .map(|_| ())
                .map_err(|e| dialect::classify(e, unavailable))
        })
    }
}

/// Turns Nagle's algorithm off on a new connection (see `nodelay.rs`).
fn no_delay() -> std::result::Result<(), sqlx::Error> {
    super::nodelay::set_on_all_tcp_sockets();
    Ok(())
}

pub async fn connect(dsn: &str, tls: &DbTls) -> anyhow::Result<Db> {
    let mut opts = PgConnectOptions::from_str(dsn)
        .map_err(|e| anyhow::anyhow!("invalid postgres endpoint: {}", super::redact_error(&e)))?;
    let database = opts
        .get_database()
        .filter(|d| !d.is_empty())
        .unwrap_or("kubernetes")
        .to_lowercase();
    if let Some(ca) = &tls.ca_file {
        opts = opts.ssl_root_cert(ca).ssl_mode(if tls.skip_verify {
            PgSslMode::Require
        } else {
            PgSslMode::VerifyFull
        });
    } else if tls.skip_verify {
        opts = opts.ssl_mode(PgSslMode::Require);
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        opts = opts.ssl_client_cert(cert).ssl_client_key(key);
    }
    // sqlx asks for `extra_float_digits` at connect, a startup parameter
    // PgBouncer refuses in its default configuration ("unsupported startup
    // parameter"); Koine reads no floating-point values.
    opts = opts
        .extra_float_digits(None)
        .application_name("koine")
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    let target = format!("{}:{}/{}", opts.get_host(), opts.get_port(), database);

    let admin = opts.clone().database("postgres");
    retry_connect(&target, || async {
        let mut conn = admin.connect().await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&database)
                .fetch_optional(&mut conn)
                .await?;
        if exists.is_none() {
            let sql = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
            match sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
            {
                Ok(_) => tracing::info!(database = %database, "created database"),
                // Another instance created it first.
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("42P04")
                        || e.code().as_deref() == Some("23505") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;

    let opts = opts.database(&database);
    let write = retry_connect(&target, || {
        PgPoolOptions::new()
            // No ping per acquire: exec.rs retries on a broken connection.
            .test_before_acquire(false)
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|_, _| Box::pin(async { no_delay() }))
            .connect_with(opts.clone())
    })
    .await;
    sqlx::migrate!("migrations/postgres").run(&write).await?;
    let read = PgPoolOptions::new()
        // No ping per acquire: exec.rs retries on a broken connection.
        .test_before_acquire(false)
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|_, _| Box::pin(async { no_delay() }))
        .connect_with(opts)
        .await?;
    tracing::info!(%target, "connected to PostgreSQL");
    Ok(Db::new(
        Arc::new(Postgres {
            pool: write.clone(),
        }),
        Pool::Postgres(read),
        Pool::Postgres(write),
    ))
}
