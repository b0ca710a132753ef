//! A side's calls ([`Rows`]) read straight from its Parquet files for `compare` and `diff`
//! (`crate::direct`: files decoded in parallel, strings as interned ids), the filters evaluated
//! as rows are read (their verdict kept in [`KEEP`]: a dropped `C_SignInit` still names its
//! `C_Sign`'s mechanism), and only the few columns the reduction needs kept, as plain vectors.
//! The shim's own calls (`internal`) are not the application's workload and are left out.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rustc_hash::{FxHashMap, FxHashSet};

use super::mechanisms;
use super::rows::{Chunk, FAILED, KEEP, NONE, NULL, Names, RETURNED, Rows, count};
use crate::cli::By;
use crate::direct::columns::{bools, ints};
use crate::direct::{Mapper, Projected, into_names, lock};
use crate::filters::{Criteria, RowFilter};

/// The interners the files read in parallel share (locked once per batch and column, and only
/// when a batch brings a dictionary not seen before).
#[derive(Default)]
struct Shared {
    clients: Mutex<Names>,
    funcs: Mutex<Names>,
    mechs: Mutex<Names>,
    rv_names: Mutex<Names>,
    providers: Mutex<Names>,
    modules: Mutex<Names>,
    groups: Mutex<Names>,
}

/// What a side's read keeps and how it decides.
pub struct Plan<'c> {
    pub criteria: &'c Criteria,
    pub by: Option<By>,
    /// Keep start times (the scripts' order and `--by`'s group order need them).
    pub ordered: bool,
}

impl Plan<'_> {
    /// The string column `--by` splits on (`--by provider` is worked out per client after).
    fn group_column(&self) -> Option<&'static str> {
        match self.by? {
            By::Provider => None,
            By::Module => Some("module"),
            By::Process => Some("process"),
            By::RunId => Some("run_id"),
            By::Host => Some("host"),
        }
    }
}

/// The columns read: six strings, seven integers, two flags, then `run_id` (for `--run-id`) and
/// the `--by` column.
const COLUMNS: [&str; 17] = [
    "client_id",
    "func",
    "mechanism",
    "rv_name",
    "provider",
    "module",
    "op_id",
    "session",
    "seq",
    "start",
    "dur_ns",
    "rv",
    "pid",
    "returned",
    "internal",
    "run_id",
    "group",
];

