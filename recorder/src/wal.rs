//! The write-ahead log (actor `wal`).
//!
//! Every decoded event is appended — framed as `u32 length, u32 CRC-32, bincode payload` — to a
//! segment file in `DIR/.wal/` *before* it enters the batcher, with one `write(2)` per event, so a
//! process crash (even `kill -9`) loses nothing the log holds. `fsync` runs every `--fsync-ms`
//! (0: after every event): what a power cut can lose is bounded by that interval. Each segment
//! starts with a checkpoint of the connections open at that moment, so it replays on its own.
//! The writer reports how far Parquet files cover the log; segments entirely below that are
//! deleted. On start, uncovered segments are replayed (`recovery.rs`).
//!
//! The log is capped at `--wal-max-bytes`: beyond it (Parquet writes failing, disk full), call
//! records are no longer accepted — dropped, counted and reported — while small control events
//! still are, so every connection keeps its `clients` row.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bincode::Options;
use crossbeam_channel::{Receiver, Sender, select};

use crate::crash::Crash;
use crate::events::{Counters, Event, Logged, Lsn, OpenConnection};
use crate::stats::Stats;

/// A segment is closed once it passes this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest frame accepted when reading (a corrupt length must not allocate gigabytes).
const MAX_FRAME: u32 = 256 << 20;

fn codec() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(u64::from(MAX_FRAME))
}

pub fn lsn(segment: u32, offset: u64) -> Lsn {
    (u64::from(segment) << 32) | offset
}

pub fn segment_of(lsn: Lsn) -> u32 {
    (lsn >> 32) as u32
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("seg-{segment:010}.wal"))
}

/// Segments present in `dir`, in order.
pub fn segments(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(number) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse().ok())
        {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

/// A segment's intact events, and why reading stopped early (if it did).
pub type Segment = (Vec<(Lsn, Event)>, Option<String>);

/// Every intact event of a segment. Reading stops at the first torn or corrupt frame (the
/// process died while writing it: that event never reached the batcher).
pub fn read_segment(segment: u32, path: &Path) -> io::Result<Segment> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut events = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let header = bytes.get(offset..offset + 8);
        let Some(header) = header else {
            return Ok((events, Some(format!("torn frame header at byte {offset}"))));
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            return Ok((
                events,
                Some(format!("impossible frame length {len} at byte {offset}")),
            ));
        }
        let Some(payload) = bytes.get(offset + 8..offset + 8 + len as usize) else {
            return Ok((events, Some(format!("torn frame at byte {offset}"))));
        };
        if crc32fast::hash(payload) != crc {
            return Ok((events, Some(format!("checksum mismatch at byte {offset}"))));
        }
        match codec().deserialize::<Event>(payload) {
            Ok(event) => events.push((lsn(segment, offset as u64), event)),
            Err(e) => {
                return Ok((
                    events,
                    Some(format!("undecodable frame at byte {offset}: {e}")),
                ));
            }
        }
        offset += 8 + len as usize;
    }
    Ok((events, None))
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
}

impl Wal {
    /// Starts a new segment numbered after every existing (or earlier deleted) one, so log
    /// positions keep increasing across restarts.
    pub fn create(dir: &Path, fsync_every: Duration, max_bytes: u64) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let remembered = fs::read_to_string(dir.join("next"))
            .ok()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(1);
        let next = segments(dir)?
            .last()
            .map_or(1, |(n, _)| n + 1)
            .max(remembered);
        let file = Self::new_segment(dir, next)?;
        let mut wal = Wal {
            dir: dir.to_owned(),
            segment: next,
            file,
            offset: 0,
            sizes: BTreeMap::from([(next, 0)]),
            max_bytes,
            fsync_every,
            last_sync: Instant::now(),
            unsynced: false,
            open: OpenConnections::default(),
            buffer: Vec::new(),
        };
        wal.write(&Event::Checkpoint(Vec::new()))?;
        Ok(wal)
    }

    fn new_segment(dir: &Path, segment: u32) -> io::Result<File> {
        fs::write(dir.join("next"), format!("{}\n", segment + 1))?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, segment))?;
        File::open(dir)?.sync_all()?;
        Ok(file)
    }

    pub fn total_bytes(&self) -> u64 {
        self.sizes.values().sum()
    }

    /// The position the next event will get.
    pub fn next_lsn(&self) -> Lsn {
        lsn(self.segment, self.offset)
    }

    fn write(&mut self, event: &Event) -> io::Result<Lsn> {
        self.buffer.clear();
        self.buffer.extend_from_slice(&[0; 8]);
        codec()
            .serialize_into(&mut self.buffer, event)
            .map_err(io::Error::other)?;
        let len = (self.buffer.len() - 8) as u32;
        let crc = crc32fast::hash(&self.buffer[8..]);
        self.buffer[..4].copy_from_slice(&len.to_le_bytes());
        self.buffer[4..8].copy_from_slice(&crc.to_le_bytes());
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
        if self.offset >= SEGMENT_BYTES {
            self.rotate()?;
        }
        let at = self.write(event)?;
        self.open.apply(event);
        Ok(at)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        self.segment += 1;
        self.file = Self::new_segment(&self.dir, self.segment)?;
        self.offset = 0;
        self.sizes.insert(self.segment, 0);
        let checkpoint = Event::Checkpoint(self.open.snapshot());
        self.write(&checkpoint)?;
        Ok(())
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
                        if let Err(e) = self.wal.release_below(covered) {
                            eprintln!("p11trace-recorder: cannot delete covered log segments: {e}");
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
}
