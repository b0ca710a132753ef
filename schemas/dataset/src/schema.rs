//! Schema v1 in Arrow form: the `calls` and `clients` tables (column types follow
//! `schemas/calls.md`: every integer is Int64, a `CK_ULONG` keeping its bit pattern; every string
//! plain Utf8; timestamps `Timestamp(µs, UTC)`), and the keys of their Parquet metadata.

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Version of the dataset schema (`p11trace.schema_version` in every Parquet file).
pub const SCHEMA_VERSION: u32 = 1;

/// Parquet key-value metadata key holding the schema version.
pub const SCHEMA_VERSION_KEY: &str = "p11trace.schema_version";
/// Parquet key-value metadata key naming the table (`calls`, `clients`).
pub const TABLE_KEY: &str = "p11trace.table";

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub(crate) fn attr_fields() -> Fields {
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
