//! A side's calls ([`Rows`]) read straight from its Parquet files for `compare` and `diff`
//! (arrow-rs, not polars): the files decoded in parallel, the string columns kept as the files' own
//! dictionaries (a batch's dictionary is mapped to interned ids once, then every row is an
//! index lookup), the filters evaluated as rows are read (their verdict kept in [`KEEP`]: a
//! dropped `C_SignInit` still names its `C_Sign`'s mechanism), and only the few columns the
//! reduction needs kept, as plain vectors. The shim's own calls (`internal`) are not the
//! application's workload and are left out.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, anyhow};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use rustc_hash::{FxHashMap, FxHashSet};

use super::columns::{bools, dictionary, ints, mark_nulls};
use super::mechanisms;
use super::rows::{Chunk, FAILED, KEEP, NONE, NULL, Names, RETURNED, Rows, count};
use crate::cli::By;
use crate::filters::Criteria;

/// Rows per decoded batch: small enough that the reader's buffers are reused from one batch to
/// the next rather than fresh pages each time.
const BATCH_ROWS: usize = 16 * 1024;

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

fn lock(names: &Mutex<Names>) -> MutexGuard<'_, Names> {
    names
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Maps a string column's batches to interned ids, remembering the last dictionary (the
/// batches of one column chunk share it).
struct Mapper<'s> {
    names: &'s Mutex<Names>,
    last: Option<(ArrayRef, Vec<u32>)>,
}

