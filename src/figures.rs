//! The server's figures: one list, read by the native `Stats` command and
//! served in the Prometheus text format on `--metrics-listen`
//! (`crate::metrics`), so the two always agree.
//!
//! A figure's name is a Prometheus series without the `kvstore_` prefix,
//! labels included (`commands_total{door="native",command="Set"}`). Counters
//! count since the process started; gauges are current values. Percentiles
//! are over every event since start. The figures are read one by one, not at
//! one instant (docs/operations.md lists and explains them).

use std::fmt::Write;

use kvstore_client::protocol::COMMAND_NAMES;
use kvstore_client::ErrorCode;

use crate::commit::{LogFigures, Percentiles};
use crate::db::Db;
use crate::stats::Stats;

/// The quantiles reported for the fsync latency and the batch size.
const QUANTILES: [(f64, &str); 4] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Clone)]
pub struct Figure {
    /// The metric's name, without the `kvstore_` prefix.
    pub name: &'static str,
    /// Label pairs, in order.
    pub labels: Vec<(&'static str, String)>,
    pub kind: Kind,
    /// One line for `# HELP`.
    pub help: &'static str,
    pub value: i64,
}

impl Figure {
    /// The series name with its labels: `name{a="x",b="y"}`.
    pub fn series(&self) -> String {
        if self.labels.is_empty() {
            return self.name.to_string();
        }
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// Prometheus label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn n(counter: &std::sync::atomic::AtomicU64) -> i64 {
    Stats::get(counter) as i64
}

/// Every figure, now.
pub fn collect(db: &Db) -> Vec<Figure> {
    let mut out = Vec::new();
    let mut add = |name, labels: Vec<(&'static str, String)>, kind, help, value: i64| {
        out.push(Figure {
            name,
            labels,
            kind,
            help,
            value,
        })
    };
    use Kind::{Counter, Gauge};
    let stats = &db.stats;
    let engine = db.engine();
    let (key_bytes, value_bytes) = engine.bytes();

    add(
        "build_info",
        vec![("version", env!("CARGO_PKG_VERSION").to_string())],
        Gauge,
        "Always 1; the label is the server's version.",
        1,
    );
    add(
        "uptime_seconds",
        vec![],
        Gauge,
        "Seconds since the server started.",
        stats.started.elapsed().as_secs() as i64,
    );
    add("keys", vec![], Gauge, "Keys stored.", engine.len() as i64);
    add(
        "key_bytes",
        vec![],
        Gauge,
        "Bytes of all keys stored.",
        key_bytes as i64,
    );
    add(
        "value_bytes",
        vec![],
        Gauge,
        "Bytes of all values stored.",
        value_bytes as i64,
    );
    add(
        "connections",
        vec![],
        Gauge,
        "Connections being served, all doors.",
        n(&stats.connections),
    );
    add(
        "connections_total",
        vec![],
        Counter,
        "Connections accepted, all doors.",
        n(&stats.connections_total),
    );
    add(
        "connections_rejected_total",
        vec![],
        Counter,
        "Connections refused at the connection limit.",
        n(&stats.connections_rejected),
    );
    add(
        "commands_last_second",
        vec![],
        Gauge,
        "Requests in the last whole second, all doors: the node's load.",
        n(&stats.commands_last_second),
    );
    for (tag, name) in COMMAND_NAMES.iter().enumerate() {
        add(
            "commands_total",
            vec![("door", "native".into()), ("command", name.to_string())],
            Counter,
            "Requests by door and command.",
            n(&stats.native_commands[tag]),
        );
    }
    for (slot, name) in crate::grpc::service::METHODS.iter().enumerate() {
        add(
            "commands_total",
            vec![("door", "grpc".into()), ("command", name.to_string())],
            Counter,
            "Requests by door and command.",
            n(&stats.grpc_calls[slot]),
        );
    }
    let native: i64 = stats.native_commands.iter().map(n).sum();
    let grpc: i64 = stats.grpc_calls.iter().map(n).sum();
    add(
        "commands_total",
        vec![("door", "resp".into()), ("command", "all".into())],
        Counter,
        "Requests by door and command.",
        n(&stats.commands) - native - grpc,
    );
    for code in (1..crate::stats::SLOTS as u32).filter_map(ErrorCode::from_code) {
        add(
            "errors_total",
            vec![("code", format!("{code:?}"))],
            Counter,
            "Error replies of the native and gRPC doors, by error code.",
            n(&stats.errors[code as usize]),
        );
    }
    add(
        "log_failed",
        vec![],
        Gauge,
        "1 once a log write or fdatasync has failed (writes refused until restart).",
        i64::from(db.log().failure().is_some()),
    );
    // The single-node log's own figures; cluster mode's are openraft's.
    if let Some(log) = db.log().figures() {
        log_figures(&mut add, log);
    }
    let tees = db.tees();
    add(
        "backups_running",
        vec![],
        Gauge,
        "Backups copying the store now (streamed or into --backup-dir).",
        tees.running() as i64,
    );
    add(
        "backups_total",
        vec![("outcome", "ok".into())],
        Counter,
        "Backups since start, by outcome (a streamed one counts once its last chunk is out).",
        n(&tees.completed),
    );
    add(
        "backups_total",
        vec![("outcome", "failed".into())],
        Counter,
        "Backups since start, by outcome (a streamed one counts once its last chunk is out).",
        n(&tees.failed),
    );
    out
}

/// A summary in the Prometheus manner: one series per quantile under the
/// first name, then the largest value and the count under the other two.
/// The figures of the single-node log (`crate::commit`).
fn log_figures(
    add: &mut impl FnMut(&'static str, Vec<(&'static str, String)>, Kind, &'static str, i64),
    log: &LogFigures,
) {
    use Kind::{Counter, Gauge};
    add(
        "log_records_total",
        vec![],
        Counter,
        "Records written to the log.",
        n(&log.records),
    );
    add(
        "log_records_since_snapshot",
        vec![],
        Gauge,
        "Log records written since the last snapshot began (replayed by a restart).",
        n(&log.records_since_snapshot),
    );
    add(
        "log_segment_bytes",
        vec![],
        Gauge,
        "Bytes in the current log segment (written since the last snapshot began).",
        n(&log.segment_bytes),
    );
    add(
        "fsyncs_total",
        vec![],
        Counter,
        "Successful fdatasync calls on the log.",
        n(&log.syncs),
    );
    percentiles(
        add,
        [
            "fsync_latency_us",
            "fsync_latency_us_max",
            "fsync_latency_us_count",
        ],
        "fdatasync latency of the log, microseconds, since start.",
        &log.fsync_us,
    );
    percentiles(
        add,
        ["batch_records", "batch_records_max", "batch_records_count"],
        "Records per group-commit batch, since start.",
        &log.batch_records,
    );
    add(
        "snapshots_total",
        vec![],
        Counter,
        "Snapshots written since start.",
        n(&log.snapshots),
    );
    add(
        "last_snapshot_unix_seconds",
        vec![],
        Gauge,
        "When the last snapshot was written (0: none since start).",
        n(&log.last_snapshot_unix),
    );
    add(
        "last_snapshot_duration_ms",
        vec![],
        Gauge,
        "How long the last snapshot took to write, milliseconds.",
        n(&log.last_snapshot_ms),
    );
}

fn percentiles(
    add: &mut impl FnMut(&'static str, Vec<(&'static str, String)>, Kind, &'static str, i64),
    [name, max_name, count_name]: [&'static str; 3],
    help: &'static str,
    of: &Percentiles,
) {
    let quantiles: Vec<f64> = QUANTILES.iter().map(|(q, _)| *q).collect();
    let (count, at, max) = of.read(&quantiles);
    for ((_, label), value) in QUANTILES.iter().zip(at) {
        add(
            name,
            vec![("quantile", label.to_string())],
            Kind::Gauge,
            help,
            value as i64,
        );
    }
    add(max_name, vec![], Kind::Gauge, help, max as i64);
    add(count_name, vec![], Kind::Counter, help, count as i64);
}

/// The figures as the `Stats` reply carries them.
pub fn named(figures: &[Figure]) -> Vec<(String, i64)> {
    figures.iter().map(|f| (f.series(), f.value)).collect()
}

/// The figures in the Prometheus text exposition format (version 0.0.4):
/// `# HELP` and `# TYPE` once per metric, then its series.
pub fn prometheus(figures: &[Figure]) -> String {
    let mut text = String::new();
    let mut last = "";
    for f in figures {
        if f.name != last {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(text, "# HELP kvstore_{} {}", f.name, f.help);
            let _ = writeln!(text, "# TYPE kvstore_{} {kind}", f.name);
            last = f.name;
        }
        let _ = writeln!(text, "kvstore_{} {}", f.series(), f.value);
    }
    text
}
