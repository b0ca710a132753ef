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
    (data, stream)
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
