//! Maintenance as etcd answers it: alarms and MoveLeader on every target
//! (the same answers from etcd, passthrough and Koine on each database),
//! and Koine's space quota filled for real, then recovered by compaction,
//! defragmentation and disarming.

use std::time::{Duration, Instant};

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp,
};
use tonic::Code;

use crate::harness::{Koine, Server};
use crate::on_every_target;

const NO_SPACE: (Code, &str) = (
    Code::ResourceExhausted,
    "etcdserver: mvcc: database space exceeded",
);

use crate::harness::{assert_error as is, code_and_text as status};

async fn alarms(
    c: &mut Client,
    action: AlarmAction,
    kind: AlarmType,
    member: u64,
) -> Vec<(u64, i32)> {
    let mut o = AlarmOptions::new();
    o.with_member(member);
    c.alarm(action, kind, Some(o))
        .await
        .unwrap()
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm() as i32))
        .collect()
}

on_every_target!(
    nospace_stops_writes_that_add_data_until_disarmed,
    move_leader_on_one_member,
    hash_kv_is_a_function_of_the_history_up_to_its_revision
);

/// HashKV(rev) hashes the history up to rev: the same answer however often
/// it is asked and whatever is written later; a new write changes the
/// current hash; a future revision is etcd's error. (The values differ from
/// etcd's, whose hash covers its own encoding; the properties do not.)
async fn hash_kv_is_a_function_of_the_history_up_to_its_revision(s: Server) {
    let mut c = s.client().await;
    let modern = !c.status().await.unwrap().version().starts_with("3.4");
    c.put("h/a", "1", None).await.unwrap();
    c.put("h/b", "2", None).await.unwrap();
    let first = c.hash_kv(0).await.unwrap();
    let rev = first.header().unwrap().revision();
    assert_eq!(c.hash_kv(0).await.unwrap().hash(), first.hash());
    if modern {
        // etcd 3.5 on: -1 before the first compaction.
        assert_eq!(first.compact_version(), -1);
    }
    c.put("h/a", "3", None).await.unwrap();
    c.delete("h/b", None).await.unwrap();
    let now = c.hash_kv(0).await.unwrap();
    assert_ne!(now.hash(), first.hash(), "a write changes the hash");
    assert_eq!(
        c.hash_kv(rev).await.unwrap().hash(),
        first.hash(),
        "later writes do not change the hash at an earlier revision"
    );
    is(
        status(c.hash_kv(rev + 100).await.unwrap_err()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
    );
}

/// A single member is the leader: moving leadership to itself succeeds,
/// to any other id is etcd's "bad leader transferee". etcd's reply, like
/// its Defragment reply, carries no response header.
async fn move_leader_on_one_member(s: Server) {
    let mut c = s.client().await;
    let me = c.status().await.unwrap().header().unwrap().member_id();
    assert!(c.move_leader(me).await.unwrap().header().is_none());
    assert!(c.defragment().await.unwrap().header().is_none());
    is(
        status(c.move_leader(me ^ 1).await.unwrap_err()),
        (
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
    );
}

async fn nospace_stops_writes_that_add_data_until_disarmed(s: Server) {
    let mut c = s.client().await;
    let me = c.status().await.unwrap().header().unwrap().member_id();
    c.put("k", "v", None).await.unwrap();
    assert!(
        alarms(&mut c, AlarmAction::Get, AlarmType::None, 0)
            .await
            .is_empty()
    );
    assert_eq!(
        alarms(&mut c, AlarmAction::Activate, AlarmType::Nospace, me).await,
        [(me, AlarmType::Nospace as i32)]
    );
    assert_eq!(
        alarms(&mut c, AlarmAction::Get, AlarmType::None, 0).await,
        [(me, AlarmType::Nospace as i32)]
    );
    // Writes that add data fail with etcd's error and change nothing...
    is(status(c.put("k", "w", None).await.unwrap_err()), NO_SPACE);
    let put_txn = Txn::new()
        .when([Compare::version("k", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("k2", "x", None)]);
    is(status(c.txn(put_txn).await.unwrap_err()), NO_SPACE);
    is(status(c.lease_grant(60, None).await.unwrap_err()), NO_SPACE);
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"v");
    // ...reads, deletes and compaction go on.
    c.delete("nothing", None).await.unwrap();
    let delete_txn = Txn::new().and_then([TxnOp::delete(
        "k2",
        Some(DeleteOptions::new().with_prefix()),
    )]);
    c.txn(delete_txn).await.unwrap();
    let rev = c.get("k", None).await.unwrap().header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    // Disarming answers the alarm it cleared, then nothing.
    assert_eq!(
        alarms(&mut c, AlarmAction::Deactivate, AlarmType::Nospace, me).await,
        [(me, AlarmType::Nospace as i32)]
    );
    assert!(
        alarms(&mut c, AlarmAction::Deactivate, AlarmType::Nospace, me)
            .await
            .is_empty()
    );
    c.put("k", "w", None).await.unwrap();
    c.lease_grant(60, None).await.unwrap();
}

/// Koine with a small quota: puts of incompressible values until the quota
/// stops them (NOSPACE raised by itself), then the operator's way out:
/// delete, compact, defragment, disarm, and writes work again.
async fn quota_fills_and_recovers(endpoint: &str, quota: u64) {
    let k = Koine::start_on(endpoint, &["--quota-backend-bytes", &quota.to_string()]).await;
    crate::harness::wait_ready(&k.endpoint).await;
    let mut c = Client::connect([k.endpoint.as_str()], None).await.unwrap();
    let mut filled = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0u64;
    while filled.is_none() {
        assert!(Instant::now() < deadline, "the quota never stopped writes");
        // Incompressible (PostgreSQL compresses values).
        let value: Vec<u8> = (0..65536u64)
            .map(|j| ((i * 65536 + j).wrapping_mul(0x9E3779B97F4A7C15) >> 56) as u8)
            .collect();
        match c.put(format!("fill/{i:05}"), value, None).await {
            Ok(_) => i += 1,
            Err(e) => filled = Some(status(e)),
        }
    }
    is(filled.unwrap(), NO_SPACE);
    assert!(i > 0, "the quota stopped the first write");
    let raised = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(raised.alarms().len(), 1);
    assert_eq!(raised.alarms()[0].alarm(), AlarmType::Nospace);
    let me = raised.alarms()[0].member_id();
    // Reads still work.
    assert_eq!(
        c.get(
            "fill/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only()
            )
        )
        .await
        .unwrap()
        .count(),
        i as i64
    );
    // Make room: delete, compact physically, defragment, disarm.
    let del = c
        .delete("fill/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let rev = del.header().unwrap().revision();
    c.compact(
        rev,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    c.defragment().await.unwrap();
    let mut o = AlarmOptions::new();
    o.with_member(me);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(o))
        .await
        .unwrap();
    // The size is measured again within a second; the room made is real,
    // so writes go on and no alarm comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for j in 0..5 {
        c.put(format!("after/{j}"), vec![b'x'; 1024], None)
            .await
            .unwrap();
    }
    assert!(
        c.alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap()
            .alarms()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_fills_and_recovers_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let dsn = format!("sqlite://{}", dir.path().join("q.db").display());
    quota_fills_and_recovers(&dsn, 2 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_fills_and_recovers_postgres() {
    let dsn = crate::dbs::fresh_postgres_dsn().await;
    // An empty PostgreSQL database is about 8 MB of catalogs.
    quota_fills_and_recovers(&dsn, 14 << 20).await;
}

/// Two instances on one database answer HashKV alike, before and after
/// compactions, logical and physical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_database_hash_alike() {
    let dsn = crate::dbs::fresh_postgres_dsn().await;
    let a = crate::harness::KoineProcess::start(&dsn, &[]).await;
    let b = crate::harness::KoineProcess::start(&dsn, &[]).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    for i in 0..50 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        c.put(format!("h/{}", i % 7), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let mid = ca
        .get("h/0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    for i in 0..20 {
        cb.delete(format!("h/{}", i % 5), None).await.unwrap();
        ca.put(format!("h/x{i}"), "x", None).await.unwrap();
    }
    let end = cb
        .get("h/0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    for rev in [mid, end] {
        let (ha, hb) = (
            ca.hash_kv(rev).await.unwrap(),
            cb.hash_kv(rev).await.unwrap(),
        );
        assert_eq!(ha.hash(), hb.hash(), "at revision {rev}");
    }
    ca.compact(mid, None).await.unwrap();
    let (ha, hb) = (
        ca.hash_kv(end).await.unwrap(),
        cb.hash_kv(end).await.unwrap(),
    );
    assert_eq!((ha.hash(), ha.compact_version()), (hb.hash(), mid));
    assert_eq!(hb.compact_version(), mid);
    ca.compact(
        mid + 5,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    let (ha, hb) = (
        ca.hash_kv(end).await.unwrap(),
        cb.hash_kv(end).await.unwrap(),
    );
    assert_eq!((ha.hash(), ha.compact_version()), (hb.hash(), mid + 5));
}
