//! MySQL/MariaDB: kine's DSN forms are accepted; the database (default
//! `kubernetes`) is created on first start. Writer sessions run READ
//! COMMITTED and serialise on the meta row; reader sessions run REPEATABLE
//! READ so that `START TRANSACTION WITH CONSISTENT SNAPSHOT` gives one
//! snapshot for a whole read.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::{ConnectOptions, Executor};

use super::dialect::{self, Dialect, DialectSql, LeaderSession, Notifications};
use super::exec::{Conn, Pool};
use super::{Db, DbTls, retry_connect};
use crate::error::{Error, Result};

pub const SQL: DialectSql = DialectSql {
    name: "MySQL",
    numbered_placeholders: false,
    log_rowid: false,
    begin_write: "BEGIN",
    // The reader sessions run REPEATABLE READ (set at connect), so this is
    // one snapshot for the whole read.
    begin_read: "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
    now_ms: "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
    lock_meta: " FOR UPDATE",
    defragment: "OPTIMIZE TABLE koine_log, koine_batch, koine_lease, koine_auth_token",
    db_size: "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS SIGNED) \
        FROM information_schema.tables WHERE table_schema = DATABASE()",
    notify: None,
    writes_in_one_statement: false,
    insert_new: ("INSERT IGNORE", ""),
    poll_interval: std::time::Duration::from_millis(25),
    sole_writer: false,
};

/// GET_LOCK names are server-wide: the database's name keeps two Koine
/// clusters on one server apart.
const LEADER_LOCK: &str = "SELECT GET_LOCK(CONCAT('koine_leader:', DATABASE()), 0)";

struct MySql {
    pool: MySqlPool,
}

impl Dialect for MySql {
    fn sql(&self) -> &'static DialectSql {
        &SQL
    }

    fn error(&self, e: sqlx::Error) -> Error {
        // SQLSTATE class 08: connection exceptions (08S01 communication
        // link failure, 08004 too many connections).
        dialect::classify(e, |code| code.starts_with("08"))
    }

    fn try_leader(&self) -> BoxFuture<'_, Result<Option<LeaderSession>>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
            let got = sqlx::query_scalar::<_, Option<i64>>(LEADER_LOCK)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.error(e))?;
            Ok(LeaderSession::taken(got, || Conn::MySql(conn.detach())))
        })
    }

    fn notifications(&self) -> BoxFuture<'_, Result<Option<Box<dyn Notifications>>>> {
        Box::pin(async { Ok(None) })
    }
}

/// Rewrites go-sql-driver DSNs (`user:pass@tcp(host:port)/db?…`, with or
/// without `mysql://`) into the URL form sqlx reads. Returns the URL and
/// the unix socket path for `unix(/path)` addresses.
pub fn normalize_dsn(dsn: &str) -> (String, Option<String>) {
    let rest = dsn.strip_prefix("mysql://").unwrap_or(dsn);
    let (auth, after) = match rest.rfind('@') {
        Some(i) => (&rest[..=i], &rest[i + 1..]),
        None => ("", rest),
    };
    let mut socket = None;
    let host_part = if let Some(inner) = after.strip_prefix("tcp(") {
        let end = inner.find(')').unwrap_or(inner.len());
        let host = &inner[..end];
        let tail = inner.get(end + 1..).unwrap_or("");
        let host = if host.is_empty() {
            "127.0.0.1:3306"
        } else {
            host
        };
        format!("{host}{tail}")
    } else if let Some(inner) = after.strip_prefix("unix(") {
        let end = inner.find(')').unwrap_or(inner.len());
        socket = Some(inner[..end].to_string());
        format!("localhost{}", inner.get(end + 1..).unwrap_or(""))
    } else {
        after.to_string()
    };
    (format!("mysql://{auth}{host_part}"), socket)
}

