//! Prometheus metrics: etcd's names where the meaning matches (so etcd
//! dashboards and alerts work), `koine_*` for the rest. One private
//! registry per server, passed down, never global.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
    exponential_buckets,
};
use tonic::Code;

pub struct Metrics {
    pub registry: Registry,
    grpc_started: IntCounterVec,
    grpc_handled: IntCounterVec,
    grpc_received: IntCounterVec,
    grpc_sent: IntCounterVec,
    /// `etcd_mvcc_db_total_size_in_bytes`, refreshed on scrape.
    pub db_size: IntGauge,
    /// `etcd_server_has_leader`: 1 while the database answers.
    pub has_leader: IntGauge,
    /// `etcd_debugging_mvcc_current_revision`.
    pub revision: IntGauge,
    /// `etcd_disk_backend_commit_duration_seconds`: one write transaction's commit.
    pub commit_seconds: Histogram,
    /// `koine_writer_batch_size`: write requests per database transaction.
    pub batch_size: Histogram,
    /// `koine_writer_transaction_seconds`: a whole write transaction.
    pub txn_seconds: Histogram,
    /// `koine_watchers`: open watchers.
    pub watchers: IntGauge,
    /// `koine_watch_catchup_total`: watcher catch-ups read from the log.
    pub watch_catchups: prometheus::IntCounter,
    /// `koine_watch_lag_revisions`: committed revisions the watch hub has
    /// not published yet (other instances' writes not yet followed).
    pub watch_lag: IntGauge,
    /// `koine_index_keys`: keys in the key index.
    pub index_keys: IntGauge,
    /// `koine_index_revisions`: changes the key index holds (every
    /// retained revision of every key).
    pub index_revisions: IntGauge,
    /// `koine_value_cache_bytes`: memory the value cache holds.
    pub value_cache_bytes: IntGauge,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("metric");
            registry.register(Box::new(h.clone())).expect("register");
            h
        };
        let m = Metrics {
            grpc_started: counter_vec(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &labels,
            ),
            grpc_handled: counter_vec(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            grpc_received: counter_vec(
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &labels,
            ),
            grpc_sent: counter_vec(
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &labels,
            ),
            db_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database in bytes.",
            ),
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            revision: gauge(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of the store.",
            ),
            commit_seconds: histogram(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                exponential_buckets(0.0001, 2.0, 16).expect("buckets"),
            ),
            batch_size: histogram(
                "koine_writer_batch_size",
                "Write requests applied per database transaction (group commit).",
                exponential_buckets(1.0, 2.0, 10).expect("buckets"),
            ),
            txn_seconds: histogram(
                "koine_writer_transaction_seconds",
                "Duration of whole write transactions, from BEGIN to COMMIT.",
                exponential_buckets(0.0001, 2.0, 16).expect("buckets"),
            ),
            watchers: gauge("koine_watchers", "Open watchers."),
            watch_lag: gauge(
                "koine_watch_lag_revisions",
                "Committed revisions not yet published to this instance's watchers.",
            ),
            watch_catchups: counter(
                "koine_watch_catchup_total",
                "Watcher catch-ups served from the log rather than memory.",
            ),
            index_keys: gauge("koine_index_keys", "Keys in the in-memory key index."),
            index_revisions: gauge(
                "koine_index_revisions",
                "Changes (retained revisions of keys) in the in-memory key index.",
            ),
            value_cache_bytes: gauge("koine_value_cache_bytes", "Bytes of values held in memory."),
            registry,
        };
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        m.has_leader.set(1);
        Arc::new(m)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Go's names for gRPC codes, as etcd's dashboards expect them.
pub fn go_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The labels of a request path: `(service, method)` if Koine knows the
/// method, `("unknown", "unknown")` otherwise, so no client can grow the
/// metrics without bound (etcd's gRPC metrics likewise know only
/// registered methods).
fn method_labels(path: &str) -> (&'static str, &'static str) {
    let known = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(service, method)| {
            let (s, methods) = crate::proto::METHODS.iter().find(|(s, _)| *s == service)?;
            let m = methods.iter().find(|m| **m == method)?;
            Some((*s, *m))
        });
    known.unwrap_or(("unknown", "unknown"))
}

/// The gRPC type of a method.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot")
        | ("etcdserverpb.KV", "RangeStream")
        | ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    }
}

/// A tower layer counting `grpc_server_*` per method and final code.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Labels of one call.
#[derive(Clone)]
struct Call {
    metrics: Arc<Metrics>,
    kind: &'static str,
    service: &'static str,
    method: &'static str,
}

impl Call {
    fn handled(&self, code: &str) {
        self.metrics
            .grpc_handled
            .with_label_values(&[self.kind, self.service, self.method, code])
            .inc();
    }
}

type Req = http::Request<tonic::body::Body>;

impl<S, B> tower::Service<Req> for GrpcMetrics<S>
where
    S: tower::Service<Req, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
{
    type Response = http::Response<MetricsBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let call = match grpc {
            true => {
                let (service, method) = method_labels(req.uri().path());
                let call = Call {
                    metrics: self.metrics.clone(),
                    kind: grpc_type(service, method),
                    service,
                    method,
                };
                let labels = [call.kind, call.service, call.method];
                self.metrics.grpc_started.with_label_values(&labels).inc();
                if call.kind == "unary" {
                    self.metrics.grpc_received.with_label_values(&labels).inc();
                }
                Some(call)
            }
            false => None,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let header_code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok());
            let (parts, body) = resp.into_parts();
            let mut call = call;
            if let (Some(c), Some(code)) = (&call, header_code) {
                // Trailers-only response: the call is over.
                c.handled(go_code_name(Code::from_i32(code)));
                call = None;
            }
            Ok(http::Response::from_parts(
                parts,
                MetricsBody { inner: body, call },
            ))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call's final code from its trailers
    /// (or `Canceled` when the client goes away first).
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for MetricsBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(call) = this.call.take() {
                call.handled("Canceled");
            }
        }
    }
}

impl<B> http_body::Body for MetricsBody<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(call) = this.call.as_ref() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        let code = trailers
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i32>().ok())
                            .unwrap_or(0);
                        call.handled(go_code_name(Code::from_i32(code)));
                        *this.call = None;
                    } else if frame.is_data() {
                        call.metrics
                            .grpc_sent
                            .with_label_values(&[call.kind, call.service, call.method])
                            .inc();
                    }
                }
                Poll::Ready(None) => {
                    call.handled("OK");
                    *this.call = None;
                }
                Poll::Ready(Some(Err(_))) => {
                    call.handled("Unknown");
                    *this.call = None;
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
