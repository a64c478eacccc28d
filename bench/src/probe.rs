//! `--fsync-probe DIR`: the cost of making one small append durable on the
//! disk under DIR, without any server: the floor under a one-connection
//! durable write's latency (that write also pays a network round trip).
//!
//! It appends records of 128 bytes (about a 100-byte Set in kvstore's log) to
//! a new file and calls `fdatasync` after each, as a log with one writer does.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Syncs measured; the first few are not counted (the file's first blocks).
const SYNCS: u64 = 2_000;
const WARM_UP: u64 = 50;

/// Microseconds per append + `fdatasync`, as a histogram.
pub fn fsync_latency(dir: &Path) -> anyhow::Result<Histogram<u64>> {
    let path = dir.join(format!("kvstore-bench-fsync-probe-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    let measured = (|| {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let record = [0x5au8; 128];
        for i in 0..WARM_UP + SYNCS {
            let started = Instant::now();
            file.write_all(&record)?;
            file.sync_data()?;
            if i >= WARM_UP {
                latency.record(started.elapsed().as_micros().max(1) as u64)?;
            }
        }
        anyhow::Ok(latency)
    })();
    std::fs::remove_file(&path)?;
    measured
}

/// One line: the percentiles in microseconds.
pub fn describe(latency: &Histogram<u64>) -> String {
    format!(
        "append 128 B + fdatasync, {} times: p50 {} us, p90 {} us, p99 {} us, max {} us",
        latency.len(),
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.9),
        latency.value_at_quantile(0.99),
        latency.max()
    )
}
