//! The key index: etcd's treeIndex, in memory. For every key it holds the
//! key's retained history — each change's position in the log (`main`
//! revision, `sub` position), create revision, version, lease, or a
//! tombstone — back to the compact revision. Ranges at any retained
//! revision, counts, Txn compares and lease → keys are answered from it;
//! values are read by their log position (`values.rs` keeps the recent
//! ones in memory).
//!
//! Readers read at a revision no newer than [`Index::revision`], the newest
//! one whose changes are committed and all applied here. The writer adds a
//! batch's changes before it commits them (at revisions above
//! `revision`, which no reader looks at), so that later requests of the
//! batch see earlier ones; a batch that does not commit is taken out again
//! ([`Index::rollback`]).
//!
//! Compaction to C drops, per key, every change older than its newest one
//! at or below C, and that one too when it is a tombstone (etcd's
//! `keyIndex.compact`); a key with nothing left goes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::sql::LogRow;
use crate::types::{KeyRange, LeaseId, Rev, Revision};

/// One change of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    main: Revision,
    create: Revision,
    version: i64,
    lease: LeaseId,
    sub: u32,
    tomb: bool,
}

impl Entry {
    fn rev(&self) -> Rev {
        Rev {
            main: self.main,
            sub: i64::from(self.sub),
        }
    }
}

/// A key's changes, oldest first. Most keys hold one.
type History = SmallVec<[Entry; 1]>;

/// A live version of a key as the index knows it: everything but the
/// value, which is read by `rev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: Bytes,
    pub rev: Rev,
    pub create_revision: Revision,
    pub version: i64,
    pub lease: LeaseId,
}

pub struct Index {
    keys: BTreeMap<Bytes, History>,
    /// Keys with a retained change (committed or not) attached to the
    /// lease, and maybe more. Readers check each key at their revision.
    leases: HashMap<LeaseId, BTreeSet<Bytes>>,
    revision: Revision,
    compact: Revision,
    /// Changes held, over all keys.
    entries: usize,
}

/// The newest entry of `h` at or below `rev`.
#[inline]
fn at(h: &History, rev: Revision) -> Option<&Entry> {
    // Most reads are at the current revision, where it is the last.
    match h.last() {
        Some(last) if last.main <= rev => Some(last),
        _ => {
            let n = h.partition_point(|e| e.main <= rev);
            n.checked_sub(1).map(|i| &h[i])
        }
    }
}

fn found(key: &Bytes, e: &Entry) -> Found {
    Found {
        key: key.clone(),
        rev: e.rev(),
        create_revision: e.create,
        version: e.version,
        lease: e.lease,
    }
}

/// The live version of a key at `rev`.
fn live(key: &Bytes, h: &History, rev: Revision) -> Option<Found> {
    at(h, rev).filter(|e| !e.tomb).map(|e| found(key, e))
}

impl Index {
    /// An empty index of a store at `revision`, compacted at `compact`.
    pub fn new(revision: Revision, compact: Revision) -> Index {
        Index {
            keys: BTreeMap::new(),
            leases: HashMap::new(),
            revision,
            compact,
            entries: 0,
        }
    }

