//! The Raft log of one node: openraft's `RaftLogStorage` on a file of
//! checksummed records (`storage::record`), with the single-node log's fsync
//! rule: an append is reported done only after `fdatasync` covered it, and an
//! `fdatasync` error is fatal (reported to openraft, which stops the node;
//! never retried).
//!
//! ```text
//! <raft dir>/raft.log: record{ "KVRAFTLOG1", salt: u32 LE }   (plain CRC32C)
//!                      record{ bincode(Record) } ...           (CRC32C seeded with salt)
//! ```
//!
//! The salt is random, made when the file is created (or rewritten), and
//! never leaves the node: bytes a client wrote inside a value can never pass
//! for a record, so a torn tail is never mistaken for damage (or the other
//! way round) because of what a client wrote. A file without the header was
//! written before salts: its records are read and appended with seed 0 until
//! the next rewrite gives it one.
//!
//! Every change to the log is one appended record: an entry, a vote, a
//! truncation (`[index, ∞)` removed, after a conflict with the leader) or a
//! purge (`(-∞, log_id]` removed, after a snapshot). Opening the file
//! replays them in order. A torn last record (a crash in the middle of a
//! write) is cut off: it was never reported durable. A bad record followed by
//! good ones is damage, and the node refuses to start.
//!
//! The entries not yet purged are also kept in memory, for the replication
//! tasks that read them (at most a few thousand: openraft snapshots every
//! `snapshot_every` entries and purges all but `keep_after_snapshot`).
//! When the dead records (purged entries, replaced votes, truncated entries)
//! outnumber the live ones, a purge rewrites the file with only the live ones:
//! temp file, fsync, rename, fsync of the directory.
//!
//! The file never purges past what a durable snapshot covers ([`Covered`]):
//! openraft 0.9 asks a follower's log to purge up to a snapshot it is
//! installing before the state machine has made it durable, and a node
//! killed in between restarted with its log purged past its newest
//! snapshot, which openraft refuses (the group panicked at every start). So
//! such a purge is done at once in memory, which is all openraft reads, and
//! written to the file once the snapshot is durable; an append that would
//! leave a hole in the file waits for that.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::error::Error;
use crate::storage::appender::{all_zero, Appender};
use crate::storage::fs::Fs;
use crate::storage::{record, sync_dir, write_synced};

/// The log file's name in the raft directory.
const FILE: &str = "raft.log";

/// The start of the header record's body; the salt follows.
const MAGIC: &[u8] = b"KVRAFTLOG1";

/// Rewrite the file when this many dead records have gathered (and they
/// outnumber the live ones).
const REWRITE_AFTER_DEAD: usize = 4096;

/// Bytes of entries one read of the replication stream returns at most
/// (always at least one entry). openraft 0.9 gives an AppendEntries the
/// heartbeat interval (100 ms by default) to be sent, decoded, appended and
/// synced by the follower, and fails it after that: a new leader probing a
/// follower with megabytes of entries it already has timed out again and
/// again on the 2-core VM's debug build (a restarted leader took 38 s to
/// commit its first entry). A megabyte goes through in a few milliseconds.
pub const MAX_READ_BYTES: usize = 1 << 20;

/// How long an append waits for the snapshot that covers the entries
/// before it (see [`Covered`]) to be durable; after that the log fails.
const COVER_WAIT: Duration = Duration::from_secs(60);

/// The last log id the newest durable snapshot covers: a restart can
/// rebuild the state up to it without the log. The state machine raises
/// it once a snapshot's files are durable and loaded; the log's file never
/// purges past it.
#[derive(Clone, Default)]
pub struct Covered(Arc<(Mutex<Option<LogId<u64>>>, Condvar)>);

impl Covered {
    /// Raises the mark to `to` (never lowers it).
    pub fn raise(&self, to: Option<LogId<u64>>) {
        let (at, raised) = &*self.0;
        let mut at = at.lock();
        if to > *at {
            *at = to;
            raised.notify_all();
        }
    }

