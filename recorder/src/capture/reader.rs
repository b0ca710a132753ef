//! One client's reader: receives its data channel's messages, validates and decodes them, and
//! emits them as [`Event`]s in the order they were sent. It ends the connection when the channel
//! closes, on a protocol error, at shutdown once the channel is drained, and — when the client's
//! rendezvous stream has ended but a descriptor it could not close keeps the channel open — once
//! the channel has been empty for [`EOF_GRACE`]. A backlog is always read to its end first.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipc_channel::ipc::IpcReceiver;
use ipc_channel::{IpcError, TryRecvError};
use p11trace_dataset::DisconnectReason;
use p11trace_record::Func;
use p11trace_record::wire::{self, GoodbyeReason, Message};
use serde_bytes::ByteBuf;

use super::{Link, Shared};
use crate::events::{Counters, Event};

/// After a client's rendezvous stream closes, how long its data channel may stay open *and
/// empty* (a descriptor inherited by a child the shim could not close) before the connection is
/// ended. Every message received restarts it.
const EOF_GRACE: Duration = Duration::from_secs(2);
/// How long one wait for a message lasts: how soon a reader notices a shutdown or the grace.
const POLL: Duration = Duration::from_millis(200);
/// Most records one batch may carry.
const MAX_BATCH_RECORDS: usize = 65_536;

pub(super) struct Reader {
    pub link: Arc<Link>,
    pub shared: Arc<Shared>,
    pub data: IpcReceiver<ByteBuf>,
    pub goodbye: Option<GoodbyeReason>,
}

impl Reader {
    pub fn run(mut self) {
        // ipc-channel panics on some malformed fragment headers (a multi-fragment message
        // without its fragment channel): that ends this client only.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read()));
        if read.is_err() {
            self.protocol_error("a message its channel could not reassemble");
        }
        self.link.finished.store(true, Ordering::Release);
    }

    fn read(&mut self) {
        let mut empty_since: Option<Instant> = None;
        loop {
            let open = match self.data.try_recv_timeout(POLL) {
                Ok(payload) => {
                    empty_since = None;
                    self.shared.crash.delay_at("slow-capture");
                    self.message(&payload)
                }
                Err(TryRecvError::Empty) => self.idle(&mut empty_since),
                Err(TryRecvError::IpcError(IpcError::Disconnected)) => {
                    self.link.end(&self.shared, self.ending());
                    false
                }
                Err(TryRecvError::IpcError(IpcError::SerializationError(_))) => {
                    self.protocol_error("undecodable frame")
                }
                Err(TryRecvError::IpcError(IpcError::Io(error))) => {
                    self.protocol_error(&format!("cannot read its channel: {error}"))
                }
            };
            if !open {
                break;
            }
        }
    }

    /// Nothing arrived for [`POLL`]: the channel is drained. False when the connection ends.
    fn idle(&mut self, empty_since: &mut Option<Instant>) -> bool {
        if self.shared.stopping.load(Ordering::Acquire) {
            self.link
                .end(&self.shared, DisconnectReason::RecorderShutdown);
            return false;
        }
        if self.link.eof.load(Ordering::Acquire) {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= EOF_GRACE {
                self.link.end(&self.shared, self.ending());
                return false;
            }
        }
        true
    }

    /// Why a client whose channel closed (or stayed silent after EOF) ended: its goodbye, if any.
    fn ending(&self) -> DisconnectReason {
        match self.goodbye {
            Some(GoodbyeReason::Finalize) => DisconnectReason::Finalize,
            Some(GoodbyeReason::Exit) => DisconnectReason::Exit,
            None => DisconnectReason::Eof,
        }
    }

    /// Ends the connection for a peer that broke the protocol. Always false.
    fn protocol_error(&self, what: &str) -> bool {
        self.shared
            .stats
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        if self.link.end(&self.shared, DisconnectReason::ProtocolError) {
            eprintln!(
                "p11trace-recorder: dropped client pid {}: {what}",
                self.link.pid
            );
        }
        false
    }

    /// Validates and emits one message. False when the connection has ended.
    fn message(&mut self, payload: &[u8]) -> bool {
        let key = self.link.key;
        let mut received = 0;
        if payload.len() as u64 > wire::MAX_MESSAGE_BYTES {
            return self.protocol_error("oversized message");
        }
        let event = match wire::decode(payload) {
            Ok(Message::Batch(batch)) => {
                let valid = batch.records.len() <= MAX_BATCH_RECORDS
                    && batch.plausible()
                    && batch
                        .records
                        .iter()
                        .all(|r| Func::from_code(r.func).is_some());
                if !valid {
                    return self.protocol_error("invalid batch");
                }
                received = batch.records.len() as u64;
                Event::Records {
                    key,
                    records: batch.records,
                    counters: Counters {
                        seq_high: batch.seq_high,
                        dropped: batch.dropped,
                        sent: batch.sent,
                    },
                }
            }
            Ok(Message::Provider(provider)) => Event::Provider { key, provider },
            Ok(Message::Goodbye {
                reason,
                seq_high,
                dropped,
                sent,
            }) => {
                if !wire::plausible(&[seq_high, dropped, sent]) {
                    return self.protocol_error("implausible counters in the goodbye");
                }
                self.goodbye = Some(reason);
                Event::Goodbye {
                    key,
                    reason,
                    counters: Counters {
                        seq_high,
                        dropped,
                        sent,
                    },
                }
            }
            Ok(Message::Hello(_)) => return self.protocol_error("second hello"),
            Err(_) => return self.protocol_error("undecodable message"),
        };
        let open = self.link.emit(&self.shared, event, false);
        if open {
            self.shared
                .stats
                .records_received
                .fetch_add(received, Ordering::Relaxed);
        }
        open
    }
}
