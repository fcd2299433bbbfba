//! etcd's server-side Lock and Election services. As in etcd, they are
//! recipes over the KV API (etcd's `concurrency` package): a lock or a
//! candidacy is a key `<name>/<lease in hex>` attached to the caller's
//! lease, and its owner is the key with the lowest create revision under
//! `<name>/`. Every step goes through this server's own KV service with the
//! caller's request headers, so auth, quotas and errors are those of the
//! equivalent KV calls; waiting for the keys ahead to go uses the engine's
//! watch, so a released lock passes on at once, not at a poll.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::mvcc::{Delivery, WatchSpec};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{self as pb, compare, range_request, request_op};
use crate::proto::mvccpb;
use crate::proto::v3electionpb::{self as ep, election_server::Election};
use crate::proto::v3lockpb::{self as lp, lock_server::Lock};
use crate::server::SharedRef;
use crate::server::kv::KvService;
use crate::types::{EventKind, KeyRange};

/// TTL of the lease etcd's session takes when a request names none.
const SESSION_TTL: i64 = 60;

/// etcd's `concurrency` errors, which its servers return as plain errors
/// (gRPC code Unknown).
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const SESSION_EXPIRED: &str = "session expired";
const MISSING_LEADER: &str = "\"leader\" field must be provided";

/// etcd's lock and election servers run their recipes through a client and
/// return its errors as plain errors: the caller sees code Unknown with
/// etcd's text.
fn as_client_error(s: Status) -> Status {
    Status::unknown(s.message())
}

/// The KV calls the recipes make, as the caller.
struct Recipe {
    shared: SharedRef,
    md: MetadataMap,
}

fn prefix_end(p: &[u8]) -> Bytes {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(&[0])
}

fn op(r: request_op::Request) -> pb::RequestOp {
    pb::RequestOp { request: Some(r) }
}

fn put(key: &Bytes, value: Bytes, lease: i64) -> pb::RequestOp {
    op(request_op::Request::RequestPut(pb::PutRequest {
        key: key.clone(),
        value,
        lease,
        ..Default::default()
    }))
}

fn get(key: &Bytes) -> pb::RequestOp {
    op(request_op::Request::RequestRange(pb::RangeRequest {
        key: key.clone(),
        ..Default::default()
    }))
}

/// The first key under `pfx` by create revision (etcd's WithFirstCreate).
fn first_created(pfx: &Bytes) -> pb::RangeRequest {
    pb::RangeRequest {
        key: pfx.clone(),
        range_end: prefix_end(pfx),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

fn create_revision_is(key: &Bytes, rev: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn range_of(r: &pb::ResponseOp) -> Vec<mvccpb::KeyValue> {
    match &r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => r.kvs.clone(),
        _ => Vec::new(),
    }
}

impl Recipe {
    fn kv(&self) -> KvService {
        KvService {
            shared: self.shared.clone(),
        }
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        *r.metadata_mut() = self.md.clone();
        r.extensions_mut().insert(crate::server::Internal);
        r
    }

    async fn txn(&self, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        let r = self.kv().txn(self.req(t)).await.map_err(as_client_error)?;
        Ok(r.into_inner())
    }

    async fn range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let r = self
            .kv()
            .range(self.req(r))
            .await
            .map_err(as_client_error)?;
        Ok(r.into_inner())
    }

    async fn lease_or_session(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        // Granted as the caller (etcd's session through its own client):
        // without a user, no lease.
        let svc = super::lease::LeaseService {
            shared: self.shared.clone(),
        };
        let granted = svc
            .lease_grant(self.req(pb::LeaseGrantRequest {
                ttl: SESSION_TTL,
                id: 0,
            }))
            .await
            .map_err(as_client_error)?;
        Ok(granted.into_inner().id)
    }

    /// Waits until no key under `pfx` has a create revision at or below
    /// `max` (etcd's waitDeletes).
    async fn wait_deletes(&self, pfx: &Bytes, max: i64) -> Result<(), Status> {
        loop {
            let r = self
                .range(pb::RangeRequest {
                    key: pfx.clone(),
                    range_end: prefix_end(pfx),
                    limit: 1,
                    sort_order: range_request::SortOrder::Descend as i32,
                    sort_target: range_request::SortTarget::Create as i32,
                    max_create_revision: max,
                    ..Default::default()
                })
                .await?;
            let Some(last) = r.kvs.first() else {
                return Ok(());
            };
            let rev = r.header.map(|h| h.revision).unwrap_or(0);
            self.wait_change(one_key(&last.key), rev, true).await?;
        }
    }

    /// Waits for the next change in `range` after revision `rev` (only a
    /// deletion if `deletes_only`) and returns its kind and key-value.
    async fn wait_change(
        &self,
        range: KeyRange,
        rev: i64,
        deletes_only: bool,
    ) -> Result<(EventKind, crate::types::KeyValue), Status> {
        let mut ws = self.shared.store.watch_stream();
        let mut latest = ws.subscribe();
        let spec = WatchSpec {
            range,
            start_revision: rev + 1,
            prev_kv: false,
            no_put: deletes_only,
            no_delete: false,
        };
        if let Err(refused) = ws.watch(0, spec).await {
            return match refused {
                // Compacted past `rev`: the caller looks again.
                crate::mvcc::Refused::Compacted { .. } => {
                    Ok((EventKind::Delete, crate::types::KeyValue::default()))
                }
                other => Err(Status::internal(format!("koine: watch refused: {other:?}"))),
            };
        }
        let shutdown = self.shared.shutdown.clone();
        loop {
            while let Some(d) = ws.next().await? {
                match d {
                    Delivery::Events { events, .. } => {
                        if let Some(e) = events.into_iter().next() {
                            return Ok((e.kind, e.kv));
                        }
                    }
                    Delivery::Compacted { .. } => {
                        return Ok((EventKind::Delete, crate::types::KeyValue::default()));
                    }
                }
            }
            tokio::select! {
                changed = latest.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable(crate::error::text::STOPPED));
                    }
                }
                _ = shutdown.cancelled() => {
                    return Err(Status::unavailable(crate::error::text::STOPPED));
                }
            }
        }
    }
}

