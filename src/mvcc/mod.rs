//! etcd's semantics, written once for every database: revisions, Range at
//! any revision, Put/DeleteRange/Txn through the group-commit writer,
//! watching, leases and compaction.
//!
//! The database's log is the truth; what each instance serves from is in
//! memory (etcd's split between bbolt and its treeIndex): the key index
//! (`index.rs`), built from the log at start and kept current by the feed
//! (`feed.rs`), and a cache of values (`values.rs`); values it does not
//! hold are read from the log by position. On a database other instances
//! write too, a linearizable read first waits for the index to reach the
//! database's revision (`fence.rs`).
//!
//! [`Store`] is the front door the gRPC services use: reads are answered
//! from memory, writes go through the writer, and every call gives up with
//! etcd's "request timed out" after the request timeout. [`start`] builds
//! the index, opens the engine on a connected database and runs its
//! background tasks (following other instances, the read fence, the
//! leader lock, lease expiry, compaction) until the token is cancelled.

pub(crate) mod apply;
mod checkpoint;
mod compact;
mod counts;
mod feed;
mod fence;
mod hub;
mod index;
mod leader;
mod lease;
mod memory;
mod range;
pub mod request;
mod values;
mod watch;
pub(crate) mod writer;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use apply::check_intervals;
pub use compact::Compact;
pub use lease::{Grant, KeepAlive, Revoke};
pub use watch::{Delivery, Refused, WatchSpec, WatchStream};
pub use writer::Write;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sql::{Db, LeaseRow, LogRow, Meta};
use crate::types::{Event, LeaseId, Revision};
use feed::Feed;
use fence::Fence;
use hub::Hub;
use index::Index;
use memory::{FromDb, Memory};
use range::ReadPoint;
use request::{RangeRequest, RangeResult};
use writer::{WriteSettings, Writer};

/// Bytes of recent events the watch hub keeps in memory (watchers further
/// behind read the log).
const HUB_BYTES: usize = 16 << 20;
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
    /// Memory for values (the key index is always whole).
    pub value_cache_bytes: usize,
}

/// Whether the key index is built: `None` while it is being built,
/// then `Ok`, or why it could not be (tried again every few seconds).
type Readiness = Option<std::result::Result<(), Arc<Error>>>;

/// The engine's handle for the services; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Db,
    ready: tokio::sync::watch::Receiver<Readiness>,
    writer: Writer,
    feed: Arc<Feed>,
    /// The read fence, on a database other instances write too.
    fence: Option<Arc<Fence>>,
    metrics: Arc<Metrics>,
    /// Serialises physical compaction runs of this instance.
    compacting: Arc<tokio::sync::Mutex<()>>,
    /// Range counts at the current revision, kept from read to read.
    counts: Arc<counts::Counts>,
    request_timeout: Duration,
    auth_stamps: tokio::sync::watch::Receiver<i64>,
}

/// The engine's background tasks; [`Engine::stop`] waits for them.
pub struct Engine {
    tasks: Vec<JoinHandle<()>>,
    writer: JoinHandle<()>,
    /// For the checkpoint written at the end.
    db: Db,
    feed: Arc<Feed>,
    ready: tokio::sync::watch::Receiver<Readiness>,
}

/// What the engine holds in memory.
#[derive(Debug, Clone, Copy)]
pub struct MemoryUse {
    pub keys: usize,
    pub revisions: usize,
    pub value_bytes: usize,
}

