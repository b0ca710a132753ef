//! Capture: one reader thread per client data channel ([`reader`]), and this control loop, which
//! registers the clients the acceptor hands over, passes on the end of their rendezvous streams,
//! and ends everyone at shutdown. A client that stalls in the middle of a message (stopped by a
//! signal or a debugger, or hostile) blocks only its own reader: the others keep arriving.
//!
//! Backpressure: sending an event blocks while the next actor's bounded channel is full; the
//! readers then stop reading, the clients' socket buffers fill, and each shim drops (and counts)
//! what it cannot send. Nothing the recorder has read is ever dropped.

mod reader;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use p11trace_dataset::DisconnectReason;

use crate::acceptor::{Control, Registration};
use crate::crash::Crash;
use crate::events::{Connection, Event, now_us};
use crate::stats::Stats;

/// Longest drain after a shutdown request (a client that never stops sending, or one stalled in
/// the middle of a message, cannot hold us).
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// How often the control loop looks at the clock when nothing arrives.
const TICK: Duration = Duration::from_millis(100);
/// How often it looks while a shutdown waits for the readers and handshakes to finish.
const SETTLE: Duration = Duration::from_millis(5);
/// Most clients connected at once: each has a reader thread (64 KiB of stack reserved, a few
/// pages used). A client beyond it is refused visibly: its data channel is closed, so its shim
/// sees the send fail and counts what it could not deliver.
pub const MAX_CLIENTS: usize = 4096;
const READER_STACK: usize = 64 * 1024;

pub struct Capture {
    pub control: Receiver<Control>,
    pub events: Sender<Event>,
    pub run_id: String,
    /// `--host`: the host column of every row, instead of the name each shim reports.
    pub host: Option<String>,
    pub stats: Arc<Stats>,
    pub once: bool,
    pub crash: Crash,
}

/// What every reader shares with the control loop.
struct Shared {
    events: Sender<Event>,
    stats: Arc<Stats>,
    /// A shutdown was asked for: readers drain their channel and end.
    stopping: AtomicBool,
    /// Connections not ended yet.
    live: AtomicUsize,
    crash: Crash,
}

impl Shared {
    fn emit(&self, event: Event) {
        self.stats
            .capture_queue
            .store(self.events.len() as u64, Ordering::Relaxed);
        // The next actor only goes away when the whole recorder is stopping.
        let _ = self.events.send(event);
    }
}

/// One connection, as its reader and the control loop both see it.
struct Link {
    key: u64,
    pid: i64,
    /// Ended (goodbye and close, the EOF grace, a protocol error, shutdown): nothing more is
    /// emitted for it. Held while emitting, so an end from the control loop and an event from the
    /// reader never interleave.
    ended: Mutex<bool>,
    /// The client's rendezvous stream reached end-of-file.
    eof: AtomicBool,
    /// The reader thread has returned.
    finished: AtomicBool,
}

impl Link {
    /// Emits `event` unless the connection has ended; `last` ends it. False when it had ended.
    fn emit(&self, shared: &Shared, event: Event, last: bool) -> bool {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if *ended {
            return false;
        }
        if last {
            *ended = true;
            shared.live.fetch_sub(1, Ordering::AcqRel);
            shared.stats.clients_active.fetch_sub(1, Ordering::Relaxed);
        }
        shared.emit(event);
        true
    }

    fn end(&self, shared: &Shared, reason: DisconnectReason) -> bool {
        let event = Event::Disconnected {
            key: self.key,
            reason,
            at_us: now_us(),
        };
        self.emit(shared, event, true)
    }
}

