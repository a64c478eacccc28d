//! Power cuts, simulated. kill -9 leaves the page cache intact, so it cannot
//! catch a missing fsync; this test can. The real log, snapshot and recovery
//! code runs on a simulated disk (`SimFs`) that knows which bytes and which
//! directory entries each sync made durable. At every sync (before it takes
//! effect) the test builds the disk a power cut would leave, exactly and in
//! several torn variants, recovers from each, and checks:
//!
//! - recovery starts without manual repair;
//! - every acknowledged write is there (or the write in flight after it);
//! - every key holds a value that was written, or nothing;
//! - a BulkSet or a transaction in flight is there whole or not at all.
//!
//! Then it checks the checker: on a disk whose file syncs do nothing, or
//! whose directory sync after a rename does nothing, the same test must find
//! violations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kvstore::commit::{GroupCommit, Settings};
use kvstore::engine::memory::Memory;
use kvstore::log::Log;
use kvstore::storage::change::{Change, TxnStep};
use kvstore::storage::fs::Fs;
use kvstore::storage::op::WriteOp;
use kvstore::storage::simfs::{Faults, Rng, SimFs};
use kvstore::storage::{self};
use kvstore::SyncMode;

const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 6;
/// Crash images per sync: one exact, the rest torn at random.
const IMAGES_PER_SYNC: usize = 4;

/// What one writer has had acknowledged, and the effects of its one write in
/// flight (key, value after it; `None` for a delete).
#[derive(Clone, Default)]
struct Ledger {
    acked: BTreeMap<Bytes, Option<Bytes>>,
    in_flight: Vec<(Bytes, Option<Bytes>)>,
}

#[derive(Default)]
struct Outcome {
    images: AtomicUsize,
    violations: Mutex<Vec<String>>,
}

fn data_path() -> PathBuf {
    PathBuf::from("/sim/kvstore.db")
}

/// Recovers from `image` and checks it against what the writers knew when
/// the power was cut.
fn check(image: &SimFs, ledgers: &[Ledger], what: &str, outcome: &Outcome) {
    outcome.images.fetch_add(1, Ordering::Relaxed);
    let mut violations = Vec::new();
    match storage::open(image, &data_path(), 4) {
        Err(e) => violations.push(format!("{what}: recovery refused to start: {e}")),
        Ok(recovered) => {
            let store = &recovered.store;
            for (w, ledger) in ledgers.iter().enumerate() {
                let flight: BTreeMap<_, _> = ledger.in_flight.iter().cloned().collect();
                for key in ledger.acked.keys().chain(flight.keys()) {
                    let found = store.get(key);
                    let acked = ledger.acked.get(key).cloned().flatten();
                    if found != acked && flight.get(key) != Some(&found) {
                        violations.push(format!(
                            "{what}: writer {w} key {key:?}: acknowledged {acked:?}, in flight {:?}, found {found:?}",
                            flight.get(key)
                        ));
                    }
                }
                // A write in flight is all there or not at all.
                let changing: Vec<_> = ledger
                    .in_flight
                    .iter()
                    .filter(|(k, v)| ledger.acked.get(k).cloned().flatten() != *v)
                    .collect();
                let landed = changing.iter().filter(|(k, v)| store.get(k) == *v).count();
                if landed != 0 && landed != changing.len() {
                    violations.push(format!(
                        "{what}: writer {w}: {landed} of {} items of a write in flight landed",
                        changing.len()
                    ));
                }
            }
        }
    }
    if !violations.is_empty() {
        outcome.violations.lock().unwrap().extend(violations);
    }
}

