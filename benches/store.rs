//! The store's hot paths, and the measurement behind its shard count and lock
//! type: `cargo bench --bench store`.
//!
//! `concurrent/*` runs two threads (this machine has two cores), shaped like
//! the server: one applies BulkSets of 100 random keys (the group-commit
//! thread), the other does gets on random keys (a connection), against stores
//! with different shard counts; `lock/*` compares a read-write lock with a
//! mutex on one map under two readers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kvstore::storage::op::WriteOp;
use kvstore::storage::store::Store;

const KEYS: u64 = 100_000;
const OPS_PER_THREAD: u64 = 20_000;

/// Keys made once, so the benchmarks measure the store, not `format!`.
fn keys() -> &'static [Bytes] {
    static KEYS_CELL: std::sync::OnceLock<Vec<Bytes>> = std::sync::OnceLock::new();
    KEYS_CELL.get_or_init(|| {
        (0..KEYS)
            .map(|i| Bytes::from(format!("key:{i:08}")))
            .collect()
    })
}

fn key(i: u64) -> Bytes {
    keys()[(i % KEYS) as usize].clone()
}

fn filled(shards: usize) -> Arc<Store> {
    let store = Arc::new(Store::new(shards));
    let value = Bytes::from(vec![b'x'; 100]);
    for i in 0..KEYS {
        let set = WriteOp::Set {
            key: key(i),
            value: value.clone(),
        };
        store.apply_at(&set, i + 1);
    }
    store
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Time for two threads to do `OPS_PER_THREAD` operations each; thread `t`
/// calls `op(t, random)`.
fn two_threads(iters: u64, op: impl Fn(u64, u64) + Sync) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let op = &op;
                s.spawn(move || {
                    let mut state = 0x2545_F491_4F6C_DD1D ^ (t + 1);
                    for _ in 0..OPS_PER_THREAD {
                        op(t, xorshift(&mut state));
                    }
                });
            }
        });
    }
    started.elapsed()
}

fn concurrent(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrent");
    let value = Bytes::from(vec![b'y'; 100]);
    for shards in [1usize, 4, 16, 64, 256] {
        let store = filled(shards);
        group.bench_with_input(
            BenchmarkId::new("bulkset100_vs_get", shards),
            &shards,
            |b, _| {
                b.iter_custom(|iters| {
                    two_threads(iters, |thread, r| {
                        if thread == 0 {
                            if r % 100 == 0 {
                                let items = (0..100)
                                    .map(|j| (key(r + j * 7919), value.clone()))
                                    .collect();
                                store.apply_at(&WriteOp::BulkSet { items }, r);
                            }
                        } else {
                            std::hint::black_box(store.get(&key(r)));
                        }
                    })
                })
            },
        );
    }
    group.finish();
}

fn lock(c: &mut Criterion) {
    let mut group = c.benchmark_group("lock");
    let map: BTreeMap<Bytes, Bytes> = (0..KEYS)
        .map(|i| (key(i), Bytes::from_static(b"v")))
        .collect();
    let rw = parking_lot::RwLock::new(map.clone());
    let mutex = parking_lot::Mutex::new(map);
    group.bench_function("rwlock_two_readers", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |_, r| {
                drop(std::hint::black_box(rw.read().get(&key(r)).cloned()))
            })
        })
    });
    group.bench_function("mutex_two_readers", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |_, r| {
                drop(std::hint::black_box(mutex.lock().get(&key(r)).cloned()))
            })
        })
    });
    group.finish();
}

fn single(c: &mut Criterion) {
    let store = filled(64);
    let mut i = 0u64;
    c.bench_function("get_hit", |b| {
        b.iter(|| {
            i += 7919;
            std::hint::black_box(store.get(&key(i)))
        })
    });
    c.bench_function("keys_page_100", |b| {
        b.iter(|| std::hint::black_box(store.keys(b"key:0001", None, 100, usize::MAX)))
    });
}

criterion_group!(benches, concurrent, lock, single);
criterion_main!(benches);
