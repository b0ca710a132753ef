//! The "PKCS#11 Operation Analysis": summary, per-function performance, frequency, return codes,
//! per-process and per-provider breakdowns, session lifecycle, potential issues and the list of
//! operations. Computed with polars over the `calls` table; the JSON keys are documented in
//! `schemas/analysis.md` and stable.

pub mod expected;
mod issues;
pub mod render;
mod report;
mod sessions;
pub mod units;

use crate::Explain;
use crate::columns::{f64_at, i64_at, str_at, u64_at};
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

/// A real failure: not CKR_OK and not an expected idiom (needs the `expected` column).
fn failed() -> Expr {
    not_ok().and(col(expected::EXPECTED).not())
}

/// Sorting for the report's tables: the largest first, ties by `ties` ascending, so a report is
/// the same run to run and on any copy of the dataset (group-by order is not).
trait LargestFirst {
    fn largest_first(self, column: &str, ties: &[&str]) -> LazyFrame;
}

impl LargestFirst for LazyFrame {
    fn largest_first(self, column: &str, ties: &[&str]) -> LazyFrame {
        let columns: Vec<&str> = std::iter::once(column)
            .chain(ties.iter().copied())
            .collect();
        let descending: Vec<bool> = columns.iter().map(|c| *c == column).collect();
        self.sort(
            columns,
            SortMultipleOptions::default()
                .with_order_descending_multi(descending)
                .with_maintain_order(true),
        )
    }
}

/// The sum of a count column of a (small) result frame.
fn column_sum(frame: &DataFrame, column: &str) -> u64 {
    (0..frame.height())
        .map(|row| u64_at(frame, column, row))
        .sum()
}

/// Latency aggregations over `dur_ns`, in nanoseconds.
fn latency_aggs() -> Vec<Expr> {
    let q = |p: f64, name: &str| {
        col("dur_ns")
            .cast(DataType::Float64)
            .quantile(lit(p), QuantileMethod::Linear)
            .alias(name)
    };
    vec![
        len().alias("count"),
        failed().sum().alias("failed"),
        col(expected::EXPECTED).sum().alias("expected"),
        col("dur_ns")
            .cast(DataType::Float64)
            .sum()
            .alias("total_ns"),
        col("dur_ns").count().alias("timed"),
        col("dur_ns")
            .cast(DataType::Float64)
            .mean()
            .alias("mean_ns"),
        q(0.5, "p50_ns"),
        q(0.95, "p95_ns"),
        q(0.99, "p99_ns"),
        col("dur_ns").cast(DataType::Float64).max().alias("max_ns"),
    ]
}

/// The columns the analysis reads: everything else (attributes, parameters, object lists) is
/// never decoded.
const ANALYZED_COLUMNS: &[&str] = &[
    "client_id",
    "pid",
    "tid",
    "process",
    "provider",
    "seq",
    "start",
    "dur_ns",
    "func",
    "internal",
    "returned",
    "rv",
    "rv_name",
    "slot_id",
    "session",
    "mechanism",
    "object",
];

