//! Keeping the key index and the watch hub current, and following other
//! instances.
//!
//! Every revision reaches the index and the hub in order, through
//! [`Feed`]: this instance's commits from the writer ([`Held::publish`]),
//! other instances' from the log ([`Held::catch_up`]), which reads what is
//! missing before anything newer is published, so neither ever holds a
//! gap. One holder at a time ([`Feed::hold`]): the writer holds the feed
//! from the revision it locked until its batch is published or taken out
//! again. Other instances' revisions are noticed by PostgreSQL NOTIFY (at
//! once), by the read fence, and by polling the meta row (MySQL, SQLite,
//! and as a safety net).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{MutexGuard, watch};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::mvcc::Store;
use crate::mvcc::apply::BatchState;
use crate::mvcc::hub::Hub;
use crate::mvcc::memory::{self, FromDb, Memory};
use crate::sql::Db;
use crate::types::Revision;

/// Revisions read from the log per step when catching up.
const FILL_STEP: i64 = 512;

pub struct Feed {
    pub hub: Arc<Hub>,
    pub mem: Arc<Memory>,
    db: Db,
    /// One holder at a time.
    lock: tokio::sync::Mutex<()>,
    /// The auth store's stamp (`Db::auth_stamp`) as last read with the
    /// meta row: the auth store reloads when it moves.
    auth_stamp: watch::Sender<i64>,
    /// The newest compact revision known: the index compacts to it in the
    /// background.
    compact: watch::Sender<Revision>,
}

/// The feed, held: the index and hub change only through it.
pub struct Held<'a> {
    feed: &'a Feed,
    _guard: MutexGuard<'a, ()>,
}

impl Feed {
    pub fn new(hub: Arc<Hub>, mem: Arc<Memory>, db: Db) -> Feed {
        let compact = mem.read().compact_revision();
        Feed {
            hub,
            mem,
            db,
            lock: tokio::sync::Mutex::new(()),
            auth_stamp: watch::Sender::new(-1),
            compact: watch::Sender::new(compact),
        }
    }

    /// Follows the auth stamp the tail loop and the read fence read.
    pub fn auth_stamps(&self) -> watch::Receiver<i64> {
        self.auth_stamp.subscribe()
    }

    /// Records the auth stamp as read with the meta row.
    pub fn auth_stamp(&self, stamp: i64) {
        self.auth_stamp.send_if_modified(|s| {
            let moved = *s != stamp;
            *s = stamp;
            moved
        });
    }

    /// Follows the compact revision (the index's background compaction).
    pub fn compactions(&self) -> watch::Receiver<Revision> {
        self.compact.subscribe()
    }

    pub async fn hold(&self) -> Held<'_> {
        Held {
            feed: self,
            _guard: self.lock.lock().await,
        }
    }

    /// Brings the index and hub up to revision `to`, from the log.
    pub async fn catch_up(&self, to: Revision) -> Result<()> {
        if self.mem.read().revision() >= to {
            return Ok(());
        }
        self.hold().await.catch_up(to).await
    }

    /// Records a compaction to `at` that is committed (never moves
    /// backwards): reads below it fail from now on, and the index drops
    /// what it no longer needs in the background.
    pub fn compacted(&self, at: Revision) {
        self.mem.write().set_compact(at);
        self.hub.compacted(at);
        self.compact.send_if_modified(|c| {
            let moved = at > *c;
            *c = (*c).max(at);
            moved
        });
    }
}

impl Held<'_> {
    /// Publishes every revision up to `to` from the log.
    pub async fn catch_up(&self, to: Revision) -> Result<()> {
        let feed = self.feed;
        loop {
            let from = feed.mem.read().revision();
            if from >= to {
                return Ok(());
            }
            let upto = to.min(from + FILL_STEP);
            let changes = feed.db.changes(from, upto).await?;
            let compacted_to = match changes.compact {
                Some((_, compacted_to)) => compacted_to,
                None => feed.db.compacted_to().await?,
            };
            if compacted_to > from {
                // Compaction removed rows after this instance's revision
                // before it read them (it fell behind): the index cannot
                // follow the log from here.
                tracing::warn!(
                    revision = from,
                    compacted_to,
                    "the log was compacted past this instance's key index: rebuilding it"
                );
                return self.rebuild().await;
            }
            let rows = changes.rows;
            for r in rows.iter().filter(|r| !r.deleted) {
                feed.mem.values.insert(r.rev(), &r.kv.value);
            }
            {
                let mut ix = feed.mem.write();
                for r in &rows {
                    ix.apply(r);
                }
            }
            let superseded = feed.mem.superseded(&rows);
            let events = feed.mem.events(&mut FromDb(&feed.db), rows).await?;
            for rev in superseded {
                feed.mem.values.remove(rev);
            }
            feed.mem.write().set_revision(upto);
            feed.hub.publish(every_revision(from, upto, events));
        }
    }

    /// Builds the index again from the log (after this instance fell
    /// behind a compaction); the hub restarts after the new revision, and
    /// watchers behind it read the log.
    pub async fn rebuild(&self) -> Result<()> {
        let feed = self.feed;
        let ix = memory::build(&feed.db).await?;
        let (revision, compact) = (ix.revision(), ix.compact_revision());
        // The values cached stay right: a position's value never changes.
        *feed.mem.write() = ix;
        feed.compacted(compact);
        feed.hub.publish(vec![(revision, Vec::new())]);
        Ok(())
    }

    /// Publishes a batch this instance committed: its revisions become
    /// readable, its values cached, its events watched.
    pub fn publish(&self, state: BatchState) {
        let feed = self.feed;
        for (rev, value) in &state.values {
            feed.mem.values.insert(*rev, value);
        }
        for rev in &state.superseded {
            feed.mem.values.remove(*rev);
        }
        feed.mem.write().set_revision(state.revision);
        feed.compacted(state.compact);
        feed.hub.publish(state.events);
    }
}

/// The events of `(from, upto]`, with revisions that changed no key (none
/// do but where an import left gaps) as empty ones: the hub holds every
/// revision.
fn every_revision(
    from: Revision,
    upto: Revision,
    events: Vec<(Revision, Vec<crate::types::Event>)>,
) -> Vec<(Revision, Vec<crate::types::Event>)> {
    if events.len() as i64 == upto - from {
        return events;
    }
    let mut events = events.into_iter().peekable();
    (from + 1..=upto)
        .map(|r| match events.next_if(|(rev, _)| *rev == r) {
            Some(e) => e,
            None => (r, Vec::new()),
        })
        .collect()
}

/// Follows revisions, compactions and auth changes committed by other
/// instances, once the key index is built.
pub async fn tail_loop(store: Store, db: Db, poll: Duration, cancel: CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = store.ready() => {}
    }
    let feed = store.feed.clone();
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
                feed.auth_stamp(stamp);
                // Caught up first: the compact revision never passes the
                // index's own.
                match feed.catch_up(meta.revision).await {
                    Ok(()) => feed.compacted(meta.compact_revision),
                    Err(e) => tracing::warn!(error = %e, "following other instances failed"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "revision poll failed"),
        }
    }
}

/// Compacts the index in memory whenever the compact revision moves.
pub async fn compact_loop(feed: Arc<Feed>, cancel: CancellationToken) {
    let mut compactions = feed.compactions();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = compactions.changed() => if changed.is_err() { return },
        }
        let at = *compactions.borrow_and_update();
        feed.mem.compact(at).await;
    }
}
