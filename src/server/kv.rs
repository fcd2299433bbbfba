//! KV service: Range, RangeStream, Put, DeleteRange, Txn, Compact.

use std::pin::Pin;

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::mvcc::Compact;
use crate::mvcc::request::{self as t, SortOrder, SortTarget};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::server::{Internal, SharedRef, auth, convert};

pub struct KvService {
    pub shared: SharedRef,
}

type RangeChunks = Pin<Box<dyn Stream<Item = Result<pb::RangeStreamResponse, Status>> + Send>>;

/// Keys in RangeStream's first chunk; later chunks double or halve to stay
/// near the request size limit (etcd's `initialStreamChunkLimit` and
/// `adjustChunkLimit`).
const FIRST_CHUNK: i64 = 10;

#[tonic::async_trait]
impl Kv for KvService {
    type RangeStreamStream = RangeChunks;

    /// etcd 3.7's chunked Range: every chunk is read at the revision of the
    /// first (pinned when the request names none), carries a disjoint slice
    /// of the keys, and only the last carries the header, `more` and
    /// `count`. An error on the first chunk is the call's error.
    async fn range_stream(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<RangeChunks>, Status> {
        let s = self.shared.clone();
        let (md, _, pb_req) = req.into_parts();
        s.limits.check_size(&pb_req)?;
        // etcd validates before it checks permissions.
        let mut req = convert::range(&pb_req)?;
        if let Some(c) = s.caller(&md).await? {
            auth::check_range(&c, &pb_req)?;
        }
        let o = &req.options;
        // etcd's IsDefaultOrdering.
        if !(o.sort_order == SortOrder::None
            || (o.sort_target == SortTarget::Key && o.sort_order == SortOrder::Ascend))
        {
            return Err(Status::unimplemented(
                "RangeStream does not support custom sort orders",
            ));
        }
        if o.has_filters() {
            return Err(Status::unimplemented(
                "RangeStream does not support revision filters",
            ));
        }
        if req.options.count_only {
            let (result, rev) = s.store.range(&req).await?;
            let chunk = pb::RangeStreamResponse {
                range_response: Some(pb::RangeResponse {
                    header: s.header(rev),
                    count: result.count,
                    ..Default::default()
                }),
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(chunk)]))));
        }
        let total = if req.options.limit > 0 {
            req.options.limit
        } else {
            i64::MAX
        };
        req.options.limit = FIRST_CHUNK.min(total);
        let (first, header_rev) = s.store.range(&req).await?;
        if req.options.revision <= 0 {
            req.options.revision = header_rev;
        }
        let (out, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut result = first;
            let mut sent = 0i64;
            loop {
                sent += result.kvs.len() as i64;
                let next_key = match (result.more, result.kvs.last()) {
                    (true, Some(last)) => {
                        let mut k = last.key.to_vec();
                        k.push(0);
                        Some(bytes::Bytes::from(k))
                    }
                    _ => None,
                };
                let done = next_key.is_none() || sent == total;
                let mut chunk = pb::RangeResponse {
                    kvs: result.kvs.into_iter().map(convert::kv).collect(),
                    ..Default::default()
                };
                let size = chunk.encoded_len();
                if done {
                    let mut count = sent;
                    if let Some(from) = &next_key {
                        let rest = t::RangeRequest {
                            range: crate::types::KeyRange {
                                start: from.clone(),
                                end: req.range.end.clone(),
                            },
                            options: t::RangeOptions {
                                revision: req.options.revision,
                                count_only: true,
                                ..Default::default()
                            },
                        };
                        match s.store.range(&rest).await {
                            Ok((r, _)) => count += r.count,
                            Err(e) => {
                                let _ = out.send(Err(e.into())).await;
                                return;
                            }
                        }
                    }
                    chunk.header = s.header(header_rev);
                    chunk.more = result.more;
                    chunk.count = count;
                }
                let msg = pb::RangeStreamResponse {
                    range_response: Some(chunk),
                };
                if out.send(Ok(msg)).await.is_err() || done {
                    return;
                }
                let target = s.limits.max_request_bytes;
                let mut limit = req.options.limit;
                if size < target / 2 {
                    limit = limit.saturating_mul(2);
                } else if size > target.saturating_mul(2) {
                    limit /= 2;
                }
                req.options.limit = limit.max(1).min(total - sent);
                req.range.start = next_key.unwrap_or_default();
                result = match s.store.range(&req).await {
                    Ok((r, _)) => r,
                    Err(e) => {
                        let _ = out.send(Err(e.into())).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let s = &self.shared;
        let (md, ext, req) = req.into_parts();
        s.limits
            .check_size_from(&req, ext.get::<Internal>().is_some())?;
        // etcd validates before it checks permissions.
        let checked = convert::range(&req)?;
        if let Some(c) = s.caller(&md).await? {
            auth::check_range(&c, &req)?;
        }
        let req = checked;
        let (result, rev) = s.store.range(&req).await?;
        Ok(Response::new(convert::range_response(s, result, rev)))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let s = &self.shared;
        let (md, _, req) = req.into_parts();
        s.limits.check_size(&req)?;
        s.check_space(auth::put_cost(&req)).await?;
        let put = convert::put(&req)?;
        if let Some(c) = s.caller(&md).await? {
            auth::check_put(&c, &req)?;
            if req.lease != 0 {
                s.check_lease_keys(&c, req.lease).await?;
            }
        }
        let (r, rev) = s.store.write(put).await?;
        Ok(Response::new(convert::put_response(s, r, rev)))
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let s = &self.shared;
        let (md, _, req) = req.into_parts();
        s.limits.check_size(&req)?;
        s.check_space(0).await?;
        let delete = convert::delete(&req)?;
        if let Some(c) = s.caller(&md).await? {
            auth::check_delete(&c, &req)?;
        }
        let (r, rev) = s.store.write(delete).await?;
        Ok(Response::new(convert::delete_response(s, r, rev)))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let s = &self.shared;
        let (md, ext, req) = req.into_parts();
        s.limits
            .check_size_from(&req, ext.get::<Internal>().is_some())?;
        s.check_space(auth::txn_cost(&req)).await?;
        let txn = convert::txn(&req, s.limits.max_txn_ops)?;
        if let Some(c) = s.caller(&md).await? {
            auth::check_txn(&c, &req)?;
            let mut leases = Vec::new();
            auth::txn_leases(&req, &mut leases);
            for id in leases {
                s.check_lease_keys(&c, id).await?;
            }
        }
        let (r, rev) = s.store.write(txn).await?;
        Ok(Response::new(convert::txn_response(s, r, rev)))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let s = &self.shared;
        s.check_space(0).await?;
        s.require_admin(req.metadata()).await?;
        let req = req.into_inner();
        let (_, rev) = s
            .store
            .write(Compact {
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
