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

use std::io::Write;
use std::os::unix::net::UnixStream;

use bincode::Options;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcSender};
use p11trace_record::wire::{self, Hello, Message, Redaction};
use serde_bytes::ByteBuf;

type Bootstrap = wire::Bootstrap<IpcBytesReceiver>;

fn hello(token: [u8; 16]) -> Vec<u8> {
    let hello = Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        token,
        client_id: "rogue".into(),
        connection: 0,
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
        previous: None,
    };
    wire::codec()
        .serialize(&Message::Hello(hello))
        .expect("encode hello")
}

/// A handshake, honest except (maybe) for the token. Returns the data channel and the stream.
fn handshake(socket: &str, honest: bool) -> (IpcBytesSender, UnixStream) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    let welcome = wire::read_welcome(&mut stream).expect("welcome");
    let token = if honest { welcome.token } else { [0x5a; 16] };
    let bootstrap: IpcSender<Bootstrap> =
        IpcSender::connect(welcome.server_name).expect("one-shot");
    let (data, receiver) = ipc::bytes_channel().expect("channel");
    bootstrap
        .send(Bootstrap {
            hello: ByteBuf::from(hello(token)),
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
        other => {
            eprintln!("unknown kind {other}");
            std::process::exit(2);
        }
    }
}