    /// The newest revision readers may read at.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn compact_revision(&self) -> Revision {
        self.compact
    }

    /// Declares every change up to `revision` committed and applied.
    pub fn set_revision(&mut self, revision: Revision) {
        self.revision = self.revision.max(revision);
    }

    /// Keys the index holds (live or with history).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Changes the index holds, tombstones included.
    pub fn entries(&self) -> usize {
        self.entries
    }

    fn span<'a>(&'a self, range: &KeyRange) -> impl Iterator<Item = (&'a Bytes, &'a History)> {
        let end = match &range.end {
            Some(e) if e <= &range.start => {
                // An empty interval: a span that yields nothing.
                let at = range.start.as_ref();
                return self
                    .keys
                    .range::<[u8], _>((Bound::Included(at), Bound::Excluded(at)))
                    .take(0);
            }
            Some(e) => Bound::Excluded(e.as_ref()),
            None => Bound::Unbounded,
        };
        self.keys
            .range::<[u8], _>((Bound::Included(range.start.as_ref()), end))
            .take(usize::MAX)
    }

    /// The live version of `key` at `rev`.
    pub fn get(&self, key: &[u8], rev: Revision) -> Option<Found> {
        let (k, h) = self.keys.get_key_value(key)?;
        live(k, h, rev)
    }

    /// Live keys of `range` at `rev`, ascending, at most `limit`.
    pub fn range(&self, range: &KeyRange, rev: Revision, limit: Option<usize>) -> Vec<Found> {
        let limit = limit.unwrap_or(usize::MAX);
        if let Some(key) = range.single_key() {
            // A get: one descent of the tree, not a range's two.
            return self
                .get(key, rev)
                .filter(|_| limit > 0)
                .into_iter()
                .collect();
        }
        let mut out = Vec::new();
        for (k, h) in self.span(range) {
            if out.len() >= limit {
                break;
            }
            if let Some(f) = live(k, h, rev) {
                out.push(f);
            }
        }
        out
    }

    /// How many keys of `range` are live at `rev`.
    pub fn count(&self, range: &KeyRange, rev: Revision) -> i64 {
        if let Some(key) = range.single_key() {
            return self.get(key, rev).is_some() as i64;
        }
        self.span(range)
            .filter(|(_, h)| at(h, rev).is_some_and(|e| !e.tomb))
            .count() as i64
    }

    /// Keys live at `rev` and attached to `lease` then, ascending.
    pub fn with_lease(&self, lease: LeaseId, rev: Revision) -> Vec<Found> {
        let Some(keys) = self.leases.get(&lease) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| {
                let (k, h) = self.keys.get_key_value(k)?;
                live(k, h, rev).filter(|f| f.lease == lease)
            })
            .collect()
    }

    /// The version of `key` that change `main` made (a tombstone: `None`).
    pub fn made_by(&self, key: &[u8], main: Revision) -> Option<Found> {
        let (k, h) = self.keys.get_key_value(key)?;
        at(h, main)
            .filter(|e| e.main == main && !e.tomb)
            .map(|e| found(k, e))
    }

    /// Whether the index holds the change at `rev` of `key`.
    #[cfg(test)]
    pub fn holds(&self, key: &[u8], rev: Rev) -> bool {
        self.keys
            .get(key)
            .and_then(|h| at(h, rev.main))
            .is_some_and(|e| e.rev() == rev)
    }

    /// Whether compaction to `compact` keeps the change at `rev` (at or
    /// below `compact`) of `key`: it is the key's newest change at or
    /// below `compact`, and not a deletion. Whether the index itself has
    /// been compacted yet does not matter.
    pub fn keeps(&self, key: &[u8], rev: Rev, compact: Revision) -> bool {
        self.keys
            .get(key)
            .and_then(|h| at(h, compact))
            .is_some_and(|e| e.rev() == rev && !e.tomb)
    }

    /// Links `key` to the lease of its change `e`. Links are only added
    /// here (readers check each key at their revision, and a reader below
    /// a change that detached the key must still find it); compaction
    /// prunes those no retained change needs ([`Index::prune_leases`]).
    fn link(&mut self, key: &Bytes, e: Entry) {
        let stored = self
            .keys
            .get_key_value(key.as_ref())
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| key.clone());
        self.leases.entry(e.lease).or_default().insert(stored);
    }

    /// Drops the links of keys to leases none of their changes has any
    /// more.
    pub fn prune_leases(&mut self) {
        let keys = &self.keys;
        self.leases.retain(|lease, linked| {
            linked.retain(|k| {
                keys.get(k.as_ref())
                    .is_some_and(|h| h.iter().any(|e| !e.tomb && e.lease == *lease))
            });
            !linked.is_empty()
        });
    }

    /// Appends `e` to `key`'s history, unless the history already holds a
    /// change at or above it; a new key is stored as `stored` makes it.
    /// Counts the change and links its lease. Returns whether it appended.
    fn append(&mut self, key: &Bytes, e: Entry, stored: impl FnOnce() -> Bytes) -> bool {
        match self.keys.get_mut(key.as_ref()) {
            Some(h) if h.last().is_some_and(|last| last.rev() >= e.rev()) => return false,
            Some(h) => h.push(e),
            None => {
                let mut h = History::new();
                h.push(e);
                self.keys.insert(stored(), h);
            }
        }
        self.entries += 1;
        if !e.tomb && e.lease != 0 {
            self.link(key, e);
        }
        true
    }

    /// Appends the writer's change `e` of `key`. A new key is copied: a
    /// request's key is a slice of the whole request buffer, which it
    /// would otherwise keep alive.
    fn push(&mut self, key: &Bytes, e: Entry) {
        let appended = self.append(key, e, || Bytes::copy_from_slice(key));
        debug_assert!(appended, "changes in order");
    }

    /// Records a put of `key` at `rev`: the version follows the key's
    /// newest change. Returns the version replaced (if the key was live)
    /// and the new one.
    pub fn put(&mut self, key: &Bytes, rev: Rev, lease: LeaseId) -> (Option<Found>, Found) {
        let prev = self
            .keys
            .get_key_value(key.as_ref())
            .and_then(|(k, h)| h.last().filter(|e| !e.tomb).map(|e| found(k, e)));
        let e = Entry {
            main: rev.main,
            create: prev.as_ref().map_or(rev.main, |p| p.create_revision),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
            sub: rev.sub as u32,
            tomb: false,
        };
        self.push(key, e);
        let k = self.keys.get_key_value(key.as_ref()).expect("pushed").0;
        (prev, found(k, &e))
    }

    /// Records the deletion of `key` at `rev`; returns the version deleted,
    /// or `None` (nothing recorded) when the key was not live.
    pub fn delete(&mut self, key: &Bytes, rev: Rev) -> Option<Found> {
        let prev = self
            .keys
            .get_key_value(key.as_ref())
            .and_then(|(k, h)| h.last().filter(|e| !e.tomb).map(|e| found(k, e)))?;
        self.push(
            key,
            Entry {
                main: rev.main,
                create: 0,
                version: 0,
                lease: 0,
                sub: rev.sub as u32,
                tomb: true,
            },
        );
        Some(prev)
    }

    /// Records a change as the log holds it (start-up, other instances'
    /// commits; the value is not looked at). A change the index already
    /// holds is skipped. A new key's bytes are shared with `c`'s.
    pub fn apply(&mut self, c: &LogRow) {
        let rev = c.rev();
        let e = Entry {
            main: rev.main,
            create: c.kv.create_revision,
            version: c.kv.version,
            lease: c.kv.lease,
            sub: rev.sub as u32,
            tomb: c.deleted,
        };
        self.append(&c.kv.key, e, || c.kv.key.clone());
    }

    /// Takes out the changes of `keys` above `revision` (a batch that did
    /// not commit).
    pub fn rollback(&mut self, keys: &[Bytes], revision: Revision) {
        for key in keys {
            let Some(h) = self.keys.get_mut(key.as_ref()) else {
                continue;
            };
            let keep = h.partition_point(|e| e.main <= revision);
            self.entries -= h.len() - keep;
            h.truncate(keep);
            if h.is_empty() {
                self.keys.remove(key.as_ref());
            }
        }
    }

    /// Compacts the keys from `from` on, at most `max_keys` of them, to
    /// `at`; returns the key to continue from, `None` when done. The
    /// compact revision itself is set by [`Index::set_compact`] first, so
    /// no reader asks for what goes.
    pub fn compact_some(
        &mut self,
        at: Revision,
        from: Option<&Bytes>,
        max_keys: usize,
        dropped: &mut dyn FnMut(Rev),
    ) -> Option<Bytes> {
        let start = match from {
            Some(k) => Bound::Included(k.as_ref()),
            None => Bound::Unbounded,
        };
        let mut gone = Vec::new();
        let mut next = None;
        let mut removed = 0;
        for (n, (k, h)) in self
            .keys
            .range_mut::<[u8], _>((start, Bound::Unbounded))
            .enumerate()
        {
            if n == max_keys {
                next = Some(k.clone());
                break;
            }
            let newest_kept = h.partition_point(|e| e.main <= at);
            if newest_kept == 0 {
                continue;
            }
            let mut drop = newest_kept - 1;
            if h[drop].tomb {
                drop += 1;
            }
            if drop > 0 {
                removed += drop;
                h.drain(..drop).for_each(|e| dropped(e.rev()));
                if h.is_empty() {
                    gone.push(k.clone());
                } else if h.spilled() && h.len() <= h.inline_size() {
                    h.shrink_to_fit();
                }
            }
        }
        for k in gone {
            self.keys.remove(k.as_ref());
        }
        self.entries -= removed;
        next
    }

    /// Records the compact revision (never moves backwards).
    pub fn set_compact(&mut self, at: Revision) {
        self.compact = self.compact.max(at);
    }
}

