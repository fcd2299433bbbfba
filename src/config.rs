//! Command-line flags (each also an environment variable) and endpoint
//! parsing. Flag names follow kine, so K3s users can switch without
//! relearning; etcd's limits keep etcd's defaults.

use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::sql::sqlite::SqliteConfig;

/// Default SQLite file, as kine's.
pub const DEFAULT_SQLITE: &str = "./db/state.db";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "koine",
    version,
    about = "An etcd v3 server on SQLite, PostgreSQL or MySQL"
)]
pub struct Config {
    /// Address to serve the etcd gRPC API on (HOST:PORT).
    #[arg(long, env = "KOINE_LISTEN_ADDRESS", default_value = "127.0.0.1:2379")]
    pub listen_address: String,

    /// Storage DSN: empty for SQLite at ./db/state.db, `sqlite://PATH` or a
    /// bare file path; `postgres://user:pass@host:5432/db`;
    /// `mysql://user:pass@tcp(host:3306)/db` (or the URL form). The
    /// password in a DSN is never logged. `http://h1:2379,http://h2:2379`
    /// (or https) makes Koine a passthrough proxy to that etcd cluster.
    #[arg(long, env = "KOINE_ENDPOINT", default_value = "")]
    pub endpoint: String,

    /// Name reported for this member by MemberList.
    #[arg(long, env = "KOINE_NAME", default_value = "koine")]
    pub name: String,

    /// Log format.
    #[arg(long, env = "KOINE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `koine=debug`).
    #[arg(long, env = "KOINE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Most operations in each of a Txn's compare/success/failure lists.
    #[arg(long, env = "KOINE_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Largest write request accepted, in bytes (etcd's default 1.5 MiB).
    #[arg(long, env = "KOINE_MAX_REQUEST_BYTES", default_value_t = 1572864)]
    pub max_request_bytes: usize,

    /// etcd version reported by Maintenance.Status. Kubernetes needs 3.5.13+
    /// to serve consistent lists from its watch cache.
    #[arg(long, env = "KOINE_EMULATED_ETCD_VERSION", default_value = "3.5.13")]
    pub emulated_etcd_version: String,

    /// Shortest lease TTL in seconds; shorter grants are raised to it (etcd: 2).
    #[arg(long, env = "KOINE_MIN_LEASE_TTL", default_value_t = 2)]
    pub min_lease_ttl: i64,

    /// Interval of progress notifications to watchers that ask for them
    /// (etcd's default 10m).
    #[arg(long, env = "KOINE_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub watch_progress_notify_interval: Duration,

    /// Background compaction interval; 0 disables it (Kubernetes compacts
    /// through the API by itself).
    #[arg(long, env = "KOINE_COMPACT_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub compact_interval: Duration,

    /// Revisions kept by background compaction.
    #[arg(long, env = "KOINE_COMPACT_MIN_RETAIN", default_value_t = 1000)]
    pub compact_min_retain: i64,

