//! `diff`: the regression gate. Per (function, mechanism), three verdicts that do not flap on a
//! noisy machine — latency (criterion's rule: significant after Holm, the whole interval of the
//! relative median change beyond the noise band, and an absolute floor), return codes (new
//! failing codes; failure rates that changed significantly, Fisher/z-test with Holm), and
//! workload shape (calls per client beyond the noise band; functions that appear or vanish).
//! The JSON keys are documented in `schemas/diff.md`.

use std::collections::BTreeSet;

use serde::Serialize;

pub use crate::cli::FailOn;

use super::drift::Drift;
use super::side::{Basis, Group, Key, Side};
use crate::stats::{self, GateConfig, Verdict, holm};

/// Version of the diff JSON (`schemas/diff.md`).
pub const DIFF_VERSION: u32 = 1;

/// The settings of one diff.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gate: GateConfig,
    pub fail_on: FailOn,
    /// Judge rows against the machine's drift ([`Drift`]).
    pub drift_correction: bool,
    /// Largest drift (relative, 0.5 = ±50 %) taken for the machine's.
    pub drift_max: f64,
}

/// A verdict as the JSON spells it.
fn word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Regressed => "regressed",
        Verdict::Improved => "improved",
        Verdict::Unchanged => "unchanged",
        Verdict::InsufficientData => "insufficient_data",
    }
}

/// One side's figures for an entry.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub calls: u64,
    pub failed: u64,
    pub failure_rate: f64,
    pub calls_per_client: f64,
    /// Calls per cryptographic operation started on that side (successful `C_XInit` other than
    /// `C_FindObjectsInit`): `C_GetAttributeValue` per signature, say. Null without operations.
    pub calls_per_operation: Option<f64>,
    /// Successful calls with a duration (the latency samples).
    pub timed: usize,
    pub p50_ns: Option<f64>,
    pub p95_ns: Option<f64>,
}

/// A relative change with its confidence interval (0.25 = 25 % more).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Change {
    pub estimate: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewFailure {
    pub rv_name: String,
    pub count: u64,
}

