//! Lease expiry: find leases past their expiry on the database clock and
//! revoke them through the writer, so their keys are deleted with events.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::mvcc::store::Store;
use crate::mvcc::types::WriteRequest;

/// Leases revoked per writer request.
const EXPIRE_BATCH: i64 = 64;

pub async fn expire_loop(
    store: Store,
    every: Duration,
    is_leader: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    crate::mvcc::tail::while_leader(every, is_leader, cancel, || async {
        if let Err(e) = expire_once(&store).await {
            tracing::warn!(error = %e, "lease expiry check failed");
        }
    })
    .await;
}

async fn expire_once(store: &Store) -> crate::error::Result<()> {
    loop {
        let ids = {
            let mut tx = store.db.begin_read().await?;
            let ids = tx.leases_expired(EXPIRE_BATCH).await?;
            tx.commit().await?;
            ids
        };
        if ids.is_empty() {
            return Ok(());
        }
        let n = ids.len();
        tracing::debug!(count = n, "revoking expired leases");
        store.write(WriteRequest::LeaseExpire { ids }).await?;
        if (n as i64) < EXPIRE_BATCH {
            return Ok(());
        }
    }
}
