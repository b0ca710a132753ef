//! Writer: appends record batches to one open Parquet file per table and date, and closes
//! (renames into place) a file at `--roll-rows` rows or `--roll-secs` seconds, whichever first.
//! A file exists under `calls/` or `clients/` only once it is complete.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use crossbeam_channel::Receiver;
use p11trace_schema::arrow::{ParquetSink, calls_schema, clients_schema, writer_properties};

use crate::dataset::Dataset;
use crate::stats::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Calls,
    Clients,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Calls => "calls",
            Table::Clients => "clients",
        }
    }
}

pub enum Job {
    Rows {
        table: Table,
        date: String,
        batch: RecordBatch,
    },
    /// Time passed: close files older than `--roll-secs`.
    Tick,
    /// Close everything and stop.
    Shutdown,
}

pub struct Writer {
    pub jobs: Receiver<Job>,
    pub dataset: Dataset,
    pub run_id: String,
    pub roll_rows: u64,
    pub roll_secs: Duration,
    pub stats: Arc<Stats>,
}

struct OpenFile {
    sink: ParquetSink,
    opened: Instant,
}

impl Writer {
    pub fn run(self) -> std::io::Result<()> {
        let mut open: HashMap<(Table, String), OpenFile> = HashMap::new();
        let mut counter = 0u64;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut failure = None;
        for job in &self.jobs {
            match job {
                Job::Rows { table, date, batch } => {
                    let key = (table, date);
                    if !open.contains_key(&key) {
                        counter += 1;
                        let name = format!("part-{started}-{counter:06}.parquet");
                        let schema = match table {
                            Table::Calls => calls_schema(),
                            Table::Clients => clients_schema(),
                        };
                        let properties = writer_properties(
                            table.name(),
                            &[("p11trace.run_id".into(), self.run_id.clone())],
                        );
                        let path = self.dataset.part(table.name(), &key.1, &name);
                        match ParquetSink::create(&self.dataset.temp(), &path, schema, properties) {
                            Ok(sink) => {
                                open.insert(
                                    key.clone(),
                                    OpenFile {
                                        sink,
                                        opened: Instant::now(),
                                    },
                                );
                            }
                            Err(e) => {
                                failure.get_or_insert(format!(
                                    "cannot create {}: {e}",
                                    path.display()
                                ));
                                continue;
                            }
                        }
                    }
                    let Some(file) = open.get_mut(&key) else {
                        continue;
                    };
                    if let Err(e) = file.sink.write(&batch) {
                        failure.get_or_insert(format!("cannot write {} rows: {e}", table.name()));
                        open.remove(&key);
                        continue;
                    }
                    if file.sink.rows() >= self.roll_rows
                        && let Some(file) = open.remove(&key)
                    {
                        self.close(file, &mut failure);
                    }
                }
                Job::Tick => {
                    let expired: Vec<_> = open
                        .iter()
                        .filter(|(_, file)| file.opened.elapsed() >= self.roll_secs)
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in expired {
                        if let Some(file) = open.remove(&key) {
                            self.close(file, &mut failure);
                        }
                    }
                }
                Job::Shutdown => break,
            }
            if let Some(message) = failure.take() {
                eprintln!("p11trace-recorder: {message}");
            }
        }
        for (_, file) in open.drain() {
            self.close(file, &mut failure);
        }
        match failure {
            Some(message) => Err(std::io::Error::other(message)),
            None => Ok(()),
        }
    }

    fn close(&self, file: OpenFile, failure: &mut Option<String>) {
        let rows = file.sink.rows();
        match file.sink.finish() {
            Ok(_) => {
                self.stats
                    .records_written
                    .fetch_add(rows, Ordering::Relaxed);
                self.stats.files_written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                failure.get_or_insert(format!("cannot close a Parquet file: {e}"));
            }
        }
    }
}
