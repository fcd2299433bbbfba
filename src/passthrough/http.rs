//! etcd's plain-HTTP endpoints in passthrough mode: `/health`, `/readyz`
//! and `/version` ask the etcd cluster (Maintenance.Status through the
//! current endpoint, with failover); `/livez` is Koine itself; `/metrics`
//! Koine's gRPC counters.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use tonic::Request;

use super::upstream::{Retry, Upstream};
use crate::metrics::Metrics;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::serve::{json, prometheus, text};

#[derive(Clone)]
struct Http {
    up: Arc<Upstream>,
    metrics: Arc<Metrics>,
}

pub fn routes(up: Arc<Upstream>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics_text))
        .with_state(Http { up, metrics })
}

/// etcd's Status through the current endpoint; an error text when no
/// endpoint answers or the cluster has no leader.
async fn etcd_status(s: &Http) -> Result<pb::StatusResponse, String> {
    let result =
        s.up.unary(
            Request::new(pb::StatusRequest {}),
            Retry::Always,
            |ch, r| async move { MaintenanceClient::new(ch).status(r).await },
        )
        .await;
    let checked = match result {
        Ok(resp) => {
            let st = resp.into_inner();
            if st.leader == 0 {
                Err("etcd: no leader".to_string())
            } else {
                Ok(st)
            }
        }
        Err(e) => Err(format!("etcd: {}", e.message())),
    };
    s.metrics.has_leader.set(i64::from(checked.is_ok()));
    checked
}

async fn health(State(s): State<Http>) -> Response {
    match etcd_status(&s).await {
        Ok(_) => json(StatusCode::OK, r#"{"health":"true","reason":""}"#.into()),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": e}).to_string(),
        ),
    }
}

async fn livez() -> Response {
    text(StatusCode::OK, "ok".into())
}

async fn readyz(State(s): State<Http>) -> Response {
    match etcd_status(&s).await {
        Ok(_) => text(StatusCode::OK, "ok".into()),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]etcd failed: {e}\nreadyz check failed\n"),
        ),
    }
}

async fn version(State(s): State<Http>) -> Response {
    match etcd_status(&s).await {
        Ok(st) => {
            let cluster = st.version.split('.').take(2).collect::<Vec<_>>().join(".");
            json(
                StatusCode::OK,
                serde_json::json!({"etcdserver": st.version, "etcdcluster": format!("{cluster}.0")})
                    .to_string(),
            )
        }
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"message": e}).to_string(),
        ),
    }
}

async fn metrics_text(State(s): State<Http>) -> Response {
    prometheus(&s.metrics)
}
