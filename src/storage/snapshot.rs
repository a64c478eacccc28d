//! Snapshots: the whole map in one file, `kvstore.db`, replaced atomically.
//! Backups are the same format with the writes made during the copy at the
//! end (see `crate::backup`).
//!
//! ```text
//! snapshot = magic "KVSTSNAP" (8 bytes)
//!            record{ kind 1: u8, version: u32 LE, next segment: u64 LE, next seq: u64 LE }
//!            record{ kind 5: u8, state }                   (optional, Raft snapshots only)
//!            record{ kind 7: u8, revised entry* }          (blocks of ~1 MiB)
//!            record{ kind 8: u8, revised op* }             (~1 MiB each)
//!            record{ kind 3: u8, entries: u64 LE, blocks: u64 LE, ops: u64 LE }
//!                                                          (footer)
//! revised entry = key len: u32 LE (top bit: a deadline follows), value len: u32 LE,
//!                 modified: u64 LE, created: u64 LE, [deadline: u64 LE], key, value
//! revised op    = revision: u64 LE, len: u32 LE, one log write (`WriteOp`,
//!                 bincode as in the log)
//! ```
//!
//! That is version 4, the only one written since keys carry revisions (the
//! log positions of their last write and of their creation:
//! docs/transactions.md). A key with a deadline (ms since the epoch:
//! docs/design/expiry.md) keeps it whether or not its time has passed (a
//! loader hides it again). Older versions are still read, their keys at
//! revision 0: version 1 has blocks of kind 2 (`entry = key len: u32 LE,
//! value len: u32 LE, key, value`) and a footer without `ops`; version 2
//! adds op records of kind 4 (`op = len: u32 LE, WriteOp`); version 3
//! adds blocks of kind 6, whose entries have a `deadline: u64 LE` after the
//! value length. A server older than version 4 refuses these files rather
//! than lose what it cannot read.
//!
//! Records use the framing of [`super::record`], so damage is found block by
//! block and reported with its offset; the footer makes a cut file detectable.
//! Op records follow every block; a loader applies their writes in order
//! after the entries. The data file's snapshots have none. The state record
//! holds what a Raft snapshot carries beside the data (the client sessions,
//! `crate::raft::sessions`): loaders skip it, [`read_state`] reads it. It is
//! written only when there is state, so other snapshots stay readable by
//! servers that predate it.
//!
//! A snapshot holds every write in log segments before `next segment`, and
//! possibly some writes of later segments (the map is copied while writes go
//! on). Recovery replays every segment from `next segment` on; because each
//! write is idempotent, the result is exact either way.
//!
//! Writing ([`write`]) goes to a temp file beside it (`kvstore.db.tmp`), which
//! is `sync_all`ed, then renamed over the old snapshot, then the directory is
//! fsynced: a crash at any point leaves either the old snapshot or the new one,
//! whole. A temp file a crash left behind is removed at the next start.

use std::ffi::OsString;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::mpsc::{Receiver, SyncSender};

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;

use super::fs::Fs;
use super::op::WriteOp;
pub use super::store::Stored;
use super::store::{Loader, Revisions, Store};
use super::{record, sync_dir};
use crate::backup::View;
use crate::engine::{Engine, Revised};
use crate::error::Error;

const MAGIC: &[u8; 8] = b"KVSTSNAP";
/// The version written: revised entries and revised op records.
const VERSION: u32 = 4;
/// Older versions read: op records (and their count in the footer) came
/// with 2, timed entries with 3.
const VERSION_OPS: u32 = 2;
const VERSION_TIMED: u32 = 3;
const KIND_HEADER: u8 = 1;
const KIND_BLOCK: u8 = 2;
const KIND_FOOTER: u8 = 3;
const KIND_OPS: u8 = 4;
const KIND_STATE: u8 = 5;
const KIND_TIMED: u8 = 6;
const KIND_REVISED: u8 = 7;
const KIND_REVISED_OPS: u8 = 8;
/// In a revised entry's key length: a deadline follows the revisions.
const HAS_DEADLINE: u32 = 1 << 31;
/// A block (or op record) is closed once its body passes this size.
const BLOCK_BYTES: usize = 1 << 20;
/// The longest record a reader accepts: a block closes once it passes
/// `BLOCK_BYTES`, so it holds at most that plus one entry (or op), and no
/// entry or op can be larger than a frame.
const MAX_RECORD: usize = BLOCK_BYTES + 16 + kvstore_client::codec::HARD_MAX_FRAME;
/// Pairs copied out of a shard per lock acquisition.
pub const CHUNK_PAIRS: usize = 1024;

/// What a snapshot file said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The first log segment not wholly contained in the snapshot.
    pub next_segment: u64,
    /// The sequence number of that segment's first record.
    pub next_seq: u64,
    pub entries: u64,
    /// Writes applied after the entries (a backup's; 0 for the data file).
    pub ops: u64,
    pub bytes: u64,
}

