//! The key → entry map, with a lock-free copy for the serve path.
//!
//! Writers take the map's `RwLock`; readers of the serve path load one of 256 `arc-swap`ped
//! shards of a copy that every insert and removal (under the write lock) refreshes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc as StdArc;

use arc_swap::ArcSwap;
use parking_lot::RwLock;

use crate::entry::Entry;

pub(super) type EntryMap<K, V> = HashMap<K, StdArc<Entry<K, V>>>;

/// Shards of the serve path's copy of the key map.
pub(super) const SERVE_SHARDS: usize = 256;

/// The key → entry map.
///
/// Writers coordinate through the lock, exactly as a plain `RwLock<HashMap>`. The serve path
/// reads a copy instead, split into shards of `arc-swap`ped maps: adding or removing a key
/// (under the write lock) replaces one shard, which costs a 1/256th copy of the map, and a read
/// is an atomic load of that shard — no lock, so no writer can make it wait.
pub(super) struct Entries<K, V> {
    map: RwLock<EntryMap<K, V>>,
    serve: Box<[ArcSwap<EntryMap<K, V>>]>,
}

/// A cheap multiplicative hash for picking a shard (the shard's own map hashes the key again
/// with its DoS-resistant hasher, so this one only needs to spread keys).
#[derive(Default)]
pub(super) struct ShardHasher(u64);

impl std::hash::Hasher for ShardHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl<K: Clone + Eq + Hash, V> Entries<K, V> {
    pub(super) fn new() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            serve: (0..SERVE_SHARDS)
                .map(|_| ArcSwap::from_pointee(HashMap::new()))
                .collect(),
        }
    }

    pub(super) fn shard(&self, key: &K) -> &ArcSwap<EntryMap<K, V>> {
        use std::hash::Hasher;
        let mut h = ShardHasher::default();
        key.hash(&mut h);
        // The high bits mix best after the multiply.
        &self.serve[(h.finish() >> 56) as usize % SERVE_SHARDS]
    }

    /// The writers' view.
    pub(super) fn read(&self) -> parking_lot::RwLockReadGuard<'_, EntryMap<K, V>> {
        self.map.read()
    }

    /// Exclusive access; keys are added and removed through the guard, which keeps the serve
    /// path's copy in step.
    pub(super) fn write(&self) -> EntriesWriteGuard<'_, K, V> {
        EntriesWriteGuard {
            map: self.map.write(),
            entries: self,
        }
    }

    /// The serve path's shard holding `key`, loaded without any lock.
    pub(super) fn serve_shard(&self, key: &K) -> arc_swap::Guard<StdArc<EntryMap<K, V>>> {
        self.shard(key).load()
    }
}

/// Write access to [`Entries`].
pub(super) struct EntriesWriteGuard<'a, K: Clone + Eq + Hash, V> {
    map: parking_lot::RwLockWriteGuard<'a, EntryMap<K, V>>,
    entries: &'a Entries<K, V>,
}

impl<K: Clone + Eq + Hash, V> EntriesWriteGuard<'_, K, V> {
    pub(super) fn insert(&mut self, key: K, entry: StdArc<Entry<K, V>>) {
        let shard = self.entries.shard(&key);
        // Serialised by the write lock: load, copy, store cannot race another writer.
        let mut copy = EntryMap::clone(&shard.load());
        copy.insert(key.clone(), StdArc::clone(&entry));
        shard.store(StdArc::new(copy));
        self.map.insert(key, entry);
    }

    pub(super) fn remove(&mut self, key: &K) {
        let shard = self.entries.shard(key);
        let mut copy = EntryMap::clone(&shard.load());
        copy.remove(key);
        shard.store(StdArc::new(copy));
        self.map.remove(key);
    }
}

impl<K: Clone + Eq + Hash, V> std::ops::Deref for EntriesWriteGuard<'_, K, V> {
    type Target = EntryMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}
