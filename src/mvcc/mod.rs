//! etcd's semantics, written once for every database: revisions, Range at
//! any revision, Put/DeleteRange/Txn through the group-commit writer,
//! watching, leases and compaction.
//!
//! [`Store`] is the front door the gRPC services use: reads run on a
//! snapshot of the database, writes go through the writer, and every call
//! gives up with etcd's "request timed out" after the request timeout.
//! [`start`] opens the engine on a connected database and runs its
//! background tasks (following other instances, the leader lock, lease
//! expiry, background compaction) until the token is cancelled.

pub(crate) mod apply;
mod cache;
mod compact;
mod feed;
mod hub;
mod leader;
mod lease;
mod range;
pub mod request;
mod watch;
pub(crate) mod writer;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use apply::check_intervals;
pub use compact::Compact;
pub use lease::{Grant, KeepAlive, Revoke};
pub use watch::{Delivery, Refused, WatchSpec, WatchStream};
pub use writer::Write;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sql::{Db, LeaseRow, LoggedChange, Meta};
use crate::types::{LeaseId, Revision};
use cache::CurrentCache;
use feed::Feed;
use hub::Hub;
use range::ReadPoint;
use request::{RangeRequest, RangeResult};
use writer::{WriteSettings, Writer};

/// Bytes of recent events the watch hub keeps in memory.
const HUB_BYTES: usize = 64 << 20;
/// Revisions the watch hub keeps in memory at most.
const HUB_REVISIONS: usize = 100_000;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest a request may wait for the database before it fails with
    /// etcd's "request timed out".
    pub request_timeout: Duration,
    pub min_lease_ttl: i64,
    pub lease_check_interval: Duration,
    /// Background compaction interval (0: off) and revisions it keeps.
    pub compact_interval: Duration,
    pub compact_min_retain: i64,
    /// How often other instances' writes are looked for.
    pub poll_interval: Duration,
    /// Memory for current key states, where this process is the sole
    /// writer (0: none).
    pub key_cache_bytes: usize,
}

/// The engine's handle for the services; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Db,
    writer: Writer,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Current key states, when this process is the database's sole writer.
    cache: Option<Arc<CurrentCache>>,
    /// Serialises physical compaction runs of this instance.
    compacting: Arc<tokio::sync::Mutex<()>>,
    request_timeout: Duration,
    auth_stamps: tokio::sync::watch::Receiver<i64>,
}

/// The engine's background tasks; [`Engine::stop`] waits for them.
pub struct Engine {
    tasks: Vec<JoinHandle<()>>,
    writer: JoinHandle<()>,
}