/// Encodes a store into the snapshot format a piece at a time, so that the
/// same bytes go to a file ([`write`]) or to a client in chunks (a backup).
///
/// The caller copies the store with [`Encoder::copy_some`] until it says
/// the last shard is done, adds ops if any ([`Encoder::push_op`]), then
/// [`Encoder::finish`]es; between steps it takes the whole records encoded
/// so far with [`Encoder::take`].
pub struct Encoder {
    /// Encoded bytes: whole records up to `sealed`, then the open record.
    out: BytesMut,
    /// Bytes of `out` that are whole records, ready to be taken.
    sealed: usize,
    /// The kind of the record being filled (its header starts at `sealed`).
    open: Option<u8>,
    /// The shard being copied.
    shard: usize,
    /// The last key copied from that shard: the next visit resumes after it.
    after: Option<Vec<u8>>,
    entries: u64,
    blocks: u64,
    ops: u64,
    /// Bytes of whole records (and the magic) since the start, taken or not.
    bytes: u64,
    /// The header's next segment and next sequence number.
    resume: (u64, u64),
}

impl Encoder {
    /// Starts a copy whose header names the first log segment (and its
    /// first sequence number) that recovery must replay after it (a
    /// backup's and a Raft snapshot's name none: 1 and 0).
    pub fn new(next_segment: u64, next_seq: u64) -> Encoder {
        let mut encoder = Encoder {
            out: BytesMut::with_capacity(BLOCK_BYTES + 64 * 1024),
            sealed: 0,
            open: None,
            shard: 0,
            after: None,
            entries: 0,
            blocks: 0,
            ops: 0,
            bytes: 0,
            resume: (next_segment, next_seq),
        };
        encoder.out.put_slice(MAGIC);
        encoder.sealed = MAGIC.len();
        encoder.bytes = MAGIC.len() as u64;
        encoder.begin(KIND_HEADER);
        encoder.out.put_u32_le(VERSION);
        encoder.out.put_u64_le(next_segment);
        encoder.out.put_u64_le(next_seq);
        encoder.close();
        encoder
    }

    /// Adds the state record: right after the header, before any entry.
    pub fn push_state(&mut self, state: &[u8]) {
        debug_assert!(self.entries == 0 && self.open.is_none());
        self.begin(KIND_STATE);
        self.out.put_slice(state);
        self.close();
    }

    /// Copies the next few pairs of `store` (one shard lock acquisition).
    /// Returns false once every shard is copied.
    pub fn copy_some(&mut self, store: &Store) -> bool {
        if self.shard >= store.shard_count() {
            self.close();
            return false;
        }
        let after = self.after.take();
        self.after = store.visit(self.shard, after.as_deref(), CHUNK_PAIRS, |entry| {
            let stored = (entry.key(), entry.value());
            self.push_entry(stored, entry.deadline(), entry.revisions());
        });
        if self.after.is_none() {
            self.shard += 1;
        }
        true
    }

    /// Adds one pair, with its deadline if it has one (a copy that is not
    /// [`Encoder::copy_some`]'s); every pair comes before the first op.
    pub fn push_entry(
        &mut self,
        (key, value): (&[u8], &[u8]),
        deadline: Option<u64>,
        revisions: Revisions,
    ) {
        self.begin_kind(KIND_REVISED);
        let flag = deadline.map_or(0, |_| HAS_DEADLINE);
        self.out.put_u32_le(key.len() as u32 | flag);
        self.out.put_u32_le(value.len() as u32);
        self.out.put_u64_le(revisions.modified);
        self.out.put_u64_le(revisions.created);
        if let Some(at) = deadline {
            self.out.put_u64_le(at);
        }
        self.out.put_slice(key);
        self.out.put_slice(value);
        self.entries += 1;
        self.close_if_full();
    }

    /// Adds one write, made at `revision`, to apply after the entries (a
    /// backup's tee).
    pub fn push_op(&mut self, op: &WriteOp, revision: u64) -> Result<(), String> {
        let encoded = kvstore_client::codec::encode(op).map_err(|e| e.to_string())?;
        let len = u32::try_from(encoded.len()).map_err(|_| "a write too large to back up")?;
        self.begin_kind(KIND_REVISED_OPS);
        self.out.put_u64_le(revision);
        self.out.put_u32_le(len);
        self.out.put_slice(&encoded);
        self.ops += 1;
        self.close_if_full();
        Ok(())
    }

    /// Closes the last record and adds the footer: everything is now ready
    /// to be taken.
    pub fn finish(&mut self) {
        self.close();
        self.begin(KIND_FOOTER);
        self.out.put_u64_le(self.entries);
        self.out.put_u64_le(self.blocks);
        self.out.put_u64_le(self.ops);
        self.close();
    }

    /// Up to `max` bytes of the whole records encoded so far.
    pub fn take(&mut self, max: usize) -> Bytes {
        let n = self.sealed.min(max);
        self.sealed -= n;
        self.out.split_to(n).freeze()
    }

    /// Bytes ready to be taken.
    pub fn ready(&self) -> usize {
        self.sealed
    }

