//! Koine: an etcd v3 server whose revision history lives in SQLite,
//! PostgreSQL or MySQL/MariaDB.
//!
//! The flow (see DESIGN.md): `server/` holds the tonic services, which
//! validate requests and translate protobuf to engine types; `mvcc/` holds
//! etcd's semantics (revisions, Txn, the group-commit writer, the watch hub,
//! leases, compaction); `sql/` persists through sqlx.

pub mod bench;
pub mod config;
pub mod error;
pub mod metrics;
pub mod mvcc;
pub mod passthrough;
pub mod proto;
pub mod server;
pub mod sql;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::{Config, Endpoint};
use mvcc::hub::Hub;
use mvcc::store::Store;
use mvcc::tail::Feed;
use mvcc::writer::Writer;
use proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use server::{Identity, Limits, Shared};

/// Bytes of recent events the watch hub keeps in memory.
const HUB_BYTES: usize = 64 << 20;
const HUB_REVISIONS: usize = 100_000;

/// Runs Koine on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let db = match config.storage()? {
        Endpoint::Sqlite(cfg) => sql::sqlite::connect(&cfg).await?,
        Endpoint::Postgres(dsn) => sql::postgres::connect(&dsn, &config.db_tls()).await?,
        Endpoint::MySql(dsn) => sql::mysql::connect(&dsn, &config.db_tls()).await?,
        // Passthrough mode: a proxy to an etcd cluster, no database.
        Endpoint::Etcd(endpoints) => {
            return passthrough::serve(config, endpoints, listener, shutdown).await;
        }
    };
    let (meta, cluster_id) = {
        let mut tx = db.begin_read().await?;
        let meta = tx.read_meta().await?;
        let cluster_id = tx.cluster_id().await?;
        tx.commit().await?;
        (meta, cluster_id)
    };
    let hub = Arc::new(Hub::new(
        meta.revision,
        meta.compact_revision,
        HUB_BYTES,
        HUB_REVISIONS,
    ));
    let feed = Arc::new(Feed::new(hub.clone(), db.clone()));
    let metrics = metrics::Metrics::new();
    let (writer, writer_task) = Writer::spawn(
        db.clone(),
        feed.clone(),
        config.min_lease_ttl,
        metrics.clone(),
    );
    let store = Store {
        db: db.clone(),
        writer,
        hub,
        compacting: Default::default(),
        request_timeout: config.request_timeout,
    };
    let identity = Identity {
        cluster_id,
        member_id: member_id(cluster_id, &config.name, &local.to_string()),
        name: config.name.clone(),
        client_url: format!(
            "{}://{local}",
            if config.server_cert_file.is_some() {
                "https"
            } else {
                "http"
            }
        ),
        version: config.emulated_etcd_version.clone(),
    };
    let limits = Limits {
        max_txn_ops: config.max_txn_ops,
        max_request_bytes: config.max_request_bytes,
    };
    let cancel = CancellationToken::new();
    let shared = Arc::new(Shared {
        store: store.clone(),
        identity,
        limits,
        watch: server::watch::WatchConfig {
            progress_interval: config.watch_progress_notify_interval,
        },
        shutdown: cancel.clone(),
        metrics: metrics.clone(),
    });

    let is_leader = Arc::new(AtomicBool::new(false));
    let background = [
        tokio::spawn(mvcc::tail::leader_loop(
            db.clone(),
            is_leader.clone(),
            cancel.clone(),
        )),
        tokio::spawn(mvcc::tail::tail_loop(
            feed,
            db.clone(),
            config.poll_interval,
            cancel.clone(),
        )),
        tokio::spawn(mvcc::lease::expire_loop(
            store.clone(),
            config.lease_check_interval,
            is_leader.clone(),
            cancel.clone(),
        )),
        tokio::spawn(mvcc::compactor::compact_loop(
            store.clone(),
            config.compact_interval,
            config.compact_min_retain,
            is_leader,
            cancel.clone(),
        )),
    ];

    // tonic's own limit sits far above etcd's so that oversize requests get
    // etcd's error text from `Limits::check_size`.
    let decode_limit = limits.max_recv_bytes() * 4;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
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
    .add_service(health_service);
    // gRPC and etcd's plain-HTTP endpoints share the client port.
    let routes = tonic::service::Routes::from(
        grpc.into_axum_router()
            .merge(server::http::routes(shared.clone())),
    );
    tracing::info!(address = %local, revision = meta.revision, "serving etcd API");
    serve_routes(
        routes,
        server_tls(&config)?,
        metrics.clone(),
        listener,
        shutdown,
        cancel.clone(),
    )
    .await?;

    cancel.cancel();
    for task in background {
        let _ = task.await;
    }
    drop(shared);
    drop(store);
    // The writer stops once every handle is gone; wait for it to drain.
    let _ = tokio::time::timeout(Duration::from_secs(10), writer_task).await;
    db.close().await;
    Ok(())
}

/// Serves gRPC and the HTTP endpoints on the client port until `shutdown`;
/// `cancel` fires first so that streams end and the transport can finish
/// gracefully. Shared by the SQL and passthrough modes.
pub(crate) async fn serve_routes(
    routes: tonic::service::Routes,
    tls: Option<tonic::transport::ServerTlsConfig>,
    metrics: Arc<metrics::Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut builder = tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(7200)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let router = builder
        .layer(metrics::GrpcMetricsLayer { metrics })
        .add_routes(routes);
    let stop = cancel.clone();
    let shutdown = async move {
        shutdown.await;
        stop.cancel();
    };
    router
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// TLS for the client port from `--server-cert-file`/`--server-key-file`,
/// with client certificates required when `--trusted-ca-file` is given.
fn server_tls(config: &Config) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.server_cert_file, &config.server_key_file) else {
        if config.server_cert_file.is_some() || config.server_key_file.is_some() {
            anyhow::bail!("--server-cert-file and --server-key-file go together");
        }
        return Ok(None);
    };
    let identity = tonic::transport::Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &config.trusted_ca_file {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(std::fs::read(ca)?));
    }
    Ok(Some(tls))
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
