//! Group commit: one committer at a time writes the log and applies writes.
//!
//! Connections send [`Change`]s into a bounded channel (the bound is the
//! backpressure). A commit thread takes everything waiting, up to a batch limit,
//! resolves the writes that read first into plain `WriteOp`s (see
//! `crate::storage::change`), encodes them as log records, issues one `write` and, with `--sync always`,
//! one `fdatasync` for the whole batch. Only when that returns Ok does it apply
//! the batch to the engine (`crate::engine::Engine::apply`), in log order, and acknowledge each write. So:
//!
//! - an acknowledged write is in the log and was covered by an `fdatasync`;
//! - no reader sees a write before it is durable;
//! - the store is always exactly the replay of the durable log.
//!
//! When nothing is queued for the thread, the log is free and the thread's
//! last batch held a single message (writes arrive no faster than one
//! commit), a connection commits its write itself, on its own runtime
//! thread, as Redis does: the write, its `fdatasync` and its answer then
//! make no hand-off between threads, which on the development VM was about
//! 100 µs of a one-connection write's 250 µs. The commit thread and such a
//! task share the log's state behind one lock, and a message counts as
//! queued until it is carried out, so no write commits ahead of one queued
//! before it.
//!
//! A failed `write` or `fdatasync` poisons the log for good: the batch fails,
//! every later write fails with "storage failed", the fsync is never retried
//! (after a failed fsync the kernel may have dropped the dirty pages, so a
//! retry that returns Ok proves nothing). Reads go on. A restart recovers from
//! what is on disk.
//!
//! While a backup runs, every applied write is also teed to it (see
//! `crate::backup`).
//!
//! When the current segment passes `--snapshot-after-bytes`, the thread syncs
//! it, starts a new segment and hands the snapshot to a second thread, so
//! writes keep flowing while the map is copied.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::SyncMode;
use crate::engine::{Checkpoint, Engine};
use crate::error::Error;
use crate::log::{Done, Log, Queued};
use crate::storage::change::{BatchView, Change, Resolved};
use crate::storage::fs::Fs;
use crate::storage::wal;

/// Writes waiting for the commit thread. Past this, senders wait: a full
/// queue slows clients down instead of growing memory.
const QUEUE_DEPTH: usize = 4096;
/// Most writes in one batch, so one slow batch does not hold back replies.
const MAX_BATCH_OPS: usize = 4096;
/// A batch stops collecting once its writes pass this many bytes.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// What the commit thread is asked to do.
enum Message {
    /// Resolve, log, sync, apply, then answer.
    Write(Queued),
    /// Several writes from one connection's pipelined burst, sent together so
    /// that the thread does not wake for the first one alone.
    Burst(Vec<Message>),
    /// Make everything written so far durable; answer if someone waits. The
    /// periodic ticker and the snapshot writer send these.
    Sync {
        done: Option<oneshot::Sender<Result<(), Error>>>,
    },
    /// Stop after the writes before this one.
    Close,
}

impl Message {
    /// Roughly the log bytes of a write; 0 for the other messages.
    fn approx_len(&self) -> usize {
        match self {
            Message::Write(write) => write.change.approx_len(),
            _ => 0,
        }
    }
}

/// A message of the batch being committed, with its write resolved.
enum Job {
    Write {
        resolved: Resolved,
        /// The sequence number of its record, its op's revision (the
        /// last record's before it if it logged nothing).
        seq: u64,
        done: Done,
        /// Held until the job is answered, like the message's.
        _budget: OwnedSemaphorePermit,
    },
    Sync(Option<oneshot::Sender<Result<(), Error>>>),
}

/// Settings of the commit thread.
pub struct Settings {
    pub sync: SyncMode,
    pub sync_interval: Duration,
    pub snapshot_after_bytes: u64,
    /// The snapshot file; the log directory is derived from it.
    pub data: PathBuf,
    /// Where the files live: the real file system, or a simulated disk in
    /// crash tests.
    pub fs: Arc<dyn Fs>,
}

