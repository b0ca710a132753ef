//! Parquet read straight into plain vectors (arrow-rs, not polars), for the commands that fold
//! ten million calls into a few hundred numbers (`analyze`, `compare`, `diff`): only the columns
//! asked for are decoded, string columns stay the files' own dictionaries (a batch's dictionary
//! is mapped to interned ids once, then every row is an index lookup), and a batch's memory is
//! reused for the next. What each command keeps of a row is its own business.

pub mod columns;
pub mod names;

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, anyhow};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};

use columns::{dictionary, mark_nulls};
use names::{NONE, Names};

/// Rows per decoded batch: small enough that the reader's buffers are reused from one batch to
/// the next rather than fresh pages each time.
const BATCH_ROWS: usize = 16 * 1024;

/// Locks an interner the files read in parallel share (a poisoned lock still holds good names:
/// interning never leaves them half-written).
pub fn lock(names: &Mutex<Names>) -> MutexGuard<'_, Names> {
    names
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An interner shared by parallel reads, handed back once they are done.
pub fn into_names(names: Mutex<Names>) -> Names {
    names.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Maps a string column's batches to interned ids, remembering the last dictionary (the
/// batches of one column chunk share it).
pub struct Mapper<'s> {
    names: &'s Mutex<Names>,
    last: Option<(ArrayRef, Vec<u32>)>,
}

impl<'s> Mapper<'s> {
    pub fn new(names: &'s Mutex<Names>) -> Mapper<'s> {
        Mapper { names, last: None }
    }

    /// Each row's id (`NONE` for null or a missing column).
    pub fn ids(
        &mut self,
        column: Option<&ArrayRef>,
        rows: usize,
        out: &mut Vec<u32>,
    ) -> Result<()> {
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

/// A verdict per interned id, worked out as ids appear.
pub struct Verdicts<T = bool>(Vec<T>);

impl<T> Default for Verdicts<T> {
    fn default() -> Self {
        Verdicts(Vec::new())
    }
}

impl<T: Copy> Verdicts<T> {
    pub fn update(&mut self, names: &Mutex<Names>, test: impl Fn(&str) -> T) {
        let names = lock(names);
        while self.0.len() < names.len() {
            let name = names.name(self.0.len() as u32).unwrap_or("");
            self.0.push(test(name));
        }
    }

    /// The verdict on `id`; `null` for `NONE`.
    pub fn of(&self, id: u32, null: T) -> T {
        self.0.get(id as usize).copied().unwrap_or(null)
    }
}

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

/// One file's batches of the columns asked for, by their place in the ask.
pub struct Projected {
    reader: ParquetRecordBatchReader,
    /// Where each asked-for column is in a batch (`None`: the file has no such column).
    positions: Vec<Option<usize>>,
    /// Rows in the file (from its footer).
    pub rows: usize,
}

impl Projected {
    /// Opens `path` for `columns` (a name the file lacks reads as missing; `""` asks for
    /// nothing), the ones named in `strings` as dictionaries.
    pub fn open(path: &Path, columns: &[&str], strings: &[&str]) -> Result<Projected> {
        let not_parquet = |e: parquet::errors::ParquetError| {
            anyhow!("{}: not a readable Parquet file: {e}", path.display())
        };
        let (file, plain) = footer(path)?;
        let schema = Arc::new(hinted(plain.schema(), strings));
        let options = ArrowReaderOptions::new().with_schema(schema.clone());
        let metadata =
            ArrowReaderMetadata::try_new(plain.metadata().clone(), options).map_err(not_parquet)?;
        let wanted: Vec<Option<usize>> = columns
            .iter()
            .map(|name| schema.index_of(name).ok())
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
        let positions = wanted
            .iter()
            .map(|at| at.and_then(|at| roots.binary_search(&at).ok()))
            .collect();
        let rows = usize::try_from(plain.metadata().file_metadata().num_rows()).unwrap_or(0);
        Ok(Projected {
            reader,
            positions,
            rows,
        })
    }

    /// The next batch, or `None` at the end of the file.
    pub fn next_batch(&mut self, path: &Path) -> Result<Option<Batch>> {
        match self.reader.next() {
            None => Ok(None),
            Some(batch) => {
                let batch = batch.with_context(|| format!("{}: cannot decode", path.display()))?;
                Ok(Some(Batch {
                    batch,
                    positions: self.positions.clone(),
                }))
            }
        }
    }
}

/// A decoded batch, its columns found by their place in the ask.
pub struct Batch {
    batch: RecordBatch,
    positions: Vec<Option<usize>>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The asked-for column at `index` (`None`: the file has no such column).
    pub fn column(&self, index: usize) -> Option<&ArrayRef> {
        self.positions
            .get(index)
            .copied()
            .flatten()
            .map(|at| self.batch.column(at))
    }
}
