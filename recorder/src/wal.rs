//! The write-ahead log (actor `wal`).
//!
//! Every decoded event is appended — framed as `u32 length, u32 CRC-32, bincode payload` — to a
//! segment file in `DIR/.wal/` *before* it enters the batcher, with one `write(2)` per event, so a
//! process crash (even `kill -9`) loses nothing the log holds. `fsync` runs every `--fsync-ms`
//! (0: after every event): what a power cut can lose is bounded by that interval. Each segment
//! starts with a checkpoint of the connections open at that moment, so it replays on its own; a
//! segment is started whole or not at all (`segment.rs`: written under a temporary name with its
//! checkpoint, fsynced, renamed), and when it cannot be, the log writes on in the current one.
//! The writer reports how far Parquet files cover the log; segments entirely below that are
//! deleted. On start, uncovered segments are replayed (`recovery.rs`).
//!
//! The log is capped at `--wal-max-bytes`: beyond it (Parquet writes failing, disk full), call
//! records are no longer accepted — dropped, counted and reported — while small control events
//! still are, so every connection keeps its `clients` row.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::crash::Crash;
use crate::events::{Counters, Event, Logged, Lsn, OpenConnection};
use crate::stats::Stats;

mod segment;
pub use segment::{Segment, lsn, read_segment, segment_of, segments};
use segment::{frame, remove_unfinished, segment_path, start_segment};

/// A segment is closed once it passes this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Test-only: another segment size (the tests need rotations without writing 64 MiB).
pub const SEGMENT_BYTES_ENV: &str = "P11TRACE_RECORDER_SEGMENT_BYTES";

fn segment_bytes() -> u64 {
    std::env::var(SEGMENT_BYTES_ENV)
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(SEGMENT_BYTES)
}
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the write-ahead log is at its cap of {0} bytes")]
    Full(u64),
    #[error("cannot write the write-ahead log: {0}")]
    Io(#[from] io::Error),
}

/// The open connections, as checkpoints carry them.
#[derive(Default)]
pub struct OpenConnections(HashMap<u64, OpenConnection>);

impl OpenConnections {
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Records { .. } | Event::Goodbye { .. } => {
                if let Some((key, carried, counters)) = event.progress()
                    && let Some(open) = self.0.get_mut(&key)
                {
                    open.received = open.received.saturating_add(carried);
                    open.counters.fold(counters);
                }
            }
            Event::Connected(meta) => {
                let open = OpenConnection {
                    meta: (**meta).clone(),
                    provider: None,
                    received: 0,
                    counters: Counters::at_start(meta),
                };
                self.0.insert(meta.key, open);
            }
            Event::Provider { key, provider } => {
                if let Some(open) = self.0.get_mut(key) {
                    open.provider = Some(provider.clone());
                }
            }
            Event::Disconnected { key, .. } => {
                self.0.remove(key);
            }
            Event::Checkpoint(open) => {
                for connection in open {
                    self.0
                        .entry(connection.meta.key)
                        .or_insert_with(|| connection.clone());
                }
            }
            Event::Shutdown => {}
        }
    }

    pub fn snapshot(&self) -> Vec<OpenConnection> {
        let mut open: Vec<OpenConnection> = self.0.values().cloned().collect();
        open.sort_by_key(|o| o.meta.key);
        open
    }
}

/// The log's files and policy.
pub struct Wal {
    dir: PathBuf,
    segment: u32,
    file: File,
    offset: u64,
    sizes: BTreeMap<u32, u64>,
    max_bytes: u64,
    fsync_every: Duration,
    last_sync: Instant,
    unsynced: bool,
    open: OpenConnections,
    buffer: Vec<u8>,
    segment_bytes: u64,
    fault: Crash,
    /// A rotation failed and has not succeeded since (said once).
    rotation_failing: bool,
}

