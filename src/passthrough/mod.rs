//! Passthrough mode (`--endpoint http://h1:2379,http://h2:2379`): Koine in
//! front of a real etcd cluster. Every KV, Watch, Lease, Maintenance,
//! Cluster and Auth call is sent on to etcd through Koine's own generated
//! clients, with the client's request metadata (auth token, `hasleader`),
//! and etcd's answers — errors included, code and text — come back
//! unchanged. MemberList alone is answered with Koine's own address, so
//! clients keep talking to Koine.
//!
//! `upstream` holds the endpoints (TLS from `--ca-file`/`--cert-file`/
//! `--key-file`/`--skip-verify`), failover and the retry rules for unary
//! calls; `relay` the bidirectional streams with failover, `watch` the
//! watch resume (same ids, from the revision after the last delivered),
//! `lease` the keepalive resume.

/// A generated client (`$client`, e.g. `KvClient`) on `$channel` with no
/// message size limit of its own: etcd enforces its limits and answers
/// with its own error texts.
macro_rules! unlimited {
    ($client:ident, $channel:expr) => {
        $client::new($channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    };
}

/// Implements `$service` for `$proxy` by relaying each listed unary call
/// through a `$client` with its retry rule; the braces hold the rest.
macro_rules! relay_impl {
    (
        $service:path, $proxy:ty, $client:ident;
        { $($extra:tt)* }
        $( $method:ident($req:ty) -> $resp:ty, $retry:expr; )*
    ) => {
        #[tonic::async_trait]
        impl $service for $proxy {
            $(
                async fn $method(
                    &self,
                    req: Request<$req>,
                ) -> Result<Response<$resp>, Status> {
                    self.up
                        .unary(req, $retry, |ch, r| async move {
                            unlimited!($client, ch).$method(r).await
                        })
                        .await
                }
            )*
            $($extra)*
        }
    };
}

pub mod auth;
pub mod cluster;
pub mod http;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod relay;
pub mod upstream;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use upstream::Upstream;

/// Largest message accepted from a client. etcd enforces its own request
/// limit (and answers with its own error text), so this only has to sit
/// above any limit etcd may be configured with.
const MAX_CLIENT_MESSAGE: usize = 256 << 20;

/// Serves the etcd API on `listener`, relaying to the etcd `endpoints`,
/// until `shutdown` completes.
pub async fn serve(
    config: Config,
    endpoints: Vec<String>,
    tls: Option<crate::serve::ServerTls>,
    listener: crate::serve::Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let up = Arc::new(Upstream::new(&endpoints, &config)?);
    let client_url = format!("{}://{local}", crate::serve::scheme(&config));
    let cancel = CancellationToken::new();
    let metrics = crate::metrics::Metrics::new();

    let grpc = tonic::service::Routes::new(
        KvServer::new(kv::KvProxy { up: up.clone() })
            .max_decoding_message_size(MAX_CLIENT_MESSAGE)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LeaseServer::new(lease::LeaseProxy {
            up: up.clone(),
            shutdown: cancel.clone(),
        })
        .max_decoding_message_size(MAX_CLIENT_MESSAGE),
    )
    .add_service(
        WatchServer::new(watch::WatchProxy {
            up: up.clone(),
            shutdown: cancel.clone(),
        })
        .max_decoding_message_size(MAX_CLIENT_MESSAGE)
        .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceProxy { up: up.clone() })
            .max_decoding_message_size(MAX_CLIENT_MESSAGE)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        ClusterServer::new(cluster::ClusterProxy {
            up: up.clone(),
            name: config.name.clone(),
            client_url,
        })
        .max_decoding_message_size(MAX_CLIENT_MESSAGE),
    )
    .add_service(
        AuthServer::new(auth::AuthProxy { up: up.clone() })
            .max_decoding_message_size(MAX_CLIENT_MESSAGE),
    )
    .add_service(
        crate::proto::v3lockpb::lock_server::LockServer::new(lock::LockProxy { up: up.clone() })
            .max_decoding_message_size(MAX_CLIENT_MESSAGE),
    )
    .add_service(
        crate::proto::v3electionpb::election_server::ElectionServer::new(lock::ElectionProxy {
            up: up.clone(),
        })
        .max_decoding_message_size(MAX_CLIENT_MESSAGE),
    )
    .add_service(crate::serve::grpc_health().await);
    let routes = tonic::service::Routes::from(crate::serve::with_unknown_routes(
        grpc.into_axum_router()
            .merge(http::routes(up.clone(), metrics.clone())),
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
        None,
    ));
    tracing::info!(address = %local, etcd = ?endpoints, "serving etcd API in passthrough mode");
    crate::serve::serve_routes(routes, tls, metrics, listener, shutdown, cancel.clone()).await?;
    cancel.cancel();
    Ok(())
}
