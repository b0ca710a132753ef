//! A side from an `analyze --format json` report (`schemas/analysis.md`): per function its
//! counts and percentiles, no samples — so no test and no interval (the verdict says so).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::side::{Basis, Group, Key, Percentiles, Side};

/// A side from an `analyze --format json` report (`schemas/analysis.md`): per function its
/// counts and percentiles; no samples, so no test and no interval (the verdict says so).
pub fn from_analysis_json(name: String, path: &std::path::Path) -> Result<Side> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    // Version 1 counted every non-OK call as failed; version 2 counts the protocol's idioms
    // apart (`expected_nonok`). Both are read as non-OK calls, as sides of calls count them.
    let version = report.get("analysis_version").and_then(|v| v.as_u64());
    if !matches!(version, Some(1 | 2)) {
        bail!(
            "{}: not an `analyze --format json` report of analysis version 1 or 2 (no \
             \"analysis_version\": 1 or 2)",
            path.display()
        );
    }
    let performance = report
        .get("performance")
        .and_then(|p| p.as_object())
        .with_context(|| format!("{}: no \"performance\" object", path.display()))?;
    let mut groups = BTreeMap::new();
    let mut any_percentiles = false;
    let mut calls = 0;
    for (func, stats) in performance {
        let number = |key: &str| stats.get(key).and_then(|v| v.as_f64());
        let count = stats
            .get("count")
            .and_then(|v| v.as_u64())
            .with_context(|| format!("{}: performance.{func}.count is missing", path.display()))?;
        let percentiles = match (number("p50_ms"), number("p95_ms"), number("p99_ms")) {
            (Some(p50), Some(p95), Some(p99)) => Some(Percentiles {
                p50: p50 * 1e6,
                p95: p95 * 1e6,
                p99: p99 * 1e6,
            }),
            _ => None,
        };
        any_percentiles |= percentiles.is_some();
        calls = u64::saturating_add(calls, count);
        let failed = ["failed", "expected_nonok"]
            .iter()
            .filter_map(|key| stats.get(*key).and_then(|v| v.as_u64()))
            .fold(0u64, u64::saturating_add);
        if failed > count {
            bail!(
                "{}: performance.{func}.failed ({failed}) is more than its count ({count})",
                path.display()
            );
        }
        let key = Key {
            func: func.clone(),
            mechanism: None,
        };
        let group = Group {
            calls: count,
            failed,
            durations: Vec::new(),
            client_medians: Vec::new(),
            percentiles,
            failures: BTreeMap::new(),
        };
        groups.insert(key, group);
    }
    if calls == 0 {
        bail!("{}: the report holds no calls", path.display());
    }
    let summary = report.get("summary");
    let providers = report
        .get("by_provider")
        .and_then(|p| p.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|p| p.get("provider")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Side {
        name,
        providers,
        modules: Vec::new(),
        clients: summary
            .and_then(|s| s.get("clients"))
            .and_then(|v| v.as_u64())
            .unwrap_or(1)
            .max(1),
        calls,
        basis: if any_percentiles {
            Basis::Percentiles
        } else {
            Basis::None
        },
        groups,
        scripts: None,
        failure_codes: false,
    })
}
