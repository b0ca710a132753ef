//! Schema v1 in Arrow form, the builders that turn rows into record batches, and the one Parquet
//! writer every producer uses (feature `arrow`; the shim never links this).
//!
//! Column types follow `schemas/calls.md`: every integer is Int64 (a `CK_ULONG` keeps its bit
//! pattern), every string plain Utf8, timestamps `Timestamp(µs, UTC)`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, Int64Builder, ListBuilder, RecordBatch, StringBuilder, StructBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::attrs::render_value;
use crate::names;
use crate::row::{CallRow, ClientRow};
use crate::wire::AttrType;

/// Parquet key-value metadata key holding the schema version.
pub const SCHEMA_VERSION_KEY: &str = "p11trace.schema_version";
/// Parquet key-value metadata key naming the table (`calls`, `clients`).
pub const TABLE_KEY: &str = "p11trace.table";

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn attr_fields() -> Fields {
    Fields::from(vec![
        Field::new("template", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("type_code", DataType::Int64, true),
        Field::new("len", DataType::Int64, false),
        Field::new("value", DataType::Utf8, true),
        Field::new("redacted", DataType::Boolean, false),
    ])
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("element", item, false)))
}

/// The Arrow schema of the `calls` table.
pub fn calls_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use DataType::{Boolean, Int64, Utf8};
            let column = |name: &str, data_type: DataType, nullable: bool| {
                Field::new(name, data_type, nullable)
            };
            Arc::new(Schema::new(vec![
                column("run_id", Utf8, false),
                column("client_id", Utf8, false),
                column("source", Utf8, false),
                column("host", Utf8, true),
                column("pid", Int64, true),
                column("tid", Int64, true),
                column("process", Utf8, true),
                column("module", Utf8, false),
                column("provider", Utf8, true),
                column("interface_version", Utf8, true),
                column("seq", Int64, false),
                column("start", utc_micros(), true),
                column("start_local", Boolean, false),
                column("dur_ns", Int64, true),
                column("func", Utf8, false),
                column("internal", Boolean, false),
                column("returned", Boolean, false),
                column("rv", Int64, true),
                column("rv_name", Utf8, true),
                column("slot_id", Int64, true),
                column("session", Int64, true),
                column("mechanism", Utf8, true),
                column("mech_code", Int64, true),
                column("mech_params", Utf8, true),
                column("object", Int64, true),
                column("object2", Int64, true),
                column("out_objects", list_of(Int64), true),
                column("user_type", Utf8, true),
                column("in_len", Int64, true),
                column("out_len", Int64, true),
                column("ck_flags", Int64, true),
                column("op_id", Int64, true),
                column("attrs", list_of(DataType::Struct(attr_fields())), true),
            ]))
        })
        .clone()
}

/// The Arrow schema of the `clients` table.
pub fn clients_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use DataType::{Int64, Utf8};
            let column = |name: &str, data_type: DataType, nullable: bool| {
                Field::new(name, data_type, nullable)
            };
            Arc::new(Schema::new(vec![
                column("run_id", Utf8, false),
                column("client_id", Utf8, false),
                column("connection", Int64, false),
                column("host", Utf8, true),
                column("pid", Int64, false),
                column("ppid", Int64, true),
                column("uid", Int64, true),
                column("process", Utf8, true),
                column("exe", Utf8, true),
                column("module", Utf8, false),
                column("provider", Utf8, true),
                column("shim_version", Utf8, false),
                column("protocol_version", Int64, false),
                column("redaction", Utf8, false),
                column("connected_at", utc_micros(), false),
                column("disconnected_at", utc_micros(), true),
                column("records", Int64, false),
                column("seq_start", Int64, false),
                column("seq_end", Int64, true),
                column("dropped", Int64, false),
                column("lost", Int64, false),
                column("disconnect_reason", Utf8, true),
            ]))
        })
        .clone()
}

fn as_i64(value: Option<u64>) -> Option<i64> {
    value.map(|v| v as i64)
}

