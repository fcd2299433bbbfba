//! The group-commit writer. One task per instance takes every waiting write
//! request, applies them in one database transaction — each request its own
//! revision — commits once, then answers them and hands the events to the
//! watch hub. One fsync serves many writers.
//!
//! Every write transaction first locks the meta row (`SELECT … FOR UPDATE`;
//! SQLite's `BEGIN IMMEDIATE`), so writers of several instances on one
//! database take turns and the revisions they assign are dense and in
//! commit order.
//!
//! The writer applies each change to the key index as it goes (above the
//! committed revision, where no reader looks), so that later requests of
//! the batch see earlier ones and compares are evaluated in memory; after
//! COMMIT it makes the batch's revisions readable, and takes the changes
//! out again if the batch did not commit. On a shared database it first
//! brings the index up to the revision it locked (other instances'
//! commits), holding the feed so that nothing else changes the index
//! meanwhile.
//!
//! If the batch fails as a whole, each request is retried alone so that one
//! bad request cannot fail its neighbours. What a request does lives with
//! it (the [`Write`] implementations in `apply.rs`, `lease.rs` and
//! `compact.rs`); this file only batches, commits and answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::mvcc::apply::BatchState;
use crate::mvcc::feed::Feed;
use crate::sql::{Db, DbTx};
use crate::types::{LeaseId, Revision};

/// Most requests per transaction.
const MAX_BATCH: usize = 256;
/// Tries at asking the database whether a batch whose COMMIT failed took
/// effect (about 8 s with the backoff).
const RESOLVE_ATTEMPTS: usize = 7;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A write request: what it does inside the batch transaction, and its
/// own typed answer.
pub trait Write: Send + Sync + 'static {
    type Output: Send + 'static;

    /// Applies the request to `tx` and `state`. A request error (etcd's
    /// "lease not found", …) must be raised before the request writes
    /// anything; a database error fails the whole batch.
    fn apply<'a>(&'a self, tx: &'a mut DbTx, state: &'a mut BatchState)
    -> BoxFut<'a, Self::Output>;

    /// The leases the request attaches keys to: the writer reads whether
    /// those of a whole batch exist in one statement before applying it.
    fn leases(&self, _out: &mut Vec<LeaseId>) {}
}

/// Settings the requests read while applying.
#[derive(Debug, Clone, Copy)]
pub struct WriteSettings {
    /// Shortest lease TTL granted (etcd: 2 s).
    pub min_lease_ttl: i64,
}

/// A queued request with its answer slot, type-erased for the queue.
trait Job: Send {
    /// Applies the request; `Err` is a database failure that aborts the
    /// batch (the request's own errors are kept as its outcome).
    fn apply<'a>(&'a mut self, tx: &'a mut DbTx, state: &'a mut BatchState) -> BoxFut<'a, ()>;
    /// See [`Write::leases`].
    fn leases(&self, out: &mut Vec<LeaseId>);
    /// Forgets the outcome of a batch that did not commit.
    fn reset(&mut self);
    /// Sends the outcome, or `failure` when the batch failed.
    fn answer(self: Box<Self>, failure: Option<Error>);
}

type Reply<T> = oneshot::Sender<Result<(T, Revision)>>;

struct Pending<W: Write> {
    req: W,
    outcome: Option<Result<(W::Output, Revision)>>,
    reply: Reply<W::Output>,
}

impl<W: Write> Job for Pending<W> {
    fn apply<'a>(&'a mut self, tx: &'a mut DbTx, state: &'a mut BatchState) -> BoxFut<'a, ()> {
        Box::pin(async move {
            match self.req.apply(tx, state).await {
                Ok(out) => self.outcome = Some(Ok((out, state.revision))),
                Err(e) if e.fails_batch() => return Err(e),
                Err(e) => self.outcome = Some(Err(e)),
            }
            Ok(())
        })
    }

    fn leases(&self, out: &mut Vec<LeaseId>) {
        self.req.leases(out);
    }

    fn reset(&mut self) {
        self.outcome = None;
    }

    fn answer(self: Box<Self>, failure: Option<Error>) {
        let result = match (failure, self.outcome) {
            (Some(e), _) => Err(e),
            (None, Some(outcome)) => outcome,
            (None, None) => Err(Error::Internal("write request was not applied".into())),
        };
        let _ = self.reply.send(result);
    }
}

