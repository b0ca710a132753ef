//! The traced process as the recorder sees it: identity, counters and the record queue.
//!
//! One [`Client`] exists per process *generation*: a `pthread_atfork` child handler bumps the
//! generation, and the child's next call builds a fresh client (new `client_id`, `seq` from 0, an
//! empty queue, its own sender) instead of reusing the parent's, whose queued records would
//! otherwise be sent twice. Checking the generation is one atomic load: no `getpid()` syscall on
//! the hot path.
//!
//! The client sits below `trace` and above `sender`. What it needs from the layers above it (the
//! shim's internal `C_GetInfo`, the real module's path) is handed down as [`Upcalls`], which
//! `entry` registers once the real module is loaded.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;
use p11trace_ffi::*;
use p11trace_record::wire::{CallRecord, GoodbyeReason, InterfaceVersion, Redaction};

use crate::clock;
use crate::config::{self, Config, Mode};
use crate::identity::Identity;
use crate::ops::Ops;
use crate::queued::{self, Pool, Rec};
use crate::sender::{self, CONNECTION_FDS, Flush, FlushRequest, Source};

/// What the client needs from the layers above it, handed down instead of imported.
pub struct Upcalls {
    /// The shim's own `C_GetInfo` (recorded as internal) through the table of `interface` (`None`:
    /// the 2.x table): the provider string.
    pub provider: fn(Option<InterfaceVersion>) -> Option<String>,
    /// The real module's path as shown, for the hello.
    pub module_path: fn() -> String,
}

/// Lock-free (a forked child may read it at any time); null until `entry` registers.
static UPCALLS: AtomicPtr<Upcalls> = AtomicPtr::new(std::ptr::null_mut());

/// Hands the client its [`Upcalls`] (`entry` does, once the real module is loaded).
pub fn register(upcalls: &'static Upcalls) {
    UPCALLS.store(std::ptr::from_ref(upcalls).cast_mut(), Ordering::Release);
}

fn upcalls() -> Option<&'static Upcalls> {
    // SAFETY: UPCALLS only ever holds null or a `&'static Upcalls`.
    unsafe { UPCALLS.load(Ordering::Acquire).as_ref() }
}

static GENERATION: AtomicU64 = AtomicU64::new(0);
static CURRENT: AtomicPtr<Client> = AtomicPtr::new(std::ptr::null_mut());
/// Guards building a client; a spin flag (not a mutex) so the fork child handler can reset it.
static BUILDING: AtomicBool = AtomicBool::new(false);
/// The generation whose client could not be built (a panic while building it): its calls go
/// through unrecorded instead of trying again on every call.
static BROKEN: AtomicU64 = AtomicU64::new(u64::MAX);

pub struct Client {
    generation: u64,
    pub config: &'static Config,
    identity: Identity,
    seq: AtomicU64,
    dropped: AtomicU64,
    queue: ArrayQueue<Rec>,
    /// Boxes for the records' variable-size parts, given back by the sender.
    pool: Pool,
    /// Audit mode: calls admitted but not yet queued.
    in_flight: AtomicUsize,
    /// Set by the sender: is a recorder connection up?
    connected: AtomicBool,
    /// Set by the sender: records taken from the queue, not yet handed to the socket.
    unsent: AtomicUsize,
    /// Set by the sender (audit mode): a batch waits for a stalled recorder.
    stalled: AtomicBool,
    clock_offset: AtomicI64,
    ops: Ops,
    /// The provider identity. Lock-free on purpose: a forked child reads its parent's copy, and a
    /// mutex the parent's sender thread held at fork time would never be released in the child.
    /// Replaced values are leaked (one per `C_Initialize`): a reader may still hold them.
    provider: AtomicPtr<String>,
    provider_changes: AtomicU64,
    sender_started: AtomicBool,
    flush: Flush,
}

/// Whether calls that cannot be recorded must be refused rather than run (audit mode).
pub fn refuses_unrecorded() -> bool {
    config::get().mode == Mode::Audit
}

/// The client of the current generation, or `None` when recording is off (or its client could
/// not be built).
#[inline(always)]
pub fn current() -> Option<&'static Client> {
    let config = config::get();
    if config.mode == Mode::Off {
        return None;
    }
    let generation = GENERATION.load(Ordering::Acquire);
    let client = CURRENT.load(Ordering::Acquire);
    // SAFETY: CURRENT only ever holds leaked (never freed) clients.
    if let Some(client) = unsafe { client.as_ref() }
        && client.generation == generation
    {
        return Some(client);
    }
    if BROKEN.load(Ordering::Acquire) == generation {
        return None;
    }
    build(config, generation)
}

/// Releases [`BUILDING`] when dropped, on return or while unwinding from a panic.
struct Built;

