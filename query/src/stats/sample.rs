//! Sorted samples and order statistics.
//!
//! Quantiles use the Hyndman–Fan **type 7** definition (linear interpolation
//! between order statistics): for `n` sorted values `x[0..n]` and level `q`,
//! `h = (n - 1) q`, and the quantile is
//! `x[⌊h⌋] + (h - ⌊h⌋) (x[⌊h⌋ + 1] - x[⌊h⌋])`. This is the default of R's
//! `quantile`, NumPy's `quantile`/`percentile` (`method="linear"`) and
//! criterion.rs. The median is the type-7 quantile at 0.5, i.e. the middle
//! value for odd `n` and the mean of the two middle values for even `n`.

use super::StatsError;

/// A sample of finite values sorted ascending.
///
/// Construction rejects NaN and ±∞ and normalises `-0.0` to `0.0`, so the
/// order is total and ties are exact `==` comparisons. Sort once, then reuse
/// it for the median, the Mann–Whitney test and the bootstrap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SortedSample {
    /// The values, finite and ascending.
    values: Vec<f64>,
}

impl SortedSample {
    /// Sorts `values` (O(n log n), in place, no extra allocation) after
    /// checking that every value is finite. An empty sample is allowed.
    pub fn new(mut values: Vec<f64>) -> Result<Self, StatsError> {
        check_finite(&values)?;
        normalise_zeros(&mut values);
        values.sort_unstable_by(f64::total_cmp);
        Ok(Self { values })
    }

    /// Copies and sorts `values`; see [`SortedSample::new`].
    pub fn from_slice(values: &[f64]) -> Result<Self, StatsError> {
        Self::new(values.to_vec())
    }

    /// Wraps values that the caller has already sorted ascending, checking
    /// (in O(n)) that they are finite and sorted.
    pub fn from_sorted(mut values: Vec<f64>) -> Result<Self, StatsError> {
        check_finite(&values)?;
        normalise_zeros(&mut values);
        if !values.is_sorted() {
            return Err(StatsError::NotSorted);
        }
        Ok(Self { values })
    }

    /// The sorted values.
    pub fn as_slice(&self) -> &[f64] {
        &self.values
    }

