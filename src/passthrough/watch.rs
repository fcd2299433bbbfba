//! Watch relayed to etcd. Messages go through unchanged; alongside, each
//! watch's create request and the last revision delivered to the client are
//! tracked, so that when the upstream stream breaks every watch is created
//! again on the next endpoint with `start_revision` = last + 1 under the
//! same watch id: the client sees no gap, no duplicate and no new
//! `created` response. A resumed watch whose start revision has been
//! compacted meanwhile is ended by etcd (`canceled`, `compact_revision`
//! set), which the client sees as with etcd and answers by watching again.
//!
//! Watch ids: before the first failover the client's create requests go
//! through untouched and etcd picks ids. Afterwards a fresh etcd stream
//! would number from 0 again, so Koine picks ids the way etcd does (the
//! lowest free id from a counter that only grows) and asks for them
//! explicitly; the client sees the ids etcd would have given it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::relay::{self, ClientStream, Opening, Relay, Upstreams};
use super::upstream::Upstream;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{self as pb, watch_request::RequestUnion};

pub struct WatchProxy {
    pub up: Arc<Upstream>,
    pub shutdown: CancellationToken,
}

#[tonic::async_trait]
impl Watch for WatchProxy {
    type WatchStream = ClientStream<pb::WatchResponse>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (meta, _, inbound) = req.into_parts();
        Ok(Response::new(relay::start(
            Watches::default(),
            self.up.clone(),
            &meta,
            inbound,
            self.shutdown.clone(),
        )))
    }
}

/// A watch etcd has created.
struct Watched {
    /// The create request, as sent to etcd.
    req: pb::WatchCreateRequest,
    /// Every event up to this revision has been given to the client.
    last: i64,
    /// A fragmented response is partly delivered: resuming would repeat
    /// its first part, so such a watch is ended instead.
    mid_fragment: bool,
}

/// A create request etcd has not answered yet.
enum Pending {
    Client {
        req: pb::WatchCreateRequest,
        /// The id it gets, when known before etcd answers.
        id: Option<i64>,
        /// The client left the id to the server.
        auto: bool,
        /// The client cancelled it before it was created.
        cancelled: bool,
    },
    /// A watch being re-created after a failover; etcd's `created`
    /// answer is not shown to the client.
    Resume { id: i64 },
}

#[derive(Default)]
struct Watches {
    active: BTreeMap<i64, Watched>,
    /// Ids etcd ended by itself (compaction) that the client has not
    /// cancelled: etcd keeps them taken. The flag tells whether the current
    /// upstream stream still knows them.
    ended: BTreeMap<i64, bool>,
    pending: VecDeque<Pending>,
    /// Cancels sent, not yet answered.
    cancelling: BTreeMap<i64, ()>,
    /// Progress requests sent, not yet answered.
    progress: usize,
    /// etcd's next automatic id.
    next_auto: i64,
    /// A failover has happened: Koine picks automatic ids itself.
    resumed: bool,
    last_header: Option<pb::ResponseHeader>,
}

fn create(c: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(c)),
    }
}

impl Watches {
    fn in_use(&self, id: i64) -> bool {
        self.active.contains_key(&id)
            || self.ended.contains_key(&id)
            || self
                .pending
                .iter()
                .any(|p| matches!(p, Pending::Client { id: Some(x), .. } if *x == id))
    }

    /// The id etcd would give the next watch created without one.
    fn alloc(&mut self) -> i64 {
        let mut id = self.next_auto;
        while self.in_use(id) {
            id += 1;
        }
        self.next_auto = id + 1;
        id
    }

    fn canceled(&self, id: i64, reason: String) -> pb::WatchResponse {
        pb::WatchResponse {
            header: self.last_header,
            watch_id: id,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        }
    }
}

impl Relay for Watches {
    type Req = pb::WatchRequest;
    type Resp = pb::WatchResponse;

    fn open(
        channel: Channel,
        req: Request<Upstreams<pb::WatchRequest>>,
    ) -> Opening<pb::WatchResponse> {
        Box::pin(async move { unlimited!(WatchClient, channel).watch(req).await })
    }

