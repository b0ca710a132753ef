//! The commands, each a function from parsed arguments to output on stdout.

use std::io::Write;

use anyhow::Result;

use crate::Explain;
use polars::prelude::*;
use polars::sql::SQLContext;

use crate::analyze::{self, AnalyzeOptions, render};
use crate::cli::{
    AnalyzeArgs, AuditArgs, AuditFormat, CompareArgs, CompareFormat, DiffArgs, ImportArgs,
    ReportFormat, SqlArgs, TableFormat,
};
use crate::compare::side::{Basis, Side};
use crate::compare::{self, diff, render as compare_render, report};
use crate::input;
use crate::stats::GateConfig;
use p11trace_import as import;

pub fn import(args: &ImportArgs) -> Result<()> {
    let mut inputs = Vec::new();
    for path in &args.inputs {
        let format = match args.input.input_format {
            Some(format) => format,
            None => input::detect(path)?,
        };
        let Some(format) = format.log_format() else {
            anyhow::bail!("{} is already Parquet: nothing to import", path.display());
        };
        inputs.push((path.clone(), format));
    }
    let started = std::time::Instant::now();
    let summary = import::import_files(&inputs, &args.output, &args.input.import_options())?;
    let seconds = started.elapsed().as_secs_f64();
    if args.input.quiet {
        return Ok(());
    }
    eprintln!(
        "p11trace-query: imported {} calls from {} process(es) into {} ({:.1} MB in {:.2} s, {:.0} MB/s); \
         {} unreadable record(s), {} never returned, {} ambiguous return pairing(s), \
         {} ambiguous stamp pairing(s), {} call(s) without a stamp line",
        summary.calls,
        summary.processes,
        args.output.display(),
        summary.bytes as f64 / 1e6,
        seconds,
        summary.bytes as f64 / 1e6 / seconds.max(1e-9),
        summary.problems,
        summary.unreturned,
        summary.ambiguous,
        summary.ambiguous_stamps,
        summary.unstamped,
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
    let located = input::locate(
        &paths,
        args.input.input_format,
        &args.input.import_options(),
    )?;
    let criteria = crate::filters::Criteria::parse(&args.filters)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.format {
        // The events are every call as it is: polars reads them; the reports fold them.
        format @ (ReportFormat::Events | ReportFormat::PrettyEvents) => {
            let calls = crate::filters::apply(input::scan(&located.calls)?, &args.filters)?;
            write_events(calls, format == ReportFormat::PrettyEvents, &mut out)?;
        }
        format => {
            let max_operations = (format == ReportFormat::Json).then_some(args.max_operations);
            let options = AnalyzeOptions {
                max_operations,
                slow_floor_ns: args.outliers.slow_floor,
            };
            let spinner = crate::progress::spinner("analysing", !args.input.quiet);
            let report = analyze::analyze(&located.calls, &criteria, options);
            if let Some(spinner) = spinner {
                spinner.finish_and_clear();
            }
            let report = report?;
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

pub fn audit(args: &AuditArgs) -> Result<()> {
    let loaded = input::load(
        &args.inputs,
        args.input.input_format,
        &args.input.import_options(),
    )?;
    let calls = crate::filters::apply(loaded.calls, &args.filters)?;
    let report = crate::audit::audit(calls)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.format {
        AuditFormat::Text => crate::audit::render::text_report(&report, false, &mut out)?,
        AuditFormat::Markdown => crate::audit::render::text_report(&report, true, &mut out)?,
        AuditFormat::Csv => crate::audit::render::csv(&report, &mut out)?,
        AuditFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
    }
    out.flush()?;
    Ok(())
}

pub fn sql(args: &SqlArgs) -> Result<()> {
    let loaded = input::load(
        &args.inputs,
        args.input.input_format,
        &args.input.import_options(),
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

/// Runs `a` and `b` at once (two sides are read and reduced in parallel: the reduction is one
/// thread each).
fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|scope| {
        let second = scope.spawn(b);
        let first = a();
        let second = match second.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (first, second)
    })
}

/// The sides of a `compare`: two inputs, or one input split `--by` a column.
fn compare_sides(args: &CompareArgs) -> Result<(Vec<Side>, usize)> {
    let Some(by) = args.by else {
        let [a, b] = args.inputs.as_slice() else {
            anyhow::bail!("compare needs two inputs (A B), or one input and --by");
        };
        let name = |path: &std::path::Path, given: &Option<String>| -> Result<Side> {
            let mut side =
                compare::load_side(path, given.as_deref(), &args.input, &args.filters, true)?;
            if given.is_none() {
                side.name = side.default_name(&side.name);
            }
            Ok(side)
        };
        let (side_a, side_b) = both(|| name(a, &args.name_a), || name(b, &args.name_b));
        let mut sides = vec![side_a?, side_b?];
        compare::distinct_names(&mut sides);
        return Ok((sides, 0));
    };
    let [input] = args.inputs.as_slice() else {
        anyhow::bail!("--by splits one input; {} were given", args.inputs.len());
    };
    let rows = compare::load_rows(
        std::slice::from_ref(input),
        &args.input,
        &args.filters,
        Some(by),
        true,
    )?;
    let groups = compare::split(&rows);
    if groups.len() < 2 {
        anyhow::bail!(
            "{}: --by {by:?} finds {} group(s); compare needs two or more",
            input.display(),
            groups.len()
        );
    }
    let sides = groups
        .into_iter()
        .map(|(name, group)| crate::compare::side::from_rows(name, &rows, Some(group), true))
        .collect::<Result<Vec<_>>>()?;
    let baseline = match &args.baseline {
        None => 0,
        Some(name) => sides.iter().position(|s| &s.name == name).ok_or_else(|| {
            anyhow::anyhow!(
                "--baseline {name}: no such group; the groups are: {}",
                sides
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?,
    };
    Ok((sides, baseline))
}

/// `compare`: exit 0 when it reports; every error is an input or usage error (exit 2).
pub fn compare(args: &CompareArgs) -> Result<()> {
    let (sides, baseline) = compare_sides(args)?;
    let report = report::compare(&sides, baseline, &GateConfig::default());
    render_to_stdout(
        &report,
        args.format,
        compare_render::compare_text,
        compare_render::compare_csv,
    )
}

/// Writes a `compare` or `diff` report to stdout in `format` (JSON: the report serialised).
fn render_to_stdout<R: serde::Serialize>(
    report: &R,
    format: CompareFormat,
    text: fn(&R, bool, &mut dyn Write) -> Result<()>,
    csv: fn(&R, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match format {
        CompareFormat::Text => text(report, false, &mut out)?,
        CompareFormat::Markdown => text(report, true, &mut out)?,
        CompareFormat::Csv => csv(report, &mut out)?,
        CompareFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(report)?)?,
    }
    out.flush()?;
    Ok(())
}

/// `diff`: `Ok(true)` when it found what `--fail-on` names (exit 1).
pub fn diff(args: &DiffArgs) -> Result<bool> {
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        anyhow::bail!(
            "--alpha {} is not a probability between 0 and 1",
            args.alpha
        );
    }
    let load = |path: &std::path::Path, name: &Option<String>| {
        compare::load_side(path, name.as_deref(), &args.input, &args.filters, false)
    };
    let (baseline, current) = both(
        || load(&args.baseline, &args.name_a),
        || load(&args.current, &args.name_b),
    );
    let (mut baseline, mut current) = (baseline?, current?);
    // An analysis report knows functions, not mechanisms: set the other side's rows alike.
    if baseline.basis == Basis::Percentiles || current.basis == Basis::Percentiles {
        baseline.fold_mechanisms();
        current.fold_mechanisms();
    }
    let settings = diff::Settings {
        gate: GateConfig {
            threshold: args.threshold,
            min_effect_ns: args.min_effect,
            alpha: args.alpha,
            min_calls: args.min_calls.max(1),
            ..GateConfig::default()
        },
        fail_on: args.fail_on,
        drift_correction: !args.no_drift_correction,
        drift_max: args.drift_max,
    };
    let report = diff::diff(&baseline, &current, &settings)?;
    render_to_stdout(
        &report,
        args.format,
        compare_render::diff_text,
        compare_render::diff_csv,
    )?;
    Ok(report.failed)
}
