//! # p11trace-archive
//!
//! Audit archives: many small dataset files (and imported logs) compacted into date-partitioned
//! schema v1 Parquet, sealed period by period by digests that list every file's SHA-256 and row
//! count, their RFC 6962 Merkle root, the previous digest's hash (a chain) and, with a key, an
//! Ed25519 signature; and the verifier that walks the chain back and finds any edit, gap,
//! deletion or foreign file. The model is CloudTrail's log-file integrity validation.
//!
//! - [`period`]: days or hours, their names and bounds.
//! - [`digest`]: the digest document (`schemas/archive.md`), its hashing and signing rules.
//! - [`merkle`]: RFC 6962 tree hashing.
//! - [`keys`]: Ed25519 key pairs as PEM files.
//! - [`sources`]: what an input is (dataset, Parquet file, log) and the files it holds.
//! - [`compact`]: rows read, bucketed by period, deduplicated, sorted, written (by `encode`:
//!   the columns gathered and encoded on two threads).
//! - [`seal`]: one period's files and digest made durable in an order a crash cannot break.
//! - [`archive`]: the whole run (chain state, gap-filling, backfills, recovery, pruning).
//! - [`verify`]: the checks.
//!
//! Depends on `p11trace-dataset` (the schema and the Parquet writer), `p11trace-import` (logs) and
//! `p11trace-record` (its hex); must never depend on polars or on a command-line parser.

pub mod archive;
pub mod chain;
pub mod compact;
mod crash;
pub mod digest;
mod encode;
pub mod keys;
pub mod merkle;
pub mod period;
pub mod seal;
pub mod sources;
pub mod verify;

pub use archive::{ArchiveOptions, ArchiveSummary, archive};
pub use period::PeriodKind;
pub use sources::Input;
pub use verify::{VerifyOptions, VerifyReport, verify};

/// Lower-case hex of bytes (the record values' own).
pub(crate) use p11trace_record::policy::hex;

pub(crate) use p11trace_dataset::parallel::par_map;

/// Bytes of lower-case or upper-case hex; `None` when it is not hex.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
