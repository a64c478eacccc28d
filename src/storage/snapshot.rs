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

use bytes::Bytes;

use super::fs::Fs;
use super::{record, store::Store, sync_dir};
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
    for shard in 0..store.shard_count() {
        let mut after: Option<Bytes> = None;
        loop {
            let chunk = store.chunk(shard, after.as_ref(), CHUNK_PAIRS);
            let Some((last, _)) = chunk.last() else { break };
            after = Some(last.clone());
            for (key, value) in &chunk {
                block.extend_from_slice(&(key.len() as u32).to_le_bytes());
                block.extend_from_slice(&(value.len() as u32).to_le_bytes());
                block.extend_from_slice(key);
                block.extend_from_slice(value);
                entries += 1;
                if block.len() >= BLOCK_BYTES {
                    emit(&mut out, &block).map_err(io)?;
                    blocks += 1;
                    block.truncate(1);
                }
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
/// Any damage stops the load with the file and the offset of the bad record.
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
    let mut offset = MAGIC.len() as u64;
    // The header's (next segment, next seq), once read.
    let mut resume = None;
    let mut entries = 0u64;
    let mut blocks = 0u64;
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
                let field = |at: usize| {
                    body.get(at..at + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_le_bytes)
                };
                let (Some(segment), Some(seq)) = (field(5), field(13)) else {
                    return Err(corrupt(offset, "short header"));
                };
                resume = Some((segment, seq));
            }
            (Some(&KIND_BLOCK), Some(_)) => {
                entries +=
                    load_block(&body[1..], store).map_err(|reason| corrupt(offset, reason))?;
                blocks += 1;
            }
            (Some(&KIND_FOOTER), Some((next_segment, next_seq))) => {
                let said = |i: usize| {
                    body.get(i..i + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_le_bytes)
                };
                if said(1) != Some(entries) || said(9) != Some(blocks) {
                    return Err(corrupt(offset, "footer does not match the blocks read"));
                }
                let end = body_at + len as u64;
                if end != file_len {
                    return Err(corrupt(end, "unexpected bytes after the footer"));
                }
                return Ok(Some(SnapshotInfo {
                    next_segment,
                    next_seq,
                    entries,
                    bytes: file_len,
                }));
            }
            _ => return Err(corrupt(offset, "unexpected record kind")),
        }
        offset = body_at + len as u64;
    }
}

fn load_block(mut block: &[u8], store: &Store) -> Result<u64, &'static str> {
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
        store.insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        block = rest;
        n += 1;
    }
    Ok(n)
}
