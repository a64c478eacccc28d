//! A Markdown table of ratios from the CSV: for each pair `A:B` given with
//! `--compare`, every workload both measured, with A's and B's mean
//! requests/s, the ratio A/B, and both p99 latencies. Nothing is hidden: a
//! workload where A is slower shows a ratio under 1 and says so.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::report::{read_csv, Row};

/// What makes two rows the same workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Workload {
    test: String,
    connections: usize,
    pipeline: usize,
    value_size: usize,
    bulk: usize,
}

impl Workload {
    fn of(row: &Row) -> Workload {
        Workload {
            test: row.test.clone(),
            connections: row.connections,
            pipeline: row.pipeline,
            value_size: row.value_size,
            bulk: row.bulk,
        }
    }

    fn describe(&self) -> String {
        let test = match self.test.as_str() {
            "bulkset" => format!("bulkset of {}", self.bulk),
            other => other.to_string(),
        };
        format!(
            "{test}, {} conn, P{}, {} B",
            self.connections, self.pipeline, self.value_size
        )
    }
}

/// Mean requests/s and mean p99 of some rows.
#[derive(Default)]
struct Mean {
    rps: f64,
    p99: f64,
    n: u32,
}

impl Mean {
    fn add(&mut self, row: &Row) {
        self.rps += row.requests_per_sec;
        self.p99 += row.p99_ms;
        self.n += 1;
    }

    fn rps(&self) -> f64 {
        self.rps / f64::from(self.n.max(1))
    }

    fn p99(&self) -> f64 {
        self.p99 / f64::from(self.n.max(1))
    }
}

/// The Markdown text for `pairs` (each `A:B`).
pub fn markdown(csv: &Path, pairs: &[String]) -> anyhow::Result<String> {
    let rows = read_csv(csv)?;
    let mut means: BTreeMap<(Workload, String), Mean> = BTreeMap::new();
    for row in &rows {
        means
            .entry((Workload::of(row), row.system.clone()))
            .or_default()
            .add(row);
    }
    let workloads: Vec<Workload> = {
        let mut w: Vec<_> = means.keys().map(|(w, _)| w.clone()).collect();
        w.dedup();
        w
    };
    let mut out = String::new();
    for pair in pairs {
        let (a, b) = pair
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--compare takes A:B, got {pair:?}"))?;
        writeln!(out, "### {a} / {b}\n")?;
        writeln!(
            out,
            "| workload | {a} req/s | {b} req/s | {a} / {b} | {a} p99 ms | {b} p99 ms | |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---|")?;
        for workload in &workloads {
            let (Some(x), Some(y)) = (
                means.get(&(workload.clone(), a.to_string())),
                means.get(&(workload.clone(), b.to_string())),
            ) else {
                continue;
            };
            let ratio = x.rps() / y.rps().max(1e-9);
            let verdict = if ratio >= 1.0 {
                format!("{a} faster")
            } else {
                format!("**{a} slower**")
            };
            writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.2} | {:.3} | {:.3} | {verdict} |",
                workload.describe(),
                x.rps(),
                y.rps(),
                ratio,
                x.p99(),
                y.p99()
            )?;
        }
        writeln!(out)?;
    }
    Ok(out)
}
