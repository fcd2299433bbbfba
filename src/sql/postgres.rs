//! PostgreSQL: the database named in the DSN (default `kubernetes`, as kine)
//! is created on first start; writers serialise on the meta row
//! (`SELECT … FOR UPDATE`), readers use REPEATABLE READ snapshots, and every
//! write transaction NOTIFYs the other instances.

use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use super::{Db, DbTls, Dialect, Pool, retry_connect};

/// The NOTIFY channel carrying new revisions.
pub const CHANNEL: &str = "koine_revision";

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
    opts = opts
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
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
    })
    .await;
    sqlx::migrate!("migrations/postgres").run(&write).await?;
    let read = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await?;
    tracing::info!(%target, "connected to PostgreSQL");
    Ok(Db::new(
        Dialect::Postgres,
        Pool::Postgres(read),
        Pool::Postgres(write),
    ))
}
