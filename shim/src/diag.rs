//! The shim's only voice: one stderr line per kind of problem, never stdout (some hosts speak a
//! protocol on it), written with a single `write(2)` so lines from threads never interleave.

use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};

/// Kinds of problems; each is reported at most once per process (per fork generation).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Problem {
    ModuleLoad = 1 << 0,
    SocketFolder = 1 << 2,
    Handshake = 1 << 3,
    Panic = 1 << 4,
    AuditRefused = 1 << 5,
    Config = 1 << 6,
    Thread = 1 << 7,
}

static REPORTED: AtomicU32 = AtomicU32::new(0);

/// Writes `p11trace: <message>` to stderr unless `problem` was reported before.
pub fn report(problem: Problem, message: std::fmt::Arguments<'_>) {
    let bit = problem as u32;
    if REPORTED.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
        return;
    }
    let mut line = Vec::with_capacity(160);
    let _ = writeln!(line, "p11trace: {message}");
    // SAFETY: writes a buffer we own to fd 2; the result is deliberately ignored (a host with a
    // closed stderr must not be disturbed).
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
    }
}

/// Lets a forked child report again what its parent already reported.
pub fn reset_after_fork() {
    REPORTED.store(0, Ordering::Relaxed);
}