/// The first bytes of a saved index, with the format's version.
const SAVED: &[u8; 8] = b"KOINEIX1";

impl Index {
    /// Writes the index (its committed changes) with `token`, little
    /// endian, a CRC-32C of everything last.
    pub fn save(&self, token: u64, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut w = Checksummed {
            inner: w,
            crc: crate::types::Crc32c::new(),
        };
        // A history is in revision order: its committed changes lead.
        let committed = |h: &History| h.partition_point(|e| e.main <= self.revision);
        let keys = self.keys.values().filter(|h| committed(h) > 0).count();
        w.put(SAVED)?;
        w.put(&token.to_le_bytes())?;
        w.put(&self.revision.to_le_bytes())?;
        w.put(&self.compact.to_le_bytes())?;
        w.put(&(keys as u64).to_le_bytes())?;
        for (k, h) in &self.keys {
            let n = committed(h);
            if n == 0 {
                continue;
            }
            w.put(&(k.len() as u32).to_le_bytes())?;
            w.put(k)?;
            w.put(&(n as u32).to_le_bytes())?;
            for e in &h[..n] {
                w.put(&e.main.to_le_bytes())?;
                w.put(&e.sub.to_le_bytes())?;
                w.put(&e.create.to_le_bytes())?;
                w.put(&e.version.to_le_bytes())?;
                w.put(&e.lease.to_le_bytes())?;
                w.put(&[u8::from(e.tomb)])?;
            }
        }
        let crc = w.crc.clone().finish();
        w.inner.write_all(&crc.to_le_bytes())
    }

