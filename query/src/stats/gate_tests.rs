//! Tests of the two-phase gate (`super`).

use super::*;
use rand_distr::{Distribution, LogNormal, Uniform};
use rand_pcg::Pcg64;
use rand_pcg::rand_core::SeedableRng;

/// `n` log-normal latencies (ns) with the given median and log-sd.
fn lognormal(rng: &mut Pcg64, n: usize, median_ns: f64, sigma: f64) -> Vec<f64> {
    let d = LogNormal::new(median_ns.ln(), sigma).expect("valid parameters");
    (0..n).map(|_| d.sample(rng)).collect()
}

/// Verdict of a single row evaluated as its own family.
fn single(baseline: &[f64], current: &[f64], cfg: &GateConfig) -> (RowStats, RowVerdict) {
    let row = row_stats(baseline, current, cfg).expect("valid row");
    let v = assign_verdicts(std::slice::from_ref(&row), cfg);
    (row, v[0])
}

#[test]
fn false_positive_rate_under_the_null() {
    // 1000 pairs, each drawn from one log-normal distribution (median
    // 25–80 µs, log-sd 0.5: 5–95 % range ≈ 0.44×–2.3× the median), 200
    // calls per side; each pair is gated on its own (no Holm help).
    let cfg = GateConfig::default();
    let mut rng = Pcg64::seed_from_u64(2024);
    let medians = Uniform::new(25_000.0, 80_000.0).expect("valid range");
    let (mut regressed, mut improved, mut raw_significant) = (0, 0, 0);
    let mut rows = Vec::new();
    for _ in 0..1000 {
        let m = medians.sample(&mut rng);
        let a = lognormal(&mut rng, 200, m, 0.5);
        let b = lognormal(&mut rng, 200, m, 0.5);
        let (row, v) = single(&a, &b, &cfg);
        match v.verdict {
            Verdict::Regressed => regressed += 1,
            Verdict::Improved => improved += 1,
            Verdict::Unchanged => {}
            Verdict::InsufficientData => panic!("200 calls is enough"),
        }
        let p = row
            .tested
            .as_ref()
            .map_or(1.0, |t| t.mann_whitney.p_two_sided);
        if p < cfg.alpha {
            raw_significant += 1;
        }
        rows.push(row);
    }
    assert!(regressed <= 10, "{regressed} false regressions out of 1000");
    assert!(improved <= 10, "{improved} false improvements out of 1000");
    // The raw test alone is calibrated: ≈ 1 % of p-values below 0.01.
    assert!(raw_significant <= 25, "{raw_significant} raw p < 0.01");
    // As one Holm family, nothing should be flagged at all.
    let family = assign_verdicts(&rows, &cfg);
    assert!(family.iter().all(|v| v.verdict == Verdict::Unchanged));
}

#[test]
fn detects_a_twofold_slowdown() {
    let cfg = GateConfig::default();
    let mut rng = Pcg64::seed_from_u64(7);
    let mut covered = 0;
    for _ in 0..20 {
        let a = lognormal(&mut rng, 200, 100_000.0, 0.5);
        let b: Vec<f64> = lognormal(&mut rng, 200, 100_000.0, 0.5)
            .into_iter()
            .map(|x| 2.0 * x)
            .collect();
        let (row, v) = single(&a, &b, &cfg);
        assert_eq!(v.verdict, Verdict::Regressed, "{row:?}");
        if row.tested.is_some_and(|t| t.median_ratio.contains(2.0)) {
            covered += 1;
        }
        // And the reverse direction is an improvement.
        assert_eq!(single(&b, &a, &cfg).1.verdict, Verdict::Improved);
    }
    // 95 % intervals: about 19 of 20 should contain the true ratio 2.
    assert!(covered >= 16, "only {covered}/20 intervals contain 2.0");
}

#[test]
fn absolute_floor_suppresses_tiny_changes() {
    // 2× slower, but from 1 µs to 2 µs: below min_effect (10 µs).
    let cfg = GateConfig::default();
    let mut rng = Pcg64::seed_from_u64(8);
    let a = lognormal(&mut rng, 500, 1_000.0, 0.3);
    let b = lognormal(&mut rng, 500, 2_000.0, 0.3);
    let (row, v) = single(&a, &b, &cfg);
    let t = row.tested.expect("tested");
    assert!(v.p_adjusted.is_some_and(|p| p < 1e-10));
    assert!(t.median_rel_change().lo > cfg.threshold);
    assert_eq!(v.verdict, Verdict::Unchanged);
    // With the floor lowered, the same row is a regression.
    let low_floor = GateConfig {
        min_effect_ns: 500.0,
        ..cfg.clone()
    };
    assert_eq!(
        assign_verdicts(&[t.into_row(500)], &low_floor)[0].verdict,
        Verdict::Regressed
    );
}

#[test]
fn noise_band_suppresses_small_relative_changes() {
    // 6 % slower with 20 000 calls a side: highly significant, and over
    // the 10 µs floor at 300 µs, but the interval lies inside the ±10 % band.
    let cfg = GateConfig::default();
    let mut rng = Pcg64::seed_from_u64(9);
    let a = lognormal(&mut rng, 20_000, 300_000.0, 0.3);
    let b = lognormal(&mut rng, 20_000, 318_000.0, 0.3);
    let (row, v) = single(&a, &b, &cfg);
    let t = row.tested.expect("tested");
    assert!(v.p_adjusted.is_some_and(|p| p < 1e-10), "{v:?}");
    assert!(t.median_change_ns >= cfg.min_effect_ns, "{t:?}");
    assert!(t.median_rel_change().lo < cfg.threshold, "{t:?}");
    assert_eq!(v.verdict, Verdict::Unchanged);
}

