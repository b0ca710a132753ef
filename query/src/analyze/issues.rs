//! "Potential issues", each with the evidence that raised it.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::Serialize;

use super::rollup::Function;
use super::tally::{Calls, Key};
use super::{Sessions, units};
use crate::direct::names::{NONE, NULL};

#[derive(Debug, Serialize)]
pub struct Issue {
    /// Stable identifier: `failed_calls`, `unclosed_sessions`, `finalize_missing`,
    /// `buffer_too_small_storm`, `slow_outliers`, `pin_incorrect_burst`.
    pub kind: &'static str,
    pub severity: &'static str,
    pub message: String,
    pub count: u64,
    pub evidence: Vec<String>,
}

/// `CKR_BUFFER_TOO_SMALL` answers to one function on one session that make a storm.
const STORM: u64 = 3;
/// `CKR_PIN_INCORRECT` answers in one process that make a burst.
const PIN_BURST: u64 = 3;
/// A call is a slow outlier above max(p99, this × p50, the floor) of its function.
pub(super) const OUTLIER_FACTOR: f64 = 10.0;

/// Every issue of `calls`; `slow_floor_ns`: no call faster than this is a slow outlier.
pub fn find(
    calls: &Calls,
    functions: &[Function],
    sessions: &Sessions,
    slow_floor_ns: f64,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    issues.extend(failed_calls(calls));
    if sessions.never_closed > 0 {
        issues.push(Issue {
            kind: "unclosed_sessions",
            severity: "warning",
            message: format!("{} session(s) never closed", sessions.never_closed),
            count: sessions.never_closed,
            evidence: sessions
                .never_closed_examples
                .iter()
                .map(|(client, session)| format!("client {client} session {session:#x}"))
                .collect(),
        });
    }
    issues.extend(finalize_missing(calls));
    issues.extend(buffer_too_small_storms(calls));
    issues.extend(slow_outliers(calls, functions, slow_floor_ns));
    issues.extend(pin_bursts(calls));
    issues
}

/// Counts summed per group, the largest first (ties in the groups' order), and their total;
/// `None` when there are none (no issue to raise).
fn largest_first<G: Ord>(counts: BTreeMap<G, u64>) -> Option<(Vec<(G, u64)>, u64)> {
    let mut counts: Vec<(G, u64)> = counts.into_iter().collect();
    counts.sort_by_key(|(_, count)| Reverse(*count));
    let total = counts.iter().map(|(_, count)| count).sum();
    (!counts.is_empty()).then_some((counts, total))
}

/// A process's "pid 12 (name)", from its client's first call.
fn process_of(calls: &Calls, client: u32) -> String {
    let (pid, process) = calls
        .tally
        .client_first
        .get(&client)
        .copied()
        .unwrap_or((NULL, NONE));
    let pid = if pid == NULL {
        "?".into()
    } else {
        pid.to_string()
    };
    format!("pid {pid} ({})", calls.process(process).unwrap_or_default())
}

/// Calls per client of the cells that `test` picks.
fn per_client(calls: &Calls, test: impl Fn(&Key) -> bool) -> BTreeMap<Option<&str>, (u32, u64)> {
    let mut clients: BTreeMap<Option<&str>, (u32, u64)> = BTreeMap::new();
    for (key, cell) in &calls.tally.cells {
        if test(key) {
            clients
                .entry(calls.client(key.client))
                .or_insert((key.client, 0))
                .1 += cell.count;
        }
    }
    clients
}

fn failed_calls(calls: &Calls) -> Option<Issue> {
    let mut by_rv: BTreeMap<(Option<&str>, Option<&str>), u64> = BTreeMap::new();
    for (key, cell) in &calls.tally.cells {
        let failed = calls.failed(key, cell);
        if failed > 0 {
            *by_rv
                .entry((calls.rv_name(key.rv_name), calls.func(key.func)))
                .or_default() += failed;
        }
    }
    let (by_rv, total) = largest_first(by_rv)?;
    Some(Issue {
        kind: "failed_calls",
        severity: "warning",
        message: format!("{total} call(s) failed"),
        count: total,
        evidence: by_rv
            .iter()
            .map(|((rv_name, func), count)| {
                format!(
                    "{count} x {} from {}",
                    rv_name.unwrap_or_default(),
                    func.unwrap_or_default()
                )
            })
            .collect(),
    })
}

