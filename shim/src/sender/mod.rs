//! Moving records from the queue to the recorder: the background sender thread, and the same work
//! done from a calling thread when the host forbids threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`)
//! or before the thread exists.
//!
//! Bounds (documented in the README): `C_Finalize` waits at most `finalize_wait` (default 1 s) for
//! queued records to be sent; a process exiting without `C_Finalize` waits at most `exit_wait`
//! (default 250 ms) in its `atexit` handler. A send waits at most [`THREAD_PATIENCE`] for room in
//! the socket buffer, so a stalled recorder costs dropped (counted) records, never a hung host.
//!
//! The sender sits below the client: what it needs from it is the [`Source`] trait, which
//! `client::Client` implements.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use p11trace_record::wire::{
    self, Batch, CallRecord, GoodbyeReason, Hello, Message, PreviousConnection, Redaction,
};

use crate::connection::{ConnectError, Connection};
use crate::diag::{Problem, report};
use crate::identity::Identity;

/// How long the sender thread waits for room in the socket buffer before dropping a batch.
pub const THREAD_PATIENCE: Duration = Duration::from_millis(500);
/// Longest sleep of an idle sender.
const MAX_IDLE: Duration = Duration::from_millis(50);

/// Descriptors of the live connection, closed by the client's fork child handler.
pub static CONNECTION_FDS: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

/// What the sender needs from the client whose records it delivers (one client per process
/// generation; see `client.rs`).
pub trait Source: Sync + 'static {
    fn identity(&self) -> &Identity;
    /// The real module's path as shown, for the hello.
    fn module_path(&self) -> String;
    fn socket(&self) -> &Path;
    fn redaction(&self) -> Redaction;
    fn flush(&self) -> &Flush;
    /// The next `seq` to be handed out: calls made so far.
    fn seq_high(&self) -> u64;
    fn dropped(&self) -> u64;
    fn count_dropped(&self, calls: u64);
    fn pop(&self) -> Option<CallRecord>;
    fn queue_len(&self) -> usize;
    /// (number of changes, current provider string).
    fn provider(&self) -> (u64, Option<String>);
    /// Notes whether a recorder connection is up (audit mode admits calls only while it is).
    fn set_connected(&self, connected: bool);
    fn sender_running(&self) -> bool;
    fn mark_sender_failed(&self);
    fn refresh_clock_offset(&self);
}

/// What a flush must achieve besides sending what is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushRequest {
    Goodbye(GoodbyeReason),
}

/// Shared between calling threads and the sender.
#[derive(Default)]
pub struct Flush {
    requests: Mutex<Requests>,
    done: Condvar,
    sending: Mutex<SenderState>,
    thread: OnceLock<Thread>,
}

#[derive(Default)]
struct Requests {
    asked: u64,
    completed: u64,
    goodbye: Option<GoodbyeReason>,
}