    /// Entries copied so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Ops pushed so far.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Bytes of whole records encoded so far, taken or not (the file's size
    /// once finished).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Opens a record of `kind` unless one of that kind is open already.
    fn begin_kind(&mut self, kind: u8) {
        if self.open.is_some_and(|open| open != kind) {
            self.close();
        }
        self.begin(kind);
    }

    /// Opens a record of `kind` unless one is open already.
    fn begin(&mut self, kind: u8) {
        if self.open.is_none() {
            self.out.put_bytes(0, record::HEADER_LEN);
            self.out.put_u8(kind);
            self.open = Some(kind);
        }
    }

    fn close_if_full(&mut self) {
        if self.out.len() - self.sealed >= record::HEADER_LEN + BLOCK_BYTES {
            self.close();
        }
    }

    /// Seals the open record, if any.
    fn close(&mut self) {
        if let Some(kind) = self.open.take() {
            record::seal(&mut self.out, self.sealed);
            if kind == KIND_REVISED {
                self.blocks += 1;
            }
            self.bytes += (self.out.len() - self.sealed) as u64;
            self.sealed = self.out.len();
        }
    }
}

/// Writes a snapshot of what `view` copies to `path`, durably and
/// atomically.
///
/// `before_rename` runs after the new file is synced and before it replaces
/// the old one; the caller uses it to make every write the copy may contain
/// durable in the log (with `--sync periodic|never` they may not be yet).
pub fn write(
    fs: &dyn Fs,
    path: &Path,
    view: &mut dyn View,
    next_segment: u64,
    next_seq: u64,
    before_rename: impl FnOnce() -> Result<(), Error>,
) -> Result<SnapshotInfo, Error> {
    let encoder = Encoder::new(next_segment, next_seq);
    write_encoded(fs, path, view, encoder, before_rename)
}

/// [`write`] for a Raft snapshot, with `state` (if not empty) in its state
/// record.
pub fn write_with_state(
    fs: &dyn Fs,
    path: &Path,
    view: &mut dyn View,
    state: &[u8],
) -> Result<SnapshotInfo, Error> {
    let mut encoder = Encoder::new(0, 0);
    if !state.is_empty() {
        encoder.push_state(state);
    }
    write_encoded(fs, path, view, encoder, || Ok(()))
}

fn write_encoded(
    fs: &dyn Fs,
    path: &Path,
    view: &mut dyn View,
    mut encoder: Encoder,
    before_rename: impl FnOnce() -> Result<(), Error>,
) -> Result<SnapshotInfo, Error> {
    let started = Instant::now();
    let dir = parent_dir(path);
    let tmp_path = temp_path(path);
    let io = |e| Error::io(&tmp_path, e);
    let mut file = fs.create(&tmp_path).map_err(io)?;
    loop {
        let more = view.copy_some(&mut encoder)?;
        if encoder.ready() >= BLOCK_BYTES || !more {
            file.write_all(&encoder.take(usize::MAX)).map_err(io)?;
        }
        if !more {
            break;
        }
    }
    encoder.finish();
    file.write_all(&encoder.take(usize::MAX)).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    before_rename()?;
    fs.rename(&tmp_path, path).map_err(|e| Error::io(path, e))?;
    // The rename is durable only once the directory is synced.
    sync_dir(fs, dir)?;
    let (entries, bytes) = (encoder.entries(), encoder.bytes());
    let (next_segment, next_seq) = encoder.resume;
    tracing::info!(
        path = %path.display(),
        entries,
        bytes,
        ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(SnapshotInfo {
        next_segment,
        next_seq,
        entries,
        ops: 0,
        bytes,
    })
}

/// Where a snapshot of `path` is written before it is renamed into place.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name: OsString = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Loads the snapshot at `path` into `store`; `Ok(None)` if there is none.
/// Any damage stops the load with the file and the offset of the bad record,
/// and leaves `store` as it was.
///
/// This thread reads the file and checks each record's checksum; blocks go to
/// worker threads (one per core) that decode their entries and sort them by
/// shard; then each shard's tree is built from its sorted entries at once;
/// then the op records' writes, if any, are applied in order.
pub fn load(fs: &dyn Fs, path: &Path, store: &Store) -> Result<Option<SnapshotInfo>, Error> {
    let Some((mut input, file_len)) = open(fs, path)? else {
        return Ok(None);
    };
    let corrupt = |offset: u64, reason: &str| Error::corrupt(path, offset, reason);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    // Few blocks in flight: each is about 1 MiB.
    let (blocks_tx, blocks_rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(2 * workers);
    let blocks_rx = Mutex::new(blocks_rx);
    let (read, decoded) = std::thread::scope(|scope| {
        let decoders: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| decode_blocks(&blocks_rx, store)))
            .collect();
        let read = read_records(&mut input, path, file_len, blocks_tx);
        let decoded: Vec<_> = decoders
            .into_iter()
            .map(|d| d.join().unwrap_or(Err((0, "a decoding thread panicked"))))
            .collect();
        (read, decoded)
    });
    // A block's own damage comes before anything the reader found later.
    let mut loaders = Vec::with_capacity(decoded.len());
    let mut entries = 0;
    let mut first_bad: Option<(u64, &str)> = None;
    for result in decoded {
        match result {
            Ok((loader, n)) => {
                loaders.push(loader);
                entries += n;
            }
            Err(bad) => first_bad = Some(first_bad.map_or(bad, |b| b.min(bad))),
        }
    }
    if let Some((offset, reason)) = first_bad {
        return Err(corrupt(offset, reason));
    }
    let footer = read?;
    if footer.entries != entries {
        return Err(corrupt(
            footer.offset,
            "footer does not match the blocks read",
        ));
    }
    store.finish_load(loaders, workers);
    // A backup's writes made during its copy, in their order: over the
    // copied entries they give the state at the backup's end mark.
    for (op, revision) in &footer.ops {
        store.apply_at(op, *revision);
    }
    Ok(Some(footer.info))
}

