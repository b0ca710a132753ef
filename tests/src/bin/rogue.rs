//! `rogue`: a misbehaving client for the recorder's security tests. It speaks just enough of the
//! protocol to reach a given point, then does something wrong.
//!
//! Usage: `rogue SOCKET KIND` where KIND is
//! - `garbage`      — random bytes on the rendezvous socket, then hangs up;
//! - `silent`       — connects and never completes the handshake (holds the connection 8 s);
//! - `wrong-token`  — completes the handshake with a made-up token;
//! - `undecodable`  — a valid handshake, then a message that is not bincode;
//! - `oversized`    — a valid handshake, then a 3 MiB message;
//! - `flood N`      — a valid handshake, then N bogus batches as fast as possible.
//! - `stall SECS`   — a valid handshake, then the first datagram of a message whose header
//!   claims more bytes than it carries; holds the connection SECS seconds (a peer stopped in
//!   the middle of a message);
//! - `unchannelled` — a valid handshake, then the first fragment of a multi-fragment message
//!   without the channel its other fragments would come on (ipc-channel's receiver unwraps it);
//! - `huge`         — a valid handshake, then the first fragment of a message declaring 1 TiB,
//!   with a fragment channel attached (ipc-channel 0.23.1 reserved the declared size at once);
//! - `silent-bootstrap` — connects to the one-shot server the welcome names and never sends
//!   its first message (holds it 20 s);
//! - `counters`     — an honest first connection that reports one record sent and delivers
//!   none, then a second that claims 2^64 − 1 records sent on the first, and batches and a
//!   goodbye with counters past `i64::MAX` (sums of which overflow).

use std::io::Write;
use std::os::unix::net::UnixStream;

use bincode::Options;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcSender};
use p11trace_record::wire::{self, Hello, Message, Redaction};
use serde_bytes::ByteBuf;

type Bootstrap = wire::Bootstrap<IpcBytesReceiver>;

fn hello(token: [u8; 16]) -> Vec<u8> {
    hello_on(token, 0, None)
}

fn hello_on(
    token: [u8; 16],
    connection: u32,
    previous: Option<wire::PreviousConnection>,
) -> Vec<u8> {
    let hello = Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        token,
        client_id: "rogue".into(),
        connection,
        pid: i64::from(std::process::id()),
        ppid: 0,
        host: "rogue".into(),
        process: "rogue".into(),
        exe: "rogue".into(),
        module: "none".into(),
        shim_version: "0".into(),
        redaction: Redaction::Default,
        seq_start: 0,
        dropped: 0,
        previous,
    };
    wire::codec()
        .serialize(&Message::Hello(hello))
        .expect("encode hello")
}

/// A handshake, honest except (maybe) for the token. Returns the data channel and the stream.
fn handshake(socket: &str, honest: bool) -> (IpcBytesSender, UnixStream) {
    handshake_with(socket, |token| {
        hello(if honest { token } else { [0x5a; 16] })
    })
}

/// A handshake whose hello `make` builds from the welcome's token.
fn handshake_with(
    socket: &str,
    make: impl FnOnce([u8; 16]) -> Vec<u8>,
) -> (IpcBytesSender, UnixStream) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    let welcome = wire::read_welcome(&mut stream).expect("welcome");
    let token = welcome.token;
    let bootstrap: IpcSender<Bootstrap> =
        IpcSender::connect(welcome.server_name).expect("one-shot");
    let (data, receiver) = ipc::bytes_channel().expect("channel");
    bootstrap
        .send(Bootstrap {
            hello: ByteBuf::from(make(token)),
            data: receiver,
        })
        .expect("bootstrap");
    registered(&mut stream);
    (data, stream)
}

/// Waits for the recorder's registration byte (protocol 2); a refused peer gets none.
fn registered(stream: &mut UnixStream) {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = wire::read_registered(stream);
}

/// The sockets open in this process (the listing's own descriptor is closed before they are
/// checked).
fn open_fds() -> Vec<i32> {
    let listed: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    listed
        .into_iter()
        .filter(|&fd| {
            // SAFETY: fstat writes into our zeroed stat buffer; a closed descriptor fails.
            unsafe {
                let mut stat: libc::stat = std::mem::zeroed();
                libc::fstat(fd, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
            }
        })
        .collect()
}

/// An honest handshake whose data channel is returned as its raw sending descriptor, to write
/// datagrams ipc-channel would never send.
fn handshake_raw(socket: &str) -> (i32, UnixStream) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    let welcome = wire::read_welcome(&mut stream).expect("welcome");
    let bootstrap: IpcSender<Bootstrap> =
        IpcSender::connect(welcome.server_name).expect("one-shot");
    let before = open_fds();
    let (data, receiver) = ipc::bytes_channel().expect("channel");
    let fresh: Vec<i32> = open_fds()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    bootstrap
        .send(Bootstrap {
            hello: ByteBuf::from(hello(welcome.token)),
            data: receiver,
        })
        .expect("bootstrap");
    registered(&mut stream);
    // The receiving end left with the bootstrap (and was closed here): what is still open of
    // the channel's two descriptors is the sending end.
    let after = open_fds();
    let fd = *fresh
        .iter()
        .find(|fd| after.contains(fd))
        .expect("the data channel's sending descriptor");
    std::mem::forget(data);
    (fd, stream)
}

