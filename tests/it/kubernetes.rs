//! kube-apiserver's and K3s's use of etcd, call for call, on every target
//! (real etcd included, which proves the expectations). Modelled on
//! k8s.io/apiserver pkg/storage/etcd3 (store, watcher, compactor, lease
//! manager, health probe) and on K3s's bootstrap data; the call shapes are
//! those of ../shared/docs/kine-and-kubernetes.md §1.2 and §1.3.
//!
//! Ends with a load scenario in the style of kine's configmap load test,
//! checked for lost updates, phantom keys and a watch stream that disagrees
//! with the final state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchOptions, WatchResponse, WatchStream,
};
use tonic::Code;

use crate::harness::Server;
use crate::harness::next_watch_response as next;
use crate::on_every_target;

const WAIT: Duration = Duration::from_secs(20);
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

fn status(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// The end of the range of every key starting with `prefix` (clientv3's
/// GetPrefixRangeEnd, which the apiserver uses for lists and watches).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn lease_opts(lease: i64) -> Option<PutOptions> {
    (lease != 0).then(|| PutOptions::new().with_lease(lease))
}

fn rev_of(r: &TxnResponse) -> i64 {
    r.header().expect("header").revision()
}

/// The kv of a failure branch's `Range(K)` (`None`: the key is absent).
fn failure_kv(r: &TxnResponse) -> Option<KeyValue> {
    match &r.op_responses()[..] {
        [TxnOpResponse::Get(g)] => {
            assert!(g.kvs().len() <= 1, "{g:?}");
            g.kvs().first().cloned()
        }
        other => panic!("expected one range response, got {other:?}"),
    }
}

/// R1: Get of one object (limit 1, as v1.32+), at `rev` (0 = current).
/// Returns the object and the header revision.
async fn get_at(c: &mut Client, key: &str, rev: i64) -> (Option<KeyValue>, i64) {
    let mut opts = GetOptions::new().with_limit(1);
    if rev != 0 {
        opts = opts.with_revision(rev);
    }
    let r = c.get(key, Some(opts)).await.expect("get");
    assert!(r.kvs().len() <= 1);
    assert!(!r.more());
    assert_eq!(r.count() as usize, r.kvs().len());
    (r.kvs().first().cloned(), r.header().unwrap().revision())
}

async fn get(c: &mut Client, key: &str) -> (Option<KeyValue>, i64) {
    get_at(c, key, 0).await
}

/// T1, create: compare [MOD(K) == 0]; success [Put(K, V, lease)]; failure
/// [Range(K)]. `Ok(revision)` or `Err((header revision, existing object))`.
async fn create(
    c: &mut Client,
    key: &str,
    value: impl Into<Vec<u8>>,
    lease: i64,
) -> Result<i64, (i64, Option<KeyValue>)> {
    let t = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, lease_opts(lease))])
        .or_else([TxnOp::get(key, None)]);
    let r = c.txn(t).await.expect("create txn");
    if r.succeeded() {
        assert!(matches!(&r.op_responses()[..], [TxnOpResponse::Put(_)]));
        Ok(rev_of(&r))
    } else {
        Err((rev_of(&r), failure_kv(&r)))
    }
}

/// T2, GuaranteedUpdate's write: compare [MOD(K) == seen]; success
/// [Put(K, V, lease)]; failure [Range(K)].
async fn update(
    c: &mut Client,
    key: &str,
    value: impl Into<Vec<u8>>,
    seen: i64,
    lease: i64,
) -> Result<i64, (i64, Option<KeyValue>)> {
    let t = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, seen)])
        .and_then([TxnOp::put(key, value, lease_opts(lease))])
        .or_else([TxnOp::get(key, None)]);
    let r = c.txn(t).await.expect("update txn");
    if r.succeeded() {
        Ok(rev_of(&r))
    } else {
        Err((rev_of(&r), failure_kv(&r)))
    }
}

/// T3, delete with a precondition: compare [MOD(K) == seen]; success
/// [DeleteRange(K) with prev_kv]; failure [Range(K)]. `Ok((revision,
/// deleted, prev_kv))`.
async fn delete(
    c: &mut Client,
    key: &str,
    seen: i64,
) -> Result<(i64, i64, Option<KeyValue>), (i64, Option<KeyValue>)> {
    let t = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, seen)])
        .and_then([TxnOp::delete(
            key,
            Some(DeleteOptions::new().with_prev_key()),
        )])
        .or_else([TxnOp::get(key, None)]);
    let r = c.txn(t).await.expect("delete txn");
    if !r.succeeded() {
        return Err((rev_of(&r), failure_kv(&r)));
    }
    match &r.op_responses()[..] {
        [TxnOpResponse::Delete(d)] => {
            assert!(d.prev_kvs().len() as i64 == d.deleted(), "{d:?}");
            Ok((rev_of(&r), d.deleted(), d.prev_kvs().first().cloned()))
        }
        other => panic!("expected one delete response, got {other:?}"),
    }
}

/// GuaranteedUpdate from an object already read: retries on conflict with
/// the object the failure branch returned. Returns (revision, conflicts).
async fn guaranteed_update(
    c: &mut Client,
    key: &str,
    mut current: KeyValue,
    f: impl Fn(&[u8]) -> Vec<u8>,
) -> (i64, usize) {
    let mut conflicts = 0;
    loop {
        let new = f(current.value());
        match update(c, key, new, current.mod_revision(), 0).await {
            Ok(rev) => return (rev, conflicts),
            Err((_, now)) => {
                conflicts += 1;
                current = now.expect("object still exists");
            }
        }
    }
}

/// One list page as the apiserver asks for it.
struct Page {
    kvs: Vec<KeyValue>,
    more: bool,
    count: i64,
    header: i64,
}

/// R2: a page of `[start, prefix end)` with `limit` at `rev` (0 = current).
async fn list_page(
    c: &mut Client,
    start: impl Into<Vec<u8>>,
    prefix: &str,
    limit: i64,
    rev: i64,
) -> Result<Page, etcd_client::Error> {
    let mut opts = GetOptions::new()
        .with_range(prefix_end(prefix))
        .with_limit(limit);
    if rev != 0 {
        opts = opts.with_revision(rev);
    }
    let r = c.get(start, Some(opts)).await?;
    Ok(Page {
        kvs: r.kvs().to_vec(),
        more: r.more(),
        count: r.count(),
        header: r.header().unwrap().revision(),
    })
}

/// The continue key after a page: the last key and a NUL.
fn continue_key(page: &Page) -> Vec<u8> {
    let mut k = page.kvs.last().expect("non-empty page").key().to_vec();
    k.push(0);
    k
}