#[test]
fn insufficient_data_rows_are_not_tested() {
    let cfg = GateConfig::default();
    let few = vec![1.0e5; 29];
    let many = vec![1.0e5; 30];
    let row = row_stats(&few, &many, &cfg).expect("valid");
    assert_eq!(
        row,
        RowStats {
            baseline_n: 29,
            current_n: 30,
            tested: None
        }
    );
    // Not validated, not sorted: even NaN is fine in an untested row.
    assert!(row_stats(&[f64::NAN], &many, &cfg).is_ok());
    let empty = row_stats(
        &[],
        &[],
        &GateConfig {
            min_calls: 0,
            ..cfg.clone()
        },
    );
    assert_eq!(empty.map(|r| r.tested), Ok(None));
    let v = assign_verdicts(&[row], &cfg);
    assert_eq!(
        v,
        vec![RowVerdict {
            verdict: Verdict::InsufficientData,
            p_adjusted: None
        }]
    );
    // Bad data in a tested row is an error.
    let mut bad = many.clone();
    bad[3] = f64::INFINITY;
    assert!(matches!(
        row_stats(&bad, &many, &cfg),
        Err(StatsError::NonFinite(_))
    ));
    assert_eq!(
        row_stats(&vec![0.0; 40], &many, &cfg),
        Err(StatsError::NonPositiveBaseline(0.0))
    );
}

impl TestedRow {
    /// Wraps this row with `n` calls on both sides.
    fn into_row(self, n: usize) -> RowStats {
        RowStats {
            baseline_n: n,
            current_n: n,
            tested: Some(self),
        }
    }
}

/// A clearly regressed row (+50 %, 50 µs) with raw p-value `p`.
fn regressed_row(p: f64) -> RowStats {
    TestedRow {
        baseline_median_ns: 100_000.0,
        current_median_ns: 150_000.0,
        median_change_ns: 50_000.0,
        median_ratio: Interval {
            estimate: 1.5,
            lo: 1.3,
            hi: 1.7,
        },
        p95_ratio: Interval {
            estimate: 1.5,
            lo: 1.3,
            hi: 1.7,
        },
        mann_whitney: MannWhitney {
            u: 0.0,
            z: -3.0,
            p_two_sided: p,
        },
    }
    .into_row(100)
}

#[test]
fn holm_is_applied_across_tested_rows_only() {
    let cfg = GateConfig::default();
    let insufficient = RowStats {
        baseline_n: 3,
        current_n: 100,
        tested: None,
    };
    // Alone, p = 0.004 < 0.01 → regressed; untested rows don't count.
    let v = assign_verdicts(&[insufficient.clone(), regressed_row(0.004)], &cfg);
    assert_eq!(v[0].verdict, Verdict::InsufficientData);
    assert_eq!(
        v[1],
        RowVerdict {
            verdict: Verdict::Regressed,
            p_adjusted: Some(0.004)
        }
    );
    // Three such rows: Holm gives 3 · 0.004 = 0.012 ≥ 0.01 → unchanged.
    let rows = [
        regressed_row(0.004),
        insufficient,
        regressed_row(0.004),
        regressed_row(0.004),
    ];
    let v = assign_verdicts(&rows, &cfg);
    let verdicts: Vec<Verdict> = v.iter().map(|r| r.verdict).collect();
    use Verdict::*;
    assert_eq!(
        verdicts,
        [Unchanged, InsufficientData, Unchanged, Unchanged]
    );
    assert!((v[0].p_adjusted.unwrap_or(0.0) - 0.012).abs() < 1e-12);
    // One much stronger row survives: 3 · 0.001 = 0.003, while the
    // others get max(0.003, 2 · 0.006, 1 · 0.006) = 0.012.
    let rows = [
        regressed_row(0.006),
        regressed_row(0.001),
        regressed_row(0.006),
    ];
    let verdicts: Vec<Verdict> = assign_verdicts(&rows, &cfg)
        .iter()
        .map(|r| r.verdict)
        .collect();
    assert_eq!(verdicts, [Unchanged, Regressed, Unchanged]);
    assert!(assign_verdicts(&[], &cfg).is_empty());
}

#[test]
fn interval_must_clear_the_band() {
    let cfg = GateConfig::default();
    let mut row = regressed_row(1e-6);
    if let Some(t) = row.tested.as_mut() {
        // Estimate +15 %, but the interval reaches down to +8 %.
        t.median_ratio = Interval {
            estimate: 1.15,
            lo: 1.08,
            hi: 1.22,
        };
    }
    assert_eq!(assign_verdicts(&[row], &cfg)[0].verdict, Verdict::Unchanged);
}

#[test]
fn row_stats_is_deterministic_and_sorted_variant_agrees() {
    let cfg = GateConfig::default();
    let mut rng = Pcg64::seed_from_u64(10);
    let a = lognormal(&mut rng, 300, 40_000.0, 0.4);
    let b = lognormal(&mut rng, 250, 45_000.0, 0.4);
    let x = row_stats(&a, &b, &cfg).expect("valid");
    let y = row_stats(&a, &b, &cfg).expect("valid");
    assert_eq!(x, y);
    let sa = SortedSample::new(a).expect("finite");
    let sb = SortedSample::new(b).expect("finite");
    assert_eq!(row_stats_sorted(&sa, &sb, &cfg), Ok(x));
}
