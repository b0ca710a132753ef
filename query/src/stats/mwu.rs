//! Two-sided Mann–Whitney U (Wilcoxon rank-sum) test.
//!
//! * Statistic: `U_a = #{(i, j): a_i > b_j} + ½ #{(i, j): a_i = b_j}`, which
//!   equals `R_a − n_a(n_a + 1)/2` with mid-ranks `R_a` — SciPy's
//!   `mannwhitneyu(a, b).statistic`.
//! * Normal approximation: mean `μ = n_a n_b / 2`, and the **tie-corrected**
//!   variance `σ² = n_a n_b / 12 · ((N + 1) − Σ(t³ − t) / (N (N − 1)))`, where
//!   `N = n_a + n_b` and `t` runs over the sizes of groups of tied values.
//! * **Continuity correction**: `|U_a − μ|` is reduced by ½ (not below 0)
//!   before dividing by `σ`.
//! * `p = 2 (1 − Φ(|z|))`, capped at 1.
//!
//! This is exactly SciPy's
//! `mannwhitneyu(a, b, use_continuity=True, alternative="two-sided",
//! method="asymptotic")`. The normal approximation is good for
//! `n_a, n_b ≳ 10`; below that it is only indicative (the gate requires
//! `min_calls` ≥ 30 anyway).
//!
//! Ranking is a merge of the two sorted samples: O(N log N) for the sorts,
//! O(N) for the statistic, with no pairwise comparisons.

use super::StatsError;
use super::sample::SortedSample;

/// Result of [`mann_whitney_u`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// `U` of the first sample `a` (SciPy's `statistic`); the `U` of `b` is
    /// `n_a n_b − u`. Large `u` means `a` tends to be larger than `b`.
    pub u: f64,
    /// Standardised statistic `sign(U_a − μ) · max(|U_a − μ| − ½, 0) / σ`
    /// (tie- and continuity-corrected). `z > 0` means `a` tends to be larger;
    /// with `a` = baseline and `b` = current, a slowdown gives `z < 0`.
    /// 0 when all values are tied.
    pub z: f64,
    /// Two-sided p-value `2 (1 − Φ(|z|))`, in `[0, 1]`; exactly 1 when all
    /// values are tied.
    pub p_two_sided: f64,
}

/// Two-sided Mann–Whitney U test of `a` against `b`; see the [module
/// docs](self) for the exact definition.
///
/// Copies and sorts both inputs. Errors with [`StatsError::EmptySample`] if
/// either is empty and with [`StatsError::NonFinite`] on NaN or ±∞.
pub fn mann_whitney_u(a: &[f64], b: &[f64]) -> Result<MannWhitney, StatsError> {
    if a.is_empty() || b.is_empty() {
        return Err(StatsError::EmptySample);
    }
    let a = SortedSample::from_slice(a)?;
    let b = SortedSample::from_slice(b)?;
    mann_whitney_u_sorted(&a, &b)
}

/// [`mann_whitney_u`] on already sorted samples, in O(n_a + n_b).
///
/// Errors with [`StatsError::EmptySample`] if either sample is empty.
pub fn mann_whitney_u_sorted(
    a: &SortedSample,
    b: &SortedSample,
) -> Result<MannWhitney, StatsError> {
    let (a, b) = (a.as_slice(), b.as_slice());
    if a.is_empty() || b.is_empty() {
        return Err(StatsError::EmptySample);
    }
    let (n_a, n_b) = (a.len(), b.len());

    // Walk both sorted samples in merged order, one group of equal values at a
    // time. For a group holding `ca` values of `a` and `cb` of `b`, each of the
    // `ca` values beats every `b` value seen so far and ties with the `cb`.
    let (mut i, mut j) = (0usize, 0usize);
    let mut u_a = 0.0f64;
    let mut tie_term = 0.0f64; // Σ (t³ − t)
    let mut groups = 0usize; // number of distinct values
    while i < n_a || j < n_b {
        let v = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => break,
        };
        let i0 = i;
        while i < n_a && a[i] == v {
            i += 1;
        }
        let j0 = j;
        while j < n_b && b[j] == v {
            j += 1;
        }
        let (ca, cb) = ((i - i0) as f64, (j - j0) as f64);
        u_a += ca * (j0 as f64) + 0.5 * ca * cb;
        let t = ca + cb;
        tie_term += (t - 1.0) * t * (t + 1.0);
        groups += 1;
    }

    let (na, nb) = (n_a as f64, n_b as f64);
    let n = na + nb;
    let mu = na * nb / 2.0;
    let var = na * nb / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if groups <= 1 || var.is_nan() || var <= 0.0 {
        // Every value is tied (σ = 0): no evidence of any difference.
        return Ok(MannWhitney {
            u: u_a,
            z: 0.0,
            p_two_sided: 1.0,
        });
    }
    let d = u_a - mu;
    let z = d.signum() * (d.abs() - 0.5).max(0.0) / var.sqrt();
    Ok(MannWhitney {
        u: u_a,
        z,
        p_two_sided: normal_two_sided_p(z),
    })
}

