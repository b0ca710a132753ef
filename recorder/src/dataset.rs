//! The dataset folder and the socket: paths, naming, and the permission rules both must obey.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error(
        "refusing to start: socket folder {path} is owned by uid {owner}, not by us (uid {uid}); \
         use --socket with a folder of your own"
    )]
    ForeignFolder { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "refusing to start: socket folder {path} is group- or world-writable (mode {mode:o}); \
         another user could replace the socket. Use a 0700 folder"
    )]
    OpenFolder { path: PathBuf, mode: u32 },
    #[error("another recorder is already listening on {0}")]
    InUse(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Layout of a dataset folder.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
}

impl Dataset {
    pub fn open(root: &Path) -> Result<Dataset, SetupError> {
        let dataset = Dataset {
            root: root.to_owned(),
        };
        for folder in [
            dataset.table("calls"),
            dataset.table("clients"),
            dataset.temp(),
            dataset.wal(),
        ] {
            fs::create_dir_all(&folder).map_err(|source| SetupError::Create {
                path: folder.clone(),
                source,
            })?;
        }
        Ok(dataset)
    }

    pub fn table(&self, table: &str) -> PathBuf {
        self.root.join(table)
    }

    /// Where files are written before they are renamed into place.
    pub fn temp(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    pub fn wal(&self) -> PathBuf {
        self.root.join(".wal")
    }

    /// Final path of a part file of `table` for `date` (hive partition `date=YYYY-MM-DD`).
    pub fn part(&self, table: &str, date: &str, name: &str) -> PathBuf {
        self.table(table).join(format!("date={date}")).join(name)
    }
}

pub use p11trace_schema::time::utc_date;

pub fn current_uid() -> u32 {
    // SAFETY: getuid never fails.
    unsafe { libc::getuid() }
}

/// Creates (0700) or checks the socket's folder, removes a stale socket, and listens (0600).
pub fn listen(socket: &Path) -> Result<UnixListener, SetupError> {
    let folder = socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let uid = current_uid();
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
    if metadata.uid() != uid {
        return Err(SetupError::ForeignFolder {
            path: folder.to_owned(),
            owner: metadata.uid(),
            uid,
        });
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(SetupError::OpenFolder {
            path: folder.to_owned(),
            mode: metadata.mode() & 0o7777,
        });
    }
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
