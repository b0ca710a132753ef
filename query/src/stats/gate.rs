//! Noise-aware latency regression gate for one row per (function, mechanism)
//! group, following criterion.rs's change rule, in two phases:
//!
//! 1. [`row_stats`] (per row, independent, parallelisable): medians,
//!    Mann–Whitney p-value, and bootstrap intervals of the median (and p95)
//!    ratio `current / baseline`.
//! 2. [`assign_verdicts`] (once, over all rows): Holm-adjusts the raw
//!    p-values of all rows with enough data, then applies the rule below.
//!
//! A row is
//!
//! * [`Verdict::InsufficientData`] when either side has fewer than
//!   `min_calls` calls (such rows are not part of the Holm family);
//! * [`Verdict::Regressed`] iff the Holm-adjusted p-value is `< alpha`, **and**
//!   the whole bootstrap interval of the relative median change
//!   `current / baseline − 1` lies above `+threshold`, **and** the median grew
//!   by at least `min_effect_ns`;
//! * [`Verdict::Improved`] symmetrically: adjusted p `< alpha`, the whole
//!   interval below `−threshold`, and the median shrank by at least
//!   `min_effect_ns`;
//! * [`Verdict::Unchanged`] otherwise.
//!
//! The significance test guards against noise, the `threshold` band against
//! changes too small to matter relatively (criterion's `noise_threshold`),
//! and `min_effect_ns` against relatively large but absolutely tiny changes
//! of very fast calls.

use super::StatsError;
use super::bootstrap::{
    DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, Interval, Stat, bootstrap_ratio_ci_sorted,
};
use super::holm::holm;
use super::mwu::{MannWhitney, mann_whitney_u_sorted};
use super::sample::SortedSample;

/// Parameters of the gate. Latencies are in nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// Relative noise band on the median change (0.10 = ±10 %).
    pub threshold: f64,
    /// Minimum absolute median change, in ns, for a non-`Unchanged` verdict.
    pub min_effect_ns: f64,
    /// Significance level, applied to Holm-adjusted p-values.
    pub alpha: f64,
    /// Minimum number of calls on each side for a row to be tested.
    pub min_calls: usize,
    /// Confidence level of the bootstrap intervals.
    pub confidence: f64,
    /// Number of bootstrap resamples per interval.
    pub resamples: usize,
    /// Bootstrap seed; every row uses the same seed, so results do not
    /// depend on the order or the grouping in which rows are computed.
    pub seed: u64,
}

impl Default for GateConfig {
    /// threshold 10 %, min_effect 10 µs, alpha 0.01, min_calls 30,
    /// confidence 0.95, 1000 resamples, a fixed seed.
    fn default() -> Self {
        Self {
            threshold: 0.10,
            // "A few µs", as measured: on this project's 2-core machines the call after a 1 ms
            // call runs 2–6 µs slower whatever the token did (C_DigestInit 4 → 6–10 µs after a
            // C_Digest slowed by 1 ms), so a 5 µs floor flagged the neighbour of a slowed call.
            min_effect_ns: 10_000.0,
            alpha: 0.01,
            min_calls: 30,
            confidence: DEFAULT_CONFIDENCE,
            resamples: DEFAULT_RESAMPLES,
            seed: 0x7031_3174_7261_6365, // "p11trace"
        }
    }
}

/// Phase-1 statistics of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowStats {
    /// Number of baseline calls.
    pub baseline_n: usize,
    /// Number of current calls.
    pub current_n: usize,
    /// The statistics, or `None` when either side has fewer than
    /// `min_calls` calls.
    pub tested: Option<TestedRow>,
}

/// Statistics of a row with enough calls on both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct TestedRow {
    /// Median baseline latency (ns).
    pub baseline_median_ns: f64,
    /// Median current latency (ns).
    pub current_median_ns: f64,
    /// `current_median_ns − baseline_median_ns`.
    pub median_change_ns: f64,
    /// Bootstrap interval of `median(current) / median(baseline)`.
    pub median_ratio: Interval,
    /// Bootstrap interval of `p95(current) / p95(baseline)` (reported only;
    /// the verdict uses the median).
    pub p95_ratio: Interval,
    /// Mann–Whitney test of baseline (`a`) against current (`b`).
    pub mann_whitney: MannWhitney,
}

impl TestedRow {
    /// The relative median change `ratio − 1` with its interval
    /// (0.25 = 25 % slower).
    pub fn median_rel_change(&self) -> Interval {
        self.median_ratio.shifted(-1.0)
    }
}

