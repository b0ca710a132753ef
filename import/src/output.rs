//! Where imported rows go: one Parquet file, or a dataset folder partitioned by date.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use p11trace_dataset::layout::{CALLS, Layout, part_name};
use p11trace_dataset::time::utc_date;
use p11trace_dataset::{CallRow, Source};
use p11trace_dataset::{CallsBuilder, ParquetSink, calls_schema, writer_properties};

use crate::ImportedCall;

/// Rows go either to one Parquet file or to a dataset folder partitioned by date.
pub(crate) enum Output {
    File(Box<(CallsBuilder, ParquetSink)>),
    Dataset {
        layout: Layout,
        /// Names the part files: `part-<producer>-<n>.parquet`.
        producer: String,
        parts: BTreeMap<String, (CallsBuilder, ParquetSink)>,
    },
}

pub(crate) const FLUSH_ROWS: usize = 64 * 1024;

impl Output {
    pub(crate) fn create(out: &Path, run_id: &str) -> Result<Output> {
        let properties =
            || writer_properties("calls", &[("p11trace.run_id".into(), run_id.to_owned())]);
        if out.extension().is_some_and(|e| e == "parquet") {
            let temp = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let sink = ParquetSink::create(temp, out, calls_schema(), properties())
                .with_context(|| format!("cannot create {}", out.display()))?;
            return Ok(Output::File(Box::new((CallsBuilder::new(), sink))));
        }
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create folder {}", out.display()))?;
        Ok(Output::Dataset {
            layout: Layout::new(out),
            producer: run_id.to_owned(),
            parts: BTreeMap::new(),
        })
    }

    pub(crate) fn builder(
        &mut self,
        start_us: Option<i64>,
    ) -> Result<(&mut CallsBuilder, &mut ParquetSink)> {
        match self {
            Output::File(file) => Ok((&mut file.0, &mut file.1)),
            Output::Dataset {
                layout,
                producer,
                parts,
            } => {
                let date = start_us.map_or_else(|| "unknown".to_owned(), utc_date);
                if !parts.contains_key(&date) {
                    // One number per partition: the files are written side by side in one
                    // temporary folder, so they must not share a name.
                    let name = part_name(producer, parts.len() as u64 + 1);
                    let path = layout.part(CALLS, &date, &name);
                    let properties = writer_properties(CALLS, &[]);
                    let sink =
                        ParquetSink::create(&layout.temp(), &path, calls_schema(), properties)
                            .with_context(|| format!("cannot create {}", path.display()))?;
                    parts.insert(date.clone(), (CallsBuilder::new(), sink));
                }
                let (builder, sink) = parts.get_mut(&date).expect("inserted above");
                Ok((builder, sink))
            }
        }
    }

    pub(crate) fn finish(self) -> Result<()> {
        // The rows still in a builder written into its sink.
        let flush = |mut builder: CallsBuilder, mut sink: ParquetSink| -> Result<ParquetSink> {
            if !builder.is_empty() {
                sink.write(&builder.finish())?;
            }
            Ok(sink)
        };
        match self {
            Output::File(file) => {
                let (builder, sink) = *file;
                flush(builder, sink)?.finish()?;
                Ok(())
            }
            // Every partition complete before any is in place: a failure leaves no partial
            // import looking complete (the sealed files go with their temporary names, and
            // the ones already placed, all new names, are taken back).
            Output::Dataset { layout, parts, .. } => {
                let mut sealed = Vec::with_capacity(parts.len());
                for (builder, sink) in parts.into_values() {
                    sealed.push(flush(builder, sink)?.seal()?);
                }
                let mut placed = Vec::with_capacity(sealed.len());
                for file in sealed {
                    let target = file.final_path().to_owned();
                    match file.place() {
                        Ok(path) => placed.push(path),
                        Err(error) => {
                            for path in &placed {
                                let _ = std::fs::remove_file(path);
                            }
                            return Err(error)
                                .with_context(|| format!("cannot write {}", target.display()));
                        }
                    }
                }
                let _ = std::fs::remove_dir(layout.temp());
                Ok(())
            }
        }
    }
}

pub(crate) fn append(
    builder: &mut CallsBuilder,
    run_id: &str,
    source: Source,
    call: &ImportedCall,
) {
    let record = &call.record;
    builder.append(
        &CallRow {
            run_id,
            client_id: &call.client.client_id,
            source: Some(source),
            host: None,
            pid: call.client.pid,
            tid: call.tid,
            process: None,
            module: call.client.module.as_deref().unwrap_or("(unknown)"),
            provider: call.provider.as_deref(),
            interface_version: None,
            seq: call.seq,
            start_us: call.start_us,
            start_local: call.start_local,
            dur_ns: (record.dur_ns > 0).then_some(record.dur_ns),
            func: &call.func,
            internal: false,
            returned: call.returned,
            rv: call.rv,
            ..CallRow::default()
        }
        .with_arguments(record),
    );
}
