//! Setting up where the recorder writes and listens: the dataset's folders (their layout is
//! `p11trace_dataset::layout`'s) and the socket, under the folder rule `p11trace_record::socket`
//! shares with the shim.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use p11trace_dataset::layout::Layout;
use p11trace_record::socket::{self, Untrusted, socket_folder};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SetupError {
    // The cause is the error's source: `{error:#}` prints it once.
    #[error("cannot create {path}")]
    Create { path: PathBuf, source: io::Error },
    #[error("refusing to start: socket folder {path} {why}; {}", advice(.why))]
    Untrusted { path: PathBuf, why: Untrusted },
    #[error("another recorder is already listening on {0}")]
    InUse(PathBuf),
    #[error("dataset {path} is in use by {holder}; stop it first, or use another --dataset")]
    Locked { path: PathBuf, holder: String },
    #[error("cannot lock {path}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot listen on {path}")]
    Bind { path: PathBuf, source: io::Error },
}

fn advice(why: &Untrusted) -> &'static str {
    match why {
        Untrusted::Foreign { .. } => "use --socket with a folder of your own",
        Untrusted::Open { .. } => "another user could replace the socket. Use a 0700 folder",
    }
}

/// Creates a folder and its missing parents, 0700.
fn private_dir(folder: &Path) -> Result<(), SetupError> {
    p11trace_dataset::layout::private_dir(folder).map_err(|source| SetupError::Create {
        path: folder.to_owned(),
        source,
    })
}

/// Takes the dataset for this process: an exclusive `flock` on `DIR/.lock`, held until the
/// returned file is dropped (the process's end). Taken before recovery or anything else touches
/// the dataset: a second recorder on a live dataset fails here, having changed nothing but, at
/// most, creating the folder and the lock file of a dataset that did not exist.
pub fn lock(root: &Path) -> Result<fs::File, SetupError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    private_dir(root)?;
    let path = root.join(".lock");
    let failed = |source| SetupError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "another recorder".to_owned(),
            };
            return Err(SetupError::Locked {
                path: root.to_owned(),
                holder,
            });
        }
        Err(fs::TryLockError::Error(source)) => return Err(failed(source)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(failed)?;
    Ok(file)
}

/// Creates the dataset's folders (both tables, the temporary folder, the log; 0700) and returns
/// its layout.
pub fn open(root: &Path) -> Result<Layout, SetupError> {
    let layout = Layout::new(root);
    let [calls, clients, temp] = layout.folders();
    for folder in [calls, clients, temp, layout.wal()] {
        private_dir(&folder)?;
    }
    Ok(layout)
}

/// Creates (0700) or checks the socket's folder, removes a stale socket, and listens (0600).
pub fn listen(socket: &Path) -> Result<UnixListener, SetupError> {
    let folder = socket_folder(socket);
    if !folder.exists() {
        private_dir(folder)?;
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