    /// Reads an index [`Index::save`] wrote; answers its token too.
    pub fn load(r: &mut impl std::io::Read) -> std::io::Result<(u64, Index)> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut r = Checksummed {
            inner: r,
            crc: crate::types::Crc32c::new(),
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != SAVED {
            return Err(bad("not a saved key index of this version"));
        }
        let token = r.u64()?;
        let revision = r.u64()? as i64;
        let compact = r.u64()? as i64;
        let keys = r.u64()?;
        let mut ix = Index::new(revision, compact);
        let mut all = Vec::with_capacity(keys.min(1 << 24) as usize);
        let mut last: Option<Bytes> = None;
        for _ in 0..keys {
            let len = r.u32()? as usize;
            let mut key = vec![0u8; len];
            r.take(&mut key)?;
            let key = Bytes::from(key);
            if last.as_ref().is_some_and(|l| *l >= key) {
                return Err(bad("keys out of order"));
            }
            let n = r.u32()?;
            let mut h = History::new();
            for _ in 0..n {
                let e = Entry {
                    main: r.u64()? as i64,
                    sub: r.u32()?,
                    create: r.u64()? as i64,
                    version: r.u64()? as i64,
                    lease: r.u64()? as i64,
                    tomb: {
                        let mut b = [0u8; 1];
                        r.take(&mut b)?;
                        b[0] != 0
                    },
                };
                if e.main > revision || h.last().is_some_and(|p| p.rev() >= e.rev()) {
                    return Err(bad("changes out of order"));
                }
                h.push(e);
            }
            ix.entries += h.len();
            last = Some(key.clone());
            all.push((key, h));
        }
        let want = r.crc.clone().finish();
        let mut crc = [0u8; 4];
        r.inner.read_exact(&mut crc)?;
        if u32::from_le_bytes(crc) != want {
            return Err(bad("checksum mismatch"));
        }
        ix.keys = all.into_iter().collect();
        let links: Vec<(Bytes, Entry)> = ix
            .keys
            .iter()
            .flat_map(|(k, h)| {
                h.iter()
                    .filter(|e| !e.tomb && e.lease != 0)
                    .map(move |e| (k.clone(), *e))
            })
            .collect();
        for (k, e) in links {
            ix.link(&k, e);
        }
        Ok((token, ix))
    }
}

/// A reader or writer that keeps a CRC-32C of what passes.
struct Checksummed<T> {
    inner: T,
    crc: crate::types::Crc32c,
}

