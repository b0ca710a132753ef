//! Command-line interface of `p11trace-query`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::input::InputFormat;

pub mod html;
pub mod trail;

/// Analyse PKCS#11 call traces: p11trace datasets, Parquet files, tracers' logs (pkcs11-spy,
/// p11-kit log-calls, pkcs11-logger, libpkcs11shim) and observe
/// JSON lines (told apart by content).
///
/// Exit status: 0 success, 1 runtime or input error, 2 usage error; `compare` and `diff` exit 2
/// on an input error too, and `diff` 1 when it finds what `--fail-on` names (as diff(1)).
#[derive(Debug, Parser)]
#[command(name = "p11trace-query", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert tracers' logs (pkcs11-spy, p11-kit, pkcs11-logger, libpkcs11shim) or observe JSON lines to schema v1 Parquet.
    #[command(after_help = IMPORT_EXAMPLES)]
    Import(ImportArgs),
    /// The PKCS#11 Operation Analysis: summary, latency, return codes, sessions, issues.
    #[command(after_help = ANALYZE_EXAMPLES)]
    Analyze(AnalyzeArgs),
    /// Run a SQL query (polars SQL) with `calls` (and `clients`) registered as tables.
    #[command(after_help = SQL_EXAMPLES)]
    Sql(SqlArgs),
    /// Providers (or runs) side by side: latency ratios with confidence intervals, what works on
    /// one and fails on the other, where the same script's return codes part.
    #[command(after_help = COMPARE_EXAMPLES)]
    Compare(CompareArgs),
    /// The regression gate: per (function, mechanism) latency, return-code and call-count
    /// verdicts that do not flap on a noisy machine; exit 1 on what --fail-on names.
    #[command(after_help = DIFF_EXAMPLES)]
    Diff(DiffArgs),
    /// Per key: who used it, how, how often; logins per process; objects created and
    /// destroyed; calls whose key could not be resolved.
    #[command(after_help = AUDIT_EXAMPLES)]
    Audit(AuditArgs),
    /// The analysis as one self-contained HTML page: summary, latency distributions, calls over
    /// time, the session timeline, errors; with two inputs, the compare view.
    Report(html::HtmlArgs),
    /// Compact inputs into a date-partitioned archive sealed by hash-chained (signed) digests.
    Archive(trail::ArchiveArgs),
    /// Write an Ed25519 key pair for signing archive digests.
    ArchiveKey(trail::ArchiveKeyArgs),
    /// Check an archive: every file's hash and rows, every digest's Merkle root, signature and
    /// link; exit 1 on any problem.
    Verify(trail::VerifyArgs),
}

const ANALYZE_EXAMPLES: &str = "\
Examples:
  p11trace-query analyze ~/p11trace-data
  p11trace-query analyze ~/p11trace-data --format json | jq -e '.summary.failed_operations == 0'
  p11trace-query analyze pkcs11-spy.log --func C_Sign --slow-floor 5ms
  p11trace-query analyze dataset/ --since 2026-11-25 --format markdown > analysis.md
  AWS_REGION=eu-west-1 p11trace-query analyze s3://audit/p11trace   # a fleet's prefix

Latencies print in the unit that fits each value (ns, µs, ms, s); JSON keeps milliseconds.
CKR_BUFFER_TOO_SMALL retried, attribute and mechanism probes count as `expected`, not failed.
JSON keys: schemas/analysis.md. A dataset in object storage (s3://, gs://, az://, file://; every
command takes one) is fetched into a private temporary folder first; credentials and endpoint
from AWS_* / GOOGLE_* / AZURE_* variables (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP; not ~/.aws files).";

const IMPORT_EXAMPLES: &str = "\
Examples:
  p11trace-query import /tmp/pkcs11-spy.log -o spy.parquet --tz Europe/Berlin
  p11trace-query import app.stderr -o p11kit.parquet          # p11-kit log-calls
  p11trace-query import a.log b.log -o dataset/ --quiet       # a folder becomes a dataset

The format is told from each file's content (--input-format to force one). A progress bar is
drawn on a terminal only; --quiet drops it and the summary line.";

