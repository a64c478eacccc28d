//! A log file written at its end, with zeros written ahead of the data.
//!
//! An `fdatasync` after an append must also commit the file's new size (on
//! ext4, a journal commit); an `fdatasync` of blocks the file already has
//! need not. So the file grows by [`ZEROED_AHEAD`] bytes of zeros at a time
//! and the data overwrites them: most syncs are of data alone. Both logs
//! (the single-node write-ahead log and the Raft log) append through this;
//! their readers take an all-zero remainder ([`all_zero`]) for the end.

use std::io;

use super::fs::FileHandle;

/// Bytes of zeros written ahead of the data when it reaches the end of the
/// file.
const ZEROED_AHEAD: u64 = 1024 * 1024;

/// A file being appended to.
pub struct Appender {
    file: Box<dyn FileHandle>,
    /// Bytes of data.
    len: u64,
    /// Bytes in the file: `len`, then zeros written ahead.
    allocated: u64,
    /// Whether to write zeros ahead (until the disk had no room for them).
    zero_ahead: bool,
}

impl Appender {
    /// Appends to `file`, which holds exactly `len` bytes of data, opened
    /// to write at offsets (not in append mode).
    pub fn new(file: Box<dyn FileHandle>, len: u64) -> Appender {
        Appender {
            file,
            len,
            allocated: len,
            zero_ahead: true,
        }
    }

    /// Bytes of data.
    pub fn data_len(&self) -> u64 {
        self.len
    }

    /// Writes `bytes` after the data, first writing zeros ahead if they
    /// would pass the end of the file. Not durable until
    /// [`Appender::sync_data`].
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.len + bytes.len() as u64;
        if end > self.allocated && self.zero_ahead {
            self.write_zeros(end + ZEROED_AHEAD)?;
        }
        self.file.write_all_at(bytes, self.len)?;
        self.len = end;
        self.allocated = self.allocated.max(end);
        Ok(())
    }

    /// Writes zeros up to `allocated`. The zeros only make later syncs
    /// cheaper: if the disk has no room for them they are cut off again and
    /// this file grows without them from then on.
    fn write_zeros(&mut self, allocated: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut written = Ok(());
        for at in (self.allocated..allocated).step_by(ZEROS.len()) {
            let len = (allocated - at).min(ZEROS.len() as u64) as usize;
            written = self.file.write_all_at(&ZEROS[..len], at);
            if written.is_err() {
                break;
            }
        }
        match written {
            Ok(()) => self.allocated = allocated,
            Err(e) => {
                tracing::debug!("no room to write zeros ahead of a log ({e}); growing it without");
                self.file.truncate_to(self.allocated)?;
                self.zero_ahead = false;
            }
        }
        Ok(())
    }

    /// Cuts the zeros written ahead off the file (before its last sync, when
    /// it must end with its data); says whether there were any.
    pub fn trim(&mut self) -> io::Result<bool> {
        if self.allocated == self.len {
            return Ok(false);
        }
        self.file.truncate_to(self.len)?;
        self.allocated = self.len;
        Ok(true)
    }

    /// Cuts the file back to `len` bytes (after a failed write or sync).
    /// Not synced.
    pub fn discard_from(&mut self, len: u64) -> io::Result<()> {
        self.file.truncate_to(len)?;
        self.len = len;
        self.allocated = len;
        Ok(())
    }

    /// `fdatasync`: everything appended so far is durable when this returns
    /// Ok. An error here is final: the caller must never retry it.
    pub fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Whether `bytes` are all zero: the zeros a log wrote ahead of its data
/// (compared a page at a time: fast in debug builds too, where the crash
/// tests run).
pub fn all_zero(bytes: &[u8]) -> bool {
    const PAGE: [u8; 4096] = [0; 4096];
    bytes.chunks(PAGE.len()).all(|c| c == &PAGE[..c.len()])
}
