//! The builders that turn [`CallRow`]s and [`ClientRow`]s into Arrow record batches of
//! [`calls_schema`] and [`clients_schema`].

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field};
use p11trace_record::attr::AttrType;
use p11trace_record::names;
use p11trace_record::policy::render_value;

use crate::rows::{CallRow, ClientRow};
use crate::schema::{attr_fields, calls_schema, clients_schema};

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
                    let redacted = matches!(attr.value, p11trace_record::attr::AttrValue::Redacted);
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