/// Opens the snapshot at `path` and reads its magic; `Ok(None)` if there
/// is none. Returns the reader, after the magic, and the file's length.
fn open(fs: &dyn Fs, path: &Path) -> Result<Option<(impl Read + Send, u64)>, Error> {
    let (file, file_len) = match fs.open_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut input = BufReader::with_capacity(BLOCK_BYTES, file);
    let mut magic = [0u8; 8];
    if input.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a kvstore snapshot (bad magic)",
        ));
    }
    Ok(Some((input, file_len)))
}

/// A part of a copy, as [`read_batches`] hands it over.
pub enum Part<'a> {
    /// One block's entries.
    Entries(&'a [Stored]),
    /// The writes after the entries, each with its revision.
    Ops(&'a [Revised<'a>]),
}

impl Part<'_> {
    /// The writes that make the part again through a log (a restore into a
    /// running store), whose revisions are that log's: the pairs without a
    /// deadline as one `BulkSet`, those with one as one `SetExpiringMany`.
    pub fn writes(&self) -> Vec<WriteOp> {
        let entries = match self {
            Part::Ops(ops) => return ops.iter().map(|(op, _)| (*op).clone()).collect(),
            Part::Entries(entries) => entries,
        };
        let (mut items, mut timed) = (Vec::new(), Vec::new());
        for e in entries.iter() {
            let (key, value) = (e.key.clone(), e.value.clone());
            match e.deadline {
                None => items.push((key, value)),
                Some(at) => timed.push((key, value, at)),
            }
        }
        let bulk = (!items.is_empty()).then_some(WriteOp::BulkSet { items });
        let timed = (!timed.is_empty()).then_some(WriteOp::SetExpiringMany { items: timed });
        bulk.into_iter().chain(timed).collect()
    }
}

/// Loads the snapshot or backup at `path` into `engine`, one batch per
/// block ([`Engine::load`]), then its ops as one more batch; a
/// few blocks are in memory at a time, whatever the file's size. Damage
/// stops the load with the file and the offset of the bad record, but what
/// came before it stays applied: load into an engine that can be thrown
/// away. The memory engine's [`load`] is faster: it builds the map at once.
pub fn load_into(fs: &dyn Fs, path: &Path, engine: &dyn Engine) -> Result<SnapshotInfo, Error> {
    read_batches(fs, path, &mut |part| match part {
        Part::Entries(entries) => engine.load(entries),
        Part::Ops(ops) => engine.apply(ops, 0).map(drop),
    })
}

/// Hands the file to `each` a part at a time, as [`load_into`] applies
/// them: each block's entries, then the ops. An error of `each` stops the
/// read and is returned.
pub fn read_batches(
    fs: &dyn Fs,
    path: &Path,
    each: &mut dyn FnMut(Part) -> Result<(), Error>,
) -> Result<SnapshotInfo, Error> {
    let (mut input, file_len) =
        open(fs, path)?.ok_or_else(|| Error::io(path, std::io::ErrorKind::NotFound.into()))?;
    let (blocks_tx, blocks_rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(2);
    let (read, applied) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_records(&mut input, path, file_len, blocks_tx));
        let applied = apply_blocks(path, blocks_rx, each);
        let read =
            (reader.join()).unwrap_or_else(|_| Err(Error::corrupt(path, 0, "the reader panicked")));
        (read, applied)
    });
    // A block's own damage comes before anything the reader found later.
    let entries = applied?;
    let footer = read?;
    if footer.entries != entries {
        return Err(Error::corrupt(
            path,
            footer.offset,
            "footer does not match the blocks read",
        ));
    }
    let ops: Vec<Revised> = (footer.ops.iter()).map(|(op, at)| (op, *at)).collect();
    each(Part::Ops(&ops))?;
    Ok(footer.info)
}

