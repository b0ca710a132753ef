//! One connection to the recorder: rendezvous on its Unix socket, the ipc-channel handshake (in
//! steps that each wait only as long as their caller allows), and sends that never block for
//! long.
//!
//! The rendezvous is a plain `UnixStream` first (`IpcSender::connect` leaks a descriptor each time
//! it fails, and a recorder that is not running makes it fail on every retry). The stream stays
//! open for the connection's life: its end-of-file tells the recorder we are gone.

use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, FromRawFd as _, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bincode::Options as _;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcSender};
use p11trace_record::socket::{self, socket_folder};
use p11trace_record::wire::{self, Hello, Message, Welcome};
use serde_bytes::ByteBuf;

/// First message on the one-shot server: the hello (a bincode [`Message::Hello`]) and the receiving
/// end of the data channel.
type Bootstrap = wire::Bootstrap<IpcBytesReceiver>;

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// No recorder is listening (no socket, or connection refused): retry quietly later.
    Absent,
    /// The socket's folder is not safe to trust; the message says why.
    Unsafe(String),
    /// The recorder answered but the handshake failed.
    Handshake(String),
    /// The welcome was read too late to trust the rest of the handshake: start a new one now.
    Stale,
}

/// A live connection.
pub struct Connection {
    /// Kept open so the recorder sees our end-of-file when we go.
    stream: UnixStream,
    data: IpcBytesSender,
    /// The data channel's descriptor: non-blocking, so a stalled recorder can never hold the
    /// sender, and closed in forked children.
    data_fd: RawFd,
    pub label_key: [u8; 32],
}

/// How long the handshake may take before the recorder counts as unreachable.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Refuses socket folders another user could have planted (the rule of
/// [`p11trace_record::socket::check_folder`], which the recorder applies too).
pub fn check_folder(socket: &Path) -> Result<(), String> {
    let folder = socket_folder(socket);
    match std::fs::metadata(folder) {
        // A missing folder: the connect fails as "absent".
        Err(_) => Ok(()),
        Ok(metadata) => socket::check_folder(&metadata)
            .map_err(|why| format!("not connecting: socket folder {} {why}", folder.display())),
    }
}

/// A connection being made: the rendezvous stream is connected (without blocking) and the
/// recorder's welcome is awaited, a little at a time, so no caller ever waits on the recorder
/// longer than it chose to.
pub struct Handshake {
    stream: UnixStream,
    received: Vec<u8>,
    started: Instant,
    /// The bootstrap is sent: what the connection is made of, once the recorder registers it.
    bootstrapped: Option<Bootstrapped>,
}

/// A handshake's data channel, handed over and not yet registered.
struct Bootstrapped {
    data: IpcBytesSender,
    data_fd: RawFd,
    label_key: [u8; 32],
    sent_at: Instant,
}

impl Handshake {
    /// Connects the rendezvous stream without blocking.
    pub fn start(socket: &Path) -> Result<Handshake, ConnectError> {
        check_folder(socket).map_err(ConnectError::Unsafe)?;
        let stream = connect_nonblocking(socket).map_err(|e| match e.kind() {
            // No recorder, or one whose backlog is full (stalled): retry quietly later.
            io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::WouldBlock => ConnectError::Absent,
            _ => ConnectError::Handshake(format!("cannot connect to {}: {e}", socket.display())),
        })?;
        Ok(Handshake {
            stream,
            received: Vec::new(),
            started: Instant::now(),
            bootstrapped: None,
        })
    }

