//! Snapshots: the whole map in one file, `kvstore.db`, replaced atomically.
//!
//! ```text
//! snapshot = magic "KVSTSNAP" (8 bytes)
//!            record{ kind 1: u8, version: u32 LE, next segment: u64 LE, next seq: u64 LE }
//!            record{ kind 2: u8, entry* }                      (blocks of ~1 MiB)
//!            record{ kind 3: u8, entries: u64 LE, blocks: u64 LE }   (footer)
//! entry    = key len: u32 LE, value len: u32 LE, key, value
//! ```
//!
//! Records use the framing of [`super::record`], so damage is found block by
//! block and reported with its offset; the footer makes a cut file detectable.
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
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::mpsc::{Receiver, SyncSender};

use parking_lot::Mutex;

use super::fs::Fs;
use super::store::{Loader, Store};
use super::{record, sync_dir};
use crate::error::Error;

const MAGIC: &[u8; 8] = b"KVSTSNAP";
const VERSION: u32 = 1;
const KIND_HEADER: u8 = 1;
const KIND_BLOCK: u8 = 2;
const KIND_FOOTER: u8 = 3;
/// A block is closed once its body passes this size.
const BLOCK_BYTES: usize = 1 << 20;
/// The longest record a reader accepts: a block closes once it passes
/// `BLOCK_BYTES`, so it holds at most that plus one entry, and no entry can be
/// larger than a frame.
const MAX_RECORD: usize = BLOCK_BYTES + 16 + kvstore_client::codec::HARD_MAX_FRAME;
/// Pairs copied out of a shard per lock acquisition while writing.
const CHUNK_PAIRS: usize = 1024;

/// What a snapshot file said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The first log segment not wholly contained in the snapshot.
    pub next_segment: u64,
    /// The sequence number of that segment's first record.
    pub next_seq: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// Writes a snapshot of `store` to `path`, durably and atomically.
///
/// `before_rename` runs after the new file is synced and before it replaces
/// the old one; the caller uses it to make every write the copy may contain
/// durable in the log (with `--sync periodic|never` they may not be yet).
pub fn write(
    fs: &dyn Fs,
    path: &Path,
    store: &Store,
    next_segment: u64,
    next_seq: u64,
    before_rename: impl FnOnce() -> Result<(), Error>,
) -> Result<SnapshotInfo, Error> {
    let started = Instant::now();
    let dir = parent_dir(path);
    let tmp_path = temp_path(path);
    let io = |e| Error::io(&tmp_path, e);
    let mut file = fs.create(&tmp_path).map_err(io)?;
    let mut out = BufWriter::with_capacity(BLOCK_BYTES + 64 * 1024, &mut file);
    let mut bytes = MAGIC.len() as u64;
    let mut emit = |out: &mut BufWriter<_>, body: &[u8]| -> std::io::Result<()> {
        let mut framed = Vec::with_capacity(body.len() + record::HEADER_LEN);
        record::append(&mut framed, body);
        bytes += framed.len() as u64;
        out.write_all(&framed)
    };
    out.write_all(MAGIC).map_err(io)?;
    let mut header = vec![KIND_HEADER];
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&next_segment.to_le_bytes());
    header.extend_from_slice(&next_seq.to_le_bytes());
    emit(&mut out, &header).map_err(io)?;

    let (mut entries, mut blocks) = (0u64, 0u64);
    let mut block = vec![KIND_BLOCK];
    // One lock acquisition's worth of encoded entries.
    let mut chunk_bytes = Vec::new();
    for shard in 0..store.shard_count() {
        let mut after: Option<Vec<u8>> = None;
        loop {
            // Copied out under the shard's read lock, written without it.
            let mut chunk = Vec::with_capacity(CHUNK_PAIRS);
            after = store.visit(shard, after.as_deref(), CHUNK_PAIRS, |key, value| {
                let at = chunk_bytes.len();
                chunk_bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
                chunk_bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
                chunk_bytes.extend_from_slice(key);
                chunk_bytes.extend_from_slice(value);
                chunk.push(at..chunk_bytes.len());
            });
            for entry in chunk {
                block.extend_from_slice(&chunk_bytes[entry]);
                entries += 1;
                if block.len() >= BLOCK_BYTES {
                    emit(&mut out, &block).map_err(io)?;
                    blocks += 1;
                    block.truncate(1);
                }
            }
            chunk_bytes.clear();
            if after.is_none() {
                break;
            }
        }
    }
    if block.len() > 1 {
        emit(&mut out, &block).map_err(io)?;
        blocks += 1;
    }
    let mut footer = vec![KIND_FOOTER];
    footer.extend_from_slice(&entries.to_le_bytes());
    footer.extend_from_slice(&blocks.to_le_bytes());
    emit(&mut out, &footer).map_err(io)?;
    out.flush().map_err(io)?;
    drop(out);
    file.sync_all().map_err(io)?;
    drop(file);
    before_rename()?;
    fs.rename(&tmp_path, path).map_err(|e| Error::io(path, e))?;
    // The rename is durable only once the directory is synced.
    sync_dir(fs, dir)?;
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
/// shard; then each shard's tree is built from its sorted entries at once.
pub fn load(fs: &dyn Fs, path: &Path, store: &Store) -> Result<Option<SnapshotInfo>, Error> {
    let (file, file_len) = match fs.open_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut input = BufReader::with_capacity(BLOCK_BYTES, file);
    let corrupt = |offset: u64, reason: &str| Error::corrupt(path, offset, reason);
    let mut magic = [0u8; 8];
    if input.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(corrupt(0, "not a kvstore snapshot (bad magic)"));
    }
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
    Ok(Some(footer.info))
}

