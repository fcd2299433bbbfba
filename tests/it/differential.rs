//! Differential test: one scripted sequence of raw requests — edge cases
//! included — against a real etcd and against Koine; every response (or
//! error code and text) must match, ignoring only cluster/member ids and
//! raft terms.

use bytes::Bytes;
use koine::proto::etcdserverpb::{self as pb, compare, request_op};
use tonic::transport::Channel;

use crate::harness::{Etcd, Koine};

enum Call {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Grant(pb::LeaseGrantRequest),
    Revoke(pb::LeaseRevokeRequest),
    TimeToLive(pb::LeaseTimeToLiveRequest),
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    }
}

fn get(k: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}

fn op_put(p: pb::PutRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(p)),
    }
}

fn op_get(r: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

fn op_del(k: &str, end: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: b(k),
                range_end: b(end),
                prev_kv: true,
            },
        )),
    }
}

fn op_txn(t: pb::TxnRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestTxn(t)),
    }
}

fn cmp(
    k: &str,
    target: compare::CompareTarget,
    result: compare::CompareResult,
    u: compare::TargetUnion,
) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: b(k),
        target_union: Some(u),
        range_end: Bytes::new(),
    }
}

fn script() -> Vec<(&'static str, Call)> {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let mut s: Vec<(&'static str, Call)> = vec![
        ("get empty store", Call::Range(get("a", ""))),
        ("put a", Call::Put(put("a", "1"))),
        (
            "put a prev_kv",
            Call::Put(pb::PutRequest {
                prev_kv: true,
                ..put("a", "2")
            }),
        ),
        ("put b", Call::Put(put("b", "1"))),
        ("put c", Call::Put(put("c", "1"))),
        ("put d/x", Call::Put(put("d/x", "1"))),
        ("range all", Call::Range(get("\0", "\0"))),
        ("range from b", Call::Range(get("b", "\0"))),
        ("range end below key", Call::Range(get("c", "a"))),
        (
            "range limit",
            Call::Range(pb::RangeRequest {
                limit: 2,
                ..get("a", "z")
            }),
        ),
        (
            "range negative limit",
            Call::Range(pb::RangeRequest {
                limit: -3,
                ..get("a", "z")
            }),
        ),
        (
            "range count only",
            Call::Range(pb::RangeRequest {
                count_only: true,
                limit: 1,
                ..get("a", "z")
            }),
        ),
        (
            "range keys only",
            Call::Range(pb::RangeRequest {
                keys_only: true,
                ..get("a", "z")
            }),
        ),
        (
            "range sort create desc limit",
            Call::Range(pb::RangeRequest {
                sort_order: 2,
                sort_target: 2,
                limit: 2,
                ..get("a", "z")
            }),
        ),
        (
            "range sort version",
            Call::Range(pb::RangeRequest {
                sort_target: 1,
                ..get("a", "z")
            }),
        ),
        (
            "range min mod",
            Call::Range(pb::RangeRequest {
                min_mod_revision: 4,
                limit: 1,
                ..get("a", "z")
            }),
        ),
        (
            "range at rev 2",
            Call::Range(pb::RangeRequest {
                revision: 2,
                ..get("a", "z")
            }),
        ),
        (
            "range at future rev",
            Call::Range(pb::RangeRequest {
                revision: 1000,
                ..get("a", "")
            }),
        ),
        ("range empty key", Call::Range(get("", ""))),
        ("put empty key", Call::Put(put("", "x"))),
        (
            "put ignore_value missing",
            Call::Put(pb::PutRequest {
                ignore_value: true,
                ..put("nope", "")
            }),
        ),
        (
            "put ignore_lease existing",
            Call::Put(pb::PutRequest {
                ignore_lease: true,
                prev_kv: true,
                ..put("a", "3")
            }),
        ),
        (
            "put unknown lease",
            Call::Put(pb::PutRequest {
                lease: 77,
                ..put("a", "3")
            }),
        ),
        (
            "delete missing",
            Call::Delete(pb::DeleteRangeRequest {
                key: b("zz"),
                ..Default::default()
            }),
        ),
        (
            "delete from c",
            Call::Delete(pb::DeleteRangeRequest {
                key: b("c"),
                range_end: b("\0"),
                prev_kv: true,
            }),
        ),
        ("recreate c", Call::Put(put("c", "again"))),
        (
            "txn create-if-absent",
            Call::Txn(pb::TxnRequest {
                compare: vec![cmp("n", T::Mod, R::Equal, U::ModRevision(0))],
                success: vec![op_put(put("n", "1"))],
                failure: vec![op_get(get("n", ""))],
            }),
        ),
        (
            "txn create-if-absent again",
            Call::Txn(pb::TxnRequest {
                compare: vec![cmp("n", T::Mod, R::Equal, U::ModRevision(0))],
                success: vec![op_put(put("n", "1"))],
                failure: vec![op_get(get("n", ""))],
            }),
        ),
        (
            "txn mixed ops with inner ranges",
            Call::Txn(pb::TxnRequest {
                compare: vec![cmp("a", T::Value, R::Equal, U::Value(b("3")))],
                success: vec![
                    op_get(get("a", "")),
                    op_put(pb::PutRequest {
                        prev_kv: true,
                        ..put("a", "4")
                    }),
                    op_get(get("a", "")),
                    op_get(pb::RangeRequest {
                        revision: 3,
                        ..get("a", "")
                    }),
                    op_del("b", ""),
                ],
                failure: vec![],
            }),
        ),
        (
            "txn nested",
            Call::Txn(pb::TxnRequest {
                compare: vec![cmp("a", T::Version, R::Greater, U::Version(1))],
                success: vec![
                    op_put(put("x", "1")),
                    op_txn(pb::TxnRequest {
                        compare: vec![cmp("x", T::Create, R::Equal, U::CreateRevision(0))],
                        success: vec![op_put(put("y", "then")), op_get(get("x", ""))],
                        failure: vec![op_put(put("y", "else"))],
                    }),
                ],
                failure: vec![],
            }),
        ),
        (
            "txn read-only",
            Call::Txn(pb::TxnRequest {
                compare: vec![],
                success: vec![op_get(get("\0", "\0"))],
                failure: vec![],
            }),
        ),
        (
            "txn range compare",
            Call::Txn(pb::TxnRequest {
                compare: vec![pb::Compare {
                    range_end: b("z"),
                    ..cmp("a", T::Mod, R::Greater, U::ModRevision(0))
                }],
                success: vec![op_get(pb::RangeRequest {
                    count_only: true,
                    ..get("a", "z")
                })],
                failure: vec![],
            }),
        ),
        (
            "txn mismatched union",
            Call::Txn(pb::TxnRequest {
                compare: vec![cmp("a", T::Version, R::Equal, U::Value(b("x")))],
                success: vec![],
                failure: vec![op_get(get("a", ""))],
            }),
        ),
        (
            "txn duplicate put",
            Call::Txn(pb::TxnRequest {
                compare: vec![],
                success: vec![op_put(put("q", "1")), op_put(put("q", "2"))],
                failure: vec![],
            }),
        ),
        (
            "txn put in deleted range",
            Call::Txn(pb::TxnRequest {
                compare: vec![],
                success: vec![op_del("p", "r"), op_put(put("q", "2"))],
                failure: vec![],
            }),
        ),
        (
            "txn same key both branches of nested",
            Call::Txn(pb::TxnRequest {
                compare: vec![],
                success: vec![op_txn(pb::TxnRequest {
                    compare: vec![],
                    success: vec![op_put(put("q", "1"))],
                    failure: vec![op_put(put("q", "2"))],
                })],
                failure: vec![],
            }),
        ),
        (
            "txn empty op",
            Call::Txn(pb::TxnRequest {
                compare: vec![],
                success: vec![pb::RequestOp { request: None }],
                failure: vec![],
            }),
        ),
        (
            "txn compare empty key",
            Call::Txn(pb::TxnRequest {
                compare: vec![cmp("", T::Version, R::Equal, U::Version(0))],
                success: vec![],
                failure: vec![],
            }),
        ),
        ("txn empty", Call::Txn(pb::TxnRequest::default())),
        (
            "grant lease",
            Call::Grant(pb::LeaseGrantRequest { ttl: 100, id: 1000 }),
        ),
        (
            "grant duplicate lease",
            Call::Grant(pb::LeaseGrantRequest { ttl: 100, id: 1000 }),
        ),
        (
            "grant short lease",
            Call::Grant(pb::LeaseGrantRequest { ttl: 1, id: 1001 }),
        ),
        (
            "grant huge lease",
            Call::Grant(pb::LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 1002,
            }),
        ),
        (
            "put with lease",
            Call::Put(pb::PutRequest {
                lease: 1000,
                ..put("l/1", "v")
            }),
        ),
        (
            "put with lease 2",
            Call::Put(pb::PutRequest {
                lease: 1000,
                ..put("l/2", "v")
            }),
        ),
        (
            "ttl unknown",
            Call::TimeToLive(pb::LeaseTimeToLiveRequest { id: 5, keys: true }),
        ),
        (
            "ttl with keys",
            Call::TimeToLive(pb::LeaseTimeToLiveRequest {
                id: 1000,
                keys: true,
            }),
        ),
        ("revoke", Call::Revoke(pb::LeaseRevokeRequest { id: 1000 })),
        (
            "revoke unknown",
            Call::Revoke(pb::LeaseRevokeRequest { id: 1000 }),
        ),
        ("lease keys gone", Call::Range(get("l/", "l0"))),
        (
            "compact",
            Call::Compact(pb::CompactionRequest {
                revision: 5,
                physical: true,
            }),
        ),
        (
            "compact again",
            Call::Compact(pb::CompactionRequest {
                revision: 5,
                physical: false,
            }),
        ),
        (
            "compact older",
            Call::Compact(pb::CompactionRequest {
                revision: 3,
                physical: false,
            }),
        ),
        (
            "compact future",
            Call::Compact(pb::CompactionRequest {
                revision: 10_000,
                physical: false,
            }),
        ),
        (
            "range compacted",
            Call::Range(pb::RangeRequest {
                revision: 4,
                ..get("a", "z")
            }),
        ),
        (
            "range at compact rev",
            Call::Range(pb::RangeRequest {
                revision: 5,
                ..get("a", "z")
            }),
        ),
        (
            "range after compact",
            Call::Range(pb::RangeRequest {
                revision: 7,
                ..get("\0", "\0")
            }),
        ),
        (
            "txn range compacted",
            Call::Txn(pb::TxnRequest {
                compare: vec![],
                success: vec![
                    op_put(put("t", "1")),
                    op_get(pb::RangeRequest {
                        revision: 2,
                        ..get("a", "")
                    }),
                ],
                failure: vec![],
            }),
        ),
        ("final state", Call::Range(get("\0", "\0"))),
    ];
    let ops: Vec<pb::RequestOp> = (0..129)
        .map(|i| op_get(get(&format!("k{i}"), "")))
        .collect();
    s.push((
        "txn too many ops",
        Call::Txn(pb::TxnRequest {
            compare: vec![],
            success: ops,
            failure: vec![],
        }),
    ));
    s
}

