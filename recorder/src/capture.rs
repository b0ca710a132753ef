//! Capture: one `IpcReceiverSet` select loop over every client's data channel and the control
//! channel. It decodes and validates each message and turns it into [`Event`]s for the next actor.
//!
//! Backpressure: sending an event blocks while the next actor's bounded channel is full; capture
//! then stops reading, the clients' socket buffers fill, and each shim drops (and counts) what it
//! cannot send. Nothing the recorder has read is ever dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use ipc_channel::ipc::{IpcReceiver, IpcReceiverSet, IpcSelectionResult};
use p11trace_dataset::DisconnectReason;
use p11trace_record::Func;
use p11trace_record::wire::{self, GoodbyeReason, Message};
use serde_bytes::ByteBuf;

use crate::acceptor::{Control, Registration};
use crate::events::{Connection, Counters, Event, now_us};
use crate::stats::Stats;

/// After a client's rendezvous stream closes, how long its data channel may stay open (a
/// descriptor inherited by a child the shim could not close) before the connection is ended.
const EOF_GRACE: Duration = Duration::from_secs(2);
/// Longest drain after a shutdown request (a client that never stops sending cannot hold us).
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Most records one batch may carry.
const MAX_BATCH_RECORDS: usize = 65_536;

pub struct Capture {
    pub control: IpcReceiver<Control>,
    pub events: Sender<Event>,
    pub run_id: String,
    pub stats: Arc<Stats>,
    pub once: bool,
}

struct Client {
    key: u64,
    pid: i64,
    goodbye: Option<GoodbyeReason>,
    eof_at: Option<Instant>,
    /// Ended (goodbye+close, EOF grace, protocol error): later messages are ignored.
    ended: bool,
}

impl Capture {
    pub fn run(self) -> std::io::Result<()> {
        let mut set = IpcReceiverSet::new()?;
        let control_id = set.add(self.control)?;
        let mut loop_state = Loop {
            events: self.events,
            run_id: self.run_id,
            stats: self.stats,
            clients: HashMap::new(),
            by_key: HashMap::new(),
            ever_connected: false,
            shutdown_at: None,
        };
        loop {
            match set.try_select_timeout(Duration::from_millis(100)) {
                Ok(results) => {
                    for result in results {
                        match result {
                            IpcSelectionResult::MessageReceived(id, message)
                                if id == control_id =>
                            {
                                match message.to::<Control>() {
                                    Ok(Control::Register(registration)) => {
                                        loop_state.register(&mut set, *registration);
                                    }
                                    Ok(Control::Eof(key)) => loop_state.eof(key),
                                    Ok(Control::Shutdown) => {
                                        loop_state.shutdown_at.get_or_insert_with(Instant::now);
                                    }
                                    Err(_) => {}
                                }
                            }
                            IpcSelectionResult::MessageReceived(id, message) => {
                                loop_state.message(id, message.to::<ByteBuf>());
                            }
                            IpcSelectionResult::ChannelClosed(id) => loop_state.closed(id),
                        }
                    }
                }
                Err(ipc_channel::TrySelectError::Empty) => {
                    if loop_state.shutdown_at.is_some() {
                        break;
                    }
                }
                Err(ipc_channel::TrySelectError::IoError(e)) => {
                    eprintln!("p11trace-recorder: capture stopped: {e}");
                    break;
                }
            }
            loop_state.expire_eofs();
            if self.once && loop_state.ever_connected && loop_state.live() == 0 {
                loop_state.shutdown_at.get_or_insert_with(Instant::now);
            }
            if loop_state
                .shutdown_at
                .is_some_and(|at| at.elapsed() > SHUTDOWN_DRAIN)
            {
                break;
            }
        }
        loop_state.finish();
        Ok(())
    }
}

struct Loop {
    events: Sender<Event>,
    run_id: String,
    stats: Arc<Stats>,
    clients: HashMap<u64, Client>,
    by_key: HashMap<u64, u64>,
    ever_connected: bool,
    shutdown_at: Option<Instant>,
}

impl Loop {
    fn emit(&self, event: Event) {
        self.stats
            .capture_queue
            .store(self.events.len() as u64, Ordering::Relaxed);
        // The next actor only goes away when the whole recorder is stopping.
        let _ = self.events.send(event);
    }

    fn live(&self) -> usize {
        self.clients.values().filter(|c| !c.ended).count()
    }