    /// Memory for values (the key index itself is always in memory):
    /// values of recent writes and reads are served from here, others are
    /// read from the database by their log position. 0 keeps none.
    #[arg(
        long,
        env = "KOINE_VALUE_CACHE_BYTES",
        default_value_t = 1 << 30,
        alias = "key-cache-bytes"
    )]
    pub value_cache_bytes: usize,

    /// Largest database size in bytes before the NOSPACE alarm stops writes
    /// that add data (etcd's flag: 0 is its default, 2 GiB; negative turns
    /// the quota off).
    #[arg(
        long,
        env = "KOINE_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,

    /// Kind of auth token (etcd's flag): `simple`, or
    /// `jwt,pub-key=<PEM file>,priv-key=<PEM file>,sign-method=<RS256|RS384|
    /// RS512|PS256|PS384|PS512|ES256|ES384|HS256|HS384|HS512>[,ttl=5m]`
    /// (HS* read the shared secret from `priv-key`; without `priv-key` this
    /// instance verifies tokens but does not hand them out).
    #[arg(long, env = "KOINE_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,

    /// Seconds an auth token stays valid after its last use (etcd's
    /// `--auth-token-ttl`).
    #[arg(long, env = "KOINE_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// bcrypt cost of stored password hashes (etcd's `--bcrypt-cost`).
    #[arg(long, env = "KOINE_BCRYPT_COST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// How often other instances' writes are looked for [default: 25ms on
    /// MySQL, where polling is the only way to see them; 100ms on
    /// PostgreSQL, which is woken by NOTIFY and polls only as a safety net,
    /// and on SQLite]
    #[arg(long, env = "KOINE_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,

    /// CA certificate for verifying the database server (TLS to the database;
    /// in passthrough mode, to etcd).
    #[arg(long, env = "KOINE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Client certificate presented to the database (or to etcd).
    #[arg(long, env = "KOINE_CERT_FILE")]
    pub cert_file: Option<std::path::PathBuf>,

    /// Key of `--cert-file`.
    #[arg(long, env = "KOINE_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,

    /// Use TLS to the database (or to etcd) without verifying its certificate.
    #[arg(long, env = "KOINE_SKIP_VERIFY")]
    pub skip_verify: bool,

    /// Certificate served to clients on the listen address (TLS; PEM).
    #[arg(long, env = "KOINE_SERVER_CERT_FILE")]
    pub server_cert_file: Option<std::path::PathBuf>,

    /// Key of `--server-cert-file` (PEM).
    #[arg(long, env = "KOINE_SERVER_KEY_FILE")]
    pub server_key_file: Option<std::path::PathBuf>,

    /// CA that client certificates must be signed by; setting it requires
    /// every client to present one (etcd's `--client-cert-auth`).
    #[arg(long, env = "KOINE_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<std::path::PathBuf>,

    /// Longest a request waits for the database before failing with etcd's
    /// "etcdserver: request timed out" (etcd's default is 7s).
    #[arg(long, env = "KOINE_REQUEST_TIMEOUT", default_value = "7s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// How often expired leases are looked for.
    #[arg(long, env = "KOINE_LEASE_CHECK_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub lease_check_interval: Duration,
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Endpoint {
    Sqlite(SqliteConfig),
    /// A `postgres://` or `postgresql://` DSN.
    Postgres(String),
    /// A `mysql://` DSN, URL or go-sql-driver form.
    MySql(String),
    /// Passthrough mode: `http://` / `https://` etcd endpoints
    /// (comma-separated), see `crate::passthrough`.
    Etcd(Vec<String>),
}

impl Config {
    pub(crate) fn db_tls(&self) -> crate::sql::DbTls {
        crate::sql::DbTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            skip_verify: self.skip_verify,
        }
    }

    /// Checks that every file a flag names can be read, naming the flag and
    /// the file otherwise (before anything connects: a missing CA file
    /// would otherwise surface as an endless "database not reachable").
    pub(crate) fn check_files(&self) -> anyhow::Result<()> {
        let files = [
            ("--ca-file", &self.ca_file),
            ("--cert-file", &self.cert_file),
            ("--key-file", &self.key_file),
            ("--server-cert-file", &self.server_cert_file),
            ("--server-key-file", &self.server_key_file),
            ("--trusted-ca-file", &self.trusted_ca_file),
        ];
        for (flag, path) in files {
            if let Some(path) = path {
                std::fs::File::open(path)
                    .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Parses the storage endpoint. Errors never include the DSN itself,
    /// since it may hold a password.
    pub(crate) fn storage(&self) -> anyhow::Result<Endpoint> {
        parse_endpoint(&self.endpoint)
    }
}

/// Parses a storage endpoint (see [`Config::storage`]).
pub(crate) fn parse_endpoint(dsn: &str) -> anyhow::Result<Endpoint> {
    {
        let dsn = dsn.trim();
        if dsn.is_empty() {
            return Ok(Endpoint::Sqlite(SqliteConfig::parse(DEFAULT_SQLITE)?));
        }
        let scheme = dsn.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => Ok(Endpoint::Sqlite(SqliteConfig::parse(dsn)?)),
            Some("postgres") | Some("postgresql") => Ok(Endpoint::Postgres(dsn.to_string())),
            Some("mysql") => Ok(Endpoint::MySql(dsn.to_string())),
            Some("http") | Some("https") => parse_etcd_endpoints(dsn),
            // kine's go-sql-driver form without a scheme: user@tcp(host)/db
            None if dsn.contains("@tcp(") || dsn.contains("@unix(") => {
                Ok(Endpoint::MySql(dsn.to_string()))
            }
            None => Ok(Endpoint::Sqlite(SqliteConfig::parse(dsn)?)),
            Some(other) => anyhow::bail!("unsupported endpoint scheme {other:?}"),
        }
    }
}

/// `http://h1:2379,https://h2:2379`: every entry must be an http(s) URL.
fn parse_etcd_endpoints(list: &str) -> anyhow::Result<Endpoint> {
    let mut out = Vec::new();
    for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let url =
            url::Url::parse(e).map_err(|err| anyhow::anyhow!("bad etcd endpoint {e:?}: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            anyhow::bail!("bad etcd endpoint {e:?}: want http://HOST:PORT or https://HOST:PORT");
        }
        out.push(e.trim_end_matches('/').to_string());
    }
    Ok(Endpoint::Etcd(out))
}
