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

relay_impl! {
    Lease, LeaseProxy, LeaseClient;
    {
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
    }
    lease_grant(pb::LeaseGrantRequest) -> pb::LeaseGrantResponse, Retry::IfUnsent;
    lease_revoke(pb::LeaseRevokeRequest) -> pb::LeaseRevokeResponse, Retry::IfUnsent;
    lease_time_to_live(pb::LeaseTimeToLiveRequest) -> pb::LeaseTimeToLiveResponse, Retry::Always;
    lease_leases(pb::LeaseLeasesRequest) -> pb::LeaseLeasesResponse, Retry::Always;
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
        Box::pin(async move { unlimited!(LeaseClient, channel).lease_keep_alive(req).await })
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
