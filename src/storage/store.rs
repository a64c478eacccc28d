//! The in-memory map: ordered maps cut into shards, each behind its own lock.
//!
//! A key's shard is `crc32c(key) % shards` (crc32c is hardware-accelerated and
//! already needed for the log). Readers of different shards never meet; a
//! reader and the single writer (the group-commit thread) meet only on one
//! shard, for the length of one map operation. No lock is ever held across an
//! `.await` or any I/O.
//!
//! The store knows nothing of durability: the group-commit thread applies a
//! write here only after the log says it is durable (see `crate::commit`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Bound;

use bytes::Bytes;
use parking_lot::RwLock;

use super::op::WriteOp;

/// One shard: an ordered map, so `Keys` can walk a prefix in order.
/// A `parking_lot` read-write lock: many readers share a shard, the one writer
/// takes it briefly; it never blocks an async task for long because nothing
/// inside it awaits or does I/O. (`cargo bench --bench store`, `lock/*`: two
/// readers on one map take 23 ms with the read-write lock, 43 ms with a mutex.)
type Shard = RwLock<BTreeMap<Bytes, Bytes>>;

/// The whole data set.
pub struct Store {
    /// Fixed at start; a key's shard depends on the count, so it never changes
    /// while the process runs (it is not part of any file format).
    shards: Box<[Shard]>,
}

/// What a write did, for the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A Set, BulkSet or Clear did what it was told.
    Stored,
    /// A Delete ran; `true` if the key existed.
    Deleted(bool),
    /// A conditional write says whether it stored.
    Bool(bool),
    /// A value that the write replaced or removed (SetIf with `get`, GetDel).
    Value(Option<Bytes>),
    /// A number: Incr's result, Append's new length, DeleteMany's count.
    Int(i64),
}

/// Bytes a key costs in a reply beyond its own: its u64 length prefix.
const KEY_OVERHEAD: usize = 8;

/// One page of keys.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeysPage {
    pub keys: Vec<Bytes>,
    pub more: bool,
}

impl Store {
    /// An empty store with `shards` shards (at least one).
    pub fn new(shards: usize) -> Store {
        Store {
            shards: (0..shards.max(1))
                .map(|_| RwLock::new(BTreeMap::new()))
                .collect(),
        }
    }

    fn shard_index(&self, key: &[u8]) -> usize {
        crc32c::crc32c(key) as usize % self.shards.len()
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        &self.shards[self.shard_index(key)]
    }

