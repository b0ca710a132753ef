//! Row filters (`--func`, `--pid`, `--since`, `--until`, `--rv`, `--failed`, `--run-id`): parsed
//! once into [`Criteria`], which both the polars expression ([`predicate`]) and the direct reads
//! of `analyze`, `compare` and `diff` ([`RowFilter`]) evaluate.

use std::sync::Mutex;

use anyhow::{Result, bail};
use p11trace_record::names;
use polars::prelude::*;

use crate::cli::Filters;
use crate::direct::Verdicts;
use crate::direct::names::{NULL, Names};

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

/// The filters, parsed and checked: what a row must satisfy to be kept.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    /// Function names, `C_`-prefixed (`--func Sign` is `C_Sign`).
    pub funcs: Vec<String>,
    pub pids: Vec<i64>,
    /// µs since the epoch, inclusive.
    pub since: Option<i64>,
    /// µs since the epoch, exclusive.
    pub until: Option<i64>,
    /// Return codes.
    pub rvs: Vec<i64>,
    /// Only calls with a return code other than `CKR_OK`.
    pub failed: bool,
    pub run_id: Option<String>,
}

impl Criteria {
    pub fn parse(filters: &Filters) -> Result<Criteria> {
        let funcs = filters
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
        let mut rvs = Vec::new();
        for rv in &filters.rvs {
            let code = names::RV.code(rv).or_else(|| rv.parse::<u64>().ok());
            match code {
                Some(code) => rvs.push(code as i64),
                None => bail!("--rv {rv}: not a CKR_* name or a number"),
            }
        }
        Ok(Criteria {
            funcs,
            pids: filters.pids.clone(),
            since: filters.since.as_deref().map(parse_time).transpose()?,
            until: filters.until.as_deref().map(parse_time).transpose()?,
            rvs,
            failed: filters.failed,
            run_id: filters.run_id.clone(),
        })
    }

    /// Whether no filter was given (every row is kept).
    pub fn is_empty(&self) -> bool {
        self.funcs.is_empty()
            && self.pids.is_empty()
            && self.since.is_none()
            && self.until.is_none()
            && self.rvs.is_empty()
            && !self.failed
            && self.run_id.is_none()
    }

    /// Whether a row's start time (µs; `None` when unknown) passes `--since`/`--until`.
    pub fn keeps_start(&self, start: Option<i64>) -> bool {
        let after = self
            .since
            .is_none_or(|since| start.is_some_and(|s| s >= since));
        let before = self
            .until
            .is_none_or(|until| start.is_some_and(|s| s < until));
        after && before
    }

    /// Whether a row's return code passes `--rv` and `--failed`.
    pub fn keeps_rv(&self, rv: Option<i64>) -> bool {
        let listed = self.rvs.is_empty() || rv.is_some_and(|rv| self.rvs.contains(&rv));
        let failed = !self.failed || rv.is_some_and(|rv| rv != 0);
        listed && failed
    }

    /// Whether a row's process id passes `--pid`.
    pub fn keeps_pid(&self, pid: Option<i64>) -> bool {
        self.pids.is_empty() || pid.is_some_and(|pid| self.pids.contains(&pid))
    }

    /// Whether a function name passes `--func`.
    pub fn keeps_func(&self, func: Option<&str>) -> bool {
        self.funcs.is_empty() || func.is_some_and(|f| self.funcs.iter().any(|want| want == f))
    }

    /// Whether a run id passes `--run-id`.
    pub fn keeps_run(&self, run_id: Option<&str>) -> bool {
        self.run_id
            .as_deref()
            .is_none_or(|want| run_id == Some(want))
    }
}

/// The filters as a direct read evaluates them row by row (`analyze`, `compare`, `diff`): `--func`
/// and `--run-id` decided once per interned name, the rest on the row's values (`NULL` for
/// none).
pub struct RowFilter<'c> {
    criteria: &'c Criteria,
    funcs: Verdicts,
    runs: Verdicts,
}

impl<'c> RowFilter<'c> {
    pub fn new(criteria: &'c Criteria) -> RowFilter<'c> {
        RowFilter {
            criteria,
            funcs: Verdicts::default(),
            runs: Verdicts::default(),
        }
    }

    /// The `run_id` column when `--run-id` needs it, else `""` (a read that asks for nothing).
    pub fn run_column(&self) -> &'static str {
        if self.criteria.run_id.is_some() {
            "run_id"
        } else {
            ""
        }
    }

    /// Decides on the names a batch brought.
    pub fn update(&mut self, funcs: &Mutex<Names>, runs: &Mutex<Names>) {
        let criteria = self.criteria;
        self.funcs.update(funcs, |f| criteria.keeps_func(Some(f)));
        self.runs.update(runs, |r| criteria.keeps_run(Some(r)));
    }

    /// Whether a row passes every filter (interned ids for its function and run).
    #[inline]
    pub fn keeps(&self, func: u32, run: u32, pid: i64, start: i64, rv: i64) -> bool {
        let some = |v: i64| (v != NULL).then_some(v);
        self.funcs.of(func, self.criteria.keeps_func(None))
            && self.runs.of(run, self.criteria.keeps_run(None))
            && self.criteria.keeps_pid(some(pid))
            && self.criteria.keeps_start(some(start))
            && self.criteria.keeps_rv(some(rv))
    }
}

/// `rv` is not CKR_OK (and the call returned).
pub fn not_ok() -> Expr {
    col("rv").neq(lit(0i64)).and(col("rv").is_not_null())
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
    let criteria = Criteria::parse(filters)?;
    let mut condition: Option<Expr> = None;
    let mut and = |expr: Expr| {
        condition = Some(match condition.take() {
            Some(previous) => previous.and(expr),
            None => expr,
        });
    };
    if !criteria.funcs.is_empty() {
        let funcs = Series::new("funcs".into(), criteria.funcs);
        and(col("func").is_in(lit(funcs).implode(false), false));
    }
    if !criteria.pids.is_empty() {
        let pids = Series::new("pids".into(), criteria.pids);
        and(col("pid").is_in(lit(pids).implode(false), false));
    }
    if let Some(since) = criteria.since {
        and(col("start").gt_eq(timestamp(since)));
    }
    if let Some(until) = criteria.until {
        and(col("start").lt(timestamp(until)));
    }
    if !criteria.rvs.is_empty() {
        let rvs = Series::new("rvs".into(), criteria.rvs);
        and(col("rv").is_in(lit(rvs).implode(false), false));
    }
    if criteria.failed {
        and(not_ok());
    }
    if let Some(run_id) = criteria.run_id {
        and(col("run_id").eq(lit(run_id)));
    }
    Ok(condition)
}
