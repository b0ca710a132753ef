//! Command-line interface of `p11trace-query`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::input::InputFormat;

/// Analyse PKCS#11 call traces: p11trace datasets, Parquet files, pkcs11-spy logs and observe
/// JSON lines (told apart by content).
///
/// Exit status: 0 success, 1 runtime or input error, 2 usage error.
#[derive(Debug, Parser)]
#[command(name = "p11trace-query", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert pkcs11-spy logs or observe JSON lines to schema v1 Parquet.
    Import(ImportArgs),
    /// The PKCS#11 Operation Analysis: summary, latency, return codes, sessions, issues.
    Analyze(AnalyzeArgs),
    /// Run a SQL query (polars SQL) with `calls` (and `clients`) registered as tables.
    Sql(SqlArgs),
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
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// pkcs11-spy logs or observe JSON-lines files.
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

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Datasets, Parquet files, pkcs11-spy logs or observe JSON lines.
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

    /// Datasets, Parquet files, pkcs11-spy logs or observe JSON lines.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    #[arg(long, value_enum, default_value_t = TableFormat::Text)]
    pub format: TableFormat,

    #[command(flatten)]
    pub filters: Filters,

    #[command(flatten)]
    pub input: InputArgs,
}
