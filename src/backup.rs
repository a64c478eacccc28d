//! Online backup: a copy of the whole store as it was at one instant, made
//! while writes go on, in the snapshot format (`crate::storage::snapshot`),
//! whichever engine made it.
//!
//! The engine gives the copy a [`View`]. The disk engine's is one instant's
//! (a fjall snapshot), so its backups are that instant and need nothing
//! more. The memory engine's map is copied like a snapshot, shard by
//! shard, a few pairs per lock acquisition, so different keys are copied
//! at different moments. To turn that fuzzy copy into one instant's state,
//! the commit thread *tees* every write it applies from the backup's start
//! mark until its end mark (the moment the copy is done), and the backup
//! ends with those writes, in order, as op records. Loading the file
//! applies them over the copied pairs, which gives every key the value it
//! had at the end mark: a key not written between the marks was copied with
//! that value; a key written between them ends with its last write (writes
//! are absolute and idempotent, so it does not matter whether the copy saw
//! an earlier one); a `Clear` empties everything before it. It is the
//! argument that makes recovery's replay of the log over a fuzzy snapshot
//! exact.
//!
//! Both marks fall between batches: the commit thread holds the tee list's
//! lock while it applies a batch ([`Tees::lock`]), and a backup takes that
//! lock to start or end its tee. A batch is therefore wholly before a mark
//! or wholly after it. Only applied writes are teed, the ones readers can
//! see: with `--sync always` every one of them is durable in the log; with
//! `periodic` or `never` a backup, like a read, may hold writes not synced yet.
//!
//! A backup leaves by one of two ways: streamed over the connection that
//! asked for it, a chunk per request (`Backup { name: None }`, then
//! `BackupNext`), or written by the server into its `--backup-dir`
//! ([`write_to_dir`]). Neither blocks writers; a streamed backup is paced by
//! its client, and its tee grows meanwhile, so each tee is capped at
//! [`MAX_TEE_BYTES`], at most [`MAX_BACKUPS`] run at once, and a streamed
//! backup whose client has not asked for a chunk for [`IDLE_EXPIRY`] gives
//! its place up when another backup needs it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};

use crate::error::Error;
use crate::storage::op::WriteOp;
use crate::storage::snapshot::Encoder;
use crate::storage::store::Store;

/// Memory one backup's tee may hold (see [`held_bytes`]). A backup whose
/// copy outlasts this much writing fails instead of growing the server's
/// memory without bound.
pub const MAX_TEE_BYTES: usize = 256 * 1024 * 1024;
/// Backups running at once, streamed or written by the server.
pub const MAX_BACKUPS: usize = 2;
/// A running backup not advanced for this long is given up when another
/// backup needs its place (a client that went quiet mid-stream).
pub const IDLE_EXPIRY: Duration = Duration::from_secs(60);
/// Suffix of the temp files a backup is written to in `--backup-dir`.
const TEMP_SUFFIX: &str = ".kvstore-tmp";
/// Bytes in one streamed chunk (less if the server's replies must be
/// smaller).
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Longest name of a backup in `--backup-dir`.
const MAX_NAME: usize = 128;

/// The tees of the backups running now, shared by the commit thread (which
/// feeds them) and the backups (which start and end them).
#[derive(Default)]
pub struct Tees {
    list: Mutex<TeeList>,
    /// The tees in the list, kept beside it so that `Stats` never waits for
    /// the lock the commit thread holds while it applies a batch.
    running: AtomicUsize,
    /// Backups completed since start, for `Stats`.
    pub completed: AtomicU64,
    /// Backups that failed or were abandoned after they started.
    pub failed: AtomicU64,
}

#[derive(Default)]
struct TeeList {
    /// The id the next tee gets.
    next_id: u64,
    tees: Vec<TeeBuffer>,
}

/// The writes one backup has been sent since its start mark.
struct TeeBuffer {
    id: u64,
    /// Each with its revision.
    ops: Vec<(WriteOp, u64)>,
    /// Whether it takes writes at all.
    records: bool,
    /// The ops' memory ([`held_bytes`]), checked against [`MAX_TEE_BYTES`].
    bytes: usize,
    /// The cap was passed: the ops were dropped and the backup will fail.
    overrun: bool,
    /// When its backup last asked for more (see [`IDLE_EXPIRY`]).
    touched: Instant,
}

