//! KV relayed to etcd. Reads (and Txns made only of reads) are retried on
//! the next endpoint whatever broke; writes only when they surely never
//! reached etcd.

use std::sync::Arc;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::upstream::{Retry, Upstream};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{self as pb, request_op};

pub struct KvProxy {
    pub up: Arc<Upstream>,
}

fn client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// Whether a Txn can only read, whichever branch runs.
fn read_only(t: &pb::TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(inner)) => read_only(inner),
            Some(_) => false,
        })
}

#[tonic::async_trait]
impl Kv for KvProxy {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        self.up
            .unary(req, Retry::Always, |ch, r| async move {
                client(ch).range(r).await
            })
            .await
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.up
            .unary(req, Retry::IfUnsent, |ch, r| async move {
                client(ch).put(r).await
            })
            .await
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        self.up
            .unary(req, Retry::IfUnsent, |ch, r| async move {
                client(ch).delete_range(r).await
            })
            .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let retry = if read_only(req.get_ref()) {
            Retry::Always
        } else {
            Retry::IfUnsent
        };
        self.up
            .unary(req, retry, |ch, r| async move { client(ch).txn(r).await })
            .await
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        self.up
            .unary(req, Retry::IfUnsent, |ch, r| async move {
                client(ch).compact(r).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(r: request_op::Request) -> pb::RequestOp {
        pb::RequestOp { request: Some(r) }
    }

    #[test]
    fn read_only_txns() {
        let get = op(request_op::Request::RequestRange(Default::default()));
        let put = op(request_op::Request::RequestPut(Default::default()));
        let reads = pb::TxnRequest {
            success: vec![get.clone()],
            failure: vec![op(request_op::Request::RequestTxn(pb::TxnRequest {
                success: vec![get.clone()],
                ..Default::default()
            }))],
            ..Default::default()
        };
        assert!(read_only(&reads));
        let nested_write = pb::TxnRequest {
            failure: vec![op(request_op::Request::RequestTxn(pb::TxnRequest {
                success: vec![put],
                ..Default::default()
            }))],
            ..Default::default()
        };
        assert!(!read_only(&nested_write));
    }
}