    fn on_client(
        &mut self,
        req: pb::WatchRequest,
        to_etcd: &mut Vec<pb::WatchRequest>,
        to_client: &mut Vec<pb::WatchResponse>,
    ) {
        match req.request_union {
            Some(RequestUnion::CreateRequest(mut c)) => {
                let auto = c.watch_id == 0;
                let id = if !auto {
                    Some(c.watch_id)
                } else if self.resumed {
                    // 0 still means "automatic": etcd gives 0 on a
                    // stream that never had an automatic id.
                    let id = self.alloc();
                    c.watch_id = id;
                    Some(id)
                } else {
                    None
                };
                self.pending.push_back(Pending::Client {
                    req: c.clone(),
                    id,
                    auto,
                    cancelled: false,
                });
                to_etcd.push(create(c));
            }
            Some(RequestUnion::CancelRequest(c)) => {
                let id = c.watch_id;
                if self.active.remove(&id).is_some() {
                    self.cancelling.insert(id, ());
                } else if let Some(known) = self.ended.remove(&id) {
                    if !known {
                        // Ended on a stream that is gone: answer here.
                        to_client.push(self.canceled(id, String::new()));
                        return;
                    }
                    self.cancelling.insert(id, ());
                } else if let Some(Pending::Client { cancelled, .. }) =
                    self.pending.iter_mut().find(
                        |p| matches!(p, Pending::Client { id: Some(x), cancelled: false, .. } if *x == id),
                    )
                {
                    *cancelled = true;
                    self.cancelling.insert(id, ());
                }
                to_etcd.push(pb::WatchRequest {
                    request_union: Some(RequestUnion::CancelRequest(c)),
                });
            }
            Some(RequestUnion::ProgressRequest(p)) => {
                self.progress += 1;
                to_etcd.push(pb::WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(p)),
                });
            }
            None => to_etcd.push(req),
        }
    }

    fn on_etcd(&mut self, r: pb::WatchResponse, to_client: &mut Vec<pb::WatchResponse>) {
        if r.header.is_some() {
            self.last_header = r.header;
        }
        if r.created {
            match self.pending.pop_front() {
                Some(Pending::Client {
                    req,
                    auto,
                    cancelled,
                    ..
                }) => {
                    if !r.canceled && r.watch_id >= 0 {
                        if auto && !self.resumed {
                            self.next_auto = r.watch_id + 1;
                        }
                        if !cancelled {
                            let last = if req.start_revision > 0 {
                                req.start_revision - 1
                            } else {
                                r.header.as_ref().map_or(0, |h| h.revision)
                            };
                            self.active.insert(
                                r.watch_id,
                                Watched {
                                    req,
                                    last,
                                    mid_fragment: false,
                                },
                            );
                        }
                    }
                    to_client.push(r);
                }
                Some(Pending::Resume { id }) => {
                    if r.watch_id != id && !r.canceled {
                        tracing::error!(
                            want = id,
                            got = r.watch_id,
                            "etcd gave a resumed watch another id"
                        );
                    }
                    if r.canceled {
                        // etcd refused to re-create it: end it for the client.
                        self.active.remove(&id);
                        to_client.push(pb::WatchResponse {
                            watch_id: id,
                            created: false,
                            ..r
                        });
                    }
                    // Otherwise the client already had its `created`.
                }
                None => to_client.push(r),
            }
            return;
        }
        if r.canceled {
            let id = r.watch_id;
            if self.cancelling.remove(&id).is_none() && self.active.remove(&id).is_some() {
                // Ended by etcd (compaction): etcd keeps the id taken.
                self.ended.insert(id, true);
            }
            to_client.push(r);
            return;
        }
        if r.watch_id == -1 && r.events.is_empty() {
            // The answer to a WatchProgressRequest.
            self.progress = self.progress.saturating_sub(1);
            to_client.push(r);
            return;
        }
        if let Some(w) = self.active.get_mut(&r.watch_id)
            && let Some(rev) = r
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision))
                .max()
        {
            if r.fragment {
                w.mid_fragment = true;
            } else {
                w.last = w.last.max(rev);
                w.mid_fragment = false;
            }
        }
        to_client.push(r);
    }

    fn resume(
        &mut self,
        reason: &Status,
        to_etcd: &mut Vec<pb::WatchRequest>,
        to_client: &mut Vec<pb::WatchResponse>,
    ) {
        self.resumed = true;
        // The new stream knows none of the old stream's ids.
        for known in self.ended.values_mut() {
            *known = false;
        }
        let cut: Vec<i64> = self
            .active
            .iter()
            .filter(|(_, w)| w.mid_fragment)
            .map(|(id, _)| *id)
            .collect();
        for id in cut {
            self.active.remove(&id);
            to_client.push(self.canceled(id, reason.message().to_string()));
        }
        let old = std::mem::take(&mut self.pending);
        // Cancels in flight: the watch went with the old stream.
        let cancelled_creates: Vec<i64> = old
            .iter()
            .filter_map(|p| match p {
                Pending::Client {
                    id: Some(id),
                    cancelled: true,
                    ..
                } => Some(*id),
                _ => None,
            })
            .collect();
        for id in std::mem::take(&mut self.cancelling).into_keys() {
            if cancelled_creates.contains(&id) {
                // Created and cancelled again below, answered by etcd.
                self.cancelling.insert(id, ());
            } else {
                to_client.push(self.canceled(id, String::new()));
            }
        }
        // Every live watch, from the revision after the last delivered;
        // ascending ids, so that watch 0 (asked for as "automatic") is
        // the new stream's first automatic id, i.e. 0 again.
        for (id, w) in &self.active {
            let mut c = w.req.clone();
            c.watch_id = *id;
            c.start_revision = w.last + 1;
            to_etcd.push(create(c));
            self.pending.push_back(Pending::Resume { id: *id });
        }
        // Creates etcd never answered: sent again, after the live ones.
        for p in old {
            let Pending::Client {
                mut req,
                mut id,
                auto,
                cancelled,
            } = p
            else {
                continue;
            };
            if id.is_none() {
                let picked = self.alloc();
                req.watch_id = picked;
                id = Some(picked);
            }
            to_etcd.push(create(req.clone()));
            let cancel_id = id;
            self.pending.push_back(Pending::Client {
                req,
                id,
                auto,
                cancelled,
            });
            if let (true, Some(id)) = (cancelled, cancel_id) {
                to_etcd.push(pb::WatchRequest {
                    request_union: Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
                        watch_id: id,
                    })),
                });
            }
        }
        for _ in 0..self.progress {
            to_etcd.push(pb::WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb;

    fn header(rev: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            revision: rev,
            ..Default::default()
        })
    }

    fn put_event(rev: i64) -> mvccpb::Event {
        mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: "k".into(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn creates(reqs: &[pb::WatchRequest]) -> Vec<(i64, i64)> {
        reqs.iter()
            .filter_map(|r| match &r.request_union {
                Some(RequestUnion::CreateRequest(c)) => Some((c.watch_id, c.start_revision)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn resume_from_last_delivered_revision_with_the_same_ids() {
        let mut w = Watches::default();
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            w.on_client(
                create(pb::WatchCreateRequest {
                    key: "k".into(),
                    ..Default::default()
                }),
                &mut up,
                &mut down,
            );
        }
        for id in 0..3 {
            w.on_etcd(
                pb::WatchResponse {
                    header: header(10),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                },
                &mut down,
            );
        }
        assert_eq!(w.next_auto, 3);
        w.on_etcd(
            pb::WatchResponse {
                header: header(12),
                watch_id: 1,
                events: vec![put_event(11), put_event(12)],
                ..Default::default()
            },
            &mut down,
        );
        // Cancel watch 0; then fail over.
        w.on_client(
            pb::WatchRequest {
                request_union: Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
                    watch_id: 0,
                })),
            },
            &mut up,
            &mut down,
        );
        up.clear();
        down.clear();
        w.resume(&Status::unavailable("gone"), &mut up, &mut down);
        assert_eq!(creates(&up), vec![(1, 13), (2, 11)]);
        assert_eq!(down.len(), 1, "the unanswered cancel is answered");
        assert!(down[0].canceled && down[0].watch_id == 0);
        for id in [1, 2] {
            down.clear();
            w.on_etcd(
                pb::WatchResponse {
                    header: header(12),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                },
                &mut down,
            );
            assert!(down.is_empty(), "resumed creates are not shown");
        }
        // A new automatic watch gets etcd's next id, asked explicitly.
        up.clear();
        w.on_client(
            create(pb::WatchCreateRequest::default()),
            &mut up,
            &mut down,
        );
        assert_eq!(creates(&up), vec![(3, 0)]);
    }
}
