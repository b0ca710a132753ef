//! Batcher: turns logged events into Arrow record batches, one builder per table and date
//! partition, and keeps each connection's counters for its `clients` row.
//!
//! It hands everything it holds to the writer every [`FLUSH_ROWS`] rows or [`FLUSH_EVERY`], so
//! its memory is bounded by those, not by the size of a Parquet file. Each batch carries the log
//! positions of its rows, so the writer can tell the log how far Parquet files cover it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use p11trace_dataset::time::utc_date;
use p11trace_dataset::{CallRow, ClientRow, DisconnectReason, Source};
use p11trace_dataset::{CallsBuilder, ClientsBuilder};
use p11trace_record::Func;
use p11trace_record::wire::{CallRecord, InterfaceVersion, record_flags};

use crate::events::{Connection, Counters, Event, Logged, Lsn, OpenConnection, now_us};
use crate::ledger::{self, Ledger};
use crate::metrics::Tally;
use crate::stats::Stats;
use crate::writer::{Job, Table};

/// Rows per record batch handed to the writer.
pub const FLUSH_ROWS: usize = 64 * 1024;
/// Longest a row waits in the batcher.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Rows already in Parquet files, skipped when the log is replayed after a crash.
#[derive(Debug, Default)]
pub struct Written {
    pub calls: HashSet<(String, i64)>,
    pub clients: HashSet<(String, i64)>,
}

struct Client {
    meta: Connection,
    provider: Option<String>,
    received: u64,
    counters: Counters,
    dropped_base: u64,
    lost_before: u64,
}

pub struct Batcher {
    pub events: Receiver<Logged>,
    pub jobs: Sender<Job>,
    pub stats: Arc<Stats>,
    pub ledger: Ledger,
    /// `--metrics`: the counts for the endpoint (none: nothing is counted).
    pub metrics: Option<Tally>,
}

/// The date partition of the last row, cached: formatting a date per row would dominate.
#[derive(Default)]
struct DayCache {
    start_us: i64,
    end_us: i64,
    date: String,
}

impl DayCache {
    fn date(&mut self, micros: i64) -> &str {
        if micros < self.start_us || micros >= self.end_us || self.date.is_empty() {
            let day = 86_400_000_000;
            self.start_us = micros.div_euclid(day) * day;
            self.end_us = self.start_us + day;
            self.date = utc_date(micros);
        }
        &self.date
    }
}

/// A builder and the log positions of the rows in it.
struct Part<B> {
    builder: B,
    lsn_min: Lsn,
    lsn_max: Lsn,
}

impl<B: Default> Default for Part<B> {
    fn default() -> Self {
        Part {
            builder: B::default(),
            lsn_min: Lsn::MAX,
            lsn_max: 0,
        }
    }
}

impl<B> Part<B> {
    fn touch(&mut self, lsn: Lsn) -> &mut B {
        self.lsn_min = self.lsn_min.min(lsn);
        self.lsn_max = self.lsn_max.max(lsn);
        &mut self.builder
    }
}

/// Hands every non-empty part of one table to the writer, each with its log range.
fn send_parts<B>(
    parts: &mut BTreeMap<String, Part<B>>,
    table: Table,
    jobs: &Sender<Job>,
    is_empty: fn(&B) -> bool,
    finish: fn(&mut B) -> RecordBatch,
) {
    for (date, part) in parts.iter_mut().filter(|(_, p)| !is_empty(&p.builder)) {
        let job = Job::Rows {
            table,
            date: date.clone(),
            batch: finish(&mut part.builder),
            lsn_min: part.lsn_min,
            lsn_max: part.lsn_max,
        };
        let _ = jobs.send(job);
        (part.lsn_min, part.lsn_max) = (Lsn::MAX, 0);
    }
}

struct State {
    stats: Arc<Stats>,
    ledger: Ledger,
    written: Option<Written>,
    clients: HashMap<u64, Client>,
    calls: BTreeMap<String, Part<CallsBuilder>>,
    client_rows: BTreeMap<String, Part<ClientsBuilder>>,
    pending_rows: usize,
    applied_through: Lsn,
    days: DayCache,
    interfaces: HashMap<InterfaceVersion, String>,
    /// Call records of connections this batcher never heard of (no `Connected` event and no
    /// checkpoint naming them): they cannot become rows.
    unknown_records: u64,
    metrics: Option<Tally>,
}

impl Batcher {
    /// Runs until the shutdown event; returns the ledger (to be saved by the caller).
    pub fn run(self) -> Ledger {
        let mut state = State::new(self.stats, self.ledger, None);
        state.metrics = self.metrics;
        let mut last_flush = Instant::now();
        loop {
            let logged = match self.events.recv_timeout(FLUSH_EVERY) {
                Ok(logged) => Some(logged),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Logged {
                    lsn: state.applied_through,
                    event: Event::Shutdown,
                }),
            };
            let shutdown = matches!(
                logged,
                Some(Logged {
                    event: Event::Shutdown,
                    ..
                })
            );
            if let Some(logged) = logged {
                state.apply(logged);
            }
            if shutdown || state.pending_rows >= FLUSH_ROWS || last_flush.elapsed() >= FLUSH_EVERY {
                state.flush(&self.jobs);
                last_flush = Instant::now();
                let _ = self.jobs.send(Job::Tick {
                    applied_through: state.applied_through,
                });
            }
            if shutdown {
                let _ = self.jobs.send(Job::Shutdown);
                return state.ledger;
            }
        }
    }
}