    /// The rendezvous stream's descriptor (a forked child must close it).
    pub fn descriptor(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Waits at most `wait` for the rest of the welcome; `Ok(None)` while it has not all come.
    /// A handshake older than [`HANDSHAKE_TIMEOUT`] fails, or is [`ConnectError::Stale`] if its
    /// welcome did come.
    pub fn advance(
        &mut self,
        socket: &Path,
        wait: Duration,
    ) -> Result<Option<Welcome>, ConnectError> {
        let failed = |what: &str| {
            ConnectError::Handshake(format!(
                "handshake with recorder at {} failed (welcome): {what}",
                socket.display()
            ))
        };
        let left = HANDSHAKE_TIMEOUT.saturating_sub(self.started.elapsed());
        if wait_readable(self.stream.as_raw_fd(), wait.min(left)) {
            let mut chunk = [0u8; 1024];
            loop {
                match (&self.stream).read(&mut chunk) {
                    // Closed after its time (a thread-less host went idle mid-handshake, and
                    // the recorder gave up on it): start afresh, as for a welcome read late.
                    Ok(0) if self.started.elapsed() >= HANDSHAKE_TIMEOUT => {
                        return Err(ConnectError::Stale);
                    }
                    Ok(0) => return Err(failed("the recorder closed the connection")),
                    Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(failed(&e.to_string())),
                }
                if self.received.len() > 4 + wire::MAX_WELCOME_BYTES as usize {
                    return Err(failed("welcome frame too large"));
                }
            }
        }
        if let Some(header) = self.received.first_chunk::<4>() {
            let len = u32::from_le_bytes(*header);
            if len > wire::MAX_WELCOME_BYTES {
                return Err(failed("welcome frame too large"));
            }
            if self.received.len() >= len as usize + 4 {
                // Come in time, but read late (a thread-less host went idle meanwhile): the
                // recorder may have given up on this handshake by now.
                if self.started.elapsed() >= HANDSHAKE_TIMEOUT {
                    return Err(ConnectError::Stale);
                }
                return wire::read_welcome(&mut self.received.as_slice())
                    .map(Some)
                    .map_err(|e| failed(&e.to_string()));
            }
        }
        if self.started.elapsed() >= HANDSHAKE_TIMEOUT {
            return Err(failed(&format!("no welcome within {HANDSHAKE_TIMEOUT:?}")));
        }
        Ok(None)
    }

    /// The rest of the handshake, once the welcome is in: the data channel handed over with
    /// `hello` (its `token` filled from the welcome). Nothing here waits on the recorder: the
    /// one-shot server already listens and the bootstrap message is small.
    pub fn bootstrap(
        &mut self,
        socket: &Path,
        welcome: Welcome,
        mut hello: Hello,
    ) -> Result<(), ConnectError> {
        let handshake = |what: &str, e: &dyn std::fmt::Display| {
            ConnectError::Handshake(format!(
                "handshake with recorder at {} failed ({what}): {e}",
                socket.display()
            ))
        };
        if welcome.protocol_version != wire::PROTOCOL_VERSION {
            return Err(handshake(
                "protocol",
                &format!(
                    "recorder speaks version {}, we speak {}",
                    welcome.protocol_version,
                    wire::PROTOCOL_VERSION
                ),
            ));
        }
        // ipc-channel turns the name into a C string with `CString::new(name).unwrap()`: a name
        // holding a NUL byte (a rogue or broken recorder) would panic inside it.
        if welcome.server_name.is_empty() || welcome.server_name.contains('\0') {
            return Err(handshake(
                "welcome",
                &"the one-shot server's name is empty or holds a NUL byte",
            ));
        }
        hello.token = welcome.token;
        let bootstrap: IpcSender<Bootstrap> = IpcSender::connect(welcome.server_name)
            .map_err(|e| handshake("one-shot server", &e))?;
        let before = descriptor_identities();
        let (data, receiver) = ipc::bytes_channel().map_err(|e| handshake("channel", &e))?;
        // Without its descriptor the data channel would stay blocking: refuse the connection
        // rather than risk a send that waits on a stalled recorder.
        let data_fd = find_sender_fd(&data, &receiver, &before)
            .ok_or_else(|| handshake("channel", &"cannot find the data channel's descriptor"))?;
        set_nonblocking(data_fd).map_err(|e| handshake("non-blocking data channel", &e))?;
        let hello = wire::codec()
            .serialize(&Message::Hello(hello))
            .map_err(|e| handshake("hello", &e))?;
        bootstrap
            .send(Bootstrap {
                hello: ByteBuf::from(hello),
                data: receiver,
            })
            .map_err(|e| handshake("bootstrap", &e))?;
        self.bootstrapped = Some(Bootstrapped {
            data,
            data_fd,
            label_key: welcome.label_key,
            sent_at: Instant::now(),
        });
        Ok(())
    }

    /// Whether the bootstrap is sent (what is left is the recorder's registration byte).
    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped.is_some()
    }

    /// The data channel's descriptor once the bootstrap is sent (a forked child must close it).
    pub fn data_descriptor(&self) -> Option<RawFd> {
        self.bootstrapped.as_ref().map(|b| b.data_fd)
    }

