//! Arguments of `report`, the HTML report.

use std::path::PathBuf;

use clap::Args;

use super::{Filters, InputArgs, Outliers};

const REPORT_EXAMPLES: &str = "\
Examples:
  p11trace-query report dataset/ -o report.html
  p11trace-query report softhsm/ kryoptic/ -o compare.html     # two inputs: the compare view too
  p11trace-query report app.log --func C_Sign --since 2026-11-25 -o signing.html

One file, no script, nothing fetched when it is opened: open it in any browser, attach it to a
ticket. Written under a temporary name beside OUT (mode 0600), then renamed.

Exit status: 0 written, 1 runtime or input error, 2 usage error.";

#[derive(Debug, Args)]
#[command(after_help = REPORT_EXAMPLES)]
pub struct HtmlArgs {
    /// Datasets, Parquet files, tracers' logs (pkcs11-spy, p11-kit, pkcs11-logger, libpkcs11shim)
    /// or observe JSON lines; with exactly two, the page also compares them (A = the first).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// The HTML file to write (replaced if it exists).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    #[command(flatten)]
    pub outliers: Outliers,

    #[command(flatten)]
    pub filters: Filters,

    #[command(flatten)]
    pub input: InputArgs,
}
