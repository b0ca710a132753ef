//! The sending half's state: the connection and its handshake, reconnection backoff, batches cut
//! to one fragment, and (audit mode) the batch held for a stalled recorder.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use p11trace_record::wire::{
    self, Batch, CallRecord, GoodbyeReason, Hello, Message, PreviousConnection, Redaction,
};

use super::{CONNECTION_FDS, Source};
use crate::batch::Cutter;
use crate::connection::{ConnectError, Connection, Handshake};
use crate::diag::{Problem, report};

/// How long sends may wait for room: each for a while (the sender thread; zero for a calling
/// thread's opportunistic pump), or all of them together until a deadline (a flush from a calling
/// thread: `finalize_wait` and `exit_wait` bound the whole of it).
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    Each(Duration),
    Until(Instant),
}

impl Wait {
    fn patience(self) -> Duration {
        match self {
            Wait::Each(patience) => patience,
            Wait::Until(deadline) => deadline.saturating_duration_since(Instant::now()),
        }
    }
}

/// The sending half: connection, reconnection backoff and buffers.
pub struct SenderState {
    connection: Option<Connection>,
    /// A connection being made (its welcome not yet read).
    handshake: Option<Handshake>,
    connections: u32,
    retry_at: Option<Instant>,
    backoff: Duration,
    batch: Vec<CallRecord>,
    cutter: Cutter,
    frame: Vec<u8>,
    /// Audit mode: records of the batch in `frame`, which found no room and waits to be sent.
    held: usize,
    provider_sent: u64,
    /// Records handed to the current connection's socket.
    sent: u64,
    /// The last connection's number and `sent`, for the next hello.
    previous: Option<PreviousConnection>,
}

impl Default for SenderState {
    fn default() -> Self {
        SenderState {
            connection: None,
            handshake: None,
            connections: 0,
            retry_at: None,
            backoff: INITIAL_BACKOFF,
            batch: Vec::new(),
            cutter: Cutter::default(),
            frame: Vec::new(),
            held: 0,
            provider_sent: 0,
            sent: 0,
            previous: None,
        }
    }
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl SenderState {
    fn hello<C: Source>(&self, client: &C) -> Hello {
        let identity = client.identity();
        Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            token: [0; 16],
            client_id: identity.client_id.clone(),
            connection: self.connections,
            pid: identity.pid,
            ppid: identity.ppid,
            host: identity.host.clone(),
            process: identity.process.clone(),
            exe: identity.exe.clone(),
            module: client.module_path(),
            shim_version: env!("CARGO_PKG_VERSION").to_owned(),
            redaction: client.redaction(),
            seq_start: client.seq_high(),
            dropped: client.dropped(),
            previous: self.previous,
        }
    }

