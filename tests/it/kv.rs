//! KV behaviour through the etcd-client crate, on every target (real etcd
//! included, which proves the expectations).

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use tonic::Code;

use crate::harness::Server;
use crate::on_every_target;

fn status(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn put_get_revisions(s: Server) {
    let mut c = s.client().await;
    let r = c.put("a", "1", None).await.unwrap();
    assert_eq!(
        r.header().unwrap().revision(),
        2,
        "store starts at revision 1"
    );
    c.put("a", "2", None).await.unwrap();
    c.put("b", "1", None).await.unwrap();
    let g = c.get("a", None).await.unwrap();
    assert_eq!(g.header().unwrap().revision(), 4);
    let kv = &g.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        (&b"2"[..], 2, 3, 2)
    );
    // Re-creating a deleted key resets version and create_revision.
    let d = c.delete("a", None).await.unwrap();
    assert_eq!((d.deleted(), d.header().unwrap().revision()), (1, 5));
    let d = c.delete("a", None).await.unwrap();
    assert_eq!(
        (d.deleted(), d.header().unwrap().revision()),
        (0, 5),
        "no-op delete keeps the revision"
    );
    c.put("a", "3", None).await.unwrap();
    let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (6, 6, 1)
    );
    // prev_kv on put.
    let r = c
        .put("a", "4", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(r.prev_key().unwrap().value(), b"3");
    let missing = c.get("zzz", None).await.unwrap();
    assert!(missing.kvs().is_empty());
    assert_eq!(missing.count(), 0);
}