/// Handle for submitting writes.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Box<dyn Job>>,
    health: Arc<Health>,
}

/// Why the writer's last transaction failed, until one succeeds.
#[derive(Default)]
struct Health {
    failure: Mutex<Option<String>>,
}

impl Health {
    fn set(&self, failure: Option<String>) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = failure;
    }

    fn get(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A write that changes nothing yet writes to the database (the meta row
/// set to itself): proves the writer can write, for health checks.
pub struct Probe;

impl Write for Probe {
    type Output = ();
    fn apply<'a>(&'a self, tx: &'a mut DbTx, _state: &'a mut BatchState) -> BoxFut<'a, ()> {
        Box::pin(tx.touch_meta())
    }
}

impl Writer {
    /// Starts the writer task.
    pub fn spawn(
        db: Db,
        feed: Arc<Feed>,
        settings: WriteSettings,
        metrics: Arc<Metrics>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(4096);
        let health = Arc::new(Health::default());
        let task = WriterTask {
            db,
            feed,
            settings,
            metrics,
            health: health.clone(),
        };
        let handle = tokio::spawn(task.run(rx));
        (Writer { queue, health }, handle)
    }

    /// False once the writer task has stopped.
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Why the last write transaction failed, if it did (cleared by the
    /// next one that commits).
    pub fn failure(&self) -> Option<String> {
        self.health.get()
    }

    /// Queues `req` and waits for its answer: its output and the store
    /// revision after it.
    pub async fn submit<W: Write>(&self, req: W) -> Result<(W::Output, Revision)> {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(Pending {
            req,
            outcome: None,
            reply,
        });
        self.queue.send(job).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}

struct WriterTask {
    db: Db,
    metrics: Arc<Metrics>,
    feed: Arc<Feed>,
    settings: WriteSettings,
    health: Arc<Health>,
}

impl WriterTask {
    async fn run(self, mut rx: mpsc::Receiver<Box<dyn Job>>) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            match self.commit(&mut batch).await {
                Ok(()) => batch.drain(..).for_each(|job| job.answer(None)),
                // Alone, or maybe committed: answer the failure as it is (a
                // write whose outcome is unknown must not be applied again).
                Err(e) if batch.len() == 1 || matches!(e, Error::OutcomeUnknown(_)) => {
                    let why = e.to_string();
                    let mut first = Some(e);
                    for job in batch.drain(..) {
                        let e = first
                            .take()
                            .unwrap_or_else(|| Error::OutcomeUnknown(why.clone()));
                        job.answer(Some(e));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, size = batch.len(), "batch failed, retrying one by one");
                    for mut job in batch.drain(..) {
                        job.reset();
                        let mut one = [job];
                        let failure = self.commit(&mut one).await.err();
                        let [job] = one;
                        job.answer(failure);
                    }
                }
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Applies `jobs` in one transaction and commits it. `Ok`: committed,
    /// each job holds its own outcome. `Err`: nothing was committed, or
    /// (`Error::OutcomeUnknown`) COMMIT failed and the database could not
    /// tell whether it took effect.
    async fn commit(&self, jobs: &mut [Box<dyn Job>]) -> Result<()> {
        let result = self.try_commit(jobs).await;
        self.health
            .set(result.as_ref().err().map(|e| e.to_string()));
        result
    }

    async fn try_commit(&self, jobs: &mut [Box<dyn Job>]) -> Result<()> {
        let began = std::time::Instant::now();
        let batch = rand::random::<i64>();
        let mut tx = self.db.begin_write().await?;
        let meta = match tx.lock_meta().await {
            Ok(meta) => meta,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        // Nothing else changes the index until this batch is published or
        // taken out again.
        let feed = self.feed.hold().await;
        let mut state = BatchState::new(meta, self.settings, self.feed.mem.clone());
        let applied = match feed.catch_up(meta.revision).await {
            Ok(()) => match self.feed.mem.read().revision() {
                served if served > meta.revision => Err(Error::Internal(format!(
                    "the database is at revision {}, behind revision {served} this instance \
                     has served: it lost commits",
                    meta.revision
                ))),
                _ => Ok(()),
            },
            Err(e) => Err(e),
        };
        let applied = match applied {
            Ok(()) => self.apply_all(&mut tx, jobs, &mut state, batch).await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            self.feed
                .mem
                .write()
                .rollback(&state.touched, meta.revision);
            let _ = tx.rollback().await;
            return Err(e);
        }
        let committing = std::time::Instant::now();
        if let Err(e) = tx.commit().await {
            // The connection may have broken after the database
            // committed: ask it, rather than guess.
            // Where only this process writes, a batch that made revisions
            // committed iff the meta row holds its last one (it records no
            // batch row).
            let made =
                (self.sole_writer() && state.revision > meta.revision).then_some(state.revision);
            let committed = self.committed(batch, made).await;
            if !matches!(committed, Ok(true)) {
                // Not committed, or unknown: the index forgets the batch;
                // if it did commit, the feed reads it from the log.
                self.feed
                    .mem
                    .write()
                    .rollback(&state.touched, meta.revision);
                committed?;
                return Err(e);
            }
            tracing::warn!(error = %e, "COMMIT failed, yet the batch was committed");
        }
        self.metrics
            .commit_seconds
            .observe(committing.elapsed().as_secs_f64());
        self.metrics
            .txn_seconds
            .observe(began.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(jobs.len() as f64);
        feed.publish(state);
        Ok(())
    }

    /// After a failed COMMIT: whether batch `id` took effect, asked on a
    /// fresh connection: its batch row, or, where only this process writes
    /// and the batch `made` revisions up to one, the meta row having it.
    /// Locking the meta row first waits until the old transaction has ended
    /// either way. `Err(OutcomeUnknown)` when the database cannot be asked.
    async fn committed(&self, id: i64, made: Option<Revision>) -> Result<bool> {
        let mut delay = std::time::Duration::from_millis(100);
        let mut last = String::new();
        for _ in 0..RESOLVE_ATTEMPTS {
            let asked = async {
                let mut tx = self.db.begin_write().await?;
                let meta = tx.lock_meta().await?;
                let found = match made {
                    Some(revision) => meta.revision >= revision,
                    None => tx.batch(id).await?.is_some(),
                };
                tx.rollback().await?;
                Ok::<_, Error>(found)
            };
            match asked.await {
                Ok(found) => return Ok(found),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(2));
        }
        Err(Error::OutcomeUnknown(last))
    }

    async fn apply_all(
        &self,
        tx: &mut DbTx,
        jobs: &mut [Box<dyn Job>],
        state: &mut BatchState,
        batch: i64,
    ) -> Result<()> {
        let start = state.revision;
        let mut leases = Vec::new();
        for job in jobs.iter() {
            job.leases(&mut leases);
        }
        if !leases.is_empty() {
            leases.sort_unstable();
            leases.dedup();
            let existing = tx.leases_existing(&leases).await?;
            state.leases = leases.iter().map(|id| (*id, false)).collect();
            state
                .leases
                .extend(existing.into_iter().map(|id| (id, true)));
        }
        for job in jobs.iter_mut() {
            job.apply(tx, state).await?;
        }
        // A batch is looked up by its id when its COMMIT failed; where only
        // this process writes, one that made revisions is known by them.
        if state.revision != start {
            let rows = std::mem::take(&mut state.pending_log);
            let batch = (!self.sole_writer()).then_some(batch);
            tx.write_batch(&rows, state.revision, batch).await?;
        } else {
            if state.notify {
                tx.notify(state.revision).await?;
            }
            tx.record_batch(batch, state.revision).await?;
        }
        Ok(())
    }

    fn sole_writer(&self) -> bool {
        self.db.dialect().sql().sole_writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::lease::Revoke;
    use crate::mvcc::request::{Compare, CompareResult, CompareTarget, Op, PutRequest, TxnRequest};
    use crate::mvcc::{Store, test_store};
    use bytes::Bytes;

    /// A request whose database work fails: the batch it is in fails.
    struct Broken;

    impl Write for Broken {
        type Output = ();
        fn apply<'a>(&'a self, _: &'a mut DbTx, _: &'a mut BatchState) -> BoxFut<'a, ()> {
            Box::pin(async { Err(Error::Internal("injected failure".into())) })
        }
    }

    fn put(i: usize) -> PutRequest {
        PutRequest {
            key: format!("k{i}").into(),
            value: "v".into(),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        }
    }

    /// Submits `n` puts with `other` in the middle, all queued before the
    /// writer runs again (one thread), so they reach it as one batch.
    async fn batch_with<W: Write>(
        store: &Store,
        n: usize,
        other: W,
    ) -> (Vec<Revision>, Result<(W::Output, Revision)>) {
        let mut puts = Vec::new();
        for i in 0..n {
            let s = store.clone();
            puts.push(tokio::spawn(async move { s.write(put(i)).await }));
        }
        let s = store.clone();
        let other = tokio::spawn(async move { s.write(other).await });
        let mut revisions = Vec::new();
        for p in puts {
            revisions.push(p.await.unwrap().expect("put").1);
        }
        revisions.sort();
        (revisions, other.await.unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_error_fails_only_that_request() {
        let store = test_store().await;
        let (revisions, revoke) = batch_with(&store, 5, Revoke { id: 99 }).await;
        assert!(matches!(revoke, Err(Error::LeaseNotFound(99))));
        assert_eq!(revisions, vec![2, 3, 4, 5, 6]);
        let batches = store.metrics.batch_size.get_sample_count();
        let requests = store.metrics.batch_size.get_sample_sum();
        assert_eq!((batches, requests), (1, 6.0), "one transaction for all six");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_batch_is_retried_request_by_request() {
        let store = test_store().await;
        let (revisions, broken) = batch_with(&store, 5, Broken).await;
        assert!(matches!(broken, Err(Error::Internal(_))), "{broken:?}");
        // Every put committed once, alone, with dense revisions.
        assert_eq!(revisions, vec![2, 3, 4, 5, 6]);
        assert_eq!(store.meta().await.unwrap().revision, 6);
        assert_eq!(store.metrics.batch_size.get_sample_count(), 5);
    }

    /// kube-apiserver's create: Txn(mod_revision(key) == 0 → put).
    fn create(key: &str, value: &str) -> TxnRequest {
        TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Mod(0),
                key: key.to_string().into(),
                range_end: Bytes::new(),
            }],
            success: vec![Op::Put(PutRequest {
                key: key.to_string().into(),
                value: value.to_string().into(),
                ..put(0)
            })],
            failure: vec![],
        }
    }

    /// A read from the database may see a commit before the writer has
    /// applied it to the key cache; a single-key read after it must still
    /// not answer an older revision (the robustness test found this).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_never_answers_an_older_revision_than_one_already_seen() {
        use crate::mvcc::request::RangeRequest;
        use crate::types::KeyRange;
        let store = test_store().await;
        store.write(put(0)).await.unwrap();
        let writes = {
            let s = store.clone();
            tokio::spawn(async move {
                for i in 0..3000 {
                    s.write(put(i % 2)).await.unwrap();
                }
            })
        };
        let read = |key: &'static str, end: &'static str| RangeRequest {
            range: KeyRange::from_etcd(&key.into(), &end.into()),
            options: Default::default(),
        };
        let (all, one) = (read("k", "l"), read("k1", ""));
        while !writes.is_finished() {
            let (_, seen) = store.range(&all).await.unwrap();
            let (_, then) = store.range(&one).await.unwrap();
            assert!(then >= seen, "answered revision {then} after {seen}");
        }
        writes.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn compares_in_one_batch_see_the_state_before_and_each_other() {
        let store = test_store().await;
        store.write(put(0)).await.unwrap(); // k0 exists before the batch
        // All queued before the writer runs (one thread): one batch, whose
        // keys are read in one statement before any request applies.
        let mut tasks = Vec::new();
        for (key, value) in [("k0", "a"), ("k1", "b"), ("k1", "c"), ("k2", "d")] {
            let s = store.clone();
            let req = create(key, value);
            tasks.push(tokio::spawn(async move { s.write(req).await }));
        }
        let mut succeeded = Vec::new();
        for t in tasks {
            succeeded.push(t.await.unwrap().expect("txn").0.succeeded);
        }
        // k0 existed; the second create of k1 sees the first one.
        assert_eq!(succeeded, vec![false, true, false, true]);
        assert_eq!(store.metrics.batch_size.get_sample_count(), 2);
        let all = crate::mvcc::request::RangeRequest {
            range: crate::types::KeyRange::from_etcd(&"k".into(), &"l".into()),
            options: Default::default(),
        };
        let (got, _) = store.range(&all).await.unwrap();
        let values: Vec<(Bytes, Bytes)> = got
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("k0".into(), "v".into()),
                ("k1".into(), "b".into()),
                ("k2".into(), "d".into())
            ]
        );
    }
}