impl Drop for Built {
    fn drop(&mut self) {
        BUILDING.store(false, Ordering::Release);
    }
}

/// Builds the client of `generation` (one thread at a time). A panic while building is contained:
/// the flag is released, the generation marked broken (its calls go through unrecorded; refused
/// in audit mode), and one line says so.
#[cold]
fn build(config: &'static Config, generation: u64) -> Option<&'static Client> {
    while BUILDING
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
    let _built = Built;
    if BROKEN.load(Ordering::Acquire) == generation {
        return None;
    }
    match std::panic::catch_unwind(|| build_locked(config, generation)) {
        Ok(client) => Some(client),
        Err(_) => {
            BROKEN.store(generation, Ordering::Release);
            crate::diag::report(
                crate::diag::Problem::Panic,
                format_args!(
                    "internal error while starting to record; this process's calls go through unrecorded"
                ),
            );
            None
        }
    }
}

/// [`build`] once [`BUILDING`] is held.
fn build_locked(config: &'static Config, generation: u64) -> &'static Client {
    if config.test_panic_building {
        panic!("injected by P11TRACE_TEST_PANIC=client");
    }
    // SAFETY: as in `current`.
    let existing = unsafe { CURRENT.load(Ordering::Acquire).as_ref() };
    match existing {
        Some(client) if client.generation == generation => client,
        _ => {
            if generation == 0 {
                register_process_hooks();
            }
            if generation == 0 {
                crate::connection::warm_up_ipc();
            }
            let client: &'static Client = Box::leak(Box::new(Client::new(config, generation)));
            // A forked child talks to the same module as its parent: it inherits the provider
            // (its own C_Initialize may well answer CKR_CRYPTOKI_ALREADY_INITIALIZED).
            if let Some(parent) = existing
                && let (_, Some(provider)) = parent.provider()
            {
                client.set_provider(provider);
            }
            CURRENT.store(std::ptr::from_ref(client).cast_mut(), Ordering::Release);
            if config.mode == Mode::Audit {
                // Audit mode must know the recorder is reachable before admitting the first call.
                sender::connect_now(client);
            }
            client
        }
    }
}

fn register_process_hooks() {
    // SAFETY: registers plain extern "C" functions of this never-unloaded library (-z nodelete).
    unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_in_child));
        libc::atexit(at_exit);
    }
}

/// Runs in the child right after `fork()`, before any of its code: only atomics and `close`.
extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    BUILDING.store(false, Ordering::Release);
    for fd in &CONNECTION_FDS {
        let fd = fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: the parent's connection descriptors, inherited; the child never uses them.
            unsafe { libc::close(fd) };
        }
    }
    crate::diag::reset_after_fork();
}

/// A process exiting without `C_Finalize` delivers what it can, within `exit_wait`.
extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: as in `current`.
        let Some(client) = (unsafe { CURRENT.load(Ordering::Acquire).as_ref() }) else {
            return;
        };
        if client.generation == GENERATION.load(Ordering::Acquire) {
            client.flush.request(
                client,
                FlushRequest::Goodbye(GoodbyeReason::Exit),
                client.config.exit_wait,
            );
        }
    });
}

impl Client {
    fn new(config: &'static Config, generation: u64) -> Client {
        let identity = Identity::of_this_process();
        Client {
            generation,
            config,
            identity,
            seq: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queue: ArrayQueue::new(config.queue_capacity),
            pool: Pool::new(config.queue_capacity.clamp(1, queued::POOL_CAPACITY)),
            in_flight: AtomicUsize::new(0),
            connected: AtomicBool::new(false),
            unsent: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
            clock_offset: AtomicI64::new(clock::realtime_ns() - clock::monotonic_ns()),
            ops: Ops::default(),
            provider: AtomicPtr::new(std::ptr::null_mut()),
            provider_changes: AtomicU64::new(0),
            sender_started: AtomicBool::new(false),
            flush: Flush::default(),
        }
    }

    #[inline(always)]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    #[inline(always)]
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Wall clock = monotonic + offset; the sender refreshes the offset, so the hot path reads
    /// one clock instead of two.
    #[inline(always)]
    pub fn clock_offset(&self) -> i64 {
        self.clock_offset.load(Ordering::Relaxed)
    }

