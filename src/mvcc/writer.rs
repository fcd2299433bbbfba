//! The group-commit writer (DESIGN decision 5). One task per instance takes
//! every waiting write request, applies them in one database transaction —
//! each request its own revision — commits once, then answers them and hands
//! the events to the watch hub. If the batch fails as a whole, each request
//! is retried alone so that one bad request cannot fail its neighbours.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::mvcc::apply::{self, BatchState};
use crate::mvcc::tail::Feed;
use crate::mvcc::types::{Revision, WriteRequest, WriteResult};
use crate::sql::{Db, DbTx};

/// Most requests per transaction.
const MAX_BATCH: usize = 256;
/// Largest TTL etcd accepts for a lease (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A write's answer: its result and the store revision after it.
pub type WriteReply = Result<(WriteResult, Revision)>;

struct Pending {
    req: WriteRequest,
    reply: oneshot::Sender<WriteReply>,
}

/// Handle for submitting writes.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Pending>,
}

impl Writer {
    /// Starts the writer task.
    pub fn spawn(
        db: Db,
        feed: Arc<Feed>,
        min_lease_ttl: i64,
        metrics: Arc<Metrics>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(4096);
        let task = WriterTask {
            db,
            feed,
            min_lease_ttl,
            metrics,
        };
        let handle = tokio::spawn(task.run(rx));
        (Writer { queue }, handle)
    }

    /// False once the writer task has stopped.
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    pub async fn submit(&self, req: WriteRequest) -> WriteReply {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Pending { req, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}

struct WriterTask {
    db: Db,
    metrics: Arc<Metrics>,
    feed: Arc<Feed>,
    min_lease_ttl: i64,
}

impl WriterTask {
    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let reqs: Vec<&WriteRequest> = batch.iter().map(|p| &p.req).collect();
            match self.commit(&reqs).await {
                Ok(replies) => {
                    for (p, r) in batch.drain(..).zip(replies) {
                        let _ = p.reply.send(r);
                    }
                }
                Err(e) if batch.len() == 1 => {
                    if let Some(p) = batch.pop() {
                        let _ = p.reply.send(Err(e));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, size = batch.len(), "batch failed, retrying one by one");
                    for p in batch.drain(..) {
                        let r = match self.commit(&[&p.req]).await {
                            Ok(mut replies) => replies
                                .pop()
                                .unwrap_or_else(|| Err(Error::Internal("no reply".into()))),
                            Err(e) => Err(e),
                        };
                        let _ = p.reply.send(r);
                    }
                }
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Applies `reqs` in one transaction. `Err` means nothing was committed;
    /// `Ok` holds each request's own outcome.
    async fn commit(&self, reqs: &[&WriteRequest]) -> Result<Vec<WriteReply>> {
        let began = std::time::Instant::now();
        let mut tx = self.db.begin_write().await?;
        match self.apply_all(&mut tx, reqs).await {
            Ok((state, replies)) => {
                let committing = std::time::Instant::now();
                tx.commit().await?;
                self.metrics
                    .commit_seconds
                    .observe(committing.elapsed().as_secs_f64());
                self.metrics
                    .txn_seconds
                    .observe(began.elapsed().as_secs_f64());
                self.metrics.batch_size.observe(reqs.len() as f64);
                self.feed.hub.compacted(state.compact);
                self.feed.publish_local(state.events).await;
                Ok(replies)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn apply_all(
        &self,
        tx: &mut DbTx,
        reqs: &[&WriteRequest],
    ) -> Result<(BatchState, Vec<WriteReply>)> {
        let meta = tx.lock_meta().await?;
        let start = meta.revision;
        let mut state = BatchState {
            revision: meta.revision,
            compact: meta.compact_revision,
            ..BatchState::default()
        };
        let mut replies = Vec::with_capacity(reqs.len());
        for req in reqs {
            match self.apply_one(tx, &mut state, req).await {
                Ok(r) => replies.push(Ok((r, state.revision))),
                // Database failures abort the batch; request errors are
                // raised before the request writes anything.
                Err(e @ (Error::Unavailable(_) | Error::Database(_) | Error::Internal(_))) => {
                    return Err(e);
                }
                Err(e) => replies.push(Err(e)),
            }
        }
        state.cache.flush(tx).await?;
        state.flush_log(tx).await?;
        if state.revision != start {
            tx.set_revision(state.revision).await?;
            tx.notify(state.revision).await?;
        }
        Ok((state, replies))
    }

    async fn apply_one(
        &self,
        tx: &mut DbTx,
        state: &mut BatchState,
        req: &WriteRequest,
    ) -> Result<WriteResult> {
        Ok(match req {
            WriteRequest::Put(p) => WriteResult::Put(apply::put(tx, state, p).await?),
            WriteRequest::Delete(d) => WriteResult::Delete(apply::delete(tx, state, d).await?),
            WriteRequest::Txn(t) => WriteResult::Txn(apply::txn(tx, state, t).await?),
            WriteRequest::Compact { revision } => {
                if *revision <= state.compact {
                    return Err(Error::Compacted {
                        required: *revision,
                        compacted: state.compact,
                    });
                }
                if *revision > state.revision {
                    return Err(Error::FutureRevision {
                        required: *revision,
                        current: state.revision,
                    });
                }
                tx.set_compact_revision(*revision).await?;
                state.compact = *revision;
                WriteResult::Compact
            }
            WriteRequest::LeaseGrant { id, ttl } => {
                if *ttl > MAX_LEASE_TTL {
                    return Err(Error::LeaseTtlTooLarge);
                }
                if tx.lease_get(*id).await?.is_some() {
                    return Err(Error::LeaseExists(*id));
                }
                let ttl = (*ttl).max(self.min_lease_ttl);
                tx.lease_insert(*id, ttl).await?;
                WriteResult::LeaseGrant { id: *id, ttl }
            }
            WriteRequest::LeaseRevoke { id } => {
                if tx.lease_get(*id).await?.is_none() {
                    return Err(Error::LeaseNotFound(*id));
                }
                revoke(tx, state, *id).await?;
                WriteResult::LeaseRevoke
            }
            WriteRequest::LeaseKeepAlive { id } => match tx.lease_get(*id).await? {
                Some(lease) if lease.remaining_ms > 0 => {
                    tx.lease_refresh(*id).await?;
                    WriteResult::LeaseKeepAlive { ttl: lease.ttl }
                }
                _ => WriteResult::LeaseKeepAlive { ttl: 0 },
            },
            WriteRequest::LeaseExpire { ids } => {
                for id in ids {
                    // Re-check: a keepalive may have landed since the scan.
                    if let Some(lease) = tx.lease_get(*id).await?
                        && lease.remaining_ms <= 0
                    {
                        revoke(tx, state, *id).await?;
                    }
                }
                WriteResult::LeaseExpire
            }
        })
    }
}

/// Deletes a lease and its keys; the keys go in one revision.
async fn revoke(tx: &mut DbTx, state: &mut BatchState, id: i64) -> Result<()> {
    state.cache.flush(tx).await?;
    let keys = tx.keys_with_lease(id).await?;
    apply::delete_keys(state, &keys);
    tx.lease_delete(id).await?;
    Ok(())
}