/// A whole paginated list (page 1 at the current revision, the rest pinned
/// to page 1's), checking every page's `count` and `more` as etcd defines
/// them. Returns (list revision, objects).
async fn list_all(c: &mut Client, prefix: &str, limit: i64) -> (i64, Vec<KeyValue>) {
    let first = list_page(c, prefix, prefix, limit, 0).await.expect("list");
    let rev = first.header;
    let mut counts = vec![first.count];
    let mut sizes = vec![first.kvs.len()];
    let mut more = first.more;
    let mut next = (!first.kvs.is_empty()).then(|| continue_key(&first));
    let mut out = first.kvs;
    while more {
        let page = list_page(c, next.take().unwrap(), prefix, limit, rev)
            .await
            .expect("continue");
        assert!(page.header >= rev);
        counts.push(page.count);
        sizes.push(page.kvs.len());
        more = page.more;
        next = (!page.kvs.is_empty()).then(|| continue_key(&page));
        out.extend(page.kvs);
    }
    // Every page: count = keys from the page's start to the range end,
    // more = keys beyond the page, a full page unless it is the last.
    let total = out.len() as i64;
    let mut before = 0i64;
    for (i, (&count, &size)) in counts.iter().zip(&sizes).enumerate() {
        assert_eq!(count, total - before, "count of page {i}");
        let last = i + 1 == counts.len();
        assert_eq!(size as i64, if last { count } else { limit }, "page {i}");
        before += size as i64;
    }
    assert!(out.windows(2).all(|w| w[0].key() < w[1].key()), "key order");
    (rev, out)
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

/// One watch event, flattened: type, key, value, create / mod revision,
/// version, prev_kv (value, mod revision).
#[derive(Debug, Clone, PartialEq)]
struct Ev {
    kind: EventType,
    key: String,
    value: String,
    create: i64,
    rev: i64,
    version: i64,
    prev: Option<(String, i64)>,
}

fn flatten(r: &WatchResponse) -> Vec<Ev> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event kv");
            Ev {
                kind: e.event_type(),
                key: kv.key_str().unwrap().to_string(),
                value: kv.value_str().unwrap().to_string(),
                create: kv.create_revision(),
                rev: kv.mod_revision(),
                version: kv.version(),
                prev: e
                    .prev_kv()
                    .map(|p| (p.value_str().unwrap().to_string(), p.mod_revision())),
            }
        })
        .collect()
}

async fn collect(w: &mut WatchStream, n: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(w).await;
        assert!(!r.canceled() && !r.created(), "unexpected {r:?}");
        out.extend(flatten(&r));
    }
    assert_eq!(out.len(), n, "no more events than expected: {out:?}");
    out
}

fn ev(kind: EventType, key: &str, value: &str, create: i64, rev: i64, version: i64) -> Ev {
    Ev {
        kind,
        key: key.into(),
        value: value.into(),
        create,
        rev,
        version,
        prev: None,
    }
}

impl Ev {
    fn prev(mut self, value: &str, rev: i64) -> Ev {
        self.prev = Some((value.into(), rev));
        self
    }
}

// ---------------------------------------------------------------------------
// store_test.go: create, get, update, delete

/// TestCreate, TestCreateWithKeyExist, TestGet, TestGetCurrentResourceVersion,
/// TestLinearizedReadRevisionInvariant.
async fn create_and_get(s: Server) {
    let mut c = s.client().await;
    let key = "/registry/pods/default/foo";
    let (missing, rv) = get(&mut c, key).await;
    assert!(missing.is_none());
    assert_eq!(rv, 1, "a fresh store is at revision 1");

    let rev = create(&mut c, key, "pod-v1", 0).await.expect("created");
    assert_eq!(rev, 2);
    let (obj, rv) = get(&mut c, key).await;
    let obj = obj.expect("created object");
    assert_eq!(
        (
            obj.value(),
            obj.create_revision(),
            obj.mod_revision(),
            obj.version(),
            obj.lease()
        ),
        (&b"pod-v1"[..], 2, 2, 1, 0)
    );
    assert_eq!(rv, 2);

    // Creating it again fails and returns the existing object; the failed
    // Txn changes nothing, the revision included.
    let (rv, existing) = create(&mut c, key, "pod-v2", 0).await.unwrap_err();
    assert_eq!(rv, 2);
    let existing = existing.expect("existing object");
    assert_eq!(
        (existing.value(), existing.mod_revision()),
        (&b"pod-v1"[..], 2)
    );

    // A second object; a Get of anything reports the current revision.
    create(&mut c, "/registry/pods/default/bar", "bar", 0)
        .await
        .unwrap();
    let (none, rv) = get(&mut c, "/registry/pods/default/nothing").await;
    assert!(none.is_none());
    assert_eq!(rv, 3, "GetCurrentResourceVersion reads the header");

    // Get at a resource version: older state, current header.
    update(&mut c, key, "pod-v2", 2, 0).await.unwrap(); // rev 4
    let (old, rv) = get_at(&mut c, key, 3).await;
    assert_eq!(old.unwrap().value(), b"pod-v1");
    assert_eq!(rv, 4, "historical reads carry the current revision");
    let (none, _) = get_at(&mut c, "/registry/pods/default/bar", 2).await;
    assert!(none.is_none(), "bar did not exist at revision 2");
    let e = c
        .get(key, Some(GetOptions::new().with_limit(1).with_revision(5)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (Code::OutOfRange, FUTURE.into()),
        "Too large resource version"
    );

    // Reads never bump the revision.
    for _ in 0..5 {
        get(&mut c, key).await;
        list_page(&mut c, "/registry/pods/", "/registry/pods/", 1, 0)
            .await
            .unwrap();
        c.get(
            "/registry/pods/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    }
    let (obj, rv) = get(&mut c, key).await;
    assert_eq!(rv, 4);
    let obj = obj.unwrap();
    assert_eq!(
        (obj.create_revision(), obj.mod_revision(), obj.version()),
        (2, 4, 2)
    );
}

/// TestGuaranteedUpdate, …WithConflict: a stale write fails and returns the
/// current object; concurrent updaters retry until every update lands once.
async fn guaranteed_update_conflicts(s: Server) {
    let mut c = s.client().await;
    let key = "/registry/configmaps/default/counter";
    let created = create(&mut c, key, "0", 0).await.unwrap(); // rev 2
    assert_eq!(created, 2);

    // A write based on what was read succeeds…
    let rev = update(&mut c, key, "1", 2, 0).await.unwrap();
    assert_eq!(rev, 3);
    // …one based on a stale read fails and hands back the current object.
    let (rv, cur) = update(&mut c, key, "stale", 2, 0).await.unwrap_err();
    assert_eq!(rv, 3, "a failed update writes nothing");
    let cur = cur.unwrap();
    assert_eq!(
        (cur.value(), cur.mod_revision(), cur.version()),
        (&b"1"[..], 3, 2)
    );
    // GuaranteedUpdate on a deleted object: the failure branch is empty.
    create(&mut c, "/registry/configmaps/default/gone", "x", 0)
        .await
        .unwrap(); // 4
    delete(&mut c, "/registry/configmaps/default/gone", 4)
        .await
        .unwrap(); // 5
    let (rv, cur) = update(&mut c, "/registry/configmaps/default/gone", "y", 4, 0)
        .await
        .unwrap_err();
    assert_eq!((rv, cur.is_none()), (5, true));

    // Concurrent updaters. All read the same revision before anyone
    // writes, so the first round conflicts for all but one.
    let writers = 8;
    let rounds = 10;
    let barrier = Arc::new(tokio::sync::Barrier::new(writers));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let mut c = c.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                let mut conflicts = 0;
                for round in 0..rounds {
                    let (obj, _) = get(&mut c, key).await;
                    if round == 0 {
                        barrier.wait().await;
                    }
                    let (rev, n) = guaranteed_update(&mut c, key, obj.unwrap(), |v| {
                        let n: u64 = std::str::from_utf8(v).unwrap().parse().unwrap();
                        (n + 1).to_string().into_bytes()
                    })
                    .await;
                    revs.push(rev);
                    conflicts += n;
                }
                (revs, conflicts)
            })
        })
        .collect();
    let mut revs = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (r, n) = t.await.unwrap();
        revs.extend(r);
        conflicts += n;
    }
    revs.sort();
    let total = (writers * rounds) as i64;
    assert_eq!(
        revs,
        (6..6 + total).collect::<Vec<_>>(),
        "one revision per successful update, none for conflicts"
    );
    assert!(
        conflicts >= writers - 1,
        "first round conflicts: {conflicts}"
    );
    let (obj, rv) = get(&mut c, key).await;
    let obj = obj.unwrap();
    assert_eq!(
        obj.value(),
        (1 + total).to_string().as_bytes(),
        "no lost update"
    );
    assert_eq!(
        (obj.version(), obj.create_revision(), obj.mod_revision(), rv),
        (2 + total, 2, 5 + total, 5 + total)
    );
}