impl Flush {
    /// Wakes the sender thread, if there is one.
    pub fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// Sends everything queued and says goodbye, waiting at most `wait`.
    pub fn request<C: Source>(&self, client: &'static C, request: FlushRequest, wait: Duration) {
        let FlushRequest::Goodbye(reason) = request;
        if !client.sender_running() {
            let deadline = Instant::now() + wait;
            let mut state = self.sending.lock().unwrap_or_else(|p| p.into_inner());
            state.pump(client, wait);
            if Instant::now() < deadline {
                state.goodbye(client, reason);
            }
            return;
        }
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.asked += 1;
        requests.goodbye = Some(reason);
        let target = requests.asked;
        self.wake();
        let deadline = Instant::now() + wait;
        while requests.completed < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            requests = self
                .done
                .wait_timeout(requests, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The sending half: connection, reconnection backoff and buffers.
pub struct SenderState {
    connection: Option<Connection>,
    connections: u32,
    retry_at: Option<Instant>,
    backoff: Duration,
    batch: Vec<CallRecord>,
    frame: Vec<u8>,
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
            connections: 0,
            retry_at: None,
            backoff: INITIAL_BACKOFF,
            batch: Vec::new(),
            frame: Vec::new(),
            provider_sent: 0,
            sent: 0,
            previous: None,
        }
    }
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Rough encoded size of a record, to cut batches under [`wire::TARGET_BATCH_BYTES`].
fn estimated_size(record: &CallRecord) -> usize {
    let attrs = record.attrs.as_ref().map_or(0, |attrs| attrs.len() * 64);
    let objects = record
        .out_objects
        .as_ref()
        .map_or(0, |objects| objects.len() * 8);
    let params = record.mech_params.as_ref().map_or(0, String::len);
    180 + attrs + objects + params
}

impl SenderState {
    fn connect<C: Source>(&mut self, client: &C) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let identity = client.identity();
        let hello = Hello {
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
        };
        match Connection::open(client.socket(), hello) {
            Ok(connection) => {
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
                match error {
                    ConnectError::Absent => {}
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
        }
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
        client.set_connected(false);
    }

    /// Sends one message; on failure other than a full buffer the connection is dropped.
    fn send<C: Source>(&mut self, client: &C, message: &Message, patience: Duration) -> bool {
        let Some(connection) = &self.connection else {
            return false;
        };
        if wire::frame(message, &mut self.frame).is_err() {
            return false;
        }
        match connection.send(&self.frame, patience) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => {
                self.disconnect(client);
                false
            }
        }
    }

    /// Moves every queued record towards the recorder. Records that cannot be delivered (no
    /// recorder, send failed) are counted as dropped. Returns how many records were taken.
    pub fn pump<C: Source>(&mut self, client: &C, patience: Duration) -> usize {
        if self.connection.is_none() && client.queue_len() > 0 {
            self.connect(client);
        }
        self.send_provider(client, patience);
        let mut moved = 0;
        loop {
            self.batch.clear();
            let mut bytes = 0;
            while bytes < wire::TARGET_BATCH_BYTES {
                let Some(record) = client.pop() else { break };
                bytes += estimated_size(&record);
                self.batch.push(record);
            }
            if self.batch.is_empty() {
                return moved;
            }
            let count = self.batch.len();
            moved += count;
            if self.connection.is_none() {
                client.count_dropped(count as u64);
                continue;
            }
            if client.redaction() == Redaction::Labels
                && let Some(connection) = &self.connection
            {
                let key = connection.label_key;
                self.batch
                    .iter_mut()
                    .for_each(|record| crate::redact::hash_labels(record, &key));
            }
            let message = Message::Batch(Batch {
                records: std::mem::take(&mut self.batch),
                seq_high: client.seq_high(),
                dropped: client.dropped(),
                sent: self.sent,
            });
            if self.send(client, &message, patience) {
                self.sent += count as u64;
            } else {
                client.count_dropped(count as u64);
            }
            if let Message::Batch(batch) = message {
                self.batch = batch.records;
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

    /// Says goodbye (with the final counters) and closes the connection.
    fn goodbye<C: Source>(&mut self, client: &C, reason: GoodbyeReason) {
        if self.connection.is_some() {
            let message = Message::Goodbye {
                reason,
                seq_high: client.seq_high(),
                dropped: client.dropped(),
                sent: self.sent,
            };
            self.send(client, &message, THREAD_PATIENCE);
            self.disconnect(client);
            self.retry_at = None;
        }
    }
}

/// Sends from the calling thread without waiting for room (no sender thread yet, or none allowed).
pub fn pump_inline<C: Source>(client: &'static C) {
    if let Ok(mut state) = client.flush().sending.try_lock() {
        state.pump(client, Duration::ZERO);
    }
}

/// Audit mode: connect from the calling thread before the first call is admitted.
pub fn connect_now<C: Source>(client: &'static C) {
    let mut state = client
        .flush()
        .sending
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    state.connect(client);
}

/// Starts the sender thread with every signal blocked (host signals must never land on it;
/// SIGPIPE in particular).
pub fn spawn<C: Source>(client: &'static C) {
    // SAFETY: sigset and pthread_sigmask on this thread's own mask, restored right after spawn.
    let spawned = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let spawned = std::thread::Builder::new()
            .name("p11trace-send".into())
            .spawn(move || run(client));
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        spawned
    };
    match spawned {
        Ok(handle) => {
            let _ = client.flush().thread.set(handle.thread().clone());
        }
        Err(e) => {
            client.mark_sender_failed();
            report(
                Problem::Thread,
                format_args!("cannot start the sender thread ({e}); sending from calling threads"),
            );
        }
    }
}

fn run<C: Source>(client: &'static C) {
    let flush = client.flush();
    let mut idle = Duration::from_millis(1);
    loop {
        client.refresh_clock_offset();
        let asked = flush
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .asked;
        let moved = {
            let mut state = flush.sending.lock().unwrap_or_else(|p| p.into_inner());
            let moved = state.pump(client, THREAD_PATIENCE);
            let mut requests = flush.requests.lock().unwrap_or_else(|p| p.into_inner());
            if requests.completed < asked {
                if let Some(reason) = requests.goodbye.take() {
                    state.goodbye(client, reason);
                }
                requests.completed = asked;
                flush.done.notify_all();
            }
            moved
        };
        if moved > 0 {
            idle = Duration::from_millis(1);
            continue;
        }
        std::thread::park_timeout(idle);
        idle = (idle * 2).min(MAX_IDLE);
    }
}