/// The gate's decision for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Significantly and materially slower.
    Regressed,
    /// Significantly and materially faster.
    Improved,
    /// No significant or no material change.
    Unchanged,
    /// Fewer than `min_calls` calls on at least one side.
    InsufficientData,
}

/// Phase-2 result for one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowVerdict {
    /// The decision.
    pub verdict: Verdict,
    /// Holm-adjusted Mann–Whitney p-value; `None` for
    /// [`Verdict::InsufficientData`].
    pub p_adjusted: Option<f64>,
}

/// Phase 1 for one row from raw latencies (ns); copies and sorts both sides.
///
/// Rows with fewer than `cfg.min_calls` calls (at least 1) on either side
/// get `tested: None` without looking at the values. Errors:
/// [`StatsError::NonFinite`] on NaN/±∞, [`StatsError::NonPositiveBaseline`]
/// if the baseline median or p95 is ≤ 0, and the parameter errors of
/// [`super::bootstrap_ratio_ci`] for a bad `confidence` or `resamples`.
pub fn row_stats(
    baseline: &[f64],
    current: &[f64],
    cfg: &GateConfig,
) -> Result<RowStats, StatsError> {
    if !enough(baseline.len(), current.len(), cfg) {
        return Ok(untested(baseline.len(), current.len()));
    }
    let baseline = SortedSample::from_slice(baseline)?;
    let current = SortedSample::from_slice(current)?;
    row_stats_sorted(&baseline, &current, cfg)
}

/// [`row_stats`] on already sorted samples: O(n) for the Mann–Whitney
/// merge plus O(`resamples` log `resamples`) for the bootstraps.
pub fn row_stats_sorted(
    baseline: &SortedSample,
    current: &SortedSample,
    cfg: &GateConfig,
) -> Result<RowStats, StatsError> {
    let (nb, nc) = (baseline.len(), current.len());
    if !enough(nb, nc, cfg) {
        return Ok(untested(nb, nc));
    }
    let boot = |stat, seed| {
        bootstrap_ratio_ci_sorted(baseline, current, stat, cfg.resamples, cfg.confidence, seed)
    };
    let median_ratio = boot(Stat::Median, cfg.seed)?;
    let p95_ratio = boot(Stat::P95, cfg.seed.wrapping_add(1))?;
    let baseline_median_ns = baseline.median()?;
    let current_median_ns = current.median()?;
    Ok(RowStats {
        baseline_n: nb,
        current_n: nc,
        tested: Some(TestedRow {
            baseline_median_ns,
            current_median_ns,
            median_change_ns: current_median_ns - baseline_median_ns,
            median_ratio,
            p95_ratio,
            mann_whitney: mann_whitney_u_sorted(baseline, current)?,
        }),
    })
}

/// Phase 2: Holm-adjusts the Mann–Whitney p-values of all tested rows (the
/// family is the rows with `tested: Some`) and returns one verdict per row,
/// in the order of `rows`, by the rule in the [module docs](self).
pub fn assign_verdicts(rows: &[RowStats], cfg: &GateConfig) -> Vec<RowVerdict> {
    let raw: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.tested.as_ref())
        .map(|t| t.mann_whitney.p_two_sided)
        .collect();
    // `adjusted` has exactly one value per tested row, in row order.
    let mut adjusted = holm(&raw).into_iter();
    rows.iter()
        .map(|row| match &row.tested {
            Some(t) => {
                let p = adjusted.next().unwrap_or(1.0);
                RowVerdict {
                    verdict: decide(t, p, cfg),
                    p_adjusted: Some(p),
                }
            }
            None => RowVerdict {
                verdict: Verdict::InsufficientData,
                p_adjusted: None,
            },
        })
        .collect()
}

/// The criterion-style rule for one tested row with adjusted p-value `p`.
fn decide(t: &TestedRow, p: f64, cfg: &GateConfig) -> Verdict {
    let significant = p < cfg.alpha;
    let change = t.median_rel_change();
    if significant && change.lo > cfg.threshold && t.median_change_ns >= cfg.min_effect_ns {
        Verdict::Regressed
    } else if significant && change.hi < -cfg.threshold && -t.median_change_ns >= cfg.min_effect_ns
    {
        Verdict::Improved
    } else {
        Verdict::Unchanged
    }
}

/// Whether both sides have at least `min_calls` (and at least one) calls.
fn enough(baseline_n: usize, current_n: usize, cfg: &GateConfig) -> bool {
    let min = cfg.min_calls.max(1);
    baseline_n >= min && current_n >= min
}

/// A row without enough calls.
fn untested(baseline_n: usize, current_n: usize) -> RowStats {
    RowStats {
        baseline_n,
        current_n,
        tested: None,
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
