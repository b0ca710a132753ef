//! The one Parquet writer every producer uses: zstd, the schema version in the footer, and files
//! that appear at their final path only complete (written in a temporary folder, fsynced, renamed).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::schema::{SCHEMA_VERSION, SCHEMA_VERSION_KEY, TABLE_KEY};

mod memory;
pub use memory::{MemorySink, store_with};

/// Writer settings shared by every p11trace Parquet file: zstd, dictionaries for the repetitive
/// string columns, delta encoding for the monotonic integer columns, and the schema version (plus
/// `extra` entries) in the key-value metadata.
pub fn writer_properties(table: &str, extra: &[(String, String)]) -> WriterProperties {
    let mut metadata = vec![
        KeyValue::new(SCHEMA_VERSION_KEY.to_owned(), SCHEMA_VERSION.to_string()),
        KeyValue::new(TABLE_KEY.to_owned(), table.to_owned()),
    ];
    metadata.extend(
        extra
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    let mut builder = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("zstd level 3 is valid"),
        ))
        .set_key_value_metadata(Some(metadata))
        .set_max_row_group_row_count(Some(1 << 20));
    for column in ["seq", "start", "dur_ns"] {
        let path = ColumnPath::from(column);
        builder = builder
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
    }
    builder.build()
}

/// A Parquet file being written in a temporary folder; it appears at its final path, complete,
/// only when [`finish`](Self::finish) renames it there. Dropped unfinished, it removes itself.
pub struct ParquetSink {
    temp_path: PathBuf,
    final_path: PathBuf,
    writer: Option<ArrowWriter<File>>,
    rows: u64,
}

impl ParquetSink {
    /// Starts a file that will become `final_path`, written as `temp_dir/<final name>.tmp`.
    pub fn create(
        temp_dir: &Path,
        final_path: &Path,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> io::Result<ParquetSink> {
        fs::create_dir_all(temp_dir)?;
        let name = final_path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "final path has no file name")
        })?;
        let temp_path = temp_dir.join(format!("{}.tmp", name.to_string_lossy()));
        // Private to the user whatever the umask: rows hold labels, ids and executable paths.
        // Never another writer's file: a name already taken is an error, not a truncation.
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)?;
        let writer =
            ArrowWriter::try_new(file, schema, Some(properties)).map_err(io::Error::other)?;
        Ok(ParquetSink {
            temp_path,
            final_path: final_path.to_owned(),
            writer: Some(writer),
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> io::Result<()> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("sink already finished"))?;
        writer.write(batch).map_err(io::Error::other)?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds a key-value metadata entry to the file footer.
    pub fn add_metadata(&mut self, key: &str, value: String) {
        if let Some(writer) = self.writer.as_mut() {
            writer.append_key_value_metadata(KeyValue::new(key.to_owned(), value));
        }
    }

    /// Bytes of encoded rows buffered for the current row group (memory held by this sink).
    pub fn buffered_bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, ArrowWriter::memory_size)
    }

    /// Closes the file, makes it durable, and renames it into place. Returns its final path.
    pub fn finish(self) -> io::Result<PathBuf> {
        self.finish_with(|_| {})
    }

    /// [`finish`](Self::finish), calling `hook("before-rename")` once the temporary file is
    /// complete and durable and `hook("after-rename")` once it is in place (crash injection).
    pub fn finish_with(self, hook: impl Fn(&str)) -> io::Result<PathBuf> {
        let sealed = self.seal()?;
        hook("before-rename");
        let path = sealed.place()?;
        hook("after-rename");
        Ok(path)
    }

    /// The first half of [`finish`](Self::finish): the temporary file complete and durable, not
    /// yet in place. A writer of several files seals them all before placing any, so a failure
    /// leaves none of them looking complete.
    pub fn seal(mut self) -> io::Result<Sealed> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("sink already finished"))?;
        let complete = writer
            .into_inner()
            .map_err(io::Error::other)
            .and_then(|file| {
                file.sync_all()?;
                if let Some(parent) = self.final_path.parent() {
                    fs::create_dir_all(parent)?;
                }
                Ok(())
            });
        if let Err(error) = complete {
            let _ = fs::remove_file(&self.temp_path);
            return Err(error);
        }
        Ok(Sealed {
            temp_path: std::mem::take(&mut self.temp_path),
            final_path: std::mem::take(&mut self.final_path),
            placed: false,
        })
    }
}

/// A sealed sink's file: complete under its temporary name (removed if dropped unplaced).
#[derive(Debug)]
pub struct Sealed {
    temp_path: PathBuf,
    final_path: PathBuf,
    placed: bool,
}

impl Sealed {
    /// Where [`place`](Self::place) puts it.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Into place without replacing anything (a link fails if the name is taken), then the
    /// temporary name goes: a crash in between leaves a duplicate under `.tmp/`, never a loss.
    pub fn place(mut self) -> io::Result<PathBuf> {
        if let Err(error) = fs::hard_link(&self.temp_path, &self.final_path) {
            return Err(io::Error::new(
                error.kind(),
                format!(
                    "cannot move {} into place: {error}",
                    self.final_path.display()
                ),
            ));
        }
        self.placed = true;
        fs::remove_file(&self.temp_path)?;
        let parent = self
            .final_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(parent)?.sync_all()?;
        Ok(self.final_path.clone())
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallsBuilder, calls_schema};

    #[test]
    fn a_taken_name_is_an_error_and_the_file_there_survives() {
        let dir = std::env::temp_dir().join(format!("p11trace-sink-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("part-x-000001.parquet");
        fs::write(&target, b"already here").unwrap();
        let mut sink = ParquetSink::create(
            &dir.join(".tmp"),
            &target,
            calls_schema(),
            writer_properties("calls", &[]),
        )
        .unwrap();
        sink.write(&CallsBuilder::new().finish()).unwrap();
        let result = sink.finish();
        let kept = fs::read(&target).unwrap();
        let leftovers = fs::read_dir(dir.join(".tmp")).unwrap().count();
        fs::remove_dir_all(&dir).unwrap();
        assert!(result.is_err(), "a finished sink replaced an existing file");
        assert_eq!(kept, b"already here");
        assert_eq!(leftovers, 0);
    }
}
