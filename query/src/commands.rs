//! The commands, each a function from parsed arguments to output on stdout.

use std::io::Write;

use anyhow::Result;

use crate::Explain;
use polars::prelude::*;
use polars::sql::SQLContext;

use crate::analyze::{self, AnalyzeOptions, render};
use crate::cli::{AnalyzeArgs, ImportArgs, InputArgs, ReportFormat, SqlArgs, TableFormat};
use crate::import::{self, ImportOptions};
use crate::input::{self, InputFormat};

fn import_options(input: &InputArgs) -> ImportOptions {
    ImportOptions {
        tz: input.tz.clone(),
        strict: input.strict,
        progress: true,
    }
}

pub fn import(args: &ImportArgs) -> Result<()> {
    let mut inputs = Vec::new();
    for path in &args.inputs {
        let format = match args.input.input_format {
            Some(format) => format,
            None => input::detect(path)?,
        };
        if format == InputFormat::Parquet {
            anyhow::bail!("{} is already Parquet: nothing to import", path.display());
        }
        inputs.push((path.clone(), format));
    }
    let started = std::time::Instant::now();
    let summary = import::import_files(&inputs, &args.output, &import_options(&args.input))?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "p11trace-query: imported {} calls from {} process(es) into {} ({:.1} MB in {:.2} s, {:.0} MB/s); \
         {} unreadable record(s), {} never returned, {} ambiguous return pairing(s)",
        summary.calls,
        summary.processes,
        args.output.display(),
        summary.bytes as f64 / 1e6,
        seconds,
        summary.bytes as f64 / 1e6 / seconds.max(1e-9),
        summary.problems,
        summary.unreturned,
        summary.ambiguous,
    );
    Ok(())
}

/// Writes every row of `calls` as JSON Lines (schema v1 names), a slice at a time.
fn write_events(calls: LazyFrame, pretty: bool, out: &mut impl Write) -> Result<()> {
    let frame = calls.collect().explain("cannot read calls")?;
    const SLICE: usize = 50_000;
    let mut offset = 0;
    while offset < frame.height() {
        let slice = frame.slice(offset as i64, SLICE);
        for row in render::rows_as_json(&slice)? {
            if pretty {
                writeln!(out, "{}\n", serde_json::to_string_pretty(&row)?)?;
            } else {
                writeln!(out, "{row}")?;
            }
        }
        offset += SLICE;
    }
    Ok(())
}

pub fn analyze(args: &AnalyzeArgs) -> Result<()> {
    let mut paths = args.inputs.clone();
    paths.extend(args.log_files.iter().cloned());
    let loaded = input::load(
        &paths,
        args.input.input_format,
        &import_options(&args.input),
    )?;
    let calls = crate::filters::apply(loaded.calls, &args.filters)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.format {
        ReportFormat::Events => write_events(calls, false, &mut out)?,
        ReportFormat::PrettyEvents => write_events(calls, true, &mut out)?,
        format => {
            let max_operations = (format == ReportFormat::Json).then_some(args.max_operations);
            let report = analyze::analyze(calls, AnalyzeOptions { max_operations })?;
            match format {
                ReportFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
                ReportFormat::Text => render::report_text(&report, false, &mut out)?,
                ReportFormat::Markdown => render::report_text(&report, true, &mut out)?,
                ReportFormat::Csv => render::performance_csv(&report, &mut out)?,
                ReportFormat::Events | ReportFormat::PrettyEvents => unreachable!("handled above"),
            }
        }
    }
    out.flush()?;
    Ok(())
}

pub fn sql(args: &SqlArgs) -> Result<()> {
    let loaded = input::load(
        &args.inputs,
        args.input.input_format,
        &import_options(&args.input),
    )?;
    let mut context = SQLContext::new();
    context.register("calls", crate::filters::apply(loaded.calls, &args.filters)?);
    if let Some(clients) = loaded.clients {
        context.register("clients", clients);
    }
    let frame = context
        .execute(&args.query)
        .and_then(LazyFrame::collect)
        .explain(&format!("query failed: {}", args.query))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.format {
        TableFormat::Text => render::frame_text(&frame, false, &mut out)?,
        TableFormat::Markdown => render::frame_text(&frame, true, &mut out)?,
        TableFormat::Csv => render::frame_csv(&frame, &mut out)?,
        TableFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&render::rows_as_json(&frame)?)?
        )?,
        TableFormat::Events => {
            for row in render::rows_as_json(&frame)? {
                writeln!(out, "{row}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
