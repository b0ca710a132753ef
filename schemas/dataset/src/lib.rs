//! # p11trace-dataset
//!
//! The on-disk form of schema v1, and its one owner. Every producer of a dataset (the recorder,
//! the spy and observe importers, the benchmarks' synthesiser) writes through this crate; readers
//! (polars in `p11trace-query`, DuckDB, pyarrow, Spark) need only the documents in `schemas/`.
//!
//! - [`schema`]: the Arrow schemas of `calls` and `clients`, and the Parquet metadata keys.
//! - [`rows`]: a row of each table as producers hand it over; [`builders`] turn rows into batches.
//! - [`sink`]: the rolling Parquet writer (temporary name, fsync, rename: files appear complete).
//! - [`layout`]: partition paths, file names, and the walk that finds a dataset's files.
//! - [`parallel`]: a work-taking map over files, for readers that decode or hash many.
//! - [`time`]: UTC calendar arithmetic for partition dates and RFC 3339 stamps.
//!
//! Depends on `p11trace-record` (what a call is) and arrow/parquet; must never depend on polars,
//! and nothing in the shim may depend on this crate.

pub mod builders;
pub mod layout;
pub mod parallel;
pub mod rows;
pub mod schema;
pub mod sink;
pub mod time;

pub use builders::{CallsBuilder, ClientsBuilder};
pub use rows::{CallRow, ClientRow, DisconnectReason, Source};
pub use schema::{SCHEMA_VERSION, calls_schema, clients_schema};
pub use sink::{ParquetSink, writer_properties};
