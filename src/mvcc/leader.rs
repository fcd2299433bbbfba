//! The leader: the one instance of those sharing a database that expires
//! leases and compacts in the background. The dialect's lock decides
//! (PostgreSQL advisory lock, MySQL GET_LOCK, held by a connection of its
//! own; SQLite: the one process is always the leader). When the lock's
//! connection dies, another instance takes over within a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::sql::Db;

/// Calls `job` every `every` while this instance is the leader, until
/// `cancel` fires (lease expiry and background compaction).
pub async fn while_leader<F, Fut>(
    every: Duration,
    is_leader: Arc<AtomicBool>,
    cancel: CancellationToken,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if is_leader.load(Ordering::SeqCst) {
            job().await;
        }
    }
}

/// Keeps `is_leader` true while this instance holds the database's leader
/// lock; only the leader expires leases and compacts in the background.
pub async fn leader_loop(db: Db, is_leader: Arc<AtomicBool>, cancel: CancellationToken) {
    let mut session: Option<crate::sql::LeaderSession> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match session.as_mut() {
            Some(s) => {
                if !s.alive().await {
                    tracing::warn!("lost leadership (lock connection gone)");
                    session = None;
                    is_leader.store(false, Ordering::SeqCst);
                }
            }
            None => match db.dialect().try_leader().await {
                Ok(Some(s)) => {
                    tracing::info!("became leader: expiring leases and compacting");
                    session = Some(s);
                    is_leader.store(true, Ordering::SeqCst);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "leader lock attempt failed"),
            },
        }
    }
}
