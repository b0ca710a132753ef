//! `compare`: two providers (or two runs, or the groups of one input) side by side. Per function
//! and per (function, mechanism): calls, p50/p95/p99 on each side, the ratio B/A of the medians
//! with a percentile-bootstrap confidence interval, failure rates; then the compatibility answer
//! (what works on one side and fails on the other, with the return codes) and the alignment of
//! the scripts. The JSON keys are documented in `schemas/compare.md`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::align::{Alignment, align};
use super::side::{Group, Side};
use crate::stats::{self, GateConfig, SortedSample, Stat};

/// Version of the compare JSON (`schemas/compare.md`).
pub const COMPARE_VERSION: u32 = 1;

/// One side's latency and failures for a row.
#[derive(Debug, Clone, Serialize)]
pub struct Dist {
    pub calls: u64,
    pub failed: u64,
    pub failure_rate: f64,
    pub p50_ns: Option<f64>,
    pub p95_ns: Option<f64>,
    pub p99_ns: Option<f64>,
}

/// The ratio B/A of the medians with its interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratio {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub func: String,
    pub mechanism: Option<String>,
    pub a: Option<Dist>,
    pub b: Option<Dist>,
    /// `median(B) / median(A)`; null when a side has no successful timed call.
    pub median_ratio: Option<Ratio>,
}

/// A (function, mechanism) whose outcome differs: it fails on one side only.
#[derive(Debug, Clone, Serialize)]
pub struct Compatibility {
    pub func: String,
    pub mechanism: Option<String>,
    /// `ok`, `failed` (every call failed), `mixed`, `absent`.
    pub a: &'static str,
    pub b: &'static str,
    /// Failing return code → calls, per side.
    pub rv_a: BTreeMap<String, u64>,
    pub rv_b: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SideInfo {
    pub name: String,
    pub providers: Vec<String>,
    pub modules: Vec<String>,
    pub calls: u64,
    pub clients: u64,
}

/// One side against the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub functions: Vec<Row>,
    pub mechanisms: Vec<Row>,
    pub compatibility: Vec<Compatibility>,
    pub alignment: Alignment,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub compare_version: u32,
    /// How the intervals are made.
    pub method: String,
    pub baseline: String,
    pub sides: Vec<SideInfo>,
    pub comparisons: Vec<Comparison>,
}

fn dist(group: &Group) -> Dist {
    let [p50, p95, p99] = group.latency();
    Dist {
        calls: group.calls,
        failed: group.failed,
        failure_rate: group.failure_rate(),
        p50_ns: p50,
        p95_ns: p95,
        p99_ns: p99,
    }
}

fn ratio(a: &Group, b: &Group, gate: &GateConfig) -> Option<Ratio> {
    let a = SortedSample::from_sorted(a.durations.clone()).ok()?;
    let b = SortedSample::from_sorted(b.durations.clone()).ok()?;
    let interval = stats::bootstrap_ratio_ci_sorted(
        &a,
        &b,
        Stat::Median,
        gate.resamples,
        gate.confidence,
        gate.seed,
    )
    .ok()?;
    let finite = [interval.estimate, interval.lo, interval.hi]
        .iter()
        .all(|v| v.is_finite());
    finite.then_some(Ratio {
        estimate: interval.estimate,
        lo: interval.lo,
        hi: interval.hi,
    })
}

fn rows<K: Ord + Clone>(
    a: &BTreeMap<K, Group>,
    b: &BTreeMap<K, Group>,
    gate: &GateConfig,
    name: impl Fn(&K) -> (String, Option<String>),
) -> Vec<Row> {
    let keys: BTreeSet<&K> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .map(|key| {
            let (ga, gb) = (a.get(key), b.get(key));
            let (func, mechanism) = name(key);
            Row {
                func,
                mechanism,
                a: ga.map(dist),
                b: gb.map(dist),
                median_ratio: ga.zip(gb).and_then(|(x, y)| ratio(x, y, gate)),
            }
        })
        .collect()
}

fn outcome(group: Option<&Group>) -> &'static str {
    match group {
        None => "absent",
        Some(g) if g.failed == 0 => "ok",
        Some(g) if g.failed >= g.calls => "failed",
        Some(_) => "mixed",
    }
}

fn compatibility(a: &Side, b: &Side) -> Vec<Compatibility> {
    let keys: BTreeSet<_> = a.groups.keys().chain(b.groups.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (ga, gb) = (a.groups.get(key), b.groups.get(key));
            let (oa, ob) = (outcome(ga), outcome(gb));
            // Only calls made on both sides with a different outcome, or made on one side and
            // failing there: what works here and not there.
            let differs = match (oa, ob) {
                ("absent", "absent") => false,
                ("absent", other) | (other, "absent") => other != "ok",
                (x, y) => x != y,
            };
            differs.then(|| Compatibility {
                func: key.func.clone(),
                mechanism: key.mechanism.clone(),
                a: oa,
                b: ob,
                rv_a: ga.map(|g| g.failures.clone()).unwrap_or_default(),
                rv_b: gb.map(|g| g.failures.clone()).unwrap_or_default(),
            })
        })
        .collect()
}

fn info(side: &Side) -> SideInfo {
    SideInfo {
        name: side.name.clone(),
        providers: side.providers.clone(),
        modules: side.modules.clone(),
        calls: side.calls,
        clients: side.clients,
    }
}

/// Compares every side after the first against `sides[baseline]`.
pub fn compare(sides: &[Side], baseline: usize, gate: &GateConfig) -> Report {
    let base = &sides[baseline];
    let base_functions = base.by_function();
    let comparisons = sides
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != baseline)
        .map(|(_, other)| Comparison {
            a: base.name.clone(),
            b: other.name.clone(),
            functions: rows(&base_functions, &other.by_function(), gate, |f| {
                (f.clone(), None)
            }),
            mechanisms: rows(&base.groups, &other.groups, gate, |k| {
                (k.func.clone(), k.mechanism.clone())
            })
            .into_iter()
            .filter(|row| row.mechanism.is_some())
            .collect(),
            compatibility: compatibility(base, other),
            alignment: align(base.scripts.as_deref(), other.scripts.as_deref()),
        })
        .collect();
    Report {
        compare_version: COMPARE_VERSION,
        method: format!(
            "median ratio B/A with a percentile-bootstrap {:.0} % interval ({} resamples, fixed \
             seed) over the successful calls' durations",
            gate.confidence * 100.0,
            gate.resamples
        ),
        baseline: base.name.clone(),
        sides: sides.iter().map(info).collect(),
        comparisons,
    }
}