const SQL_EXAMPLES: &str = "\
Examples:
  p11trace-query sql \"SELECT func, count(*) AS n FROM calls GROUP BY func ORDER BY n DESC\" dataset/
  p11trace-query sql \"SELECT rv_name, count(*) FROM calls WHERE rv <> 0 GROUP BY 1\" spy.log --format csv
  p11trace-query sql \"SELECT process, sum(dur_ns) / 1000000.0 AS ms FROM calls GROUP BY 1\" dataset/ --format json

Columns: schemas/calls.md (calls), schemas/clients.md (clients).";

const COMPARE_EXAMPLES: &str = "\
Examples:
  p11trace-query compare softhsm/ kryoptic/
  p11trace-query compare fleet/ --by provider --format markdown
  p11trace-query compare base.log new.parquet --func C_Sign --name-a before --name-b after

Exit status: 0 when it reports (differences are its output), 2 on a usage or input error.";

const DIFF_EXAMPLES: &str = "\
Examples:
  p11trace-query diff baseline/ current/
  p11trace-query diff baseline/ current/ --fail-on any --format markdown > comment.md
  p11trace-query diff baseline.json current.json     # two `analyze --format json` reports
  p11trace-query diff base/ now/ --threshold 5% --min-effect 20us --alpha 0.001

Exit status (as diff(1)): 0 nothing --fail-on names was found, 1 it was, 2 usage or input error.";

const AUDIT_EXAMPLES: &str = "\
Examples:
  p11trace-query audit dataset/
  p11trace-query audit audit-archive/ --since 2026-01-01 --until 2027-01-01 --format csv
  p11trace-query audit dataset/ --format json | jq '.keys[] | {key, calls, processes}'

Keys are named by class and CKA_ID (else CKA_LABEL): private/id=01. JSON keys: schemas/audit.md.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    Text,
    /// One JSON object; keys documented in schemas/audit.md.
    Json,
    /// One line per key and operation.
    Csv,
    Markdown,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Datasets, archives, Parquet files, tracers' logs (pkcs11-spy, p11-kit, pkcs11-logger, libpkcs11shim) or observe JSON lines.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    #[arg(long, value_enum, default_value_t = AuditFormat::Text)]
    pub format: AuditFormat,

    #[command(flatten)]
    pub filters: Filters,

    #[command(flatten)]
    pub input: InputArgs,
}

/// Options shared by every command that reads inputs.
#[derive(Debug, Clone, Args)]
pub struct InputArgs {
    /// Treat every input as this format instead of detecting it from its content.
    #[arg(long, value_enum, global = true)]
    pub input_format: Option<InputFormat>,

    /// Time zone of pkcs11-spy timestamps (IANA name, e.g. Europe/Berlin).
    /// [default: $TZ, else the machine's zone]
    #[arg(long, global = true)]
    pub tz: Option<String>,

    /// Fail on the first unreadable log record instead of reporting and counting it.
    #[arg(long, global = true)]
    pub strict: bool,