/// Accumulates [`CallRow`]s into a `calls` record batch.
pub struct CallsBuilder {
    run_id: StringBuilder,
    client_id: StringBuilder,
    source: StringBuilder,
    host: StringBuilder,
    pid: Int64Builder,
    tid: Int64Builder,
    process: StringBuilder,
    module: StringBuilder,
    provider: StringBuilder,
    interface_version: StringBuilder,
    seq: Int64Builder,
    start: TimestampMicrosecondBuilder,
    start_local: BooleanBuilder,
    dur_ns: Int64Builder,
    func: StringBuilder,
    internal: BooleanBuilder,
    returned: BooleanBuilder,
    rv: Int64Builder,
    rv_name: StringBuilder,
    slot_id: Int64Builder,
    session: Int64Builder,
    mechanism: StringBuilder,
    mech_code: Int64Builder,
    mech_params: StringBuilder,
    object: Int64Builder,
    object2: Int64Builder,
    out_objects: ListBuilder<Int64Builder>,
    user_type: StringBuilder,
    in_len: Int64Builder,
    out_len: Int64Builder,
    ck_flags: Int64Builder,
    op_id: Int64Builder,
    attrs: ListBuilder<StructBuilder>,
    rows: usize,
}

impl Default for CallsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl CallsBuilder {
    pub fn new() -> CallsBuilder {
        let list_field = |data_type| Arc::new(Field::new("element", data_type, false));
        CallsBuilder {
            run_id: StringBuilder::new(),
            client_id: StringBuilder::new(),
            source: StringBuilder::new(),
            host: StringBuilder::new(),
            pid: Int64Builder::new(),
            tid: Int64Builder::new(),
            process: StringBuilder::new(),
            module: StringBuilder::new(),
            provider: StringBuilder::new(),
            interface_version: StringBuilder::new(),
            seq: Int64Builder::new(),
            start: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            start_local: BooleanBuilder::new(),
            dur_ns: Int64Builder::new(),
            func: StringBuilder::new(),
            internal: BooleanBuilder::new(),
            returned: BooleanBuilder::new(),
            rv: Int64Builder::new(),
            rv_name: StringBuilder::new(),
            slot_id: Int64Builder::new(),
            session: Int64Builder::new(),
            mechanism: StringBuilder::new(),
            mech_code: Int64Builder::new(),
            mech_params: StringBuilder::new(),
            object: Int64Builder::new(),
            object2: Int64Builder::new(),
            out_objects: ListBuilder::new(Int64Builder::new())
                .with_field(list_field(DataType::Int64)),
            user_type: StringBuilder::new(),
            in_len: Int64Builder::new(),
            out_len: Int64Builder::new(),
            ck_flags: Int64Builder::new(),
            op_id: Int64Builder::new(),
            attrs: ListBuilder::new(StructBuilder::from_fields(attr_fields(), 0))
                .with_field(list_field(DataType::Struct(attr_fields()))),
            rows: 0,
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn append(&mut self, row: &CallRow<'_>) {
        self.run_id.append_value(row.run_id);
        self.client_id.append_value(row.client_id);
        self.source
            .append_value(row.source.map_or("unknown", |s| s.as_str()));
        self.host.append_option(row.host);
        self.pid.append_option(row.pid);
        self.tid.append_option(row.tid);
        self.process.append_option(row.process);
        self.module.append_value(row.module);
        self.provider.append_option(row.provider);
        self.interface_version.append_option(row.interface_version);
        self.seq.append_value(row.seq);
        self.start.append_option(row.start_us);
        self.start_local.append_value(row.start_local);
        self.dur_ns.append_option(row.dur_ns);
        self.func.append_value(row.func);
        self.internal.append_value(row.internal);
        self.returned.append_value(row.returned);
        self.rv.append_option(as_i64(row.rv));
        self.rv_name
            .append_option(row.rv.map(|rv| names::RV.render(rv)));
        self.slot_id.append_option(as_i64(row.slot_id));
        self.session.append_option(as_i64(row.session));
        self.mechanism
            .append_option(row.mechanism.map(|m| names::MECHANISM.render(m)));
        self.mech_code.append_option(as_i64(row.mechanism));
        self.mech_params.append_option(row.mech_params);
        self.object.append_option(as_i64(row.object));
        self.object2.append_option(as_i64(row.object2));
        match row.out_objects {
            Some(handles) => {
                self.out_objects
                    .values()
                    .extend(handles.iter().map(|&h| Some(h as i64)));
                self.out_objects.append(true);
            }
            None => self.out_objects.append(false),
        }
        self.user_type
            .append_option(row.user_type.map(|u| names::USER.render(u)));
        self.in_len.append_option(row.in_len);
        self.out_len.append_option(row.out_len);
        self.ck_flags.append_option(as_i64(row.ck_flags));
        self.op_id.append_option(as_i64(row.op_id));
        match row.attrs {
            Some(attrs) => {
                let entries = self.attrs.values();
                for attr in attrs {
                    let (type_name, type_code) = match attr.kind {
                        AttrType::Attribute(code) => {
                            (names::ATTRIBUTE.render(code), Some(code as i64))
                        }
                        AttrType::Field(field) => (field.name().into(), None),
                    };
                    let value = render_value(attr.kind, &attr.value);
                    let redacted = matches!(attr.value, crate::wire::AttrValue::Redacted);
                    string_field(entries, 0).append_value(attr.template.as_str());
                    string_field(entries, 1).append_value(type_name);
                    int_field(entries, 2).append_option(type_code);
                    int_field(entries, 3).append_value(attr.len);
                    string_field(entries, 4).append_option(value);
                    entries
                        .field_builder::<BooleanBuilder>(5)
                        .expect("attrs.redacted is a BooleanBuilder")
                        .append_value(redacted);
                    entries.append(true);
                }
                self.attrs.append(true);
            }
            None => self.attrs.append(false),
        }
        self.rows += 1;
    }

    /// Takes the rows appended so far as one record batch.
    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.run_id.finish()),
            Arc::new(self.client_id.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.host.finish()),
            Arc::new(self.pid.finish()),
            Arc::new(self.tid.finish()),
            Arc::new(self.process.finish()),
            Arc::new(self.module.finish()),
            Arc::new(self.provider.finish()),
            Arc::new(self.interface_version.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.start_local.finish()),
            Arc::new(self.dur_ns.finish()),
            Arc::new(self.func.finish()),
            Arc::new(self.internal.finish()),
            Arc::new(self.returned.finish()),
            Arc::new(self.rv.finish()),
            Arc::new(self.rv_name.finish()),
            Arc::new(self.slot_id.finish()),
            Arc::new(self.session.finish()),
            Arc::new(self.mechanism.finish()),
            Arc::new(self.mech_code.finish()),
            Arc::new(self.mech_params.finish()),
            Arc::new(self.object.finish()),
            Arc::new(self.object2.finish()),
            Arc::new(self.out_objects.finish()),
            Arc::new(self.user_type.finish()),
            Arc::new(self.in_len.finish()),
            Arc::new(self.out_len.finish()),
            Arc::new(self.ck_flags.finish()),
            Arc::new(self.op_id.finish()),
            Arc::new(self.attrs.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(calls_schema(), columns)
            .expect("CallsBuilder columns match calls_schema()")
    }
}

fn string_field(builder: &mut StructBuilder, index: usize) -> &mut StringBuilder {
    builder
        .field_builder::<StringBuilder>(index)
        .expect("attrs string field")
}

fn int_field(builder: &mut StructBuilder, index: usize) -> &mut Int64Builder {
    builder
        .field_builder::<Int64Builder>(index)
        .expect("attrs int field")
}

/// Accumulates [`ClientRow`]s into a `clients` record batch.
pub struct ClientsBuilder {
    run_id: StringBuilder,
    client_id: StringBuilder,
    connection: Int64Builder,
    host: StringBuilder,
    pid: Int64Builder,
    ppid: Int64Builder,
    uid: Int64Builder,
    process: StringBuilder,
    exe: StringBuilder,
    module: StringBuilder,
    provider: StringBuilder,
    shim_version: StringBuilder,
    protocol_version: Int64Builder,
    redaction: StringBuilder,
    connected_at: TimestampMicrosecondBuilder,
    disconnected_at: TimestampMicrosecondBuilder,
    records: Int64Builder,
    seq_start: Int64Builder,
    seq_end: Int64Builder,
    dropped: Int64Builder,
    lost: Int64Builder,
    disconnect_reason: StringBuilder,
    rows: usize,
}

impl Default for ClientsBuilder {
    fn default() -> Self {
        ClientsBuilder {
            run_id: StringBuilder::new(),
            client_id: StringBuilder::new(),
            connection: Int64Builder::new(),
            host: StringBuilder::new(),
            pid: Int64Builder::new(),
            ppid: Int64Builder::new(),
            uid: Int64Builder::new(),
            process: StringBuilder::new(),
            exe: StringBuilder::new(),
            module: StringBuilder::new(),
            provider: StringBuilder::new(),
            shim_version: StringBuilder::new(),
            protocol_version: Int64Builder::new(),
            redaction: StringBuilder::new(),
            connected_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            disconnected_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            records: Int64Builder::new(),
            seq_start: Int64Builder::new(),
            seq_end: Int64Builder::new(),
            dropped: Int64Builder::new(),
            lost: Int64Builder::new(),
            disconnect_reason: StringBuilder::new(),
            rows: 0,
        }
    }
}

impl ClientsBuilder {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn append(&mut self, row: &ClientRow<'_>) {
        self.run_id.append_value(row.run_id);
        self.client_id.append_value(row.client_id);
        self.connection.append_value(row.connection);
        self.host.append_option(row.host);
        self.pid.append_value(row.pid);
        self.ppid.append_option(row.ppid);
        self.uid.append_option(row.uid);
        self.process.append_option(row.process);
        self.exe.append_option(row.exe);
        self.module.append_value(row.module);
        self.provider.append_option(row.provider);
        self.shim_version.append_value(row.shim_version);
        self.protocol_version.append_value(row.protocol_version);
        self.redaction.append_value(row.redaction);
        self.connected_at.append_value(row.connected_at_us);
        self.disconnected_at.append_option(row.disconnected_at_us);
        self.records.append_value(row.records);
        self.seq_start.append_value(row.seq_start);
        self.seq_end.append_option(row.seq_end);
        self.dropped.append_value(row.dropped);
        self.lost.append_value(row.lost);
        self.disconnect_reason
            .append_option(row.disconnect_reason.map(|r| r.as_str()));
        self.rows += 1;
    }

    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.run_id.finish()),
            Arc::new(self.client_id.finish()),
            Arc::new(self.connection.finish()),
            Arc::new(self.host.finish()),
            Arc::new(self.pid.finish()),
            Arc::new(self.ppid.finish()),
            Arc::new(self.uid.finish()),
            Arc::new(self.process.finish()),
            Arc::new(self.exe.finish()),
            Arc::new(self.module.finish()),
            Arc::new(self.provider.finish()),
            Arc::new(self.shim_version.finish()),
            Arc::new(self.protocol_version.finish()),
            Arc::new(self.redaction.finish()),
            Arc::new(self.connected_at.finish()),
            Arc::new(self.disconnected_at.finish()),
            Arc::new(self.records.finish()),
            Arc::new(self.seq_start.finish()),
            Arc::new(self.seq_end.finish()),
            Arc::new(self.dropped.finish()),
            Arc::new(self.lost.finish()),
            Arc::new(self.disconnect_reason.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(clients_schema(), columns)
            .expect("ClientsBuilder columns match clients_schema()")
    }
}

/// Writer settings shared by every p11trace Parquet file: zstd, dictionaries for the repetitive
/// string columns, delta encoding for the monotonic integer columns, and the schema version (plus
/// `extra` entries) in the key-value metadata.
pub fn writer_properties(table: &str, extra: &[(String, String)]) -> WriterProperties {
    let mut metadata = vec![
        KeyValue::new(
            SCHEMA_VERSION_KEY.to_owned(),
            crate::SCHEMA_VERSION.to_string(),
        ),
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
        let file = File::create(&temp_path)?;
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
    pub fn finish_with(mut self, hook: impl Fn(&str)) -> io::Result<PathBuf> {
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
        hook("before-rename");
        fs::rename(&self.temp_path, &self.final_path)?;
        let parent = self
            .final_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(parent)?.sync_all()?;
        hook("after-rename");
        Ok(self.final_path.clone())
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}
