//! A FUSE file system that passes everything through to a backing directory
//! and keeps, beside it, what a power cut would leave: a file's bytes as of
//! its last `fsync`/`fdatasync`, a directory's names as of its last `fsync`.
//! [`Durable::image`] writes that state out at any moment, as a crash image
//! of software that does its own file I/O (fjall), which kvstore's
//! simulated `Fs` cannot see.
//!
//! The model is strict POSIX, stricter than ext4: unsynced writes are all
//! lost (never a subset), and a new name, a rename or an unlink lasts only
//! once its directory is synced.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

/// No caching in the kernel: every size and name comes from here.
const TTL: Duration = Duration::ZERO;

/// A file or directory, by the inode number this file system gave it. Kept
/// after an unlink: a synced directory may still name it.
struct Node {
    /// Where it is now, under the backing directory (`""`: the root).
    path: PathBuf,
    dir: bool,
    /// A file's bytes as of its last sync.
    synced: Vec<u8>,
    /// Byte ranges written since (offset, length).
    dirty: Vec<(u64, u64)>,
    /// Resized since its last sync: the next sync copies it whole.
    resized: bool,
    /// A directory's names as of its last sync.
    names: BTreeMap<OsString, u64>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<u64, Node>,
    /// The live names: a path (under the backing directory) to its inode.
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
    files: HashMap<u64, File>,
    next_fh: u64,
}

/// The durable state, shared with the test, which takes images of it.
#[derive(Clone)]
pub struct Durable {
    backing: PathBuf,
    state: Arc<Mutex<State>>,
}

pub struct PowerCutFs {
    durable: Durable,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

impl Durable {
    fn new(backing: &Path) -> Durable {
        let mut state = State {
            next_ino: 2,
            next_fh: 1,
            ..State::default()
        };
        state.nodes.insert(1, Node::new(PathBuf::new(), true));
        state.by_path.insert(PathBuf::new(), 1);
        Durable {
            backing: backing.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Writes what a power cut now would leave into `dir` (which must not
    /// exist). Every file system call waits meanwhile, so this is one
    /// instant.
    pub fn image(&self, dir: &Path) {
        let state = self.state.lock();
        write_image(&state, 1, dir);
    }
}

fn write_image(state: &State, ino: u64, dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    for (name, child) in &state.nodes[&ino].names {
        let node = &state.nodes[child];
        let path = dir.join(name);
        if node.dir {
            write_image(state, *child, &path);
        } else {
            std::fs::write(&path, &node.synced).unwrap();
        }
    }
}

impl Node {
    fn new(path: PathBuf, dir: bool) -> Node {
        Node {
            path,
            dir,
            synced: Vec::new(),
            dirty: Vec::new(),
            resized: false,
            names: BTreeMap::new(),
        }
    }
}

impl State {
    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    fn child_path(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.node(parent)?.path.join(name))
    }

    /// The inode of the live name `path`, made on first sight.
    fn ino_of(&mut self, path: &Path, dir: bool) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node::new(path.to_path_buf(), dir));
        self.by_path.insert(path.to_path_buf(), ino);
        ino
    }
}

impl PowerCutFs {
    pub fn new(backing: &Path) -> (PowerCutFs, Durable) {
        let durable = Durable::new(backing);
        (
            PowerCutFs {
                durable: durable.clone(),
            },
            durable,
        )
    }

    fn real(&self, path: &Path) -> PathBuf {
        self.durable.backing.join(path)
    }

    fn attr(&self, ino: u64, path: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.real(path)).map_err(errno)?;
        let time = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: meta.size(),
            blocks: meta.blocks(),
            atime: time(meta.atime()),
            mtime: time(meta.mtime()),
            ctime: time(meta.ctime()),
            crtime: time(meta.ctime()),
            kind: if meta.is_dir() {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The entry for the live name `path`.
    fn entry(&self, state: &mut State, path: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.real(path)).map_err(errno)?;
        let ino = state.ino_of(path, meta.is_dir());
        self.attr(ino, path)
    }

    fn open_file(&self, path: &Path, flags: i32, create: bool) -> std::io::Result<File> {
        let access = flags & libc::O_ACCMODE;
        OpenOptions::new()
            .read(access != libc::O_WRONLY)
            .write(access != libc::O_RDONLY)
            .create(create)
            .truncate(flags & libc::O_TRUNC != 0)
            // Writes come with their offsets, O_APPEND's too.
            .custom_flags(
                flags & !(libc::O_APPEND | libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC),
            )
            .open(self.real(path))
    }

    fn sync_file(&self, ino: INodeNo) -> Result<(), Errno> {
        let mut state = self.durable.state.lock();
        let real = self.real(&state.node(ino)?.path);
        let node = state.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
        if node.resized {
            node.synced = std::fs::read(&real).map_err(errno)?;
        } else if !node.dirty.is_empty() {
            let file = File::open(&real).map_err(errno)?;
            let len = file.metadata().map_err(errno)?.len();
            node.synced.resize(len as usize, 0);
            for &(offset, n) in &node.dirty {
                let end = (offset + n).min(len);
                if offset < end {
                    let range = &mut node.synced[offset as usize..end as usize];
                    file.read_exact_at(range, offset).map_err(errno)?;
                }
            }
        }
        node.dirty.clear();
        node.resized = false;
        Ok(())
    }

