//! The compaction: read every source file (two threads), conform each batch to schema v1, bucket
//! rows by period, drop the rows already archived or already seen (`(client_id, seq)` for
//! `calls`, `(client_id, connection)` for `clients`; the first occurrence wins, archive first,
//! then the inputs in the order given), sort by (`start`, `client_id`, `seq`), and write files of
//! about the target size.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use p11trace_dataset::{calls_schema, clients_schema, writer_properties};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::encode::Encoder;
use crate::period::{Period, PeriodKind};
use crate::sources::{SourceFile, Table};

const BATCH_ROWS: usize = 65_536;

/// Where a table keeps its time and its per-client identity.
struct Spec {
    schema: SchemaRef,
    time: &'static str,
    number: &'static str,
}

fn spec(table: Table) -> Spec {
    match table {
        Table::Calls => Spec {
            schema: calls_schema(),
            time: "start",
            number: "seq",
        },
        Table::Clients => Spec {
            schema: clients_schema(),
            time: "connected_at",
            number: "connection",
        },
    }
}

/// Input rows by table and period, in input order.
#[derive(Default)]
pub struct Buckets {
    pub rows: BTreeMap<(Table, Period), Vec<RecordBatch>>,
    /// Bytes and rows of the source files read.
    pub input_bytes: u64,
    pub input_rows: u64,
}

/// Checks a batch against schema v1 column by column and gives it the schema's own fields.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let found = batch.schema();
    if found.fields().len() != schema.fields().len() {
        bail!(
            "{} columns, schema v1 has {}",
            found.fields().len(),
            schema.fields().len()
        );
    }
    for (have, want) in found.fields().iter().zip(schema.fields()) {
        if have.name() != want.name() || have.data_type() != want.data_type() {
            bail!(
                "column `{}` ({}) where schema v1 has `{}` ({})",
                have.name(),
                have.data_type(),
                want.name(),
                want.data_type()
            );
        }
    }
    RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(|e| anyhow!("{e}"))
}

/// One file's rows by period, and its size in bytes.
type FileRows = (Vec<(Period, RecordBatch)>, u64);

fn read_file(source: &SourceFile, kind: PeriodKind) -> Result<FileRows> {
    let path = &source.path;
    let spec = spec(source.table);
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?
        .with_batch_size(BATCH_ROWS)
        .build()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let time_index = spec.schema.index_of(spec.time)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("{}: cannot decode", path.display()))?;
        let batch = conform(batch, &spec.schema).with_context(|| {
            format!(
                "{}: not a schema v1 `{}` file",
                path.display(),
                source.table.name()
            )
        })?;
        let times = batch
            .column(time_index)
            .as_primitive::<TimestampMicrosecondType>();
        let period_of = |row: usize| kind.of(times.is_valid(row).then(|| times.value(row)));
        let first = period_of(0);
        if (0..batch.num_rows()).all(|row| period_of(row) == first) {
            out.push((first, batch));
            continue;
        }
        let mut rows: BTreeMap<Period, Vec<u32>> = BTreeMap::new();
        for row in 0..batch.num_rows() {
            rows.entry(period_of(row)).or_default().push(row as u32);
        }
        for (period, indices) in rows {
            let indices = arrow_array::UInt32Array::from(indices);
            out.push((
                period,
                arrow_select::take::take_record_batch(&batch, &indices)?,
            ));
        }
    }
    Ok((out, bytes))
}

/// Reads every source (two threads), bucketed by table and period in input order.
pub fn read(sources: &[SourceFile], kind: PeriodKind) -> Result<Buckets> {
    let results = crate::par_map(sources, |source| read_file(source, kind));
    let mut buckets = Buckets::default();
    for (source, result) in sources.iter().zip(results) {
        let (batches, bytes) = result?;
        buckets.input_bytes += bytes;
        for (period, batch) in batches {
            buckets.input_rows += batch.num_rows() as u64;
            buckets
                .rows
                .entry((source.table, period))
                .or_default()
                .push(batch);
        }
    }
    Ok(buckets)
}

/// Row identities seen so far in one period of one table.
#[derive(Default)]
pub struct Seen {
    ids: FxHashMap<Box<str>, u32>,
    keys: FxHashSet<(u32, i64)>,
    /// The previous row's client and its id: rows come in runs of one client.
    last: Option<(Box<str>, u32)>,
}

impl Seen {
    fn id(&mut self, client: &str) -> u32 {
        if let Some((last, id)) = &self.last
            && **last == *client
        {
            return *id;
        }
        let id = match self.ids.get(client) {
            Some(&id) => id,
            None => {
                let id = self.ids.len() as u32;
                self.ids.insert(client.into(), id);
                id
            }
        };
        self.last = Some((client.into(), id));
        id
    }

