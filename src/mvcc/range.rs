//! Range reads as etcd's applier does them: fetch, filter, sort, truncate,
//! count. Used both by plain reads and by Range ops inside a Txn.

use crate::error::{Error, Result};
use crate::mvcc::request::{RangeOptions, RangeRequest, RangeResult, SortOrder, SortTarget};
use crate::sql::DbTx;
use crate::types::{KeyValue, Revision};

/// The revisions a read is resolved against.
#[derive(Debug, Clone, Copy)]
pub struct ReadPoint {
    /// Newest revision visible through the current-state table.
    pub current: Revision,
    /// Oldest revision still readable.
    pub compact: Revision,
}

impl ReadPoint {
    /// The revision a read of `requested` (0 or less: the current one)
    /// resolves to, or etcd's error for a future or compacted revision.
    pub fn resolve(&self, requested: Revision) -> Result<Revision> {
        let rev = if requested <= 0 {
            self.current
        } else {
            requested
        };
        if rev > self.current {
            return Err(Error::FutureRevision {
                required: rev,
                current: self.current,
            });
        }
        if rev < self.compact {
            return Err(Error::Compacted {
                required: rev,
                compacted: self.compact,
            });
        }
        Ok(rev)
    }
}

/// Runs a Range in `tx` (a read snapshot, or the writer's transaction; the
/// writer flushes its buffered log rows before a historical read).
pub async fn range(tx: &mut DbTx, req: &RangeRequest, at: ReadPoint) -> Result<RangeResult> {
    let o = &req.options;
    let rev = at.resolve(o.revision)?;
    let historical = rev != at.current;

    if o.count_only {
        let count = if historical {
            tx.count_at(&req.range, rev).await?
        } else {
            tx.count_current(&req.range).await?
        };
        return Ok(RangeResult {
            kvs: Vec::new(),
            more: false,
            count,
        });
    }

    // One extra row tells whether there are more.
    let fetch_limit = fetch_limit(o);
    let kvs = if historical {
        tx.range_at(&req.range, rev, fetch_limit).await?
    } else {
        tx.range_current(&req.range, fetch_limit).await?
    };
    let count = match fetch_limit {
        Some(n) if kvs.len() as i64 >= n => {
            if historical {
                tx.count_at(&req.range, rev).await?
            } else {
                tx.count_current(&req.range).await?
            }
        }
        _ => kvs.len() as i64,
    };
    Ok(finish(kvs, count, o))
}

/// How many rows a current-revision read should fetch so that `finish`
/// can answer without a separate count: `None` for all of them.
pub fn fetch_limit(o: &RangeOptions) -> Option<i64> {
    let post_process = o.sort_order != SortOrder::None || o.has_filters();
    // A limit too large for one more row is no limit at all.
    (o.limit > 0 && !post_process)
        .then(|| o.limit.checked_add(1))
        .flatten()
}

/// The answer when `kvs` is everything in the range at the read revision.
pub fn whole(kvs: Vec<KeyValue>, o: &RangeOptions) -> RangeResult {
    let count = kvs.len() as i64;
    if o.count_only {
        return RangeResult {
            kvs: Vec::new(),
            more: false,
            count,
        };
    }
    finish(kvs, count, o)
}

/// Filters, sorts, truncates to the limit and strips values, as etcd's
/// applier does after reading; `count` is the unfiltered total.
pub fn finish(mut kvs: Vec<KeyValue>, count: i64, o: &RangeOptions) -> RangeResult {
    if o.has_filters() {
        kvs.retain(|kv| o.keep(kv));
    }
    sort(&mut kvs, o);
    let mut more = false;
    if o.limit > 0 && kvs.len() as i64 > o.limit {
        kvs.truncate(o.limit as usize);
        more = true;
    }
    if o.keys_only {
        for kv in &mut kvs {
            kv.value = bytes::Bytes::new();
        }
    }
    RangeResult { kvs, more, count }
}

