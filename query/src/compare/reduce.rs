//! One pass in Rust over a side's collected calls: each operation's mechanism resolved (by
//! `op_id`, or for sources without them from the last `C_XInit` of the same family on the same
//! session), then the rows the filters keep reduced per (function, mechanism) to counts, failing
//! return codes, sorted latency samples and per-client medians. Strings are interned once (a
//! row's value is compared with the previous row's before any hashing: rows come in runs of
//! one client), so the work per row is a few integer operations.

use std::collections::BTreeMap;

use anyhow::Result;
use polars::prelude::*;
use rustc_hash::FxHashMap;

use super::side::{Group, Key};
use crate::Explain;

/// The boolean column that says which rows the filters keep.
pub const KEEP: &str = "__keep";
const NONE: u32 = u32::MAX;

/// Interned strings, with the previous value cached.
#[derive(Default)]
struct Interner<'a> {
    ids: FxHashMap<&'a str, u32>,
    names: Vec<&'a str>,
    last: Option<(&'a str, u32)>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, value: Option<&'a str>) -> u32 {
        let Some(value) = value else { return NONE };
        if let Some((last, id)) = self.last
            // Values decoded from one dictionary page share their bytes: same pointer, same
            // string, no comparison needed.
            && ((last.as_ptr() == value.as_ptr() && last.len() == value.len()) || last == value)
        {
            return id;
        }
        let next = self.names.len() as u32;
        let id = *self.ids.entry(value).or_insert(next);
        if id == next {
            self.names.push(value);
        }
        self.last = Some((value, id));
        id
    }

    fn name(&self, id: u32) -> Option<String> {
        self.names.get(id as usize).map(|s| (*s).to_owned())
    }
}

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

fn ints<'f>(frame: &'f DataFrame, name: &str) -> Result<&'f Int64Chunked> {
    frame.column(name).explain(name)?.i64().explain(name)
}

fn texts<'f>(frame: &'f DataFrame, name: &str) -> Result<&'f StringChunked> {
    frame.column(name).explain(name)?.str().explain(name)
}

fn flags<'f>(frame: &'f DataFrame, name: &str) -> Result<&'f BooleanChunked> {
    frame.column(name).explain(name)?.bool().explain(name)
}

/// A column's values, chunk by chunk, each chunk walked by its Arrow array's own iterator (no
/// copy into one chunk, none of the chunked array's per-value bookkeeping).
macro_rules! values {
    ($column:expr) => {
        $column.downcast_iter().flat_map(|array| array.iter())
    };
}

/// The operation family of a function (`C_SignUpdate` → `C_Sign`); itself for the others.
fn family(func: &str) -> &str {
    ["Init", "Update", "Final"]
        .iter()
        .find_map(|suffix| func.strip_suffix(suffix))
        .unwrap_or(func)
}

fn ranked(interner: &Interner<'_>, counts: &[u64]) -> Vec<String> {
    let mut order: Vec<(u64, &str)> = counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(id, n)| (*n, interner.names[id]))
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

fn finish(accumulator: Accumulator, rv_names: &Interner<'_>) -> Group {
    let mut samples = accumulator.samples;
    samples.sort_unstable();
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
    durations.sort_unstable();
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
                let name = rv_names.name(rv).unwrap_or_else(|| "(unknown)".to_owned());
                (name, n)
            })
            .collect(),
    }
}

