//! Comparing two failure rates (`a_fail / a_total` vs `b_fail / b_total`).
//!
//! * [`fisher_exact_two_sided`]: Fisher's exact test on the 2×2 table
//!   `[[a_fail, a_total − a_fail], [b_fail, b_total − b_fail]]`. Two-sided
//!   p-value = total probability, under the hypergeometric null with fixed
//!   margins, of all tables no more likely than the observed one (SciPy's and
//!   R's definition; "no more likely" uses a relative tolerance of 1e-7, as
//!   R's `fisher.test` does, so that tables with mathematically equal
//!   probability are not split by rounding).
//! * [`two_proportion_z`]: pooled two-proportion z-test without continuity
//!   correction (≡ Pearson's χ² test without Yates' correction), as
//!   statsmodels' `proportions_ztest`.
//! * [`failure_rate_test`]: picks one by **Cochran's rule**: Fisher when any
//!   of the four expected cell counts `row · column / N` is below 5 (the
//!   normal approximation is poor there, e.g. for rare failures), the z-test
//!   otherwise.
//!
//! The Fisher implementation computes probabilities relative to the mode by
//! the recurrence `P(x + 1) / P(x) = (n₁ − x)(d − x) / ((x + 1)(n₂ − d + x + 1))`,
//! walking outwards until they underflow, so it neither overflows nor needs
//! log-factorials, and costs O(min(support, ~80 standard deviations)) — a
//! few thousand steps even for tables of millions of calls. (statrs' 0.18/0.19
//! `fishers_exact` goes through `binomial()`, which overflows to ∞ for large
//! margins and then returns wrong two-sided p-values, e.g. 0.082 instead of
//! SciPy's 0.0101 for `[[100, 9999900], [10, 399990]]`; hence this code.)

use super::StatsError;
use super::mwu::normal_two_sided_p;

/// Which test [`failure_rate_test`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProportionMethod {
    /// Fisher's exact test (some expected cell count < 5).
    FisherExact,
    /// Pooled two-proportion z-test (all expected cell counts ≥ 5).
    ZTest,
}

/// Result of [`two_proportion_z`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProportionZ {
    /// `(p_b − p_a) / se` with the pooled standard error; `z > 0` means `b`
    /// fails more often. 0 when no call or every call failed.
    pub z: f64,
    /// Two-sided p-value `2 (1 − Φ(|z|))`.
    pub p_two_sided: f64,
}

/// Result of [`failure_rate_test`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRateTest {
    /// The test chosen by Cochran's rule.
    pub method: ProportionMethod,
    /// Two-sided p-value of that test.
    pub p_two_sided: f64,
    /// `a_fail / a_total`.
    pub a_rate: f64,
    /// `b_fail / b_total`.
    pub b_rate: f64,
}

/// Relative tolerance for "no more likely than the observed table".
const FISHER_REL_TOL: f64 = 1e-7;

/// Smallest expected cell count for which the z-test is used.
const COCHRAN_MIN_EXPECTED: f64 = 5.0;

/// Validated 2×2 table margins.
struct Table {
    /// Observed failures of `a` (the top-left cell).
    x: u64,
    /// Row total of `a`.
    n1: u64,
    /// Row total of `b`.
    n2: u64,
    /// Column total of failures.
    d: u64,
}

impl Table {
    /// Checks `fail ≤ total`, non-zero totals and that `N + 2` fits in u64.
    fn new(a_fail: u64, a_total: u64, b_fail: u64, b_total: u64) -> Result<Self, StatsError> {
        for (failures, total) in [(a_fail, a_total), (b_fail, b_total)] {
            if failures > total {
                return Err(StatsError::InvalidCounts { failures, total });
            }
            if total == 0 {
                return Err(StatsError::EmptySample);
            }
        }
        let overflow = || StatsError::InvalidCounts {
            failures: a_fail.saturating_add(b_fail),
            total: u64::MAX,
        };
        a_total
            .checked_add(b_total)
            .and_then(|n| n.checked_add(2))
            .ok_or_else(overflow)?;
        Ok(Self {
            x: a_fail,
            n1: a_total,
            n2: b_total,
            d: a_fail + b_fail, // ≤ a_total + b_total, checked above
        })
    }

    /// Grand total `N`.
    fn n(&self) -> u64 {
        self.n1 + self.n2
    }

    /// Smallest of the four expected cell counts `row · column / N`.
    fn min_expected(&self) -> f64 {
        let min_row = self.n1.min(self.n2) as f64;
        let min_col = self.d.min(self.n() - self.d) as f64;
        min_row * min_col / self.n() as f64
    }
}

