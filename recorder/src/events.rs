//! What flows between the actors: connection metadata and events in arrival order.

use std::sync::Arc;

use p11trace_schema::row::DisconnectReason;
use p11trace_schema::wire::{CallRecord, GoodbyeReason, Redaction};

/// Identity of one client connection, fixed at the handshake. `pid` and `uid` come from the
/// socket's peer credentials, never from what the client says.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Unique within this recorder process.
    pub key: u64,
    pub run_id: Arc<str>,
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
    pub previous: Option<p11trace_schema::wire::PreviousConnection>,
}

/// One step of a client's life, as the capture actor saw it.
#[derive(Debug)]
pub enum Event {
    Connected(Arc<Connection>),
    Records {
        key: u64,
        records: Vec<CallRecord>,
        seq_high: u64,
        dropped: u64,
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
    },
    Disconnected {
        key: u64,
        reason: DisconnectReason,
        at_us: i64,
    },
    /// Everything before this has been delivered: flush and stop.
    Shutdown,
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
