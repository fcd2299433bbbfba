//! The current state of recently used keys, in memory, for a database that
//! only this process writes (SQLite: the file is locked to one process).
//!
//! A single-key Range at the current revision is answered from here without
//! a database round trip, and the writer reads the keys its requests compare
//! from here. That is linearizable because every change to the current
//! state is made by this process's writer, which applies it here after the
//! COMMIT and before it answers anyone: an entry describes its key at the
//! cache's `revision`, and a read that finds it observes every write
//! acknowledged before the read began.
//!
//! Entries read from the database are added only when they were read at the
//! cache's revision (the read's snapshot revision comes from the same
//! statement), so a read that raced a commit never installs a stale value.
//! From just before the writer's COMMIT until it has applied the batch, the
//! cache serves nothing: the database's readers may already see the new
//! revision, and a client that read it there must never then be answered
//! an older one from here. After a COMMIT whose outcome is unknown the cache
//! forgets everything and serves nothing until the writer's next commit
//! tells it the revision again.
//!
//! The size is bounded by two generations: entries go into the young one;
//! when it holds half the budget it becomes the old one, and the previous
//! old one is dropped. A hit in the old generation moves the entry back.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::types::{Event, EventKind, KeyValue, Revision};

/// Bytes an entry costs beyond its key and value: the map slot (with the
/// table's spare capacity), the `KeyValue`, the allocations' headers. With
/// 120 a 64 MiB budget held 78 MiB (1M keys of 256 bytes, random gets).
const ENTRY_OVERHEAD: usize = 200;

/// A key's state at the cache's revision: `None` when it does not exist.
type Entry = Option<KeyValue>;

pub struct CurrentCache {
    inner: Mutex<Inner>,
    /// Bytes per generation.
    generation_bytes: usize,
}

struct Inner {
    /// The revision every entry describes; `None` while unknown (after a
    /// commit with an unknown outcome), when nothing is served or added.
    revision: Option<Revision>,
    young: HashMap<Bytes, Entry>,
    young_bytes: usize,
    old: HashMap<Bytes, Entry>,
}

fn cost(key: &Bytes, entry: &Entry) -> usize {
    key.len() + entry.as_ref().map_or(0, |kv| kv.value.len()) + ENTRY_OVERHEAD
}