    /// No progress bars and no notes on stderr; errors only (progress is drawn only when
    /// stderr is a terminal anyway).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl InputArgs {
    /// What the importer needs of these options (a progress bar only ever on a terminal, and
    /// never with `--quiet`).
    pub fn import_options(&self) -> p11trace_import::ImportOptions {
        p11trace_import::ImportOptions {
            tz: self.tz.clone(),
            strict: self.strict,
            progress: !self.quiet,
            run_id: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// tracers' logs (pkcs11-spy, p11-kit, pkcs11-logger, libpkcs11shim) or observe JSON-lines files.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Output: a `.parquet` file, or a folder that becomes a dataset (calls/date=…/).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    #[command(flatten)]
    pub input: InputArgs,
}

/// Row filters, applied before any analysis.
#[derive(Debug, Clone, Default, Args)]
pub struct Filters {
    /// Only these functions (repeatable, e.g. --func C_Sign).
    #[arg(long = "func", value_name = "NAME")]
    pub funcs: Vec<String>,

    /// Only these process ids (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<i64>,

    /// Only calls starting at or after this time (RFC 3339, or YYYY-MM-DD; UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,

    /// Only calls starting before this time (RFC 3339, or YYYY-MM-DD; UTC).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,

    /// Only calls that returned these values (repeatable; names like CKR_PIN_INCORRECT or numbers).
    #[arg(long = "rv", value_name = "RV")]
    pub rvs: Vec<String>,

    /// Only calls that did not return CKR_OK.
    #[arg(long)]
    pub failed: bool,

    /// Only rows of this recorder run.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned tables (colour only on a terminal; NO_COLOR respected).
    Text,
    /// One JSON object; keys documented in schemas/analysis.md.
    Json,
    /// JSON Lines: one object per call, schema v1 column names.
    Events,
    /// Each call as an indented, human-readable block.
    PrettyEvents,
    /// The per-function statistics table as CSV.
    Csv,
    /// The text report as Markdown.
    Markdown,
}

/// The slow-outlier rule's options (`analyze`, `report`).
#[derive(Debug, Args)]
pub struct Outliers {
    /// No call faster than this is a slow outlier, whatever its function's percentiles
    /// (`500us`, `1ms`, `2s`; `0ns`: percentiles alone).
    #[arg(long, default_value = "1ms", value_parser = parse_duration_ns, value_name = "DURATION")]
    pub slow_floor: f64,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Datasets, Parquet files, tracers' logs (pkcs11-spy, p11-kit, pkcs11-logger, libpkcs11shim) or observe JSON lines.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Same as a positional input (for users of the pkcs11-spy integration guide).
    #[arg(long = "log-file", value_name = "FILE")]
    pub log_files: Vec<PathBuf>,

    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    /// Most calls listed in the JSON `operations` array (0 = all).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_operations: usize,

    #[command(flatten)]
    pub outliers: Outliers,

    #[command(flatten)]
    pub filters: Filters,

    #[command(flatten)]
    pub input: InputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    Text,
    Json,
    Events,
    Csv,
    Markdown,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query, e.g. "SELECT func, count(*) FROM calls GROUP BY 1".
    #[arg(value_name = "QUERY")]
    pub query: String,

    /// Datasets, Parquet files, tracers' logs (pkcs11-spy, p11-kit, pkcs11-logger, libpkcs11shim) or observe JSON lines.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    #[arg(long, value_enum, default_value_t = TableFormat::Text)]
    pub format: TableFormat,

    #[command(flatten)]
    pub filters: Filters,

    #[command(flatten)]
    pub input: InputArgs,
}

/// What `compare --by` splits one input by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// The `C_GetInfo` identity of each client's module, else the module path.
    Provider,
    Module,
    Process,
    #[value(name = "run_id", alias = "run-id")]
    RunId,
    Host,
}

/// What makes `diff` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailOn {
    /// A latency or call-count regression.
    Regression,
    /// New failing return codes or a significantly higher failure rate.
    Errors,
    /// Either.
    Any,
    /// Nothing: always exit 0 when the report is made.
    Never,
}

