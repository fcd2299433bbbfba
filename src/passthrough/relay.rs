//! Bidirectional streams (Watch, LeaseKeepAlive) relayed to etcd, with
//! failover: when the upstream stream breaks (transport failure, or etcd's
//! `Unavailable`), it is opened again on the next endpoint and the
//! [`Relay`] re-sends what the new stream needs (watches from the revision
//! after the last one delivered, unanswered keepalives). Any other etcd
//! error ends the client's stream with that error. When no endpoint takes
//! the stream for [`RETRY_FOR`], it ends with `Unavailable`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Response, Status, Streaming};

use super::upstream::{self, Origin, Upstream};

/// How long a broken stream keeps trying the endpoints before giving up.
pub const RETRY_FOR: Duration = Duration::from_secs(15);
/// Pause between rounds over all endpoints.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Responses queued per stream before the relay waits for the client.
const QUEUE: usize = 64;

pub type Upstreams<T> = UnboundedReceiverStream<T>;
pub type Opening<T> = Pin<Box<dyn Future<Output = Result<Response<Streaming<T>>, Status>> + Send>>;
pub type ClientStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One kind of relayed stream: what to track and what to send again after
/// a failover.
pub trait Relay: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;

    /// Opens the stream on one endpoint.
    fn open(channel: Channel, req: tonic::Request<Upstreams<Self::Req>>) -> Opening<Self::Resp>;

    /// A message from the client; pushes what goes to etcd and what is
    /// answered to the client directly.
    fn on_client(
        &mut self,
        req: Self::Req,
        to_etcd: &mut Vec<Self::Req>,
        to_client: &mut Vec<Self::Resp>,
    );

    /// A message from etcd; pushes what goes to the client.
    fn on_etcd(&mut self, resp: Self::Resp, to_client: &mut Vec<Self::Resp>);

    /// The upstream stream broke (`reason`); a new one is about to be
    /// opened on another endpoint. Pushes what it must be sent first and
    /// what the client must be told.
    fn resume(
        &mut self,
        reason: &Status,
        to_etcd: &mut Vec<Self::Req>,
        to_client: &mut Vec<Self::Resp>,
    );
}

/// Starts relaying `inbound` and returns the stream of answers.
pub fn start<R: Relay>(
    relay: R,
    up: Arc<Upstream>,
    meta: &MetadataMap,
    inbound: Streaming<R::Req>,
    shutdown: CancellationToken,
) -> ClientStream<R::Resp> {
    let (out, rx) = mpsc::channel(QUEUE);
    let driver = Driver {
        relay,
        up,
        meta: upstream::forward_metadata(meta),
        inbound,
        out,
        shutdown,
        client_open: true,
    };
    tokio::spawn(driver.run());
    Box::pin(ReceiverStream::new(rx))
}

struct Driver<R: Relay> {
    relay: R,
    up: Arc<Upstream>,
    meta: MetadataMap,
    inbound: Streaming<R::Req>,
    out: mpsc::Sender<Result<R::Resp, Status>>,
    shutdown: CancellationToken,
    /// False once the client closed its side.
    client_open: bool,
}

/// Why one upstream stream ended.
enum End {
    /// The client went away, or Koine is shutting down.
    Done,
    /// The upstream stream failed; `connected` tells whether etcd had
    /// accepted it.
    Failed { status: Status, connected: bool },
}

