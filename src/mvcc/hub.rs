//! The watch hub: recent committed events in memory, by revision, plus a
//! signal carrying the newest revision. Watch streams pull from it with
//! their own cursor; a cursor older than the ring falls back to the log in
//! the database (DESIGN decision 7), so nothing is ever dropped for a slow
//! reader.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::mvcc::types::{Event, Revision};

/// All events of one revision.
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: Revision,
    pub events: Vec<Event>,
}

impl RevisionEvents {
    fn bytes(&self) -> usize {
        self.events
            .iter()
            .map(|e| {
                e.kv.key.len()
                    + e.kv.value.len()
                    + e.prev_kv
                        .as_ref()
                        .map_or(0, |p| p.value.len() + p.key.len())
                    + 96
            })
            .sum()
    }
}

struct Ring {
    /// Contiguous revisions `(base, last]`.
    entries: VecDeque<Arc<RevisionEvents>>,
    /// The ring holds every revision after `base`.
    base: Revision,
    bytes: usize,
}

pub struct Hub {
    ring: Mutex<Ring>,
    latest: watch::Sender<Revision>,
    /// The newest compact revision this instance knows of. Events at or
    /// below it lose their `prev_kv`: etcd reads the previous version at
    /// `revision - 1`, which compaction has made unreadable.
    compact: std::sync::atomic::AtomicI64,
    max_bytes: usize,
    max_revisions: usize,
}

/// What a reader gets for "everything after revision R".
pub enum Since {
    /// The events, possibly empty when the reader is up to date.
    Events(Vec<Arc<RevisionEvents>>),
    /// The ring no longer reaches back that far: read the log.
    Evicted,
}

impl Hub {
    /// A hub whose history starts after `revision` (the store's revision at
    /// startup).
    pub fn new(
        revision: Revision,
        compact: Revision,
        max_bytes: usize,
        max_revisions: usize,
    ) -> Hub {
        Hub {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                base: revision,
                bytes: 0,
            }),
            latest: watch::Sender::new(revision),
            compact: compact.into(),
            max_bytes,
            max_revisions,
        }
    }

    pub fn latest(&self) -> Revision {
        *self.latest.borrow()
    }

    pub fn compact_revision(&self) -> Revision {
        self.compact.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records a compaction (never moves backwards).
    pub fn compacted(&self, revision: Revision) {
        self.compact
            .fetch_max(revision, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.latest.subscribe()
    }

    /// Publishes committed revisions in order. A gap (revisions written
    /// elsewhere that this hub has not seen) resets the ring: readers behind
    /// the gap read the log.
    pub fn publish(&self, batch: Vec<(Revision, Vec<Event>)>) {
        let Some(newest) = batch.last().map(|(r, _)| *r) else {
            return;
        };
        {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            for (revision, events) in batch {
                let last = ring.entries.back().map_or(ring.base, |e| e.revision);
                if revision <= last {
                    continue;
                }
                if revision != last + 1 {
                    ring.entries.clear();
                    ring.bytes = 0;
                    ring.base = revision - 1;
                }
                let item = Arc::new(RevisionEvents { revision, events });
                ring.bytes += item.bytes();
                ring.entries.push_back(item);
            }
            while ring.entries.len() > 1
                && (ring.bytes > self.max_bytes || ring.entries.len() > self.max_revisions)
            {
                if let Some(old) = ring.entries.pop_front() {
                    ring.bytes -= old.bytes();
                    ring.base = old.revision;
                }
            }
        }
        self.latest.send_if_modified(|cur| {
            if newest > *cur {
                *cur = newest;
                true
            } else {
                false
            }
        });
    }

    /// Events of revisions after `after`, at most `max` revisions.
    pub fn since(&self, after: Revision, max: usize) -> Since {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if after < ring.base {
            return Since::Evicted;
        }
        let skip = (after - ring.base) as usize;
        Since::Events(ring.entries.iter().skip(skip).take(max).cloned().collect())
    }
}
