//! The etcd cluster behind Koine: one lazily connected channel per listed
//! endpoint, a preferred endpoint that every call and stream starts on, and
//! the rules for what a failed call means.
//!
//! A failure is one of three kinds (see [`classify`]):
//! - an error etcd answered with (its gRPC code and text): returned to the
//!   client unchanged, never retried;
//! - the connection could not be made, so the request was never sent:
//!   always retried on the next endpoint;
//! - the connection broke while the request was out: retried only for calls
//!   that change nothing (a write may have been applied), otherwise
//!   answered with `Unavailable`, as a client talking to etcd directly sees.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};

use crate::config::Config;

/// How long a connection attempt to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on busy connections find a dead peer that sent no reset.
/// etcd refuses pings more often than every 5s (`--grpc-keepalive-min-time`)
/// and pings on idle connections, so neither is done.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that belong to the client's own connection or encoding and must
/// not be copied onto the request to etcd (tonic sets its own).
const HOP_HEADERS: &[&str] = &[
    "te",
    "content-type",
    "content-length",
    "user-agent",
    "grpc-encoding",
    "grpc-accept-encoding",
    "grpc-timeout",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Whether a unary call may be sent again after its connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads and other calls that change nothing: retried on any failure.
    Always,
    /// Writes: retried only when the request surely never reached etcd.
    IfUnsent,
}

/// What a failed call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// etcd answered with this status.
    Etcd,
    /// No connection: the request was never sent.
    Unsent,
    /// The connection failed with the request out.
    Lost,
}

/// Statuses parsed from etcd's trailers carry no source error; statuses
/// tonic made from a transport failure do, and a failed connection attempt
/// shows up as a [`tonic::ConnectError`] in that chain.
pub fn classify(status: &Status) -> Origin {
    let Some(mut err) = std::error::Error::source(status) else {
        return Origin::Etcd;
    };
    loop {
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return Origin::Unsent;
        }
        match err.source() {
            Some(next) => err = next,
            None => return Origin::Lost,
        }
    }
}

/// etcd's status as the client should see it: the same code, text and
/// details, without the transport metadata of the upstream response.
pub fn etcd_status(status: Status) -> Status {
    Status::with_details(
        status.code(),
        status.message().to_string(),
        status.details().to_vec().into(),
    )
}

/// `Unavailable` for a call that no endpoint could serve.
pub fn unreachable(last: Option<&Status>) -> Status {
    match last {
        Some(s) => Status::unavailable(format!(
            "koine: no etcd endpoint reachable: {}",
            s.message()
        )),
        None => Status::unavailable("koine: no etcd endpoint reachable"),
    }
}

/// `Unavailable` for a write whose connection broke while it was out.
pub fn lost(status: &Status) -> Status {
    Status::unavailable(format!(
        "koine: connection to etcd lost: {}",
        status.message()
    ))
}

/// The client's request metadata (auth token, `hasleader`, …) to send on.
pub fn forward_metadata(meta: &MetadataMap) -> MetadataMap {
    let mut headers = meta.clone().into_headers();
    for name in HOP_HEADERS {
        headers.remove(*name);
    }
    MetadataMap::from_headers(headers)
}

/// A request to etcd carrying the forwarded metadata.
pub fn request<T>(meta: &MetadataMap, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    *req.metadata_mut() = meta.clone();
    req
}

struct Member {
    url: String,
    channel: Channel,
}

/// The listed etcd endpoints.
pub struct Upstream {
    members: Vec<Member>,
    /// Index of the endpoint calls start on; moves on when it fails.
    current: AtomicUsize,
}