/// One (function, mechanism).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub func: String,
    pub mechanism: Option<String>,
    /// Latency: `regressed`, `improved`, `unchanged`, `insufficient_data`, `no_durations`.
    pub verdict: &'static str,
    /// Return codes: `regressed`, `improved`, `unchanged`.
    pub rv_verdict: &'static str,
    /// Calls per client: `regressed` (more, or the function appeared), `improved` (fewer, or it
    /// vanished), `unchanged`.
    pub count_verdict: &'static str,
    /// `both`, `added` (only in current), `removed` (only in baseline).
    pub presence: &'static str,
    /// What the latency verdict rests on: `samples`, `percentiles`, `none`.
    pub basis: &'static str,
    pub baseline: Figures,
    pub current: Figures,
    pub median_change: Option<Change>,
    pub p95_change: Option<Change>,
    pub median_change_ns: Option<f64>,
    /// Mann–Whitney U, two-sided, before and after Holm's correction.
    pub p_value: Option<f64>,
    pub p_adjusted: Option<f64>,
    /// Failure-rate test (Fisher exact or two-proportion z), after Holm.
    pub rv_test: Option<&'static str>,
    pub rv_p_adjusted: Option<f64>,
    pub new_failures: Vec<NewFailure>,
    pub count_change: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SideSummary {
    pub name: String,
    pub calls: u64,
    pub clients: u64,
    pub providers: Vec<String>,
    pub basis: Basis,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub entries: usize,
    pub regressed: usize,
    pub improved: usize,
    pub unchanged: usize,
    pub insufficient_data: usize,
    pub no_durations: usize,
    pub rv_regressed: usize,
    pub count_regressed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SettingsOut {
    pub threshold: f64,
    pub alpha: f64,
    pub min_calls: usize,
    pub min_effect_ns: f64,
    pub fail_on: FailOn,
    pub method: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub diff_version: u32,
    pub baseline: SideSummary,
    pub current: SideSummary,
    pub settings: SettingsOut,
    pub summary: Totals,
    /// The machine's drift between the recordings, and whether verdicts were judged against it.
    pub drift: Drift,
    /// `true` when something `--fail-on` names was found: the exit status is 1.
    pub failed: bool,
    pub entries: Vec<Entry>,
}

fn summary(side: &Side) -> SideSummary {
    SideSummary {
        name: side.name.clone(),
        calls: side.calls,
        clients: side.clients,
        providers: side.providers.clone(),
        basis: side.basis,
    }
}

/// One side's figures for a key; `operations` is the side's [`Side::operations`].
fn figures(group: Option<&Group>, side: &Side, operations: u64) -> Figures {
    let clients = side.clients;
    let empty = Group::default();
    let group = group.unwrap_or(&empty);
    let [p50, p95, _] = group.latency();
    Figures {
        calls: group.calls,
        failed: group.failed,
        failure_rate: group.failure_rate(),
        calls_per_client: group.calls as f64 / clients.max(1) as f64,
        calls_per_operation: (operations > 0).then(|| group.calls as f64 / operations as f64),
        timed: group.durations.len(),
        p50_ns: p50,
        p95_ns: p95,
    }
}

/// A relative change from a ratio interval; `None` where the ratio is not finite (a zero
/// baseline median), and bounds that are not finite left out.
fn change(interval: stats::Interval) -> Option<Change> {
    let finite = |v: f64| v.is_finite().then_some(v - 1.0);
    Some(Change {
        estimate: finite(interval.estimate)?,
        lo: finite(interval.lo),
        hi: finite(interval.hi),
    })
}

/// Widens a row's median-ratio interval to cover the between-client one: with two or more
/// clients on each side, the percentile bootstrap over the clients' medians (the clients of one
/// run differ in speed; calls of one client are not independent draws). The estimate stays the
/// calls' median ratio.
fn widen_by_clients(row: &mut stats::RowStats, a: &Group, b: &Group, gate: &GateConfig) {
    let Some(tested) = row.tested.as_mut() else {
        return;
    };
    if a.client_medians.len() < 2 || b.client_medians.len() < 2 {
        return;
    }
    let sample = |values: &[f64]| stats::SortedSample::from_sorted(values.to_vec());
    let (Ok(ca), Ok(cb)) = (sample(&a.client_medians), sample(&b.client_medians)) else {
        return;
    };
    let clients = stats::bootstrap_ratio_ci_sorted(
        &ca,
        &cb,
        stats::Stat::Median,
        gate.resamples,
        gate.confidence,
        gate.seed,
    );
    if let Ok(clients) = clients {
        let calls = &mut tested.median_ratio;
        calls.lo = calls.lo.min(clients.lo);
        calls.hi = calls.hi.max(clients.hi);
    }
}

/// A row known only by its percentiles (analysis JSON) and with `--min-calls` calls on each side.
struct PercentileRow {
    index: usize,
    /// (baseline, current), ns.
    p50: (f64, f64),
    p95: (f64, f64),
}

/// The latency verdict from percentiles alone: no test and no interval, so both the p50 and the
/// p95 must move beyond the noise band (against the drift `factor`), and the p50 by the floor.
fn percentile_verdict(row: &PercentileRow, factor: f64, gate: &GateConfig) -> &'static str {
    let change = |(a, b): (f64, f64)| (b / factor) / a - 1.0;
    let (p50, p95) = (change(row.p50), change(row.p95));
    let floor = (row.p50.1 - row.p50.0).abs() >= gate.min_effect_ns;
    if floor && p50 > gate.threshold && p95 > gate.threshold {
        "regressed"
    } else if floor && p50 < -gate.threshold && p95 < -gate.threshold {
        "improved"
    } else {
        "unchanged"
    }
}

