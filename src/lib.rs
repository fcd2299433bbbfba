//! Koine: an etcd v3 server whose revision history lives in SQLite,
//! PostgreSQL or MySQL/MariaDB, or a proxy to a real etcd cluster.
//!
//! The flow (ARCHITECTURE.md draws it): `server/` holds the tonic services,
//! which validate requests and translate protobuf to engine types; `mvcc/`
//! holds etcd's semantics (revisions, Txn, the group-commit writer,
//! watching, leases, compaction); `sql/` persists through sqlx, with one
//! file per database. `passthrough/` is the other mode: the same services
//! relayed to etcd. `serve` is the listener both modes share; `types` the
//! data model every layer uses.
//!
//! The crate's interface is [`run`], [`config`], [`proto`], [`bench`],
//! [`import`], [`shutdown_signal`] and [`limit_malloc_arenas`] (and a
//! hidden `fuzzing` entry for the cargo-fuzz targets in `fuzz/`);
//! everything else is private to it.

mod alarm;
mod auth;
mod authority;
mod bbolt;
pub mod bench;
pub mod config;
mod error;
pub mod import;
mod metrics;
mod mvcc;
mod passthrough;
pub mod proto;
mod serve;
mod server;
mod snapshot;
mod sql;
mod types;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::{Config, Endpoint};
use proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use server::{Identity, Limits, Shared};

/// Entry points for the cargo-fuzz targets in `fuzz/`; not an interface.
#[doc(hidden)]
pub mod fuzzing {
    /// Reads `bytes` as an etcd snapshot file the way `koine import
    /// --from-snapshot` does (opened without requiring its checksum, then
    /// checked whole), from a temporary file.
    pub fn read_snapshot(bytes: &[u8]) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("snapshot.db");
        std::fs::write(&path, bytes)?;
        crate::snapshot::EtcdSnapshot::open(&path, true)?.verify()?;
        Ok(())
    }
}

/// Limits glibc's malloc to two arenas, before any thread allocates. By
/// default it gives each thread that meets contention an arena of its own
/// (up to eight per core), and memory freed into one is not reused by the
/// others: on this server, whose database drivers run threads of their
/// own, that kept ~70 MB more resident at 10k keys (ARCHITECTURE.md,
/// "Memory and start-up"). Two match the machines Koine is measured on.
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable; it takes no pointer.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Connects to the configured database (migrating its schema), or `None`
/// for an etcd endpoint (passthrough mode).
pub(crate) async fn open_db(config: &Config) -> anyhow::Result<Option<sql::Db>> {
    Ok(Some(match config.storage()? {
        Endpoint::Sqlite(cfg) => sql::sqlite::connect(&cfg).await?,
        Endpoint::Postgres(dsn) => sql::postgres::connect(&dsn, &config.db_tls()).await?,
        Endpoint::MySql(dsn) => sql::mysql::connect(&dsn, &config.db_tls()).await?,
        Endpoint::Etcd(_) => return Ok(None),
    }))
}