impl Upstream {
    /// Channels to every endpoint; nothing is dialled until first use, so
    /// Koine starts even while etcd is down.
    pub fn new(urls: &[String], config: &Config) -> anyhow::Result<Upstream> {
        anyhow::ensure!(!urls.is_empty(), "no etcd endpoint given");
        let tls = UpstreamTls::from_config(urls, config)?;
        let mut members = Vec::with_capacity(urls.len());
        for url in urls {
            let mut ep = Endpoint::from_shared(url.clone())
                .with_context(|| format!("bad etcd endpoint {url:?}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(false);
            if url.starts_with("https://") {
                ep = tls.apply(ep)?;
            }
            members.push(Member {
                url: url.clone(),
                channel: ep.connect_lazy(),
            });
        }
        Ok(Upstream {
            members,
            current: AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The endpoint new calls and streams start on.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.members.len()
    }

    pub fn channel(&self, idx: usize) -> Channel {
        self.members[idx].channel.clone()
    }

    pub fn url(&self, idx: usize) -> &str {
        &self.members[idx].url
    }

    /// Endpoint `idx` failed: later calls start on the next one (unless
    /// another call already moved on).
    pub fn failed(&self, idx: usize, status: &Status) {
        let next = (idx + 1) % self.members.len();
        if self
            .current
            .compare_exchange(idx, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && next != idx
        {
            tracing::warn!(
                failed = %self.members[idx].url,
                next = %self.members[next].url,
                code = ?status.code(),
                error = %status.message(),
                "etcd endpoint failed, moving to the next"
            );
        }
    }

    /// Endpoint `idx` answered: keep using it.
    pub fn succeeded(&self, idx: usize) {
        self.current.store(idx, Ordering::Relaxed);
    }

    /// Sends one unary call, starting on the current endpoint and moving
    /// through the others as [`Retry`] allows. etcd's own errors come back
    /// unchanged; when no endpoint can be reached the answer is
    /// `Unavailable`.
    pub async fn unary<Q, R, F, Fut>(
        &self,
        req: Request<Q>,
        retry: Retry,
        call: F,
    ) -> Result<Response<R>, Status>
    where
        Q: Clone,
        F: Fn(Channel, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let (meta, _, msg) = req.into_parts();
        let meta = forward_metadata(&meta);
        let start = self.current();
        let mut last = None;
        for i in 0..self.members.len() {
            let idx = (start + i) % self.members.len();
            match call(self.channel(idx), request(&meta, msg.clone())).await {
                Ok(resp) => {
                    self.succeeded(idx);
                    return Ok(Response::new(resp.into_inner()));
                }
                Err(status) => match classify(&status) {
                    Origin::Etcd => return Err(etcd_status(status)),
                    Origin::Unsent => {
                        self.failed(idx, &status);
                        last = Some(status);
                    }
                    Origin::Lost => {
                        self.failed(idx, &status);
                        if retry == Retry::IfUnsent {
                            return Err(lost(&status));
                        }
                        last = Some(status);
                    }
                },
            }
        }
        Err(unreachable(last.as_ref()))
    }

    /// Opens a server-streaming call as `unary` does (always retried: only
    /// reads stream); once messages flow, a broken connection ends the
    /// stream with `Unavailable`, since a partial answer cannot be
    /// continued on another endpoint.
    pub async fn server_stream<Q, R, F, Fut>(
        &self,
        req: Request<Q>,
        call: F,
    ) -> Result<Response<super::relay::ClientStream<R>>, Status>
    where
        Q: Clone,
        R: Send + 'static,
        F: Fn(Channel, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<tonic::Streaming<R>>, Status>>,
    {
        use futures::StreamExt;
        let stream = self.unary(req, Retry::Always, call).await?.into_inner();
        let stream = stream.map(|msg| {
            msg.map_err(|st| match classify(&st) {
                Origin::Etcd => etcd_status(st),
                _ => lost(&st),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Whether a stream failure is worth resuming on another endpoint: the
/// connection failed, or etcd said `Unavailable` (no leader, shutting
/// down), which etcd's own client also treats as a reason to reconnect.
pub fn resumable(status: &Status) -> bool {
    classify(status) != Origin::Etcd || status.code() == Code::Unavailable
}

/// TLS to etcd from `--ca-file`, `--cert-file`, `--key-file` and
/// `--skip-verify` (the flags that mean TLS to the database in SQL mode).
struct UpstreamTls {
    config: ClientTlsConfig,
    skip_verify: bool,
}

impl UpstreamTls {
    fn from_config(urls: &[String], config: &Config) -> anyhow::Result<UpstreamTls> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut tls = ClientTlsConfig::new();
        let any_https = urls.iter().any(|u| u.starts_with("https://"));
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                if any_https {
                    tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
            }
            (None, None) => {}
            _ => anyhow::bail!("--cert-file and --key-file go together"),
        }
        if !any_https {
            if config.ca_file.is_some() || config.cert_file.is_some() {
                tracing::warn!("TLS flags ignored: every etcd endpoint is plain http://");
            }
        } else if config.skip_verify {
            tracing::warn!("TLS to etcd without verifying its certificate (--skip-verify)");
        } else if let Some(ca) = &config.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        } else {
            anyhow::bail!("https:// etcd endpoints need --ca-file (or --skip-verify)");
        }
        Ok(UpstreamTls {
            config: tls,
            skip_verify: config.skip_verify,
        })
    }

    fn apply(&self, ep: Endpoint) -> anyhow::Result<Endpoint> {
        let ep = if self.skip_verify {
            ep.tls_config_with_verifier(self.config.clone(), Arc::new(NoVerify::new()))?
        } else {
            ep.tls_config(self.config.clone())?
        };
        Ok(ep)
    }
}

/// `--skip-verify`: accepts any server certificate, while still checking
/// the handshake signatures made with it.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl NoVerify {
    fn new() -> NoVerify {
        NoVerify(Arc::new(rustls::crypto::ring::default_provider()))
    }
}

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_statuses_are_not_transport_failures() {
        let st = Status::new(Code::Unavailable, "etcdserver: no leader");
        assert_eq!(classify(&st), Origin::Etcd);
        let st = Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert_eq!(st.code(), Code::Unavailable);
        assert_eq!(classify(&st), Origin::Unsent);
        let st = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(classify(&st), Origin::Lost);
    }

    #[test]
    fn hop_headers_are_dropped() {
        let mut m = MetadataMap::new();
        m.insert("token", "abc".parse().unwrap());
        m.insert("hasleader", "true".parse().unwrap());
        m.insert("grpc-encoding", "gzip".parse().unwrap());
        m.insert("te", "trailers".parse().unwrap());
        let f = forward_metadata(&m);
        assert_eq!(f.get("token").unwrap(), "abc");
        assert_eq!(f.get("hasleader").unwrap(), "true");
        assert!(f.get("grpc-encoding").is_none() && f.get("te").is_none());
    }
}