/// What the log has done since start, for `Stats`, `/metrics` and `INFO`
/// (relaxed atomics: each figure is exact on its own, the set is not one
/// instant's).
#[derive(Default)]
pub struct LogFigures {
    /// Records written since the last snapshot began (what a restart would
    /// replay on top of it).
    pub records_since_snapshot: AtomicU64,
    /// How long the last snapshot took to write, in milliseconds.
    pub last_snapshot_ms: AtomicU64,
    /// Every successful `fdatasync` of the log, in microseconds.
    pub fsync_us: Percentiles,
    /// Records per log batch (one write, at most one `fdatasync`).
    pub batch_records: Percentiles,
    /// Records written to the log.
    pub records: AtomicU64,
    /// `fdatasync` calls that succeeded.
    pub syncs: AtomicU64,
    /// Bytes in the current log segment (what the next restart replays on
    /// top of the snapshot).
    pub segment_bytes: AtomicU64,
    /// Snapshots written.
    pub snapshots: AtomicU64,
    /// When the last snapshot was renamed into place (Unix seconds; 0: none
    /// since start).
    pub last_snapshot_unix: AtomicU64,
}

impl LogFigures {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn snapshot_written(&self, took: Duration) {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        self.last_snapshot_unix
            .store(crate::stats::unix_now(), Ordering::Relaxed);
        self.last_snapshot_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
    }
}

/// A histogram of values since start (3 significant digits), read for
/// percentiles. Recorded by the commit thread only; the lock is taken once
/// per batch there and by the rare reader.
pub struct Percentiles(parking_lot::Mutex<hdrhistogram::Histogram<u64>>);

impl Default for Percentiles {
    fn default() -> Percentiles {
        // Auto-resizing: no value is ever out of range.
        Percentiles(parking_lot::Mutex::new(
            hdrhistogram::Histogram::new(3).expect("3 significant digits is a valid precision"),
        ))
    }
}

impl Percentiles {
    pub fn record(&self, value: u64) {
        self.0.lock().saturating_record(value);
    }

    /// The count, then the value at each quantile (0 while empty), then the
    /// largest value.
    pub fn read(&self, quantiles: &[f64]) -> (u64, Vec<u64>, u64) {
        let h = self.0.lock();
        let at = quantiles.iter().map(|&q| h.value_at_quantile(q)).collect();
        (h.len(), at, h.max())
    }
}

/// The running commit thread: the single-node [`Log`].
pub struct GroupCommit {
    tx: mpsc::Sender<Message>,
    /// Messages sent to the thread and not yet carried out. A write that
    /// finds none, and the log free, is committed by its own task (see
    /// [`GroupCommit::commit_here`]).
    queued: Arc<AtomicUsize>,
    /// The log's state, locked by whoever commits: the thread or a task.
    worker: Arc<parking_lot::Mutex<Worker>>,
    /// Messages in the thread's last batch. More than one means writes
    /// arrive faster than one commit: a task committing alone would block
    /// its runtime worker for an `fdatasync` and shrink the batches, so
    /// tasks leave the commits to the thread until its batches are single.
    last_batch: Arc<AtomicUsize>,
    /// Set once, with the reason, when the log fails; checked before queueing
    /// so writes after a failure are refused at once.
    poison: Arc<OnceLock<String>>,
    /// See [`Log::budget`].
    budget: Arc<Semaphore>,
    /// Updated by the commit and snapshot threads.
    figures: Arc<LogFigures>,
    /// Taken by [`Log::close`].
    thread: parking_lot::Mutex<Option<JoinHandle<Result<(), Error>>>>,
}

