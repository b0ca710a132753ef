//! What the charts of the HTML report draw, computed from the `calls` table: per-function
//! latency quantiles (polars, the same linear quantiles as `analyze`), calls over time per
//! process, the session timeline per thread, and the non-OK return codes per function. The
//! summary tables come from `analyze::Report` itself.

use std::collections::HashMap;

use anyhow::Result;
use polars::prelude::*;

use crate::Explain;
use crate::analyze::expected;
use crate::columns::{bool_at, f64_at, i64_at, str_at};
use crate::filters::not_ok;

use super::timeline::timeline;
pub use super::timeline::{Mark, Phase, SessionBar, Timeline};

/// Buckets of the calls-over-time chart.
pub const BUCKETS: usize = 60;
/// Threads drawn in the session timeline (the busiest; the rest are counted).
pub const MAX_LANES: usize = 24;
/// Calls drawn as marks in the timeline (sessions' opening, login and closing calls first).
pub const MAX_MARKS: usize = 4000;
/// Resolution of the timeline: marks and bars closer than its span / this are drawn as one.
pub(super) const PIXELS: f64 = 1000.0;
/// Processes drawn in the calls-over-time chart (the busiest; the rest are summed as one).
pub const MAX_PROCESSES: usize = 8;

/// One function's latency distribution, in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    pub func: String,
    pub timed: u64,
    pub min: f64,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    pub p95: f64,
    pub max: f64,
}