/// TestConditionalDelete, TestDeleteWithConflict, TestUnconditionalDelete,
/// deletes of a missing object and re-creation after delete.
async fn delete_with_preconditions(s: Server) {
    let mut c = s.client().await;
    let key = "/registry/secrets/default/s";
    create(&mut c, key, "v1", 0).await.unwrap(); // 2
    update(&mut c, key, "v2", 2, 0).await.unwrap(); // 3

    // Wrong precondition: nothing deleted, the current object comes back.
    let (rv, cur) = delete(&mut c, key, 2).await.unwrap_err();
    assert_eq!(rv, 3);
    let cur = cur.unwrap();
    assert_eq!((cur.value(), cur.mod_revision()), (&b"v2"[..], 3));
    // Right precondition: deleted with its last state.
    let (rev, deleted, prev) = delete(&mut c, key, 3).await.unwrap();
    assert_eq!((rev, deleted), (4, 1));
    let prev = prev.unwrap();
    assert_eq!(
        (
            prev.value(),
            prev.mod_revision(),
            prev.create_revision(),
            prev.version()
        ),
        (&b"v2"[..], 3, 2, 2)
    );
    let (obj, rv) = get(&mut c, key).await;
    assert_eq!((obj.is_none(), rv), (true, 4));
    // Deleting it again with the old precondition: NotFound for the
    // apiserver (an empty failure branch), and no new revision.
    let (rv, cur) = delete(&mut c, key, 3).await.unwrap_err();
    assert_eq!((rv, cur.is_none()), (4, true));
    // A missing key's mod revision is 0: the compare holds, nothing is
    // deleted, the revision stays.
    let (rev, deleted, prev) = delete(&mut c, "/registry/secrets/default/never", 0)
        .await
        .unwrap();
    assert_eq!((rev, deleted, prev.is_none()), (4, 0, true));
    // A plain delete of a missing key likewise.
    let d = c
        .delete("/registry/secrets/default/never", None)
        .await
        .unwrap();
    assert_eq!((d.deleted(), d.header().unwrap().revision()), (0, 4));

    // Re-created after delete: a new object (version 1, new create
    // revision); the tombstone does not satisfy a stale precondition.
    assert_eq!(create(&mut c, key, "v3", 0).await.unwrap(), 5);
    let obj = get(&mut c, key).await.0.unwrap();
    assert_eq!(
        (obj.create_revision(), obj.mod_revision(), obj.version()),
        (5, 5, 1)
    );
    assert_eq!(delete(&mut c, key, 3).await.unwrap_err().0, 5);

    // T4 (apiserver ≤ 1.16): no compare; success [Range(K), DeleteRange(K)].
    let r = c
        .txn(Txn::new().and_then([TxnOp::get(key, None), TxnOp::delete(key, None)]))
        .await
        .unwrap();
    assert!(r.succeeded());
    assert_eq!(rev_of(&r), 6);
    match &r.op_responses()[..] {
        [TxnOpResponse::Get(g), TxnOpResponse::Delete(d)] => {
            assert_eq!(g.kvs()[0].value(), b"v3");
            assert_eq!(d.deleted(), 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The history stays readable until compacted.
    let (old, rv) = get_at(&mut c, key, 3).await;
    assert_eq!((old.unwrap().value(), rv), (&b"v2"[..], 6));
}

// ---------------------------------------------------------------------------
// store_test.go: lists

/// TestListPaging, TestListContinuation, TestListInconsistentContinuation,
/// TestGetListNonRecursive, TestStats (count-only), TestPrefixGetKeys
/// (keys-only).
async fn paginated_list(s: Server) {
    let mut c = s.client().await;
    let prefix = "/registry/pods/";
    // Neighbours just outside the prefix's range.
    for k in ["/registry/pods", "/registry/pods.", "/registry/pods0"] {
        c.put(k, "outside", None).await.unwrap(); // 2, 3, 4
    }
    for i in 0..10 {
        let rev = create(
            &mut c,
            &format!("{prefix}ns/pod-{i:02}"),
            format!("v{i}"),
            0,
        )
        .await
        .unwrap();
        assert_eq!(rev, 5 + i);
    }
    let pod = |i: usize| format!("{prefix}ns/pod-{i:02}");

    // Page 1 at the current revision.
    let p1 = list_page(&mut c, prefix, prefix, 3, 0).await.unwrap();
    let rv = p1.header;
    assert_eq!(rv, 14);
    assert_eq!(keys(&p1.kvs), vec![pod(0), pod(1), pod(2)]);
    assert_eq!((p1.more, p1.count), (true, 10));

    // Changes between pages do not show in the pinned list.
    assert_eq!(p1.kvs[0].mod_revision(), 5);
    update(&mut c, &pod(4), "v4-new", 9, 0).await.unwrap(); // 15
    delete(&mut c, &pod(7), 12).await.unwrap(); // 16
    create(&mut c, &format!("{}a", pod(5)), "new", 0)
        .await
        .unwrap(); // 17

    let p2 = list_page(&mut c, continue_key(&p1), prefix, 3, rv)
        .await
        .unwrap();
    assert_eq!(keys(&p2.kvs), vec![pod(3), pod(4), pod(5)]);
    assert_eq!(
        p2.kvs[1].value(),
        b"v4",
        "the list is pinned to page 1's revision"
    );
    assert_eq!(
        (p2.more, p2.count, p2.header),
        (true, 7, 17),
        "count = keys remaining from the page start; header = current revision"
    );
    let p3 = list_page(&mut c, continue_key(&p2), prefix, 3, rv)
        .await
        .unwrap();
    assert_eq!(keys(&p3.kvs), vec![pod(6), pod(7), pod(8)]);
    assert_eq!((p3.more, p3.count), (true, 4));
    let p4 = list_page(&mut c, continue_key(&p3), prefix, 3, rv)
        .await
        .unwrap();
    assert_eq!(keys(&p4.kvs), vec![pod(9)]);
    assert_eq!((p4.more, p4.count), (false, 1));
    // A continue key without the NUL includes its start key.
    let p = list_page(&mut c, pod(3), prefix, 1, rv).await.unwrap();
    assert_eq!((keys(&p.kvs), p.count, p.more), (vec![pod(3)], 7, true));
    // A limit beyond the end.
    let p = list_page(&mut c, pod(8), prefix, 5, rv).await.unwrap();
    assert_eq!((p.kvs.len(), p.count, p.more), (2, 2, false));

    // A new list sees the current state.
    let (rev, all) = list_all(&mut c, prefix, 4).await;
    assert_eq!(rev, 17);
    let want: Vec<String> = [0, 1, 2, 3, 4, 5]
        .iter()
        .map(|&i| pod(i))
        .chain([format!("{}a", pod(5)), pod(6), pod(8), pod(9)])
        .collect();
    assert_eq!(keys(&all), want);
    assert_eq!(all[4].value(), b"v4-new");
    let (_, big) = list_all(&mut c, prefix, 10_000).await;
    assert_eq!(keys(&big), want);

    // Non-recursive list of one object at a revision.
    let (obj, _) = get_at(&mut c, &pod(7), rv).await;
    assert_eq!(obj.unwrap().value(), b"v7");
    assert!(get(&mut c, &pod(7)).await.0.is_none());

    // Count only (object count metric) now and at the list's revision.
    for (rev, want) in [(0, 10), (rv, 10), (15, 10), (16, 9), (4, 0)] {
        let mut opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_count_only();
        if rev != 0 {
            opts = opts.with_revision(rev);
        }
        let r = c.get(prefix, Some(opts)).await.unwrap();
        assert_eq!(
            (r.count(), r.kvs().len(), r.more()),
            (want, 0, false),
            "count at {rev}"
        );
        assert_eq!(r.header().unwrap().revision(), 17);
    }
    // Keys only (size estimator): keys and revisions, no values.
    let r = c
        .get(
            prefix,
            Some(
                GetOptions::new()
                    .with_range(prefix_end(prefix))
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), want);
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    let kv = &r.kvs()[4];
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (9, 15, 2),
        "keys-only keeps everything but the value"
    );
    assert_eq!(r.count(), 10);

    // A list at a future resource version.
    let e = list_page(&mut c, prefix, prefix, 3, 18)
        .await
        .err()
        .unwrap();
    assert_eq!(status(e), (Code::OutOfRange, FUTURE.into()));

    // Page 1 at 17; after a compaction past it, the continue fails as
    // etcd fails it (the apiserver answers 410 Gone and the client relists).
    let p1 = list_page(&mut c, prefix, prefix, 3, 0).await.unwrap();
    assert_eq!(p1.header, 17);
    for i in 0..3 {
        c.put("/registry/events/e", format!("{i}"), None)
            .await
            .unwrap(); // 18..20
    }
    c.compact(19, None).await.unwrap();
    let e = list_page(&mut c, continue_key(&p1), prefix, 3, 17)
        .await
        .err()
        .expect("continue after compaction");
    assert_eq!(status(e), (Code::OutOfRange, COMPACTED.into()));
    let e = c
        .get(
            prefix,
            Some(
                GetOptions::new()
                    .with_range(prefix_end(prefix))
                    .with_count_only()
                    .with_revision(18),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(status(e), (Code::OutOfRange, COMPACTED.into()));
    // The relist works, at the compact revision too.
    let p = list_page(&mut c, prefix, prefix, 3, 19).await.unwrap();
    assert_eq!((p.count, p.header), (10, 20));
    let (rev, again) = list_all(&mut c, prefix, 3).await;
    assert_eq!((rev, keys(&again)), (20, want));
}

// ---------------------------------------------------------------------------
// watcher_test.go

/// TestWatchFromNoneZero, TestDeleteTriggerWatch,
/// TestWatchDeleteEventObjectHaveLatestRV, and RequestWatchProgress.
async fn watch_from_resource_version(s: Server) {
    let mut c = s.client().await;
    let prefix = "/registry/pods/";
    let a = "/registry/pods/ns/a";
    let b = "/registry/pods/ns/b";
    let cc = "/registry/pods/ns/c";
    create(&mut c, a, "a1", 0).await.unwrap(); // 2
    create(&mut c, b, "b1", 0).await.unwrap(); // 3
    let (rv, items) = list_all(&mut c, prefix, 500).await;
    assert_eq!((rv, items.len()), (3, 2));

    // Changes after the list, before the watch starts.
    create(&mut c, cc, "c1", 0).await.unwrap(); // 4
    update(&mut c, a, "a2", 2, 0).await.unwrap(); // 5
    c.put("/registry/services/x", "not watched", None)
        .await
        .unwrap(); // 6
    delete(&mut c, b, 3).await.unwrap(); // 7

    // W1: prefix, start = RV + 1, prev_kv, progress_notify.
    let mut w = c
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rv + 1)
                    .with_prev_key()
                    .with_progress_notify(),
            ),
        )
        .await
        .unwrap();
    let created = next(&mut w).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    let id = created.watch_id();
    let got = collect(&mut w, 3).await;
    let mut deleted = ev(EventType::Delete, b, "", 0, 7, 0).prev("b1", 3);
    deleted.create = got[2].create;
    deleted.version = got[2].version;
    assert_eq!(
        got,
        vec![
            ev(EventType::Put, cc, "c1", 4, 4, 1),
            ev(EventType::Put, a, "a2", 2, 5, 2).prev("a1", 2),
            deleted,
        ],
        "a create has create_revision == mod_revision and no prev_kv; updates and \
         deletes carry prev_kv; a delete carries its own revision"
    );
    // etcd's delete event is the tombstone: key and mod revision only.
    assert_eq!((got[2].create, got[2].version), (0, 0), "tombstone kv");

    // Live events continue in order.
    update(&mut c, cc, "c2", 4, 0).await.unwrap(); // 8
    let got = collect(&mut w, 1).await;
    assert_eq!(
        got,
        vec![ev(EventType::Put, cc, "c2", 4, 8, 2).prev("c1", 4)]
    );

    // RequestWatchProgress: answered at once with the current revision, on
    // the broadcast id, with no events.
    let progress = |r: &WatchResponse, want: i64| {
        assert!(
            r.events().is_empty() && !r.created() && !r.canceled(),
            "not a progress notification: {r:?}"
        );
        assert_eq!(r.compact_revision(), 0);
        assert_eq!(r.header().unwrap().revision(), want);
        assert_eq!(r.watch_id(), -1, "progress responses are broadcast");
    };
    w.request_progress().await.unwrap();
    progress(&next(&mut w).await, 8);
    // A write outside the watched range still moves the progress revision.
    c.put("/registry/services/x", "again", None).await.unwrap(); // 9
    w.request_progress().await.unwrap();
    progress(&next(&mut w).await, 9);
    // Events after a progress notification have higher revisions.
    delete(&mut c, cc, 8).await.unwrap(); // 10
    let r = next(&mut w).await;
    assert_eq!(r.watch_id(), id);
    let got = flatten(&r);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].kind, got[0].rev), (EventType::Delete, 10));
    assert_eq!(got[0].prev, Some(("c2".into(), 8)));

    // TestWatchFromZero-like: a watch from the current RV + 1 sees only what
    // comes next, even on a stream with another watch.
    w.watch(
        a,
        Some(WatchOptions::new().with_start_revision(11).with_prev_key()),
    )
    .await
    .unwrap();
    let r = next(&mut w).await;
    assert!(r.created());
    let id2 = r.watch_id();
    assert_ne!(id2, id);
    update(&mut c, a, "a3", 5, 0).await.unwrap(); // 11
    let mut by_id: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    while by_id.values().map(Vec::len).sum::<usize>() < 2 {
        let r = next(&mut w).await;
        by_id.entry(r.watch_id()).or_default().extend(flatten(&r));
    }
    let want = ev(EventType::Put, a, "a3", 2, 11, 3).prev("a2", 5);
    assert_eq!(by_id[&id], vec![want.clone()]);
    assert_eq!(by_id[&id2], vec![want]);
}

