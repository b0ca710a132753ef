//! Moving records from the queue to the recorder: the background sender thread, and the same work
//! done from a calling thread when the host forbids threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`)
//! or before the thread exists.
//!
//! Bounds (documented in the README): `C_Finalize` waits at most `finalize_wait` (default 1 s) in
//! all for queued records to be sent, with or without a sender thread; a process exiting without
//! `C_Finalize` waits at most `exit_wait` (default 250 ms) in its `atexit` handler. The sender
//! thread's sends wait at most [`THREAD_PATIENCE`] each for room in the socket buffer; calling
//! threads never wait (handshake included) except within those bounds. So a stalled recorder costs
//! dropped (counted) records, never a hung host; in audit mode it costs refused calls instead (a
//! batch that found no room is held and retried, never dropped, and calls are refused meanwhile).
//!
//! The sender sits below the client: what it needs from it is the [`Source`] trait, which
//! `client::Client` implements.

use std::path::Path;
use std::sync::atomic::AtomicI32;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use p11trace_record::wire::{CallRecord, GoodbyeReason, Redaction};

use crate::connection::HANDSHAKE_TIMEOUT;
use crate::diag::{Problem, report};
use crate::identity::Identity;

mod state;

pub use state::{SenderState, Wait};

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
    /// Audit mode: batches that found no room are held and retried rather than dropped.
    fn keeps_admitted(&self) -> bool;
    /// Records taken from the queue but not yet handed to the socket (audit admission counts
    /// them), and whether they wait for a stalled recorder (audit mode refuses calls meanwhile).
    fn set_unsent(&self, records: usize, stalled: bool);
    fn sender_running(&self) -> bool;
    fn mark_sender_failed(&self);
    fn refresh_clock_offset(&self);
    /// Test-only (`P11TRACE_TEST_PANIC=sender`): the sender thread panics on its first round.
    fn sender_must_panic(&self) -> bool {
        false
    }
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
            // From this thread: one deadline for connecting, every batch and the goodbye.
            let deadline = Instant::now() + wait;
            // Another calling thread may be sending (audit mode's first connection): wait for it
            // only until the deadline.
            let Some(mut state) = lock_until(&self.sending, deadline) else {
                return;
            };
            let wait = Wait::Until(deadline);
            state.pump(client, wait);
            state.goodbye(client, reason, wait);
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

/// Locks `mutex`, waiting at most until `deadline`.
fn lock_until<T>(mutex: &Mutex<T>, deadline: Instant) -> Option<MutexGuard<'_, T>> {
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() >= deadline => return None,
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Sends from the calling thread without waiting for room or for a welcome (no sender thread
/// yet, or none allowed).
pub fn pump_inline<C: Source>(client: &'static C) {
    if let Ok(mut state) = client.flush().sending.try_lock() {
        state.pump(client, Wait::Each(Duration::ZERO));
    }
}

/// Audit mode: connect from the calling thread before the first call is admitted (waiting at most
/// the handshake's own timeout).
pub fn connect_now<C: Source>(client: &'static C) {
    let mut state = client
        .flush()
        .sending
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    state.connect_until(client, Instant::now() + HANDSHAKE_TIMEOUT);
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
            .spawn(move || {
                // A panic here must not leave the process with a dead sender it still waits on:
                // the calling threads take over (as in a host without threads), and anyone
                // waiting on a flush is woken.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(client)));
                if ran.is_err() {
                    client.mark_sender_failed();
                    client.flush().done.notify_all();
                    report(
                        Problem::Panic,
                        format_args!(
                            "internal error in the sender thread; sending from calling threads"
                        ),
                    );
                }
            });
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
    if client.sender_must_panic() {
        panic!("injected by P11TRACE_TEST_PANIC=sender");
    }
    loop {
        client.refresh_clock_offset();
        let asked = flush
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .asked;
        let moved = {
            let mut state = flush.sending.lock().unwrap_or_else(|p| p.into_inner());
            let moved = state.pump(client, Wait::Each(THREAD_PATIENCE));
            let mut requests = flush.requests.lock().unwrap_or_else(|p| p.into_inner());
            if requests.completed < asked {
                if let Some(reason) = requests.goodbye.take() {
                    state.goodbye(client, reason, Wait::Each(THREAD_PATIENCE));
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