    /// The last step (protocol 2): nothing is sent before the recorder's registration byte. A
    /// handshake that failed on the recorder's side (out of descriptors, say) closes the stream
    /// unanswered instead, and the connection fails here — its records wait in the queue, then
    /// are counted — rather than being sent into a channel nobody reads. Waits at most `wait`;
    /// `Ok(false)` while the byte has not come (then [`Handshake::into_connection`]); fails once
    /// it is [`HANDSHAKE_TIMEOUT`] late (a byte that came in time is taken however late it is
    /// read).
    pub fn registered(&mut self, socket: &Path, wait: Duration) -> Result<bool, ConnectError> {
        let failed = |what: &dyn std::fmt::Display| {
            ConnectError::Handshake(format!(
                "handshake with recorder at {} failed (registration): {what}",
                socket.display()
            ))
        };
        let Some(bootstrapped) = &self.bootstrapped else {
            return Err(failed(&"no bootstrap sent"));
        };
        let due = bootstrapped.sent_at + HANDSHAKE_TIMEOUT;
        loop {
            let mut byte = [0u8; 1];
            match (&self.stream).read(&mut byte) {
                Ok(0) => return Err(failed(&"the recorder closed the connection")),
                Ok(_) => {
                    return wire::check_registered(byte[0])
                        .map(|()| true)
                        .map_err(|e| failed(&e));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = due.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(failed(&format_args!("none within {HANDSHAKE_TIMEOUT:?}")));
                    }
                    // Still in time: read once more if it came, else come back later (past the
                    // deadline, the read above ends it).
                    if !wait_readable(self.stream.as_raw_fd(), wait.min(left))
                        && Instant::now() < due
                    {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(failed(&e)),
            }
        }
    }

    /// The live connection of a registered handshake.
    pub fn into_connection(self) -> Option<Connection> {
        let Bootstrapped {
            data,
            data_fd,
            label_key,
            ..
        } = self.bootstrapped?;
        Some(Connection {
            stream: self.stream,
            data,
            data_fd,
            label_key,
        })
    }
}

impl Connection {
    /// Sends one framed message, waiting at most `patience` for room in the socket buffer.
    /// `WouldBlock` means the recorder is not reading (stalled): the message was not sent but the
    /// connection may still be good.
    pub fn send(&self, framed: &[u8], patience: Duration) -> io::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            match self.data.send(framed) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !wait_writable(self.data_fd, left) {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    /// Descriptors a forked child must close (they belong to the parent's connection).
    pub fn descriptors(&self) -> [RawFd; 2] {
        [self.stream.as_raw_fd(), self.data_fd]
    }
}

/// Initialises ipc-channel's lazily computed globals (the socket buffer size) on the calling
/// thread. If the sender thread computed them while the application forked, the child would
/// inherit a `LazyLock` stuck "in progress" and its sender would wait for ever (seen in the fork
/// test). Called before any sender thread exists.
pub fn warm_up_ipc() {
    if let Ok((sender, receiver)) = ipc::bytes_channel()
        && sender.send(&[0]).is_ok()
    {
        let _ = receiver.recv();
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A Unix stream connected to `path` without waiting: a listener whose backlog is full (a
/// stalled recorder) answers `WouldBlock` instead of holding the caller.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid (empty) address.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or holding NUL",
        ));
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, &byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `address` is a valid sockaddr_un, of which `len` bytes are used.
    let connected =
        unsafe { libc::connect(fd, (&raw const address).cast(), len as libc::socklen_t) };
    if connected != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: polls one descriptor we own.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    ready > 0 && poll.revents & (events | libc::POLLHUP | libc::POLLERR) != 0
}

fn wait_writable(fd: RawFd, timeout: Duration) -> bool {
    // At least 1 ms: a zero timeout would spin the sender on a full socket.
    poll_one(fd, libc::POLLOUT, timeout.max(Duration::from_millis(1)))
}

/// Whether `fd` has something to read (or hung up) within `timeout` (zero: just look).
fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    poll_one(fd, libc::POLLIN, timeout)
}

/// Bytes queued in a socket's send buffer, if `fd` is a Unix SEQPACKET socket.
fn seqpacket_outq(fd: RawFd) -> Option<i32> {
    let mut kind: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes an int into `kind`; non-sockets fail with ENOTSOCK.
    let is_socket = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &mut len,
        )
    } == 0;
    if !is_socket || kind != libc::SOCK_SEQPACKET {
        return None;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes an int.
    (unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } == 0).then_some(queued)
}

fn open_descriptors() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The inode behind a descriptor (a reused descriptor number has another).
fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: an all-zero stat is a valid buffer for fstat to fill.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `stat`; an invalid descriptor fails with EBADF.
    (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some(stat.st_ino)
}

/// Every open descriptor with its inode (the listing's own descriptor, closed by then, drops out).
fn descriptor_identities() -> Vec<(RawFd, u64)> {
    open_descriptors()
        .into_iter()
        .filter_map(|fd| Some((fd, inode(fd)?)))
        .collect()
}

/// ipc-channel offers no accessor for a sender's descriptor. Find it: send a probe, and look, among
/// the descriptors that were not open `before` the channel was made (same number, same inode), for the one SEQPACKET socket
/// whose send queue filled and then emptied when we read the probe.
fn find_sender_fd(
    data: &IpcBytesSender,
    receiver: &IpcBytesReceiver,
    before: &[(RawFd, u64)],
) -> Option<RawFd> {
    let mut probe = [0u8; 16];
    // SAFETY: getrandom writes into the buffer we own.
    unsafe { libc::getrandom(probe.as_mut_ptr().cast(), probe.len(), 0) };
    data.send(&probe).ok()?;
    let queued: Vec<(RawFd, i32)> = open_descriptors()
        .into_iter()
        .filter(|&fd| inode(fd).is_some_and(|ino| !before.contains(&(fd, ino))))
        .filter_map(|fd| Some((fd, seqpacket_outq(fd)?)))
        .filter(|&(_, queued)| queued > 0)
        .collect();
    if receiver.recv().ok()?.as_slice() != probe {
        return None;
    }
    let mut drained = queued
        .into_iter()
        .filter(|&(fd, _)| seqpacket_outq(fd) == Some(0));
    match (drained.next(), drained.next()) {
        (Some((fd, _)), None) => Some(fd),
        _ => None,
    }
}
