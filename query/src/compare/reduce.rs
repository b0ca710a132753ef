//! One pass in Rust over a side's rows ([`scan::Rows`]): each operation's mechanism resolved (by
//! `op_id`, or for clients without them from the last `C_XInit` of the same family on the same
//! session), then the rows the filters keep reduced per (function, mechanism) to counts, failing
//! return codes, sorted latency samples and per-client medians. Every string is an interned id
//! by now, so the work per row is a few integer operations.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use super::scan::{FAILED, KEEP, NONE, NULL, Names, RETURNED, Rows};
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

/// The operation family of a function (`C_SignUpdate` → `C_Sign`); itself for the others.
fn family(func: &str) -> &str {
    ["Init", "Update", "Final"]
        .iter()
        .find_map(|suffix| func.strip_suffix(suffix))
        .unwrap_or(func)
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

/// Gives rows without a mechanism their operation's: by `(client, op_id)`, or for clients that
/// have no `op_id`s (pkcs11-spy imports) from the last `C_XInit` of the same family on the same
/// session, in `seq` order.
pub fn resolve_mechanisms(rows: &mut Rows) {
    // An operation's calls follow one another (`C_SignInit`, then its `C_Sign`): the last
    // operation is checked before the map is hashed.
    let mut by_op: FxHashMap<(u32, i64), u32> = FxHashMap::default();
    let mut has_ops = vec![false; rows.clients.len()];
    let mut last_inserted = None;
    for chunk in &rows.chunks {
        for row in 0..chunk.len() {
            let (client, op) = (chunk.client[row], chunk.op[row]);
            if op == NULL {
                continue;
            }
            if let Some(flag) = has_ops.get_mut(client as usize) {
                *flag = true;
            }
            if chunk.mech[row] != NONE && last_inserted != Some((client, op)) {
                by_op.entry((client, op)).or_insert(chunk.mech[row]);
                last_inserted = Some((client, op));
            }
        }
    }
    let mut last_found: Option<((u32, i64), u32)> = None;
    let mut rest: Vec<(u32, i64, u32, u32)> = Vec::new();
    for (index, chunk) in rows.chunks.iter_mut().enumerate() {
        for row in 0..chunk.len() {
            let client = chunk.client[row];
            if has_ops.get(client as usize).copied().unwrap_or(false) {
                if chunk.mech[row] == NONE && chunk.op[row] != NULL {
                    let key = (client, chunk.op[row]);
                    chunk.mech[row] = match last_found {
                        Some((last, mech)) if last == key => mech,
                        _ => {
                            let mech = by_op.get(&key).copied().unwrap_or(NONE);
                            last_found = Some((key, mech));
                            mech
                        }
                    };
                }
            } else if chunk.session[row] != NULL {
                rest.push((client, chunk.seq[row], index as u32, row as u32));
            }
        }
    }
    if rest.is_empty() {
        return;
    }
    let mut families = Names::default();
    let family_of: Vec<u32> = (0..rows.funcs.len() as u32)
        .map(|f| families.id(family(rows.funcs.name(f).unwrap_or(""))))
        .collect();
    let inits: Vec<bool> = (0..rows.funcs.len() as u32)
        .map(|f| {
            rows.funcs
                .name(f)
                .is_some_and(|name| name.ends_with("Init"))
        })
        .collect();
    rest.sort_unstable();
    let mut open: FxHashMap<(u32, i64, u32), u32> = FxHashMap::default();
    for (client, _, index, row) in rest {
        let chunk = &mut rows.chunks[index as usize];
        let row = row as usize;
        let func = chunk.func[row] as usize;
        let Some(&family) = family_of.get(func) else {
            continue;
        };
        let key = (client, chunk.session[row], family);
        if inits[func] && chunk.mech[row] != NONE {
            open.insert(key, chunk.mech[row]);
        } else if chunk.mech[row] == NONE {
            chunk.mech[row] = open.get(&key).copied().unwrap_or(NONE);
        }
    }
}

/// Reduces the kept rows of `rows` (of one `--by` group, when given) after
/// [`resolve_mechanisms`].
pub fn reduce(rows: &Rows, group: Option<u32>) -> Reduced {
    let (mut provider_counts, mut module_counts) = (
        vec![0u64; rows.providers.len()],
        vec![0u64; rows.modules.len()],
    );
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
            for (counts, id) in [
                (&mut provider_counts, chunk.provider[row]),
                (&mut module_counts, chunk.module[row]),
            ] {
                if let Some(count) = counts.get_mut(id as usize) {
                    *count += 1;
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