impl GroupCommit {
    /// Starts the commit thread on a recovered log, applying to `engine`.
    pub fn start(
        engine: Arc<dyn Engine>,
        segment: wal::Segment,
        last_seq: u64,
        settings: Settings,
    ) -> Result<GroupCommit, Error> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let poison = Arc::new(OnceLock::new());
        let figures = Arc::new(LogFigures::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            figures: figures.clone(),
            weak: tx.downgrade(),
            queued: queued.clone(),
            closed: false,
            engine,
            segment,
            seq: last_seq,
            durable: last_seq,
            dirty: false,
            last_sync: Instant::now(),
            poison: poison.clone(),
            settings,
            snapshotting: Arc::new(AtomicBool::new(false)),
            snapshot_thread: None,
        };
        let worker = Arc::new(parking_lot::Mutex::new(worker));
        let last_batch = Arc::new(AtomicUsize::new(0));
        let (shared, counter, batch) = (worker.clone(), queued.clone(), last_batch.clone());
        let thread = std::thread::Builder::new()
            .name("kvstore-commit".into())
            .spawn(move || run(shared, rx, counter, batch))
            .map_err(|e| Error::io(&PathBuf::from("<commit thread>"), e))?;
        Ok(GroupCommit {
            tx,
            queued,
            worker,
            last_batch,
            poison,
            budget: crate::log::budget(),
            figures,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// Asks for an fsync of everything written so far, without waiting (the
    /// `--sync periodic` ticker). Skipped if the queue is full: the thread is
    /// busy and syncs on its own clock.
    pub fn request_sync(&self) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.try_send(Message::Sync { done: None }).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Commits `writes` on the calling thread if nothing is queued for the
    /// commit thread and no commit runs: the write, its `fdatasync` and its
    /// answer then need no hand-off between threads (Redis makes none).
    /// Gives the writes back otherwise. Nothing queued means no earlier
    /// write of any connection is waiting, so the log's order is kept.
    fn commit_here(&self, writes: Vec<Queued>) -> Option<Vec<Queued>> {
        if self.queued.load(Ordering::SeqCst) != 0 || self.last_batch.load(Ordering::Relaxed) > 1 {
            return Some(writes);
        }
        let Some(mut worker) = self.worker.try_lock() else {
            return Some(writes);
        };
        if worker.closed || self.queued.load(Ordering::SeqCst) != 0 {
            return Some(writes);
        }
        let mut batch = writes.into_iter().map(Message::Write).collect();
        worker.commit(&mut batch, &mut Vec::new());
        worker.maybe_snapshot();
        None
    }
}

impl Log for GroupCommit {
    fn queue(&self, writes: Vec<Queued>) -> BoxFuture<'_, Result<(), Error>> {
        let Some(writes) = self.commit_here(writes) else {
            return Box::pin(async { Ok(()) });
        };
        let burst = Message::Burst(writes.into_iter().map(Message::Write).collect());
        Box::pin(async move { send(&self.tx, &self.queued, burst).await })
    }

    fn failure(&self) -> Option<String> {
        self.poison.get().cloned()
    }

    fn figures(&self) -> Option<&LogFigures> {
        Some(&self.figures)
    }

    fn budget(&self) -> &Arc<Semaphore> {
        &self.budget
    }

    fn lost_may_apply(&self) -> bool {
        false
    }

    /// Stops the thread after the writes already queued, waits for a running
    /// snapshot, and writes a final snapshot so the next start has no log to
    /// replay. Writes still queued behind the close are refused with
    /// "shutting down" (their clients were not acknowledged).
    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let _ = send(&self.tx, &self.queued, Message::Close).await;
            let Some(thread) = self.thread.lock().take() else {
                return Ok(());
            };
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| Error::Config(format!("commit thread join failed: {e}")))?
                .unwrap_or_else(|_| Err(Error::StorageFailed("the commit thread panicked".into())))
        })
    }
}

/// Sends `message` to the commit thread, counted in `queued` until it is
/// carried out.
async fn send(
    tx: &mpsc::Sender<Message>,
    queued: &AtomicUsize,
    message: Message,
) -> Result<(), Error> {
    queued.fetch_add(1, Ordering::SeqCst);
    tx.send(message).await.map_err(|_| {
        queued.fetch_sub(1, Ordering::SeqCst);
        Error::ShuttingDown
    })
}