/// Runs Koine on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Flags are checked before any connection is made.
    config.check_files()?;
    let token_kind = auth::TokenKind::parse(&config.auth_token)?;
    let tls = serve::server_tls(&config)?;
    let listener: serve::Listener = Arc::new(listener);
    // The client port answers at once, also while the database does not.
    let (reason, reason_rx) = tokio::sync::watch::channel("connecting to the database".to_owned());
    let metrics = metrics::Metrics::new();
    let mut starting =
        serve::serve_while_starting(listener.clone(), tls.clone(), metrics.clone(), reason_rx);
    let db = sql::NOT_CONNECTED
        .scope(reason.clone(), open_db(&config))
        .await?;
    reason.send_replace("starting".to_owned());
    let Some(db) = db else {
        // Passthrough mode: a proxy to an etcd cluster, no database.
        let Endpoint::Etcd(endpoints) = config.storage()? else {
            unreachable!("open_db answers None for etcd endpoints only")
        };
        starting.finish().await;
        return passthrough::serve(config, endpoints, tls, listener, shutdown).await;
    };
    if db.meta().await?.revision == 0 {
        anyhow::bail!(
            "the database holds an unfinished `koine import`: run it again (it starts over) before serving"
        );
    }
    let local = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let settings = mvcc::Settings {
        request_timeout: config.request_timeout,
        min_lease_ttl: config.min_lease_ttl,
        lease_check_interval: config.lease_check_interval,
        compact_interval: config.compact_interval,
        compact_min_retain: config.compact_min_retain,
        value_cache_bytes: config.value_cache_bytes,
        poll_interval: config
            .poll_interval
            .unwrap_or(db.dialect().sql().poll_interval),
    };
    let (store, engine) = mvcc::start(db.clone(), &settings, metrics.clone(), &cancel).await?;
    let auth = auth::Auth::start(
        db.clone(),
        store.clone(),
        token_kind,
        Duration::from_secs(config.auth_token_ttl.max(1)),
        config.bcrypt_cost,
        cancel.clone(),
    )
    .await?;
    let cluster_id = store.cluster_id().await?;
    let identity = Identity {
        cluster_id,
        member_id: member_id(cluster_id, &config.name, &local.to_string()),
        name: config.name.clone(),
        client_url: format!("{}://{local}", serve::scheme(&config)),
        version: config.emulated_etcd_version.clone(),
    };
    let limits = Limits {
        max_txn_ops: config.max_txn_ops,
        max_request_bytes: config.max_request_bytes,
    };
    let alarms = alarm::Alarms::start(
        db.clone(),
        store.clone(),
        config.quota_backend_bytes,
        identity.member_id,
        cancel.clone(),
    )
    .await?;
    let shared = Arc::new(Shared {
        store,
        auth,
        alarms,
        identity,
        limits,
        watch: server::watch::WatchConfig {
            progress_interval: config.watch_progress_notify_interval,
        },
        shutdown: cancel.clone(),
        metrics: metrics.clone(),
    });

    // tonic's own limit sits far above etcd's so that oversize requests get
    // etcd's error text from `Limits::check_size`.
    let decode_limit = limits.max_recv_bytes() * 4;
    let grpc = tonic::service::Routes::new(
        KvServer::new(server::kv::KvService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LeaseServer::new(server::lease::LeaseService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(decode_limit),
    )
    .add_service(
        WatchServer::new(server::watch::WatchService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(usize::MAX),
    )
    .add_service(MaintenanceServer::new(
        server::maintenance::MaintenanceService {
            shared: shared.clone(),
        },
    ))
    .add_service(ClusterServer::new(server::cluster::ClusterService {
        shared: shared.clone(),
    }))
    .add_service(AuthServer::new(server::auth::AuthService {
        shared: shared.clone(),
    }))
    .add_service(proto::v3lockpb::lock_server::LockServer::new(
        server::lock::LockService {
            shared: shared.clone(),
        },
    ))
    .add_service(proto::v3electionpb::election_server::ElectionServer::new(
        server::lock::ElectionService {
            shared: shared.clone(),
        },
    ))
    .add_service(serve::grpc_health().await);
    let refresher = tokio::spawn(server::http::refresh_metrics(
        shared.clone(),
        cancel.clone(),
    ));
    // gRPC and etcd's plain-HTTP endpoints share the client port.
    let routes = tonic::service::Routes::from(serve::with_unknown_routes(
        grpc.into_axum_router()
            .merge(server::http::routes(shared.clone()))
            .merge(server::gateway::routes(shared.clone())),
        &[
            "etcdserverpb.KV",
            "etcdserverpb.Lease",
            "etcdserverpb.Watch",
            "etcdserverpb.Maintenance",
            "etcdserverpb.Cluster",
            "etcdserverpb.Auth",
            "v3lockpb.Lock",
            "v3electionpb.Election",
            "grpc.health.v1.Health",
        ],
        Some(limits.max_recv_bytes()),
    ));
    tracing::info!(address = %local, "serving etcd API");
    starting.finish().await;
    serve::serve_routes(routes, tls, metrics, listener, shutdown, cancel.clone()).await?;

    cancel.cancel();
    let _ = refresher.await;
    // The writer drains once the last handle to the store is gone.
    drop(shared);
    engine.stop().await;
    db.close().await;
    Ok(())
}

/// A stable member id derived from the cluster id and this member's name
/// and address (FNV-1a).
fn member_id(cluster_id: u64, name: &str, addr: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in cluster_id
        .to_le_bytes()
        .iter()
        .chain(name.as_bytes())
        .chain(addr.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