async fn range_options(s: Server) {
    let mut c = s.client().await;
    for (i, k) in ["p/a", "p/b", "p/c", "p/d", "q"].iter().enumerate() {
        c.put(*k, format!("v{}", 5 - i), None).await.unwrap();
    }
    // revisions: p/a=2 p/b=3 p/c=4 p/d=5 q=6
    c.put("p/b", "again", None).await.unwrap(); // rev 7
    let r = c
        .get("p/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.count(), 4);
    assert!(!r.more());
    let r = c
        .get("p/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.more(), r.count()), (2, true, 4));
    assert_eq!(r.kvs()[1].key(), b"p/b");
    let r = c
        .get("p/", Some(GetOptions::new().with_prefix().with_limit(4)))
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.more()), (4, false));
    let r = c
        .get("p/b", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(r.count(), 4, "from key: p/b p/c p/d q");
    let r = c
        .get("p/b", Some(GetOptions::new().with_range("p/d")))
        .await
        .unwrap();
    assert_eq!(
        r.kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(),
        vec![&b"p/b"[..], b"p/c"]
    );
    let r = c
        .get("\0", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(r.count(), 5);
    let r = c
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.count()), (0, 4));
    let r = c
        .get("p/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    // Sort by mod revision, descending, then limit: newest first.
    let r = c
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Descend)
                    .with_limit(2),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        r.kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(),
        vec![&b"p/b"[..], b"p/d"]
    );
    assert_eq!((r.more(), r.count()), (true, 4));
    let r = c
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Ascend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"again");
    let r = c
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].key(), b"p/d");
    // Filters prune after counting.
    let r = c
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_min_mod_revision(4)
                    .with_max_mod_revision(5),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        r.kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(),
        vec![&b"p/c"[..], b"p/d"]
    );
    assert_eq!(r.count(), 4);
    let r = c
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_max_create_revision(3)),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 2);
    // Historical reads.
    let r = c
        .get("p/b", Some(GetOptions::new().with_revision(6)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"v4");
    assert_eq!(
        r.header().unwrap().revision(),
        7,
        "header carries the current revision"
    );
    let r = c
        .get("p/", Some(GetOptions::new().with_prefix().with_revision(3)))
        .await
        .unwrap();
    assert_eq!(r.count(), 2);
    let r = c
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_revision(3)
                    .with_count_only(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 2);
    let r = c
        .get("p/a", Some(GetOptions::new().with_revision(1)))
        .await
        .unwrap();
    assert!(r.kvs().is_empty());
    let e = c
        .get("p/a", Some(GetOptions::new().with_revision(8)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    let r = c
        .get("p/a", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(r.count(), 1);
    // Negative limit means no limit.
    let r = c
        .get("p/", Some(GetOptions::new().with_prefix().with_limit(-1)))
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.more()), (4, false));
}

async fn delete_ranges(s: Server) {
    let mut c = s.client().await;
    for k in ["d/1", "d/2", "d/3", "e"] {
        c.put(k, k, None).await.unwrap();
    }
    let r = c
        .delete(
            "d/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted(), 3);
    assert_eq!(r.prev_kvs().len(), 3);
    assert_eq!(
        r.header().unwrap().revision(),
        6,
        "one revision for the whole delete"
    );
    let r = c
        .get("d/2", Some(GetOptions::new().with_revision(5)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"d/2");
    let r = c.get("d/2", None).await.unwrap();
    assert!(r.kvs().is_empty());
}

async fn txn_semantics(s: Server) {
    let mut c = s.client().await;
    c.put("k", "v1", None).await.unwrap(); // 2
    // Create-if-absent, as Kubernetes does.
    let t = Txn::new()
        .when([Compare::mod_revision("new", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("new", "x", None)])
        .or_else([TxnOp::get("new", None)]);
    let r = c.txn(t.clone()).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 3);
    let r = c.txn(t).await.unwrap();
    assert!(!r.succeeded());
    assert_eq!(
        r.header().unwrap().revision(),
        3,
        "a read-only branch does not bump the revision"
    );
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"x"),
        other => panic!("unexpected {other:?}"),
    }
    // Every compare target.
    let t = Txn::new()
        .when([
            Compare::value("k", CompareOp::Equal, "v1"),
            Compare::version("k", CompareOp::Equal, 1),
            Compare::create_revision("k", CompareOp::Equal, 2),
            Compare::mod_revision("k", CompareOp::Less, 3),
            Compare::lease("k", CompareOp::Equal, 0),
            Compare::value("k", CompareOp::NotEqual, "zz"),
            Compare::version("k", CompareOp::Greater, 0),
        ])
        .and_then([
            TxnOp::put("k", "v2", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("k", None),
            TxnOp::delete("new", Some(DeleteOptions::new().with_prev_key())),
        ]);
    let r = c.txn(t).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(
        r.header().unwrap().revision(),
        4,
        "all ops of a txn share one revision"
    );
    let ops = r.op_responses();
    match &ops[0] {
        TxnOpResponse::Put(p) => assert_eq!(p.prev_key().unwrap().value(), b"v1"),
        other => panic!("unexpected {other:?}"),
    }
    match &ops[1] {
        TxnOpResponse::Get(g) => {
            let kv = &g.kvs()[0];
            assert_eq!(
                (kv.value(), kv.mod_revision(), kv.version()),
                (&b"v2"[..], 4, 2),
                "later ops see earlier ones"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 1),
        other => panic!("unexpected {other:?}"),
    }
    // Value compare on a missing key is false, whatever the operator.
    let r = c
        .txn(Txn::new().when([Compare::value("missing", CompareOp::NotEqual, "x")]))
        .await
        .unwrap();
    assert!(!r.succeeded());
    // Compare over a range: every key must match.
    c.put("r/1", "same", None).await.unwrap();
    c.put("r/2", "same", None).await.unwrap();
    let r = c
        .txn(Txn::new().when([Compare::value("r/", CompareOp::Equal, "same").with_prefix()]))
        .await
        .unwrap();
    assert!(r.succeeded());
    c.put("r/3", "other", None).await.unwrap();
    let r = c
        .txn(Txn::new().when([Compare::value("r/", CompareOp::Equal, "same").with_prefix()]))
        .await
        .unwrap();
    assert!(!r.succeeded());
    // Nested txn: inner compares are evaluated before anything is applied.
    let rev = c.get("k", None).await.unwrap().header().unwrap().revision();
    let inner = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "v2")])
        .and_then([TxnOp::put("n1", "inner-then", None)])
        .or_else([TxnOp::put("n1", "inner-else", None)]);
    let outer = Txn::new()
        .when([Compare::version("k", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("k", "v3", None), TxnOp::txn(inner)]);
    let r = c.txn(outer).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), rev + 1);
    let g = c.get("n1", None).await.unwrap();
    assert_eq!(
        g.kvs()[0].value(),
        b"inner-then",
        "inner compare saw the state before the txn"
    );
}

