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

/// `YYYY-MM-DD` (UTC) of a timestamp in microseconds since the epoch.
pub fn utc_date(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(utc_date(951_782_400_000_000), "2000-02-29");
        assert_eq!(utc_date(1_795_564_800_000_000), "2026-11-25");
    }
}