/// The log's state: the commit thread's, lent to a task that commits its
/// own write.
struct Worker {
    /// For the snapshot thread's sync barrier; weak so that it never keeps
    /// the channel open by itself.
    weak: mpsc::WeakSender<Message>,
    /// See [`GroupCommit::queued`].
    queued: Arc<AtomicUsize>,
    /// The thread has closed the log: no task may commit any more.
    closed: bool,
    /// What batches are resolved against and applied to, and what the
    /// snapshot thread checkpoints.
    engine: Arc<dyn Engine>,
    segment: wal::Segment,
    /// The sequence number of the last record written.
    seq: u64,
    /// The sequence number of the last record covered by a successful
    /// `fdatasync`. Every record carries it, so recovery can tell a torn
    /// unsynced tail from damage to records that were already durable.
    durable: u64,
    /// Bytes were written since the last fsync.
    dirty: bool,
    last_sync: Instant,
    poison: Arc<OnceLock<String>>,
    settings: Settings,
    /// A snapshot thread is running; no second one starts meanwhile.
    snapshotting: Arc<AtomicBool>,
    snapshot_thread: Option<JoinHandle<()>>,
    figures: Arc<LogFigures>,
}

/// The commit thread: carries out what is queued, a batch at a time, with
/// the worker locked (the lock is taken after a message arrives and before
/// it is taken off `queued`, so a task never commits ahead of it).
fn run(
    worker: Arc<parking_lot::Mutex<Worker>>,
    mut rx: mpsc::Receiver<Message>,
    queued: Arc<AtomicUsize>,
    last_batch: Arc<AtomicUsize>,
) -> Result<(), Error> {
    let mut batch = Vec::new();
    let mut buf = Vec::new();
    let mut closing = false;
    while !closing {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut worker = worker.lock();
        let mut bytes = 0;
        let mut received = 0;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            received += 1;
            match message {
                Message::Close => {
                    closing = true;
                    break;
                }
                // A burst is never split between batches.
                Message::Burst(writes) => {
                    bytes += writes.iter().map(Message::approx_len).sum::<usize>();
                    batch.extend(writes);
                }
                message => {
                    bytes += message.approx_len();
                    batch.push(message);
                }
            }
            if batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        worker.commit(&mut batch, &mut buf);
        queued.fetch_sub(received, Ordering::SeqCst);
        last_batch.store(received, Ordering::Relaxed);
        if !closing {
            worker.maybe_snapshot();
        }
    }
    let mut worker = worker.lock();
    worker.closed = true;
    // Refuse whatever was queued behind the close. `blocking_recv`, not
    // `try_recv`: a sender holding a permit may still be about to push,
    // and only `None` proves that nothing more can arrive.
    rx.close();
    while let Some(message) = rx.blocking_recv() {
        fail(message, &|| Error::ShuttingDown);
        queued.fetch_sub(1, Ordering::SeqCst);
    }
    if let Some(thread) = worker.snapshot_thread.take() {
        let _ = thread.join();
    }
    worker.final_snapshot()
}

