//! The active sweep (docs/design/expiry.md): removes the keys whose
//! deadline has passed, a bounded batch at a time, as logged writes.
//!
//! Reads hide an expired key at once; the sweep frees what it holds. Every
//! [`TICK`] it takes up to [`BATCH`] due keys, earliest first, and writes one
//! `Expire { keys, now }` through the log like any other write (durable
//! before it is applied; in cluster mode proposed by the group's leader), so
//! a replay or a follower removes the same keys. While it finds full batches
//! it goes on, for at most [`BUDGET`] a tick, like Redis's adaptive expire
//! cycle: a mass expiry takes a share of the write path, never all of it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{Applied, Engine};
use crate::error::Error;
use crate::storage::clock::Clock;
use crate::storage::op::WriteOp;

pub const TICK: Duration = Duration::from_millis(100);
/// Keys removed by one write.
pub const BATCH: usize = 1000;
/// How long one tick goes on while it finds full batches.
pub const BUDGET: Duration = Duration::from_millis(25);

/// Where a sweep's removals are written: the log, or a group's leader.
pub type Write = Arc<dyn Fn(WriteOp) -> BoxFuture<'static, Result<Applied, Error>> + Send + Sync>;

/// One tick of the sweep over `engine`: how many keys it removed.
pub async fn sweep_once(
    engine: &Arc<dyn Engine>,
    clock: &Clock,
    write: &Write,
) -> Result<u64, Error> {
    let started = Instant::now();
    let mut removed = 0;
    loop {
        let now = clock.now_ms();
        let due = {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || engine.due(now, BATCH))
                .await
                .map_err(|e| Error::StorageFailed(format!("the sweep's read failed: {e}")))??
        };
        let full = due.len() == BATCH;
        if due.is_empty() {
            break;
        }
        match write(WriteOp::Expire { keys: due, now }).await? {
            Applied::Removed(keys) => removed += keys.len() as u64,
            // Through Raft the outcome is a count.
            Applied::Int(n) => removed += n as u64,
            _ => {}
        }
        if !full || started.elapsed() >= BUDGET {
            break;
        }
    }
    Ok(removed)
}

/// Runs `sweep` every [`TICK`] until `token` is cancelled. A failure is
/// logged once (until a sweep works again) and the next tick tries again.
pub async fn every_tick<F, S>(token: CancellationToken, mut sweep: S)
where
    S: FnMut() -> F,
    F: Future<Output = Result<(), Error>>,
{
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    while token.run_until_cancelled(tick.tick()).await.is_some() {
        match sweep().await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("the expiry sweep failed, it tries again each tick: {e}");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use parking_lot::Mutex;

    use super::*;
    use crate::engine::memory::Memory;
    use crate::storage::store::Store;

    /// Due keys go in writes of at most `BATCH`, earliest first, and only
    /// they go; a tick that finds none writes nothing.
    #[tokio::test]
    async fn the_sweep_removes_due_keys_in_bounded_writes() {
        let clock = Clock::manual(1_000);
        let store = Arc::new(Store::with_clock(4, clock.clone()));
        let engine: Arc<dyn Engine> = Arc::new(Memory::new(store, Arc::default()));
        let timed = |i: u64, at| WriteOp::SetExpiring {
            key: Bytes::from(format!("k{i}")),
            value: Bytes::from_static(b"v"),
            at,
        };
        let ops: Vec<WriteOp> = (0..2_500)
            .map(|i| timed(i, 500 + i % 7))
            .chain((0..10).map(|i| timed(10_000 + i, 5_000)))
            .collect();
        engine
            .apply(&ops.iter().map(|op| (op, 1)).collect::<Vec<_>>(), 1)
            .unwrap();
        let writes = Arc::new(Mutex::new(Vec::new()));
        let write: Write = {
            let (engine, writes) = (engine.clone(), writes.clone());
            Arc::new(move |op| {
                let (engine, writes) = (engine.clone(), writes.clone());
                Box::pin(async move {
                    let WriteOp::Expire { keys, now } = &op else {
                        panic!("the sweep wrote {op:?}");
                    };
                    writes.lock().push((keys.len(), *now));
                    let position = writes.lock().len() as u64 + 1;
                    Ok(engine.apply(&[(&op, position)], position)?.remove(0))
                })
            })
        };
        let mut removed = 0;
        // A slow machine may cut a tick short: a few ticks remove them all.
        for _ in 0..10 {
            removed += sweep_once(&engine, &clock, &write).await.unwrap();
        }
        assert_eq!((removed, engine.len()), (2_500, 10));
        let writes = writes.lock().clone();
        assert!(
            writes.iter().all(|&(n, now)| n <= BATCH && now == 1_000),
            "{writes:?}"
        );
        assert_eq!(writes.iter().map(|(n, _)| n).sum::<usize>(), 2_500);
        assert!(writes.len() >= 3);

        clock.set(5_000);
        assert_eq!(sweep_once(&engine, &clock, &write).await.unwrap(), 10);
        assert_eq!(sweep_once(&engine, &clock, &write).await.unwrap(), 0);
        assert!(engine.is_empty());
    }
}
