//! kube-apiserver's and K3s's use of etcd where k8s.io/apiserver's own
//! storage suite (scripts/kubernetes.sh, docs/kubernetes.md) does not
//! reach, on every target (real etcd and passthrough included): TTL'd
//! objects really expiring, one lease kept alive for many keys and revoked,
//! the `/registry/health` probe, K3s's bootstrap keys, and a load scenario
//! in the style of kine's configmap load test, checked for lost updates,
//! phantom keys and a watch stream that disagrees with the final state.
//!
//! The apiserver's call shapes: Get (Range limit 1), List (Range with
//! `range_end` = prefix end, a limit, and later pages pinned to the first
//! page's revision), create (Txn [MOD(K) == 0] → [Put]), update (Txn [MOD(K) ==
//! seen] → [Put] else [Range]), delete (Txn [MOD(K) == seen] →
//! [DeleteRange] else [Range]), LeaseGrant for TTL objects.

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
