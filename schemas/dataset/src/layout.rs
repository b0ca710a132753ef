//! The dataset folder, and its one owner: where each table's files go, how they are named, and how
//! readers find them.
//!
//! ```text
//! DIR/calls/date=YYYY-MM-DD/part-….parquet     hive partitions by the UTC date of `start`
//! DIR/clients/date=YYYY-MM-DD/part-….parquet
//! DIR/.tmp/      files being written (renamed into place complete)
//! DIR/.wal/      the recorder's write-ahead log
//! DIR/.lock      held (flock) by the recorder writing the dataset
//! ```
//!
//! Hidden entries (`.tmp`, `.wal`, anything starting with `.`) are never data: [`parquet_files`]
//! skips them, as DuckDB's and Spark's globs over `calls/**/*.parquet` do.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The `calls` table's folder name.
pub const CALLS: &str = "calls";
/// The `clients` table's folder name.
pub const CLIENTS: &str = "clients";

/// The two tables of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Calls,
    Clients,
}

impl Table {
    /// Its folder name: [`CALLS`] or [`CLIENTS`].
    pub fn name(self) -> &'static str {
        match self {
            Table::Calls => CALLS,
            Table::Clients => CLIENTS,
        }
    }
}

/// Paths inside one dataset folder.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_owned(),
        }
    }

    /// The folders a writer needs before it starts: both tables and the temporary folder.
    pub fn folders(&self) -> [PathBuf; 3] {
        [self.table(CALLS), self.table(CLIENTS), self.temp()]
    }

    pub fn table(&self, table: &str) -> PathBuf {
        self.root.join(table)
    }

    /// Where files are written before they are renamed into place.
    pub fn temp(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    /// The recorder's write-ahead log.
    pub fn wal(&self) -> PathBuf {
        self.root.join(".wal")
    }

    /// A spool's files already uploaded to object storage, kept (same relative names) until
    /// the write-ahead log no longer holds their rows: recovery reads their keys so it does not
    /// write those rows again.
    pub fn uploaded(&self) -> Layout {
        Layout::new(&self.root.join(".uploaded"))
    }

    /// The hive partition of `table` for a UTC `date` (`YYYY-MM-DD`, or `unknown`).
    pub fn partition(&self, table: &str, date: &str) -> PathBuf {
        self.table(table).join(format!("date={date}"))
    }

    /// Final path of a part file of `table` for `date`.
    pub fn part(&self, table: &str, date: &str, name: &str) -> PathBuf {
        self.partition(table, date).join(name)
    }
}

/// Creates a folder and its missing parents, 0700 (rows hold labels, ids and executable paths).
pub fn private_dir(folder: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
}

/// The file name of a producer's `n`-th part file: `part-<producer>-<n>.parquet`, where
/// `producer` names the writer and its run (a recorder's start time, an import's run id), so
/// writers sharing a folder never collide.
pub fn part_name(producer: &str, n: u64) -> String {
    format!("part-{producer}-{n:06}.parquet")
}

/// Every `.parquet` file below `folder`, sorted, skipping hidden entries (`.tmp`, `.wal`).
pub fn parquet_files(folder: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![folder.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| in_folder(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| in_folder(&dir, e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if entry.file_type().map_err(|e| in_folder(&dir, e))?.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn in_folder(dir: &Path, error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("cannot read folder {}: {error}", dir.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_finds_parts_and_skips_hidden_folders() {
        let dir = std::env::temp_dir().join(format!("p11trace-layout-{}", std::process::id()));
        let layout = Layout::new(&dir);
        let part = layout.part(CALLS, "2026-12-01", &part_name("r1", 3));
        fs::create_dir_all(part.parent().unwrap()).unwrap();
        fs::write(&part, b"PAR1").unwrap();
        fs::create_dir_all(layout.temp()).unwrap();
        fs::write(layout.temp().join("x.parquet"), b"PAR1").unwrap();
        fs::write(layout.table(CALLS).join("notes.txt"), b"").unwrap();
        let found = parquet_files(&layout.root).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, vec![part.clone()]);
        assert!(part.ends_with("calls/date=2026-12-01/part-r1-000003.parquet"));
    }
}