impl<W: std::io::Write> Checksummed<&mut W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc.update(b);
        self.inner.write_all(b)
    }
}

impl<R: std::io::Read> Checksummed<&mut R> {
    fn take(&mut self, b: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(b)?;
        self.crc.update(b);
        Ok(())
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn rev(main: Revision) -> Rev {
        Rev { main, sub: 0 }
    }

    fn all() -> KeyRange {
        KeyRange::from_etcd(&b("\0"), &b("\0"))
    }

    fn keys(v: &[Found]) -> Vec<String> {
        v.iter()
            .map(|f| String::from_utf8(f.key.to_vec()).unwrap())
            .collect()
    }

    /// a: put 2, put 3, deleted 5, put 7; b: put 4 (lease 9); c: put 6.
    fn sample() -> Index {
        let mut ix = Index::new(1, 0);
        ix.put(&b("a"), rev(2), 0);
        ix.put(&b("a"), rev(3), 0);
        ix.put(&b("b"), rev(4), 9);
        ix.delete(&b("a"), rev(5));
        ix.put(&b("c"), rev(6), 0);
        ix.put(&b("a"), rev(7), 0);
        ix.set_revision(7);
        ix
    }

    #[test]
    fn versions_and_generations_follow_etcd() {
        let ix = sample();
        let a3 = ix.get(b"a", 3).unwrap();
        assert_eq!((a3.create_revision, a3.version, a3.rev), (2, 2, rev(3)));
        assert!(ix.get(b"a", 5).is_none(), "deleted at 5");
        assert!(ix.get(b"a", 6).is_none());
        let a7 = ix.get(b"a", 7).unwrap();
        assert_eq!((a7.create_revision, a7.version), (7, 1), "a new generation");
        assert!(ix.get(b"a", 1).is_none(), "not yet created");
    }

    #[test]
    fn ranges_and_counts_at_any_revision() {
        let ix = sample();
        assert_eq!(keys(&ix.range(&all(), 7, None)), ["a", "b", "c"]);
        assert_eq!(keys(&ix.range(&all(), 5, None)), ["b"]);
        assert_eq!(keys(&ix.range(&all(), 4, None)), ["a", "b"]);
        assert_eq!(keys(&ix.range(&all(), 7, Some(2))), ["a", "b"]);
        assert_eq!(ix.count(&all(), 7), 3);
        assert_eq!(ix.count(&all(), 5), 1);
        let bc = KeyRange::from_etcd(&b("b"), &b("d"));
        assert_eq!(keys(&ix.range(&bc, 7, None)), ["b", "c"]);
        let empty = KeyRange::from_etcd(&b("d"), &b("b"));
        assert!(ix.range(&empty, 7, None).is_empty());
        assert_eq!(ix.count(&empty, 7), 0);
        let one = KeyRange::from_etcd(&b("c"), &Bytes::new());
        assert_eq!(keys(&ix.range(&one, 7, None)), ["c"]);
    }

    #[test]
    fn leases_name_their_live_keys() {
        let mut ix = sample();
        assert_eq!(keys(&ix.with_lease(9, 7)), ["b"]);
        ix.put(&b("b"), rev(8), 0);
        assert!(ix.with_lease(9, 8).is_empty(), "detached by the put");
        assert_eq!(keys(&ix.with_lease(9, 7)), ["b"], "still attached at 7");
        ix.put(&b("c"), rev(9), 9);
        ix.delete(&b("c"), rev(10));
        assert!(ix.with_lease(9, 10).is_empty());
        // Once compaction drops the changes that attached them, the links
        // go too.
        ix.set_compact(10);
        ix.compact_some(10, None, usize::MAX, &mut |_| {});
        ix.prune_leases();
        assert!(ix.leases.is_empty());
    }

    #[test]
    fn a_batch_that_did_not_commit_is_taken_out() {
        let mut ix = sample();
        ix.put(&b("a"), rev(8), 3);
        ix.put(&b("new"), Rev { main: 8, sub: 1 }, 3);
        ix.delete(&b("c"), Rev { main: 8, sub: 2 });
        // Readers at 7 never see the batch.
        assert_eq!(keys(&ix.range(&all(), 7, None)), ["a", "b", "c"]);
        assert_eq!(keys(&ix.with_lease(3, 8)), ["a", "new"]);
        ix.rollback(&[b("a"), b("new"), b("c")], 7);
        assert_eq!(keys(&ix.range(&all(), 8, None)), ["a", "b", "c"]);
        assert!(ix.with_lease(3, 8).is_empty());
        ix.prune_leases();
        assert!(ix.leases.is_empty() || !ix.leases.contains_key(&3));
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.get(b"a", 8).unwrap().version, 1);
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_after_it_need() {
        let mut ix = sample();
        // What compaction to 5 keeps, asked before the index compacts.
        assert!(!ix.keeps(b"a", rev(3), 5));
        assert!(!ix.keeps(b"a", rev(5), 5), "a tombstone");
        assert!(ix.keeps(b"b", rev(4), 5));
        ix.set_compact(5);
        let mut dropped = Vec::new();
        assert!(
            ix.compact_some(5, None, usize::MAX, &mut |r| dropped.push(r))
                .is_none()
        );
        assert_eq!(dropped, [rev(2), rev(3), rev(5)]);
        // a's tombstone at 5 and all before it go; b keeps its put at 4.
        assert!(!ix.holds(b"a", rev(3)));
        assert!(!ix.holds(b"a", rev(5)));
        assert!(ix.holds(b"a", rev(7)));
        assert!(ix.holds(b"b", rev(4)));
        for r in 5..=7 {
            assert_eq!(
                keys(&ix.range(&all(), r, None)),
                keys(&sample().range(&all(), r, None))
            );
        }
        assert_eq!(ix.entries(), 3);
        // A key deleted at or below the compact revision goes entirely.
        ix.delete(&b("c"), rev(8));
        ix.set_compact(8);
        let mut next = None;
        loop {
            next = ix.compact_some(8, next.as_ref(), 1, &mut |_| {});
            if next.is_none() {
                break;
            }
        }
        assert_eq!(ix.len(), 2);
        assert!(ix.get(b"c", 8).is_none());
    }

    #[test]
    fn a_saved_index_loads_as_it_was() {
        let mut ix = sample();
        ix.put(&b("lease/x"), rev(8), 5);
        ix.set_revision(8);
        ix.put(&b("in-flight"), rev(9), 0); // above the revision: not saved
        let mut file = Vec::new();
        ix.save(42, &mut file).unwrap();
        let (token, back) = Index::load(&mut file.as_slice()).unwrap();
        assert_eq!(token, 42);
        assert_eq!((back.revision(), back.compact_revision()), (8, 0));
        for r in 1..=8 {
            assert_eq!(back.range(&all(), r, None), ix.range(&all(), r, None));
        }
        assert!(back.get(b"in-flight", 9).is_none());
        assert_eq!(keys(&back.with_lease(5, 8)), ["lease/x"]);
        assert_eq!(keys(&back.with_lease(9, 4)), ["b"]);
        assert_eq!(back.entries(), ix.entries() - 1);
        // A damaged or cut file is refused.
        let mut bad = file.clone();
        bad[40] ^= 1;
        assert!(Index::load(&mut bad.as_slice()).is_err());
        assert!(Index::load(&mut &file[..file.len() - 1]).is_err());
    }

    #[test]
    fn changes_from_the_log_carry_their_own_versions() {
        let mut ix = Index::new(0, 0);
        let change = |k: &str, main, version, deleted| LogRow {
            revision: main,
            sub: 0,
            kv: crate::types::KeyValue {
                key: b(k),
                create_revision: if deleted { 0 } else { 10 },
                mod_revision: main,
                version,
                ..Default::default()
            },
            deleted,
            prev_revision: 0,
        };
        // A history compacted elsewhere: the first change kept has version 4.
        ix.apply(&change("k", 12, 4, false));
        ix.apply(&change("k", 12, 4, false)); // applied twice: skipped
        ix.apply(&change("k", 13, 5, false));
        assert_eq!(ix.entries(), 1 + 1);
        let (prev, new) = ix.put(&b("k"), rev(14), 0);
        assert_eq!(prev.unwrap().version, 5);
        assert_eq!((new.version, new.create_revision), (6, 10));
        assert_eq!(ix.made_by(b"k", 13).unwrap().version, 5);
        assert!(ix.made_by(b"k", 11).is_none());
    }
}