    /// Starts a handshake (unless backing off) or takes it a step further, waiting at most
    /// `wait` for the recorder's welcome.
    fn connect<C: Source>(&mut self, client: &C, wait: Duration) {
        if self.handshake.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return;
            }
            match Handshake::start(client.socket()) {
                Ok(handshake) => {
                    // Closed in forked children like a live connection's.
                    CONNECTION_FDS[0].store(handshake.descriptor(), Ordering::Release);
                    self.handshake = Some(handshake);
                }
                Err(error) => return self.failed(error),
            }
        }
        let Some(handshake) = self.handshake.as_mut() else {
            return;
        };
        if !handshake.bootstrapped() {
            let welcome = match handshake.advance(client.socket(), wait) {
                Ok(None) => return,
                Ok(Some(welcome)) => welcome,
                Err(error) => {
                    self.abandon_handshake();
                    if matches!(error, ConnectError::Stale) {
                        // A fresh handshake at once (this one cannot be stale again).
                        return self.connect(client, wait);
                    }
                    return self.failed(error);
                }
            };
            let hello = self.hello(client);
            let Some(handshake) = self.handshake.as_mut() else {
                return;
            };
            if let Err(error) = handshake.bootstrap(client.socket(), welcome, hello) {
                self.abandon_handshake();
                return self.failed(error);
            }
            if let Some(fd) = handshake.data_descriptor() {
                CONNECTION_FDS[1].store(fd, Ordering::Release);
            }
        }
        let Some(handshake) = self.handshake.as_mut() else {
            return;
        };
        match handshake.registered(client.socket(), wait) {
            Ok(false) => {}
            Ok(true) => {
                let Some(connection) = self.handshake.take().and_then(Handshake::into_connection)
                else {
                    return;
                };
                for (slot, fd) in CONNECTION_FDS.iter().zip(connection.descriptors()) {
                    slot.store(fd, Ordering::Release);
                }
                self.connection = Some(connection);
                self.connections += 1;
                self.retry_at = None;
                self.backoff = INITIAL_BACKOFF;
                self.provider_sent = 0;
                self.sent = 0;
                client.set_connected(true);
            }
            Err(error) => {
                self.abandon_handshake();
                self.failed(error)
            }
        }
    }

    /// Drops the handshake under way; its descriptors are no longer the fork handler's to close.
    fn abandon_handshake(&mut self) {
        for slot in &CONNECTION_FDS {
            slot.store(-1, Ordering::Release);
        }
        self.handshake = None;
    }

    /// Connects, waiting for the welcome until `deadline` (audit mode's first connection).
    pub(super) fn connect_until<C: Source>(&mut self, client: &C, deadline: Instant) {
        loop {
            self.connect(client, deadline.saturating_duration_since(Instant::now()));
            if self.connection.is_some() || self.handshake.is_none() || Instant::now() >= deadline {
                return;
            }
        }
    }

    fn failed(&mut self, error: ConnectError) {
        match error {
            ConnectError::Absent | ConnectError::Stale => {}
            ConnectError::Unsafe(message) => {
                report(Problem::SocketFolder, format_args!("{message}"))
            }
            ConnectError::Handshake(message) => {
                report(Problem::Handshake, format_args!("{message}"))
            }
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn disconnect<C: Source>(&mut self, client: &C) {
        for slot in &CONNECTION_FDS {
            slot.store(-1, Ordering::Release);
        }
        if self.connection.take().is_some() {
            self.previous = Some(PreviousConnection {
                connection: self.connections - 1,
                sent: self.sent,
            });
        }
        if self.held > 0 {
            // Its records were taken but never handed to a socket: counted, so the next hello
            // reports them.
            client.count_dropped(self.held as u64);
            self.held = 0;
        }
        client.set_unsent(0, false);
        client.set_connected(false);
    }

    /// Sends the framed message in `frame`. `Err(true)`: no room (the connection is kept);
    /// `Err(false)`: no connection, or it failed and was dropped.
    fn send_frame<C: Source>(&mut self, client: &C, patience: Duration) -> Result<(), bool> {
        let Some(connection) = &self.connection else {
            return Err(false);
        };
        match connection.send(&self.frame, patience) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(true),
            Err(_) => {
                self.disconnect(client);
                Err(false)
            }
        }
    }

    /// Sends one message; on failure other than a full buffer the connection is dropped.
    fn send<C: Source>(&mut self, client: &C, message: &Message, patience: Duration) -> bool {
        if self.connection.is_none() || wire::frame(message, &mut self.frame).is_err() {
            return false;
        }
        self.send_frame(client, patience).is_ok()
    }

    /// Audit mode: retries the held batch. True when nothing is held any more.
    fn send_held<C: Source>(&mut self, client: &C, wait: Wait) -> bool {
        if self.held == 0 {
            return true;
        }
        match self.send_frame(client, wait.patience()) {
            Ok(()) => {
                self.sent += self.held as u64;
                self.held = 0;
                client.set_unsent(0, false);
                true
            }
            // Still no room: calls stay refused. A failed connection counted them as dropped.
            Err(still_connected) => !still_connected,
        }
    }

    /// Every queued record (and the one carried over), counted as dropped.
    fn drop_queued<C: Source>(&mut self, client: &C) -> usize {
        let mut dropped = usize::from(self.cutter.take_carry().is_some());
        while client.pop().is_some() {
            dropped += 1;
        }
        client.count_dropped(dropped as u64);
        dropped
    }

    /// Moves every queued record towards the recorder. Records that cannot be delivered (no
    /// recorder, send failed; in record mode also no room in time) are counted as dropped; while a
    /// handshake is under way they wait in the queue. Returns how many records were taken.
    pub fn pump<C: Source>(&mut self, client: &C, wait: Wait) -> usize {
        if self.connection.is_none()
            && (client.queue_len() > 0 || self.cutter.carrying() || self.handshake.is_some())
        {
            self.connect(client, wait.patience());
        }
        if self.connection.is_none() {
            return if self.handshake.is_some() {
                0
            } else {
                self.drop_queued(client)
            };
        }
        if !self.send_held(client, wait) {
            return 0;
        }
        self.send_provider(client, wait.patience());
        let mut moved = 0;
        loop {
            let key = match (&self.connection, client.redaction()) {
                (Some(connection), Redaction::Labels) => Some(connection.label_key),
                _ => None,
            };
            let unfit = self.cutter.fill(
                &mut self.batch,
                || client.pop(),
                |record| {
                    if let Some(key) = &key {
                        crate::redact::hash_labels(record, key);
                    }
                },
            );
            if unfit > 0 {
                client.count_dropped(unfit);
            }
            if self.batch.is_empty() {
                return moved + unfit as usize;
            }
            let count = self.batch.len();
            moved += count;
            if self.connection.is_none() {
                client.count_dropped(count as u64);
                continue;
            }
            client.set_unsent(count, false);
            let message = Message::Batch(Batch {
                records: std::mem::take(&mut self.batch),
                seq_high: client.seq_high(),
                dropped: client.dropped(),
                sent: self.sent,
            });
            let framed = wire::frame(&message, &mut self.frame).is_ok();
            if let Message::Batch(batch) = message {
                self.batch = batch.records;
            }
            match framed.then(|| self.send_frame(client, wait.patience())) {
                Some(Ok(())) => {
                    self.sent += count as u64;
                    client.set_unsent(0, false);
                }
                Some(Err(true)) if client.keeps_admitted() => {
                    self.held = count;
                    client.set_unsent(count, true);
                    return moved;
                }
                no_room => {
                    client.count_dropped(count as u64);
                    client.set_unsent(0, false);
                    // No room and no time to wait for it (a calling thread): every later batch
                    // would fare the same, so drop the rest without cutting it.
                    if no_room == Some(Err(true)) && wait.patience().is_zero() {
                        return moved + self.drop_queued(client);
                    }
                }
            }
        }
    }

    fn send_provider<C: Source>(&mut self, client: &C, patience: Duration) {
        let (changes, provider) = client.provider();
        if self.connection.is_some()
            && changes != self.provider_sent
            && let Some(provider) = provider
            && self.send(client, &Message::Provider(provider), patience)
        {
            self.provider_sent = changes;
        }
    }

    /// Says goodbye (with the final counters) and closes the connection. A batch still held
    /// (audit mode) must go first. What cannot go within `wait` for lack of room (the held batch,
    /// the goodbye) stays, with the connection, for the next flush: the one at exit.
    pub(super) fn goodbye<C: Source>(&mut self, client: &C, reason: GoodbyeReason, wait: Wait) {
        if self.connection.is_none() || !self.send_held(client, wait) {
            return;
        }
        let message = Message::Goodbye {
            reason,
            seq_high: client.seq_high(),
            dropped: client.dropped(),
            sent: self.sent,
        };
        if self.send(client, &message, wait.patience()) {
            self.disconnect(client);
            self.retry_at = None;
        }
    }
}
