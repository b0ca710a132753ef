//! The report's tables as roll-ups of the tally's cells: the totals, per function (with its
//! slow-outlier limit), per return code, per process and per provider. Tables are ordered largest
//! first, ties by name, so a report is the same run to run and on any copy of the dataset.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};

use super::issues::OUTLIER_FACTOR;
use super::ms;
use super::report::{ProcessStats, ProviderStats};
use super::tally::{Calls, Cell, Key, Latency};
use crate::direct::names::{NONE, NULL};

/// The summary's counts.
#[derive(Debug, Default)]
pub struct Totals {
    pub total: u64,
    pub failed: u64,
    pub expected: u64,
    pub unreturned: u64,
    pub total_ns: Option<f64>,
    pub first: Option<i64>,
    pub last: Option<i64>,
    /// Distinct process ids (an unknown one counts as one).
    pub processes: u64,
    /// Distinct clients (an unknown one counts as one).
    pub clients: u64,
    /// Calls whose provider is not known.
    pub provider_nulls: u64,
}

pub fn totals(calls: &Calls) -> Totals {
    let mut totals = Totals::default();
    let (mut timed, mut sum_ns) = (0u64, 0i128);
    let (mut pids, mut clients) = (HashSet::new(), HashSet::new());
    for (key, cell) in &calls.tally.cells {
        totals.total += cell.count;
        totals.failed += calls.failed(key, cell);
        totals.expected += calls.expected(key, cell);
        if !key.returned {
            totals.unreturned += cell.count;
        }
        if key.provider == NONE {
            totals.provider_nulls += cell.count;
        }
        timed += cell.timed;
        sum_ns += cell.sum_ns;
        pids.insert(key.pid);
        clients.insert(key.client);
    }
    totals.total_ns = (timed > 0).then_some(sum_ns as f64);
    totals.first = calls.tally.first_start;
    totals.last = calls.tally.last_start;
    totals.processes = pids.len() as u64;
    totals.clients = clients.len() as u64;
    totals
}

/// A group's latency, in nanoseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub count: u64,
    pub failed: u64,
    pub expected: u64,
    pub timed: u64,
    pub sum_ns: f64,
    pub max: Option<i64>,
    pub p50_ns: Option<f64>,
    pub p95_ns: Option<f64>,
    pub p99_ns: Option<f64>,
}

impl Stats {
    /// The cells' stats, and their latency for what else needs their durations.
    fn of<'c>(cells: &[(&Key, &'c Cell)], calls: &Calls) -> (Stats, Latency<'c>) {
        let mut latency = Latency::default();
        for (key, cell) in cells {
            latency.add(calls, key, cell);
        }
        latency.finish();
        let [p50_ns, p95_ns, p99_ns] = latency.quantiles_ns([0.5, 0.95, 0.99]);
        let stats = Stats {
            count: latency.count,
            failed: latency.failed,
            expected: latency.expected,
            timed: latency.timed,
            sum_ns: latency.sum_ns as f64,
            max: latency.max_ns,
            p50_ns,
            p95_ns,
            p99_ns,
        };
        (stats, latency)
    }

    pub fn total_ns(&self) -> Option<f64> {
        (self.timed > 0).then_some(self.sum_ns)
    }

    pub fn mean_ns(&self) -> Option<f64> {
        (self.timed > 0).then(|| self.sum_ns / self.timed as f64)
    }

    pub fn max_ns(&self) -> Option<f64> {
        self.max.map(|max| max as f64)
    }
}

/// One function's row.
#[derive(Debug)]
pub struct Function {
    pub id: u32,
    pub func: String,
    pub stats: Stats,
    /// The slow-outlier limit (ns) and the calls above it, for a function of 20 calls or more.
    pub outliers: Option<(f64, u64)>,
}

/// The cells grouped by `group` (each group's cells in no order).
fn grouped<G: Ord>(calls: &Calls, group: impl Fn(&Key) -> G) -> BTreeMap<G, Vec<(&Key, &Cell)>> {
    let mut groups: BTreeMap<G, Vec<(&Key, &Cell)>> = BTreeMap::new();
    for (key, cell) in &calls.tally.cells {
        groups.entry(group(key)).or_default().push((key, cell));
    }
    groups
}

