//! Percentile-bootstrap confidence interval of a ratio of quantiles,
//! `stat(b) / stat(a)`, with `stat` the median or the p95.
//!
//! # Method
//!
//! The classic percentile bootstrap draws, `resamples` times, a resample of
//! size `n` with replacement from each sample, computes the statistic on each
//! resample, and reports the `(1 − c)/2` and `(1 + c)/2` quantiles of the
//! replicate ratios as the interval at confidence `c`. Done naively that is
//! O(n) per resample (O(n log n) with a sort), far too slow for 1 M-call
//! groups.
//!
//! This module draws the **same replicates in O(1) each**, with no
//! subsampling and no approximation, from the exact distribution of the
//! resample's order statistics:
//!
//! * A resample of size `n` from the sorted sample `x[0..n]` is
//!   `x[⌊n U_i⌋]` with `U_1 … U_n` iid uniform on (0, 1). The map
//!   `u ↦ x[⌊n u⌋]` is non-decreasing, so the resample's `k`-th smallest value
//!   (1-based) is `x[⌊n U_(k)⌋]`, where `U_(k)` is the `k`-th order statistic of
//!   the uniforms.
//! * `U_(k) ~ Beta(k, n − k + 1)`, and given `U_(k) = u`, the remaining
//!   `n − k` uniforms are iid uniform on (u, 1), so
//!   `U_(k+1) = u + (1 − u)(1 − W^{1/(n−k)})` with `W` uniform on (0, 1).
//! * The type-7 quantile of the resample only reads order statistics `k` and
//!   `k + 1` (see [`super::sample`]), so each replicate costs one Beta draw,
//!   one uniform draw and two look-ups in the sorted sample.
//!
//! After the O(n log n) sort — which the caller usually has already done for
//! the median and the Mann–Whitney test — the bootstrap costs
//! O(`resamples` · log `resamples`), independent of `n`. A test in this module
//! checks it against a naive resampling bootstrap. (The Beta representation of
//! bootstrap order statistics is classical: e.g. Hutson & Ernst, "The exact
//! bootstrap mean and variance of an L-estimator", JRSS B 62 (2000).)
//!
//! Randomness: a PCG64 generator (`rand_pcg::Pcg64`, `seed_from_u64(seed)`)
//! and `rand_distr`'s Beta sampler (Cheng's algorithms BB/BC); for a given
//! seed and crate versions the interval is reproducible. Replicates are
//! drawn alternately for `a` and `b` from one stream.
//!
//! Resample count: [`DEFAULT_RESAMPLES`] = 1000. Since replicates cost O(1),
//! this is cheap (≈ 0.3 ms per interval in release, for any `n`), and 1000
//! keeps the Monte Carlo error of a 95 % interval's end-points small (25
//! replicates in each tail).

use rand_distr::{Beta, Distribution, Open01};
use rand_pcg::Pcg64;
use rand_pcg::rand_core::{Rng, SeedableRng};

use super::StatsError;
use super::sample::{SortedSample, interpolate, quantile, type7_position};

/// Default number of bootstrap resamples.
pub const DEFAULT_RESAMPLES: usize = 1000;

/// Default confidence level of bootstrap intervals (criterion.rs's default).
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// The statistic whose ratio is bootstrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stat {
    /// The median (type-7 quantile at 0.5).
    Median,
    /// The 95th percentile (type-7 quantile at 0.95).
    P95,
}

impl Stat {
    /// The quantile level of this statistic: 0.5 or 0.95.
    pub fn level(self) -> f64 {
        match self {
            Stat::Median => 0.5,
            Stat::P95 => 0.95,
        }
    }
}

/// A point estimate with a confidence interval `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The statistic on the full data.
    pub estimate: f64,
    /// Lower end of the interval.
    pub lo: f64,
    /// Upper end of the interval.
    pub hi: f64,
}

impl Interval {
    /// Whether `x` lies in `[lo, hi]`.
    pub fn contains(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }

    /// The interval with `delta` added to all three values, e.g.
    /// `ratio.shifted(-1.0)` turns a ratio into a relative change.
    pub fn shifted(self, delta: f64) -> Interval {
        Interval {
            estimate: self.estimate + delta,
            lo: self.lo + delta,
            hi: self.hi + delta,
        }
    }
}

