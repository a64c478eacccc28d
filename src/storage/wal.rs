//! The write-ahead log: numbered segment files of checksummed records.
//!
//! Segments live in `<data>-wal/` (for `./kvstore.db`, `./kvstore.db-wal/`),
//! named by a 20-digit number so that names sort like numbers:
//!
//! ```text
//! segment = magic "KVSTWAL1" (8 bytes)
//!           record{ version: u32 LE, segment id: u64 LE, first seq: u64 LE, salt: u32 LE }
//!           record{ seq: u64 LE, durable: u64 LE, op: bincode(WriteOp) } ...
//! ```
//!
//! Records use the framing of [`super::record`]. Sequence numbers rise by one
//! from record to record, across segments too (each segment's header says
//! which one it starts with). `durable` is the sequence number of the last
//! record that a successful `fdatasync` had covered when this record was
//! written.
//!
//! Recovery ([`replay`]) reads the segments in order. Damage to a record that
//! was durable, or in any segment but the newest (a segment is synced before
//! the next one is created), stops the start with the file and offset: it is
//! never skipped. A record counts as durable when a valid later record says so
//! through its `durable` field. Otherwise the damage is a torn tail, what a
//! crash leaves of writes no `fdatasync` had confirmed (cut records, or pages
//! of one batch that reached the disk out of order). It is truncated, with a
//! warning saying how many bytes were dropped. With `--sync always` none of
//! those writes was acknowledged: acknowledgement waits for the `fdatasync`.

use std::path::{Path, PathBuf};

use super::appender::{all_zero, Appender};
use super::fs::Fs;
use super::op::WriteOp;
use super::{record, sync_dir};
use crate::error::Error;

const MAGIC: &[u8; 8] = b"KVSTWAL1";
const VERSION: u32 = 1;
/// The magic, then the header record (8 bytes of framing, 24 of body).
const HEADER_LEN: usize = MAGIC.len() + record::HEADER_LEN + 24;
/// A record's body before its op: seq and durable.
const RECORD_PREFIX: usize = 16;

