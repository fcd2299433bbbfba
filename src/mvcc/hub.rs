//! The watch hub: recent committed events in memory, by revision, plus a
//! signal carrying the newest revision. Watch streams pull from it with
//! their own cursor; a cursor older than the ring falls back to the log in
//! the database (`watch.rs`), so nothing is ever dropped for a slow
//! reader.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::types::{Event, Revision};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EventKind, KeyValue};

    fn put(key: &str, revision: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                value: bytes::Bytes::from(vec![b'v'; 100]),
                lease: 0,
            },
            prev_kv: None,
        }
    }

    fn revisions(since: Since) -> Vec<Revision> {
        match since {
            Since::Events(v) => v.iter().map(|r| r.revision).collect(),
            Since::Evicted => panic!("evicted"),
        }
    }

    #[test]
    fn readers_get_what_follows_their_cursor() {
        let hub = Hub::new(10, 0, 1 << 20, 100);
        hub.publish((11..=15).map(|r| (r, vec![put("a", r)])).collect());
        assert_eq!(hub.latest(), 15);
        assert_eq!(revisions(hub.since(10, 100)), vec![11, 12, 13, 14, 15]);
        assert_eq!(revisions(hub.since(13, 100)), vec![14, 15]);
        assert_eq!(revisions(hub.since(11, 2)), vec![12, 13]);
        assert!(revisions(hub.since(15, 100)).is_empty());
        // Before the hub's start: the log has it, not the hub.
        assert!(matches!(hub.since(9, 100), Since::Evicted));
        // Republishing what it holds changes nothing.
        hub.publish(vec![(14, vec![put("b", 14)])]);
        assert_eq!(revisions(hub.since(10, 100)).len(), 5);
    }

    #[test]
    fn a_gap_restarts_the_ring_after_it() {
        let hub = Hub::new(10, 0, 1 << 20, 100);
        hub.publish(vec![(11, vec![put("a", 11)])]);
        // Revisions 12-19 were written by another instance and never seen:
        // the ring restarts at 20, and readers behind it go to the log.
        hub.publish(vec![(20, vec![put("a", 20)])]);
        assert_eq!(hub.latest(), 20);
        assert!(matches!(hub.since(11, 100), Since::Evicted));
        assert_eq!(revisions(hub.since(19, 100)), vec![20]);
    }

    #[test]
    fn the_oldest_revisions_go_first_when_full() {
        // At most 3 revisions.
        let hub = Hub::new(0, 0, 1 << 20, 3);
        hub.publish((1..=5).map(|r| (r, vec![put("a", r)])).collect());
        assert!(matches!(hub.since(1, 100), Since::Evicted));
        assert_eq!(revisions(hub.since(2, 100)), vec![3, 4, 5]);
        // At most ~2 revisions' bytes: the newest always stays.
        let hub = Hub::new(0, 0, 500, 100);
        hub.publish((1..=5).map(|r| (r, vec![put("a", r)])).collect());
        match hub.since(0, 100) {
            Since::Evicted => {}
            Since::Events(v) => panic!("expected eviction, got {} revisions", v.len()),
        }
        assert_eq!(*revisions(hub.since(4, 100)).last().unwrap(), 5);
    }

    #[test]
    fn the_compact_revision_only_moves_forward() {
        let hub = Hub::new(10, 4, 1 << 20, 100);
        assert_eq!(hub.compact_revision(), 4);
        hub.compacted(8);
        hub.compacted(6);
        assert_eq!(hub.compact_revision(), 8);
    }
}
