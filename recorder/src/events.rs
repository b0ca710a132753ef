//! What flows between the actors (and what the write-ahead log stores): connection metadata and
//! events in arrival order.

use p11trace_dataset::DisconnectReason;
use p11trace_record::wire::{CallRecord, GoodbyeReason, PreviousConnection, Redaction};
use serde::{Deserialize, Serialize};

/// Identity of one client connection, fixed at the handshake. `pid` and `uid` come from the
/// socket's peer credentials, never from what the client says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    /// Unique across recorder restarts on one dataset (random high half, counter low half).
    pub key: u64,
    pub run_id: String,
    pub client_id: String,
    pub connection: u32,
    pub pid: i64,
    pub uid: i64,
    pub ppid: i64,
    pub host: String,
    pub process: String,
    pub exe: String,
    pub module: String,
    pub shim_version: String,
    pub protocol_version: u32,
    pub redaction: Redaction,
    pub connected_at_us: i64,
    pub seq_start: u64,
    pub dropped_at_start: u64,
    pub previous: Option<PreviousConnection>,
}

/// The counters of an open connection, as a write-ahead-log checkpoint carries them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenConnection {
    pub meta: Connection,
    pub provider: Option<String>,
    /// Records received on this connection so far.
    pub received: u64,
    pub counters: Counters,
}

/// The counters a client reports with every batch and at goodbye. Each only grows, so a report
/// folds in by taking the maximum (a late or replayed report never lowers them). The fields keep
/// the order (and so the bincode bytes) the write-ahead log has always had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Calls made by the client so far (the next `seq` it hands out).
    pub seq_high: u64,
    /// Calls it could not deliver (cumulative).
    pub dropped: u64,
    /// Records handed to this connection's socket.
    pub sent: u64,
}

impl Counters {
    /// The counters of a connection that has just said hello.
    pub fn at_start(meta: &Connection) -> Counters {
        Counters {
            seq_high: meta.seq_start,
            dropped: meta.dropped_at_start,
            sent: 0,
        }
    }

    pub fn fold(&mut self, report: Counters) {
        self.seq_high = self.seq_high.max(report.seq_high);
        self.dropped = self.dropped.max(report.dropped);
        self.sent = self.sent.max(report.sent);
    }
}

/// One step of a client's life, as the capture actor saw it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Event {
    Connected(Box<Connection>),
    Records {
        key: u64,
        records: Vec<CallRecord>,
        /// The client's counters when it cut the batch; `sent` counts the records it sent on
        /// this connection *before* these.
        counters: Counters,
    },
    Provider {
        key: u64,
        provider: String,
    },
    Goodbye {
        key: u64,
        reason: GoodbyeReason,
        counters: Counters,
    },
    Disconnected {
        key: u64,
        reason: DisconnectReason,
        at_us: i64,
    },
    /// Written at the start of every log segment: the connections open at that moment, so a
    /// segment replays without the ones before it.
    Checkpoint(Vec<OpenConnection>),
    /// Everything before this has been delivered: flush and stop (never logged).
    Shutdown,
}

impl Event {
    /// What the event reports of its connection's progress: (connection key, records it
    /// carries, the client's counters once they are counted). The one rule both the log's
    /// checkpoints and the batcher fold counters by.
    pub fn progress(&self) -> Option<(u64, u64, Counters)> {
        match self {
            Event::Records {
                key,
                records,
                counters,
            } => {
                let carried = records.len() as u64;
                let sent = counters.sent.saturating_add(carried);
                Some((*key, carried, Counters { sent, ..*counters }))
            }
            Event::Goodbye { key, counters, .. } => Some((*key, 0, *counters)),
            _ => None,
        }
    }
}

/// A log sequence number: segment in the high half, byte offset in the low half. Increasing.
pub type Lsn = u64;

/// An event with the position the write-ahead log gave it.
#[derive(Debug)]
pub struct Logged {
    pub lsn: Lsn,
    pub event: Event,
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