/// Roughly the memory a teed write holds: the op, and per key or value its
/// `Bytes` handle, its heap block's overhead and its bytes (keys and values
/// decoded from a request are allocations of their own).
fn held_bytes(op: &WriteOp) -> usize {
    let held = |b: &Bytes| std::mem::size_of::<Bytes>() + 16 + b.len();
    std::mem::size_of::<WriteOp>()
        + match op {
            WriteOp::Set { key, value } | WriteOp::SetExpiring { key, value, .. } => {
                held(key) + held(value)
            }
            WriteOp::Delete { key } | WriteOp::ExpireAt { key, .. } | WriteOp::Persist { key } => {
                held(key)
            }
            WriteOp::BulkSet { items } => items.iter().map(|(k, v)| held(k) + held(v)).sum(),
            WriteOp::SetExpiringMany { items } => {
                items.iter().map(|(k, v, _)| held(k) + held(v)).sum()
            }
            WriteOp::DeleteMany { keys } | WriteOp::Expire { keys, .. } => {
                keys.iter().map(held).sum()
            }
            WriteOp::Rename {
                from, to, value, ..
            } => held(from) + held(to) + held(value),
            WriteOp::Txn { puts, deletes } => {
                (puts.iter().map(|(k, v, _)| held(k) + held(v))).sum::<usize>()
                    + deletes.iter().map(held).sum::<usize>()
            }
            WriteOp::Clear => 0,
        }
}

impl Tees {
    /// Held by the commit thread while it applies one batch, so that no
    /// mark falls inside a batch.
    pub fn lock(&self) -> TeeGuard<'_> {
        TeeGuard(self.list.lock())
    }

    /// Backups running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// The start mark: from now on every applied write is teed (if
    /// `records`; a copy of one instant needs no writes, only the place).
    /// When [`MAX_BACKUPS`] run, those idle for [`IDLE_EXPIRY`] are given
    /// up first; if none is, the new one is refused.
    fn start(self: &Arc<Tees>, records: bool) -> Result<Tee, Error> {
        let mut list = self.list.lock();
        let now = Instant::now();
        if list.tees.len() >= MAX_BACKUPS {
            list.tees
                .retain(|t| now.duration_since(t.touched) < IDLE_EXPIRY);
        }
        if list.tees.len() >= MAX_BACKUPS {
            return Err(Error::Backup(format!(
                "{MAX_BACKUPS} backups are running already; try again when one is done"
            )));
        }
        list.next_id += 1;
        let id = list.next_id;
        list.tees.push(TeeBuffer {
            id,
            ops: Vec::new(),
            records,
            bytes: 0,
            overrun: false,
            touched: now,
        });
        self.running.store(list.tees.len(), Ordering::Relaxed);
        Ok(Tee {
            tees: self.clone(),
            id,
        })
    }

    /// Removes a tee, returning what it caught.
    fn remove(&self, id: u64) -> Option<TeeBuffer> {
        let mut list = self.list.lock();
        let at = list.tees.iter().position(|t| t.id == id);
        let removed = at.map(|at| list.tees.swap_remove(at));
        self.running.store(list.tees.len(), Ordering::Relaxed);
        removed
    }

    /// Notes that a tee's backup is advancing; false if it was given up.
    fn touch(&self, id: u64) -> bool {
        let mut list = self.list.lock();
        let tee = list.tees.iter_mut().find(|t| t.id == id);
        tee.map(|t| t.touched = Instant::now()).is_some()
    }
}

/// The commit thread's hold on the tees during one batch's apply.
pub struct TeeGuard<'a>(MutexGuard<'a, TeeList>);

impl TeeGuard<'_> {
    /// Tees one applied write, made at `revision`, to every running
    /// backup. Cheap when none runs; a clone of a `WriteOp` shares its key
    /// and value bytes.
    pub fn record(&mut self, op: &WriteOp, revision: u64) {
        for tee in (self.0.tees.iter_mut()).filter(|t| t.records && !t.overrun) {
            tee.bytes += held_bytes(op);
            if tee.bytes > MAX_TEE_BYTES {
                tee.overrun = true;
                tee.ops = Vec::new();
            } else {
                tee.ops.push((op.clone(), revision));
            }
        }
    }
}

