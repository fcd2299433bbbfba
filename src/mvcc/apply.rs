//! Applying one write request inside the writer's database transaction, with
//! etcd's semantics: Txn compares are evaluated over the whole nested tree
//! against the state before the request, the chosen branches are checked
//! (leases, `ignore_*` keys, range revisions), then applied in order so that
//! later ops see earlier ones. A request that fails its checks changes
//! nothing; one that changes any key advances the revision by exactly one.
//!
//! Reads come from the key index at the batch's newest revision, which
//! includes the changes this batch made so far (readers outside the
//! writer never look above the committed revision); each change is
//! recorded in the index as it is applied, and taken out again if the
//! batch does not commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::mvcc::index::Found;
use crate::mvcc::memory::{Memory, ValueSource, key_value};
use crate::mvcc::range::{self, ReadPoint};
use crate::mvcc::request::{
    Compare, CompareResult, CompareTarget, DeleteRequest, DeleteResult, Op, OpResult, PutRequest,
    PutResult, TxnRequest, TxnResult,
};
use crate::mvcc::writer::{BoxFut, Write, WriteSettings};
use crate::sql::{DbTx, LogRow, Meta};
use crate::types::{Event, EventKind, KeyRange, KeyValue, LeaseId, Rev, Revision};

/// The writer's view of the batch being built.
pub struct BatchState {
    /// The newest revision assigned so far (committed or in this batch).
    pub revision: Revision,
    pub compact: Revision,
    /// Log rows not yet written to the database.
    pub pending_log: Vec<LogRow>,
    /// Events per revision assigned in this batch, in order.
    pub events: Vec<(Revision, Vec<Event>)>,
    pub settings: WriteSettings,
    /// The batch changes what other instances must learn at once even if
    /// it adds no revision (the auth store): it notifies them anyway.
    pub notify: bool,
    /// The key index and value cache.
    pub mem: Arc<Memory>,
    /// Keys this batch changed in the index: taken out again if it does
    /// not commit.
    pub touched: Vec<Bytes>,
    /// Values of this batch's changes, by position (cached once
    /// committed).
    pub values: HashMap<Rev, Bytes>,
    /// Positions of the versions this batch replaced or deleted: their
    /// values leave the cache once it commits (history is read from the
    /// log), so that the cache holds about the live data set.
    pub superseded: Vec<Rev>,
    /// Whether leases exist, as read for the whole batch before it applies
    /// (the leases its puts name) and as its grants and revokes left them.
    pub leases: HashMap<LeaseId, bool>,
}

/// Values as the writer reads them: its own batch's first, then the cache
/// and its transaction.
struct BatchValues<'a> {
    tx: &'a mut DbTx,
    own: &'a HashMap<Rev, Bytes>,
}

impl ValueSource for BatchValues<'_> {
    fn own(&self, rev: Rev) -> Option<Bytes> {
        self.own.get(&rev).cloned()
    }

    fn fetch<'a>(&'a mut self, revs: &'a [Rev]) -> BoxFut<'a, Vec<(Rev, Bytes)>> {
        Box::pin(self.tx.values(revs))
    }
}

impl BatchState {
    /// A batch starting from the locked meta row.
    pub fn new(meta: Meta, settings: WriteSettings, mem: Arc<Memory>) -> BatchState {
        BatchState {
            revision: meta.revision,
            compact: meta.compact_revision,
            pending_log: Vec::new(),
            events: Vec::new(),
            settings,
            notify: false,
            mem,
            touched: Vec::new(),
            values: HashMap::new(),
            superseded: Vec::new(),
            leases: HashMap::new(),
        }
    }

    /// Whether lease `id` exists now (in this batch).
    pub async fn lease_exists(&self, tx: &mut DbTx, id: LeaseId) -> Result<bool> {
        match self.leases.get(&id) {
            Some(known) => Ok(*known),
            None => Ok(tx.lease_get(id).await?.is_some()),
        }
    }

