//! Noise-aware statistics for comparing two latency datasets (`compare` and
//! `diff`), in the style of criterion.rs's change detection.
//!
//! Building blocks:
//!
//! * [`SortedSample`], [`median`], [`quantile`]: order statistics (Hyndman–Fan
//!   type 7, i.e. linear interpolation, the default of R, NumPy and Excel's
//!   `PERCENTILE.INC`).
//! * [`mann_whitney_u`]: two-sided Mann–Whitney U (Wilcoxon rank-sum) test,
//!   normal approximation with tie and continuity correction, O(n log n).
//! * [`holm()`]: Holm–Bonferroni adjusted p-values.
//! * [`bootstrap_ratio_ci`]: percentile-bootstrap CI of `stat(b) / stat(a)` for
//!   the median or p95, O(1) per resample after sorting (see [`bootstrap`]).
//! * [`fisher_exact_two_sided`], [`two_proportion_z`], [`failure_rate_test`]:
//!   comparing error rates.
//! * [`row_stats`] + [`assign_verdicts`]: the two-phase regression gate.
//!
//! Typical use of the gate:
//!
//! ```text
//! let cfg = GateConfig::default();
//! let rows: Vec<RowStats> = groups
//!     .iter()
//!     .map(|g| row_stats(&g.baseline_ns, &g.current_ns, &cfg))
//!     .collect::<Result<_, _>>()?;
//! let verdicts = assign_verdicts(&rows, &cfg); // same order as `rows`
//! ```
//!
//! All randomness comes from an explicitly seeded PCG64 generator, so every
//! result is a pure function of the inputs and the seed.

pub mod bootstrap;
pub mod gate;
pub mod holm;
pub mod mwu;
pub mod proportions;
pub mod sample;

pub use bootstrap::{
    DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, Interval, Stat, bootstrap_ratio_ci,
    bootstrap_ratio_ci_sorted,
};
pub use gate::{
    GateConfig, RowStats, RowVerdict, TestedRow, Verdict, assign_verdicts, row_stats,
    row_stats_sorted,
};
pub use holm::holm;
pub use mwu::{MannWhitney, mann_whitney_u, mann_whitney_u_sorted};
pub use proportions::{
    FailureRateTest, ProportionMethod, ProportionZ, failure_rate_test, fisher_exact_two_sided,
    two_proportion_z,
};
pub use sample::{SortedSample, median, quantile};

/// Errors reported by this module. Every variant is caused by the input data
/// or by a parameter, never by an internal failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// A sample (or a 2×2 table row) that must not be empty was empty.
    #[error("empty sample")]
    EmptySample,
    /// A sample contained NaN or ±∞.
    #[error("sample contains a non-finite value ({0})")]
    NonFinite(f64),
    /// A sample passed as sorted was not sorted ascending.
    #[error("sample is not sorted ascending")]
    NotSorted,
    /// A quantile level outside `[0, 1]`.
    #[error("quantile level {0} is outside [0, 1]")]
    InvalidQuantile(f64),
    /// A confidence level outside the open interval `(0, 1)`.
    #[error("confidence level {0} is outside (0, 1)")]
    InvalidConfidence(f64),
    /// A bootstrap was asked for zero resamples.
    #[error("the bootstrap needs at least one resample")]
    NoResamples,
    /// The baseline statistic (the ratio's denominator) is zero or negative,
    /// so the ratio `current / baseline` is undefined.
    #[error("baseline statistic is {0}; the ratio is undefined unless it is > 0")]
    NonPositiveBaseline(f64),
    /// A failure count larger than its total.
    #[error("failure count {failures} exceeds total {total}")]
    InvalidCounts {
        /// Number of failed calls.
        failures: u64,
        /// Number of calls.
        total: u64,
    },
}