/// Hands each block's entries to `each`; the entries handed over. After
/// the first error it only drains the channel, so the reader never waits
/// on it.
fn apply_blocks(
    path: &Path,
    blocks: Receiver<(u64, Vec<u8>)>,
    each: &mut dyn FnMut(Part) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut entries = 0;
    let mut failed = None;
    for (offset, body) in blocks {
        if failed.is_some() {
            continue;
        }
        let mut stored = Vec::new();
        let decoded = decode_block(&body, |(key, value), deadline, revisions| {
            stored.push(Stored {
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
                deadline,
                revisions,
            })
        });
        let applied = decoded
            .map_err(|reason| Error::corrupt(path, offset, reason))
            .and_then(|n| {
                entries += n;
                each(Part::Entries(&stored))
            });
        failed = applied.err();
    }
    failed.map_or(Ok(entries), Err)
}

/// What the reader found at the end of a whole snapshot.
struct Footer {
    info: SnapshotInfo,
    /// The entries the footer claims (the decoders count the real ones).
    entries: u64,
    /// Where the footer record starts.
    offset: u64,
    /// The writes of the op records, decoded and in order, with their
    /// revisions (0 before version 4).
    ops: Vec<(WriteOp, u64)>,
}

/// Reads and checks every record of a snapshot after its magic, sending each
/// block with its offset to the decoders.
fn read_records(
    input: &mut impl Read,
    path: &Path,
    file_len: u64,
    blocks: SyncSender<(u64, Vec<u8>)>,
) -> Result<Footer, Error> {
    let corrupt = |offset: u64, reason: &str| Error::corrupt(path, offset, reason);
    let mut offset = MAGIC.len() as u64;
    // The header's (version, next segment, next seq), once read.
    let mut resume = None;
    let mut sent = 0u64;
    let mut ops = Vec::new();
    // An op record was read: no block may follow.
    let mut ops_seen = false;
    // The state record was read (or a block, after which none may come).
    let mut state_seen = false;
    loop {
        let body = read_record(input, path, offset, file_len)?;
        let len = body.len();
        let body_at = offset + record::HEADER_LEN as u64;
        let field = |at: usize| {
            body.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        match (body.first(), resume) {
            (Some(&KIND_HEADER), None) => {
                let version = body
                    .get(1..5)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
                let Some(version @ 1..=VERSION) = version else {
                    return Err(corrupt(
                        offset,
                        &format!("unsupported snapshot version {version:?}"),
                    ));
                };
                let (Some(segment), Some(seq)) = (field(5), field(13)) else {
                    return Err(corrupt(offset, "short header"));
                };
                resume = Some((version, segment, seq));
            }
            // Skipped here: read_state reads it.
            (Some(&KIND_STATE), Some(_)) if !state_seen => state_seen = true,
            // Blocks come before any op record.
            (Some(&kind), Some((version, _, _))) if block_of(kind, version) && !ops_seen => {
                state_seen = true;
                if blocks.send((offset, body)).is_err() {
                    // Every decoder has stopped, which only a panic does.
                    return Err(corrupt(offset, "the decoders stopped"));
                }
                sent += 1;
            }
            (Some(&KIND_OPS), Some((VERSION_OPS..VERSION, _, _)))
            | (Some(&KIND_REVISED_OPS), Some((VERSION, _, _))) => {
                ops_seen = true;
                let revised = body[0] == KIND_REVISED_OPS;
                decode_ops(&body[1..], revised, &mut ops)
                    .map_err(|reason| corrupt(offset, &reason))?;
            }
            (Some(&KIND_FOOTER), Some((version, next_segment, next_seq))) => {
                let (Some(entries), Some(claimed_blocks)) = (field(1), field(9)) else {
                    return Err(corrupt(offset, "short footer"));
                };
                let (claimed_ops, footer_len) = if version >= VERSION_OPS {
                    (field(17), 25)
                } else {
                    (Some(0), 17)
                };
                let Some(claimed_ops) = claimed_ops.filter(|_| body.len() == footer_len) else {
                    return Err(corrupt(offset, "footer of the wrong length"));
                };
                if claimed_blocks != sent || claimed_ops != ops.len() as u64 {
                    return Err(corrupt(offset, "footer does not match the records read"));
                }
                let end = body_at + len as u64;
                if end != file_len {
                    return Err(corrupt(end, "unexpected bytes after the footer"));
                }
                return Ok(Footer {
                    info: SnapshotInfo {
                        next_segment,
                        next_seq,
                        entries,
                        ops: claimed_ops,
                        bytes: file_len,
                    },
                    entries,
                    offset,
                    ops,
                });
            }
            _ => return Err(corrupt(offset, "unexpected record kind")),
        }
        offset = body_at + len as u64;
    }
}

/// Reads the record at `offset` and checks it: its claimed length against
/// the file and the largest record the writer makes (before allocating),
/// then its checksum. Returns its body.
fn read_record(
    input: &mut impl Read,
    path: &Path,
    offset: u64,
    file_len: u64,
) -> Result<Vec<u8>, Error> {
    let corrupt = |reason: &str| Error::corrupt(path, offset, reason);
    let mut header = [0u8; record::HEADER_LEN];
    if input.read_exact(&mut header).is_err() {
        return Err(corrupt("file ends before the snapshot's footer"));
    }
    let (len, _) = record::parse_header(header);
    let body_at = offset + record::HEADER_LEN as u64;
    if len as u64 > file_len.saturating_sub(body_at) {
        return Err(corrupt("record extends past the end of the file"));
    }
    if len > MAX_RECORD {
        return Err(corrupt("record longer than any block the writer makes"));
    }
    let mut body = vec![0u8; len];
    input
        .read_exact(&mut body)
        .map_err(|e| Error::io(path, e))?;
    if !record::verify(header, &body) {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(body)
}

/// The state record of the snapshot at `path`, if it has one (see the
/// module's doc). Reads only the records before the first block.
pub fn read_state(fs: &dyn Fs, path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let (mut input, file_len) =
        open(fs, path)?.ok_or_else(|| Error::io(path, std::io::ErrorKind::NotFound.into()))?;
    let offset = MAGIC.len() as u64;
    let header = read_record(&mut input, path, offset, file_len)?;
    if header.first() != Some(&KIND_HEADER) {
        return Err(Error::corrupt(
            path,
            offset,
            "the snapshot does not start with its header",
        ));
    }
    let offset = offset + (record::HEADER_LEN + header.len()) as u64;
    let next = read_record(&mut input, path, offset, file_len)?;
    Ok((next.first() == Some(&KIND_STATE)).then(|| next[1..].to_vec()))
}

/// Whether a record of `kind` is a block of entries in a file of `version`.
fn block_of(kind: u8, version: u32) -> bool {
    match kind {
        KIND_BLOCK => version < VERSION,
        KIND_TIMED => version == VERSION_TIMED,
        KIND_REVISED => version == VERSION,
        _ => false,
    }
}

/// Decodes the writes of one op record's body onto `ops`, each with its
/// revision if the record is `revised` (0 if not).
fn decode_ops(mut body: &[u8], revised: bool, ops: &mut Vec<(WriteOp, u64)>) -> Result<(), String> {
    while !body.is_empty() {
        let mut revision = 0;
        if revised {
            let (at, rest) = body.split_at_checked(8).ok_or("op revision cut short")?;
            revision = u64::from_le_bytes(at.try_into().unwrap_or_default());
            body = rest;
        }
        let (len, rest) = body.split_at_checked(4).ok_or("op length cut short")?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (op, rest) = rest
            .split_at_checked(len)
            .ok_or("op extends past its record")?;
        let op =
            kvstore_client::codec::decode(op).map_err(|e| format!("undecodable write: {e}"))?;
        ops.push((op, revision));
        body = rest;
    }
    Ok(())
}

/// A decoder thread: takes blocks until the reader is done and sorts their
/// entries by shard. After the first damaged block it only drains the
/// channel (so the reader never waits on it), and reports that block.
fn decode_blocks<'s>(
    blocks: &Mutex<Receiver<(u64, Vec<u8>)>>,
    store: &'s Store,
) -> Result<(Loader<'s>, u64), (u64, &'static str)> {
    let mut loader = store.loader();
    let mut entries = 0;
    let mut bad = None;
    loop {
        let next = blocks.lock().recv();
        let Ok((offset, body)) = next else { break };
        if bad.is_some() {
            continue;
        }
        match decode_block(&body, |stored, at, revisions| {
            loader.push(stored, at, revisions)
        }) {
            Ok(n) => entries += n,
            Err(reason) => bad = Some((offset, reason)),
        }
    }
    match bad {
        Some(bad) => Err(bad),
        None => Ok((loader, entries)),
    }
}

/// Hands each entry of a block record (its kind byte first) to `push`,
/// with its deadline if it has one and its revisions (0 before version 4);
/// how many there were.
fn decode_block(
    body: &[u8],
    mut push: impl FnMut((&[u8], &[u8]), Option<u64>, Revisions),
) -> Result<u64, &'static str> {
    let kind = body.first().copied().unwrap_or_default();
    let mut block = body.get(1..).unwrap_or_default();
    let mut n = 0;
    while !block.is_empty() {
        let (head, rest) = entry_head(kind, block)?;
        let (key, rest) = rest
            .split_at_checked(head.key_len)
            .ok_or("key extends past its block")?;
        let (value, rest) = rest
            .split_at_checked(head.value_len)
            .ok_or("value extends past its block")?;
        push((key, value), head.deadline, head.revisions);
        block = rest;
        n += 1;
    }
    Ok(n)
}