/// Opens the engine on `db` and starts its background tasks, which run
/// until `cancel` fires.
pub async fn start(
    db: Db,
    settings: &Settings,
    metrics: Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<(Store, Engine)> {
    let meta = db.meta().await?;
    let (store, feed, writer) = assemble(db.clone(), meta, settings, metrics);
    let is_leader = Arc::new(AtomicBool::new(false));
    let tasks = vec![
        tokio::spawn(leader::leader_loop(
            db.clone(),
            is_leader.clone(),
            cancel.clone(),
        )),
        tokio::spawn(feed::tail_loop(
            feed,
            db.clone(),
            settings.poll_interval,
            cancel.clone(),
        )),
        tokio::spawn(lease::expire_loop(
            store.clone(),
            settings.lease_check_interval,
            is_leader.clone(),
            cancel.clone(),
        )),
        tokio::spawn(compact::compact_loop(
            store.clone(),
            settings.compact_interval,
            settings.compact_min_retain,
            is_leader,
            cancel.clone(),
        )),
    ];
    tracing::info!(
        database = db.dialect().sql().name,
        revision = meta.revision,
        "engine started"
    );
    Ok((store, Engine { tasks, writer }))
}

/// The store and its writer on `db`, whose meta row reads `meta`.
fn assemble(
    db: Db,
    meta: Meta,
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> (Store, Arc<Feed>, JoinHandle<()>) {
    let cache = (db.dialect().sql().sole_writer && settings.key_cache_bytes > 0)
        .then(|| Arc::new(CurrentCache::new(settings.key_cache_bytes, meta.revision)));
    let hub = Arc::new(Hub::new(
        meta.revision,
        meta.compact_revision,
        HUB_BYTES,
        HUB_REVISIONS,
    ));
    let feed = Arc::new(Feed::new(hub.clone(), db.clone()));
    let (writer, task) = Writer::spawn(
        db.clone(),
        feed.clone(),
        WriteSettings {
            min_lease_ttl: settings.min_lease_ttl,
            max_key_bytes: db.dialect().sql().max_key_bytes,
        },
        cache.clone(),
        metrics.clone(),
    );
    let store = Store {
        db,
        writer,
        hub,
        metrics,
        cache,
        compacting: Default::default(),
        request_timeout: settings.request_timeout,
        auth_stamps: feed.auth_stamps(),
    };
    (store, feed, task)
}

/// A store on a fresh in-memory SQLite database, with its writer and no
/// background task, for the engine's unit tests.
#[cfg(test)]
pub(crate) async fn test_store() -> Store {
    let db = crate::sql::sqlite::memory().await;
    let meta = db.meta().await.expect("meta");
    let settings = Settings {
        request_timeout: Duration::from_secs(10),
        min_lease_ttl: 2,
        lease_check_interval: Duration::from_secs(1),
        compact_interval: Duration::ZERO,
        compact_min_retain: 0,
        poll_interval: Duration::from_secs(1),
        key_cache_bytes: 1 << 20,
    };
    let (store, _feed, _writer) = assemble(db, meta, &settings, Metrics::new());
    store
}

impl Engine {
    /// Waits for the background tasks (cancel their token first), then for
    /// the writer to drain, which it does once every [`Store`] is dropped.
    pub async fn stop(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.writer).await;
    }
}

/// What TimeToLive reports: the lease (if it is alive), its keys, and the
/// store revision.
pub struct LeaseInfo {
    pub lease: Option<LeaseRow>,
    pub keys: Vec<Bytes>,
    pub revision: Revision,
}

impl Store {
    /// The auth store's stamp as the feed last read it from the database
    /// (PostgreSQL: woken by the NOTIFY of the change; MySQL and SQLite:
    /// every poll interval).
    pub fn auth_stamps(&self) -> tokio::sync::watch::Receiver<i64> {
        self.auth_stamps.clone()
    }

    /// Runs `f`, failing with `Error::Timeout` after the request timeout.
    async fn bounded<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }

    /// A Range at the current or a past revision. Returns the result and the
    /// store revision of the snapshot it was read from.
    pub async fn range(&self, req: &RangeRequest) -> Result<(RangeResult, Revision)> {
        self.bounded(async {
            let o = &req.options;
            let single = (o.revision <= 0).then(|| req.range.single()).flatten();
            if let (Some(cache), Some(key)) = (&self.cache, single)
                && let Some((entry, revision)) = cache.get(key)
            {
                self.metrics.key_cache_hits.inc();
                let kvs: Vec<_> = entry.into_iter().collect();
                return Ok((range::whole(kvs, o), revision));
            }
            // Fast path: a current read is one statement joining the meta
            // row, where the database reads that way fastest.
            if o.revision <= 0 && !o.count_only {
                let limit = range::fetch_limit(o);
                if let Some((meta, kvs)) = self.db.range_with_meta(&req.range, limit).await? {
                    if limit.is_none_or(|n| (kvs.len() as i64) < n) {
                        if let (Some(cache), Some(key)) = (&self.cache, single) {
                            cache.fill(key, kvs.first().cloned(), meta.revision);
                        }
                        return Ok((range::whole(kvs, o), meta.revision));
                    }
                    // More rows than the limit: the answer needs the count
                    // of the whole range at the same revision, which a
                    // snapshot still at that revision gives.
                    let mut tx = self.db.begin_read().await?;
                    let now = tx.read_meta().await?;
                    let count = if now.revision == meta.revision {
                        Some(tx.count_current(&req.range).await?)
                    } else {
                        None
                    };
                    tx.commit().await?;
                    if let Some(count) = count {
                        return Ok((range::finish(kvs, count, o), meta.revision));
                    }
                }
            }
            let mut tx = self.db.begin_read().await?;
            let meta = tx.read_meta().await?;
            let at = ReadPoint {
                current: meta.revision,
                compact: meta.compact_revision,
            };
            let result = range::range(&mut tx, req, at).await;
            tx.commit().await?;
            Ok((result?, meta.revision))
        })
        .await
    }

    /// Submits a write; answers its output and the store revision after
    /// it. On timeout the write may still commit later, as with etcd's
    /// "request timed out".
    pub async fn write<W: Write>(&self, req: W) -> Result<(W::Output, Revision)> {
        self.bounded(self.writer.submit(req)).await
    }

    /// The current and compact revisions.
    pub async fn meta(&self) -> Result<Meta> {
        self.bounded(self.db.meta()).await
    }

    /// The database's size in bytes.
    pub async fn db_size(&self) -> Result<i64> {
        self.bounded(self.db.size_bytes()).await
    }

    /// The cluster id chosen when the database was created.
    pub async fn cluster_id(&self) -> Result<u64> {
        self.bounded(self.db.cluster_id()).await
    }

    /// etcd's HashKV: a CRC-32C of the history up to `revision` (0: the
    /// current one) as compaction leaves it, read in one snapshot, so every
    /// instance on one database answers the same for the same revision and
    /// compact revision. Returns the hash, the compact revision (-1 before
    /// the first compaction, as etcd), the revision hashed and the store's
    /// revision in that snapshot.
    pub async fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision, Revision, Revision)> {
        hash_history(&self.db, revision).await
    }

    /// Writes the store as an etcd backend file (Maintenance.Snapshot).
    pub async fn snapshot(
        &self,
        file: std::fs::File,
    ) -> Result<(std::fs::File, crate::snapshot::Written)> {
        crate::snapshot::write(&self.db, file).await
    }

    /// etcd's Defragment: the database gives freed space back.
    pub async fn defragment(&self) -> Result<()> {
        self.db.defragment().await
    }

    /// A lease and its keys (TimeToLive).
    pub async fn lease(&self, id: LeaseId) -> Result<LeaseInfo> {
        self.bounded(async {
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
            Ok(LeaseInfo {
                lease,
                keys,
                revision: meta.revision,
            })
        })
        .await
    }

    /// Every lease, with the store revision.
    pub async fn leases(&self) -> Result<(Vec<LeaseRow>, Revision)> {
        self.bounded(async {
            let mut tx = self.db.begin_read().await?;
            let meta = tx.read_meta().await?;
            let leases = tx.lease_list().await?;
            tx.commit().await?;
            Ok((leases, meta.revision))
        })
        .await
    }

    /// Up to `limit` leases whose expiry has passed.
    async fn expired_leases(&self, limit: i64) -> Result<Vec<LeaseId>> {
        self.bounded(async {
            let mut tx = self.db.begin_read().await?;
            let ids = tx.leases_expired(limit).await?;
            tx.commit().await?;
            Ok(ids)
        })
        .await
    }

    /// The log in `(after, upto]`, or `Err(compact revision)` when
    /// compaction has removed part of it.
    async fn log_after(
        &self,
        after: Revision,
        upto: Revision,
    ) -> Result<Result<Vec<LoggedChange>, Revision>> {
        self.bounded(async {
            let mut tx = self.db.begin_read().await?;
            let meta = tx.read_meta().await?;
            let result = if after + 1 < meta.compact_revision {
                Err(meta.compact_revision)
            } else {
                Ok(tx.changes(after, upto).await?)
            };
            tx.commit().await?;
            Ok(result)
        })
        .await
    }

    /// Removes the log rows below the compact revision. Not bounded by the
    /// request timeout: it runs as long as the rows take, in small
    /// transactions (as etcd's physical compaction does).
    pub async fn compact_physically(&self) -> Result<()> {
        compact::remove_unreachable(&self.db, &self.compacting).await
    }

    /// A new client watch stream.
    pub fn watch_stream(&self) -> WatchStream {
        WatchStream::new(self.clone())
    }

    /// The newest revision published to watchers.
    pub fn published_revision(&self) -> Revision {
        self.hub.latest()
    }

    /// The meta row, giving up after `within` (health checks answer fast,
    /// whatever the request timeout).
    pub async fn meta_within(&self, within: Duration) -> Result<Meta> {
        match tokio::time::timeout(within, self.db.meta()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }

    /// A lasting fault the database reported (corruption), if any.
    pub fn database_fault(&self) -> Option<String> {
        self.db.dialect().fault()
    }

    /// Whether the writer can write: `Ok`, or why not. A writer whose last
    /// transaction failed is probed with a write that changes nothing,
    /// bounded by `within`; its success clears the failure.
    pub async fn writer_health(&self, within: Duration) -> std::result::Result<(), String> {
        if !self.writer.is_running() {
            return Err("writer stopped".into());
        }
        let Some(failure) = self.writer.failure() else {
            return Ok(());
        };
        match tokio::time::timeout(within, self.writer.submit(writer::Probe)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("{failure} (a probe write took over {within:?})")),
        }
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// HashKV over a database (see [`Store::hash_kv`]); `koine import` checks
/// its work with it.
pub(crate) async fn hash_history(
    db: &Db,
    revision: Revision,
) -> Result<(u32, Revision, Revision, Revision)> {
    let mut tx = db.begin_read().await?;
    let meta = tx.read_meta().await?;
    let upto = ReadPoint {
        current: meta.revision,
        compact: meta.compact_revision,
    }
    .resolve(revision)?;
    let mut crc = crate::types::Crc32c::new();
    let mut pages = crate::sql::HistoryPager::new(upto, meta.compact_revision);
    loop {
        let rows = pages.next(&mut tx).await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            hash_row(&mut crc, r);
        }
    }
    tx.commit().await?;
    let compact = if meta.compact_revision > 0 {
        meta.compact_revision
    } else {
        -1
    };
    Ok((crc.finish(), compact, upto, meta.revision))
}

/// Adds one history row to a HashKV checksum.
pub(crate) fn hash_row(crc: &mut crate::types::Crc32c, r: &crate::sql::HashedRow) {
    for n in [r.revision, r.sub, r.create_revision, r.version, r.lease] {
        crc.update(&n.to_be_bytes());
    }
    crc.update(&[r.deleted as u8]);
    for b in [&r.key, &r.value] {
        crc.update(&(b.len() as u64).to_be_bytes());
        crc.update(b);
    }
}