/// Two-sided Fisher exact test p-value for failure counts of `a` and `b`
/// (see the [module docs](self)). 1 when no call (or every call) failed.
///
/// Errors: [`StatsError::InvalidCounts`] if a failure count exceeds its total
/// (or the totals overflow u64), [`StatsError::EmptySample`] if a total is 0.
pub fn fisher_exact_two_sided(
    a_fail: u64,
    a_total: u64,
    b_fail: u64,
    b_total: u64,
) -> Result<f64, StatsError> {
    let t = Table::new(a_fail, a_total, b_fail, b_total)?;
    Ok(fisher_p(&t))
}

/// Fisher's two-sided p-value on validated margins.
fn fisher_p(t: &Table) -> f64 {
    let Table { x, n1, n2, d } = *t;
    // Support of the top-left cell given the margins.
    let lo = d.saturating_sub(n2);
    let hi = d.min(n1);
    if lo == hi {
        return 1.0;
    }
    // P(x + 1) / P(x), for lo ≤ x < hi. All factors are ≥ 1 there: x < n1,
    // x < d, and n2 + x ≥ d because x ≥ lo.
    let up =
        |x: u64| ((n1 - x) as f64 * (d - x) as f64) / ((x + 1) as f64 * (n2 + x + 1 - d) as f64);
    let mode_wide = (u128::from(n1) + 1) * (u128::from(d) + 1) / (u128::from(n1 + n2) + 2);
    let mode = u64::try_from(mode_wide).unwrap_or(hi).clamp(lo, hi);

    // Probability of the observed table relative to the mode's.
    let mut r_obs = 1.0f64;
    if x >= mode {
        for k in mode..x {
            r_obs *= up(k);
        }
    } else {
        for k in (x..mode).rev() {
            r_obs /= up(k);
        }
    }
    let threshold = r_obs * (1.0 + FISHER_REL_TOL);

    // Sum all relative probabilities, and those ≤ threshold, walking out from
    // the mode until they underflow (the distribution is unimodal).
    let (mut total, mut tail) = (0.0f64, 0.0f64);
    let mut add = |r: f64| {
        total += r;
        if r <= threshold {
            tail += r;
        }
    };
    let (mut r, mut k) = (1.0f64, mode);
    add(r);
    while k < hi {
        r *= up(k);
        k += 1;
        if r == 0.0 {
            break;
        }
        add(r);
    }
    let (mut r, mut k) = (1.0f64, mode);
    while k > lo {
        k -= 1;
        r /= up(k);
        if r == 0.0 {
            break;
        }
        add(r);
    }
    (tail / total).min(1.0)
}

/// Pooled two-proportion z-test of `a_fail / a_total` against
/// `b_fail / b_total` (see the [module docs](self)).
///
/// Errors as [`fisher_exact_two_sided`].
pub fn two_proportion_z(
    a_fail: u64,
    a_total: u64,
    b_fail: u64,
    b_total: u64,
) -> Result<ProportionZ, StatsError> {
    let t = Table::new(a_fail, a_total, b_fail, b_total)?;
    Ok(z_test(&t))
}

/// The z-test on validated margins.
fn z_test(t: &Table) -> ProportionZ {
    let (n1, n2) = (t.n1 as f64, t.n2 as f64);
    let pa = t.x as f64 / n1;
    let pb = (t.d - t.x) as f64 / n2;
    let pooled = t.d as f64 / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se.is_nan() || se <= 0.0 {
        return ProportionZ {
            z: 0.0,
            p_two_sided: 1.0,
        };
    }
    let z = (pb - pa) / se;
    ProportionZ {
        z,
        p_two_sided: normal_two_sided_p(z),
    }
}

