//! KV relayed to etcd. Reads (and Txns made only of reads) are retried on
//! the next endpoint whatever broke; writes only when they surely never
//! reached etcd.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::relay::ClientStream;
use super::upstream::{Retry, Upstream};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{self as pb, request_op};

pub struct KvProxy {
    pub up: Arc<Upstream>,
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

relay_impl! {
    Kv, KvProxy, KvClient;
    {
        async fn txn(
            &self,
            req: Request<pb::TxnRequest>,
        ) -> Result<Response<pb::TxnResponse>, Status> {
            let retry = if read_only(req.get_ref()) {
                Retry::Always
            } else {
                Retry::IfUnsent
            };
            self.up
                .unary(req, retry, |ch, r| async move { unlimited!(KvClient, ch).txn(r).await })
                .await
        }

        type RangeStreamStream = ClientStream<pb::RangeStreamResponse>;

        /// Streamed from one endpoint (see `Upstream::server_stream`).
        async fn range_stream(
            &self,
            req: Request<pb::RangeRequest>,
        ) -> Result<Response<Self::RangeStreamStream>, Status> {
            self.up
                .server_stream(req, |ch, r| async move { unlimited!(KvClient, ch).range_stream(r).await })
                .await
        }
    }
    range(pb::RangeRequest) -> pb::RangeResponse, Retry::Always;
    put(pb::PutRequest) -> pb::PutResponse, Retry::IfUnsent;
    delete_range(pb::DeleteRangeRequest) -> pb::DeleteRangeResponse, Retry::IfUnsent;
    compact(pb::CompactionRequest) -> pb::CompactionResponse, Retry::IfUnsent;
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
