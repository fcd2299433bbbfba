//! Cluster service: one member, this server, whose client URL is the
//! address clients dialled, so clients that re-sync endpoints keep using it.

use tonic::{Request, Response, Status};

use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::server::SharedRef;

pub struct ClusterService {
    pub shared: SharedRef,
}

impl ClusterService {
    fn member(&self) -> pb::Member {
        let id = &self.shared.identity;
        pb::Member {
            id: id.member_id,
            name: id.name.clone(),
            // No raft peers: the one URL this member is reached at is its
            // peer URL too (clients that check members want one, as kine
            // answers).
            peer_ur_ls: vec![id.client_url.clone()],
            client_ur_ls: vec![id.client_url.clone()],
            is_learner: false,
        }
    }
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "koine: {what} is not supported: koine has no peers"
    ))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(unsupported("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(unsupported("MemberRemove"))
    }

    async fn member_update(
        &self,
        _req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(unsupported("MemberUpdate"))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        // etcd 3.5+: MemberList needs a user.
        self.shared.caller(req.metadata()).await?;
        let meta = self.shared.store.meta().await?;
        Ok(Response::new(pb::MemberListResponse {
            header: self.shared.header(meta.revision),
            members: vec![self.member()],
        }))
    }

    async fn member_promote(
        &self,
        _req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(unsupported("MemberPromote"))
    }
}
