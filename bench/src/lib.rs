//! # p11trace-bench
//!
//! The benchmarks behind `just bench` and `BENCHMARKS.md`: (1) per-call overhead, direct vs
//! pkcs11-spy vs shim, on SoftHSM2 and Kryoptic; (2) recorder throughput with 1/4/16 client
//! processes; (3) bytes on disk per call vs the spy's log of the same calls; (4) query speed on a
//! synthetic 10 M-call dataset vs DuckDB, and spy import speed vs `wc -l`; (5) `--quick`, the smoke
//! mode the test suite runs so this code cannot rot; (6) the callgrind instruction budget; (7)
//! import speed per log format vs `wc -l` (`--only import`); (8) the cost of uploading to object
//! storage (`--dataset s3://…`, against moto) vs writing a local dataset (`--only upload`); (9)
//! cost against size, 1 M to 100 M calls, drawn as SVG (`--only scaling`).
//!
//! Owns measurement only: it drives the real binaries (shim, recorder, query) as a user would and
//! never links the shim's or the recorder's internals. Timings are never asserted by tests; the
//! instruction budget is, because instruction counts repeat exactly.

pub mod budget;
pub mod client;
pub mod import_speed;
pub mod measure;
pub mod overhead;
pub mod query_speed;
pub mod report;
pub mod scaling;
pub mod setup;
pub mod size;
pub mod synth;
pub mod throughput;
pub mod upload;

use std::path::PathBuf;

/// What every benchmark gets.
pub struct Ctx {
    pub bins: setup::Bins,
    /// Tiny sizes, one round: proves the code runs, measures nothing.
    pub quick: bool,
    pub rounds: u32,
    pub with_kryoptic: bool,
    /// Where benchmarks put tokens, datasets and logs (removed afterwards).
    pub scratch: PathBuf,
    /// Where benchmarks that draw write their SVG (`None`: nowhere).
    pub plots: Option<PathBuf>,
}

/// The benchmarks, by number and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bench {
    Overhead,
    Throughput,
    Size,
    Query,
    Budget,
    Import,
    Upload,
    Scaling,
}

impl Bench {
    pub const ALL: [Bench; 8] = [
        Bench::Overhead,
        Bench::Throughput,
        Bench::Size,
        Bench::Query,
        Bench::Budget,
        Bench::Import,
        Bench::Upload,
        Bench::Scaling,
    ];

    pub fn run(self, ctx: &Ctx) -> anyhow::Result<(Vec<report::Line>, serde_json::Value)> {
        match self {
            Bench::Overhead => overhead::run(ctx),
            Bench::Throughput => throughput::run(ctx),
            Bench::Size => size::run(ctx),
            Bench::Query => query_speed::run(ctx),
            Bench::Budget => budget::run(ctx),
            Bench::Import => import_speed::run(ctx),
            Bench::Upload => upload::run(ctx),
            Bench::Scaling => scaling::run(ctx),
        }
    }
}