    /// Key-values for what the index found, values read as the writer
    /// reads them.
    async fn with_values(&self, tx: &mut DbTx, found: Vec<Found>) -> Result<Vec<KeyValue>> {
        let mut src = BatchValues {
            tx,
            own: &self.values,
        };
        self.mem.with_values(&mut src, found).await
    }

    /// The live version of `key` at `rev`, with its value and position.
    async fn get(
        &self,
        tx: &mut DbTx,
        key: &[u8],
        rev: Revision,
    ) -> Result<Option<(KeyValue, Rev)>> {
        let found = self.mem.read().get(key, rev);
        match found {
            Some(f) => {
                let at = f.rev;
                Ok(self
                    .with_values(tx, vec![f])
                    .await?
                    .pop()
                    .map(|kv| (kv, at)))
            }
            None => Ok(None),
        }
    }
}

/// The changes one request makes; all share `revision`.
struct Changes {
    revision: Revision,
    events: Vec<Event>,
}

impl Changes {
    fn read_point(&self, state: &BatchState) -> ReadPoint {
        ReadPoint {
            current: if self.events.is_empty() {
                state.revision
            } else {
                self.revision
            },
            compact: state.compact,
        }
    }

    /// The position of the request's next change.
    fn next(&self) -> Rev {
        Rev {
            main: self.revision,
            sub: self.events.len() as i64,
        }
    }
}

/// Checks `(compares, success, failure)` for keys written twice, as etcd's
/// `checkIntervals`: a key put twice on one path, or put inside a range
/// deleted on the same path, is rejected. Puts in the two branches of a
/// nested Txn may repeat each other since only one branch runs.
pub fn check_intervals(ops: &[Op]) -> Result<(HashSet<Bytes>, Vec<KeyRange>)> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete(d) => Some(d.range.clone()),
            _ => None,
        })
        .collect();
    let hits = |dels: &[KeyRange], key: &Bytes| dels.iter().any(|d| d.contains(key));
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Op::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || hits(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Op::Put(p) = op else { continue };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

impl Write for PutRequest {
    type Output = PutResult;
    fn apply<'a>(&'a self, tx: &'a mut DbTx, state: &'a mut BatchState) -> BoxFut<'a, PutResult> {
        Box::pin(put(tx, state, self))
    }

    fn leases(&self, out: &mut Vec<LeaseId>) {
        if self.lease != 0 && !self.ignore_lease {
            out.push(self.lease);
        }
    }
}

impl Write for DeleteRequest {
    type Output = DeleteResult;
    fn apply<'a>(
        &'a self,
        tx: &'a mut DbTx,
        state: &'a mut BatchState,
    ) -> BoxFut<'a, DeleteResult> {
        Box::pin(delete(tx, state, self))
    }
}

impl Write for TxnRequest {
    type Output = TxnResult;
    fn apply<'a>(&'a self, tx: &'a mut DbTx, state: &'a mut BatchState) -> BoxFut<'a, TxnResult> {
        Box::pin(txn(tx, state, self))
    }

    fn leases(&self, out: &mut Vec<LeaseId>) {
        for op in self.success.iter().chain(&self.failure) {
            match op {
                Op::Put(p) => p.leases(out),
                Op::Txn(t) => t.leases(out),
                Op::Range(_) | Op::Delete(_) => {}
            }
        }
    }
}

async fn put(tx: &mut DbTx, state: &mut BatchState, req: &PutRequest) -> Result<PutResult> {
    let mut changes = Changes {
        revision: state.revision + 1,
        events: Vec::new(),
    };
    check_put(tx, state, req).await?;
    let result = apply_put(tx, state, &mut changes, req).await?;
    finish(state, changes);
    Ok(result)
}

async fn delete(
    tx: &mut DbTx,
    state: &mut BatchState,
    req: &DeleteRequest,
) -> Result<DeleteResult> {
    let mut changes = Changes {
        revision: state.revision + 1,
        events: Vec::new(),
    };
    let result = apply_delete(tx, state, &mut changes, req).await?;
    finish(state, changes);
    Ok(result)
}

