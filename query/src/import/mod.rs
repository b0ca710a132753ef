//! `import`: pkcs11-spy logs and observe-core JSON lines into schema v1 Parquet, streamed in
//! constant memory. Lenient by default (an unreadable record is reported with file:line and
//! counted); `--strict` turns the first problem into a failure that leaves no output behind.

pub mod observe;
pub mod spy;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result, bail};
use chrono::{NaiveDate, TimeZone as _};
use p11trace_dataset::layout::{CALLS, Layout, part_name};
use p11trace_dataset::time::utc_date;
use p11trace_dataset::{CallRow, Source};
use p11trace_dataset::{CallsBuilder, ParquetSink, calls_schema, writer_properties};
use p11trace_record::wire::CallRecord;

use crate::input::InputFormat;

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Time zone of spy stamps (IANA name); default: `TZ`, else the machine's zone.
    pub tz: Option<String>,
    /// Fail on the first unreadable record instead of reporting and counting it.
    pub strict: bool,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
}

/// The process a record came from (one per spy segment and pid, one per observe pid).
#[derive(Debug)]
pub struct SourceClient {
    pub client_id: String,
    pub module: Option<String>,
    pub pid: Option<i64>,
}

/// One imported call, before it becomes a row.
pub struct ImportedCall {
    pub client: Rc<SourceClient>,
    pub func: String,
    pub tid: Option<i64>,
    pub seq: i64,
    pub start_us: Option<i64>,
    pub start_local: bool,
    pub returned: bool,
    pub rv: Option<u64>,
    pub provider: Option<Rc<str>>,
    pub record: CallRecord,
}

/// Problems found in the input: reported on stderr with file:line, counted, fatal with `--strict`.
#[derive(Debug, Default)]
pub struct Problems {
    pub strict: bool,
    pub count: u64,
    pub first: Option<String>,
}

impl Problems {
    pub fn report(&mut self, file: &str, line: u64, message: &str) {
        self.count += 1;
        let text = format!("{file}:{line}: {message}");
        if self.count <= 20 {
            eprintln!("p11trace-query: {text}");
        } else if self.count == 21 {
            eprintln!("p11trace-query: (further problems are counted, not shown)");
        }
        self.first.get_or_insert(text);
    }
}

/// Converts the spy's local, zone-less stamps to UTC.
pub struct Clock {
    zone: chrono_tz::Tz,
    /// (local hour key, offset in µs) of the last conversion: stamps arrive in order.
    cache: Option<(i64, i64)>,
}

impl Clock {
    pub fn new(tz: Option<&str>) -> Result<Clock> {
        let name = match tz {
            Some(name) => name.to_owned(),
            None => std::env::var("TZ")
                .ok()
                .map(|tz| tz.trim_start_matches(':').to_owned())
                .filter(|tz| !tz.is_empty())
                .or_else(|| iana_time_zone::get_timezone().ok())
                .unwrap_or_else(|| "UTC".to_owned()),
        };
        let zone = name.parse::<chrono_tz::Tz>().map_err(|_| {
            anyhow::anyhow!("unknown time zone `{name}` (use an IANA name such as Europe/Berlin)")
        })?;
        Ok(Clock { zone, cache: None })
    }

    /// (year, month, day, hour, minute, second, millisecond) local → µs since the epoch, UTC.
    pub fn to_utc_micros(&mut self, local: (i64, u32, u32, u32, u32, u32, u32)) -> Option<i64> {
        let (year, month, day, hour, minute, second, milli) = local;
        if month == 0
            || month > 12
            || day == 0
            || day > 31
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let days = p11trace_dataset::time::days_from_civil(year, month, day);
        let hour_key = days * 24 + i64::from(hour);
        let naive_us = hour_key * 3_600_000_000
            + i64::from(minute) * 60_000_000
            + i64::from(second) * 1_000_000
            + i64::from(milli) * 1000;
        let offset = match self.cache {
            Some((key, offset)) if key == hour_key => offset,
            _ => {
                let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
                let naive = date.and_hms_opt(hour, 0, 0)?;
                // In a repeated hour (DST end) the earlier instant wins.
                let zoned = self.zone.from_local_datetime(&naive).earliest()?;
                let offset = (naive.and_utc().timestamp() - zoned.timestamp()) * 1_000_000;
                self.cache = Some((hour_key, offset));
                offset
            }
        };
        Some(naive_us - offset)
    }
}

/// Totals of one import.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub calls: u64,
    pub processes: u64,
    pub problems: u64,
    pub unreturned: u64,
    pub ambiguous: u64,
    pub bytes: u64,
}

/// Rows go either to one Parquet file or to a dataset folder partitioned by date.
enum Output {
    File(Box<(CallsBuilder, ParquetSink)>),
    Dataset {
        layout: Layout,
        name: String,
        parts: BTreeMap<String, (CallsBuilder, ParquetSink)>,
    },
}

const FLUSH_ROWS: usize = 64 * 1024;