/// Compares two failure rates, choosing Fisher's exact test or the z-test by
/// Cochran's rule (Fisher iff some expected cell count is below 5).
///
/// Errors as [`fisher_exact_two_sided`].
pub fn failure_rate_test(
    a_fail: u64,
    a_total: u64,
    b_fail: u64,
    b_total: u64,
) -> Result<FailureRateTest, StatsError> {
    let t = Table::new(a_fail, a_total, b_fail, b_total)?;
    let (method, p_two_sided) = if t.min_expected() < COCHRAN_MIN_EXPECTED {
        (ProportionMethod::FisherExact, fisher_p(&t))
    } else {
        (ProportionMethod::ZTest, z_test(&t).p_two_sided)
    };
    Ok(FailureRateTest {
        method,
        p_two_sided,
        a_rate: a_fail as f64 / a_total as f64,
        b_rate: b_fail as f64 / b_total as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `got` is within relative tolerance `rel` of `want`.
    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs()
    }

    #[test]
    fn fisher_matches_scipy() {
        // Reference (scipy 1.17.1), for each (a_fail, a_total, b_fail, b_total):
        //   fisher_exact([[a_fail, a_total - a_fail],
        //                 [b_fail, b_total - b_fail]]).pvalue
        let cases: [((u64, u64, u64, u64), f64); 8] = [
            // Fisher's "lady tasting tea" table [[3, 1], [1, 3]] (= 34/70).
            ((3, 4, 1, 4), 0.485_714_285_714_285_65),
            // The example table of SciPy's and statrs' docs, [[3, 5], [4, 50]].
            ((3, 8, 4, 54), 0.039_707_492_465_292_815),
            // Equal row totals: several tables tie in probability.
            ((2, 10, 8, 10), 0.023_014_137_565_221_155),
            ((7, 7, 0, 9), 8.741_258_741_258_743e-5),
            ((20, 5000, 45, 5200), 0.003_871_732_504_774_334_4),
            // Large margins. statrs 0.18/0.19 `fishers_exact` gives 0.0823
            // for the first and 4.23e-6 for the third (overflow in its pmf).
            ((100, 10_000_000, 10, 400_000), 0.010_084_725_415_862_193),
            ((1, 1_000_000, 6, 1_000_000), 0.124_999_343_776_224_92),
            ((500, 1000, 600, 1000), 8.453_719_674_485_626e-6),
        ];
        for ((af, at, bf, bt), want) in cases {
            let got = fisher_exact_two_sided(af, at, bf, bt).expect("valid table");
            assert!(
                close(got, want, 1e-9),
                "{af}/{at} vs {bf}/{bt}: {got} != {want}"
            );
            // Swapping the rows, or failures with successes, leaves p unchanged.
            let swapped = fisher_exact_two_sided(bf, bt, af, at).expect("valid table");
            let flipped = fisher_exact_two_sided(at - af, at, bt - bf, bt).expect("valid");
            assert!(close(swapped, want, 1e-9) && close(flipped, want, 1e-9));
        }
    }

    #[test]
    fn fisher_degenerate_tables() {
        // scipy: fisher_exact([[0, 50], [0, 60]]).pvalue -> 1.0
        assert_eq!(fisher_exact_two_sided(0, 50, 0, 60), Ok(1.0));
        assert_eq!(fisher_exact_two_sided(50, 50, 60, 60), Ok(1.0));
        assert_eq!(fisher_exact_two_sided(1, 1, 0, 1), Ok(1.0));
        assert_eq!(
            fisher_exact_two_sided(0, 0, 1, 2),
            Err(StatsError::EmptySample)
        );
        assert_eq!(
            fisher_exact_two_sided(3, 2, 1, 2),
            Err(StatsError::InvalidCounts {
                failures: 3,
                total: 2
            })
        );
        assert!(fisher_exact_two_sided(0, u64::MAX, 0, 1).is_err());
    }

    #[test]
    fn z_test_matches_statsmodels() {
        // Reference (statsmodels 0.15.0):
        //   proportions_ztest([a_fail, b_fail], [a_total, b_total])
        // statsmodels' z is (p_a − p_b)/se, the opposite sign of ours.
        let cases = [
            (
                (20, 5000, 45, 5200),
                -2.952_774_130_920_891_2,
                0.003_149_323_046_275_505_4,
            ),
            (
                (500, 1000, 600, 1000),
                -4.494_665_749_754_946_5,
                6.967_931_072_849_849e-6,
            ),
            (
                (120, 100_000, 150, 90_000),
                -2.696_217_670_900_104,
                0.007_013_182_121_887_763_5,
            ),
        ];
        for ((af, at, bf, bt), z_sm, p) in cases {
            let r = two_proportion_z(af, at, bf, bt).expect("valid table");
            assert!(close(r.z, -z_sm, 1e-12), "{r:?}");
            assert!(close(r.p_two_sided, p, 1e-10), "{r:?}");
        }
        assert_eq!(
            two_proportion_z(0, 10, 0, 20),
            Ok(ProportionZ {
                z: 0.0,
                p_two_sided: 1.0
            })
        );
    }

    #[test]
    fn cochran_rule_picks_the_test() {
        // Expected failures of a: 1 000 000 · 7 / 2 000 000 = 3.5 < 5 → Fisher.
        let r = failure_rate_test(1, 1_000_000, 6, 1_000_000).expect("valid");
        assert_eq!(r.method, ProportionMethod::FisherExact);
        assert!(close(r.p_two_sided, 0.124_999_343_776_224_92, 1e-9));
        // Smallest expected count 5000 · 65 / 10200 ≈ 31.9 → z-test.
        let r = failure_rate_test(20, 5000, 45, 5200).expect("valid");
        assert_eq!(r.method, ProportionMethod::ZTest);
        assert!(close(r.p_two_sided, 0.003_149_323_046_275_505_4, 1e-10));
        assert_eq!((r.a_rate, r.b_rate), (20.0 / 5000.0, 45.0 / 5200.0));
        assert!(failure_rate_test(1, 0, 0, 1).is_err());
    }
}