/// Per function, the most called first (ties by name), with its slow-outlier limit and the
/// calls above it.
pub fn functions(calls: &Calls, slow_floor_ns: f64) -> Vec<Function> {
    let mut functions: Vec<Function> = grouped(calls, |key| key.func)
        .into_iter()
        .map(|(id, cells)| {
            let (stats, latency) = Stats::of(&cells, calls);
            let outliers = match (stats.p50_ns, stats.p99_ns) {
                (Some(p50), Some(p99)) if stats.count >= 20 => {
                    let limit = p99.max(OUTLIER_FACTOR * p50).max(slow_floor_ns);
                    Some((limit, latency.above(limit) as u64))
                }
                _ => None,
            };
            Function {
                id,
                func: calls.func(id).unwrap_or_default().to_owned(),
                stats,
                outliers,
            }
        })
        .collect();
    functions
        .sort_by(|a, b| (Reverse(a.stats.count), &a.func).cmp(&(Reverse(b.stats.count), &b.func)));
    functions
}

/// (rv, rv_name, expected, calls), the most frequent first: a code's expected and failing calls
/// are apart.
pub fn return_codes(calls: &Calls) -> Vec<(Option<i64>, Option<String>, bool, u64)> {
    let mut codes: BTreeMap<(Option<i64>, Option<&str>, bool), u64> = BTreeMap::new();
    for (key, cell) in &calls.tally.cells {
        let rv = (key.rv != NULL).then_some(key.rv);
        let name = calls.rv_name(key.rv_name);
        let expected = calls.expected(key, cell);
        for (is_expected, count) in [(true, expected), (false, cell.count - expected)] {
            if count > 0 {
                *codes.entry((rv, name, is_expected)).or_default() += count;
            }
        }
    }
    let mut codes: Vec<_> = codes.into_iter().collect();
    // Stable: ties stay in (rv, name, expected) order.
    codes.sort_by_key(|(_, count)| Reverse(*count));
    codes
        .into_iter()
        .map(|((rv, name, expected), count)| (rv, name.map(str::to_owned), expected, count))
        .collect()
}

/// Per (pid, process), the busiest first.
pub fn processes(calls: &Calls) -> Vec<ProcessStats> {
    let mut rows: Vec<ProcessStats> = grouped(calls, |key| {
        let pid = (key.pid != NULL).then_some(key.pid);
        (pid, calls.process(key.process))
    })
    .into_iter()
    .map(|((pid, process), cells)| {
        let mut latency = Latency::default();
        for (key, cell) in cells {
            latency.add(calls, key, cell);
        }
        ProcessStats {
            pid,
            process: process.map(str::to_owned),
            calls: latency.count,
            failed: latency.failed,
            total_ms: if latency.timed > 0 {
                ms(Some(latency.sum_ns as f64))
            } else {
                None
            },
        }
    })
    .collect();
    rows.sort_by_key(|row| Reverse(row.calls));
    rows
}

/// Per provider, the busiest first. A client's provider is known from its `C_GetInfo` on: when
/// some calls have none, all of a client's calls are its first known provider's.
pub fn providers(calls: &Calls, fill: bool) -> Vec<ProviderStats> {
    let provider = |key: &Key| {
        let id = if fill {
            calls
                .tally
                .client_provider
                .get(&key.client)
                .copied()
                .unwrap_or(NONE)
        } else {
            key.provider
        };
        calls.provider(id)
    };
    let mut rows: Vec<ProviderStats> = grouped(calls, provider)
        .into_iter()
        .map(|(provider, cells)| {
            let (stats, _) = Stats::of(&cells, calls);
            let time = |ns: Option<f64>| if stats.timed > 0 { ms(ns) } else { None };
            ProviderStats {
                provider: provider.map(str::to_owned),
                calls: stats.count,
                failed: stats.failed,
                total_ms: time(stats.total_ns()),
                p50_ms: time(stats.p50_ns),
                p99_ms: time(stats.p99_ns),
            }
        })
        .collect();
    rows.sort_by_key(|row| Reverse(row.calls));
    rows
}
