//! One pass in Rust over a side's rows ([`Rows`], their mechanisms resolved): the rows the
//! filters keep reduced per (function, mechanism) to counts, failing return codes, sorted
//! latency samples and per-client medians. Every string is an interned id by now, so the work
//! per row is a few integer operations.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use super::rows::{FAILED, KEEP, NONE, NULL, Names, RETURNED, Rows};
use super::side::{Group, Key};

/// What [`reduce`] finds among the kept rows.
pub struct Reduced {
    pub groups: BTreeMap<Key, Group>,
    pub providers: Vec<String>,
    pub modules: Vec<String>,
    pub clients: u64,
    pub calls: u64,
    pub timed: u64,
}

#[derive(Default)]
struct Accumulator {
    calls: u64,
    failed: u64,
    /// (client, duration ns) of successful timed calls.
    samples: Vec<(u32, i64)>,
    failures: FxHashMap<u32, u64>,
}

fn ranked(names: &Names, counts: &[u64]) -> Vec<String> {
    let mut order: Vec<(u64, &str)> = counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .filter_map(|(id, n)| Some((*n, names.name(id as u32)?)))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    order.into_iter().map(|(_, s)| s.to_owned()).collect()
}

/// The median of a slice sorted ascending.
fn median(sorted: &[i64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2] as f64
    } else {
        (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0
    }
}

fn finish(accumulator: Accumulator, rv_names: &Names) -> Group {
    let mut samples = accumulator.samples;
    // Radix sorts: on 10 M samples a few passes over the bytes that differ, where a comparison
    // sort took most of a second.
    radsort::sort_by_key(&mut samples, |s| (s.0, s.1));
    let mut client_medians = Vec::new();
    let mut durations: Vec<i64> = Vec::with_capacity(samples.len());
    let mut start = 0;
    while start < samples.len() {
        let client = samples[start].0;
        let end = start + samples[start..].partition_point(|s| s.0 == client);
        let first = durations.len();
        durations.extend(samples[start..end].iter().map(|s| s.1));
        client_medians.push(median(&durations[first..]));
        start = end;
    }
    radsort::sort(&mut durations);
    client_medians.sort_unstable_by(f64::total_cmp);
    Group {
        calls: accumulator.calls,
        failed: accumulator.failed,
        durations: durations.into_iter().map(|d| d as f64).collect(),
        client_medians,
        percentiles: None,
        failures: accumulator
            .failures
            .into_iter()
            .map(|(rv, n)| {
                let name = rv_names.name(rv).unwrap_or("(unknown)").to_owned();
                (name, n)
            })
            .collect(),
    }
}

/// Reduces the kept rows of `rows` (of one `--by` group, when given).
pub fn reduce(rows: &Rows, group: Option<u32>) -> Reduced {
    // Counted as the files were read, or here per row (`--by`, which keeps them per row).
    let (mut provider_counts, mut module_counts) = match group {
        None => rows.counts(),
        Some(_) => (
            vec![0u64; rows.providers.len()],
            vec![0u64; rows.modules.len()],
        ),
    };
    let mut seen_client = vec![false; rows.clients.len()];
    let width = rows.mechs.len() + 1;
    let mut slots: Vec<Option<usize>> = vec![None; rows.funcs.len() * width];
    let mut accumulators: Vec<(u32, u32, Accumulator)> = Vec::new();
    let (mut calls, mut timed) = (0u64, 0u64);
    for chunk in &rows.chunks {
        for row in 0..chunk.len() {
            let flags = chunk.flags[row];
            if flags & KEEP == 0 || group.is_some_and(|g| chunk.group.get(row) != Some(&g)) {
                continue;
            }
            calls += 1;
            let client = chunk.client[row];
            if let Some(seen) = seen_client.get_mut(client as usize) {
                *seen = true;
            }
            if group.is_some() {
                for (counts, ids) in [
                    (&mut provider_counts, &chunk.provider),
                    (&mut module_counts, &chunk.module),
                ] {
                    let id = ids.get(row).copied().unwrap_or(NONE);
                    if let Some(count) = counts.get_mut(id as usize) {
                        *count += 1;
                    }
                }
            }
            let (func, mech) = (chunk.func[row], chunk.mech[row]);
            let m = if mech == NONE {
                width - 1
            } else {
                mech as usize
            };
            let Some(slot) = slots.get_mut(func as usize * width + m) else {
                continue;
            };
            let index = *slot.get_or_insert_with(|| {
                accumulators.push((func, mech, Accumulator::default()));
                accumulators.len() - 1
            });
            let accumulator = &mut accumulators[index].2;
            accumulator.calls += 1;
            let failed = flags & FAILED != 0;
            if failed {
                accumulator.failed += 1;
                *accumulator.failures.entry(chunk.rv_name[row]).or_default() += 1;
            }
            let dur = chunk.dur[row];
            if dur != NULL {
                timed += 1;
                if !failed && flags & RETURNED != 0 {
                    accumulator.samples.push((client, dur));
                }
            }
        }
    }
    let groups = accumulators
        .into_iter()
        .map(|(f, m, accumulator)| {
            let key = Key {
                func: rows.funcs.name(f).unwrap_or_default().to_owned(),
                mechanism: rows.mechs.name(m).map(str::to_owned),
            };
            (key, finish(accumulator, &rows.rv_names))
        })
        .collect();
    Reduced {
        groups,
        providers: ranked(&rows.providers, &provider_counts),
        modules: ranked(&rows.modules, &module_counts),
        clients: seen_client.iter().filter(|s| **s).count() as u64,
        calls,
        timed,
    }
}