/// Percentile-bootstrap interval of `stat(b) / stat(a)` at `confidence`
/// (e.g. 0.95) from `resamples` replicates, reproducible for a given `seed`.
///
/// Copies and sorts both samples (O(n log n)); use
/// [`bootstrap_ratio_ci_sorted`] to reuse sorted samples. See the [module
/// docs](self) for the method. Intended for non-negative data such as
/// latencies: a replicate whose denominator is 0 counts as ratio `+∞`
/// (or 1 when the numerator is 0 too).
///
/// Errors: [`StatsError::EmptySample`] if either sample is empty,
/// [`StatsError::NonFinite`] on NaN/±∞, [`StatsError::InvalidConfidence`]
/// unless `0 < confidence < 1`, [`StatsError::NoResamples`] if `resamples`
/// is 0, and [`StatsError::NonPositiveBaseline`] if `stat(a) ≤ 0`.
pub fn bootstrap_ratio_ci(
    a: &[f64],
    b: &[f64],
    stat: Stat,
    resamples: usize,
    confidence: f64,
    seed: u64,
) -> Result<Interval, StatsError> {
    let a = SortedSample::from_slice(a)?;
    let b = SortedSample::from_slice(b)?;
    bootstrap_ratio_ci_sorted(&a, &b, stat, resamples, confidence, seed)
}

/// [`bootstrap_ratio_ci`] on already sorted samples: O(`resamples` ·
/// log `resamples`) whatever the sample sizes.
pub fn bootstrap_ratio_ci_sorted(
    a: &SortedSample,
    b: &SortedSample,
    stat: Stat,
    resamples: usize,
    confidence: f64,
    seed: u64,
) -> Result<Interval, StatsError> {
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(StatsError::InvalidConfidence(confidence));
    }
    if resamples == 0 {
        return Err(StatsError::NoResamples);
    }
    let q = stat.level();
    let ra = QuantileResampler::new(a.as_slice(), q)?;
    let rb = QuantileResampler::new(b.as_slice(), q)?;
    let est_a = ra.point();
    if est_a <= 0.0 {
        return Err(StatsError::NonPositiveBaseline(est_a));
    }
    let estimate = rb.point() / est_a;

    let mut rng = Pcg64::seed_from_u64(seed);
    let mut ratios: Vec<f64> = (0..resamples)
        .map(|_| {
            let qa = ra.draw(&mut rng);
            let qb = rb.draw(&mut rng);
            ratio(qb, qa)
        })
        .collect();
    ratios.sort_unstable_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Ok(Interval {
        estimate,
        lo: quantile(&ratios, tail)?,
        hi: quantile(&ratios, 1.0 - tail)?,
    })
}

/// `num / den` for non-negative replicates, with `0/0 = 1` (both resampled
/// statistics are 0: no change) so that no replicate is NaN.
fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 && num == 0.0 {
        1.0
    } else {
        num / den
    }
}

/// Draws the type-7 quantile of a bootstrap resample of a sorted sample in
/// O(1), as described in the [module docs](self).
pub(super) struct QuantileResampler<'a> {
    /// The sorted sample.
    x: &'a [f64],
    /// 0-based index of the lower order statistic used by the quantile.
    lo: usize,
    /// Interpolation weight of order statistic `lo + 1`.
    frac: f64,
    /// Distribution of `U_(lo+1)`, i.e. `Beta(lo + 1, n − lo)`.
    lower: Beta<f64>,
}

impl<'a> QuantileResampler<'a> {
    /// Prepares draws of the level-`q` quantile of resamples of `x`
    /// (sorted ascending). Errors with [`StatsError::EmptySample`] if `x` is
    /// empty and [`StatsError::InvalidQuantile`] if `q ∉ [0, 1]`.
    pub(super) fn new(x: &'a [f64], q: f64) -> Result<Self, StatsError> {
        if !(0.0..=1.0).contains(&q) {
            return Err(StatsError::InvalidQuantile(q));
        }
        if x.is_empty() {
            return Err(StatsError::EmptySample);
        }
        let n = x.len();
        let (lo, frac) = type7_position(n, q);
        // Both shape parameters are ≥ 1 because lo ≤ n − 1, so this cannot
        // fail; the error mapping only avoids an unwrap.
        let lower =
            Beta::new((lo + 1) as f64, (n - lo) as f64).map_err(|_| StatsError::EmptySample)?;
        Ok(Self { x, lo, frac, lower })
    }

    /// The quantile of the sample itself (the point estimate).
    pub(super) fn point(&self) -> f64 {
        interpolate(self.x, self.lo, self.frac)
    }

