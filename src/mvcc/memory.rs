//! What each instance keeps of the store in memory: the key index and the
//! value cache, and the ways they are filled — from the whole log at
//! start-up, from the log as other instances commit, and by the writer.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::mvcc::index::{Found, Index};
use crate::mvcc::values::ValueCache;
use crate::mvcc::writer::BoxFut;
use crate::sql::{Db, LogRow, Meta};
use crate::types::{Event, EventKind, KeyValue, Rev, Revision};

/// Revisions read per statement while building the index, at first; the
/// span grows while the rows are few and shrinks when they are many.
const BUILD_SPAN: i64 = 4096;
const BUILD_ROWS: usize = 50_000;
/// Keys compacted per hold of the index's write lock.
const COMPACT_KEYS: usize = 20_000;

pub struct Memory {
    index: RwLock<Index>,
    pub values: ValueCache,
}

/// Where values the cache does not hold are read.
pub trait ValueSource: Send {
    /// A value the source holds itself (a batch's own changes, not
    /// committed yet).
    fn own(&self, _rev: Rev) -> Option<Bytes> {
        None
    }

    /// Reads values by position; positions compaction removed are left
    /// out.
    fn fetch<'a>(&'a mut self, revs: &'a [Rev]) -> BoxFut<'a, Vec<(Rev, Bytes)>>;
}

/// Values read through the read pool, one statement per 64.
pub struct FromDb<'a>(pub &'a Db);

impl ValueSource for FromDb<'_> {
    fn fetch<'a>(&'a mut self, revs: &'a [Rev]) -> BoxFut<'a, Vec<(Rev, Bytes)>> {
        Box::pin(self.0.values(revs))
    }
}

/// A key-value from what the index knows of it and its value.
pub fn key_value(f: Found, value: Bytes) -> KeyValue {
    KeyValue {
        key: f.key,
        create_revision: f.create_revision,
        mod_revision: f.rev.main,
        version: f.version,
        value,
        lease: f.lease,
    }
}

impl Memory {
    pub fn new(index: Index, value_cache_bytes: usize) -> Memory {
        Memory {
            index: RwLock::new(index),
            values: ValueCache::new(value_cache_bytes),
        }
    }

    /// The index, to read. Never held across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        // Every change to the index is complete before the lock is let go
        // (no method can panic half-way through a change it makes).
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The index, to change. Never held across an await.
    pub fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The values at `revs`, in order: from `src`'s own, the cache, then
    /// read from `src` (and cached: they are committed). A value no
    /// longer in the log was compacted away under the reader.
    pub async fn values(&self, src: &mut dyn ValueSource, revs: &[Rev]) -> Result<Vec<Bytes>> {
        let mut out: Vec<Option<Bytes>> = revs
            .iter()
            .map(|r| src.own(*r).or_else(|| self.values.get(*r)))
            .collect();
        let missing: Vec<Rev> = revs
            .iter()
            .zip(&out)
            .filter(|(_, v)| v.is_none())
            .map(|(r, _)| *r)
            .collect();
        if !missing.is_empty() {
            let mut read: std::collections::HashMap<Rev, Bytes> =
                src.fetch(&missing).await?.into_iter().collect();
            for (r, v) in revs.iter().zip(out.iter_mut()) {
                if v.is_none()
                    && let Some(found) = read.remove(r)
                {
                    self.values.insert(*r, &found);
                    *v = Some(found);
                }
            }
        }
        out.into_iter()
            .zip(revs)
            .map(|(v, r)| {
                v.ok_or_else(|| Error::Compacted {
                    required: r.main,
                    compacted: self.read().compact_revision(),
                })
            })
            .collect()
    }

    /// Key-values for what the index found, with their values.
    pub async fn with_values(
        &self,
        src: &mut dyn ValueSource,
        found: Vec<Found>,
    ) -> Result<Vec<KeyValue>> {
        let revs: Vec<Rev> = found.iter().map(|f| f.rev).collect();
        let values = self.values(src, &revs).await?;
        Ok(found
            .into_iter()
            .zip(values)
            .map(|(f, v)| key_value(f, v))
            .collect())
    }

    /// Positions of the versions `rows` (in the index already) replaced.
    pub fn superseded(&self, rows: &[LogRow]) -> Vec<Rev> {
        let ix = self.read();
        rows.iter()
            .filter(|r| r.prev_revision > 0)
            .filter_map(|r| ix.made_by(&r.kv.key, r.prev_revision).map(|f| f.rev))
            .collect()
    }