impl Worker {
    /// Resolves, writes, syncs and applies one batch, then answers every
    /// message in it.
    fn commit(&mut self, batch: &mut Vec<Message>, buf: &mut Vec<u8>) {
        if let Some(reason) = self.poison.get() {
            let reason = reason.clone();
            batch
                .drain(..)
                .for_each(|m| fail(m, &|| Error::StorageFailed(reason.clone())));
            return;
        }
        buf.clear();
        let mut sync_asked = false;
        // Only a batch with a write that reads first pays for the overlay.
        let mut view = batch
            .iter()
            .any(|m| matches!(m, Message::Write(w) if w.change.reads()))
            .then(|| BatchView::new(&*self.engine));
        let mut jobs = Vec::with_capacity(batch.len());
        for message in batch.drain(..) {
            match message {
                Message::Write(Queued {
                    change,
                    done,
                    budget: _budget,
                }) => {
                    let resolved = match (&mut view, change) {
                        (_, Change::Write(op)) => Resolved::Apply(op),
                        (Some(view), change) => {
                            // Its record's sequence number, if it logs one.
                            view.resolving_at(self.seq + 1);
                            change.resolve(view)
                        }
                        (None, _) => unreachable!("a batch with a reading change has a view"),
                    };
                    if let Some(op) = resolved.op() {
                        self.seq += 1;
                        self.segment.encode_record(buf, self.seq, self.durable, op);
                        if let Some(view) = &mut view {
                            view.record(op, self.seq);
                        }
                    }
                    jobs.push(Job::Write {
                        resolved,
                        seq: self.seq,
                        done,
                        _budget,
                    });
                }
                Message::Sync { done } => {
                    sync_asked = true;
                    jobs.push(Job::Sync(done));
                }
                // Flattened into the batch when it was gathered.
                Message::Burst(_) | Message::Close => {}
            }
        }
        drop(view);
        // From the write on, the batch may be on disk: a panic must not
        // answer its writes as never arrived.
        let mut jobs = Unanswered {
            jobs: jobs.into(),
            poison: self.poison.clone(),
        };
        let batch_start = self.segment.len();
        if !buf.is_empty() {
            if let Err(e) = self.segment.append(buf) {
                return self.poison_batch(&mut jobs, batch_start, "write", e);
            }
            self.dirty = true;
            let records = (jobs.jobs.iter())
                .filter(|j| matches!(j, Job::Write { resolved, .. } if resolved.op().is_some()))
                .count();
            self.figures
                .records
                .fetch_add(records as u64, Ordering::Relaxed);
            self.figures
                .records_since_snapshot
                .fetch_add(records as u64, Ordering::Relaxed);
            self.figures.batch_records.record(records as u64);
            self.figures
                .segment_bytes
                .store(self.segment.len(), Ordering::Relaxed);
        }
        let sync_now = self.dirty
            && match self.settings.sync {
                SyncMode::Always => true,
                SyncMode::Periodic => {
                    sync_asked || self.last_sync.elapsed() >= self.settings.sync_interval
                }
                SyncMode::Never => sync_asked,
            };
        if sync_now {
            let started = Instant::now();
            if let Err(e) = self.segment.sync_data() {
                return self.poison_batch(&mut jobs, batch_start, "fdatasync", e);
            }
            self.figures
                .fsync_us
                .record(started.elapsed().as_micros() as u64);
            self.synced();
        }
        let resolved: Vec<(&Resolved, u64)> = (jobs.jobs.iter())
            .filter_map(|job| match job {
                Job::Write { resolved, seq, .. } => Some((resolved, *seq)),
                Job::Sync(_) => None,
            })
            .collect();
        let applied = match self.engine.apply_resolved(&resolved, self.seq, None) {
            Ok(applied) => applied,
            Err(e) => return self.fail_durable_batch(&mut jobs, e),
        };
        let mut applied = applied.into_iter();
        for job in jobs.take() {
            match job {
                Job::Write { resolved, done, .. } => {
                    let _ = done.send(resolved.outcome(applied.next().flatten()));
                }
                Job::Sync(Some(done)) => {
                    let _ = done.send(Ok(()));
                }
                Job::Sync(None) => {}
            }
        }
    }

    /// The engine could not apply a batch the log holds durably: the log
    /// is poisoned, and the batch's writes are answered `OutcomeUnknown`
    /// (a restart replays them).
    fn fail_durable_batch(&mut self, jobs: &mut Unanswered, e: Error) {
        let reason = format!("applying a durable batch failed: {e}");
        tracing::error!("{reason}; refusing all writes until restart");
        let _ = self.poison.set(reason.clone());
        fail_jobs(
            jobs.take(),
            &|| Error::OutcomeUnknown(reason.clone()),
            &|| Error::StorageFailed(reason.clone()),
        );
    }

    /// Records that everything written so far is durable.
    fn synced(&mut self) {
        self.figures.syncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        self.durable = self.seq;
        self.last_sync = Instant::now();
    }

    /// Fails the batch, poisons the log, and cuts the batch's bytes off the
    /// segment so that a restart does not bring back writes whose clients
    /// were told they failed.
    fn poison_batch(
        &mut self,
        jobs: &mut Unanswered,
        batch_start: u64,
        what: &str,
        e: std::io::Error,
    ) {
        let reason = format!("log {what} failed on segment {}: {e}", self.segment.id());
        tracing::error!(
            "{reason}; refusing all writes until restart (the fsync is not retried: after a failure the kernel may have dropped the data)"
        );
        if let Err(e) = self.segment.discard_from(batch_start) {
            tracing::error!(
                "could not cut the failed batch off the log ({e}); a restart may replay it"
            );
        }
        let _ = self.poison.set(reason.clone());
        let failed = || Error::StorageFailed(reason.clone());
        fail_jobs(jobs.take(), &failed, &failed);
    }

