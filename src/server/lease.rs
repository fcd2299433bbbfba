//! Lease service: Grant, Revoke, KeepAlive (stream), TimeToLive, Leases.
//! Lease state lives in the database, so leases and their remaining time
//! survive a restart and are shared by every instance.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::mvcc::{Grant, KeepAlive, Revoke};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::server::SharedRef;

pub struct LeaseService {
    pub shared: SharedRef,
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

/// A fresh lease id: positive, random, never 0 ("no lease").
pub(crate) fn new_lease_id() -> i64 {
    (rand::random::<u64>() >> 1).max(1) as i64
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let s = &self.shared;
        let (md, _, req) = req.into_parts();
        // etcd's lease overhead counts against the quota.
        s.check_space(64).await?;
        // etcd 3.5+: granting needs a user (any).
        s.caller(&md).await?;
        let id = if req.id == 0 { new_lease_id() } else { req.id };
        let (granted, rev) = s.store.write(Grant { id, ttl: req.ttl }).await?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: s.header(rev),
            id: granted.id,
            ttl: granted.ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let s = &self.shared;
        let (md, _, req) = req.into_parts();
        s.check_space(0).await?;
        let id = req.id;
        if let Some(c) = s.caller(&md).await? {
            // Revoking deletes the lease's keys.
            s.check_lease_keys(&c, id).await?;
        }
        let (_, rev) = s.store.write(Revoke { id }).await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: s.header(rev),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let (md, _, inbound) = req.into_parts();
        Ok(Response::new(self.keep_alive_session(md, inbound)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let s = &self.shared;
        let (md, _, req) = req.into_parts();
        // etcd 3.5+: a user is needed, and listing a lease's keys needs
        // READ on each of them.
        let caller = s.caller(&md).await?;
        let info = s.store.lease(req.id).await?;
        if req.keys
            && let Some(c) = caller
        {
            c.check_all(false, &info.keys)?;
        }
        // etcd answers a missing lease with TTL -1 rather than an error.
        let resp = match info.lease {
            Some(l) if l.remaining_ms > 0 => pb::LeaseTimeToLiveResponse {
                header: s.header(info.revision),
                id: req.id,
                ttl: l.remaining_ms / 1000,
                granted_ttl: l.ttl,
                keys: if req.keys { info.keys } else { Vec::new() },
            },
            _ => pb::LeaseTimeToLiveResponse {
                header: s.header(info.revision),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let s = &self.shared;
        let caller = s.caller(req.metadata()).await?;
        let (leases, rev) = s.store.leases().await?;
        // etcd 3.5+: a user who is not root sees the leases only if it may
        // read every key attached to any of them.
        if let Some(c) = caller
            && !c.is_admin()
        {
            for l in &leases {
                c.check_all(false, &s.store.lease(l.id).await?.keys)?;
            }
        }
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: s.header(rev),
            leases: leases
                .into_iter()
                .map(|l| pb::LeaseStatus { id: l.id })
                .collect(),
        }))
    }
}

impl LeaseService {
    /// Serves one keepalive stream (the gRPC method and the JSON gateway's
    /// `/v3/lease/keepalive`) for the caller of `md`: with auth on, each
    /// keepalive needs a user and, unless root, WRITE on every key of the
    /// lease (etcd 3.5+'s checkLeaseRenew); a refused one ends the stream
    /// with its error, as etcd ends it.
    pub fn keep_alive_session<S>(
        &self,
        md: tonic::metadata::MetadataMap,
        mut inbound: S,
    ) -> KeepAliveStream
    where
        S: futures::Stream<Item = Result<pb::LeaseKeepAliveRequest, Status>>
            + Send
            + Unpin
            + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    msg = inbound.next() => msg,
                    _ = shared.shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable(crate::error::text::STOPPED))).await;
                        break;
                    }
                };
                let Some(msg) = msg else { break };
                let reply = match msg {
                    Ok(m) => match renew(&shared, &md, m.id).await {
                        Ok((ttl, rev)) => Ok(pb::LeaseKeepAliveResponse {
                            header: shared.header(rev),
                            id: m.id,
                            ttl,
                        }),
                        Err(e) => Err(Status::from(e)),
                    },
                    // A message that cannot be decoded or is too large ends
                    // the stream with that error, as grpc-go ends it.
                    Err(status) => {
                        tracing::debug!(%status, "keepalive request unreadable");
                        let _ = tx
                            .send(Err(crate::serve::grpc_go_status(
                                status,
                                Some(shared.limits.max_recv_bytes()),
                            )))
                            .await;
                        break;
                    }
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// One keepalive of lease `id` for the caller of `md`: its new TTL.
async fn renew(
    shared: &SharedRef,
    md: &tonic::metadata::MetadataMap,
    id: i64,
) -> crate::error::Result<(i64, i64)> {
    if let Some(c) = shared.auth.caller(md).await?
        && !c.is_admin()
    {
        c.check_all(true, &shared.store.lease(id).await?.keys)
            .map_err(crate::error::Error::Auth)?;
    }
    shared.store.write(KeepAlive { id }).await
}
