//! The machine's drift between two recordings, and the noise band rows are judged in.

use serde::Serialize;

use super::diff::Settings;
use crate::stats;

/// The machine's drift between the two recordings: the median, over every row the gate tests,
/// of its median ratio. On a shared machine every call of a later run can be 10–30 % slower
/// (measured here: six back-to-back recordings of one workload drifted +4 % to +30 %, digests
/// and signatures alike); a change that every row shares is the machine, one that a row has
/// alone is the code. Each row is judged against the drift — unless the drift itself is beyond
/// `--drift-max` (a release that slows every call is not noise) or fewer than
/// [`Drift::MIN_ROWS`] rows are tested.
///
/// Nor do all calls drift alike: on a loaded machine the same two runs showed digests 40 %
/// faster and signatures 21 % faster. So the band a row must leave is the wider of
/// `--threshold` and three robust standard deviations of the rows around the drift
/// (1.4826 × their median absolute deviation, in log ratio): a row that moved with the crowd is
/// noise, one that left it is news. One regressed row among several barely moves either.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Drift {
    /// The median of the tested rows' median ratios (1.0 = none).
    pub ratio: f64,
    /// The rows' robust spread around it: 1.4826 × the median absolute deviation of their log
    /// ratios.
    pub spread: f64,
    /// The relative change a row must exceed, against the drift: the wider of `--threshold` and
    /// `exp(3 × spread) − 1` (just `--threshold` when the drift is not applied).
    pub band: f64,
    pub rows: usize,
    /// Whether the rows were judged against it.
    pub applied: bool,
}

impl Drift {
    pub const MIN_ROWS: usize = 3;

    /// The drift of the rows' median ratios.
    pub fn of(ratios: impl Iterator<Item = f64>, settings: &Settings) -> Drift {
        let mut logs: Vec<f64> = ratios
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(f64::ln)
            .collect();
        logs.sort_unstable_by(f64::total_cmp);
        let center = stats::median(&logs).unwrap_or(0.0);
        let mut deviations: Vec<f64> = logs.iter().map(|l| (l - center).abs()).collect();
        deviations.sort_unstable_by(f64::total_cmp);
        let spread = 1.4826 * stats::median(&deviations).unwrap_or(0.0);
        let ratio = center.exp();
        // Symmetric in log ratio: `--drift-max 100%` takes 2× slower and 2× faster alike.
        let within = center.abs() <= settings.drift_max.ln_1p();
        let applied = settings.drift_correction && logs.len() >= Self::MIN_ROWS && within;
        let threshold = settings.gate.threshold;
        Drift {
            ratio,
            spread,
            band: if applied {
                threshold.max((3.0 * spread).exp() - 1.0)
            } else {
                threshold
            },
            rows: logs.len(),
            applied,
        }
    }

    /// What current latencies are divided by before they are judged.
    pub fn factor(&self) -> f64 {
        if self.applied { self.ratio } else { 1.0 }
    }

    /// The row as the gate judges it: its ratios relative to the drift.
    pub fn discount(&self, row: &stats::RowStats) -> stats::RowStats {
        let mut row = row.clone();
        if let (true, Some(tested)) = (self.applied, row.tested.as_mut()) {
            let f = self.ratio;
            let scale = |i: stats::Interval| stats::Interval {
                estimate: i.estimate / f,
                lo: i.lo / f,
                hi: i.hi / f,
            };
            tested.median_ratio = scale(tested.median_ratio);
            tested.p95_ratio = scale(tested.p95_ratio);
            // The absolute change stays as measured: the floor is for what a slowed neighbour
            // costs the next call (a few µs), which does not scale with the drift.
        }
        row
    }
}
