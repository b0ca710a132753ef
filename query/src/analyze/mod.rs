//! The "PKCS#11 Operation Analysis": summary, per-function performance, frequency, return codes,
//! per-process and per-provider breakdowns, session lifecycle, potential issues and the list of
//! operations. The calls are folded straight from their Parquet files (`scan`, through
//! `crate::direct`) into a tally (`tally`: one cell per client, process, provider, function and
//! return code) that every table rolls up (`rollup`); percentiles are exact (`ranks`), the
//! `operations` list is kept as the files are read (`listing`). Polars collected every analysed
//! column of every call instead: 4.7 GiB at 10 M calls. The JSON keys are documented in
//! `schemas/analysis.md` and stable.

pub mod expected;
mod interned;
mod issues;
mod listing;
mod ranks;
pub mod render;
mod report;
mod rollup;
mod scan;
mod sessions;
mod successors;
mod tally;
pub mod units;

use std::path::PathBuf;

use crate::filters::Criteria;
use anyhow::Result;

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

/// Analyses the calls of `files` that `criteria` keeps.
pub fn analyze(files: &[PathBuf], criteria: &Criteria, options: AnalyzeOptions) -> Result<Report> {
    let mut tally = scan::read(files, criteria, options.max_operations)?;
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
        Some(max) => {
            let listings = std::mem::take(&mut tally.tally.listings);
            listing::render(&tally, listings, max, total)
        }
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