async fn txn_rejections(s: Server) {
    let mut c = s.client().await;
    c.put("k", "v", None).await.unwrap();
    let dup = Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]);
    assert_eq!(
        status(c.txn(dup).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".into()
        )
    );
    let overlap = Txn::new().and_then([
        TxnOp::delete("a", Some(DeleteOptions::new().with_prefix())),
        TxnOp::put("ab", "1", None),
    ]);
    assert_eq!(
        status(c.txn(overlap).await.unwrap_err()).1,
        "etcdserver: duplicate key given in txn request"
    );
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    assert_eq!(
        status(c.txn(Txn::new().and_then(ops)).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request".into()
        )
    );
    let ops: Vec<TxnOp> = (0..128)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let r = c.txn(Txn::new().and_then(ops)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 3, "128 ops are allowed");
    let bad_lease = Txn::new().and_then([TxnOp::put(
        "x",
        "1",
        Some(PutOptions::new().with_lease(12345)),
    )]);
    assert_eq!(
        status(c.txn(bad_lease).await.unwrap_err()),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let future = Txn::new().and_then([TxnOp::get("k", Some(GetOptions::new().with_revision(100)))]);
    assert_eq!(
        status(c.txn(future).await.unwrap_err()).1,
        "etcdserver: mvcc: required revision is a future revision"
    );
    // Nothing of the rejected txns was applied.
    let g = c.get("x", None).await.unwrap();
    assert_eq!((g.count(), g.header().unwrap().revision()), (0, 3));
}