/// Compares two sides.
pub fn diff(baseline: &Side, current: &Side, settings: &Settings) -> anyhow::Result<Report> {
    let gate = &settings.gate;
    let operations = (baseline.operations(), current.operations());
    let keys: BTreeSet<&Key> = baseline
        .groups
        .keys()
        .chain(current.groups.keys())
        .collect();
    let basis = match (baseline.basis, current.basis) {
        (Basis::Samples, Basis::Samples) => Basis::Samples,
        (Basis::None, _) | (_, Basis::None) => Basis::None,
        _ => Basis::Percentiles,
    };
    let mut entries = Vec::new();
    let mut latency_rows = Vec::new();
    let mut percentile_rows: Vec<PercentileRow> = Vec::new();
    let mut rv_tests: Vec<(usize, &'static str, f64, bool)> = Vec::new();
    for key in keys {
        let (a, b) = (baseline.groups.get(key), current.groups.get(key));
        let presence = match (a, b) {
            (Some(_), Some(_)) => "both",
            (None, _) => "added",
            (_, None) => "removed",
        };
        let (fa, fb) = (
            figures(a, baseline, operations.0),
            figures(b, current, operations.1),
        );
        let count_change =
            (fa.calls_per_client > 0.0).then(|| fb.calls_per_client / fa.calls_per_client - 1.0);
        let count_verdict = match (presence, count_change) {
            ("added", _) => "regressed",
            ("removed", _) => "improved",
            (_, Some(c)) if c > gate.threshold => "regressed",
            (_, Some(c)) if c < -gate.threshold => "improved",
            _ => "unchanged",
        };
        let mut entry = Entry {
            func: key.func.clone(),
            mechanism: key.mechanism.clone(),
            verdict: "insufficient_data",
            rv_verdict: "unchanged",
            count_verdict,
            presence,
            basis: match basis {
                Basis::Samples => "samples",
                Basis::Percentiles => "percentiles",
                Basis::None => "none",
            },
            baseline: fa,
            current: fb,
            median_change: None,
            p95_change: None,
            median_change_ns: None,
            p_value: None,
            p_adjusted: None,
            rv_test: None,
            rv_p_adjusted: None,
            new_failures: Vec::new(),
            count_change,
        };
        let index = entries.len();
        if basis == Basis::None {
            entry.verdict = "no_durations";
        }
        if let (Some(a), Some(b)) = (a, b) {
            match basis {
                Basis::None => {}
                Basis::Percentiles => {
                    if let (Some(pa), Some(pb)) = (entry.baseline.p50_ns, entry.current.p50_ns) {
                        entry.median_change_ns = Some(pb - pa);
                        entry.median_change = (pa > 0.0).then(|| Change {
                            estimate: pb / pa - 1.0,
                            lo: None,
                            hi: None,
                        });
                        let enough = a.calls.min(b.calls) >= gate.min_calls as u64;
                        let p95 = entry.baseline.p95_ns.zip(entry.current.p95_ns);
                        if let (true, Some((qa, qb))) = (enough && pa > 0.0 && pb > 0.0, p95) {
                            percentile_rows.push(PercentileRow {
                                index,
                                p50: (pa, pb),
                                p95: (qa, qb),
                            });
                        }
                    }
                }
                Basis::Samples => {
                    let row = stats::row_stats_sorted(
                        &stats::SortedSample::from_sorted(a.durations.clone())?,
                        &stats::SortedSample::from_sorted(b.durations.clone())?,
                        gate,
                    );
                    // A zero baseline median (a clock too coarse) leaves the row untested.
                    if let Ok(mut row) = row {
                        widen_by_clients(&mut row, a, b, gate);
                        latency_rows.push((index, row));
                    }
                }
            }
            for (rv, count) in b.failures.iter().filter(|_| baseline.failure_codes) {
                if !a.failures.contains_key(rv) {
                    entry.new_failures.push(NewFailure {
                        rv_name: rv.clone(),
                        count: *count,
                    });
                }
            }
            if a.failed + b.failed > 0
                && let Ok(test) = stats::failure_rate_test(a.failed, a.calls, b.failed, b.calls)
            {
                let method = match test.method {
                    stats::ProportionMethod::FisherExact => "fisher_exact",
                    stats::ProportionMethod::ZTest => "two_proportion_z",
                };
                rv_tests.push((index, method, test.p_two_sided, test.b_rate > test.a_rate));
            }
        } else if let Some(b) = b {
            // A function only the current side calls: its failures are all new.
            entry.new_failures = b
                .failures
                .iter()
                .map(|(rv, count)| NewFailure {
                    rv_name: rv.clone(),
                    count: *count,
                })
                .collect();
        }
        entries.push(entry);
    }
    let rows: Vec<stats::RowStats> = latency_rows.iter().map(|(_, row)| row.clone()).collect();
    let drift = if basis == Basis::Percentiles {
        Drift::of(percentile_rows.iter().map(|r| r.p50.1 / r.p50.0), settings)
    } else {
        Drift::of(
            rows.iter()
                .filter_map(|row| row.tested.as_ref())
                .map(|t| t.median_ratio.estimate),
            settings,
        )
    };
    // Rows are judged against the drift, within the wider of the threshold and the rows' own
    // spread around it.
    let judging = GateConfig {
        threshold: drift.band,
        ..gate.clone()
    };
    for row in &percentile_rows {
        entries[row.index].verdict = percentile_verdict(row, drift.factor(), &judging);
    }
    let judged: Vec<stats::RowStats> = rows.iter().map(|row| drift.discount(row)).collect();
    for ((index, row), verdict) in latency_rows
        .iter()
        .zip(stats::assign_verdicts(&judged, &judging))
    {
        let entry = &mut entries[*index];
        entry.verdict = word(verdict.verdict);
        entry.p_adjusted = verdict.p_adjusted;
        if let Some(tested) = &row.tested {
            entry.median_change = change(tested.median_ratio);
            entry.p95_change = change(tested.p95_ratio);
            entry.median_change_ns = Some(tested.median_change_ns);
            entry.p_value = Some(tested.mann_whitney.p_two_sided);
        }
    }
    let adjusted = holm(&rv_tests.iter().map(|t| t.2).collect::<Vec<_>>());
    for ((index, method, _, higher), p) in rv_tests.iter().zip(adjusted) {
        let entry = &mut entries[*index];
        entry.rv_test = Some(method);
        entry.rv_p_adjusted = Some(p);
        if p < gate.alpha {
            entry.rv_verdict = if *higher { "regressed" } else { "improved" };
        }
    }
    for entry in &mut entries {
        if !entry.new_failures.is_empty() {
            entry.rv_verdict = "regressed";
        }
    }
    let mut totals = Totals {
        entries: entries.len(),
        ..Totals::default()
    };
    for entry in &entries {
        match entry.verdict {
            "regressed" => totals.regressed += 1,
            "improved" => totals.improved += 1,
            "unchanged" => totals.unchanged += 1,
            "no_durations" => totals.no_durations += 1,
            _ => totals.insufficient_data += 1,
        }
        totals.rv_regressed += usize::from(entry.rv_verdict == "regressed");
        totals.count_regressed += usize::from(entry.count_verdict == "regressed");
    }
    let regression = totals.regressed + totals.count_regressed > 0;
    let errors = totals.rv_regressed > 0;
    let failed = match settings.fail_on {
        FailOn::Regression => regression,
        FailOn::Errors => errors,
        FailOn::Any => regression || errors,
        FailOn::Never => false,
    };
    Ok(Report {
        diff_version: DIFF_VERSION,
        baseline: summary(baseline),
        current: summary(current),
        settings: SettingsOut {
            threshold: gate.threshold,
            alpha: gate.alpha,
            min_calls: gate.min_calls,
            min_effect_ns: gate.min_effect_ns,
            fail_on: settings.fail_on,
            method: format!(
                "Mann-Whitney U (two-sided, normal approximation with tie and continuity \
                 correction) with Holm-Bonferroni; percentile bootstrap of the median and p95 \
                 ratios ({} resamples, {:.0} % confidence, fixed seed); failure rates by Fisher's \
                 exact test or the two-proportion z-test (Cochran's rule) with Holm-Bonferroni",
                gate.resamples,
                gate.confidence * 100.0
            ),
        },
        summary: totals,
        drift,
        failed,
        entries,
    })
}