    /// Gives back the sorted values.
    pub fn into_vec(self) -> Vec<f64> {
        self.values
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the sample has no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The median; see [`median`].
    pub fn median(&self) -> Result<f64, StatsError> {
        median(&self.values)
    }

    /// The type-7 quantile at level `q`; see [`quantile`].
    pub fn quantile(&self, q: f64) -> Result<f64, StatsError> {
        quantile(&self.values, q)
    }
}

/// Median of an ascending-sorted slice (type-7 quantile at 0.5).
///
/// Errors with [`StatsError::EmptySample`] on an empty slice. The slice must
/// be sorted ascending (checked by a `debug_assert` only, to keep this O(1));
/// an unsorted slice gives a meaningless value.
pub fn median(sorted: &[f64]) -> Result<f64, StatsError> {
    quantile(sorted, 0.5)
}

/// Type-7 (linear interpolation) quantile of an ascending-sorted slice at
/// level `q ∈ [0, 1]`, in O(1).
///
/// Errors with [`StatsError::EmptySample`] on an empty slice and with
/// [`StatsError::InvalidQuantile`] when `q` is NaN or outside `[0, 1]`. The
/// slice must be sorted ascending (checked by a `debug_assert` only).
pub fn quantile(sorted: &[f64], q: f64) -> Result<f64, StatsError> {
    if !(0.0..=1.0).contains(&q) {
        return Err(StatsError::InvalidQuantile(q));
    }
    let n = sorted.len();
    if n == 0 {
        return Err(StatsError::EmptySample);
    }
    debug_assert!(
        sorted.is_sorted_by(|a, b| a <= b),
        "quantile() needs an ascending-sorted slice"
    );
    let (lo, frac) = type7_position(n, q);
    Ok(interpolate(sorted, lo, frac))
}

/// Position of the type-7 quantile at level `q` in a sorted sample of `n ≥ 1`
/// values: the lower index `lo` and the weight `frac ∈ [0, 1)` of `lo + 1`.
/// `frac` is 0 whenever `lo` is the last index.
pub(super) fn type7_position(n: usize, q: f64) -> (usize, f64) {
    let h = (n - 1) as f64 * q;
    let floor = h.floor();
    // `h` lies in [0, n - 1], so the cast cannot truncate; `min` guards
    // against rounding at q = 1.
    let lo = (floor as usize).min(n - 1);
    let frac = if lo + 1 < n { h - floor } else { 0.0 };
    (lo, frac)
}

/// `x[lo] + frac * (x[lo + 1] - x[lo])`, reading `x[lo + 1]` only when
/// `frac > 0`, and returning `x[lo]` when both values are equal (so that two
/// infinite neighbours do not give NaN). Requires `lo < x.len()`, and
/// `lo + 1 < x.len()` when `frac > 0` (as returned by [`type7_position`]).
pub(super) fn interpolate(x: &[f64], lo: usize, frac: f64) -> f64 {
    let base = x[lo];
    if frac > 0.0 && x[lo + 1] != base {
        base + frac * (x[lo + 1] - base)
    } else {
        base
    }
}

/// Errors with [`StatsError::NonFinite`] on the first NaN or ±∞.
fn check_finite(values: &[f64]) -> Result<(), StatsError> {
    match values.iter().find(|v| !v.is_finite()) {
        Some(&bad) => Err(StatsError::NonFinite(bad)),
        None => Ok(()),
    }
}

/// Turns `-0.0` into `0.0` (adding `0.0` does exactly that) so that sorting by
/// `total_cmp` and tie detection by `==` agree.
fn normalise_zeros(values: &mut [f64]) {
    for v in values {
        *v += 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(&[1.0, 2.0, 10.0]), Ok(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0, 10.0]), Ok(3.0));
        assert_eq!(median(&[7.0]), Ok(7.0));
    }

    #[test]
    fn quantile_matches_numpy_linear() {
        // Reference: numpy 2.4.6, np.quantile(x, q) (default method="linear",
        // i.e. Hyndman–Fan type 7):
        //   x = [1, 3, 4, 8, 10, 20, 21, 50]
        //   [np.quantile(x, q) for q in (0, .1, .25, .5, .9, .95, 1)]
        //   -> [1.0, 2.4, 3.75, 9.0, 29.7, 39.85, 50.0]
        let x = [1.0, 3.0, 4.0, 8.0, 10.0, 20.0, 21.0, 50.0];
        let expected = [
            (0.0, 1.0),
            (0.1, 2.4),
            (0.25, 3.75),
            (0.5, 9.0),
            (0.9, 29.7),
            (0.95, 39.85),
            (1.0, 50.0),
        ];
        for (q, want) in expected {
            let got = quantile(&x, q).expect("valid quantile");
            assert!((got - want).abs() < 1e-12, "q={q}: {got} != {want}");
        }
    }

    #[test]
    fn quantile_errors() {
        assert_eq!(quantile(&[], 0.5), Err(StatsError::EmptySample));
        assert_eq!(median(&[]), Err(StatsError::EmptySample));
        assert_eq!(quantile(&[1.0], 1.5), Err(StatsError::InvalidQuantile(1.5)));
        assert!(matches!(
            quantile(&[1.0], f64::NAN),
            Err(StatsError::InvalidQuantile(_))
        ));
    }

    #[test]
    fn sorted_sample_sorts_and_validates() {
        let s = SortedSample::new(vec![3.0, -0.0, 1.0, 2.0]).expect("finite");
        assert_eq!(s.as_slice(), &[0.0, 1.0, 2.0, 3.0]);
        assert!(s.as_slice()[0].is_sign_positive());
        assert_eq!(s.median(), Ok(1.5));
        assert_eq!(s.len(), 4);
        assert!(
            SortedSample::new(Vec::new())
                .expect("empty is fine")
                .is_empty()
        );
        assert!(matches!(
            SortedSample::new(vec![1.0, f64::NAN]),
            Err(StatsError::NonFinite(_))
        ));
        assert_eq!(
            SortedSample::from_slice(&[1.0, f64::INFINITY]),
            Err(StatsError::NonFinite(f64::INFINITY))
        );
        assert_eq!(
            SortedSample::from_sorted(vec![2.0, 1.0]),
            Err(StatsError::NotSorted)
        );
        assert_eq!(
            SortedSample::from_sorted(vec![1.0, 2.0]).map(SortedSample::into_vec),
            Ok(vec![1.0, 2.0])
        );
    }
}