    fn register(&mut self, set: &mut IpcReceiverSet, registration: Registration) {
        let Registration {
            key,
            peer,
            hello,
            data,
        } = registration;
        let Ok(id) = set.add(data) else { return };
        let connection = Connection {
            key,
            run_id: self.run_id.clone(),
            client_id: hello.client_id,
            connection: hello.connection,
            pid: peer.pid,
            uid: peer.uid,
            ppid: hello.ppid,
            host: hello.host,
            process: hello.process,
            exe: hello.exe,
            module: hello.module,
            shim_version: hello.shim_version,
            protocol_version: hello.protocol_version,
            redaction: hello.redaction,
            connected_at_us: now_us(),
            seq_start: hello.seq_start,
            dropped_at_start: hello.dropped,
            previous: hello.previous,
        };
        self.clients.insert(
            id,
            Client {
                key,
                pid: peer.pid,
                goodbye: None,
                eof_at: None,
                ended: false,
            },
        );
        self.by_key.insert(key, id);
        self.ever_connected = true;
        self.stats.clients_connected.fetch_add(1, Ordering::Relaxed);
        self.stats.clients_active.fetch_add(1, Ordering::Relaxed);
        self.emit(Event::Connected(Box::new(connection)));
    }

    fn end(&mut self, id: u64, reason: DisconnectReason) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if client.ended {
            return;
        }
        client.ended = true;
        let key = client.key;
        self.stats.clients_active.fetch_sub(1, Ordering::Relaxed);
        self.emit(Event::Disconnected {
            key,
            reason,
            at_us: now_us(),
        });
    }

    fn protocol_error(&mut self, id: u64, what: &str) {
        self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(client) = self.clients.get(&id)
            && !client.ended
        {
            eprintln!(
                "p11trace-recorder: dropped client pid {}: {what}",
                client.pid
            );
        }
        self.end(id, DisconnectReason::ProtocolError);
    }

    fn message(&mut self, id: u64, payload: Result<ByteBuf, ipc_channel::SerDeError>) {
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        if client.ended {
            return;
        }
        let key = client.key;
        let payload = match payload {
            Ok(payload) => payload,
            Err(_) => return self.protocol_error(id, "undecodable frame"),
        };
        if payload.len() as u64 > wire::MAX_MESSAGE_BYTES {
            return self.protocol_error(id, "oversized message");
        }
        match wire::decode(&payload) {
            Ok(Message::Batch(batch)) => {
                let valid = batch.records.len() <= MAX_BATCH_RECORDS
                    && batch.plausible()
                    && batch
                        .records
                        .iter()
                        .all(|r| Func::from_code(r.func).is_some());
                if !valid {
                    return self.protocol_error(id, "invalid batch");
                }
                self.stats
                    .records_received
                    .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
                self.emit(Event::Records {
                    key,
                    records: batch.records,
                    counters: Counters {
                        seq_high: batch.seq_high,
                        dropped: batch.dropped,
                        sent: batch.sent,
                    },
                });
            }
            Ok(Message::Provider(provider)) => self.emit(Event::Provider { key, provider }),
            Ok(Message::Goodbye {
                reason,
                seq_high,
                dropped,
                sent,
            }) => {
                if !wire::plausible(&[seq_high, dropped, sent]) {
                    return self.protocol_error(id, "implausible counters in the goodbye");
                }
                if let Some(client) = self.clients.get_mut(&id) {
                    client.goodbye = Some(reason);
                }
                self.emit(Event::Goodbye {
                    key,
                    reason,
                    counters: Counters {
                        seq_high,
                        dropped,
                        sent,
                    },
                });
            }
            Ok(Message::Hello(_)) => self.protocol_error(id, "second hello"),
            Err(_) => self.protocol_error(id, "undecodable message"),
        }
    }

    fn closed(&mut self, id: u64) {
        self.end(id, self.ending(id));
        if let Some(client) = self.clients.remove(&id) {
            self.by_key.remove(&client.key);
        }
    }

    /// Why a client whose channel closed (or went silent after EOF) ended: its goodbye, if any.
    fn ending(&self, id: u64) -> DisconnectReason {
        match self.clients.get(&id).and_then(|c| c.goodbye) {
            Some(GoodbyeReason::Finalize) => DisconnectReason::Finalize,
            Some(GoodbyeReason::Exit) => DisconnectReason::Exit,
            None => DisconnectReason::Eof,
        }
    }

    fn eof(&mut self, key: u64) {
        if let Some(client) = self
            .by_key
            .get(&key)
            .and_then(|id| self.clients.get_mut(id))
        {
            client.eof_at.get_or_insert_with(Instant::now);
        }
    }

    fn expire_eofs(&mut self) {
        let expired: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.ended && c.eof_at.is_some_and(|at| at.elapsed() > EOF_GRACE))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.end(id, self.ending(id));
        }
    }

    fn finish(mut self) {
        let open: Vec<u64> = self.clients.keys().copied().collect();
        for id in open {
            self.end(id, DisconnectReason::RecorderShutdown);
        }
        self.emit(Event::Shutdown);
    }
}