pub async fn connect(dsn: &str, tls: &DbTls) -> anyhow::Result<Db> {
    let (url, socket) = normalize_dsn(dsn);
    let mut opts = MySqlConnectOptions::from_str(&url)
        .map_err(|e| anyhow::anyhow!("invalid mysql endpoint: {}", super::redact_error(&e)))?;
    if let Some(path) = socket {
        opts = opts.socket(path);
    }
    let database = opts
        .get_database()
        .filter(|d| !d.is_empty())
        .unwrap_or("kubernetes")
        .to_string();
    if !database
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        anyhow::bail!("mysql database name may only hold letters, digits, '_' and '-'");
    }
    if let Some(ca) = &tls.ca_file {
        opts = opts.ssl_ca(ca).ssl_mode(if tls.skip_verify {
            MySqlSslMode::Required
        } else {
            MySqlSslMode::VerifyIdentity
        });
    } else if tls.skip_verify {
        opts = opts.ssl_mode(MySqlSslMode::Required);
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        opts = opts.ssl_client_cert(cert).ssl_client_key(key);
    }
    opts = opts.log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    let target = format!("{}:{}/{}", opts.get_host(), opts.get_port(), database);

    // The server without a database, to create ours.
    let admin = {
        let mut u = url::Url::parse(&url)?;
        u.set_path("");
        let mut o = MySqlConnectOptions::from_str(u.as_str())?;
        if let Some(path) = opts.get_socket() {
            o = o.socket(path);
        }
        if let Some(ca) = &tls.ca_file {
            o = o.ssl_ca(ca).ssl_mode(opts.get_ssl_mode());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            o = o.ssl_client_cert(cert).ssl_client_key(key);
        }
        o
    };
    retry_connect(&target, || async {
        let mut conn = admin.connect().await?;
        let sql = format!("CREATE DATABASE IF NOT EXISTS `{database}`");
        conn.execute(sqlx::AssertSqlSafe(sql)).await?;
        Ok(())
    })
    .await;

    let opts = opts.database(&database);
    let write = retry_connect(&target, || {
        MySqlPoolOptions::new()
            // No ping per acquire: exec.rs retries on a broken connection.
            .test_before_acquire(false)
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    super::nodelay::set_on_all_tcp_sockets();
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts.clone())
    })
    .await;
    // Instances starting together must not migrate together: MySQL DDL is
    // not transactional, so hold a server-wide named lock around it.
    {
        let mut lock = write.acquire().await?;
        let got: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(CONCAT('koine_migrate:', DATABASE()), 300)")
                .fetch_one(&mut *lock)
                .await?;
        anyhow::ensure!(got == Some(1), "could not take the migration lock");
        let migrated = sqlx::migrate!("migrations/mysql").run(&write).await;
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('koine_migrate:', DATABASE()))")
            .execute(&mut *lock)
            .await?;
        migrated?;
    }
    let read = MySqlPoolOptions::new()
        // No ping per acquire: exec.rs retries on a broken connection.
        .test_before_acquire(false)
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| {
            Box::pin(async move {
                super::nodelay::set_on_all_tcp_sockets();
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await?;
    tracing::info!(%target, "connected to MySQL");
    Ok(Db::new(
        Arc::new(MySql {
            pool: write.clone(),
        }),
        Pool::MySql(read),
        Pool::MySql(write),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kine_dsn_forms() {
        assert_eq!(
            normalize_dsn("mysql://root:secret@tcp(10.0.0.1:3306)/k3s?tls=true"),
            (
                "mysql://root:secret@10.0.0.1:3306/k3s?tls=true".into(),
                None
            )
        );
        assert_eq!(
            normalize_dsn("root@tcp(127.0.0.1)/"),
            ("mysql://root@127.0.0.1/".into(), None)
        );
        assert_eq!(
            normalize_dsn("mysql://root@127.0.0.1:3306/db"),
            ("mysql://root@127.0.0.1:3306/db".into(), None)
        );
        assert_eq!(
            normalize_dsn("root@unix(/var/run/mysqld/mysqld.sock)/"),
            (
                "mysql://root@localhost/".into(),
                Some("/var/run/mysqld/mysqld.sock".into())
            )
        );
    }
}