    /// Starts a snapshot if the segment is past the threshold and none runs.
    fn maybe_snapshot(&mut self) {
        if self.segment.len() < self.settings.snapshot_after_bytes
            || self.poison.get().is_some()
            || self.snapshotting.load(Ordering::Acquire)
        {
            return;
        }
        if let Some(thread) = self.snapshot_thread.take() {
            let _ = thread.join();
        }
        let (next, next_seq) = match self.rotate() {
            Ok(next) => next,
            Err(e) => {
                let reason = format!("log rotation failed: {e}");
                tracing::error!("{reason}; refusing all writes until restart");
                let _ = self.poison.set(reason);
                return;
            }
        };
        self.snapshotting.store(true, Ordering::Release);
        let engine = self.engine.clone();
        let data = self.settings.data.clone();
        let fs = self.settings.fs.clone();
        let weak = self.weak.clone();
        let queued = self.queued.clone();
        let running = self.snapshotting.clone();
        let figures = self.figures.clone();
        let spawned = std::thread::Builder::new()
            .name("kvstore-snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                let result = engine.checkpoint(&Checkpoint {
                    fs: &*fs,
                    data: &data,
                    next_segment: next,
                    next_seq,
                    barrier: &|| sync_barrier(&weak, &queued),
                });
                match result.and_then(|_| remove_segments_before(&*fs, &data, next)) {
                    Ok(()) => figures.snapshot_written(started.elapsed()),
                    Err(e) => tracing::error!(
                        "snapshot failed, the log is kept and replayed instead: {e}"
                    ),
                }
                running.store(false, Ordering::Release);
            });
        match spawned {
            Ok(thread) => self.snapshot_thread = Some(thread),
            Err(e) => {
                tracing::error!("could not start the snapshot thread: {e}");
                self.snapshotting.store(false, Ordering::Release);
            }
        }
    }

    /// Syncs the current segment and starts the next one; returns its id and
    /// the sequence number of its first record.
    /// Every segment but the newest is therefore wholly durable, which is what
    /// lets recovery treat damage anywhere but the newest tail as corruption.
    fn rotate(&mut self) -> Result<(u64, u64), Error> {
        let dir = wal::dir_for(&self.settings.data);
        let trimmed = self.segment.trim().map_err(|e| Error::io(&dir, e))?;
        if self.dirty || trimmed {
            self.segment.sync_data().map_err(|e| Error::io(&dir, e))?;
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        let next = (self.segment.id() + 1, self.seq + 1);
        self.segment = wal::Segment::create(&*self.settings.fs, &dir, next.0, next.1)?;
        self.figures
            .segment_bytes
            .store(self.segment.len(), Ordering::Relaxed);
        self.figures
            .records_since_snapshot
            .store(0, Ordering::Relaxed);
        Ok(next)
    }

    /// At shutdown: everything is durable, then one snapshot covers it all and
    /// the log is emptied. Skipped after a log failure: the disk is not to be
    /// trusted, and the log on it already holds every acknowledged write.
    fn final_snapshot(&mut self) -> Result<(), Error> {
        if let Some(reason) = self.poison.get() {
            return Err(Error::StorageFailed(reason.clone()));
        }
        // Nothing written since the snapshot that emptied the log: done.
        let dir = wal::dir_for(&self.settings.data);
        let fs = self.settings.fs.clone();
        let only_segment = wal::list_segments(&*fs, &dir)? == [self.segment.id()];
        if self.segment.is_empty() && only_segment && fs.exists(&self.settings.data) {
            return Ok(());
        }
        let (next, next_seq) = self.rotate()?;
        self.engine.checkpoint(&Checkpoint {
            fs: &*fs,
            data: &self.settings.data,
            next_segment: next,
            next_seq,
            barrier: &|| Ok(()),
        })?;
        remove_segments_before(&*fs, &self.settings.data, next)
    }
}

