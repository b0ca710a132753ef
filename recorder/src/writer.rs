//! Writer: appends record batches to one open Parquet file per table and date, and closes a file
//! (fsync, rename from `DIR/.tmp/` into place) at `--roll-rows` rows or `--roll-secs` seconds,
//! whichever comes first. A file exists under `calls/` or `clients/` only once it is complete.
//!
//! Each file records in its key-value metadata the range of log positions its rows came from
//! (`p11trace.wal_first`, `p11trace.wal_last`). After every flush the writer tells the log how far
//! renamed files cover it; the log deletes segments below that. Rows of a file that failed to
//! write (disk full) hold the coverage back, so the log keeps them for the next start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use crossbeam_channel::{Receiver, Sender};
use p11trace_dataset::{ParquetSink, calls_schema, clients_schema, writer_properties};

use crate::crash::Crash;
use crate::events::Lsn;
use crate::stats::Stats;
pub use p11trace_dataset::layout::Table;
use p11trace_dataset::layout::{Layout, part_name};

pub enum Job {
    /// Rows for one table and date, from log positions `lsn_min..=lsn_max`.
    Rows {
        table: Table,
        date: String,
        batch: RecordBatch,
        lsn_min: Lsn,
        lsn_max: Lsn,
    },
    /// The batcher has handed over every row of events up to `applied_through`; also the moment
    /// to close files older than `--roll-secs`.
    Tick { applied_through: Lsn },
    /// Close everything and stop.
    Shutdown,
}

/// Metadata keys of the log range a file covers.
pub const WAL_FIRST_KEY: &str = "p11trace.wal_first";
pub const WAL_LAST_KEY: &str = "p11trace.wal_last";

pub struct Writer {
    pub jobs: Receiver<Job>,
    pub dataset: Layout,
    pub run_id: String,
    pub roll_rows: u64,
    pub roll_secs: Duration,
    pub stats: Arc<Stats>,
    /// Where coverage reports go (the log actor); `None` during replay.
    pub covered: Option<Sender<Lsn>>,
    pub crash: Crash,
}

struct OpenFile {
    table: Table,
    sink: ParquetSink,
    opened: Instant,
    lsn_min: Lsn,
    lsn_max: Lsn,
}

#[derive(Default)]
struct State {
    open: HashMap<(Table, String), OpenFile>,
    counter: u64,
    /// Lowest log position of rows that failed to reach a file: coverage never passes it.
    failed_floor: Option<Lsn>,
    reported: Lsn,
}

impl Writer {
    pub fn run(self) -> std::io::Result<()> {
        let mut state = State::default();
        // Names unique to this writer (UUIDv7: time-ordered, random): the live writer, the
        // replay writer, a clock stepped back and a reused --run-id never pick the same name.
        let started = uuid::Uuid::now_v7().simple().to_string();
        for job in &self.jobs {
            match job {
                Job::Rows {
                    table,
                    date,
                    batch,
                    lsn_min,
                    lsn_max,
                } => {
                    self.rows(&mut state, &started, table, date, &batch, lsn_min, lsn_max);
                }
                Job::Tick { applied_through } => {
                    let expired: Vec<_> = state
                        .open
                        .iter()
                        .filter(|(_, file)| file.opened.elapsed() >= self.roll_secs)
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in expired {
                        if let Some(file) = state.open.remove(&key) {
                            self.close(&mut state, file);
                        }
                    }
                    self.report_coverage(&mut state, applied_through.saturating_add(1));
                }
                Job::Shutdown => break,
            }
        }
        let open: Vec<OpenFile> = state.open.drain().map(|(_, file)| file).collect();
        for file in open {
            self.close(&mut state, file);
        }
        self.report_coverage(&mut state, Lsn::MAX);
        match state.failed_floor {
            Some(_) => Err(std::io::Error::other(
                "some rows could not be written; they stay in the write-ahead log and will be written at the next start",
            )),
            None => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rows(
        &self,
        state: &mut State,
        started: &str,
        table: Table,
        date: String,
        batch: &RecordBatch,
        lsn_min: Lsn,
        lsn_max: Lsn,
    ) {
        let key = (table, date);
        if !state.open.contains_key(&key) {
            state.counter += 1;
            let name = part_name(started, state.counter);
            let schema = match table {
                Table::Calls => calls_schema(),
                Table::Clients => clients_schema(),
            };
            let properties = writer_properties(
                table.name(),
                &[("p11trace.run_id".into(), self.run_id.clone())],
            );
            let path: PathBuf = self.dataset.part(table.name(), &key.1, &name);
            match ParquetSink::create(&self.dataset.temp(), &path, schema, properties) {
                Ok(sink) => {
                    let file = OpenFile {
                        table,
                        sink,
                        opened: Instant::now(),
                        lsn_min,
                        lsn_max,
                    };
                    state.open.insert(key.clone(), file);
                }
                Err(e) => {
                    fail(
                        state,
                        lsn_min,
                        format!("cannot create {}: {e}", path.display()),
                    );
                    return;
                }
            }
        }
        let Some(file) = state.open.get_mut(&key) else {
            return;
        };
        file.lsn_min = file.lsn_min.min(lsn_min);
        file.lsn_max = file.lsn_max.max(lsn_max);
        if let Err(e) = file.sink.write(batch) {
            let floor = file.lsn_min;
            state.open.remove(&key);
            fail(
                state,
                floor,
                format!("cannot write {} rows: {e}", table.name()),
            );
            return;
        }
        if file.sink.rows() >= self.roll_rows
            && let Some(file) = state.open.remove(&key)
        {
            self.close(state, file);
        }
    }

    fn close(&self, state: &mut State, mut file: OpenFile) {
        let rows = file.sink.rows();
        file.sink
            .add_metadata(WAL_FIRST_KEY, file.lsn_min.to_string());
        file.sink
            .add_metadata(WAL_LAST_KEY, file.lsn_max.to_string());
        let crash = &self.crash;
        match file.sink.finish_with(|stage| crash.at(stage)) {
            Ok(_) => {
                if file.table == Table::Calls {
                    self.stats
                        .records_written
                        .fetch_add(rows, Ordering::Relaxed);
                }
                self.stats.files_written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => fail(
                state,
                file.lsn_min,
                format!("cannot close a {} file: {e}", file.table.name()),
            ),
        }
    }

    /// Everything below `candidate` is in renamed files, except rows still in open files or
    /// rows that failed.
    fn report_coverage(&self, state: &mut State, candidate: Lsn) {
        let open_floor = state.open.values().map(|f| f.lsn_min).min();
        let covered = [Some(candidate), open_floor, state.failed_floor]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(candidate);
        if covered > state.reported
            && let Some(covered_tx) = &self.covered
        {
            let _ = covered_tx.send(covered);
            state.reported = covered;
        }
    }
}

fn fail(state: &mut State, floor: Lsn, message: String) {
    state.failed_floor = Some(state.failed_floor.map_or(floor, |f| f.min(floor)));
    eprintln!("p11trace-recorder: {message}; the rows stay in the write-ahead log");
}