impl Wal {
    /// Starts a new segment numbered after every existing (or earlier deleted) one, so log
    /// positions keep increasing across restarts.
    pub fn create(dir: &Path, fsync_every: Duration, max_bytes: u64) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        remove_unfinished(dir);
        let remembered = fs::read_to_string(dir.join("next"))
            .ok()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(1);
        let next = segments(dir)?
            .last()
            .map_or(Some(1), |(n, _)| n.checked_add(1))
            .ok_or_else(|| io::Error::other("log segment numbers are exhausted"))?
            .max(remembered);
        let mut buffer = Vec::new();
        frame(&mut buffer, &Event::Checkpoint(Vec::new()))?;
        let file = start_segment(dir, next, &buffer, &Crash::default())?;
        let offset = buffer.len() as u64;
        Ok(Wal {
            dir: dir.to_owned(),
            segment: next,
            file,
            offset,
            sizes: BTreeMap::from([(next, offset)]),
            max_bytes,
            fsync_every,
            last_sync: Instant::now(),
            unsynced: false,
            open: OpenConnections::default(),
            buffer,
            segment_bytes: segment_bytes(),
            fault: Crash::from_env(),
            rotation_failing: false,
        })
    }

    pub fn total_bytes(&self) -> u64 {
        self.sizes.values().sum()
    }

    /// The position the next event will get.
    pub fn next_lsn(&self) -> Lsn {
        lsn(self.segment, self.offset)
    }

    fn write(&mut self, event: &Event) -> io::Result<Lsn> {
        frame(&mut self.buffer, event)?;
        let at = lsn(self.segment, self.offset);
        if let Err(error) = self.file.write_all(&self.buffer) {
            // Never leave a torn frame: replay stops at the first bad frame, so anything logged
            // after it would be lost.
            let _ = self.file.set_len(self.offset);
            return Err(error);
        }
        self.offset += self.buffer.len() as u64;
        *self.sizes.entry(self.segment).or_default() = self.offset;
        self.unsynced = true;
        if self.fsync_every.is_zero() {
            self.sync()?;
        }
        Ok(at)
    }

    /// Appends `event`; returns its position. Call records are refused at the cap.
    pub fn append(&mut self, event: &Event) -> Result<Lsn, AppendError> {
        let is_records = matches!(event, Event::Records { .. });
        if is_records && self.total_bytes() >= self.max_bytes {
            return Err(AppendError::Full(self.max_bytes));
        }
        if self.offset >= self.segment_bytes {
            self.rotate();
        }
        let at = self.write(event)?;
        self.open.apply(event);
        Ok(at)
    }

    /// Moves on to a new segment, or — when it cannot be started whole — stays in this one and
    /// tries again at the next append. Never a segment without its checkpoint: one would replay
    /// without the connections opened before it and drop their records.
    fn rotate(&mut self) {
        let started = self.sync().and_then(|()| {
            let number = self
                .segment
                .checked_add(1)
                .ok_or_else(|| io::Error::other("log segment numbers are exhausted"))?;
            frame(&mut self.buffer, &Event::Checkpoint(self.open.snapshot()))?;
            let file = start_segment(&self.dir, number, &self.buffer, &self.fault)?;
            Ok((number, file))
        });
        match started {
            Ok((number, file)) => {
                self.file = file;
                self.segment = number;
                self.offset = self.buffer.len() as u64;
                self.sizes.insert(number, self.offset);
                if std::mem::take(&mut self.rotation_failing) {
                    eprintln!("p11trace-recorder: the write-ahead log started segment {number}");
                }
            }
            Err(error) => {
                if !std::mem::replace(&mut self.rotation_failing, true) {
                    eprintln!(
                        "p11trace-recorder: cannot start a new write-ahead log segment: {error}; \
                         writing on in segment {} and trying again",
                        self.segment
                    );
                }
            }
        }
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    pub fn sync_if_due(&mut self) -> io::Result<()> {
        if self.unsynced && self.last_sync.elapsed() >= self.fsync_every {
            self.sync()?;
        }
        Ok(())
    }

    /// Deletes every segment whose events all lie below `covered` (never the current one).
    pub fn release_below(&mut self, covered: Lsn) -> io::Result<usize> {
        let doomed: Vec<u32> = self
            .sizes
            .keys()
            .copied()
            .filter(|&s| s < segment_of(covered) && s < self.segment)
            .collect();
        for segment in &doomed {
            fs::remove_file(segment_path(&self.dir, *segment))?;
            self.sizes.remove(segment);
        }
        Ok(doomed.len())
    }
}

/// The `wal` actor: capture → (append) → batcher. Keeps running after the shutdown event until
/// the writer's last coverage report arrives, then deletes every covered segment.
///
/// When an append fails (the cap is reached, or the disk is full) the actor stops taking events:
/// capture blocks, shims see their queues fill (audit-mode shims refuse calls; the others drop and
/// count), and nothing the recorder read is lost. It retries every [`RETRY`]. Only when asked to
/// stop while stuck does it drop what it cannot log — counted as `dropped_by_recorder` and said.
pub struct WalActor {
    pub input: Receiver<Event>,
    pub output: Sender<Logged>,
    pub covered: Receiver<Lsn>,
    pub wal: Wal,
    pub stats: Arc<Stats>,
    pub crash: Crash,
    /// Set when the recorder is asked to stop.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// How often a stuck log retries its append.
pub const RETRY: Duration = Duration::from_millis(200);

impl WalActor {
    pub fn run(mut self) -> io::Result<()> {
        let tick = Duration::from_millis(10);
        let mut input_open = true;
        let mut stuck: Option<Event> = None;
        loop {
            self.stats
                .wal_bytes
                .store(self.wal.total_bytes(), Ordering::Relaxed);
            if let Some(event) = stuck.take() {
                self.log(event, &mut stuck);
            }
            let input = if input_open && stuck.is_none() {
                self.input.clone()
            } else {
                crossbeam_channel::never()
            };
            let wait = if stuck.is_some() { RETRY } else { tick };
            select! {
                recv(input) -> event => match event {
                    Ok(Event::Shutdown) | Err(_) => {
                        self.wal.sync()?;
                        let _ = self.output.send(Logged { lsn: self.wal.next_lsn(), event: Event::Shutdown });
                        input_open = false;
                    }
                    Ok(event) => self.log(event, &mut stuck),
                },
                recv(self.covered) -> covered => match covered {
                    Ok(covered) => {
                        self.crash.at("before-wal-truncate");
                        match self.wal.release_below(covered) {
                            Ok(0) => {}
                            Ok(_) => self.crash.at("after-wal-truncate"),
                            Err(e) => eprintln!("p11trace-recorder: cannot delete covered log segments: {e}"),
                        }
                    }
                    Err(_) => return self.wal.sync(),
                },
                default(wait) => {}
            }
            self.wal.sync_if_due()?;
        }
    }

