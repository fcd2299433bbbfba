//! etcd's alarms and space quota. Alarms live in the database
//! (`koine_alarm`), so every instance on one database sees the same ones:
//! while NOSPACE is raised no instance takes a write that adds data (Put, a
//! Txn that puts, LeaseGrant) and they fail with etcd's "database space
//! exceeded"; reads, deletes and compaction go on, as on etcd, until an
//! operator makes room (compact, defragment) and disarms it. CORRUPT, raised
//! through the API, stops every write, as etcd's corrupt applier does.
//!
//! The quota (`--quota-backend-bytes`) is checked against the database's
//! size, measured every [`CHECK`]: a write whose size would take the last
//! measured size over the quota raises NOSPACE and fails, as etcd's quota
//! check does.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::mvcc::apply::BatchState;
use crate::mvcc::writer::BoxFut;
use crate::mvcc::{Store, Write};
use crate::sql::{AlarmRow, Db, DbTx};

/// etcd's alarm types (`etcdserverpb.AlarmType`).
pub const NONE: i64 = 0;
pub const NOSPACE: i64 = 1;
pub const CORRUPT: i64 = 2;

/// etcd's default quota when the flag says 0: 2 GiB.
pub const DEFAULT_QUOTA: i64 = 2 << 30;

/// How often the database's size and the raised alarms are read.
pub const CHECK: Duration = Duration::from_secs(1);

/// Raises or clears one alarm; answers the alarm it concerned, as etcd's
/// alarm store does (`None`: clearing an alarm that was not raised).
struct AlarmWrite {
    activate: bool,
    alarm: AlarmRow,
}

impl Write for AlarmWrite {
    type Output = (Option<AlarmRow>, Vec<AlarmRow>);

    fn apply<'a>(
        &'a self,
        tx: &'a mut DbTx,
        _state: &'a mut BatchState,
    ) -> BoxFut<'a, Self::Output> {
        Box::pin(async move {
            let mut all = tx.alarms().await?;
            let present = all.contains(&self.alarm);
            let concerned = match (self.activate, present) {
                (true, true) => Some(self.alarm),
                (true, false) => {
                    tx.alarm_insert(self.alarm).await?;
                    all.push(self.alarm);
                    all.sort();
                    Some(self.alarm)
                }
                (false, true) => {
                    tx.alarm_delete(self.alarm).await?;
                    all.retain(|a| *a != self.alarm);
                    Some(self.alarm)
                }
                (false, false) => None,
            };
            Ok((concerned, all))
        })
    }
}

/// Runs `step` on `owner` every `period` until `cancel` fires or the owner
/// is dropped (the task holds it only while a step runs); failures are
/// logged as `what` and retried at the next period.
pub fn every<T, F, Fut>(
    period: Duration,
    owner: &Arc<T>,
    cancel: CancellationToken,
    what: &'static str,
    step: F,
) where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let weak = Arc::downgrade(owner);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let Some(owner) = weak.upgrade() else { return };
            if let Err(e) = step(owner).await {
                tracing::debug!(error = %e, "{what} failed");
            }
        }
    });
}

pub struct Alarms {
    db: Db,
    store: Store,
    raised: RwLock<Vec<AlarmRow>>,
    /// Bytes; `None` without a quota.
    quota: Option<i64>,
    /// The database's size at the last check.
    size: AtomicI64,
    member_id: u64,
}

pub type AlarmsRef = Arc<Alarms>;

impl Alarms {
    /// Reads the raised alarms and starts watching them and the size.
    /// `quota_flag` is etcd's `--quota-backend-bytes`: 0 is the default
    /// (2 GiB), negative is none.
    pub async fn start(
        db: Db,
        store: Store,
        quota_flag: i64,
        member_id: u64,
        cancel: CancellationToken,
    ) -> Result<AlarmsRef> {
        let quota = match quota_flag {
            0 => Some(DEFAULT_QUOTA),
            q if q < 0 => None,
            q => Some(q),
        };
        let alarms = Arc::new(Alarms {
            raised: RwLock::new(db.alarms().await?),
            size: AtomicI64::new(db.size_bytes().await.unwrap_or(0)),
            db,
            store,
            quota,
            member_id,
        });
        every(CHECK, &alarms, cancel, "alarm check", |a| async move {
            a.check().await
        });
        Ok(alarms)
    }

    async fn check(&self) -> Result<()> {
        let raised = self.db.alarms().await?;
        *self.raised.write().unwrap_or_else(|e| e.into_inner()) = raised;
        let size = self.db.size_bytes().await?;
        self.size.store(size, Ordering::Relaxed);
        if let Some(quota) = self.quota
            && size > quota
            && !self.is_raised(NOSPACE)
        {
            self.raise_nospace(size, quota).await?;
        }
        Ok(())
    }

    async fn raise_nospace(&self, size: i64, quota: i64) -> Result<()> {
        tracing::warn!(size, quota, "database over its quota: raising NOSPACE");
        self.set(
            true,
            AlarmRow {
                member_id: self.member_id as i64,
                alarm: NOSPACE,
            },
        )
        .await?;
        Ok(())
    }

    /// The raised alarms of type `kind` (every one for NONE).
    pub fn list(&self, kind: i64) -> Vec<AlarmRow> {
        let raised = self.raised.read().unwrap_or_else(|e| e.into_inner());
        raised
            .iter()
            .filter(|a| kind == NONE || a.alarm == kind)
            .copied()
            .collect()
    }

    pub fn is_raised(&self, kind: i64) -> bool {
        !self.list(kind).is_empty()
    }

    /// Raises (`activate`) or clears an alarm through the writer.
    pub async fn set(&self, activate: bool, alarm: AlarmRow) -> Result<Option<AlarmRow>> {
        let ((concerned, all), _) = self.store.write(AlarmWrite { activate, alarm }).await?;
        *self.raised.write().unwrap_or_else(|e| e.into_inner()) = all;
        Ok(concerned)
    }

    /// etcd's quota check for a write adding about `cost` bytes: false (and
    /// NOSPACE raised) when it would not fit.
    pub async fn admits(&self, cost: usize) -> bool {
        if self.is_raised(NOSPACE) {
            return false;
        }
        let Some(quota) = self.quota else {
            return true;
        };
        let after = self.size.load(Ordering::Relaxed) + cost as i64;
        if after <= quota {
            return true;
        }
        if let Err(e) = self.raise_nospace(after, quota).await {
            tracing::warn!(error = %e, "raising NOSPACE failed");
        }
        false
    }
}
