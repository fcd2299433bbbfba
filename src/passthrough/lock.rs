//! etcd's Lock and Election services relayed to etcd: answers unchanged.
//! Lock and Campaign wait for as long as etcd makes them, so they are sent
//! once (a retry could take a second lock); Observe is streamed from one
//! endpoint.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::relay::ClientStream;
use super::upstream::{Retry, Upstream};
use crate::proto::v3electionpb as ep;
use crate::proto::v3electionpb::election_client::ElectionClient;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3lockpb as lp;
use crate::proto::v3lockpb::lock_client::LockClient;
use crate::proto::v3lockpb::lock_server::Lock;

pub struct LockProxy {
    pub up: Arc<Upstream>,
}

relay_impl! {
    Lock, LockProxy, LockClient;
    {}
    lock(lp::LockRequest) -> lp::LockResponse, Retry::IfUnsent;
    unlock(lp::UnlockRequest) -> lp::UnlockResponse, Retry::IfUnsent;
}

pub struct ElectionProxy {
    pub up: Arc<Upstream>,
}

relay_impl! {
    Election, ElectionProxy, ElectionClient;
    {
        type ObserveStream = ClientStream<ep::LeaderResponse>;

        async fn observe(
            &self,
            req: Request<ep::LeaderRequest>,
        ) -> Result<Response<Self::ObserveStream>, Status> {
            self.up
                .server_stream(req, |ch, r| async move { unlimited!(ElectionClient, ch).observe(r).await })
                .await
        }
    }
    campaign(ep::CampaignRequest) -> ep::CampaignResponse, Retry::IfUnsent;
    proclaim(ep::ProclaimRequest) -> ep::ProclaimResponse, Retry::IfUnsent;
    leader(ep::LeaderRequest) -> ep::LeaderResponse, Retry::Always;
    resign(ep::ResignRequest) -> ep::ResignResponse, Retry::IfUnsent;
}