pub fn analyze(calls: LazyFrame, options: AnalyzeOptions) -> Result<Report> {
    // Decoded once, then every part of the report reads memory, not Parquet.
    let calls = calls
        .select(
            ANALYZED_COLUMNS
                .iter()
                .map(|name| col(*name))
                .collect::<Vec<_>>(),
        )
        .collect()
        .explain("cannot read the calls")?;
    let calls = expected::mark(calls)
        .explain("cannot classify the return codes")?
        .lazy();
    let totals = calls
        .clone()
        .select([
            len().alias("total"),
            failed().sum().alias("failed"),
            col(expected::EXPECTED).sum().alias("expected"),
            col("returned").not().sum().alias("unreturned"),
            col("dur_ns")
                .cast(DataType::Float64)
                .sum()
                .alias("total_ns"),
            col("dur_ns").count().alias("timed"),
            col("start").min().alias("first"),
            col("start").max().alias("last"),
            col("pid").n_unique().alias("processes"),
            col("client_id").n_unique().alias("clients"),
            col("provider").null_count().alias("provider_nulls"),
        ])
        .collect()
        .explain("cannot compute the summary")?;
    let total = u64_at(&totals, "total", 0);
    let failed_count = u64_at(&totals, "failed", 0);
    let expected_count = u64_at(&totals, "expected", 0);
    let unreturned = u64_at(&totals, "unreturned", 0);
    let timed = u64_at(&totals, "timed", 0) > 0;
    let total_ns = if timed {
        f64_at(&totals, "total_ns", 0)
    } else {
        None
    };
    let first = i64_at(&totals, "first", 0);
    let last = i64_at(&totals, "last", 0);

    let per_function = calls
        .clone()
        .group_by([col("func")])
        .agg(latency_aggs())
        .largest_first("count", &["func"])
        .collect()
        .explain("cannot compute per-function statistics")?;
    let mut performance = std::collections::BTreeMap::new();
    let mut frequency = Vec::new();
    let mut slowest = Vec::new();
    for row in 0..per_function.height() {
        let func = str_at(&per_function, "func", row).unwrap_or_default();
        let count = u64_at(&per_function, "count", row);
        let has_time = u64_at(&per_function, "timed", row) > 0;
        let time = |name: &str| {
            if has_time {
                ms(f64_at(&per_function, name, row))
            } else {
                None
            }
        };
        let func_ns = if has_time {
            f64_at(&per_function, "total_ns", row)
        } else {
            None
        };
        let share = match (func_ns, total_ns) {
            (Some(part), Some(whole)) if whole > 0.0 => {
                Some((part * 10_000.0 / whole).round() / 100.0)
            }
            _ => None,
        };
        if let (Some(total_ms), Some(share_percent)) = (ms(func_ns), share) {
            slowest.push(Slowest {
                func: func.clone(),
                total_ms,
                share_percent,
            });
        }
        frequency.push(Frequency {
            func: func.clone(),
            count,
            percent: percent(count, total),
        });
        performance.insert(
            func,
            FunctionStats {
                count,
                failed: u64_at(&per_function, "failed", row),
                expected_nonok: u64_at(&per_function, "expected", row),
                total_ms: ms(func_ns),
                share_percent: share,
                mean_ms: time("mean_ns"),
                p50_ms: time("p50_ns"),
                p95_ms: time("p95_ns"),
                p99_ms: time("p99_ns"),
                max_ms: time("max_ns"),
            },
        );
    }
    slowest.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));

    let codes = calls
        .clone()
        .group_by([col("rv"), col("rv_name"), col(expected::EXPECTED)])
        .agg([len().alias("count")])
        .largest_first("count", &["rv"])
        .collect()
        .explain("cannot compute return codes")?;
    let return_codes = (0..codes.height())
        .map(|row| {
            let count = u64_at(&codes, "count", row);
            ReturnCode {
                rv: i64_at(&codes, "rv", row),
                rv_name: str_at(&codes, "rv_name", row),
                expected: codes
                    .column(expected::EXPECTED)
                    .ok()
                    .and_then(|c| c.get(row).ok())
                    .and_then(|v| v.extract_bool())
                    .unwrap_or(false),
                count,
                percent: percent(count, total),
            }
        })
        .collect();

    let processes = calls
        .clone()
        .group_by([col("pid"), col("process")])
        .agg([
            len().alias("calls"),
            failed().sum().alias("failed"),
            col("dur_ns")
                .cast(DataType::Float64)
                .sum()
                .alias("total_ns"),
            col("dur_ns").count().alias("timed"),
        ])
        .largest_first("calls", &["pid", "process"])
        .collect()
        .explain("cannot compute the per-process breakdown")?;
    let by_process = (0..processes.height())
        .map(|row| ProcessStats {
            pid: i64_at(&processes, "pid", row),
            process: str_at(&processes, "process", row),
            calls: u64_at(&processes, "calls", row),
            failed: u64_at(&processes, "failed", row),
            total_ms: if u64_at(&processes, "timed", row) > 0 {
                ms(f64_at(&processes, "total_ns", row))
            } else {
                None
            },
        })
        .collect();

    // A client's provider is known from its C_GetInfo on; earlier calls of the same client
    // belong to the same provider.
    let with_providers = if u64_at(&totals, "provider_nulls", 0) > 0 {
        calls.clone().with_column(
            col("provider")
                .drop_nulls()
                .first()
                .over([col("client_id")])?
                .alias("provider"),
        )
    } else {
        calls.clone()
    };
    let providers = with_providers
        .group_by([col("provider")])
        .agg(latency_aggs())
        .largest_first("count", &["provider"])
        .collect()
        .explain("cannot compute the per-provider breakdown")?;
    let by_provider = (0..providers.height())
        .map(|row| {
            let has_time = u64_at(&providers, "timed", row) > 0;
            let time = |name: &str| {
                if has_time {
                    ms(f64_at(&providers, name, row))
                } else {
                    None
                }
            };
            ProviderStats {
                provider: str_at(&providers, "provider", row),
                calls: u64_at(&providers, "count", row),
                failed: u64_at(&providers, "failed", row),
                total_ms: time("total_ns"),
                p50_ms: time("p50_ns"),
                p99_ms: time("p99_ns"),
            }
        })
        .collect();

    let sessions = sessions::lifecycle(calls.clone())?;
    let issues = issues::find(
        calls.clone(),
        &per_function,
        &sessions,
        options.slow_floor_ns,
    )?;
    let (operations, truncated) = match options.max_operations {
        Some(max) => operations(calls, max, total)?,
        None => (Vec::new(), false),
    };

    Ok(Report {
        analysis_version: ANALYSIS_VERSION,
        summary: Summary {
            total_operations: total,
            successful_operations: total.saturating_sub(failed_count + expected_count + unreturned),
            failed_operations: failed_count,
            expected_nonok_operations: expected_count,
            unreturned_operations: unreturned,
            failure_rate_percent: percent(failed_count, total),
            total_duration_ms: ms(total_ns),
            first_call: first.map(render::timestamp),
            last_call: last.map(render::timestamp),
            time_span_ms: first.zip(last).map(|(a, b)| (b - a) as f64 / 1000.0),
            processes: u64_at(&totals, "processes", 0),
            clients: u64_at(&totals, "clients", 0),
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
    })
}

/// Columns of an `operations` entry (schema v1 names; `dur_ms` added for the guide's users).
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
    expected::EXPECTED,
];

fn operations(calls: LazyFrame, max: usize, total: u64) -> Result<(Vec<serde_json::Value>, bool)> {
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
            let dur_ms = object
                .get("dur_ns")
                .and_then(serde_json::Value::as_f64)
                .map(|ns| ns / 1_000_000.0);
            object.insert(
                "dur_ms".into(),
                dur_ms.map_or(serde_json::Value::Null, Into::into),
            );
        }
    }
    let truncated = (operations.len() as u64) < total;
    Ok((operations, truncated))
}