pub struct LockService {
    pub shared: SharedRef,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        req: Request<lp::LockRequest>,
    ) -> Result<Response<lp::LockResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let rc = Recipe {
            shared: self.shared.clone(),
            md,
        };
        let lease = rc.lease_or_session(r.lease).await?;
        let pfx = election_prefix(&r.name);
        let key = lease_key(&pfx, lease);
        let owner = op(request_op::Request::RequestRange(first_created(&pfx)));
        let t = rc
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![put(&key, Bytes::new(), lease), owner.clone()],
                failure: vec![get(&key), owner],
            })
            .await?;
        let mut my_rev = t.header.as_ref().map(|h| h.revision).unwrap_or(0);
        if !t.succeeded {
            my_rev = range_of(&t.responses[0])
                .first()
                .map(|kv| kv.create_revision)
                .unwrap_or(my_rev);
        }
        let first = range_of(&t.responses[1]);
        let mut header = t.header;
        if !(first.is_empty() || first[0].create_revision == my_rev) {
            if let Err(e) = rc.wait_deletes(&pfx, my_rev - 1).await {
                let _ = rc.kv().delete_range(rc.req(delete(&key))).await;
                return Err(e);
            }
            let mine = rc
                .range(pb::RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await?;
            if mine.kvs.is_empty() {
                return Err(Status::unknown(SESSION_EXPIRED));
            }
            header = mine.header;
        }
        Ok(Response::new(lp::LockResponse { header, key }))
    }

    async fn unlock(
        &self,
        req: Request<lp::UnlockRequest>,
    ) -> Result<Response<lp::UnlockResponse>, Status> {
        let (md, ext, r) = req.into_parts();
        let kv = KvService {
            shared: self.shared.clone(),
        };
        let d = kv
            .delete_range(Request::from_parts(md, ext, delete(&r.key)))
            .await
            .map_err(as_client_error)?
            .into_inner();
        Ok(Response::new(lp::UnlockResponse { header: d.header }))
    }
}

fn delete(key: &Bytes) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

pub struct ElectionService {
    pub shared: SharedRef,
}

type Observed = Pin<Box<dyn Stream<Item = Result<ep::LeaderResponse, Status>> + Send>>;

impl ElectionService {
    fn recipe(&self, md: MetadataMap) -> Recipe {
        Recipe {
            shared: self.shared.clone(),
            md,
        }
    }
}

/// The key a lease holds under a prefix: `<prefix><lease in hex>`.
fn lease_key(pfx: &Bytes, lease: i64) -> Bytes {
    let mut k = pfx.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k.into()
}

/// `<name>/`, under which a lock's or an election's keys live.
fn election_prefix(name: &Bytes) -> Bytes {
    let mut p = name.to_vec();
    p.push(b'/');
    p.into()
}

/// Proclaims `value` as leader `l` (etcd's Election.Proclaim).
async fn proclaim(rc: &Recipe, l: &ep::LeaderKey, value: Bytes) -> Result<pb::TxnResponse, Status> {
    let t = rc
        .txn(pb::TxnRequest {
            compare: vec![create_revision_is(&l.key, l.rev)],
            success: vec![put(&l.key, value, l.lease)],
            failure: vec![],
        })
        .await?;
    if !t.succeeded {
        return Err(Status::unknown(NOT_LEADER));
    }
    Ok(t)
}

