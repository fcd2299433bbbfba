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
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{GrpcMetricsLayer, Metrics};

/// The HTTP/2 connection flow-control window (see `serve_routes`).
const CONNECTION_WINDOW: u32 = 8 << 20;

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
    tls: Option<ServerTls>,
    metrics: Arc<Metrics>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        // h2 closes a connection (GOAWAY "too_many_data_frames") once the
        // small DATA frames it holds unread exceed half the connection
        // window. Clients legitimately burst small messages on one stream
        // (kube-apiserver's watches share a connection; thousands of
        // WatchCreate or LeaseKeepAlive requests in a row), and each
        // stream's 64 KiB window already bounds what one stream buffers; a
        // larger connection window lets such bursts through.
        .initial_connection_window_size(CONNECTION_WINDOW)
        // What `authority.rs` bounds its own decoding by.
        .http2_max_header_list_size(crate::authority::MAX_HEADER_LIST as u32)
        .http2_keepalive_interval(Some(Duration::from_secs(7200)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(GrpcMetricsLayer { metrics })
        .layer(CertUserLayer)
        .add_routes(routes);
    let stop = cancel.clone();
    let shutdown = async move {
        shutdown.await;
        stop.cancel();
    };
    let incoming = accepted(listener);
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    incoming.map(|conn| conn.map(crate::authority::AuthorityFix::new)),
                    shutdown,
                )
                .await?
        }
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls_incoming(incoming, tls), shutdown)
                .await?
        }
    }
    Ok(())
}

/// The client port. Shared, so that the start-up answers
/// ([`serve_while_starting`]) and then Koine itself are served from it
/// without closing it in between.
pub type Listener = Arc<TcpListener>;

/// The connections `listener` accepts, with TCP_NODELAY.
fn accepted(
    listener: Listener,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<TcpStream>> + Send>> {
    Box::pin(futures::stream::unfold(listener, |l| async move {
        let conn = match l.accept().await {
            Ok((tcp, _)) => tcp.set_nodelay(true).map(|()| tcp),
            Err(e) => {
                // Out of file descriptors, for one: try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err(e)
            }
        };
        Some((conn, l))
    }))
}

/// What the client port answers while Koine cannot serve yet (the
/// database does not answer, or its migrations run): `/health`, `/livez`
/// and `/readyz` 503 with the reason, every gRPC call etcd's Unavailable
/// "etcdserver: request timed out" (clients retry reads; etcd's Go client
/// does not retry a write it sent), at once. From [`STARTING_DELAY`] after
/// start until [`Starting::finish`]: a start that is done by then keeps
/// early connections waiting, as etcd does until it is ready, so that
/// their first writes do not fail.
pub struct Starting {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// How long a start may take before the start-up answers begin.
pub const STARTING_DELAY: Duration = Duration::from_millis(250);

/// How long connections to the start-up answers get to close once Koine
/// serves: they are idle (every call was answered at once), and clients
/// reconnect to the real server.
const STARTING_GRACE: Duration = Duration::from_secs(2);

pub fn serve_while_starting(
    listener: Listener,
    tls: Option<ServerTls>,
    metrics: Arc<Metrics>,
    reason: tokio::sync::watch::Receiver<String>,
) -> Starting {
    let stop = CancellationToken::new();
    let router = axum::Router::new()
        .route("/health", axum::routing::get(starting_health))
        .route("/livez", axum::routing::get(|r| starting_check(r, "livez")))
        .route(
            "/readyz",
            axum::routing::get(|r| starting_check(r, "readyz")),
        )
        .fallback(|req: axum::extract::Request| async move {
            if is_grpc(&req) {
                tonic::Status::unavailable(crate::error::text::TIMEOUT)
                    .into_http::<axum::body::Body>()
                    .into_response()
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
            }
        })
        .with_state(reason);
    let serving = serve_routes(
        tonic::service::Routes::from(router),
        tls,
        metrics,
        listener,
        stop.clone().cancelled_owned(),
        CancellationToken::new(),
    );
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(STARTING_DELAY) => {}
                _ = stop.cancelled() => return,
            }
            tokio::select! {
                served = serving => if let Err(e) = served {
                    tracing::warn!(error = %e, "serving the start-up answers failed");
                },
                _ = async { stop.cancelled().await; tokio::time::sleep(STARTING_GRACE).await } => {}
            }
        })
    };
    Starting { stop, task }
}

/// Why Koine does not serve yet.
type StartingReason = axum::extract::State<tokio::sync::watch::Receiver<String>>;

