//! Holm–Bonferroni step-down adjustment for multiple comparisons.

/// Holm–Bonferroni adjusted p-values, returned in input order.
///
/// With the `m` p-values sorted ascending, `p_(1) ≤ … ≤ p_(m)`, the adjusted
/// value of `p_(k)` is `min(1, max_{j ≤ k} (m − j + 1) p_(j))`: monotone in the
/// raw p-values and capped at 1. Rejecting every hypothesis whose adjusted
/// p-value is below `α` controls the family-wise error rate at `α`. This is
/// statsmodels' `multipletests(p, method="holm")[1]`.
///
/// Inputs are clamped to `[0, 1]`; NaN is treated as 1 (no evidence). An
/// empty input gives an empty output. O(m log m).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let clean: Vec<f64> = p
        .iter()
        .map(|&x| if x.is_nan() { 1.0 } else { x.clamp(0.0, 1.0) })
        .collect();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| clean[i].total_cmp(&clean[j]));
    let mut adjusted = vec![1.0; m];
    let mut running_max = 0.0f64;
    for (rank, &idx) in order.iter().enumerate() {
        let scaled = ((m - rank) as f64 * clean[idx]).min(1.0);
        running_max = running_max.max(scaled);
        adjusted[idx] = running_max;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element-wise equality up to 1e-12.
    fn assert_all_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} != {want:?}");
        }
    }

    #[test]
    fn matches_statsmodels() {
        // Reference (statsmodels 0.15.0):
        //   multipletests([0.01, 0.04, 0.03, 0.005, 0.20, 0.04, 0.5, 0.0001],
        //                 method="holm")[1]
        //   -> [0.06, 0.16, 0.15, 0.035, 0.4, 0.16, 0.5, 0.0008]
        // By hand: sorted 0.0001·8, 0.005·7, 0.01·6, 0.03·5, 0.04·4,
        // 0.04·3 → raised to 0.16 by monotonicity, 0.2·2, 0.5·1.
        let p = [0.01, 0.04, 0.03, 0.005, 0.20, 0.04, 0.5, 0.0001];
        let want = [0.06, 0.16, 0.15, 0.035, 0.4, 0.16, 0.5, 0.0008];
        assert_all_close(&holm(&p), &want);
    }

    #[test]
    fn caps_at_one() {
        // statsmodels: multipletests([0.9, 0.6, 0.02], method="holm")[1]
        //   -> [1.0, 1.0, 0.06]
        assert_all_close(&holm(&[0.9, 0.6, 0.02]), &[1.0, 1.0, 0.06]);
    }

    #[test]
    fn edge_cases() {
        assert!(holm(&[]).is_empty());
        assert_all_close(&holm(&[0.03]), &[0.03]);
        // NaN counts as 1 but still counts towards m.
        assert_all_close(&holm(&[f64::NAN, 0.01]), &[1.0, 0.02]);
        assert_all_close(&holm(&[-0.5, 2.0]), &[0.0, 1.0]);
    }
}