/// Calls per bucket of one process.
#[derive(Debug, Clone)]
pub struct ProcessSeries {
    pub label: String,
    pub counts: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct OverTime {
    /// Width of a bucket, in seconds.
    pub bucket_s: f64,
    pub series: Vec<ProcessSeries>,
}

/// One non-OK return code of one function.
#[derive(Debug, Clone)]
pub struct ErrorRow {
    pub func: String,
    pub rv: Option<i64>,
    pub rv_name: Option<String>,
    /// One of the protocol's idioms (`analyze`'s rule, schemas/analysis.md), not a failure.
    pub expected: bool,
    pub count: u64,
}

pub struct ChartData {
    pub latency: Vec<Latency>,
    pub over_time: OverTime,
    pub timeline: Timeline,
    pub errors: Vec<ErrorRow>,
}

const COLUMNS: &[&str] = &[
    "client_id",
    "pid",
    "tid",
    "process",
    "start",
    "seq",
    "func",
    "rv",
    "rv_name",
    "session",
    "dur_ns",
    "returned",
];

/// The charts' data; `retried`: the size queries `analyze` found retried.
pub fn compute(calls: LazyFrame, retried: &[(String, i64)]) -> Result<ChartData> {
    let calls = calls
        .select(COLUMNS.iter().map(|c| col(*c)).collect::<Vec<_>>())
        .with_column(col("start").cast(DataType::Int64).alias("start_us"))
        .collect()
        .explain("cannot read the calls")?;
    let calls = expected::mark(calls, retried)
        .explain("cannot classify the return codes")?
        .lazy();
    Ok(ChartData {
        latency: latency(calls.clone())?,
        over_time: over_time(calls.clone())?,
        timeline: timeline(calls.clone())?,
        errors: errors(calls)?,
    })
}

fn latency(calls: LazyFrame) -> Result<Vec<Latency>> {
    let q = |p: f64, name: &str| {
        col("dur_ns")
            .cast(DataType::Float64)
            .quantile(lit(p), QuantileMethod::Linear)
            .alias(name)
    };
    let frame = calls
        .filter(col("dur_ns").is_not_null().and(col("returned")))
        .group_by([col("func")])
        .agg([
            len().alias("timed"),
            col("dur_ns").cast(DataType::Float64).min().alias("min"),
            q(0.25, "q1"),
            q(0.5, "median"),
            q(0.75, "q3"),
            q(0.95, "p95"),
            col("dur_ns").cast(DataType::Float64).max().alias("max"),
        ])
        .sort(
            ["median"],
            SortMultipleOptions::default()
                .with_order_descending(true)
                .with_maintain_order(true),
        )
        .collect()
        .explain("cannot compute latency distributions")?;
    let mut rows = Vec::with_capacity(frame.height());
    for row in 0..frame.height() {
        let value = |name: &str| f64_at(&frame, name, row).unwrap_or(0.0);
        rows.push(Latency {
            func: str_at(&frame, "func", row).unwrap_or_default(),
            timed: i64_at(&frame, "timed", row).unwrap_or(0).max(0) as u64,
            min: value("min"),
            q1: value("q1"),
            median: value("median"),
            q3: value("q3"),
            p95: value("p95"),
            max: value("max"),
        });
    }
    Ok(rows)
}

/// `process (pid)`, or what is known of it.
pub(super) fn process_label(process: Option<&str>, pid: Option<i64>) -> String {
    match (process, pid) {
        (Some(name), Some(pid)) if !name.is_empty() => format!("{name} ({pid})"),
        (_, Some(pid)) => format!("pid {pid}"),
        (Some(name), None) => name.to_owned(),
        (None, None) => "(unknown process)".to_owned(),
    }
}

/// First and last start (µs) of the calls, when any has one.
pub(super) fn bounds(frame: &DataFrame) -> Result<Option<(i64, i64)>> {
    let starts = frame
        .column("start_us")
        .explain("start")?
        .i64()
        .explain("start")?;
    Ok(starts.min().zip(starts.max()))
}

fn over_time(calls: LazyFrame) -> Result<OverTime> {
    let frame = calls
        .filter(col("start_us").is_not_null())
        .select([col("pid"), col("process"), col("start_us")])
        .collect()
        .explain("cannot read call times")?;
    let Some((first, last)) = bounds(&frame)? else {
        return Ok(OverTime::default());
    };
    let span = last.saturating_sub(first).max(1);
    let width = (span as f64 / BUCKETS as f64).max(1.0);
    let pids = frame.column("pid").explain("pid")?.i64().explain("pid")?;
    let names = frame
        .column("process")
        .explain("process")?
        .str()
        .explain("process")?;
    let starts = frame
        .column("start_us")
        .explain("start")?
        .i64()
        .explain("start")?;
    let mut by_process: HashMap<(Option<i64>, Option<&str>), Vec<u64>> = HashMap::new();
    for ((pid, name), start) in pids.iter().zip(names.iter()).zip(starts.iter()) {
        let Some(start) = start else { continue };
        let bucket = ((start.saturating_sub(first) as f64 / width) as usize).min(BUCKETS - 1);
        by_process
            .entry((pid, name))
            .or_insert_with(|| vec![0; BUCKETS])[bucket] += 1;
    }
    let mut series: Vec<ProcessSeries> = by_process
        .into_iter()
        .map(|((pid, name), counts)| ProcessSeries {
            label: process_label(name, pid),
            counts,
        })
        .collect();
    series.sort_by(|a, b| {
        let total = |s: &ProcessSeries| s.counts.iter().sum::<u64>();
        total(b).cmp(&total(a)).then_with(|| a.label.cmp(&b.label))
    });
    if series.len() > MAX_PROCESSES {
        let rest = series.split_off(MAX_PROCESSES - 1);
        let mut counts = vec![0; BUCKETS];
        for s in &rest {
            for (sum, n) in counts.iter_mut().zip(&s.counts) {
                *sum += n;
            }
        }
        series.push(ProcessSeries {
            label: format!("{} other processes", rest.len()),
            counts,
        });
    }
    Ok(OverTime {
        bucket_s: width / 1e6,
        series,
    })
}

fn errors(calls: LazyFrame) -> Result<Vec<ErrorRow>> {
    let frame = calls
        .filter(not_ok())
        .group_by([
            col("func"),
            col("rv"),
            col("rv_name"),
            col(expected::EXPECTED),
        ])
        .agg([len().alias("count")])
        .sort(
            ["count", "func"],
            SortMultipleOptions::default()
                .with_order_descending_multi([true, false])
                .with_maintain_order(true),
        )
        .collect()
        .explain("cannot compute the error table")?;
    Ok((0..frame.height())
        .map(|row| ErrorRow {
            func: str_at(&frame, "func", row).unwrap_or_default(),
            rv: i64_at(&frame, "rv", row),
            rv_name: str_at(&frame, "rv_name", row),
            expected: bool_at(&frame, expected::EXPECTED, row),
            count: i64_at(&frame, "count", row).unwrap_or(0).max(0) as u64,
        })
        .collect())
}
