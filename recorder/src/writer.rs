//! Writer: appends record batches to one open Parquet file per table and date, encoded in
//! memory, and stores a file (fsync, link from `DIR/.tmp/` into place) at `--roll-rows` rows,
//! `--roll-secs` seconds or [`FILE_MAX_BYTES`] encoded, whichever comes first. A file exists
//! under `calls/` or `clients/` only once it is complete.
//!
//! Each file records in its key-value metadata the range of log positions its rows came from
//! (`p11trace.wal_first`, `p11trace.wal_last`). After every flush the writer tells the log how far
//! stored files cover it; the log deletes segments below that.
//!
//! A file that cannot be stored (disk full) is kept, complete and encoded, and stored again at
//! every tick until it succeeds — exactly once: the same bytes under the same name. Until then
//! its rows hold the coverage back (the log keeps them, for the next start if the recorder stops
//! first). Files kept so are bounded by [`PENDING_MAX_BYTES`]; one more than that is let go and
//! its rows stay in the log for the next start (the coverage then stays below them for the run).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use crossbeam_channel::{Receiver, Sender};
use p11trace_dataset::sink::{MemorySink, store_with};
use p11trace_dataset::{calls_schema, clients_schema, writer_properties};

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

/// A file is stored once it holds this much encoded data (the memory one open file may hold).
pub const FILE_MAX_BYTES: usize = 128 << 20;
/// Encoded files that failed to be stored, kept to try again, hold at most this much memory.
pub const PENDING_MAX_BYTES: usize = 256 << 20;

/// Metadata keys of the log range a file covers.
pub const WAL_FIRST_KEY: &str = "p11trace.wal_first";
pub const WAL_LAST_KEY: &str = "p11trace.wal_last";

pub struct Writer {
    pub jobs: Receiver<Job>,
    pub dataset: Layout,
    pub run_id: String,
    /// The recorder's host (`--host`), in every file name: many hosts write into one prefix.
    pub host: String,
    /// For a dataset in object storage, the cap of the spool's finished files: past it a file
    /// is not stored (it waits in memory, then the writer waits) until uploads make room.
    pub spool_max_bytes: Option<u64>,
    /// The recorder is stopping: the spool's cap no longer applies (everything received goes
    /// into the spool, for the uploader or the next start).
    pub stopping: Arc<AtomicBool>,
    pub roll_rows: u64,
    pub roll_secs: Duration,
    pub stats: Arc<Stats>,
    /// Where coverage reports go (the log actor); `None` during replay.
    pub covered: Option<Sender<Lsn>>,
    pub crash: Crash,
}

struct OpenFile {
    table: Table,
    path: PathBuf,
    sink: MemorySink,
    opened: Instant,
    lsn_min: Lsn,
    lsn_max: Lsn,
}

/// A complete file that could not be stored yet.
struct Pending {
    table: Table,
    path: PathBuf,
    bytes: Vec<u8>,
    rows: u64,
    lsn_min: Lsn,
}

#[derive(Default)]
struct State {
    open: HashMap<(Table, String), OpenFile>,
    counter: u64,
    /// Oldest first; their rows hold the coverage back until they are stored.
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// Lowest log position of rows let go for this run (not encodable, or past
    /// [`PENDING_MAX_BYTES`]): coverage never passes it; they are written at the next start.
    failed_floor: Option<Lsn>,
    reported: Lsn,
    /// Shutting down: the spool's cap no longer applies (the last files go into the spool,
    /// rather than stay in the log, for the uploader or the next start).
    closing: bool,
}

