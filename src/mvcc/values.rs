//! Values in memory, by their position in the log. A logged change never
//! changes, so an entry can never be stale: it is dropped only for space,
//! or when compaction removes its change. The key index says which
//! position a read needs; a miss is read from the log by primary key.
//!
//! Only committed changes are added (a batch that did not commit may see
//! its revision reused by another). The size is bounded by two
//! generations per shard: entries go into the young one; when it holds
//! its half of the budget it becomes the old one and the previous old one
//! is dropped. A hit in the old generation moves the entry back.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::types::Rev;

/// Bytes an entry costs beyond its value: the map slot with the table's
/// spare capacity, and the value's allocation header.
const ENTRY_OVERHEAD: usize = 96;
const SHARDS: usize = 16;

pub struct ValueCache {
    shards: Vec<Mutex<Shard>>,
    /// Bytes per generation per shard (0: the cache keeps nothing).
    generation_bytes: usize,
}

#[derive(Default)]
struct Shard {
    young: HashMap<Rev, Bytes>,
    young_bytes: usize,
    old: HashMap<Rev, Bytes>,
    old_bytes: usize,
}

fn cost(v: &Bytes) -> usize {
    v.len() + ENTRY_OVERHEAD
}

impl Shard {
    fn insert(&mut self, rev: Rev, value: Bytes, generation_bytes: usize) {
        let cost = cost(&value);
        if self.young_bytes + cost > generation_bytes && !self.young.is_empty() {
            self.old = std::mem::take(&mut self.young);
            self.old_bytes = std::mem::take(&mut self.young_bytes);
        }
        self.young_bytes += cost;
        if let Some(was) = self.young.insert(rev, value) {
            self.young_bytes -= self::cost(&was);
        }
    }
}

impl ValueCache {
    /// A cache of about `bytes` at most.
    pub fn new(bytes: usize) -> ValueCache {
        ValueCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            generation_bytes: bytes / SHARDS / 2,
        }
    }

    fn shard(&self, rev: Rev) -> std::sync::MutexGuard<'_, Shard> {
        // Neighbouring revisions land in different shards.
        let i = (rev.main as usize ^ (rev.sub as usize).rotate_left(7)) % SHARDS;
        // Every mutation is a single map operation: a panic cannot leave
        // a shard half-changed.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, rev: Rev) -> Option<Bytes> {
        let mut s = self.shard(rev);
        if let Some(v) = s.young.get(&rev) {
            return Some(v.clone());
        }
        let v = s.old.remove(&rev)?;
        s.old_bytes -= cost(&v);
        s.insert(rev, v.clone(), self.generation_bytes);
        Some(v)
    }

    /// Adds a committed change's value. The value must own its memory (not
    /// be a slice of a request buffer, which it would keep alive): the
    /// writer copies request values once as it applies them.
    pub fn insert(&self, rev: Rev, value: &Bytes) {
        if self.generation_bytes == 0 || cost(value) > self.generation_bytes {
            return;
        }
        self.shard(rev)
            .insert(rev, value.clone(), self.generation_bytes);
    }

    /// Drops a change compaction removed.
    pub fn remove(&self, rev: Rev) {
        let mut s = self.shard(rev);
        if let Some(v) = s.young.remove(&rev) {
            s.young_bytes -= cost(&v);
        } else if let Some(v) = s.old.remove(&rev) {
            s.old_bytes -= cost(&v);
        }
    }

    /// Bytes held (as the budget counts them).
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.young_bytes + s.old_bytes
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Rev {
        Rev { main, sub: 0 }
    }

    #[test]
    fn values_are_found_by_position_until_space_runs_out() {
        let cache = ValueCache::new(SHARDS * 2 * (10 * (100 + ENTRY_OVERHEAD)));
        let v = Bytes::from(vec![7u8; 100]);
        cache.insert(rev(1), &v);
        assert_eq!(cache.get(rev(1)), Some(v.clone()));
        assert_eq!(cache.get(rev(2)), None);
        cache.remove(rev(1));
        assert_eq!(cache.get(rev(1)), None);
        // Far more than fits: the held bytes stay within the budget, and
        // the newest entries are there.
        for r in 0..10_000 {
            cache.insert(rev(r), &v);
        }
        assert!(cache.bytes() <= SHARDS * 2 * 10 * (100 + ENTRY_OVERHEAD));
        assert_eq!(cache.get(rev(9_999)), Some(v));
        assert_eq!(cache.get(rev(0)), None);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = ValueCache::new(0);
        cache.insert(rev(1), &Bytes::from_static(b"x"));
        assert_eq!(cache.get(rev(1)), None);
    }
}