/// The jobs of a batch whose records may be on disk, until each is
/// answered. If the commit thread panics meanwhile, dropping this poisons
/// the log and answers every job left with `OutcomeUnknown`: the write may
/// be durable and come back at the next start, so "shutting down" (never
/// arrived) would be a lie.
struct Unanswered {
    jobs: std::collections::VecDeque<Job>,
    poison: Arc<OnceLock<String>>,
}

impl Unanswered {
    /// The jobs, for a path that answers them all itself.
    fn take(&mut self) -> Vec<Job> {
        self.jobs.drain(..).collect()
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let reason = "the commit thread panicked while its batch was being logged or applied";
        tracing::error!("{reason}; refusing all writes until restart");
        let _ = self.poison.set(reason.to_string());
        fail_jobs(
            self.jobs.drain(..),
            &|| Error::OutcomeUnknown(reason.into()),
            &|| Error::StorageFailed(reason.into()),
        );
    }
}

/// Answers jobs that were not carried out: writes with `write()`, syncs
/// with `sync()`.
fn fail_jobs(
    jobs: impl IntoIterator<Item = Job>,
    write: &dyn Fn() -> Error,
    sync: &dyn Fn() -> Error,
) {
    for job in jobs {
        match job {
            Job::Write { done, .. } => {
                let _ = done.send(Err(write()));
            }
            Job::Sync(Some(done)) => {
                let _ = done.send(Err(sync()));
            }
            Job::Sync(None) => {}
        }
    }
}

/// Answers a message that will not be carried out.
fn fail(message: Message, error: &dyn Fn() -> Error) {
    match message {
        Message::Write(write) => {
            let _ = write.done.send(Err(error()));
        }
        Message::Sync { done: Some(done) } => {
            let _ = done.send(Err(error()));
        }
        Message::Burst(writes) => writes.into_iter().for_each(|w| fail(w, error)),
        Message::Sync { done: None } | Message::Close => {}
    }
}

/// Called by the snapshot thread between syncing its file and renaming it:
/// waits until every write applied so far is durable in the log.
fn sync_barrier(weak: &mpsc::WeakSender<Message>, queued: &AtomicUsize) -> Result<(), Error> {
    let tx = weak.upgrade().ok_or(Error::ShuttingDown)?;
    let (done, rx) = oneshot::channel();
    queued.fetch_add(1, Ordering::SeqCst);
    tx.blocking_send(Message::Sync { done: Some(done) })
        .map_err(|_| {
            queued.fetch_sub(1, Ordering::SeqCst);
            Error::ShuttingDown
        })?;
    drop(tx);
    rx.blocking_recv().unwrap_or(Err(Error::ShuttingDown))
}