    /// Records the identities of the rows of already-archived files.
    pub fn seed(&mut self, files: &[PathBuf], table: Table) -> Result<()> {
        let spec = spec(table);
        for path in files {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
            let columns = [
                spec.schema.index_of("client_id")?,
                spec.schema.index_of(spec.number)?,
            ];
            let mask = ProjectionMask::roots(builder.parquet_schema(), columns);
            let reader = builder
                .with_projection(mask)
                .with_batch_size(BATCH_ROWS)
                .build()?;
            for batch in reader {
                let batch = batch.with_context(|| format!("{}: cannot decode", path.display()))?;
                let clients = batch.column(0).as_string::<i32>();
                let numbers = batch.column(1).as_primitive::<Int64Type>();
                for row in 0..batch.num_rows() {
                    let id = self.id(clients.value(row));
                    self.keys.insert((id, numbers.value(row)));
                }
            }
        }
        Ok(())
    }
}

/// The rows of one period to write, in output order.
pub struct Selected {
    batches: Vec<RecordBatch>,
    /// (time, client rank, number, batch, row), sorted.
    keys: Vec<(Option<i64>, u32, i64, u32, u32)>,
}

impl Selected {
    pub fn rows(&self) -> usize {
        self.keys.len()
    }
}

/// Drops rows already in `seen` (and repeats within `batches`), and orders the rest.
pub fn select(batches: Vec<RecordBatch>, table: Table, seen: &mut Seen) -> Result<Selected> {
    let spec = spec(table);
    let (client_index, number_index, time_index) = (
        spec.schema.index_of("client_id")?,
        spec.schema.index_of(spec.number)?,
        spec.schema.index_of(spec.time)?,
    );
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut keys = Vec::with_capacity(rows);
    seen.keys.reserve(rows);
    for (b, batch) in batches.iter().enumerate() {
        let clients = batch.column(client_index).as_string::<i32>();
        let numbers = batch.column(number_index).as_primitive::<Int64Type>();
        let times = batch
            .column(time_index)
            .as_primitive::<TimestampMicrosecondType>();
        for row in 0..batch.num_rows() {
            let id = seen.id(clients.value(row));
            let number = numbers.value(row);
            if seen.keys.insert((id, number)) {
                let time = times.is_valid(row).then(|| times.value(row));
                keys.push((time, id, number, b as u32, row as u32));
            }
        }
    }
    // Client ids sort by their text, not by when they were first seen.
    let mut by_text: Vec<(&str, u32)> = seen.ids.iter().map(|(k, &v)| (&**k, v)).collect();
    by_text.sort_unstable();
    let mut rank = vec![0u32; by_text.len()];
    for (position, (_, id)) in by_text.iter().enumerate() {
        rank[*id as usize] = position as u32;
    }
    for key in &mut keys {
        key.1 = rank[key.1 as usize];
    }
    keys.sort_unstable();
    Ok(Selected { batches, keys })
}

/// A file written into the staging folder.
#[derive(Debug, Clone)]
pub struct Staged {
    /// Relative to the archive (and to the staging folder): `calls/date=…/part-….parquet`.
    pub relative: String,
    pub rows: u64,
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
}

/// Writes `selected` as files of about `target_bytes` under `staging`, named
/// `part-<sequence>-<n>.parquet` in the period's date partition.
pub fn write(
    selected: &Selected,
    table: Table,
    period: &Period,
    sequence: u64,
    staging: &Path,
    target_bytes: usize,
) -> Result<Vec<Staged>> {
    let spec = spec(table);
    let refs: Vec<&RecordBatch> = selected.batches.iter().collect();
    let mut staged = Vec::new();
    let mut current: Option<(Encoder, Staged)> = None;
    for chunk in selected.keys.chunks(BATCH_ROWS) {
        if current.is_none() {
            let name = format!("part-{sequence:06}-{:04}.parquet", staged.len());
            let relative = format!("{}/date={}/{name}", table.name(), period.date());
            let encoder = Encoder::create(
                &staging.join(&relative),
                spec.schema.clone(),
                writer_properties(table.name(), &[]),
            )?;
            let file = Staged {
                relative,
                rows: 0,
                min_time: None,
                max_time: None,
            };
            current = Some((encoder, file));
        }
        let indices: Vec<(usize, usize)> =
            chunk.iter().map(|k| (k.3 as usize, k.4 as usize)).collect();
        if let Some((encoder, file)) = current.as_mut() {
            encoder.write(&refs, &indices)?;
            file.rows += chunk.len() as u64;
            file.max_time = chunk.iter().rev().find_map(|k| k.0).or(file.max_time);
            if file.min_time.is_none() {
                file.min_time = chunk.iter().find_map(|k| k.0);
            }
            if encoder.size_estimate() >= target_bytes {
                let (encoder, file) = current.take().expect("a file is open");
                encoder.finish()?;
                staged.push(file);
            }
        }
    }
    if let Some((encoder, file)) = current.take() {
        encoder.finish()?;
        staged.push(file);
    }
    Ok(staged)
}
