//! One row of the `calls` table and one row of the `clients` table, as every producer (recorder,
//! spy importer, observe importer) hands them to the Arrow writer. Fields borrow, so the recorder
//! builds a row from a wire record without allocating.

use p11trace_record::attr::Attr;
use p11trace_record::wire::CallRecord;

/// Where a row came from (`calls.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Shim,
    PkcsSpy,
    ObserveJson,
    P11KitLog,
    Pkcs11Logger,
    Pkcs11Shim,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Shim => "shim",
            Source::PkcsSpy => "pkcs11-spy",
            Source::ObserveJson => "observe-json",
            Source::P11KitLog => "p11-kit-log",
            Source::Pkcs11Logger => "pkcs11-logger",
            Source::Pkcs11Shim => "libpkcs11shim",
        }
    }
}

/// One PKCS#11 call: a row of `calls` (see `schemas/calls.md` for each column).
/// Codes (`rv`, `mechanism`, `user_type`) render to names in the writer.
#[derive(Debug, Clone, Default)]
pub struct CallRow<'a> {
    pub run_id: &'a str,
    pub client_id: &'a str,
    pub source: Option<Source>,
    pub host: Option<&'a str>,
    pub pid: Option<i64>,
    pub tid: Option<i64>,
    pub process: Option<&'a str>,
    pub module: &'a str,
    pub provider: Option<&'a str>,
    pub interface_version: Option<&'a str>,
    pub seq: i64,
    /// Microseconds since the Unix epoch, UTC.
    pub start_us: Option<i64>,
    pub start_local: bool,
    pub dur_ns: Option<i64>,
    pub func: &'a str,
    pub internal: bool,
    pub returned: bool,
    pub rv: Option<u64>,
    pub slot_id: Option<u64>,
    pub session: Option<u64>,
    pub mechanism: Option<u64>,
    pub mech_params: Option<&'a str>,
    pub object: Option<u64>,
    pub object2: Option<u64>,
    pub out_objects: Option<&'a [u64]>,
    pub user_type: Option<u64>,
    pub in_len: Option<i64>,
    pub out_len: Option<i64>,
    pub ck_flags: Option<u64>,
    pub op_id: Option<u64>,
    pub attrs: Option<&'a [Attr]>,
}

impl<'a> CallRow<'a> {
    /// Fills the argument columns (slot … attrs) from a call record.
    pub fn with_arguments(self, record: &'a CallRecord) -> CallRow<'a> {
        CallRow {
            slot_id: record.slot_id,
            session: record.session,
            mechanism: record.mechanism,
            mech_params: record.mech_params.as_deref(),
            object: record.object,
            object2: record.object2,
            out_objects: record.out_objects.as_deref(),
            user_type: record.user_type,
            in_len: record.in_len,
            out_len: record.out_len,
            ck_flags: record.ck_flags,
            op_id: record.op_id,
            attrs: record.attrs.as_deref(),
            ..self
        }
    }
}

/// Why a client connection ended (`clients.disconnect_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DisconnectReason {
    /// The application called `C_Finalize`.
    Finalize,
    /// The process exited without `C_Finalize` and said goodbye from its destructor.
    Exit,
    /// The connection closed without a goodbye (process killed, crashed, or recorder restarted).
    Eof,
    /// The recorder dropped the connection: bad token, undecodable or oversized message.
    ProtocolError,
    /// The recorder stopped while the client was connected.
    RecorderShutdown,
    /// The recorder was killed or crashed while the client was connected; the connection was
    /// rebuilt from its write-ahead log when it restarted.
    RecorderCrash,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Finalize => "finalize",
            DisconnectReason::Exit => "exit",
            DisconnectReason::Eof => "eof",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::RecorderShutdown => "recorder_shutdown",
            DisconnectReason::RecorderCrash => "recorder_crash",
        }
    }
}

/// One traced-process connection: a row of `clients` (see `schemas/clients.md`).
#[derive(Debug, Clone, Default)]
pub struct ClientRow<'a> {
    pub run_id: &'a str,
    pub client_id: &'a str,
    pub connection: i64,
    pub host: Option<&'a str>,
    pub pid: i64,
    pub ppid: Option<i64>,
    pub uid: Option<i64>,
    pub process: Option<&'a str>,
    pub exe: Option<&'a str>,
    pub module: &'a str,
    pub provider: Option<&'a str>,
    pub shim_version: &'a str,
    pub protocol_version: i64,
    pub redaction: &'a str,
    pub connected_at_us: i64,
    pub disconnected_at_us: Option<i64>,
    pub records: i64,
    pub seq_start: i64,
    pub seq_end: Option<i64>,
    pub dropped: i64,
    pub lost: i64,
    pub disconnect_reason: Option<DisconnectReason>,
}