/// One backup's registration; ends the tee when dropped.
struct Tee {
    tees: Arc<Tees>,
    id: u64,
}

/// The error of a backup given up for its idle client.
fn given_up() -> Error {
    Error::Backup(format!(
        "the backup was given up: no chunk was asked for in {} s while another backup waited",
        IDLE_EXPIRY.as_secs()
    ))
}

impl Tee {
    /// The end mark: the writes applied since the start mark, in order,
    /// with their revisions.
    fn end(self) -> Result<Vec<(WriteOp, u64)>, Error> {
        let buffer = self.tees.remove(self.id).ok_or_else(given_up)?;
        if buffer.overrun {
            return Err(Error::Backup(format!(
                "more than {} MiB were written while the backup copied the store; \
                 try again when writes are lighter, or back up into --backup-dir, \
                 which does not wait for a client",
                MAX_TEE_BYTES >> 20
            )));
        }
        Ok(buffer.ops)
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.tees.remove(self.id);
    }
}

impl Drop for Backup {
    /// A backup dropped before it settled was abandoned: counted as failed.
    fn drop(&mut self) {
        self.settle(false);
    }
}

/// What a finished backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Key-value pairs copied.
    pub keys: u64,
    /// Writes teed during the copy, stored after the pairs.
    pub ops: u64,
    /// The file's size.
    pub bytes: u64,
}

/// What a backup copies the pairs from: an engine's state.
pub trait View: Send {
    /// Encodes the next few pairs; false once every pair is encoded.
    fn copy_some(&mut self, encoder: &mut Encoder) -> Result<bool, Error>;

    /// Whether the copy is fuzzy (different keys copied at different
    /// moments), so that the backup must end with the writes applied
    /// during it; false for one instant's view.
    fn fuzzy(&self) -> bool;
}

/// The memory engine's map (an `Arc<Store>`, or a `&Store`), copied a few
/// pairs per shard lock.
impl<S: std::ops::Deref<Target = Store> + Send> View for S {
    fn copy_some(&mut self, encoder: &mut Encoder) -> Result<bool, Error> {
        Ok(encoder.copy_some(self))
    }

    fn fuzzy(&self) -> bool {
        true
    }
}

/// A backup in progress: produces the file's bytes a piece at a time.
pub struct Backup {
    view: Box<dyn View>,
    tees: Arc<Tees>,
    encoder: Encoder,
    /// Registered until the copy is done.
    tee: Option<Tee>,
    /// Once the copy is done: the teed writes not yet encoded.
    ops: Option<std::vec::IntoIter<(WriteOp, u64)>>,
    /// The footer is encoded: what is left to take is all there is.
    finished: bool,
    /// The backup failed: it never goes on.
    failed: bool,
    /// Counted as completed or failed (once; dropping an unsettled backup
    /// counts it as failed: abandoned).
    settled: bool,
    started: Instant,
}

impl Backup {
    /// The start mark: copies `view`, with the writes applied meanwhile
    /// if it is fuzzy. Fails if [`MAX_BACKUPS`] are running.
    pub fn start(view: Box<dyn View>, tees: &Arc<Tees>) -> Result<Backup, Error> {
        let tee = tees.start(view.fuzzy())?;
        // A backup put in place of a data file recovers like one whose log
        // starts afresh at segment 1.
        let encoder = Encoder::new(1, 1);
        Ok(Backup {
            view,
            tees: tees.clone(),
            encoder,
            tee: Some(tee),
            ops: None,
            finished: false,
            failed: false,
            settled: false,
            started: Instant::now(),
        })
    }

    /// The next bytes of the file, at most `max`; empty once all are out.
    pub fn next_chunk(&mut self, max: usize) -> Result<Bytes, Error> {
        if self.failed {
            return Err(Error::Backup("the backup failed earlier".into()));
        }
        let result = self.fill(max);
        if result.is_err() {
            self.failed = true;
            self.settle(false);
        }
        result
    }

    fn fill(&mut self, max: usize) -> Result<Bytes, Error> {
        if let Some(tee) = &self.tee {
            if !self.tees.touch(tee.id) {
                return Err(given_up());
            }
        }
        while self.encoder.ready() < max && !self.finished {
            self.step()?;
        }
        Ok(self.encoder.take(max))
    }

