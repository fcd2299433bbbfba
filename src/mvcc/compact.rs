//! Compaction, as etcd defines it: `Compact(rev)` makes every revision
//! below `rev` unreadable (reads there fail with "required revision has
//! been compacted") and is exact — no retention is added. The compact
//! revision is recorded in the meta row at once; every instance's key
//! index drops what it no longer needs in the background (`feed.rs`), and
//! the log rows no read can reach any more are removed afterwards: the key
//! index says which (etcd's `keyIndex.keep`), and they are deleted by
//! their primary key, in small transactions of `COMPACT_STEP` revisions so
//! writers are never held up for long.
//!
//! Background compaction (`--compact-interval`, kine's scheme) compacts to
//! `current - --compact-min-retain` on the leader instance only;
//! Kubernetes compacts through the API by itself.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::mvcc::Store;
use crate::mvcc::apply::BatchState;
use crate::mvcc::feed::Feed;
use crate::mvcc::writer::{BoxFut, Write};
use crate::sql::{Db, DbTx, LogRow};
use crate::types::{Rev, Revision};

/// Revisions per physical-compaction transaction.
const COMPACT_STEP: i64 = 1000;

/// KV.Compact: the compact revision becomes `revision`.
pub struct Compact {
    pub revision: Revision,
}

impl Write for Compact {
    type Output = ();
    fn apply<'a>(&'a self, tx: &'a mut DbTx, state: &'a mut BatchState) -> BoxFut<'a, ()> {
        Box::pin(async move {
            // etcd accepts Compact(0) on a store never compacted, as a
            // no-op (its compact revision starts at -1; Koine's at 0, so a
            // repeated Compact(0) is accepted too, where etcd would say
            // "compacted").
            if self.revision == 0 && state.compact == 0 {
                return Ok(());
            }
            if self.revision <= state.compact {
                return Err(Error::Compacted {
                    required: self.revision,
                    compacted: state.compact,
                });
            }
            if self.revision > state.revision {
                return Err(Error::FutureRevision {
                    required: self.revision,
                    current: state.revision,
                });
            }
            tx.set_compact_revision(self.revision).await?;
            state.compact = self.revision;
            Ok(())
        })
    }
}

/// Removes log rows no read can reach any more (below the compact
/// revision), step by step. `lock` serialises the runs of one instance.
pub async fn remove_unreachable(db: &Db, feed: &Feed, lock: &tokio::sync::Mutex<()>) -> Result<()> {
    let _guard = lock.lock().await;
    let (target, mut done) = {
        let mut tx = db.begin_read().await?;
        let meta = tx.read_meta().await?;
        let done = tx.compacted_to().await?;
        tx.commit().await?;
        (meta.compact_revision, done)
    };
    // The index decides what goes: it must hold every change up to the
    // compact revision.
    feed.catch_up(target).await?;
    while done < target {
        let to = (done + COMPACT_STEP).min(target);
        let rows = db.scan(done, to).await?;
        let (spans, rows_dead) = {
            let ix = feed.mem.read();
            dead_rows(&rows, |r| ix.keeps(&r.kv.key, r.rev(), target))
        };
        // A change that replaced a version an earlier compaction kept
        // (at or below `done`) supersedes that version now.
        let superseded: Vec<(Revision, &[u8])> = rows
            .iter()
            .filter(|r| r.prev_revision > 0 && r.prev_revision <= done)
            .map(|r| (r.prev_revision, r.kv.key.as_ref()))
            .collect();
        let mut tx = db.begin_write().await?;
        let mut removed = 0;
        for (from, to) in spans {
            removed += tx.delete_span(from, to).await?;
        }
        removed += tx.delete_rows(&rows_dead).await?;
        removed += tx.delete_versions(&superseded).await?;
        tx.set_compacted_to(to, target).await?;
        tx.commit().await?;
        tracing::debug!(from = done + 1, to, removed, "compacted log rows");
        done = to;
    }
    crate::mvcc::memory::release_freed_memory();
    Ok(())
}

/// What of `rows` (one step of the log, in order) compaction removes:
/// spans of revisions none of whose rows is kept, deleted by revision,
/// and the single rows of revisions that keep some.
fn dead_rows(
    rows: &[LogRow],
    keeps: impl Fn(&LogRow) -> bool,
) -> (Vec<(Revision, Revision)>, Vec<Rev>) {
    let mut spans: Vec<(Revision, Revision)> = Vec::new();
    let mut single = Vec::new();
    let mut extend_span = true;
    for revision in rows.chunk_by(|a, b| a.revision == b.revision) {
        let main = revision[0].revision;
        let dead: Vec<Rev> = revision
            .iter()
            .filter(|r| !keeps(r))
            .map(|r| r.rev())
            .collect();
        if dead.len() == revision.len() {
            match spans.last_mut() {
                Some(span) if extend_span => span.1 = main,
                _ => spans.push((main, main)),
            }
            extend_span = true;
        } else {
            single.extend(dead);
            extend_span = false;
        }
    }
    (spans, single)
}

/// While this instance is the leader, compacts to `current - retain`
/// every `every` (0 disables it).
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
    crate::mvcc::leader::while_leader(every, is_leader, cancel, || async {
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
        match store.write(Compact { revision: target }).await {
            // Someone else compacted further meanwhile: fine.
            Ok(_) | Err(Error::Compacted { .. }) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(revision = target, "compacted");
    }
    store.compact_physically().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::KeyValue;

    fn row(revision: Revision, sub: i64) -> LogRow {
        LogRow {
            revision,
            sub,
            kv: KeyValue::default(),
            deleted: false,
            prev_revision: 0,
        }
    }

    #[test]
    fn whole_revisions_go_as_spans_and_the_rest_row_by_row() {
        // Revisions 3-5 wholly dead (4 has two rows), 6 keeps sub 0 and
        // loses sub 1, 7 and 9 dead, 8 kept.
        let rows = [
            row(3, 0),
            row(4, 0),
            row(4, 1),
            row(5, 0),
            row(6, 0),
            row(6, 1),
            row(7, 0),
            row(8, 0),
            row(9, 0),
        ];
        let kept = [Rev { main: 6, sub: 0 }, Rev { main: 8, sub: 0 }];
        let (spans, single) = dead_rows(&rows, |r| kept.contains(&r.rev()));
        assert_eq!(spans, [(3, 5), (7, 7), (9, 9)]);
        assert_eq!(single, [Rev { main: 6, sub: 1 }]);
        let (spans, single) = dead_rows(&rows, |_| true);
        assert!(spans.is_empty() && single.is_empty());
    }
}
