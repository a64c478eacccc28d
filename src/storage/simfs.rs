//! A simulated disk for crash tests: the real storage code runs on it, and at
//! any moment it can say what a power cut would leave behind.
//!
//! Every file has the bytes written so far and the bytes its last
//! `fdatasync`/`fsync` made durable. Every directory entry (a create, a
//! rename, a removal) is durable only once its directory is synced. A
//! [`SimFs::crash_image`] is a new disk holding only what was durable, or, with
//! a random source, one of the states a real disk may be left in: some of the
//! unsynced writes reached the platter (a prefix of the bytes from the first
//! one that changed, possibly with a hole where pages were written out of
//! order), and each directory shows
//! either its durable entries or its latest ones.
//!
//! [`Faults`] make the disk lie, to check that the crash tests notice: syncs
//! of files that do nothing, or a directory sync after a rename that does
//! nothing.
//!
//! Used only by tests; the server always runs on [`super::fs::RealFs`].

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::{FileHandle, Fs};

/// Ways the simulated disk can break its promises.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// `fdatasync` and `fsync` of files return Ok and make nothing durable.
    pub noop_file_sync: bool,
    /// A directory sync after a rename in that directory returns Ok and
    /// makes nothing durable.
    pub noop_dir_sync_after_rename: bool,
    /// The disk holds this many bytes in all; a write that does not fit
    /// writes what fits and fails with ENOSPC.
    pub capacity: Option<usize>,
}

/// Called at every sync, before it takes effect: the moment a power cut
/// would leave only what was durable before it.
pub type SyncHook = Arc<dyn Fn(&SimFs) + Send + Sync>;

/// The simulated disk. Cheap to clone: clones share the same disk.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    faults: Faults,
    hook: Option<SyncHook>,
}

#[derive(Clone, Default)]
struct Inode {
    /// Everything written.
    data: Vec<u8>,
    /// What the last file sync made durable.
    durable: Vec<u8>,
}

impl Inode {
    /// The durable bytes of `range`, zeros past the durable end: what a
    /// page of it holds if an unsynced write to it never reached the disk.
    fn durable_or_zero(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        range
            .map(|i| self.durable.get(i).copied().unwrap_or(0))
            .collect()
    }
}

#[derive(Clone, Default)]
struct State {
    inodes: Vec<Inode>,
    /// Path to inode, as a reader sees it now.
    names: BTreeMap<PathBuf, usize>,
    /// Path to inode, as the last sync of each directory left it.
    durable_names: BTreeMap<PathBuf, usize>,
    /// Directories (durable once created: the tests create them up front).
    dirs: BTreeSet<PathBuf>,
    /// Directories with a rename since their last sync.
    renamed_in: BTreeSet<PathBuf>,
}

/// A small deterministic random source for crash images (xorshift64*), so a
/// failing image can be found again from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl Default for SimFs {
    fn default() -> Self {
        SimFs::new(Faults::default())
    }
}

impl SimFs {
    /// An empty disk.
    pub fn new(faults: Faults) -> SimFs {
        SimFs {
            state: Arc::default(),
            faults,
            hook: None,
        }
    }

    /// The same disk, calling `hook` at every sync.
    pub fn with_hook(mut self, hook: SyncHook) -> SimFs {
        self.hook = Some(hook);
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn before_sync(&self) {
        if let Some(hook) = &self.hook {
            hook(self);
        }
    }

    /// The disk a power cut would leave now, on a fresh disk without faults
    /// or hook. Without `rng`: exactly what was durable. With it: one of the
    /// states a real disk may be left in (see the module documentation).
    pub fn crash_image(&self, rng: Option<&mut Rng>) -> SimFs {
        self.freeze().crash_image(rng)
    }

    /// Stops every change to the disk until the returned guard is dropped, so
    /// a test can read what its clients know and take crash images of one
    /// and the same moment.
    pub fn freeze(&self) -> Frozen<'_> {
        Frozen(self.state())
    }

    /// Total bytes in the files a reader sees now.
    pub fn bytes(&self) -> usize {
        let state = self.state();
        state
            .names
            .values()
            .map(|&i| state.inodes[i].data.len())
            .sum()
    }
}

/// The disk held still; see [`SimFs::freeze`].
pub struct Frozen<'a>(MutexGuard<'a, State>);

