//! `report`: the analysis as one self-contained HTML page — the summary, per-function latency
//! distributions on a log axis, calls over time per process, the session timeline per thread,
//! the error table and, for two inputs, the `compare` view and the `diff` gate's verdicts. No script and nothing fetched when
//! it is opened: the style is inline, the charts are inline SVG drawn by `plotters`
//! ([`charts`]); the numbers are `analyze`'s and `compare`'s, the charts' data ([`data`]) polars
//! quantiles and counts over the same calls. Every string from the data is escaped
//! ([`format::escape`]). The file is written under a temporary name beside the output, mode
//! 0600, then renamed into place.

pub mod charts;
pub mod data;
pub mod format;
mod gate;
pub mod page;
mod timeline;

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::analyze::{self, AnalyzeOptions, Report};
use crate::cli::FailOn;
use crate::cli::html::HtmlArgs;
use crate::compare::diff;
use crate::compare::report::Report as CompareReport;
use crate::stats::GateConfig;
use crate::{compare, filters, input};

/// What the page shows: the analysis of every input together and, for two inputs, their
/// comparison.
pub struct ReportInput {
    /// The inputs, as given.
    pub title: String,
    pub analysis: Report,
    pub comparison: Option<CompareReport>,
    /// With two inputs: the regression gate's verdicts (`diff A B`, default settings).
    pub gate: Option<diff::Report>,
}

/// The charts' data and their SVG (`None`: nothing to draw).
pub struct Charts {
    pub data: data::ChartData,
    pub latency: Option<String>,
    pub over_time: Option<String>,
    pub timeline: Option<String>,
    /// One per comparison.
    pub ratios: Vec<Option<String>>,
}

/// Reads the inputs, analyses them and writes the page to `args.output`.
pub fn report(args: &HtmlArgs) -> Result<()> {
    let located = input::locate(
        &args.inputs,
        args.input.input_format,
        &args.input.import_options(),
    )?;
    let calls = filters::apply(input::scan(&located.calls)?, &args.filters)?;
    let analysis = analyze::analyze(
        &located.calls,
        &filters::Criteria::parse(&args.filters)?,
        AnalyzeOptions {
            max_operations: None,
            slow_floor_ns: args.outliers.slow_floor,
        },
    )?;
    let data = data::compute(calls, &analysis.retried)?;
    let (comparison, gate) = match args.inputs.as_slice() {
        [a, b] => {
            let (comparison, gate) = compare_two(a, b, args)?;
            (Some(comparison), Some(gate))
        }
        _ => (None, None),
    };
    let charts = Charts {
        latency: charts::latency(&data.latency)?,
        over_time: charts::over_time(&data.over_time)?,
        timeline: charts::timeline(&data.timeline)?,
        ratios: match &comparison {
            Some(report) => report
                .comparisons
                .iter()
                .map(|c| charts::ratios(&c.functions))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        },
        data,
    };
    let title = args
        .inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let page = page::render(
        &ReportInput {
            title,
            analysis,
            comparison,
            gate,
        },
        &charts,
    );
    write_atomically(&args.output, page.as_bytes())?;
    if !args.input.quiet {
        eprintln!(
            "p11trace-query: wrote {} ({} KB)",
            args.output.display(),
            page.len().div_ceil(1024)
        );
    }
    Ok(())
}

/// `compare A B` as the `compare` command makes it (the sides named by their providers), and
/// `diff A B` as the `diff` command decides it with its defaults.
fn compare_two(a: &Path, b: &Path, args: &HtmlArgs) -> Result<(CompareReport, diff::Report)> {
    let side = |path: &Path| -> Result<compare::side::Side> {
        let mut side = compare::load_side(path, None, &args.input, &args.filters, true)?;
        side.name = side.default_name(&side.name);
        Ok(side)
    };
    let mut sides = vec![side(a)?, side(b)?];
    compare::distinct_names(&mut sides);
    let comparison = compare::report::compare(&sides, 0, &GateConfig::default());
    let settings = diff::Settings {
        gate: GateConfig::default(),
        fail_on: FailOn::Regression,
        drift_correction: true,
        drift_max: 1.0,
    };
    let gate = diff::diff(&sides[0], &sides[1], &settings)?;
    Ok((comparison, gate))
}

/// Writes `bytes` to `path` through a temporary file in the same folder (mode 0600), synced and
/// renamed into place: a reader sees the old file or the whole new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".p11trace-report.")
        .suffix(".tmp")
        .tempfile_in(folder)
        .with_context(|| format!("cannot write in {}", folder.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set the mode of {}", file.path().display()))?;
    }
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("cannot write {}", file.path().display()))?;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