/// What the reader found at the end of a whole snapshot.
struct Footer {
    info: SnapshotInfo,
    /// The entries the footer claims (the decoders count the real ones).
    entries: u64,
    /// Where the footer record starts.
    offset: u64,
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
    // The header's (next segment, next seq), once read.
    let mut resume = None;
    let mut sent = 0u64;
    loop {
        let mut header = [0u8; record::HEADER_LEN];
        if input.read_exact(&mut header).is_err() {
            return Err(corrupt(offset, "file ends before the snapshot's footer"));
        }
        let (len, _) = record::parse_header(header);
        let body_at = offset + record::HEADER_LEN as u64;
        // Check the claimed length against the real file and against the
        // largest block the writer makes before allocating.
        if len as u64 > file_len.saturating_sub(body_at) {
            return Err(corrupt(offset, "record extends past the end of the file"));
        }
        if len > MAX_RECORD {
            return Err(corrupt(
                offset,
                "record longer than any block the writer makes",
            ));
        }
        let mut body = vec![0u8; len];
        input
            .read_exact(&mut body)
            .map_err(|e| Error::io(path, e))?;
        if !record::verify(header, &body) {
            return Err(corrupt(offset, "checksum mismatch"));
        }
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
                if version != Some(VERSION) {
                    return Err(corrupt(
                        offset,
                        &format!("unsupported snapshot version {version:?}"),
                    ));
                }
                let (Some(segment), Some(seq)) = (field(5), field(13)) else {
                    return Err(corrupt(offset, "short header"));
                };
                resume = Some((segment, seq));
            }
            (Some(&KIND_BLOCK), Some(_)) => {
                if blocks.send((offset, body)).is_err() {
                    // Every decoder has stopped, which only a panic does.
                    return Err(corrupt(offset, "the decoders stopped"));
                }
                sent += 1;
            }
            (Some(&KIND_FOOTER), Some((next_segment, next_seq))) => {
                let (Some(entries), Some(claimed_blocks)) = (field(1), field(9)) else {
                    return Err(corrupt(offset, "short footer"));
                };
                if claimed_blocks != sent {
                    return Err(corrupt(offset, "footer does not match the blocks read"));
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
                        bytes: file_len,
                    },
                    entries,
                    offset,
                });
            }
            _ => return Err(corrupt(offset, "unexpected record kind")),
        }
        offset = body_at + len as u64;
    }
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
        match decode_block(&body[1..], &mut loader) {
            Ok(n) => entries += n,
            Err(reason) => bad = Some((offset, reason)),
        }
    }
    match bad {
        Some(bad) => Err(bad),
        None => Ok((loader, entries)),
    }
}

fn decode_block(mut block: &[u8], loader: &mut Loader<'_>) -> Result<u64, &'static str> {
    let mut n = 0;
    while !block.is_empty() {
        let (lens, rest) = block.split_at_checked(8).ok_or("entry header cut short")?;
        let klen = u32::from_le_bytes([lens[0], lens[1], lens[2], lens[3]]) as usize;
        let vlen = u32::from_le_bytes([lens[4], lens[5], lens[6], lens[7]]) as usize;
        let (key, rest) = rest
            .split_at_checked(klen)
            .ok_or("key extends past its block")?;
        let (value, rest) = rest
            .split_at_checked(vlen)
            .ok_or("value extends past its block")?;
        loader.push(key, value);
        block = rest;
        n += 1;
    }
    Ok(n)
}