    /// The quantile of one bootstrap resample.
    pub(super) fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        let n = self.x.len();
        let u_lo = self.lower.sample(rng);
        let v_lo = self.x[index(u_lo, n)];
        if self.frac == 0.0 {
            return v_lo;
        }
        // `frac > 0` implies lo + 1 < n, so at least one uniform lies above
        // U_(lo+1); the nearest of the `above` remaining ones is
        // u + (1 − u)·(1 − W^{1/above}).
        let above = (n - self.lo - 1) as f64;
        let w: f64 = Open01.sample(rng);
        let gap = -libm::expm1(libm::log(w) / above);
        let u_hi = u_lo + (1.0 - u_lo) * gap;
        let v_hi = self.x[index(u_hi, n)];
        v_lo + self.frac * (v_hi - v_lo)
    }
}

/// Index `⌊n u⌋` of the sample value that a uniform `u ∈ [0, 1]` selects,
/// clamped to `n − 1`.
fn index(u: f64, n: usize) -> usize {
    // Float-to-int `as` saturates (NaN → 0), so this is always in range.
    ((u * n as f64) as usize).min(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{LogNormal, Uniform};

    /// `n` seeded log-normal values with the given median and log-sd.
    fn lognormal(n: usize, median: f64, sigma: f64, seed: u64) -> Vec<f64> {
        let mut rng = Pcg64::seed_from_u64(seed);
        let d = LogNormal::new(median.ln(), sigma).expect("valid parameters");
        (0..n).map(|_| d.sample(&mut rng)).collect()
    }

    #[test]
    fn same_seed_same_interval() {
        let a = lognormal(500, 40_000.0, 0.4, 1);
        let b = lognormal(700, 44_000.0, 0.4, 2);
        for stat in [Stat::Median, Stat::P95] {
            let x = bootstrap_ratio_ci(&a, &b, stat, 1000, 0.95, 42).expect("valid");
            let y = bootstrap_ratio_ci(&a, &b, stat, 1000, 0.95, 42).expect("valid");
            assert_eq!(x, y);
            let z = bootstrap_ratio_ci(&a, &b, stat, 1000, 0.95, 43).expect("valid");
            assert_eq!(x.estimate, z.estimate);
            assert_ne!((x.lo, x.hi), (z.lo, z.hi), "another seed, other replicates");
            assert!(x.lo <= x.estimate && x.estimate <= x.hi, "{x:?}");
        }
    }

    #[test]
    fn covers_known_ratio() {
        // b is a scaled by exactly 1.5 in distribution, so both the median and
        // the p95 ratios are 1.5.
        let a = lognormal(3000, 40_000.0, 0.5, 7);
        let b: Vec<f64> = lognormal(2500, 40_000.0, 0.5, 8)
            .into_iter()
            .map(|x| 1.5 * x)
            .collect();
        for stat in [Stat::Median, Stat::P95] {
            let ci = bootstrap_ratio_ci(&a, &b, stat, 1000, 0.95, 3).expect("valid");
            assert!(ci.contains(1.5), "{stat:?}: {ci:?}");
            assert!(ci.hi - ci.lo < 0.2, "{stat:?}: too wide: {ci:?}");
        }
    }

    #[test]
    fn coverage_under_the_null() {
        // 300 pairs from one distribution: the 95 % interval of the median
        // ratio should cover 1 about 95 % of the time.
        let covered = (0..300u64)
            .filter(|&i| {
                let a = lognormal(200, 50_000.0, 0.5, 1000 + 2 * i);
                let b = lognormal(200, 50_000.0, 0.5, 1001 + 2 * i);
                bootstrap_ratio_ci(&a, &b, Stat::Median, 1000, 0.95, i)
                    .expect("valid")
                    .contains(1.0)
            })
            .count();
        assert!((270..=300).contains(&covered), "covered {covered}/300");
    }

    /// Quantile of a resample drawn the naive way: `n` indices with
    /// replacement, then a selection.
    fn naive_resample_quantile(x: &[f64], q: f64, rng: &mut Pcg64, buf: &mut Vec<f64>) -> f64 {
        let n = x.len();
        let pick = Uniform::new(0, n).expect("n > 0");
        buf.clear();
        buf.extend((0..n).map(|_| x[pick.sample(rng)]));
        let (lo, frac) = type7_position(n, q);
        let (_, &mut v_lo, rest) = buf.select_nth_unstable_by(lo, f64::total_cmp);
        if frac == 0.0 {
            return v_lo;
        }
        let v_hi = rest.iter().copied().fold(f64::INFINITY, f64::min);
        v_lo + frac * (v_hi - v_lo)
    }

    #[test]
    fn order_statistic_draws_match_naive_resampling() {
        // Compare the replicate distributions of both samplers on a small
        // sample (even n, so the median interpolates; p95 interpolates too),
        // through their 5 %, 25 %, 50 %, 75 % and 95 % points.
        let x = SortedSample::new(lognormal(100, 1000.0, 0.6, 11)).expect("finite");
        let x = x.as_slice();
        let draws = 20_000;
        for q in [0.5, 0.95] {
            let fast = QuantileResampler::new(x, q).expect("valid");
            let mut rng = Pcg64::seed_from_u64(5);
            let mut f: Vec<f64> = (0..draws).map(|_| fast.draw(&mut rng)).collect();
            let mut rng = Pcg64::seed_from_u64(6);
            let mut buf = Vec::new();
            let mut s: Vec<f64> = (0..draws)
                .map(|_| naive_resample_quantile(x, q, &mut rng, &mut buf))
                .collect();
            f.sort_unstable_by(f64::total_cmp);
            s.sort_unstable_by(f64::total_cmp);
            for level in [0.05, 0.25, 0.5, 0.75, 0.95] {
                let (qf, qs) = (quantile(&f, level), quantile(&s, level));
                let (qf, qs) = (qf.expect("valid"), qs.expect("valid"));
                // Tolerance: 2 % of the value, well above the Monte Carlo
                // error of 20 000 draws and far below the spread of the
                // replicates (≈ 10 %).
                assert!(
                    (qf - qs).abs() < 0.02 * qs,
                    "q={q} level={level}: {qf} vs {qs}"
                );
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            assert!((mean(&f) - mean(&s)).abs() < 0.005 * mean(&s));
        }
    }

    #[test]
    fn degenerate_samples() {
        // One value per side, and constant samples: the interval collapses.
        let ci = bootstrap_ratio_ci(&[2.0], &[3.0], Stat::Median, 100, 0.95, 0).expect("valid");
        assert_eq!(
            ci,
            Interval {
                estimate: 1.5,
                lo: 1.5,
                hi: 1.5
            }
        );
        let ci = bootstrap_ratio_ci(&[4.0; 50], &[4.0; 60], Stat::P95, 100, 0.9, 0).expect("valid");
        assert_eq!(
            ci,
            Interval {
                estimate: 1.0,
                lo: 1.0,
                hi: 1.0
            }
        );
        // Zeros in the baseline: replicates may divide by 0, never give NaN.
        let a = [0.0, 0.0, 0.0, 1.0, 1.0];
        let ci = bootstrap_ratio_ci(&a, &[1.0; 5], Stat::P95, 500, 0.95, 1).expect("valid");
        assert!(!ci.lo.is_nan() && !ci.hi.is_nan(), "{ci:?}");
    }

    #[test]
    fn errors() {
        let x = [1.0, 2.0];
        let e = |a: &[f64], b: &[f64], r, c| bootstrap_ratio_ci(a, b, Stat::Median, r, c, 0);
        assert_eq!(e(&[], &x, 10, 0.95), Err(StatsError::EmptySample));
        assert_eq!(e(&x, &[], 10, 0.95), Err(StatsError::EmptySample));
        assert_eq!(e(&x, &x, 0, 0.95), Err(StatsError::NoResamples));
        assert_eq!(e(&x, &x, 10, 1.0), Err(StatsError::InvalidConfidence(1.0)));
        assert_eq!(e(&x, &x, 10, 0.0), Err(StatsError::InvalidConfidence(0.0)));
        assert!(matches!(
            e(&x, &x, 10, f64::NAN),
            Err(StatsError::InvalidConfidence(_))
        ));
        assert_eq!(
            e(&[0.0, 0.0, 1.0], &x, 10, 0.95),
            Err(StatsError::NonPositiveBaseline(0.0))
        );
        assert!(matches!(
            e(&[f64::NAN], &x, 10, 0.95),
            Err(StatsError::NonFinite(_))
        ));
    }

    #[test]
    fn interval_helpers() {
        let i = Interval {
            estimate: 1.2,
            lo: 1.1,
            hi: 1.3,
        };
        assert!(i.contains(1.1) && i.contains(1.3) && !i.contains(1.31));
        let r = i.shifted(-1.0);
        assert!((r.estimate - 0.2).abs() < 1e-12 && (r.lo - 0.1).abs() < 1e-12);
    }
}