/// Opens the engine on `db` and starts its background tasks, which run
/// until `cancel` fires. The key index is built from the log in the
/// background: until it is, requests wait (up to the request timeout) and
/// `/readyz` fails.
pub async fn start(
    db: Db,
    settings: &Settings,
    metrics: Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<(Store, Engine)> {
    let meta = db.meta().await?;
    let index = Index::new(0, meta.compact_revision);
    let (ready, ready_rx) = tokio::sync::watch::channel(None);
    let (store, writer) = assemble(
        db.clone(),
        index,
        meta.revision,
        ready_rx,
        settings,
        metrics,
    );
    let is_leader = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![
        tokio::spawn(build_index(store.feed.clone(), ready, cancel.clone())),
        tokio::spawn(leader::leader_loop(
            db.clone(),
            is_leader.clone(),
            cancel.clone(),
        )),
        tokio::spawn(feed::tail_loop(
            store.clone(),
            db.clone(),
            settings.poll_interval,
            cancel.clone(),
        )),
        tokio::spawn(feed::compact_loop(store.feed.clone(), cancel.clone())),
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
    if let Some(fence) = &store.fence {
        tasks.push(tokio::spawn(fence.clone().run(
            db.clone(),
            store.feed.clone(),
            cancel.clone(),
        )));
    }
    tracing::info!(
        database = db.dialect().sql().name,
        revision = meta.revision,
        "engine started"
    );
    let engine = Engine {
        tasks,
        writer,
        db,
        feed: store.feed.clone(),
        ready: store.ready.clone(),
    };
    Ok((store, engine))
}

/// Builds the key index from the log, trying again every few seconds
/// while the database cannot be read, and says when it is ready.
async fn build_index(
    feed: Arc<Feed>,
    ready: tokio::sync::watch::Sender<Readiness>,
    cancel: CancellationToken,
) {
    loop {
        let built = tokio::select! {
            _ = cancel.cancelled() => return,
            built = async { feed.hold().await.rebuild().await } => built,
        };
        match built {
            Ok(()) => {
                ready.send_replace(Some(Ok(())));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "building the key index failed; trying again in 5 s");
                ready.send_replace(Some(Err(Arc::new(e))));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The store and its writer on `db`; `index` describes its log (or is
/// empty until it is built), `revision` is the store's revision now.
fn assemble(
    db: Db,
    index: Index,
    revision: Revision,
    ready: tokio::sync::watch::Receiver<Readiness>,
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> (Store, JoinHandle<()>) {
    let hub = Arc::new(Hub::new(
        revision,
        index.compact_revision(),
        HUB_BYTES,
        HUB_REVISIONS,
    ));
    let mem = Arc::new(Memory::new(index, settings.value_cache_bytes));
    let feed = Arc::new(Feed::new(hub, mem, db.clone()));
    let (writer, task) = Writer::spawn(
        db.clone(),
        feed.clone(),
        WriteSettings {
            min_lease_ttl: settings.min_lease_ttl,
        },
        metrics.clone(),
    );
    let fence = (!db.dialect().sql().sole_writer).then(|| Arc::new(Fence::default()));
    let store = Store {
        db,
        ready,
        writer,
        auth_stamps: feed.auth_stamps(),
        feed,
        fence,
        metrics,
        compacting: Default::default(),
        counts: Default::default(),
        request_timeout: settings.request_timeout,
    };
    (store, task)
}

/// A store on a fresh in-memory SQLite database, with its writer and no
/// background task, for the engine's unit tests.
#[cfg(test)]
pub(crate) async fn test_store() -> Store {
    let db = crate::sql::sqlite::memory().await;
    let index = memory::build(&db).await.expect("index");
    let revision = index.revision();
    let settings = Settings {
        request_timeout: Duration::from_secs(10),
        min_lease_ttl: 2,
        lease_check_interval: Duration::from_secs(1),
        compact_interval: Duration::ZERO,
        compact_min_retain: 0,
        poll_interval: Duration::from_secs(1),
        value_cache_bytes: 1 << 20,
    };
    let (_, ready) = tokio::sync::watch::channel(Some(Ok(())));
    let (store, _writer) = assemble(db, index, revision, ready, &settings, Metrics::new());
    store
}

impl Engine {
    /// Waits for the background tasks (cancel their token first), then for
    /// the writer to drain, which it does once every [`Store`] is dropped.
    pub async fn stop(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        let drained = tokio::time::timeout(Duration::from_secs(10), self.writer).await;
        // The index holds every committed revision once the writer is
        // done: the next start reads it instead of the whole log.
        if drained.is_ok() && matches!(&*self.ready.borrow(), Some(Ok(()))) {
            checkpoint::save(&self.db, self.feed).await;
        }
    }
}

/// What TimeToLive reports: the lease (if it is alive), its keys, and the
/// store revision.
pub struct LeaseInfo {
    pub lease: Option<LeaseRow>,
    pub keys: Vec<bytes::Bytes>,
    pub revision: Revision,
}

impl Store {
    /// The auth store's stamp as the feed last read it from the database
    /// (PostgreSQL: woken by the NOTIFY of the change; MySQL and SQLite:
    /// every poll interval; and with every read fence).
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

    fn mem(&self) -> &Memory {
        &self.feed.mem
    }

    /// Waits until the key index is built; fails with what keeps it from
    /// being built.
    pub async fn ready(&self) -> Result<()> {
        let mut ready = self.ready.clone();
        loop {
            match &*ready.borrow_and_update() {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return Err(e.duplicate()),
                None => {}
            }
            ready.changed().await.map_err(|_| Error::Stopped)?;
        }
    }

    /// `Ok` once the key index is built (waiting for it up to `within`),
    /// or why it is not.
    pub async fn index_state(&self, within: Duration) -> std::result::Result<(), String> {
        let _ = tokio::time::timeout(within, self.ready()).await;
        match &*self.ready.borrow() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(format!("building the key index failed: {e}")),
            None => Err("the key index is being built from the log".into()),
        }
    }

    /// For a linearizable read: waits until the index holds everything
    /// the database had committed when the read arrived (nothing to wait
    /// for where this instance is the only writer).
    async fn fence(&self) -> Result<()> {
        match &self.fence {
            Some(fence) => fence.wait().await.map(drop),
            None => Ok(()),
        }
    }

    /// The revisions a read resolves against now.
    fn read_point(&self) -> ReadPoint {
        let ix = self.mem().read();
        ReadPoint {
            current: ix.revision(),
            compact: ix.compact_revision(),
        }
    }

    /// A Range at the current or a past revision, from memory. Returns the
    /// result and the store revision it was read at.
    pub async fn range(&self, req: &RangeRequest) -> Result<(RangeResult, Revision)> {
        self.bounded(async {
            self.ready().await?;
            if !req.options.serializable {
                self.fence().await?;
            }
            let at = self.read_point();
            let o = &req.options;
            if o.count_only && at.resolve(o.revision)? == at.current {
                let count = self
                    .counts
                    .count(self.mem(), self.hub(), &req.range, at.current);
                return Ok((
                    RangeResult {
                        kvs: Vec::new(),
                        more: false,
                        count,
                    },
                    at.current,
                ));
            }
            let result = range::range(self.mem(), &mut FromDb(&self.db), req, at).await?;
            Ok((result, at.current))
        })
        .await
    }

    /// Submits a write; answers its output and the store revision after
    /// it. On timeout the write may still commit later, as with etcd's
    /// "request timed out".
    pub async fn write<W: Write>(&self, req: W) -> Result<(W::Output, Revision)> {
        self.bounded(async {
            self.ready().await?;
            self.writer.submit(req).await
        })
        .await
    }

    /// The current and compact revisions, as the database has them.
    pub async fn meta(&self) -> Result<Meta> {
        self.bounded(self.db.meta()).await
    }

    /// The compact revision this instance knows of.
    pub fn compact_revision(&self) -> Revision {
        self.mem().read().compact_revision()
    }

    /// What the engine holds in memory.
    pub fn memory_use(&self) -> MemoryUse {
        let (keys, revisions) = {
            let ix = self.mem().read();
            (ix.len(), ix.entries())
        };
        MemoryUse {
            keys,
            revisions,
            value_bytes: self.mem().values.bytes(),
        }
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
        self.ready().await?;
        // Compaction first removes what it drops from the log; another
        // compaction may come between that and the hash's snapshot.
        for _ in 0..10 {
            self.compact_physically().await?;
            match hash_history(&self.db, revision).await {
                Err(Error::Internal(why)) if why == NOT_COMPACTED => continue,
                other => return other,
            }
        }
        Err(Error::Timeout)
    }

    /// Writes the store as an etcd backend file (Maintenance.Snapshot),
    /// once compaction has removed from the log what it drops.
    pub async fn snapshot(
        &self,
        file: std::fs::File,
    ) -> Result<(std::fs::File, crate::snapshot::Written)> {
        self.ready().await?;
        self.compact_physically().await?;
        crate::snapshot::write(&self.db, file).await
    }

    /// etcd's Defragment: the database gives freed space back.
    pub async fn defragment(&self) -> Result<()> {
        self.db.defragment().await
    }

    /// A lease and its keys (TimeToLive).
    pub async fn lease(&self, id: LeaseId) -> Result<LeaseInfo> {
        self.bounded(async {
            self.ready().await?;
            self.fence().await?;
            let revision = self.mem().read().revision();
            let lease = self.db.lease(id).await?;
            let keys = match lease {
                Some(_) => self
                    .mem()
                    .read()
                    .with_lease(id, revision)
                    .into_iter()
                    .map(|f| f.key)
                    .collect(),
                None => Vec::new(),
            };
            Ok(LeaseInfo {
                lease,
                keys,
                revision,
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
    ) -> Result<Result<Vec<LogRow>, Revision>> {
        self.bounded(async {
            self.ready().await?;
            let changes = self.db.changes(after, upto).await?;
            // The compact revision of the same snapshot as the rows.
            let compact = match changes.compact {
                Some((compact, _)) => compact,
                None => self.compact_revision(),
            };
            if after + 1 < compact {
                return Ok(Err(compact));
            }
            let rows = changes.rows;
            Ok(Ok(rows))
        })
        .await
    }

    /// Watch events for logged changes, with their previous versions.
    async fn events(&self, rows: Vec<LogRow>) -> Result<Vec<(Revision, Vec<Event>)>> {
        self.mem().events(&mut FromDb(&self.db), rows).await
    }

    /// Removes the log rows below the compact revision. Not bounded by the
    /// request timeout: it runs as long as the rows take, in small
    /// transactions (as etcd's physical compaction does).
    pub async fn compact_physically(&self) -> Result<()> {
        compact::remove_unreachable(&self.db, &self.feed, &self.compacting).await
    }

    /// A new client watch stream.
    pub fn watch_stream(&self) -> WatchStream {
        WatchStream::new(self.clone())
    }

    /// The newest revision published to watchers.
    pub fn published_revision(&self) -> Revision {
        self.hub().latest()
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
        &self.feed.hub
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Why [`hash_history`] and a snapshot refuse: the log still holds rows
/// compaction drops.
pub(crate) const NOT_COMPACTED: &str = "the log holds rows compaction has not removed yet";

/// HashKV over a database (see [`Store::hash_kv`]); `koine import` checks
/// its work with it. The log must hold only what compaction keeps at or
/// below the compact revision (`compacted_to` reached it).
pub(crate) async fn hash_history(
    db: &Db,
    revision: Revision,
) -> Result<(u32, Revision, Revision, Revision)> {
    let mut tx = db.begin_read().await?;
    let meta = tx.read_meta().await?;
    if tx.compacted_to().await? < meta.compact_revision {
        tx.commit().await?;
        return Err(Error::Internal(NOT_COMPACTED.into()));
    }
    let upto = ReadPoint {
        current: meta.revision,
        compact: meta.compact_revision,
    }
    .resolve(revision)?;
    let mut crc = crate::types::Crc32c::new();
    let mut pages = crate::sql::HistoryPager::new(upto);
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