/// Deletes the log segments a durable snapshot has made obsolete.
fn remove_segments_before(fs: &dyn Fs, data: &std::path::Path, next: u64) -> Result<(), Error> {
    let dir = wal::dir_for(data);
    for id in wal::list_segments(fs, &dir)?
        .into_iter()
        .filter(|&id| id < next)
    {
        wal::remove_segment(fs, &dir, id)?;
    }
    crate::storage::sync_dir(fs, &dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::op::WriteOp;
    use bytes::Bytes;

    fn set(key: &str) -> WriteOp {
        WriteOp::Set {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
        }
    }

    /// A panic while a batch is logged or applied leaves its writes'
    /// outcome unknown (their records may be durable) and poisons the log.
    #[test]
    fn a_panic_mid_batch_answers_outcome_unknown_and_poisons() {
        let poison = Arc::new(OnceLock::new());
        let budget = Arc::new(Semaphore::new(1));
        let (done, mut write) = oneshot::channel();
        let (sync_done, mut sync) = oneshot::channel();
        let jobs = Unanswered {
            jobs: vec![
                Job::Write {
                    resolved: Resolved::Apply(set("a")),
                    seq: 1,
                    done,
                    _budget: budget.clone().try_acquire_owned().unwrap(),
                },
                Job::Sync(Some(sync_done)),
            ]
            .into(),
            poison: poison.clone(),
        };
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _jobs = jobs;
            panic!("a bug in apply");
        }));
        assert!(panicked.is_err());
        assert!(
            matches!(write.try_recv(), Ok(Err(Error::OutcomeUnknown(_)))),
            "a write that may be durable is not answered as never arrived"
        );
        assert!(matches!(sync.try_recv(), Ok(Err(Error::StorageFailed(_)))));
        assert!(poison.get().is_some(), "the log refuses writes after it");
        assert_eq!(budget.available_permits(), 1, "the budget is given back");
    }

    /// `/dev/full` fails every write with ENOSPC: the batch fails, the store
    /// is untouched, and every later write is refused without touching the disk.
    #[tokio::test]
    async fn a_failed_log_write_poisons_the_log_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let full = Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        );
        let store = Arc::new(crate::storage::store::Store::new(4));
        let commit = GroupCommit::start(
            Arc::new(crate::engine::memory::Memory::new(
                store.clone(),
                Arc::default(),
            )),
            wal::Segment::over(full, 1),
            0,
            Settings {
                sync: SyncMode::Always,
                sync_interval: Duration::from_secs(1),
                snapshot_after_bytes: u64::MAX,
                data: dir.path().join("kvstore.db"),
                fs: Arc::new(crate::storage::fs::RealFs),
            },
        )
        .unwrap();
        let outcome = commit.submit(set("a").into()).await.unwrap().wait().await;
        assert!(
            matches!(outcome, Err(Error::StorageFailed(_))),
            "{outcome:?}"
        );
        assert!(commit.failure().is_some());
        assert!(
            store.get(b"a").is_none(),
            "a failed write must not become visible"
        );
        let refused = commit.submit(set("b").into()).await.err();
        assert!(
            matches!(refused, Some(Error::StorageFailed(_))),
            "{refused:?}"
        );
        // Closing reports the failure instead of writing a snapshot.
        assert!(matches!(commit.close().await, Err(Error::StorageFailed(_))));
    }

    /// A commit thread on a fresh log in `dir`, applying to `store`.
    fn start(dir: &std::path::Path, store: &Arc<crate::storage::store::Store>) -> GroupCommit {
        let data = dir.join("kvstore.db");
        let fs = Arc::new(crate::storage::fs::RealFs);
        let wal_dir = wal::dir_for(&data);
        std::fs::create_dir_all(&wal_dir).unwrap();
        let segment = wal::Segment::create(&*fs, &wal_dir, 1, 1).unwrap();
        let engine = crate::engine::memory::Memory::new(store.clone(), Arc::default());
        let settings = Settings {
            sync: SyncMode::Always,
            sync_interval: Duration::from_secs(1),
            snapshot_after_bytes: u64::MAX,
            data,
            fs,
        };
        GroupCommit::start(Arc::new(engine), segment, 0, settings).unwrap()
    }

    fn append(value: &str) -> Change {
        Change::Append {
            key: Bytes::from_static(b"k"),
            value: Bytes::copy_from_slice(value.as_bytes()),
            max_value: 1 << 20,
        }
    }

    /// A write queued for the thread while the log was busy is applied
    /// before a later write, even if that one finds the log free and could
    /// commit itself.
    // The log is held busy on purpose across the first submit, which only
    // queues the write (the channel has room) and never waits for the lock.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_write_never_commits_itself_ahead_of_one_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::storage::store::Store::new(4));
        let commit = start(dir.path(), &store);
        let busy = commit.worker.lock();
        let mut first = commit.submit(append("a")).await.unwrap();
        drop(busy);
        let mut second = commit.submit(append("b")).await.unwrap();
        first.wait().await.unwrap();
        second.wait().await.unwrap();
        assert_eq!(store.get(b"k").unwrap(), &b"ab"[..]);
        commit.close().await.unwrap();
    }

    /// With nothing queued and the log free, a write is committed, durable
    /// and answered before `submit` returns: no thread hand-off.
    #[tokio::test]
    async fn a_lone_write_is_committed_by_its_own_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::storage::store::Store::new(4));
        let commit = start(dir.path(), &store);
        let mut write = commit.submit(append("a")).await.unwrap();
        assert!(write.try_take().is_some_and(|r| r.is_ok()));
        assert_eq!(store.get(b"k").unwrap(), &b"a"[..]);
        commit.close().await.unwrap();
    }
}
