//! The shim → recorder protocol, version [`PROTOCOL_VERSION`].
//!
//! 1. The shim connects to the recorder's Unix stream socket (the *rendezvous*). The recorder reads
//!    the peer's credentials, then writes one length-prefixed [`Welcome`]: the name of a fresh
//!    ipc-channel one-shot server and a random token. The stream stays open for the client's life;
//!    its end-of-file is the disconnect signal.
//! 2. The shim connects to the one-shot server and hands over the receiving end of an ipc bytes
//!    channel. Every message on that channel is one [`Message`] encoded with [`codec`] (bincode
//!    1.3, fixed-width integers, size limit [`MAX_MESSAGE_BYTES`]) and framed by [`frame`]. The
//!    first message is always [`Message::Hello`] echoing the token.
//! 3. Once the recorder holds the client's channel (the hello checked), it writes the one byte
//!    [`REGISTERED`] on the rendezvous stream. The shim sends nothing before it: a client whose
//!    handshake failed on the recorder's side (out of descriptors, say) sees its connection
//!    fail, and counts what it could not send, instead of sending into a channel nobody reads.
//!
//! Records carry codes, not names: the recorder renders names with [`crate::names`], so the shim
//! does no string work on its hot path. Attribute types live in [`crate::attr`].

use bincode::Options;
use serde::{Deserialize, Serialize};

use crate::attr::Attr;

/// Version of this protocol; a recorder refuses a `Hello` with another version.
pub const PROTOCOL_VERSION: u32 = 2;

/// The byte the recorder writes on the rendezvous stream once it holds the client's channel
/// (since protocol version 2).
pub const REGISTERED: u8 = 0x06;

/// Whether a byte read from the rendezvous stream is the recorder's [`REGISTERED`].
pub fn check_registered(byte: u8) -> std::io::Result<()> {
    if byte != REGISTERED {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected the registration byte, got {byte:#04x}"),
        ));
    }
    Ok(())
}

/// Reads the recorder's [`REGISTERED`] byte (the stream's read timeout bounds the wait).
pub fn read_registered(input: &mut impl std::io::Read) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    input.read_exact(&mut byte)?;
    check_registered(byte[0])
}

/// Largest encoded message either side accepts. Shims cut batches well below it.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 20;

/// Largest encoded batch a shim builds (one ipc-channel fragment is ~200 KiB on Linux).
pub const TARGET_BATCH_BYTES: usize = 48 * 1024;

/// The one bincode configuration used by both ends.
pub fn codec() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(MAX_MESSAGE_BYTES)
}

/// Encodes `message` for the ipc bytes channel, appending to `out` (which is cleared first).
///
/// The bincode bytes are prefixed with their length as a LEB128 varint: the recorder receives
/// messages through `IpcReceiverSet`, which only hands them out through postcard decoding, and a
/// postcard byte string is exactly "varint length, then bytes".
pub fn frame(message: &Message, out: &mut Vec<u8>) -> Result<(), bincode::Error> {
    let size = codec().serialized_size(message)?;
    out.clear();
    push_length(size, out);
    codec().serialize_into(&mut *out, message)
}

/// Appends `len` as a LEB128 varint: the length prefix of every frame.
pub fn push_length(len: u64, out: &mut Vec<u8>) {
    let mut rest = len;
    loop {
        let byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The bincode payload of a frame built by [`frame`], if its length prefix is consistent.
pub fn unframe(framed: &[u8]) -> Option<&[u8]> {
    let mut len: u64 = 0;
    for (index, byte) in framed.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            let payload = &framed[index + 1..];
            return (payload.len() as u64 == len).then_some(payload);
        }
    }
    None
}

/// Decodes the bincode payload of one message (the frame's length prefix already removed).
pub fn decode(payload: &[u8]) -> Result<Message, bincode::Error> {
    codec().deserialize(payload)
}

/// Largest [`Welcome`] frame a shim accepts on the rendezvous stream.
pub const MAX_WELCOME_BYTES: u32 = 4096;

