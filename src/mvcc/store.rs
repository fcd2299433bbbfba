//! The engine's front door: reads run on a snapshot of the database, writes
//! go through the group-commit writer.

use std::sync::Arc;

use crate::error::Result;
use crate::mvcc::hub::Hub;
use crate::mvcc::range::{self, ReadPoint};
use crate::mvcc::types::{RangeRequest, RangeResult, Revision, WriteRequest, WriteResult};
use crate::mvcc::writer::Writer;
use crate::sql::{Db, LeaseRow, Meta};

#[derive(Clone)]
pub struct Store {
    pub db: Db,
    pub writer: Writer,
    pub hub: Arc<Hub>,
    /// Serialises physical compaction runs of this instance.
    pub compacting: Arc<tokio::sync::Mutex<()>>,
    /// Longest a request may wait for the database before it fails with
    /// etcd's "request timed out".
    pub request_timeout: std::time::Duration,
}

/// Revisions per physical-compaction transaction.
const COMPACT_STEP: i64 = 1000;

impl Store {
    /// A Range at the current or a past revision. Returns the result and the
    /// store revision of the snapshot it was read from.
    pub async fn range(&self, req: &RangeRequest) -> Result<(RangeResult, Revision)> {
        self.bounded(async {
            let o = &req.options;
            // Fast path: a current read that needs no separate count is one
            // statement joining the meta row. Not on MySQL: its plan sorts
            // the join through a temporary table, which BLOB values push to
            // disk; a snapshot transaction is faster there.
            if o.revision <= 0
                && !o.count_only
                && !req.range.is_empty()
                && self.db.dialect != crate::sql::Dialect::MySql
            {
                let limit = range::fetch_limit(o);
                let (meta, kvs) = self.db.range_with_meta(&req.range, limit).await?;
                if limit.is_none_or(|n| (kvs.len() as i64) < n) {
                    let count = kvs.len() as i64;
                    return Ok((range::finish(kvs, count, o), meta.revision));
                }
            }
            self.range_inner(req).await
        })
        .await
    }

    /// Runs `f`, failing with `Error::Timeout` after the request timeout.
    async fn bounded<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(crate::error::Error::Timeout),
        }
    }

    async fn range_inner(&self, req: &RangeRequest) -> Result<(RangeResult, Revision)> {
        let mut tx = self.db.begin_read().await?;
        let meta = tx.read_meta().await?;
        let at = ReadPoint {
            current: meta.revision,
            compact: meta.compact_revision,
        };
        let result = range::range(&mut tx, req, at).await;
        tx.commit().await?;
        Ok((result?, meta.revision))
    }

    /// Submits a write. On timeout the write may still commit later, as
    /// with etcd's "request timed out".
    pub async fn write(&self, req: WriteRequest) -> Result<(WriteResult, Revision)> {
        self.bounded(self.writer.submit(req)).await
    }

    /// Removes log rows no read can reach any more (below the compact
    /// revision), in small transactions of `COMPACT_STEP` revisions so that
    /// writers are never held up for long.
    pub async fn compact_physically(&self) -> Result<()> {
        let _guard = self.compacting.lock().await;
        let (target, mut done) = {
            let mut tx = self.db.begin_read().await?;
            let meta = tx.read_meta().await?;
            let done = tx.compacted_to().await?;
            tx.commit().await?;
            (meta.compact_revision, done)
        };
        while done < target {
            let to = (done + COMPACT_STEP).min(target);
            let mut tx = self.db.begin_write().await?;
            let removed = tx.compact_step(target, done + 1, to + 1).await?;
            tx.commit().await?;
            tracing::debug!(from = done + 1, to, removed, "compacted log rows");
            done = to;
        }
        Ok(())
    }

    pub async fn meta(&self) -> Result<Meta> {
        self.bounded(async {
            let mut tx = self.db.begin_read().await?;
            let meta = tx.read_meta().await?;
            tx.commit().await?;
            Ok(meta)
        })
        .await
    }

    pub async fn lease(&self, id: i64) -> Result<(Option<LeaseRow>, Vec<bytes::Bytes>, Revision)> {
        self.bounded(self.lease_inner(id)).await
    }

    async fn lease_inner(
        &self,
        id: i64,
    ) -> Result<(Option<LeaseRow>, Vec<bytes::Bytes>, Revision)> {
        let mut tx = self.db.begin_read().await?;
        let meta = tx.read_meta().await?;
        let lease = tx.lease_get(id).await?;
        let keys = match lease {
            Some(_) => tx
                .keys_with_lease(id)
                .await?
                .into_iter()
                .map(|kv| kv.key)
                .collect(),
            None => Vec::new(),
        };
        tx.commit().await?;
        Ok((lease, keys, meta.revision))
    }

    pub async fn leases(&self) -> Result<(Vec<LeaseRow>, Revision)> {
        let mut tx = self.db.begin_read().await?;
        let meta = tx.read_meta().await?;
        let leases = tx.lease_list().await?;
        tx.commit().await?;
        Ok((leases, meta.revision))
    }
}