// ---------------------------------------------------------------------------
// compact.go / compact_test.go

/// kube-apiserver's `compact()`: T5 on `compact_rev_key` guarded by its
/// version (the logical clock `t`), then, for the winner and unless at
/// bootstrap (rev 0), Compact(rev). Returns (won, new t, header revision).
async fn compactor_step(c: &mut Client, t: i64, rev: i64) -> (bool, i64, i64) {
    let key = "compact_rev_key";
    let txn = Txn::new()
        .when([Compare::version(key, CompareOp::Equal, t)])
        .and_then([TxnOp::put(key, rev.to_string(), None)])
        .or_else([TxnOp::get(key, None)]);
    let r = c.txn(txn).await.expect("compactor txn");
    let cur_rev = rev_of(&r);
    if !r.succeeded() {
        let kv = failure_kv(&r).expect("compact_rev_key exists");
        return (false, kv.version(), cur_rev);
    }
    if rev != 0 {
        c.compact(rev, None).await.expect("compact");
    }
    (true, t + 1, cur_rev)
}

/// TestCompact, TestCompactConflict and the v1.34+ compact-revision watch.
async fn compactor_protocol(s: Server) {
    let mut c1 = s.client().await;
    let mut c2 = s.client().await;
    let key = "/registry/leases/kube-system/x";
    for i in 0..5 {
        c1.put(key, format!("{i}"), None).await.unwrap(); // 2..=6
    }

    // Bootstrap: two apiservers race with t = 0, rev = 0. One wins (T5
    // itself makes a revision), the other learns the winner's clock.
    let ((w1, t1, r1), (w2, t2, r2)) =
        tokio::join!(compactor_step(&mut c1, 0, 0), compactor_step(&mut c2, 0, 0));
    assert!(w1 ^ w2, "exactly one compactor wins");
    assert_eq!((t1, t2), (1, 1));
    assert_eq!((r1, r2), (7, 7));
    let (kv, rv) = get(&mut c1, "compact_rev_key").await;
    let kv = kv.unwrap();
    assert_eq!(
        (kv.value(), kv.version(), kv.mod_revision(), rv),
        (&b"0"[..], 1, 7, 7)
    );
    // Nothing was compacted at bootstrap.
    assert_eq!(get_at(&mut c1, key, 2).await.0.unwrap().value(), b"0");

    // W3: watch compact_rev_key from the Get's header revision.
    let mut w = c1
        .watch(
            "compact_rev_key",
            Some(WatchOptions::new().with_start_revision(rv)),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());

    for i in 5..10 {
        c1.put(key, format!("{i}"), None).await.unwrap(); // 8..=12
    }
    // Next interval: both race with t = 1 and the revision they saw (7).
    let ((w1, t1, r1), (w2, t2, r2)) = tokio::join!(
        compactor_step(&mut c1, t1, r1),
        compactor_step(&mut c2, t2, r2)
    );
    assert!(w1 ^ w2, "exactly one compactor wins");
    assert_eq!((t1, t2), (2, 2), "the loser learns the winner's time");
    assert_eq!((r1, r2), (13, 13));
    let (kv, _) = get(&mut c2, "compact_rev_key").await;
    let kv = kv.unwrap();
    assert_eq!(
        (kv.value(), kv.version(), kv.mod_revision()),
        (&b"7"[..], 2, 13)
    );
    // Compacted at exactly 7: 6 is gone, 7 readable.
    let e = c2
        .get(key, Some(GetOptions::new().with_revision(6)))
        .await
        .unwrap_err();
    assert_eq!(status(e), (Code::OutOfRange, COMPACTED.into()));
    assert_eq!(get_at(&mut c2, key, 7).await.0.unwrap().value(), b"4");
    // The watch sees both T5 writes; their values parse as integers.
    let got = collect(&mut w, 2).await;
    let seen: Vec<(i64, i64, i64)> = got
        .iter()
        .map(|e| (e.rev, e.version, e.value.parse::<i64>().expect("integer")))
        .collect();
    assert_eq!(seen, vec![(7, 1, 0), (13, 2, 7)]);

    // A stale compactor (t = 1) loses and catches up; with t = 2 it wins.
    let (won, t, rv) = compactor_step(&mut c1, 1, 13).await;
    assert_eq!((won, t, rv), (false, 2, 13));
    let (won, t, rv) = compactor_step(&mut c1, t, rv).await;
    assert_eq!((won, t, rv), (true, 3, 14));
    let e = c1
        .get(key, Some(GetOptions::new().with_revision(12)))
        .await
        .unwrap_err();
    assert_eq!(status(e), (Code::OutOfRange, COMPACTED.into()));
    let got = collect(&mut w, 1).await;
    assert_eq!(
        (got[0].rev, got[0].version, got[0].value.as_str()),
        (14, 3, "13")
    );
    // Compacting the same revision twice is refused.
    let e = c2.compact(13, None).await.unwrap_err();
    assert_eq!(status(e), (Code::OutOfRange, COMPACTED.into()));
}