impl<R: Relay> Driver<R> {
    async fn run(mut self) {
        let n = self.up.len();
        let mut idx = self.up.current();
        let mut failing_since: Option<Instant> = None;
        let mut failures: u32 = 0;
        let mut first: Vec<R::Req> = Vec::new();
        loop {
            let (status, connected) = match self.attempt(idx, std::mem::take(&mut first)).await {
                End::Done => return,
                End::Failed { status, connected } => (status, connected),
            };
            if !upstream::resumable(&status) {
                let _ = self.out.send(Err(upstream::etcd_status(status))).await;
                return;
            }
            self.up.failed(idx, &status);
            if connected {
                failing_since = None;
                failures = 0;
            }
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= RETRY_FOR {
                tracing::warn!(error = %status.message(), "no etcd endpoint takes the stream, ending it");
                let end = match upstream::classify(&status) {
                    Origin::Etcd => upstream::etcd_status(status),
                    _ => upstream::unreachable(Some(&status)),
                };
                let _ = self.out.send(Err(end)).await;
                return;
            }
            failures += 1;
            if failures as usize >= n {
                let round = failures / n as u32;
                let pause = BACKOFF_MIN
                    .saturating_mul(1 << round.min(4))
                    .min(BACKOFF_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.out.closed() => return,
                    _ = self.shutdown.cancelled() => return,
                }
            }
            let next = (idx + 1) % n;
            tracing::info!(
                from = %self.up.url(idx),
                to = %self.up.url(next),
                error = %status.message(),
                "etcd stream broke, reopening it"
            );
            idx = next;
            let mut to_client = Vec::new();
            self.relay.resume(&status, &mut first, &mut to_client);
            for msg in to_client {
                if self.out.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// One upstream stream on endpoint `idx`, until it fails or the client
    /// goes away.
    async fn attempt(&mut self, idx: usize, first: Vec<R::Req>) -> End {
        let (tx, rx) = mpsc::unbounded_channel();
        for msg in first {
            let _ = tx.send(msg);
        }
        // A client that already closed its side gets the same from etcd.
        let mut tx = self.client_open.then_some(tx);
        let open = R::open(
            self.up.channel(idx),
            upstream::request(&self.meta, UnboundedReceiverStream::new(rx)),
        );
        tokio::pin!(open);
        let out = self.out.clone();
        let shutdown = self.shutdown.clone();
        // etcd answers the call only with its first message, so the
        // client's requests are relayed while waiting for it.
        let mut stream = loop {
            tokio::select! {
                opened = &mut open => match opened {
                    Ok(resp) => break resp.into_inner(),
                    Err(status) => return End::Failed { status, connected: false },
                },
                msg = self.inbound.message(), if self.client_open => {
                    if !self.on_client(msg, &mut tx).await {
                        return End::Done;
                    }
                }
                _ = out.closed() => return End::Done,
                _ = shutdown.cancelled() => return End::Done,
            }
        };
        self.up.succeeded(idx);
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        let mut to_client = Vec::new();
                        self.relay.on_etcd(resp, &mut to_client);
                        for m in to_client {
                            if self.out.send(Ok(m)).await.is_err() {
                                return End::Done;
                            }
                        }
                    }
                    // etcd ends a stream cleanly only after the client
                    // closed its side.
                    Ok(None) if !self.client_open => return End::Done,
                    Ok(None) => {
                        return End::Failed {
                            status: Status::unavailable("etcd ended the stream"),
                            connected: true,
                        }
                    }
                    Err(status) => return End::Failed { status, connected: true },
                },
                msg = self.inbound.message(), if self.client_open => {
                    if !self.on_client(msg, &mut tx).await {
                        return End::Done;
                    }
                }
                _ = out.closed() => return End::Done,
                _ = shutdown.cancelled() => return End::Done,
            }
        }
    }

    /// Handles one read from the client; false when the client is gone.
    async fn on_client(
        &mut self,
        msg: Result<Option<R::Req>, Status>,
        tx: &mut Option<mpsc::UnboundedSender<R::Req>>,
    ) -> bool {
        match msg {
            Ok(Some(req)) => {
                let mut to_etcd = Vec::new();
                let mut to_client = Vec::new();
                self.relay.on_client(req, &mut to_etcd, &mut to_client);
                if let Some(tx) = tx {
                    for m in to_etcd {
                        // A failed send means the upstream stream is gone,
                        // which its reader reports.
                        let _ = tx.send(m);
                    }
                }
                for m in to_client {
                    if self.out.send(Ok(m)).await.is_err() {
                        return false;
                    }
                }
                true
            }
            Ok(None) => {
                self.client_open = false;
                *tx = None;
                true
            }
            Err(status) => {
                tracing::debug!(%status, "client stream ended");
                false
            }
        }
    }
}
