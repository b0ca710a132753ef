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
    pub seq_high: u64,
    pub dropped: u64,
    pub sent: u64,
}

/// One step of a client's life, as the capture actor saw it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Event {
    Connected(Box<Connection>),
    Records {
        key: u64,
        records: Vec<CallRecord>,
        seq_high: u64,
        dropped: u64,
        /// Records the client sent on this connection before these.
        sent: u64,
    },
    Provider {
        key: u64,
        provider: String,
    },
    Goodbye {
        key: u64,
        reason: GoodbyeReason,
        seq_high: u64,
        dropped: u64,
        sent: u64,
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
