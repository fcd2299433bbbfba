//! Maintenance service: Status, Alarm, Defragment, Hash, HashKV and
//! MoveLeader as one etcd member answers them (the admin-only ones checked
//! under auth); Snapshot streams an etcd backend file (`crate::snapshot`);
//! Downgrade answers `Unimplemented`.

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
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let s = &self.shared;
        // etcd 3.5+: GET needs a user, ACTIVATE and DEACTIVATE the root role.
        if req.get_ref().action == AlarmAction::Get as i32 {
            s.caller(req.metadata()).await?;
        } else {
            s.require_admin(req.metadata()).await?;
        }
        let r = req.into_inner();
        let member = |a: crate::sql::AlarmRow| pb::AlarmMember {
            member_id: a.member_id as u64,
            alarm: a.alarm as i32,
        };
        let row = crate::sql::AlarmRow {
            member_id: r.member_id as i64,
            alarm: r.alarm as i64,
        };
        let alarms = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => s.alarms.list(row.alarm).into_iter().map(member).collect(),
            // Raising NONE does nothing (etcd).
            Ok(AlarmAction::Activate) if row.alarm == crate::alarm::NONE => Vec::new(),
            Ok(action) => s
                .alarms
                .set(action == AlarmAction::Activate, row)
                .await?
                .into_iter()
                .map(member)
                .collect(),
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        Ok(Response::new(pb::AlarmResponse {
            header: s.current_header(),
            alarms,
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = &self.shared;
        // etcd 3.5+: Status needs a user.
        s.caller(req.metadata()).await?;
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
        self.shared.store.defragment().await?;
        // etcd's reply carries no header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    /// etcd hashes its whole backend file; Koine's "backend" is the key
    /// history, so Hash is HashKV at the current revision.
    async fn hash(
        &self,
        req: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        // Admin-only under auth, as etcd.
        self.shared.require_admin(req.metadata()).await?;
        let (hash, _, rev, _) = self.shared.store.hash_kv(0).await?;
        Ok(Response::new(pb::HashResponse {
            header: self.shared.header(rev),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        // Admin-only under auth, as etcd.
        self.shared.require_admin(req.metadata()).await?;
        let revision = req.into_inner().revision;
        let (hash, compact_revision, hash_revision, current) =
            self.shared.store.hash_kv(revision).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.shared.header(current),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        // Admin-only under auth, as etcd.
        self.shared.require_admin(req.metadata()).await?;
        // The file is laid out on disk first (bbolt's meta pages, at its
        // start, name the root written last), then streamed in etcd's
        // 32 KiB chunks with the SHA-256 last.
        const CHUNK: usize = 32 * 1024;
        let file = tempfile::tempfile().map_err(|e| Status::internal(e.to_string()))?;
        let (file, written) = self.shared.store.snapshot(file).await?;
        tracing::info!(
            revision = written.revision,
            rows = written.rows,
            bytes = written.len,
            "sending a snapshot"
        );
        let header = self.shared.header(written.revision);
        let mut chunks = crate::snapshot::Chunks::new(file, written.len)
            .map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            loop {
                let msg = match chunks.next_chunk(CHUNK) {
                    Ok(Some((blob, remaining_bytes))) => Ok(pb::SnapshotResponse {
                        header,
                        remaining_bytes,
                        blob: blob.into(),
                        version: crate::snapshot::SCHEMA_VERSION.into(),
                    }),
                    Ok(None) => return,
                    Err(e) => Err(Status::internal(format!("reading the snapshot: {e}"))),
                };
                let failed = msg.is_err();
                if tx.blocking_send(msg).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        // Admin-only under auth, as etcd.
        self.shared.require_admin(req.metadata()).await?;
        // One member, always the leader: moving to itself succeeds (etcd on
        // one member does the same), anything else is not a member.
        if req.into_inner().target_id != self.shared.identity.member_id {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        // etcd's reply carries no header.
        Ok(Response::new(pb::MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        _req: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}