    /// Appends and forwards `event`, or keeps it in `stuck` (or drops it, when stopping).
    fn log(&mut self, event: Event, stuck: &mut Option<Event>) {
        match self.wal.append(&event) {
            Ok(lsn) => {
                if self.stats.wal_stuck.swap(false, Ordering::AcqRel) {
                    eprintln!("p11trace-recorder: the write-ahead log takes records again");
                }
                self.crash.at("after-wal-append");
                let _ = self.output.send(Logged { lsn, event });
            }
            Err(error) => {
                if !self.stats.wal_stuck.swap(true, Ordering::AcqRel) {
                    eprintln!(
                        "p11trace-recorder: {error}; not taking new records until it is written out \
                         (clients drop and count them; audit-mode clients refuse calls). \
                         Free space, or restart: the log is replayed at the next start"
                    );
                }
                if self.stopping.load(Ordering::Acquire) {
                    let records = match &event {
                        Event::Records { records, .. } => records.len() as u64,
                        _ => 0,
                    };
                    self.stats
                        .dropped_by_recorder
                        .fetch_add(records, Ordering::Relaxed);
                    eprintln!(
                        "p11trace-recorder: stopping with a stuck log: dropped {records} received call record(s)"
                    );
                } else {
                    *stuck = Some(event);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p11trace_record::wire::CallRecord;
    use std::fs::OpenOptions;

    #[test]
    fn appended_events_read_back_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), Duration::ZERO, u64::MAX).unwrap();
        let records = Event::Records {
            key: 1,
            records: vec![CallRecord {
                seq: 5,
                ..Default::default()
            }],
            counters: Counters {
                seq_high: 6,
                ..Counters::default()
            },
        };
        let at = wal.append(&records).unwrap();
        drop(wal);
        let (number, path) = segments(dir.path()).unwrap().pop().unwrap();
        let (events, torn) = read_segment(number, &path).unwrap();
        assert!(torn.is_none());
        assert_eq!(events.len(), 2, "checkpoint + records");
        assert_eq!(events[1].0, at);
        // A half-written frame at the end is ignored, not an error.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        let (events, torn) = read_segment(number, &path).unwrap();
        assert_eq!(events.len(), 2);
        assert!(torn.is_some());
    }

    #[test]
    fn the_cap_refuses_records_but_not_control_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), Duration::from_secs(1), 1).unwrap();
        let records = Event::Records {
            key: 1,
            records: vec![],
            counters: Counters::default(),
        };
        assert!(matches!(wal.append(&records), Err(AppendError::Full(1))));
        let goodbye = Event::Provider {
            key: 1,
            provider: "x".into(),
        };
        assert!(wal.append(&goodbye).is_ok());
    }

    #[test]
    fn a_rotation_that_fails_leaves_no_segment_without_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), Duration::from_secs(1), u64::MAX).unwrap();
        wal.segment_bytes = 64;
        wal.fault = Crash::with("wal-rotate", 3);
        let records = Event::Records {
            key: 1,
            records: vec![CallRecord::default()],
            counters: Counters::default(),
        };
        let mut appended = Vec::new();
        for _ in 0..8 {
            appended.push(wal.append(&records).unwrap());
        }
        drop(wal);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.ends_with(".tmp")),
            "leftovers: {names:?}"
        );
        let mut read = Vec::new();
        let found = segments(dir.path()).unwrap();
        // Three failed tries (the first segment grew on), then one rotation per append.
        assert_eq!(found.len(), 5, "{names:?}");
        for (number, path) in found {
            let (events, torn) = read_segment(number, &path).unwrap();
            assert!(torn.is_none());
            assert!(
                matches!(events.first(), Some((_, Event::Checkpoint(_)))),
                "segment {number} does not start with its checkpoint"
            );
            read.extend(
                events
                    .iter()
                    .filter(|(_, e)| matches!(e, Event::Records { .. }))
                    .map(|(at, _)| *at),
            );
        }
        assert_eq!(read, appended, "every appended event, once, in order");
    }
}