// ---------------------------------------------------------------------------
// lease_manager.go: TTL objects

/// Waits for `n` events on `w`, for up to `secs` seconds.
async fn collect_within(w: &mut WatchStream, n: usize, secs: u64) -> Vec<Ev> {
    tokio::time::timeout(Duration::from_secs(secs), collect(w, n))
        .await
        .unwrap_or_else(|_| panic!("{n} events within {secs} s"))
}

/// TestCreateWithTTL, TestGuaranteedUpdateWithTTL: objects on one shared
/// lease (as the lease manager reuses it) expire together, with delete
/// events; an update that drops the lease keeps the object.
async fn ttl_objects_expire(s: Server) {
    let mut c = s.client().await;
    let prefix = "/registry/events/default/";
    let lease = c.lease_grant(3, None).await.unwrap();
    assert_eq!(lease.ttl(), 3);
    let l = lease.id();
    let e1 = format!("{prefix}e1");
    let e2 = format!("{prefix}e2");
    let e3 = format!("{prefix}e3");
    let e4 = format!("{prefix}e4");
    create(&mut c, &e1, "ev1", l).await.unwrap(); // 2
    create(&mut c, &e2, "ev2", 0).await.unwrap(); // 3
    update(&mut c, &e2, "ev2-ttl", 3, l).await.unwrap(); // 4, now on the lease
    create(&mut c, &e3, "ev3", l).await.unwrap(); // 5
    update(&mut c, &e3, "ev3-kept", 5, 0).await.unwrap(); // 6, lease dropped
    create(&mut c, &e4, "ev4", 0).await.unwrap(); // 7
    let (obj, _) = get(&mut c, &e2).await;
    assert_eq!(obj.unwrap().lease(), l);
    assert_eq!(get(&mut c, &e3).await.0.unwrap().lease(), 0);

    let mut w = c
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(8),
            ),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let got = collect_within(&mut w, 2, 10).await;
    assert!(got.iter().all(|e| e.kind == EventType::Delete), "{got:?}");
    assert_eq!(
        got.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        vec![e1.as_str(), e2.as_str()]
    );
    assert_eq!(
        got.iter().map(|e| e.prev.clone()).collect::<Vec<_>>(),
        vec![Some(("ev1".into(), 2)), Some(("ev2-ttl".into(), 4))]
    );
    assert_eq!(
        (got[0].rev, got[1].rev),
        (8, 8),
        "the lease's keys go in one revision"
    );
    let (_, all) = list_all(&mut c, prefix, 10).await;
    assert_eq!(keys(&all), vec![e3.clone(), e4.clone()]);
    let t = c.lease_time_to_live(l, None).await.unwrap();
    assert_eq!(t.ttl(), -1, "the lease is gone");
    // Writing with the expired lease fails as etcd fails it.
    let e = c
        .put(e1.as_str(), "late", Some(PutOptions::new().with_lease(l)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
}

/// The "master lease" style (`/registry/masterleases/<ip>`, the lease
/// endpoint reconciler): one lease shared by many keys, kept alive past its
/// TTL, then revoked: every key goes in one revision, with delete events.
async fn master_lease_keepalive_revoke(s: Server) {
    let mut c = s.client().await;
    let prefix = "/registry/masterleases/";
    let l = c.lease_grant(2, None).await.unwrap().id();
    let ips: Vec<String> = (1..=5).map(|i| format!("{prefix}10.0.0.{i}")).collect();
    for ip in &ips {
        create(&mut c, ip, "endpoint", l).await.unwrap(); // 2..=6
    }
    let mut w = c
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(7),
            ),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());

    let (mut keeper, mut responses) = c.lease_keep_alive(l).await.unwrap();
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        keeper.keep_alive().await.unwrap();
        let r = tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("keepalive answered")
            .unwrap()
            .unwrap();
        assert_eq!((r.id(), r.ttl()), (l, 2));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (rv, all) = list_all(&mut c, prefix, 2).await;
    assert_eq!(keys(&all), ips, "kept alive past its TTL");
    assert_eq!(rv, 6, "keepalives write nothing");
    let t = c
        .lease_time_to_live(
            l,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    let mut attached: Vec<String> = t
        .keys()
        .iter()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect();
    attached.sort();
    assert_eq!(attached, ips);
    assert_eq!(t.granted_ttl(), 2);
    assert!((0..=2).contains(&t.ttl()), "ttl {}", t.ttl());

    let r = c.lease_revoke(l).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 7);
    let got = collect_within(&mut w, 5, 10).await;
    for (e, ip) in got.iter().zip(&ips) {
        assert_eq!(
            (e.kind, e.key.as_str(), e.rev),
            (EventType::Delete, ip.as_str(), 7)
        );
        let (value, rev) = e.prev.clone().expect("prev_kv");
        assert_eq!(value, "endpoint");
        assert!((2..=6).contains(&rev));
    }
    let (rv, all) = list_all(&mut c, prefix, 2).await;
    assert_eq!((rv, all.len()), (7, 0));
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("keepalive answered")
        .unwrap()
        .unwrap();
    assert_eq!(r.ttl(), 0, "a revoked lease cannot be kept alive");
}

