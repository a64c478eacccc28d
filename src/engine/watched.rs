//! An engine whose applied writes are published to a change feed
//! ([`crate::feed`]): the one place both write paths (the commit thread,
//! the Raft state machine) apply through, wrapped.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::{Checkpoint, Engine, KeysPage, Noter, PairsPage, Revised, Revisions, Span, Stored};
use crate::backup::View;
use crate::error::Error;
use crate::feed::{self, Feed};
use crate::storage::fs::Fs;
use crate::storage::store::Applied;

/// `inner`, publishing to `feed` what each applied batch changed.
pub struct Watched {
    inner: Arc<dyn Engine>,
    feed: Arc<Feed>,
}

impl Watched {
    /// Wraps `inner`; the feed starts at what `inner` has applied unless
    /// recovery already started it (and published what it replayed).
    pub fn new(inner: Arc<dyn Engine>, feed: Arc<Feed>) -> Watched {
        Watched { inner, feed }
    }

    fn publish(&self, ops: &[Revised], applied: &[Applied], position: u64) {
        if self.feed.skip(position) {
            return;
        }
        let mut events = Vec::new();
        for (&(op, revision), applied) in ops.iter().zip(applied) {
            feed::changes(op, applied, revision, &mut events);
        }
        self.feed.publish(position, events);
    }
}

impl Engine for Watched {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, Error> {
        self.inner.get(key)
    }

    fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, Error> {
        self.inner.get_many(keys)
    }

    fn get_revised(&self, key: &[u8]) -> Result<Option<(Bytes, Revisions)>, Error> {
        self.inner.get_revised(key)
    }

    fn contains(&self, key: &[u8]) -> Result<bool, Error> {
        self.inner.contains(key)
    }

    fn deadline(&self, key: &[u8]) -> Result<Option<Option<u64>>, Error> {
        self.inner.deadline(key)
    }

    fn keys(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<KeysPage, Error> {
        self.inner.keys(prefix, start_after, limit, max_bytes)
    }

    fn pairs(&self, span: &Span, limit: usize, max_bytes: usize) -> Result<PairsPage, Error> {
        self.inner.pairs(span, limit, max_bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn expiring(&self) -> u64 {
        self.inner.expiring()
    }

    fn due(&self, now: u64, max: usize) -> Result<Vec<Bytes>, Error> {
        self.inner.due(now, max)
    }

    fn bytes(&self) -> (u64, u64) {
        self.inner.bytes()
    }

    fn apply(&self, ops: &[Revised], position: u64) -> Result<Vec<Applied>, Error> {
        let applied = self.inner.apply(ops, position)?;
        self.publish(ops, &applied, position);
        Ok(applied)
    }

    /// A copy put in (a restore): no change list leads to it.
    fn load(&self, stored: &[Stored]) -> Result<(), Error> {
        self.inner.load(stored)?;
        self.feed.reset(self.inner.applied());
        Ok(())
    }

    fn apply_noted(
        &self,
        ops: &[Revised],
        position: u64,
        note: Noter<'_>,
    ) -> Result<Vec<Applied>, Error> {
        let applied = self.inner.apply_noted(ops, position, note)?;
        self.publish(ops, &applied, position);
        Ok(applied)
    }

    fn keeps_notes(&self) -> bool {
        self.inner.keeps_notes()
    }

    fn note(&self) -> Result<Option<Bytes>, Error> {
        self.inner.note()
    }

    fn replace(
        &self,
        fs: &dyn Fs,
        snapshot: &Path,
        position: u64,
        note: &[u8],
    ) -> Result<(), Error> {
        self.inner.replace(fs, snapshot, position, note)?;
        self.feed.reset(position);
        Ok(())
    }

    fn persist(&self) -> Result<(), Error> {
        self.inner.persist()
    }

    fn applied(&self) -> u64 {
        self.inner.applied()
    }

    fn checkpoint(&self, at: &Checkpoint) -> Result<(), Error> {
        self.inner.checkpoint(at)
    }

    fn view(&self) -> Result<Box<dyn View>, Error> {
        self.inner.view()
    }
}
