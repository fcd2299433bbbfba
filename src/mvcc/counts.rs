//! Counts of key ranges at the current revision, kept from one read to the
//! next: a range counted at revision R1 is counted at R2 by looking only at
//! the keys the watch hub's events of (R1, R2] touch in it (each checked in
//! the index at both revisions), not at every key of the range again. A
//! count-only Range over a 10,000-key prefix then costs what the writes
//! since the last one did.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::mvcc::hub::{Hub, Since};
use crate::mvcc::memory::Memory;
use crate::types::{KeyRange, Revision};

/// Ranges remembered at most (beyond: forgotten all at once).
const MAX_RANGES: usize = 1024;
/// Revisions of events looked at at most; beyond, the range is counted
/// again.
const MAX_REVISIONS: i64 = 1024;

#[derive(Default)]
pub struct Counts {
    known: Mutex<HashMap<KeyRange, (Revision, i64)>>,
}

impl Counts {
    /// How many keys of `range` are live at `rev` (the index's current
    /// revision).
    pub fn count(&self, mem: &Memory, hub: &Hub, range: &KeyRange, rev: Revision) -> i64 {
        let known = self.lock().get(range).copied();
        let n = match known {
            Some((at, n)) if at == rev => return n,
            Some((at, n)) if at < rev && rev - at <= MAX_REVISIONS => {
                match Self::moved(mem, hub, range, at, rev) {
                    Some(delta) => n + delta,
                    None => mem.read().count(range, rev),
                }
            }
            _ => mem.read().count(range, rev),
        };
        let mut known = self.lock();
        if known.len() >= MAX_RANGES {
            known.clear();
        }
        known.insert(range.clone(), (rev, n));
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyRange, (Revision, i64)>> {
        // Every change is one map operation.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How the count of `range` moved from `from` to `to`, from the hub's
    /// events; `None` when the hub does not hold them all.
    fn moved(
        mem: &Memory,
        hub: &Hub,
        range: &KeyRange,
        from: Revision,
        to: Revision,
    ) -> Option<i64> {
        let Since::Events(revisions) = hub.since(from, (to - from) as usize) else {
            return None;
        };
        if revisions.first().map(|r| r.revision) != Some(from + 1)
            || revisions.last().map(|r| r.revision) != Some(to)
        {
            return None;
        }
        let touched: HashSet<&[u8]> = revisions
            .iter()
            .flat_map(|r| r.events.iter())
            .map(|e| e.kv.key.as_ref())
            .filter(|k| range.contains(k))
            .collect();
        let ix = mem.read();
        Some(
            touched
                .into_iter()
                .map(|k| i64::from(ix.get(k, to).is_some()) - i64::from(ix.get(k, from).is_some()))
                .sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::mvcc::request::{DeleteRequest, PutRequest, RangeOptions, RangeRequest};
    use crate::mvcc::test_store;
    use crate::types::KeyRange;

    fn put(k: &str) -> PutRequest {
        PutRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"v"),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        }
    }

    fn range(start: &str, end: &str) -> KeyRange {
        KeyRange::from_etcd(
            &Bytes::copy_from_slice(start.as_bytes()),
            &Bytes::copy_from_slice(end.as_bytes()),
        )
    }

    /// Counted again and again while keys come and go inside and outside
    /// the range, the count stays what a full count says.
    #[tokio::test]
    async fn counts_follow_the_writes_between_them() {
        let store = test_store().await;
        let prefix = range("k", "l");
        let count = |store: &crate::mvcc::Store| {
            let store = store.clone();
            async move {
                let req = RangeRequest {
                    range: range("k", "l"),
                    options: RangeOptions {
                        count_only: true,
                        ..Default::default()
                    },
                };
                let (r, rev) = store.range(&req).await.unwrap();
                let full = store.mem().read().count(&range("k", "l"), rev);
                assert_eq!(r.count, full, "at revision {rev}");
                r.count
            }
        };
        for i in 0..10 {
            store.write(put(&format!("k{i}"))).await.unwrap();
        }
        assert_eq!(count(&store).await, 10);
        assert_eq!(count(&store).await, 10);
        store.write(put("k3")).await.unwrap(); // an update: no change
        store.write(put("x")).await.unwrap(); // outside the range
        store.write(put("k10")).await.unwrap();
        assert_eq!(count(&store).await, 11);
        let del = |s: &str, e: &str| DeleteRequest {
            range: range(s, e),
            prev_kv: false,
        };
        store.write(del("k5", "k8")).await.unwrap(); // k5, k6, k7
        store.write(del("k1", "")).await.unwrap();
        store.write(put("k1")).await.unwrap(); // deleted and back
        store.write(del("k2", "")).await.unwrap();
        assert_eq!(count(&store).await, 7);
        assert!(store.counts.lock().contains_key(&prefix));
    }
}
