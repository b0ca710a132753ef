//! # p11trace-query
//!
//! The analysis tool. Reads p11trace datasets and Parquet files, and (through `p11trace-import`)
//! pkcs11-spy plaintext logs and observe JSON lines imported into the same schema v1; then
//! analyses (`analyze`), compares (`compare`, `diff`), queries (`sql`), and converts (`import`).
//!
//! Layout: `cli` (arguments) → `commands` (one function per command) over `input` (format
//! detection, loading), `filters`, `direct` (Parquet read straight into plain vectors with
//! arrow-rs, for the commands that fold every call), `analyze` (the report and its renderings),
//! `compare` (two sides weighed: `compare` and the `diff` gate) over `stats` (rank tests,
//! bootstrap intervals, multiple-comparison correction), `html` (`report`: the analysis and the
//! comparison as one self-contained HTML page, charts drawn as inline SVG by plotters);
//! `progress` (spinners on a terminal only). Log parsing and Parquet output of imports live in
//! `p11trace-import`, which this crate uses (never the other way).
//!
//! Owns polars (`sql`, `audit`, `report`'s charts, the per-call listings) and the arrow-rs
//! readers; must never be linked into the shim or the recorder.

pub mod analyze;
pub mod audit;
pub mod cli;
mod columns;
pub mod commands;
pub mod compare;
pub mod direct;
pub mod filters;
pub mod html;
pub mod input;
mod progress;
pub mod stats;
pub mod trail;

/// `anyhow` context for polars results (polars' prelude brings its own `context`, so the two
/// would be ambiguous).
pub(crate) trait Explain<T> {
    fn explain(self, what: &str) -> anyhow::Result<T>;
}

impl<T> Explain<T> for polars::prelude::PolarsResult<T> {
    fn explain(self, what: &str) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("{what}: {e}"))
    }
}
