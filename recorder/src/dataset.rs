//! Setting up where the recorder writes and listens: the dataset's folders (their layout is
//! `p11trace_dataset::layout`'s) and the socket, under the folder rule `p11trace_record::socket`
//! shares with the shim.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use p11trace_dataset::layout::Layout;
use p11trace_record::socket::{self, Untrusted, socket_folder};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("refusing to start: socket folder {path} {why}; {}", advice(.why))]
    Untrusted { path: PathBuf, why: Untrusted },
    #[error("another recorder is already listening on {0}")]
    InUse(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

fn advice(why: &Untrusted) -> &'static str {
    match why {
        Untrusted::Foreign { .. } => "use --socket with a folder of your own",
        Untrusted::Open { .. } => "another user could replace the socket. Use a 0700 folder",
    }
}

/// Creates the dataset's folders (both tables, the temporary folder, the log) and returns its
/// layout.
pub fn open(root: &Path) -> Result<Layout, SetupError> {
    let layout = Layout::new(root);
    let [calls, clients, temp] = layout.folders();
    for folder in [calls, clients, temp, layout.wal()] {
        fs::create_dir_all(&folder).map_err(|source| SetupError::Create {
            path: folder.clone(),
            source,
        })?;
    }
    Ok(layout)
}

/// Creates (0700) or checks the socket's folder, removes a stale socket, and listens (0600).
pub fn listen(socket: &Path) -> Result<UnixListener, SetupError> {
    let folder = socket_folder(socket);
    if !folder.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)
            .map_err(|source| SetupError::Create {
                path: folder.to_owned(),
                source,
            })?;
    }
    let metadata = fs::metadata(folder).map_err(|source| SetupError::Create {
        path: folder.to_owned(),
        source,
    })?;
    socket::check_folder(&metadata).map_err(|why| SetupError::Untrusted {
        path: folder.to_owned(),
        why,
    })?;
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            return Err(SetupError::InUse(socket.to_owned()));
        }
        let _ = fs::remove_file(socket);
    }
    let listener = UnixListener::bind(socket).map_err(|source| SetupError::Bind {
        path: socket.to_owned(),
        source,
    })?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600)).map_err(|source| {
        SetupError::Bind {
            path: socket.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}