impl<'s> Mapper<'s> {
    fn new(names: &'s Mutex<Names>) -> Mapper<'s> {
        Mapper { names, last: None }
    }

    /// Each row's id (`NONE` for null or a missing column).
    fn ids(&mut self, column: Option<&ArrayRef>, rows: usize, out: &mut Vec<u32>) -> Result<()> {
        out.clear();
        let Some(column) = column else {
            out.resize(rows, NONE);
            return Ok(());
        };
        let dictionary = dictionary(column)?;
        let values = dictionary.values();
        if !self
            .last
            .as_ref()
            .is_some_and(|(last, _)| Arc::ptr_eq(last, values))
        {
            let strings = values.as_string::<i32>();
            let mut names = lock(self.names);
            let map = (0..strings.len())
                .map(|i| {
                    if strings.is_valid(i) {
                        names.id(strings.value(i))
                    } else {
                        NONE
                    }
                })
                .collect();
            self.last = Some((values.clone(), map));
        }
        let map = self
            .last
            .as_ref()
            .map(|(_, map)| map.as_slice())
            .unwrap_or(&[]);
        let keys = dictionary.keys();
        out.extend(
            keys.values()
                .iter()
                .map(|&k| map.get(k as usize).copied().unwrap_or(NONE)),
        );
        mark_nulls(keys.nulls(), out, NONE);
        Ok(())
    }
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

/// The files' columns by name, each `Dictionary(Int32, Utf8)` where it is a string the read
/// maps (a schema hint: the reader then keeps the file's dictionary).
fn hinted(schema: &Schema, strings: &[&str]) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            let is_string = matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            );
            if is_string && strings.contains(&field.name().as_str()) {
                let dict =
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
                Field::new(field.name(), dict, field.is_nullable())
            } else {
                field.as_ref().clone()
            }
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

fn read_file(
    path: &Path,
    plan: &Plan<'_>,
    shared: &Shared,
) -> Result<(Chunk, FxHashSet<(u32, u32)>)> {
    let not_parquet = |e: parquet::errors::ParquetError| {
        anyhow!("{}: not a readable Parquet file: {e}", path.display())
    };
    let (file, plain) = footer(path)?;
    let group = plan.group_column();
    let mut strings = COLUMNS[..6].to_vec();
    strings.extend(["run_id", "process", "host"]);
    let schema = Arc::new(hinted(plain.schema(), &strings));
    let options = ArrowReaderOptions::new().with_schema(schema.clone());
    let metadata =
        ArrowReaderMetadata::try_new(plain.metadata().clone(), options).map_err(not_parquet)?;
    // Where each of COLUMNS is among the projected ones.
    let wanted: Vec<Option<usize>> = COLUMNS
        .iter()
        .map(|name| {
            let name = if *name == "group" {
                group.unwrap_or("")
            } else {
                name
            };
            schema.index_of(name).ok()
        })
        .collect();
    let mut roots: Vec<usize> = wanted.iter().flatten().copied().collect();
    roots.sort_unstable();
    roots.dedup();
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata);
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(not_parquet)?;
    let position = |index: usize| wanted[index].and_then(|at| roots.binary_search(&at).ok());
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
    let rows_in_file = usize::try_from(plain.metadata().file_metadata().num_rows()).unwrap_or(0);
    let grouped = plan.by.is_some();
    let mut chunk = Chunk::with_capacity(rows_in_file, grouped, plan.ordered);
    let mut providers = FxHashSet::default();
    let mut strs: [Vec<u32>; 6] = Default::default();
    let (mut group_ids, mut run_ids) = (Vec::new(), Vec::new());
    let mut numbers: [Vec<i64>; 7] = Default::default();
    let (mut func_keeps, mut run_keeps): (Vec<bool>, Vec<bool>) = (Vec::new(), Vec::new());
    for batch in reader {
        let batch = batch.with_context(|| format!("{}: cannot decode", path.display()))?;
        let rows = batch.num_rows();
        let column = |index: usize| position(index).map(|at| batch.column(at));
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
        // The verdicts of `--func` and `--run-id` per interned value.
        let verdicts =
            |names: &Mutex<Names>, keeps: &mut Vec<bool>, test: &dyn Fn(&str) -> bool| {
                let names = lock(names);
                while keeps.len() < names.len() {
                    let name = names.name(keeps.len() as u32).unwrap_or("");
                    keeps.push(test(name));
                }
            };
        verdicts(&shared.funcs, &mut func_keeps, &|f| {
            plan.criteria.keeps_func(Some(f))
        });
        verdicts(&run_names, &mut run_keeps, &|r| {
            plan.criteria.keeps_run(Some(r))
        });
        let [client, func, mech, rv_name, provider, module] = &strs;
        let [op, session, seq, start, dur, rv, pid] = &numbers;
        let some = |v: i64| (v != NULL).then_some(v);
        for row in 0..rows {
            if provider[row] != NONE {
                providers.insert((client[row], provider[row]));
            }
            if internal[row] {
                continue;
            }
            let kept = func_keeps
                .get(func[row] as usize)
                .copied()
                .unwrap_or(plan.criteria.keeps_func(None))
                && run_keeps
                    .get(run_ids[row] as usize)
                    .copied()
                    .unwrap_or(plan.criteria.keeps_run(None))
                && plan.criteria.keeps_pid(some(pid[row]))
                && plan.criteria.keeps_start(some(start[row]))
                && plan.criteria.keeps_rv(some(rv[row]));
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

/// A Parquet file, opened, and its footer read.
fn footer(path: &Path) -> Result<(File, ArrowReaderMetadata)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
        .map_err(|e| anyhow!("{}: not a readable Parquet file: {e}", path.display()))?;
    Ok((file, metadata))
}

/// Rows in a Parquet file's footer.
pub fn footer_rows(path: &Path) -> Result<u64> {
    let (_, metadata) = footer(path)?;
    Ok(u64::try_from(metadata.metadata().file_metadata().num_rows()).unwrap_or(0))
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
    let take = |names: Mutex<Names>| names.into_inner().unwrap_or_else(|p| p.into_inner());
    rows.clients = take(shared.clients);
    rows.funcs = take(shared.funcs);
    rows.mechs = take(shared.mechs);
    rows.rv_names = take(shared.rv_names);
    rows.providers = take(shared.providers);
    rows.modules = take(shared.modules);
    rows.groups = take(shared.groups);
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