impl Inner {
    fn insert(&mut self, key: Bytes, entry: Entry, generation_bytes: usize) {
        let cost = cost(&key, &entry);
        if self.young_bytes + cost > generation_bytes && !self.young.is_empty() {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += cost;
        self.young.insert(key, entry);
    }

    fn get(&mut self, key: &[u8], generation_bytes: usize) -> Option<Entry> {
        if let Some(e) = self.young.get(key) {
            return Some(e.clone());
        }
        let (k, e) = self.old.remove_entry(key)?;
        self.insert(k, e.clone(), generation_bytes);
        Some(e)
    }
}

impl CurrentCache {
    /// An empty cache of at most about `bytes`, describing `revision`.
    pub fn new(bytes: usize, revision: Revision) -> CurrentCache {
        CurrentCache {
            inner: Mutex::new(Inner {
                revision: Some(revision),
                young: HashMap::new(),
                young_bytes: 0,
                old: HashMap::new(),
            }),
            generation_bytes: bytes / 2,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked: every
        // mutation is a single map operation.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key's current state and the revision it is current at, if known.
    pub fn get(&self, key: &[u8]) -> Option<(Entry, Revision)> {
        let mut inner = self.lock();
        let revision = inner.revision?;
        let entry = inner.get(key, self.generation_bytes)?;
        Some((entry, revision))
    }

    /// The key's state if known and the cache describes `revision`.
    pub fn get_at(&self, key: &[u8], revision: Revision) -> Option<Entry> {
        match self.get(key) {
            Some((entry, at)) if at == revision => Some(entry),
            _ => None,
        }
    }

    /// Adds a key's state as read from the database at revision `read_at`,
    /// unless the cache has moved past it (or does not know where it is).
    /// The key is copied: a request's key is a slice of the whole request
    /// buffer, which it would otherwise keep alive.
    pub fn fill(&self, key: &[u8], entry: Entry, read_at: Revision) {
        let mut inner = self.lock();
        if inner.revision == Some(read_at) {
            inner.insert(Bytes::copy_from_slice(key), entry, self.generation_bytes);
        }
    }

    /// Stops serving, just before the writer's COMMIT (the database may show
    /// the new revision from then on). Returns what [`resume`] restores if
    /// the COMMIT did not take effect; [`committed`] ends it otherwise.
    ///
    /// [`resume`]: CurrentCache::resume
    /// [`committed`]: CurrentCache::committed
    pub fn pause(&self) -> Option<Revision> {
        self.lock().revision.take()
    }

    /// Serves again at `revision` (what [`pause`] returned): the COMMIT did
    /// not take effect, so the entries are still current.
    ///
    /// [`pause`]: CurrentCache::pause
    pub fn resume(&self, revision: Option<Revision>) {
        self.lock().revision = revision;
    }

    /// Applies a committed batch: its events, and the store revision after
    /// it. Called by the writer before it answers the batch's requests.
    pub fn committed(&self, events: &[(Revision, Vec<Event>)], revision: Revision) {
        let mut inner = self.lock();
        for event in events.iter().flat_map(|(_, evs)| evs) {
            let entry = match event.kind {
                EventKind::Put => Some(event.kv.clone()),
                EventKind::Delete => None,
            };
            // Copied, as in `fill`: a delete's key may come from the request.
            let key = Bytes::copy_from_slice(&event.kv.key);
            inner.insert(key, entry, self.generation_bytes);
        }
        inner.revision = Some(revision);
    }

    /// Forgets everything: the database may hold changes the cache has not
    /// seen (a COMMIT whose outcome is unknown). The next [`committed`]
    /// starts it again.
    ///
    /// [`committed`]: CurrentCache::committed
    pub fn forget(&self) {
        let mut inner = self.lock();
        inner.revision = None;
        inner.young.clear();
        inner.old.clear();
        inner.young_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: Revision) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    fn put(key: &str, value: &str, rev: Revision) -> (Revision, Vec<Event>) {
        let kv = kv(key, value, rev);
        (
            rev,
            vec![Event {
                kind: EventKind::Put,
                kv,
                prev_kv: None,
            }],
        )
    }

    #[test]
    fn a_read_that_raced_a_commit_is_not_installed() {
        let c = CurrentCache::new(1 << 20, 5);
        // Read at 5, but the writer commits revision 6 first.
        c.committed(&[put("a", "new", 6)], 6);
        c.fill(b"a", Some(kv("a", "old", 3)), 5);
        let (entry, at) = c.get(b"a").expect("cached");
        assert_eq!(at, 6);
        assert_eq!(entry.unwrap().value, Bytes::from_static(b"new"));
        // A read at the cache's revision is installed, absence included.
        c.fill(b"b", None, 6);
        assert_eq!(c.get(b"b"), Some((None, 6)));
        assert_eq!(c.get_at(b"b", 5), None);
    }

    #[test]
    fn after_an_unknown_outcome_nothing_is_served_until_the_next_commit() {
        let c = CurrentCache::new(1 << 20, 1);
        c.committed(&[put("a", "v", 2)], 2);
        c.forget();
        assert_eq!(c.get(b"a"), None);
        c.fill(b"a", None, 2);
        assert_eq!(c.get(b"a"), None);
        c.committed(&[put("b", "v", 4)], 4);
        assert_eq!(c.get(b"a"), None, "not relearned from a stale read");
        assert!(c.get(b"b").is_some());
    }

    #[test]
    fn nothing_is_served_while_a_commit_is_in_flight() {
        let c = CurrentCache::new(1 << 20, 1);
        c.committed(&[put("a", "v1", 2)], 2);
        let paused = c.pause();
        assert_eq!(paused, Some(2));
        // The database may already show revision 3: no answer at 2 now,
        // and a read at 2 is not installed.
        assert_eq!(c.get(b"a"), None);
        c.fill(b"b", None, 2);
        // Not committed after all: serving again at 2.
        c.resume(paused);
        assert_eq!(c.get(b"a").map(|(_, at)| at), Some(2));
        assert_eq!(c.get(b"b"), None);
        // Committed: serving at the new revision.
        c.pause();
        c.committed(&[put("a", "v3", 3)], 3);
        let (entry, at) = c.get(b"a").expect("cached");
        assert_eq!((entry.unwrap().value, at), (Bytes::from_static(b"v3"), 3));
    }

    #[test]
    fn keys_do_not_keep_the_request_buffer_alive() {
        let c = CurrentCache::new(1 << 20, 1);
        let request = Bytes::from((0..64 << 10).map(|i| i as u8).collect::<Vec<u8>>());
        let key = request.slice(10..20);
        c.fill(&key, None, 1);
        let deleted = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: request.slice(30..40),
                mod_revision: 2,
                ..Default::default()
            },
            prev_kv: None,
        };
        c.committed(&[(2, vec![deleted])], 2);
        let inner = c.lock();
        let buffer = request.as_ptr_range();
        for k in inner.young.keys().chain(inner.old.keys()) {
            assert!(
                !buffer.contains(&k.as_ptr()),
                "a cached key points into the request"
            );
        }
        assert_eq!(inner.young.len(), 2);
    }

    #[test]
    fn memory_stays_within_two_generations() {
        let c = CurrentCache::new(64 << 10, 1);
        for i in 0..10_000 {
            c.fill(format!("key-{i}").as_bytes(), None, 1);
        }
        let inner = c.lock();
        let held: usize = inner
            .young
            .iter()
            .chain(inner.old.iter())
            .map(|(k, e)| cost(k, e))
            .sum();
        assert!(held <= 64 << 10, "{held} bytes held");
        // The most recent entries are still there.
        drop(inner);
        assert!(c.get(b"key-9999").is_some());
    }
}