/// etcd's ordering rules: results come sorted by key ascending; a non-key
/// target with no order means ascending.
fn sort(kvs: &mut [KeyValue], o: &RangeOptions) {
    let order = match (o.sort_target, o.sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (t, SortOrder::None) if t != SortTarget::Key => SortOrder::Ascend,
        (_, order) => order,
    };
    if order == SortOrder::None {
        return;
    }
    let key = |kv: &KeyValue| -> (i64, bytes::Bytes) {
        match o.sort_target {
            SortTarget::Key => (0, kv.key.clone()),
            SortTarget::Version => (kv.version, bytes::Bytes::new()),
            SortTarget::Create => (kv.create_revision, bytes::Bytes::new()),
            SortTarget::Mod => (kv.mod_revision, bytes::Bytes::new()),
            SortTarget::Value => (0, kv.value.clone()),
        }
    };
    match order {
        SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(key(kv))),
        _ => kvs.sort_by_key(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(key: &str, create: i64, modified: i64, version: i64, value: &str) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: create,
            mod_revision: modified,
            version,
            value: Bytes::copy_from_slice(value.as_bytes()),
            lease: 0,
        }
    }

    fn keys(r: &RangeResult) -> Vec<&str> {
        r.kvs
            .iter()
            .map(|kv| std::str::from_utf8(&kv.key).unwrap())
            .collect()
    }

    fn data() -> Vec<KeyValue> {
        vec![
            kv("a", 5, 9, 3, "zz"),
            kv("b", 2, 2, 1, "yy"),
            kv("c", 7, 8, 2, "xx"),
        ]
    }

    #[test]
    fn limit_truncates_and_says_more_but_count_is_the_total() {
        let o = RangeOptions {
            limit: 2,
            ..Default::default()
        };
        let r = finish(data(), 3, &o);
        assert_eq!(keys(&r), ["a", "b"]);
        assert!(r.more);
        assert_eq!(r.count, 3);
        let o = RangeOptions {
            limit: 3,
            ..Default::default()
        };
        assert!(!finish(data(), 3, &o).more);
        // A fetch needs one row more than the limit to tell `more`; none
        // when sorting or filtering happens after the fetch.
        assert_eq!(fetch_limit(&o), Some(4));
        let huge = RangeOptions {
            limit: i64::MAX,
            ..Default::default()
        };
        assert_eq!(fetch_limit(&huge), None);
        let sorted = RangeOptions {
            sort_order: SortOrder::Descend,
            ..o.clone()
        };
        assert_eq!(fetch_limit(&sorted), None);
    }

    #[test]
    fn sort_follows_etcd() {
        let by = |target, order| RangeOptions {
            sort_target: target,
            sort_order: order,
            ..Default::default()
        };
        let r = finish(data(), 3, &by(SortTarget::Key, SortOrder::Descend));
        assert_eq!(keys(&r), ["c", "b", "a"]);
        // A target other than the key with no order sorts ascending.
        let r = finish(data(), 3, &by(SortTarget::Mod, SortOrder::None));
        assert_eq!(keys(&r), ["b", "c", "a"]);
        let r = finish(data(), 3, &by(SortTarget::Create, SortOrder::Descend));
        assert_eq!(keys(&r), ["c", "a", "b"]);
        let r = finish(data(), 3, &by(SortTarget::Version, SortOrder::Ascend));
        assert_eq!(keys(&r), ["b", "c", "a"]);
        let r = finish(data(), 3, &by(SortTarget::Value, SortOrder::Ascend));
        assert_eq!(keys(&r), ["c", "b", "a"]);
        // Sorting happens before the limit: the top of the sorted list.
        let o = RangeOptions {
            limit: 1,
            ..by(SortTarget::Mod, SortOrder::Descend)
        };
        assert_eq!(keys(&finish(data(), 3, &o)), ["a"]);
    }

    #[test]
    fn filters_and_keys_only() {
        let o = RangeOptions {
            min_mod_revision: 8,
            max_create_revision: 6,
            keys_only: true,
            ..Default::default()
        };
        let r = finish(data(), 3, &o);
        assert_eq!(keys(&r), ["a"]);
        assert!(r.kvs[0].value.is_empty());
        // count is the unfiltered total, as etcd reports it.
        assert_eq!(r.count, 3);
    }
}
