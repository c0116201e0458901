//! A bounded cache of classifications, keyed by statement text with its
//! literals masked (see `prescan`), so that `... WHERE aid = 1` and
//! `... WHERE aid = 2` share one entry.
//!
//! Shaped for the data path: 16 shards, each a small two-generation map
//! behind its own mutex, held only for a hash-map lookup or insert. A shard
//! fills its young generation to half its share of the capacity, then the
//! young generation becomes the old one and the previous old one is dropped;
//! an entry found in the old generation moves back to the young one. That
//! keeps the statements in use and bounds the memory without per-entry
//! bookkeeping (an LRU approximation with O(1) work per call).
//!
//! Entries carry the generation of the function-volatility source they were
//! made under: once that source changes (pg_proc refreshed), older entries
//! are treated as absent.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use super::classify::Classification;

const SHARDS: usize = 16;

/// What the cache holds and how it has been used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
}

pub(crate) struct ClassificationCache {
    /// Keyed by the hash of the masked text; the entry keeps the text so a
    /// hash collision is a miss, never a wrong answer.
    shards: Box<[Mutex<Shard>]>,
    /// Entries per shard before its young generation is retired (half the
    /// shard's share of the capacity); 0 disables the cache.
    young_limit: usize,
    hasher: RandomState,
}

type PreHashed = BuildHasherDefault<PassThrough>;

#[derive(Default)]
struct Shard {
    young: HashMap<u64, Entry, PreHashed>,
    old: HashMap<u64, Entry, PreHashed>,
    hits: u64,
    misses: u64,
}

struct Entry {
    key: Box<str>,
    generation: u64,
    value: Arc<Classification>,
}

impl ClassificationCache {
    /// A cache of at most `capacity` entries (0: no cache).
    pub(crate) fn new(capacity: usize) -> Self {
        let young_limit = if capacity == 0 {
            0
        } else {
            (capacity / SHARDS / 2).max(1)
        };
        ClassificationCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            young_limit,
            hasher: RandomState::new(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.young_limit > 0
    }

    pub(crate) fn get(&self, key: &str, generation: u64) -> Option<Arc<Classification>> {
        if !self.enabled() {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        let found = match shard.young.get(&hash) {
            Some(e) if &*e.key == key && e.generation == generation => Some(e.value.clone()),
            Some(_) => None,
            None => match shard.old.remove(&hash) {
                Some(e) if &*e.key == key && e.generation == generation => {
                    let value = e.value.clone();
                    shard.put(hash, e, self.young_limit);
                    Some(value)
                }
                _ => None,
            },
        };
        if found.is_some() {
            shard.hits += 1;
        } else {
            shard.misses += 1;
        }
        found
    }

    pub(crate) fn insert(&self, key: String, generation: u64, value: Arc<Classification>) {
        if !self.enabled() {
            return;
        }
        let hash = self.hasher.hash_one(key.as_str());
        let entry = Entry {
            key: key.into_boxed_str(),
            generation,
            value,
        };
        self.shard(hash).put(hash, entry, self.young_limit);
    }

    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.young.clear();
            shard.old.clear();
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            stats.entries += shard.young.len() + shard.old.len();
            stats.hits += shard.hits;
            stats.misses += shard.misses;
        }
        stats
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // The low bits pick the bucket inside the shard's map; the high
        // bits pick the shard.
        lock(&self.shards[(hash >> 60) as usize % SHARDS])
    }
}

impl Shard {
    fn put(&mut self, hash: u64, entry: Entry, young_limit: usize) {
        if self.young.len() >= young_limit && !self.young.contains_key(&hash) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(hash, entry);
    }
}

/// A poisoned shard (a panic while it was held, which nothing here can
/// cause) still holds consistent maps: keep using it.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The keys are already hashes: use them as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::{Classification, Reason};

    fn value() -> Arc<Classification> {
        Arc::new(Classification::primary(Reason::Write))
    }

    #[test]
    fn hits_misses_and_generations() {
        let cache = ClassificationCache::new(64);
        assert!(cache.get("a", 0).is_none());
        cache.insert("a".into(), 0, value());
        assert!(cache.get("a", 0).is_some());
        assert!(cache.get("a", 1).is_none(), "another generation");
        assert!(cache.get("b", 0).is_none());
        let s = cache.stats();
        assert_eq!((s.entries, s.hits, s.misses), (1, 1, 3));
        cache.clear();
        assert!(cache.get("a", 0).is_none());
    }

    #[test]
    fn stays_bounded_and_keeps_what_is_used() {
        let cache = ClassificationCache::new(64);
        for i in 0..10_000 {
            cache.insert(format!("q{i}"), 0, value());
            // One statement used all along survives the churn.
            if cache.get("hot", 0).is_none() {
                cache.insert("hot".into(), 0, value());
            }
        }
        assert!(cache.stats().entries <= 64 + SHARDS, "{:?}", cache.stats());
        assert!(cache.get("hot", 0).is_some());
        assert!(cache.get("q0", 0).is_none());
    }

    #[test]
    fn zero_capacity_disables() {
        let cache = ClassificationCache::new(0);
        cache.insert("a".into(), 0, value());
        assert!(cache.get("a", 0).is_none());
        assert_eq!(cache.stats().entries, 0);
    }
}
