//! "Potential issues", each with the evidence that raised it.

use crate::Explain;
use anyhow::Result;
use polars::prelude::*;
use serde::Serialize;

use super::{LargestFirst, Sessions, column_sum, f64_at, failed, i64_at, str_at, u64_at, units};

#[derive(Debug, Serialize)]
pub struct Issue {
    /// Stable identifier: `failed_calls`, `unclosed_sessions`, `finalize_missing`,
    /// `buffer_too_small_storm`, `slow_outliers`, `pin_incorrect_burst`.
    pub kind: &'static str,
    pub severity: &'static str,
    pub message: String,
    pub count: u64,
    pub evidence: Vec<String>,
}

/// `CKR_BUFFER_TOO_SMALL` answers to one function on one session that make a storm.
const STORM: u64 = 3;
/// `CKR_PIN_INCORRECT` answers in one process that make a burst.
const PIN_BURST: u64 = 3;
/// A call is a slow outlier above max(p99, this × p50, the floor) of its function.
const OUTLIER_FACTOR: f64 = 10.0;

/// Every issue of `calls`; `slow_floor_ns`: no call faster than this is a slow outlier.
pub fn find(
    calls: LazyFrame,
    per_function: &DataFrame,
    sessions: &Sessions,
    slow_floor_ns: f64,
) -> Result<Vec<Issue>> {
    let mut issues = Vec::new();
    failed_calls(&calls, &mut issues)?;
    if sessions.never_closed > 0 {
        issues.push(Issue {
            kind: "unclosed_sessions",
            severity: "warning",
            message: format!("{} session(s) never closed", sessions.never_closed),
            count: sessions.never_closed,
            evidence: sessions
                .never_closed_examples
                .iter()
                .map(|(client, session)| format!("client {client} session {session:#x}"))
                .collect(),
        });
    }
    finalize_missing(&calls, &mut issues)?;
    buffer_too_small_storms(&calls, &mut issues)?;
    slow_outliers(&calls, per_function, slow_floor_ns, &mut issues)?;
    pin_bursts(&calls, &mut issues)?;
    Ok(issues)
}

fn failed_calls(calls: &LazyFrame, issues: &mut Vec<Issue>) -> Result<()> {
    let by_rv = calls
        .clone()
        .filter(failed())
        .group_by([col("rv_name"), col("func")])
        .agg([len().alias("count")])
        .largest_first("count", &["rv_name", "func"])
        .collect()
        .explain("cannot list failed calls")?;
    if by_rv.height() == 0 {
        return Ok(());
    }
    let total: u64 = column_sum(&by_rv, "count");
    issues.push(Issue {
        kind: "failed_calls",
        severity: "warning",
        message: format!("{total} call(s) failed"),
        count: total,
        evidence: (0..by_rv.height())
            .map(|row| {
                format!(
                    "{} x {} from {}",
                    u64_at(&by_rv, "count", row),
                    str_at(&by_rv, "rv_name", row).unwrap_or_default(),
                    str_at(&by_rv, "func", row).unwrap_or_default()
                )
            })
            .collect(),
    });
    Ok(())
}

fn finalize_missing(calls: &LazyFrame, issues: &mut Vec<Issue>) -> Result<()> {
    let per_client = calls
        .clone()
        .group_by([col("client_id")])
        .agg([
            col("func")
                .eq(lit("C_Initialize"))
                .and(col("rv").eq(lit(0i64)))
                .sum()
                .alias("initialized"),
            col("func").eq(lit("C_Finalize")).sum().alias("finalized"),
            col("pid").first().alias("pid"),
            col("process").first().alias("process"),
        ])
        .filter(
            col("initialized")
                .gt(lit(0))
                .and(col("finalized").eq(lit(0))),
        )
        .sort(["client_id"], SortMultipleOptions::default())
        .collect()
        .explain("cannot check C_Finalize")?;
    if per_client.height() > 0 {
        issues.push(Issue {
            kind: "finalize_missing",
            severity: "info",
            message: format!(
                "{} process(es) initialized the library but never called C_Finalize",
                per_client.height()
            ),
            count: per_client.height() as u64,
            evidence: (0..per_client.height().min(10))
                .map(|row| {
                    format!(
                        "pid {} ({}) client {}",
                        i64_at(&per_client, "pid", row).map_or("?".into(), |p| p.to_string()),
                        str_at(&per_client, "process", row).unwrap_or_default(),
                        str_at(&per_client, "client_id", row).unwrap_or_default()
                    )
                })
                .collect(),
        });
    }
    Ok(())
}

