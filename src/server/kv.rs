//! KV service: Range, Put, DeleteRange, Txn, Compact.

use tonic::{Request, Response, Status};

use crate::mvcc::types::{WriteRequest, WriteResult};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::server::{SharedRef, convert};

pub struct KvService {
    pub shared: SharedRef,
}

fn unexpected(r: WriteResult) -> Status {
    Status::internal(format!("koine: unexpected write result {r:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let s = &self.shared;
        let req = req.into_inner();
        s.limits.check_size(&req)?;
        let req = convert::range(req)?;
        let (result, rev) = s.store.range(&req).await?;
        Ok(Response::new(convert::range_response(s, result, rev)))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let s = &self.shared;
        let req = req.into_inner();
        s.limits.check_size(&req)?;
        let req = convert::put(req)?;
        match s.store.write(WriteRequest::Put(req)).await? {
            (WriteResult::Put(r), rev) => Ok(Response::new(convert::put_response(s, r, rev))),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let s = &self.shared;
        let req = req.into_inner();
        s.limits.check_size(&req)?;
        let req = convert::delete(req)?;
        match s.store.write(WriteRequest::Delete(req)).await? {
            (WriteResult::Delete(r), rev) => Ok(Response::new(convert::delete_response(s, r, rev))),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let s = &self.shared;
        let req = req.into_inner();
        s.limits.check_size(&req)?;
        let req = convert::txn(req, s.limits.max_txn_ops)?;
        match s.store.write(WriteRequest::Txn(req)).await? {
            (WriteResult::Txn(r), rev) => Ok(Response::new(convert::txn_response(s, r, rev))),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let s = &self.shared;
        let req = req.into_inner();
        let (_, rev) = s
            .store
            .write(WriteRequest::Compact {
                revision: req.revision,
            })
            .await?;
        if req.physical {
            s.store.compact_physically().await?;
        } else {
            // Reads below the compact revision fail from now on; the rows
            // themselves go in the background.
            let store = s.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.compact_physically().await {
                    tracing::warn!(error = %e, "physical compaction failed");
                }
            });
        }
        Ok(Response::new(pb::CompactionResponse {
            header: s.header(rev),
        }))
    }
}