/// One datagram with ipc-channel's first-fragment header: `fragment_size` (header included) and
/// `total_size`, then eight bytes of payload.
fn raw_fragment(fd: i32, fragment_size: usize, total_size: usize) {
    let mut datagram = Vec::new();
    datagram.extend_from_slice(&fragment_size.to_ne_bytes());
    datagram.extend_from_slice(&total_size.to_ne_bytes());
    datagram.extend_from_slice(&[0u8; 8]);
    // SAFETY: sends our buffer on a descriptor this process owns.
    let sent = unsafe { libc::send(fd, datagram.as_ptr().cast(), datagram.len(), 0) };
    if sent != datagram.len() as isize {
        panic!(
            "send the crafted datagram on fd {fd}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The first fragment of a message declaring 1 TiB, with a socket attached as its fragment
/// channel (`SCM_RIGHTS`), as ipc-channel would send a real multi-fragment message.
fn huge_fragment(fd: i32) {
    let mut pair = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into our array.
    let made =
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, pair.as_mut_ptr()) };
    assert_eq!(made, 0, "socketpair");
    let header_size = 2 * size_of::<usize>() + 8;
    let mut datagram = Vec::new();
    datagram.extend_from_slice(&header_size.to_ne_bytes());
    datagram.extend_from_slice(&(1usize << 40).to_ne_bytes());
    datagram.extend_from_slice(&[0u8; 8]);
    let mut iov = libc::iovec {
        iov_base: datagram.as_mut_ptr().cast(),
        iov_len: datagram.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a msghdr is plain data; zeroed is a valid empty one, filled in below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space;
    // SAFETY: the control buffer has room for one header and one descriptor (CMSG_SPACE), and
    // sendmsg reads only our buffers.
    let sent = unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<i32>(), pair[1]);
        libc::sendmsg(fd, &message, 0)
    };
    if sent != datagram.len() as isize {
        panic!("sendmsg: {}", std::io::Error::last_os_error());
    }
}

/// A frame as the shim builds it: a LEB128 length, then the payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::push_length(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (socket, kind) = (args[1].as_str(), args[2].as_str());
    match kind {
        "garbage" => {
            let mut stream = UnixStream::connect(socket).expect("connect");
            let _ = stream.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(4096));
        }
        "silent" => {
            let _stream = UnixStream::connect(socket).expect("connect");
            std::thread::sleep(std::time::Duration::from_secs(8));
        }
        "wrong-token" => {
            let (_data, _stream) = handshake(socket, false);
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        "undecodable" => {
            let (data, _stream) = handshake(socket, true);
            let _ = data.send(&frame(&[0xff; 64]));
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        "oversized" => {
            let (data, _stream) = handshake(socket, true);
            let _ = data.send(&frame(&vec![0u8; 3 << 20]));
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        "flood" => {
            let count: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1000);
            let (data, _stream) = handshake(socket, true);
            let bogus = frame(&[2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
            for _ in 0..count {
                if data.send(&bogus).is_err() {
                    break;
                }
            }
        }
        "stall" => {
            let secs: u64 = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(30);
            let (data, _stream) = handshake_raw(socket);
            // Claims a 4 KiB fragment, carries 8 bytes: the receiver waits for the rest.
            raw_fragment(data, 4096, 8);
            std::thread::sleep(std::time::Duration::from_secs(secs));
        }
        "unchannelled" => {
            let (data, _stream) = handshake_raw(socket);
            // A complete first fragment of a 1 MiB message, with no fragment channel attached.
            raw_fragment(data, 2 * size_of::<usize>() + 8, 1 << 20);
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        "huge" => {
            let (data, _stream) = handshake_raw(socket);
            huge_fragment(data);
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        "silent-bootstrap" => {
            let mut stream = UnixStream::connect(socket).expect("connect");
            let welcome = wire::read_welcome(&mut stream).expect("welcome");
            let _bootstrap: IpcSender<Bootstrap> =
                IpcSender::connect(welcome.server_name).expect("one-shot");
            std::thread::sleep(std::time::Duration::from_secs(20));
        }
        "counters" => counters(socket),
        other => {
            eprintln!("unknown kind {other}");
            std::process::exit(2);
        }
    }
}

fn message(message: &Message) -> Vec<u8> {
    frame(&wire::codec().serialize(message).expect("encode"))
}

fn batch(seq_high: u64, sent: u64) -> Vec<u8> {
    message(&Message::Batch(wire::Batch {
        records: Vec::new(),
        seq_high,
        dropped: 0,
        sent,
    }))
}

fn counters(socket: &str) {
    let pause = || std::thread::sleep(std::time::Duration::from_millis(300));
    {
        let (data, _stream) = handshake_with(socket, |token| hello_on(token, 0, None));
        let _ = data.send(&batch(1, 1));
        pause();
    }
    pause();
    let previous = wire::PreviousConnection {
        connection: 0,
        sent: u64::MAX,
    };
    {
        let (data, _stream) = handshake_with(socket, |token| hello_on(token, 1, Some(previous)));
        let _ = data.send(&batch(5, 5));
        pause();
    }
    pause();
    {
        let (data, _stream) = handshake_with(socket, |token| hello_on(token, 2, None));
        let _ = data.send(&batch(u64::MAX, u64::MAX));
        let goodbye = Message::Goodbye {
            reason: wire::GoodbyeReason::Exit,
            seq_high: u64::MAX,
            dropped: u64::MAX,
            sent: u64::MAX,
        };
        let _ = data.send(&message(&goodbye));
        pause();
    }
}
