//! Batcher: turns events into Arrow record batches, one builder per table and date partition,
//! and keeps each connection's counters for its `clients` row.
//!
//! It hands a batch to the writer every [`FLUSH_ROWS`] rows or [`FLUSH_EVERY`], so what it holds
//! in memory is bounded by those, not by the size of a Parquet file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use p11trace_schema::Func;
use p11trace_schema::arrow::{CallsBuilder, ClientsBuilder};
use p11trace_schema::row::{CallRow, ClientRow, DisconnectReason, Source};
use p11trace_schema::wire::{CallRecord, InterfaceVersion, record_flags};

use crate::dataset::utc_date;
use crate::events::{Connection, Event};
use crate::stats::Stats;
use crate::writer::{Job, Table};

/// Rows per record batch handed to the writer.
pub const FLUSH_ROWS: usize = 64 * 1024;
/// Longest a row waits in the batcher.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// What the recorder remembers of a client's last connection, to account for calls lost or
/// dropped between connections (see `schemas/clients.md`).
#[derive(Debug, Clone, Copy)]
struct Ledger {
    connection: u32,
    received: u64,
    dropped_end: u64,
}

struct Client {
    meta: Arc<Connection>,
    provider: Option<String>,
    received: u64,
    seq_high: u64,
    dropped: u64,
    dropped_base: u64,
    lost_before: u64,
}

pub struct Batcher {
    pub events: Receiver<Event>,
    pub jobs: Sender<Job>,
    pub stats: Arc<Stats>,
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

#[derive(Default)]
struct State {
    stats: Arc<Stats>,
    clients: HashMap<u64, Client>,
    ledger: HashMap<String, Ledger>,
    calls: BTreeMap<String, CallsBuilder>,
    client_rows: BTreeMap<String, ClientsBuilder>,
    pending_rows: usize,
    days: DayCache,
    interfaces: HashMap<InterfaceVersion, String>,
}

impl Batcher {
    pub fn run(self) {
        let mut state = State {
            stats: self.stats.clone(),
            ..State::default()
        };
        let mut last_flush = Instant::now();
        loop {
            let event = match self.events.recv_timeout(FLUSH_EVERY) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Event::Shutdown),
            };
            let shutdown = matches!(event, Some(Event::Shutdown));
            if let Some(event) = event {
                state.apply(event);
            }
            if shutdown || state.pending_rows >= FLUSH_ROWS || last_flush.elapsed() >= FLUSH_EVERY {
                state.flush(&self.jobs, &self.stats);
                last_flush = Instant::now();
                let _ = self.jobs.send(Job::Tick);
            }
            if shutdown {
                let _ = self.jobs.send(Job::Shutdown);
                return;
            }
        }
    }
}

impl State {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Connected(meta) => self.connected(meta),
            Event::Records {
                key,
                records,
                seq_high,
                dropped,
            } => self.records(key, &records, seq_high, dropped),
            Event::Provider { key, provider } => {
                if let Some(client) = self.clients.get_mut(&key) {
                    client.provider = Some(provider);
                }
            }
            Event::Goodbye {
                key,
                seq_high,
                dropped,
                ..
            } => {
                if let Some(client) = self.clients.get_mut(&key) {
                    client.seq_high = client.seq_high.max(seq_high);
                    client.dropped = client.dropped.max(dropped);
                }
            }
            Event::Disconnected { key, reason, at_us } => self.disconnected(key, reason, at_us),
            Event::Shutdown => {}
        }
    }

    fn connected(&mut self, meta: Arc<Connection>) {
        let known = self.ledger.get(&meta.client_id).copied();
        let matching = match (meta.previous, known) {
            (Some(previous), Some(ledger)) if previous.connection == ledger.connection => {
                Some((previous, ledger))
            }
            _ => None,
        };
        let lost_before = matching.map_or(0, |(previous, ledger)| {
            previous.sent.saturating_sub(ledger.received)
        });
        let dropped_base = match matching {
            Some((_, ledger)) => ledger.dropped_end,
            None if meta.previous.is_none() => 0,
            None => meta.dropped_at_start,
        };
        let client = Client {
            provider: None,
            received: 0,
            seq_high: meta.seq_start,
            dropped: meta.dropped_at_start,
            dropped_base,
            lost_before,
            meta: meta.clone(),
        };
        self.clients.insert(meta.key, client);
    }

    fn records(&mut self, key: u64, records: &[CallRecord], seq_high: u64, dropped: u64) {
        let Some(client) = self.clients.get_mut(&key) else {
            return;
        };
        client.received += records.len() as u64;
        client.seq_high = client.seq_high.max(seq_high);
        client.dropped = client.dropped.max(dropped);
        let meta = &client.meta;
        for record in records {
            let start_us = record.start_ns.div_euclid(1000);
            let interface = record.interface.map(|version| {
                self.interfaces
                    .entry(version)
                    .or_insert_with(|| version.render())
                    .as_str()
            });
            let date = self.days.date(start_us);
            let builder = match self.calls.get_mut(date) {
                Some(builder) => builder,
                None => self.calls.entry(date.to_owned()).or_default(),
            };
            builder.append(
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
        }
        self.pending_rows += records.len();
    }

    fn disconnected(&mut self, key: u64, reason: DisconnectReason, at_us: i64) {
        let Some(client) = self.clients.remove(&key) else {
            return;
        };
        let meta = &client.meta;
        let date = utc_date(meta.connected_at_us);
        self.client_rows
            .entry(date)
            .or_default()
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
                records: client.received as i64,
                seq_start: meta.seq_start as i64,
                seq_end: Some(client.seq_high as i64),
                dropped: client.dropped.saturating_sub(client.dropped_base) as i64,
                lost: client.lost_before as i64,
                disconnect_reason: Some(reason),
            });
        let dropped = client.dropped.saturating_sub(client.dropped_base);
        self.stats
            .dropped_by_clients
            .fetch_add(dropped, Ordering::Relaxed);
        self.stats
            .lost
            .fetch_add(client.lost_before, Ordering::Relaxed);
        self.ledger.insert(
            meta.client_id.clone(),
            Ledger {
                connection: meta.connection,
                received: client.received,
                dropped_end: client.dropped,
            },
        );
        self.pending_rows += 1;
    }

    fn flush(&mut self, jobs: &Sender<Job>, stats: &Stats) {
        for (date, builder) in self.calls.iter_mut().filter(|(_, b)| !b.is_empty()) {
            let _ = jobs.send(Job::Rows {
                table: Table::Calls,
                date: date.clone(),
                batch: builder.finish(),
            });
        }
        for (date, builder) in self.client_rows.iter_mut().filter(|(_, b)| !b.is_empty()) {
            let _ = jobs.send(Job::Rows {
                table: Table::Clients,
                date: date.clone(),
                batch: builder.finish(),
            });
        }
        // Partitions of past days that went quiet give their builders back.
        self.calls.retain(|date, _| *date == self.days.date);
        stats
            .write_queue
            .store(jobs.len() as u64, Ordering::Relaxed);
        self.pending_rows = 0;
    }
}