    /// Removes the live name (a synced directory may still hold it).
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: impl FnOnce(&Path) -> std::io::Result<()>,
    ) {
        let mut state = self.durable.state.lock();
        let removed = state.child_path(parent, name).and_then(|path| {
            remove(&self.real(&path)).map_err(errno)?;
            state.by_path.remove(&path);
            Ok(())
        });
        match removed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// The live entries of directory `ino`: (inode, is a directory, name).
    fn list(&self, state: &mut State, ino: INodeNo) -> Result<Vec<(u64, bool, OsString)>, Errno> {
        let path = state.node(ino)?.path.clone();
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(self.real(&path)).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let dir = entry.file_type().map_err(errno)?.is_dir();
            let child = state.ino_of(&path.join(entry.file_name()), dir);
            entries.push((child, dir, entry.file_name()));
        }
        Ok(entries)
    }

    fn sync_dir(&self, ino: INodeNo) -> Result<(), Errno> {
        let mut state = self.durable.state.lock();
        let entries = self.list(&mut state, ino)?;
        let names = (entries.into_iter())
            .map(|(child, _, name)| (name, child))
            .collect();
        state.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?.names = names;
        Ok(())
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.durable.state.lock();
        let found = state
            .child_path(parent, name)
            .and_then(|path| self.entry(&mut state, &path));
        match found {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let state = self.durable.state.lock();
        match state.node(ino).and_then(|n| self.attr(ino.0, &n.path)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.durable.state.lock();
        let result = (|| {
            let path = state.node(ino)?.path.clone();
            if let Some(size) = size {
                let file = OpenOptions::new().write(true).open(self.real(&path));
                file.and_then(|f| f.set_len(size)).map_err(errno)?;
                state.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?.resized = true;
            }
            self.attr(ino.0, &path)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.durable.state.lock();
        let made = state.child_path(parent, name).and_then(|path| {
            std::fs::create_dir(self.real(&path)).map_err(errno)?;
            self.entry(&mut state, &path)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |path| std::fs::remove_file(path));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |path| std::fs::remove_dir(path));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.durable.state.lock();
        let renamed = (|| {
            let from = state.child_path(parent, name)?;
            let to = state.child_path(newparent, newname)?;
            std::fs::rename(self.real(&from), self.real(&to)).map_err(errno)?;
            state.by_path.remove(&to);
            // The node and, for a directory, everything under it move.
            let moved: Vec<(PathBuf, u64)> = (state.by_path.iter())
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, &ino)| (p.clone(), ino))
                .collect();
            for (old, ino) in moved {
                let new = match old.strip_prefix(&from) {
                    Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
                    _ => to.clone(),
                };
                state.by_path.remove(&old);
                state.by_path.insert(new.clone(), ino);
                if let Some(node) = state.nodes.get_mut(&ino) {
                    node.path = new;
                }
            }
            Ok(())
        })();
        match renamed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.durable.state.lock();
        let opened = (|| {
            let path = state.node(ino)?.path.clone();
            let file = self.open_file(&path, flags.0, false).map_err(errno)?;
            if flags.0 & libc::O_TRUNC != 0 {
                state.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?.resized = true;
            }
            let fh = state.next_fh;
            state.next_fh += 1;
            state.files.insert(fh, file);
            Ok(fh)
        })();
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.durable.state.lock();
        let created = (|| {
            let path = state.child_path(parent, name)?;
            let file = self.open_file(&path, flags, true).map_err(errno)?;
            let attr = self.entry(&mut state, &path)?;
            state
                .nodes
                .get_mut(&attr.ino.0)
                .ok_or(Errno::ENOENT)?
                .resized = true;
            let fh = state.next_fh;
            state.next_fh += 1;
            state.files.insert(fh, file);
            Ok((attr, fh))
        })();
        match created {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.durable.state.lock();
        let Some(file) = state.files.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.durable.state.lock();
        let Some(file) = state.files.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if let Err(e) = file.write_all_at(data, offset) {
            return reply.error(errno(e));
        }
        if let Some(node) = state.nodes.get_mut(&ino.0) {
            node.dirty.push((offset, data.len() as u64));
        }
        reply.written(data.len() as u32);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.durable.state.lock().files.remove(&fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _data: bool, reply: ReplyEmpty) {
        match self.sync_file(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.durable.state.lock();
        let entries = match self.list(&mut state, ino) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        for (i, (child, dir, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            let kind = if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _data: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync_dir(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 30, 1 << 29, 1 << 29, 1 << 20, 1 << 19, 4096, 255, 4096);
    }
}