impl State {
    fn new(stats: Arc<Stats>, ledger: Ledger, written: Option<Written>) -> State {
        State {
            stats,
            ledger,
            written,
            clients: HashMap::new(),
            calls: BTreeMap::new(),
            client_rows: BTreeMap::new(),
            pending_rows: 0,
            applied_through: 0,
            days: DayCache::default(),
            interfaces: HashMap::new(),
            unknown_records: 0,
            metrics: None,
        }
    }

    fn apply(&mut self, Logged { lsn, event }: Logged) {
        if let Some((key, carried, counters)) = event.progress()
            && let Some(client) = self.clients.get_mut(&key)
        {
            client.received = client.received.saturating_add(carried);
            client.counters.fold(counters);
        }
        match event {
            Event::Connected(meta) => self.connected(*meta, 0, None),
            Event::Checkpoint(open) => {
                for connection in open {
                    if !self.clients.contains_key(&connection.meta.key) {
                        self.resume(connection);
                    }
                }
            }
            Event::Records { key, records, .. } => self.records(lsn, key, &records),
            Event::Provider { key, provider } => {
                if let Some(client) = self.clients.get_mut(&key) {
                    client.provider = Some(provider);
                }
            }
            Event::Goodbye { .. } => {}
            Event::Disconnected { key, reason, at_us } => {
                self.disconnected(lsn, key, reason, at_us)
            }
            Event::Shutdown => {}
        }
        self.applied_through = self.applied_through.max(lsn);
    }

    /// A connection known only from a log checkpoint (its `Connected` event was in a deleted
    /// segment): resume its counters.
    fn resume(&mut self, open: OpenConnection) {
        let key = open.meta.key;
        self.connected(open.meta, open.received, open.provider);
        if let Some(client) = self.clients.get_mut(&key) {
            client.counters.fold(open.counters);
        }
    }

    fn connected(&mut self, meta: Connection, received: u64, provider: Option<String>) {
        let known = self.ledger.entries.get(&meta.client_id).copied();
        // The previous connection still open here (its end not yet seen) accounts for itself.
        let previous_open = meta.previous.is_some_and(|previous| {
            self.clients.values().any(|c| {
                c.meta.client_id == meta.client_id && c.meta.connection == previous.connection
            })
        });
        let (lost_before, dropped_base) = match (meta.previous, known) {
            (None, _) => (0, 0),
            (Some(_), _) if previous_open => (0, meta.dropped_at_start),
            (Some(previous), Some(entry)) if previous.connection == entry.connection => (
                previous
                    .sent
                    .saturating_sub(entry.received.saturating_add(entry.lost)),
                entry.dropped_end,
            ),
            // A connection this dataset never registered (the handshake failed on our side
            // after the client thought it done, e.g. out of descriptors): nothing it sent, and
            // nothing the client reported on it, arrived here.
            (Some(previous), Some(entry)) if previous.connection > entry.connection => {
                (previous.sent, entry.dropped_end)
            }
            (Some(previous), None) => (previous.sent, 0),
            (Some(_), Some(_)) => (0, meta.dropped_at_start),
        };
        let client = Client {
            provider,
            received,
            counters: Counters::at_start(&meta),
            dropped_base,
            lost_before,
            meta,
        };
        self.clients.insert(client.meta.key, client);
    }

    /// Rows for the records of a batch (the client's counters are folded in by [`Self::apply`]).
    fn records(&mut self, lsn: Lsn, key: u64, records: &[CallRecord]) {
        let Some(client) = self.clients.get_mut(&key) else {
            self.unknown_records = self.unknown_records.saturating_add(records.len() as u64);
            return;
        };
        let meta = &client.meta;
        for record in records {
            if let Some(written) = &self.written
                && written
                    .calls
                    .contains(&(meta.client_id.clone(), record.seq as i64))
            {
                continue;
            }
            let start_us = record.start_ns.div_euclid(1000);
            let interface = record.interface.map(|version| {
                self.interfaces
                    .entry(version)
                    .or_insert_with(|| version.render())
                    .as_str()
            });
            let date = self.days.date(start_us);
            let part = match self.calls.get_mut(date) {
                Some(part) => part,
                None => self.calls.entry(date.to_owned()).or_default(),
            };
            part.touch(lsn).append(
                &CallRow {
                    run_id: &meta.run_id,
                    client_id: &meta.client_id,
                    source: Some(Source::Shim),
                    host: Some(&meta.host),
                    pid: Some(meta.pid),
                    tid: Some(record.tid),
                    process: Some(&meta.process),
                    module: &meta.module,
                    provider: client.provider.as_deref(),
                    interface_version: interface,
                    seq: record.seq as i64,
                    start_us: Some(start_us),
                    start_local: false,
                    dur_ns: Some(record.dur_ns),
                    func: Func::from_code(record.func).map_or("unknown", Func::name),
                    internal: record.flags & record_flags::INTERNAL != 0,
                    returned: true,
                    rv: Some(record.rv),
                    ..CallRow::default()
                }
                .with_arguments(record),
            );
            self.pending_rows += 1;
        }
        if let Some(metrics) = &mut self.metrics {
            metrics.calls(records);
        }
    }