/// `2 (1 − Φ(|z|)) = erfc(|z| / √2)`, capped at 1.
pub(super) fn normal_two_sided_p(z: f64) -> f64 {
    libm::erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `got` is within relative tolerance `rel` of `want`.
    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(1e-300)
    }

    #[test]
    fn shier_textbook_example() {
        // Ages of male and female students, from R. Shier, "Statistics: 2.3
        // The Mann-Whitney U Test", Mathematics Learning Support Centre
        // (2004) — the worked example of SciPy's `mannwhitneyu` docs.
        // Reference (scipy 1.17.1):
        //   mannwhitneyu([19, 22, 16, 29, 24], [20, 11, 17, 12],
        //                method="asymptotic", use_continuity=True)
        //   -> statistic=17.0, pvalue=0.11134688653314041
        let male = [19.0, 22.0, 16.0, 29.0, 24.0];
        let female = [20.0, 11.0, 17.0, 12.0];
        let r = mann_whitney_u(&male, &female).expect("non-empty");
        assert_eq!(r.u, 17.0);
        assert!(
            close(r.p_two_sided, 0.111_346_886_533_140_41, 1e-12),
            "{r:?}"
        );
        assert!(r.z > 0.0);
        // Swapping the samples gives U_b = n_a n_b − U_a and the same p.
        let s = mann_whitney_u(&female, &male).expect("non-empty");
        assert_eq!(s.u, 20.0 - 17.0);
        assert_eq!(s.z, -r.z);
        assert!(close(s.p_two_sided, r.p_two_sided, 1e-15));
    }

    #[test]
    fn ties_match_scipy() {
        // Integer-nanosecond-like data with many ties. Reference (scipy 1.17.1):
        //   a = [3, 4, 4, 5, 5, 5, 6, 7, 7, 9]
        //   b = [5, 5, 6, 6, 7, 7, 7, 8, 9, 9, 10, 12]
        //   mannwhitneyu(a, b, method="asymptotic", use_continuity=True)
        //   -> statistic=26.0, pvalue=0.02508235927155431
        let a = [3.0, 4.0, 4.0, 5.0, 5.0, 5.0, 6.0, 7.0, 7.0, 9.0];
        let b = [5.0, 5.0, 6.0, 6.0, 7.0, 7.0, 7.0, 8.0, 9.0, 9.0, 10.0, 12.0];
        let r = mann_whitney_u(&a, &b).expect("non-empty");
        assert_eq!(r.u, 26.0);
        assert!(
            close(r.p_two_sided, 0.025_082_359_271_554_31, 1e-12),
            "{r:?}"
        );
        assert!(r.z < 0.0, "b is larger, so z < 0");
    }

    #[test]
    fn larger_sample_matches_scipy() {
        // Deterministic pseudo-data: a_i = (i * 37) % 101, b_j = (j * 53) % 97 + 8,
        // i < 150, j < 170. Reference (scipy 1.17.1):
        //   a = [(i * 37) % 101 for i in range(150)]
        //   b = [(j * 53) % 97 + 8 for j in range(170)]
        //   mannwhitneyu(a, b, method="asymptotic", use_continuity=True)
        //   -> statistic=11355.0, pvalue=0.09130975631223075
        let a: Vec<f64> = (0..150).map(|i| ((i * 37) % 101) as f64).collect();
        let b: Vec<f64> = (0..170).map(|j| ((j * 53) % 97 + 8) as f64).collect();
        let r = mann_whitney_u(&a, &b).expect("non-empty");
        assert_eq!(r.u, 11355.0);
        assert!(
            close(r.p_two_sided, 0.091_309_756_312_230_75, 1e-10),
            "{r:?}"
        );
        // U by brute force over all pairs.
        let brute: f64 = a
            .iter()
            .flat_map(|x| b.iter().map(move |y| (x, y)))
            .map(|(x, y)| {
                if x > y {
                    1.0
                } else if x == y {
                    0.5
                } else {
                    0.0
                }
            })
            .sum();
        assert_eq!(r.u, brute);
    }

    #[test]
    fn all_ties_give_p_one() {
        let r = mann_whitney_u(&[5.0; 40], &[5.0; 33]).expect("non-empty");
        assert_eq!(
            r,
            MannWhitney {
                u: 40.0 * 33.0 / 2.0,
                z: 0.0,
                p_two_sided: 1.0
            }
        );
        // Single values on each side, tied.
        let r = mann_whitney_u(&[1.0], &[1.0]).expect("non-empty");
        assert_eq!(r.p_two_sided, 1.0);
    }

    #[test]
    fn identical_samples_give_p_one() {
        let x: Vec<f64> = (0..50).map(f64::from).collect();
        let r = mann_whitney_u(&x, &x).expect("non-empty");
        assert_eq!(r.u, 1250.0);
        assert_eq!(r.p_two_sided, 1.0);
    }

    #[test]
    fn errors_on_empty_or_nan() {
        assert_eq!(mann_whitney_u(&[], &[1.0]), Err(StatsError::EmptySample));
        assert_eq!(mann_whitney_u(&[1.0], &[]), Err(StatsError::EmptySample));
        assert!(matches!(
            mann_whitney_u(&[1.0, f64::NAN], &[1.0]),
            Err(StatsError::NonFinite(_))
        ));
        let empty = SortedSample::default();
        let one = SortedSample::from_slice(&[1.0]).expect("finite");
        assert_eq!(
            mann_whitney_u_sorted(&empty, &one),
            Err(StatsError::EmptySample)
        );
    }

    #[test]
    fn complete_separation_is_significant() {
        let a: Vec<f64> = (0..100).map(f64::from).collect();
        let b: Vec<f64> = (1000..1100).map(f64::from).collect();
        let r = mann_whitney_u(&a, &b).expect("non-empty");
        assert_eq!(r.u, 0.0);
        assert!(r.p_two_sided < 1e-30, "{r:?}");
    }
}
