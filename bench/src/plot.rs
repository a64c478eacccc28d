//! PNG charts of the rows of a CSV file: per test, requests/s against the
//! connection count, and the latency percentiles, one line per system (and
//! pipeline depth). Rows that repeat a point (several rounds) are averaged.
//!
//! Text is drawn with DejaVu Sans read at run time (Debian's
//! `fonts-dejavu-core`; `KVSTORE_BENCH_FONT` names another TTF file), so
//! nothing links a system font library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::{read_csv, Row};

/// Where a sans-serif font is looked for.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let path = std::env::var_os("KVSTORE_BENCH_FONT")
        .map(PathBuf::from)
        .or_else(|| FONTS.iter().map(PathBuf::from).find(|p| p.exists()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no font for the charts: install fonts-dejavu-core or set KVSTORE_BENCH_FONT to a .ttf file"
            )
        })?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(&path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a usable TTF font", path.display()))
}

/// One line of a chart: the system and its pipeline depth.
fn series_name(row: &Row) -> String {
    if row.pipeline > 1 {
        format!("{} P{}", row.system, row.pipeline)
    } else {
        row.system.clone()
    }
}

/// Writes the charts for every test in `csv` into `dir`; returns their paths.
pub fn charts(csv: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let rows = read_csv(csv)?;
    anyhow::ensure!(!rows.is_empty(), "{} has no rows to plot", csv.display());
    register_font()?;
    std::fs::create_dir_all(dir)?;
    let mut tests: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        tests.entry(&row.test).or_default().push(row);
    }
    let mut written = Vec::new();
    for (test, rows) in tests {
        let path = dir.join(format!("throughput-{test}.png"));
        throughput(&path, test, &rows)?;
        written.push(path);
        let path = dir.join(format!("latency-{test}.png"));
        latency(&path, test, &rows)?;
        written.push(path);
    }
    Ok(written)
}

/// Averages the rows of each (series, connections) point.
fn points(rows: &[&Row], value: impl Fn(&Row) -> f64) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut sums: BTreeMap<(String, usize), (f64, u32)> = BTreeMap::new();
    for row in rows {
        let entry = sums.entry((series_name(row), row.connections)).or_default();
        entry.0 += value(row);
        entry.1 += 1;
    }
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for ((name, connections), (sum, n)) in sums {
        series
            .entry(name)
            .or_default()
            .push((connections as f64, sum / f64::from(n)));
    }
    series
}

fn throughput(path: &Path, test: &str, rows: &[&Row]) -> anyhow::Result<()> {
    let series = points(rows, |r| r.requests_per_sec);
    let max_x = rows.iter().map(|r| r.connections).max().unwrap_or(1) as f64;
    let max_y = series
        .values()
        .flatten()
        .map(|&(_, y)| y)
        .fold(1.0, f64::max);
    draw(
        path,
        &format!("{test}: requests/s by connections"),
        ("connections", "requests/s"),
        (0.0..max_x * 1.1 + 1.0, 0.0..max_y * 1.15),
        &series,
        None,
    )
}

/// Latency percentiles at the highest connection count of each series.
fn latency(path: &Path, test: &str, rows: &[&Row]) -> anyhow::Result<()> {
    const LABELS: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];
    let mut by_series: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        by_series.entry(series_name(row)).or_default().push(row);
    }
    let mut series = BTreeMap::new();
    for (name, rows) in by_series {
        let top = rows.iter().map(|r| r.connections).max().unwrap_or(0);
        let at_top: Vec<&Row> = rows.into_iter().filter(|r| r.connections == top).collect();
        let mean =
            |f: fn(&Row) -> f64| at_top.iter().map(|r| f(r)).sum::<f64>() / at_top.len() as f64;
        let values = [
            mean(|r| r.p50_ms),
            mean(|r| r.p90_ms),
            mean(|r| r.p99_ms),
            mean(|r| r.p999_ms),
            mean(|r| r.max_ms),
        ];
        series.insert(
            format!("{name} ({top} conns)"),
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as f64, v))
                .collect(),
        );
    }
    let max_y = series
        .values()
        .flatten()
        .map(|&(_, y): &(f64, f64)| y)
        .fold(0.001, f64::max);
    draw(
        path,
        &format!("{test}: latency percentiles"),
        ("percentile", "milliseconds"),
        (-0.2..4.2, 0.0..max_y * 1.15),
        &series,
        Some(&LABELS),
    )
}

/// One line chart; `x_labels` names integer x positions.
fn draw(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    (xs, ys): (std::ops::Range<f64>, std::ops::Range<f64>),
    series: &BTreeMap<String, Vec<(f64, f64)>>,
    x_labels: Option<&[&str]>,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(84)
        .build_cartesian_2d(xs, ys.clone())?;
    // Latencies under 10 ms need decimals; throughputs do not.
    let decimals = if ys.end < 10.0 { 2 } else { 0 };
    let label_x = |x: &f64| match x_labels {
        Some(labels) if (x.round() - x).abs() < 1e-6 && *x >= 0.0 => labels
            .get(x.round() as usize)
            .map_or(String::new(), |l| l.to_string()),
        Some(_) => String::new(),
        None => format!("{x:.0}"),
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&label_x)
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).mix(0.9);
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