    #[inline(always)]
    pub fn pool(&'static self) -> &'static Pool {
        &self.pool
    }

    pub fn ops(&self) -> &Ops {
        &self.ops
    }

    /// Whether a call may run now. Only audit mode ever says no: while no recorder is connected,
    /// while a batch waits for a stalled recorder, or while the undelivered backlog (queued, being
    /// recorded, taken by the sender but unsent) would pass the queue's capacity. Without a sender
    /// thread, a refusal first gives the calling thread one non-blocking pump.
    #[inline(always)]
    pub fn admit(&'static self) -> bool {
        if self.config.mode != Mode::Audit {
            return true;
        }
        if self.try_admit() {
            return true;
        }
        if self.sender_started.load(Ordering::Acquire) {
            return false;
        }
        sender::pump_inline(self);
        self.try_admit()
    }

    fn try_admit(&self) -> bool {
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let backlog = self
            .queue
            .len()
            .saturating_add(in_flight)
            .saturating_add(self.unsent.load(Ordering::Acquire));
        if self.connected.load(Ordering::Acquire)
            && !self.stalled.load(Ordering::Acquire)
            && backlog < self.queue.capacity()
        {
            return true;
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        false
    }

    fn leave_flight(&self) {
        if self.config.mode == Mode::Audit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Queues a finished record; when the queue is full the record is dropped and counted.
    #[inline(always)]
    pub fn submit(&'static self, record: Rec) {
        if self.queue.push(record).is_err() {
            self.count_dropped(1);
        }
        self.leave_flight();
        if self.queue.len() * 4 >= self.queue.capacity() {
            self.wake_sender();
        }
        if !self.sender_started.load(Ordering::Relaxed)
            && self.queue.len() * 2 >= self.queue.capacity()
        {
            // No sender yet (before C_Initialize, or a host that forbids threads): keep the queue
            // from overflowing by sending from this thread, without waiting.
            sender::pump_inline(self);
        }
    }

    /// A call whose record could not be built (internal error): its seq is counted as dropped.
    pub fn drop_admitted(&self) {
        self.count_dropped(1);
        self.leave_flight();
    }

    fn wake_sender(&self) {
        self.flush.wake();
    }

    fn set_provider(&self, provider: String) {
        self.provider
            .store(Box::into_raw(Box::new(provider)), Ordering::Release);
        self.provider_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts the sender thread (once), unless the host forbids threads.
    pub fn start_sender(&'static self, init_flags: CK_FLAGS) {
        let threads_allowed = init_flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS == 0;
        if threads_allowed && !self.sender_started.swap(true, Ordering::AcqRel) {
            sender::spawn(self);
        }
    }

    /// After the application's successful `C_Initialize`: learn the provider with one internal
    /// `C_GetInfo` through the same table, and start the sender (unless the host forbids
    /// threads, in which case calling threads send, without waiting).
    pub fn on_initialized(
        &'static self,
        interface: Option<InterfaceVersion>,
        init_flags: CK_FLAGS,
    ) {
        if let Some(upcalls) = upcalls()
            && let Some(provider) = (upcalls.provider)(interface)
        {
            self.set_provider(provider);
        }
        self.start_sender(init_flags);
    }

    /// After `C_Finalize`: deliver what is queued (bounded wait) and say goodbye.
    pub fn on_finalized(&'static self) {
        self.flush.request(
            self,
            FlushRequest::Goodbye(GoodbyeReason::Finalize),
            self.config.finalize_wait,
        );
    }
}

impl Source for Client {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn module_path(&self) -> String {
        upcalls()
            .map(|upcalls| (upcalls.module_path)())
            .unwrap_or_default()
    }

    fn socket(&self) -> &Path {
        &self.config.socket
    }

    fn redaction(&self) -> Redaction {
        self.config.redaction
    }

    fn flush(&self) -> &Flush {
        &self.flush
    }

    fn seq_high(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    fn count_dropped(&self, calls: u64) {
        self.dropped.fetch_add(calls, Ordering::AcqRel);
    }

    fn pop(&self) -> Option<CallRecord> {
        self.queue.pop().map(|rec| rec.into_record(&self.pool))
    }

    fn queue_len(&self) -> usize {
        self.queue.len()
    }

    fn provider(&self) -> (u64, Option<String>) {
        let changes = self.provider_changes.load(Ordering::Acquire);
        // SAFETY: non-null pointers come from Box::into_raw in set_provider and are never freed.
        let provider = unsafe { self.provider.load(Ordering::Acquire).as_ref() }.cloned();
        (changes, provider)
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
    }

    fn keeps_admitted(&self) -> bool {
        self.config.mode == Mode::Audit
    }

    fn set_unsent(&self, records: usize, stalled: bool) {
        self.unsent.store(records, Ordering::Release);
        self.stalled.store(stalled, Ordering::Release);
    }

    fn sender_running(&self) -> bool {
        self.sender_started.load(Ordering::Acquire)
    }

    fn mark_sender_failed(&self) {
        self.sender_started.store(false, Ordering::Release);
    }

    fn sender_must_panic(&self) -> bool {
        self.config.test_panic_sender
    }

    fn refresh_clock_offset(&self) {
        self.clock_offset.store(
            clock::realtime_ns() - clock::monotonic_ns(),
            Ordering::Relaxed,
        );
    }
}
