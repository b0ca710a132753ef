//! The "PKCS#11 Operation Analysis": summary, per-function performance, frequency, return codes,
//! per-process and per-provider breakdowns, session lifecycle, potential issues and the list of
//! operations. Computed with polars over the `calls` table; the JSON keys are documented in
//! `schemas/analysis.md` and stable.

pub mod expected;
mod issues;
mod ranks;
pub mod render;
mod report;
mod rollup;
mod scan;
mod sessions;
mod tally;
pub mod units;

use std::path::PathBuf;

use crate::Explain;
use crate::filters::Criteria;
use anyhow::Result;
use polars::prelude::*;

pub use report::*;
pub use sessions::Sessions;

/// Schema version of the analysis JSON (`schemas/analysis.md`).
/// Version 2: `failed` counts real failures only; the protocol's idioms (a size query retried,
/// attribute and mechanism probes) are `expected_nonok` apart; durations in nanosecond precision.
pub const ANALYSIS_VERSION: u32 = 2;

/// How much of the call list to include.
#[derive(Debug, Clone, Copy)]
pub struct AnalyzeOptions {
    /// Most calls listed in `operations` (0 = all); `None`: list none (the text reports do not
    /// show them, and ordering 10 M calls costs a second).
    pub max_operations: Option<usize>,
    /// No call faster than this is a slow outlier, whatever its function's percentiles.
    pub slow_floor_ns: f64,
}

/// The default of `--slow-floor`: 1 ms, slower than any call a token answers from memory.
pub const DEFAULT_SLOW_FLOOR_NS: f64 = 1e6;

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            max_operations: None,
            slow_floor_ns: DEFAULT_SLOW_FLOOR_NS,
        }
    }
}

/// Nanoseconds as milliseconds, kept to the nanosecond (6 decimals).
fn ms(ns: Option<f64>) -> Option<f64> {
    ns.map(|ns| ns.round() / 1_000_000.0)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10_000.0 / whole as f64).round() / 100.0
    }
}

/// `rv` is not CKR_OK (and the call returned).
pub fn not_ok() -> Expr {
    col("rv").neq(lit(0i64)).and(col("rv").is_not_null())
}

/// Analyses the calls of `files` that `criteria` keeps; `calls` is the same calls as a polars
/// frame, read only for the JSON `operations` list.
pub fn analyze(
    files: &[PathBuf],
    criteria: &Criteria,
    calls: LazyFrame,
    options: AnalyzeOptions,
) -> Result<Report> {
    let tally = scan::read(files, criteria)?;
    let totals = rollup::totals(&tally);
    let functions = rollup::functions(&tally, options.slow_floor_ns);
    let total = totals.total;
    let total_ns = totals.total_ns;
    let mut performance = std::collections::BTreeMap::new();
    let mut frequency = Vec::new();
    let mut slowest = Vec::new();
    for function in &functions {
        let (func, stats) = (&function.func, &function.stats);
        let share = match (stats.total_ns(), total_ns) {
            (Some(part), Some(whole)) if whole > 0.0 => {
                Some((part * 10_000.0 / whole).round() / 100.0)
            }
            _ => None,
        };
        if let (Some(total_ms), Some(share_percent)) = (ms(stats.total_ns()), share) {
            slowest.push(Slowest {
                func: func.clone(),
                total_ms,
                share_percent,
            });
        }
        frequency.push(Frequency {
            func: func.clone(),
            count: stats.count,
            percent: percent(stats.count, total),
        });
        performance.insert(
            func.clone(),
            FunctionStats {
                count: stats.count,
                failed: stats.failed,
                expected_nonok: stats.expected,
                total_ms: ms(stats.total_ns()),
                share_percent: share,
                mean_ms: ms(stats.mean_ns()),
                p50_ms: ms(stats.p50_ns),
                p95_ms: ms(stats.p95_ns),
                p99_ms: ms(stats.p99_ns),
                max_ms: ms(stats.max_ns()),
            },
        );
    }
    slowest.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    let return_codes = rollup::return_codes(&tally)
        .into_iter()
        .map(|(rv, rv_name, expected, count)| ReturnCode {
            rv,
            rv_name,
            expected,
            count,
            percent: percent(count, total),
        })
        .collect();
    let by_process = rollup::processes(&tally);
    let by_provider = rollup::providers(&tally, totals.provider_nulls > 0);
    let sessions = sessions::lifecycle(&tally);
    let issues = issues::find(&tally, &functions, &sessions, options.slow_floor_ns);
    let (operations, truncated) = match options.max_operations {
        Some(max) => operations(calls, &tally, max, total)?,
        None => (Vec::new(), false),
    };
    let (failed, expected) = (totals.failed, totals.expected);
    Ok(Report {
        analysis_version: ANALYSIS_VERSION,
        summary: Summary {
            total_operations: total,
            successful_operations: total.saturating_sub(failed + expected + totals.unreturned),
            failed_operations: failed,
            expected_nonok_operations: expected,
            unreturned_operations: totals.unreturned,
            failure_rate_percent: percent(failed, total),
            total_duration_ms: ms(total_ns),
            first_call: totals.first.map(render::timestamp),
            last_call: totals.last.map(render::timestamp),
            time_span_ms: totals
                .first
                .zip(totals.last)
                .map(|(a, b)| (b - a) as f64 / 1000.0),
            processes: totals.processes,
            clients: totals.clients,
            operations_truncated: truncated,
        },
        performance,
        slowest,
        frequency,
        return_codes,
        by_process,
        by_provider,
        sessions,
        issues,
        operations,
        retried: tally.retried_calls(),
    })
}

