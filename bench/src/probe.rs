//! `--fsync-probe DIR`: the cost of making one small append durable on the
//! disk under DIR, without any server: the floor under a one-connection
//! durable write's latency (that write also pays a network round trip).
//!
//! It writes records of 128 bytes (about a 100-byte Set in kvstore's log) to
//! a new file and calls `fdatasync` after each, as a log with one writer
//! does: over zeros written and synced beforehand (as kvstore's log writes
//! zeros ahead: no new file size to commit), and, for comparison, appended
//! to a growing file (as Redis's append-only file is).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Syncs measured; the first few are not counted (the file's first blocks).
const SYNCS: u64 = 2_000;
const WARM_UP: u64 = 50;

/// How the probe's records reach the file.
#[derive(Clone, Copy)]
pub enum Mode {
    /// Over zeros written and synced beforehand.
    Overwrite,
    /// At the end of a growing file.
    Append,
}

/// Microseconds per record written + `fdatasync`, as a histogram.
pub fn fsync_latency(dir: &Path, mode: Mode) -> anyhow::Result<Histogram<u64>> {
    let path = dir.join(format!("kvstore-bench-fsync-probe-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let measured = measure(&mut file, mode);
    std::fs::remove_file(&path)?;
    measured
}

fn measure(file: &mut File, mode: Mode) -> anyhow::Result<Histogram<u64>> {
    let record = [0x5au8; 128];
    let len = (WARM_UP + SYNCS) * record.len() as u64;
    if let Mode::Overwrite = mode {
        file.write_all(&vec![0; len as usize])?;
        file.sync_data()?;
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for (i, offset) in (0..len).step_by(record.len()).enumerate() {
        let started = Instant::now();
        file.write_all_at(&record, offset)?;
        file.sync_data()?;
        if i as u64 >= WARM_UP {
            latency.record(started.elapsed().as_micros().max(1) as u64)?;
        }
    }
    Ok(latency)
}

/// One line: the percentiles in microseconds.
pub fn describe(latency: &Histogram<u64>, mode: Mode) -> String {
    let what = match mode {
        Mode::Overwrite => "write 128 B over zeros + fdatasync",
        Mode::Append => "append 128 B + fdatasync",
    };
    format!(
        "{what}, {} times: p50 {} us, p90 {} us, p99 {} us, max {} us",
        latency.len(),
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.9),
        latency.value_at_quantile(0.99),
        latency.max()
    )
}
