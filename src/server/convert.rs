//! Protobuf <-> engine types, with etcd's request validation
//! (`checkRangeRequest`, `checkPutRequest`, `checkTxnRequest`, …).

use crate::error::Error;
use crate::mvcc::check_intervals;
use crate::mvcc::request as t;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use crate::server::Shared;
use crate::types::{KeyRange, KeyValue};

pub fn range(r: &pb::RangeRequest) -> Result<t::RangeRequest, Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    let sort_order = match pb::range_request::SortOrder::try_from(r.sort_order) {
        Ok(pb::range_request::SortOrder::None) => t::SortOrder::None,
        Ok(pb::range_request::SortOrder::Ascend) => t::SortOrder::Ascend,
        Ok(pb::range_request::SortOrder::Descend) => t::SortOrder::Descend,
        Err(_) => return Err(Error::InvalidSortOption),
    };
    let sort_target = match pb::range_request::SortTarget::try_from(r.sort_target) {
        Ok(pb::range_request::SortTarget::Key) => t::SortTarget::Key,
        Ok(pb::range_request::SortTarget::Version) => t::SortTarget::Version,
        Ok(pb::range_request::SortTarget::Create) => t::SortTarget::Create,
        Ok(pb::range_request::SortTarget::Mod) => t::SortTarget::Mod,
        Ok(pb::range_request::SortTarget::Value) => t::SortTarget::Value,
        Err(_) => return Err(Error::InvalidSortOption),
    };
    Ok(t::RangeRequest {
        range: KeyRange::from_etcd(&r.key, &r.range_end),
        options: t::RangeOptions {
            limit: r.limit,
            revision: r.revision,
            sort_order,
            sort_target,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
            serializable: r.serializable,
        },
    })
}

pub fn put(r: &pb::PutRequest) -> Result<t::PutRequest, Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    // Copied out of the request: decoded `bytes` fields share the buffer
    // the message arrived in, and the writer's cache and the watch hub keep
    // them long after, pinning that whole buffer.
    Ok(t::PutRequest {
        key: bytes::Bytes::copy_from_slice(&r.key),
        value: bytes::Bytes::copy_from_slice(&r.value),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

pub fn delete(r: &pb::DeleteRangeRequest) -> Result<t::DeleteRequest, Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(t::DeleteRequest {
        range: KeyRange::from_etcd(&r.key, &r.range_end),
        prev_kv: r.prev_kv,
    })
}

/// Converts and validates a Txn, nested ones included, then rejects keys
/// written twice on one path.
pub fn txn(r: &pb::TxnRequest, max_ops: usize) -> Result<t::TxnRequest, Error> {
    let txn = txn_inner(r, max_ops)?;
    check_intervals(&txn.success)?;
    check_intervals(&txn.failure)?;
    Ok(txn)
}

fn txn_inner(r: &pb::TxnRequest, max_ops: usize) -> Result<t::TxnRequest, Error> {
    if r.compare.len().max(r.success.len()).max(r.failure.len()) > max_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    let ops = |ops: &[pb::RequestOp]| -> Result<Vec<t::Op>, Error> {
        ops.iter().map(|op| request_op(op, max_ops)).collect()
    };
    let success = ops(&r.success)?;
    let failure = ops(&r.failure)?;
    Ok(t::TxnRequest {
        compare: r.compare.iter().map(compare).collect(),
        success,
        failure,
    })
}

fn request_op(op: &pb::RequestOp, max_ops: usize) -> Result<t::Op, Error> {
    use pb::request_op::Request;
    match &op.request {
        Some(Request::RequestRange(r)) => Ok(t::Op::Range(range(r)?)),
        Some(Request::RequestPut(r)) => Ok(t::Op::Put(put(r)?)),
        Some(Request::RequestDeleteRange(r)) => Ok(t::Op::Delete(delete(r)?)),
        Some(Request::RequestTxn(r)) => Ok(t::Op::Txn(txn_inner(r, max_ops)?)),
        None => Err(Error::KeyNotFound),
    }
}

fn compare(c: &pb::Compare) -> t::Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let int = |u: &Option<U>| match u {
        Some(U::Version(v) | U::CreateRevision(v) | U::ModRevision(v) | U::Lease(v)) => *v,
        _ => 0,
    };
    // etcd reads the union member that matches the target; a mismatched
    // member counts as the zero value.
    let target = match T::try_from(c.target).unwrap_or(T::Version) {
        T::Version => t::CompareTarget::Version(match c.target_union {
            Some(U::Version(_)) => int(&c.target_union),
            _ => 0,
        }),
        T::Create => t::CompareTarget::Create(match c.target_union {
            Some(U::CreateRevision(_)) => int(&c.target_union),
            _ => 0,
        }),
        T::Mod => t::CompareTarget::Mod(match c.target_union {
            Some(U::ModRevision(_)) => int(&c.target_union),
            _ => 0,
        }),
        T::Lease => t::CompareTarget::Lease(match c.target_union {
            Some(U::Lease(_)) => int(&c.target_union),
            _ => 0,
        }),
        T::Value => t::CompareTarget::Value(match &c.target_union {
            Some(U::Value(v)) => v.clone(),
            _ => bytes::Bytes::new(),
        }),
    };
    let result = match R::try_from(c.result) {
        Ok(R::Equal) => t::CompareResult::Equal,
        Ok(R::Greater) => t::CompareResult::Greater,
        Ok(R::Less) => t::CompareResult::Less,
        Ok(R::NotEqual) => t::CompareResult::NotEqual,
        Err(_) => t::CompareResult::Unknown,
    };
    t::Compare {
        result,
        target,
        key: c.key.clone(),
        range_end: c.range_end.clone(),
    }
}