/// Columns of an `operations` entry (schema v1 names; `expected` and `dur_ms` added).
const OPERATION_COLUMNS: &[&str] = &[
    "client_id",
    "pid",
    "tid",
    "seq",
    "start",
    "func",
    "rv",
    "rv_name",
    "dur_ns",
    "slot_id",
    "session",
    "mechanism",
    "object",
    "internal",
    "returned",
];

/// The calls in call order, at most `max` (0: all), each marked `expected` by the tally's rules.
fn operations(
    calls: LazyFrame,
    tally: &tally::Calls,
    max: usize,
    total: u64,
) -> Result<(Vec<serde_json::Value>, bool)> {
    let ordered = calls
        .select(
            OPERATION_COLUMNS
                .iter()
                .map(|c| col(*c))
                .collect::<Vec<_>>(),
        )
        .sort(
            ["start", "client_id", "seq"],
            SortMultipleOptions::default()
                .with_nulls_last(true)
                .with_maintain_order(true),
        );
    let limited = if max == 0 {
        ordered
    } else {
        ordered.limit(max as IdxSize)
    };
    let frame = limited.collect().explain("cannot list operations")?;
    let mut operations = render::rows_as_json(&frame)?;
    for operation in &mut operations {
        if let Some(object) = operation.as_object_mut() {
            let number = |key: &str| object.get(key).and_then(serde_json::Value::as_i64);
            let text = |key: &str| object.get(key).and_then(serde_json::Value::as_str);
            let returned = object.get("returned").and_then(serde_json::Value::as_bool);
            let expected = returned == Some(true)
                && tally.is_expected(
                    text("client_id"),
                    number("seq").unwrap_or(i64::MIN),
                    text("func"),
                    number("rv").unwrap_or(i64::MIN),
                );
            let dur_ms = object
                .get("dur_ns")
                .and_then(serde_json::Value::as_f64)
                .map(|ns| ns / 1_000_000.0);
            object.insert(expected::EXPECTED.into(), expected.into());
            object.insert(
                "dur_ms".into(),
                dur_ms.map_or(serde_json::Value::Null, Into::into),
            );
        }
    }
    let truncated = (operations.len() as u64) < total;
    Ok((operations, truncated))
}
