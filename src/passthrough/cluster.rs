//! Cluster relayed to etcd, except MemberList: one member, Koine itself,
//! so that clients which sync their endpoint list from it keep talking to
//! Koine.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::upstream::{Retry, Upstream};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::cluster_server::Cluster;

pub struct ClusterProxy {
    pub up: Arc<Upstream>,
    /// Reported as the only member's name.
    pub name: String,
    /// Koine's own client URL, reported as the only member's.
    pub client_url: String,
}

relay_impl! {
    Cluster, ClusterProxy, ClusterClient;
    {
        /// etcd's answer (so its errors and header come through), with the
        /// member list replaced by Koine, under the id of the etcd member
        /// that answered (the one in response headers).
        async fn member_list(
            &self,
            req: Request<pb::MemberListRequest>,
        ) -> Result<Response<pb::MemberListResponse>, Status> {
            let resp = self
                .up
                .unary(req, Retry::Always, |ch, r| async move {
                    unlimited!(ClusterClient, ch).member_list(r).await
                })
                .await?
                .into_inner();
            let id = resp.header.as_ref().map_or(0, |h| h.member_id);
            Ok(Response::new(pb::MemberListResponse {
                header: resp.header,
                members: vec![pb::Member {
                    id,
                    name: self.name.clone(),
                    peer_ur_ls: vec![self.client_url.clone()],
                    client_ur_ls: vec![self.client_url.clone()],
                    is_learner: false,
                }],
            }))
        }
    }
    member_add(pb::MemberAddRequest) -> pb::MemberAddResponse, Retry::IfUnsent;
    member_remove(pb::MemberRemoveRequest) -> pb::MemberRemoveResponse, Retry::IfUnsent;
    member_update(pb::MemberUpdateRequest) -> pb::MemberUpdateResponse, Retry::IfUnsent;
    member_promote(pb::MemberPromoteRequest) -> pb::MemberPromoteResponse, Retry::IfUnsent;
}