    pub fn get(&self) -> Option<LogId<u64>> {
        *self.0 .0.lock()
    }

    /// Waits until the mark reaches `index`, at most `limit`; whether it did.
    fn wait_for(&self, index: u64, limit: Duration) -> bool {
        let (at, raised) = &*self.0;
        let mut at = at.lock();
        let short = |at: &mut Option<LogId<u64>>| at.is_none_or(|id| id.index < index);
        raised.wait_while_for(&mut at, short, limit);
        !short(&mut at)
    }
}

/// One record of the log file. The variant's position is its tag: variants
/// are only ever appended.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Entry(Entry<TypeConfig>),
    Vote(Vote<u64>),
    /// Entries from this index on are removed.
    Truncate(u64),
    /// Entries up to and including this log id are removed.
    Purge(LogId<u64>),
}

/// What the log holds, shared between the writer and the readers.
#[derive(Debug, Default)]
struct Entries {
    /// The live entries by index, with their encoded size.
    by_index: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    /// The last removed entry (a snapshot covers it and everything before).
    last_purged: Option<LogId<u64>>,
}

/// The log: openraft's writer handle. All writes go through `&mut self`, so
/// they are serialized, as openraft requires.
pub struct LogStore {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// Open for appending, with zeros written ahead (see
    /// `crate::storage::appender`); `None` after a failed write or sync: the
    /// log is failed and refuses everything until the process restarts.
    /// (In a mutex only so that the store is `Sync`; `&mut self` already
    /// serializes writes.)
    file: Mutex<Option<Appender>>,
    /// Shared with [`LogReader`]s.
    entries: Arc<RwLock<Entries>>,
    vote: Option<Vote<u64>>,
    /// Records in the file that no longer matter, for the rewrite decision.
    dead: usize,
    /// Seeds the checksums of the file's records (0: a file from before
    /// salts).
    salt: u32,
    /// What a durable snapshot covers: the file purges no further.
    covered: Covered,
    /// The last purge written to the file (it may lag the one in memory).
    written_purge: Option<LogId<u64>>,
}

/// A reader of the live entries, for openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    entries: Arc<RwLock<Entries>>,
}