    /// The value of `key`. Cloning a `Bytes` is a reference-count increment, so
    /// the read lock is held only for the lookup.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.shard(key).read().get(key).cloned()
    }

    /// The values of `keys`, read at one instant: the read locks of all
    /// their shards are held together (taken in shard order, as writers take
    /// them, so the two cannot deadlock).
    pub fn get_many(&self, keys: &[Bytes]) -> Vec<Option<Bytes>> {
        let (slots, shards) = self.lock_plan(keys.iter());
        let guards: Vec<_> = shards.iter().map(|&i| self.shards[i].read()).collect();
        keys.iter()
            .zip(slots)
            .map(|(key, slot)| guards[slot].get(key).cloned())
            .collect()
    }

    /// How to lock the shards of several keys: the distinct shards in
    /// ascending order (the one order every multi-shard lock follows), and
    /// for each key the position of its shard in that list.
    fn lock_plan<'k>(&self, keys: impl Iterator<Item = &'k Bytes>) -> (Vec<usize>, Vec<usize>) {
        let of_key: Vec<usize> = keys.map(|k| self.shard_index(k)).collect();
        let mut shards = of_key.clone();
        shards.sort_unstable();
        shards.dedup();
        let slots = of_key
            .iter()
            .map(|s| shards.binary_search(s).unwrap_or_default())
            .collect();
        (slots, shards)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.shard(key).read().contains_key(key)
    }

    /// Number of keys (each shard counted under its own lock, so the total is
    /// not one instant's count while writes run).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one write. A BulkSet, DeleteMany or Clear takes the write locks
    /// of all its shards, in shard order, before it changes anything, so no
    /// reader sees half of it.
    pub fn apply(&self, op: &WriteOp) -> Applied {
        match op {
            WriteOp::Set { key, value } => {
                self.shard(key).write().insert(key.clone(), value.clone());
                Applied::Stored
            }
            WriteOp::Delete { key } => {
                Applied::Deleted(self.shard(key).write().remove(key).is_some())
            }
            WriteOp::BulkSet { items } => {
                self.with_shards_of(items.iter().map(|(k, _)| k), |i, map| {
                    let (key, value) = &items[i];
                    map.insert(key.clone(), value.clone());
                });
                Applied::Stored
            }
            WriteOp::DeleteMany { keys } => {
                let mut removed = 0;
                self.with_shards_of(keys.iter(), |i, map| {
                    removed += i64::from(map.remove(&keys[i]).is_some());
                });
                Applied::Int(removed)
            }
            WriteOp::Clear => {
                let mut guards: Vec<_> = self.shards.iter().map(|s| s.write()).collect();
                // Dropped after the locks, so readers wait only for the unlink.
                let old: Vec<_> = guards
                    .iter_mut()
                    .map(|g| std::mem::take(&mut **g))
                    .collect();
                drop(guards);
                drop(old);
                Applied::Stored
            }
        }
    }

    /// Write-locks the shards of all `keys` at once, in shard order (so two
    /// multi-key writes, or a multi-key write and a `Keys` page, cannot
    /// deadlock), then calls `change(i, shard)` for the `i`-th key, in order.
    fn with_shards_of<'k>(
        &self,
        keys: impl Iterator<Item = &'k Bytes>,
        mut change: impl FnMut(usize, &mut BTreeMap<Bytes, Bytes>),
    ) {
        let (slots, shards) = self.lock_plan(keys);
        let mut guards: Vec<_> = shards.iter().map(|&i| self.shards[i].write()).collect();
        for (i, slot) in slots.into_iter().enumerate() {
            change(i, &mut guards[slot]);
        }
    }

    /// Inserts one pair while loading a snapshot.
    pub fn insert(&self, key: Bytes, value: Bytes) {
        self.shard(&key).write().insert(key, value);
    }

    /// Up to `limit` keys that start with `prefix` and sort after `start_after`,
    /// ascending, stopping early before their encoded size (each key plus its
    /// 8-byte length prefix) passes `max_bytes`.
    ///
    /// The read locks of all shards are held together (taken in shard order,
    /// like a BulkSet's write locks, so the two cannot deadlock) while the
    /// shards' ranges are merged, so a page is one instant's view of the store
    /// and costs O(limit · log shards), not O(limit · shards).
    pub fn keys(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> KeysPage {
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let guards: Vec<_> = self.shards.iter().map(|s| s.read()).collect();
        let mut ranges: Vec<_> = guards
            .iter()
            .map(|map| {
                map.range::<[u8], _>((lower, Bound::Unbounded))
                    .map(|(k, _)| k)
            })
            .collect();
        // The smallest pending key of each shard, smallest first.
        let mut heads: BinaryHeap<Reverse<(&Bytes, usize)>> = ranges
            .iter_mut()
            .enumerate()
            .filter_map(|(i, r)| r.next().map(|k| Reverse((k, i))))
            .collect();
        let mut page = KeysPage::default();
        let mut bytes = 0;
        while let Some(Reverse((key, shard))) = heads.pop() {
            if !key.starts_with(prefix) {
                // Keys are ascending: nothing after this one has the prefix
                // in this shard; the other shards still may.
                continue;
            }
            let encoded = key.len() + KEY_OVERHEAD;
            if page.keys.len() == limit || (bytes > 0 && bytes + encoded > max_bytes) {
                page.more = true;
                break;
            }
            bytes += encoded;
            page.keys.push(key.clone());
            if let Some(next) = ranges[shard].next() {
                heads.push(Reverse((next, shard)));
            }
        }
        page
    }

    /// Up to `n` pairs of shard `shard` after `after`, in key order: the
    /// snapshot writer copies the store in such short steps so that it never
    /// holds a lock for long.
    pub fn chunk(&self, shard: usize, after: Option<&Bytes>, n: usize) -> Vec<(Bytes, Bytes)> {
        let map = self.shards[shard].read();
        let lower = match after {
            Some(k) => Bound::Excluded(k.as_ref()),
            None => Bound::Unbounded,
        };
        map.range::<[u8], _>((lower, Bound::Unbounded))
            .take(n)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}