/// Blanks what legitimately differs between two servers.
fn norm_header(h: &mut Option<pb::ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

/// Only the outer header carries ids; inner response headers are compared
/// as they are.
fn norm_txn(t: &mut pb::TxnResponse) {
    norm_header(&mut t.header);
}

pub(crate) async fn play(endpoint: &str) -> Vec<String> {
    let channel = Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = pb::kv_client::KvClient::new(channel.clone());
    let mut lease = pb::lease_client::LeaseClient::new(channel);
    let mut out = Vec::new();
    for (name, call) in script() {
        let r: Result<String, tonic::Status> = match call {
            Call::Range(r) => kv.range(r).await.map(|r| {
                let mut r = r.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }),
            Call::Put(r) => kv.put(r).await.map(|r| {
                let mut r = r.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }),
            Call::Delete(r) => kv.delete_range(r).await.map(|r| {
                let mut r = r.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }),
            Call::Txn(r) => kv.txn(r).await.map(|r| {
                let mut r = r.into_inner();
                norm_txn(&mut r);
                format!("{r:?}")
            }),
            Call::Compact(r) => kv.compact(r).await.map(|r| {
                let mut r = r.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }),
            Call::Grant(r) => lease.lease_grant(r).await.map(|r| {
                let mut r = r.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }),
            Call::Revoke(r) => lease.lease_revoke(r).await.map(|r| {
                let mut r = r.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }),
            Call::TimeToLive(r) => lease.lease_time_to_live(r).await.map(|r| {
                let mut r = r.into_inner();
                norm_header(&mut r.header);
                // Remaining seconds depend on timing; the granted TTL does not.
                r.ttl = r.ttl.signum();
                // etcd lists a lease's keys in Go map order, which varies.
                r.keys.sort();
                format!("{r:?}")
            }),
        };
        out.push(match r {
            Ok(s) => format!("{name}: {s}"),
            Err(st) => format!("{name}: ERROR {:?} {:?}", st.code(), st.message()),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn koine_answers_like_etcd() {
    let etcd = Etcd::start().await;
    let koine = Koine::start(&[]).await;
    let want = play(&etcd.endpoint).await;
    let got = play(&koine.endpoint).await;
    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("etcd:  {w}\nkoine: {g}"))
        .collect();
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n\n")
    );
}