fn io_error(e: Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying its records; its file
    /// purges no further than `covered`.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, covered: Covered) -> Result<LogStore, Error> {
        fs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE);
        let data = match fs.read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let header = read_header(&data);
        let fresh = matches!(header, Header::Torn);
        let (salt, start) = match header {
            Header::Salted { salt, next } => (salt, next),
            Header::Legacy => (0, 0),
            Header::Torn => (0, data.len()),
            Header::Damaged => {
                return Err(Error::corrupt(&path, 0, "the raft log's header is damaged"));
            }
        };
        let mut entries = Entries::default();
        let mut vote = None;
        let mut dead = 0;
        let mut offset = start;
        while offset < data.len() {
            // The zeros written ahead of the records (no record has
            // length 0, so this scans only the end).
            if all_zero(&data[offset..]) {
                break;
            }
            let body = match record::read_with(&data, offset, salt) {
                record::Read::Valid { body, next } => {
                    offset = next;
                    body
                }
                // A torn tail is cut off; but a bad record (or a damaged
                // length) with good records after it is damage.
                record::Read::Incomplete | record::Read::Mismatch => {
                    if Self::valid_record_after(&data, offset, salt) {
                        return Err(Error::corrupt(
                            &path,
                            offset as u64,
                            "a damaged record before good ones",
                        ));
                    }
                    break;
                }
            };
            let record: Record = kvstore_client::codec::decode(body)
                .map_err(|e| Error::corrupt(&path, offset as u64, e.to_string()))?;
            dead += entries.replay(record, body.len(), &mut vote);
        }
        // Nothing valid at all (a new file, or one whose first record was
        // torn): start it afresh, with a salt.
        if fresh {
            let salt = crate::storage::wal::random_salt(data.len() as u64);
            let mut header = Vec::new();
            encode_header(&mut header, salt);
            write_synced(&*fs, &path, &header)?;
            sync_dir(&*fs, dir)?;
            let file = fs.open_write(&path).map_err(|e| Error::io(&path, e))?;
            return Ok(LogStore {
                fs,
                dir: dir.to_path_buf(),
                file: Mutex::new(Some(Appender::new(file, header.len() as u64))),
                entries: Arc::new(RwLock::new(entries)),
                vote,
                dead,
                salt,
                covered,
                written_purge: None,
            });
        }
        if offset < data.len() {
            if !all_zero(&data[offset..]) {
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    cut = data.len() - offset,
                    "cutting a torn record off the end of the raft log (it was never reported durable)"
                );
            }
            fs.truncate(&path, offset as u64)
                .map_err(|e| Error::io(&path, e))?;
        }
        let file = fs.open_write(&path).map_err(|e| Error::io(&path, e))?;
        let file = Appender::new(file, offset as u64);
        Ok(LogStore {
            fs,
            dir: dir.to_path_buf(),
            file: Mutex::new(Some(file)),
            written_purge: entries.last_purged,
            entries: Arc::new(RwLock::new(entries)),
            vote,
            dead,
            salt,
            covered,
        })
    }

    /// Whether a valid record starts anywhere after `offset` (then a bad
    /// record at `offset` is damage, not a torn tail).
    fn valid_record_after(data: &[u8], offset: usize, salt: u32) -> bool {
        (offset + 1..data.len())
            .any(|at| matches!(record::read_with(&data[at..], 0, salt), record::Read::Valid { body, .. } if kvstore_client::codec::decode::<Record>(body).is_ok()))
    }

    /// The purge the file can take now: the one in memory, as far as a
    /// durable snapshot covers it, if the file has not had it yet.
    fn due_purge(&self) -> Option<LogId<u64>> {
        let wanted = self.entries.read().last_purged?;
        let covered = self.covered.get()?;
        let upto = std::cmp::min_by_key(wanted, covered, |id| id.index);
        (self.written_purge.is_none_or(|w| w.index < upto.index)).then_some(upto)
    }

    /// Appends `records` to the file, after the purge it can take now, and
    /// syncs it. On any error the log is failed for good: the error is
    /// returned now and every later call fails.
    fn write(&mut self, records: &[Record]) -> std::io::Result<()> {
        let purge = self.due_purge();
        if records.is_empty() && purge.is_none() {
            return Ok(());
        }
        self.write_records(purge.map(Record::Purge).iter().chain(records))?;
        if purge.is_some() {
            self.written_purge = purge;
        }
        Ok(())
    }

    /// Before entries from `first` on are appended: if the file holds
    /// neither the entry before nor a purge past it (openraft purged in
    /// memory up to a snapshot still being installed), waits for that
    /// snapshot to be durable, so the file never has a hole.
    fn wait_for_cover(&self, first: u64) -> std::io::Result<()> {
        let Some(before) = first.checked_sub(1) else {
            return Ok(());
        };
        let unwritten = {
            let entries = self.entries.read();
            !entries.by_index.contains_key(&before)
                && entries.last_purged.is_some_and(|p| p.index >= before)
                && self.written_purge.is_none_or(|w| w.index < before)
        };
        if !unwritten || self.covered.wait_for(before, COVER_WAIT) {
            return Ok(());
        }
        Err(std::io::Error::other(format!(
            "no durable snapshot covers the log up to {before} after {COVER_WAIT:?}: \
             appending after it would leave a hole in the raft log"
        )))
    }

    fn write_records<'r>(&self, records: impl Iterator<Item = &'r Record>) -> std::io::Result<()> {
        let mut slot = self.file.lock();
        let Some(file) = slot.as_mut() else {
            return Err(std::io::Error::other(
                "the raft log failed earlier; restart the node",
            ));
        };
        let mut buf = Vec::new();
        for record in records {
            encode_record(&mut buf, record, self.salt);
        }
        let result = file.append(&buf).and_then(|_| file.sync_data());
        if let Err(e) = &result {
            tracing::error!("raft log write or fdatasync failed: {e}; the log refuses everything until restart (the fsync is not retried)");
            *slot = None;
        }
        result
    }

    /// Rewrites the file with only the live records, if enough are dead.
    fn maybe_rewrite(&mut self) -> Result<(), Error> {
        let (live, purged) = {
            let entries = self.entries.read();
            (entries.by_index.len() + 2, entries.last_purged)
        };
        // Not while the file keeps entries memory has purged: a rewrite
        // from memory would lose them.
        if self.dead < REWRITE_AFTER_DEAD || self.dead < live || purged != self.written_purge {
            return Ok(());
        }
        let path = self.dir.join(FILE);
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let salt = crate::storage::wal::random_salt(self.dead as u64);
        let mut buf = Vec::new();
        encode_header(&mut buf, salt);
        {
            let entries = self.entries.read();
            if let Some(vote) = &self.vote {
                encode_record(&mut buf, &Record::Vote(*vote), salt);
            }
            if let Some(purged) = entries.last_purged {
                encode_record(&mut buf, &Record::Purge(purged), salt);
            }
            for (entry, _) in entries.by_index.values() {
                encode_record(&mut buf, &Record::Entry(entry.clone()), salt);
            }
        }
        write_synced(&*self.fs, &tmp, &buf)?;
        // From here on the old handle writes to an unlinked file: drop it
        // first, so a failure below leaves the log failed, not writing there.
        *self.file.lock() = None;
        self.fs
            .rename(&tmp, &path)
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(&*self.fs, &self.dir)?;
        let file = self.fs.open_write(&path).map_err(|e| Error::io(&path, e))?;
        *self.file.lock() = Some(Appender::new(file, buf.len() as u64));
        self.dead = 0;
        self.salt = salt;
        Ok(())
    }
}