async fn resign(rc: &Recipe, l: &ep::LeaderKey) -> Result<pb::TxnResponse, Status> {
    rc.txn(pb::TxnRequest {
        compare: vec![create_revision_is(&l.key, l.rev)],
        success: vec![op(request_op::Request::RequestDeleteRange(delete(&l.key)))],
        failure: vec![],
    })
    .await
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<ep::CampaignRequest>,
    ) -> Result<Response<ep::CampaignResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let rc = self.recipe(md);
        let lease = rc.lease_or_session(r.lease).await?;
        let pfx = election_prefix(&r.name);
        let key = lease_key(&pfx, lease);
        let t = rc
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![put(&key, r.value.clone(), lease)],
                failure: vec![get(&key)],
            })
            .await?;
        let mut leader = ep::LeaderKey {
            name: r.name.clone(),
            key: key.clone(),
            rev: t.header.as_ref().map(|h| h.revision).unwrap_or(0),
            lease,
        };
        if !t.succeeded {
            let kv = range_of(&t.responses[0]).into_iter().next();
            if let Some(kv) = kv {
                leader.rev = kv.create_revision;
                if kv.value != r.value
                    && let Err(e) = proclaim(&rc, &leader, r.value.clone()).await
                {
                    let _ = resign(&rc, &leader).await;
                    return Err(e);
                }
            }
        }
        if let Err(e) = rc.wait_deletes(&pfx, leader.rev - 1).await {
            let _ = resign(&rc, &leader).await;
            return Err(e);
        }
        Ok(Response::new(ep::CampaignResponse {
            header: t.header,
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ep::ProclaimRequest>,
    ) -> Result<Response<ep::ProclaimResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let l = r.leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let t = proclaim(&self.recipe(md), &l, r.value).await?;
        Ok(Response::new(ep::ProclaimResponse { header: t.header }))
    }

    async fn leader(
        &self,
        req: Request<ep::LeaderRequest>,
    ) -> Result<Response<ep::LeaderResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let got = self
            .recipe(md)
            .range(first_created(&election_prefix(&r.name)))
            .await?;
        let kv = got
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Response::new(ep::LeaderResponse {
            header: got.header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = Observed;

    /// The leader now, then each new value or new leader, until the client
    /// goes (etcd's Election.Observe).
    async fn observe(&self, req: Request<ep::LeaderRequest>) -> Result<Response<Observed>, Status> {
        let (md, _, r) = req.into_parts();
        let rc = self.recipe(md);
        let pfx = election_prefix(&r.name);
        let (out, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let send = |resp: Result<ep::LeaderResponse, Status>| {
                let out = out.clone();
                async move { out.send(resp).await.is_ok() }
            };
            loop {
                let got = match rc.range(first_created(&pfx)).await {
                    Ok(g) => g,
                    Err(e) => {
                        send(Err(e)).await;
                        return;
                    }
                };
                let rev = got.header.as_ref().map(|h| h.revision).unwrap_or(0);
                let Some(mut kv) = got.kvs.into_iter().next() else {
                    // No leader yet: wait for a key under the prefix.
                    tokio::select! {
                        w = rc.wait_change(KeyRange::from_etcd(&pfx, &prefix_end(&pfx)), rev, false) => if let Err(e) = w {
                            send(Err(e)).await;
                            return;
                        },
                        _ = out.closed() => return,
                    }
                    continue;
                };
                if !send(Ok(ep::LeaderResponse {
                    header: got.header,
                    kv: Some(kv.clone()),
                }))
                .await
                {
                    return;
                }
                // Follow this leader's key until it goes.
                loop {
                    let change = tokio::select! {
                        c = rc.wait_change(one_key(&kv.key), kv.mod_revision, false) => c,
                        _ = out.closed() => return,
                    };
                    match change {
                        Ok((EventKind::Put, new)) => {
                            kv = super::convert::kv(new);
                            let header = rc.shared.header(kv.mod_revision);
                            if !send(Ok(ep::LeaderResponse {
                                header,
                                kv: Some(kv.clone()),
                            }))
                            .await
                            {
                                return;
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<ep::ResignRequest>,
    ) -> Result<Response<ep::ResignResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let l = r.leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let t = resign(&self.recipe(md), &l).await?;
        Ok(Response::new(ep::ResignResponse { header: t.header }))
    }
}

fn one_key(key: &Bytes) -> KeyRange {
    KeyRange::from_etcd(key, &Bytes::new())
}
