//! # p11trace-query
//!
//! The analysis tool. Reads p11trace datasets and Parquet files, and imports pkcs11-spy plaintext
//! logs and observe JSON lines into the same schema v1; then analyses (`analyze`), queries
//! (`sql`), and converts (`import`).
//!
//! Layout: `cli` (arguments) → `commands` (one function per command) over `input` (format
//! detection, loading), `import` (spy and observe parsers, Parquet output), `filters`, and
//! `analyze` (the report and its renderings).
//!
//! Owns polars; must never be linked into the shim or the recorder.

pub mod analyze;
pub mod cli;
pub mod commands;
pub mod filters;
pub mod import;
pub mod input;

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
