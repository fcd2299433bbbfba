//! Watch service. One task per stream owns its watchers; each watcher keeps
//! a cursor (the newest revision it has been given) and pulls events after
//! it from the hub's memory, or from the log in the database when the hub
//! no longer holds them. Sending waits for the client (bounded queue), so a
//! slow reader only slows its own stream and is caught up from the log;
//! nothing is dropped and memory per watcher stays bounded.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Result;
use crate::mvcc::hub::{RevisionEvents, Since};
use crate::mvcc::types::{EventKind, KeyRange, Revision};
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{self as pb, watch_request::RequestUnion};
use crate::proto::mvccpb;
use crate::server::{SharedRef, convert};

/// Revisions read from the log per catch-up step.
const CATCH_UP_REVISIONS: i64 = 256;
/// Revisions taken from the hub per step.
const HUB_BATCH: usize = 1000;
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

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchResponseStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = WatchStream {
            shared: self.shared.clone(),
            out: tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_pending: false,
        };
        tokio::spawn(stream.run(req.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    range: KeyRange,
    /// Newest revision this watcher has been given (or scanned past).
    cursor: Revision,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
}

/// The client went away; end the stream.
struct Closed;

struct WatchStream {
    shared: SharedRef,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// A WatchProgressRequest waits for every watcher to be synced.
    progress_pending: bool,
}

impl WatchStream {
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let hub = self.shared.store.hub.clone();
        let mut latest = hub.subscribe();
        let shutdown = self.shared.shutdown.clone();
        let every = self.shared.watch.progress_interval;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            if self.deliver().await.is_err() {
                return;
            }
            let step = tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => self.handle(req).await,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "watch stream ended by client");
                        return;
                    }
                    None => return,
                },
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
                if self.watchers.remove(&c.watch_id).is_some() {
                    self.shared.metrics.watchers.dec();
                    let rev = self.shared.store.hub.latest();
                    self.send(pb::WatchResponse {
                        header: self.header(rev),
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
        let latest = self.shared.store.hub.latest();
        // etcd: an empty key means "\0", the smallest key.
        let key = if c.key.is_empty() {
            bytes::Bytes::from_static(&[0])
        } else {
            c.key.clone()
        };
        let range = KeyRange::from_etcd(&key, &c.range_end);
        let refuse = |id: i64, reason: &str| pb::WatchResponse {
            header: self.header(latest),
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if range.is_empty() {
            return self.send(refuse(-1, EMPTY_RANGE)).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self.send(refuse(c.watch_id, DUPLICATE_ID)).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let cursor = if c.start_revision > 0 {
            c.start_revision - 1
        } else {
            latest
        };
        if c.start_revision > 0 {
            let compact = match self.shared.store.meta().await {
                Ok(meta) => meta.compact_revision,
                Err(e) => {
                    let _ = self.out.send(Err(Status::from(e))).await;
                    return Err(Closed);
                }
            };
            if c.start_revision < compact {
                // etcd: created, then canceled with the compact revision.
                self.send(pb::WatchResponse {
                    header: self.header(latest),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                })
                .await?;
                return self
                    .send(pb::WatchResponse {
                        header: self.header(latest),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compact,
                        ..Default::default()
                    })
                    .await;
            }
        }
        let filters = c.filters.iter().copied();
        let watcher = Watcher {
            range,
            cursor,
            prev_kv: c.prev_kv,
            no_put: filters
                .clone()
                .any(|f| f == pb::watch_create_request::FilterType::Noput as i32),
            no_delete: filters
                .clone()
                .any(|f| f == pb::watch_create_request::FilterType::Nodelete as i32),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
        };
        self.watchers.insert(id, watcher);
        self.shared.metrics.watchers.inc();
        self.send(pb::WatchResponse {
            header: self.header(latest),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    /// Brings every watcher up to the hub's newest revision.
    async fn deliver(&mut self) -> std::result::Result<(), Closed> {
        let hub = self.shared.store.hub.clone();
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            loop {
                let latest = hub.latest();
                let Some(w) = self.watchers.get(&id) else {
                    break;
                };
                if w.cursor >= latest {
                    break;
                }
                let batch = match hub.since(w.cursor, HUB_BATCH) {
                    Since::Events(v) if !v.is_empty() && v[0].revision == w.cursor + 1 => {
                        let upto = v.last().map_or(w.cursor, |r| r.revision);
                        Ok((v, upto))
                    }
                    _ => {
                        self.shared.metrics.watch_catchups.inc();
                        self.read_log(w.cursor, latest).await
                    }
                };
                match batch {
                    Ok((revisions, upto)) => self.emit(id, &revisions, upto).await?,
                    Err(CatchUp::Compacted(compact)) => {
                        self.watchers.remove(&id);
                        self.shared.metrics.watchers.dec();
                        self.send(pb::WatchResponse {
                            header: self.header(latest),
                            watch_id: id,
                            canceled: true,
                            compact_revision: compact,
                            ..Default::default()
                        })
                        .await?;
                    }
                    Err(CatchUp::Failed(e)) => {
                        tracing::warn!(error = %e, "watch catch-up failed");
                        let _ = self.out.send(Err(Status::from(e))).await;
                        return Err(Closed);
                    }
                }
            }
        }
        self.flush_progress_request().await
    }

    /// Reads revisions after `cursor` from the log.
    async fn read_log(
        &self,
        cursor: Revision,
        latest: Revision,
    ) -> std::result::Result<(Vec<Arc<RevisionEvents>>, Revision), CatchUp> {
        let upto = latest.min(cursor + CATCH_UP_REVISIONS);
        let db = &self.shared.store.db;
        let read = async {
            let mut tx = db.begin_read().await?;
            let meta = tx.read_meta().await?;
            if cursor + 1 < meta.compact_revision {
                tx.commit().await?;
                return Ok(Err(meta.compact_revision));
            }
            let changes = tx.changes(cursor, upto, i64::MAX).await?;
            tx.commit().await?;
            Result::Ok(Ok(changes))
        };
        let changes = match read.await {
            Ok(Ok(c)) => c,
            Ok(Err(compact)) => return Err(CatchUp::Compacted(compact)),
            Err(e) => return Err(CatchUp::Failed(e)),
        };
        let out = crate::mvcc::tail::events_by_revision(changes)
            .into_iter()
            .map(|(revision, events)| RevisionEvents { revision, events });
        Ok((out.map(Arc::new).collect(), upto))
    }

    /// Sends a watcher the events of `revisions` that it selects, and moves
    /// its cursor to `upto`.
    async fn emit(
        &mut self,
        id: i64,
        revisions: &[Arc<RevisionEvents>],
        upto: Revision,
    ) -> std::result::Result<(), Closed> {
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        let compact = self.shared.store.hub.compact_revision();
        let mut events = Vec::new();
        for rev in revisions {
            if rev.revision <= w.cursor {
                continue;
            }
            for ev in &rev.events {
                if !w.range.contains(&ev.kv.key)
                    || (ev.kind == EventKind::Put && w.no_put)
                    || (ev.kind == EventKind::Delete && w.no_delete)
                {
                    continue;
                }
                events.push(mvccpb::Event {
                    r#type: match ev.kind {
                        EventKind::Put => mvccpb::event::EventType::Put as i32,
                        EventKind::Delete => mvccpb::event::EventType::Delete as i32,
                    },
                    kv: Some(convert::kv(ev.kv.clone())),
                    // etcd reads prev_kv at `revision - 1`; below the
                    // compact revision that read fails and it sends none.
                    prev_kv: if w.prev_kv && rev.revision > compact {
                        ev.prev_kv.clone().map(convert::kv)
                    } else {
                        None
                    },
                });
            }
        }
        w.cursor = upto;
        let fragment = w.fragment;
        if events.is_empty() {
            return Ok(());
        }
        let resp = pb::WatchResponse {
            header: self.header(upto),
            watch_id: id,
            events,
            ..Default::default()
        };
        let limit = self.shared.limits.max_request_bytes;
        if !fragment || resp.encoded_len() <= limit {
            return self.send(resp).await;
        }
        // Split into fragments under the request limit; all but the last
        // carry `fragment = true`, and every event goes whole.
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
        let latest = self.shared.store.hub.latest();
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.cursor == latest)
            .map(|(id, _)| *id)
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
        if !self.progress_pending {
            return Ok(());
        }
        let latest = self.shared.store.hub.latest();
        if self.watchers.values().any(|w| w.cursor < latest) {
            return Ok(());
        }
        self.progress_pending = false;
        self.send(pb::WatchResponse {
            header: self.header(latest),
            watch_id: -1,
            ..Default::default()
        })
        .await
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.shared.metrics.watchers.sub(self.watchers.len() as i64);
    }
}

enum CatchUp {
    Compacted(Revision),
    Failed(crate::error::Error),
}
