//! Maintenance relayed to etcd: Status, Alarm, Defragment, Hash, HashKV,
//! MoveLeader, Downgrade and the Snapshot stream, answers unchanged.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::relay::ClientStream;
use super::upstream::{Retry, Upstream};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;

pub struct MaintenanceProxy {
    pub up: Arc<Upstream>,
}

relay_impl! {
    Maintenance, MaintenanceProxy, MaintenanceClient;
    {
        async fn alarm(
            &self,
            req: Request<pb::AlarmRequest>,
        ) -> Result<Response<pb::AlarmResponse>, Status> {
            let retry = if req.get_ref().action == pb::alarm_request::AlarmAction::Get as i32 {
                Retry::Always
            } else {
                Retry::IfUnsent
            };
            self.up
                .unary(req, retry, |ch, r| async move { unlimited!(MaintenanceClient, ch).alarm(r).await })
                .await
        }

        type SnapshotStream = ClientStream<pb::SnapshotResponse>;

        /// Streamed from one endpoint (see `Upstream::server_stream`).
        async fn snapshot(
            &self,
            req: Request<pb::SnapshotRequest>,
        ) -> Result<Response<Self::SnapshotStream>, Status> {
            self.up
                .server_stream(req, |ch, r| async move { unlimited!(MaintenanceClient, ch).snapshot(r).await })
                .await
        }
    }
    status(pb::StatusRequest) -> pb::StatusResponse, Retry::Always;
    defragment(pb::DefragmentRequest) -> pb::DefragmentResponse, Retry::Always;
    hash(pb::HashRequest) -> pb::HashResponse, Retry::Always;
    hash_kv(pb::HashKvRequest) -> pb::HashKvResponse, Retry::Always;
    move_leader(pb::MoveLeaderRequest) -> pb::MoveLeaderResponse, Retry::IfUnsent;
    downgrade(pb::DowngradeRequest) -> pb::DowngradeResponse, Retry::IfUnsent;
}