fn finalize_missing(calls: &Calls) -> Option<Issue> {
    let initialized = per_client(calls, |key| {
        calls.func(key.func) == Some("C_Initialize") && key.rv == 0
    });
    let finalized = per_client(calls, |key| calls.func(key.func) == Some("C_Finalize"));
    let missing: Vec<(Option<&str>, u32)> = initialized
        .into_iter()
        .filter(|(name, _)| !finalized.contains_key(name))
        .map(|(name, (client, _))| (name, client))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(Issue {
        kind: "finalize_missing",
        severity: "info",
        message: format!(
            "{} process(es) initialized the library but never called C_Finalize",
            missing.len()
        ),
        count: missing.len() as u64,
        evidence: missing
            .iter()
            .take(10)
            .map(|(name, client)| {
                format!(
                    "{} client {}",
                    process_of(calls, *client),
                    name.unwrap_or_default()
                )
            })
            .collect(),
    })
}

fn buffer_too_small_storms(calls: &Calls) -> Option<Issue> {
    // (client, session, function) → answers.
    type At<'c> = (Option<&'c str>, Option<i64>, Option<&'c str>);
    let mut storms: BTreeMap<At<'_>, u64> = BTreeMap::new();
    for query in &calls.tally.size_queries {
        if calls.rv_name(query.key.rv_name) == Some("CKR_BUFFER_TOO_SMALL") {
            let session = (query.session != NULL).then_some(query.session);
            let at = (
                calls.client(query.key.client),
                session,
                calls.func(query.key.func),
            );
            *storms.entry(at).or_default() += 1;
        }
    }
    storms.retain(|_, count| *count >= STORM);
    let (storms, total) = largest_first(storms)?;
    Some(Issue {
        kind: "buffer_too_small_storm",
        severity: "warning",
        message: format!(
            "{total} CKR_BUFFER_TOO_SMALL answers in {} retry storm(s)",
            storms.len()
        ),
        count: total,
        evidence: storms
            .iter()
            .take(10)
            .map(|((client, session, func), count)| {
                format!(
                    "{count} x {} on session {} of client {}",
                    func.unwrap_or_default(),
                    session.map_or("?".into(), |s| format!("{s:#x}")),
                    client.unwrap_or_default()
                )
            })
            .collect(),
    })
}

fn slow_outliers(calls: &Calls, functions: &[Function], floor_ns: f64) -> Option<Issue> {
    let limits: BTreeMap<u32, f64> = functions
        .iter()
        .filter_map(|f| f.outliers.map(|(limit, _)| (f.id, limit)))
        .collect();
    let count: u64 = functions
        .iter()
        .filter_map(|f| f.outliers.map(|(_, above)| above))
        .sum();
    if count == 0 {
        return None;
    }
    // The slowest ten are among each cell's slowest ten.
    let mut slowest: Vec<(i64, Option<&str>, i64, u32, f64)> = Vec::new();
    for (key, cell) in &calls.tally.cells {
        if let Some(&limit) = limits.get(&key.func) {
            for &(dur, seq) in &cell.slowest {
                if dur as f64 > limit {
                    slowest.push((dur, calls.client(key.client), seq, key.func, limit));
                }
            }
        }
    }
    slowest.sort_by(|a, b| (Reverse(a.0), a.1, a.2).cmp(&(Reverse(b.0), b.1, b.2)));
    Some(Issue {
        kind: "slow_outliers",
        severity: "info",
        message: format!(
            "{count} call(s) slower than max(p99, {OUTLIER_FACTOR}x p50) of their function and than {}",
            units::duration_ns(Some(floor_ns))
        ),
        count,
        evidence: slowest
            .iter()
            .take(10)
            .map(|(dur, client, seq, func, limit)| {
                format!(
                    "{} took {} (limit {}), client {} seq {}",
                    calls.func(*func).unwrap_or_default(),
                    units::duration_ns(Some(*dur as f64)),
                    units::duration_ns(Some(*limit)),
                    client.unwrap_or_default(),
                    if *seq == NULL { -1 } else { *seq }
                )
            })
            .collect(),
    })
}

fn pin_bursts(calls: &Calls) -> Option<Issue> {
    let bursts: BTreeMap<(Option<&str>, u32), u64> = per_client(calls, |key| {
        calls.rv_name(key.rv_name) == Some("CKR_PIN_INCORRECT")
    })
    .into_iter()
    .filter(|(_, (_, count))| *count >= PIN_BURST)
    .map(|(name, (client, count))| ((name, client), count))
    .collect();
    let (bursts, total) = largest_first(bursts)?;
    Some(Issue {
        kind: "pin_incorrect_burst",
        severity: "critical",
        message: format!(
            "{total} wrong PINs in {} process(es): a guessing attempt or a misconfiguration",
            bursts.len()
        ),
        count: total,
        evidence: bursts
            .iter()
            .take(10)
            .map(|((_, client), count)| {
                format!(
                    "{count} x CKR_PIN_INCORRECT in {}",
                    process_of(calls, *client)
                )
            })
            .collect(),
    })
}
