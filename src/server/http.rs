//! Plain HTTP on the client port, as etcd serves it: `/health`, `/livez`,
//! `/readyz`, `/version`, `/metrics`. Probes and scrapers need no gRPC.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use crate::serve::{json, prometheus, text};
use crate::server::SharedRef;

pub fn routes(shared: SharedRef) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Whether the database answers a read; the failure text otherwise.
async fn database_check(s: &SharedRef) -> Result<(), String> {
    match s.store.meta().await {
        Ok(_) => {
            s.metrics.has_leader.set(1);
            Ok(())
        }
        Err(e) => {
            s.metrics.has_leader.set(0);
            Err(e.to_string())
        }
    }
}

/// etcd's `/health`: `{"health":"true","reason":""}` or 503.
async fn health(State(s): State<SharedRef>) -> Response {
    match database_check(&s).await {
        Ok(()) => json(StatusCode::OK, r#"{"health":"true","reason":""}"#.into()),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": format!("database: {e}")}).to_string(),
        ),
    }
}

async fn livez(State(s): State<SharedRef>, RawQuery(q): RawQuery) -> Response {
    checks(&s, &[("serializable_read", false)], q.as_deref(), "livez").await
}

async fn readyz(State(s): State<SharedRef>, RawQuery(q): RawQuery) -> Response {
    checks(
        &s,
        &[("database", false), ("writer", true)],
        q.as_deref(),
        "readyz",
    )
    .await
}

/// Runs named checks, answering in etcd's `[+]name ok` / `[-]name failed`
/// format; `?verbose` lists them on success, `?exclude=name` skips one.
async fn checks(
    s: &SharedRef,
    names: &[(&str, bool)],
    query: Option<&str>,
    what: &str,
) -> Response {
    let query = query.unwrap_or("");
    let verbose = query
        .split('&')
        .any(|p| p == "verbose" || p.starts_with("verbose="));
    let excluded: Vec<&str> = query
        .split('&')
        .filter_map(|p| p.strip_prefix("exclude="))
        .collect();
    let mut lines = Vec::new();
    let mut failed = false;
    for (name, writer) in names {
        if excluded.contains(name) {
            lines.push(format!("[+]{name} excluded: ok"));
            continue;
        }
        let result = if *writer {
            if s.store.writer_running() {
                Ok(())
            } else {
                Err("writer stopped".to_string())
            }
        } else {
            database_check(s).await
        };
        match result {
            Ok(()) => lines.push(format!("[+]{name} ok")),
            Err(e) => {
                failed = true;
                lines.push(format!("[-]{name} failed: {e}"));
            }
        }
    }
    if failed {
        lines.push(format!("{what} check failed"));
        return text(StatusCode::SERVICE_UNAVAILABLE, lines.join("\n") + "\n");
    }
    if verbose {
        lines.push(format!("{what} check passed"));
        return text(StatusCode::OK, lines.join("\n") + "\n");
    }
    text(StatusCode::OK, "ok".into())
}

async fn version(State(s): State<SharedRef>) -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({"etcdserver": s.identity.version, "etcdcluster": "3.5.0"}).to_string(),
    )
}

async fn metrics(State(s): State<SharedRef>) -> Response {
    if let Ok(size) = s.store.db_size().await {
        s.metrics.db_size.set(size);
    }
    let _ = database_check(&s).await;
    s.metrics.revision.set(s.store.published_revision());
    if let Ok(lag) = s.store.watch_lag().await {
        s.metrics.watch_lag.set(lag);
    }
    prometheus(&s.metrics)
}