impl Frozen<'_> {
    /// The disk a power cut would leave at this moment (see
    /// [`SimFs::crash_image`]).
    pub fn crash_image(&self, rng: Option<&mut Rng>) -> SimFs {
        let state = &*self.0;
        let mut image = State {
            dirs: state.dirs.clone(),
            ..State::default()
        };
        let mut rng = rng;
        // Per directory, the durable entries or the latest ones.
        let dirs: BTreeSet<PathBuf> = state
            .names
            .keys()
            .chain(state.durable_names.keys())
            .map(|p| parent(p))
            .collect();
        let latest: BTreeSet<PathBuf> = dirs
            .into_iter()
            .filter(|_| rng.as_mut().is_some_and(|r| r.below(2) == 1))
            .collect();
        let entries = state
            .durable_names
            .iter()
            .filter(|(p, _)| !latest.contains(&parent(p)))
            .chain(
                state
                    .names
                    .iter()
                    .filter(|(p, _)| latest.contains(&parent(p))),
            );
        for (path, &inode) in entries {
            let file = &state.inodes[inode];
            let mut data = file.durable.clone();
            if let Some(rng) = rng.as_mut() {
                if file.data.len() >= file.durable.len() {
                    // Some of the unsynced writes reached the disk: a prefix
                    // of the bytes from the first one that changed.
                    let from = first_difference(&file.durable, &file.data);
                    let kept = rng.below(file.data.len() - from + 1);
                    data = file.data[..from + kept].to_vec();
                    data.extend_from_slice(file.durable.get(from + kept..).unwrap_or_default());
                    if kept > 0 && rng.below(3) == 0 {
                        // A page in the middle of them did not.
                        let start = from + rng.below(kept);
                        let end = (start + 1 + rng.below(4096)).min(from + kept);
                        data[start..end].copy_from_slice(&file.durable_or_zero(start..end));
                    }
                } else if rng.below(2) == 1 {
                    data = file.data.clone();
                }
            }
            image.inodes.push(Inode {
                durable: data.clone(),
                data,
            });
            let id = image.inodes.len() - 1;
            image.names.insert(path.clone(), id);
            image.durable_names.insert(path.clone(), id);
        }
        SimFs {
            state: Arc::new(Mutex::new(image)),
            faults: Faults::default(),
            hook: None,
        }
    }
}

/// Where `a` and `b` first differ (or the shorter one's length), compared
/// a page at a time first: the crash tests run in debug builds.
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    let same_pages = (a.chunks(4096).zip(b.chunks(4096)))
        .take_while(|(x, y)| x == y)
        .count();
    let from = (same_pages * 4096).min(a.len()).min(b.len());
    let rest = (a[from..].iter().zip(&b[from..])).position(|(x, y)| x != y);
    rest.map_or(a.len().min(b.len()), |i| from + i)
}

/// A handle on one simulated file: writes append to it, or go at an offset.
struct SimFile {
    fs: SimFs,
    inode: usize,
}

impl SimFile {
    /// Writes at `offset` (the end if `None`) as much of `buf` as the disk
    /// has room for; ENOSPC if none fits.
    fn write_at(&mut self, buf: &[u8], offset: Option<usize>) -> io::Result<usize> {
        let mut state = self.fs.state();
        let len = state.inodes[self.inode].data.len();
        let offset = offset.unwrap_or(len);
        let room = match self.fs.faults.capacity {
            Some(capacity) => {
                let used: usize = state
                    .names
                    .values()
                    .map(|&i| state.inodes[i].data.len())
                    .sum();
                capacity.saturating_sub(used)
            }
            None => usize::MAX,
        };
        let n = (len.saturating_add(room))
            .saturating_sub(offset)
            .min(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        let data = &mut state.inodes[self.inode].data;
        if data.len() < offset {
            data.resize(offset, 0);
        }
        // Overwrite what is there, append the rest (a copy, not a loop:
        // the crash tests run in debug builds).
        let inside = (data.len() - offset).min(n);
        data[offset..offset + inside].copy_from_slice(&buf[..inside]);
        data.extend_from_slice(&buf[inside..n]);
        Ok(n)
    }
}

impl Write for SimFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(buf, None)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileHandle for SimFile {
    fn sync_data(&mut self) -> io::Result<()> {
        self.fs.before_sync();
        if !self.fs.faults.noop_file_sync {
            let mut state = self.fs.state();
            let file = &mut state.inodes[self.inode];
            // Only the changed bytes are copied: a log segment is mostly
            // the zeros it wrote ahead.
            let from = first_difference(&file.durable, &file.data);
            file.durable.truncate(from);
            file.durable.extend_from_slice(&file.data[from..]);
        }
        Ok(())
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.fs.state().inodes[self.inode]
            .data
            .truncate(len as usize);
        Ok(())
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            done += self.write_at(&buf[done..], Some(offset as usize + done))?;
        }
        Ok(())
    }
}

impl Fs for SimFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let mut state = self.state();
        if !state.dirs.contains(&parent(path)) {
            return Err(not_found(&parent(path)));
        }
        state.inodes.push(Inode::default());
        let inode = state.inodes.len() - 1;
        state.names.insert(path.to_path_buf(), inode);
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let inode = *self
            .state()
            .names
            .get(path)
            .ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.state();
        let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(state.inodes[inode].data.clone())
    }

    fn open_read(&self, path: &Path) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let data = self.read(path)?;
        let len = data.len() as u64;
        Ok((Box::new(io::Cursor::new(data)), len))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let state = self.state();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| parent(p) == dir)
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.state();
        state.names.contains_key(path) || state.dirs.contains(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state();
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_path_buf(), inode);
        state.renamed_in.insert(parent(to));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.state()
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.before_sync();
        let mut state = self.state();
        let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
        let file = &mut state.inodes[inode];
        file.data.truncate(len as usize);
        if !self.faults.noop_file_sync {
            file.durable = file.data.clone();
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.before_sync();
        let mut state = self.state();
        let renamed = state.renamed_in.remove(dir);
        if self.faults.noop_dir_sync_after_rename && renamed {
            return Ok(());
        }
        let state = &mut *state;
        state.durable_names.retain(|p, _| parent(p) != dir);
        for (path, &inode) in state.names.iter().filter(|(p, _)| parent(p) == dir) {
            state.durable_names.insert(path.clone(), inode);
        }
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn lock(&self, _path: &Path) -> io::Result<Box<dyn Any + Send>> {
        Ok(Box::new(()))
    }
}