impl Capture {
    pub fn run(self) -> std::io::Result<()> {
        let shared = Arc::new(Shared {
            events: self.events,
            stats: self.stats,
            stopping: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            crash: self.crash,
        });
        let mut links: HashMap<u64, Arc<Link>> = HashMap::new();
        let mut ever_connected = false;
        let mut shutdown_at: Option<Instant> = None;
        loop {
            // While stopping, the loop looks again every few milliseconds, so it can end as soon
            // as nothing is left.
            let wait = if shutdown_at.is_some() { SETTLE } else { TICK };
            let received = self.control.recv_timeout(wait);
            let drained = received.is_err();
            match received {
                Ok(Control::Register(registration)) => {
                    if let Some(link) = register(
                        &shared,
                        *registration,
                        &self.run_id,
                        self.host.as_deref(),
                        links.len(),
                    ) {
                        ever_connected = true;
                        links.insert(link.key, link);
                    }
                }
                Ok(Control::Eof(key)) => {
                    if let Some(link) = links.get(&key) {
                        link.eof.store(true, Ordering::Release);
                    }
                }
                Ok(Control::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    shutdown_at.get_or_insert_with(Instant::now);
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            links.retain(|_, link| !link.finished.load(Ordering::Acquire));
            let live = shared.live.load(Ordering::Acquire);
            if self.once && ever_connected && live == 0 {
                shutdown_at.get_or_insert_with(Instant::now);
            }
            if let Some(at) = shutdown_at {
                shared.stopping.store(true, Ordering::Release);
                // Done when every client has ended and no handshake is left to register one.
                let settled =
                    drained && live == 0 && shared.stats.handshakes.load(Ordering::Acquire) == 0;
                if settled || at.elapsed() > SHUTDOWN_DRAIN {
                    break;
                }
            }
        }
        // Whoever is still reading (a client that never stops sending, or stalled in the middle
        // of a message) ends here; what its reader gets later is not emitted.
        for link in links.values() {
            link.end(&shared, DisconnectReason::RecorderShutdown);
        }
        shared.emit(Event::Shutdown);
        Ok(())
    }
}

/// Starts the reader of a client that passed the handshake; `None` if it is refused (too many
/// clients, or no thread for it), which drops its data channel: its shim sees its sends fail,
/// and its next connection's hello tells what it sent on this one (counted as lost).
fn register(
    shared: &Arc<Shared>,
    registration: Registration,
    run_id: &str,
    host: Option<&str>,
    connected: usize,
) -> Option<Arc<Link>> {
    let Registration {
        key,
        peer,
        hello,
        data,
    } = registration;
    if connected >= MAX_CLIENTS {
        refuse(
            shared,
            peer.pid,
            &format!("{MAX_CLIENTS} clients are connected"),
        );
        return None;
    }
    let connection = Connection {
        key,
        run_id: run_id.to_owned(),
        client_id: hello.client_id,
        connection: hello.connection,
        pid: peer.pid,
        uid: peer.uid,
        ppid: hello.ppid,
        host: host.map_or(hello.host, str::to_owned),
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
    let link = Arc::new(Link {
        key,
        pid: peer.pid,
        ended: Mutex::new(false),
        eof: AtomicBool::new(false),
        finished: AtomicBool::new(false),
    });
    let reader = reader::Reader {
        link: link.clone(),
        shared: shared.clone(),
        data,
        goodbye: None,
    };
    // Connected is emitted before the reader can emit anything of this connection, and counted
    // live before it can end.
    shared.live.fetch_add(1, Ordering::AcqRel);
    shared
        .stats
        .clients_connected
        .fetch_add(1, Ordering::Relaxed);
    shared.stats.clients_active.fetch_add(1, Ordering::Relaxed);
    shared.emit(Event::Connected(Box::new(connection)));
    let spawned = std::thread::Builder::new()
        .name(format!("client-{}", peer.pid))
        .stack_size(READER_STACK)
        .spawn(move || reader.run());
    match spawned {
        Ok(_) => Some(link),
        Err(error) => {
            refuse(shared, peer.pid, &format!("no reader thread: {error}"));
            link.end(shared, DisconnectReason::ProtocolError);
            None
        }
    }
}

fn refuse(shared: &Shared, pid: i64, why: &str) {
    shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
    eprintln!("p11trace-recorder: refused client pid {pid}: {why}");
}