fn encode_record(buf: &mut Vec<u8>, record: &Record, salt: u32) {
    let start = buf.len();
    buf.extend_from_slice(&[0; record::HEADER_LEN]);
    // Encoding into a Vec cannot fail: Record has no types bincode refuses.
    let _ = kvstore_client::codec::encode_into(record, buf);
    record::seal_with(buf, start, salt);
}

fn encode_header(buf: &mut Vec<u8>, salt: u32) {
    let mut body = MAGIC.to_vec();
    body.extend_from_slice(&salt.to_le_bytes());
    record::append(buf, &body);
}

/// What the start of a log file says.
enum Header {
    /// Its records are seeded with `salt`; the first starts at `next`.
    Salted { salt: u32, next: usize },
    /// A file from before salts: records from the start, seed 0.
    Legacy,
    /// No whole first record: a file whose creation a crash cut short
    /// (nothing in it was ever reported durable).
    Torn,
    /// A whole first record that is neither: refused.
    Damaged,
}

fn read_header(data: &[u8]) -> Header {
    match record::read(data, 0) {
        record::Read::Valid { body, next } => match body.strip_prefix(MAGIC) {
            Some(salt) if salt.len() == 4 => Header::Salted {
                salt: u32::from_le_bytes([salt[0], salt[1], salt[2], salt[3]]),
                next,
            },
            _ if kvstore_client::codec::decode::<Record>(body).is_ok() => Header::Legacy,
            _ => Header::Damaged,
        },
        _ if all_zero(data) => Header::Torn,
        // Shorter than a header: its creation was cut short. Longer, a
        // length that points past the end is damage (the file may hold
        // good records): refused, never emptied.
        record::Read::Incomplete if data.len() < record::HEADER_LEN + MAGIC.len() + 4 => {
            Header::Torn
        }
        record::Read::Incomplete => Header::Damaged,
        // A whole first record whose checksum fails: a damaged header, or
        // the first record of an unsalted file (a crash cut a file from
        // before salts right at its first record: nothing was durable).
        record::Read::Mismatch => Header::Damaged,
    }
}