/// The log directory that belongs to a data file.
pub fn dir_for(data: &Path) -> PathBuf {
    let mut name = data
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push("-wal");
    data.with_file_name(name)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// The ids of the segments in `dir`, ascending. Files that are not segments
/// are left alone.
pub fn list_segments(fs: &dyn Fs, dir: &Path) -> Result<Vec<u64>, Error> {
    let mut ids = Vec::new();
    for name in fs.list(dir).map_err(|e| Error::io(dir, e))? {
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if stem.len() == 20 {
            if let Ok(id) = stem.parse() {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Deletes a segment that a durable snapshot has made obsolete.
pub fn remove_segment(fs: &dyn Fs, dir: &Path, id: u64) -> Result<(), Error> {
    let path = segment_path(dir, id);
    fs.remove(&path).map_err(|e| Error::io(&path, e))
}

/// Encodes one log record for `op` onto `buf`, its checksum seeded with the
/// segment's `salt`: sequence number `seq`, written when everything up to
/// `durable` had been covered by an `fdatasync`.
fn encode_record(buf: &mut Vec<u8>, salt: u32, seq: u64, durable: u64, op: &WriteOp) {
    let start = buf.len();
    buf.extend_from_slice(&[0; record::HEADER_LEN]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&durable.to_le_bytes());
    // Encoding into a Vec cannot fail: WriteOp has no types bincode refuses.
    let _ = kvstore_client::codec::encode_into(op, buf);
    record::seal_with(buf, start, salt);
}

/// A fresh random salt for a new segment (std's per-process random hash keys;
/// no extra dependency). The raft log uses it too.
pub(crate) fn random_salt(id: u64) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(id);
    hasher.finish() as u32
}

/// The segment being appended to. Only the group-commit thread owns one.
pub struct Segment {
    /// Written after the valid data, with zeros ahead.
    file: Appender,
    /// Its number; the next segment is `id + 1`.
    id: u64,
    /// Seeds the checksums of this segment's records; random and never sent
    /// anywhere, so a client cannot forge a record inside a value.
    salt: u32,
}

impl Segment {
    /// Creates segment `id`, whose first record will be `first_seq`, writes its
    /// header, and makes both the file and its directory entry durable before
    /// returning, so recovery always finds it.
    pub fn create(fs: &dyn Fs, dir: &Path, id: u64, first_seq: u64) -> Result<Segment, Error> {
        Segment::create_with_salt(fs, dir, id, first_seq, random_salt(id))
    }

    /// [`Segment::create`] with a chosen salt (for fuzzing, which needs
    /// reproducible files).
    pub fn create_with_salt(
        fs: &dyn Fs,
        dir: &Path,
        id: u64,
        first_seq: u64,
        salt: u32,
    ) -> Result<Segment, Error> {
        let path = segment_path(dir, id);
        let mut file = fs.create(&path).map_err(|e| Error::io(&path, e))?;
        let mut header = MAGIC.to_vec();
        let mut body = VERSION.to_le_bytes().to_vec();
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&first_seq.to_le_bytes());
        body.extend_from_slice(&salt.to_le_bytes());
        record::append(&mut header, &body);
        debug_assert_eq!(header.len(), HEADER_LEN);
        file.write_all(&header).map_err(|e| Error::io(&path, e))?;
        file.sync_data().map_err(|e| Error::io(&path, e))?;
        sync_dir(fs, dir)?;
        Ok(Segment {
            file: Appender::new(file, header.len() as u64),
            id,
            salt,
        })
    }

    /// Opens segment `id` to append after its first `len` bytes (recovery has
    /// checked them and cut anything after).
    fn open(fs: &dyn Fs, dir: &Path, id: u64, len: u64, salt: u32) -> Result<Segment, Error> {
        let path = segment_path(dir, id);
        let file = fs.open_write(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Segment {
            file: Appender::new(file, len),
            id,
            salt,
        })
    }

    /// A segment over any open file, for tests that inject failing files.
    #[cfg(test)]
    pub(crate) fn over(file: Box<dyn super::fs::FileHandle>, id: u64) -> Segment {
        Segment {
            file: Appender::new(file, HEADER_LEN as u64),
            id,
            salt: 0,
        }
    }

    /// Encodes one record for this segment onto `buf` (see `encode_record`).
    pub fn encode_record(&self, buf: &mut Vec<u8>, seq: u64, durable: u64, op: &WriteOp) {
        encode_record(buf, self.salt, seq, durable, op)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn len(&self) -> u64 {
        self.file.data_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_LEN as u64
    }

    /// Writes `bytes` after the last record (see [`Appender::append`]).
    /// Not durable until [`Segment::sync_data`].
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.append(bytes)
    }

    /// Cuts the zeros written ahead off the file, before the segment is
    /// synced for the last time (only the newest segment may end in them);
    /// says whether there were any.
    pub fn trim(&mut self) -> std::io::Result<bool> {
        self.file.trim()
    }

    /// Cuts the segment back to `len` bytes after a failed append or sync, so
    /// the writes that failed are not replayed at the next start (their
    /// clients were told they failed). Not synced, and not a retry of the
    /// sync: the log stays poisoned.
    pub fn discard_from(&mut self, len: u64) -> std::io::Result<()> {
        self.file.discard_from(len)
    }

    /// `fdatasync`: everything appended so far is durable when this returns Ok.
    /// An error here is final for the log: the caller must never retry it.
    pub fn sync_data(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// What [`replay`] leaves behind.
pub struct Replayed {
    /// The segment to append to next, positioned after its last valid record.
    pub segment: Segment,
    /// The sequence number of the last record replayed, if any.
    pub last_seq: Option<u64>,
    /// Records applied.
    pub records: u64,
}

/// Replays every segment numbered `first` or higher in order, calling `apply`
/// for each record, and returns the segment to append to. The first record
/// must be `first_seq`. Creates segment `first` if the log is empty.
pub fn replay(
    fs: &dyn Fs,
    dir: &Path,
    first: u64,
    first_seq: u64,
    mut apply: impl FnMut(WriteOp, u64),
) -> Result<Replayed, Error> {
    let ids: Vec<u64> = list_segments(fs, dir)?
        .into_iter()
        .filter(|&id| id >= first)
        .collect();
    let last_seq = |next: u64| next.checked_sub(1).filter(|&s| s > 0);
    let Some(&newest) = ids.last() else {
        return Ok(Replayed {
            segment: Segment::create(fs, dir, first, first_seq)?,
            last_seq: last_seq(first_seq),
            records: 0,
        });
    };
    for (expected, &id) in (first..).zip(&ids) {
        if id != expected {
            return Err(Error::corrupt(
                &segment_path(dir, expected),
                0,
                format!("log segment {expected} is missing (found {id} after it)"),
            ));
        }
    }
    // The sequence number the next record must have.
    let mut next_seq = first_seq;
    let mut records = 0;
    let mut tail_len = 0;
    let mut tail_salt = 0;
    for &id in &ids {
        let path = segment_path(dir, id);
        let data = fs.read(&path).map_err(|e| Error::io(&path, e))?;
        let is_newest = id == newest;
        let salt = match check_header(&data, id, next_seq) {
            Ok(salt) => salt,
            // A crash between creating the newest segment and syncing its
            // header leaves a short or zeroed header and no records.
            Err(_) if is_newest && data.len() <= HEADER_LEN && !header_is_whole(&data) => {
                tracing::warn!(path = %path.display(), bytes = data.len(), "recreating a log segment whose header was torn by a crash");
                let segment = Segment::create(fs, dir, id, next_seq)?;
                return Ok(Replayed {
                    segment,
                    last_seq: last_seq(next_seq),
                    records,
                });
            }
            Err(reason) => return Err(Error::corrupt(&path, 0, reason)),
        };
        let mut offset = HEADER_LEN;
        while offset < data.len() {
            // The zeros the newest segment writes ahead of its records (no
            // record has length 0, so this scans only the end).
            if is_newest && all_zero(&data[offset..]) {
                fs.truncate(&path, offset as u64)
                    .map_err(|e| Error::io(&path, e))?;
                break;
            }
            match record::read_with(&data, offset, salt) {
                record::Read::Valid { body, next } => {
                    let (seq, _, op) = parse_body(body)
                        .map_err(|reason| Error::corrupt(&path, offset as u64, reason))?;
                    if seq != next_seq {
                        return Err(Error::corrupt(
                            &path,
                            offset as u64,
                            format!("sequence number {seq} where {next_seq} was expected"),
                        ));
                    }
                    apply(op, seq);
                    next_seq += 1;
                    records += 1;
                    offset = next;
                }
                damaged => {
                    let reason = match damaged {
                        record::Read::Mismatch => "checksum mismatch",
                        _ => "record extends past the end of the file",
                    };
                    if !is_newest {
                        return Err(Error::corrupt(&path, offset as u64, reason));
                    }
                    if let Some(witness) = durable_witness(&data, offset, next_seq, salt) {
                        return Err(Error::corrupt(
                            &path,
                            offset as u64,
                            format!("{reason}, in a record that was durable (the record at offset {witness} was written after it was synced)"),
                        ));
                    }
                    let dropped = data.len() - offset;
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        dropped_bytes = dropped,
                        "truncating a torn tail of the log ({reason}): writes no fdatasync had confirmed"
                    );
                    fs.truncate(&path, offset as u64)
                        .map_err(|e| Error::io(&path, e))?;
                    break;
                }
            }
        }
        tail_len = offset.min(data.len());
        tail_salt = salt;
    }
    Ok(Replayed {
        segment: Segment::open(fs, dir, newest, tail_len as u64, tail_salt)?,
        last_seq: last_seq(next_seq),
        records,
    })
}

/// Whether the magic and the header record are intact (if they are, a wrong
/// field in them is not a torn write).
fn header_is_whole(data: &[u8]) -> bool {
    data.get(..MAGIC.len()) == Some(MAGIC.as_slice())
        && matches!(record::read(data, MAGIC.len()), record::Read::Valid { .. })
}

fn check_header(data: &[u8], id: u64, first_seq: u64) -> Result<u32, String> {
    if data.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err("not a kvstore log segment (bad magic)".into());
    }
    let record::Read::Valid { body, .. } = record::read(data, MAGIC.len()) else {
        return Err("damaged segment header".into());
    };
    let version = body
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
    let field = |at: usize| {
        body.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    if version != Some(VERSION) {
        return Err(format!("unsupported segment version {version:?}"));
    }
    if field(4) != Some(id) {
        return Err(format!(
            "segment header says id {:?}, file name says {id}",
            field(4)
        ));
    }
    if field(12) != Some(first_seq) {
        return Err(format!(
            "segment starts at sequence number {:?}, {first_seq} was expected",
            field(12)
        ));
    }
    let salt = body
        .get(20..24)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
    salt.ok_or_else(|| "segment header too short".to_string())
}

fn parse_body(body: &[u8]) -> Result<(u64, u64, WriteOp), String> {
    let (prefix, op) = body
        .split_at_checked(RECORD_PREFIX)
        .ok_or("record shorter than its sequence numbers")?;
    let seq = u64::from_le_bytes(prefix[..8].try_into().map_err(|_| "bad sequence number")?);
    let durable = u64::from_le_bytes(prefix[8..].try_into().map_err(|_| "bad sequence number")?);
    let op = kvstore_client::codec::decode(op).map_err(|e| format!("undecodable write: {e}"))?;
    Ok((seq, durable, op))
}

/// The offset of a valid record after the damaged one at `offset` (whose
/// sequence number would be `seq`) that was written when `seq` was already
/// durable. If there is one, the damaged record had been synced: that is
/// corruption, not a torn write, and truncating would drop acknowledged writes.
fn durable_witness(data: &[u8], offset: usize, seq: u64, salt: u32) -> Option<usize> {
    let u64_at = |at: usize| {
        data.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    (offset + 1..data.len()).find(|&at| {
        // Cheap checks first, so scanning a long torn tail stays linear in
        // practice: the record's own seq and durable fields must fit.
        let body = at + record::HEADER_LEN;
        let (Some(later), Some(durable)) = (u64_at(body), u64_at(body + 8)) else {
            return false;
        };
        later > seq
            && durable >= seq
            && durable < later
            && matches!(record::read_with(data, at, salt), record::Read::Valid { body, .. } if parse_body(body).is_ok())
    })
}
