//! The write-ahead log: numbered segment files of checksummed records.
//!
//! Segments live in `<data>-wal/` (for `./kvstore.db`, `./kvstore.db-wal/`),
//! named by a 20-digit number so that names sort like numbers:
//!
//! ```text
//! segment = magic "KVSTWAL1" (8 bytes)
//!           record{ version: u32 LE, segment id: u64 LE }
//!           record{ seq: u64 LE, op: bincode(WriteOp) } ...
//! ```
//!
//! Records use the framing of [`super::record`]. Sequence numbers rise by one
//! from record to record, across segments too.
//!
//! Recovery ([`replay`]) reads the segments in order. Damage in the middle of
//! the log, or in any segment but the newest, stops the start with the file and
//! offset: it is never skipped. Only a torn tail (a record cut by a crash in the
//! middle of an append, with no valid record after it) is truncated, with a
//! warning that says how many bytes were dropped. Such a record was never
//! acknowledged: acknowledgement waits for the `fdatasync` that covers it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::op::WriteOp;
use super::{record, sync_dir};
use crate::error::Error;

const MAGIC: &[u8; 8] = b"KVSTWAL1";
const VERSION: u32 = 1;
/// The magic, then the header record (8 bytes of framing, 12 of body).
const HEADER_LEN: usize = MAGIC.len() + record::HEADER_LEN + 12;

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
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
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
pub fn remove_segment(dir: &Path, id: u64) -> Result<(), Error> {
    let path = segment_path(dir, id);
    fs::remove_file(&path).map_err(|e| Error::io(&path, e))
}

/// Encodes one log record for `op` with sequence number `seq` onto `buf`.
pub fn encode_record(buf: &mut Vec<u8>, seq: u64, op: &WriteOp) {
    let start = buf.len();
    buf.extend_from_slice(&[0; record::HEADER_LEN]);
    buf.extend_from_slice(&seq.to_le_bytes());
    // Encoding into a Vec cannot fail: WriteOp has no types bincode refuses.
    let body = kvstore_client::codec::encode(op).unwrap_or_default();
    buf.extend_from_slice(&body);
    record::seal(buf, start);
}

/// The segment being appended to. Only the group-commit thread owns one.
pub struct Segment {
    /// Opened for writing at the end of the valid data.
    file: File,
    /// Its number; the next segment is `id + 1`.
    id: u64,
    /// Bytes in the file, to decide when to rotate and snapshot.
    len: u64,
}

impl Segment {
    /// Creates segment `id`, writes its header, and makes both the file and its
    /// directory entry durable before returning, so recovery always finds it.
    pub fn create(dir: &Path, id: u64) -> Result<Segment, Error> {
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut header = MAGIC.to_vec();
        let mut body = VERSION.to_le_bytes().to_vec();
        body.extend_from_slice(&id.to_le_bytes());
        record::append(&mut header, &body);
        debug_assert_eq!(header.len(), HEADER_LEN);
        file.write_all(&header).map_err(|e| Error::io(&path, e))?;
        file.sync_data().map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        Ok(Segment {
            file,
            id,
            len: header.len() as u64,
        })
    }