    /// Counts the backup as completed once its last byte has been handed
    /// on (and, for a file, made durable).
    pub fn succeeded(&mut self) {
        self.settle(true);
    }

    fn settle(&mut self, ok: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let counter = if ok {
            &self.tees.completed
        } else {
            &self.tees.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            ok,
            keys = self.encoder.entries(),
            ops = self.encoder.ops(),
            bytes = self.encoder.bytes(),
            ms = self.started.elapsed().as_millis() as u64,
            "backup ended"
        );
    }

    /// What the backup holds so far (all of it once the last chunk is out).
    pub fn summary(&self) -> Summary {
        Summary {
            keys: self.encoder.entries(),
            ops: self.encoder.ops(),
            bytes: self.encoder.bytes(),
        }
    }

    /// One step: a few pairs copied, or the end mark, or one teed write
    /// encoded, or the footer.
    fn step(&mut self) -> Result<(), Error> {
        match &mut self.ops {
            None => {
                if !self.view.copy_some(&mut self.encoder)? {
                    let tee = self
                        .tee
                        .take()
                        .ok_or_else(|| Error::Backup("the backup's tee ended twice".into()))?;
                    self.ops = Some(tee.end()?.into_iter());
                }
            }
            Some(ops) => match ops.next() {
                Some((op, revision)) => {
                    (self.encoder.push_op(&op, revision)).map_err(Error::Backup)?
                }
                None => {
                    self.encoder.finish();
                    self.finished = true;
                }
            },
        }
        Ok(())
    }
}