/// Writes a [`Welcome`] as `u32` little-endian length + bincode.
pub fn write_welcome(out: &mut impl std::io::Write, welcome: &Welcome) -> std::io::Result<()> {
    let bytes = codec().serialize(welcome).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(bytes.len() + 4);
    frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    frame.extend_from_slice(&bytes);
    out.write_all(&frame)
}

/// Reads a [`Welcome`] written by [`write_welcome`], refusing oversized frames.
pub fn read_welcome(input: &mut impl std::io::Read) -> std::io::Result<Welcome> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_WELCOME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "welcome frame too large",
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    codec()
        .deserialize(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The shim's first (and only) message to the recorder's one-shot server: the encoded
/// [`Message::Hello`] and the receiving end of the data channel. Generic over the receiver type
/// because each side names it as its ipc-channel API hands it out (`IpcBytesReceiver` on the shim,
/// `IpcReceiver<ByteBuf>` on the recorder); both serialize to the same bytes.
#[derive(Serialize, Deserialize)]
pub struct Bootstrap<R> {
    pub hello: serde_bytes::ByteBuf,
    pub data: R,
}

/// Recorder → shim, on the rendezvous stream, as `u32` little-endian length + bincode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    /// Name of the ipc-channel one-shot server to connect to.
    pub server_name: String,
    /// Random token the first ipc message must echo.
    pub token: [u8; 16],
    /// Per-dataset key for `P11TRACE_REDACT=labels` (HMAC-SHA256 of labels and ids).
    pub label_key: [u8; 32],
    pub run_id: String,
}

/// What the shim does with labels and ids (see `schemas/redaction.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Redaction {
    /// Secrets never leave the shim; labels and ids are recorded as written.
    Default,
    /// Also replaces labels and ids with a keyed hash.
    Labels,
}

impl Redaction {
    pub fn as_str(self) -> &'static str {
        match self {
            Redaction::Default => "default",
            Redaction::Labels => "labels",
        }
    }
}

/// First ipc message of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub token: [u8; 16],
    /// UUIDv7 of this traced process (a forked child gets its own).
    pub client_id: String,
    /// 0 for the first connection of a client, then 1, 2, ... for reconnections.
    pub connection: u32,
    pub pid: i64,
    pub ppid: i64,
    pub host: String,
    /// Executable name (`comm`), e.g. `pkcs11-tool`.
    pub process: String,
    /// Full path of the executable.
    pub exe: String,
    /// Path of the real module the shim forwards to.
    pub module: String,
    pub shim_version: String,
    pub redaction: Redaction,
    /// The client's call counter when this connection started: every `seq` below it was either
    /// sent on an earlier connection or counted in `dropped`.
    pub seq_start: u64,
    /// Calls the client could not deliver before this connection (cumulative).
    pub dropped: u64,
    /// The client's previous connection, if any: how many records it handed to that connection's
    /// socket. The recorder compares this with what it received to count `lost` records.
    pub previous: Option<PreviousConnection>,
}

/// What a reconnecting client reports of its previous connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousConnection {
    pub connection: u32,
    /// Records in messages whose send succeeded on that connection.
    pub sent: u64,
}

/// Why a client says goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GoodbyeReason {
    /// The application called `C_Finalize`.
    Finalize,
    /// The process is exiting without `C_Finalize` (library destructor).
    Exit,
}

/// One ipc message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Batch(Batch),
    /// The provider identity, from the shim's own `C_GetInfo` after `C_Initialize`.
    Provider(String),
    Goodbye {
        reason: GoodbyeReason,
        /// Calls made by the client in its whole life so far.
        seq_high: u64,
        /// Calls it could not deliver (cumulative).
        dropped: u64,
        /// Records handed to this connection's socket, in all.
        sent: u64,
    },
}

/// The largest counter (`seq`, `sent`, `dropped`, …) a peer may report: every counter becomes an
/// `Int64` column, and sums of two stay within `u64`.
pub const MAX_COUNTER: u64 = i64::MAX as u64;