impl Writer {
    pub fn run(self) -> std::io::Result<()> {
        let mut state = State::default();
        // Names unique to this writer (UUIDv7: time-ordered, random): the live writer, the
        // replay writer, a clock stepped back and a reused --run-id never pick the same name.
        let started = format!("{}-{}", self.host, uuid::Uuid::now_v7().simple());
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
                    self.store_pending(&mut state);
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
        state.closing = true;
        let open: Vec<OpenFile> = state.open.drain().map(|(_, file)| file).collect();
        for file in open {
            self.close(&mut state, file);
        }
        self.store_pending(&mut state);
        self.report_coverage(&mut state, Lsn::MAX);
        if state.failed_floor.is_some() || !state.pending.is_empty() {
            return Err(std::io::Error::other(format!(
                "some rows could not be written ({} file(s) still failing); they stay in the \
                 write-ahead log and will be written at the next start",
                state.pending.len()
            )));
        }
        Ok(())
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
            match MemorySink::new(schema, properties) {
                Ok(sink) => {
                    let file = OpenFile {
                        table,
                        path,
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
                        format!("cannot start {}: {e}", path.display()),
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
                format!("cannot encode {} rows: {e}", table.name()),
            );
            return;
        }
        if (file.sink.rows() >= self.roll_rows || file.sink.memory_bytes() >= FILE_MAX_BYTES)
            && let Some(file) = state.open.remove(&key)
        {
            self.close(state, file);
        }
    }

    /// Finishes `file` and stores it, or keeps it to store again.
    fn close(&self, state: &mut State, mut file: OpenFile) {
        let rows = file.sink.rows();
        file.sink
            .add_metadata(WAL_FIRST_KEY, file.lsn_min.to_string());
        file.sink
            .add_metadata(WAL_LAST_KEY, file.lsn_max.to_string());
        let bytes = match file.sink.finish() {
            Ok(bytes) => bytes,
            Err(e) => {
                let message = format!("cannot encode a {} file: {e}", file.table.name());
                return fail(state, file.lsn_min, message);
            }
        };
        let pending = Pending {
            table: file.table,
            path: file.path,
            bytes,
            rows,
            lsn_min: file.lsn_min,
        };
        let size = pending.bytes.len();
        if self.spool_refuses(size, state).is_some() {
            self.wait_for_room(state, size);
        }
        if let Err(e) = self.store(&pending, state) {
            if state.pending_bytes.saturating_add(size) > PENDING_MAX_BYTES {
                let message = format!(
                    "cannot close a {} file: {e}; {} bytes of files already wait to be written",
                    pending.table.name(),
                    state.pending_bytes
                );
                return fail(state, pending.lsn_min, message);
            }
            eprintln!(
                "p11trace-recorder: cannot close a {} file: {e}; it is kept to be written again \
                 (the rows stay in the write-ahead log meanwhile)",
                pending.table.name()
            );
            state.pending_bytes += size;
            state.pending.push_back(pending);
        }
    }

    /// Why the spool cannot take a file of `size` bytes now (`None`: it can, or there is no
    /// cap: a local dataset, a stopping recorder). An empty spool takes any one file.
    fn spool_refuses(&self, size: usize, state: &State) -> Option<String> {
        let max = self.spool_max_bytes?;
        if state.closing || self.stopping.load(Ordering::Acquire) {
            return None;
        }
        let spooled = Stats::get(&self.stats.spool_bytes);
        (spooled > 0 && spooled.saturating_add(size as u64) > max).then(|| {
            format!(
                "the spool is full ({spooled} bytes wait to be uploaded; --spool-max-bytes {max})"
            )
        })
    }

    /// The spool is full and the files waiting in memory are at [`PENDING_MAX_BYTES`]: waits
    /// until uploads make room (or the recorder stops). The writer taking no more rows stops
    /// the pipeline behind it, and the shims drop and count what they cannot send; letting the
    /// rows go instead would keep the log from shrinking for the rest of the run.
    fn wait_for_room(&self, state: &mut State, size: usize) {
        if state.pending_bytes.saturating_add(size) <= PENDING_MAX_BYTES {
            return;
        }
        eprintln!(
            "p11trace-recorder: the spool is full and {} bytes of files wait in memory; the \
             writer waits for uploads to make room (the shims drop and count meanwhile)",
            state.pending_bytes
        );
        while state.pending_bytes.saturating_add(size) > PENDING_MAX_BYTES
            && !self.stopping.load(Ordering::Acquire)
        {
            std::thread::sleep(Duration::from_millis(200));
            self.store_pending(state);
        }
    }

    /// Stores a complete file in place and counts it.
    fn store(&self, file: &Pending, state: &State) -> std::io::Result<()> {
        let size = file.bytes.len() as u64;
        if let Some(full) = self.spool_refuses(file.bytes.len(), state) {
            return Err(std::io::Error::other(full));
        }
        let crash = &self.crash;
        store_with(&self.dataset.temp(), &file.path, &file.bytes, |stage| {
            crash.at(stage)
        })?;
        if file.table == Table::Calls {
            self.stats
                .records_written
                .fetch_add(file.rows, Ordering::Relaxed);
        }
        self.stats.files_written.fetch_add(1, Ordering::Relaxed);
        if self.spool_max_bytes.is_some() {
            // The uploader's next scan counts it too; until then the cap sees it here.
            self.stats.spool_bytes.fetch_add(size, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Tries the kept files again, oldest first, until one fails.
    fn store_pending(&self, state: &mut State) {
        if state.pending.is_empty() {
            return;
        }
        while let Some(file) = state.pending.front() {
            if self.store(file, state).is_err() {
                return;
            }
            let size = file.bytes.len();
            state.pending.pop_front();
            state.pending_bytes = state.pending_bytes.saturating_sub(size);
        }
        eprintln!("p11trace-recorder: the files that could not be written are written now");
    }

    /// Everything below `candidate` is in stored files, except rows still in open files, in
    /// files waiting to be stored, or let go.
    fn report_coverage(&self, state: &mut State, candidate: Lsn) {
        let open_floor = state.open.values().map(|f| f.lsn_min).min();
        let pending_floor = state.pending.iter().map(|f| f.lsn_min).min();
        let covered = [
            Some(candidate),
            open_floor,
            pending_floor,
            state.failed_floor,
        ]
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
    eprintln!(
        "p11trace-recorder: {message}; the rows stay in the write-ahead log for the next start"
    );
}