/// `/health` while starting: etcd's form, unhealthy with the reason.
async fn starting_health(axum::extract::State(reason): StartingReason) -> Response {
    let why = reason.borrow().clone();
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"health": "false", "reason": why}).to_string(),
    )
}

/// `/livez` and `/readyz` while starting: the database check failed.
async fn starting_check(axum::extract::State(reason): StartingReason, what: &str) -> Response {
    let why = reason.borrow().clone();
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("[-]database failed: {why}\n{what} check failed\n"),
    )
}

impl Starting {
    /// Stops taking connections for the start-up answers and waits until
    /// they are closed (at most a grace period), so that the real server
    /// takes every connection from here on.
    pub async fn finish(&mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Starting {
    /// Start-up failed: the answers stop with it.
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

/// TLS on the client port (rustls), offering `h2` and `http/1.1` in ALPN
/// as etcd does: gRPC and HTTP/2 clients get h2, and HTTP/1.1 clients
/// (probes, `curl --http1.1`, the JSON gateway's users) reach `/health`,
/// `/metrics` and `/v3/...` over TLS too.
pub type ServerTls = Arc<rustls::ServerConfig>;

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type TlsConn = crate::authority::AuthorityFix<tokio_rustls::server::TlsStream<TcpStream>>;

/// The connections of `incoming` once their TLS handshake is done, each
/// handshake on a task of its own (a slow client holds up no other one).
/// The accepting task ends when the server stops taking connections.
fn tls_incoming(
    mut incoming: std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<TcpStream>> + Send>>,
    tls: ServerTls,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                conn = incoming.next() => conn,
                _ = tx.closed() => return,
            };
            let tcp = match conn {
                Some(Ok(tcp)) => tcp,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accepting a connection failed");
                    continue;
                }
                None => return,
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx
                            .send(Ok(crate::authority::AuthorityFix::new(stream)))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
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
/// Checked before anything starts: a missing or unreadable file is named,
/// and a trusted CA without a server certificate is refused — Koine would
/// otherwise serve plaintext to anyone while asked to check clients.
pub fn server_tls(config: &Config) -> anyhow::Result<Option<ServerTls>> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
    };
    let certs =
        |flag: &str, path: &std::path::Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
            let pem = read(flag, path)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{flag} {}", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{flag} {}: no PEM certificate in it", path.display());
            }
            Ok(certs)
        };
    let (Some(cert), Some(key)) = (&config.server_cert_file, &config.server_key_file) else {
        if config.server_cert_file.is_some() || config.server_key_file.is_some() {
            anyhow::bail!("--server-cert-file and --server-key-file go together");
        }
        if config.trusted_ca_file.is_some() {
            anyhow::bail!(
                "--trusted-ca-file requires --server-cert-file and --server-key-file: \
                 without TLS no client certificate can be checked"
            );
        }
        return Ok(None);
    };
    let chain = certs("--server-cert-file", cert)?;
    let private = PrivateKeyDer::from_pem_slice(&read("--server-key-file", key)?)
        .with_context(|| format!("--server-key-file {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &config.trusted_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("--trusted-ca-file", ca)? {
                roots
                    .add(c)
                    .with_context(|| format!("--trusted-ca-file {}", ca.display()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls = builder
        .with_single_cert(chain, private)
        .context("--server-cert-file and --server-key-file")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(tls)))
}

/// Adds to `router` (the gRPC services and HTTP endpoints of one mode) the
/// answers for everything else, as etcd (grpc-go and Go's HTTP server)
/// gives them: a gRPC call of a service not registered here (`services`)
/// gets `Unimplemented` "unknown service S", of a method the service does
/// not have "unknown method M for service S"; any other HTTP request 404.
///
/// Requests over tonic's decode limit get grpc-go's answer too (see
/// [`grpc_go_status`]), reporting `recv_limit`.
pub fn with_unknown_routes(
    router: axum::Router,
    services: &'static [&'static str],
    recv_limit: Option<usize>,
) -> axum::Router {
    router
        .fallback(move |req: axum::extract::Request| async move {
            if is_grpc(&req) {
                let service = grpc_service(req.uri().path());
                unimplemented(format!("unknown service {service}"))
            } else {
                (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
            }
        })
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                let path = req.uri().path();
                let txn = path == "/etcdserverpb.KV/Txn";
                let service = grpc_service(path);
                if is_grpc(&req) && services.contains(&service) {
                    let method = path.rsplit('/').next().unwrap_or_default();
                    let known = crate::proto::METHODS
                        .iter()
                        .any(|(s, methods)| *s == service && methods.contains(&method));
                    if !known {
                        return unimplemented(format!(
                            "unknown method {method} for service {service}"
                        ));
                    }
                }
                let resp = next.run(req).await;
                // Requests tonic could not decode are answered before any
                // handler runs, in a trailers-only response.
                if let Some(status) = tonic::Status::from_header_map(resp.headers())
                    && let Some(etcd) = decode_error_as_etcd(status, txn, recv_limit)
                {
                    return etcd.into_http::<axum::body::Body>().into_response();
                }
                resp
            },
        ))
}

