//! Plain HTTP on the client port, as etcd serves it: `/health`, `/livez`,
//! `/readyz`, `/version`, `/metrics`. Probes and scrapers need no gRPC.
//!
//! Probes answer within about a second whatever the database does: each
//! check is bounded by `CHECK_TIMEOUT`. `/metrics` never waits on the
//! database: what it reports from there (size, reachability, watch lag) is
//! refreshed in the background by [`refresh_metrics`].

use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::serve::{json, prometheus, text};
use crate::server::SharedRef;

/// Longest a health check waits for the database or the writer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the database-derived metrics are refreshed.
const METRICS_REFRESH: Duration = Duration::from_secs(5);

pub fn routes(shared: SharedRef) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// The checks a probe can run.
#[derive(Clone, Copy)]
enum Check {
    /// The database answers a read.
    Read,
    /// The writer can write.
    Writer,
    /// The key index is built from the log.
    Index,
}

async fn run_check(s: &SharedRef, check: Check) -> Result<(), String> {
    match check {
        Check::Read => match s.store.database_fault() {
            Some(fault) => Err(fault),
            None => s
                .store
                .meta_within(CHECK_TIMEOUT)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        },
        Check::Writer => s.store.writer_health(CHECK_TIMEOUT).await,
        Check::Index => s.store.index_state(CHECK_TIMEOUT).await,
    }
}

/// etcd's `/health`: `{"health":"true","reason":""}` or 503 with the
/// reason. Healthy means the database answers, the key index is built and
/// the writer can write.
async fn health(State(s): State<SharedRef>) -> Response {
    let result = match run_check(&s, Check::Read).await {
        Ok(()) => match run_check(&s, Check::Index).await {
            Ok(()) => run_check(&s, Check::Writer)
                .await
                .map_err(|e| format!("writer: {e}")),
            Err(e) => Err(e),
        },
        Err(e) => Err(format!("database: {e}")),
    };
    match result {
        Ok(()) => json(StatusCode::OK, r#"{"health":"true","reason":""}"#.into()),
        Err(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": reason}).to_string(),
        ),
    }
}

async fn livez(State(s): State<SharedRef>, RawQuery(q): RawQuery) -> Response {
    checks(
        &s,
        &[("serializable_read", Check::Read)],
        q.as_deref(),
        "livez",
    )
    .await
}

async fn readyz(State(s): State<SharedRef>, RawQuery(q): RawQuery) -> Response {
    checks(
        &s,
        &[
            ("database", Check::Read),
            ("index", Check::Index),
            ("writer", Check::Writer),
        ],
        q.as_deref(),
        "readyz",
    )
    .await
}

/// Runs named checks, answering in etcd's `[+]name ok` / `[-]name failed`
/// format; `?verbose` lists them on success, `?exclude=name` skips one.
async fn checks(
    s: &SharedRef,
    names: &[(&str, Check)],
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
    for (name, check) in names {
        if excluded.contains(name) {
            lines.push(format!("[+]{name} excluded: ok"));
            continue;
        }
        match run_check(s, *check).await {
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
    s.metrics.revision.set(s.store.published_revision());
    prometheus(&s.metrics)
}

/// Keeps the metrics that come from the database fresh, every
/// `METRICS_REFRESH`, until `cancel`: `etcd_server_has_leader` (1 while
/// the database answers), the database size, the watch lag, and what the
/// engine holds in memory.
pub async fn refresh_metrics(s: SharedRef, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(METRICS_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match s.store.meta_within(CHECK_TIMEOUT).await {
            Ok(meta) => {
                s.metrics.has_leader.set(1);
                let lag = meta.revision - s.store.published_revision();
                s.metrics.watch_lag.set(lag.max(0));
            }
            Err(_) => s.metrics.has_leader.set(0),
        }
        if let Ok(Ok(size)) = tokio::time::timeout(CHECK_TIMEOUT, s.store.db_size()).await {
            s.metrics.db_size.set(size);
        }
        let memory = s.store.memory_use();
        s.metrics.index_keys.set(memory.keys as i64);
        s.metrics.index_revisions.set(memory.revisions as i64);
        s.metrics.value_cache_bytes.set(memory.value_bytes as i64);
    }
}
