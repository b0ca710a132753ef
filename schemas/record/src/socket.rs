//! Where the recorder listens, and the rule both ends apply before trusting a socket's folder.

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The recorder's default socket: `/run/user/<uid>/p11trace.sock` where that folder exists, else
/// `/tmp/p11trace-<uid>/p11trace.sock`. Derived from the uid alone, so a login shell, cron and a
/// service of the same user agree.
pub fn default_socket_path(uid: u32) -> PathBuf {
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        run_user.join("p11trace.sock")
    } else {
        PathBuf::from(format!("/tmp/p11trace-{uid}/p11trace.sock"))
    }
}

/// The calling process's effective uid.
pub fn current_uid() -> u32 {
    // The effective uid: a setuid process's records belong to the identity it runs as, not to
    // the user who started it (whose own "recorder" would otherwise receive them).
    // SAFETY: geteuid has no preconditions and never fails.
    unsafe { libc::geteuid() }
}

/// The folder holding `socket` (`.` for a bare file name).
pub fn socket_folder(socket: &Path) -> &Path {
    socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Why a socket folder is not to be trusted: another user could plant or replace the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    /// The folder belongs to another uid.
    Foreign { owner: u32, uid: u32 },
    /// The folder is group- or world-writable.
    Open { mode: u32 },
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untrusted::Foreign { owner, uid } => {
                write!(f, "is owned by uid {owner}, not by us (uid {uid})")
            }
            Untrusted::Open { mode } => {
                write!(f, "is group- or world-writable (mode {mode:o})")
            }
        }
    }
}

/// The one rule the shim (before connecting) and the recorder (before listening) apply to the
/// socket's folder: it must belong to the calling uid and not be group- or world-writable.
pub fn check_folder(metadata: &Metadata) -> Result<(), Untrusted> {
    let uid = current_uid();
    if metadata.uid() != uid {
        return Err(Untrusted::Foreign {
            owner: metadata.uid(),
            uid,
        });
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(Untrusted::Open {
            mode: metadata.mode() & 0o7777,
        });
    }
    Ok(())
}
