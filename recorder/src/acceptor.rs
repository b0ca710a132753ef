//! Acceptor: the rendezvous socket. For each connecting process it reads the peer's credentials
//! (`SO_PEERCRED`: never what the client claims), refuses other users, hands back the name of a
//! fresh ipc one-shot server and a random token, checks the token in the client's first ipc
//! message, and registers the client's data channel with the capture actor. The rendezvous stream
//! is then watched: its end-of-file means the client is gone.

use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use ipc_channel::ipc::{IpcOneShotServer, IpcReceiver, IpcSender};
use p11trace_record::wire::{self, Hello, Message, Welcome};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::stats::Stats;

/// The shim's first one-shot message, with the data channel's receiving end as ipc-channel
/// hands it to the recorder.
type Bootstrap = wire::Bootstrap<IpcReceiver<ByteBuf>>;

/// Peer credentials of a rendezvous connection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Peer {
    pub pid: i64,
    pub uid: i64,
    pub gid: i64,
}

/// A client that passed the handshake.
pub struct Registration {
    pub key: u64,
    pub peer: Peer,
    pub hello: Hello,
    pub data: IpcReceiver<ByteBuf>,
}

/// Messages to the capture actor's control loop.
pub enum Control {
    Register(Box<Registration>),
    /// The rendezvous stream of `key` reached end-of-file.
    Eof(u64),
    Shutdown,
}

/// How long a client may take between connecting and completing the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Acceptor {
    pub listener: UnixListener,
    pub control: Sender<Control>,
    pub run_id: String,
    pub label_key: [u8; 32],
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
}

fn peer_credentials(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred into our local.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: i64::from(cred.pid),
        uid: i64::from(cred.uid),
        gid: i64::from(cred.gid),
    })
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: getrandom writes at most N - filled bytes into our buffer.
        let got = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if got > 0 {
            filled += got as usize;
        }
    }
    bytes
}

impl Acceptor {
    /// Accepts until `stop` is set (the caller then connects once to wake `accept`).
    pub fn run(self) {
        let uid = i64::from(p11trace_record::socket::current_uid());
        let (watch_tx, watch_rx) = crossbeam_channel::unbounded();
        let watcher = {
            let control = self.control.clone();
            let stop = self.stop.clone();
            let spawned = std::thread::Builder::new()
                .name("rendezvous-watch".into())
                .spawn(move || watch(watch_rx, control, stop));
            match spawned {
                Ok(watcher) => watcher,
                Err(error) => {
                    eprintln!("p11trace-recorder: cannot start the rendezvous watcher: {error}");
                    return;
                }
            }
        };
        // Keys must not repeat across restarts on one dataset (the log outlives a process): a
        // random high half, a counter low half.
        let base = u64::from(u32::from_ne_bytes(random_bytes::<4>())) << 32;
        let next_key = Arc::new(AtomicU64::new(base | 1));
        let mut backoff = Backoff::default();
        for stream in self.listener.incoming() {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let stream = match stream {
                Ok(stream) => {
                    backoff.reset();
                    stream
                }
                Err(error) => {
                    backoff.wait(&error);
                    continue;
                }
            };
            let peer = match peer_credentials(&stream) {
                Ok(peer) => peer,
                Err(_) => continue,
            };
            if peer.uid != uid {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "p11trace-recorder: refused pid {} of uid {} (only uid {uid} may connect)",
                    peer.pid, peer.uid
                );
                continue;
            }
            let handshake = Handshake {
                stream,
                peer,
                key: next_key.fetch_add(1, Ordering::Relaxed),
                control: self.control.clone(),
                run_id: self.run_id.clone(),
                label_key: self.label_key,
                stats: self.stats.clone(),
                watch: watch_tx.clone(),
            };
            self.stats.handshakes.fetch_add(1, Ordering::AcqRel);
            let stats = self.stats.clone();
            let spawned = std::thread::Builder::new()
                .name("handshake".into())
                .spawn(move || {
                    // ipc-channel panics on a bootstrap whose data channel did not arrive (its
                    // descriptor dropped by the kernel when we are out of them): that ends this
                    // handshake only.
                    let pid = handshake.peer.pid;
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        handshake.run();
                    }));
                    if ran.is_err() {
                        stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "p11trace-recorder: dropped connection from pid {pid}: its bootstrap \
                             could not be decoded"
                        );
                    }
                    stats.handshakes.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                self.stats.handshakes.fetch_sub(1, Ordering::AcqRel);
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(watch_tx);
        let _ = watcher.join();
    }
}

/// Waiting after a failed `accept`. Out of descriptors (`EMFILE`, `ENFILE`) or memory, `accept`
/// fails at once for as long as the shortage lasts: retrying at once would spin a core. The
/// connections wait in the listen backlog meanwhile (their shims time out and count). Said on
/// stderr the first time, then at most once a minute with the number of failures since.
#[derive(Default)]
struct Backoff {
    delay: Option<Duration>,
    failures: u64,
    said: Option<std::time::Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MOST: Duration = Duration::from_millis(500);
    const SAY_EVERY: Duration = Duration::from_secs(60);

    fn wait(&mut self, error: &io::Error) {
        self.failures += 1;
        if self.said.is_none_or(|at| at.elapsed() >= Self::SAY_EVERY) {
            eprintln!(
                "p11trace-recorder: cannot accept connections ({error}; {} time(s) so far); \
                 retrying with backoff",
                self.failures
            );
            self.said = Some(std::time::Instant::now());
        }
        let delay = self
            .delay
            .map_or(Self::FIRST, |delay| (delay * 2).min(Self::MOST));
        self.delay = Some(delay);
        std::thread::sleep(delay);
    }