/// Runs the writers on a simulated disk with `faults`, checking crash images
/// at every sync.
fn run(faults: Faults, ops_per_writer: usize, seed: u64) -> Arc<Outcome> {
    let ledgers: Arc<Vec<Mutex<Ledger>>> =
        Arc::new((0..WRITERS).map(|_| Mutex::default()).collect());
    let outcome = Arc::new(Outcome::default());
    let rng = Arc::new(Mutex::new(Rng::new(seed)));
    let hook = {
        let (ledgers, outcome) = (ledgers.clone(), outcome.clone());
        Arc::new(move |fs: &SimFs| {
            // The disk held still while the writers' knowledge is read and
            // the images are cut, so both describe one moment.
            let (known, images) = {
                let frozen = fs.freeze();
                let known: Vec<Ledger> =
                    ledgers.iter().map(|l| l.lock().unwrap().clone()).collect();
                let mut rng = rng.lock().unwrap();
                let images: Vec<SimFs> = (0..IMAGES_PER_SYNC)
                    .map(|i| frozen.crash_image(if i == 0 { None } else { Some(&mut rng) }))
                    .collect();
                (known, images)
            };
            for (i, image) in images.iter().enumerate() {
                let what = if i == 0 {
                    "exact image".to_string()
                } else {
                    format!("torn image {i}")
                };
                check(image, &known, &what, &outcome);
            }
        })
    };
    let sim = SimFs::new(faults).with_hook(hook);
    sim.create_dir_all(Path::new("/sim")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let recovered = storage::open(&sim, &data_path(), 4).unwrap();
        let commit = GroupCommit::start(
            Arc::new(Memory::new(recovered.store, Arc::default())),
            recovered.segment,
            recovered.last_seq,
            Settings {
                sync: SyncMode::Always,
                sync_interval: Duration::from_secs(1),
                // Small, so snapshots and log rotation happen all the time.
                snapshot_after_bytes: 1500,
                data: data_path(),
                fs: Arc::new(sim.clone()),
            },
        )
        .unwrap();
        let commit = Arc::new(commit);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let committer = commit.clone();
                let ledgers = ledgers.clone();
                tokio::spawn(async move {
                    let mut rng = Rng::new(seed ^ ((w as u64 + 1) * 7919));
                    let key = |k: usize| Bytes::from(format!("w{w}:k{k}"));
                    for i in 0..ops_per_writer {
                        let value = Bytes::from(format!("w{w}:i{i}"));
                        let (op, effects): (Change, _) = match rng.below(10) {
                            0..=5 => {
                                let k = key(rng.below(KEYS_PER_WRITER));
                                let set = WriteOp::Set {
                                    key: k.clone(),
                                    value: value.clone(),
                                };
                                (set.into(), vec![(k, Some(value))])
                            }
                            6..=7 => {
                                let k = key(rng.below(KEYS_PER_WRITER));
                                (WriteOp::Delete { key: k.clone() }.into(), vec![(k, None)])
                            }
                            8 => {
                                let items: Vec<_> = (0..KEYS_PER_WRITER)
                                    .map(|k| (key(k), value.clone()))
                                    .collect();
                                let effects = items
                                    .iter()
                                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                                    .collect();
                                (WriteOp::BulkSet { items }.into(), effects)
                            }
                            // A transaction: every even key set, every odd
                            // one removed, as one record.
                            _ => {
                                let effects: Vec<_> = (0..KEYS_PER_WRITER)
                                    .map(|k| (key(k), (k % 2 == 0).then(|| value.clone())))
                                    .collect();
                                let steps = (effects.iter())
                                    .map(|(key, value)| {
                                        let key = key.clone();
                                        TxnStep::Write(Change::Write(match value {
                                            Some(value) => WriteOp::Set {
                                                key,
                                                value: value.clone(),
                                            },
                                            None => WriteOp::Delete { key },
                                        }))
                                    })
                                    .collect();
                                let txn = Change::Txn {
                                    compare: Vec::new(),
                                    success: steps,
                                    failure: Vec::new(),
                                };
                                (txn, effects)
                            }
                        };
                        ledgers[w].lock().unwrap().in_flight = effects.clone();
                        let outcome = committer.submit(op).await.unwrap().wait().await;
                        outcome.expect("the simulated disk never fails a write");
                        let mut ledger = ledgers[w].lock().unwrap();
                        ledger.acked.extend(effects);
                        ledger.in_flight.clear();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        commit.close().await.unwrap();
    });
    // And the disk as the clean shutdown left it.
    let known: Vec<Ledger> = ledgers.iter().map(|l| l.lock().unwrap().clone()).collect();
    check(&sim.crash_image(None), &known, "after shutdown", &outcome);
    outcome
}

#[test]
fn every_power_cut_recovers_every_acknowledged_write() {
    let outcome = run(Faults::default(), 1200, 1);
    let violations = outcome.violations.lock().unwrap();
    let images = outcome.images.load(Ordering::Relaxed);
    assert!(
        violations.is_empty(),
        "{} violations in {images} images, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    assert!(images >= 10_000, "only {images} crash images were checked");
    println!("{images} crash images, all recovered every acknowledged write");
}

#[test]
fn the_checker_notices_file_syncs_that_do_nothing() {
    let outcome = run(
        Faults {
            noop_file_sync: true,
            ..Faults::default()
        },
        40,
        2,
    );
    assert!(
        !outcome.violations.lock().unwrap().is_empty(),
        "lost fdatasyncs went unnoticed"
    );
}

#[test]
fn the_checker_notices_a_rename_whose_directory_was_never_synced() {
    let outcome = run(
        Faults {
            noop_dir_sync_after_rename: true,
            ..Faults::default()
        },
        150,
        3,
    );
    let violations = outcome.violations.lock().unwrap();
    assert!(
        !violations.is_empty(),
        "a snapshot rename that never became durable went unnoticed"
    );
}