impl FailOn {
    pub fn as_str(self) -> &'static str {
        match self {
            FailOn::Regression => "regression",
            FailOn::Errors => "errors",
            FailOn::Any => "any",
            FailOn::Never => "never",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareFormat {
    /// Aligned tables.
    Text,
    /// One JSON object; keys documented in schemas/compare.md (or schemas/diff.md).
    Json,
    /// The tables as Markdown (a pull-request comment).
    Markdown,
    /// One line per row.
    Csv,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Side A (the baseline) and side B: datasets, Parquet files, pkcs11-spy logs or observe
    /// JSON lines. With --by, one input split into groups.
    #[arg(required = true, num_args = 1..=2, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Name of side A [default: its provider, else its module].
    #[arg(long, value_name = "NAME", conflicts_with = "by")]
    pub name_a: Option<String>,

    /// Name of side B [default: its provider, else its module].
    #[arg(long, value_name = "NAME", conflicts_with = "by")]
    pub name_b: Option<String>,

    /// Split one input into groups and compare every group with the first (or --baseline).
    #[arg(long, value_enum, value_name = "COLUMN")]
    pub by: Option<By>,

    /// With --by: the group the others are compared with.
    #[arg(long, value_name = "NAME", requires = "by")]
    pub baseline: Option<String>,

    #[arg(long, value_enum, default_value_t = CompareFormat::Text)]
    pub format: CompareFormat,

    #[command(flatten)]
    pub filters: Filters,

    #[command(flatten)]
    pub input: InputArgs,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The baseline: a dataset, Parquet file, log, or an `analyze --format json` report.
    #[arg(value_name = "BASELINE")]
    pub baseline: PathBuf,

    /// The current run, of any of the same kinds.
    #[arg(value_name = "CURRENT")]
    pub current: PathBuf,

    /// Noise band: a relative change within it is never a verdict (`10%` or `0.1`).
    #[arg(long, default_value = "10%", value_parser = parse_fraction, value_name = "PERCENT")]
    pub threshold: f64,

    /// Significance level, after Holm-Bonferroni across all (function, mechanism) rows.
    #[arg(long, default_value_t = 0.01, value_name = "P")]
    pub alpha: f64,

    /// Fewest successful timed calls on each side for a latency verdict.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub min_calls: usize,

    /// Smallest absolute median change that counts (`5us`, `250ns`, `1.5ms`).
    #[arg(long, default_value = "10us", value_parser = parse_duration_ns, value_name = "DURATION")]
    pub min_effect: f64,

    /// Judge every row as measured, not against the machine's drift (the median change of all
    /// tested rows; see schemas/diff.md). For quiet, dedicated machines.
    #[arg(long)]
    pub no_drift_correction: bool,

    /// Largest common change taken for the machine's drift rather than the release's.
    #[arg(long, default_value = "100%", value_parser = parse_fraction, value_name = "PERCENT")]
    pub drift_max: f64,

    /// What makes the exit status 1.
    #[arg(long, value_enum, default_value_t = FailOn::Regression)]
    pub fail_on: FailOn,

    #[arg(long, value_enum, default_value_t = CompareFormat::Text)]
    pub format: CompareFormat,

    /// Name of the baseline in the report [default: its path].
    #[arg(long, value_name = "NAME")]
    pub name_a: Option<String>,

    /// Name of the current run in the report [default: its path].
    #[arg(long, value_name = "NAME")]
    pub name_b: Option<String>,

    #[command(flatten)]
    pub filters: Filters,

    #[command(flatten)]
    pub input: InputArgs,
}

/// `10%` → 0.1; `0.1` → 0.1.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.strip_suffix('%') {
        Some(number) => (number, 100.0),
        None => (text, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value / scale),
        _ => Err(format!("`{text}` is not a fraction (use 10% or 0.1)")),
    }
}

/// `5us`, `5µs`, `250ns`, `1.5ms`, `2s` → nanoseconds.
pub fn parse_duration_ns(text: &str) -> Result<f64, String> {
    let units = [
        ("ns", 1.0),
        ("us", 1e3),
        ("µs", 1e3),
        ("ms", 1e6),
        ("s", 1e9),
    ];
    for (unit, scale) in units {
        if let Some(number) = text.strip_suffix(unit)
            && let Ok(value) = number.trim().parse::<f64>()
            && value.is_finite()
            && value >= 0.0
        {
            return Ok(value * scale);
        }
    }
    Err(format!(
        "`{text}` is not a duration (use 5us, 250ns, 1.5ms or 2s)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_and_durations_parse_with_their_units() {
        assert_eq!(parse_fraction("10%"), Ok(0.1));
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert!(parse_fraction("ten").is_err());
        assert!(parse_fraction("-5%").is_err());
        assert_eq!(parse_duration_ns("5us"), Ok(5000.0));
        assert_eq!(parse_duration_ns("5µs"), Ok(5000.0));
        assert_eq!(parse_duration_ns("1.5ms"), Ok(1_500_000.0));
        assert_eq!(parse_duration_ns("250ns"), Ok(250.0));
        assert_eq!(parse_duration_ns("2s"), Ok(2e9));
        assert!(parse_duration_ns("5").is_err());
        assert!(parse_duration_ns("fast").is_err());
    }
}
