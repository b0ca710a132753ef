//! The archive's Parquet encoder: rows gathered from many batches (in the archive's sort order)
//! and encoded on two threads, each gathering and encoding half of the columns — the gather of
//! strings and the column encoders are most of an archive run's time, and one `ArrowWriter`
//! does both on one core. Same writer settings as every p11trace file (`writer_properties`),
//! the Arrow schema embedded as `ArrowWriter` embeds it, output deterministic for given input.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use arrow_select::interleave::interleave;
use parquet::arrow::ArrowSchemaConverter;
use parquet::arrow::add_encoded_arrow_schema_to_metadata;
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

/// Rows per row group, as the dataset writer's.
const ROW_GROUP_ROWS: usize = 1 << 20;

/// One file being encoded.
pub struct Encoder {
    schema: SchemaRef,
    writer: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    /// Parquet leaf columns of each Arrow field (a list of structs has several).
    leaves: Vec<usize>,
    /// The open row group: each field's column writers, and its rows.
    group: Option<(Vec<Vec<ArrowColumnWriter>>, usize)>,
    row_groups: usize,
}

impl Encoder {
    /// Creates `path` (mode 0600; it must not exist).
    pub fn create(
        path: &Path,
        schema: SchemaRef,
        mut properties: WriterProperties,
    ) -> Result<Encoder> {
        add_encoded_arrow_schema_to_metadata(&schema, &mut properties);
        let properties = Arc::new(properties);
        let parquet_schema = ArrowSchemaConverter::new()
            .with_coerce_types(properties.coerce_types())
            .convert(&schema)?;
        let leaves = schema
            .fields()
            .iter()
            .map(|field| {
                parquet_schema
                    .columns()
                    .iter()
                    .filter(|c| c.path().parts().first() == Some(field.name()))
                    .count()
            })
            .collect();
        if let Some(folder) = path.parent() {
            crate::seal::private_dir(folder)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let writer = SerializedFileWriter::new(file, parquet_schema.root_schema_ptr(), properties)?;
        let factory = ArrowRowGroupWriterFactory::new(&writer, schema.clone());
        Ok(Encoder {
            schema,
            writer,
            factory,
            leaves,
            group: None,
            row_groups: 0,
        })
    }

    /// Appends the rows `indices` names — (batch, row) into `sources` — in that order.
    pub fn write(&mut self, sources: &[&RecordBatch], indices: &[(usize, usize)]) -> Result<()> {
        if self.group.is_none() {
            let mut writers = self
                .factory
                .create_column_writers(self.row_groups)?
                .into_iter();
            let fields = self
                .leaves
                .iter()
                .map(|&n| writers.by_ref().take(n).collect())
                .collect();
            self.group = Some((fields, 0));
        }
        let schema = &self.schema;
        let (fields, rows) = self.group.as_mut().expect("a row group is open");
        let mut halves: [Vec<(usize, &mut Vec<ArrowColumnWriter>)>; 2] = [Vec::new(), Vec::new()];
        for (index, writers) in fields.iter_mut().enumerate() {
            halves[index % 2].push((index, writers));
        }
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let handles: Vec<_> = halves
                .into_iter()
                .map(|half| {
                    scope.spawn(move || -> Result<()> {
                        for (index, writers) in half {
                            let columns: Vec<&dyn Array> =
                                sources.iter().map(|b| b.column(index).as_ref()).collect();
                            let gathered = interleave(&columns, indices)?;
                            let leaves = compute_leaves(schema.field(index), &gathered)?;
                            for (leaf, writer) in leaves.iter().zip(writers.iter_mut()) {
                                writer.write(leaf)?;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("an encoder thread panicked")))
                })
                .collect()
        });
        results.into_iter().collect::<Result<()>>()?;
        *rows += indices.len();
        if *rows >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Bytes the file has so far, with the open row group's estimated encoded size.
    pub fn size_estimate(&self) -> usize {
        let open: usize = self.group.as_ref().map_or(0, |(fields, _)| {
            fields
                .iter()
                .flatten()
                .map(ArrowColumnWriter::get_estimated_total_bytes)
                .sum()
        });
        self.writer.bytes_written() + open
    }

    fn flush(&mut self) -> Result<()> {
        let Some((fields, _)) = self.group.take() else {
            return Ok(());
        };
        let mut row_group = self.writer.next_row_group()?;
        for writer in fields.into_iter().flatten() {
            writer.close()?.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.row_groups += 1;
        Ok(())
    }

    /// Writes the last row group and the footer, and makes the file durable.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        let file = self.writer.into_inner()?;
        file.sync_all()?;
        Ok(())
    }
}