    /// Opens segment `id` to append after its first `len` bytes (recovery has
    /// checked them and cut anything after).
    fn open(dir: &Path, id: u64, len: u64) -> Result<Segment, Error> {
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Segment { file, id, len })
    }

    /// A segment over any open file, for tests that inject failing files.
    #[cfg(test)]
    pub(crate) fn over(file: File, id: u64) -> Segment {
        Segment {
            file,
            id,
            len: HEADER_LEN as u64,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= HEADER_LEN as u64
    }

    /// Writes `bytes` at the end. Not durable until [`Segment::sync_data`].
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
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
/// for each record, and returns the segment to append to. Creates segment
/// `first` if the log is empty.
pub fn replay(dir: &Path, first: u64, mut apply: impl FnMut(WriteOp)) -> Result<Replayed, Error> {
    let ids: Vec<u64> = list_segments(dir)?
        .into_iter()
        .filter(|&id| id >= first)
        .collect();
    let Some(&newest) = ids.last() else {
        return Ok(Replayed {
            segment: Segment::create(dir, first)?,
            last_seq: None,
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
    let mut last_seq = None;
    let mut records = 0;
    let mut tail_len = 0;
    for &id in &ids {
        let path = segment_path(dir, id);
        let data = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let is_newest = id == newest;
        match check_header(&data, id) {
            Ok(()) => {}
            // A crash between creating the newest segment and syncing its
            // header leaves a short file with nothing in it: start it again.
            Err(_) if is_newest && data.len() < HEADER_LEN => {
                tracing::warn!(path = %path.display(), bytes = data.len(), "recreating a log segment whose header was torn by a crash");
                let segment = Segment::create(dir, id)?;
                return Ok(Replayed {
                    segment,
                    last_seq,
                    records,
                });
            }
            Err(reason) => return Err(Error::corrupt(&path, 0, reason)),
        }
        let mut offset = HEADER_LEN;
        while offset < data.len() {
            match record::read(&data, offset) {
                record::Read::Valid { body, next } => {
                    let (seq, op) = parse_body(body)
                        .map_err(|reason| Error::corrupt(&path, offset as u64, reason))?;
                    if let Some(prev) = last_seq {
                        if seq != prev + 1 {
                            return Err(Error::corrupt(
                                &path,
                                offset as u64,
                                format!("sequence number {seq} follows {prev}"),
                            ));
                        }
                    }
                    apply(op);
                    last_seq = Some(seq);
                    records += 1;
                    offset = next;
                }
                damaged => {
                    let reason = match damaged {
                        record::Read::Mismatch => "checksum mismatch",
                        _ => "record extends past the end of the file",
                    };
                    if !is_newest || valid_record_after(&data, offset, last_seq) {
                        return Err(Error::corrupt(&path, offset as u64, reason));
                    }
                    let dropped = data.len() - offset;
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        dropped_bytes = dropped,
                        "truncating a torn record at the end of the log ({reason}); it was never acknowledged"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| Error::io(&path, e))?;
                    file.set_len(offset as u64)
                        .map_err(|e| Error::io(&path, e))?;
                    file.sync_all().map_err(|e| Error::io(&path, e))?;
                    break;
                }
            }
        }
        tail_len = offset.min(data.len());
    }
    Ok(Replayed {
        segment: Segment::open(dir, newest, tail_len as u64)?,
        last_seq,
        records,
    })
}

fn check_header(data: &[u8], id: u64) -> Result<(), String> {
    if data.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err("not a kvstore log segment (bad magic)".into());
    }
    let record::Read::Valid { body, .. } = record::read(data, MAGIC.len()) else {
        return Err("damaged segment header".into());
    };
    let version = body
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
    let found = body
        .get(4..12)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    if version != Some(VERSION) {
        return Err(format!("unsupported segment version {version:?}"));
    }
    if found != Some(id) {
        return Err(format!(
            "segment header says id {found:?}, file name says {id}"
        ));
    }
    Ok(())
}

fn parse_body(body: &[u8]) -> Result<(u64, WriteOp), String> {
    let (seq, op) = body
        .split_at_checked(8)
        .ok_or("record shorter than its sequence number")?;
    let seq = u64::from_le_bytes(seq.try_into().map_err(|_| "bad sequence number")?);
    let op = kvstore_client::codec::decode(op).map_err(|e| format!("undecodable write: {e}"))?;
    Ok((seq, op))
}

/// Whether any valid record with a later sequence number starts after the
/// damaged one at `offset`. If so the damage is in the middle of the log, not
/// a torn tail, and truncating would drop acknowledged writes.
fn valid_record_after(data: &[u8], offset: usize, last_seq: Option<u64>) -> bool {
    (offset + 1..data.len()).any(|at| match record::read(data, at) {
        record::Read::Valid { body, .. } => match parse_body(body) {
            Ok((seq, _)) => last_seq.is_none_or(|prev| seq > prev),
            Err(_) => false,
        },
        _ => false,
    })
}
