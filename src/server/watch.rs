//! Watch service: etcd's Watch protocol over the engine's watch stream
//! (`mvcc::WatchStream`, which owns the watchers and their catch-up). One
//! task per client stream reads create, cancel and progress requests,
//! sends what the engine delivers as WatchResponses (split into fragments
//! when the watcher asked for them), and sends progress notifications.
//! Sending waits for the client (bounded queue), so a slow reader only
//! slows its own stream.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Result;
use crate::mvcc::{Delivery, Refused, WatchSpec, WatchStream};
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{self as pb, watch_request::RequestUnion};
use crate::proto::mvccpb;
use crate::server::{SharedRef, convert};
use crate::types::{EventKind, KeyRange, Revision};

/// Responses queued per stream before the sender waits for the client.
const STREAM_QUEUE: usize = 64;

const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// Watch settings.
#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    /// Interval of progress notifications for watchers that asked for them.
    pub progress_interval: Duration,
}

pub struct WatchService {
    pub shared: SharedRef,
}

pub type WatchResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchResponseStream>, Status> {
        let metadata = req.metadata().clone();
        Ok(Response::new(self.session(metadata, req.into_inner())))
    }
}

impl WatchService {
    /// Serves one watch stream: the requests of `inbound` (sent with the
    /// headers `metadata`), answered on the returned stream. The gRPC
    /// method and the JSON gateway's `/v3/watch` both come here.
    pub fn session<S>(
        &self,
        metadata: tonic::metadata::MetadataMap,
        inbound: S,
    ) -> WatchResponseStream
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = Session {
            metadata,
            watchers: self.shared.store.watch_stream(),
            shared: self.shared.clone(),
            out: tx,
            wants: Default::default(),
            progress_pending: false,
        };
        tokio::spawn(stream.run(inbound));
        Box::pin(ReceiverStream::new(rx))
    }
}

/// What a watcher asked for that is the protocol's business, not the
/// engine's.
#[derive(Debug, Clone, Copy)]
struct Wants {
    progress_notify: bool,
    fragment: bool,
}

/// The client went away; end the stream.
struct Closed;

/// One client stream.
struct Session {
    shared: SharedRef,
    /// The stream's request headers: its auth token.
    metadata: tonic::metadata::MetadataMap,
    watchers: WatchStream,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    wants: std::collections::HashMap<i64, Wants>,
    /// A WatchProgressRequest waits for every watcher to be synced.
    progress_pending: bool,
}

