//! Serving the client port, the same in SQL and passthrough modes: gRPC
//! and etcd's plain-HTTP endpoints on one listener, TLS from
//! `--server-cert-file`/`--server-key-file`/`--trusted-ca-file`, the gRPC
//! metrics layer, gRPC health, graceful shutdown, and the HTTP response
//! helpers both modes' `/health`, `/readyz`, `/version` and `/metrics` use.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{GrpcMetricsLayer, Metrics};

/// gRPC health (`grpc.health.v1`) with the overall service `""` serving,
/// as etcd registers it.
pub async fn grpc_health()
-> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    service
}

/// Serves gRPC and the HTTP endpoints on the client port until `shutdown`;
/// `cancel` fires first so that streams end and the transport can finish
/// gracefully.
pub async fn serve_routes(
    routes: tonic::service::Routes,
    config: &Config,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut builder = tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(7200)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = server_tls(config)? {
        builder = builder.tls_config(tls)?;
    }
    let router = builder
        .layer(GrpcMetricsLayer { metrics })
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

/// Whether clients connect with TLS (for the URL reported by MemberList).
pub fn scheme(config: &Config) -> &'static str {
    if config.server_cert_file.is_some() {
        "https"
    } else {
        "http"
    }
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

/// A plain-text answer, as etcd's `/livez` and `/readyz` give.
pub fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// A JSON answer, as etcd's `/health` and `/version` give.
pub fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `/metrics`: the Prometheus text exposition.
pub fn prometheus(metrics: &Metrics) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