fn buffer_too_small_storms(calls: &LazyFrame, issues: &mut Vec<Issue>) -> Result<()> {
    let storms = calls
        .clone()
        .filter(col("rv_name").eq(lit("CKR_BUFFER_TOO_SMALL")))
        .group_by([col("client_id"), col("session"), col("func")])
        .agg([len().alias("count")])
        .filter(col("count").gt_eq(lit(STORM as u32)))
        .largest_first("count", &["client_id", "session", "func"])
        .collect()
        .explain("cannot look for CKR_BUFFER_TOO_SMALL storms")?;
    if storms.height() > 0 {
        let total: u64 = column_sum(&storms, "count");
        issues.push(Issue {
            kind: "buffer_too_small_storm",
            severity: "warning",
            message: format!(
                "{total} CKR_BUFFER_TOO_SMALL answers in {} retry storm(s)",
                storms.height()
            ),
            count: total,
            evidence: (0..storms.height().min(10))
                .map(|row| {
                    format!(
                        "{} x {} on session {} of client {}",
                        u64_at(&storms, "count", row),
                        str_at(&storms, "func", row).unwrap_or_default(),
                        i64_at(&storms, "session", row).map_or("?".into(), |s| format!("{s:#x}")),
                        str_at(&storms, "client_id", row).unwrap_or_default()
                    )
                })
                .collect(),
        });
    }
    Ok(())
}

fn slow_outliers(
    calls: &LazyFrame,
    per_function: &DataFrame,
    floor_ns: f64,
    issues: &mut Vec<Issue>,
) -> Result<()> {
    let mut thresholds = Vec::new();
    for row in 0..per_function.height() {
        let (Some(func), Some(p50), Some(p99)) = (
            str_at(per_function, "func", row),
            f64_at(per_function, "p50_ns", row),
            f64_at(per_function, "p99_ns", row),
        ) else {
            continue;
        };
        if u64_at(per_function, "count", row) >= 20 {
            thresholds.push((func, p99.max(OUTLIER_FACTOR * p50).max(floor_ns)));
        }
    }
    if thresholds.is_empty() {
        return Ok(());
    }
    let funcs = Series::new(
        "func".into(),
        thresholds
            .iter()
            .map(|(f, _)| f.as_str())
            .collect::<Vec<_>>(),
    );
    let limits = Series::new(
        "limit_ns".into(),
        thresholds.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
    );
    let limits = DataFrame::new_infer_height(vec![funcs.into(), limits.into()])?.lazy();
    let outliers = calls
        .clone()
        .join(
            limits,
            [col("func")],
            [col("func")],
            JoinArgs::new(JoinType::Inner),
        )
        .filter(col("dur_ns").cast(DataType::Float64).gt(col("limit_ns")))
        .sort(
            ["dur_ns"],
            SortMultipleOptions::default().with_order_descending(true),
        )
        .select([
            col("func"),
            col("dur_ns"),
            col("client_id"),
            col("seq"),
            col("limit_ns"),
        ])
        .collect()
        .explain("cannot look for slow outliers")?;
    if outliers.height() > 0 {
        issues.push(Issue {
            kind: "slow_outliers",
            severity: "info",
            message: format!(
                "{} call(s) slower than max(p99, {OUTLIER_FACTOR}x p50) of their function and than {}",
                outliers.height(),
                units::duration_ns(Some(floor_ns))
            ),
            count: outliers.height() as u64,
            evidence: (0..outliers.height().min(10))
                .map(|row| {
                    format!(
                        "{} took {} (limit {}), client {} seq {}",
                        str_at(&outliers, "func", row).unwrap_or_default(),
                        units::duration_ns(f64_at(&outliers, "dur_ns", row)),
                        units::duration_ns(f64_at(&outliers, "limit_ns", row)),
                        str_at(&outliers, "client_id", row).unwrap_or_default(),
                        i64_at(&outliers, "seq", row).unwrap_or(-1)
                    )
                })
                .collect(),
        });
    }
    Ok(())
}

fn pin_bursts(calls: &LazyFrame, issues: &mut Vec<Issue>) -> Result<()> {
    let bursts = calls
        .clone()
        .filter(col("rv_name").eq(lit("CKR_PIN_INCORRECT")))
        .group_by([col("client_id")])
        .agg([
            len().alias("count"),
            col("pid").first().alias("pid"),
            col("process").first().alias("process"),
        ])
        .filter(col("count").gt_eq(lit(PIN_BURST as u32)))
        .collect()
        .explain("cannot look for CKR_PIN_INCORRECT bursts")?;
    if bursts.height() > 0 {
        let total: u64 = column_sum(&bursts, "count");
        issues.push(Issue {
            kind: "pin_incorrect_burst",
            severity: "critical",
            message: format!(
                "{total} wrong PINs in {} process(es): a guessing attempt or a misconfiguration",
                bursts.height()
            ),
            count: total,
            evidence: (0..bursts.height().min(10))
                .map(|row| {
                    format!(
                        "{} x CKR_PIN_INCORRECT in pid {} ({})",
                        u64_at(&bursts, "count", row),
                        i64_at(&bursts, "pid", row).map_or("?".into(), |p| p.to_string()),
                        str_at(&bursts, "process", row).unwrap_or_default()
                    )
                })
                .collect(),
        });
    }
    Ok(())
}