impl Session {
    async fn run<S>(mut self, mut inbound: S)
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let mut latest = self.watchers.subscribe();
        let shutdown = self.shared.shutdown.clone();
        let every = self.shared.watch.progress_interval;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A client that closes its sending side still gets events, as
        // from etcd; the stream ends when the client goes away.
        let mut reading = true;
        loop {
            if self.deliver().await.is_err() {
                return;
            }
            let step = tokio::select! {
                msg = inbound.next(), if reading => match msg {
                    Some(Ok(req)) => self.handle(req).await,
                    // A message that cannot be decoded or is too large:
                    // the stream ends with that error, as grpc-go ends it.
                    Some(Err(status)) => {
                        tracing::debug!(%status, "watch request unreadable");
                        let _ = self.out.send(Err(crate::serve::grpc_go_status(status, Some(self.shared.limits.max_recv_bytes())))).await;
                        return;
                    }
                    None => {
                        reading = false;
                        Ok(())
                    }
                },
                _ = self.out.closed() => return,
                changed = latest.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    Ok(())
                }
                _ = progress.tick() => self.notify_progress().await,
                _ = shutdown.cancelled() => {
                    let _ = self.out.send(Err(Status::unavailable(crate::error::text::STOPPED))).await;
                    return;
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    fn header(&self, revision: Revision) -> Option<pb::ResponseHeader> {
        self.shared.header(revision)
    }

    async fn send(&self, resp: pb::WatchResponse) -> std::result::Result<(), Closed> {
        self.out.send(Ok(resp)).await.map_err(|_| Closed)
    }

    async fn handle(&mut self, req: pb::WatchRequest) -> std::result::Result<(), Closed> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.cancel(c.watch_id) {
                    self.wants.remove(&c.watch_id);
                    self.send(pb::WatchResponse {
                        header: self.header(self.watchers.latest()),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                self.flush_progress_request().await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> std::result::Result<(), Closed> {
        let latest = self.watchers.latest();
        // etcd: an empty key means "\0", the smallest key.
        let key = if c.key.is_empty() {
            bytes::Bytes::from_static(&[0])
        } else {
            c.key.clone()
        };
        let has = |f: pb::watch_create_request::FilterType| c.filters.contains(&(f as i32));
        let spec = WatchSpec {
            range: KeyRange::from_etcd(&key, &c.range_end),
            start_revision: c.start_revision,
            prev_kv: c.prev_kv,
            no_put: has(pb::watch_create_request::FilterType::Noput),
            no_delete: has(pb::watch_create_request::FilterType::Nodelete),
        };
        let header = self.header(latest);
        let created = |id: i64| pb::WatchResponse {
            header,
            watch_id: id,
            created: true,
            ..Default::default()
        };
        let refuse = |id: i64, reason: &str| pb::WatchResponse {
            canceled: true,
            cancel_reason: reason.to_string(),
            ..created(id)
        };
        // etcd: a negative start revision is refused as compacted, before
        // anything else is looked at.
        if c.start_revision < 0 {
            return self.send(refuse(-1, crate::error::text::COMPACTED)).await;
        }
        // etcd's isWatchPermitted: READ over the range, checked once at
        // creation; the refusal says why as grpc-go prints a status.
        let denied = match self.shared.caller(&self.metadata).await {
            Ok(None) => None,
            Ok(Some(caller)) => caller
                .check(false, &key, &c.range_end)
                .err()
                .map(Status::from),
            Err(status) => Some(status),
        };
        if let Some(st) = denied {
            let reason = format!("rpc error: code = {:?} desc = {}", st.code(), st.message());
            return self.send(refuse(-1, &reason)).await;
        }
        match self.watchers.watch(c.watch_id, spec).await {
            Ok(id) => {
                self.wants.insert(
                    id,
                    Wants {
                        progress_notify: c.progress_notify,
                        fragment: c.fragment,
                    },
                );
                self.send(created(id)).await
            }
            Err(Refused::EmptyRange) => self.send(refuse(-1, EMPTY_RANGE)).await,
            // etcd answers a duplicate id on watch id -1.
            Err(Refused::DuplicateId) => self.send(refuse(-1, DUPLICATE_ID)).await,
            // etcd: created, then canceled with the compact revision.
            Err(Refused::Compacted { id, compact }) => {
                self.send(created(id)).await?;
                self.send(pb::WatchResponse {
                    header,
                    watch_id: id,
                    canceled: true,
                    compact_revision: compact,
                    ..Default::default()
                })
                .await
            }
        }
    }

    /// Sends what the engine has for the watchers until every one is
    /// synced, then answers a pending progress request.
    async fn deliver(&mut self) -> std::result::Result<(), Closed> {
        loop {
            match self.watchers.next().await {
                Ok(None) => break,
                Ok(Some(Delivery::Events {
                    id,
                    events,
                    revision,
                })) => self.emit(id, events, revision).await?,
                Ok(Some(Delivery::Compacted { id, compact })) => {
                    self.wants.remove(&id);
                    self.send(pb::WatchResponse {
                        header: self.header(self.watchers.latest()),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compact,
                        ..Default::default()
                    })
                    .await?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch catch-up failed");
                    let _ = self.out.send(Err(Status::from(e))).await;
                    return Err(Closed);
                }
            }
        }
        self.flush_progress_request().await
    }

    /// Sends watcher `id` its events, in fragments under the request size
    /// limit if it asked for them (all but the last say `fragment`; every
    /// event goes whole).
    async fn emit(
        &mut self,
        id: i64,
        events: Vec<crate::types::Event>,
        revision: Revision,
    ) -> std::result::Result<(), Closed> {
        let fragment = self.wants.get(&id).is_some_and(|w| w.fragment);
        let events: Vec<mvccpb::Event> = events
            .into_iter()
            .map(|ev| mvccpb::Event {
                r#type: match ev.kind {
                    EventKind::Put => mvccpb::event::EventType::Put as i32,
                    EventKind::Delete => mvccpb::event::EventType::Delete as i32,
                },
                kv: Some(convert::kv(ev.kv)),
                prev_kv: ev.prev_kv.map(convert::kv),
            })
            .collect();
        let resp = pb::WatchResponse {
            header: self.header(revision),
            watch_id: id,
            events,
            ..Default::default()
        };
        let limit = self.shared.limits.max_request_bytes;
        if !fragment || resp.encoded_len() <= limit {
            return self.send(resp).await;
        }
        let header = resp.header;
        let mut chunks: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
        let mut size = 0;
        for ev in resp.events {
            let len = ev.encoded_len() + 8;
            if size + len > limit && chunks.last().is_some_and(|c| !c.is_empty()) {
                chunks.push(Vec::new());
                size = 0;
            }
            size += len;
            if let Some(c) = chunks.last_mut() {
                c.push(ev);
            }
        }
        let n = chunks.len();
        for (i, events) in chunks.into_iter().enumerate() {
            self.send(pb::WatchResponse {
                header,
                watch_id: id,
                events,
                fragment: i + 1 < n,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Periodic progress: watchers that asked for it and are up to date
    /// learn the current revision.
    async fn notify_progress(&mut self) -> std::result::Result<(), Closed> {
        let latest = self.watchers.latest();
        let ids: Vec<i64> = self
            .watchers
            .ids()
            .filter(|id| {
                self.wants.get(id).is_some_and(|w| w.progress_notify) && self.watchers.synced(*id)
            })
            .collect();
        for id in ids {
            self.send(pb::WatchResponse {
                header: self.header(latest),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Answers a WatchProgressRequest once every watcher is synced, with
    /// watch id -1 as etcd 3.5 does.
    async fn flush_progress_request(&mut self) -> std::result::Result<(), Closed> {
        if !self.progress_pending || !self.watchers.all_synced() {
            return Ok(());
        }
        self.progress_pending = false;
        self.send(pb::WatchResponse {
            header: self.header(self.watchers.latest()),
            watch_id: -1,
            ..Default::default()
        })
        .await
    }
}