async fn invalid_requests(s: Server) {
    let mut c = s.client().await;
    assert_eq!(
        status(c.put("", "v", None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
    assert_eq!(
        status(c.get("", None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
    assert_eq!(
        status(c.delete("", None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
    assert_eq!(
        status(
            c.put("k", "v", Some(PutOptions::new().with_lease(999)))
                .await
                .unwrap_err()
        ),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    assert_eq!(
        status(
            c.put("k", "", Some(PutOptions::new().with_ignore_value()))
                .await
                .unwrap_err()
        ),
        (Code::InvalidArgument, "etcdserver: key not found".into())
    );
    assert_eq!(
        status(
            c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
                .await
                .unwrap_err()
        ),
        (
            Code::InvalidArgument,
            "etcdserver: value is provided".into()
        )
    );
    assert_eq!(
        status(
            c.put(
                "k",
                "v",
                Some(PutOptions::new().with_ignore_lease().with_lease(5))
            )
            .await
            .unwrap_err()
        ),
        (
            Code::InvalidArgument,
            "etcdserver: lease is provided".into()
        )
    );
    let big = vec![b'x'; 1_600_000];
    assert_eq!(
        status(c.put("big", big, None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: request is too large".into()
        )
    );
    // None of it changed anything.
    let g = c
        .get("\0", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!((g.count(), g.header().unwrap().revision()), (0, 1));
    // ignore_value / ignore_lease keep the old value / lease.
    c.put("k", "old", None).await.unwrap();
    c.put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.version()), (&b"old"[..], 2));
}

async fn compaction(s: Server) {
    let mut c = s.client().await;
    for i in 0..5 {
        c.put("c", format!("{i}"), None).await.unwrap(); // revs 2..=6
    }
    c.compact(4, None).await.unwrap();
    let e = c
        .get("c", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let r = c
        .get("c", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap();
    assert_eq!(
        r.kvs()[0].value(),
        b"2",
        "the compact revision itself stays readable"
    );
    let e = c.compact(4, None).await.unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let e = c.compact(100, None).await.unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    c.compact(
        6,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    let r = c
        .get("c", Some(GetOptions::new().with_revision(6)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"4");
    let r = c.get("c", None).await.unwrap();
    assert_eq!(r.kvs()[0].version(), 5, "versions survive compaction");
}

async fn maintenance_and_cluster(s: Server) {
    let mut c = s.client().await;
    let st = c.status().await.unwrap();
    let v: Vec<u32> = st
        .version()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(v >= vec![3, 4, 0], "version {:?}", st.version());
    assert!(st.db_size() > 0);
    assert_eq!(st.leader(), st.header().unwrap().member_id());
    let alarms = c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .unwrap();
    assert!(alarms.alarms().is_empty());
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    assert_eq!(
        members.members()[0].client_urls(),
        std::slice::from_ref(&s.endpoint)
    );
    assert_eq!(members.members()[0].id(), st.header().unwrap().member_id());
    // Every member has a peer URL (etcd's for raft; Koine's is its own).
    assert_eq!(members.members()[0].peer_urls().len(), 1);
    if s.is_koine() {
        assert!(v >= vec![3, 5, 13], "Kubernetes needs 3.5.13+");
    }
}

async fn binary_keys(s: Server) {
    let mut c = s.client().await;
    let keys: Vec<Vec<u8>> = vec![
        vec![0x01],
        vec![0x7f],
        vec![0x80],
        vec![0xc3, 0xa9],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff],
    ];
    for k in &keys {
        c.put(k.clone(), k.clone(), None).await.unwrap();
    }
    let r = c
        .get(vec![0x00], Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(got, keys, "keys are ordered bytewise");
    let r = c
        .get(vec![0xff], Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.count(), 3);
    let r = c
        .get(vec![0x80], Some(GetOptions::new().with_range(vec![0xff])))
        .await
        .unwrap();
    assert_eq!(r.count(), 2);
}

on_every_target!(
    put_get_revisions,
    range_options,
    delete_ranges,
    txn_semantics,
    txn_rejections,
    invalid_requests,
    compaction,
    maintenance_and_cluster,
    binary_keys,
);

/// Acknowledged writes, leases and the compact revision survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart() {
    let k = crate::harness::Koine::start(&[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    c.put("a", "1", None).await.unwrap();
    c.put("a", "2", None).await.unwrap();
    let lease = c.lease_grant(300, None).await.unwrap().id();
    c.put("l", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.compact(3, None).await.unwrap();
    drop(c);
    let dir = k.stop().await;
    let k = crate::harness::Koine::start_in(dir, &[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    let g = c.get("a", None).await.unwrap();
    assert_eq!(g.header().unwrap().revision(), 4);
    assert_eq!((g.kvs()[0].value(), g.kvs()[0].version()), (&b"2"[..], 2));
    let t = c.lease_time_to_live(lease, None).await.unwrap();
    assert!(t.ttl() > 250, "lease keeps its remaining time: {}", t.ttl());
    let e = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap_err();
    assert_eq!(status(e).0, Code::OutOfRange);
    let r = c.put("b", "x", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 5, "revisions continue");
}

/// Runs SQL on the SQLite database at `path` behind Koine's back.
async fn sqlite_exec(path: &std::path::Path, statements: &[&'static str]) {
    use sqlx::{Connection, Executor};
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    for s in statements {
        c.execute(*s).await.expect(s);
    }
}

/// A graceful stop leaves a checkpoint of the key index beside the SQLite
/// file; the next start reads it (and removes it) and then the log after
/// it. It is used only while the database holds its token: the test
/// renames a key in the log behind Koine's back, so that an index read
/// from the checkpoint and one built from the log answer differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_read_the_index_checkpoint_only_while_it_matches() {
    let k = crate::harness::Koine::start(&[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    for i in 0..50 {
        c.put(format!("k{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.delete("k1", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let lease = c.lease_grant(300, None).await.unwrap().id();
    c.put("leased", "l", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.compact(20, None).await.unwrap();
    c.put("a", "1", None).await.unwrap();
    let all = || Some(GetOptions::new().with_from_key());
    let dump = |c: &mut etcd_client::Client, rev: i64| {
        let mut c = c.clone();
        async move {
            let r = c
                .get(vec![0u8], all().map(|o| o.with_revision(rev)))
                .await
                .unwrap();
            r.kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key().to_vec(),
                        kv.mod_revision(),
                        kv.version(),
                        kv.lease(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let now = c.get("a", None).await.unwrap().header().unwrap().revision();
    let mut want = Vec::new();
    for rev in 20..=now {
        want.push(dump(&mut c, rev).await);
    }
    drop(c);

    // Stopped: the checkpoint is written. Started again: it is read, and
    // every retained revision answers as before.
    let dir = k.stop().await;
    let db = dir.path().join("state.db");
    let checkpoint = dir.path().join("state.db.index");
    assert!(checkpoint.exists(), "no checkpoint after a graceful stop");
    // Behind Koine's back, "a" becomes "z" in the log: only an index read
    // from the checkpoint still says "a".
    sqlite_exec(
        &db,
        &["UPDATE koine_log SET k = CAST('z' AS BLOB) WHERE k = CAST('a' AS BLOB)"],
    )
    .await;
    let k = crate::harness::Koine::start_in(dir, &[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    let got = c.get("a", None).await.unwrap();
    assert_eq!(
        got.kvs()[0].key(),
        b"a",
        "the index came from the checkpoint"
    );
    assert!(!checkpoint.exists(), "a checkpoint is read once");
    // Its token is cleared as it is read: a copy of the running database
    // does not match the file.
    let token: i64 = {
        use sqlx::Connection;
        let mut q = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT checkpoint FROM koine_meta")
            .fetch_one(&mut q)
            .await
            .unwrap()
    };
    assert_eq!(token, 0, "the token is cleared when the checkpoint is read");
    for (i, rev) in (20..now).enumerate() {
        assert_eq!(dump(&mut c, rev).await, want[i], "revision {rev}");
    }
    let t = c
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(t.keys(), [b"leased".to_vec()]);
    let r = c.put("b", "x", None).await.unwrap();
    assert_eq!(
        r.header().unwrap().revision(),
        now + 1,
        "revisions continue"
    );
    drop(c);

    // A checkpoint whose token the database does not hold (here: the
    // database says another one) is not used: the index is built from
    // the log, which says "z".
    let dir = k.stop().await;
    assert!(checkpoint.exists());
    sqlite_exec(&db, &["UPDATE koine_meta SET checkpoint = checkpoint + 1"]).await;
    let k = crate::harness::Koine::start_in(dir, &[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    assert!(c.get("a", None).await.unwrap().kvs().is_empty());
    assert!(!checkpoint.exists());
    assert_eq!(c.get("z", None).await.unwrap().kvs()[0].value(), b"1");
    let r = c.put("c", "x", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), now + 2);
}

/// The store revision survives restarts whatever the newest revision
/// holds: puts only (on SQLite read from the log's last row), or only
/// tombstones that a compaction at that revision removed from the log.
/// Started from the log each time (the index checkpoint removed), a
/// restarted store answers at the revision it had and the next write takes
/// the one after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revision_survives_restarts_after_puts_and_compacted_deletes() {
    async fn restart(k: crate::harness::Koine) -> (crate::harness::Koine, etcd_client::Client) {
        let dir = k.stop().await;
        let _ = std::fs::remove_file(dir.path().join("state.db.index"));
        let k = crate::harness::Koine::start_in(dir, &[]).await;
        let c = etcd_client::Client::connect([k.endpoint.as_str()], None)
            .await
            .unwrap();
        (k, c)
    }
    let revision = |r: Option<&etcd_client::ResponseHeader>| r.unwrap().revision();
    let k = crate::harness::Koine::start(&[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    for i in 0..5 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    let put = revision(c.put("a", "1", None).await.unwrap().header());

    drop(c);
    let (k, mut c) = restart(k).await;
    assert_eq!(revision(c.get("a", None).await.unwrap().header()), put);

    // The newest revision deletes, and a physical compaction at it removes
    // its tombstones (and "a"'s older row) from the log.
    let deleted = revision(c.delete("a", None).await.unwrap().header());
    assert_eq!(deleted, put + 1);
    c.compact(
        deleted,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    drop(c);
    let (k, mut c) = restart(k).await;
    assert_eq!(revision(c.get("k0", None).await.unwrap().header()), deleted);
    assert!(c.get("a", None).await.unwrap().kvs().is_empty());
    let next = revision(c.put("b", "2", None).await.unwrap().header());
    assert_eq!(next, deleted + 1, "no revision is handed out twice");

    drop(c);
    let (_k, mut c) = restart(k).await;
    let got = c.get("b", None).await.unwrap();
    assert_eq!(revision(got.header()), next);
    assert_eq!(got.kvs()[0].mod_revision(), next);
}

/// kube-apiserver's compactor: a Txn on `compact_rev_key` guarded by its
/// version, then Compact — with the key treated as an ordinary key.
async fn compact_rev_key_protocol(s: Server) {
    let mut c = s.client().await;
    for i in 0..10 {
        c.put("/registry/x", format!("{i}"), None).await.unwrap();
    }
    let key = "compact_rev_key";
    let mut version = 0;
    for _ in 0..2 {
        let t = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, version)])
            .and_then([TxnOp::put(key, "11", None)])
            .or_else([TxnOp::get(key, None)]);
        let r = c.txn(t).await.unwrap();
        assert!(r.succeeded());
        let rev = r.header().unwrap().revision();
        c.compact(rev - 3, None).await.unwrap();
        version += 1;
        let g = c.get(key, None).await.unwrap();
        assert_eq!(g.kvs()[0].version(), version);
    }
    // A stale compactor loses the race and reads the current version.
    let t = Txn::new()
        .when([Compare::version(key, CompareOp::Equal, 1)])
        .and_then([TxnOp::put(key, "x", None)])
        .or_else([TxnOp::get(key, None)]);
    let r = c.txn(t).await.unwrap();
    assert!(!r.succeeded());
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].version(), 2),
        other => panic!("unexpected {other:?}"),
    }
}

on_every_target!(compact_rev_key_protocol);

/// Background compaction keeps `--compact-min-retain` revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_compaction() {
    let k =
        crate::harness::Koine::start(&["--compact-interval", "100ms", "--compact-min-retain", "5"])
            .await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    for i in 0..20 {
        c.put("bg", format!("{i}"), None).await.unwrap(); // revs 2..=21
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = c.get("bg", Some(GetOptions::new().with_revision(15))).await;
        if r.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no background compaction"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = c
        .get("bg", Some(GetOptions::new().with_revision(16)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"14");
    let e = c
        .get("bg", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e).1,
        "etcdserver: mvcc: required revision has been compacted"
    );
}
