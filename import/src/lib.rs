//! # p11trace-import
//!
//! Turns other tracers' logs — pkcs11-spy (every OpenSC form and the integration guide's),
//! p11-kit `log-calls`, pkcs11-logger, libpkcs11shim — and observe-core JSON lines into schema v1
//! datasets (one `.parquet` file, or a dataset folder partitioned by date), streamed in constant
//! memory: the calling thread parses while a writer thread (`pipeline`) builds the rows and
//! encodes Parquet.
//! Lenient by default (an unreadable record is reported with file:line and counted); `strict`
//! turns the first problem into a failure that leaves no output behind.
//!
//! Owns the log formats: what they look like ([`format`]: [`LogFormat`], [`sniff`]), how they
//! are read ([`spy`], [`p11kit`], [`logger`], [`pkcs11shim`], [`observe`], with what they share in `common`), and local
//! stamps to UTC ([`Clock`]). Rows are written through `p11trace-dataset`; what a call is comes
//! from `p11trace-record`.
//!
//! Must never depend on polars (analysis lives in `p11trace-query`, which uses this crate, never
//! the other way), nor on a command-line parser: callers map their own options onto
//! [`ImportOptions`] and [`LogFormat`].

mod clock;
mod common;
pub mod format;
pub mod logger;
pub mod observe;
mod output;
pub mod p11kit;
mod pipeline;
pub mod pkcs11shim;
pub mod spy;

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use p11trace_record::wire::CallRecord;

pub use clock::Clock;
pub use format::{LogFormat, sniff};
use output::Output;
use pipeline::Writer;

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Time zone of local stamps (spy, pkcs11-logger; IANA name); default: `TZ`, else the
    /// machine's zone.
    pub tz: Option<String>,
    /// Fail on the first unreadable record instead of reporting and counting it.
    pub strict: bool,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
    /// The rows' `run_id` [default: `import-<UUIDv7>`, new each time]. `archive` derives it from
    /// the log's content, so the same log imported twice gives the same rows.
    pub run_id: Option<String>,
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
    pub client: Arc<SourceClient>,
    pub func: String,
    pub tid: Option<i64>,
    pub seq: i64,
    pub start_us: Option<i64>,
    pub start_local: bool,
    pub returned: bool,
    pub rv: Option<u64>,
    pub provider: Option<Arc<str>>,
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

/// Totals of one import.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub calls: u64,
    pub processes: u64,
    pub problems: u64,
    pub unreturned: u64,
    pub ambiguous: u64,
    pub ambiguous_stamps: u64,
    pub unstamped: u64,
    pub bytes: u64,
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

/// The longest line read (16 MiB: an observe event with a large template, far beyond any
/// pkcs11-spy line, whose hex dumps wrap at 16 bytes).
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// What a parser counted besides the calls it emitted.
#[derive(Debug, Default, Clone, Copy)]
pub struct ParseTotals {
    /// Processes (clients) the log held.
    pub processes: u64,
    /// Calls that never returned (kept with `returned = false`).
    pub unreturned: u64,
    /// Pairings of a result with a call that had to be guessed (interleaved threads).
    pub ambiguous: u64,
    /// Stamp lines (pid, thread, time) that had several waiting calls to go to (interleaved
    /// threads): which one was guessed.
    pub ambiguous_stamps: u64,
    /// Calls whose record had no stamp line in the log (the integration guide's stamp-less
    /// form, a log cut between a header and its stamp): their `pid`, `tid` and `start` are null.
    pub unstamped: u64,
}

/// A line-oriented log format.
pub trait LineParser {
    /// One physical line (newline removed), numbered from 1.
    fn line(&mut self, number: u64, line: &[u8], emit: &mut dyn FnMut(ImportedCall));
    /// End of input.
    fn finish(&mut self, _emit: &mut dyn FnMut(ImportedCall)) {}
    /// What was counted so far.
    fn totals(&self) -> ParseTotals;
}

/// The parser of `format` for the file called `name`.
fn parser<'a>(
    format: LogFormat,
    name: &'a str,
    clock: &'a mut Clock,
    problems: &'a mut Problems,
) -> Box<dyn LineParser + 'a> {
    match format {
        LogFormat::Spy => Box::new(spy::SpyParser::new(name, clock, problems)),
        LogFormat::Observe => Box::new(observe::ObserveParser::new(name, problems)),
        LogFormat::P11Kit => Box::new(p11kit::P11KitParser::new(name, problems)),
        LogFormat::Pkcs11Logger => Box::new(logger::LoggerParser::new(name, clock, problems)),
        LogFormat::Pkcs11Shim => Box::new(pkcs11shim::ShimLogParser::new(name, clock, problems)),
    }
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
        // At most one byte past the limit is read: a longer line is refused, not buffered.
        let got = reader
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", input.display()))?;
        if got == 0 {
            break;
        }
        number += 1;
        if got > MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            bail!(
                "{}:{number}: a line longer than {} MiB (not a pkcs11-spy log or observe \
                 JSON lines?); nothing was written",
                input.display(),
                MAX_LINE_BYTES >> 20
            );
        }
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
    format: LogFormat,
    out: &Path,
    options: &ImportOptions,
) -> Result<ImportSummary> {
    import_files(&[(input.to_owned(), format)], out, options)
}

/// Imports every input into one output; on failure (or a `--strict` problem) nothing is left.
pub fn import_files(
    inputs: &[(PathBuf, LogFormat)],
    out: &Path,
    options: &ImportOptions,
) -> Result<ImportSummary> {
    let run_id = options
        .run_id
        .clone()
        .unwrap_or_else(|| format!("import-{}", uuid::Uuid::now_v7()));
    // Parsing here, rows and Parquet on the writer's thread (pipeline): each stage has a core.
    let mut writer = Writer::spawn(Output::create(out, &run_id)?, run_id)?;
    let mut summary = ImportSummary::default();
    let mut clock = Clock::new(options.tz.as_deref())?;
    for &(ref input, format) in inputs {
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
        writer.set_source(format.source());
        let mut writing = true;
        let calls_before = summary.calls;
        let mut emit = |call: ImportedCall| {
            if writing {
                summary.calls += 1;
                writing = writer.push(call);
            }
        };
        let (lines, read_bytes) = {
            let mut parser = parser(format, &name, &mut clock, &mut problems);
            let read = read_lines(&mut reader, input, bar.as_ref(), &mut *parser, &mut emit)?;
            let totals = parser.totals();
            summary.processes += totals.processes;
            summary.unreturned += totals.unreturned;
            summary.ambiguous += totals.ambiguous;
            summary.ambiguous_stamps += totals.ambiguous_stamps;
            summary.unstamped += totals.unstamped;
            read
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if !writing {
            // The writer stopped: its error says why.
            return Err(match writer.finish() {
                Err(error) => error,
                Ok(_) => anyhow::anyhow!("the import's writer stopped early"),
            });
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
                format.describe()
            );
        }
    }
    writer.finish()?.finish()?;
    Ok(summary)
}