    /// Watch events for logged changes (in order, with their values) the
    /// index already holds: each with the version it replaced, read by
    /// the `prev_revision` the row names.
    pub async fn events(
        &self,
        src: &mut dyn ValueSource,
        rows: Vec<LogRow>,
    ) -> Result<Vec<(Revision, Vec<Event>)>> {
        let prevs: Vec<Option<Found>> = {
            let ix = self.read();
            let mut prevs = Vec::with_capacity(rows.len());
            for r in &rows {
                let prev = (r.prev_revision > 0)
                    .then(|| ix.made_by(&r.kv.key, r.prev_revision))
                    .flatten();
                if prev.is_none() && r.prev_revision > 0 && r.revision > ix.compact_revision() {
                    // The index compacted it away meanwhile (a newer
                    // compaction than the reader knew of).
                    return Err(Error::Compacted {
                        required: r.revision,
                        compacted: ix.compact_revision(),
                    });
                }
                prevs.push(prev);
            }
            prevs
        };
        let found: Vec<Found> = prevs.iter().flatten().cloned().collect();
        let mut prev_kvs = self.with_values(src, found).await?.into_iter();
        let mut out: Vec<(Revision, Vec<Event>)> = Vec::new();
        for (row, prev) in rows.into_iter().zip(prevs) {
            let prev_kv = prev.and_then(|_| prev_kvs.next());
            let revision = row.revision;
            let ev = if row.deleted {
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: row.kv.key,
                        mod_revision: revision,
                        ..KeyValue::default()
                    },
                    prev_kv,
                }
            } else {
                Event {
                    kind: EventKind::Put,
                    kv: row.kv,
                    prev_kv,
                }
            };
            match out.last_mut() {
                Some((rev, evs)) if *rev == revision => evs.push(ev),
                _ => out.push((revision, vec![ev])),
            }
        }
        Ok(out)
    }

    /// Compacts the index to `at` (its compact revision already says so),
    /// a slice of keys at a time, dropping the values of what goes.
    pub async fn compact(&self, at: Revision) {
        let mut next: Option<Bytes> = None;
        let mut dropped = Vec::new();
        loop {
            next = self
                .write()
                .compact_some(at, next.as_ref(), COMPACT_KEYS, &mut |r| dropped.push(r));
            for r in dropped.drain(..) {
                self.values.remove(r);
            }
            if next.is_none() {
                self.write().prune_leases();
                release_freed_memory();
                return;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Builds the index from the log up to the store's revision (read first),
/// from the checkpoint of the last graceful shutdown where there is one
/// (`checkpoint.rs`), with progress in the log every few seconds.
pub async fn build(db: &Db) -> Result<Index> {
    let meta = db.meta().await?;
    let start = match crate::mvcc::checkpoint::take(db).await {
        // A checkpoint past the database's revision cannot be its own.
        Some(ix) if ix.revision() <= meta.revision => ix,
        _ => Index::new(0, meta.compact_revision),
    };
    let ix = build_from(db, &meta, start).await?;
    release_freed_memory();
    Ok(ix)
}

/// Gives freed memory back to the system after the work that frees much
/// of it (building the index, compacting): glibc's heaps keep it otherwise
/// (the rows were read on one thread and freed on others).
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of glibc's heaps to
    // the system; it takes no pointer and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Brings `ix` (empty, or a checkpoint) up to `meta`'s revision from the
/// log, and compacts it to its compact revision.
async fn build_from(db: &Db, meta: &Meta, mut ix: Index) -> Result<Index> {
    let started = Instant::now();
    let (mut from, mut span, mut rows) = (ix.revision(), BUILD_SPAN, 0u64);
    let mut reported = Instant::now();
    // The next span is read while this one is applied.
    let read = |from: Revision, upto: Revision| {
        let db = db.clone();
        tokio::spawn(async move { db.scan(from, upto).await })
    };
    let mut upto = (from + span).min(meta.revision);
    let mut reading = (from < meta.revision).then(|| read(from, upto));
    while let Some(page) = reading.take() {
        let page = page
            .await
            .map_err(|e| Error::Internal(format!("reading the log: {e}")))??;
        rows += page.len() as u64;
        if page.len() < BUILD_ROWS / 4 {
            span = span.saturating_mul(2);
        } else if page.len() > BUILD_ROWS {
            span = (span / 2).max(1);
        }
        from = upto;
        if from < meta.revision {
            upto = (from + span).min(meta.revision);
            reading = Some(read(from, upto));
        }
        // The rows own their keys (read from the database, not slices of
        // anything larger): the index keeps them.
        for r in &page {
            ix.apply(r);
        }
        drop(page);
        if reported.elapsed() >= Duration::from_secs(2) {
            reported = Instant::now();
            tracing::info!(
                revision = from,
                of = meta.revision,
                rows,
                keys = ix.len(),
                "building the key index from the log"
            );
        }
    }
    ix.set_revision(meta.revision);
    ix.set_compact(meta.compact_revision);
    let mut next = None;
    loop {
        next = ix.compact_some(
            meta.compact_revision,
            next.as_ref(),
            usize::MAX,
            &mut |_| {},
        );
        if next.is_none() {
            break;
        }
    }
    ix.prune_leases();
    tracing::info!(
        revision = meta.revision,
        compact = meta.compact_revision,
        rows,
        keys = ix.len(),
        seconds = started.elapsed().as_secs_f64(),
        "key index built"
    );
    Ok(ix)
}
