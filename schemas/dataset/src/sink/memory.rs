//! A Parquet file encoded in memory and stored whole, for a writer that must be able to try
//! again: [`MemorySink`] encodes (no I/O, so it cannot fail on a full disk), [`store_with`]
//! writes the bytes the way [`ParquetSink`](super::ParquetSink) does (temporary name, fsync, a
//! no-replace link into place). When the store fails the caller still holds the bytes.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::Sealed;

/// A Parquet file being encoded into memory.
pub struct MemorySink {
    writer: ArrowWriter<Vec<u8>>,
    rows: u64,
}

impl MemorySink {
    pub fn new(schema: SchemaRef, properties: WriterProperties) -> io::Result<MemorySink> {
        let writer =
            ArrowWriter::try_new(Vec::new(), schema, Some(properties)).map_err(io::Error::other)?;
        Ok(MemorySink { writer, rows: 0 })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> io::Result<()> {
        self.writer.write(batch).map_err(io::Error::other)?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds a key-value metadata entry to the file footer.
    pub fn add_metadata(&mut self, key: &str, value: String) {
        self.writer
            .append_key_value_metadata(KeyValue::new(key.to_owned(), value));
    }

    /// Memory this file holds: row groups encoded so far plus the one in progress.
    pub fn memory_bytes(&self) -> usize {
        self.writer.inner().len() + self.writer.memory_size()
    }

    /// The complete file (footer written).
    pub fn finish(self) -> io::Result<Vec<u8>> {
        self.writer.into_inner().map_err(io::Error::other)
    }
}

/// Stores the complete file `bytes` at `final_path`: written as `temp_dir/<name>.tmp`, fsynced,
/// linked into place without replacing anything, the temporary name removed, the folder fsynced;
/// `hook("before-rename")` and `hook("after-rename")` around the link (crash injection). On an
/// error nothing is left under the temporary name. Safe to call again after an error: a file
/// already at `final_path` with exactly these bytes (an earlier try placed it, then failed) is
/// success; any other file there is an error.
pub fn store_with(
    temp_dir: &Path,
    final_path: &Path,
    bytes: &[u8],
    hook: impl Fn(&str),
) -> io::Result<PathBuf> {
    if fs::read(final_path).is_ok_and(|there| there == bytes) {
        return Ok(final_path.to_owned());
    }
    let name = final_path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "final path has no file name")
    })?;
    fs::create_dir_all(temp_dir)?;
    let temp_path = temp_dir.join(format!("{}.tmp", name.to_string_lossy()));
    // Only this writer uses this name: a leftover is its own failed try.
    let _ = fs::remove_file(&temp_path);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp_path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()?;
            if let Some(parent) = final_path.parent() {
                fs::create_dir_all(parent)?;
            }
            Ok(())
        });
    if let Err(error) = written {
        let _ = fs::remove_file(&temp_path);
        return Err(error);
    }
    let sealed = Sealed {
        temp_path,
        final_path: final_path.to_owned(),
        placed: false,
    };
    hook("before-rename");
    let path = sealed.place()?;
    hook("after-rename");
    Ok(path)
}
