//! Row filters (`--func`, `--pid`, `--since`, `--until`, `--rv`, `--failed`, `--run-id`).

use anyhow::{Result, bail};
use p11trace_record::names;
use polars::prelude::*;

use crate::cli::Filters;

/// `RFC 3339` or `YYYY-MM-DD` (midnight UTC) → µs since the epoch.
fn parse_time(text: &str) -> Result<i64> {
    if let Ok(parsed) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(parsed.timestamp_micros());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .map(|d| d.and_utc().timestamp_micros())
            .unwrap_or(0));
    }
    bail!("`{text}` is not a time (use RFC 3339 like 2026-11-25T17:00:00Z, or YYYY-MM-DD)")
}

fn timestamp(micros: i64) -> Expr {
    lit(micros).cast(DataType::Datetime(
        TimeUnit::Microseconds,
        Some(TimeZone::UTC),
    ))
}

/// Keeps the rows every filter accepts.
pub fn apply(calls: LazyFrame, filters: &Filters) -> Result<LazyFrame> {
    Ok(match predicate(filters)? {
        Some(condition) => calls.filter(condition),
        None => calls,
    })
}

/// The filters as one boolean expression (`None`: no filter); null counts as false.
pub fn predicate(filters: &Filters) -> Result<Option<Expr>> {
    let mut condition: Option<Expr> = None;
    let mut and = |expr: Expr| {
        condition = Some(match condition.take() {
            Some(previous) => previous.and(expr),
            None => expr,
        });
    };
    if !filters.funcs.is_empty() {
        let funcs: Vec<String> = filters
            .funcs
            .iter()
            .map(|f| {
                if f.starts_with("C_") {
                    f.clone()
                } else {
                    format!("C_{f}")
                }
            })
            .collect();
        and(col("func").is_in(
            lit(Series::new("funcs".into(), funcs)).implode(false),
            false,
        ));
    }
    if !filters.pids.is_empty() {
        and(col("pid").is_in(
            lit(Series::new("pids".into(), filters.pids.clone())).implode(false),
            false,
        ));
    }
    if let Some(since) = &filters.since {
        and(col("start").gt_eq(timestamp(parse_time(since)?)));
    }
    if let Some(until) = &filters.until {
        and(col("start").lt(timestamp(parse_time(until)?)));
    }
    if !filters.rvs.is_empty() {
        let mut codes = Vec::new();
        for rv in &filters.rvs {
            let code = names::RV.code(rv).or_else(|| rv.parse::<u64>().ok());
            match code {
                Some(code) => codes.push(code as i64),
                None => bail!("--rv {rv}: not a CKR_* name or a number"),
            }
        }
        and(col("rv").is_in(lit(Series::new("rvs".into(), codes)).implode(false), false));
    }
    if filters.failed {
        and(crate::analyze::failed());
    }
    if let Some(run_id) = &filters.run_id {
        and(col("run_id").eq(lit(run_id.clone())));
    }
    Ok(condition)
}