pub fn kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_response(s: &Shared, r: t::RangeResult, revision: i64) -> pb::RangeResponse {
    pb::RangeResponse {
        header: s.header(revision),
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_response(s: &Shared, r: t::PutResult, revision: i64) -> pb::PutResponse {
    pb::PutResponse {
        header: s.header(revision),
        prev_kv: r.prev_kv.map(kv),
    }
}

pub fn delete_response(s: &Shared, r: t::DeleteResult, revision: i64) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: s.header(revision),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
    }
}

pub fn txn_response(s: &Shared, r: t::TxnResult, revision: i64) -> pb::TxnResponse {
    pb::TxnResponse {
        header: s.header(revision),
        succeeded: r.succeeded,
        responses: inner_responses(s, r.responses, r.revisions),
    }
}

/// Responses inside a Txn carry a header with only the revision set (and a
/// nested Txn an empty one), as etcd's do.
fn inner_responses(s: &Shared, ops: Vec<t::OpResult>, revisions: Vec<i64>) -> Vec<pb::ResponseOp> {
    use pb::response_op::Response;
    ops.into_iter()
        .zip(revisions)
        .map(|(op, revision)| {
            let header = Some(pb::ResponseHeader {
                revision,
                ..Default::default()
            });
            pb::ResponseOp {
                response: Some(match op {
                    t::OpResult::Range(r) => Response::ResponseRange(pb::RangeResponse {
                        header,
                        ..range_response(s, r, revision)
                    }),
                    t::OpResult::Put(r) => Response::ResponsePut(pb::PutResponse {
                        header,
                        ..put_response(s, r, revision)
                    }),
                    t::OpResult::Delete(r) => {
                        Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                            header,
                            ..delete_response(s, r, revision)
                        })
                    }
                    t::OpResult::Txn(r) => Response::ResponseTxn(pb::TxnResponse {
                        header: Some(pb::ResponseHeader::default()),
                        succeeded: r.succeeded,
                        responses: inner_responses(s, r.responses, r.revisions),
                    }),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// A Put's key and value must not share the buffer the request arrived
    /// in: the writer's cache and the watch hub keep them, and a 1 KiB
    /// value would keep its whole (often far larger) receive buffer alive.
    #[test]
    fn put_keys_and_values_do_not_pin_the_request_buffer() {
        let req = pb::PutRequest {
            key: "k".into(),
            value: vec![b'v'; 1024].into(),
            ..Default::default()
        };
        let mut buf = vec![0u8; 64 << 10];
        let wire = req.encode_to_vec();
        buf[..wire.len()].copy_from_slice(&wire);
        let received = bytes::Bytes::from(buf);
        let decoded = pb::PutRequest::decode(received.slice(..wire.len())).unwrap();
        let within = |b: &bytes::Bytes| {
            let (start, end) = (
                received.as_ptr() as usize,
                received.as_ptr() as usize + received.len(),
            );
            (start..end).contains(&(b.as_ptr() as usize))
        };
        assert!(
            within(&decoded.value),
            "prost shares the buffer (the case to guard)"
        );
        let put = put(&decoded).unwrap();
        assert!(!within(&put.key) && !within(&put.value));
        assert_eq!(put.value.len(), 1024);
    }
}