async fn txn(tx: &mut DbTx, state: &mut BatchState, req: &TxnRequest) -> Result<TxnResult> {
    let mut path = Vec::new();
    compare_path(tx, state, req, &mut path).await?;
    let mut cursor = 0;
    check_txn(tx, state, req, &path, &mut cursor).await?;
    let mut changes = Changes {
        revision: state.revision + 1,
        events: Vec::new(),
    };
    let mut cursor = 0;
    let result = apply_txn(tx, state, &mut changes, req, &path, &mut cursor).await?;
    finish(state, changes);
    Ok(result)
}

/// Deletes the keys (with their values) in one revision: lease
/// revocation. They are live at the batch's newest revision.
pub async fn delete_keys(tx: &mut DbTx, state: &mut BatchState, keys: Vec<Found>) -> Result<()> {
    state.superseded.extend(keys.iter().map(|f| f.rev));
    let prevs = state.with_values(tx, keys).await?;
    let mut changes = Changes {
        revision: state.revision + 1,
        events: Vec::new(),
    };
    record_deletes(state, &mut changes, prevs);
    finish(state, changes);
    Ok(())
}

/// Records the deletion of live keys `prevs` in the index and as events.
fn record_deletes(state: &mut BatchState, changes: &mut Changes, prevs: Vec<KeyValue>) {
    for prev in prevs {
        state.touched.push(prev.key.clone());
        state.mem.write().delete(&prev.key, changes.next());
        changes.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: prev.key.clone(),
                mod_revision: changes.revision,
                ..KeyValue::default()
            },
            prev_kv: Some(prev),
        });
    }
}

/// Records a request's changes in the batch: log rows and events.
fn finish(state: &mut BatchState, changes: Changes) {
    if changes.events.is_empty() {
        return;
    }
    state.revision = changes.revision;
    for (sub, ev) in changes.events.iter().enumerate() {
        state.pending_log.push(LogRow {
            revision: changes.revision,
            sub: sub as i64,
            kv: ev.kv.clone(),
            deleted: ev.kind == EventKind::Delete,
            prev_revision: ev.prev_kv.as_ref().map_or(0, |p| p.mod_revision),
        });
    }
    state.events.push((changes.revision, changes.events));
}

async fn check_put(tx: &mut DbTx, state: &BatchState, req: &PutRequest) -> Result<()> {
    if (req.ignore_value || req.ignore_lease)
        && state.mem.read().get(&req.key, state.revision).is_none()
    {
        return Err(Error::KeyNotFound);
    }
    if !req.ignore_lease && req.lease != 0 && !state.lease_exists(tx, req.lease).await? {
        return Err(Error::LeaseNotFound(req.lease));
    }
    Ok(())
}

