//! A hello to the recorder, as a shim would say it: the rendezvous, the welcome, the one-shot
//! bootstrap with a hello, the registration byte — then a goodbye (`Finalize`, no calls) on the
//! data channel before hanging up, so the recorder ends the connection as a clean finalize and
//! counts nothing broken. It records the doctor as one client with no calls (process
//! `p11trace-doctor`).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bincode::Options as _;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcSender};
use p11trace_record::wire::{self, GoodbyeReason, Hello, Message, Redaction};
use serde_bytes::ByteBuf;

/// The bootstrap as the shim's side of ipc-channel names it.
type Bootstrap = wire::Bootstrap<IpcBytesReceiver>;

/// How long each step may wait on the recorder.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the recorder said.
#[derive(Debug)]
pub struct Accepted {
    pub protocol_version: u32,
    pub run_id: String,
}

/// Why the hello did not go through.
#[derive(Debug)]
pub enum Refused {
    /// Nobody listens there (no socket file, or connection refused).
    Absent(String),
    /// The socket is there but this user may not connect (another user's recorder).
    Denied(String),
    /// Someone answered, and the handshake failed.
    Failed(String),
}

fn hello() -> Hello {
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        token: [0; 16],
        client_id: uuid::Uuid::now_v7().to_string(),
        connection: 0,
        pid: i64::from(std::process::id()),
        ppid: i64::from(ppid),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
        process: "p11trace-doctor".into(),
        exe: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        module: String::new(),
        shim_version: env!("CARGO_PKG_VERSION").into(),
        redaction: Redaction::Default,
        seq_start: 0,
        dropped: 0,
        previous: None,
    }
}

/// Completes a handshake with the recorder at `socket` and says goodbye.
pub fn say_hello(socket: &Path) -> Result<Accepted, Refused> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Refused::Failed(format!(
            "the handshake with {} failed ({what}): {e}",
            socket.display()
        ))
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            Refused::Absent(format!("no recorder listens at {} ({e})", socket.display()))
        }
        io::ErrorKind::PermissionDenied => {
            Refused::Denied(format!("cannot connect to {} ({e})", socket.display()))
        }
        _ => failed("connect", &e),
    })?;
    let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
    let _ = stream.set_write_timeout(Some(STEP_TIMEOUT));
    let welcome = wire::read_welcome(&mut stream).map_err(|e| failed("welcome", &e))?;
    if welcome.protocol_version != wire::PROTOCOL_VERSION {
        return Err(failed(
            "protocol",
            &format!(
                "the recorder speaks version {}, this doctor (and the shim of its version) {}",
                welcome.protocol_version,
                wire::PROTOCOL_VERSION
            ),
        ));
    }
    // ipc-channel unwraps a CString of the name: refuse one with a NUL byte first.
    if welcome.server_name.is_empty() || welcome.server_name.contains('\0') {
        return Err(failed(
            "welcome",
            &"the one-shot server's name is empty or holds a NUL",
        ));
    }
    let bootstrap: IpcSender<Bootstrap> =
        IpcSender::connect(welcome.server_name).map_err(|e| failed("one-shot server", &e))?;
    let (data, receiver) = ipc::bytes_channel().map_err(|e| failed("channel", &e))?;
    let mut first = hello();
    first.token = welcome.token;
    let first = wire::codec()
        .serialize(&Message::Hello(first))
        .map_err(|e| failed("hello", &e))?;
    bootstrap
        .send(Bootstrap {
            hello: ByteBuf::from(first),
            data: receiver,
        })
        .map_err(|e| failed("bootstrap", &e))?;
    wire::read_registered(&mut stream).map_err(|e| failed("registration", &e))?;
    let mut framed = Vec::new();
    wire::frame(
        &Message::Goodbye {
            reason: GoodbyeReason::Finalize,
            seq_high: 0,
            dropped: 0,
            sent: 0,
        },
        &mut framed,
    )
    .map_err(|e| failed("goodbye", &e))?;
    data.send(&framed).map_err(|e| failed("goodbye", &e))?;
    drop(data);
    drop(stream);
    Ok(Accepted {
        protocol_version: welcome.protocol_version,
        run_id: welcome.run_id,
    })
}