    fn reset(&mut self) {
        self.delay = None;
    }
}

struct Handshake {
    stream: UnixStream,
    peer: Peer,
    key: u64,
    control: Sender<Control>,
    run_id: String,
    label_key: [u8; 32],
    stats: Arc<Stats>,
    watch: Sender<(u64, UnixStream)>,
}

impl Handshake {
    fn run(mut self) {
        match self.exchange() {
            Ok(registration) => {
                // We hold the client's channel: say so before anything can hold us up (capture
                // waits on the log, the log on the disk). A handshake that failed on our side
                // (out of descriptors, say) closes the stream unanswered instead, so the shim
                // sees its connection fail and counts what it could not send.
                if self.stream.write_all(&[wire::REGISTERED]).is_ok()
                    && self
                        .control
                        .send(Control::Register(Box::new(registration)))
                        .is_ok()
                {
                    let _ = self.watch.send((self.key, self.stream));
                }
            }
            Err(reason) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "p11trace-recorder: dropped connection from pid {}: {reason}",
                    self.peer.pid
                );
            }
        }
    }

    fn exchange(&mut self) -> Result<Registration, String> {
        let (server, server_name) =
            IpcOneShotServer::<Bootstrap>::new().map_err(|e| format!("one-shot server: {e}"))?;
        let token = random_bytes::<16>();
        let welcome = Welcome {
            protocol_version: wire::PROTOCOL_VERSION,
            server_name: server_name.clone(),
            token,
            label_key: self.label_key,
            run_id: self.run_id.clone(),
        };
        let _ = self.stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
        wire::write_welcome(&mut self.stream, &welcome).map_err(|e| format!("welcome: {e}"))?;
        let (_, bootstrap) = accept_within(server, server_name, HANDSHAKE_TIMEOUT)?;
        let hello = match wire::decode(&bootstrap.hello) {
            Ok(Message::Hello(hello)) => hello,
            Ok(_) => return Err("first message is not a hello".into()),
            Err(e) => return Err(format!("undecodable hello: {e}")),
        };
        if hello.token != token {
            return Err("wrong token".into());
        }
        if hello.protocol_version != wire::PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} (we speak {})",
                hello.protocol_version,
                wire::PROTOCOL_VERSION
            ));
        }
        if !hello.plausible() {
            return Err("implausible counters in the hello".into());
        }
        Ok(Registration {
            key: self.key,
            peer: self.peer,
            hello,
            data: bootstrap.data,
        })
    }
}

/// `IpcOneShotServer::accept` has no timeout: if the client has not connected in time, connect to
/// the server ourselves with an empty hello so the accepting thread is never stuck.
fn accept_within(
    server: IpcOneShotServer<Bootstrap>,
    name: String,
    timeout: Duration,
) -> Result<(IpcReceiver<Bootstrap>, Bootstrap), String> {
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let unblocker = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (lock, cond) = &*done;
            let finished = lock.lock().unwrap_or_else(|p| p.into_inner());
            let (finished, _) = cond
                .wait_timeout_while(finished, timeout, |f| !*f)
                .unwrap_or_else(|p| p.into_inner());
            if !*finished {
                drop(finished);
                if let (Ok(sender), Ok((_, receiver))) = (
                    IpcSender::<Bootstrap>::connect(name),
                    ipc_channel::ipc::channel::<ByteBuf>(),
                ) {
                    let _ = sender.send(Bootstrap {
                        hello: ByteBuf::new(),
                        data: receiver,
                    });
                }
            }
        })
    };
    let accepted = server.accept();
    {
        let (lock, cond) = &*done;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cond.notify_all();
    }
    let _ = unblocker.join();
    let (receiver, bootstrap) = accepted.map_err(|e| format!("handshake: {e}"))?;
    if bootstrap.hello.is_empty() {
        return Err("handshake timed out".into());
    }
    Ok((receiver, bootstrap))
}

/// Watches rendezvous streams; reports each end-of-file to the capture actor.
fn watch(
    new_streams: Receiver<(u64, UnixStream)>,
    control: Sender<Control>,
    stop: Arc<AtomicBool>,
) {
    let mut streams: Vec<(u64, UnixStream)> = Vec::new();
    loop {
        while let Ok(entry) = new_streams.try_recv() {
            streams.push(entry);
        }
        if stop.load(Ordering::Acquire) && new_streams.is_empty() {
            return;
        }
        if streams.is_empty() {
            match new_streams.recv_timeout(Duration::from_millis(200)) {
                Ok(entry) => streams.push(entry),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            continue;
        }
        let mut polls: Vec<libc::pollfd> = streams
            .iter()
            .map(|(_, stream)| libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: polls descriptors we own, for at most 200 ms.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 200) };
        if ready <= 0 {
            continue;
        }
        let mut closed = Vec::new();
        for (index, poll) in polls.iter().enumerate() {
            if poll.revents == 0 {
                continue;
            }
            let mut buffer = [0u8; 64];
            // SAFETY: reads into our buffer from a descriptor we own; the client never writes
            // here, so anything but EOF is discarded.
            let got = unsafe {
                libc::recv(
                    poll.fd,
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if got == 0
                || (got < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock)
            {
                closed.push(index);
            }
        }
        for index in closed.into_iter().rev() {
            let (key, _) = streams.swap_remove(index);
            let _ = control.send(Control::Eof(key));
        }
    }
}