    fn disconnected(&mut self, lsn: Lsn, key: u64, reason: DisconnectReason, at_us: i64) {
        let Some(client) = self.clients.remove(&key) else {
            return;
        };
        let meta = &client.meta;
        // Records the client sent on this connection that never became rows here: in flight when
        // the connection broke, or refused by a full write-ahead log.
        let lost_here = client.counters.sent.saturating_sub(client.received);
        let dropped = client.counters.dropped.saturating_sub(client.dropped_base);
        let lost = client.lost_before.saturating_add(lost_here);
        let already_written = self.written.as_ref().is_some_and(|w| {
            w.clients
                .contains(&(meta.client_id.clone(), i64::from(meta.connection)))
        });
        if !already_written {
            let date = utc_date(meta.connected_at_us);
            self.client_rows
                .entry(date)
                .or_default()
                .touch(lsn)
                .append(&ClientRow {
                    run_id: &meta.run_id,
                    client_id: &meta.client_id,
                    connection: i64::from(meta.connection),
                    host: Some(&meta.host),
                    pid: meta.pid,
                    ppid: Some(meta.ppid),
                    uid: Some(meta.uid),
                    process: Some(&meta.process),
                    exe: Some(&meta.exe),
                    module: &meta.module,
                    provider: client.provider.as_deref(),
                    shim_version: &meta.shim_version,
                    protocol_version: i64::from(meta.protocol_version),
                    redaction: meta.redaction.as_str(),
                    connected_at_us: meta.connected_at_us,
                    disconnected_at_us: Some(at_us),
                    records: clamp(client.received),
                    seq_start: clamp(meta.seq_start),
                    seq_end: Some(clamp(client.counters.seq_high)),
                    dropped: clamp(dropped),
                    lost: clamp(lost),
                    disconnect_reason: Some(reason),
                });
            self.pending_rows += 1;
        }
        if let Some(metrics) = &mut self.metrics {
            metrics.client(&meta.client_id, meta.pid, &meta.process, dropped, lost);
        }
        self.stats
            .dropped_by_clients
            .fetch_add(dropped, Ordering::Relaxed);
        self.stats.lost.fetch_add(lost, Ordering::Relaxed);
        self.ledger.entries.insert(
            meta.client_id.clone(),
            ledger::Entry {
                connection: meta.connection,
                received: client.received,
                lost: lost_here,
                dropped_end: client.counters.dropped,
                updated_us: now_us(),
            },
        );
    }

    /// Ends every connection still open (replay after a crash: the recorder died under them).
    fn end_all(&mut self, lsn: Lsn, reason: DisconnectReason) {
        let keys: Vec<u64> = self.clients.keys().copied().collect();
        for key in keys {
            self.disconnected(lsn, key, reason, now_us());
        }
    }

    fn flush(&mut self, jobs: &Sender<Job>) {
        let (calls, clients) = (&mut self.calls, &mut self.client_rows);
        send_parts(
            calls,
            Table::Calls,
            jobs,
            CallsBuilder::is_empty,
            CallsBuilder::finish,
        );
        send_parts(
            clients,
            Table::Clients,
            jobs,
            ClientsBuilder::is_empty,
            ClientsBuilder::finish,
        );
        // Partitions of past days that went quiet give their builders back.
        self.calls.retain(|date, _| *date == self.days.date);
        self.stats
            .write_queue
            .store(jobs.len() as u64, Ordering::Relaxed);
        self.pending_rows = 0;
        if let Some(metrics) = &mut self.metrics {
            metrics.publish();
        }
    }
}

/// Replay: feeds logged events, then ends every connection left open as `recorder_crash`.
/// Returns the ledger and how many call records belonged to connections the log never named.
pub fn replay(
    events: impl Iterator<Item = Logged>,
    jobs: &Sender<Job>,
    stats: Arc<Stats>,
    ledger: Ledger,
    written: Written,
) -> (Ledger, u64) {
    let mut state = State::new(stats, ledger, Some(written));
    for logged in events {
        state.apply(logged);
        if state.pending_rows >= FLUSH_ROWS {
            state.flush(jobs);
        }
    }
    let last = state.applied_through;
    state.end_all(last, DisconnectReason::RecorderCrash);
    state.flush(jobs);
    let _ = jobs.send(Job::Tick {
        applied_through: last,
    });
    let _ = jobs.send(Job::Shutdown);
    (state.ledger, state.unknown_records)
}

/// A counter as an `Int64` column value: peers' counters are checked against
/// `wire::MAX_COUNTER` on arrival, so this only guards sums of them.
fn clamp(counter: u64) -> i64 {
    i64::try_from(counter).unwrap_or(i64::MAX)
}