/// What comes before an entry's key in a block.
struct EntryHead {
    key_len: usize,
    value_len: usize,
    deadline: Option<u64>,
    revisions: Revisions,
}

/// The head of the entry that `block` starts with, in a block of `kind`,
/// and the bytes after it.
fn entry_head(kind: u8, block: &[u8]) -> Result<(EntryHead, &[u8]), &'static str> {
    let mut fields = block;
    let mut next = |n: usize| -> Result<u64, &'static str> {
        let (field, rest) = fields.split_at_checked(n).ok_or("entry header cut short")?;
        fields = rest;
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(field);
        Ok(u64::from_le_bytes(bytes))
    };
    let (key_len, value_len) = (next(4)? as u32, next(4)? as usize);
    let mut head = EntryHead {
        key_len: (key_len & !HAS_DEADLINE) as usize,
        value_len,
        deadline: None,
        revisions: Revisions::default(),
    };
    match kind {
        KIND_REVISED => {
            head.revisions = Revisions {
                modified: next(8)?,
                created: next(8)?,
            };
            if key_len & HAS_DEADLINE != 0 {
                head.deadline = Some(next(8)?);
            }
        }
        KIND_TIMED => head.deadline = Some(next(8)?),
        _ => head.key_len = key_len as usize,
    }
    Ok((head, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::clock::Clock;
    use crate::storage::fs::RealFs;

    fn set(key: &str, value: &str) -> WriteOp {
        WriteOp::set(key, value)
    }

    fn load_bytes(file: &[u8]) -> Result<(Store, Option<SnapshotInfo>), Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        std::fs::write(&path, file).unwrap();
        let store = Store::new(2);
        let info = load(&RealFs, &path, &store)?;
        Ok((store, info))
    }

    /// A file as a backup makes it: two pairs, then two writes, each at
    /// its revision.
    fn with_ops() -> Vec<u8> {
        let store = Store::new(2);
        store.apply_at(&set("a", "copied"), 1);
        store.apply_at(&set("b", "copied"), 2);
        let mut encoder = Encoder::new(1, 1);
        while encoder.copy_some(&store) {}
        encoder.push_op(&set("a", "written later"), 3).unwrap();
        let delete = WriteOp::Delete {
            key: Bytes::from_static(b"b"),
        };
        encoder.push_op(&delete, 4).unwrap();
        encoder.finish();
        encoder.take(usize::MAX).to_vec()
    }

    #[test]
    fn op_records_are_applied_after_the_entries_in_order() {
        let (store, info) = load_bytes(&with_ops()).unwrap();
        let info = info.unwrap();
        assert_eq!((info.entries, info.ops), (2, 2));
        let a = store.get_revised(b"a");
        let revisions = Revisions {
            modified: 3,
            created: 1,
        };
        assert_eq!(a, Some((Bytes::from("written later"), revisions)));
        assert_eq!(store.get(b"b"), None);
        assert_eq!(store.len(), 1);
    }

    /// A data file snapshot of a store that holds deadlines: a key gone
    /// already, one still there, one without; then an op.
    fn timed() -> (Vec<u8>, SnapshotInfo) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvstore.db");
        let store = Store::with_clock(2, Clock::manual(1_000));
        for (key, at, revision) in [("gone", 500, 1), ("kept", 2_000, 2)] {
            let (key, value) = (Bytes::from(key), Bytes::from("v"));
            store.apply_at(&WriteOp::SetExpiring { key, value, at }, revision);
        }
        store.apply_at(&set("plain", "p"), 3);
        let info = write(&RealFs, &path, &mut &store, 3, 30, || Ok(())).unwrap();
        (std::fs::read(&path).unwrap(), info)
    }

    /// Deadlines and revisions survive a copy, whichever way it is
    /// loaded, and an expired key stays hidden; the file is version 4.
    #[test]
    fn entries_keep_their_deadlines_and_revisions() {
        let (file, info) = timed();
        assert_eq!(file[17..21], VERSION.to_le_bytes(), "the header's version");
        assert_eq!(info.entries, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        std::fs::write(&path, &file).unwrap();
        let loaded = Store::with_clock(3, Clock::manual(1_000));
        load(&RealFs, &path, &loaded).unwrap();
        let replayed = Store::with_clock(3, Clock::manual(1_000));
        read_batches(&RealFs, &path, &mut |part| {
            match part {
                Part::Entries(entries) => replayed.insert(entries),
                Part::Ops(ops) => ops
                    .iter()
                    .for_each(|&(op, at)| drop(replayed.apply_at(op, at))),
            }
            Ok(())
        })
        .unwrap();
        let at = |modified| Revisions {
            modified,
            created: modified,
        };
        for store in [&loaded, &replayed] {
            assert_eq!(store.deadline(b"kept"), Some(Some(2_000)));
            assert_eq!(store.deadline(b"plain"), Some(None));
            assert_eq!((store.get(b"gone"), store.len()), (None, 2));
            assert_eq!(store.due(u64::MAX, 9).len(), 2, "both timed keys are held");
            let revisions = |key: &[u8]| store.get_revised(key).map(|(_, r)| r);
            assert_eq!(
                (revisions(b"kept"), revisions(b"plain")),
                (Some(at(2)), Some(at(3)))
            );
        }
    }

    /// Files of version 3 (timed blocks, op records without revisions)
    /// still load, their keys at revision 0.
    #[test]
    fn a_version_3_file_still_loads() {
        let mut file = MAGIC.to_vec();
        let mut header = vec![KIND_HEADER];
        header.extend_from_slice(&VERSION_TIMED.to_le_bytes());
        header.extend_from_slice(&[0; 16]);
        record::append(&mut file, &header);
        record::append(&mut file, &[KIND_BLOCK, 1, 0, 0, 0, 1, 0, 0, 0, b'k', b'v']);
        let mut timed = vec![KIND_TIMED, 1, 0, 0, 0, 1, 0, 0, 0];
        timed.extend_from_slice(&u64::MAX.to_le_bytes());
        timed.extend_from_slice(b"tw");
        record::append(&mut file, &timed);
        let op = kvstore_client::codec::encode(&set("o", "p")).unwrap();
        let mut ops = vec![KIND_OPS];
        ops.extend_from_slice(&(op.len() as u32).to_le_bytes());
        ops.extend_from_slice(&op);
        record::append(&mut file, &ops);
        let mut footer = vec![KIND_FOOTER];
        for n in [2u64, 2, 1] {
            footer.extend_from_slice(&n.to_le_bytes());
        }
        record::append(&mut file, &footer);
        let (store, info) = load_bytes(&file).unwrap();
        assert_eq!(info.map(|i| (i.entries, i.ops)), Some((2, 1)));
        let zero = Revisions::default();
        assert_eq!(store.get_revised(b"k"), Some((Bytes::from("v"), zero)));
        assert_eq!(store.get_revised(b"t"), Some((Bytes::from("w"), zero)));
        assert_eq!(store.deadline(b"t"), Some(Some(u64::MAX)));
        assert_eq!(store.get(b"o").as_deref(), Some(&b"p"[..]));
    }

    #[test]
    fn any_flipped_bit_or_cut_of_a_file_with_ops_is_refused() {
        for file in [with_ops(), timed().0] {
            refused_when_damaged(&file);
        }
    }

    fn refused_when_damaged(file: &[u8]) {
        let file = file.to_vec();
        for bit in 0..file.len() * 8 {
            let mut bad = file.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(load_bytes(&bad).is_err(), "bit {bit} flipped");
        }
        for cut in 0..file.len() {
            assert!(load_bytes(&file[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_block_after_an_op_record_is_refused_even_an_empty_one() {
        let op = kvstore_client::codec::encode(&set("a", "1")).unwrap();
        let mut one_op = vec![KIND_OPS];
        one_op.extend_from_slice(&(op.len() as u32).to_le_bytes());
        one_op.extend_from_slice(&op);
        for ops in [one_op, vec![KIND_OPS]] {
            let mut file = MAGIC.to_vec();
            let mut header = vec![KIND_HEADER];
            header.extend_from_slice(&2u32.to_le_bytes());
            header.extend_from_slice(&[0; 16]);
            record::append(&mut file, &header);
            record::append(&mut file, &ops);
            record::append(&mut file, &[KIND_BLOCK, 1, 0, 0, 0, 1, 0, 0, 0, b'k', b'v']);
            let err = load_bytes(&file).err().expect("refused").to_string();
            assert!(err.contains("unexpected record kind"), "{err}");
        }
    }

    /// The data file's snapshot holds no writes; what it says of itself
    /// is what a load finds.
    #[test]
    fn the_data_files_snapshots_hold_no_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvstore.db");
        let store = Store::new(2);
        store.apply(&set("a", "1"));
        let info = write(&RealFs, &path, &mut &store, 3, 30, || Ok(())).unwrap();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(file.len() as u64, info.bytes);
        let (loaded, loaded_info) = load_bytes(&file).unwrap();
        assert_eq!(loaded_info, Some(info));
        assert_eq!(info.ops, 0);
        assert_eq!(loaded.get(b"a").as_deref(), Some(&b"1"[..]));
    }

    /// Files written before op records existed (version 1: no `ops` in the
    /// footer) still load.
    #[test]
    fn a_version_1_snapshot_still_loads() {
        let mut file = MAGIC.to_vec();
        let mut header = vec![KIND_HEADER];
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&7u64.to_le_bytes());
        header.extend_from_slice(&70u64.to_le_bytes());
        record::append(&mut file, &header);
        record::append(&mut file, &[KIND_BLOCK, 1, 0, 0, 0, 1, 0, 0, 0, b'k', b'v']);
        let mut footer = vec![KIND_FOOTER];
        footer.extend_from_slice(&1u64.to_le_bytes());
        footer.extend_from_slice(&1u64.to_le_bytes());
        record::append(&mut file, &footer);
        let (store, info) = load_bytes(&file).unwrap();
        let info = info.unwrap();
        assert_eq!(
            (info.next_segment, info.next_seq, info.entries, info.ops),
            (7, 70, 1, 0)
        );
        assert_eq!(store.get(b"k").as_deref(), Some(&b"v"[..]));
        // An op record has no place in version 1.
        let mut with_op = file[..file.len() - (footer.len() + record::HEADER_LEN)].to_vec();
        record::append(&mut with_op, &[KIND_OPS]);
        record::append(&mut with_op, &footer);
        assert!(load_bytes(&with_op).is_err());
    }
}
