//! Malformed and oversize requests, sent raw (the etcd-client crate would
//! refuse to build some of them), against Koine and real etcd: each gets
//! etcd's code and text, and none changes anything.

use bytes::Bytes;
use koine::proto::etcdserverpb::{self as pb, request_op};
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::Server;
use crate::on_every_target;

struct Raw {
    kv: pb::kv_client::KvClient<Channel>,
    lease: pb::lease_client::LeaseClient<Channel>,
}

async fn raw(s: &Server) -> Raw {
    let ch = Channel::from_shared(s.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Raw {
        kv: pb::kv_client::KvClient::new(ch.clone())
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20),
        lease: pb::lease_client::LeaseClient::new(ch),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn revision(r: &mut Raw) -> i64 {
    r.kv.range(pb::RangeRequest {
        key: b("x"),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

fn expect<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, code: Code, msg: &str) {
    match r {
        Ok(resp) => panic!("expected {code:?} {msg:?}, got {resp:?}"),
        Err(s) => assert_eq!((s.code(), s.message()), (code, msg), "{s:?}"),
    }
}

async fn malformed_requests_change_nothing(s: Server) {
    let mut r = raw(&s).await;
    r.kv.put(pb::PutRequest {
        key: b("x"),
        value: b("1"),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = revision(&mut r).await;

    // Oversize: over the request limit, and over the transport limit.
    let big = Bytes::from(vec![b'v'; 1_600_000]);
    expect(
        r.kv.put(pb::PutRequest {
            key: b("big"),
            value: big.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let huge_key = Bytes::from(vec![b'k'; 1_600_000]);
    expect(
        r.kv.put(pb::PutRequest {
            key: huge_key,
            value: b("v"),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let ops: Vec<pb::RequestOp> = (0..4)
        .map(|i| pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: b(&format!("t{i}")),
                value: Bytes::from(vec![b'v'; 500_000]),
                ..Default::default()
            })),
        })
        .collect();
    expect(
        r.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: ops,
            failure: vec![],
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let over = pb::PutRequest {
        key: b("big"),
        value: Bytes::from(vec![b'v'; 3 << 20]),
        ..Default::default()
    };
    let len = prost::Message::encoded_len(&over);
    expect(
        r.kv.put(over).await,
        Code::ResourceExhausted,
        &format!("grpc: received message larger than max ({len} vs. 2097152)"),
    );

    // Empty keys everywhere.
    expect(
        r.kv.put(pb::PutRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    expect(
        r.kv.range(pb::RangeRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    expect(
        r.kv.delete_range(pb::DeleteRangeRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    // Unknown lease, future revision, compacted revision.
    expect(
        r.kv.put(pb::PutRequest {
            key: b("x"),
            lease: 0x7777,
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    expect(
        r.kv.range(pb::RangeRequest {
            key: b("x"),
            revision: before + 1,
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    expect(
        r.lease
            .lease_revoke(pb::LeaseRevokeRequest { id: 0x7777 })
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    expect(
        r.lease
            .lease_grant(pb::LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    // A Txn op with nothing in it.
    expect(
        r.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: vec![
                pb::RequestOp {
                    request: Some(request_op::Request::RequestPut(pb::PutRequest {
                        key: b("y"),
                        ..Default::default()
                    })),
                },
                pb::RequestOp { request: None },
            ],
            failure: vec![],
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    // Harmless oddities answer normally: range_end below key, negative limit.
    let rr =
        r.kv.range(pb::RangeRequest {
            key: b("x"),
            range_end: b("a"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rr.kvs.len(), rr.count), (0, 0));
    let rr =
        r.kv.range(pb::RangeRequest {
            key: b("a"),
            range_end: b("z"),
            limit: -5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rr.kvs.len(), rr.more), (1, false));
    let dr =
        r.kv.delete_range(pb::DeleteRangeRequest {
            key: b("x"),
            range_end: b("a"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dr.deleted, 0);

    assert_eq!(
        revision(&mut r).await,
        before,
        "rejected requests changed nothing"
    );
    let rr =
        r.kv.range(pb::RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rr.count, 1, "only x exists");
}

async fn invalid_watch_requests(s: Server) {
    use futures::StreamExt;
    let ch = Channel::from_shared(s.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut w = pb::watch_client::WatchClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let create = |key: &str| pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b(key),
                ..Default::default()
            },
        )),
    };
    tx.send(create("w")).await.unwrap();
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("watch response in time")
            .unwrap()
            .unwrap()
    };
    let r = next().await;
    assert!(r.created && !r.canceled && r.watch_id == 0, "{r:?}");
    // Cancelling an unknown watch id is ignored; the stream stays usable.
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CancelRequest(
            pb::WatchCancelRequest { watch_id: 42 },
        )),
    })
    .await
    .unwrap();
    tx.send(create("v")).await.unwrap();
    let r = next().await;
    assert!(r.created && !r.canceled && r.watch_id == 1, "{r:?}");
}

on_every_target!(malformed_requests_change_nothing, invalid_watch_requests);
