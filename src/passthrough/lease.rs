//! Lease relayed to etcd. Keepalive streams fail over like watches: the
//! keepalives etcd had not answered when its stream broke are sent again on
//! the next endpoint (renewing a lease twice is harmless), so a client
//! waiting for an answer gets one.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::relay::{self, ClientStream, Opening, Relay, Upstreams};
use super::upstream::{Retry, Upstream};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::lease_server::Lease;

pub struct LeaseProxy {
    pub up: Arc<Upstream>,
    pub shutdown: CancellationToken,
}

fn client(channel: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

#[tonic::async_trait]
impl Lease for LeaseProxy {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.up
            .unary(req, Retry::IfUnsent, |ch, r| async move {
                client(ch).lease_grant(r).await
            })
            .await
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        self.up
            .unary(req, Retry::IfUnsent, |ch, r| async move {
                client(ch).lease_revoke(r).await
            })
            .await
    }

    type LeaseKeepAliveStream = ClientStream<pb::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (meta, _, inbound) = req.into_parts();
        Ok(Response::new(relay::start(
            KeepAlives::default(),
            self.up.clone(),
            &meta,
            inbound,
            self.shutdown.clone(),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.up
            .unary(req, Retry::Always, |ch, r| async move {
                client(ch).lease_time_to_live(r).await
            })
            .await
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.up
            .unary(req, Retry::Always, |ch, r| async move {
                client(ch).lease_leases(r).await
            })
            .await
    }
}

/// Keepalives sent to etcd and not answered yet, oldest first (etcd
/// answers them in order).
#[derive(Default)]
struct KeepAlives {
    unanswered: VecDeque<i64>,
}

impl Relay for KeepAlives {
    type Req = pb::LeaseKeepAliveRequest;
    type Resp = pb::LeaseKeepAliveResponse;

    fn open(
        channel: Channel,
        req: Request<Upstreams<pb::LeaseKeepAliveRequest>>,
    ) -> Opening<pb::LeaseKeepAliveResponse> {
        Box::pin(async move { client(channel).lease_keep_alive(req).await })
    }

    fn on_client(
        &mut self,
        req: pb::LeaseKeepAliveRequest,
        to_etcd: &mut Vec<pb::LeaseKeepAliveRequest>,
        _to_client: &mut Vec<pb::LeaseKeepAliveResponse>,
    ) {
        self.unanswered.push_back(req.id);
        to_etcd.push(req);
    }

    fn on_etcd(
        &mut self,
        resp: pb::LeaseKeepAliveResponse,
        to_client: &mut Vec<pb::LeaseKeepAliveResponse>,
    ) {
        if let Some(pos) = self.unanswered.iter().position(|id| *id == resp.id) {
            self.unanswered.remove(pos);
        }
        to_client.push(resp);
    }

    fn resume(
        &mut self,
        _reason: &Status,
        to_etcd: &mut Vec<pb::LeaseKeepAliveRequest>,
        _to_client: &mut Vec<pb::LeaseKeepAliveResponse>,
    ) {
        to_etcd.extend(
            self.unanswered
                .iter()
                .map(|id| pb::LeaseKeepAliveRequest { id: *id }),
        );
    }
}
