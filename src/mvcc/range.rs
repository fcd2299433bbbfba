//! Range reads as etcd's applier does them: fetch, filter, sort, truncate,
//! count. Used both by plain reads and by Range ops inside a Txn.

use crate::error::{Error, Result};
use crate::mvcc::types::{
    KeyValue, RangeOptions, RangeRequest, RangeResult, Revision, SortOrder, SortTarget,
};
use crate::sql::DbTx;

/// The revisions a read is resolved against.
#[derive(Debug, Clone, Copy)]
pub struct ReadPoint {
    /// Newest revision visible through the current-state table.
    pub current: Revision,
    /// Oldest revision still readable.
    pub compact: Revision,
}

/// Runs a Range in `tx` (a read snapshot, or the writer's transaction; the
/// writer flushes its buffered log rows before a historical read).
pub async fn range(tx: &mut DbTx, req: &RangeRequest, at: ReadPoint) -> Result<RangeResult> {
    let o = &req.options;
    let rev = if o.revision <= 0 {
        at.current
    } else {
        o.revision
    };
    if rev > at.current {
        return Err(Error::FutureRevision {
            required: rev,
            current: at.current,
        });
    }
    if rev < at.compact {
        return Err(Error::Compacted {
            required: rev,
            compacted: at.compact,
        });
    }
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
    (o.limit > 0 && !post_process).then(|| o.limit + 1)
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
