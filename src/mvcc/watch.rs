//! Watching, the engine's side (etcd's `mvcc.WatchStream`): the watchers of
//! one client stream, each a key range with a cursor — the newest revision
//! it has been given. [`WatchStream::next`] brings the watchers up to the
//! newest revision one step at a time, taking events from the hub's memory,
//! or from the log in the database when the hub no longer holds them (a
//! new watcher's start revision, or a reader slower than the ring), so
//! nothing is skipped or repeated and memory per watcher stays bounded. A
//! watcher whose cursor falls below the compact revision is cancelled with
//! it, as etcd does. The gRPC layer (`server/watch.rs`) speaks the protocol
//! and decides when to call.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::mvcc::Store;
use crate::mvcc::hub::{RevisionEvents, Since};
use crate::types::{Event, EventKind, KeyRange, Revision};

/// Revisions read from the log per catch-up step.
const CATCH_UP_REVISIONS: i64 = 256;
/// Revisions taken from the hub per step.
const HUB_BATCH: usize = 1000;

/// What a watcher selects.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub range: KeyRange,
    /// First revision to deliver; 0 or less: the next one committed.
    pub start_revision: Revision,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// Why a watcher was not created.
#[derive(Debug)]
pub enum Refused {
    /// The requested id is in use on this stream.
    DuplicateId,
    /// `range_end` is not after `key`.
    EmptyRange,
    /// The start revision is below the compact revision: the watcher is
    /// created and at once cancelled with it (etcd answers both).
    Compacted { id: i64, compact: Revision },
}

/// What [`WatchStream::next`] has for the client.
#[derive(Debug)]
pub enum Delivery {
    /// Events for watcher `id` (never empty), all at or below `revision`,
    /// which the watcher has now seen up to.
    Events {
        id: i64,
        events: Vec<Event>,
        revision: Revision,
    },
    /// Watcher `id` fell below the compact revision and is gone.
    Compacted { id: i64, compact: Revision },
}

struct Watcher {
    spec: WatchSpec,
    /// Newest revision this watcher has been given (or scanned past).
    cursor: Revision,
}

/// The watchers of one client stream.
pub struct WatchStream {
    store: Store,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

impl WatchStream {
    pub(super) fn new(store: Store) -> WatchStream {
        WatchStream {
            store,
            watchers: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// The newest revision published to watchers.
    pub fn latest(&self) -> Revision {
        self.store.hub().latest()
    }

    /// Changes whenever a revision is published.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.store.hub().subscribe()
    }

    /// Creates a watcher; `id` 0 picks the next free one. Returns its id.
    pub async fn watch(&mut self, id: i64, spec: WatchSpec) -> Result<i64, Refused> {
        if spec.range.is_empty() {
            return Err(Refused::EmptyRange);
        }
        let id = if id != 0 {
            if self.watchers.contains_key(&id) {
                return Err(Refused::DuplicateId);
            }
            id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let cursor = if spec.start_revision > 0 {
            let compact = self.store.compact_revision();
            if spec.start_revision < compact {
                return Err(Refused::Compacted { id, compact });
            }
            spec.start_revision - 1
        } else {
            self.latest()
        };
        self.watchers.insert(id, Watcher { spec, cursor });
        self.store.metrics().watchers.inc();
        Ok(id)
    }

    /// Removes a watcher; false if there was none with this id.
    pub fn cancel(&mut self, id: i64) -> bool {
        let found = self.watchers.remove(&id).is_some();
        if found {
            self.store.metrics().watchers.dec();
        }
        found
    }

    /// Whether watcher `id` has been given everything published.
    pub fn synced(&self, id: i64) -> bool {
        let latest = self.latest();
        self.watchers.get(&id).is_some_and(|w| w.cursor >= latest)
    }

    /// Whether every watcher has been given everything published.
    pub fn all_synced(&self) -> bool {
        let latest = self.latest();
        self.watchers.values().all(|w| w.cursor >= latest)
    }

    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.watchers.keys().copied()
    }

    /// The next step for a watcher behind the newest revision, or `None`
    /// when all are synced. Steps that select no event only advance the
    /// watcher's cursor and are not returned.
    pub async fn next(&mut self) -> Result<Option<Delivery>> {
        loop {
            let latest = self.latest();
            let Some((&id, w)) = self.watchers.iter().find(|(_, w)| w.cursor < latest) else {
                return Ok(None);
            };
            let cursor = w.cursor;
            let (revisions, upto) = match self.store.hub().since(cursor, HUB_BATCH) {
                Since::Events(v) if v.first().is_some_and(|r| r.revision == cursor + 1) => {
                    let upto = v.last().map_or(cursor, |r| r.revision);
                    (v, upto)
                }
                _ => {
                    self.store.metrics().watch_catchups.inc();
                    match self.read_log(cursor, latest).await? {
                        Ok(step) => step,
                        Err(compact) => {
                            self.cancel(id);
                            return Ok(Some(Delivery::Compacted { id, compact }));
                        }
                    }
                }
            };
            let compact = self.store.hub().compact_revision();
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            let events = select(&w.spec, &revisions, cursor, compact);
            w.cursor = upto;
            if !events.is_empty() {
                return Ok(Some(Delivery::Events {
                    id,
                    events,
                    revision: upto,
                }));
            }
        }
    }

    /// Revisions after `cursor` (up to a step) from the log; `Err(compact)`
    /// when compaction has removed some of them.
    async fn read_log(
        &self,
        cursor: Revision,
        latest: Revision,
    ) -> Result<Result<(Vec<Arc<RevisionEvents>>, Revision), Revision>> {
        let upto = latest.min(cursor + CATCH_UP_REVISIONS);
        let changes = match self.store.log_after(cursor, upto).await? {
            Ok(changes) => changes,
            Err(compact) => return Ok(Err(compact)),
        };
        let events = match self.store.events(changes).await {
            Ok(events) => events,
            // A previous version compaction removed meanwhile.
            Err(Error::Compacted { compacted, .. }) => return Ok(Err(compacted)),
            Err(e) => return Err(e),
        };
        let revisions = events
            .into_iter()
            .map(|(revision, events)| Arc::new(RevisionEvents { revision, events }))
            .collect();
        Ok(Ok((revisions, upto)))
    }
}

/// The events of `revisions` after `cursor` that `spec` selects. etcd reads
/// a `prev_kv` at `revision - 1`, which fails below the compact revision,
/// and then sends none: so does this.
fn select(
    spec: &WatchSpec,
    revisions: &[Arc<RevisionEvents>],
    cursor: Revision,
    compact: Revision,
) -> Vec<Event> {
    let mut out = Vec::new();
    for rev in revisions.iter().filter(|r| r.revision > cursor) {
        for ev in &rev.events {
            if !spec.range.contains(&ev.kv.key)
                || (ev.kind == EventKind::Put && spec.no_put)
                || (ev.kind == EventKind::Delete && spec.no_delete)
            {
                continue;
            }
            out.push(Event {
                kind: ev.kind,
                kv: ev.kv.clone(),
                prev_kv: ev
                    .prev_kv
                    .clone()
                    .filter(|_| spec.prev_kv && rev.revision > compact),
            });
        }
    }
    out
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.store
            .metrics()
            .watchers
            .sub(self.watchers.len() as i64);
    }
}