/// Reduces `frame` (the side's columns and [`KEEP`]).
pub fn reduce(frame: &DataFrame) -> Result<Reduced> {
    let height = frame.height();
    if height == 0 {
        return Ok(Reduced {
            groups: BTreeMap::new(),
            providers: Vec::new(),
            modules: Vec::new(),
            clients: 0,
            calls: 0,
            timed: 0,
        });
    }
    let (client_col, func_col, mech_col) = (
        texts(frame, "client_id")?,
        texts(frame, "func")?,
        texts(frame, "mechanism")?,
    );
    let (op_col, session_col, seq_col) = (
        ints(frame, "op_id")?,
        ints(frame, "session")?,
        ints(frame, "seq")?,
    );
    let (mut clients, mut funcs, mut mechs) = (
        Interner::default(),
        Interner::default(),
        Interner::default(),
    );
    let mut client = Vec::with_capacity(height);
    let mut func = Vec::with_capacity(height);
    let mut mech = Vec::with_capacity(height);
    let mut by_op: FxHashMap<(u32, i64), u32> = FxHashMap::default();
    let mut has_op_ids = false;
    for ((c, f), (m, op)) in values!(client_col)
        .zip(values!(func_col))
        .zip(values!(mech_col).zip(values!(op_col)))
    {
        let op = op.copied();
        let (c, m) = (clients.id(c), mechs.id(m));
        client.push(c);
        func.push(funcs.id(f));
        mech.push(m);
        if let Some(op) = op {
            has_op_ids = true;
            if m != NONE {
                by_op.entry((c, op)).or_insert(m);
            }
        }
    }
    // Each row's mechanism: its own, else its operation's.
    if has_op_ids {
        for (row, op) in values!(op_col).enumerate() {
            if mech[row] == NONE
                && let Some(&op) = op
            {
                mech[row] = by_op.get(&(client[row], op)).copied().unwrap_or(NONE);
            }
        }
    } else {
        let families: Vec<u32> = {
            let mut names = Interner::default();
            funcs
                .names
                .iter()
                .map(|f| names.id(Some(family(f))))
                .collect()
        };
        let inits: Vec<bool> = funcs.names.iter().map(|f| f.ends_with("Init")).collect();
        let sessions: Vec<Option<i64>> = values!(session_col).map(|v| v.copied()).collect();
        let seqs: Vec<Option<i64>> = values!(seq_col).map(|v| v.copied()).collect();
        let mut order: Vec<u32> = (0..height as u32).collect();
        order.sort_unstable_by_key(|&row| (client[row as usize], seqs[row as usize], row));
        let mut open: FxHashMap<(u32, i64, u32), u32> = FxHashMap::default();
        for row in order {
            let row = row as usize;
            let Some(session) = sessions[row] else {
                continue;
            };
            let key = (client[row], session, families[func[row] as usize]);
            if inits[func[row] as usize] && mech[row] != NONE {
                open.insert(key, mech[row]);
            } else if mech[row] == NONE {
                mech[row] = open.get(&key).copied().unwrap_or(NONE);
            }
        }
    }

    let (keep, returned) = (
        flags(frame, super::reduce::KEEP)?,
        flags(frame, "returned")?,
    );
    let (rv_col, dur_col) = (ints(frame, "rv")?, ints(frame, "dur_ns")?);
    let (rv_name_col, provider_col, module_col) = (
        texts(frame, "rv_name")?,
        texts(frame, "provider")?,
        texts(frame, "module")?,
    );
    let (mut rv_names, mut providers, mut modules) = (
        Interner::default(),
        Interner::default(),
        Interner::default(),
    );
    let (mut provider_counts, mut module_counts) = (Vec::new(), Vec::new());
    let mut seen_client = vec![false; clients.names.len()];
    let width = mechs.names.len() + 1;
    let mut slots: Vec<Option<usize>> = vec![None; funcs.names.len() * width];
    let mut accumulators: Vec<(u32, u32, Accumulator)> = Vec::new();
    let (mut calls, mut timed) = (0u64, 0u64);
    let columns = values!(keep)
        .zip(values!(returned))
        .zip(values!(rv_col).zip(values!(dur_col)))
        .zip(values!(rv_name_col))
        .zip(values!(provider_col).zip(values!(module_col)));
    for (row, ((((kept, returned), (rv, dur)), rv_name), (provider, module))) in columns.enumerate()
    {
        if kept != Some(true) {
            continue;
        }
        calls += 1;
        seen_client[client[row] as usize] = true;
        for (interner, counts, value) in [
            (&mut providers, &mut provider_counts, provider),
            (&mut modules, &mut module_counts, module),
        ] {
            let id = interner.id(value);
            if id != NONE {
                if counts.len() <= id as usize {
                    counts.resize(id as usize + 1, 0u64);
                }
                counts[id as usize] += 1;
            }
        }
        let m = if mech[row] == NONE {
            width - 1
        } else {
            mech[row] as usize
        };
        let slot = &mut slots[func[row] as usize * width + m];
        let index = *slot.get_or_insert_with(|| {
            accumulators.push((func[row], mech[row], Accumulator::default()));
            accumulators.len() - 1
        });
        let accumulator = &mut accumulators[index].2;
        accumulator.calls += 1;
        let failed = rv.is_some_and(|rv| *rv != 0);
        if failed {
            accumulator.failed += 1;
            *accumulator
                .failures
                .entry(rv_names.id(rv_name))
                .or_default() += 1;
        }
        if let Some(&dur) = dur {
            timed += 1;
            if !failed && returned == Some(true) {
                accumulator.samples.push((client[row], dur));
            }
        }
    }
    let groups = accumulators
        .into_iter()
        .map(|(f, m, accumulator)| {
            let key = Key {
                func: funcs.name(f).unwrap_or_default(),
                mechanism: mechs.name(m),
            };
            (key, finish(accumulator, &rv_names))
        })
        .collect();
    Ok(Reduced {
        groups,
        providers: ranked(&providers, &provider_counts),
        modules: ranked(&modules, &module_counts),
        clients: seen_client.iter().filter(|s| **s).count() as u64,
        calls,
        timed,
    })
}
