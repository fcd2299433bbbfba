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

mod bootstrap;
mod leases;
mod load;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchOptions, WatchResponse, WatchStream,
};
use tonic::Code;

use crate::harness::next_watch_response as next;

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