async fn apply_put(
    tx: &mut DbTx,
    state: &mut BatchState,
    changes: &mut Changes,
    req: &PutRequest,
) -> Result<PutResult> {
    // `check_put` ran before anything was applied, and `check_intervals`
    // forbids deleting the key earlier on the same path, so `prev` exists
    // whenever an `ignore_*` flag is set.
    let prev = match state.get(tx, &req.key, changes.revision).await? {
        Some((kv, at)) => {
            state.superseded.push(at);
            Some(kv)
        }
        None => None,
    };
    let (value, lease) = match &prev {
        Some(p) => (
            if req.ignore_value {
                p.value.clone()
            } else {
                // Copied: the request's value is a slice of the whole
                // request buffer, which the cache would keep alive.
                Bytes::copy_from_slice(&req.value)
            },
            if req.ignore_lease { p.lease } else { req.lease },
        ),
        None => (Bytes::copy_from_slice(&req.value), req.lease),
    };
    let rev = changes.next();
    state.touched.push(req.key.clone());
    let (_, new) = state.mem.write().put(&req.key, rev, lease);
    state.values.insert(rev, value.clone());
    changes.events.push(Event {
        kind: EventKind::Put,
        kv: key_value(new, value),
        prev_kv: prev.clone(),
    });
    Ok(PutResult {
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

async fn apply_delete(
    tx: &mut DbTx,
    state: &mut BatchState,
    changes: &mut Changes,
    req: &DeleteRequest,
) -> Result<DeleteResult> {
    let found = state.mem.read().range(&req.range, changes.revision, None);
    state.superseded.extend(found.iter().map(|f| f.rev));
    let prevs = state.with_values(tx, found).await?;
    let deleted = prevs.len() as i64;
    let prev_kvs = if req.prev_kv {
        prevs.clone()
    } else {
        Vec::new()
    };
    record_deletes(state, changes, prevs);
    Ok(DeleteResult { deleted, prev_kvs })
}

/// Evaluates every compare on the path the Txn will take, nested Txns
/// included, against the state before the request (etcd `compareToPath`).
fn compare_path<'a>(
    tx: &'a mut DbTx,
    state: &'a BatchState,
    req: &'a TxnRequest,
    path: &'a mut Vec<bool>,
) -> BoxFut<'a, ()> {
    Box::pin(async move {
        let mut ok = true;
        for c in &req.compare {
            if !compare(tx, state, c).await? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            if let Op::Txn(inner) = op {
                compare_path(tx, state, inner, path).await?;
            }
        }
        Ok(())
    })
}

async fn compare(tx: &mut DbTx, state: &BatchState, c: &Compare) -> Result<bool> {
    let found = {
        let ix = state.mem.read();
        if c.range_end.is_empty() {
            ix.get(&c.key, state.revision).into_iter().collect()
        } else {
            ix.range(
                &KeyRange::from_etcd(&c.key, &c.range_end),
                state.revision,
                None,
            )
        }
    };
    if found.is_empty() {
        if matches!(c.target, CompareTarget::Value(_)) {
            // A missing key has no value to compare (etcd `applyCompare`).
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    let kvs = if matches!(c.target, CompareTarget::Value(_)) {
        state.with_values(tx, found).await?
    } else {
        found
            .into_iter()
            .map(|f| key_value(f, Bytes::new()))
            .collect()
    };
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Value(v) => kv.value.as_ref().cmp(v.as_ref()),
        CompareTarget::Create(r) => kv.create_revision.cmp(r),
        CompareTarget::Mod(r) => kv.mod_revision.cmp(r),
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Lease(l) => kv.lease.cmp(l),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
        CompareResult::Unknown => true,
    }
}

/// Checks the ops on the chosen path before anything is applied.
fn check_txn<'a>(
    tx: &'a mut DbTx,
    state: &'a BatchState,
    req: &'a TxnRequest,
    path: &'a [bool],
    cursor: &'a mut usize,
) -> BoxFut<'a, ()> {
    Box::pin(async move {
        let ok = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            match op {
                Op::Range(r) => {
                    let rev = r.options.revision;
                    if rev > state.revision {
                        return Err(Error::FutureRevision {
                            required: rev,
                            current: state.revision,
                        });
                    }
                    if rev > 0 && rev < state.compact {
                        return Err(Error::Compacted {
                            required: rev,
                            compacted: state.compact,
                        });
                    }
                }
                Op::Put(p) => check_put(tx, state, p).await?,
                Op::Delete(_) => {}
                Op::Txn(inner) => check_txn(tx, state, inner, path, cursor).await?,
            }
        }
        Ok(())
    })
}