fn read_file(
    path: &Path,
    plan: &Plan<'_>,
    shared: &Shared,
) -> Result<(Chunk, FxHashSet<(u32, u32)>)> {
    let group = plan.group_column();
    let mut strings = COLUMNS[..6].to_vec();
    strings.extend(["run_id", "process", "host"]);
    let mut filter = RowFilter::new(plan.criteria);
    let columns: Vec<&str> = COLUMNS
        .iter()
        .map(|name| match *name {
            "group" => group.unwrap_or(""),
            "run_id" => filter.run_column(),
            name => name,
        })
        .collect();
    let mut file = Projected::open(path, &columns, &strings)?;
    let mut mappers = [
        &shared.clients,
        &shared.funcs,
        &shared.mechs,
        &shared.rv_names,
        &shared.providers,
        &shared.modules,
    ]
    .map(Mapper::new);
    let mut group_mapper = Mapper::new(&shared.groups);
    let run_names = Mutex::new(Names::default());
    let mut run_mapper = Mapper::new(&run_names);
    let grouped = plan.by.is_some();
    let mut chunk = Chunk::with_capacity(file.rows, grouped, plan.ordered);
    let mut providers = FxHashSet::default();
    let mut strs: [Vec<u32>; 6] = Default::default();
    let (mut group_ids, mut run_ids) = (Vec::new(), Vec::new());
    let mut numbers: [Vec<i64>; 7] = Default::default();
    while let Some(batch) = file.next_batch(path)? {
        let rows = batch.rows();
        let column = |index: usize| batch.column(index);
        let context = |what: &str| format!("{}: column {what}", path.display());
        for (index, (mapper, out)) in mappers.iter_mut().zip(strs.iter_mut()).enumerate() {
            mapper
                .ids(column(index), rows, out)
                .with_context(|| context(COLUMNS[index]))?;
        }
        for (offset, out) in numbers.iter_mut().enumerate() {
            let index = 6 + offset;
            ints(column(index), rows, out).with_context(|| context(COLUMNS[index]))?;
        }
        let returned = bools(column(13), rows, true).with_context(|| context("returned"))?;
        let internal = bools(column(14), rows, false).with_context(|| context("internal"))?;
        run_mapper
            .ids(column(15), rows, &mut run_ids)
            .with_context(|| context("run_id"))?;
        if group.is_some() {
            group_mapper
                .ids(column(16), rows, &mut group_ids)
                .with_context(|| context("group"))?;
        }
        filter.update(&shared.funcs, &run_names);
        let [client, func, mech, rv_name, provider, module] = &strs;
        let [op, session, seq, start, dur, rv, pid] = &numbers;
        for row in 0..rows {
            if provider[row] != NONE {
                providers.insert((client[row], provider[row]));
            }
            if internal[row] {
                continue;
            }
            let kept = filter.keeps(func[row], run_ids[row], pid[row], start[row], rv[row]);
            let failed = rv[row] != NULL && rv[row] != 0;
            chunk.flags.push(
                (u8::from(kept) * KEEP)
                    | (u8::from(returned[row]) * RETURNED)
                    | (u8::from(failed) * FAILED),
            );
            chunk.client.push(client[row]);
            chunk.func.push(func[row]);
            chunk.mech.push(mech[row]);
            chunk.rv_name.push(rv_name[row]);
            if grouped {
                chunk.provider.push(provider[row]);
                chunk.module.push(module[row]);
            } else if kept {
                count(&mut chunk.provider_counts, provider[row]);
                count(&mut chunk.module_counts, module[row]);
            }
            chunk.op.push(op[row]);
            chunk.session.push(session[row]);
            chunk.seq.push(seq[row]);
            if plan.ordered {
                chunk.start.push(start[row]);
            }
            chunk.dur.push(dur[row]);
            if group.is_some() {
                chunk.group.push(group_ids[row]);
            }
        }
    }
    let is_init = mechanisms::inits(&lock(&shared.funcs));
    mechanisms::resolve_chunk(&mut chunk, &is_init);
    Ok((chunk, providers))
}

/// Reads `files` (decoded in parallel) into one side's rows.
pub fn read(files: &[PathBuf], plan: &Plan<'_>) -> Result<Rows> {
    let shared = Shared::default();
    let results = p11trace_dataset::parallel::par_map(files, |path| read_file(path, plan, &shared));
    let mut rows = Rows {
        ordered: plan.ordered,
        ..Rows::default()
    };
    for result in results {
        let (chunk, providers) = result?;
        rows.client_providers.extend(providers);
        rows.chunks.push(chunk);
    }
    rows.clients = into_names(shared.clients);
    rows.funcs = into_names(shared.funcs);
    rows.mechs = into_names(shared.mechs);
    rows.rv_names = into_names(shared.rv_names);
    rows.providers = into_names(shared.providers);
    rows.modules = into_names(shared.modules);
    rows.groups = into_names(shared.groups);
    if plan.by == Some(By::Provider) {
        group_by_provider(&mut rows);
    }
    mechanisms::resolve_across(&mut rows);
    Ok(rows)
}

/// `--by provider`: a client's group is its provider (the greatest, should it have several),
/// else the row's module.
fn group_by_provider(rows: &mut Rows) {
    let mut best: FxHashMap<u32, u32> = FxHashMap::default();
    for &(client, provider) in &rows.client_providers {
        let better = best
            .get(&client)
            .is_none_or(|&current| rows.providers.name(provider) > rows.providers.name(current));
        if better {
            best.insert(client, provider);
        }
    }
    let mut groups = Names::default();
    let mut by_provider: FxHashMap<u32, u32> = FxHashMap::default();
    let mut by_module: FxHashMap<u32, u32> = FxHashMap::default();
    for chunk in &mut rows.chunks {
        chunk.group = (0..chunk.len())
            .map(|row| match best.get(&chunk.client[row]) {
                Some(&provider) => *by_provider
                    .entry(provider)
                    .or_insert_with(|| groups.id(rows.providers.name(provider).unwrap_or(""))),
                None if chunk.module[row] == NONE => NONE,
                None => {
                    let module = chunk.module[row];
                    *by_module
                        .entry(module)
                        .or_insert_with(|| groups.id(rows.modules.name(module).unwrap_or("")))
                }
            })
            .collect();
    }
    rows.groups = groups;
}