impl Output {
    fn create(out: &Path, run_id: &str) -> Result<Output> {
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
            name: part_name(&format!("import-{run_id}"), 1),
            parts: BTreeMap::new(),
        })
    }

    fn builder(&mut self, start_us: Option<i64>) -> Result<(&mut CallsBuilder, &mut ParquetSink)> {
        match self {
            Output::File(file) => Ok((&mut file.0, &mut file.1)),
            Output::Dataset {
                layout,
                name,
                parts,
            } => {
                let date = start_us.map_or_else(|| "unknown".to_owned(), utc_date);
                if !parts.contains_key(&date) {
                    let path = layout.part(CALLS, &date, name);
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

    fn finish(self) -> Result<()> {
        let close = |mut builder: CallsBuilder, mut sink: ParquetSink| -> Result<()> {
            if !builder.is_empty() {
                sink.write(&builder.finish())?;
            }
            sink.finish()?;
            Ok(())
        };
        match self {
            Output::File(file) => {
                let (builder, sink) = *file;
                close(builder, sink)
            }
            Output::Dataset { layout, parts, .. } => {
                for (builder, sink) in parts.into_values() {
                    close(builder, sink)?;
                }
                let _ = std::fs::remove_dir(layout.temp());
                Ok(())
            }
        }
    }
}

fn append(builder: &mut CallsBuilder, run_id: &str, source: Source, call: &ImportedCall) {
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

fn progress_bar(total: u64, enabled: bool) -> Option<indicatif::ProgressBar> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

/// A line-oriented log format.
pub trait LineParser {
    /// One physical line (newline removed), numbered from 1.
    fn line(&mut self, number: u64, line: &[u8], emit: &mut dyn FnMut(ImportedCall));
    /// End of input.
    fn finish(&mut self, _emit: &mut dyn FnMut(ImportedCall)) {}
}

/// Feeds every line of `reader` to `parser`; returns (lines, bytes) read.
fn read_lines(
    reader: &mut impl BufRead,
    input: &Path,
    bar: Option<&indicatif::ProgressBar>,
    parser: &mut dyn LineParser,
    emit: &mut dyn FnMut(ImportedCall),
) -> Result<(u64, u64)> {
    let mut line = Vec::with_capacity(256);
    let (mut number, mut bytes) = (0u64, 0u64);
    loop {
        line.clear();
        let got = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", input.display()))?;
        if got == 0 {
            break;
        }
        number += 1;
        bytes += got as u64;
        if let Some(bar) = bar
            && number.is_multiple_of(65_536)
        {
            bar.set_position(bytes);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        parser.line(number, &line, emit);
    }
    parser.finish(emit);
    Ok((number, bytes))
}

/// Imports one input file into `out` (a `.parquet` file or a dataset folder).
pub fn import_file(
    input: &Path,
    format: InputFormat,
    out: &Path,
    options: &ImportOptions,
) -> Result<ImportSummary> {
    import_files(&[(input.to_owned(), format)], out, options)
}

/// Imports every input into one output; on failure (or a `--strict` problem) nothing is left.
pub fn import_files(
    inputs: &[(PathBuf, InputFormat)],
    out: &Path,
    options: &ImportOptions,
) -> Result<ImportSummary> {
    let run_id = format!("import-{}", uuid::Uuid::now_v7());
    let mut output = Output::create(out, &run_id)?;
    let mut summary = ImportSummary::default();
    let mut clock = Clock::new(options.tz.as_deref())?;
    for (input, format) in inputs {
        let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = progress_bar(size, options.progress);
        let name = input.file_name().map_or_else(
            || input.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut problems = Problems {
            strict: options.strict,
            ..Problems::default()
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let source = match format {
            InputFormat::Spy => Source::PkcsSpy,
            InputFormat::Observe => Source::ObserveJson,
            InputFormat::Parquet => {
                bail!("{} is already Parquet: nothing to import", input.display())
            }
        };
        let mut failure: Option<anyhow::Error> = None;
        let calls_before = summary.calls;
        let mut emit = |call: ImportedCall| {
            if failure.is_some() {
                return;
            }
            summary.calls += 1;
            let result = output.builder(call.start_us).and_then(|(builder, sink)| {
                append(builder, &run_id, source, &call);
                if builder.len() >= FLUSH_ROWS {
                    sink.write(&builder.finish())?;
                }
                Ok(())
            });
            if let Err(error) = result {
                failure = Some(error);
            }
        };
        let (lines, read_bytes) = match format {
            InputFormat::Spy => {
                let mut parser = spy::SpyParser::new(&name, &mut clock, &mut problems);
                let read = read_lines(&mut reader, input, bar.as_ref(), &mut parser, &mut emit)?;
                summary.processes += parser.processes;
                summary.unreturned += parser.unreturned;
                summary.ambiguous += parser.ambiguous;
                read
            }
            InputFormat::Observe => {
                let mut parser = observe::ObserveParser::new(&name, &mut problems);
                let read = read_lines(&mut reader, input, bar.as_ref(), &mut parser, &mut emit)?;
                summary.processes += parser.processes();
                read
            }
            InputFormat::Parquet => unreachable!("rejected above"),
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if let Some(error) = failure {
            return Err(error);
        }
        summary.bytes += read_bytes;
        summary.problems += problems.count;
        if options.strict
            && let Some(first) = problems.first
        {
            bail!("{first} (--strict: nothing was written)");
        }
        if lines == 0 {
            bail!("{}: the file is empty", input.display());
        }
        if summary.calls == calls_before {
            bail!(
                "{}: no PKCS#11 call found in {lines} line(s); is it a {} file?",
                input.display(),
                match format {
                    InputFormat::Spy => "pkcs11-spy log",
                    _ => "observe JSON-lines",
                }
            );
        }
    }
    output.finish()?;
    Ok(summary)
}