/// Whether `name` may name a file in the backup directory: 1 to 128 ASCII
/// letters, digits, `.`, `_` or `-`, not starting with `.` (no paths, no
/// hidden files, no `..`).
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Backup(format!(
            "{name:?} is not a backup name: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

/// Writes `backup` into `dir` under `name`, durably: a hidden temp file of
/// its own (`.NAME.PID-N.kvstore-tmp`, created new, mode 0600), `fsync`, a
/// hard link to the final name (which fails rather than replace an existing
/// backup), the temp file removed, the directory synced. Blocking: run it
/// off the async workers.
pub fn write_to_dir(mut backup: Backup, dir: &Path, name: &str) -> Result<Summary, Error> {
    use std::io::Write;
    static TEMP_FILES: AtomicU64 = AtomicU64::new(0);
    check_name(name)?;
    let path = dir.join(name);
    let exists = || {
        Error::Backup(format!(
            "{} exists already; choose another name",
            path.display()
        ))
    };
    let io =
        |what: &str, e: std::io::Error| Error::Backup(format!("{what} {}: {e}", path.display()));
    if path.exists() {
        return Err(exists());
    }
    let n = TEMP_FILES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{n}{TEMP_SUFFIX}", std::process::id()));
    let written = (|| {
        let mut file = crate::storage::fs::private_options()
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io("cannot create a temp file for", e))?;
        loop {
            let chunk = backup.next_chunk(4 * CHUNK_BYTES)?;
            if chunk.is_empty() {
                break;
            }
            file.write_all(&chunk).map_err(|e| io("cannot write", e))?;
        }
        file.sync_all().map_err(|e| io("cannot sync", e))?;
        std::fs::hard_link(&tmp, &path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => exists(),
            _ => io("cannot name", e),
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync the directory of", e))?;
    backup.succeeded();
    Ok(backup.summary())
}

/// Removes the temp files that backups cut short by a crash left in `dir`
/// (at start, before any backup runs).
pub fn remove_temp_files(dir: &Path) -> Result<(), Error> {
    let io = |e| Error::io(dir, e);
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            tracing::info!(file = %name, "removing an unfinished backup");
            let path = dir.join(name.as_ref());
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::RealFs;
    use crate::storage::snapshot;

    fn set(key: &str, value: &str) -> WriteOp {
        WriteOp::set(key, value)
    }

    /// Applies `op` as the commit thread does: teed, then applied.
    fn commit(store: &Store, tees: &Tees, op: WriteOp) {
        tees.lock().record(&op, 0);
        store.apply(&op);
    }

    fn file_of(mut backup: Backup, chunk: usize, mut between: impl FnMut(usize)) -> Vec<u8> {
        let mut file = Vec::new();
        for i in 0.. {
            let piece = backup.next_chunk(chunk).unwrap();
            if piece.is_empty() {
                break;
            }
            file.extend_from_slice(&piece);
            between(i);
        }
        file
    }

    /// Every pair of `store`, in key order.
    fn everything(store: &Store) -> Vec<(Bytes, Bytes)> {
        let span = crate::storage::store::Span::prefix(b"", None, false);
        store.pairs(&span, usize::MAX, usize::MAX).0
    }

    fn load(file: &[u8]) -> (Store, snapshot::SnapshotInfo) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup");
        std::fs::write(&path, file).unwrap();
        let store = Store::new(3);
        let info = snapshot::load(&RealFs, &path, &store).unwrap().unwrap();
        (store, info)
    }

    /// Writes land between the chunks of a streamed backup, on keys already
    /// copied and keys not yet copied; the loaded file is the store as it was
    /// when the copy finished, not a mix.
    #[test]
    fn a_backup_is_the_state_at_its_end_mark_whatever_the_copy_saw() {
        let store = Arc::new(Store::new(3));
        let tees = Arc::new(Tees::default());
        // About 4 MiB: the copy advances a block (1 MiB) at a time, so
        // writes land between blocks.
        let before = "b".repeat(200);
        for i in 0..20_000 {
            store.apply(&set(&format!("k{i:05}"), &before));
        }
        let backup = Backup::start(Box::new(store.clone()), &tees).unwrap();
        let mut at_end_mark = None;
        let file = file_of(backup, 64 * 1024, |i| {
            if tees.running() == 0 && at_end_mark.is_none() {
                at_end_mark = Some(everything(&store));
            }
            // Sets and deletes all over the key space, new keys too.
            let n = i * 1000 % 20_000;
            commit(
                &store,
                &tees,
                set(&format!("k{n:05}"), &format!("during {i}")),
            );
            commit(&store, &tees, set(&format!("new{i}"), "x"));
            commit(
                &store,
                &tees,
                WriteOp::Delete {
                    key: Bytes::from(format!("k{:05}", (n + 7) % 20_000)),
                },
            );
        });
        assert_eq!(tees.running(), 0, "the tee ends with the copy");
        let (loaded, info) = load(&file);
        assert!(info.ops > 0, "writes landed during the copy");
        let want = at_end_mark.expect("the copy ended before the last chunk");
        assert_eq!(everything(&loaded), want);
    }

    #[test]
    fn a_clear_during_the_copy_empties_what_came_before_it() {
        let store = Arc::new(Store::new(4));
        let tees = Arc::new(Tees::default());
        let value = "v".repeat(1000);
        for i in 0..5_000 {
            store.apply(&set(&format!("k{i}"), &value));
        }
        let mut backup = Backup::start(Box::new(store.clone()), &tees).unwrap();
        // The first block is copied; four are still to come.
        let mut file = backup.next_chunk(1024).unwrap().to_vec();
        assert_eq!(tees.running(), 1);
        commit(&store, &tees, WriteOp::Clear);
        commit(&store, &tees, set("after", "clear"));
        file.extend(file_of(backup, 1024, |_| {}));
        let (loaded, _) = load(&file);
        assert_eq!(everything(&loaded), everything(&store));
        assert_eq!(loaded.len(), 1);
    }

    #[test]
    fn too_many_writes_during_a_copy_fail_the_backup_and_free_its_tee() {
        let store = Arc::new(Store::new(1));
        let tees = Arc::new(Tees::default());
        store.apply(&set("a", "1"));
        let mut backup = Backup::start(Box::new(store.clone()), &tees).unwrap();
        let big = WriteOp::Set {
            key: Bytes::from_static(b"big"),
            value: Bytes::from(vec![0u8; MAX_TEE_BYTES / 4]),
        };
        for _ in 0..5 {
            commit(&store, &tees, big.clone());
        }
        // The copy holds the big value too: a few chunks, then the failure.
        let err = (0..200)
            .find_map(|_| match backup.next_chunk(CHUNK_BYTES) {
                Ok(chunk) => {
                    assert!(!chunk.is_empty(), "the backup must not complete");
                    None
                }
                Err(e) => Some(e),
            })
            .expect("the backup fails at its end mark");
        assert!(err.to_string().contains("were written while"), "{err}");
        assert!(
            backup.next_chunk(CHUNK_BYTES).is_err(),
            "a failed backup stays failed"
        );
        assert_eq!(tees.running(), 0);
        assert_eq!(tees.failed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn at_most_max_backups_run_at_once_and_a_dropped_one_frees_its_place() {
        let store = Arc::new(Store::new(1));
        let tees = Arc::new(Tees::default());
        let running: Vec<_> = (0..MAX_BACKUPS)
            .map(|_| Backup::start(Box::new(store.clone()), &tees).unwrap())
            .collect();
        assert!(Backup::start(Box::new(store.clone()), &tees).is_err());
        drop(running);
        assert_eq!(tees.running(), 0);
        assert!(Backup::start(Box::new(store), &tees).is_ok());
    }

    #[test]
    fn a_backup_idle_past_the_expiry_gives_its_place_up_to_a_new_one() {
        let store = Arc::new(Store::new(1));
        let tees = Arc::new(Tees::default());
        store.apply(&set("a", "1"));
        let mut idle = Backup::start(Box::new(store.clone()), &tees).unwrap();
        let busy = Backup::start(Box::new(store.clone()), &tees).unwrap();
        // Not idle long enough: refused.
        assert!(Backup::start(Box::new(store.clone()), &tees).is_err());
        {
            let mut list = tees.list.lock();
            let first = list.tees.iter_mut().find(|t| t.id == 1).unwrap();
            first.touched -= IDLE_EXPIRY;
        }
        let _new = Backup::start(Box::new(store), &tees).unwrap();
        assert_eq!(tees.running(), MAX_BACKUPS);
        let err = idle.next_chunk(CHUNK_BYTES).unwrap_err();
        assert!(err.to_string().contains("given up"), "{err}");
        drop((idle, busy));
        assert_eq!(
            tees.failed.load(Ordering::Relaxed),
            2,
            "given up and abandoned"
        );
        assert_eq!(tees.running(), 1);
    }

    #[test]
    fn a_tee_counts_what_its_writes_hold_in_memory_not_their_log_size() {
        let keys: Vec<Bytes> = (0..1000u32).map(|i| Bytes::from(vec![i as u8])).collect();
        let many = WriteOp::DeleteMany { keys };
        assert!(held_bytes(&many) >= 1000 * (std::mem::size_of::<Bytes>() + 1));
        assert!(held_bytes(&many) > 5 * many.approx_len());
    }

    #[test]
    fn backup_names_are_plain_file_names() {
        for good in ["nightly", "2026-11-22.kvs", "a_b-c.1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        for bad in [
            "",
            ".hidden",
            "..",
            "../etc/passwd",
            "a/b",
            "a b",
            "é",
            &long,
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_backup_in_the_directory_is_written_once_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::new(2));
        let tees = Arc::new(Tees::default());
        store.apply(&set("a", "1"));
        let summary = write_to_dir(
            Backup::start(Box::new(store.clone()), &tees).unwrap(),
            dir.path(),
            "one",
        )
        .unwrap();
        assert_eq!((summary.keys, summary.ops), (1, 0));
        let file = std::fs::read(dir.path().join("one")).unwrap();
        assert_eq!(file.len() as u64, summary.bytes);
        assert_eq!(everything(&load(&file).0), everything(&store));
        store.apply(&set("b", "2"));
        let again = write_to_dir(
            Backup::start(Box::new(store), &tees).unwrap(),
            dir.path(),
            "one",
        );
        assert!(again.unwrap_err().to_string().contains("exists already"));
        assert_eq!(std::fs::read(dir.path().join("one")).unwrap(), file);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file is left behind");
        assert_eq!(tees.completed.load(Ordering::Relaxed), 1);
        assert_eq!(tees.failed.load(Ordering::Relaxed), 1, "the name was taken");

        // What a crash mid-backup leaves is removed at the next start; other
        // files are not.
        let left = dir.path().join(format!(".two.77-0{TEMP_SUFFIX}"));
        std::fs::write(&left, b"half a backup").unwrap();
        std::fs::write(dir.path().join(".profile"), b"not ours").unwrap();
        remove_temp_files(dir.path()).unwrap();
        assert!(!left.exists());
        assert!(dir.path().join(".profile").exists());
        assert!(dir.path().join("one").exists());
    }
}