/// Whether every counter a peer reported is at most [`MAX_COUNTER`]: a larger one is nonsense
/// (no client makes 2^63 calls), and the recorder drops the peer rather than wrap or overflow.
pub fn plausible(counters: &[u64]) -> bool {
    counters.iter().all(|&c| c <= MAX_COUNTER)
}

impl Hello {
    /// [`plausible`] for the counters a hello carries.
    pub fn plausible(&self) -> bool {
        let previous = self.previous.map_or(0, |p| p.sent);
        plausible(&[self.seq_start, self.dropped, previous])
    }
}

impl Batch {
    /// [`plausible`] for the batch's counters and its records' sequence numbers.
    pub fn plausible(&self) -> bool {
        plausible(&[self.seq_high, self.dropped, self.sent])
            && self.records.iter().all(|r| r.seq <= MAX_COUNTER)
    }
}

/// A batch of call records, with the client's counters at the time it was cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub records: Vec<CallRecord>,
    /// Calls made by the client so far (the next `seq` it will hand out).
    pub seq_high: u64,
    /// Calls it could not deliver so far (cumulative).
    pub dropped: u64,
    /// Records handed to this connection's socket before this batch.
    pub sent: u64,
}

/// Version of the function table the application called through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InterfaceVersion {
    pub major: u8,
    pub minor: u8,
}

impl InterfaceVersion {
    /// `2.40`, `3.0`, `3.2`.
    pub fn render(self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

/// Flag bits of [`CallRecord::flags`].
pub mod record_flags {
    /// The shim made this call on its own behalf.
    pub const INTERNAL: u8 = 1;
}

/// One PKCS#11 call as the shim saw it. Every `Option` is `None` where the function has no such
/// argument (or the value could not be read).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Per-client call number, from 0, gap-free across recorded and dropped calls.
    pub seq: u64,
    pub tid: i64,
    /// Wall-clock start, nanoseconds since the Unix epoch (UTC).
    pub start_ns: i64,
    /// Monotonic duration of the real call, nanoseconds.
    pub dur_ns: i64,
    /// [`crate::Func`] code.
    pub func: u16,
    pub flags: u8,
    pub interface: Option<InterfaceVersion>,
    pub rv: u64,
    pub slot_id: Option<u64>,
    pub session: Option<u64>,
    pub mechanism: Option<u64>,
    pub mech_params: Option<String>,
    pub object: Option<u64>,
    pub object2: Option<u64>,
    pub out_objects: Option<Vec<u64>>,
    pub user_type: Option<u64>,
    pub in_len: Option<i64>,
    pub out_len: Option<i64>,
    pub ck_flags: Option<u64>,
    pub op_id: Option<u64>,
    pub attrs: Option<Vec<Attr>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::{Attr, AttrType, AttrValue, Template};

    fn postcard_bytes(framed: &[u8]) -> &[u8] {
        unframe(framed).expect("a consistent frame")
    }

    #[test]
    fn frames_round_trip() {
        let record = CallRecord {
            seq: 7,
            func: crate::Func::C_Sign.code(),
            attrs: Some(vec![Attr {
                template: Template::In,
                kind: AttrType::Attribute(0x11),
                len: 32,
                value: AttrValue::Redacted,
            }]),
            ..Default::default()
        };
        let message = Message::Batch(Batch {
            records: vec![record.clone(); 300],
            seq_high: 9,
            dropped: 1,
            sent: 0,
        });
        let mut out = Vec::new();
        frame(&message, &mut out).unwrap();
        assert!(out.len() > 128, "needs a multi-byte varint");
        assert_eq!(decode(postcard_bytes(&out)).unwrap(), message);
    }

    #[test]
    fn trailing_bytes_and_oversized_lengths_are_rejected() {
        let mut out = Vec::new();
        frame(&Message::Provider("x".into()), &mut out).unwrap();
        let mut payload = postcard_bytes(&out).to_vec();
        payload.push(0);
        assert!(decode(&payload).is_err());
        // A Provider whose declared string length is absurd must fail, not allocate.
        let mut evil = vec![2, 0, 0, 0];
        evil.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&evil).is_err());
    }
}
