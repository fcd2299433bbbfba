//! Leases, as etcd's lessor defines them: Grant, Revoke, KeepAlive and the
//! expiry of leases whose time has run out. Lease rows live in the
//! database with their expiry measured on the database clock, so a lease
//! survives a restart without being re-armed and every instance agrees on
//! when it expires. Revoking or expiring a lease deletes its keys through
//! the normal write path, in one revision, with delete events. Only the
//! leader instance looks for expired leases.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::mvcc::Store;
use crate::mvcc::apply::{self, BatchState};
use crate::mvcc::writer::{BoxFut, Write};
use crate::sql::DbTx;
use crate::types::LeaseId;

/// Largest TTL etcd accepts for a lease (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Leases revoked per writer request.
const EXPIRE_BATCH: i64 = 64;

/// LeaseGrant: a new lease `id` (chosen by the caller when 0 was asked
/// for) of `ttl` seconds, raised to the minimum TTL.
pub struct Grant {
    pub id: LeaseId,
    pub ttl: i64,
}

/// A granted lease: its id and its TTL as granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub id: LeaseId,
    pub ttl: i64,
}

impl Write for Grant {
    type Output = Granted;
    fn apply<'a>(&'a self, tx: &'a mut DbTx, state: &'a mut BatchState) -> BoxFut<'a, Granted> {
        Box::pin(async move {
            if self.ttl > MAX_LEASE_TTL {
                return Err(Error::LeaseTtlTooLarge);
            }
            let ttl = self.ttl.max(state.settings.min_lease_ttl);
            if state.leases.get(&self.id) == Some(&true) || !tx.lease_grant(self.id, ttl).await? {
                return Err(Error::LeaseExists(self.id));
            }
            state.leases.insert(self.id, true);
            Ok(Granted { id: self.id, ttl })
        })
    }
}

/// LeaseRevoke: the lease and every key attached to it go.
pub struct Revoke {
    pub id: LeaseId,
}

impl Write for Revoke {
    type Output = ();
    fn apply<'a>(&'a self, tx: &'a mut DbTx, state: &'a mut BatchState) -> BoxFut<'a, ()> {
        Box::pin(async move {
            if !state.lease_exists(tx, self.id).await? {
                return Err(Error::LeaseNotFound(self.id));
            }
            revoke(tx, state, self.id).await
        })
    }
}

/// One LeaseKeepAlive: restarts the lease's countdown. Answers the TTL, or
/// 0 for a lease that is gone or already expired (as etcd does).
pub struct KeepAlive {
    pub id: LeaseId,
}

impl Write for KeepAlive {
    type Output = i64;
    fn apply<'a>(&'a self, tx: &'a mut DbTx, _state: &'a mut BatchState) -> BoxFut<'a, i64> {
        Box::pin(async move {
            match tx.lease_get(self.id).await? {
                Some(lease) if lease.remaining_ms > 0 => {
                    tx.lease_refresh(self.id).await?;
                    Ok(lease.ttl)
                }
                _ => Ok(0),
            }
        })
    }
}

/// Revokes those of `ids` whose expiry has passed (database clock).
struct Expire {
    ids: Vec<LeaseId>,
}

impl Write for Expire {
    type Output = ();
    fn apply<'a>(&'a self, tx: &'a mut DbTx, state: &'a mut BatchState) -> BoxFut<'a, ()> {
        Box::pin(async move {
            for id in &self.ids {
                // Re-check: a keepalive may have landed since the scan.
                if let Some(lease) = tx.lease_get(*id).await?
                    && lease.remaining_ms <= 0
                {
                    revoke(tx, state, *id).await?;
                }
            }
            Ok(())
        })
    }
}

/// Deletes a lease and its keys; the keys go in one revision.
async fn revoke(tx: &mut DbTx, state: &mut BatchState, id: LeaseId) -> Result<()> {
    let keys = state.mem.read().with_lease(id, state.revision);
    apply::delete_keys(tx, state, keys).await?;
    tx.lease_delete(id).await?;
    state.leases.insert(id, false);
    Ok(())
}

/// While this instance is the leader, revokes expired leases every
/// `every`.
pub async fn expire_loop(
    store: Store,
    every: Duration,
    is_leader: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    crate::mvcc::leader::while_leader(every, is_leader, cancel, || async {
        if let Err(e) = expire_once(&store).await {
            tracing::warn!(error = %e, "lease expiry check failed");
        }
    })
    .await;
}

async fn expire_once(store: &Store) -> Result<()> {
    loop {
        let ids = store.expired_leases(EXPIRE_BATCH).await?;
        if ids.is_empty() {
            return Ok(());
        }
        let n = ids.len();
        tracing::debug!(count = n, "revoking expired leases");
        store.write(Expire { ids }).await?;
        if (n as i64) < EXPIRE_BATCH {
            return Ok(());
        }
    }
}