impl Entries {
    /// Takes in one record read back from the file; returns how many records
    /// it made dead.
    fn replay(&mut self, record: Record, size: usize, vote: &mut Option<Vote<u64>>) -> usize {
        match record {
            Record::Entry(entry) => {
                let index = entry.log_id.index;
                let dead = self.truncate(index);
                self.by_index.insert(index, (entry, size));
                dead
            }
            Record::Vote(v) => {
                let dead = usize::from(vote.is_some());
                *vote = Some(v);
                dead
            }
            Record::Truncate(index) => 1 + self.truncate(index),
            Record::Purge(log_id) => 1 + self.purge(log_id),
        }
    }

    fn truncate(&mut self, index: u64) -> usize {
        self.by_index.split_off(&index).len()
    }

    fn purge(&mut self, log_id: LogId<u64>) -> usize {
        let kept = self.by_index.split_off(&(log_id.index + 1));
        let removed = std::mem::replace(&mut self.by_index, kept).len();
        if self.last_purged.is_none_or(|p| p.index < log_id.index) {
            self.last_purged = Some(log_id);
        }
        removed
    }

    fn last_log_id(&self) -> Option<LogId<u64>> {
        self.by_index
            .values()
            .next_back()
            .map(|(e, _)| e.log_id)
            .or(self.last_purged)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let entries = self.entries.read();
        Ok(entries
            .by_index
            .range(range)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }

    /// At least one entry, and no more than [`MAX_READ_BYTES`] of them.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let entries = self.entries.read();
        let mut bytes = 0;
        let mut out = Vec::new();
        for (_, (entry, size)) in entries
            .by_index
            .range((Bound::Included(start), Bound::Excluded(end)))
        {
            if !out.is_empty() && bytes + size > MAX_READ_BYTES {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        self.get_log_reader().await.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let entries = self.entries.read();
        Ok(LogState {
            last_purged_log_id: entries.last_purged,
            last_log_id: entries.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            entries: self.entries.clone(),
        }
    }

    /// Durable before it returns: a vote must never be forgotten.
    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        tokio::task::block_in_place(|| self.write(&[Record::Vote(*vote)]))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        if self.vote.is_some() {
            self.dead += 1;
        }
        self.vote = Some(*vote);
        Ok(())
    }

    /// The vote as saved, but never *committed* (granted by a quorum):
    /// openraft 0.9 restores a node whose saved vote is a committed one for
    /// itself as the leader at once, and such a restored leader answers
    /// linearizable reads from its state machine as it restarted (the
    /// newest snapshot) before it has learned the commit index and applied
    /// the log after it (kvstore does not save the commit index). Restarted
    /// with the vote uncommitted, it comes back as a follower and must win
    /// a new term, whose first entry every read then waits for. Raft itself
    /// never keeps leadership across a restart; the term and whom it voted
    /// for, which safety needs, are kept.
    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self
            .vote
            .map(|vote| Vote::new(vote.leader_id.term, vote.leader_id.node_id)))
    }

