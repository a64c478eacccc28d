//! The file operations the log and the snapshots are made of, behind a small
//! trait, so that a test can run the real storage code on a simulated disk
//! ([`super::simfs`]) and cut the power at any sync.
//!
//! The operations are exactly those whose durability matters: creating and
//! appending to files, `fdatasync`/`fsync` of a file, rename, remove,
//! truncate, and `fsync` of a directory (which makes the creation, rename or
//! removal of its entries durable). [`RealFs`] maps each to the one system
//! call it names and adds nothing: no retries, no buffering.

use std::any::Any;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// A file open for writing.
pub trait FileHandle: Write + Send {
    /// `fdatasync`: the data written so far (and the size) is durable when
    /// this returns Ok.
    fn sync_data(&mut self) -> io::Result<()>;
    /// `fsync`: data and metadata.
    fn sync_all(&mut self) -> io::Result<()>;
    /// `ftruncate` to `len` bytes, not synced: drops what a failed write or
    /// sync left after `len`, so it is not read back later.
    fn truncate_to(&mut self, len: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (`pwrite`), growing the file if
    /// needed; the file position is not used.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
}

/// A file system, as the storage layer uses it.
pub trait Fs: Send + Sync {
    /// Creates `path` (truncating it if it exists) for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>>;
    /// Opens an existing file to write at chosen offsets
    /// ([`FileHandle::write_all_at`]; not in append mode, where Linux's
    /// `pwrite` ignores the offset).
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FileHandle>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// A file to read as a stream, and its length; `NotFound` if absent.
    fn open_read(&self, path: &Path) -> io::Result<(Box<dyn Read + Send>, u64)>;
    /// The names of the entries of a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Renames `from` to `to`, replacing `to`. Durable once the directory is
    /// synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file. Durable once the directory is synced.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Cuts a file to `len` bytes and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// `fsync` of a directory.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if needed) for as long as
    /// the returned guard lives; `WouldBlock` if another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send>>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl FileHandle for File {
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
}

/// Options to write a file that, if created, only its owner may read or
/// write (mode 0600 on Unix): snapshots, log segments and backups hold
/// every key and value.
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

impl Fs for RealFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        Ok(Box::new(
            private_options().create(true).truncate(true).open(path)?,
        ))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        Ok(Box::new(OpenOptions::new().write(true).open(path)?))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok((Box::new(file), len))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send>> {
        let file = File::create(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}
