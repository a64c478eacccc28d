//! The memory engine: the sharded ordered map of `crate::storage::store`,
//! with every applied write also sent to the running backups' tees.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{Applied, Checkpoint, Engine, KeysPage, PairsPage, Revised, Revisions, Span, Stored};
use crate::backup::{Tees, View};
use crate::error::Error;
use crate::storage::fs::Fs;
use crate::storage::snapshot;
use crate::storage::store::Store;

pub struct Memory {
    store: Arc<Store>,
    /// Running backups see every applied write through these; the lock is
    /// held across a batch's apply, so a backup's marks fall between batches.
    tees: Arc<Tees>,
    /// See [`Engine::applied`].
    applied: AtomicU64,
}

impl Memory {
    pub fn new(store: Arc<Store>, tees: Arc<Tees>) -> Memory {
        Memory {
            store,
            tees,
            applied: AtomicU64::new(0),
        }
    }

    /// The map itself, for what is not an engine operation yet: recovery.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl Engine for Memory {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, Error> {
        Ok(self.store.get(key))
    }

    fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, Error> {
        Ok(self.store.get_many(keys))
    }

    fn get_revised(&self, key: &[u8]) -> Result<Option<(Bytes, Revisions)>, Error> {
        Ok(self.store.get_revised(key))
    }

    fn contains(&self, key: &[u8]) -> Result<bool, Error> {
        Ok(self.store.contains(key))
    }

    fn deadline(&self, key: &[u8]) -> Result<Option<Option<u64>>, Error> {
        Ok(self.store.deadline(key))
    }

    fn keys(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<KeysPage, Error> {
        Ok(self.store.keys(prefix, start_after, limit, max_bytes))
    }

    fn pairs(&self, span: &Span, limit: usize, max_bytes: usize) -> Result<PairsPage, Error> {
        Ok(self.store.pairs(span, limit, max_bytes))
    }

    fn len(&self) -> u64 {
        self.store.len() as u64
    }

    fn expiring(&self) -> u64 {
        self.store.expiring() as u64
    }

    fn due(&self, now: u64, max: usize) -> Result<Vec<Bytes>, Error> {
        Ok(self.store.due(now, max))
    }

    fn bytes(&self) -> (u64, u64) {
        self.store.bytes()
    }

    fn apply(&self, ops: &[Revised], position: u64) -> Result<Vec<Applied>, Error> {
        let mut tee = self.tees.lock();
        let applied = ops
            .iter()
            .map(|&(op, revision)| {
                tee.record(op, revision);
                self.store.apply_at(op, revision)
            })
            .collect();
        self.applied.store(position, Ordering::Release);
        Ok(applied)
    }

    /// Not teed: a backup never runs while a copy is loaded.
    fn load(&self, stored: &[Stored]) -> Result<(), Error> {
        self.store.insert(stored);
        Ok(())
    }

    /// Loads into a map of its own (a running backup's tee sees none of
    /// it), then swaps every shard's map at once.
    fn replace(&self, fs: &dyn Fs, path: &Path, position: u64, _note: &[u8]) -> Result<(), Error> {
        let loaded = Store::new(self.store.shard_count());
        snapshot::load(fs, path, &loaded)?
            .ok_or_else(|| Error::io(path, std::io::ErrorKind::NotFound.into()))?;
        self.store.replace_with(loaded);
        self.applied.store(position, Ordering::Release);
        Ok(())
    }

    fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The snapshot file: a fuzzy copy of the map, made durable and renamed
    /// into place after the barrier (see `crate::storage::snapshot`).
    fn checkpoint(&self, at: &Checkpoint) -> Result<(), Error> {
        let data = at.data;
        snapshot::write(
            at.fs,
            data,
            &mut &*self.store,
            at.next_segment,
            at.next_seq,
            || (at.barrier)(),
        )?;
        Ok(())
    }

    fn view(&self) -> Result<Box<dyn View>, Error> {
        Ok(Box::new(self.store.clone()))
    }
}