    /// Written and `fdatasync`ed before the callback says it is done, and
    /// before this returns (one sync per call; openraft hands one leader
    /// batch, or one AppendEntries message, per call).
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<Record> = entries.into_iter().map(Record::Entry).collect();
        let sizes: Vec<usize> = records
            .iter()
            .map(|r| match r {
                Record::Entry(e) => super::entry_size(e),
                _ => 0,
            })
            .collect();
        let first = match records.first() {
            Some(Record::Entry(e)) => Some(e.log_id.index),
            _ => None,
        };
        let result = tokio::task::block_in_place(|| {
            if let Some(first) = first {
                self.wait_for_cover(first)?;
            }
            self.write(&records)
        });
        if let Err(e) = result {
            let reported = std::io::Error::new(e.kind(), e.to_string());
            callback.log_io_completed(Err(reported));
            return Err(StorageIOError::write_logs(&e).into());
        }
        {
            let mut shared = self.entries.write();
            for (record, size) in records.into_iter().zip(sizes) {
                if let Record::Entry(entry) = record {
                    let index = entry.log_id.index;
                    shared.by_index.insert(index, (entry, size));
                }
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    /// Removes `[log_id.index, ∞)`; durable before it returns, so a
    /// restarted node never brings back entries the leader overwrote.
    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tokio::task::block_in_place(|| self.write(&[Record::Truncate(log_id.index)]))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.dead += 1 + self.entries.write().truncate(log_id.index);
        Ok(())
    }

    /// Removes `(-∞, log_id.index]`, which a snapshot covers; `log_id` may
    /// lie past the last entry (after a snapshot was installed). At once in
    /// memory; in the file as far as a durable snapshot covers it (the rest
    /// with a later write).
    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tokio::task::block_in_place(|| -> Result<(), std::io::Error> {
            self.dead += 1 + self.entries.write().purge(log_id);
            self.write(&[])?;
            self.maybe_rewrite().map_err(io_error)
        })
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::RealFs;

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn open(dir: &Path) -> LogStore {
        LogStore::open(Arc::new(RealFs), dir, Covered::default()).unwrap()
    }

    #[test]
    fn entries_votes_truncations_and_purges_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut log = open(dir.path());
            let vote = Vote::new(3, 2);
            log.save_vote(&vote).await.unwrap();
            log.write(
                &(0..10)
                    .map(|i| Record::Entry(blank(1, i)))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            for i in 0..10 {
                log.entries.write().by_index.insert(i, (blank(1, i), 0));
            }
            log.truncate(blank(1, 7).log_id).await.unwrap();
            log.covered.raise(Some(blank(1, 5).log_id));
            log.purge(blank(1, 2).log_id).await.unwrap();
            drop(log);

            let mut log = open(dir.path());
            assert_eq!(log.read_vote().await.unwrap(), Some(vote));
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(blank(1, 2).log_id));
            assert_eq!(state.last_log_id, Some(blank(1, 6).log_id));
            let indexes: Vec<u64> = log
                .try_get_log_entries(0..100)
                .await
                .unwrap()
                .iter()
                .map(|e| e.log_id.index)
                .collect();
            assert_eq!(indexes, vec![3, 4, 5, 6]);
        });
    }

    /// Writes entries `indexes` as an append does, without its callback.
    fn append(log: &mut LogStore, indexes: std::ops::Range<u64>) {
        let first = indexes.start;
        let records: Vec<Record> = indexes
            .clone()
            .map(|i| Record::Entry(blank(1, i)))
            .collect();
        log.wait_for_cover(first).unwrap();
        log.write(&records).unwrap();
        for i in indexes {
            log.entries.write().by_index.insert(i, (blank(1, i), 0));
        }
    }

    /// openraft purges a follower's log up to a snapshot it is still
    /// installing: a node killed before that snapshot is durable must find
    /// neither a purge past its newest snapshot nor a hole in its log.
    #[test]
    fn the_file_purges_only_as_far_as_a_durable_snapshot_covers() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let installed = blank(1, 8).log_id;
        runtime.block_on(async {
            let mut log = open(dir.path());
            append(&mut log, 0..6);
            log.purge(installed).await.unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(installed));
            drop(log);

            // Killed before the snapshot was durable: the entries are back.
            let mut log = open(dir.path());
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, None);
            assert_eq!(state.last_log_id, Some(blank(1, 5).log_id));

            // The entry after the snapshot waits until it is durable.
            log.purge(installed).await.unwrap();
            let covered = log.covered.clone();
            let durable = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                covered.raise(Some(installed));
            });
            append(&mut log, 9..10);
            assert_eq!(log.covered.get(), Some(installed));
            durable.join().unwrap();
            drop(log);

            let mut log = open(dir.path());
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(installed));
            assert_eq!(state.last_log_id, Some(blank(1, 9).log_id));
            let entries = log.try_get_log_entries(0..100).await.unwrap();
            assert_eq!(entries.len(), 1);
        });
    }

    /// A log in `dir` holding two entries; the bytes of their records in
    /// its file (zeros follow them).
    fn two_entries(dir: &Path) -> usize {
        let mut log = open(dir);
        log.write(&[Record::Entry(blank(1, 0)), Record::Entry(blank(1, 1))])
            .unwrap();
        let records = log.file.lock().as_ref().map(|f| f.data_len());
        records.unwrap() as usize
    }

    #[test]
    fn the_zeros_written_ahead_end_the_log_and_are_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let records = two_entries(dir.path());
        assert!(std::fs::metadata(&path).unwrap().len() as usize > records);
        let mut log = open(dir.path());
        assert_eq!(log.entries.read().by_index.len(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, records);
        // Appends go on after the records, not after the zeros.
        log.write(&[Record::Entry(blank(1, 2))]).unwrap();
        drop(log);
        assert_eq!(open(dir.path()).entries.read().by_index.len(), 3);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_damage_before_good_records_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let records = two_entries(dir.path());
        let whole = std::fs::read(&path).unwrap()[..records].to_vec();

        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let log = open(dir.path());
        assert_eq!(log.entries.read().by_index.len(), 1);
        drop(log);

        // The entries start after the header record.
        let first = record::HEADER_LEN + MAGIC.len() + 4;
        let mut damaged = whole.clone();
        damaged[first + record::HEADER_LEN + 2] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let err = LogStore::open(Arc::new(RealFs), dir.path(), Covered::default())
            .err()
            .expect("damage before a good record must be refused");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");

        // A damaged length that points past the end is damage too, not a
        // torn tail: the good record after it must not be cut off.
        let mut damaged = whole.clone();
        damaged[first + 2] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        let err = LogStore::open(Arc::new(RealFs), dir.path(), Covered::default())
            .err()
            .expect("a damaged length before a good record must be refused");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_record_forged_inside_a_value_does_not_pass_for_one() {
        use crate::raft::Batch;
        use crate::storage::change::Change;
        use crate::storage::op::WriteOp;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        // A value holding a whole record as an unsalted log would have it.
        let mut forged = Vec::new();
        encode_record(&mut forged, &Record::Entry(blank(1, 9)), 0);
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 0),
            payload: openraft::EntryPayload::Normal(Batch(vec![
                Change::Write(WriteOp::Set {
                    key: "k".into(),
                    value: forged.into(),
                }),
                // Bytes after the forged record, for the tear to fall in.
                Change::Write(WriteOp::Set {
                    key: "k2".into(),
                    value: "x".repeat(100).into(),
                }),
            ])),
        };
        let mut log = open(dir.path());
        log.write(&[Record::Entry(entry)]).unwrap();
        let end = log.file.lock().as_ref().map(|f| f.data_len()).unwrap() as usize;
        drop(log);
        // A crash tore the record after the forged one: a torn tail.
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..end - 40]).unwrap();
        let log = LogStore::open(Arc::new(RealFs), dir.path(), Covered::default());
        assert!(log.is_ok(), "the forged record passed: {:?}", log.err());
        assert!(log.unwrap().entries.read().by_index.is_empty());
    }

    #[test]
    fn a_log_written_before_salts_is_read_and_appended_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        for i in 0..2 {
            encode_record(&mut old, &Record::Entry(blank(1, i)), 0);
        }
        std::fs::write(dir.path().join(FILE), &old).unwrap();
        let mut log = open(dir.path());
        assert_eq!((log.salt, log.entries.read().by_index.len()), (0, 2));
        log.write(&[Record::Entry(blank(1, 2))]).unwrap();
        drop(log);
        assert_eq!(open(dir.path()).entries.read().by_index.len(), 3);
        // A damaged header is refused, never emptied.
        let dir = tempfile::tempdir().unwrap();
        let records = two_entries(dir.path());
        let path = dir.path().join(FILE);
        let mut damaged = std::fs::read(&path).unwrap()[..records].to_vec();
        damaged[record::HEADER_LEN + 1] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        assert!(LogStore::open(Arc::new(RealFs), dir.path(), Covered::default()).is_err());
    }
}
