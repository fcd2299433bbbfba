//! Feeding the watch hub, and following other instances.
//!
//! The hub must see every revision in order. Locally committed batches are
//! published directly; revisions committed by other instances are read
//! from the log. Both go through [`Feed`], which fills any gap from the log
//! before publishing, so the hub's memory stays contiguous. Other
//! instances' revisions are noticed by PostgreSQL NOTIFY (at once) and by
//! polling the meta row (MySQL, SQLite, and as a safety net).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::mvcc::hub::Hub;
use crate::sql::{Db, LoggedChange};
use crate::types::{Event, EventKind, KeyValue, Revision};

/// Revisions read from the log per step when filling a gap.
const FILL_STEP: i64 = 512;

pub struct Feed {
    pub hub: Arc<Hub>,
    db: Db,
    /// Serialises publishing so that gaps are filled in order.
    lock: tokio::sync::Mutex<()>,
    /// The auth store's stamp (`Db::auth_stamp`) as last read with the
    /// meta row: the auth store reloads when it moves.
    auth_stamp: tokio::sync::watch::Sender<i64>,
}

impl Feed {
    pub fn new(hub: Arc<Hub>, db: Db) -> Feed {
        Feed {
            hub,
            db,
            lock: tokio::sync::Mutex::new(()),
            auth_stamp: tokio::sync::watch::Sender::new(-1),
        }
    }

    /// Follows the auth stamp the tail loop reads.
    pub fn auth_stamps(&self) -> tokio::sync::watch::Receiver<i64> {
        self.auth_stamp.subscribe()
    }

    /// Publishes a batch this instance committed.
    pub async fn publish_local(&self, batch: Vec<(Revision, Vec<Event>)>) {
        let Some(first) = batch.first().map(|(r, _)| *r) else {
            return;
        };
        let _guard = self.lock.lock().await;
        if first > self.hub.latest() + 1
            && let Err(e) = self.fill(first - 1).await
        {
            // The hub restarts its memory at `first`; readers behind it
            // read the log.
            tracing::warn!(error = %e, "could not read other instances' revisions");
        }
        self.hub.publish(batch);
    }

    /// Publishes every revision up to `to` committed elsewhere.
    pub async fn catch_up(&self, to: Revision) -> Result<()> {
        let _guard = self.lock.lock().await;
        self.fill(to).await
    }

    async fn fill(&self, to: Revision) -> Result<()> {
        loop {
            let from = self.hub.latest();
            if from >= to {
                return Ok(());
            }
            let upto = to.min(from + FILL_STEP);
            let mut tx = self.db.begin_read().await?;
            let changes = tx.changes(from, upto).await?;
            tx.commit().await?;
            let batch = events_by_revision(changes);
            if batch.last().map(|(r, _)| *r) != Some(upto) {
                // Compaction removed part of the range: the log cannot
                // supply it; restart the hub's memory after it.
                tracing::debug!(from, upto, "gap not in the log; hub restarts after it");
                self.hub.publish(vec![(upto, Vec::new())]);
                continue;
            }
            self.hub.publish(batch);
        }
    }
}

/// Turns logged changes (in revision order) into events grouped by
/// revision.
pub fn events_by_revision(changes: Vec<LoggedChange>) -> Vec<(Revision, Vec<Event>)> {
    let mut out: Vec<(Revision, Vec<Event>)> = Vec::new();
    for c in changes {
        let revision = c.row.revision;
        let ev = if c.row.deleted {
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: c.row.kv.key,
                    mod_revision: revision,
                    ..KeyValue::default()
                },
                prev_kv: c.prev,
            }
        } else {
            Event {
                kind: EventKind::Put,
                kv: c.row.kv,
                prev_kv: c.prev,
            }
        };
        match out.last_mut() {
            Some((rev, evs)) if *rev == revision => evs.push(ev),
            _ => out.push((revision, vec![ev])),
        }
    }
    out
}

/// Follows revisions and auth changes committed by other instances.
pub async fn tail_loop(feed: Arc<Feed>, db: Db, poll: Duration, cancel: CancellationToken) {
    let mut listener = match db.dialect().notifications().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "LISTEN failed; polling only");
            None
        }
    };
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            n = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            } => {
                if let Err(e) = n {
                    tracing::debug!(error = %e, "notification listener interrupted");
                }
            }
        }
        match db.meta_and_auth_stamp().await {
            Ok((meta, stamp)) => {
                feed.auth_stamp.send_if_modified(|s| {
                    let moved = *s != stamp;
                    *s = stamp;
                    moved
                });
                feed.hub.compacted(meta.compact_revision);
                if meta.revision > feed.hub.latest()
                    && let Err(e) = feed.catch_up(meta.revision).await
                {
                    tracing::warn!(error = %e, "following other instances failed");
                }
            }
            Err(e) => tracing::debug!(error = %e, "revision poll failed"),
        }
    }
}