// ---------------------------------------------------------------------------
// factory/etcd3.go: health

/// R7: the `/registry/health` probe is a plain Get that succeeds whether
/// or not the key exists, and never writes.
async fn health_probe(s: Server) {
    let mut c = s.client().await;
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(2), c.get("/registry/health", None))
            .await
            .expect("probe within its 2 s timeout")
            .expect("probe ok");
        assert_eq!(
            (r.kvs().len(), r.count(), r.header().unwrap().revision()),
            (0, 0, 1)
        );
    }
    c.put("/registry/health", r#"{"health":"true"}"#, None)
        .await
        .unwrap();
    let r = c.get("/registry/health", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), br#"{"health":"true"}"#);
    assert_eq!(r.header().unwrap().revision(), 2);
    // The probe key is not a prefix: /registry/healthz is not returned.
    c.put("/registry/healthz", "x", None).await.unwrap();
    let r = c.get("/registry/health", None).await.unwrap();
    assert_eq!((r.count(), r.header().unwrap().revision()), (1, 3));
    c.delete("/registry/health", None).await.unwrap();
    let r = c.get("/registry/health", None).await.unwrap();
    assert_eq!((r.count(), r.header().unwrap().revision()), (0, 4));
}

// ---------------------------------------------------------------------------
// K3s

/// K3s's bootstrap data with an external datastore, through kine's client:
/// List = Range of prefix `/bootstrap` at revision 0, Create = T1 with an
/// empty failure branch, Update = T2, Delete = T3; the key is
/// `/bootstrap/<first 12 hex of sha256(token)>`.
async fn k3s_bootstrap(s: Server) {
    let mut server1 = s.client().await;
    let mut server2 = s.client().await;
    let token_a = "/bootstrap/5bd0b9a2e6f4"; // hash of the cluster token
    let token_b = "/bootstrap/c81e728d9d4c"; // hash of a rotated token
    let list = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            let r = c
                .get("/bootstrap", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            (r.header().unwrap().revision(), r.kvs().to_vec())
        }
    };
    // kine client Create: no failure ops.
    let k3s_create = |c: &mut Client, key: &'static str, value: &'static str| {
        let mut c = c.clone();
        async move {
            let r = c
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, value, None)]),
                )
                .await
                .unwrap();
            if !r.succeeded() {
                assert!(r.op_responses().is_empty(), "no failure ops were asked for");
            }
            (r.succeeded(), rev_of(&r))
        }
    };

    // First start: nothing there.
    let (rv, found) = list(&mut server1).await;
    assert_eq!((rv, found.len()), (1, 0));
    server1
        .put("/registry/namespaces/kube-system", "unrelated", None)
        .await
        .unwrap(); // 2
    // Two servers with the same token start at once: one creates the data,
    // the other's create fails ("key exists") and it reads the data back.
    let ((ok1, rev1), (ok2, rev2)) = tokio::join!(
        k3s_create(&mut server1, token_a, "encrypted-bootstrap-v1"),
        k3s_create(&mut server2, token_a, "encrypted-bootstrap-v2")
    );
    assert!(ok1 ^ ok2, "exactly one create wins");
    assert_eq!((rev1, rev2), (3, 3));
    let winner = if ok1 {
        "encrypted-bootstrap-v1"
    } else {
        "encrypted-bootstrap-v2"
    };
    let (rv, found) = list(&mut server2).await;
    assert_eq!(rv, 3);
    assert_eq!(keys(&found), vec![token_a.to_string()]);
    assert_eq!(found[0].value(), winner.as_bytes());
    assert_eq!((found[0].create_revision(), found[0].version()), (3, 1));
    // A server with another token finds data under a different hash and
    // refuses to start; the datastore is untouched.
    let (rv, found) = list(&mut server2).await;
    assert!(found.iter().all(|kv| kv.key() != token_b.as_bytes()));
    assert_eq!(rv, 3);

    // Certificate rotation rewrites the data (T2 on the listed revision);
    // a concurrent stale writer fails and gets the new data.
    let seen = found[0].mod_revision();
    let rev = update(&mut server1, token_a, "encrypted-bootstrap-v3", seen, 0).await;
    assert_eq!(rev.unwrap(), 4);
    let (rv, cur) = update(&mut server2, token_a, "stale", seen, 0)
        .await
        .unwrap_err();
    assert_eq!(rv, 4);
    assert_eq!(cur.unwrap().value(), b"encrypted-bootstrap-v3");

    // Token rotation: create under the new hash, then delete the old key
    // with its revision as precondition.
    assert_eq!(
        k3s_create(&mut server1, token_b, "reencrypted").await,
        (true, 5)
    );
    let (rev, deleted, prev) = delete(&mut server1, token_a, 4).await.unwrap();
    assert_eq!((rev, deleted), (6, 1));
    assert_eq!(prev.unwrap().value(), b"encrypted-bootstrap-v3");
    let (rv, found) = list(&mut server2).await;
    assert_eq!(rv, 6);
    assert_eq!(keys(&found), vec![token_b.to_string()]);
    assert_eq!(found[0].value(), b"reencrypted");
    let g = server2
        .get("/registry/namespaces/kube-system", None)
        .await
        .unwrap();
    assert_eq!(g.kvs()[0].value(), b"unrelated");
}