fn is_grpc(req: &axum::extract::Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The service part of a gRPC path `/service/method`.
fn grpc_service(path: &str) -> &str {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
}

fn unimplemented(message: String) -> Response {
    tonic::Status::unimplemented(message)
        .into_http::<axum::body::Body>()
        .into_response()
}

/// tonic's answer to a request it could not decode, as etcd answers it, if
/// they differ: a message over the receive limit (see [`grpc_go_status`]);
/// a Txn nested deeper than the decoder's recursion limit (50 levels),
/// which etcd refuses with "too many operations" (its op budget shrinks at
/// every level).
fn decode_error_as_etcd(
    status: tonic::Status,
    txn: bool,
    recv_limit: Option<usize>,
) -> Option<tonic::Status> {
    match status.code() {
        tonic::Code::OutOfRange => {
            let mapped = grpc_go_status(status, recv_limit);
            (mapped.code() != tonic::Code::OutOfRange).then_some(mapped)
        }
        tonic::Code::Internal if txn && status.message().contains("recursion limit reached") => {
            Some(tonic::Status::invalid_argument(
                crate::error::text::TOO_MANY_OPS,
            ))
        }
        _ => None,
    }
}

/// A status from tonic's decoding of a request, as grpc-go (and so etcd)
/// reports the same failure: a message over the receive limit is
/// `ResourceExhausted` "grpc: received message larger than max (N vs. M)"
/// (tonic says `OutOfRange`), M being `limit` (etcd's receive limit) when
/// given, else tonic's. Other statuses pass unchanged.
pub fn grpc_go_status(status: tonic::Status, limit: Option<usize>) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange
        && let Some(rest) = status
            .message()
            .strip_prefix("Error, decoded message length too large: found ")
    {
        let mut numbers = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty());
        if let (Some(found), Some(tonic_limit)) = (numbers.next(), numbers.next()) {
            let limit = limit.map_or(tonic_limit.to_string(), |l| l.to_string());
            return tonic::Status::resource_exhausted(format!(
                "grpc: received message larger than max ({found} vs. {limit})"
            ));
        }
    }
    status
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

/// The request header that carries the common name of the client's TLS
/// certificate to the auth checks (etcd uses it as the user when a request
/// has no token). Set only here, from the verified TLS session; a client's
/// own header of that name is removed first.
pub const CERT_USER_HEADER: &str = "koine-internal-cert-cn";

#[derive(Clone, Copy)]
struct CertUserLayer;

impl<S> tower::Layer<S> for CertUserLayer {
    type Service = CertUser<S>;
    fn layer(&self, inner: S) -> CertUser<S> {
        CertUser(inner)
    }
}

#[derive(Clone)]
struct CertUser<S>(S);

impl<S, B> tower::Service<http::Request<B>> for CertUser<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        req.headers_mut().remove(CERT_USER_HEADER);
        let cn = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|chain| chain.first().and_then(|c| common_name(c.as_ref())));
        if let Some(v) = cn.and_then(|cn| http::HeaderValue::from_str(&cn).ok()) {
            req.headers_mut().insert(CERT_USER_HEADER, v);
        }
        self.0.call(req)
    }
}

/// One DER element: its tag, its contents and what follows it.
fn der(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject common name of an X.509 certificate (DER).
pub fn common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const CN: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    let (_, cert, _) = der(cert).filter(|(t, _, _)| *t == SEQUENCE)?;
    let (_, tbs, _) = der(cert).filter(|(t, _, _)| *t == SEQUENCE)?;
    // version [0] (optional), serial, signature, issuer, validity, subject
    let mut rest = tbs;
    let (tag, _, after) = der(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = der(rest)?.2;
    }
    let (_, subject, _) = der(rest).filter(|(t, _, _)| *t == SEQUENCE)?;
    let mut rdns = subject;
    while let Some((_, set, next)) = der(rdns) {
        let mut atvs = set;
        while let Some((_, atv, more)) = der(atvs) {
            let (_, oid, value) = der(atv)?;
            if oid == CN {
                let (_, text, _) = der(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
            atvs = more;
        }
        rdns = next;
    }
    None
}
