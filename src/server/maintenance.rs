//! Maintenance service: Status and Alarm (what etcdctl and Kubernetes call);
//! the rest answers `Unimplemented` with an etcd-style text.

use tonic::{Request, Response, Status};

use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::server::SharedRef;

pub struct MaintenanceService {
    pub shared: SharedRef,
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("koine: {what} is not supported"))
}

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        _req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // Koine raises no alarms: the database enforces its own space limits.
        let meta = self.shared.store.meta().await?;
        Ok(Response::new(pb::AlarmResponse {
            header: self.shared.header(meta.revision),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = &self.shared;
        let meta = s.store.meta().await?;
        let size = s.store.db_size().await?;
        Ok(Response::new(pb::StatusResponse {
            header: s.header(meta.revision),
            version: s.identity.version.clone(),
            db_size: size,
            leader: s.identity.member_id,
            raft_index: meta.revision as u64,
            raft_term: crate::server::RAFT_TERM,
            raft_applied_index: meta.revision as u64,
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // Admin-only under auth, as etcd.
        self.shared.require_admin(req.metadata()).await?;
        // The database manages its own free space; nothing to do.
        let meta = self.shared.store.meta().await?;
        Ok(Response::new(pb::DefragmentResponse {
            header: self.shared.header(meta.revision),
        }))
    }

    async fn hash(
        &self,
        req: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        // Admin-only under auth, as etcd.
        self.shared.require_admin(req.metadata()).await?;
        Err(unimplemented("Hash"))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        // Admin-only under auth, as etcd.
        self.shared.require_admin(req.metadata()).await?;
        Err(unimplemented("HashKV"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        // Admin-only under auth, as etcd.
        self.shared.require_admin(req.metadata()).await?;
        Err(unimplemented("Snapshot"))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        // Admin-only under auth, as etcd.
        self.shared.require_admin(req.metadata()).await?;
        Err(unimplemented("MoveLeader"))
    }

    async fn downgrade(
        &self,
        _req: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}