on_every_target!(
    create_and_get,
    guaranteed_update_conflicts,
    delete_with_preconditions,
    paginated_list,
    watch_from_resource_version,
    compactor_protocol,
    ttl_objects_expire,
    master_lease_keepalive_revoke,
    health_probe,
    k3s_bootstrap,
);

// ---------------------------------------------------------------------------
// Load: kine's configmap load test, with a checker

const CM: &str = "/registry/configmaps/load-test/";
const NAMES: u64 = 40;
const CLIENTS: usize = 16;
const LOAD_FOR: Duration = Duration::from_secs(3);

/// xorshift64*: enough randomness for an op mix, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// An acknowledged write: its revision, key and new value (`None`: delete).
#[derive(Debug, Clone, PartialEq)]
struct Ack {
    rev: i64,
    key: String,
    value: Option<Vec<u8>>,
}

/// A read: at header revision `rev`, `key` was `(mod revision, value)`.
#[derive(Debug)]
struct Obs {
    rev: i64,
    key: String,
    kv: Option<(i64, Vec<u8>)>,
}

/// A whole paginated list at revision `rev`: (key, mod revision).
#[derive(Debug)]
struct Snap {
    rev: i64,
    items: Vec<(String, i64)>,
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    obs: Vec<Obs>,
    snaps: Vec<Snap>,
    conflicts: usize,
}

impl Log {
    fn saw(&mut self, rev: i64, key: &str, kv: &Option<KeyValue>) {
        self.obs.push(Obs {
            rev,
            key: key.to_string(),
            kv: kv
                .as_ref()
                .map(|kv| (kv.mod_revision(), kv.value().to_vec())),
        });
    }
}

/// One client's share of the load: 20 % create (or read if it exists),
/// 50 % update (re-read on conflict, create on not found), 20 % delete
/// with a resourceVersion precondition, 10 % paginated list.
async fn load_client(mut c: Client, id: usize, until: Instant) -> Log {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((id as u64 + 1) << 17));
    let mut log = Log::default();
    let mut seq = 0u64;
    let mut value = |rng: &mut Rng| {
        seq += 1;
        let pad = 32 + rng.below(480) as usize;
        let mut v = format!("c{id}-n{seq}-").into_bytes();
        v.extend((0..pad).map(|i| b'a' + ((i as u64 + seq) % 26) as u8));
        v
    };
    while Instant::now() < until {
        let key = format!("{CM}test-{:02}", rng.below(NAMES));
        let dice = rng.below(100);
        if dice < 20 {
            let v = value(&mut rng);
            match create(&mut c, &key, v.clone(), 0).await {
                Ok(rev) => log.acks.push(Ack {
                    rev,
                    key,
                    value: Some(v),
                }),
                Err((rev, kv)) => log.saw(rev, &key, &kv),
            }
        } else if dice < 70 {
            let (mut cur, rv) = get(&mut c, &key).await;
            log.saw(rv, &key, &cur);
            for _ in 0..5 {
                let v = value(&mut rng);
                let result = match &cur {
                    None => create(&mut c, &key, v.clone(), 0).await,
                    Some(kv) => update(&mut c, &key, v.clone(), kv.mod_revision(), 0).await,
                };
                match result {
                    Ok(rev) => {
                        log.acks.push(Ack {
                            rev,
                            key: key.clone(),
                            value: Some(v),
                        });
                        break;
                    }
                    Err((rev, kv)) => {
                        log.conflicts += 1;
                        log.saw(rev, &key, &kv);
                        cur = kv;
                    }
                }
            }
        } else if dice < 90 {
            let (cur, rv) = get(&mut c, &key).await;
            log.saw(rv, &key, &cur);
            let Some(cur) = cur else { continue };
            match delete(&mut c, &key, cur.mod_revision()).await {
                Ok((rev, deleted, prev)) => {
                    assert_eq!(deleted, 1);
                    let prev = prev.expect("prev_kv");
                    assert_eq!(
                        (prev.mod_revision(), prev.value()),
                        (cur.mod_revision(), cur.value()),
                        "deleted what the precondition named"
                    );
                    log.acks.push(Ack {
                        rev,
                        key,
                        value: None,
                    });
                }
                Err((rev, kv)) => {
                    log.conflicts += 1;
                    log.saw(rev, &key, &kv);
                }
            }
        } else {
            let (rev, items) = list_all(&mut c, CM, 7).await;
            log.snaps.push(Snap {
                rev,
                items: items
                    .iter()
                    .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
                    .collect(),
            });
        }
    }
    log
}

/// The state of one key while replaying the watch stream.
#[derive(Debug, Clone, PartialEq)]
struct Obj {
    value: Vec<u8>,
    create: i64,
    rev: i64,
    version: i64,
}

/// An event as the load watcher records it (values are binary-safe).
#[derive(Debug, Clone)]
struct LoadEv {
    kind: EventType,
    key: String,
    value: Vec<u8>,
    create: i64,
    rev: i64,
    version: i64,
    prev: Option<(Vec<u8>, i64)>,
}

