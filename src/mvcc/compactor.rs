//! Background compaction: every interval, compact to `current - retain`
//! revisions (as kine's `--compact-interval`/`--compact-min-retain`), then
//! delete unreachable log rows in small steps.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::mvcc::store::Store;
use crate::mvcc::types::WriteRequest;

pub async fn compact_loop(
    store: Store,
    every: Duration,
    retain: i64,
    is_leader: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    crate::mvcc::tail::while_leader(every, is_leader, cancel, || async {
        if let Err(e) = compact_once(&store, retain).await {
            tracing::warn!(error = %e, "background compaction failed");
        }
    })
    .await;
}

async fn compact_once(store: &Store, retain: i64) -> Result<()> {
    let meta = store.meta().await?;
    let target = meta.revision - retain;
    if target > meta.compact_revision {
        match store
            .write(WriteRequest::Compact { revision: target })
            .await
        {
            // Someone else compacted further meanwhile: fine.
            Ok(_) | Err(Error::Compacted { .. }) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(revision = target, "compacted");
    }
    store.compact_physically().await
}
