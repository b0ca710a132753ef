//! One connection to the recorder: rendezvous on its Unix socket, the ipc-channel handshake, and
//! sends that never block for long.
//!
//! The rendezvous is a plain `UnixStream` first (`IpcSender::connect` leaks a descriptor each time
//! it fails, and a recorder that is not running makes it fail on every retry). The stream stays
//! open for the connection's life: its end-of-file tells the recorder we are gone.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bincode::Options as _;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcSender};
use p11trace_record::socket::{self, socket_folder};
use p11trace_record::wire::{self, Hello, Message};
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
}

/// A live connection.
pub struct Connection {
    /// Kept open so the recorder sees our end-of-file when we go.
    stream: UnixStream,
    data: IpcBytesSender,
    /// The data channel's descriptor, when found: made non-blocking so a stalled recorder can
    /// never hold the sender forever, and closed in forked children.
    data_fd: Option<RawFd>,
    pub label_key: [u8; 32],
}

/// How long the handshake may take before the recorder counts as unreachable.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

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

impl Connection {
    /// Connects and says hello. `hello.token` is filled from the recorder's welcome.
    pub fn open(socket: &Path, mut hello: Hello) -> Result<Connection, ConnectError> {
        check_folder(socket).map_err(ConnectError::Unsafe)?;
        let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ConnectError::Absent,
            _ => ConnectError::Handshake(format!("cannot connect to {}: {e}", socket.display())),
        })?;
        let handshake = |what: &str, e: &dyn std::fmt::Display| {
            ConnectError::Handshake(format!(
                "handshake with recorder at {} failed ({what}): {e}",
                socket.display()
            ))
        };
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|e| handshake("timeout", &e))?;
        let welcome = wire::read_welcome(&mut stream).map_err(|e| handshake("welcome", &e))?;
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
        let (data, receiver) = ipc::bytes_channel().map_err(|e| handshake("channel", &e))?;
        let data_fd = find_sender_fd(&data, &receiver);
        if let Some(fd) = data_fd {
            set_nonblocking(fd);
        }
        let hello = wire::codec()
            .serialize(&Message::Hello(hello))
            .map_err(|e| handshake("hello", &e))?;
        bootstrap
            .send(Bootstrap {
                hello: ByteBuf::from(hello),
                data: receiver,
            })
            .map_err(|e| handshake("bootstrap", &e))?;
        Ok(Connection {
            stream,
            data,
            data_fd,
            label_key: welcome.label_key,
        })
    }

    /// Sends one framed message, waiting at most `patience` for room in the socket buffer.
    /// `WouldBlock` means the recorder is not reading (stalled): the message was not sent but the
    /// connection may still be good.
    pub fn send(&self, framed: &[u8], patience: Duration) -> io::Result<()> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.data.send(framed) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let Some(fd) = self.data_fd else {
                        return Err(e);
                    };
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() || !wait_writable(fd, left) {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    /// Descriptors a forked child must close (they belong to the parent's connection).
    pub fn descriptors(&self) -> [RawFd; 2] {
        [self.stream.as_raw_fd(), self.data_fd.unwrap_or(-1)]
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

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; failure leaves it blocking, which is still correct.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

fn wait_writable(fd: RawFd, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: polls one descriptor we own.
    let ready = unsafe { libc::poll(&mut poll, 1, millis.max(1)) };
    ready > 0 && poll.revents & libc::POLLOUT != 0
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

/// ipc-channel offers no accessor for a sender's descriptor. Find it: send a probe, and look for
/// the one SEQPACKET socket whose send queue filled and then emptied when we read the probe.
fn find_sender_fd(data: &IpcBytesSender, receiver: &IpcBytesReceiver) -> Option<RawFd> {
    let mut probe = [0u8; 16];
    // SAFETY: getrandom writes into the buffer we own.
    unsafe { libc::getrandom(probe.as_mut_ptr().cast(), probe.len(), 0) };
    data.send(&probe).ok()?;
    let queued: Vec<(RawFd, i32)> = open_descriptors()
        .into_iter()
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