async fn configmap_load(s: Server) {
    let mut c = s.client().await;
    // Some objects before the list the watch starts from.
    for i in 0..20 {
        create(&mut c, &format!("{CM}test-{i:02}"), format!("seed-{i}"), 0)
            .await
            .unwrap();
    }
    c.put("/registry/configmaps/other/x", "other namespace", None)
        .await
        .unwrap();
    let (rv0, initial) = list_all(&mut c, CM, 7).await;
    assert_eq!((rv0, initial.len()), (22, 20));

    // The reflector: watch from the list's revision + 1, recording all.
    let mut w = c
        .watch(
            CM,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_progress_notify()
                    .with_start_revision(rv0 + 1),
            ),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let target = Arc::new(AtomicI64::new(i64::MAX));
    let watcher = {
        let target = target.clone();
        tokio::spawn(async move {
            let mut events: Vec<LoadEv> = Vec::new();
            loop {
                let last = events.last().map_or(rv0, |e| e.rev);
                if last >= target.load(Ordering::SeqCst) {
                    return events;
                }
                let Ok(r) = tokio::time::timeout(Duration::from_millis(200), w.message()).await
                else {
                    continue;
                };
                let r = r.expect("watch ok").expect("watch open");
                assert!(!r.canceled(), "watch canceled: {r:?}");
                for e in r.events() {
                    let kv = e.kv().unwrap();
                    events.push(LoadEv {
                        kind: e.event_type(),
                        key: kv.key_str().unwrap().to_string(),
                        value: kv.value().to_vec(),
                        create: kv.create_revision(),
                        rev: kv.mod_revision(),
                        version: kv.version(),
                        prev: e.prev_kv().map(|p| (p.value().to_vec(), p.mod_revision())),
                    });
                }
            }
        })
    };

    let until = Instant::now() + LOAD_FOR;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(load_client(c.clone(), id, until)))
        .collect();
    let mut acks = Vec::new();
    let mut obs = Vec::new();
    let mut snaps = Vec::new();
    let mut conflicts = 0;
    for t in clients {
        let log = t.await.expect("load client");
        acks.extend(log.acks);
        obs.extend(log.obs);
        snaps.extend(log.snaps);
        conflicts += log.conflicts;
    }
    let final_rev = c
        .get("/registry/health", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    target.store(final_rev, Ordering::SeqCst);
    let events = tokio::time::timeout(WAIT, watcher)
        .await
        .expect("watcher reaches the final revision")
        .unwrap();
    let (list_rev, final_list) = list_all(&mut c, CM, 7).await;
    assert_eq!(list_rev, final_rev, "no writes after the load");
    eprintln!(
        "{:?}: {} writes, {} conflicts, {} reads, {} lists, {} events",
        s.target,
        acks.len(),
        conflicts,
        obs.len(),
        snaps.len(),
        events.len()
    );
    assert!(
        acks.len() >= 50,
        "the load made progress: {} writes",
        acks.len()
    );
    assert!(acks.iter().any(|a| a.value.is_none()), "some deletes");
    assert!(!snaps.is_empty(), "some lists");

    // Every write has its own revision: acknowledged revisions are exactly
    // rv0+1 ..= final, and so are the watch's, strictly increasing.
    acks.sort_by_key(|a| a.rev);
    let ack_revs: Vec<i64> = acks.iter().map(|a| a.rev).collect();
    let all_revs: Vec<i64> = (rv0 + 1..=final_rev).collect();
    assert_eq!(
        ack_revs, all_revs,
        "acknowledged revisions are dense and unique"
    );
    let ev_revs: Vec<i64> = events.iter().map(|e| e.rev).collect();
    assert!(
        ev_revs.windows(2).all(|w| w[0] < w[1]),
        "watch revisions strictly increase"
    );
    assert_eq!(ev_revs, all_revs, "the watch saw every revision once");
    // No lost update, no phantom event: the watch stream is exactly the
    // acknowledged writes.
    for (a, e) in acks.iter().zip(&events) {
        let kind = if a.value.is_some() {
            EventType::Put
        } else {
            EventType::Delete
        };
        assert_eq!(
            (a.rev, a.key.as_str(), kind),
            (e.rev, e.key.as_str(), e.kind),
            "event for the write at {}",
            a.rev
        );
        if let Some(v) = &a.value {
            assert!(
                e.value == *v,
                "value of the write at {}: watched {:?}, written {:?}",
                a.rev,
                String::from_utf8_lossy(&e.value),
                String::from_utf8_lossy(v)
            );
        }
    }

    // Replay the watch over the initial list, checking every event's
    // create revision, version and prev_kv against the replayed state, and
    // every read and list made during the load against the state at its
    // revision.
    let mut state: BTreeMap<String, Obj> = initial
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                Obj {
                    value: kv.value().to_vec(),
                    create: kv.create_revision(),
                    rev: kv.mod_revision(),
                    version: kv.version(),
                },
            )
        })
        .collect();
    obs.sort_by_key(|o| o.rev);
    snaps.sort_by_key(|s| s.rev);
    let (mut oi, mut si) = (0, 0);
    let mut check_reads = |state: &BTreeMap<String, Obj>, upto: i64| {
        while oi < obs.len() && obs[oi].rev <= upto {
            let o = &obs[oi];
            let want = state.get(&o.key).map(|s| (s.rev, s.value.clone()));
            assert!(
                o.kv == want,
                "read of {} at {} saw {:?}, state is {:?}",
                o.key,
                o.rev,
                o.kv.as_ref().map(|kv| kv.0),
                want.map(|kv| kv.0)
            );
            oi += 1;
        }
        while si < snaps.len() && snaps[si].rev <= upto {
            let want: Vec<(String, i64)> = state.iter().map(|(k, s)| (k.clone(), s.rev)).collect();
            assert_eq!(snaps[si].items, want, "list at {}", snaps[si].rev);
            si += 1;
        }
    };
    check_reads(&state, rv0);
    for e in &events {
        let old = state.get(&e.key).cloned();
        match e.kind {
            EventType::Put => {
                let new = match &old {
                    None => {
                        assert_eq!(e.prev, None, "a create has no prev_kv: {e:?}");
                        Obj {
                            value: e.value.clone(),
                            create: e.rev,
                            rev: e.rev,
                            version: 1,
                        }
                    }
                    Some(o) => {
                        assert_eq!(
                            e.prev,
                            Some((o.value.clone(), o.rev)),
                            "prev_kv at {}",
                            e.rev
                        );
                        Obj {
                            value: e.value.clone(),
                            create: o.create,
                            rev: e.rev,
                            version: o.version + 1,
                        }
                    }
                };
                assert_eq!(
                    (e.create, e.version),
                    (new.create, new.version),
                    "create revision and version at {}",
                    e.rev
                );
                state.insert(e.key.clone(), new);
            }
            EventType::Delete => {
                let o = old.unwrap_or_else(|| panic!("delete of a missing key at {}", e.rev));
                assert_eq!(
                    e.prev,
                    Some((o.value.clone(), o.rev)),
                    "prev_kv at {}",
                    e.rev
                );
                state.remove(&e.key);
            }
        }
        check_reads(&state, e.rev);
    }
    check_reads(&state, i64::MAX);

    // The final list is the replayed state…
    let listed: BTreeMap<String, Obj> = final_list
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                Obj {
                    value: kv.value().to_vec(),
                    create: kv.create_revision(),
                    rev: kv.mod_revision(),
                    version: kv.version(),
                },
            )
        })
        .collect();
    assert!(
        listed == state,
        "final list differs from the replayed watch"
    );
    // …and, no phantom key: exactly the keys whose last acknowledged write
    // was a create or update, with that write's value.
    let mut by_acks: BTreeMap<String, Vec<u8>> = initial
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value().to_vec()))
        .collect();
    for a in &acks {
        match &a.value {
            Some(v) => by_acks.insert(a.key.clone(), v.clone()),
            None => by_acks.remove(&a.key),
        };
    }
    let final_values: BTreeMap<String, Vec<u8>> =
        listed.into_iter().map(|(k, o)| (k, o.value)).collect();
    assert!(
        final_values == by_acks,
        "final list keys {:?} != keys of the last acknowledged writes {:?}",
        final_values.keys().collect::<Vec<_>>(),
        by_acks.keys().collect::<Vec<_>>()
    );
    // The other namespace was not touched.
    let g = c.get("/registry/configmaps/other/x", None).await.unwrap();
    assert_eq!(g.kvs()[0].mod_revision(), 22);
}

on_every_target!(configmap_load);