fn apply_txn<'a>(
    tx: &'a mut DbTx,
    state: &'a mut BatchState,
    changes: &'a mut Changes,
    req: &'a TxnRequest,
    path: &'a [bool],
    cursor: &'a mut usize,
) -> BoxFut<'a, TxnResult> {
    Box::pin(async move {
        let succeeded = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        let mut revisions = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                Op::Range(r) => {
                    let at = changes.read_point(state);
                    let mem = state.mem.clone();
                    let mut src = BatchValues {
                        tx,
                        own: &state.values,
                    };
                    OpResult::Range(range::range(&mem, &mut src, r, at).await?)
                }
                Op::Put(p) => OpResult::Put(apply_put(tx, state, changes, p).await?),
                Op::Delete(d) => OpResult::Delete(apply_delete(tx, state, changes, d).await?),
                Op::Txn(inner) => {
                    OpResult::Txn(apply_txn(tx, state, changes, inner, path, cursor).await?)
                }
            });
            revisions.push(changes.read_point(state).current);
        }
        Ok(TxnResult {
            succeeded,
            responses,
            revisions,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::request::{RangeOptions, RangeRequest};
    use crate::mvcc::test_store;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put_req(k: &str, v: &str) -> PutRequest {
        PutRequest {
            key: b(k),
            value: b(v),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        }
    }

    fn get(k: &str) -> Op {
        Op::Range(RangeRequest {
            range: KeyRange::from_etcd(&b(k), &Bytes::new()),
            options: RangeOptions::default(),
        })
    }

    fn cmp(k: &str, end: &str, result: CompareResult, target: CompareTarget) -> Compare {
        Compare {
            result,
            target,
            key: b(k),
            range_end: b(end),
        }
    }

    /// kube-apiserver's create: [MOD(k) == 0] → [Put] else [Range(k)].
    fn create(k: &str, v: &str) -> TxnRequest {
        TxnRequest {
            compare: vec![cmp(k, "", CompareResult::Equal, CompareTarget::Mod(0))],
            success: vec![Op::Put(put_req(k, v))],
            failure: vec![get(k)],
        }
    }

    #[tokio::test]
    async fn a_failed_compare_runs_the_other_branch_and_writes_nothing() {
        let store = test_store().await;
        let (r, rev) = store.write(create("k", "1")).await.unwrap();
        assert!(r.succeeded);
        assert_eq!(rev, 2, "one revision for the create");
        let (r, rev) = store.write(create("k", "2")).await.unwrap();
        assert!(!r.succeeded);
        assert_eq!(rev, 2, "a Txn that changes nothing makes no revision");
        match &r.responses[..] {
            [OpResult::Range(got)] => {
                assert_eq!(got.kvs.len(), 1);
                assert_eq!(got.kvs[0].value, b("1"));
                assert_eq!(got.kvs[0].mod_revision, 2);
            }
            other => panic!("expected the failure branch's Range, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn nested_compares_see_the_state_before_the_request() {
        let store = test_store().await;
        store.write(put_req("a", "1")).await.unwrap();
        // Outer: a's version is 1 → success, which puts a and runs an inner
        // Txn comparing a's version to 1 again: still true, because every
        // compare on the path is evaluated before anything is applied.
        let inner = TxnRequest {
            compare: vec![cmp(
                "a",
                "",
                CompareResult::Equal,
                CompareTarget::Version(1),
            )],
            success: vec![Op::Put(put_req("inner-then", "x"))],
            failure: vec![Op::Put(put_req("inner-else", "x"))],
        };
        let outer = TxnRequest {
            compare: vec![cmp(
                "a",
                "",
                CompareResult::Equal,
                CompareTarget::Version(1),
            )],
            success: vec![Op::Put(put_req("a", "2")), Op::Txn(inner)],
            failure: vec![],
        };
        let (r, rev) = store.write(outer).await.unwrap();
        assert!(r.succeeded);
        assert!(matches!(&r.responses[1], OpResult::Txn(t) if t.succeeded));
        assert_eq!(rev, 3, "all changes of one Txn share one revision");
        let (then, _) = store
            .range(&RangeRequest {
                range: KeyRange::from_etcd(&b("inner-then"), &Bytes::new()),
                options: RangeOptions::default(),
            })
            .await
            .unwrap();
        assert_eq!(then.kvs.len(), 1);
        assert_eq!(then.kvs[0].mod_revision, 3);
    }

    #[tokio::test]
    async fn range_compares_need_every_key_and_values_need_a_key() {
        let store = test_store().await;
        store.write(put_req("p/1", "1")).await.unwrap();
        store.write(put_req("p/2", "2")).await.unwrap();
        let txn = |c: Compare| TxnRequest {
            compare: vec![c],
            success: vec![],
            failure: vec![],
        };
        let ok = |c| {
            let store = store.clone();
            async move { store.write(txn(c)).await.unwrap().0.succeeded }
        };
        assert!(
            ok(cmp(
                "p/",
                "p0",
                CompareResult::Greater,
                CompareTarget::Mod(1)
            ))
            .await
        );
        assert!(
            !ok(cmp(
                "p/",
                "p0",
                CompareResult::Equal,
                CompareTarget::Value(b("1"))
            ))
            .await
        );
        assert!(
            ok(cmp(
                "p/",
                "p0",
                CompareResult::Less,
                CompareTarget::Value(b("3"))
            ))
            .await
        );
        // A missing key's version/revisions are 0, but it has no value.
        assert!(
            ok(cmp(
                "none",
                "",
                CompareResult::Equal,
                CompareTarget::Version(0)
            ))
            .await
        );
        assert!(
            !ok(cmp(
                "none",
                "",
                CompareResult::NotEqual,
                CompareTarget::Value(b("x"))
            ))
            .await
        );
    }

    #[tokio::test]
    async fn a_request_error_changes_nothing() {
        let store = test_store().await;
        let (_, before) = store.write(put_req("k", "1")).await.unwrap();
        // Put k, then put with a lease that does not exist: the whole Txn
        // fails before applying anything.
        let bad = TxnRequest {
            compare: vec![],
            success: vec![
                Op::Put(put_req("j", "1")),
                Op::Put(PutRequest {
                    lease: 42,
                    ..put_req("k", "2")
                }),
            ],
            failure: vec![],
        };
        assert!(matches!(
            store.write(bad).await,
            Err(Error::LeaseNotFound(42))
        ));
        let (r, rev) = store.write(put_req("k", "3")).await.unwrap();
        assert_eq!(rev, before + 1, "no revision was used by the failed Txn");
        assert!(r.prev_kv.is_none());
        let (j, _) = store
            .range(&RangeRequest {
                range: KeyRange::from_etcd(&b("j"), &Bytes::new()),
                options: RangeOptions::default(),
            })
            .await
            .unwrap();
        assert!(j.kvs.is_empty(), "nothing of the failed Txn was applied");
    }

    fn put(k: &'static str) -> Op {
        Op::Put(PutRequest {
            key: Bytes::from_static(k.as_bytes()),
            value: Bytes::new(),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        })
    }

    fn del(k: &'static str, end: &'static str) -> Op {
        Op::Delete(DeleteRequest {
            range: KeyRange::from_etcd(
                &Bytes::from_static(k.as_bytes()),
                &Bytes::from_static(end.as_bytes()),
            ),
            prev_kv: false,
        })
    }

    fn txn(success: Vec<Op>, failure: Vec<Op>) -> Op {
        Op::Txn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })
    }

    #[test]
    fn intervals_follow_etcd() {
        assert!(check_intervals(&[put("a"), put("b")]).is_ok());
        assert!(check_intervals(&[put("a"), put("a")]).is_err());
        assert!(check_intervals(&[del("a", "c"), put("b")]).is_err());
        assert!(check_intervals(&[del("a", ""), put("b")]).is_ok());
        assert!(check_intervals(&[del("a", ""), del("a", "")]).is_ok());
        // Branches of one nested Txn are exclusive.
        assert!(check_intervals(&[txn(vec![put("a")], vec![put("a")])]).is_ok());
        assert!(check_intervals(&[put("a"), txn(vec![put("a")], vec![])]).is_err());
        assert!(check_intervals(&[txn(vec![del("a", "z")], vec![]), put("b")]).is_err());
    }
}
