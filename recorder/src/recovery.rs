//! Start-up recovery: replays the write-ahead log segments not yet covered by Parquet files,
//! through the same batcher and writer as live data, so a crash at any point (after a log append,
//! before or after a rename, before log truncation) neither loses nor duplicates a row.
//!
//! Rows already in files are recognised by `(client_id, seq)` (calls) and `(client_id,
//! connection)` (clients), read from the files whose recorded log range reaches the oldest
//! segment left. Connections the log leaves open get their `clients` row with the reason
//! `recorder_crash`. Leftover temporary files are removed first: they were never renamed, so
//! their rows are still in the log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::batcher::{self, Written};
use crate::crash::Crash;
use crate::events::{Logged, Lsn};
use crate::ledger::Ledger;
use crate::stats::Stats;
use crate::wal;
use crate::writer::{self, Writer};
use p11trace_dataset::layout::{CALLS, CLIENTS, Layout, parquet_files};

/// What recovery did.
#[derive(Debug, Default)]
pub struct Recovered {
    pub segments: usize,
    pub events: usize,
    pub torn: Vec<String>,
    /// Call records of connections no replayed segment names (their `Connected` event and
    /// every checkpoint naming them deleted): never rows, and said.
    pub unknown_records: u64,
}

/// A Parquet file opened for reading, and the last log position its rows came from.
fn open_written(path: &Path) -> Result<(ParquetRecordBatchReaderBuilder<File>, Option<Lsn>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let last = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == writer::WAL_LAST_KEY))
        .and_then(|k| k.value.as_deref()?.parse::<Lsn>().ok());
    Ok((builder, last))
}

/// The last log position of a written file's rows (`None`: not recorded).
pub fn wal_last(path: &Path) -> Result<Option<Lsn>> {
    Ok(open_written(path)?.1)
}

/// The log's segments, oldest first.
fn segments(dataset: &Layout) -> Result<Vec<(u32, PathBuf)>> {
    wal::segments(&dataset.wal()).context("cannot list the write-ahead log")
}

/// The first log position `segments` hold (`None`: no segment).
fn floor_of(segments: &[(u32, PathBuf)]) -> Option<Lsn> {
    segments.first().map(|(first, _)| wal::lsn(*first, 0))
}

/// The first log position the log still holds (`None`: no segment left).
pub fn log_floor(dataset: &Layout) -> Result<Option<Lsn>> {
    Ok(floor_of(&segments(dataset)?))
}

/// The keys (`first` column, second column) of rows in files whose log range ends at or after
/// `from`: the dataset's files, and a spool's files kept after their upload.
fn written_keys(
    dataset: &Layout,
    table: &str,
    second: &str,
    from: Lsn,
) -> Result<Vec<(String, i64)>> {
    let mut keys = Vec::new();
    let mut files = parquet_files(&dataset.table(table))?;
    let uploaded = dataset.uploaded().table(table);
    if uploaded.is_dir() {
        files.extend(parquet_files(&uploaded)?);
    }
    for path in files {
        let (builder, last) = open_written(&path)?;
        if last.is_none_or(|last| last < from) {
            continue;
        }
        let schema = builder.parquet_schema();
        let mask = ProjectionMask::columns(schema, ["client_id", second]);
        for batch in builder.with_projection(mask).build()? {
            let batch = batch?;
            let ids = batch
                .column_by_name("client_id")
                .context("client_id column")?
                .as_string::<i32>();
            let numbers = batch
                .column_by_name(second)
                .context("key column")?
                .as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                if !ids.is_null(row) {
                    keys.push((ids.value(row).to_owned(), numbers.value(row)));
                }
            }
        }
    }
    Ok(keys)
}

/// Replays uncovered log segments into Parquet; returns the ledger to continue with.
pub fn recover(
    dataset: &Layout,
    run_id: &str,
    host: &str,
    stats: &Arc<Stats>,
    mut ledger: Ledger,
) -> Result<(Ledger, Recovered)> {
    let temp = dataset.temp();
    if let Ok(entries) = std::fs::read_dir(&temp) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let segments = segments(dataset)?;
    let mut recovered = Recovered::default();
    let Some(from) = floor_of(&segments) else {
        return Ok((ledger, recovered));
    };
    let written = Written {
        calls: written_keys(dataset, CALLS, "seq", from)?
            .into_iter()
            .collect(),
        clients: written_keys(dataset, CLIENTS, "connection", from)?
            .into_iter()
            .collect(),
    };
    recovered.segments = segments.len();

    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(crate::JOB_QUEUE);
    let writer = Writer {
        jobs: jobs_rx,
        dataset: dataset.clone(),
        run_id: run_id.to_owned(),
        host: host.to_owned(),
        spool_max_bytes: None,
        stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        roll_rows: u64::MAX,
        roll_secs: std::time::Duration::MAX,
        stats: stats.clone(),
        covered: None,
        crash: Crash::default(),
    };
    let writer = std::thread::Builder::new()
        .name("replay-writer".into())
        .spawn(move || writer.run())?;
    // One segment (at most 64 MiB) in memory at a time.
    let mut failure = None;
    let events =
        segments
            .iter()
            .flat_map(|(number, path)| match wal::read_segment(*number, path) {
                Ok((events, torn)) => {
                    if let Some(reason) = torn {
                        recovered.torn.push(format!("{}: {reason}", path.display()));
                    }
                    recovered.events += events.len();
                    events
                }
                Err(e) => {
                    failure.get_or_insert(format!("cannot read {}: {e}", path.display()));
                    Vec::new()
                }
            });
    (ledger, recovered.unknown_records) = batcher::replay(
        events.map(|(lsn, event)| Logged { lsn, event }),
        &jobs_tx,
        stats.clone(),
        ledger,
        written,
    );
    drop(jobs_tx);
    if recovered.unknown_records > 0 {
        eprintln!(
            "p11trace-recorder: {} logged call record(s) belong to connections no remaining log \
             segment names; they cannot be replayed",
            recovered.unknown_records
        );
    }
    if let Some(failure) = failure {
        anyhow::bail!("{failure}; the log is left in place");
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the replay writer panicked"))?
        .context("replaying the write-ahead log")?;
    ledger
        .save(&dataset.wal())
        .context("cannot save the ledger")?;
    for (_, path) in &segments {
        std::fs::remove_file(path).with_context(|| format!("cannot delete {}", path.display()))?;
    }
    Ok((ledger, recovered))
}
