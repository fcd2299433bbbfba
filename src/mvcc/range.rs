//! Range reads as etcd's applier does them: find, filter, sort, truncate,
//! count — from the key index, reading only the values answered. Used both
//! by plain reads and by Range ops inside a Txn.

use std::collections::HashMap;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::mvcc::memory::{Memory, ValueSource, key_value};
use crate::mvcc::request::{RangeOptions, RangeRequest, RangeResult, SortOrder, SortTarget};
use crate::types::{KeyValue, Rev, Revision};

/// The revisions a read is resolved against.
#[derive(Debug, Clone, Copy)]
pub struct ReadPoint {
    /// The newest revision the read may see.
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

/// Runs a Range against the key index at `at`, reading the values it
/// returns through `src` (a reader: the cache and the read pool; the
/// writer: its batch, the cache and its transaction). Filters, sorting
/// (but by value) and the limit need no values, so only the values of
/// the keys answered are read.
pub async fn range(
    mem: &Memory,
    src: &mut dyn ValueSource,
    req: &RangeRequest,
    at: ReadPoint,
) -> Result<RangeResult> {
    let o = &req.options;
    let rev = at.resolve(o.revision)?;
    let limit = fetch_limit(o);
    let (found, count) = {
        let ix = mem.read();
        if o.count_only {
            return Ok(RangeResult {
                kvs: Vec::new(),
                more: false,
                count: ix.count(&req.range, rev),
            });
        }
        // One extra key tells whether there are more.
        let found = ix.range(&req.range, rev, limit.map(|n| n as usize));
        let count = match limit {
            Some(n) if found.len() as i64 >= n => ix.count(&req.range, rev),
            _ => found.len() as i64,
        };
        (found, count)
    };
    // A value target sorts ascending even with no order given.
    if o.sort_target == SortTarget::Value {
        let kvs = mem.with_values(src, found).await?;
        return Ok(finish(kvs, count, o));
    }
    let subs: HashMap<Bytes, i64> = found
        .iter()
        .filter(|f| f.rev.sub != 0)
        .map(|f| (f.key.clone(), f.rev.sub))
        .collect();
    let kvs = found
        .into_iter()
        .map(|f| key_value(f, Bytes::new()))
        .collect();
    let mut result = finish(kvs, count, o);
    if !o.keys_only {
        let revs: Vec<Rev> = result
            .kvs
            .iter()
            .map(|kv| Rev {
                main: kv.mod_revision,
                sub: subs.get(&kv.key).copied().unwrap_or(0),
            })
            .collect();
        let values = mem.values(src, &revs).await?;
        for (kv, v) in result.kvs.iter_mut().zip(values) {
            kv.value = v;
        }
    }
    Ok(result)
}

/// How many keys a read should find so that `finish` can answer without
/// a separate count: `None` for all of them.
pub fn fetch_limit(o: &RangeOptions) -> Option<i64> {
    let post_process = o.sort_order != SortOrder::None || o.has_filters();
    // A limit too large for one more row is no limit at all.
    (o.limit > 0 && !post_process)
        .then(|| o.limit.checked_add(1))
        .flatten()
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
